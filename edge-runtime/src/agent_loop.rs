//! The detection loop inside the agent: bundles the agent installs are loaded here and swapped
//! into the running loop between two frames (no restart), and what the loop sees goes back to the
//! host as telemetry on the serial line.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::RgbImage;
use kestrel_shared::wire::{MAX_DETECTIONS, Telemetry, WireDetection};
use kestrel_shared::{BBox, Detection};

use crate::agent::{AgentHandle, BundleHost, temperature_c};
use crate::health::LoopState;
use crate::model::Threads;
use crate::runtime::{Capture, Detector, LoopOptions, LoopSummary, run_loop};
use crate::sink::{FrameResult, Sink, SinkError};
use crate::stats::StatsSnapshot;

/// Telemetry messages per second at most: a 115200-baud line carries about 11 KB/s, and a deploy
/// shares it.
pub const TELEMETRY_RATE: f64 = 5.0;

/// The agent's [`BundleHost`] when a detection loop runs: loads and checks the bundle on the
/// agent's thread, then hands it to the loop. A bundle that fails to load is refused and the
/// loop keeps the one it runs.
pub struct LoopHost {
    tx: mpsc::Sender<Detector>,
    threads: Threads,
}

impl LoopHost {
    /// A host feeding the loop that owns the other end of `tx`.
    pub fn new(tx: mpsc::Sender<Detector>, threads: Threads) -> Self {
        LoopHost { tx, threads }
    }
}

impl BundleHost for LoopHost {
    fn switch(&mut self, bundle_dir: &Path) -> Result<(), String> {
        let d = Detector::open(bundle_dir, self.threads).map_err(|e| e.to_string())?;
        self.tx
            .send(d)
            .map_err(|_| "the detection loop has stopped".to_string())
    }
}

/// Sends each result (rate-limited to [`TELEMETRY_RATE`]) to the agent, which forwards it on the
/// serial line; never waits for the line.
pub struct TelemetrySink {
    handle: AgentHandle,
    every: Duration,
    last: Option<Instant>,
    sent: u64,
}

impl TelemetrySink {
    /// A sink queueing telemetry on `handle`.
    pub fn new(handle: AgentHandle) -> Self {
        TelemetrySink {
            handle,
            every: Duration::from_secs_f64(1.0 / TELEMETRY_RATE),
            last: None,
            sent: 0,
        }
    }

    /// Messages queued so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

/// The telemetry for one result.
pub fn telemetry(result: &FrameResult, stats: &StatsSnapshot) -> Telemetry {
    Telemetry {
        bundle: Some(stats.model.clone()),
        frame: result.frame,
        fps: stats.fps as f32,
        temperature_c: temperature_c(),
        detections: result
            .detections
            .iter()
            .take(MAX_DETECTIONS)
            .map(|d| {
                WireDetection::from(&Detection {
                    class: d.class,
                    score: d.score,
                    bbox: d.bbox,
                })
            })
            .chain(result.classification.iter().map(|c| WireDetection {
                class: c.class as u32,
                score: c.score,
                bbox: BBox::new(0.0, 0.0, result.width as f32, result.height as f32).into(),
            }))
            .collect(),
    }
}

impl Drop for TelemetrySink {
    /// The loop that owned this sink has ended: the watchdog stops waiting for frames.
    fn drop(&mut self) {
        self.handle.loop_ended();
    }
}

impl Sink for TelemetrySink {
    fn name(&self) -> &str {
        "telemetry"
    }

    fn handle(
        &mut self,
        result: &FrameResult,
        _image: &RgbImage,
        stats: &StatsSnapshot,
    ) -> Result<(), SinkError> {
        self.handle.frame_processed();
        self.handle.loop_state.frame(stats);
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        if self.handle.send_telemetry(telemetry(result, stats)) {
            self.sent += 1;
        }
        Ok(())
    }
}

/// Start the detection loop on its own thread: it waits for the first bundle on `rx` (sent by
/// [`LoopHost`] when the agent starts on its current bundle or installs one), then runs until
/// `stop`, swapping in every later bundle; `state` (the agent's health) hears when and why it
/// ended.
pub fn spawn(
    capture: Capture,
    rx: mpsc::Receiver<Detector>,
    mut sinks: Vec<Box<dyn Sink + Send>>,
    stop: Arc<AtomicBool>,
    opts: LoopOptions,
    state: Option<LoopState>,
) -> std::io::Result<JoinHandle<Option<LoopSummary>>> {
    std::thread::Builder::new()
        .name("detect".into())
        .spawn(move || {
            let first = loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return None;
                }
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(d) => break d,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                }
            };
            let mut boxed: Vec<Box<dyn Sink>> =
                sinks.drain(..).map(|s| -> Box<dyn Sink> { s }).collect();
            if let Some(s) = &state {
                s.started(first.name());
            }
            let summary = run_loop(first, &capture, &mut boxed, &stop, Some(&rx), &opts);
            if let Some(s) = &state {
                s.ended(&summary.ended);
            }
            Some(summary)
        })
}

/// The detection loop options of `kestrel-edge agent` (without `--source`, the agent only serves
/// deploys).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentLoopArgs {
    /// Run the detection loop on this source (camera for the board's camera, camera:N,
    /// camera:/dev/videoN, libcamera[:N], dir:, mjpeg:, yuyv:) with the current bundle, swapping
    /// in every newly installed one.
    #[arg(long)]
    pub source: Option<crate::source::SourceSpec>,
    /// Pace a replay at this many frames per second.
    #[arg(long)]
    pub fps: Option<f64>,
    /// Start a replay again at its end.
    #[arg(long = "loop")]
    pub looping: bool,
    /// Threads for tract (default: the board's, else 1): the global `--threads`, which `main`
    /// sets here.
    #[arg(skip)]
    pub threads: Option<usize>,
    /// Frames run at once, each on its own thread (as `kestrel-edge run --frames-in-flight`).
    #[arg(long, default_value_t = 1)]
    pub frames_in_flight: usize,
    /// Print a JSON line per frame on stdout.
    #[arg(long)]
    pub json: bool,
    /// Serve the live view on this port of 127.0.0.1 (`--http 8080`) or this address.
    #[arg(long, value_parser = crate::cli::run::http_address)]
    pub http: Option<std::net::SocketAddr>,
    /// Token required by the live view.
    #[arg(long, env = "KESTREL_HTTP_TOKEN")]
    pub http_token: Option<String>,
}

/// A running detection loop attached to an agent.
pub struct AttachedLoop {
    /// The agent's host: hand it to [`crate::agent::Agent::run`].
    pub host: LoopHost,
    /// The loop's thread.
    pub thread: JoinHandle<Option<LoopSummary>>,
    /// Set to stop the loop.
    pub stop: Arc<AtomicBool>,
}

/// Start the loop `args` describe for an agent (`None` when no `--source` was given).
/// Every frame also goes to `<store>/watch.sock` for `kestrel-edge watch` (boards reached over
/// SSH show their detections that way).
pub fn attach(
    args: &AgentLoopArgs,
    board: Option<&kestrel_shared::Board>,
    handle: AgentHandle,
    store: &std::path::Path,
) -> anyhow::Result<Option<AttachedLoop>> {
    let Some(source) = args.source.clone() else {
        return Ok(None);
    };
    let source = source.with_board(board.map(|b| &b.camera));
    let stop = Arc::new(AtomicBool::new(false));
    let camera = match board {
        Some(b) => crate::source::CameraSettings {
            width: b.camera.width,
            height: b.camera.height,
            fps: b.camera.fps,
            format: b.camera.format,
        },
        None => crate::source::CameraSettings::default(),
    };
    let capture = Capture::start(
        source,
        crate::source::Replay {
            fps: args.fps,
            looping: args.looping,
        },
        camera,
        None,
        stop.clone(),
    )?;
    let state = handle.loop_state.clone();
    let mut sinks: Vec<Box<dyn Sink + Send>> = vec![
        Box::new(TelemetrySink::new(handle)),
        Box::new(crate::watch::WatchSink::bind(store)?),
    ];
    if args.json {
        sinks.push(Box::new(crate::sink::JsonLines::new(std::io::stdout())));
    }
    if let Some(addr) = args.http {
        sinks.push(crate::cli::run::live_view(
            addr,
            args.http_token.clone(),
            "agent",
        )?);
    }
    let (tx, rx) = mpsc::channel();
    let thread = spawn(
        capture,
        rx,
        sinks,
        stop.clone(),
        LoopOptions {
            frames_in_flight: args.frames_in_flight,
            ..LoopOptions::default()
        },
        Some(state),
    )?;
    let threads = crate::cli::run::threads(args.threads, board);
    Ok(Some(AttachedLoop {
        host: LoopHost::new(
            tx,
            crate::cli::run::per_frame(threads, args.frames_in_flight),
        ),
        thread,
        stop,
    }))
}
