//! `kestrel-edge info`: a trunk or a bundle loaded and optimised, and what tract will run.

use std::path::PathBuf;

use anyhow::Context;

use crate::{Threads, Trunk};

/// `kestrel-edge info` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel-edge info --bundle /var/lib/kestrel/current\n  kestrel-edge info --trunk trunks/pooled"
)]
pub struct InfoArgs {
    /// Trunk directory (or its trunk.json).
    #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
    pub trunk: Option<PathBuf>,
    /// Bundle directory written by `kestrel export`: checks every file, prints the manifest,
    /// the operators of each model and the operand types of its matrix products.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
}

/// `kestrel-edge info`: prints one JSON document.
pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    match (&args.bundle, &args.trunk) {
        (Some(dir), _) => {
            let b = crate::Bundle::open(dir)
                .with_context(|| format!("loading bundle {}", dir.display()))?;
            println!("{}", serde_json::to_string_pretty(&b.info_json())?);
        }
        (None, Some(trunk)) => {
            let t = Trunk::open(trunk, 1, Threads::Single)
                .with_context(|| format!("loading trunk {}", trunk.display()))?;
            println!("{}", crate::trunk::info_json(&t));
        }
        (None, None) => anyhow::bail!("info needs --trunk DIR or --bundle DIR"),
    }
    Ok(())
}
