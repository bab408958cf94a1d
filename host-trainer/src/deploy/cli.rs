//! The command-line arguments of `kestrel deploy`, `monitor`, `rollback` and `keygen`, and the
//! thin functions the binary calls (progress is drawn by whatever [`Progress`] the binary passes).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use super::serial::SerialOptions;
use super::ssh::SshOptions;
use super::{DeployReport, LocalBundle};
use crate::progress::Progress;

/// How to reach the board: a serial device or SSH.
#[derive(Debug, Clone, clap::Args)]
pub struct BoardLink {
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

impl BoardLink {
    fn ssh_options(&self, target: &str) -> SshOptions {
        let mut o = SshOptions::new(target);
        o.options = self.ssh_options.clone();
        o.remote_bin = self.remote_bin.clone();
        o.store = self.store.clone();
        o
    }
}

/// `kestrel deploy` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployArgs {
    /// Bundle directory written by `kestrel export`.
    pub bundle: PathBuf,
    /// The board.
    #[command(flatten)]
    pub link: BoardLink,
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
pub struct RollbackArgs {
    /// The board.
    #[command(flatten)]
    pub link: BoardLink,
}

/// `kestrel monitor` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    /// Serial device connected to the board's agent.
    #[arg(long)]
    pub serial: String,
    /// Baud rate.
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Stop after this many telemetry messages.
    #[arg(long)]
    pub count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    pub seconds: Option<f64>,
}

/// `kestrel keygen` arguments.
#[derive(Debug, Clone, clap::Args)]
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
    let report = match (&args.link.serial, &args.link.ssh) {
        (Some(dev), _) => {
            let mut port = kestrel_edge::transport::open_serial(dev, args.link.baud)?;
            let opts = SerialOptions {
                baud: args.link.baud,
                allow_downgrade: args.allow_downgrade,
                ..Default::default()
            };
            let r = super::serial::deploy(&mut port, &bundle, &opts, progress)
                .with_context(|| format!("deploying {} over {dev}", args.bundle.display()))?;
            print_report(&r, Some(args.link.baud), args.json)?;
            r
        }
        (None, Some(target)) => {
            let mut opts = args.link.ssh_options(target);
            opts.trust = args.remote_trust.clone();
            opts.allow_downgrade = args.allow_downgrade;
            let r = super::ssh::deploy(&bundle, &opts, progress)
                .with_context(|| format!("deploying {} to {target}", args.bundle.display()))?;
            print_report(&r, None, args.json)?;
            r
        }
        (None, None) => bail!("deploy needs --serial DEV or --ssh USER@HOST"),
    };
    Ok(report)
}

/// `kestrel rollback`.
pub fn rollback(args: &RollbackArgs) -> anyhow::Result<()> {
    let message = match (&args.link.serial, &args.link.ssh) {
        (Some(dev), _) => {
            let mut port = kestrel_edge::transport::open_serial(dev, args.link.baud)?;
            let opts = SerialOptions {
                baud: args.link.baud,
                ..Default::default()
            };
            super::serial::rollback(&mut port, &opts)?
        }
        (None, Some(target)) => super::ssh::rollback(&args.link.ssh_options(target))?,
        (None, None) => bail!("rollback needs --serial DEV or --ssh USER@HOST"),
    };
    println!("{message}");
    Ok(())
}

/// `kestrel monitor`.
pub fn monitor(args: &MonitorArgs) -> anyhow::Result<()> {
    let mut port = kestrel_edge::transport::open_serial(&args.serial, args.baud)?;
    let duration = args.seconds.map(Duration::from_secs_f64);
    super::serial::monitor(
        &mut port,
        &mut std::io::stdout().lock(),
        args.count,
        duration,
    )?;
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
