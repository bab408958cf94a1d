//! `kestrel train classify|detect`: the arguments (the flags both tasks share are declared once,
//! in [`TrainingFlags`]), the per-task defaults applied, and the summary printed.

use std::path::PathBuf;

use kestrel_shared::CutPoint;

use super::Context;
use crate::classify::finetune::FineTuneConfig;
use crate::classify::train::TrainDefaults;
use crate::classify::{
    ClassifyOptions, HeadKind, LrSchedule, OptimizerKind, TrainConfig, train_classify,
};
use crate::detect::heads::SingleForm;
use crate::detect::loss::Objectness;
use crate::detect::run::{DetectOptions, train_detect};
use crate::detect::train::{
    DecodeSettings, DetectDefaults, DetectFineTune, DetectHeadKind, DetectTrainConfig,
};
use crate::run_config::{RunConfig, RunTask};

/// `kestrel train classify|detect`, or `kestrel train --resume RUN`.
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    arg_required_else_help = true,
    after_help = "Examples:\n  kestrel train detect --data shelf/ --epochs 40          # -> runs/detect/train\n  kestrel train --resume runs/detect/train                # after a kill or a crash"
)]
pub struct TrainArgs {
    /// The task to train.
    #[command(subcommand)]
    pub task: Option<TrainCommand>,
    /// Continue an interrupted run from its last finished epoch, with the settings, data and
    /// seed it started with (its config.json): the result is the one the run would have given
    /// uninterrupted.
    #[arg(long, value_name = "RUN")]
    pub resume: Option<PathBuf>,
}

/// `kestrel train classify|detect`.
#[derive(Debug, clap::Subcommand)]
pub enum TrainCommand {
    /// Image classification from DATA/<label>/*.png (two-model approach: cached embeddings + head).
    Classify(ClassifyArgs),
    /// Object detection from a YOLO folder or COCO JSON (cached trunk feature maps + head).
    Detect(DetectArgs),
}

/// Where a run is written (see [`crate::run_dir`]).
#[derive(Debug, clap::Args)]
pub struct RunDirArgs {
    /// Run directory to write (default: runs/<task>/<name>, numbered so that an earlier run is
    /// never overwritten). An existing directory with files in it is refused without --exist-ok.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The run's name under runs/<task>/ when --out is not given.
    #[arg(long, default_value = "train")]
    pub name: String,
    /// Write into an existing run directory (or reuse runs/<task>/<name>): files the new run
    /// writes replace the earlier run's.
    #[arg(long)]
    pub exist_ok: bool,
}

impl RunDirArgs {
    /// The directory the run of `task` goes to.
    pub fn choose(&self, task: &str) -> Result<PathBuf, crate::run_dir::RunDirError> {
        crate::run_dir::choose(&crate::run_dir::RunDirRequest {
            out: self.out.as_deref(),
            project: std::path::Path::new("runs"),
            task,
            name: &self.name,
            exist_ok: self.exist_ok,
        })
    }
}

/// Training flags both tasks take. Options without a value take the task's (and for detection
/// the head's) default, given in each flag's help.
#[derive(Debug, clap::Args)]
pub struct TrainingFlags {
    /// Optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adam)]
    pub optimizer: OptimizerKind,
    /// Learning rate (default 1e-3; 3e-4 for the single detection head, whose big dense layer is
    /// unstable at 1e-3).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate schedule: constant (default), or cosine (decays step by step to 1% of the
    /// rate at the last epoch; set --epochs to the length you want and early stopping rarely
    /// fires).
    #[arg(long, value_enum)]
    pub lr_schedule: Option<LrSchedule>,
    /// Maximum epochs (default 30).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Seed (split, initialisation, shuffling, dropout).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Early stopping: epochs without a better validation loss (default 5; 0 = off).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Share of the pictures held out for validation when the dataset has no validation split.
    #[arg(long, default_value_t = 0.15)]
    pub val_fraction: f64,
    /// Fail on an unreadable picture or a bad annotation instead of skipping it.
    #[arg(long)]
    pub strict: bool,
    /// Phase 2: after the head, fine-tune the top N inverted-residual blocks below the cut with
    /// it (0 = off; default 2 for classification, 3 for the grid head, 0 for the other heads).
    #[arg(long)]
    pub fine_tune_blocks: Option<usize>,
    /// Epochs of phase 2 (default 5 for classification, 6 for the grid head, 10 for the other
    /// heads).
    #[arg(long)]
    pub fine_tune_epochs: Option<usize>,
    /// Learning rate of phase 2 (default: a hundredth of --lr for classification, where BatchNorm
    /// on fixed statistics makes larger steps undo the pretrained features; a tenth for detection).
    #[arg(long)]
    pub fine_tune_lr: Option<f64>,
}

/// The flags with the defaults of a task filled in.
struct Resolved {
    lr: f64,
    lr_schedule: LrSchedule,
    epochs: usize,
    patience: usize,
    fine_tune_blocks: usize,
    fine_tune_epochs: usize,
    fine_tune_lr: f64,
}

impl TrainingFlags {
    fn resolve(&self, d: &TrainDefaults) -> Resolved {
        let lr = self.lr.unwrap_or(d.lr);
        Resolved {
            lr,
            lr_schedule: self.lr_schedule.unwrap_or(d.lr_schedule),
            epochs: self.epochs.unwrap_or(d.epochs),
            patience: self.patience.unwrap_or(d.patience),
            fine_tune_blocks: self.fine_tune_blocks.unwrap_or(d.fine_tune_blocks),
            fine_tune_epochs: self.fine_tune_epochs.unwrap_or(d.fine_tune_epochs),
            fine_tune_lr: self.fine_tune_lr.unwrap_or(lr / d.fine_tune_lr_divisor),
        }
    }
}

/// Classification head choice on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum HeadArg {
    /// One linear layer.
    Linear,
    /// Dense (units, ReLU, dropout), then linear.
    Dense,
}

/// Arguments of `kestrel train classify`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel train classify --data photos/                  # photos/<label>/* -> runs/classify/train\n  kestrel train classify --data photos/ --head linear --epochs 20 --name linear\n  kestrel train classify --data photos/ --fine-tune-blocks 4 --out runs/pets --exist-ok"
)]
pub struct ClassifyArgs {
    /// Dataset root: DATA/<label>/*, or DATA/train/<label>/* and DATA/val/<label>/*.
    #[arg(long)]
    pub data: PathBuf,
    /// Where the run goes.
    #[command(flatten)]
    pub run: RunDirArgs,
    /// Trunk cut point.
    #[arg(long, default_value = "pooled")]
    pub cut: CutPoint,
    /// Head: linear, or dense (units, ReLU, dropout) then linear.
    #[arg(long, value_enum, default_value_t = HeadArg::Dense)]
    pub head: HeadArg,
    /// Hidden units of a dense head.
    #[arg(long, default_value_t = 100)]
    pub units: usize,
    /// Dropout after the hidden layer of a dense head.
    #[arg(long, default_value_t = 0.2)]
    pub dropout: f64,
    /// Augmented views (random resized crop, flip, colour jitter) embedded per training picture,
    /// besides the picture itself; cached like the pictures.
    #[arg(long, default_value_t = 0)]
    pub views: u32,
    #[command(flatten)]
    pub train: TrainingFlags,
}

impl ClassifyArgs {
    /// The run's options, defaults applied.
    pub fn options(&self) -> ClassifyOptions {
        let t = &self.train;
        let mut r = t.resolve(&TrainDefaults::CLASSIFY);
        // Phase 2 trains the blocks under a head on the pooled vector only: by default it runs
        // where it can, and an explicit --fine-tune-blocks with another cut is refused later.
        if t.fine_tune_blocks.is_none() && self.cut != CutPoint::Pooled {
            r.fine_tune_blocks = 0;
        }
        ClassifyOptions {
            data: self.data.clone(),
            cut: self.cut,
            val_fraction: t.val_fraction,
            strict: t.strict,
            views: self.views,
            train: TrainConfig {
                head: match self.head {
                    HeadArg::Linear => HeadKind::Linear,
                    HeadArg::Dense => HeadKind::Dense {
                        units: self.units,
                        dropout: self.dropout,
                    },
                },
                optimizer: t.optimizer,
                lr: r.lr,
                epochs: r.epochs,
                batch_size: t.batch_size,
                seed: t.seed,
                patience: r.patience,
                lr_schedule: r.lr_schedule,
            },
            fine_tune: (r.fine_tune_blocks > 0).then_some(FineTuneConfig {
                blocks: r.fine_tune_blocks,
                epochs: r.fine_tune_epochs,
                lr: r.fine_tune_lr,
                batch_size: t.batch_size,
                seed: t.seed,
            }),
        }
    }
}

/// Arguments of `kestrel train detect`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel data check shelf.v3i.yolov8/                   # what the loader sees, without training\n  kestrel train detect --data shelf.v3i.yolov8/          # Roboflow YOLO export, grid head\n  kestrel train detect --data VOCdevkit/VOC2012 --width 320 --height 320\n  kestrel train detect --data scenes/ --head single --epochs 40 --name book"
)]
pub struct DetectArgs {
    /// Dataset: a folder in any layout (Ultralytics or Roboflow YOLO, COCO, Roboflow COCO, Pascal
    /// VOC; found by itself, see `kestrel data check`), a data.yaml or a COCO JSON file.
    #[arg(long)]
    pub data: PathBuf,
    /// A COCO annotation file of any name for the pictures under --data.
    #[arg(long)]
    pub annotations: Option<PathBuf>,
    /// Where the run goes.
    #[command(flatten)]
    pub run: RunDirArgs,
    /// single: the book's one-object detector; grid: several objects with boxes; centroids:
    /// object centres only (FOMO-style).
    #[arg(long, value_enum, default_value_t = DetectHeadKind::Grid)]
    pub head: DetectHeadKind,
    /// Form of the single head: attention (a box per cell of the map, averaged by softmax
    /// attention over the cells) or dense (the book's: flatten, dense, dense 5).
    #[arg(long, value_enum, default_value_t = SingleForm::Attention)]
    pub single_form: SingleForm,
    /// Model input width (default 224 for single, 320 otherwise); pictures are stretched to it.
    #[arg(long)]
    pub width: Option<u32>,
    /// Model input height (default 224 for single, 240 otherwise).
    #[arg(long)]
    pub height: Option<u32>,
    /// Trunk cut point: stride16 (features.13, default) or stride8 (features.6) for small objects.
    #[arg(long, default_value = "stride16")]
    pub cut: CutPoint,
    /// Width of the single head (its convolutions: default 64; the dense form's hidden layer: 200)
    /// or of the grid head's convolutions (64).
    #[arg(long)]
    pub units: Option<usize>,
    /// Lowest score `predict` reports (also the threshold of precision / recall in the metrics).
    #[arg(long, default_value_t = 0.3)]
    pub score_threshold: f32,
    /// IoU above which NMS drops the weaker of two boxes of a class.
    #[arg(long, default_value_t = 0.5)]
    pub nms_iou: f32,
    /// Most detections per picture.
    #[arg(long, default_value_t = 100)]
    pub max_detections: usize,
    /// Augmentation: move each training scene by up to N cells of the feature map (N x stride
    /// pixels) with its boxes, as far as keeps the objects inside (default 64 for single, i.e.
    /// anywhere in the picture; 0 for grid heads, which are convolutional).
    #[arg(long)]
    pub shift_cells: Option<usize>,
    /// Dropout on the feature map the single head reads, in training (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Grid head objectness: focal (target 1) or iou (target = the IoU of the cell's box, so the
    /// best-fitting box scores highest).
    #[arg(long, value_enum, default_value_t = Objectness::Focal)]
    pub objectness: Objectness,
    #[command(flatten)]
    pub train: TrainingFlags,
}

impl DetectArgs {
    /// The run's options, the head's defaults applied.
    pub fn options(&self) -> DetectOptions {
        let d = DetectDefaults::of(self.head, self.single_form);
        let t = &self.train;
        let mut r = t.resolve(&d.train);
        // The default phase 2 unfreezes at most the blocks that work at the cut's stride; an
        // explicit --fine-tune-blocks that does not fit is refused later, with the range.
        if t.fine_tune_blocks.is_none() {
            r.fine_tune_blocks = (1..=r.fine_tune_blocks)
                .rev()
                .find(|&blocks| {
                    let f = DetectFineTune {
                        blocks,
                        epochs: r.fine_tune_epochs,
                        lr: r.fine_tune_lr,
                    };
                    f.prefix_cut(self.cut).is_ok()
                })
                .unwrap_or(0);
        }
        DetectOptions {
            data: self.data.clone(),
            annotations: self.annotations.clone(),
            width: self.width.unwrap_or(d.width),
            height: self.height.unwrap_or(d.height),
            cut: self.cut,
            val_fraction: t.val_fraction,
            strict: t.strict,
            train: DetectTrainConfig {
                head: self.head,
                units: self.units.unwrap_or(d.units),
                optimizer: t.optimizer,
                lr: r.lr,
                epochs: r.epochs,
                batch_size: t.batch_size,
                seed: t.seed,
                patience: r.patience,
                shift_cells: self.shift_cells.unwrap_or(d.shift_cells),
                dropout: self.dropout,
                objectness: self.objectness,
                lr_schedule: r.lr_schedule,
                single_form: self.single_form,
            },
            decode: DecodeSettings {
                score_threshold: self.score_threshold,
                nms_iou: self.nms_iou,
                max_detections: self.max_detections,
            },
            fine_tune: (r.fine_tune_blocks > 0).then_some(DetectFineTune {
                blocks: r.fine_tune_blocks,
                epochs: r.fine_tune_epochs,
                lr: r.fine_tune_lr,
            }),
        }
    }
}

/// Train (or resume) and print the summary.
pub fn run(args: &TrainArgs, ctx: &Context) -> anyhow::Result<()> {
    match (&args.task, &args.resume) {
        (Some(TrainCommand::Classify(a)), _) => {
            let out = a.run.choose("classify")?;
            let p = ctx.pretrained()?;
            let s = train_classify(&p, &a.options(), &ctx.cache, &out, false, ctx.progress())?;
            print_classify(&s);
        }
        (Some(TrainCommand::Detect(a)), _) => {
            let out = a.run.choose("detect")?;
            let p = ctx.pretrained()?;
            let s = train_detect(&p, &a.options(), &ctx.cache, &out, false, ctx.progress())?;
            print_detect(&s, &out);
        }
        (None, Some(run)) => resume(run, ctx)?,
        (None, None) => anyhow::bail!(
            "say what to train: `kestrel train classify|detect ...`, or `kestrel train --resume RUN`"
        ),
    }
    Ok(())
}

/// `kestrel train --resume RUN`: the run's own options, into its own folder.
fn resume(run: &std::path::Path, ctx: &Context) -> anyhow::Result<()> {
    let config = RunConfig::read(run)?;
    anyhow::ensure!(
        !run.join("metrics.json").exists(),
        "{} finished (its metrics.json is written): there is nothing to resume; start a new run to train longer",
        run.display()
    );
    let p = ctx.pretrained()?;
    match &config.task {
        RunTask::Classify(o) => print_classify(&train_classify(
            &p,
            o,
            &ctx.cache,
            run,
            true,
            ctx.progress(),
        )?),
        RunTask::Detect(o) => print_detect(
            &train_detect(&p, o, &ctx.cache, run, true, ctx.progress())?,
            run,
        ),
    }
    Ok(())
}

fn print_classify(s: &crate::classify::RunSummary) {
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

fn print_detect(s: &crate::detect::run::DetectSummary, out: &std::path::Path) {
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
    if let Some(cf) = s.val.centroids {
        println!(
            "val centre hits at score {}: precision {:.3}, recall {:.3}, F1 {:.3}",
            c.score_threshold, cf.precision, cf.recall, cf.f1
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
        out.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `kestrel train ARGS...` as the command line parses it.
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        task: TrainCommand,
    }

    fn phase2_blocks(args: &[&str]) -> usize {
        let cli = Cli::try_parse_from(["train"].iter().chain(args)).expect("arguments parse");
        let blocks = match cli.task {
            TrainCommand::Classify(a) => a.options().fine_tune.map(|f| f.blocks),
            TrainCommand::Detect(a) => a.options().fine_tune.map(|f| f.blocks),
        };
        blocks.unwrap_or(0)
    }

    #[test]
    fn phase2_runs_by_default_where_it_fits_the_cut() {
        assert_eq!(phase2_blocks(&["classify", "--data", "d"]), 2);
        assert_eq!(
            phase2_blocks(&["classify", "--data", "d", "--cut", "stride16"]),
            0
        );
        assert_eq!(phase2_blocks(&["detect", "--data", "d"]), 3);
        // Below stride8 (features.6) only two blocks keep the cut's stride.
        assert_eq!(
            phase2_blocks(&["detect", "--data", "d", "--cut", "stride8"]),
            2
        );
        assert_eq!(
            phase2_blocks(&["detect", "--data", "d", "--head", "single"]),
            0
        );
        assert_eq!(
            phase2_blocks(&["detect", "--data", "d", "--head", "centroids"]),
            0
        );
        // What the user asks for is kept (and checked against the cut when the run starts).
        let off = ["detect", "--data", "d", "--fine-tune-blocks", "0"];
        assert_eq!(phase2_blocks(&off), 0);
        let asked = [
            "classify",
            "--data",
            "d",
            "--cut",
            "stride16",
            "--fine-tune-blocks",
            "1",
        ];
        assert_eq!(phase2_blocks(&asked), 1);
    }
}
