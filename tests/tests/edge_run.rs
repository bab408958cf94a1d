//! `kestrel-edge run` and `capture` on replayed camera video with a real exported bundle: the
//! results match the library frame by frame, boxes come back in camera pixels (mAP against the
//! scaled ground truth), bad frames are counted and skipped, SIGTERM stops cleanly, memory stays
//! flat over 10,000 frames, and captured frames train a classifier.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use kestrel_e2e::{bin, kestrel, run, run_ok};
use kestrel_edge::Threads;
use kestrel_edge::runtime::Detector;
use kestrel_edge::source::{Recording, decode, split_mjpeg};
use kestrel_edge::stats::Stats;
use kestrel_trainer::data::annotations;
use kestrel_trainer::video::{run_edge, video_map, write_mjpeg};

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    bundle: PathBuf,
    scenes: PathBuf,
}

/// One tiny detector for all tests: 160x120 multi-object scenes, grid head, int8 bundle.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let cache = root.join("cache");
        let scenes = root.join("scenes");
        run_ok(
            kestrel(&cache)
                .args(["synth", "detect", "--preset", "multi", "--seed", "11"])
                .args(["--count", "120", "--val-count", "24"])
                .args(["--width", "160", "--height", "120", "--out"])
                .arg(&scenes),
        );
        let run_dir = root.join("run");
        run_ok(
            kestrel(&cache)
                .args(["train", "detect", "--data"])
                .arg(&scenes)
                .arg("--out")
                .arg(&run_dir)
                .args(["--head", "grid", "--epochs", "12", "--patience", "0"])
                .args(["--width", "160", "--height", "120"]),
        );
        let bundle = root.join("bundle");
        run_ok(
            kestrel(&cache)
                .arg("export")
                .arg(&run_dir)
                .arg("--out")
                .arg(&bundle)
                .args(["--calibration", "16"]),
        );
        Fixture {
            _tmp: tmp,
            root,
            bundle,
            scenes,
        }
    })
}

fn val_pictures(f: &Fixture) -> (Vec<PathBuf>, annotations::DetectDataset) {
    let data = annotations::load(&f.scenes, true).unwrap();
    (data.val.iter().map(|a| a.path.clone()).collect(), data)
}

fn edge() -> PathBuf {
    bin("kestrel-edge")
}

/// The runtime's JSON lines are exactly what the library computes on the same decoded frames,
/// every frame of a lockstep replay is processed once and in order, a corrupt frame in the middle
/// of the stream is counted and skipped, and boxes are in camera pixels: on a 2x-size video the
/// mAP against the 2x ground truth is close to the bundle's own validation mAP.
#[test]
fn replayed_video_gives_the_library_results_in_camera_pixels() {
    let f = fixture();
    let (pictures, data) = val_pictures(f);
    let video = f.root.join("val2x.mjpeg");
    let (w, h) = write_mjpeg(&pictures, &video, 2, 95).unwrap();
    assert_eq!((w, h), (320, 240));
    // A frame that is a JPEG only by its markers, spliced in after frame 5.
    let bytes = std::fs::read(&video).unwrap();
    let frames = split_mjpeg(&bytes);
    let cut = frames[5].end;
    let mut spliced = bytes[..cut].to_vec();
    spliced.extend([0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x04, 0x12, 0x34, 0xFF, 0xD9]);
    spliced.extend(&bytes[cut..]);
    let bad_video = f.root.join("val2x-bad.mjpeg");
    std::fs::write(&bad_video, &spliced).unwrap();

    let run = run_edge(
        &edge(),
        &f.bundle,
        &format!("mjpeg:{}", bad_video.display()),
        &[],
    )
    .unwrap();
    let n = pictures.len() as u64;
    assert_eq!(run.summary.ended, "end of source");
    assert_eq!(run.summary.stats.decode_errors, 1, "{}", run.stderr);
    assert_eq!(run.summary.stats.dropped, 0);
    assert_eq!(run.results.len() as u64, n);
    let indexes: Vec<u64> = run.results.iter().map(|r| r.frame).collect();
    let expected: Vec<u64> = (0..=n).filter(|&i| i != 6).collect();
    assert_eq!(indexes, expected, "frame 6 is the corrupt one");

    // Three frames in flight, one core each: the same results in the same order.
    let par = run_edge(
        &edge(),
        &f.bundle,
        &format!("mjpeg:{}", bad_video.display()),
        &["--frames-in-flight", "3", "--threads", "3"],
    )
    .unwrap();
    assert_eq!(par.summary.ended, "end of source");
    assert_eq!(par.summary.stats.decode_errors, 1, "{}", par.stderr);
    assert_eq!(par.results.len(), run.results.len());
    for (a, b) in run.results.iter().zip(&par.results) {
        assert_eq!(a.frame, b.frame);
        assert_eq!(
            format!("{:?}", a.detections),
            format!("{:?}", b.detections),
            "frame {}",
            a.frame
        );
    }

    // Frame by frame against the library on the same bytes.
    let detector = Detector::open(&f.bundle, Threads::Single).unwrap();
    let mut stats = Stats::new("check");
    let mut rec = kestrel_edge::source::MjpegFrames::open(&bad_video).unwrap();
    assert_eq!(rec.len() as u64, n + 1);
    let mut total = 0;
    for r in &run.results {
        let raw = rec.raw_frame(r.frame as usize).unwrap();
        let img = decode(&raw).unwrap();
        let (dets, _, _) = detector.infer(&img, &mut stats).unwrap();
        assert_eq!((r.width, r.height), (320, 240));
        assert_eq!(dets.len(), r.detections.len(), "frame {}", r.frame);
        for (a, b) in dets.iter().zip(&r.detections) {
            assert_eq!(a.class, b.class);
            assert_eq!(a.label, b.label);
            assert!((a.score - b.score).abs() < 1e-5);
            let (a, b): ([f32; 4], [f32; 4]) = (a.bbox.into(), b.bbox.into());
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-3, "frame {}: {a:?} vs {b:?}", r.frame);
            }
            assert!(b[2] <= 320.0 && b[3] <= 240.0 && b[0] >= 0.0 && b[1] >= 0.0);
        }
        total += dets.len();
    }
    assert!(total > 0, "the detector found nothing at all");

    // Camera pixels: the frames are twice the model input, the boxes must be too. Scored as the
    // bundle's validation mAP was (detections down to a score of 0.05).
    let clean = run_edge(
        &edge(),
        &f.bundle,
        &format!("mjpeg:{}", video.display()),
        &["--score-threshold", "0.05"],
    )
    .unwrap();
    let m2 = video_map(&clean.results, &data.val, 2.0, data.labels.len()).unwrap();
    let m1 = video_map(&clean.results, &data.val, 1.0, data.labels.len()).unwrap();
    let manifest = kestrel_shared::Manifest::read(&f.bundle.join("manifest.json")).unwrap();
    let bundle_map = manifest.metrics.bundle.map50.unwrap();
    println!(
        "mAP@0.5 on the 2x video: {:.3} (boxes vs 2x truth), {:.3} (vs 1x truth); bundle on the validation pictures {:.3}",
        m2.map50, m1.map50, bundle_map
    );
    assert!(
        m2.map50 > bundle_map - 0.15,
        "video mAP {:.3} vs bundle {bundle_map:.3}",
        m2.map50
    );
    assert!(m2.map50 > m1.map50 + 0.1, "boxes are not in camera pixels");
}

/// SIGTERM ends a looping, paced replay cleanly: exit status 0 and a summary that says so.
#[test]
fn sigterm_stops_cleanly() {
    let f = fixture();
    let (pictures, _) = val_pictures(f);
    let video = f.root.join("loop.mjpeg");
    write_mjpeg(&pictures[..4], &video, 1, 90).unwrap();
    let summary = f.root.join("sigterm-summary.json");
    let mut child = Command::new(edge())
        .arg("run")
        .arg("--bundle")
        .arg(&f.bundle)
        .arg("--source")
        .arg(format!("mjpeg:{}", video.display()))
        .args(["--loop", "--fps", "20", "--no-json", "--summary"])
        .arg(&summary)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(child.try_wait().unwrap().is_none(), "it ended on its own");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["ended"], "stopped");
    let frames = s["stats"]["frames"].as_u64().unwrap();
    // Paced at 20 fps for ~2.5 s (minus the start).
    assert!((10..=60).contains(&frames), "{frames} frames");
}

/// Bad inputs end with a clear error naming the file, not a panic.
#[test]
fn bad_bundle_and_bad_source_are_clear_errors() {
    let f = fixture();
    let broken = f.root.join("broken-bundle");
    std::fs::create_dir_all(&broken).unwrap();
    for e in std::fs::read_dir(&f.bundle).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, broken.join(p.file_name().unwrap())).unwrap();
    }
    let head = broken.join("head.nnef.tar");
    let mut bytes = std::fs::read(&head).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&head, bytes).unwrap();
    let (ok, _, err) = run(Command::new(edge())
        .arg("run")
        .arg("--bundle")
        .arg(&broken)
        .args(["--source", "dir:/nonexistent"]));
    assert!(!ok);
    assert!(
        err.contains("head.nnef.tar") && err.contains("truncated"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let (ok, _, err) = run(Command::new(edge())
        .arg("run")
        .arg("--bundle")
        .arg(&f.bundle)
        .args(["--source", "mjpeg:/nonexistent/video.mjpeg"]));
    assert!(!ok);
    assert!(err.contains("/nonexistent/video.mjpeg"), "{err}");

    let (ok, _, err) = run(Command::new(edge())
        .arg("run")
        .arg("--bundle")
        .arg(&f.bundle)
        .args(["--source", "yuyv:/x.raw:641x480"]));
    assert!(!ok);
    assert!(err.contains("even width"), "{err}");
}

/// 10,000 frames through the whole loop (decode, preprocess, tract, decode, JSON): resident
/// memory sampled every 1,000 results stays flat after warm-up.
#[test]
fn soak_ten_thousand_frames_memory_stays_flat() {
    let f = fixture();
    let (pictures, _) = val_pictures(f);
    let video = f.root.join("soak.mjpeg");
    write_mjpeg(&pictures[..8], &video, 1, 80).unwrap();
    let run = run_edge(
        &edge(),
        &f.bundle,
        &format!("mjpeg:{}", video.display()),
        &["--loop", "--max-frames", "10000", "--quiet"],
    )
    .unwrap();
    let s = &run.summary;
    assert_eq!(s.stats.frames, 10_000);
    assert_eq!(s.ended, "max frames");
    // `--quiet` still silences the JSON lines for now, and says what to use instead.
    assert!(run.results.is_empty(), "JSON lines printed despite --quiet");
    assert!(run.stderr.contains("--no-json"), "{}", run.stderr);
    assert_eq!(s.rss_mb.len(), 10);
    let after_warmup: Vec<f64> = s.rss_mb[1..].iter().map(|&(_, m)| m).collect();
    let (lo, hi) = after_warmup
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &m| (lo.min(m), hi.max(m)));
    println!(
        "RSS over 10,000 frames: {:?} MB; {:.1} fps",
        s.rss_mb, s.stats.fps
    );
    assert!(hi - lo < 3.0, "RSS grew from {lo:.1} to {hi:.1} MB");
}

/// `capture` saves frames into DATASET/LABEL/ (continuing the numbering on a second session),
/// and the trainer reads what it collected.
#[test]
fn captured_frames_train_a_classifier() {
    let f = fixture();
    let (pictures, _) = val_pictures(f);
    let data = f.root.join("captured");
    for (label, range) in [("left", 0..6), ("right", 6..12)] {
        let video = f.root.join(format!("{label}.mjpeg"));
        write_mjpeg(&pictures[range], &video, 1, 90).unwrap();
        for _ in 0..2 {
            run_ok(
                Command::new(edge())
                    .args(["capture", "--label", label, "--count", "4", "--out"])
                    .arg(&data)
                    .arg("--source")
                    .arg(format!("mjpeg:{}", video.display())),
            );
        }
        let mut names: Vec<String> = std::fs::read_dir(data.join(label))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 8, "{names:?}");
        assert_eq!(names[0], format!("{label}-00000.jpg"));
        assert_eq!(names[7], format!("{label}-00007.jpg"));
    }
    let (ok, _, err) = run(Command::new(edge())
        .args(["capture", "--label", "../escape", "--count", "1", "--out"])
        .arg(&data)
        .args(["--source", "dir:/tmp"]));
    assert!(!ok && err.contains("--label"), "{err}");

    let cache = f.root.join("cache");
    let run_dir = f.root.join("captured-run");
    run_ok(
        kestrel(&cache)
            .args(["train", "classify", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&run_dir)
            .args(["--epochs", "2", "--val-fraction", "0.25"]),
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["labels"], serde_json::json!(["left", "right"]));
}

/// Put every file of a bundle directory into the store as blobs and install it (what a deploy
/// does); returns its id.
fn install_into_store(store_dir: &std::path::Path, bundle: &std::path::Path) -> String {
    use kestrel_edge::agent::{bundle_id, install_from_store};
    use kestrel_shared::wire::Sha256;
    let mut store = kestrel_edge::store::Store::open(store_dir).unwrap();
    let mut manifest_sha = String::new();
    for name in ["manifest.json", "trunk.nnef.tar", "head.nnef.tar"] {
        let bytes = std::fs::read(bundle.join(name)).unwrap();
        let sha = Sha256::of(&bytes).to_hex();
        store.install_blob(&sha, &bytes[..]).unwrap();
        if name == "manifest.json" {
            manifest_sha = sha;
        }
    }
    let id = bundle_id(&Sha256::from_hex(&manifest_sha).unwrap());
    install_from_store(
        &mut store,
        &id,
        &manifest_sha,
        Default::default(),
        &mut |_| Ok(()),
    )
    .unwrap();
    id
}

/// Results the loop produced: (frame, model running).
#[derive(Clone, Default)]
struct Seen(std::sync::Arc<std::sync::Mutex<Vec<(u64, String)>>>);

impl kestrel_edge::sink::Sink for Seen {
    fn name(&self) -> &str {
        "seen"
    }
    fn handle(
        &mut self,
        result: &kestrel_edge::sink::FrameResult,
        _image: &image::RgbImage,
        stats: &kestrel_edge::stats::StatsSnapshot,
    ) -> Result<(), kestrel_edge::sink::SinkError> {
        self.0
            .lock()
            .unwrap()
            .push((result.frame, stats.model.clone()));
        Ok(())
    }
}

/// The agent runs the detection loop on its current bundle and, when another bundle is installed
/// into its store (as `kestrel deploy --ssh` does), swaps it into the running loop between two
/// frames: same process, frame numbers carry on, nothing restarts.
#[test]
fn agent_swaps_a_newly_installed_bundle_into_the_running_loop() {
    use kestrel_edge::agent::{Agent, AgentConfig};
    use kestrel_edge::agent_loop::{LoopHost, TelemetrySink, spawn};
    use kestrel_edge::runtime::{Capture, LoopOptions};
    use kestrel_edge::source::{CameraSettings, Replay, SourceSpec};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    let f = fixture();
    let (pictures, _) = val_pictures(f);
    let video = f.root.join("agent.mjpeg");
    write_mjpeg(&pictures[..6], &video, 1, 90).unwrap();
    let fp32 = f.root.join("bundle-fp32");
    if !fp32.exists() {
        run_ok(
            kestrel(&f.root.join("cache"))
                .arg("export")
                .arg(f.root.join("run"))
                .arg("--out")
                .arg(&fp32)
                .args(["--quantize", "none"]),
        );
    }
    let store = tempfile::tempdir().unwrap();
    let first = install_into_store(store.path(), &f.bundle);

    let mut cfg = AgentConfig::new(store.path().to_path_buf());
    cfg.poll = Duration::from_millis(200);
    let (mut agent, handle) = Agent::new(cfg).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let capture = Capture::start(
        SourceSpec::Mjpeg(video),
        Replay {
            fps: Some(25.0),
            looping: true,
        },
        CameraSettings::default(),
        None,
        stop.clone(),
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = Seen::default();
    let telemetry = TelemetrySink::new(handle.clone());
    let detect = spawn(
        capture,
        rx,
        vec![Box::new(seen.clone()), Box::new(telemetry)],
        stop.clone(),
        // Two frames in flight: the switch must still fall between two frames, in order.
        LoopOptions {
            frames_in_flight: 2,
            ..LoopOptions::default()
        },
        Some(handle.loop_state.clone()),
    )
    .unwrap();
    let health = handle.loop_state.clone();
    let second = {
        let (store_dir, fp32, handle, stop) = (
            store.path().to_path_buf(),
            fp32.clone(),
            handle.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            let id = install_into_store(&store_dir, &fp32);
            std::thread::sleep(Duration::from_millis(2500));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            handle.stop();
            id
        })
    };
    let mut host = LoopHost::new(tx, Threads::Single);
    agent.run(None, &mut host).unwrap();
    let second = second.join().unwrap();
    let summary = detect.join().unwrap().expect("the loop ran");
    assert_ne!(first, second);
    let seen = seen.0.lock().unwrap().clone();
    let models: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
    let switch = models
        .iter()
        .position(|m| *m == second)
        .unwrap_or_else(|| panic!("never switched to {second}: {models:?}"));
    assert!(switch > 5, "ran {first} first: {models:?}");
    assert!(models[..switch].iter().all(|m| *m == first), "{models:?}");
    assert!(models[switch..].iter().all(|m| *m == second), "{models:?}");
    assert!(
        seen.len() - switch > 5,
        "ran {second} for a while: {models:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "frame numbers carry on across the switch"
    );
    assert_eq!(summary.ended, "stopped");
    // What a fleet deploy's health check reads: the loop ran the new bundle and why it ended.
    let h = health.report().expect("the loop reported");
    assert_eq!(h.bundle.as_deref(), Some(second.as_str()));
    assert_eq!(h.frames, summary.stats.frames);
    assert_eq!(h.ended.as_deref(), Some("stopped"));
}

/// `kestrel-edge bench --json` reports what the issue asks for, and onnxruntime on the same
/// model.onnx in the same run.
#[test]
fn bench_reports_latency_memory_and_the_onnxruntime_ratio() {
    let f = fixture();
    let (out, _) = run_ok(
        Command::new(edge())
            .arg("bench")
            .arg("--bundle")
            .arg(&f.bundle)
            .args([
                "--iterations",
                "5",
                "--threads",
                "2",
                "--json",
                "--onnxruntime",
            ])
            .arg(kestrel_e2e::python()),
    );
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in ["threads", "load_ms", "p50_ms", "p95_ms", "peak_rss_mb"] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
    }
    assert!(r["p95_ms"].as_f64() >= r["p50_ms"].as_f64());
    let ort = r["onnxruntime"]["p50_ms"].as_f64().unwrap();
    let ratio = r["ratio_vs_onnxruntime"].as_f64().unwrap();
    assert!((ratio - r["p50_ms"].as_f64().unwrap() / ort).abs() < 1e-6);
    assert!(r["overhead_ratio"].as_f64().unwrap() > 0.0);
    // With two threads: whole frames per second on one thread, on two per frame, and with two
    // frames in flight (one round, so each speed-up is the ratio of the rates).
    let fr = &r["frame_rate"];
    let fps = |k: &str| {
        fr[k]
            .as_f64()
            .filter(|v| *v > 0.0)
            .unwrap_or_else(|| panic!("{k}: {r}"))
    };
    assert!(fr["frames"].as_u64() >= Some(2), "{r}");
    for (speedup, way) in [
        ("intra_op_speedup", "intra_op_fps"),
        ("in_flight_speedup", "in_flight_fps"),
    ] {
        let expected = fps(way) / fps("one_thread_fps");
        assert!(
            (fps(speedup) - expected).abs() < 1e-9 * expected,
            "{speedup}: {r}"
        );
    }
    println!("bench: {r}");
}

/// `bench --profile` splits the run's time by operator kind and names its slowest nodes, slowest
/// first, each with its output shape; the parts add up to the profile's total.
#[test]
fn bench_profile_names_the_slowest_nodes() {
    let f = fixture();
    let (out, _) = run_ok(
        Command::new(edge())
            .arg("bench")
            .arg("--bundle")
            .arg(&f.bundle)
            .args(["--iterations", "3", "--json", "--profile"]),
    );
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let p = &r["kernels"][0]["profile"];
    let total = p["total_ms"].as_f64().unwrap();
    let kinds: f64 = p["by_kind"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!(
        total > 0.0 && (kinds - total).abs() < 1e-6 * total.max(1.0),
        "{p}"
    );
    let slowest = p["slowest"].as_array().unwrap();
    assert!(!slowest.is_empty() && slowest.len() <= 12, "{p}");
    let ms: Vec<f64> = slowest.iter().map(|n| n["ms"].as_f64().unwrap()).collect();
    assert!(
        ms.windows(2).all(|w| w[0] >= w[1]),
        "not slowest first: {ms:?}"
    );
    assert!(ms.iter().sum::<f64>() <= total * (1.0 + 1e-9), "{p}");
    let first = &slowest[0];
    assert!(!first["node"].as_str().unwrap().is_empty(), "{first}");
    let shape = first["shape"].as_str().unwrap();
    assert!(
        shape.split('x').all(|d| d.parse::<usize>().is_ok()),
        "shape {shape}"
    );
}
