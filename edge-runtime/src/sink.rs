//! What the runtime produces per frame, and the [`Sink`]s that act on it.
//!
//! Every sink sees the same [`FrameResult`] (detections in frame pixels, or a classification), the
//! decoded frame and the live [`StatsSnapshot`]. Sinks are called on the inference thread, in the
//! order given, after each frame; a sink that fails is logged and the others carry on.

use std::io::Write;

use image::RgbImage;
pub use kestrel_shared::report::{Classification, FrameResult, LabeledDetection};

use crate::stats::StatsSnapshot;

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
