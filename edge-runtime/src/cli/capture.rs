//! `kestrel-edge capture`: frames from the source saved as an ImageFolder class, to collect
//! training pictures on the board.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::warn;

use super::run::{SourceArgs, stop_on_signals};
use crate::runtime::Capture;
use crate::source::decode;

/// `kestrel-edge capture`: save frames into an ImageFolder class directory for training.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel-edge capture --label empty --count 50 --interval 500 --out photos/\n  kestrel-edge capture --label full --count 50 --source camera:1 --out photos/"
)]
pub struct CaptureArgs {
    /// Class name: frames go to OUT/LABEL/.
    #[arg(long)]
    pub label: String,
    /// How many frames to save.
    #[arg(long)]
    pub count: usize,
    /// Dataset directory (ImageFolder layout, what `kestrel train classify --data` reads).
    #[arg(long)]
    pub out: PathBuf,
    /// At least this many milliseconds between two saved frames.
    #[arg(long, default_value_t = 0)]
    pub interval: u64,
    #[command(flatten)]
    pub source: SourceArgs,
}

/// `kestrel-edge capture`. Returns the files written. Names continue after the highest existing
/// number, so a second session adds to the class instead of overwriting it.
pub fn run(args: &CaptureArgs) -> anyhow::Result<Vec<PathBuf>> {
    kestrel_shared::wire::check_name(&args.label)
        .map_err(|e| anyhow::anyhow!("--label {:?}: {e}", args.label))?;
    let dir = args.out.join(&args.label);
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let mut next = next_number(&dir)?;
    let board = args.source.board()?;
    let stop = stop_on_signals()?;
    let capture = Capture::start(
        args.source.spec(board.as_ref()),
        args.source.replay(),
        args.source.camera(board.as_ref())?,
        None,
        stop.clone(),
    )?;
    let interval = Duration::from_millis(args.interval);
    let mut last: Option<Instant> = None;
    let mut written = Vec::new();
    let mut bad = 0u64;
    while written.len() < args.count && !stop.load(Ordering::Relaxed) {
        let raw = match capture.next() {
            None => break,
            Some(Err(e)) => anyhow::bail!("{e}"),
            Some(Ok(f)) => f,
        };
        if last.is_some_and(|t| t.elapsed() < interval) {
            continue;
        }
        let image = match decode(&raw) {
            Ok(i) => i,
            Err(e) => {
                bad += 1;
                warn!("{e}; skipped");
                continue;
            }
        };
        last = Some(Instant::now());
        let path = dir.join(format!("{}-{next:05}.jpg", args.label));
        next += 1;
        let out = crate::jpeg::encode(&image, 92)
            .map_err(|e| anyhow::anyhow!("cannot encode {}: {e}", path.display()))?;
        write_atomic(&path, &out)?;
        eprintln!(
            "{}: saved {} ({}/{})",
            args.label,
            path.display(),
            written.len() + 1,
            args.count
        );
        written.push(path);
    }
    if written.len() < args.count {
        warn!(
            "saved {} of {} frames ({} did not decode): the source ended or was stopped",
            written.len(),
            args.count,
            bad
        );
    }
    Ok(written)
}

/// One past the highest `NAME-NNNNN.jpg` number in `dir`.
fn next_number(dir: &Path) -> anyhow::Result<u64> {
    let mut next = 0;
    for e in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".jpg")
            .and_then(|s| s.rsplit_once('-'))
            .and_then(|(_, n)| n.parse::<u64>().ok())
        {
            next = next.max(n + 1);
        }
    }
    Ok(next)
}

/// Write through a temporary file and rename, so an interrupted capture never leaves half a JPEG
/// for the trainer to choke on.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("jpg.part");
    std::fs::write(&tmp, bytes).map_err(|e| anyhow::anyhow!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}
