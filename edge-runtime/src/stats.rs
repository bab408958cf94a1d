//! Live statistics of the runtime: frame rate, dropped frames and per-stage latency percentiles
//! over a sliding window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use kestrel_shared::report::{Latency, StageLatency, StatsSnapshot};

/// Samples kept per stage (the percentiles describe the last this-many frames).
pub const WINDOW: usize = 256;

/// The stages of one frame, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the capture thread to deliver a new frame.
    CaptureWait,
    /// Decoding the camera bytes (MJPEG/YUYV) to RGB.
    Decode,
    /// Resizing and normalising as the manifest says.
    Preprocess,
    /// Trunk + head in tract.
    Inference,
    /// Decoding the head's output: threshold, NMS, boxes back to frame pixels.
    Postprocess,
}

impl Stage {
    /// All stages in order.
    pub const ALL: [Stage; 5] = [
        Stage::CaptureWait,
        Stage::Decode,
        Stage::Preprocess,
        Stage::Inference,
        Stage::Postprocess,
    ];

    /// Name used in JSON and logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::CaptureWait => "capture_wait",
            Stage::Decode => "decode",
            Stage::Preprocess => "preprocess",
            Stage::Inference => "inference",
            Stage::Postprocess => "postprocess",
        }
    }
}

/// Where a frame's stage times go: the loop's [`Stats`], or a [`FrameTimes`] a worker fills
/// and hands to the loop with its result.
pub trait StageTimes {
    /// Record how long `stage` took for the current frame.
    fn record(&mut self, stage: Stage, d: Duration);
}

/// One frame's stage times, measured on a worker thread and recorded by the loop with the
/// frame's result ([`Stats::record_frame`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameTimes([Option<Duration>; 5]);

impl StageTimes for FrameTimes {
    fn record(&mut self, stage: Stage, d: Duration) {
        self.0[stage as usize] = Some(d);
    }
}

/// Percentile `q` (0..=1) of `v`, nearest rank; 0 when empty.
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// Collects per-frame timings and counts.
#[derive(Debug)]
pub struct Stats {
    model: String,
    start: Instant,
    stages: [VecDeque<f64>; 5],
    done_at: VecDeque<Instant>,
    frames: u64,
    dropped: u64,
    decode_errors: u64,
}

impl StageTimes for Stats {
    fn record(&mut self, stage: Stage, d: Duration) {
        Stats::record(self, stage, d);
    }
}

impl Stats {
    /// Empty statistics for `model`, starting now.
    pub fn new(model: &str) -> Self {
        Stats {
            model: model.to_string(),
            start: Instant::now(),
            stages: Default::default(),
            done_at: VecDeque::new(),
            frames: 0,
            dropped: 0,
            decode_errors: 0,
        }
    }

    /// Record how long `stage` took for the current frame.
    pub fn record(&mut self, stage: Stage, d: Duration) {
        let q = &mut self.stages[stage as usize];
        if q.len() == WINDOW {
            q.pop_front();
        }
        q.push_back(d.as_secs_f64() * 1e3);
    }

    /// Record the stages a worker measured for one frame.
    pub fn record_frame(&mut self, times: &FrameTimes) {
        for stage in Stage::ALL {
            if let Some(d) = times.0[stage as usize] {
                self.record(stage, d);
            }
        }
    }

    /// A frame's result was produced.
    pub fn frame_done(&mut self) {
        self.frames += 1;
        if self.done_at.len() == WINDOW {
            self.done_at.pop_front();
        }
        self.done_at.push_back(Instant::now());
    }

    /// Set the number of frames dropped so far (the capture slot counts them).
    pub fn set_dropped(&mut self, dropped: u64) {
        self.dropped = dropped;
    }

    /// A frame failed to decode.
    pub fn decode_error(&mut self) {
        self.decode_errors += 1;
    }

    /// The model changed (the agent swapped bundles).
    pub fn set_model(&mut self, model: &str) {
        self.model = model.to_string();
    }

    /// Frames processed so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Current figures.
    pub fn snapshot(&self) -> StatsSnapshot {
        let lat = |s: Stage| {
            let v: Vec<f64> = self.stages[s as usize].iter().copied().collect();
            Latency {
                p50_ms: percentile(&v, 0.5),
                p95_ms: percentile(&v, 0.95),
            }
        };
        let fps = match (self.done_at.front(), self.done_at.back()) {
            (Some(a), Some(b)) if self.done_at.len() > 1 && b > a => {
                (self.done_at.len() - 1) as f64 / (*b - *a).as_secs_f64()
            }
            _ => 0.0,
        };
        StatsSnapshot {
            model: self.model.clone(),
            frames: self.frames,
            dropped: self.dropped,
            decode_errors: self.decode_errors,
            fps,
            latency: StageLatency {
                capture_wait: lat(Stage::CaptureWait),
                decode: lat(Stage::Decode),
                preprocess: lat(Stage::Preprocess),
                inference: lat(Stage::Inference),
                postprocess: lat(Stage::Postprocess),
            },
            uptime_s: self.start.elapsed().as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&[7.0], 0.95), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn window_forgets_old_samples() {
        let mut s = Stats::new("m");
        for _ in 0..WINDOW {
            s.record(Stage::Inference, Duration::from_millis(100));
        }
        for _ in 0..WINDOW {
            s.record(Stage::Inference, Duration::from_millis(10));
        }
        let snap = s.snapshot();
        assert!((snap.latency.inference.p95_ms - 10.0).abs() < 1e-9);
        assert_eq!(snap.latency.decode.p50_ms, 0.0);
    }
}
