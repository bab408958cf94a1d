//! What the runtime produces per frame, and the [`Sink`]s that act on it.
//!
//! Every sink sees the same [`FrameResult`] (detections in frame pixels, or a classification), the
//! decoded frame and the live [`StatsSnapshot`]. Sinks are called on the inference thread, in the
//! order given, after each frame; a sink that fails is logged and the others carry on.

use std::io::Write;

use image::RgbImage;
use kestrel_shared::BBox;
use serde::{Deserialize, Serialize};

use crate::stats::StatsSnapshot;

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

/// A sink failed; the runtime logs it and carries on.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing failed.
    #[error("{sink}: {source}")]
    Io {
        /// The sink.
        sink: String,
        /// Why.
        source: std::io::Error,
    },
    /// Anything else (a GPIO line, an encoder).
    #[error("{sink}: {reason}")]
    Other {
        /// The sink.
        sink: String,
        /// Why.
        reason: String,
    },
}

/// Something that acts on every frame's result.
pub trait Sink {
    /// Short name for logs (`json`, `gpio`, `http`, `save`).
    fn name(&self) -> &str;
    /// Handle one frame's result. `image` is the decoded frame the result refers to.
    fn handle(
        &mut self,
        result: &FrameResult,
        image: &RgbImage,
        stats: &StatsSnapshot,
    ) -> Result<(), SinkError>;
    /// The runtime is stopping: release what the sink holds (pin low, server closed).
    fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// One JSON object per frame on a writer (stdout by default), flushed per line so a pipe sees
/// results as they happen.
pub struct JsonLines<W: Write> {
    out: W,
}

impl<W: Write> JsonLines<W> {
    /// A sink writing to `out`.
    pub fn new(out: W) -> Self {
        JsonLines { out }
    }

    /// The writer back (tests).
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn name(&self) -> &str {
        "json"
    }

    fn handle(
        &mut self,
        result: &FrameResult,
        _image: &RgbImage,
        _stats: &StatsSnapshot,
    ) -> Result<(), SinkError> {
        let io = |source| SinkError::Io {
            sink: "json".into(),
            source,
        };
        serde_json::to_writer(&mut self.out, result).map_err(|e| io(e.into()))?;
        self.out.write_all(b"\n").map_err(io)?;
        self.out.flush().map_err(io)
    }
}
