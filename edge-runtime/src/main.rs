//! `kestrel-edge`: the on-board runtime's command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kestrel_edge::{Threads, Trunk};

#[derive(Parser)]
#[command(
    name = "kestrel-edge",
    version,
    about = "Kestrel's on-board runtime (tract)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Detect on camera or replayed frames: JSON lines, GPIO indicator, live view, snapshots.
    Run(Box<kestrel_edge::run_cmd::RunArgs>),
    /// Save frames from the source into OUT/LABEL/ to collect training pictures on the board.
    Capture(kestrel_edge::run_cmd::CaptureArgs),
    /// List the cameras this board can open: V4L2 devices with their formats and sizes, and
    /// libcamera (Raspberry Pi camera module) cameras with their sensor modes.
    #[cfg(feature = "camera")]
    Cameras(kestrel_edge::cameras::CamerasArgs),
    /// Measure load time, latency p50/p95 and peak memory of a bundle (optionally against
    /// onnxruntime on the same model.onnx).
    Bench(kestrel_edge::bench::BenchArgs),
    /// Serve deploys: keep bundles in a store, install them atomically, forward telemetry.
    Agent(kestrel_edge::agent::AgentArgs),
    /// The bundle store from the command line (what `kestrel deploy --ssh` runs on the board).
    Store(kestrel_edge::store_cli::StoreArgs),
    /// Run an exported trunk on pictures and print one JSON line per picture.
    Embed {
        /// Trunk directory (or its trunk.json) written by `kestrel export-trunk`.
        #[arg(long)]
        trunk: PathBuf,
        /// Pictures to embed.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Threads for tract (1 = single-threaded).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Print every value, not only the shape and summary statistics.
        #[arg(long)]
        values: bool,
    },
    /// Load a trunk or a bundle, optimise it, and print what tract will run.
    Info {
        /// Trunk directory (or its trunk.json).
        #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
        trunk: Option<PathBuf>,
        /// Bundle directory written by `kestrel export`: checks every file, prints the manifest,
        /// the operators of each model and the operand types of its matrix products.
        #[arg(long)]
        bundle: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    kestrel_edge::cli::init_logging();
    let started = std::time::Instant::now();
    match Cli::parse().command {
        Command::Run(args) => {
            kestrel_edge::run_cmd::run(&args, started)?;
        }
        Command::Capture(args) => {
            kestrel_edge::run_cmd::capture(&args)?;
        }
        #[cfg(feature = "camera")]
        Command::Cameras(args) => kestrel_edge::cameras::run(&args)?,
        Command::Bench(args) => kestrel_edge::bench::run(&args)?,
        Command::Agent(args) => kestrel_edge::agent::run_cli(args)?,
        Command::Store(args) => kestrel_edge::store_cli::run_cli(args)?,
        Command::Embed {
            trunk,
            images,
            threads,
            values,
        } => {
            let threads = if threads <= 1 {
                Threads::Single
            } else {
                Threads::Multi(threads)
            };
            let trunk = Trunk::open(&trunk, 1, threads)
                .with_context(|| format!("loading trunk {}", trunk.display()))?;
            let failed =
                kestrel_edge::cli::embed_images(&trunk, &images, values, &mut std::io::stdout())?;
            if failed > 0 {
                anyhow::bail!(
                    "{failed} of {} pictures could not be embedded",
                    images.len()
                );
            }
        }
        Command::Info {
            bundle: Some(dir), ..
        } => {
            let b = kestrel_edge::Bundle::open(&dir)
                .with_context(|| format!("loading bundle {}", dir.display()))?;
            println!("{}", serde_json::to_string_pretty(&b.info_json())?);
        }
        Command::Info {
            trunk: Some(trunk), ..
        } => {
            let t = Trunk::open(&trunk, 1, Threads::Single)
                .with_context(|| format!("loading trunk {}", trunk.display()))?;
            println!("{}", kestrel_edge::cli::info_json(&t));
        }
        Command::Info { .. } => anyhow::bail!("info needs --trunk DIR or --bundle DIR"),
    }
    Ok(())
}
