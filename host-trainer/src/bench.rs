//! `kestrel bench`: embeddings per second of the frozen trunk, burn (each backend) against tract
//! on the exported ONNX, with onnxruntime as the peer, all in one run on the same input.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kestrel_edge::{Threads, Trunk};
use kestrel_shared::{CutPoint, PreprocessSpec};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::ops::OpsMode;
use crate::pretrained::Pretrained;

/// The golden synthetic picture: `x[c,h,w] = sin(0.05 (h+1)(c+1)) cos(0.03 (w+1))`, CHW.
pub fn synthetic_input(height: usize, width: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(3 * height * width);
    for c in 0..3 {
        for h in 0..height {
            for w in 0..width {
                let v =
                    (0.05 * (h + 1) as f64 * (c + 1) as f64).sin() * (0.03 * (w + 1) as f64).cos();
                x.push(v as f32);
            }
        }
    }
    x
}

/// One measured engine.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// Engine name.
    pub engine: String,
    /// Median milliseconds per batch.
    pub median_ms: f64,
    /// 95th percentile milliseconds per batch.
    pub p95_ms: f64,
    /// Embeddings per second at the median.
    pub embeddings_per_sec: f64,
    /// Why the engine was not measured, if it was not.
    pub skipped: Option<String>,
}

/// Settings of a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Timed iterations per engine.
    pub iters: usize,
    /// Untimed warm-up iterations.
    pub warmup: usize,
    /// Trunk cut measured.
    pub cut: CutPoint,
    /// Images per forward pass.
    pub batch: usize,
    /// Python interpreter for the onnxruntime peer.
    pub python: String,
}

fn stats(engine: &str, mut times: Vec<f64>, batch: usize) -> BenchRow {
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p95 = times[((times.len() as f64 * 0.95) as usize).min(times.len() - 1)];
    BenchRow {
        engine: engine.into(),
        median_ms: median,
        p95_ms: p95,
        embeddings_per_sec: batch as f64 * 1000.0 / median,
        skipped: None,
    }
}

fn time<F: FnMut()>(opts: &BenchOptions, mut f: F) -> Vec<f64> {
    for _ in 0..opts.warmup {
        f();
    }
    (0..opts.iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

const ORT_SCRIPT: &str = r#"
import json, sys, time
import numpy as np
import onnxruntime as ort
path, batch, iters, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
inp = s.get_inputs()[0]
x = np.random.default_rng(0).standard_normal((batch,) + tuple(inp.shape[1:])).astype(np.float32)
for _ in range(warmup):
    s.run(None, {inp.name: x})
times = []
for _ in range(iters):
    t = time.perf_counter()
    s.run(None, {inp.name: x})
    times.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"times": times, "version": ort.__version__}))
"#;

fn onnxruntime(onnx: &Path, opts: &BenchOptions) -> Result<(Vec<f64>, String), String> {
    let out = Command::new(&opts.python)
        .args(["-c", ORT_SCRIPT])
        .arg(onnx)
        .args([opts.batch, opts.iters, opts.warmup].map(|v| v.to_string()))
        .output()
        .map_err(|e| format!("cannot run {}: {e}", opts.python))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad output from python: {e}"))?;
    let times = v["times"]
        .as_array()
        .ok_or("no times")?
        .iter()
        .filter_map(|t| t.as_f64())
        .collect();
    Ok((times, v["version"].as_str().unwrap_or("?").to_string()))
}

/// Measure every engine on one thread. Burn must already be limited to one thread
/// ([`crate::backend::set_threads`]) for the comparison to be fair.
pub fn run(weights: &Path, cache: &Path, opts: &BenchOptions) -> anyhow::Result<Vec<BenchRow>> {
    let spec = PreprocessSpec::imagenet();
    let (h, w) = (spec.height as usize, spec.width as usize);
    let one = synthetic_input(h, w);
    let input: Vec<f32> = (0..opts.batch).flat_map(|_| one.iter().copied()).collect();
    let mut rows = Vec::new();
    let mut trunk_dir: Option<PathBuf> = None;
    for backend in Backend::ALL {
        let p = Pretrained::load(weights, backend)?;
        let trunk = p.model.clone().truncate(opts.cut);
        let times = time(opts, || {
            trunk.run(input.clone(), opts.batch, h, w, &p.device);
        });
        rows.push(stats(
            &format!("burn-{}", backend.name()),
            times,
            opts.batch,
        ));
        if trunk_dir.is_none() {
            trunk_dir = Some(p.cached_trunk(opts.cut, spec, cache)?);
        }
    }
    let dir = trunk_dir.expect("at least one backend");
    let trunk = Trunk::open(&dir, opts.batch, Threads::Single)?;
    let times = time(opts, || {
        trunk.model.run(&input).expect("tract runs the trunk");
    });
    rows.push(stats("tract", times, opts.batch));
    match onnxruntime(&dir.join(&trunk.info.onnx_file), opts) {
        Ok((times, version)) => {
            rows.push(stats(&format!("onnxruntime-{version}"), times, opts.batch))
        }
        Err(why) => rows.push(BenchRow {
            engine: "onnxruntime".into(),
            median_ms: f64::NAN,
            p95_ms: f64::NAN,
            embeddings_per_sec: f64::NAN,
            skipped: Some(why),
        }),
    }
    Ok(rows)
}

/// A plain-text table of the rows, with each engine's speed relative to tract.
pub fn table(rows: &[BenchRow]) -> String {
    let tract = rows
        .iter()
        .find(|r| r.engine == "tract")
        .map(|r| r.median_ms)
        .unwrap_or(f64::NAN);
    let mut s = format!(
        "{:<22} {:>10} {:>10} {:>12} {:>14}\n",
        "engine", "median ms", "p95 ms", "emb/s", "time vs tract"
    );
    for r in rows {
        match &r.skipped {
            Some(why) => s += &format!("{:<22} skipped: {why}\n", r.engine),
            None => {
                s += &format!(
                    "{:<22} {:>10.2} {:>10.2} {:>12.1} {:>13.2}x\n",
                    r.engine,
                    r.median_ms,
                    r.p95_ms,
                    r.embeddings_per_sec,
                    r.median_ms / tract
                )
            }
        }
    }
    s
}

/// Time to train a head on `n` cached embeddings of `dim` values for `epochs` epochs (the
/// issue's target: 10,000 x 20 epochs in under 10 s on one core). Returns seconds.
pub fn head_training_seconds(n: usize, dim: usize, classes: usize, epochs: usize) -> f64 {
    use crate::classify::{Examples, FitWatch, TrainConfig, train_head};
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let y: Vec<usize> = (0..n).map(|i| i % classes).collect();
    let x: Vec<Vec<f32>> = y
        .iter()
        .map(|&k| {
            let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(0.0..1.0)).collect();
            v[k] += 2.0;
            v
        })
        .collect();
    let cfg = TrainConfig {
        epochs,
        patience: 0,
        ..TrainConfig::default()
    };
    let t = Instant::now();
    train_head(
        &cfg,
        classes,
        Examples {
            train_x: &x,
            train_y: &y,
            val_x: &[],
            val_y: &[],
        },
        &Backend::Flex.device(),
        FitWatch::epochs(&mut |_| {}),
    )
    .expect("no checkpoints, so no checkpoint error");
    t.elapsed().as_secs_f64()
}

/// How the fine-tuning bench runs a burn backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FinetuneEngine {
    /// burn-flex with Kestrel's fused MobileNetV2 ops ([`crate::ops`]): what training uses.
    Flex,
    /// burn-flex with burn's own conv2d + BatchNorm + clamp only (the state before the fused ops).
    #[value(name = "flex-burn-ops")]
    FlexBurnOps,
    /// burn-flex with 1x1 convolutions as BatchNorm-folded reshape + matmul in burn's own ops.
    #[value(name = "flex-burn-matmul")]
    FlexBurnMatmul,
    /// burn-ndarray (deprecated upstream; falls back to burn's ops; tens of seconds per step).
    Ndarray,
    /// burn-wgpu with burn's own ops, on the wgpu adapter (only in builds with the `wgpu`
    /// feature). The thread count does not apply: the GPU (or a software driver's own threads)
    /// does the work.
    #[cfg(feature = "wgpu")]
    Wgpu,
}

impl FinetuneEngine {
    /// Name in the bench's rows.
    pub fn name(self) -> &'static str {
        match self {
            FinetuneEngine::Flex => "burn-flex",
            FinetuneEngine::FlexBurnOps => "burn-flex-burn-ops",
            FinetuneEngine::FlexBurnMatmul => "burn-flex-burn-matmul",
            FinetuneEngine::Ndarray => "burn-ndarray",
            #[cfg(feature = "wgpu")]
            FinetuneEngine::Wgpu => "burn-wgpu",
        }
    }

    fn backend(self) -> Backend {
        match self {
            FinetuneEngine::Ndarray => Backend::Ndarray,
            #[cfg(feature = "wgpu")]
            FinetuneEngine::Wgpu => Backend::Wgpu,
            _ => Backend::Flex,
        }
    }
}

/// Settings of `kestrel bench --finetune`.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    /// burn engines to time.
    pub engines: Vec<FinetuneEngine>,
    /// Thread counts to time each engine (and the peer) at.
    pub threads: Vec<usize>,
    /// Timed steps per engine and thread count (after one untimed step).
    pub iters: usize,
    /// Batch size (the issue's is 32).
    pub batch: usize,
    /// Python interpreter with `torch`, for the PyTorch peer.
    pub torch_python: Option<String>,
}

/// One engine at one thread count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneRow {
    /// Engine, e.g. `burn-flex`.
    pub backend: String,
    /// CPU threads it ran on.
    pub threads: usize,
    /// Median milliseconds per step.
    pub step_ms: f64,
    /// PyTorch's median at the same thread count, if the peer ran.
    pub torch_ms: Option<f64>,
    /// `step_ms / torch_ms` (below 1: faster than PyTorch).
    pub ratio: Option<f64>,
    /// Median CPU milliseconds per step, all threads (on one thread: robust to a busy machine).
    pub cpu_ms: f64,
    /// PyTorch's median CPU milliseconds per step, if the peer ran.
    pub torch_cpu_ms: Option<f64>,
}

/// What `kestrel bench --finetune --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneReport {
    /// The peer's engine name with its version (e.g. `pytorch-2.15.0`), if it ran.
    pub torch: Option<String>,
    /// Batch size.
    pub batch: usize,
    /// One row per engine and thread count.
    pub rows: Vec<FinetuneRow>,
}

/// Run `f` on a rayon pool of `threads` threads (burn-flex and the fused ops use the current pool).
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    Ok(pool.install(f))
}

/// Time every engine (and the PyTorch peer, if given) at every thread count.
pub fn finetune_report(weights: &Path, opts: &FinetuneOptions) -> anyhow::Result<FinetuneReport> {
    let mut rows = Vec::new();
    let mut torch = None;
    for &threads in &opts.threads {
        let peer = match &opts.torch_python {
            Some(py) => {
                let (name, ms) =
                    torch_finetune_step_ms(py, weights, opts.batch, opts.iters, threads)?;
                torch = Some(name);
                Some(ms)
            }
            None => None,
        };
        for &engine in &opts.engines {
            // ndarray takes tens of seconds per step: one timed step is enough to see it.
            let iters = if engine == FinetuneEngine::Ndarray {
                1
            } else {
                opts.iters
            };
            let step = || finetune_step_ms(weights, engine.backend(), opts.batch, iters);
            let mode = match engine {
                FinetuneEngine::FlexBurnOps => OpsMode::BurnOps,
                FinetuneEngine::FlexBurnMatmul => OpsMode::BurnMatmul,
                FinetuneEngine::Flex | FinetuneEngine::Ndarray => OpsMode::Fused,
                // The fused ops are burn-flex's: on wgpu the layers take burn's own ops anyway.
                #[cfg(feature = "wgpu")]
                FinetuneEngine::Wgpu => OpsMode::Fused,
            };
            let t = on_threads(threads, || crate::ops::with_mode(mode, step))??;
            rows.push(FinetuneRow {
                backend: engine.name().to_string(),
                threads,
                step_ms: t.wall_ms,
                torch_ms: peer.map(|p| p.wall_ms),
                ratio: peer.map(|p| t.wall_ms / p.wall_ms),
                cpu_ms: t.cpu_ms,
                torch_cpu_ms: peer.map(|p| p.cpu_ms),
            });
        }
    }
    Ok(FinetuneReport {
        torch,
        batch: opts.batch,
        rows,
    })
}

/// A plain-text table of a fine-tuning report.
pub fn finetune_table(report: &FinetuneReport) -> String {
    let peer = report.torch.as_deref().unwrap_or("PyTorch");
    let mut s = format!(
        "fine-tune step: features.14-18 + pool + linear head, batch {}, Adam\n{:<22} {:>7} {:>9} {:>9} {:>7} {:>9} {:>9}\n",
        report.batch, "engine", "threads", "step ms", "peer ms", "ratio", "cpu ms", "peer cpu"
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    for r in &report.rows {
        s += &format!(
            "{:<22} {:>7} {:>9.1} {:>9} {:>6}x {:>9.1} {:>9}\n",
            r.backend,
            r.threads,
            r.step_ms,
            opt(r.torch_ms, 1),
            opt(r.ratio, 2),
            r.cpu_ms,
            opt(r.torch_cpu_ms, 1),
        );
    }
    if report.torch.is_none() {
        s += "(PyTorch peer skipped: pass --torch-python PYTHON, an interpreter with torch)\n";
    } else {
        s += &format!(
            "peer: {peer}; ratio = step ms / peer ms (below 1: faster than the peer); cpu ms: all threads\n"
        );
    }
    s
}

/// Milliseconds per fine-tuning step (median of `iters`): `features.14`..`features.18`, pooling and
/// a linear head on a batch of `batch` cached `features.13` outputs (96x14x14), Adam, on `backend`.
/// The issue's peer is PyTorch doing the same step.
pub fn finetune_step_ms(
    weights: &Path,
    backend: Backend,
    batch: usize,
    iters: usize,
) -> anyhow::Result<StepTime> {
    use burn::optim::{AdamConfig, GradientsParams};
    use burn::tensor::{Int, Tensor, TensorData};

    use crate::classify::finetune::TopModel;
    use crate::classify::{HeadConfig, HeadKind};
    use rand::SeedableRng;

    let device = backend.try_device()?;
    let ad = device.clone().autodiff();
    let head = HeadConfig {
        kind: HeadKind::Linear,
        inputs: 1280,
        classes: 5,
    }
    .init(&device, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    let model = TopModel::from_pretrained(weights, 4, head, &device)?;
    let mut model = crate::classify::finetune::prepare(model, &ad);
    let mut optim = AdamConfig::new().init();
    let x: Vec<f32> = (0..batch * 96 * 14 * 14)
        .map(|i| ((i % 97) as f32 / 97.0) - 0.5)
        .collect();
    let y: Vec<i64> = (0..batch).map(|i| (i % 5) as i64).collect();
    let loss_fn = burn::nn::loss::CrossEntropyLossConfig::new().init(&ad);
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for i in 0..iters + 1 {
        let t = Instant::now();
        let c = process_cpu_ms();
        let input = Tensor::<4>::from_data(TensorData::new(x.clone(), [batch, 96, 14, 14]), &ad);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(y.clone(), [batch]), &ad);
        let loss = loss_fn.forward(model.forward(input), targets);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-4, model, grads);
        // Wait for the step to finish before stopping the clock.
        let _ = model.last.conv.weight.val().into_data();
        if i > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
            cpu.push(process_cpu_ms() - c);
        }
    }
    Ok(StepTime {
        wall_ms: median(times),
        cpu_ms: median(cpu),
    })
}

/// Time of one training step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTime {
    /// Wall-clock milliseconds (median).
    pub wall_ms: f64,
    /// CPU milliseconds of the whole process, all threads (median): on one thread, the step's
    /// time without what other processes took from the core.
    pub cpu_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU time this process has used so far, in milliseconds.
fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// The PyTorch peer of [`finetune_step_ms`]: the same step in PyTorch, run by `python` (an
/// interpreter with `torch` installed) from a script shipped inside the binary. Returns the
/// engine name (with torch's version) and milliseconds per step.
pub fn torch_finetune_step_ms(
    python: &str,
    weights: &Path,
    batch: usize,
    iters: usize,
    threads: usize,
) -> anyhow::Result<(String, StepTime)> {
    use anyhow::Context;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("finetune_step.py");
    std::fs::write(&script, include_str!("../../benches/finetune_step.py"))?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg("--weights")
        .arg(weights)
        .args(["--batch", &batch.to_string()])
        .args(["--iters", &iters.to_string()])
        .args(["--threads", &threads.to_string()])
        .output()
        .with_context(|| format!("could not run {python}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "the PyTorch peer failed under {python} (is torch installed there? `{python} -m pip install torch`): {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let peer: TorchPeerOutput = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("unexpected output from the PyTorch peer under {python}"))?;
    let time = StepTime {
        wall_ms: peer.median_ms,
        cpu_ms: peer.median_cpu_ms,
    };
    Ok((peer.engine, time))
}

/// What `benches/finetune_step.py` prints.
#[derive(Debug, Deserialize)]
struct TorchPeerOutput {
    /// `pytorch-<version>`.
    engine: String,
    /// Median milliseconds per step.
    median_ms: f64,
    /// Median CPU milliseconds per step (all threads).
    median_cpu_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finetune_report_round_trips_with_the_issue_field_names() {
        let report = FinetuneReport {
            torch: Some("pytorch-2.15.0".into()),
            batch: 32,
            rows: vec![FinetuneRow {
                backend: "burn-flex".into(),
                threads: 2,
                step_ms: 250.0,
                torch_ms: Some(200.0),
                ratio: Some(1.25),
                cpu_ms: 480.0,
                torch_cpu_ms: Some(390.0),
            }],
        };
        let json = serde_json::to_string(&report).unwrap();
        for key in [
            "\"rows\"",
            "\"backend\"",
            "\"threads\"",
            "\"step_ms\"",
            "\"torch_ms\"",
            "\"ratio\"",
        ] {
            assert!(json.contains(key), "{key} missing from {json}");
        }
        let back: FinetuneReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let table = finetune_table(&report);
        assert!(
            table.contains("burn-flex") && table.contains("1.25x"),
            "{table}"
        );
    }
}
