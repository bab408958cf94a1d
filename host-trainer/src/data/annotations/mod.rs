//! Detection datasets as people have them: Ultralytics and Roboflow YOLO folders, COCO JSON
//! (any file name, one per split, Roboflow's `_annotations.coco.json`), and Pascal VOC XML.
//!
//! [`load`] finds the layout by itself ([`layout`]), reads it with the format's reader ([`yolo`],
//! [`coco`], [`voc`]) and returns one [`DetectDataset`]: class names, the splits, and every
//! problem found. Boxes become [`BBox`] corners in pixels of the picture as displayed (EXIF
//! orientation applied, [`kestrel_shared::picture`]). COCO crowds and VOC `difficult` objects go
//! to [`AnnotatedImage::ignored`]: never trained on, kept for evaluation.
//!
//! Bad annotations are [`Issue`]s with file and line: in strict mode the first one is an error,
//! otherwise the bad object (or picture) is skipped, counted and logged. What the loader decided
//! on its own (a Roboflow `../` path resolved, a category without objects dropped, a split left
//! out) is a note in [`DetectDataset::notes`], logged at info level and shown by `kestrel data
//! check`.
//!
//! Each format has one reader and one writer, in its module; [`write`] writes a dataset in any
//! of them (`kestrel data convert`).

pub mod coco;
pub mod layout;
pub mod voc;
pub mod yolo;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::data::annotated::{AnnotatedImage, Object};
use kestrel_shared::BBox;

pub use coco::{coco_json, write_coco};
pub use layout::{Layout, find_layout};
pub use voc::write_voc;
pub use yolo::{data_yaml_text, write_yolo, yolo_label_text};

use super::folder::IMAGE_EXTENSIONS;

/// How far (normalised) a YOLO box may stick out of its picture and still be clamped silently.
pub const YOLO_TOLERANCE: f64 = 1e-3;
/// How far (pixels) a COCO or VOC box may stick out of its picture and still be clamped silently;
/// one pixel, because inclusive `x + w = width + 1` boxes from old converters are common.
pub const COCO_TOLERANCE: f64 = 1.0;
/// Issues logged one by one before the rest are only counted (the full list is in
/// [`DetectDataset::issues`]).
const WARN_LIMIT: usize = 20;

/// The on-disk annotation formats Kestrel reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Ultralytics YOLO: `images/`, `labels/*.txt`, `data.yaml`.
    Yolo,
    /// COCO: JSON files of images, annotations and categories.
    Coco,
    /// Pascal VOC: `Annotations/*.xml`, `JPEGImages/`, `ImageSets/Main/*.txt`.
    Voc,
}

impl Format {
    /// The lower-case name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Yolo => "yolo",
            Format::Coco => "coco",
            Format::Voc => "voc",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "yolo" => Ok(Format::Yolo),
            "coco" => Ok(Format::Coco),
            "voc" => Ok(Format::Voc),
            _ => Err(format!(
                "unknown annotation format `{s}`: expected yolo, coco or voc"
            )),
        }
    }
}

/// What is wrong with an annotation, so callers can count problems by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueKind {
    /// Wrong field count, not a number, NaN, missing key, wrong JSON type, malformed XML.
    Malformed,
    /// A class or category id that the label list does not have.
    UnknownClass,
    /// A box of zero or negative width or height.
    EmptyBox,
    /// A box beyond the picture by more than the tolerance.
    OutsideImage,
    /// A label file, list entry or annotation whose picture file does not exist.
    MissingImage,
    /// A picture file whose header cannot be read.
    UnreadableImage,
    /// A picture whose declared size (COCO, VOC) differs from the file's.
    SizeMismatch,
    /// A COCO image id used twice, or an annotation for an image id that does not exist; a VOC
    /// list naming an annotation file that does not exist.
    BadReference,
}

/// One bad annotation: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// The file holding the annotation (label file, JSON, XML or list file, or the picture).
    pub path: PathBuf,
    /// 1-based line in a text or XML file (COCO issues name the annotation in `message`).
    pub line: Option<usize>,
    /// The kind of problem.
    pub kind: IssueKind,
    /// What is wrong, for people.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// A detection dataset that cannot be read or written, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum AnnotationError {
    /// A bad annotation in strict mode.
    #[error(
        "{0}\n  (strict mode) fix this annotation, or run without --strict to skip bad annotations with a warning"
    )]
    Invalid(Issue),
    /// The path does not exist.
    #[error(
        "{0} does not exist: expected a dataset folder (YOLO, Roboflow, COCO or Pascal VOC) or a COCO .json / YOLO data.yaml file"
    )]
    NotFound(PathBuf),
    /// A folder in no known layout.
    #[error(
        "cannot tell the layout of {0}: expected DIR/data.yaml with images/ and labels/ (YOLO), train/images + data.yaml (Roboflow YOLO), a COCO .json in DIR or DIR/train/ (COCO, Roboflow COCO), or Annotations/ + JPEGImages/ (Pascal VOC); or pass the COCO file with --annotations"
    )]
    UnknownLayout(PathBuf),
    /// An ImageFolder (classification) given where detection data is needed.
    #[error(
        "{0} is a classification folder (DIR/<class>/*.jpg): use it with `kestrel train classify`, or give a detection dataset"
    )]
    ClassificationFolder(PathBuf),
    /// A YOLO folder without class names.
    #[error(
        "{0} has no data.yaml with class names: write {0}/data.yaml with `names: [a, b]` (or a classes.txt, one name per line)"
    )]
    NoNames(PathBuf),
    /// data.yaml (or classes.txt) that cannot be used.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    DataFile {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong and what to do.
        message: String,
    },
    /// Not valid JSON (serde_json's message has the line and column).
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A COCO file whose structure is unusable (no `images`, bad `categories`, ...).
    #[error("{}: {message}", path.display())]
    Coco {
        /// The file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// The split files disagree on the classes.
    #[error(
        "{} and {} have different categories ({train:?} vs {val:?}): both splits must use the same label list",
        train_path.display(),
        val_path.display()
    )]
    SplitLabels {
        /// The training annotations.
        train_path: PathBuf,
        /// The other split's annotations.
        val_path: PathBuf,
        /// Training labels.
        train: Vec<String>,
        /// The other split's labels.
        val: Vec<String>,
    },
    /// No usable picture.
    #[error("no usable pictures in {} ({exts}): check the layout (YOLO pictures go in DIR/images/)", .0.display(), exts = IMAGE_EXTENSIONS.join(", "))]
    NoImages(PathBuf),
    /// Pictures, but not one object in any of them.
    #[error(
        "{} has {images} pictures but not one object: YOLO label files must mirror the pictures (images/a/b.jpg -> labels/a/b.txt)",
        path.display()
    )]
    NoObjects {
        /// The dataset.
        path: PathBuf,
        /// How many pictures were found.
        images: usize,
    },
    /// An object to export whose class is not in the label list.
    #[error("{}: object of class {class} but only {count} labels", path.display())]
    ClassOutOfRange {
        /// The picture.
        path: PathBuf,
        /// The class index.
        class: usize,
        /// Number of labels.
        count: usize,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AnnotationError + '_ {
    move |source| AnnotationError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A loaded detection dataset: labels, the splits, and what was wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectDataset {
    /// The folder or file it came from.
    pub root: PathBuf,
    /// Its format.
    pub format: Format,
    /// The layout it was found in.
    pub layout: Layout,
    /// Class names; objects' `class` indexes this.
    pub labels: Vec<String>,
    /// Training pictures (all of them when the dataset has no split).
    pub train: Vec<AnnotatedImage>,
    /// Validation pictures (empty when the dataset has no split).
    pub val: Vec<AnnotatedImage>,
    /// Test pictures (a `test` split; training leaves them out, `kestrel eval` uses them).
    pub test: Vec<AnnotatedImage>,
    /// Every bad annotation found (empty in strict mode, which fails on the first).
    pub issues: Vec<Issue>,
    /// What the loader decided on its own (paths resolved, categories dropped, folders left
    /// out): not errors, but worth knowing.
    pub notes: Vec<String>,
    /// Pictures left out (missing, unreadable, or size mismatch) or label files without picture.
    pub skipped_images: usize,
    /// Objects left out because their annotation was bad.
    pub skipped_objects: usize,
}

impl DetectDataset {
    /// Objects per class in a set of pictures.
    pub fn counts(&self, images: &[AnnotatedImage]) -> Vec<usize> {
        let mut c = vec![0; self.labels.len()];
        for o in images.iter().flat_map(|i| &i.objects) {
            c[o.class] += 1;
        }
        c
    }

    /// The splits by name, in order, with their pictures (empty ones included).
    pub fn splits(&self) -> [(&'static str, &[AnnotatedImage]); 3] {
        [
            ("train", &self.train),
            ("val", &self.val),
            ("test", &self.test),
        ]
    }
}

/// Collects issues and notes: fails on the first issue in strict mode, otherwise logs and counts.
pub(crate) struct Issues {
    strict: bool,
    /// Log issues and notes as they come (off for `kestrel data check`, which lists them).
    log: bool,
    list: Vec<Issue>,
    notes: Vec<String>,
    skipped_images: usize,
    skipped_objects: usize,
}

impl Issues {
    pub(crate) fn new(strict: bool) -> Self {
        Issues {
            strict,
            log: true,
            list: Vec::new(),
            notes: Vec::new(),
            skipped_images: 0,
            skipped_objects: 0,
        }
    }

    /// Record an issue that drops one object (`image == false`) or one picture.
    pub(crate) fn report(
        &mut self,
        path: &Path,
        line: Option<usize>,
        kind: IssueKind,
        message: String,
        image: bool,
    ) -> Result<(), AnnotationError> {
        let issue = Issue {
            path: path.to_path_buf(),
            line,
            kind,
            message,
        };
        if self.strict {
            return Err(AnnotationError::Invalid(issue));
        }
        match self.list.len() {
            _ if !self.log => {}
            n if n < WARN_LIMIT => tracing::warn!("skipped: {issue}"),
            WARN_LIMIT => tracing::warn!("more bad annotations: counted but not shown"),
            _ => {}
        }
        self.list.push(issue);
        if image {
            self.skipped_images += 1;
        } else {
            self.skipped_objects += 1;
        }
        Ok(())
    }

    /// Record something the loader decided on its own (logged at info level).
    pub(crate) fn note(&mut self, message: String) {
        if self.log {
            tracing::info!("{message}");
        }
        self.notes.push(message);
    }
}

/// The pictures of a dataset by split, as a reader returns them.
#[derive(Debug, Default)]
pub(crate) struct Splits {
    pub(crate) train: Vec<AnnotatedImage>,
    pub(crate) val: Vec<AnnotatedImage>,
    pub(crate) test: Vec<AnnotatedImage>,
}

/// Load a detection dataset, finding its layout ([`find_layout`]): a COCO `.json` file, a YOLO
/// `data.yaml`, or a folder in any supported layout. `strict` turns the first bad annotation into
/// an error; otherwise bad objects and pictures are skipped and listed in
/// [`DetectDataset::issues`].
pub fn load(dir_or_file: &Path, strict: bool) -> Result<DetectDataset, AnnotationError> {
    load_with(dir_or_file, None, strict)
}

/// [`load`], or with `annotations` given, the COCO file `annotations` (any name) whose pictures
/// are under `data` (or next to the file).
pub fn load_with(
    data: &Path,
    annotations: Option<&Path>,
    strict: bool,
) -> Result<DetectDataset, AnnotationError> {
    load_inner(data, annotations, strict, true)
}

/// [`load_with`] in lenient mode without logging each problem: for `kestrel data check`, which
/// lists them all itself.
pub fn load_for_check(
    data: &Path,
    annotations: Option<&Path>,
) -> Result<DetectDataset, AnnotationError> {
    load_inner(data, annotations, false, false)
}

fn load_inner(
    data: &Path,
    annotations: Option<&Path>,
    strict: bool,
    log: bool,
) -> Result<DetectDataset, AnnotationError> {
    let mut issues = Issues::new(strict);
    issues.log = log;
    let (layout, root, splits, labels, format) = match annotations {
        Some(file) => {
            if !file.is_file() {
                return Err(AnnotationError::NotFound(file.to_path_buf()));
            }
            let files = coco::SplitFiles {
                train: vec![file.to_path_buf()],
                ..Default::default()
            };
            let (labels, splits) = coco::load(&files, Some(data), &mut issues)?;
            (
                Layout::Coco,
                data.to_path_buf(),
                splits,
                labels,
                Format::Coco,
            )
        }
        None => {
            let found = find_layout(data)?;
            if log {
                tracing::info!("{}: {}", data.display(), found.describe());
            }
            let layout = found.layout();
            let (labels, splits, format) = match found {
                layout::Found::Yolo { root, yaml, .. } => {
                    let (l, s) = yolo::load(&root, yaml.as_deref(), &mut issues)?;
                    (l, s, Format::Yolo)
                }
                layout::Found::Coco { files, .. } => {
                    let (l, s) = coco::load(&files, None, &mut issues)?;
                    (l, s, Format::Coco)
                }
                layout::Found::Voc { root } => {
                    let (l, s) = voc::load(&root, &mut issues)?;
                    (l, s, Format::Voc)
                }
                layout::Found::ImageFolder { root } => {
                    return Err(AnnotationError::ClassificationFolder(root));
                }
            };
            (layout, data.to_path_buf(), splits, labels, format)
        }
    };
    let ds = finish(&root, format, layout, labels, splits, issues)?;
    if log && !ds.issues.is_empty() {
        tracing::warn!(
            "{}: {} bad annotations skipped ({} pictures, {} objects)",
            ds.root.display(),
            ds.issues.len(),
            ds.skipped_images,
            ds.skipped_objects
        );
    }
    Ok(ds)
}

/// Assemble the dataset and refuse an empty one.
fn finish(
    root: &Path,
    format: Format,
    layout: Layout,
    labels: Vec<String>,
    splits: Splits,
    issues: Issues,
) -> Result<DetectDataset, AnnotationError> {
    let Splits { train, val, test } = splits;
    let images = train.len() + val.len() + test.len();
    if images == 0 {
        return Err(AnnotationError::NoImages(root.to_path_buf()));
    }
    if train
        .iter()
        .chain(&val)
        .chain(&test)
        .all(|i| i.objects.is_empty())
    {
        return Err(AnnotationError::NoObjects {
            path: root.to_path_buf(),
            images,
        });
    }
    Ok(DetectDataset {
        root: root.to_path_buf(),
        format,
        layout,
        labels,
        train,
        val,
        test,
        issues: issues.list,
        notes: issues.notes,
        skipped_images: issues.skipped_images,
        skipped_objects: issues.skipped_objects,
    })
}

/// Write `ds` in `format` under `out` (`kestrel data convert`); pictures are hard-linked (copied
/// across file systems) next to the annotations, so the folder stands on its own.
pub fn write(format: Format, out: &Path, ds: &DetectDataset) -> Result<(), AnnotationError> {
    match format {
        Format::Yolo => {
            if ds
                .splits()
                .iter()
                .any(|(_, s)| s.iter().any(|i| !i.ignored.is_empty()))
            {
                tracing::info!(
                    "YOLO has no crowd / difficult flag: the ignored regions are left out of {}",
                    out.display()
                );
            }
            yolo::write_splits(out, &ds.labels, &ds.train, &ds.val, &ds.test)
        }
        Format::Coco => coco::write_splits(out, &ds.labels, &ds.train, &ds.val, &ds.test),
        Format::Voc => voc::write_voc(out, &ds.labels, &ds.train, &ds.val, &ds.test),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers the readers and writers share.

/// Every file under `dir` (recursively, sorted, hidden entries skipped), relative to `dir`.
pub(crate) fn walk(dir: &Path) -> Result<Vec<PathBuf>, AnnotationError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        for entry in std::fs::read_dir(&abs).map_err(io_err(&abs))? {
            let entry = entry.map_err(io_err(&abs))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let r = rel.join(&name);
            if entry.path().is_dir() {
                stack.push(r);
            } else {
                out.push(r);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The displayed size of a picture, or the issue that skips it.
pub(crate) fn picture_size(
    path: &Path,
    issues: &mut Issues,
) -> Result<Option<(u32, u32)>, AnnotationError> {
    match kestrel_shared::picture::dimensions(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) => {
            let msg = format!("cannot read the picture ({e}); picture skipped");
            issues.report(path, None, IssueKind::UnreadableImage, msg, true)?;
            Ok(None)
        }
    }
}

/// A pixel box `[x0, y0, x1, y1]` checked against a `width x height` picture with `tolerance`
/// pixels of slack, clamped inside it.
pub(crate) fn pixel_box(
    [x0, y0, x1, y1]: [f64; 4],
    width: u32,
    height: u32,
    tolerance: f64,
) -> Result<BBox, (IssueKind, String)> {
    if x1 <= x0 || y1 <= y0 {
        return Err((
            IssueKind::EmptyBox,
            format!(
                "box has zero or negative size (w {}, h {})",
                short(x1 - x0),
                short(y1 - y0)
            ),
        ));
    }
    let (fw, fh) = (f64::from(width), f64::from(height));
    let t = tolerance;
    if x0 < -t || y0 < -t || x1 > fw + t || y1 > fh + t {
        return Err((
            IssueKind::OutsideImage,
            format!(
                "box [{}, {}, {}, {}] (corners) is outside the {width}x{height} picture",
                short(x0),
                short(y0),
                short(x1),
                short(y1)
            ),
        ));
    }
    let bbox = BBox::new(
        x0.clamp(0.0, fw) as f32,
        y0.clamp(0.0, fh) as f32,
        x1.clamp(0.0, fw) as f32,
        y1.clamp(0.0, fh) as f32,
    );
    if !bbox.is_valid() {
        return Err((
            IssueKind::EmptyBox,
            "box has no area inside the picture".into(),
        ));
    }
    Ok(bbox)
}

/// A number for a text file: up to 8 decimals, trailing zeros dropped.
pub(crate) fn short(v: f64) -> String {
    let s = format!("{v:.8}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// An f32 as the f64 with the same shortest decimal form (12.3f32 -> 12.3, not 12.30000019).
pub(crate) fn f32_json(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

pub(crate) fn check_classes(
    labels: &[String],
    images: &[AnnotatedImage],
) -> Result<(), AnnotationError> {
    for im in images {
        if let Some(o) = im
            .objects
            .iter()
            .chain(&im.ignored)
            .find(|o| o.class >= labels.len())
        {
            return Err(AnnotationError::ClassOutOfRange {
                path: im.path.clone(),
                class: o.class,
                count: labels.len(),
            });
        }
    }
    Ok(())
}

/// Put `src` at `dest`: a hard link when possible, a copy otherwise; nothing when it is already
/// the same file.
pub(crate) fn place(src: &Path, dest: &Path) -> Result<(), AnnotationError> {
    if dest.exists() {
        let same = std::fs::canonicalize(src).map_err(io_err(src))?
            == std::fs::canonicalize(dest).map_err(io_err(dest))?;
        if same {
            return Ok(());
        }
        std::fs::remove_file(dest).map_err(io_err(dest))?;
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    if std::fs::hard_link(src, dest).is_err() {
        std::fs::copy(src, dest).map_err(io_err(src))?;
    }
    Ok(())
}

/// File names for pictures placed into one folder: the picture's stem, with `_1`, `_2`...
/// when another picture already took it. Returns (stem, file name with extension).
pub(crate) fn unique_name(taken: &mut HashSet<String>, path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name = stem.clone();
    let mut n = 0;
    while !taken.insert(name.clone()) {
        n += 1;
        name = format!("{stem}_{n}");
    }
    let file = if ext.is_empty() {
        name.clone()
    } else {
        format!("{name}.{ext}")
    };
    (name, file)
}

/// A (class, box) pair as an object; a shorthand for the readers.
pub(crate) fn object(class: usize, bbox: BBox) -> Object {
    Object { class, bbox }
}
