//! `kestrel train detect` end to end: synthetic scenes written as a YOLO dataset, feature maps
//! through the ONNX trunk with tract (cached), a head trained in burn with the custom losses, the
//! run folder it leaves, and its predictions checked by pycocotools, `eval` and `predict`.

use std::path::Path;
use std::process::Command;

use kestrel_e2e::{kestrel, kill_after, python, run, run_ok, workspace};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Small multi-object scenes: 160x120 frames, so the stride-16 map is 10x8 cells.
fn synth(cache: &Path, out: &Path, preset: &str, count: u32, val: u32, size: &[&str]) {
    run_ok(
        kestrel(cache)
            .args(["synth", "detect", "--preset", preset, "--seed", "3"])
            .args([
                "--count",
                &count.to_string(),
                "--val-count",
                &val.to_string(),
            ])
            .args(size)
            .arg("--out")
            .arg(out),
    );
}

fn train(cache: &Path, data: &Path, out: &Path, extra: &[&str]) -> (String, String) {
    run_ok(
        kestrel(cache)
            .args(["train", "detect", "--data"])
            .arg(data)
            .arg("--out")
            .arg(out)
            .args(extra),
    )
}

#[test]
fn grid_detector_trains_evaluates_like_pycocotools_and_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("data");
    let size = ["--width", "160", "--height", "120"];
    synth(&cache, &data, "multi", 200, 40, &size);
    let grid = |out: &Path, epochs: &str| {
        let mut args = vec!["--head", "grid", "--epochs", epochs, "--patience", "0"];
        // The frozen trunk: this test counts phase 1's epochs (phase 2 has its own test).
        args.extend(["--fine-tune-blocks", "0"]);
        args.extend_from_slice(&size);
        train(&cache, &data, out, &args)
    };

    let one = tmp.path().join("one-epoch");
    grid(&one, "1");
    let run1 = tmp.path().join("run1");
    let (stdout, _) = grid(&run1, "20");
    assert!(stdout.contains("val mAP@0.5"), "{stdout}");
    for f in [
        "head.bpk",
        "config.json",
        "labels.txt",
        "history.csv",
        "metrics.json",
        "curves.png",
        "pr_curve.png",
        "f1_curve.png",
        "confusion.png",
        "val_predictions.json",
        "val_ground_truth.json",
    ] {
        assert!(run1.join(f).is_file(), "{f} missing from the run");
    }
    let m = json(&run1.join("metrics.json"));
    let (map50, map50_95) = (
        m["map50"].as_f64().unwrap(),
        m["map50_95"].as_f64().unwrap(),
    );
    let base = json(&one.join("metrics.json"))["map50"].as_f64().unwrap();
    // Training has to find objects: far better than after one epoch, and not trivially perfect.
    assert!(
        map50 > 0.08 && map50 > 2.0 * base && map50 < 1.0,
        "mAP@0.5 {map50} after 20 epochs, {base} after 1"
    );
    assert!(map50_95 > 0.0 && map50_95 < map50);
    // The confusion matrix (5 classes and background) accounts for every validation object once.
    let coco = &m["val"]["coco"];
    let confusion: Vec<Vec<u64>> = serde_json::from_value(coco["confusion"].clone()).unwrap();
    assert_eq!(confusion.len(), 6, "{confusion:?}");
    let objects: u64 = confusion[..5].iter().flatten().sum();
    assert_eq!(
        objects,
        coco["ground_truth"].as_u64().unwrap(),
        "{confusion:?}"
    );
    assert_eq!(coco["f1_all"].as_array().unwrap().len(), 101);
    assert_eq!(m["val_images"], 40);
    assert_eq!(
        std::fs::read_to_string(run1.join("labels.txt")).unwrap(),
        "circle\ncross\nsquare\nstar\ntriangle\n"
    );
    let history = std::fs::read_to_string(run1.join("history.csv")).unwrap();
    assert_eq!(history.lines().count(), 21, "{history}");
    assert!(history.starts_with("epoch,train_loss,val_loss,val_map50"));
    // results.csv: per-epoch validation metrics and the rate, as Ultralytics writes them.
    let results = std::fs::read_to_string(run1.join("results.csv")).unwrap();
    assert!(
        results.starts_with("epoch,phase,train_loss,val_loss,precision,recall,map50,map50_95,lr\n"),
        "{results}"
    );
    assert_eq!(results.lines().count(), 21, "{results}");
    let last: Vec<f64> = results
        .lines()
        .last()
        .unwrap()
        .split(',')
        .map(|c| c.parse().unwrap())
        .collect();
    let final_map = m["map50"].as_f64().unwrap();
    assert!(
        last[6] >= 0.0 && last[6] <= 1.0 && last[8] > 0.0,
        "{results}"
    );
    assert!(
        results.lines().skip(1).any(|l| {
            let map: f64 = l.split(',').nth(6).unwrap().parse().unwrap();
            (map - final_map).abs() < 1e-9
        }),
        "the kept epoch's mAP@0.5 ({final_map}) is one of the rows: {results}"
    );

    // pycocotools reads the run's own COCO files and finds the same mAP.
    let script = workspace().join("tests/python/coco_eval.py");
    let out = Command::new(python())
        .arg(script)
        .arg(run1.join("val_ground_truth.json"))
        .arg(run1.join("val_predictions.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let coco: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (c50, c5095) = (
        coco["map50"].as_f64().unwrap(),
        coco["map50_95"].as_f64().unwrap(),
    );
    assert!(
        (c50 - map50).abs() < 0.005 && (c5095 - map50_95).abs() < 0.005,
        "pycocotools {c50} / {c5095}, Kestrel {map50} / {map50_95}"
    );

    // Same seed, same result; the second run reads every feature map from the cache.
    let run2 = tmp.path().join("run2");
    let (stdout2, _) = grid(&run2, "20");
    assert!(stdout2.contains("240 feature maps from cache"), "{stdout2}");
    assert_eq!(json(&run2.join("metrics.json"))["map50"], m["map50"]);

    // `eval` on the same validation pictures, written as a set of their own, gives the same mAP.
    let val_only = tmp.path().join("val-only");
    synth(&cache, &val_only, "multi", 0, 40, &size);
    let (report, _) = run_ok(
        kestrel(&cache)
            .arg("eval")
            .arg(&run1)
            .arg("--data")
            .arg(&val_only),
    );
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert!(
        (report["coco"]["map50"].as_f64().unwrap() - map50).abs() < 1e-9,
        "{report}"
    );

    // `predict --run`: one JSON line per picture, boxes in its pixels; a corrupt picture is
    // reported by name and makes the exit status non-zero, the others are still answered.
    let pics = data.join("images/val");
    let broken = tmp.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let drawn = tmp.path().join("drawn");
    let (ok, stdout, stderr) = run(kestrel(&cache)
        .arg("predict")
        .arg("--run")
        .arg(&run1)
        .arg("--json")
        .arg("--draw")
        .arg(&drawn)
        .arg(pics.join("000000.png"))
        .arg(&broken)
        .arg(pics.join("000001.png")));
    assert!(!ok, "a corrupt picture must fail the command");
    assert!(stderr.contains("broken.png"), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for l in &lines {
        assert!(l["image"].as_str().unwrap().ends_with(".png"));
        for d in l["detections"].as_array().unwrap() {
            let b: Vec<f64> = serde_json::from_value(d["box"].clone()).unwrap();
            assert!(
                b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 160.0 && b[3] <= 120.0,
                "{d}"
            );
            assert!(b[0] < b[2] && b[1] < b[3], "{d}");
            let score = d["score"].as_f64().unwrap();
            assert!((0.3..=1.0).contains(&score), "{d}");
            assert!(d["label"].is_string() && d["class"].is_u64());
        }
    }
    let total: usize = lines
        .iter()
        .map(|l| l["detections"].as_array().unwrap().len())
        .sum();
    assert!(total > 0, "no detections at all on two scenes: {stdout}");
    for name in ["000000.png", "000001.png"] {
        let img = image::open(drawn.join(name)).unwrap();
        assert_eq!((img.width(), img.height()), (160, 120));
    }

    // The centroids variant (FOMO-style): centres only, scored by centre hits; its boxes are
    // one 16-pixel cell around each centre.
    let cent = tmp.path().join("centroids");
    let mut args = vec!["--head", "centroids", "--epochs", "15", "--patience", "0"];
    args.extend_from_slice(&size);
    let (stdout, _) = train(&cache, &data, &cent, &args);
    assert!(stdout.contains("centre hits"), "{stdout}");
    let m = json(&cent.join("metrics.json"));
    let f1 = m["centre_f1"].as_f64().unwrap();
    assert!(f1 > 0.2 && f1 <= 1.0, "centre F1 {f1}");
    let (stdout, _) = run_ok(
        kestrel(&cache)
            .arg("predict")
            .arg("--run")
            .arg(&cent)
            .arg("--json")
            .arg(pics.join("000002.png")),
    );
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for d in line["detections"].as_array().unwrap() {
        let b: Vec<f64> = serde_json::from_value(d["box"].clone()).unwrap();
        assert!(
            b[2] - b[0] <= 16.0 + 1e-3 && b[3] - b[1] <= 16.0 + 1e-3,
            "{d}"
        );
    }
}

#[test]
fn book_detector_learns_boxes_with_the_custom_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("book");
    synth(&cache, &data, "book", 160, 40, &[]);
    let run1 = tmp.path().join("run");
    let (stdout, _) = train(
        &cache,
        &data,
        &run1,
        &["--head", "single", "--epochs", "25", "--patience", "0"],
    );
    assert!(stdout.contains("val mean IoU"), "{stdout}");
    let m = json(&run1.join("metrics.json"));
    let iou = m["mean_iou"].as_f64().unwrap();
    let acc = m["class_accuracy"].as_f64().unwrap();
    // Untrained, the box is nowhere near (IoU about 0); on 160 scenes the head learns roughly
    // where the target is and mostly what it is (the full-size targets are for the benchmark).
    assert!(iou > 0.12 && iou < 1.0, "mean IoU {iou}");
    assert!(acc > 0.6, "class accuracy {acc}");
    let history = std::fs::read_to_string(run1.join("history.csv")).unwrap();
    let val_loss: Vec<f64> = history
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
        .collect();
    assert!(
        val_loss.iter().cloned().fold(f64::INFINITY, f64::min) < 0.5 * val_loss[0],
        "validation loss did not fall: {val_loss:?}"
    );

    // The two-class book head refuses a five-class dataset with a clear message.
    let multi = tmp.path().join("multi");
    synth(&cache, &multi, "multi", 5, 0, &[]);
    let (ok, _, stderr) = run(kestrel(&cache)
        .args(["train", "detect", "--head", "single", "--data"])
        .arg(&multi)
        .arg("--out")
        .arg(tmp.path().join("nope")));
    assert!(!ok && stderr.contains("--head grid"), "{stderr}");
}

#[test]
fn bad_annotations_are_skipped_and_counted_or_fatal_with_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("data");
    synth(
        &cache,
        &data,
        "multi",
        12,
        0,
        &["--width", "96", "--height", "64"],
    );
    // A label file with an unknown class on its first line.
    let label = data.join("labels/train/000002.txt");
    let text = std::fs::read_to_string(&label).unwrap();
    std::fs::write(&label, format!("9 0.5 0.5 0.2 0.2\n{text}")).unwrap();
    let size = ["--width", "96", "--height", "64", "--epochs", "1"];

    let (ok, _, stderr) = run(kestrel(&cache)
        .args(["train", "detect", "--strict", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("strict"))
        .args(size));
    assert!(!ok, "--strict must refuse a bad annotation");
    assert!(stderr.contains("000002.txt:1"), "{stderr}");

    let (_, stderr) = train(&cache, &data, &tmp.path().join("lenient"), &size);
    assert!(
        stderr.contains("000002.txt:1") && stderr.contains("skipped annotation"),
        "{stderr}"
    );
    let m = json(&tmp.path().join("lenient/metrics.json"));
    assert_eq!(m["annotation_issues"].as_array().unwrap().len(), 1, "{m}");
}

/// Phase 2 of a detector, as in the book: the top blocks below the cut train with the head (here
/// with the IoU-aware objectness), the phase-1 head competes as epoch 0 so validation loss never
/// ends worse, and the fine-tuned run predicts and exports like any other.
#[test]
fn fine_tuned_grid_detector_never_ends_worse_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("data");
    let size = ["--width", "160", "--height", "120"];
    synth(&cache, &data, "multi", 60, 20, &size);
    let run1 = tmp.path().join("run");
    let mut args = vec![
        "--head",
        "grid",
        "--objectness",
        "iou",
        "--shift-cells",
        "2",
        "--epochs",
        "16",
        "--patience",
        "0",
        "--fine-tune-blocks",
        "2",
        "--fine-tune-epochs",
        "2",
    ];
    args.extend_from_slice(&size);
    let (stdout, _) = train(&cache, &data, &run1, &args);
    assert!(stdout.contains("after fine-tuning"), "{stdout}");
    let val_losses = |file: &str| -> Vec<f64> {
        std::fs::read_to_string(run1.join(file))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(2).unwrap().parse().unwrap())
            .collect()
    };
    let (phase1, phase2) = (
        val_losses("history.csv"),
        val_losses("finetune-history.csv"),
    );
    assert_eq!((phase1.len(), phase2.len()), (16, 2));
    let config = json(&run1.join("config.json"));
    assert_eq!(config["options"]["train"]["objectness"], "iou");
    assert_eq!(config["options"]["train"]["shift_cells"], 2);
    let m = json(&run1.join("metrics.json"));
    assert!(m["map50"].as_f64().unwrap() >= 0.0);
    // The kept head is phase 1's best (epoch 0) or a phase-2 epoch that beat it on val loss.
    let best = m["best_epoch"].as_u64().unwrap() as usize;
    let phase1_best = phase1.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(best <= 2, "{m}");
    if best > 0 {
        assert!(
            phase2[best - 1] <= phase1_best * (1.0 + 1e-3),
            "phase 2 kept epoch {best} ({phase2:?}) though phase 1 reached {phase1_best}"
        );
    }

    // The fine-tuned blocks travel in head.onnx, and the bundle's tract mAP matches burn's.
    let bundle = tmp.path().join("bundle");
    let (out, _) = run_ok(
        kestrel(&cache)
            .arg("export")
            .arg(&run1)
            .arg("--out")
            .arg(&bundle)
            .args(["--quantize", "none", "--no-sign"]),
    );
    let manifest = json(&bundle.join("manifest.json"));
    assert_eq!(manifest["fine_tuned_blocks"], 2, "{out}");
    // The export measures the float bundle in tract on the same validation set burn used: the
    // same boxes up to float rounding, so the same mAP (a score within 1e-5 of a threshold could
    // flip one box: 0.01 allows one of the ~40 boxes of these 20 scenes).
    let tract_map = manifest["metrics"]["bundle"]["map50"].as_f64().unwrap();
    let burn_map = m["map50"].as_f64().unwrap();
    println!("mAP@0.5: burn {burn_map}, the bundle in tract {tract_map}");
    assert!(
        burn_map > 0.0,
        "a detector that finds nothing proves nothing here"
    );
    assert!(
        (tract_map - burn_map).abs() <= 0.01,
        "burn {burn_map}, tract {tract_map}"
    );
    let picture = data.join("images/val/000000.png");
    let (pred, _) = run_ok(
        kestrel(&cache)
            .args(["predict", "--json", "--run"])
            .arg(&run1)
            .arg(&picture),
    );
    let line: serde_json::Value = serde_json::from_str(pred.lines().next().unwrap()).unwrap();
    assert!(line["detections"].is_array(), "{pred}");
}

/// A run killed in phase 1 and again in phase 2, resumed each time with `kestrel train --resume`,
/// ends with the uninterrupted run's numbers: every row of results.csv and the final metrics.
#[test]
fn a_killed_run_resumes_to_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("data");
    let size = ["--width", "160", "--height", "120"];
    synth(&cache, &data, "multi", 60, 20, &size);
    let mut args = vec![
        "--head",
        "grid",
        "--shift-cells",
        "1",
        "--lr-schedule",
        "cosine",
        "--epochs",
        "12",
        "--patience",
        "0",
        "--fine-tune-blocks",
        "1",
        "--fine-tune-epochs",
        "4",
    ];
    args.extend_from_slice(&size);
    let whole = tmp.path().join("whole");
    train(&cache, &data, &whole, &args);

    let cut = tmp.path().join("cut");
    let mut cmd = kestrel(&cache);
    cmd.args(["train", "detect", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&cut)
        .args(&args);
    kill_after(&mut cmd, &cut.join("checkpoints/phase1"), 3);
    assert!(!cut.join("metrics.json").exists());
    let mut resume = kestrel(&cache);
    resume.arg("train").arg("--resume").arg(&cut);
    kill_after(&mut resume, &cut.join("checkpoints/phase2"), 1);
    let (stdout, _) = run_ok(kestrel(&cache).arg("train").arg("--resume").arg(&cut));
    assert!(stdout.contains("after fine-tuning"), "{stdout}");

    let read = |run: &Path, file: &str| std::fs::read_to_string(run.join(file)).unwrap();
    assert_eq!(read(&cut, "results.csv"), read(&whole, "results.csv"));
    assert_eq!(read(&cut, "results.csv").lines().count(), 1 + 12 + 4);
    let (a, b) = (
        json(&whole.join("metrics.json")),
        json(&cut.join("metrics.json")),
    );
    for key in ["map50", "map50_95", "best_epoch"] {
        assert_eq!(a[key], b[key], "{key}");
    }

    // A finished run has nothing to resume; a run whose dataset changed is refused.
    let (ok, _, err) = run(kestrel(&cache).arg("train").arg("--resume").arg(&cut));
    assert!(!ok && err.contains("nothing to resume"), "{err}");
    let other = tmp.path().join("other");
    let mut cmd = kestrel(&cache);
    cmd.args(["train", "detect", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&other)
        .args(&args);
    kill_after(&mut cmd, &other.join("checkpoints/phase1"), 1);
    std::fs::write(data.join("data.yaml"), "names: [a, b, c, d, e]\n").unwrap();
    let (ok, _, err) = run(kestrel(&cache).arg("train").arg("--resume").arg(&other));
    assert!(!ok && err.contains("classes changed"), "{err}");
}
