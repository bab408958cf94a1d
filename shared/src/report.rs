//! What `kestrel-edge run` reports, as both sides read it: one [`FrameResult`] per frame (the
//! JSON lines, and what every sink receives), the live [`StatsSnapshot`] (`/stats`, `--stats`)
//! and the [`LoopSummary`] at the end. The trainer reads them back when it replays a video
//! through the board runtime (`kestrel demo` and the end-to-end tests score its detections).

use serde::{Deserialize, Serialize};

use crate::BBox;

/// One detection with its label, box in pixels of the camera frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabeledDetection {
    /// Label from the bundle's manifest.
    pub label: String,
    /// Class index in the manifest's labels.
    pub class: usize,
    /// Confidence in [0, 1].
    pub score: f32,
    /// Box corners in frame pixels, `[x0, y0, x1, y1]`.
    #[serde(rename = "box")]
    pub bbox: BBox,
}

/// The top class of a classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// Label of the most likely class.
    pub label: String,
    /// Its index.
    pub class: usize,
    /// Its softmax probability.
    pub score: f32,
}

/// The result of one frame, as every sink receives it (and the JSON line printed for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameResult {
    /// Wall-clock time the frame was taken, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Time of the frame on the source's clock, milliseconds since the source started (for a
    /// replay at `--fps`, `index * 1000 / fps`): sinks that hold state over time use this, so a
    /// replay gives the same transitions whatever the machine's speed.
    pub source_ms: f64,
    /// Frame number from the source (0-based; gaps are frames dropped because inference was busy).
    pub frame: u64,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Detections (detection bundles), best first.
    pub detections: Vec<LabeledDetection>,
    /// Top class (classification bundles).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub classification: Option<Classification>,
    /// Time spent in trunk + head, milliseconds.
    pub inference_ms: f64,
}

impl FrameResult {
    /// True when a detection (or the classification) with this label is present.
    pub fn sees(&self, label: &str) -> bool {
        self.detections.iter().any(|d| d.label == label)
            || self
                .classification
                .as_ref()
                .is_some_and(|c| c.label == label)
    }
}

/// p50 / p95 of one stage, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
}

/// Per-stage latency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageLatency {
    /// Waiting for a frame.
    pub capture_wait: Latency,
    /// Camera bytes to RGB.
    pub decode: Latency,
    /// Resize + normalise.
    pub preprocess: Latency,
    /// Trunk + head.
    pub inference: Latency,
    /// Threshold, NMS, box mapping.
    pub postprocess: Latency,
}

/// What the runtime reports about itself (the `/stats` JSON, the `--stats` line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Name of the model running (bundle id or directory name).
    pub model: String,
    /// Frames processed (results produced).
    pub frames: u64,
    /// Frames the capture side produced that inference never saw (it was busy).
    pub dropped: u64,
    /// Frames that failed to decode and were skipped.
    pub decode_errors: u64,
    /// Results per second over the window.
    pub fps: f64,
    /// Per-stage latency over the window.
    pub latency: StageLatency,
    /// Seconds since the runtime started.
    pub uptime_s: f64,
}

impl StatsSnapshot {
    /// One human line for `--stats`.
    pub fn line(&self) -> String {
        let l = &self.latency;
        format!(
            "{}: {:.1} fps, {} frames, {} dropped, {} bad; ms p50/p95: wait {:.1}/{:.1} decode {:.1}/{:.1} pre {:.1}/{:.1} infer {:.1}/{:.1} post {:.1}/{:.1}",
            self.model,
            self.fps,
            self.frames,
            self.dropped,
            self.decode_errors,
            l.capture_wait.p50_ms,
            l.capture_wait.p95_ms,
            l.decode.p50_ms,
            l.decode.p95_ms,
            l.preprocess.p50_ms,
            l.preprocess.p95_ms,
            l.inference.p50_ms,
            l.inference.p95_ms,
            l.postprocess.p50_ms,
            l.postprocess.p95_ms,
        )
    }
}

/// What a finished loop reports.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoopSummary {
    /// Final statistics.
    pub stats: StatsSnapshot,
    /// Milliseconds from process start (or loop start) to the first result.
    pub first_result_ms: Option<f64>,
    /// Peak resident memory of the process, MB (Linux).
    pub peak_rss_mb: Option<f64>,
    /// Why the loop ended: `end of source`, `stopped`, `max frames`, or the source's error.
    pub ended: String,
    /// Resident memory (MB) after every `RSS_SAMPLE_EVERY` (1000) results: flat in a healthy run.
    #[serde(default)]
    pub rss_mb: Vec<(u64, f64)>,
}
