//! `kestrel-edge agent`: the options, and running the agent (with its detection loop, if asked)
//! until a signal stops it.

use std::path::PathBuf;
use std::time::Duration;

use kestrel_shared::sign::TrustList;

use crate::agent::{Agent, AgentConfig, BundleHost, NoLoop};

/// `kestrel-edge agent` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel-edge agent --store /var/lib/kestrel --serial /dev/ttyS0 --trust /etc/kestrel/trust\n  kestrel-edge agent --store /var/lib/kestrel --source camera:/dev/video0 --json   # detections on stdout too"
)]
pub struct AgentArgs {
    /// Store directory (blobs/, bundles/, current).
    #[arg(long)]
    pub store: PathBuf,
    /// Serial device to serve deploys on (e.g. /dev/serial0); without it, only SSH deploys.
    #[arg(long)]
    pub serial: Option<String>,
    /// Baud rate of the serial device.
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Trust list: accept only bundles signed by one of its keys.
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// Bundles kept for rollback.
    #[arg(long, default_value_t = crate::store::DEFAULT_KEEP)]
    pub keep: usize,
    /// Board name reported to the host (as in boards/).
    #[arg(long, default_value = "generic-aarch64")]
    pub board: String,
    /// Device name reported to the host (default: the host name).
    #[arg(long)]
    pub device: Option<String>,
    /// Most bytes the store's blobs and uploads may take (a quota below the disk's free space).
    #[arg(long)]
    pub max_store_bytes: Option<u64>,
    /// Seconds between heartbeat telemetry messages.
    #[arg(long, default_value_t = 5.0)]
    pub telemetry_interval: f64,
    /// The detection loop (`--source ...`): runs the current bundle, swaps in new ones.
    #[command(flatten)]
    pub detect: crate::agent_loop::AgentLoopArgs,
}

/// `kestrel-edge agent`: runs the agent on the serial device (if given) until killed.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let trust = match &args.trust {
        Some(p) => Some(
            TrustList::read(p)
                .with_context(|| format!("reading the trust list {}", p.display()))?,
        ),
        None => None,
    };
    if let Some(t) = &trust {
        tracing::info!(
            "accepting bundles signed by {} key(s) from {}",
            t.keys.len(),
            t.path
        );
    }
    let mut cfg = AgentConfig::new(args.store.clone());
    cfg.trust = trust;
    cfg.keep = args.keep.max(1);
    cfg.board = args.board.clone();
    if let Some(d) = &args.device {
        cfg.device = d.clone();
    }
    cfg.quota = args.max_store_bytes;
    cfg.heartbeat = Duration::from_secs_f64(args.telemetry_interval.max(0.1));
    let (mut agent, handle) = Agent::new(cfg)?;
    let board = kestrel_shared::Board::resolve(&args.board).ok();
    let attached =
        crate::agent_loop::attach(&args.detect, board.as_ref(), handle.clone(), &args.store)?;
    // SIGINT / SIGTERM: stop the agent and the loop cleanly (pin low, server closed).
    let signalled = super::run::stop_on_signals()?;
    {
        let (handle, loop_stop) = (handle.clone(), attached.as_ref().map(|a| a.stop.clone()));
        std::thread::spawn(move || {
            while !signalled.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if let Some(s) = loop_stop {
                s.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            handle.stop();
        });
    }
    let (mut looped, mut idle) = (None, NoLoop);
    let host: &mut dyn BundleHost = match attached {
        Some(a) => {
            let l = looped.insert((a.host, a.thread, a.stop));
            &mut l.0
        }
        None => &mut idle,
    };
    let result = match &args.serial {
        Some(dev) => {
            let mut port = kestrel_shared::transport::open_serial(dev, args.baud)?;
            tracing::info!("serving deploys on {dev} at {} baud", args.baud);
            agent.run(Some(&mut port), host)
        }
        None => agent.run(None, host),
    };
    if let Some((_, thread, stop)) = looped {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Ok(Some(summary)) = thread.join() {
            tracing::info!("detection loop: {}", summary.stats.line());
        }
    }
    result?;
    Ok(())
}
