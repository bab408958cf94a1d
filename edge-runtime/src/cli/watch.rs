//! `kestrel-edge watch`: the running agent's detections as JSON lines (what `kestrel monitor
//! --ssh` runs on the board).

use std::path::PathBuf;
use std::time::Duration;

use crate::watch::{WatchLimits, watch};

/// Arguments of `kestrel-edge watch`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel-edge watch --store /var/lib/kestrel\n  kestrel-edge watch --store /var/lib/kestrel --count 20 > lines.jsonl"
)]
pub struct WatchArgs {
    /// The agent's store (its detection loop serves `watch.sock` there).
    #[arg(long, default_value = "/var/lib/kestrel")]
    pub store: PathBuf,
    /// Stop after this many lines.
    #[arg(long)]
    pub count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
}

/// Copies the agent's lines to stdout.
pub fn run(args: &WatchArgs) -> anyhow::Result<()> {
    let limits = WatchLimits {
        count: args.count,
        duration: args.seconds.map(Duration::from_secs_f64),
    };
    watch(&args.store, &limits, &mut std::io::stdout().lock())?;
    Ok(())
}
