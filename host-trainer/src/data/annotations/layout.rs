//! Which layout a dataset folder is in, found from the files themselves, so `--data DIR` works
//! on a folder as it was downloaded or exported (Ultralytics, Roboflow, COCO, Pascal VOC, or an
//! ImageFolder for classification).
//!
//! The checks, in order (the first that matches wins):
//! 1. a `.json` file: COCO; a `.yaml`/`.yml` file: YOLO with that data.yaml;
//! 2. `DIR/data.yaml` (or `data.yml`): YOLO, Roboflow's when `DIR/train/images/` exists;
//! 3. `DIR/Annotations/`: Pascal VOC;
//! 4. COCO JSON files (any name, recognised by their `images` and `categories` keys): one in `DIR`,
//!    one per split folder (`DIR/{train,valid,val,test}/`, Roboflow's `_annotations.coco.json`
//!    among them), or per split in `DIR/annotations/` (the official COCO download);
//! 5. `DIR/images/` or `DIR/train/images/` without data.yaml: YOLO with a classes.txt;
//! 6. class folders of pictures (`DIR/<class>/`, `DIR/train/<class>/`): an ImageFolder.

use std::fmt;
use std::path::{Path, PathBuf};

use super::coco::{self, SplitFiles};
use super::{AnnotationError, walk};
use crate::data::folder::is_image;

/// A dataset layout Kestrel recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Ultralytics YOLO: data.yaml, `images/<split>/`, `labels/<split>/`.
    Yolo,
    /// Roboflow's YOLO export: data.yaml, `<split>/images/`, `<split>/labels/`.
    RoboflowYolo,
    /// COCO JSON files.
    Coco,
    /// Roboflow's COCO export: `<split>/_annotations.coco.json` next to the pictures.
    RoboflowCoco,
    /// Pascal VOC: `Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/`.
    Voc,
    /// Classification: `DIR/<class>/` folders of pictures.
    ImageFolder,
}

impl Layout {
    /// A name for people.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Yolo => "YOLO (Ultralytics)",
            Layout::RoboflowYolo => "YOLO (Roboflow export)",
            Layout::Coco => "COCO",
            Layout::RoboflowCoco => "COCO (Roboflow export)",
            Layout::Voc => "Pascal VOC",
            Layout::ImageFolder => "ImageFolder (classification)",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A layout found, with the files that define it.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// A YOLO folder.
    Yolo {
        /// The dataset folder.
        root: PathBuf,
        /// Its data.yaml, if it has one.
        yaml: Option<PathBuf>,
        /// Roboflow's export (`train/images/`).
        roboflow: bool,
    },
    /// COCO JSON files, per split.
    Coco {
        /// The annotation files.
        files: SplitFiles,
        /// Roboflow's export (`_annotations.coco.json`).
        roboflow: bool,
    },
    /// A Pascal VOC folder.
    Voc {
        /// The folder holding `Annotations/`.
        root: PathBuf,
    },
    /// A classification folder.
    ImageFolder {
        /// The folder.
        root: PathBuf,
    },
}

impl Found {
    /// The layout.
    pub fn layout(&self) -> Layout {
        match self {
            Found::Yolo { roboflow: true, .. } => Layout::RoboflowYolo,
            Found::Yolo { .. } => Layout::Yolo,
            Found::Coco { roboflow: true, .. } => Layout::RoboflowCoco,
            Found::Coco { .. } => Layout::Coco,
            Found::Voc { .. } => Layout::Voc,
            Found::ImageFolder { .. } => Layout::ImageFolder,
        }
    }

    /// One line for people: the layout and the files it was found by.
    pub fn describe(&self) -> String {
        let name = self.layout().name();
        match self {
            Found::Yolo {
                yaml: Some(y),
                root,
                ..
            } => format!("{name}, {} (root {})", y.display(), root.display()),
            Found::Yolo { root, .. } => {
                format!(
                    "{name}, no data.yaml (class names from classes.txt) in {}",
                    root.display()
                )
            }
            Found::Coco { files, .. } => {
                let list: Vec<String> = files
                    .named()
                    .map(|(s, f)| format!("{s}: {}", f.display()))
                    .collect();
                format!("{name}, {}", list.join(", "))
            }
            Found::Voc { root } => format!("{name}, {}", root.join("Annotations").display()),
            Found::ImageFolder { root } => format!("{name}, {}", root.display()),
        }
    }
}

/// Find the layout of a dataset file or folder (see the module doc for the order of the checks).
pub fn find_layout(p: &Path) -> Result<Found, AnnotationError> {
    if !p.exists() {
        return Err(AnnotationError::NotFound(p.to_path_buf()));
    }
    if p.is_file() {
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        return match ext.as_str() {
            "json" => Ok(Found::Coco {
                roboflow: coco::is_roboflow_file(p),
                files: SplitFiles {
                    train: vec![p.to_path_buf()],
                    ..Default::default()
                },
            }),
            "yaml" | "yml" => {
                let root = p.parent().unwrap_or(Path::new(".")).to_path_buf();
                Ok(Found::Yolo {
                    roboflow: is_roboflow_yolo(&root),
                    root,
                    yaml: Some(p.to_path_buf()),
                })
            }
            _ => Err(AnnotationError::UnknownLayout(p.to_path_buf())),
        };
    }
    if let Some(yaml) = ["data.yaml", "data.yml"]
        .iter()
        .map(|n| p.join(n))
        .find(|y| y.is_file())
    {
        return Ok(Found::Yolo {
            root: p.to_path_buf(),
            yaml: Some(yaml),
            roboflow: is_roboflow_yolo(p),
        });
    }
    if p.join("Annotations").is_dir() {
        return Ok(Found::Voc {
            root: p.to_path_buf(),
        });
    }
    if let Some(files) = coco::discover(p)? {
        let roboflow = files.named().any(|(_, f)| coco::is_roboflow_file(f));
        return Ok(Found::Coco { files, roboflow });
    }
    if p.join("images").is_dir() || is_roboflow_yolo(p) {
        return Ok(Found::Yolo {
            root: p.to_path_buf(),
            yaml: None,
            roboflow: is_roboflow_yolo(p),
        });
    }
    if is_image_folder(p)? {
        return Ok(Found::ImageFolder {
            root: p.to_path_buf(),
        });
    }
    Err(AnnotationError::UnknownLayout(p.to_path_buf()))
}

/// Roboflow's YOLO export: `train/images/` (and usually `valid/images/`).
fn is_roboflow_yolo(root: &Path) -> bool {
    root.join("train").join("images").is_dir()
}

/// Class folders holding pictures, at the top or under `train/`.
fn is_image_folder(p: &Path) -> Result<bool, AnnotationError> {
    let base = if p.join("train").is_dir() {
        p.join("train")
    } else {
        p.to_path_buf()
    };
    // A picture below a subfolder of `base` (not directly in `base`).
    Ok(walk(&base)?
        .iter()
        .any(|rel| rel.components().count() >= 2 && is_image(rel)))
}
