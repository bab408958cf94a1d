//! `kestrel export-trunk` and `kestrel embed`: the frozen trunk as ONNX, and pictures through it
//! (model 1 of the book's two-model approach).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use kestrel_shared::{CutPoint, PreprocessSpec};

use super::Context;

/// Arguments of `kestrel export-trunk`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel export-trunk --cut pooled --out trunks/pooled\n  kestrel-edge embed --trunk trunks/pooled photo.jpg"
)]
pub struct ExportTrunkArgs {
    /// features.0 .. features.18, or stride8 / stride16 / stride32 / pooled.
    #[arg(long, default_value = "pooled")]
    pub cut: CutPoint,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// Write trunk.onnx + trunk.json and print the description.
pub fn export_trunk(a: &ExportTrunkArgs, ctx: &Context) -> anyhow::Result<()> {
    let p = ctx.pretrained()?;
    let info = crate::trunk_onnx::export_trunk(
        &p.model,
        a.cut,
        PreprocessSpec::imagenet(),
        &p.weights_sha256,
        &a.out,
    )
    .with_context(|| format!("exporting the trunk to {}", a.out.display()))?;
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(())
}

/// Arguments of `kestrel embed`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel embed photos/cat.jpg photos/dog.jpg\n  kestrel embed --cut stride16 --values photo.jpg > embedding.json"
)]
pub struct EmbedArgs {
    /// Pictures.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Cut point.
    #[arg(long, default_value = "pooled")]
    pub cut: CutPoint,
    /// Print every value.
    #[arg(long)]
    pub values: bool,
}

/// Embed the pictures through the cached trunk with tract and print one line per picture.
pub fn embed(a: &EmbedArgs, ctx: &Context) -> anyhow::Result<()> {
    let p = ctx.pretrained()?;
    let dir = p.cached_trunk(a.cut, PreprocessSpec::imagenet(), &ctx.cache)?;
    let trunk = kestrel_edge::Trunk::open(&dir, 1, kestrel_edge::Threads::Single)?;
    let failed =
        kestrel_edge::trunk::embed_images(&trunk, &a.images, a.values, &mut std::io::stdout())?;
    if failed > 0 {
        bail!(
            "{failed} of {} pictures could not be embedded",
            a.images.len()
        );
    }
    Ok(())
}
