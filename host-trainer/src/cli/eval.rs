//! `kestrel eval`: a trained run measured on another labelled folder.

use std::path::PathBuf;

use super::Context;
use crate::classify::run::TrainedClassifier;
use crate::detect::run::TrainedDetector;
use crate::run_config::run_task;

/// Arguments of `kestrel eval`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel eval runs/classify/train --data photos-2025/\n  kestrel eval runs/detect/train --data shelf-test/ > test-metrics.json"
)]
pub struct EvalArgs {
    /// Run directory written by `kestrel train classify` or `kestrel train detect`.
    pub run: PathBuf,
    /// Labelled folder (DATA/<label>/*) or, for detection runs, a dataset in any layout `kestrel
    /// data check` reads (YOLO, Roboflow, COCO, Pascal VOC); all of it is used.
    #[arg(long)]
    pub data: PathBuf,
    /// Detection runs: a COCO annotation file of any name for the pictures under --data.
    #[arg(long)]
    pub annotations: Option<PathBuf>,
    /// Fail on an unreadable picture instead of skipping it.
    #[arg(long)]
    pub strict: bool,
}

/// Evaluate and print the metrics as JSON.
pub fn run(a: &EvalArgs, ctx: &Context) -> anyhow::Result<()> {
    let p = ctx.pretrained()?;
    let text = if run_task(&a.run) == Some("detect") {
        let report = TrainedDetector::open(&a.run, &p, &ctx.cache)?.evaluate(
            &a.data,
            a.annotations.as_deref(),
            &ctx.cache,
            ctx.progress(),
        )?;
        serde_json::to_string_pretty(&report)?
    } else {
        anyhow::ensure!(
            a.annotations.is_none(),
            "--annotations is for detection runs; {} is a classification run",
            a.run.display()
        );
        let report = TrainedClassifier::open(&a.run, &p, &ctx.cache)?.evaluate(
            &a.data,
            &ctx.cache,
            a.strict,
            ctx.progress(),
        )?;
        serde_json::to_string_pretty(&report)?
    };
    println!("{text}");
    Ok(())
}
