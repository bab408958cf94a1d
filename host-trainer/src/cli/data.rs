//! `kestrel data check|convert`: read a dataset in any supported layout without training, or
//! write it in another one. The work is in `data::check` and `data::annotations`.

use std::path::PathBuf;

use super::Context;
use crate::data::annotations::{self, Format};
use crate::data::check::check;

/// `kestrel data check|convert`.
#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Read a dataset without training: the layout found, classes, pictures and objects per
    /// split and class, box sizes, and every problem as `file:line: what`. Exits non-zero when
    /// there is a problem.
    #[command(
        after_help = "Examples:\n  kestrel data check shelf/                      # any layout: YOLO, Roboflow, COCO, VOC, ImageFolder\n  kestrel data check shelf/images --annotations shelf/export.json"
    )]
    Check(CheckArgs),
    /// Write a detection dataset in another layout (pictures hard-linked, or copied across file
    /// systems): `--to yolo|coco|voc`.
    #[command(
        after_help = "Examples:\n  kestrel data convert shelf-voc/ --to yolo --out shelf-yolo/\n  kestrel data convert shelf/ --to coco --out shelf-coco/ --strict"
    )]
    Convert(ConvertArgs),
}

/// Arguments of `kestrel data check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The dataset: a folder in any layout (Ultralytics or Roboflow YOLO, COCO, Roboflow COCO,
    /// Pascal VOC, ImageFolder), a data.yaml or a COCO JSON file.
    pub dir: PathBuf,
    /// A COCO annotation file of any name for the pictures under DIR.
    #[arg(long)]
    pub annotations: Option<PathBuf>,
}

/// The layouts `kestrel data convert` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ToFormat {
    /// Ultralytics: images/<split>/, labels/<split>/, data.yaml.
    Yolo,
    /// <split>/images/ and <split>/annotations.json.
    Coco,
    /// Pascal VOC: JPEGImages/, Annotations/*.xml, ImageSets/Main/<split>.txt.
    Voc,
}

/// Arguments of `kestrel data convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The detection dataset to read (any layout `kestrel data check` reads).
    pub dir: PathBuf,
    /// A COCO annotation file of any name for the pictures under DIR.
    #[arg(long)]
    pub annotations: Option<PathBuf>,
    /// The layout to write.
    #[arg(long, value_enum)]
    pub to: ToFormat,
    /// Output folder (new or empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Stop at the first bad annotation instead of leaving it out with a warning.
    #[arg(long)]
    pub strict: bool,
}

/// Run `kestrel data ...`.
pub fn run(cmd: &DataCommand, _ctx: &Context) -> anyhow::Result<()> {
    match cmd {
        DataCommand::Check(a) => {
            let report = check(&a.dir, a.annotations.as_deref());
            print!("{report}");
            let n = report.problems.len();
            anyhow::ensure!(
                !report.has_errors(),
                "{}: {n} problem{} (listed above)",
                a.dir.display(),
                if n == 1 { "" } else { "s" }
            );
            Ok(())
        }
        DataCommand::Convert(a) => {
            let occupied = a.out.exists()
                && std::fs::read_dir(&a.out)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?
                    .next()
                    .is_some();
            anyhow::ensure!(
                !occupied,
                "{} is not empty: give a new or empty folder to write into",
                a.out.display()
            );
            let ds = annotations::load_with(&a.dir, a.annotations.as_deref(), a.strict)?;
            let format = match a.to {
                ToFormat::Yolo => Format::Yolo,
                ToFormat::Coco => Format::Coco,
                ToFormat::Voc => Format::Voc,
            };
            annotations::write(format, &a.out, &ds)?;
            let pictures: usize = ds.splits().iter().map(|(_, s)| s.len()).sum();
            println!(
                "{} ({}) -> {} ({format}): {pictures} pictures, {} classes{}",
                a.dir.display(),
                ds.layout,
                a.out.display(),
                ds.labels.len(),
                if ds.issues.is_empty() {
                    String::new()
                } else {
                    format!(", {} bad annotations left out", ds.issues.len())
                }
            );
            Ok(())
        }
    }
}
