//! `kestrel bench`: the trunk's speed per engine, head training, and a fine-tuning step against
//! PyTorch (the library's [`crate::bench`] does the timing).

use std::path::PathBuf;

use kestrel_shared::CutPoint;

use super::Context;
use crate::bench;

/// Arguments of `kestrel bench`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel bench                                           # embeddings/s: burn, tract, onnxruntime\n  kestrel bench --finetune --torch-python .venv/bin/python --json"
)]
pub struct BenchArgs {
    /// Timed iterations per engine (`--iters` still works).
    #[arg(long = "iterations", alias = "iters", default_value_t = 30)]
    pub iters: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Cut point measured.
    #[arg(long, default_value = "pooled")]
    pub cut: CutPoint,
    /// Write the results as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also time head training on cached embeddings (10,000 x 1280, 20 epochs).
    #[arg(long)]
    pub head: bool,
    /// Also time a fine-tuning step (features.14-18 + head, batch 32 of cached features.13).
    #[arg(long)]
    pub finetune: bool,
    /// Python interpreter with `torch` installed: the fine-tuning bench then runs the same
    /// step in PyTorch in the same run and prints the ratio.
    #[arg(long, env = "KESTREL_TORCH_PYTHON")]
    pub torch_python: Option<String>,
    /// Thread counts of the fine-tuning bench (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub finetune_threads: Vec<usize>,
    /// burn engines of the fine-tuning bench (comma-separated): flex (Kestrel's fused ops),
    /// flex-burn-ops (burn's own conv2d + BatchNorm + clamp), flex-burn-matmul (1x1 convs as
    /// reshape + matmul in burn's ops), ndarray (tens of seconds a step); with the `wgpu`
    /// feature also wgpu (burn's ops on the wgpu adapter; the thread count does not apply).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "flex,flex-burn-ops"
    )]
    pub finetune_engines: Vec<bench::FinetuneEngine>,
    /// With --finetune: print the fine-tuning report as one JSON object (rows of backend,
    /// threads, step_ms, torch_ms, ratio) and skip the embedding bench.
    #[arg(long, requires = "finetune")]
    pub json: bool,
}

/// Run the benchmarks asked for and print their tables (or the fine-tuning JSON).
pub fn run(a: &BenchArgs, ctx: &Context) -> anyhow::Result<()> {
    if a.finetune {
        let opts = bench::FinetuneOptions {
            engines: a.finetune_engines.clone(),
            threads: a.finetune_threads.clone(),
            iters: 5,
            batch: 32,
            torch_python: a.torch_python.clone(),
        };
        let report = bench::finetune_report(&ctx.weights_path()?, &opts)?;
        if a.json {
            println!("{}", serde_json::to_string(&report)?);
            return Ok(());
        }
        print!("{}", bench::finetune_table(&report));
    }
    if a.head {
        let secs = bench::head_training_seconds(10_000, 1280, 4, 20);
        println!(
            "head training (dense 100, Adam, batch 32): 10,000 embeddings x 20 epochs in {secs:.2} s (target < 10 s)"
        );
    }
    let opts = bench::BenchOptions {
        iters: a.iters,
        warmup: 3,
        cut: a.cut,
        batch: a.batch,
        python: std::env::var("KESTREL_PYTHON").unwrap_or_else(|_| "python3".into()),
    };
    let rows = bench::run(&ctx.weights_path()?, &ctx.cache, &opts)?;
    println!(
        "MobileNetV2 trunk ({}), batch {}, {} thread(s), {} runs",
        a.cut,
        a.batch,
        ctx.threads.unwrap_or(1),
        a.iters
    );
    print!("{}", bench::table(&rows));
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}
