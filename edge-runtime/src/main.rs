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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
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
