//! `kestrel-edge run`: the options, and building the loop from them; the source options, thread
//! count and signal handling that `capture`, `agent` and `bench` share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use kestrel_shared::Board;
use kestrel_shared::board::PixelFormat;
use tracing::info;

use crate::model::Threads;
use crate::runtime::{Capture, Detector, LoopOptions, LoopSummary, SlotMode, run_loop};
use crate::sink::{JsonLines, Sink};
#[cfg(all(target_os = "linux", feature = "gpio"))]
use crate::sinks::LabelIndicator;
#[cfg(feature = "http")]
use crate::sinks::LiveView;
use crate::sinks::{IndicatorConfig, Snapshots};
use crate::source::{CameraSettings, Replay, SourceSpec};

/// Where frames come from and how they are played.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// camera (the --board file's camera, else V4L2 camera 0), camera:INDEX or camera:/dev/videoN
    /// (V4L2), libcamera[:INDEX] (a Raspberry Pi camera module through rpicam-vid), dir:PATH
    /// (pictures in name order), mjpeg:FILE (concatenated JPEG frames) or yuyv:FILE:WxH (raw YUYV
    /// frames). `kestrel-edge cameras` lists the cameras.
    #[arg(long, default_value = "camera")]
    pub source: SourceSpec,
    /// Pace a replay at this many frames per second (default: as fast as inference goes, every
    /// frame processed).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Start a replay again at its end.
    #[arg(long = "loop")]
    pub looping: bool,
    /// Board name or board file: camera, GPIO and thread defaults (see `kestrel boards`).
    #[arg(long)]
    pub board: Option<String>,
    /// Camera frame width to ask for (default: the board's, else 640).
    #[arg(long)]
    pub width: Option<u32>,
    /// Camera frame height to ask for (default: the board's, else 480).
    #[arg(long)]
    pub height: Option<u32>,
    /// Camera frame rate to ask for (default: the board's, else 30).
    #[arg(long)]
    pub camera_fps: Option<u32>,
    /// Camera pixel format to ask for (default: the board's, else mjpeg).
    #[arg(long, value_enum)]
    pub pixel_format: Option<PixelFormat>,
}

/// `--http PORT` (on 127.0.0.1) or `--http ADDRESS:PORT`.
pub fn http_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().map_err(|_| {
        format!("{text:?} is neither a port (8080) nor an address with a port (0.0.0.0:8080)")
    })
}

impl SourceArgs {
    /// The board file, if one was named.
    pub fn board(&self) -> anyhow::Result<Option<Board>> {
        self.board
            .as_deref()
            .map(Board::resolve)
            .transpose()
            .map_err(Into::into)
    }

    /// The source to open: `--source`, with plain `camera` made the board file's camera (its
    /// V4L2 device, or libcamera with `driver = "libcamera"`).
    pub fn spec(&self, board: Option<&Board>) -> SourceSpec {
        self.source.clone().with_board(board.map(|b| &b.camera))
    }

    /// Camera settings: command line over board file over defaults.
    pub fn camera(&self, board: Option<&Board>) -> anyhow::Result<CameraSettings> {
        let mut c = CameraSettings::default();
        if let Some(cam) = board.map(|b| &b.camera) {
            c = CameraSettings {
                width: cam.width,
                height: cam.height,
                fps: cam.fps,
                format: cam.format,
            };
        }
        c.width = self.width.unwrap_or(c.width);
        c.height = self.height.unwrap_or(c.height);
        c.fps = self.camera_fps.unwrap_or(c.fps);
        c.format = self.pixel_format.unwrap_or(c.format);
        Ok(c)
    }

    pub(crate) fn replay(&self) -> Replay {
        Replay {
            fps: self.fps,
            looping: self.looping,
        }
    }
}

/// `kestrel-edge run`: detect on frames and report.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel-edge run --bundle bundles/shelf-v1 --source camera --http 8080\n  kestrel-edge run --bundle bundles/shelf-v1 --source dir:frames/ > detections.jsonl\n  kestrel-edge run --bundle bundles/shelf-v1 --source libcamera --gpio-label person --gpio-line 17"
)]
pub struct RunArgs {
    /// Bundle directory written by `kestrel export`.
    #[arg(long)]
    pub bundle: PathBuf,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Threads for tract (default: the board's, else 1): the global `--threads`, which `main`
    /// sets here.
    #[arg(skip)]
    pub threads: Option<usize>,
    /// Frames run at once, each on its own thread, results still in frame order (default 1).
    /// The threads are shared out among them: with as many frames in flight as threads, each
    /// frame runs on one core, the frame rate grows with the cores and a frame's latency stays
    /// one core's.
    #[arg(long, default_value_t = 1)]
    pub frames_in_flight: usize,
    /// Keep detections scoring at least this (default: the bundle's).
    #[arg(long)]
    pub score_threshold: Option<f32>,
    /// Stop after this many results.
    #[arg(long)]
    pub max_frames: Option<u64>,
    /// Hand frames over newest-only (drop when busy) or in lockstep (every frame). Default:
    /// newest for cameras and paced replays, lockstep for unpaced replays.
    #[arg(long, value_enum)]
    pub mode: Option<SlotMode>,
    /// Print a statistics line (fps, latency p50/p95 per stage, drops) to stderr every few seconds.
    #[arg(long)]
    pub stats: bool,
    /// Seconds between statistics lines.
    #[arg(long, default_value_t = 5.0)]
    pub stats_every: f64,
    /// Do not print a JSON line per frame on stdout.
    #[arg(long)]
    pub no_json: bool,
    /// Drive a GPIO line high while this label is seen (chip and line from the board file or
    /// --gpio-chip/--gpio-line).
    #[arg(long)]
    pub gpio_label: Option<String>,
    /// GPIO chip device, e.g. /dev/gpiochip0.
    #[arg(long)]
    pub gpio_chip: Option<PathBuf>,
    /// GPIO line offset on the chip.
    #[arg(long)]
    pub gpio_line: Option<u32>,
    /// Lowest score that counts as seeing the label.
    #[arg(long, default_value_t = 0.5)]
    pub gpio_min_score: f32,
    /// Keep the line high this long (ms of frame time) after the label was last seen.
    #[arg(long, default_value_t = 500.0)]
    pub hold_ms: f64,
    /// Serve the live view (annotated MJPEG, stats, /stats JSON) on this port of 127.0.0.1
    /// (`--http 8080`) or this address (use 0.0.0.0:8080 to reach it from another machine, with
    /// --http-token).
    #[arg(long, value_parser = http_address)]
    pub http: Option<SocketAddr>,
    /// Require this token (`?token=` or `Authorization: Bearer`) on every HTTP request.
    #[arg(long, env = "KESTREL_HTTP_TOKEN")]
    pub http_token: Option<String>,
    /// Save annotated JPEG snapshots into this directory.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Save every Nth result.
    #[arg(long, default_value_t = 30)]
    pub every: u64,
    /// Write the final summary (stats, time to first result, peak RSS) as JSON to this file.
    #[arg(long)]
    pub summary: Option<PathBuf>,
}

/// Threads for tract: the option, else the board's, else one.
pub fn threads(opt: Option<usize>, board: Option<&Board>) -> Threads {
    match opt.or(board.map(|b| b.threads as usize)).unwrap_or(1) {
        0 | 1 => Threads::Single,
        n => Threads::Multi(n),
    }
}

/// The threads each frame runs with when `frames` frames are in flight: `threads` shared out
/// (at least one each).
pub fn per_frame(threads: Threads, frames: usize) -> Threads {
    match threads {
        Threads::Multi(n) if frames > 1 && n / frames > 1 => Threads::Multi(n / frames),
        Threads::Multi(_) if frames > 1 => Threads::Single,
        t => t,
    }
}

/// SIGINT and SIGTERM set the returned flag (the loop then stops cleanly: pin low, server
/// closed, summary written).
pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// Build the sinks `args` ask for.
pub fn sinks(
    args: &RunArgs,
    board: Option<&Board>,
    model: &str,
) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if !args.no_json {
        sinks.push(Box::new(JsonLines::new(std::io::stdout())));
    }
    if let Some(label) = &args.gpio_label {
        let config = IndicatorConfig {
            label: label.clone(),
            min_score: args.gpio_min_score,
            hold_ms: args.hold_ms,
        };
        sinks.push(gpio_sink(args, board, config)?);
    }
    if let Some(addr) = args.http {
        sinks.push(live_view(addr, args.http_token.clone(), model)?);
    }
    if let Some(dir) = &args.save {
        sinks.push(Box::new(Snapshots::new(dir, args.every.max(1))?));
    }
    Ok(sinks)
}

#[cfg(all(target_os = "linux", feature = "gpio"))]
fn gpio_sink(
    args: &RunArgs,
    board: Option<&Board>,
    config: IndicatorConfig,
) -> anyhow::Result<Box<dyn Sink>> {
    let consumer = "kestrel-edge";
    let pin = match (
        &args.gpio_chip,
        args.gpio_line,
        board.and_then(|b| b.gpio.as_ref()),
    ) {
        (Some(chip), Some(line), _) => crate::sinks::open_cdev(chip, line, consumer)?,
        (None, None, Some(g)) => crate::sinks::open_board(g, consumer)?,
        _ => anyhow::bail!(
            "--gpio-label needs a GPIO line: give --gpio-chip and --gpio-line, or a --board whose file has [gpio]"
        ),
    };
    Ok(Box::new(LabelIndicator::new(pin, config)?))
}

#[cfg(not(all(target_os = "linux", feature = "gpio")))]
fn gpio_sink(
    _args: &RunArgs,
    _board: Option<&Board>,
    _config: IndicatorConfig,
) -> anyhow::Result<Box<dyn Sink>> {
    anyhow::bail!(crate::sinks::GpioError::Unsupported)
}

/// The live view on `addr` as a sink: prints its address, and warns when it is open to the
/// network without a token.
#[cfg(feature = "http")]
pub fn live_view(
    addr: SocketAddr,
    token: Option<String>,
    model: &str,
) -> anyhow::Result<Box<dyn Sink + Send>> {
    let open = token.is_none();
    let view = LiveView::start(addr, token, model)?;
    if !addr.ip().is_loopback() && open {
        tracing::warn!(
            "the live view on {} is reachable from the network without a token: pass \
             --http-token, or listen on 127.0.0.1",
            view.local_addr()
        );
    }
    eprintln!("live view: {}", view.url());
    Ok(Box::new(view))
}

/// Builds without the `http` feature have no live view.
#[cfg(not(feature = "http"))]
pub fn live_view(
    addr: SocketAddr,
    _token: Option<String>,
    _model: &str,
) -> anyhow::Result<Box<dyn Sink + Send>> {
    anyhow::bail!(
        "--http {addr}: this kestrel-edge was built without the live view (the `http` feature); use the board build"
    )
}

/// `kestrel-edge run`.
pub fn run(args: &RunArgs, started: Instant) -> anyhow::Result<LoopSummary> {
    let board = args.source.board()?;
    let stop = stop_on_signals()?;
    let per_frame = per_frame(threads(args.threads, board.as_ref()), args.frames_in_flight);
    let mut detector = Detector::open(&args.bundle, per_frame)
        .map_err(|e| anyhow::anyhow!("cannot load bundle {}: {e}", args.bundle.display()))?;
    if let Some(t) = args.score_threshold {
        detector = detector.with_score_threshold(t);
    }
    info!(
        "bundle {} loaded in {:.0} ms",
        args.bundle.display(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut sinks = sinks(args, board.as_ref(), detector.name())?;
    let mode = args.mode;
    let capture = Capture::start(
        args.source.spec(board.as_ref()),
        args.source.replay(),
        args.source.camera(board.as_ref())?,
        mode,
        stop.clone(),
    )?;
    let opts = LoopOptions {
        max_frames: args.max_frames,
        stats_every: args
            .stats
            .then(|| Duration::from_secs_f64(args.stats_every.max(0.1))),
        started: Some(started),
        frames_in_flight: args.frames_in_flight,
    };
    let summary = run_loop(detector, &capture, &mut sinks, &stop, None, &opts);
    drop(capture);
    if args.stats {
        eprintln!("{}", summary.stats.line());
    }
    if let Some(p) = &args.summary {
        std::fs::write(p, serde_json::to_string_pretty(&summary)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
    }
    if !matches!(
        summary.ended.as_str(),
        "end of source" | "stopped" | "max frames"
    ) {
        anyhow::bail!("{}", summary.ended);
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn http_takes_a_port_or_an_address() {
        assert_eq!(
            http_address("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            http_address("0.0.0.0:9000").unwrap(),
            "0.0.0.0:9000".parse().unwrap()
        );
        assert!(
            http_address("localhost")
                .unwrap_err()
                .contains("neither a port")
        );
        assert!(http_address("70000").is_err());
    }

    #[test]
    fn fixed_values_are_checked_by_the_parser() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["t", "--bundle", "b"];
            argv.extend(extra);
            Cli::try_parse_from(argv).map(|c| c.run)
        };
        let a = parse(&[
            "--mode",
            "lockstep",
            "--pixel-format",
            "yuy2",
            "--http",
            "81",
        ])
        .unwrap();
        assert_eq!(a.mode, Some(SlotMode::Lockstep));
        assert_eq!(a.source.pixel_format, Some(PixelFormat::Yuyv));
        assert_eq!(a.http, Some("127.0.0.1:81".parse().unwrap()));
        for bad in [["--mode", "oldest"], ["--pixel-format", "rgb"]] {
            let e = parse(&bad).expect_err("refused");
            assert!(e.to_string().contains("possible values"), "{e}");
        }
    }
}
