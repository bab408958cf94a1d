//! Replayed camera video for the edge runtime: annotated pictures become an MJPEG stream (what
//! many cameras send), `kestrel-edge run` detects on it, and its JSON lines are scored against the
//! pictures' ground truth. The demo and the end-to-end tests use this to measure the board's side.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::data::annotated::{AnnotatedImage, Object};
use crate::eval::{DetectionMetrics, EvalInput, evaluate};
use image::imageops::FilterType;
use kestrel_shared::report::{FrameResult, LoopSummary};
use kestrel_shared::{BBox, Detection};

/// Write `pictures`, each scaled by `scale` (a camera frame larger than the model input), as
/// concatenated JPEG frames of `quality` into `out`. Returns the frame size.
pub fn write_mjpeg(
    pictures: &[PathBuf],
    out: &Path,
    scale: u32,
    quality: u8,
) -> anyhow::Result<(u32, u32)> {
    let mut stream = Vec::new();
    let mut size = (0, 0);
    for p in pictures {
        let img = kestrel_shared::picture::open(p)?;
        let (w, h) = (img.width() * scale, img.height() * scale);
        let img = if scale == 1 {
            img
        } else {
            image::imageops::resize(&img, w, h, FilterType::Triangle)
        };
        size = (w, h);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut stream, quality)
            .encode_image(&img)?;
    }
    std::fs::write(out, stream).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    Ok(size)
}

/// The `kestrel-edge` binary built next to this executable.
pub fn edge_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("kestrel-edge");
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "kestrel-edge is not built next to {}: build both with `cargo build --workspace --bins`",
        exe.display()
    )
}

/// What one `kestrel-edge run` produced.
#[derive(Debug, Clone)]
pub struct EdgeRun {
    /// One result per processed frame, in order.
    pub results: Vec<FrameResult>,
    /// The runtime's final summary (`--summary`).
    pub summary: LoopSummary,
    /// Its stderr (statistics lines, warnings).
    pub stderr: String,
}

fn read_summary(path: &Path) -> anyhow::Result<LoopSummary> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Run `kestrel-edge run --bundle BUNDLE --source SOURCE EXTRA...` and collect its JSON lines
/// and summary.
pub fn run_edge(
    bin: &Path,
    bundle: &Path,
    source: &str,
    extra: &[&str],
) -> anyhow::Result<EdgeRun> {
    let dir = tempfile::tempdir()?;
    let summary = dir.path().join("summary.json");
    let out = Command::new(bin)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .args(["--source", source])
        .arg("--summary")
        .arg(&summary)
        .args(extra)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", bin.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        anyhow::bail!("kestrel-edge run failed: {stderr}");
    }
    let results = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<FrameResult>, _>>()?;
    Ok(EdgeRun {
        results,
        summary: read_summary(&summary)?,
        stderr,
    })
}

/// COCO mAP of the runtime's results on a replay of `truth` (frame `i` = picture `i`, scaled by
/// `scale`): ground-truth boxes are scaled to frame pixels, frames never processed count as
/// frames with no detection.
pub fn video_map(
    results: &[FrameResult],
    truth: &[AnnotatedImage],
    scale: f32,
    classes: usize,
) -> anyhow::Result<DetectionMetrics> {
    let ground_truth: Vec<Vec<Object>> = truth
        .iter()
        .map(|a| {
            a.objects
                .iter()
                .map(|o| Object {
                    class: o.class,
                    bbox: BBox::new(
                        o.bbox.x0 * scale,
                        o.bbox.y0 * scale,
                        o.bbox.x1 * scale,
                        o.bbox.y1 * scale,
                    ),
                })
                .collect()
        })
        .collect();
    let mut detections = vec![Vec::new(); truth.len()];
    for r in results {
        if let Some(slot) = detections.get_mut(r.frame as usize) {
            *slot = r
                .detections
                .iter()
                .map(|d| Detection {
                    class: d.class,
                    score: d.score,
                    bbox: d.bbox,
                })
                .collect();
        }
    }
    Ok(evaluate(
        &EvalInput {
            ground_truth: &ground_truth,
            ignored: &[],
            detections: &detections,
            classes,
        },
        0.0,
    )?)
}
