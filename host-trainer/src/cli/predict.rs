//! `kestrel predict`: ImageNet classes of photos, or the predictions of a trained run.

use std::path::PathBuf;

use anyhow::bail;
use kestrel_shared::PreprocessSpec;

use super::Context;
use crate::classify::run::TrainedClassifier;
use crate::detect::run::{TrainedDetector, predict_files};
use crate::run_config::run_task;
use crate::{imagenet, predict};

/// Arguments of `kestrel predict`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel predict host-trainer/assets/chelsea.png        # ImageNet classes\n  kestrel predict --run runs/classify/train photo.jpg --json"
)]
pub struct PredictArgs {
    /// Pictures (PNG, JPEG, WebP, BMP).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Number of classes to show per picture.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// One JSON object per picture and line.
    #[arg(long)]
    pub json: bool,
    /// Use the head trained in this run directory instead of the ImageNet classifier.
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Detection runs: write each picture with its boxes drawn into this folder.
    #[arg(long)]
    pub draw: Option<PathBuf>,
}

/// Classify (or detect in) the pictures and print the results; fails if any picture failed.
pub fn run(a: &PredictArgs, ctx: &Context) -> anyhow::Result<()> {
    let p = ctx.pretrained()?;
    if let Some(run) = a.run.as_ref().filter(|r| run_task(r) == Some("detect")) {
        let det = TrainedDetector::open(run, &p, &ctx.cache)?;
        let failed = predict_files(
            &det,
            &a.images,
            a.draw.as_deref(),
            a.json,
            &mut std::io::stdout(),
        )?;
        if failed > 0 {
            bail!("{failed} of {} pictures could not be read", a.images.len());
        }
        return Ok(());
    }
    let results: Vec<anyhow::Result<predict::Prediction>> = match &a.run {
        Some(run) => TrainedClassifier::open(run, &p, &ctx.cache)?.classify_files(&a.images, a.top),
        None => predict::Classifier {
            model: &p.model,
            device: &p.device,
            spec: PreprocessSpec::imagenet(),
            labels: imagenet::class_names(),
            batch: 8,
        }
        .classify_files(&a.images, a.top)
        .into_iter()
        .map(|r| r.map_err(anyhow::Error::from))
        .collect(),
    };
    let mut failed = 0;
    for res in results {
        match res {
            Ok(pred) if a.json => println!("{}", serde_json::to_string(&pred)?),
            Ok(pred) => {
                println!("{}", pred.image.display());
                for s in &pred.top {
                    println!("  {:>6.2}%  {:>4}  {}", 100.0 * s.score, s.class, s.label);
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} pictures could not be classified",
            a.images.len()
        );
    }
    Ok(())
}
