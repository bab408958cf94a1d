//! `kestrel-edge`: the on-board runtime's command line. Each subcommand's arguments and `run` live
//! in `kestrel_edge::cli::<name>`; this file only parses and dispatches.

use clap::{CommandFactory, Parser, Subcommand};
use kestrel_edge::cli;

#[derive(Parser)]
#[command(
    name = "kestrel-edge",
    version,
    about = "Kestrel's on-board runtime (tract)"
)]
struct Cli {
    /// Hide status output on stderr (the info log lines); warnings, errors and results still
    /// show (`RUST_LOG` overrides), as `--quiet` hides `kestrel`'s progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Threads for tract (and onnxruntime in `bench`) in `run`, `agent`, `bench` and `embed`
    /// (default: the board's, else 1); before or after the subcommand, as in `kestrel`.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect on camera or replayed frames: JSON lines, GPIO indicator, live view, snapshots.
    Run(Box<cli::run::RunArgs>),
    /// Save frames from the source into OUT/LABEL/ to collect training pictures on the board.
    Capture(cli::capture::CaptureArgs),
    /// List the cameras this board can open: V4L2 devices with their formats and sizes, and
    /// libcamera (Raspberry Pi camera module) cameras with their sensor modes.
    #[cfg(feature = "camera")]
    Cameras(cli::cameras::CamerasArgs),
    /// Measure load time, latency p50/p95 and peak memory of a bundle (optionally against
    /// onnxruntime on the same model.onnx).
    Bench(cli::bench::BenchArgs),
    /// Serve deploys: keep bundles in a store, install them atomically, forward telemetry.
    Agent(cli::agent::AgentArgs),
    /// The bundle store from the command line (what `kestrel deploy --ssh` runs on the board).
    #[command(
        after_help = "Examples:\n  kestrel-edge store --store /var/lib/kestrel list --json\n  kestrel-edge store --store /var/lib/kestrel rollback"
    )]
    Store(cli::store::StoreArgs),
    /// The running agent's detections, a JSON line per frame (what `kestrel monitor --ssh` runs).
    Watch(cli::watch::WatchArgs),
    /// Run an exported trunk on pictures and print one JSON line per picture.
    Embed(cli::embed::EmbedArgs),
    /// Load a trunk or a bundle, optimise it, and print what tract will run.
    Info(cli::info::InfoArgs),
    /// Print a shell completion script (e.g. `kestrel-edge completions bash`).
    #[command(
        after_help = "Examples:\n  kestrel-edge completions bash > ~/.local/share/bash-completion/completions/kestrel-edge"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Exit statuses: 0 success, 1 other failure, 2 usage, 3 bad input (a bundle, trunk or picture
/// that does not load).
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::from(cli::exit_code(&e))
        }
    }
}

fn run() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    cli::init_logging(cli.quiet);
    let threads = cli.threads;
    match cli.command {
        Command::Run(mut args) => {
            args.threads = threads;
            if cli.quiet && !args.no_json {
                // Before --quiet became global it silenced `run`'s JSON lines; it still does for
                // one release, with this notice.
                tracing::warn!(
                    "`kestrel-edge run --quiet` still silences the JSON lines, but will only hide                      status output in a later release (as everywhere else): use --no-json for that"
                );
                args.no_json = true;
            }
            cli::run::run(&args, started)?;
        }
        Command::Capture(args) => {
            cli::capture::run(&args)?;
        }
        #[cfg(feature = "camera")]
        Command::Cameras(args) => cli::cameras::run(&args)?,
        Command::Bench(mut args) => {
            args.threads = threads;
            cli::bench::run(&args)?
        }
        Command::Agent(mut args) => {
            args.detect.threads = threads;
            cli::agent::run(args)?
        }
        Command::Store(args) => cli::store::run(args)?,
        Command::Watch(args) => cli::watch::run(&args)?,
        Command::Embed(mut args) => {
            args.threads = threads;
            cli::embed::run(&args)?
        }
        Command::Info(args) => cli::info::run(&args)?,
        Command::Completions { shell } => clap_complete::generate(
            shell,
            &mut Cli::command(),
            "kestrel-edge",
            &mut std::io::stdout(),
        ),
    }
    Ok(())
}
