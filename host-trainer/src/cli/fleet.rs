//! `kestrel fleet deploy|status|rollback|install`: the one-board commands over an Ansible
//! inventory (see [`crate::fleet`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::Context;
use crate::deploy::LocalBundle;
use crate::deploy::link::BoardLink;
use crate::deploy::ssh::SshBoard;
use crate::fleet::deploy::{BoardResult, FleetDeployOptions, Outcome};
use crate::fleet::status::BoardState;
use crate::fleet::{ControlMasters, FleetBoard, FleetDefaults, parallel_map};
use crate::install::{InstallArgs, InstallOptions};

/// `kestrel fleet` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum FleetCommand {
    /// Deploy a bundle to every selected board: canaries first, then the rest N at a time.
    Deploy(FleetDeployArgs),
    /// Every board's state in one table (or a JSON line per board).
    #[command(
        after_help = "Examples:\n  kestrel fleet status -i hosts.ini\n  kestrel fleet status -i hosts.yml --limit traps --json"
    )]
    Status(FleetArgs),
    /// Put every selected board back on its previous bundle.
    #[command(after_help = "Examples:\n  kestrel fleet rollback -i hosts.ini --limit 'shelf-*'")]
    Rollback(FleetArgs),
    /// `kestrel install` on every selected board (binary, service, trust list).
    #[command(
        after_help = "Examples:\n  kestrel fleet install -i hosts.ini --board raspberry-pi-4\n  kestrel fleet install -i hosts.yml --limit traps"
    )]
    Install(FleetInstallArgs),
}

/// The boards: an inventory, a pattern, and how many at once.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Ansible inventory, INI or YAML (hosts, groups, `ansible_host`, `ansible_port`,
    /// `ansible_user`, `ansible_ssh_private_key_file`, `ansible_ssh_common_args`, and Kestrel's
    /// `kestrel_board`, `kestrel_store`, `kestrel_edge`, `kestrel_trust`, `kestrel_prefix`).
    #[arg(long, short = 'i', env = "KESTREL_INVENTORY")]
    pub inventory: PathBuf,
    /// Only these boards: an Ansible pattern (`shelf`, `shelf:!shelf-3`, `trap-*`, `a,b`).
    #[arg(long, short = 'l')]
    pub limit: Option<String>,
    /// Boards worked on at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Extra ssh option for every board, repeatable (`Key=Value` or `-x ...`).
    #[arg(long = "ssh-option", allow_hyphen_values = true)]
    pub ssh_options: Vec<String>,
    /// `kestrel-edge` on boards without `kestrel_edge`.
    #[arg(long, default_value = "kestrel-edge")]
    pub remote_bin: String,
    /// The store on boards without `kestrel_store`.
    #[arg(long, default_value = "/var/lib/kestrel")]
    pub store: String,
    /// One JSON object per board on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `kestrel fleet deploy` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel fleet deploy bundles/shelf-v2 -i hosts.ini --canary 2 --canary-wait 60 --rollback-on-failure\n  kestrel fleet deploy bundles/shelf-v2 -i hosts.yml --limit 'shelf:!shelf-3' --parallel 16 --json\n  kestrel fleet status -i hosts.ini"
)]
pub struct FleetDeployArgs {
    /// Bundle directory written by `kestrel export`.
    pub bundle: PathBuf,
    /// The boards.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// The first N selected boards are canaries: they get the bundle first and must stay healthy
    /// before any other board is touched.
    #[arg(long, default_value_t = 0)]
    pub canary: usize,
    /// Seconds a canary must stay healthy once it runs the bundle.
    #[arg(long, default_value_t = 30.0)]
    pub canary_wait: f64,
    /// When a canary fails, put the canaries that installed the bundle back on their previous one.
    #[arg(long)]
    pub rollback_on_failure: bool,
    /// A trust list on the boards every install must satisfy (boards without `kestrel_trust`).
    #[arg(long)]
    pub remote_trust: Option<String>,
    /// Install the bundle even where it is older than the board's current one.
    #[arg(long)]
    pub allow_downgrade: bool,
}

/// `kestrel fleet install` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetInstallArgs {
    /// The boards.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Board file for boards without `kestrel_board`.
    #[arg(long)]
    pub board: Option<String>,
    /// What to install.
    #[command(flatten)]
    pub what: InstallOptions,
}

impl FleetArgs {
    /// The selected boards.
    fn boards(&self, trust: Option<String>) -> anyhow::Result<Vec<FleetBoard>> {
        let defaults = FleetDefaults {
            remote_bin: self.remote_bin.clone(),
            store: self.store.clone(),
            trust,
            ssh_options: self.ssh_options.clone(),
        };
        Ok(crate::fleet::boards(
            &self.inventory,
            self.limit.as_deref(),
            &defaults,
        )?)
    }

    /// A bar counting boards on stderr (hidden with --json, --quiet or no terminal).
    fn bar(&self, ctx: &Context, n: usize, what: &str) -> ProgressBar {
        use std::io::IsTerminal;
        let bar = ProgressBar::new(n as u64).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} boards, {elapsed}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        if self.json || ctx.quiet || !std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_message(what.to_string());
        bar
    }
}

/// Prints `row` as a JSON line, or `text` for people (above the bar).
fn emit<T: Serialize>(json: bool, bar: &ProgressBar, row: &T, text: String) {
    if json {
        bar.suspend(|| println!("{}", serde_json::to_string(row).expect("rows serialise")));
    } else if bar.is_hidden() {
        println!("{text}");
    } else {
        bar.println(text);
    }
}

fn result_line(r: &BoardResult) -> String {
    format!(
        "{:<16} {:<12}{} {:>9} {:>6.1} s  {}",
        r.host,
        r.status.name(),
        if r.canary { " (canary)" } else { "" },
        crate::progress::human_bytes(r.bytes_sent),
        r.seconds,
        r.reason.as_deref().unwrap_or("")
    )
}

/// Fails with a count when any row is not as asked (the exit status tells scripts).
fn fail_if_any(bad: usize, total: usize, what: &str) -> anyhow::Result<()> {
    if bad > 0 {
        bail!("{what}: {bad} of {total} board(s) failed (see above)");
    }
    Ok(())
}

/// Runs a `kestrel fleet` subcommand.
pub fn run(cmd: &FleetCommand, ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Deploy(a) => deploy(a, ctx),
        FleetCommand::Status(a) => status(a, ctx),
        FleetCommand::Rollback(a) => rollback(a, ctx),
        FleetCommand::Install(a) => install(a, ctx),
    }
}

/// `kestrel fleet deploy`.
pub fn deploy(args: &FleetDeployArgs, ctx: &Context) -> anyhow::Result<()> {
    let bundle = LocalBundle::open(&args.bundle, true)?;
    let mut boards = args.fleet.boards(args.remote_trust.clone())?;
    // A deploy runs several store commands per board: one handshake each, not one per command.
    let _masters = ControlMasters::start(&mut boards, args.fleet.parallel.max(1))
        .context("creating a directory for ssh's master connections")?;
    if !args.canary_wait.is_finite() || args.canary_wait < 0.0 {
        bail!("--canary-wait {}: seconds, 0 or more", args.canary_wait);
    }
    let opts = FleetDeployOptions {
        parallel: args.fleet.parallel.max(1),
        canary: args.canary,
        canary_wait: Duration::from_secs_f64(args.canary_wait),
        rollback_on_failure: args.rollback_on_failure,
        allow_downgrade: args.allow_downgrade,
        ..Default::default()
    };
    let start = Instant::now();
    let bar = args
        .fleet
        .bar(ctx, boards.len(), &format!("bundle {}", bundle.id));
    let results = crate::fleet::deploy::deploy(&boards, &bundle, &opts, &|r| {
        // A canary rolled back is reported twice: once failed, once rolled back.
        if r.status != Outcome::RolledBack {
            bar.inc(1);
        }
        emit(args.fleet.json, &bar, r, result_line(r));
    });
    bar.finish_and_clear();
    let bad = results.iter().filter(|r| !r.status.ok()).count();
    if !args.fleet.json {
        let bytes: u64 = results.iter().map(|r| r.bytes_sent).sum();
        println!(
            "bundle {}: {} of {} board(s) run it; {} sent in {:.1} s",
            bundle.id,
            results.len() - bad,
            results.len(),
            crate::progress::human_bytes(bytes),
            start.elapsed().as_secs_f64()
        );
    }
    fail_if_any(bad, results.len(), "fleet deploy")
}

/// `kestrel fleet status`.
pub fn status(args: &FleetArgs, _ctx: &Context) -> anyhow::Result<()> {
    let boards = args.boards(None)?;
    let rows = crate::fleet::status::status(&boards, args.parallel.max(1));
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print!("{}", crate::fleet::status::table(&rows));
    }
    let bad = rows.iter().filter(|r: &&BoardState| !r.reachable).count();
    fail_if_any(bad, rows.len(), "fleet status")
}

/// What became of one board in `fleet rollback` and `fleet install`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ActionResult {
    /// The inventory's name for the board.
    pub host: String,
    /// Whether it worked.
    pub ok: bool,
    /// The board's answer, or why it failed.
    pub message: String,
}

fn action_line(r: &ActionResult) -> String {
    format!(
        "{:<16} {:<7} {}",
        r.host,
        if r.ok { "ok" } else { "failed" },
        r.message
    )
}

/// `kestrel fleet rollback`.
pub fn rollback(args: &FleetArgs, ctx: &Context) -> anyhow::Result<()> {
    let boards = args.boards(None)?;
    let bar = args.bar(ctx, boards.len(), "rollback");
    let rows = parallel_map(&boards, args.parallel.max(1), |b| {
        let r = match SshBoard::new(b.ssh.clone()).rollback() {
            Ok(m) => ActionResult {
                host: b.name.clone(),
                ok: true,
                message: m,
            },
            Err(e) => ActionResult {
                host: b.name.clone(),
                ok: false,
                message: e.to_string(),
            },
        };
        bar.inc(1);
        emit(args.json, &bar, &r, action_line(&r));
        r
    });
    bar.finish_and_clear();
    let bad = rows.iter().filter(|r| !r.ok).count();
    fail_if_any(bad, rows.len(), "fleet rollback")
}

/// `kestrel fleet install`: the board binary is found (or built) once per board kind, then
/// installed on every board in parallel.
pub fn install(args: &FleetInstallArgs, ctx: &Context) -> anyhow::Result<()> {
    if args.fleet.json {
        bail!(
            "fleet install prints each board's install report; --json is for deploy, status and rollback"
        );
    }
    let boards = args.fleet.boards(None)?;
    let mut per_board: Vec<(String, InstallArgs)> = Vec::new();
    let mut binaries: Vec<(String, PathBuf)> = Vec::new();
    for b in &boards {
        let Some(name) = b.board_file.clone().or_else(|| args.board.clone()) else {
            bail!(
                "{}: no board file: set `kestrel_board` for it in {} or pass --board",
                b.name,
                args.fleet.inventory.display()
            );
        };
        let bin = match binaries.iter().find(|(n, _)| *n == name) {
            Some((_, p)) => p.clone(),
            None => {
                let board = kestrel_shared::Board::resolve(&name)
                    .with_context(|| format!("{}: board {name}", b.name))?;
                let p = crate::install::edge_binary(&args.what, &board)?;
                binaries.push((name.clone(), p.clone()));
                p
            }
        };
        per_board.push((
            b.name.clone(),
            InstallArgs {
                board: name,
                ssh: b.ssh.target.clone(),
                ssh_options: b.ssh.options.clone(),
                what: InstallOptions {
                    edge_bin: Some(bin),
                    prefix: b.prefix.clone().or_else(|| args.what.prefix.clone()),
                    ..args.what.clone()
                },
            },
        ));
    }
    let bar = args.fleet.bar(ctx, boards.len(), "install");
    let rows = parallel_map(&per_board, args.fleet.parallel.max(1), |(host, a)| {
        let r = match crate::install::run(a) {
            Ok(rep) => ActionResult {
                host: host.clone(),
                ok: true,
                message: format!(
                    "{} ({}), {}",
                    rep.binary,
                    if rep.binary_sent { "sent" } else { "unchanged" },
                    rep.systemd
                ),
            },
            Err(e) => ActionResult {
                host: host.clone(),
                ok: false,
                message: format!("{e:#}"),
            },
        };
        bar.inc(1);
        emit(args.fleet.json, &bar, &r, action_line(&r));
        r
    });
    bar.finish_and_clear();
    let bad = rows.iter().filter(|r| !r.ok).count();
    fail_if_any(bad, rows.len(), "fleet install")
}
