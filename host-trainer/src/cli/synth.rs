//! `kestrel synth`: synthetic labelled pictures, so training can be tried with no download.

use std::path::PathBuf;

use anyhow::Context as _;

use super::Context;
use crate::data::annotations::Format;
use crate::data::scenes::{Preset, SynthDetect};
use crate::data::synth::{SHAPES, SynthClassify, write_classify};

/// `kestrel synth detect|classify`.
#[derive(Debug, clap::Subcommand)]
pub enum SynthCommand {
    /// Detection scenes with boxes, written as a YOLO (default) or COCO dataset.
    #[command(
        after_help = "Examples:\n  kestrel synth detect --preset book --count 2000 --val-count 500 --out book/\n  kestrel synth detect --preset multi --width 480 --height 360 --format coco --out multi/"
    )]
    Detect(SynthDetectArgs),
    /// Shapes (circle, cross, square, triangle) on varied backgrounds, as OUT/<label>/*.png.
    #[command(
        after_help = "Examples:\n  kestrel synth classify --out shapes/\n  kestrel synth classify --per-class 100 --size 96 --seed 7 --out shapes/"
    )]
    Classify(SynthClassifyArgs),
}

/// Kind of detection scene.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PresetArg {
    /// The book's scenes: one rectangle or triangle among circles and lines, 224x224.
    Book,
    /// 0-6 objects of five classes, occlusion, textures, lighting, 320x240.
    Multi,
}

/// Annotation format of the written set.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// images/{train,val}, labels/{train,val}, data.yaml.
    Yolo,
    /// {train,val}/annotations.json with the pictures beside it.
    Coco,
    /// Pascal VOC: JPEGImages/, Annotations/*.xml, ImageSets/Main/{train,val}.txt.
    Voc,
}

/// Arguments of `kestrel synth detect`.
#[derive(Debug, clap::Args)]
pub struct SynthDetectArgs {
    /// Output directory (new or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Kind of scene.
    #[arg(long, value_enum, default_value_t = PresetArg::Multi)]
    pub preset: PresetArg,
    /// Training pictures.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Validation pictures.
    #[arg(long, default_value_t = 200)]
    pub val_count: usize,
    /// Picture width (default: the preset's).
    #[arg(long)]
    pub width: Option<u32>,
    /// Picture height (default: the preset's).
    #[arg(long)]
    pub height: Option<u32>,
    /// Annotation format.
    #[arg(long, value_enum, default_value_t = FormatArg::Yolo)]
    pub format: FormatArg,
    /// Random seed (same seed, same pictures).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Arguments of `kestrel synth classify`.
#[derive(Debug, clap::Args)]
pub struct SynthClassifyArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Pictures per class.
    #[arg(long, default_value_t = 60)]
    pub per_class: usize,
    /// Side of the pictures in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    /// Random seed (same seed, same pictures).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Write the set asked for and say what was written.
pub fn run(cmd: &SynthCommand, ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        SynthCommand::Detect(a) => detect(a, ctx),
        SynthCommand::Classify(a) => classify(a),
    }
}

fn detect(a: &SynthDetectArgs, ctx: &Context) -> anyhow::Result<()> {
    let mut s = SynthDetect::new(match a.preset {
        PresetArg::Book => Preset::Book,
        PresetArg::Multi => Preset::Multi,
    });
    s.count = a.count;
    s.val_count = a.val_count;
    s.seed = a.seed;
    s.width = a.width.unwrap_or(s.width);
    s.height = a.height.unwrap_or(s.height);
    let format = match a.format {
        FormatArg::Yolo => Format::Yolo,
        FormatArg::Coco => Format::Coco,
        FormatArg::Voc => Format::Voc,
    };
    let bar = ctx
        .progress()
        .start("drawing scenes", Some(s.total() as u64));
    let mut last = 0;
    let set = s.write(&a.out, format, &mut |n| {
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
        a.out.display()
    );
    Ok(())
}

fn classify(a: &SynthClassifyArgs) -> anyhow::Result<()> {
    let opts = SynthClassify {
        per_class: a.per_class,
        size: a.size,
        seed: a.seed,
    };
    let files = write_classify(&opts, &a.out)
        .with_context(|| format!("writing the synthetic set to {}", a.out.display()))?;
    println!(
        "wrote {} pictures of {} classes to {}",
        files.len(),
        SHAPES.len(),
        a.out.display()
    );
    Ok(())
}
