//! The detection loop: a capture thread keeps the newest frame in a single slot, the inference
//! side takes it, decodes, preprocesses, runs trunk + head, decodes the output to boxes in frame
//! pixels and hands the result to every sink.
//!
//! When inference is slower than the camera, frames are dropped (and counted), never queued: the
//! result always describes a recent frame and memory stays flat. A replay without `--fps` runs
//! in lockstep instead (the capture side waits until its frame was taken), so every recorded
//! frame is processed, which is what an evaluation on a video wants.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use image::RgbImage;
use kestrel_shared::Detection;
use kestrel_shared::detect::clip_detections;
use kestrel_shared::manifest::Task;
use tracing::{info, warn};

use crate::bundle::{Bundle, BundleError, BundleOptions};
use crate::model::Threads;
use crate::sink::{Classification, FrameResult, LabeledDetection, Sink};
use crate::source::{CameraSettings, RawFrame, Replay, SourceError, SourceSpec, decode};
use crate::stats::{FrameTimes, Stage, StageTimes, Stats};

/// How the capture side hands frames over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SlotMode {
    /// Overwrite the slot with each new frame; frames inference never took are dropped.
    Newest,
    /// Wait until the slot was taken before putting the next frame (replays: every frame).
    Lockstep,
}

#[derive(Default)]
struct SlotState {
    frame: Option<RawFrame>,
    dropped: u64,
    ended: Option<Option<String>>,
}

/// The single slot between the capture thread and inference.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // A panicking capture thread cannot leave the slot inconsistent: take it anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The capture thread and its slot.
pub struct Capture {
    slot: Arc<Slot>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    describe: String,
    mode: SlotMode,
}

impl Capture {
    /// Open `spec` on a new capture thread and start filling the slot. Fails if the source cannot
    /// be opened (a camera is retried inside the source instead). `mode` defaults to
    /// [`SlotMode::Newest`] for live sources and paced replays, [`SlotMode::Lockstep`] otherwise.
    pub fn start(
        spec: SourceSpec,
        replay: Replay,
        camera: CameraSettings,
        mode: Option<SlotMode>,
        stop: Arc<AtomicBool>,
    ) -> Result<Capture, SourceError> {
        let slot = Arc::new(Slot::default());
        let (opened_tx, opened_rx) = mpsc::channel();
        let thread = {
            let slot = slot.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("capture".into())
                .spawn(move || {
                    // The source lives on this thread (a camera handle need not be Send).
                    let mut src = match spec.open(replay, camera, stop.clone()) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return;
                        }
                    };
                    let mode = mode.unwrap_or(if src.is_live() || replay.fps.is_some() {
                        SlotMode::Newest
                    } else {
                        SlotMode::Lockstep
                    });
                    let _ = opened_tx.send(Ok((src.describe(), mode)));
                    let end = loop {
                        if stop.load(Ordering::Relaxed) {
                            break None;
                        }
                        match src.next_frame() {
                            Ok(Some(frame)) => {
                                let mut s = slot.lock();
                                if mode == SlotMode::Lockstep {
                                    while s.frame.is_some() && !stop.load(Ordering::Relaxed) {
                                        s = slot
                                            .changed
                                            .wait_timeout(s, Duration::from_millis(100))
                                            .unwrap_or_else(|p| p.into_inner())
                                            .0;
                                    }
                                }
                                if s.frame.replace(frame).is_some() {
                                    s.dropped += 1;
                                }
                                drop(s);
                                slot.changed.notify_all();
                            }
                            Ok(None) => break None,
                            Err(e) => break Some(e.to_string()),
                        }
                    };
                    slot.lock().ended = Some(end);
                    slot.changed.notify_all();
                })
                .map_err(|e| SourceError::Camera {
                    index: 0,
                    reason: format!("cannot start the capture thread: {e}"),
                })?
        };
        let (describe, mode) = opened_rx.recv().unwrap_or_else(|_| {
            Err(SourceError::Camera {
                index: 0,
                reason: "the capture thread ended before opening the source".into(),
            })
        })?;
        info!("source: {describe} ({mode:?})");
        Ok(Capture {
            slot,
            stop,
            thread: Some(thread),
            describe,
            mode,
        })
    }

    /// Take the newest frame, waiting for one. `None` when the source has ended (or stop was
    /// requested and nothing is left); `Some(Err)` when it failed.
    pub fn next(&self) -> Option<Result<RawFrame, String>> {
        let mut s = self.slot.lock();
        loop {
            if let Some(f) = s.frame.take() {
                drop(s);
                self.slot.changed.notify_all();
                return Some(Ok(f));
            }
            if let Some(end) = &s.ended {
                return end.clone().map(Err);
            }
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            s = self
                .slot
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Frames overwritten before inference took them.
    pub fn dropped(&self) -> u64 {
        self.slot.lock().dropped
    }

    /// The source's description.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// How frames are handed over.
    pub fn mode(&self) -> SlotMode {
        self.mode
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.slot.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A bundle ready to run on frames: models optimised once, labels, decoding settings.
#[derive(Debug)]
pub struct Detector {
    bundle: Bundle,
    score_threshold: f32,
    name: String,
}

impl Detector {
    /// Open and check a bundle (see [`Bundle::open`]) for frame-by-frame inference.
    pub fn open(path: &Path, threads: Threads) -> Result<Self, BundleError> {
        Self::open_with(
            path,
            &BundleOptions {
                threads,
                ..BundleOptions::default()
            },
        )
    }

    /// Like [`Detector::open`], with the options given (benchmarks compare kernels and formats);
    /// the batch is always one frame.
    pub fn open_with(path: &Path, opts: &BundleOptions) -> Result<Self, BundleError> {
        let bundle = Bundle::open_with(
            path,
            &BundleOptions {
                batch: 1,
                merged: false,
                ..*opts
            },
        )?;
        let score_threshold = bundle
            .manifest
            .decode
            .as_ref()
            .map_or(0.0, |d| d.score_threshold);
        let name = bundle
            .dir
            .canonicalize()
            .unwrap_or(bundle.dir.clone())
            .file_name()
            .map_or_else(|| "bundle".into(), |n| n.to_string_lossy().into_owned());
        Ok(Detector {
            bundle,
            score_threshold,
            name,
        })
    }

    /// Keep detections scoring at least `t` instead of the manifest's threshold.
    pub fn with_score_threshold(mut self, t: f32) -> Self {
        self.score_threshold = t;
        self
    }

    /// The bundle.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Model name for stats (the bundle directory's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bundle directory.
    pub fn dir(&self) -> PathBuf {
        self.bundle.dir.clone()
    }

    /// Run one decoded frame: preprocess, trunk + head, decode, boxes to frame pixels.
    /// Timings go into `stats`. Returns detections (or a classification) and inference ms.
    pub fn infer(
        &self,
        image: &RgbImage,
        stats: &mut impl StageTimes,
    ) -> Result<(Vec<LabeledDetection>, Option<Classification>, f64), BundleError> {
        let spec = &self.bundle.manifest.input.preprocess;
        let t = Instant::now();
        let x = spec.apply(image);
        stats.record(Stage::Preprocess, t.elapsed());
        let t = Instant::now();
        let raw = self.bundle.run(std::slice::from_ref(&x))?.remove(0);
        let inference = t.elapsed();
        stats.record(Stage::Inference, inference);
        let t = Instant::now();
        let labels = &self.bundle.manifest.labels;
        let label = |c: usize| labels.get(c).cloned().unwrap_or_else(|| format!("#{c}"));
        let (dets, class) = match self.bundle.manifest.task {
            Task::Classify { .. } => (Vec::new(), Some(classify(&raw, &label))),
            Task::Detect { .. } => {
                let (w, h) = image.dimensions();
                let map = spec.frame_mapping(w, h);
                let dets: Vec<Detection> = self
                    .bundle
                    .decode(&raw, self.score_threshold)
                    .into_iter()
                    .filter(|d| d.score >= self.score_threshold)
                    .map(|d| Detection {
                        bbox: map.to_frame(d.bbox),
                        ..d
                    })
                    .collect();
                let dets = clip_detections(dets, w as f32, h as f32)
                    .into_iter()
                    .map(|d| LabeledDetection {
                        label: label(d.class),
                        class: d.class,
                        score: d.score,
                        bbox: d.bbox,
                    })
                    .collect();
                (dets, None)
            }
        };
        stats.record(Stage::Postprocess, t.elapsed());
        Ok((dets, class, inference.as_secs_f64() * 1e3))
    }
}

fn classify(logits: &[f32], label: &dyn Fn(usize) -> String) -> Classification {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let (class, p) = exp
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or((0, 0.0), |(i, &e)| (i, e / sum));
    Classification {
        label: label(class),
        class,
        score: p,
    }
}

/// How the loop runs.
#[derive(Debug, Clone, Default)]
pub struct LoopOptions {
    /// Stop after this many results.
    pub max_frames: Option<u64>,
    /// Log a stats line this often (`--stats`).
    pub stats_every: Option<Duration>,
    /// When the process started (for the time to the first result).
    pub started: Option<Instant>,
    /// Frames decoded and run at once, each on its own thread, results still in capture order
    /// (0 or 1: one frame after another). More frames in flight raise the frame rate on several
    /// cores; each frame's latency stays that of one core.
    pub frames_in_flight: usize,
}

pub use kestrel_shared::report::LoopSummary;

/// Results between two resident-memory samples in [`LoopSummary::rss_mb`].
pub const RSS_SAMPLE_EVERY: u64 = 1000;

/// Peak resident set size of this process in MB (`VmHWM`), where Linux tells it.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Current resident set size of this process in MB (`VmRSS`).
pub fn rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Run the loop until the source ends, `stop` is set or `max_frames` results were produced.
/// A frame that fails to decode is counted and skipped; a sink that fails is logged. A new
/// [`Detector`] arriving on `swap` replaces the running one between two frames (the agent
/// installs bundles this way without restarting). With [`LoopOptions::frames_in_flight`] above
/// one, worker threads take frames in turn and the results reach the sinks in capture order.
/// Sinks are closed at the end.
pub fn run_loop(
    detector: Detector,
    capture: &Capture,
    sinks: &mut [Box<dyn Sink>],
    stop: &AtomicBool,
    swap: Option<&mpsc::Receiver<Detector>>,
    opts: &LoopOptions,
) -> LoopSummary {
    let mut out = Results {
        stats: Stats::new(detector.name()),
        started: opts.started.unwrap_or_else(Instant::now),
        first_result_ms: None,
        last_stats: Instant::now(),
        rss: Vec::new(),
        sinks,
        stats_every: opts.stats_every,
    };
    let io = LoopIo {
        capture,
        stop,
        swap,
        opts,
    };
    let ended = if opts.frames_in_flight > 1 {
        pipelined(detector, &mut out, &io)
    } else {
        sequential(detector, &mut out, &io)
    };
    for sink in out.sinks.iter_mut() {
        if let Err(e) = sink.close() {
            warn!("closing sink {}: {e}", sink.name());
        }
    }
    out.stats.set_dropped(capture.dropped());
    LoopSummary {
        stats: out.stats.snapshot(),
        first_result_ms: out.first_result_ms,
        peak_rss_mb: peak_rss_mb(),
        ended,
        rss_mb: out.rss,
    }
}

/// A frame's outcome, as the loop hands it to the sinks.
struct Outcome {
    raw: RawFrame,
    image: RgbImage,
    detections: Vec<LabeledDetection>,
    classification: Option<Classification>,
    inference_ms: f64,
}

/// The loop's output side: statistics, sinks, the periodic stats line.
struct Results<'a> {
    stats: Stats,
    started: Instant,
    first_result_ms: Option<f64>,
    last_stats: Instant,
    rss: Vec<(u64, f64)>,
    sinks: &'a mut [Box<dyn Sink>],
    stats_every: Option<Duration>,
}

impl Results<'_> {
    /// One frame's result to every sink.
    fn emit(&mut self, o: Outcome) {
        self.stats.frame_done();
        if self.stats.frames().is_multiple_of(RSS_SAMPLE_EVERY)
            && let Some(m) = rss_mb()
        {
            self.rss.push((self.stats.frames(), m));
        }
        let result = FrameResult {
            timestamp_ms: o
                .raw
                .captured
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            source_ms: o.raw.source_ms,
            frame: o.raw.index,
            width: o.image.width(),
            height: o.image.height(),
            detections: o.detections,
            classification: o.classification,
            inference_ms: o.inference_ms,
        };
        let started = self.started;
        self.first_result_ms
            .get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
        let snapshot = self.stats.snapshot();
        for sink in self.sinks.iter_mut() {
            if let Err(e) = sink.handle(&result, &o.image, &snapshot) {
                warn!("sink {}: {e}", sink.name());
            }
        }
        if let Some(every) = self.stats_every
            && self.last_stats.elapsed() >= every
        {
            self.last_stats = Instant::now();
            eprintln!("{}", snapshot.line());
        }
    }
}

/// Decode and run one frame, timing each stage into `times`: `Ok(None)` when the frame does not
/// decode (logged, to be counted and skipped), `Err` when inference fails.
fn process(
    detector: &Detector,
    raw: RawFrame,
    times: &mut impl StageTimes,
) -> Result<Option<Outcome>, String> {
    let t = Instant::now();
    let image = match decode(&raw) {
        Ok(i) => i,
        Err(e) => {
            warn!("{e}; skipped");
            return Ok(None);
        }
    };
    times.record(Stage::Decode, t.elapsed());
    let (detections, classification, inference_ms) = detector
        .infer(&image, times)
        .map_err(|e| format!("inference failed: {e}"))?;
    Ok(Some(Outcome {
        raw,
        image,
        detections,
        classification,
        inference_ms,
    }))
}

/// What both loops read: the frames, the stop flag, new detectors, the options.
#[derive(Clone, Copy)]
struct LoopIo<'a> {
    capture: &'a Capture,
    stop: &'a AtomicBool,
    swap: Option<&'a mpsc::Receiver<Detector>>,
    opts: &'a LoopOptions,
}

/// A new detector waiting on `swap`, if any (noted in `stats`).
fn swapped(swap: Option<&mpsc::Receiver<Detector>>, stats: &mut Stats) -> Option<Detector> {
    let d = swap?.try_recv().ok()?;
    info!("switching to bundle {}", d.dir().display());
    stats.set_model(d.name());
    Some(d)
}

/// One frame after another on the calling thread.
fn sequential(mut detector: Detector, out: &mut Results, io: &LoopIo) -> String {
    let LoopIo {
        capture,
        stop,
        swap,
        opts,
    } = *io;
    loop {
        if stop.load(Ordering::Relaxed) {
            return "stopped".to_string();
        }
        if opts.max_frames.is_some_and(|m| out.stats.frames() >= m) {
            return "max frames".to_string();
        }
        if let Some(d) = swapped(swap, &mut out.stats) {
            detector = d;
        }
        let t = Instant::now();
        let raw = match capture.next() {
            None => return "end of source".to_string(),
            Some(Err(e)) => return e,
            Some(Ok(f)) => f,
        };
        out.stats.record(Stage::CaptureWait, t.elapsed());
        out.stats.set_dropped(capture.dropped());
        match process(&detector, raw, &mut out.stats) {
            Ok(Some(o)) => out.emit(o),
            Ok(None) => out.stats.decode_error(),
            Err(e) => return e,
        }
    }
}

/// What a worker of [`pipelined`] reports for the frame it took as number `seq`.
enum Done {
    /// A result, with its stage times.
    Frame(Box<Outcome>, FrameTimes),
    /// The frame did not decode.
    Skipped,
    /// The source ended or failed, or inference failed: the loop ends here.
    Ended(String),
}

/// `opts.frames_in_flight` workers, each taking the next frame, decoding and running it; the
/// calling thread puts their results back in capture order (frames are numbered as they are
/// taken) and hands them to the sinks.
fn pipelined(detector: Detector, out: &mut Results, io: &LoopIo) -> String {
    let LoopIo {
        capture,
        stop,
        swap,
        opts,
    } = *io;
    let current = Mutex::new(Arc::new(detector));
    let taken = Mutex::new(0u64);
    let halt = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<(u64, Done)>();
    std::thread::scope(|scope| {
        for _ in 0..opts.frames_in_flight {
            let tx = tx.clone();
            let (current, taken, halt) = (&current, &taken, &halt);
            scope.spawn(move || {
                while !halt.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (seq, next) = {
                        let mut n = taken.lock().unwrap_or_else(|p| p.into_inner());
                        *n += 1;
                        (*n - 1, capture.next())
                    };
                    let mut times = FrameTimes::default();
                    times.record(Stage::CaptureWait, t.elapsed());
                    let done = match next {
                        None => Done::Ended("end of source".to_string()),
                        Some(Err(e)) => Done::Ended(e),
                        Some(Ok(raw)) => {
                            let detector =
                                current.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            match process(&detector, raw, &mut times) {
                                Ok(Some(o)) => Done::Frame(Box::new(o), times),
                                Ok(None) => Done::Skipped,
                                Err(e) => Done::Ended(e),
                            }
                        }
                    };
                    let last = matches!(done, Done::Ended(_));
                    if tx.send((seq, done)).is_err() || last {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut pending = std::collections::BTreeMap::new();
        let mut next = 0u64;
        let mut ended: Option<String> = None;
        loop {
            let msg = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if ended.is_none() && stop.load(Ordering::Relaxed) {
                ended = Some("stopped".to_string());
            }
            if let Some((seq, done)) = msg {
                pending.insert(seq, done);
            }
            while ended.is_none()
                && let Some(done) = pending.remove(&next)
            {
                next += 1;
                if let Some(d) = swapped(swap, &mut out.stats) {
                    *current.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(d);
                }
                out.stats.set_dropped(capture.dropped());
                match done {
                    Done::Frame(o, times) => {
                        out.stats.record_frame(&times);
                        out.emit(*o);
                    }
                    Done::Skipped => out.stats.decode_error(),
                    Done::Ended(_) if stop.load(Ordering::Relaxed) => {
                        ended = Some("stopped".to_string())
                    }
                    Done::Ended(e) => ended = Some(e),
                }
                if ended.is_none() && opts.max_frames.is_some_and(|m| out.stats.frames() >= m) {
                    ended = Some("max frames".to_string());
                }
            }
            if ended.is_some() {
                // The workers finish the frames they hold; their results are dropped.
                halt.store(true, Ordering::Relaxed);
            }
        }
        ended.unwrap_or_else(|| "end of source".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::RawFormat;

    fn mjpeg_file(dir: &Path, n: u8) -> PathBuf {
        let mut stream = Vec::new();
        for i in 0..n {
            let img = RgbImage::from_pixel(32, 24, image::Rgb([i.wrapping_mul(20), 0, 0]));
            stream.extend(crate::jpeg::encode(&img, 75).unwrap());
        }
        let p = dir.join("v.mjpeg");
        std::fs::write(&p, stream).unwrap();
        p
    }

    #[test]
    fn lockstep_replay_delivers_every_frame_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = mjpeg_file(dir.path(), 20);
        let stop = Arc::new(AtomicBool::new(false));
        let cap = Capture::start(
            SourceSpec::Mjpeg(p),
            Replay::default(),
            CameraSettings::default(),
            None,
            stop,
        )
        .unwrap();
        assert_eq!(cap.mode(), SlotMode::Lockstep);
        let mut seen = Vec::new();
        while let Some(f) = cap.next() {
            let f = f.unwrap();
            assert_eq!(f.format, RawFormat::Mjpeg);
            seen.push(f.index);
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
        assert_eq!(cap.dropped(), 0);
    }

    /// A consumer slower than the source sees recent frames and the rest are counted as dropped:
    /// seen + dropped = produced, and nothing queues up.
    #[test]
    fn newest_slot_drops_what_a_slow_consumer_misses() {
        let dir = tempfile::tempdir().unwrap();
        let p = mjpeg_file(dir.path(), 60);
        let stop = Arc::new(AtomicBool::new(false));
        let cap = Capture::start(
            SourceSpec::Mjpeg(p),
            Replay {
                fps: Some(500.0),
                looping: false,
            },
            CameraSettings::default(),
            None,
            stop,
        )
        .unwrap();
        assert_eq!(cap.mode(), SlotMode::Newest);
        let mut seen = Vec::new();
        while let Some(f) = cap.next() {
            seen.push(f.unwrap().index);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert!(cap.dropped() > 20, "dropped {}", cap.dropped());
        assert_eq!(seen.len() as u64 + cap.dropped(), 60);
        assert_eq!(*seen.last().unwrap(), 59, "the last frame is never lost");
    }

    #[test]
    fn a_source_that_cannot_open_is_an_error() {
        let stop = Arc::new(AtomicBool::new(false));
        let e = Capture::start(
            SourceSpec::Mjpeg("/nonexistent/v.mjpeg".into()),
            Replay::default(),
            CameraSettings::default(),
            None,
            stop,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("/nonexistent/v.mjpeg"), "{e}");
    }

    #[test]
    fn softmax_top_class() {
        let c = classify(&[0.0, 2.0, 1.0], &|i| format!("c{i}"));
        assert_eq!(c.class, 1);
        assert_eq!(c.label, "c1");
        let e: f32 = [0.0f32, 2.0, 1.0].iter().map(|x| x.exp()).sum();
        assert!((c.score - 2f32.exp() / e).abs() < 1e-6);
    }
}
