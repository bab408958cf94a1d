//! `kestrel-edge bench`: load time, inference latency p50/p95, per-frame overhead and peak memory
//! of a bundle, optionally against onnxruntime on the same `model.onnx` in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use image::RgbImage;
use serde::Serialize;

use crate::run_cmd::threads;
use crate::runtime::{Detector, peak_rss_mb};
use crate::source::{RawFormat, RawFrame, decode};
use crate::stats::{Stats, percentile};

/// The onnxruntime side of the benchmark, shipped inside the binary.
const ORT_SCRIPT: &str = include_str!("../benches/ort_latency.py");

/// `kestrel-edge bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Bundle directory written by `kestrel export`.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Threads for tract and onnxruntime (default: the board's, else 1).
    #[arg(long)]
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

/// What `bench` measures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Threads used.
    pub threads: usize,
    /// Opening the bundle: reading, sha256 checks, tract parsing and optimisation, ms.
    pub load_ms: f64,
    /// Trunk + head latency, median, ms.
    pub p50_ms: f64,
    /// Trunk + head latency, 95th percentile, ms.
    pub p95_ms: f64,
    /// Peak resident memory of this process, MB.
    pub peak_rss_mb: Option<f64>,
    /// Per-frame work outside inference, medians in ms: MJPEG decode, preprocess, postprocess.
    pub decode_ms: f64,
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
    /// tract p50 / onnxruntime p50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_vs_onnxruntime: Option<f64>,
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
    let mut out = Vec::new();
    // Quality 85: what UVC cameras typically send.
    let _ = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85).encode_image(&img);
    out
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
    let t = Instant::now();
    let detector = Detector::open(&args.bundle, threads_used)
        .map_err(|e| anyhow::anyhow!("cannot load bundle {}: {e}", args.bundle.display()))?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;

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
    let mut stats = Stats::new(detector.name());
    let mut decode_ms = Vec::new();
    let mut infer_ms = Vec::new();
    for i in 0..args.iterations.max(1) + 5 {
        let t = Instant::now();
        let image = decode(&raw)?;
        let d = t.elapsed().as_secs_f64() * 1e3;
        let (_, _, ms) = detector.infer(&image, &mut stats)?;
        if i >= 5 {
            decode_ms.push(d);
            infer_ms.push(ms);
        }
    }
    let snap = stats.snapshot();
    let decode_p50 = percentile(&decode_ms, 0.5);
    let p50 = percentile(&infer_ms, 0.5);
    let overhead = decode_p50 + snap.latency.preprocess.p50_ms + snap.latency.postprocess.p50_ms;
    let precision = detector
        .bundle()
        .manifest
        .files
        .all()
        .iter()
        .map(|(role, f)| format!("{role} {:?}", f.precision).to_lowercase())
        .collect::<Vec<_>>()
        .join(", ");
    let peak = peak_rss_mb();
    let model = detector
        .bundle()
        .dir
        .join(&detector.bundle().manifest.files.model.path);
    drop(detector);
    let onnxruntime = match &args.onnxruntime {
        Some(py) => Some(onnxruntime(py, &model, n_threads, args.iterations)?),
        None => None,
    };
    Ok(BenchReport {
        threads: n_threads,
        load_ms,
        p50_ms: p50,
        p95_ms: percentile(&infer_ms, 0.95),
        peak_rss_mb: peak,
        decode_ms: decode_p50,
        preprocess_ms: snap.latency.preprocess.p50_ms,
        postprocess_ms: snap.latency.postprocess.p50_ms,
        overhead_ratio: overhead / p50.max(1e-9),
        frame: [w, h],
        precision,
        ratio_vs_onnxruntime: onnxruntime.as_ref().map(|o| p50 / o.p50_ms.max(1e-9)),
        onnxruntime,
    })
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

/// `kestrel-edge bench`: measure and print.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let r = measure(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!("bundle     {} ({})", args.bundle.display(), r.precision);
    println!("threads    {}", r.threads);
    println!("load       {:.0} ms", r.load_ms);
    println!(
        "inference  p50 {:.2} ms, p95 {:.2} ms (trunk + head, tract)",
        r.p50_ms, r.p95_ms
    );
    println!(
        "per frame  decode {:.2} ms ({}x{} MJPEG), preprocess {:.2} ms, postprocess {:.3} ms = {:.0}% of inference",
        r.decode_ms,
        r.frame[0],
        r.frame[1],
        r.preprocess_ms,
        r.postprocess_ms,
        r.overhead_ratio * 100.0
    );
    if let Some(m) = r.peak_rss_mb {
        println!("peak RSS   {m:.1} MB");
    }
    if let (Some(o), Some(ratio)) = (&r.onnxruntime, r.ratio_vs_onnxruntime) {
        println!(
            "onnxruntime {} on model.onnx: load {:.0} ms, p50 {:.2} ms, p95 {:.2} ms; tract / onnxruntime = {:.2}x",
            o.version, o.load_ms, o.p50_ms, o.p95_ms, ratio
        );
    }
    Ok(())
}
