//! `kestrel export`: a trained run as a signed model bundle for the board.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use kestrel_shared::manifest::{CalibrationMethod, QuantizeMode};

use super::Context;
use crate::bundle::{ExportOptions, export_bundle, print_report};
use crate::deploy::{default_signing_key, sign_bundle};

/// Arguments of `kestrel export`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel export runs/detect/train --out bundles/shelf-v1             # int8 head\n  kestrel export runs/detect/train --quantize all --out bundles/shelf-v1-int8\n  kestrel-edge bench --bundle bundles/shelf-v1-int8 --onnxruntime python3"
)]
pub struct ExportArgs {
    /// Run directory written by `kestrel train classify` or `kestrel train detect`.
    pub run: PathBuf,
    /// Bundle directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// What to quantize to int8: none, head (default) or all (trunk too).
    #[arg(long, default_value = "head")]
    pub quantize: QuantizeMode,
    /// Training pictures whose activations calibrate the int8 ranges.
    #[arg(long, default_value_t = 100)]
    pub calibration: usize,
    /// Clip activation ranges at this percentile (e.g. 99.99) instead of min/max.
    #[arg(long)]
    pub percentile: Option<f32>,
    /// Sign the manifest with this private key (default: the key of `kestrel keygen`, if
    /// there is one).
    #[arg(long, conflicts_with = "no_sign")]
    pub sign: Option<PathBuf>,
    /// Do not sign the bundle.
    #[arg(long)]
    pub no_sign: bool,
}

/// Export, print the report, and sign.
pub fn run(a: &ExportArgs, ctx: &Context) -> anyhow::Result<()> {
    let method = match a.percentile {
        None => CalibrationMethod::MinMax,
        Some(p) if p > 50.0 && p <= 100.0 => CalibrationMethod::Percentile { percentile: p },
        Some(p) => bail!("--percentile must be above 50 and at most 100 (e.g. 99.99), got {p}"),
    };
    let p = ctx.pretrained()?;
    let opts = ExportOptions {
        quantize: a.quantize,
        calibration: a.calibration,
        method,
    };
    let (run, out) = (&a.run, &a.out);
    let report =
        export_bundle(&p, run, out, &opts, &ctx.cache, ctx.progress()).with_context(|| {
            format!(
                "exporting {} as a bundle to {}",
                run.display(),
                out.display()
            )
        })?;
    print_report(&report, &mut std::io::stdout())?;
    let key = match &a.sign {
        Some(k) => Some(k.clone()),
        None if a.no_sign => None,
        None => default_signing_key(),
    };
    match key {
        Some(k) => {
            let id = sign_bundle(out, &k)
                .with_context(|| format!("signing {} with {}", out.display(), k.display()))?;
            println!("  signed with key {id} ({})", k.display());
        }
        None => println!(
            "  not signed (`kestrel keygen` makes a key; boards with a trust list refuse unsigned bundles)"
        ),
    }
    Ok(())
}
