//! The command-line arguments of `kestrel deploy`, `monitor`, `rollback` and `keygen`, and the
//! thin functions the binary calls (progress is drawn by whatever [`Progress`] the binary passes).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use super::link::{BoardLink, BoardStatus};
use super::serial::{SerialBoard, SerialOptions};
use super::ssh::{SshBoard, SshOptions};
use super::{DeployReport, LocalBundle};
use crate::progress::Progress;

/// How to reach the board: a serial device or SSH.
#[derive(Debug, Clone, clap::Args)]
pub struct BoardArgs {
    /// Serial device connected to the board's agent (e.g. /dev/ttyUSB0).
    #[arg(long, conflicts_with = "ssh", required_unless_present = "ssh")]
    pub serial: Option<String>,
    /// Baud rate of the serial line.
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// USER@HOST[:PORT] of the board, reached with the system ssh client.
    #[arg(long)]
    pub ssh: Option<String>,
    /// Extra ssh option, repeatable: `Key=Value` becomes `-o Key=Value`; text starting with `-`
    /// is passed as it is (e.g. `--ssh-option='-i /path/key'`).
    #[arg(long = "ssh-option", allow_hyphen_values = true)]
    pub ssh_options: Vec<String>,
    /// `kestrel-edge` on the board: a path, or a name on the remote PATH.
    #[arg(long, default_value = "kestrel-edge")]
    pub remote_bin: String,
    /// The agent's store on the board (SSH).
    #[arg(long, default_value = "/var/lib/kestrel")]
    pub store: String,
}

impl BoardArgs {
    fn ssh_options(&self, target: &str) -> SshOptions {
        let mut o = SshOptions::new(target);
        o.options = self.ssh_options.clone();
        o.remote_bin = self.remote_bin.clone();
        o.store = self.store.clone();
        o
    }

    /// Opens the link these arguments name and runs `f` on it (a serial board borrows its
    /// port, so the link lives only as long as `f`).
    fn with_board<T>(
        &self,
        serial: SerialOptions,
        ssh_trust: Option<String>,
        f: impl FnOnce(&mut dyn BoardLink) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        match (&self.serial, &self.ssh) {
            (Some(dev), _) => {
                let mut port =
                    kestrel_shared::transport::open_serial(dev, self.baud).map_err(|source| {
                        super::DeployError::Link {
                            what: format!("opening {dev}"),
                            source,
                        }
                    })?;
                let serial = SerialOptions {
                    baud: self.baud,
                    ..serial
                };
                f(&mut SerialBoard::new(&mut port, serial))
            }
            (None, Some(target)) => {
                let mut opts = self.ssh_options(target);
                opts.trust = ssh_trust;
                f(&mut SshBoard::new(opts))
            }
            (None, None) => bail!("this command needs --serial DEV or --ssh USER@HOST"),
        }
    }
}

/// `kestrel deploy` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel deploy bundles/shelf-v1 --ssh pi@shelf-cam-1\n  kestrel deploy bundles/shelf-v1 --serial /dev/ttyUSB0 --baud 921600\n  kestrel status --ssh pi@shelf-cam-1 && kestrel rollback --ssh pi@shelf-cam-1"
)]
pub struct DeployArgs {
    /// Bundle directory written by `kestrel export`.
    pub bundle: PathBuf,
    /// The board.
    #[command(flatten)]
    pub link: BoardArgs,
    /// SSH: a trust list on the board the bundle must satisfy at install.
    #[arg(long)]
    pub remote_trust: Option<String>,
    /// Install the bundle even if it is older than the board's current one (boards refuse
    /// downgrades otherwise; `kestrel rollback` goes back one bundle).
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Print the deploy report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `kestrel rollback` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel rollback --serial /dev/ttyUSB0\n  kestrel rollback --ssh pi@shelf-1.local"
)]
pub struct RollbackArgs {
    /// The board.
    #[command(flatten)]
    pub link: BoardArgs,
}

/// `kestrel monitor` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel monitor --serial /dev/ttyUSB0                 # telemetry lines until Ctrl-C\n  kestrel monitor --serial /dev/ttyUSB0 --count 10 > lines.jsonl\n  kestrel monitor --ssh pi@shelf-1.local --seconds 30    # through kestrel-edge watch on the board"
)]
pub struct MonitorArgs {
    /// The board: its serial line (telemetry), or SSH (`kestrel-edge watch` on the board reads
    /// the agent's detection loop).
    #[command(flatten)]
    pub link: BoardArgs,
    /// Stop after this many telemetry messages.
    #[arg(long)]
    pub count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
}

/// `kestrel keygen` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel keygen                             # then `kestrel export` signs with it\n  kestrel keygen --out keys/shop --force"
)]
pub struct KeygenArgs {
    /// Directory for kestrel.key and kestrel.pub (default: ~/.config/kestrel, or
    /// $KESTREL_CONFIG_DIR).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing key (bundles signed with the old one no longer verify).
    #[arg(long)]
    pub force: bool,
}

fn print_report(r: &DeployReport, baud: Option<u32>, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let sent = r.sent();
    println!(
        "bundle {}: sent {} ({} payload bytes, {} bytes on the line, efficiency {:.3}) in {:.2} s",
        r.bundle,
        if sent.is_empty() {
            "nothing, the board had every file".to_string()
        } else {
            sent.join(", ")
        },
        r.payload_bytes,
        r.line_bytes_out,
        r.efficiency(),
        r.seconds
    );
    if let Some(b) = baud {
        println!(
            "  at {b} baud the line needs {:.1} s for these bytes",
            r.seconds_at(b)
        );
    }
    println!("  board: {}", r.message);
    Ok(())
}

/// `kestrel deploy`.
pub fn deploy(args: &DeployArgs, progress: &dyn Progress) -> anyhow::Result<DeployReport> {
    let bundle = LocalBundle::open(&args.bundle, true)?;
    let report = args.link.with_board(
        SerialOptions::default(),
        args.remote_trust.clone(),
        |board| {
            let where_to = board.describe();
            super::link::deploy(board, &bundle, args.allow_downgrade, progress)
                .with_context(|| format!("deploying {} to {where_to}", args.bundle.display()))
        },
    )?;
    let baud = args.link.serial.as_ref().map(|_| args.link.baud);
    print_report(&report, baud, args.json)?;
    Ok(report)
}

/// `kestrel rollback`.
pub fn rollback(args: &RollbackArgs) -> anyhow::Result<()> {
    let message =
        args.link.with_board(
            SerialOptions::default(),
            None,
            |board| Ok(board.rollback()?),
        )?;
    println!("{message}");
    Ok(())
}

/// `kestrel status` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel status --ssh pi@shelf-1.local\n  kestrel status --serial /dev/ttyUSB0 --json"
)]
pub struct StatusArgs {
    /// The board.
    #[command(flatten)]
    pub link: BoardArgs,
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `kestrel status`: what the board runs and stores.
pub fn status(args: &StatusArgs) -> anyhow::Result<BoardStatus> {
    let status = args
        .link
        .with_board(SerialOptions::default(), None, |board| Ok(board.status()?))?;
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not reported)".into());
        println!("kestrel-edge {}", status.kestrel_version);
        if let (Some(d), Some(b)) = (&status.device, &status.board) {
            println!("device {d}, board {b}");
        }
        println!("current bundle: {}", or_unknown(&status.current));
        if !status.bundles.is_empty() {
            println!("installed: {}", status.bundles.join(", "));
        }
        println!(
            "{} blobs{}, {} uploads cut short",
            status.blobs.len(),
            if status.blobs_complete {
                ""
            } else {
                " (list truncated)"
            },
            status.partial.len()
        );
        if let Some(f) = status.free_bytes {
            println!("free: {}", crate::progress::human_bytes(f));
        }
    }
    Ok(status)
}

/// `kestrel monitor`: the board's detections as JSON lines ([`super::serial::MonitorLine`]), from
/// its serial telemetry or, over SSH, from `kestrel-edge watch`.
pub fn monitor(args: &MonitorArgs) -> anyhow::Result<()> {
    let duration = args.seconds.map(Duration::from_secs_f64);
    match (&args.link.serial, &args.link.ssh) {
        (Some(dev), _) => {
            let mut port = kestrel_shared::transport::open_serial(dev, args.link.baud)?;
            super::serial::monitor(
                &mut port,
                &mut std::io::stdout().lock(),
                args.count,
                duration,
            )?;
        }
        (None, Some(target)) => {
            let mut remote = Vec::new();
            if let Some(c) = args.count {
                remote.extend(["--count".to_string(), c.to_string()]);
            }
            if let Some(s) = args.seconds {
                remote.extend(["--seconds".to_string(), s.to_string()]);
            }
            let o = args.link.ssh_options(target);
            let remote: Vec<&str> = remote.iter().map(String::as_str).collect();
            let status =
                o.watch_command(&remote)?
                    .status()
                    .map_err(|e| super::DeployError::Ssh {
                        what: format!("running {}", o.program),
                        detail: e.to_string(),
                    })?;
            if !status.success() {
                return Err(super::DeployError::Ssh {
                    what: format!("kestrel-edge watch on {target}"),
                    detail: format!("{status} (its error is above)"),
                }
                .into());
            }
        }
        (None, None) => anyhow::bail!("say which board: --serial DEVICE or --ssh USER@HOST"),
    }
    Ok(())
}

/// `kestrel keygen`.
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let dir = match &args.out {
        Some(d) => d.clone(),
        None => kestrel_shared::sign::default_key_dir()
            .context("no config directory (set $HOME or pass --out DIR)")?,
    };
    let k = super::keygen(&dir, args.force)?;
    println!("private key: {} (keep it secret)", k.secret.display());
    println!("public key:  {} (key id {})", k.public.display(), k.id);
    println!("trust line for the board: {}", k.line);
    Ok(())
}
