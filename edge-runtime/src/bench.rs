//! `kestrel-edge bench`: load time, inference latency p50/p95, per-frame overhead and peak memory
//! of a bundle, optionally against onnxruntime on the same `model.onnx` in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use image::RgbImage;
use serde::Serialize;

use crate::bundle::BundleOptions;
use crate::cli::run::threads;
use crate::kernels::{Isa, Kernels};
use crate::model::ModelFormat;
use crate::profile::{Profile, profile};
use crate::runtime::{Detector, peak_rss_mb};
use crate::source::{RawFormat, RawFrame, decode};
use crate::stats::{FrameTimes, Stats, percentile};

/// The onnxruntime side of the benchmark, shipped inside the binary.
const ORT_SCRIPT: &str = include_str!("../benches/ort_latency.py");

/// `kestrel-edge bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel-edge bench --bundle bundles/shelf-v1 --onnxruntime python3\n  kestrel-edge bench --bundle bundles/shelf-v1-int8 --threads 2 --profile --json"
)]
pub struct BenchArgs {
    /// Bundle directory written by `kestrel export`.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Threads for tract and onnxruntime (default: the board's, else 1): the global
    /// `--threads`, which `main` sets here.
    #[arg(skip)]
    pub threads: Option<usize>,
    /// Board name or file (thread default).
    #[arg(long)]
    pub board: Option<String>,
    /// Timed runs (after 5 warm-up runs).
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also time onnxruntime on the bundle's model.onnx with this Python interpreter (needs the
    /// `onnxruntime` and `numpy` packages) and report tract / onnxruntime.
    #[arg(long)]
    pub onnxruntime: Option<PathBuf>,
    /// A JPEG camera frame for the overhead measurement (default: a synthetic 640x480 frame).
    #[arg(long)]
    pub frame: Option<PathBuf>,
    /// Convolution kernels: Kestrel's where they apply (the runtime's default), tract's only, or
    /// both in turn in this run (the first figures are Kestrel's).
    #[arg(long, value_enum, default_value_t = KernelsArg::Kestrel)]
    pub kernels: KernelsArg,
    /// Rounds of (tract, onnxruntime) timings, interleaved so both see the same machine load;
    /// the report gives the median and the spread of the rounds' ratios.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Also time every node of the plan and print the time per operator kind and per operator.
    #[arg(long)]
    pub profile: bool,
}

/// `--kernels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelsArg {
    /// Kestrel's kernels where they apply, tract's for the rest.
    Kestrel,
    /// tract's kernels only (the runtime before Kestrel's kernels).
    Tract,
    /// Both, each timed in every round.
    Both,
}

impl KernelsArg {
    fn choices(self) -> Vec<Kernels> {
        let kestrel = Kernels::Kestrel(Isa::detect());
        match self {
            KernelsArg::Kestrel => vec![kestrel],
            KernelsArg::Tract => vec![Kernels::Tract],
            KernelsArg::Both => vec![kestrel, Kernels::Tract],
        }
    }
}

/// The figures of one kernel choice.
#[derive(Debug, Clone, Serialize)]
pub struct KernelsResult {
    /// `tract` or `kestrel (isa)`.
    pub kernels: String,
    /// Convolutions Kestrel's kernels took over (trunk + head).
    pub replaced: usize,
    /// Median over rounds of each round's p50, ms.
    pub p50_ms: f64,
    /// 95th percentile over every timed run, ms.
    pub p95_ms: f64,
    /// Each round's p50, ms.
    pub round_p50_ms: Vec<f64>,
    /// Median over rounds of (this p50 / onnxruntime's p50 in the same round).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_vs_onnxruntime: Option<f64>,
    /// Lowest and highest round ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_spread: Option<[f64; 2]>,
    /// Time per operator kind and operator (`--profile`), trunk + head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
}

/// onnxruntime's figures.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OrtResult {
    /// onnxruntime version.
    pub version: String,
    /// Session creation, ms.
    pub load_ms: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
}

/// Loading the bundle from one format of its trunk and head (after the measured run, so the
/// peak RSS above is the runtime's alone).
#[derive(Debug, Clone, Serialize)]
pub struct FormatLoad {
    /// `NNEF` or `ONNX`.
    pub format: String,
    /// Median over the loads of opening the bundle (read, check, parse, optimise), ms.
    pub load_ms: f64,
    /// Each load, ms (the formats alternate).
    pub loads_ms: Vec<f64>,
}

/// What `bench` measures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Threads used.
    pub threads: usize,
    /// Which files ran: `NNEF` (what boards run) or `ONNX` (bundles without NNEF).
    pub format: String,
    /// Opening the bundle: reading, sha256 checks, tract parsing and optimisation, ms.
    pub load_ms: f64,
    /// From nothing to the first frame's result: opening the bundle, then decoding,
    /// preprocessing and running the first frame (a board's start-up), ms.
    pub first_result_ms: f64,
    /// Load times of each format the bundle has and this build reads, when it has two.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<FormatLoad>,
    /// Trunk + head latency, median, ms.
    pub p50_ms: f64,
    /// Trunk + head latency, 95th percentile, ms.
    pub p95_ms: f64,
    /// Peak resident memory of this process, MB.
    pub peak_rss_mb: Option<f64>,
    /// Per-frame work outside inference, medians in ms: MJPEG decode (mozjpeg, the runtime's
    /// decoder), preprocess, postprocess.
    pub decode_ms: f64,
    /// The same frame decoded by zune-jpeg (image's pure-Rust decoder), median ms: the
    /// alternative to mozjpeg (builds with the `image-jpeg` and `mozjpeg` features).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zune_decode_ms: Option<f64>,
    /// Resize + normalise, ms.
    pub preprocess_ms: f64,
    /// Output decoding (threshold, NMS, box mapping), ms.
    pub postprocess_ms: f64,
    /// (decode + preprocess + postprocess) / inference.
    pub overhead_ratio: f64,
    /// Frame size used for the overhead.
    pub frame: [u32; 2],
    /// Bundle precision per file (`fp32` / `int8`).
    pub precision: String,
    /// onnxruntime on model.onnx, when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<OrtResult>,
    /// tract p50 / onnxruntime p50 (medians over rounds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_vs_onnxruntime: Option<f64>,
    /// Every kernel choice timed, the first being the one the fields above describe.
    pub kernels: Vec<KernelsResult>,
    /// Whole frames per second on one thread and on all of them, both ways (with more than
    /// one thread).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_rate: Option<FrameRate>,
}

/// Whole frames (decode, preprocess, inference, postprocess) per second, the two ways a board
/// can spend `threads` threads, against one thread; rounds interleave the three.
#[derive(Debug, Clone, Serialize)]
pub struct FrameRate {
    /// Frames per round and way.
    pub frames: usize,
    /// One thread, one frame at a time: median over rounds.
    pub one_thread_fps: f64,
    /// Every thread on each frame, one frame at a time (`--threads N`).
    pub intra_op_fps: f64,
    /// One thread per frame, N frames in flight (`--threads N --frames-in-flight N`).
    pub in_flight_fps: f64,
    /// intra_op / one_thread: median of the rounds' ratios, and their [min, max].
    pub intra_op_speedup: f64,
    /// Spread of the intra-op ratios over rounds.
    pub intra_op_spread: [f64; 2],
    /// in_flight / one_thread: median of the rounds' ratios.
    pub in_flight_speedup: f64,
    /// Spread of the in-flight ratios over rounds.
    pub in_flight_spread: [f64; 2],
}

/// Frames per second pushing `frames` copies of `raw` through `detector` with `workers`
/// threads taking frames in turn.
fn frames_per_second(
    detector: &Detector,
    raw: &RawFrame,
    workers: usize,
    frames: usize,
) -> anyhow::Result<f64> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let mut times = FrameTimes::default();
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < frames {
                        detector.infer(&decode(raw)?, &mut times)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a bench worker panicked"))?
        })
    })?;
    Ok(frames as f64 / t.elapsed().as_secs_f64())
}

/// [`FrameRate`] of `multi` (opened with `threads` threads) against `single` (one thread).
fn frame_rate(
    single: &Detector,
    multi: &Detector,
    threads: usize,
    raw: &RawFrame,
    frames: usize,
    rounds: usize,
) -> anyhow::Result<FrameRate> {
    let frames = frames.max(threads);
    let (mut one, mut intra, mut flight) = (Vec::new(), Vec::new(), Vec::new());
    frames_per_second(single, raw, threads, threads)?; // warm-up: every worker's first frame
    for _ in 0..rounds {
        one.push(frames_per_second(single, raw, 1, frames)?);
        intra.push(frames_per_second(multi, raw, 1, frames)?);
        flight.push(frames_per_second(single, raw, threads, frames)?);
    }
    let ratios = |v: &[f64]| -> (f64, [f64; 2]) {
        let r: Vec<f64> = v.iter().zip(&one).map(|(a, b)| a / b.max(1e-9)).collect();
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(0.0, f64::max);
        (percentile(&r, 0.5), [lo, hi])
    };
    let (intra_op_speedup, intra_op_spread) = ratios(&intra);
    let (in_flight_speedup, in_flight_spread) = ratios(&flight);
    Ok(FrameRate {
        frames,
        one_thread_fps: percentile(&one, 0.5),
        intra_op_fps: percentile(&intra, 0.5),
        in_flight_fps: percentile(&flight, 0.5),
        intra_op_speedup,
        intra_op_spread,
        in_flight_speedup,
        in_flight_spread,
    })
}

/// A synthetic 640x480 camera frame with texture and edges (so JPEG decoding does real work),
/// as MJPEG bytes.
pub fn synthetic_frame() -> Vec<u8> {
    let img = RgbImage::from_fn(640, 480, |x, y| {
        let h = x
            .wrapping_mul(2654435761)
            .wrapping_add(y.wrapping_mul(40503))
            >> 24;
        let stripe = if (x / 40 + y / 30) % 2 == 0 { 60 } else { 0 };
        image::Rgb([
            (x % 256) as u8 / 2 + stripe,
            (y % 256) as u8 / 2 + (h as u8 / 4),
            ((x + y) % 256) as u8 / 2,
        ])
    });
    // Quality 85: what UVC cameras typically send.
    crate::jpeg::encode(&img, 85).unwrap_or_default()
}

/// Run the benchmark.
pub fn measure(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let board = args
        .board
        .as_deref()
        .map(kestrel_shared::Board::resolve)
        .transpose()?;
    let threads_used = threads(args.threads, board.as_ref());
    let n_threads = match threads_used {
        crate::Threads::Single => 1,
        crate::Threads::Multi(n) => n,
    };
    let choices = args.kernels.choices();
    let open = |kernels: Kernels, format: Option<ModelFormat>| {
        let opts = BundleOptions {
            threads: threads_used,
            kernels,
            format,
            ..Default::default()
        };
        Detector::open_with(&args.bundle, &opts)
            .map_err(|e| anyhow::anyhow!("cannot load bundle {}: {e}", args.bundle.display()))
    };
    let jpeg = match &args.frame {
        Some(p) => std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => synthetic_frame(),
    };
    let (w, h) = crate::source::jpeg_size(&jpeg)
        .ok_or_else(|| anyhow::anyhow!("the benchmark frame is not a JPEG"))?;
    let raw = RawFrame {
        index: 0,
        source_ms: 0.0,
        captured: std::time::SystemTime::now(),
        width: w,
        height: h,
        format: RawFormat::Mjpeg,
        data: jpeg,
    };
    // Start-up as a board lives it: the bundle opened, then the first frame's result.
    let t = Instant::now();
    let first = open(choices[0], None)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    first.infer(&decode(&raw)?, &mut Stats::new(first.name()))?;
    let first_result_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut detectors = vec![first];
    for &k in &choices[1..] {
        detectors.push(open(k, None)?);
    }
    let files = &detectors[0].bundle().manifest.files;
    let format = ModelFormat::of(Path::new(&files.on_board()[0].1.path))
        .map_or("?".to_string(), |f| f.to_string());
    let other_formats: Vec<ModelFormat> = if files.nnef.is_some() {
        [ModelFormat::Nnef, ModelFormat::Onnx]
            .into_iter()
            .filter(|f| f.supported())
            .collect()
    } else {
        Vec::new()
    };
    let model = detectors[0]
        .bundle()
        .dir
        .join(&detectors[0].bundle().manifest.files.model.path);
    let rounds = args.rounds.max(1);
    let mut stats: Vec<Stats> = detectors.iter().map(|d| Stats::new(d.name())).collect();
    let mut all_ms: Vec<Vec<f64>> = vec![Vec::new(); detectors.len()];
    let mut round_p50: Vec<Vec<f64>> = vec![Vec::new(); detectors.len()];
    let mut decode_ms = Vec::new();
    let mut ort_rounds: Vec<OrtResult> = Vec::new();
    for _ in 0..rounds {
        for (k, detector) in detectors.iter().enumerate() {
            let mut infer_ms = Vec::new();
            for i in 0..args.iterations.max(1) + 5 {
                let t = Instant::now();
                let image = decode(&raw)?;
                let d = t.elapsed().as_secs_f64() * 1e3;
                let (_, _, ms) = detector.infer(&image, &mut stats[k])?;
                if i >= 5 {
                    decode_ms.push(d);
                    infer_ms.push(ms);
                }
            }
            round_p50[k].push(percentile(&infer_ms, 0.5));
            all_ms[k].extend(infer_ms);
        }
        if let Some(py) = &args.onnxruntime {
            ort_rounds.push(onnxruntime(py, &model, n_threads, args.iterations)?);
        }
    }
    let ort_p50: Vec<f64> = ort_rounds.iter().map(|o| o.p50_ms).collect();
    let mut results = Vec::new();
    for (k, detector) in detectors.iter().enumerate() {
        let ratios: Vec<f64> = round_p50[k]
            .iter()
            .zip(&ort_p50)
            .map(|(a, b)| a / b.max(1e-9))
            .collect();
        let replaced = {
            let b = detector.bundle();
            let (t, h) = (b.trunk.model.replaced(), b.head.replaced());
            t.convolutions() + h.convolutions()
        };
        let profile = if args.profile {
            Some(profile_bundle(detector, args.iterations)?)
        } else {
            None
        };
        results.push(KernelsResult {
            kernels: choices[k].name(),
            replaced,
            p50_ms: percentile(&round_p50[k], 0.5),
            p95_ms: percentile(&all_ms[k], 0.95),
            round_p50_ms: round_p50[k].clone(),
            ratio_vs_onnxruntime: (!ratios.is_empty()).then(|| percentile(&ratios, 0.5)),
            ratio_spread: (!ratios.is_empty()).then(|| {
                let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = ratios.iter().copied().fold(0.0, f64::max);
                [lo, hi]
            }),
            profile,
        });
    }
    let frame_rate = if n_threads > 1 {
        let single = Detector::open_with(
            &args.bundle,
            &BundleOptions {
                threads: crate::Threads::Single,
                kernels: choices[0],
                ..Default::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot load bundle {}: {e}", args.bundle.display()))?;
        Some(frame_rate(
            &single,
            &detectors[0],
            n_threads,
            &raw,
            args.iterations.max(1),
            rounds,
        )?)
    } else {
        None
    };
    let snap = stats[0].snapshot();
    let decode_p50 = percentile(&decode_ms, 0.5);
    let p50 = results[0].p50_ms;
    let overhead = decode_p50 + snap.latency.preprocess.p50_ms + snap.latency.postprocess.p50_ms;
    let precision = detectors[0]
        .bundle()
        .manifest
        .files
        .all()
        .iter()
        .map(|(role, f)| format!("{role} {:?}", f.precision).to_lowercase())
        .collect::<Vec<_>>()
        .join(", ");
    let peak = peak_rss_mb();
    drop(detectors);
    let zune_decode_ms = zune_decode_ms(&raw.data, args.iterations.max(1) * rounds)?;
    // Load times per format, alternating, three loads each (kernels as in the timed run).
    let mut formats: Vec<FormatLoad> = other_formats
        .iter()
        .map(|f| FormatLoad {
            format: f.to_string(),
            load_ms: 0.0,
            loads_ms: Vec::new(),
        })
        .collect();
    if formats.len() > 1 {
        for _ in 0..3 {
            for (i, &f) in other_formats.iter().enumerate() {
                let t = Instant::now();
                drop(open(choices[0], Some(f))?);
                formats[i].loads_ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        for f in &mut formats {
            f.load_ms = percentile(&f.loads_ms, 0.5);
        }
    } else {
        formats.clear();
    }
    let onnxruntime = (!ort_rounds.is_empty()).then(|| {
        let mid = ort_rounds
            .iter()
            .min_by(|a, b| {
                (a.p50_ms - percentile(&ort_p50, 0.5))
                    .abs()
                    .total_cmp(&(b.p50_ms - percentile(&ort_p50, 0.5)).abs())
            })
            .cloned()
            .expect("at least one round");
        OrtResult {
            p50_ms: percentile(&ort_p50, 0.5),
            ..mid
        }
    });
    Ok(BenchReport {
        threads: n_threads,
        format,
        load_ms,
        first_result_ms,
        formats,
        p50_ms: p50,
        p95_ms: results[0].p95_ms,
        peak_rss_mb: peak,
        decode_ms: decode_p50,
        zune_decode_ms,
        preprocess_ms: snap.latency.preprocess.p50_ms,
        postprocess_ms: snap.latency.postprocess.p50_ms,
        overhead_ratio: overhead / p50.max(1e-9),
        frame: [w, h],
        precision,
        ratio_vs_onnxruntime: results[0].ratio_vs_onnxruntime,
        onnxruntime,
        kernels: results,
        frame_rate,
    })
}

/// Median ms of decoding `jpeg` with zune-jpeg (through `image`), `runs` times.
#[cfg(all(feature = "image-jpeg", feature = "mozjpeg"))]
fn zune_decode_ms(jpeg: &[u8], runs: usize) -> anyhow::Result<Option<f64>> {
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)?.to_rgb8();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(img);
    }
    Ok(Some(percentile(&ms, 0.5)))
}

/// Without both codecs (board builds carry only mozjpeg, the trainer only zune-jpeg) there is no
/// second decoder to time.
#[cfg(not(all(feature = "image-jpeg", feature = "mozjpeg")))]
fn zune_decode_ms(_jpeg: &[u8], _runs: usize) -> anyhow::Result<Option<f64>> {
    Ok(None)
}

/// Profiles the bundle's trunk and head on a synthetic input (the head on the trunk's output).
fn profile_bundle(detector: &Detector, iterations: usize) -> anyhow::Result<Profile> {
    let b = detector.bundle();
    let trunk = &b.trunk.model;
    let n: usize = trunk.input_shape().iter().product();
    let x: Vec<f32> = (0..n).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();
    let mut p = profile(trunk, &x, iterations)?;
    let features = trunk.run(&x)?;
    p.add(&profile(&b.head, &features.data, iterations)?);
    Ok(p)
}

/// Time onnxruntime on `model` with `threads` intra-op threads.
pub fn onnxruntime(
    python: &Path,
    model: &Path,
    threads: usize,
    iterations: usize,
) -> anyhow::Result<OrtResult> {
    use std::io::Write;
    use std::process::Stdio;
    // The script goes in on stdin (`python -`): nothing to clean up afterwards.
    let mut child = Command::new(python)
        .arg("-")
        .arg(model)
        .arg(threads.to_string())
        .arg(iterations.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", python.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ORT_SCRIPT.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "onnxruntime benchmark failed (is `onnxruntime` installed for {}?): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| anyhow::anyhow!("onnxruntime said {line:?}: {e}"))
}
