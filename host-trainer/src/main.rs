//! `kestrel`: Kestrel's workstation command line (argument parsing only; the work is in the library).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kestrel_shared::{CutPoint, PreprocessSpec};
use kestrel_trainer::backend::{Backend, set_threads};
use kestrel_trainer::classify::finetune::FineTuneConfig;
use kestrel_trainer::classify::run::TrainedClassifier;
use kestrel_trainer::classify::{
    ClassifyOptions, HeadKind, LrSchedule, OptimizerKind, TrainConfig, train_classify,
};
use kestrel_trainer::detect::loss::Objectness;
use kestrel_trainer::detect::run::{DetectOptions, TrainedDetector, run_task, train_detect};
use kestrel_trainer::detect::train::{
    DecodeSettings, DetectFineTune, DetectHeadKind, DetectTrainConfig,
};
use kestrel_trainer::progress::{Bars, Silent};
use kestrel_trainer::weights::{Fetcher, default_cache_dir};
use kestrel_trainer::{Pretrained, bench, demo, imagenet, predict};

/// Tensor buffers come and go every training step; glibc would hand each large one back to the
/// kernel and fault it in again (measured: head training 10.0 s -> 4.4 s on one core).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kestrel",
    version,
    about = "Transfer learning for edge vision: train on a workstation, run on a board"
)]
struct Cli {
    /// MobileNetV2 weights file (mobilenet_v2-b0353104.pth), for offline use.
    #[arg(long, global = true, env = "KESTREL_WEIGHTS")]
    weights: Option<PathBuf>,
    /// burn backend (wgpu only in builds with the cargo feature `wgpu`).
    #[arg(long, global = true, value_enum, default_value_t = Backend::Flex)]
    backend: Backend,
    /// CPU threads for burn and for embedding pictures through the trunk (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Hide progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download and verify the pretrained weights into the cache; print their path.
    FetchWeights,
    /// Classify photos with the full pretrained ImageNet model.
    Predict {
        /// Pictures (PNG, JPEG, WebP, BMP).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Number of classes to show per picture.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// One JSON object per picture and line.
        #[arg(long)]
        json: bool,
        /// Use the head trained in this run directory instead of the ImageNet classifier.
        #[arg(long)]
        run: Option<PathBuf>,
        /// Detection runs: write each picture with its boxes drawn into this folder.
        #[arg(long)]
        draw: Option<PathBuf>,
    },
    /// Evaluate a trained run on another labelled folder; prints the metrics as JSON.
    Eval {
        /// Run directory written by `kestrel train classify` or `kestrel train detect`.
        run: PathBuf,
        /// Labelled folder (DATA/<label>/*) or, for detection runs, a YOLO folder or COCO JSON;
        /// all of it is used.
        #[arg(long)]
        data: PathBuf,
        /// Fail on an unreadable picture instead of skipping it.
        #[arg(long)]
        strict: bool,
    },
    /// Export the frozen trunk, cut at a layer, to ONNX (trunk.onnx + trunk.json).
    ExportTrunk {
        /// features.0 .. features.18, or stride8 / stride16 / stride32 / pooled.
        #[arg(long, default_value = "pooled")]
        cut: CutPoint,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Embed pictures through the exported trunk with tract (model 1 of the two-model approach).
    Embed {
        /// Pictures.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Cut point.
        #[arg(long, default_value = "pooled")]
        cut: CutPoint,
        /// Print every value.
        #[arg(long)]
        values: bool,
    },
    /// Measure embeddings per second on one core: burn (flex, ndarray), tract, onnxruntime.
    Bench {
        /// Timed iterations per engine.
        #[arg(long, default_value_t = 30)]
        iters: usize,
        /// Images per forward pass.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Cut point measured.
        #[arg(long, default_value = "pooled")]
        cut: CutPoint,
        /// Write the results as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also time head training on cached embeddings (10,000 x 1280, 20 epochs).
        #[arg(long)]
        head: bool,
        /// Also time a fine-tuning step (features.14-18 + head, batch 32 of cached features.13).
        #[arg(long)]
        finetune: bool,
        /// Python interpreter with `torch` installed: the fine-tuning bench then runs the same
        /// step in PyTorch in the same run and prints the ratio.
        #[arg(long, env = "KESTREL_TORCH_PYTHON")]
        torch_python: Option<String>,
        /// Thread counts of the fine-tuning bench (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        finetune_threads: Vec<usize>,
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
        finetune_engines: Vec<bench::FinetuneEngine>,
        /// With --finetune: print the fine-tuning report as one JSON object (rows of backend,
        /// threads, step_ms, torch_ms, ratio) and skip the embedding bench.
        #[arg(long, requires = "finetune")]
        json: bool,
    },
    /// Train a new head on the frozen trunk.
    Train {
        #[command(subcommand)]
        what: TrainCommand,
    },
    /// Write synthetic labelled pictures (no download needed).
    Synth {
        #[command(subcommand)]
        what: SynthCommand,
    },
    /// Export a trained run as a model bundle for the board: trunk.onnx, head.onnx (int8 by
    /// default), model.onnx (both in one graph) and manifest.json; prints sizes and the fp32 vs
    /// bundle validation metrics measured in tract.
    Export {
        /// Run directory written by `kestrel train classify` or `kestrel train detect`.
        run: PathBuf,
        /// Bundle directory to write.
        #[arg(long)]
        out: PathBuf,
        /// What to quantize to int8: none, head (default) or all (trunk too).
        #[arg(long, default_value = "head")]
        quantize: kestrel_shared::manifest::QuantizeMode,
        /// Training pictures whose activations calibrate the int8 ranges.
        #[arg(long, default_value_t = 100)]
        calibration: usize,
        /// Clip activation ranges at this percentile (e.g. 99.99) instead of min/max.
        #[arg(long)]
        percentile: Option<f32>,
        /// Sign the manifest with this private key (default: the key of `kestrel keygen`, if
        /// there is one).
        #[arg(long, conflicts_with = "no_sign")]
        sign: Option<PathBuf>,
        /// Do not sign the bundle.
        #[arg(long)]
        no_sign: bool,
    },
    /// Send a bundle to a board (serial or SSH): only the files it lacks travel, then the board
    /// installs it atomically, validated, and switches to it.
    Deploy(kestrel_trainer::deploy::cli::DeployArgs),
    /// Print the board's telemetry (serial) as JSON lines.
    Monitor(kestrel_trainer::deploy::cli::MonitorArgs),
    /// Make the bundle installed before the current one current again on the board.
    Rollback(kestrel_trainer::deploy::cli::RollbackArgs),
    /// Make an Ed25519 key pair to sign bundles with (`kestrel export` then signs by default).
    Keygen(kestrel_trainer::deploy::cli::KeygenArgs),
    /// List the supported boards (or check board files): target, CPU, threads, camera, GPIO, serial.
    Boards(kestrel_trainer::boards::BoardsArgs),
    /// Install the agent on a board over SSH: the board's kestrel-edge, a systemd unit with the
    /// board's settings, this host's key in its trust list; rerun to upgrade in place.
    Install(kestrel_trainer::install::InstallArgs),
    /// The main job: weights, classification, trunk export, edge runtime, metrics.
    Demo {
        /// Output directory.
        #[arg(long, default_value = "kestrel-demo")]
        out: PathBuf,
        /// Cut point of the exported trunk.
        #[arg(long, default_value = "pooled")]
        cut: CutPoint,
    },
}

#[derive(Subcommand)]
enum TrainCommand {
    /// Image classification from DATA/<label>/*.png (two-model approach: cached embeddings + head).
    Classify(ClassifyArgs),
    /// Object detection from a YOLO folder or COCO JSON (cached trunk feature maps + head).
    Detect(DetectArgs),
}

#[derive(clap::Args)]
struct DetectArgs {
    /// Dataset: a YOLO folder (images/, labels/, data.yaml) or a COCO JSON file / folder.
    #[arg(long)]
    data: PathBuf,
    /// Run directory to write.
    #[arg(long)]
    out: PathBuf,
    /// single: the book's one-object detector; grid: several objects with boxes; centroids:
    /// object centres only (FOMO-style).
    #[arg(long, value_enum, default_value_t = DetectHeadKind::Grid)]
    head: DetectHeadKind,
    /// Model input width (default 224 for single, 320 otherwise); pictures are stretched to it.
    #[arg(long)]
    width: Option<u32>,
    /// Model input height (default 224 for single, 240 otherwise).
    #[arg(long)]
    height: Option<u32>,
    /// Trunk cut point: stride16 (features.13, default) or stride8 (features.6) for small objects.
    #[arg(long, default_value = "stride16")]
    cut: CutPoint,
    /// Hidden units of the single head's dense layer (default 200) or the grid head's width (64).
    #[arg(long)]
    units: Option<usize>,
    /// Optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    optimizer: OptimizerKind,
    /// Learning rate (default 3e-4 for single, whose big dense layer is unstable at 1e-3;
    /// 1e-3 otherwise).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate schedule: constant, or cosine (decays step by step to 1% of the rate at the
    /// last epoch; set --epochs to the length you want and early stopping rarely fires).
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    lr_schedule: LrSchedule,
    /// Maximum epochs.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Seed (split, initialisation, shuffling).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Early stopping: epochs without a better validation loss (0 = off).
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// Share of the pictures held out when the dataset has no validation split.
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    /// Fail on an unreadable picture or a bad annotation instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Lowest score `predict` reports (also the threshold of precision / recall in the metrics).
    #[arg(long, default_value_t = 0.3)]
    score_threshold: f32,
    /// IoU above which NMS drops the weaker of two boxes of a class.
    #[arg(long, default_value_t = 0.5)]
    nms_iou: f32,
    /// Most detections per picture.
    #[arg(long, default_value_t = 100)]
    max_detections: usize,
    /// Augmentation: move each training scene by up to N cells of the feature map (N x stride
    /// pixels) with its boxes, as far as keeps the objects inside (default 64 for single, i.e.
    /// anywhere in the picture; 0 for grid heads, which are convolutional).
    #[arg(long)]
    shift_cells: Option<usize>,
    /// Dropout on the single head's flattened feature map (0 = off).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Grid head objectness: focal (target 1) or iou (target = the IoU of the cell's box, so the
    /// best-fitting box scores highest).
    #[arg(long, value_enum, default_value_t = Objectness::Focal)]
    objectness: Objectness,
    /// Phase 2: after the head, fine-tune the top N blocks below the cut with it (0 = off).
    #[arg(long, default_value_t = 0)]
    fine_tune_blocks: usize,
    /// Epochs of phase 2.
    #[arg(long, default_value_t = 10)]
    fine_tune_epochs: usize,
    /// Learning rate of phase 2 (default: a tenth of --lr).
    #[arg(long)]
    fine_tune_lr: Option<f64>,
}

#[derive(clap::Args)]
struct ClassifyArgs {
    /// Dataset root: DATA/<label>/*, or DATA/train/<label>/* and DATA/val/<label>/*.
    #[arg(long)]
    data: PathBuf,
    /// Run directory to write.
    #[arg(long)]
    out: PathBuf,
    /// Trunk cut point.
    #[arg(long, default_value = "pooled")]
    cut: CutPoint,
    /// Head: linear, or dense (units, ReLU, dropout) then linear.
    #[arg(long, value_enum, default_value_t = HeadArg::Dense)]
    head: HeadArg,
    /// Hidden units of a dense head.
    #[arg(long, default_value_t = 100)]
    units: usize,
    /// Dropout after the hidden layer of a dense head.
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    /// Optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    optimizer: OptimizerKind,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Learning-rate schedule: constant, or cosine (decays step by step to 1% of the rate at the
    /// last epoch; set --epochs to the length you want and early stopping rarely fires).
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    lr_schedule: LrSchedule,
    /// Maximum epochs.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Seed (split, initialisation, shuffling, dropout).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Early stopping: epochs without a better validation loss (0 = off).
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// Share of each class held out for validation when there is no val/ folder.
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    /// Fail on an unreadable picture instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Augmented views (random resized crop, flip, colour jitter) embedded per training picture,
    /// besides the picture itself; cached like the pictures.
    #[arg(long, default_value_t = 0)]
    views: u32,
    /// Phase 2: after the head, fine-tune the top N inverted-residual blocks with it (0 = off).
    #[arg(long, default_value_t = 0)]
    fine_tune_blocks: usize,
    /// Epochs of phase 2.
    #[arg(long, default_value_t = 5)]
    fine_tune_epochs: usize,
    /// Learning rate of phase 2 (default: a hundredth of --lr; with BatchNorm on fixed statistics,
    /// larger steps undo the pretrained features).
    #[arg(long)]
    fine_tune_lr: Option<f64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum HeadArg {
    Linear,
    Dense,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PresetArg {
    /// The book's scenes: one rectangle or triangle among circles and lines, 224x224.
    Book,
    /// 0-6 objects of five classes, occlusion, textures, lighting, 320x240.
    Multi,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    /// images/{train,val}, labels/{train,val}, data.yaml.
    Yolo,
    /// {train,val}/annotations.json with the pictures beside it.
    Coco,
}

#[derive(Subcommand)]
enum SynthCommand {
    /// Detection scenes with boxes, written as a YOLO (default) or COCO dataset.
    Detect {
        /// Output directory (new or empty).
        #[arg(long)]
        out: PathBuf,
        /// Kind of scene.
        #[arg(long, value_enum, default_value_t = PresetArg::Multi)]
        preset: PresetArg,
        /// Training pictures.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Validation pictures.
        #[arg(long, default_value_t = 200)]
        val_count: usize,
        /// Picture width (default: the preset's).
        #[arg(long)]
        width: Option<u32>,
        /// Picture height (default: the preset's).
        #[arg(long)]
        height: Option<u32>,
        /// Annotation format.
        #[arg(long, value_enum, default_value_t = FormatArg::Yolo)]
        format: FormatArg,
        /// Random seed (same seed, same pictures).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Shapes (circle, cross, square, triangle) on varied backgrounds, as OUT/<label>/*.png.
    Classify {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Pictures per class.
        #[arg(long, default_value_t = 60)]
        per_class: usize,
        /// Side of the pictures in pixels.
        #[arg(long, default_value_t = 128)]
        size: u32,
        /// Random seed (same seed, same pictures).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let threads = match cli.command {
        // Benchmarks compare engines on one core unless told otherwise.
        Command::Bench { .. } => Some(cli.threads.unwrap_or(1)),
        _ => cli.threads,
    };
    if let Some(n) = threads {
        set_threads(n);
    }
    let cache = default_cache_dir();
    let resolve = || -> anyhow::Result<PathBuf> {
        let progress: &dyn kestrel_trainer::progress::Progress =
            if cli.quiet { &Silent } else { &Bars };
        Ok(Fetcher::default().resolve(cli.weights.as_deref(), progress)?)
    };

    match cli.command {
        Command::FetchWeights => println!("{}", resolve()?.display()),
        Command::Predict {
            ref images,
            top,
            json,
            ref run,
            ref draw,
        } => {
            let p = Pretrained::load(&resolve()?, cli.backend)?;
            if let Some(run) = run
                .as_ref()
                .filter(|r| run_task(r).as_deref() == Some("detect"))
            {
                let det = TrainedDetector::open(run, &p, &cache)?;
                let failed = kestrel_trainer::detect::run::predict_files(
                    &det,
                    images,
                    draw.as_deref(),
                    json,
                    &mut std::io::stdout(),
                )?;
                if failed > 0 {
                    bail!("{failed} of {} pictures could not be read", images.len());
                }
                return Ok(());
            }
            let results: Vec<anyhow::Result<predict::Prediction>> = match run {
                Some(run) => TrainedClassifier::open(run, &p, &cache)?.classify_files(images, top),
                None => predict::Classifier {
                    model: &p.model,
                    device: &p.device,
                    spec: PreprocessSpec::imagenet(),
                    labels: imagenet::class_names(),
                    batch: 8,
                }
                .classify_files(images, top)
                .into_iter()
                .map(|r| r.map_err(anyhow::Error::from))
                .collect(),
            };
            let mut failed = 0;
            for res in results {
                match res {
                    Ok(pred) if json => println!("{}", serde_json::to_string(&pred)?),
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
                    images.len()
                );
            }
        }
        Command::Eval {
            ref run,
            ref data,
            strict,
        } => {
            let p = Pretrained::load(&resolve()?, cli.backend)?;
            let progress: &dyn kestrel_trainer::progress::Progress =
                if cli.quiet { &Silent } else { &Bars };
            if run_task(run).as_deref() == Some("detect") {
                let report =
                    TrainedDetector::open(run, &p, &cache)?.evaluate(data, &cache, progress)?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let report = TrainedClassifier::open(run, &p, &cache)?
                .evaluate(data, &cache, strict, progress)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::ExportTrunk { cut, ref out } => {
            let p = Pretrained::load(&resolve()?, cli.backend)?;
            let info = kestrel_trainer::export::export_trunk(
                &p.model,
                cut,
                PreprocessSpec::imagenet(),
                &p.weights_sha256,
                out,
            )
            .with_context(|| format!("exporting the trunk to {}", out.display()))?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        Command::Embed {
            ref images,
            cut,
            values,
        } => {
            let p = Pretrained::load(&resolve()?, cli.backend)?;
            let dir = p.cached_trunk(cut, PreprocessSpec::imagenet(), &cache)?;
            let trunk = kestrel_edge::Trunk::open(&dir, 1, kestrel_edge::Threads::Single)?;
            let failed =
                kestrel_edge::cli::embed_images(&trunk, images, values, &mut std::io::stdout())?;
            if failed > 0 {
                bail!(
                    "{failed} of {} pictures could not be embedded",
                    images.len()
                );
            }
        }
        Command::Bench {
            iters,
            batch,
            cut,
            ref out,
            head,
            finetune,
            ref torch_python,
            ref finetune_threads,
            ref finetune_engines,
            json,
        } => {
            if finetune {
                let opts = bench::FinetuneOptions {
                    engines: finetune_engines.clone(),
                    threads: finetune_threads.clone(),
                    iters: 5,
                    batch: 32,
                    torch_python: torch_python.clone(),
                };
                let report = bench::finetune_report(&resolve()?, &opts)?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                    return Ok(());
                }
                print!("{}", bench::finetune_table(&report));
            }
            if head {
                let secs = bench::head_training_seconds(10_000, 1280, 4, 20);
                println!(
                    "head training (dense 100, Adam, batch 32): 10,000 embeddings x 20 epochs in {secs:.2} s (target < 10 s)"
                );
            }
            let opts = bench::BenchOptions {
                iters,
                warmup: 3,
                cut,
                batch,
                python: std::env::var("KESTREL_PYTHON").unwrap_or_else(|_| "python3".into()),
            };
            let rows = bench::run(&resolve()?, &cache, &opts)?;
            println!(
                "MobileNetV2 trunk ({cut}), batch {batch}, {} thread(s), {iters} runs",
                threads.unwrap_or(1)
            );
            print!("{}", bench::table(&rows));
            if let Some(out) = out {
                std::fs::write(out, serde_json::to_string_pretty(&rows)?)?;
            }
        }
        Command::Train {
            what: TrainCommand::Classify(ref a),
        } => {
            let p = Pretrained::load(&resolve()?, cli.backend)?;
            let opts = ClassifyOptions {
                data: a.data.clone(),
                cut: a.cut,
                val_fraction: a.val_fraction,
                strict: a.strict,
                views: a.views,
                train: TrainConfig {
                    head: match a.head {
                        HeadArg::Linear => HeadKind::Linear,
                        HeadArg::Dense => HeadKind::Dense {
                            units: a.units,
                            dropout: a.dropout,
                        },
                    },
                    optimizer: a.optimizer,
                    lr: a.lr,
                    epochs: a.epochs,
                    batch_size: a.batch_size,
                    seed: a.seed,
                    patience: a.patience,
                    lr_schedule: a.lr_schedule,
                },
                fine_tune: (a.fine_tune_blocks > 0).then(|| FineTuneConfig {
                    blocks: a.fine_tune_blocks,
                    epochs: a.fine_tune_epochs,
                    lr: a.fine_tune_lr.unwrap_or(a.lr / 100.0),
                    batch_size: a.batch_size,
                    seed: a.seed,
                }),
            };
            let progress: &dyn kestrel_trainer::progress::Progress =
                if cli.quiet { &Silent } else { &Bars };
            let s = train_classify(&p, &opts, &cache, &a.out, progress)?;
            for sk in &s.skipped {
                eprintln!("skipped {}: {}", sk.path.display(), sk.reason);
            }
            if let Some(p1) = s.phase1_val_accuracy {
                println!("phase 1 (head only) val accuracy {p1:.3}; after fine-tuning:");
            }
            println!(
                "val accuracy {:.3} (loss {:.4}; head's best epoch {}); {} pictures used, {} skipped, {} embeddings from cache; run in {}",
                s.val_accuracy,
                s.val_loss,
                s.best_epoch,
                s.images_used,
                s.skipped.len(),
                s.cache_hits,
                s.run.display()
            );
        }
        Command::Train {
            what: TrainCommand::Detect(ref a),
        } => {
            let p = Pretrained::load(&resolve()?, cli.backend)?;
            let single = a.head == DetectHeadKind::Single;
            let lr = a.lr.unwrap_or(if single { 3e-4 } else { 1e-3 });
            let opts = DetectOptions {
                data: a.data.clone(),
                width: a.width.unwrap_or(if single { 224 } else { 320 }),
                height: a.height.unwrap_or(if single { 224 } else { 240 }),
                cut: a.cut,
                val_fraction: a.val_fraction,
                strict: a.strict,
                train: DetectTrainConfig {
                    head: a.head,
                    units: a.units.unwrap_or(if single { 200 } else { 64 }),
                    optimizer: a.optimizer,
                    lr,
                    epochs: a.epochs,
                    batch_size: a.batch_size,
                    seed: a.seed,
                    patience: a.patience,
                    shift_cells: a.shift_cells.unwrap_or(if single { 64 } else { 0 }),
                    dropout: a.dropout,
                    objectness: a.objectness,
                    lr_schedule: a.lr_schedule,
                },
                decode: DecodeSettings {
                    score_threshold: a.score_threshold,
                    nms_iou: a.nms_iou,
                    max_detections: a.max_detections,
                },
                fine_tune: (a.fine_tune_blocks > 0).then(|| DetectFineTune {
                    blocks: a.fine_tune_blocks,
                    epochs: a.fine_tune_epochs,
                    lr: a.fine_tune_lr.unwrap_or(lr / 10.0),
                }),
            };
            let progress: &dyn kestrel_trainer::progress::Progress =
                if cli.quiet { &Silent } else { &Bars };
            let s = train_detect(&p, &opts, &cache, &a.out, progress)?;
            for sk in &s.skipped {
                eprintln!("skipped {}: {}", sk.path.display(), sk.reason);
            }
            for issue in &s.annotation_issues {
                eprintln!("skipped annotation {issue}");
            }
            let c = &s.val.coco;
            if let Some(p1) = &s.phase1 {
                match p1.mean_iou {
                    Some(iou) => println!(
                        "phase 1 (head only): val mean IoU {iou:.3}, class accuracy {:.3}; after fine-tuning:",
                        p1.class_accuracy.unwrap_or(f64::NAN)
                    ),
                    None => println!(
                        "phase 1 (head only): val mAP@0.5 {:.3}, mAP@0.5:0.95 {:.3}; after fine-tuning:",
                        p1.coco.map50, p1.coco.map50_95
                    ),
                }
            }
            if let Some(c) = s.val.centroids {
                println!(
                    "val centre hits at score {}: precision {:.3}, recall {:.3}, F1 {:.3}",
                    a.score_threshold, c.precision, c.recall, c.f1
                );
            }
            match (s.val.mean_iou, s.val.class_accuracy) {
                (Some(iou), Some(acc)) => println!(
                    "val mean IoU {iou:.3}, class accuracy {acc:.3} (mAP@0.5 {:.3})",
                    c.map50
                ),
                _ => println!(
                    "val mAP@0.5 {:.3}, mAP@0.5:0.95 {:.3}, precision {:.3} recall {:.3} at score {}",
                    c.map50, c.map50_95, c.precision, c.recall, c.score_threshold
                ),
            }
            println!(
                "best epoch {}; {} training and {} validation pictures, {} skipped, {} feature maps from cache; features {:.1} s, head {:.1} s; run in {}",
                s.best_epoch,
                s.train_images,
                s.val_images,
                s.skipped.len(),
                s.cache_hits,
                s.feature_seconds,
                s.train_seconds,
                a.out.display()
            );
        }
        Command::Synth {
            what:
                SynthCommand::Detect {
                    ref out,
                    preset,
                    count,
                    val_count,
                    width,
                    height,
                    format,
                    seed,
                },
        } => {
            use kestrel_trainer::data::annotations::Format;
            use kestrel_trainer::data::scenes::{Preset, SynthDetect};
            let preset = match preset {
                PresetArg::Book => Preset::Book,
                PresetArg::Multi => Preset::Multi,
            };
            let mut s = SynthDetect::new(preset);
            s.count = count;
            s.val_count = val_count;
            s.seed = seed;
            s.width = width.unwrap_or(s.width);
            s.height = height.unwrap_or(s.height);
            let format = match format {
                FormatArg::Yolo => Format::Yolo,
                FormatArg::Coco => Format::Coco,
            };
            let progress: &dyn kestrel_trainer::progress::Progress =
                if cli.quiet { &Silent } else { &Bars };
            let bar = progress.start("drawing scenes", Some(s.total() as u64));
            let mut last = 0;
            let set = s.write(out, format, &mut |n| {
                bar.advance((n - last) as u64);
                last = n;
            })?;
            bar.finish();
            let objects: usize = set
                .train
                .iter()
                .chain(&set.val)
                .map(|i| i.objects.len())
                .sum();
            println!(
                "wrote {} training and {} validation pictures ({objects} objects, classes {}) to {}",
                set.train.len(),
                set.val.len(),
                set.labels.join(", "),
                out.display()
            );
        }
        Command::Synth {
            what:
                SynthCommand::Classify {
                    ref out,
                    per_class,
                    size,
                    seed,
                },
        } => {
            let opts = kestrel_trainer::data::synth::SynthClassify {
                per_class,
                size,
                seed,
            };
            let files = kestrel_trainer::data::synth::write_classify(&opts, out)
                .with_context(|| format!("writing the synthetic set to {}", out.display()))?;
            println!(
                "wrote {} pictures of {} classes to {}",
                files.len(),
                kestrel_trainer::data::synth::SHAPES.len(),
                out.display()
            );
        }
        Command::Export {
            ref run,
            ref out,
            quantize,
            calibration,
            percentile,
            ref sign,
            no_sign,
        } => {
            use kestrel_shared::manifest::CalibrationMethod;
            let method = match percentile {
                None => CalibrationMethod::MinMax,
                Some(p) if p > 50.0 && p <= 100.0 => {
                    CalibrationMethod::Percentile { percentile: p }
                }
                Some(p) => {
                    bail!("--percentile must be above 50 and at most 100 (e.g. 99.99), got {p}")
                }
            };
            let p = Pretrained::load(&resolve()?, cli.backend)?;
            let progress: &dyn kestrel_trainer::progress::Progress =
                if cli.quiet { &Silent } else { &Bars };
            let opts = kestrel_trainer::bundle::ExportOptions {
                quantize,
                calibration,
                method,
            };
            let report =
                kestrel_trainer::bundle::export_bundle(&p, run, out, &opts, &cache, progress)
                    .with_context(|| {
                        format!(
                            "exporting {} as a bundle to {}",
                            run.display(),
                            out.display()
                        )
                    })?;
            kestrel_trainer::bundle::print_report(&report, &mut std::io::stdout())?;
            let key = match sign {
                Some(k) => Some(k.clone()),
                None if no_sign => None,
                None => kestrel_trainer::deploy::default_signing_key(),
            };
            match key {
                Some(k) => {
                    let id = kestrel_trainer::deploy::sign_bundle(out, &k).with_context(|| {
                        format!("signing {} with {}", out.display(), k.display())
                    })?;
                    println!("  signed with key {id} ({})", k.display());
                }
                None => println!(
                    "  not signed (`kestrel keygen` makes a key; boards with a trust list refuse unsigned bundles)"
                ),
            }
        }
        Command::Deploy(ref args) => {
            let progress: &dyn kestrel_trainer::progress::Progress =
                if cli.quiet { &Silent } else { &ByteBars };
            kestrel_trainer::deploy::cli::deploy(args, progress)?;
        }
        Command::Monitor(ref args) => kestrel_trainer::deploy::cli::monitor(args)?,
        Command::Rollback(ref args) => kestrel_trainer::deploy::cli::rollback(args)?,
        Command::Keygen(ref args) => kestrel_trainer::deploy::cli::keygen(args)?,
        Command::Boards(ref args) => kestrel_trainer::boards::run(args)?,
        Command::Install(ref args) => {
            kestrel_trainer::install::run(args)?;
        }
        Command::Demo { ref out, cut } => {
            let p = Pretrained::load(&resolve()?, cli.backend)?;
            let report = demo::run(&p, cut, out)?;
            if report.top1_correct != report.photos
                || report.max_abs_diff_burn_vs_tract > demo::MAX_ABS_DIFF
            {
                bail!("demo results are off: {report:?}");
            }
        }
    }
    Ok(())
}

/// Progress bars in bytes with the transfer rate (deploys).
struct ByteBars;

struct ByteTask(indicatif::ProgressBar);

impl kestrel_trainer::progress::Task for ByteTask {
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl kestrel_trainer::progress::Progress for ByteBars {
    fn start(&self, what: &str, total: Option<u64>) -> Box<dyn kestrel_trainer::progress::Task> {
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0)).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Box::new(ByteTask(bar))
    }
}
