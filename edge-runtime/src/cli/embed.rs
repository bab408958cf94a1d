//! `kestrel-edge embed`: an exported trunk on pictures, one JSON line per picture.

use std::path::PathBuf;

use anyhow::Context;

use crate::{Threads, Trunk};

/// `kestrel-edge embed` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel-edge embed --trunk trunks/pooled photo.jpg\n  kestrel-edge embed --trunk trunks/pooled --values photo.jpg > embedding.json"
)]
pub struct EmbedArgs {
    /// Trunk directory (or its trunk.json) written by `kestrel export-trunk`.
    #[arg(long)]
    pub trunk: PathBuf,
    /// Pictures to embed.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Threads for tract (default 1): the global `--threads`, which `main` sets here.
    #[arg(skip)]
    pub threads: Option<usize>,
    /// Print every value, not only the shape and summary statistics.
    #[arg(long)]
    pub values: bool,
}

/// `kestrel-edge embed`: fails when any picture could not be embedded (the others still print).
pub fn run(args: &EmbedArgs) -> anyhow::Result<()> {
    let threads = match args.threads.unwrap_or(1) {
        0 | 1 => Threads::Single,
        n => Threads::Multi(n),
    };
    let trunk = Trunk::open(&args.trunk, 1, threads)
        .with_context(|| format!("loading trunk {}", args.trunk.display()))?;
    let failed =
        crate::trunk::embed_images(&trunk, &args.images, args.values, &mut std::io::stdout())?;
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} pictures could not be embedded",
            args.images.len()
        );
    }
    Ok(())
}
