//! `kestrel`: Kestrel's workstation command line. Parses the arguments and dispatches to the
//! subcommand modules in `kestrel_trainer::cli` (and the deploy, boards and install modules).

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use kestrel_trainer::backend::{Backend, set_threads};
use kestrel_trainer::cli::{self, Context};
use kestrel_trainer::deploy::cli as deploy;
use kestrel_trainer::progress::{ByteBars, Silent};
use kestrel_trainer::weights::default_cache_dir;

/// Tensor buffers come and go every training step; glibc would hand each large one back to the
/// kernel and fault it in again (measured: head training 10.0 s -> 4.4 s on one core).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kestrel",
    version,
    about = "Transfer learning for edge vision: train on a workstation, run on a board"
)]
struct Cli {
    /// MobileNetV2 weights file (mobilenet_v2-b0353104.pth), for offline use.
    #[arg(long, global = true, env = "KESTREL_WEIGHTS")]
    weights: Option<PathBuf>,
    /// burn backend (wgpu only in builds with the cargo feature `wgpu`).
    #[arg(long, global = true, value_enum, default_value_t = Backend::Flex)]
    backend: Backend,
    /// CPU threads for burn and for embedding pictures through the trunk (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download and verify the pretrained weights into the cache; print their path.
    #[command(
        after_help = "Examples:\n  kestrel fetch-weights                       # into the cache, sha256 checked; prints the path\n  kestrel fetch-weights --weights ~/Downloads/mobilenet_v2-b0353104.pth   # check a copied file"
    )]
    FetchWeights,
    /// Classify photos with the full pretrained ImageNet model.
    Predict(cli::predict::PredictArgs),
    /// Evaluate a trained run on another labelled folder; prints the metrics as JSON.
    Eval(cli::eval::EvalArgs),
    /// Export the frozen trunk, cut at a layer, to ONNX (trunk.onnx + trunk.json).
    ExportTrunk(cli::embed::ExportTrunkArgs),
    /// Embed pictures through the exported trunk with tract (model 1 of the two-model approach).
    Embed(cli::embed::EmbedArgs),
    /// Measure embeddings per second on one core: burn (flex, ndarray), tract, onnxruntime.
    Bench(cli::bench::BenchArgs),
    /// Train a new head on the frozen trunk (or resume an interrupted run).
    Train(cli::train::TrainArgs),
    /// Check a dataset in any layout without training, or convert it to another layout.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  kestrel data check shelf/\n  kestrel data convert shelf/ --to coco --out shelf-coco/"
    )]
    Data(cli::data::DataCommand),
    /// Write synthetic labelled pictures (no download needed).
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  kestrel synth detect --preset multi --count 300 --val-count 60 --out scenes/\n  kestrel synth classify --per-class 40 --out shapes/"
    )]
    Synth(cli::synth::SynthCommand),
    /// Export a trained run as a model bundle for the board: trunk.onnx, head.onnx (int8 by
    /// default), model.onnx (both in one graph) and manifest.json; prints sizes and the fp32 vs
    /// bundle validation metrics measured in tract.
    Export(cli::export::ExportArgs),
    /// Send a bundle to a board (serial or SSH): only the files it lacks travel, then the board
    /// installs it atomically, validated, and switches to it.
    Deploy(deploy::DeployArgs),
    /// Print the board's telemetry (serial) as JSON lines.
    Monitor(deploy::MonitorArgs),
    /// Make the bundle installed before the current one current again on the board.
    Rollback(deploy::RollbackArgs),
    /// What the board runs and stores: kestrel-edge version, current bundle, blobs, free space.
    Status(deploy::StatusArgs),
    /// Make an Ed25519 key pair to sign bundles with (`kestrel export` then signs by default).
    Keygen(deploy::KeygenArgs),
    /// List the supported boards (or check board files): target, CPU, threads, camera, GPIO, serial.
    Boards(kestrel_trainer::boards::BoardsArgs),
    /// Install the agent on a board over SSH: the board's kestrel-edge, a systemd unit with the
    /// board's settings, this host's key in its trust list; rerun to upgrade in place.
    Install(kestrel_trainer::install::InstallArgs),
    /// Many boards from an Ansible inventory: deploy (canaries first), status, rollback, install.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  kestrel fleet status -i hosts.ini\n  kestrel fleet deploy bundles/shelf-v2 -i hosts.ini --canary 1 --canary-wait 30"
    )]
    Fleet(cli::fleet::FleetCommand),
    /// The main job: weights, classification, trunk export, edge runtime, metrics.
    Demo(cli::demo::DemoArgs),
    /// Check this machine for each step (weights, disk, ssh, the board's toolchain, serial
    /// ports, boards of an inventory) and say how to fix what is missing.
    Doctor(cli::doctor::DoctorArgs),
    /// Print a shell completion script (e.g. `kestrel completions bash >
    /// ~/.local/share/bash-completion/completions/kestrel`).
    #[command(
        after_help = "Examples:\n  kestrel completions bash > ~/.local/share/bash-completion/completions/kestrel\n  kestrel completions zsh > ~/.zfunc/_kestrel"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Exit statuses: see `kestrel_trainer::cli::exit`.
fn main() -> std::process::ExitCode {
    cli::exit::finish(run())
}

fn run() -> anyhow::Result<()> {
    cli::init_logging();
    let args = Cli::parse();
    let threads = match args.command {
        // Benchmarks compare engines on one core unless told otherwise.
        Command::Bench(_) => Some(args.threads.unwrap_or(1)),
        _ => args.threads,
    };
    if let Some(n) = threads {
        set_threads(n);
    }
    let ctx = Context {
        weights: args.weights,
        backend: args.backend,
        threads,
        quiet: args.quiet,
        cache: default_cache_dir(),
    };
    match &args.command {
        Command::FetchWeights => println!("{}", ctx.weights_path()?.display()),
        Command::Predict(a) => cli::predict::run(a, &ctx)?,
        Command::Eval(a) => cli::eval::run(a, &ctx)?,
        Command::ExportTrunk(a) => cli::embed::export_trunk(a, &ctx)?,
        Command::Embed(a) => cli::embed::embed(a, &ctx)?,
        Command::Bench(a) => cli::bench::run(a, &ctx)?,
        Command::Train(c) => cli::train::run(c, &ctx)?,
        Command::Data(c) => cli::data::run(c, &ctx)?,
        Command::Synth(c) => cli::synth::run(c, &ctx)?,
        Command::Export(a) => cli::export::run(a, &ctx)?,
        Command::Deploy(a) => {
            deploy::deploy(a, if ctx.quiet { &Silent } else { &ByteBars })?;
        }
        Command::Monitor(a) => deploy::monitor(a)?,
        Command::Rollback(a) => deploy::rollback(a)?,
        Command::Status(a) => drop(deploy::status(a)?),
        Command::Keygen(a) => deploy::keygen(a)?,
        Command::Boards(a) => kestrel_trainer::boards::run(a)?,
        Command::Install(a) => drop(kestrel_trainer::install::run(a)?),
        Command::Fleet(c) => cli::fleet::run(c, &ctx)?,
        Command::Demo(a) => cli::demo::run(a, &ctx)?,
        Command::Doctor(a) => cli::doctor::run(a, &ctx)?,
        Command::Completions { shell } => clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "kestrel",
            &mut std::io::stdout(),
        ),
    }
    Ok(())
}
