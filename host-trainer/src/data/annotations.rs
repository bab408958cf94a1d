//! Detection annotations in the formats people already have: YOLO folders and COCO JSON.
//!
//! YOLO: `DIR/images/**/*.{jpg,jpeg,png,webp,bmp}`, one `DIR/labels/<same relative path>.txt` per
//! picture with lines `class cx cy w h` (normalised to [0, 1]; a picture without a label file has
//! no objects) and `DIR/data.yaml` with the class `names` (a list, an inline `[a, b]` or a map
//! `0: a`; `DIR/classes.txt`, one name per line, is accepted when there is no data.yaml). With
//! `DIR/images/train/` present, the Ultralytics split layout is used: `images/train/**` is the
//! training set, `images/val/**` (or `images/valid/**`) the validation set, other folders (e.g.
//! `images/test/`) are left out.
//!
//! COCO: one JSON file (`DIR/annotations.json`, or any path given) with `images` (`id`,
//! `file_name`, `width`, `height`), `annotations` (`image_id`, `category_id`, `bbox` as
//! `[x, y, w, h]` in pixels; `iscrowd: 1` regions are left out) and `categories` (`id`, `name`).
//! Category ids may be anything: they become dense class indices in increasing id order.
//! `file_name` is relative to the JSON file's folder (or its `images/` subfolder). A split is
//! `DIR/train/annotations.json` + `DIR/val/annotations.json`.
//!
//! Boxes become [`BBox`] corners in pixels. Bad annotations are [`Issue`]s with file and line: in
//! strict mode the first one is an error, otherwise the bad object (or picture) is skipped,
//! counted and logged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kestrel_shared::{AnnotatedImage, BBox, Object};
use serde_json::{Value, json};

use super::folder::{IMAGE_EXTENSIONS, is_image};

/// How far (normalised) a YOLO box may stick out of its picture and still be clamped silently.
pub const YOLO_TOLERANCE: f64 = 1e-3;
/// How far (pixels) a COCO box may stick out of its picture and still be clamped silently; one
/// pixel, because inclusive `x + w = width + 1` boxes from old converters are common.
pub const COCO_TOLERANCE: f64 = 1.0;
/// Issues logged one by one before the rest are only counted (the full list is in
/// [`DetectDataset::issues`]).
const WARN_LIMIT: usize = 20;

/// The on-disk annotation formats Kestrel reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Ultralytics YOLO: `images/`, `labels/*.txt`, `data.yaml`.
    Yolo,
    /// COCO: one JSON file of images, annotations and categories.
    Coco,
}

impl Format {
    /// The lower-case name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Yolo => "yolo",
            Format::Coco => "coco",
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
            _ => Err(format!(
                "unknown annotation format `{s}`: expected yolo or coco"
            )),
        }
    }
}

/// What is wrong with an annotation, so callers can count problems by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueKind {
    /// Wrong field count, not a number, NaN, missing key, wrong JSON type.
    Malformed,
    /// A class or category id that the label list does not have.
    UnknownClass,
    /// A box of zero or negative width or height.
    EmptyBox,
    /// A box beyond the picture by more than the tolerance.
    OutsideImage,
    /// A label file or COCO entry whose picture file does not exist.
    MissingImage,
    /// A picture file whose header cannot be read.
    UnreadableImage,
    /// A COCO picture whose declared size differs from the file's.
    SizeMismatch,
    /// A COCO image id used twice, or an annotation for an image id that does not exist.
    BadReference,
}

/// One bad annotation: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// The file holding the annotation (label file, JSON file, or the picture).
    pub path: PathBuf,
    /// 1-based line in a text file (COCO issues name the annotation in `message` instead).
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
        "{0} does not exist: expected a YOLO folder (images/, labels/, data.yaml) or a COCO annotations.json"
    )]
    NotFound(PathBuf),
    /// A folder in neither layout.
    #[error(
        "cannot tell the annotation format of {0}: expected DIR/data.yaml with DIR/images/ and DIR/labels/ (YOLO), or DIR/annotations.json (COCO)"
    )]
    UnknownLayout(PathBuf),
    /// A YOLO folder without class names.
    #[error(
        "{0} has no data.yaml with class names: write {0}/data.yaml with `names: [a, b]` (or a classes.txt, one name per line)"
    )]
    NoNames(PathBuf),
    /// data.yaml (or classes.txt) that cannot be used.
    #[error("{}:{line}: {message}", path.display())]
    Names {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
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
    /// The train and val COCO files disagree on the categories.
    #[error(
        "{} and {} have different categories ({train:?} vs {val:?}): both splits must use the same label list",
        train_path.display(),
        val_path.display()
    )]
    SplitLabels {
        /// The training annotations.
        train_path: PathBuf,
        /// The validation annotations.
        val_path: PathBuf,
        /// Training labels.
        train: Vec<String>,
        /// Validation labels.
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

/// A loaded detection dataset: labels, the two splits, and what was wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectDataset {
    /// The folder or file it came from.
    pub root: PathBuf,
    /// Its format.
    pub format: Format,
    /// Class names; objects' `class` indexes this.
    pub labels: Vec<String>,
    /// Training pictures (all of them when the dataset has no split).
    pub train: Vec<AnnotatedImage>,
    /// Validation pictures (empty when the dataset has no split).
    pub val: Vec<AnnotatedImage>,
    /// Every bad annotation found (empty in strict mode, which fails on the first).
    pub issues: Vec<Issue>,
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
}

/// Collects issues: fails on the first in strict mode, otherwise logs and counts.
struct Issues {
    strict: bool,
    list: Vec<Issue>,
    skipped_images: usize,
    skipped_objects: usize,
}

impl Issues {
    fn new(strict: bool) -> Self {
        Issues {
            strict,
            list: Vec::new(),
            skipped_images: 0,
            skipped_objects: 0,
        }
    }

    /// Record an issue that drops one object (`image == false`) or one picture.
    fn report(
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
}

/// Load a detection dataset, detecting its format: a COCO `.json` file, a YOLO `data.yaml`, or a
/// folder holding either (`data.yaml`/`images/` for YOLO, `annotations.json` or
/// `train/annotations.json` for COCO). `strict` turns the first bad annotation into an error;
/// otherwise bad objects and pictures are skipped and listed in [`DetectDataset::issues`].
pub fn load(dir_or_file: &Path, strict: bool) -> Result<DetectDataset, AnnotationError> {
    let p = dir_or_file;
    if !p.exists() {
        return Err(AnnotationError::NotFound(p.to_path_buf()));
    }
    let mut issues = Issues::new(strict);
    let ds = if p.is_file() {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext.eq_ignore_ascii_case("json") {
            let (labels, train) = load_coco_file(p, &mut issues)?;
            finish(p, Format::Coco, labels, train, Vec::new(), issues)?
        } else if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") {
            let root = p.parent().unwrap_or(Path::new("."));
            load_yolo(root, Some(p), issues)?
        } else {
            return Err(AnnotationError::UnknownLayout(p.to_path_buf()));
        }
    } else if yaml_path(p).is_some() {
        load_yolo(p, None, issues)?
    } else if p.join("annotations.json").is_file() {
        let (labels, train) = load_coco_file(&p.join("annotations.json"), &mut issues)?;
        finish(p, Format::Coco, labels, train, Vec::new(), issues)?
    } else if p.join("images").is_dir() {
        load_yolo(p, None, issues)?
    } else if p.join("train").join("annotations.json").is_file() {
        let tp = p.join("train").join("annotations.json");
        let (labels, train) = load_coco_file(&tp, &mut issues)?;
        let vp = p.join("val").join("annotations.json");
        let val = if vp.is_file() {
            let (vlabels, val) = load_coco_file(&vp, &mut issues)?;
            if vlabels != labels {
                return Err(AnnotationError::SplitLabels {
                    train_path: tp,
                    val_path: vp,
                    train: labels,
                    val: vlabels,
                });
            }
            val
        } else {
            Vec::new()
        };
        finish(p, Format::Coco, labels, train, val, issues)?
    } else {
        return Err(AnnotationError::UnknownLayout(p.to_path_buf()));
    };
    if !ds.issues.is_empty() {
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
    labels: Vec<String>,
    train: Vec<AnnotatedImage>,
    val: Vec<AnnotatedImage>,
    issues: Issues,
) -> Result<DetectDataset, AnnotationError> {
    let images = train.len() + val.len();
    if images == 0 {
        return Err(AnnotationError::NoImages(root.to_path_buf()));
    }
    if train.iter().chain(&val).all(|i| i.objects.is_empty()) {
        return Err(AnnotationError::NoObjects {
            path: root.to_path_buf(),
            images,
        });
    }
    Ok(DetectDataset {
        root: root.to_path_buf(),
        format,
        labels,
        train,
        val,
        issues: issues.list,
        skipped_images: issues.skipped_images,
        skipped_objects: issues.skipped_objects,
    })
}

// ---------------------------------------------------------------------------------------------
// YOLO

fn yaml_path(root: &Path) -> Option<PathBuf> {
    ["data.yaml", "data.yml"]
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_file())
}

/// Every file under `dir` (recursively, sorted, hidden entries skipped), relative to `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>, AnnotationError> {
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

fn load_yolo(
    root: &Path,
    yaml: Option<&Path>,
    mut issues: Issues,
) -> Result<DetectDataset, AnnotationError> {
    let labels = match yaml.map(Path::to_path_buf).or_else(|| yaml_path(root)) {
        Some(y) => {
            let text = std::fs::read_to_string(&y).map_err(io_err(&y))?;
            parse_data_yaml(&text).map_err(|(line, message)| AnnotationError::Names {
                path: y.clone(),
                line,
                message,
            })?
        }
        None => read_classes_txt(root)?,
    };
    let images_dir = root.join("images");
    if !images_dir.is_dir() {
        return Err(AnnotationError::NoImages(images_dir));
    }
    let labels_dir = root.join("labels");
    let files: Vec<PathBuf> = walk(&images_dir)?
        .into_iter()
        .filter(|p| is_image(p))
        .collect();
    let split = images_dir.join("train").is_dir();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let mut ignored = BTreeMap::<String, usize>::new();
    for rel in &files {
        let first = rel
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = if !split || first == "train" {
            &mut train
        } else if first == "val" || first == "valid" {
            &mut val
        } else {
            *ignored.entry(first).or_default() += 1;
            continue;
        };
        let path = images_dir.join(rel);
        let (width, height) = match image::image_dimensions(&path) {
            Ok(d) => d,
            Err(e) => {
                let msg = format!("cannot read the picture ({e}); picture skipped");
                issues.report(&path, None, IssueKind::UnreadableImage, msg, true)?;
                continue;
            }
        };
        let label_path = labels_dir.join(rel).with_extension("txt");
        let objects = if label_path.is_file() {
            let text = std::fs::read_to_string(&label_path).map_err(io_err(&label_path))?;
            parse_yolo_labels(&text, &label_path, labels.len(), width, height, &mut issues)?
        } else {
            Vec::new()
        };
        dest.push(AnnotatedImage {
            path,
            width,
            height,
            objects,
        });
    }
    for (dir, n) in &ignored {
        tracing::info!(
            "{}: {n} pictures in images/{dir}/ left out (only train/ and val/ are loaded)",
            root.display()
        );
    }
    // Label files whose picture is missing.
    if labels_dir.is_dir() {
        let stems: HashSet<PathBuf> = files.iter().map(|p| p.with_extension("")).collect();
        for rel in walk(&labels_dir)? {
            let is_txt = rel
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
            if !is_txt || rel == Path::new("classes.txt") || stems.contains(&rel.with_extension(""))
            {
                continue;
            }
            let msg = format!(
                "no picture for this label file (looked for {}.{{{}}})",
                images_dir.join(rel.with_extension("")).display(),
                IMAGE_EXTENSIONS.join(",")
            );
            issues.report(
                &labels_dir.join(&rel),
                None,
                IssueKind::MissingImage,
                msg,
                true,
            )?;
        }
    }
    finish(root, Format::Yolo, labels, train, val, issues)
}

fn read_classes_txt(root: &Path) -> Result<Vec<String>, AnnotationError> {
    for p in [
        root.join("classes.txt"),
        root.join("labels").join("classes.txt"),
    ] {
        if p.is_file() {
            let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
            let names: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if names.is_empty() {
                return Err(AnnotationError::Names {
                    path: p,
                    line: 1,
                    message: "no class names: write one name per line".into(),
                });
            }
            return Ok(names);
        }
    }
    Err(AnnotationError::NoNames(root.to_path_buf()))
}

/// Parse one label file into objects in pixels, reporting bad lines.
fn parse_yolo_labels(
    text: &str,
    path: &Path,
    classes: usize,
    width: u32,
    height: u32,
    issues: &mut Issues,
) -> Result<Vec<Object>, AnnotationError> {
    let mut objects = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_yolo_line(line, classes, width, height) {
            Ok(o) => objects.push(o),
            Err((kind, msg)) => issues.report(path, Some(i + 1), kind, msg, false)?,
        }
    }
    Ok(objects)
}

fn parse_yolo_line(
    line: &str,
    classes: usize,
    width: u32,
    height: u32,
) -> Result<Object, (IssueKind, String)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() != 5 {
        return Err((
            IssueKind::Malformed,
            format!(
                "expected 5 fields `class cx cy w h`, found {}: `{}`",
                fields.len(),
                line.trim()
            ),
        ));
    }
    let class: usize = fields[0].parse().map_err(|_| {
        (
            IssueKind::Malformed,
            format!("class `{}` is not a non-negative integer", fields[0]),
        )
    })?;
    let mut v = [0f64; 4];
    for (k, f) in fields[1..].iter().enumerate() {
        v[k] = match f.parse::<f64>() {
            Ok(x) if x.is_finite() => x,
            _ => {
                return Err((
                    IssueKind::Malformed,
                    format!("`{f}` is not a finite number"),
                ));
            }
        };
    }
    if class >= classes {
        return Err((
            IssueKind::UnknownClass,
            format!("class id {class} is not in data.yaml (0..{classes})"),
        ));
    }
    let [cx, cy, w, h] = v;
    if w <= 0.0 || h <= 0.0 {
        return Err((
            IssueKind::EmptyBox,
            format!("box has zero or negative size (w {w}, h {h})"),
        ));
    }
    let (x0, y0, x1, y1) = (cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0);
    let t = YOLO_TOLERANCE;
    if x0 < -t || y0 < -t || x1 > 1.0 + t || y1 > 1.0 + t {
        return Err((
            IssueKind::OutsideImage,
            format!(
                "box [{x0:.4}, {y0:.4}, {x1:.4}, {y1:.4}] (normalised corners) is outside the picture [0, 1]"
            ),
        ));
    }
    let (fw, fh) = (f64::from(width), f64::from(height));
    let bbox = BBox::new(
        (x0.clamp(0.0, 1.0) * fw) as f32,
        (y0.clamp(0.0, 1.0) * fh) as f32,
        (x1.clamp(0.0, 1.0) * fw) as f32,
        (y1.clamp(0.0, 1.0) * fh) as f32,
    );
    if !bbox.is_valid() {
        return Err((
            IssueKind::EmptyBox,
            "box has no area inside the picture".into(),
        ));
    }
    Ok(Object { class, bbox })
}

/// Drop a `#` comment (outside quotes) from a YAML line.
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// A YAML scalar without its quotes.
fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        s[1..s.len() - 1].replace("''", "'")
    } else if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1]
            .replace("\\\"", "\"")
            .replace("\\\\", "\\")
    } else {
        s.to_string()
    }
}

/// Split an inline `[a, b]` / `{0: a}` body on commas outside quotes.
fn split_inline(body: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quote = None;
    let mut start = 0;
    for (i, c) in body.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, ',') => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&body[start..]);
    parts.retain(|p| !p.trim().is_empty());
    parts
}

/// `N: name` -> (N, name).
fn map_entry(s: &str) -> Option<(usize, String)> {
    let (k, v) = s.split_once(':')?;
    Some((unquote(k).parse().ok()?, unquote(v)))
}

/// The class names of a data.yaml: `names` as a block list, an inline list, or a map from class
/// index to name (block or inline); `nc`, when present, must agree. Errors carry a 1-based line.
fn parse_data_yaml(text: &str) -> Result<Vec<String>, (usize, String)> {
    let lines: Vec<&str> = text.lines().map(strip_comment).collect();
    let mut names: Option<(usize, Vec<String>)> = None;
    let mut nc: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let ln = i + 1;
        i += 1;
        if line.trim().is_empty() || line.starts_with([' ', '\t', '-']) {
            continue;
        }
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let rest = rest.trim();
        match key.trim() {
            "nc" => {
                let n = unquote(rest)
                    .parse()
                    .map_err(|_| (ln, format!("nc `{rest}` is not a count")))?;
                nc = Some((ln, n));
            }
            "names" => {
                let mut list: Vec<String> = Vec::new();
                let mut map: Vec<(usize, String)> = Vec::new();
                if rest.starts_with('[') || rest.starts_with('{') {
                    // Inline, possibly over several lines.
                    let close = if rest.starts_with('[') { ']' } else { '}' };
                    let mut body = rest.to_string();
                    while !body.trim_end().ends_with(close) && i < lines.len() {
                        body.push(' ');
                        body.push_str(lines[i].trim());
                        i += 1;
                    }
                    let body = body.trim();
                    if !body.ends_with(close) {
                        return Err((ln, format!("names: `{close}` is missing")));
                    }
                    for part in split_inline(&body[1..body.len() - 1]) {
                        if close == ']' {
                            list.push(unquote(part));
                        } else {
                            map.push(map_entry(part).ok_or((
                                ln,
                                format!("names: `{}` is not `N: name`", part.trim()),
                            ))?);
                        }
                    }
                } else if rest.is_empty() {
                    // Block: `- name` or `N: name` lines, indented (a list may also sit at column 0).
                    while i < lines.len() {
                        let l = lines[i];
                        let t = l.trim();
                        if t.is_empty() {
                            i += 1;
                            continue;
                        }
                        let indented = l.starts_with([' ', '\t']);
                        if let Some(item) = t
                            .strip_prefix('-')
                            .filter(|_| indented || l.starts_with('-'))
                        {
                            list.push(unquote(item));
                        } else if indented {
                            map.push(map_entry(t).ok_or((
                                i + 1,
                                format!("names: `{t}` is neither `- name` nor `N: name`"),
                            ))?);
                        } else {
                            break;
                        }
                        i += 1;
                    }
                } else {
                    return Err((
                        ln,
                        "names must be a list (`- a`, `[a, b]`) or a map (`0: a`)".into(),
                    ));
                }
                if !map.is_empty() {
                    if !list.is_empty() {
                        return Err((ln, "names mixes `- name` and `N: name` entries".into()));
                    }
                    let mut slots = vec![None; map.len()];
                    for (k, v) in map {
                        match slots.get_mut(k) {
                            Some(slot @ None) => *slot = Some(v),
                            Some(Some(_)) => {
                                return Err((ln, format!("names: class {k} appears twice")));
                            }
                            None => {
                                return Err((
                                    ln,
                                    format!(
                                        "names: class ids must be 0..N-1 without gaps, found {k}"
                                    ),
                                ));
                            }
                        }
                    }
                    list = slots
                        .into_iter()
                        .map(|s| s.expect("all slots filled"))
                        .collect();
                }
                if let Some(bad) = list.iter().position(|n| n.is_empty()) {
                    return Err((ln, format!("names: class {bad} has an empty name")));
                }
                names = Some((ln, list));
            }
            _ => {}
        }
    }
    let Some((ln, names)) = names else {
        return Err((
            1,
            "no `names:` entry: list the class names, e.g. `names: [cat, dog]`".into(),
        ));
    };
    if names.is_empty() {
        return Err((ln, "names is empty".into()));
    }
    if let Some((nl, n)) = nc
        && n != names.len()
    {
        return Err((
            nl,
            format!("nc is {n} but names has {} entries", names.len()),
        ));
    }
    Ok(names)
}

// ---------------------------------------------------------------------------------------------
// COCO

fn coco_err(path: &Path, message: impl Into<String>) -> AnnotationError {
    AnnotationError::Coco {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A JSON integer id (COCO ids are integers; some tools write them as whole floats).
fn as_id(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.is_finite())
            .map(|f| f as i64)
    })
}

/// Load one COCO file: labels (categories sorted by id) and its pictures, in `images` order.
fn load_coco_file(
    path: &Path,
    issues: &mut Issues,
) -> Result<(Vec<String>, Vec<AnnotatedImage>), AnnotationError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let doc: Value = serde_json::from_str(&text).map_err(|source| AnnotationError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));

    // Categories: they define the label list, so any fault here is fatal.
    let cats = doc
        .get("categories")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            coco_err(
                path,
                "no `categories` array: list each class as {\"id\": 1, \"name\": \"cat\"}",
            )
        })?;
    let mut by_id = BTreeMap::new();
    for (k, c) in cats.iter().enumerate() {
        let id = c.get("id").and_then(as_id);
        let name = c.get("name").and_then(Value::as_str);
        let (Some(id), Some(name)) = (id, name) else {
            return Err(coco_err(
                path,
                format!("categories[{k}] needs an integer `id` and a string `name`"),
            ));
        };
        if by_id.insert(id, name.to_string()).is_some() {
            return Err(coco_err(
                path,
                format!("category id {id} appears twice in `categories`"),
            ));
        }
    }
    if by_id.is_empty() {
        return Err(coco_err(path, "`categories` is empty: list the classes"));
    }
    let class_of: HashMap<i64, usize> = by_id.keys().enumerate().map(|(k, id)| (*id, k)).collect();
    let labels: Vec<String> = by_id.into_values().collect();

    // Images.
    let imgs = doc.get("images").and_then(Value::as_array).ok_or_else(|| {
        coco_err(
            path,
            "no `images` array: list each picture with id, file_name, width, height",
        )
    })?;
    let mut images: Vec<AnnotatedImage> = Vec::new();
    // image id -> Some(index into images) or None when the picture was skipped.
    let mut slot: HashMap<i64, Option<usize>> = HashMap::new();
    for (k, im) in imgs.iter().enumerate() {
        let id = im.get("id").and_then(as_id);
        let file = im.get("file_name").and_then(Value::as_str);
        let (Some(id), Some(file)) = (id, file) else {
            let msg = format!(
                "images[{k}] needs an integer `id` and a string `file_name`; picture skipped"
            );
            issues.report(path, None, IssueKind::Malformed, msg, true)?;
            continue;
        };
        if slot.contains_key(&id) {
            let msg =
                format!("image id {id} (images[{k}], {file}) appears twice; the second is skipped");
            issues.report(path, None, IssueKind::BadReference, msg, true)?;
            continue;
        }
        let candidates = [base.join(file), base.join("images").join(file)];
        let Some(img_path) = candidates.iter().find(|p| p.is_file()).cloned() else {
            let msg = format!(
                "image id {id}: picture {} not found (also looked in {}); picture skipped",
                candidates[0].display(),
                candidates[1].display()
            );
            slot.insert(id, None);
            issues.report(path, None, IssueKind::MissingImage, msg, true)?;
            continue;
        };
        let (width, height) = match image::image_dimensions(&img_path) {
            Ok(d) => d,
            Err(e) => {
                slot.insert(id, None);
                let msg = format!("cannot read the picture ({e}); picture skipped");
                issues.report(&img_path, None, IssueKind::UnreadableImage, msg, true)?;
                continue;
            }
        };
        let declared = (
            im.get("width").and_then(Value::as_u64),
            im.get("height").and_then(Value::as_u64),
        );
        if let (Some(w), Some(h)) = declared
            && (w, h) != (u64::from(width), u64::from(height))
        {
            slot.insert(id, None);
            let msg = format!(
                "image id {id}: {} is {width}x{height} but the annotations say {w}x{h} (resized after labelling?); picture skipped",
                img_path.display()
            );
            issues.report(path, None, IssueKind::SizeMismatch, msg, true)?;
            continue;
        }
        slot.insert(id, Some(images.len()));
        images.push(AnnotatedImage {
            path: img_path,
            width,
            height,
            objects: Vec::new(),
        });
    }

    // Annotations (absent in test-set files: pictures without objects).
    let empty = Vec::new();
    let anns = match doc.get("annotations") {
        None => &empty,
        Some(a) => a
            .as_array()
            .ok_or_else(|| coco_err(path, "`annotations` is not an array"))?,
    };
    for (k, a) in anns.iter().enumerate() {
        match coco_annotation(a, &slot, &class_of, &images) {
            Ann::Keep(target, object) => images[target].objects.push(object),
            Ann::Crowd => {}
            // Its picture was skipped and reported already.
            Ann::OnSkippedImage => issues.skipped_objects += 1,
            Ann::Bad(kind, what) => {
                let name = match a.get("id").and_then(as_id) {
                    Some(id) => format!("annotation id {id} (annotations[{k}])"),
                    None => format!("annotations[{k}]"),
                };
                issues.report(path, None, kind, format!("{name}: {what}"), false)?;
            }
        }
    }
    Ok((labels, images))
}

/// What to do with one COCO annotation.
enum Ann {
    /// Add this object to picture `.0`.
    Keep(usize, Object),
    /// A crowd region: left out by design.
    Crowd,
    /// Belongs to a picture that was skipped.
    OnSkippedImage,
    /// A bad annotation.
    Bad(IssueKind, String),
}

/// Check one COCO annotation against the pictures and categories.
fn coco_annotation(
    a: &Value,
    slot: &HashMap<i64, Option<usize>>,
    class_of: &HashMap<i64, usize>,
    images: &[AnnotatedImage],
) -> Ann {
    if a.get("iscrowd").and_then(as_id) == Some(1) {
        return Ann::Crowd;
    }
    let Some(image_id) = a.get("image_id").and_then(as_id) else {
        return Ann::Bad(IssueKind::Malformed, "no integer `image_id`".into());
    };
    let target = match slot.get(&image_id) {
        Some(Some(t)) => *t,
        Some(None) => return Ann::OnSkippedImage,
        None => {
            return Ann::Bad(
                IssueKind::BadReference,
                format!("image_id {image_id} is not in `images`"),
            );
        }
    };
    let Some(cat) = a.get("category_id").and_then(as_id) else {
        return Ann::Bad(IssueKind::Malformed, "no integer `category_id`".into());
    };
    let Some(&class) = class_of.get(&cat) else {
        let mut ids: Vec<i64> = class_of.keys().copied().collect();
        ids.sort_unstable();
        return Ann::Bad(
            IssueKind::UnknownClass,
            format!("category_id {cat} is not in `categories` (ids {ids:?})"),
        );
    };
    let nums: Option<[f64; 4]> = a
        .get("bbox")
        .and_then(Value::as_array)
        .and_then(|b| {
            b.iter()
                .map(|v| v.as_f64().filter(|f| f.is_finite()))
                .collect::<Option<Vec<_>>>()
        })
        .and_then(|v| <[f64; 4]>::try_from(v).ok());
    let Some([x, y, w, h]) = nums else {
        return Ann::Bad(
            IssueKind::Malformed,
            format!(
                "bbox must be 4 finite numbers [x, y, w, h], found {}",
                a.get("bbox").unwrap_or(&Value::Null)
            ),
        );
    };
    if w <= 0.0 || h <= 0.0 {
        return Ann::Bad(
            IssueKind::EmptyBox,
            format!("bbox has zero or negative size (w {w}, h {h})"),
        );
    }
    let im = &images[target];
    let (fw, fh) = (f64::from(im.width), f64::from(im.height));
    let t = COCO_TOLERANCE;
    if x < -t || y < -t || x + w > fw + t || y + h > fh + t {
        return Ann::Bad(
            IssueKind::OutsideImage,
            format!(
                "bbox [{x}, {y}, {w}, {h}] is outside the {}x{} picture",
                im.width, im.height
            ),
        );
    }
    let bbox = BBox::new(
        x.clamp(0.0, fw) as f32,
        y.clamp(0.0, fh) as f32,
        (x + w).clamp(0.0, fw) as f32,
        (y + h).clamp(0.0, fh) as f32,
    );
    if !bbox.is_valid() {
        return Ann::Bad(
            IssueKind::EmptyBox,
            "bbox has no area inside the picture".into(),
        );
    }
    Ann::Keep(target, Object { class, bbox })
}

// ---------------------------------------------------------------------------------------------
// Export

/// A number for a text file: up to 8 decimals, trailing zeros dropped.
fn short(v: f64) -> String {
    let s = format!("{v:.8}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

/// An f32 as the f64 with the same shortest decimal form (12.3f32 -> 12.3, not 12.30000019).
fn f32_json(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

fn check_classes(labels: &[String], images: &[AnnotatedImage]) -> Result<(), AnnotationError> {
    for im in images {
        if let Some(o) = im.objects.iter().find(|o| o.class >= labels.len()) {
            return Err(AnnotationError::ClassOutOfRange {
                path: im.path.clone(),
                class: o.class,
                count: labels.len(),
            });
        }
    }
    Ok(())
}

/// The YOLO label file of a picture: one `class cx cy w h` line per object, normalised.
pub fn yolo_label_text(objects: &[Object], width: u32, height: u32) -> String {
    let (fw, fh) = (f64::from(width.max(1)), f64::from(height.max(1)));
    let mut s = String::new();
    for o in objects {
        let b = o.bbox;
        let (x0, y0, x1, y1) = (
            f64::from(b.x0),
            f64::from(b.y0),
            f64::from(b.x1),
            f64::from(b.y1),
        );
        s.push_str(&format!(
            "{} {} {} {} {}\n",
            o.class,
            short((x0 + x1) / 2.0 / fw),
            short((y0 + y1) / 2.0 / fh),
            short((x1 - x0) / fw),
            short((y1 - y0) / fh)
        ));
    }
    s
}

/// A YAML scalar, quoted when it would not read back as itself.
fn yaml_scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.trim() == s
        && !s.contains([
            ':', '#', '\'', '"', '[', ']', '{', '}', ',', '&', '*', '!', '|', '>', '%', '@', '`',
        ])
        && !s.starts_with(['-', '?']);
    if plain {
        s.into()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// An Ultralytics data.yaml: split folders (`val` only when there is one) and the names as a map.
pub fn data_yaml_text(labels: &[String], has_val: bool) -> String {
    let mut s = String::from(
        "# Written by kestrel. Paths are relative to this file's folder.\ntrain: images/train\n",
    );
    if has_val {
        s.push_str("val: images/val\n");
    }
    s.push_str(&format!("nc: {}\nnames:\n", labels.len()));
    for (k, l) in labels.iter().enumerate() {
        s.push_str(&format!("  {k}: {}\n", yaml_scalar(l)));
    }
    s
}

/// Put `src` at `dest`: a hard link when possible, a copy otherwise; nothing when it is already
/// the same file.
fn place(src: &Path, dest: &Path) -> Result<(), AnnotationError> {
    if dest.exists() {
        let same = std::fs::canonicalize(src).map_err(io_err(src))?
            == std::fs::canonicalize(dest).map_err(io_err(dest))?;
        if same {
            return Ok(());
        }
        std::fs::remove_file(dest).map_err(io_err(dest))?;
    }
    if std::fs::hard_link(src, dest).is_err() {
        std::fs::copy(src, dest).map_err(io_err(src))?;
    }
    Ok(())
}

/// Write a YOLO dataset under `out`: `images/train/` (and `images/val/` when `val` is not empty)
/// with the pictures hard-linked or copied in (kept when already there), `labels/<split>/<stem>.txt`
/// and `data.yaml`. Pictures with the same file name get `_1`, `_2`... suffixes.
pub fn write_yolo(
    out: &Path,
    labels: &[String],
    train: &[AnnotatedImage],
    val: &[AnnotatedImage],
) -> Result<(), AnnotationError> {
    check_classes(labels, train)?;
    check_classes(labels, val)?;
    for (split, images) in [("train", train), ("val", val)] {
        if images.is_empty() && split == "val" {
            continue;
        }
        let img_dir = out.join("images").join(split);
        let lab_dir = out.join("labels").join(split);
        for d in [&img_dir, &lab_dir] {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let mut taken = HashSet::new();
        for im in images {
            let stem = im
                .path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let ext = im
                .path
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
            place(&im.path, &img_dir.join(file))?;
            let lp = lab_dir.join(format!("{name}.txt"));
            std::fs::write(&lp, yolo_label_text(&im.objects, im.width, im.height))
                .map_err(io_err(&lp))?;
        }
    }
    let yp = out.join("data.yaml");
    std::fs::write(&yp, data_yaml_text(labels, !val.is_empty())).map_err(io_err(&yp))
}

/// The COCO document of a set of pictures: categories with ids 1..=N in label order, pictures and
/// annotations numbered from 1, `file_name` relative to `base` when the picture is under it.
pub fn coco_json(labels: &[String], images: &[AnnotatedImage], base: &Path) -> Value {
    let mut imgs = Vec::with_capacity(images.len());
    let mut anns = Vec::new();
    for (k, im) in images.iter().enumerate() {
        let file = im.path.strip_prefix(base).unwrap_or(&im.path);
        imgs.push(json!({
            "id": k + 1,
            "file_name": file.to_string_lossy().replace('\\', "/"),
            "width": im.width,
            "height": im.height,
        }));
        for o in &im.objects {
            let b = o.bbox;
            let (x, y, w, h) = (
                f32_json(b.x0),
                f32_json(b.y0),
                f32_json(b.width()),
                f32_json(b.height()),
            );
            anns.push(json!({
                "id": anns.len() + 1,
                "image_id": k + 1,
                "category_id": o.class + 1,
                "bbox": [x, y, w, h],
                "area": f32_json(b.area()),
                "iscrowd": 0,
            }));
        }
    }
    let cats: Vec<Value> = labels
        .iter()
        .enumerate()
        .map(|(k, l)| json!({"id": k + 1, "name": l}))
        .collect();
    json!({"images": imgs, "annotations": anns, "categories": cats})
}

/// Write a COCO annotation file for `images` at `path` (pictures stay where they are; their
/// `file_name` is relative to the file's folder when they are under it, absolute otherwise).
pub fn write_coco(
    path: &Path,
    labels: &[String],
    images: &[AnnotatedImage],
) -> Result<(), AnnotationError> {
    check_classes(labels, images)?;
    let base = path.parent().unwrap_or(Path::new(""));
    if !base.as_os_str().is_empty() {
        std::fs::create_dir_all(base).map_err(io_err(base))?;
    }
    let doc = coco_json(labels, images, base);
    let text = serde_json::to_string_pretty(&doc).expect("a JSON value serialises");
    std::fs::write(path, text + "\n").map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, w: u32, h: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]))
            .save(path)
            .unwrap();
    }

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A YOLO folder with one 40x20 picture `a.png` and the given label text.
    fn yolo_one(label: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("data.yaml"), "names: [cat, dog, fox, owl]\n");
        png(&d.path().join("images/a.png"), 40, 20);
        // A good second picture so the set is never empty of objects.
        png(&d.path().join("images/b.png"), 40, 20);
        write(&d.path().join("labels/b.txt"), "1 0.5 0.5 0.5 0.5\n");
        write(&d.path().join("labels/a.txt"), label);
        d
    }

    fn a_objects(ds: &DetectDataset) -> &[Object] {
        &ds.train
            .iter()
            .find(|i| i.path.ends_with("a.png"))
            .unwrap()
            .objects
    }

    #[test]
    fn yolo_boxes_become_pixel_corners() {
        let d = yolo_one("0 0.25 0.5 0.5 0.4\n\n2 0.9995 0.5 0.002 1.0\n");
        let ds = load(d.path(), true).unwrap();
        assert_eq!(ds.format, Format::Yolo);
        assert_eq!(ds.labels, names(&["cat", "dog", "fox", "owl"]));
        assert_eq!(ds.train.len(), 2);
        assert!(ds.val.is_empty());
        let a = ds.train.iter().find(|i| i.path.ends_with("a.png")).unwrap();
        assert_eq!((a.width, a.height), (40, 20));
        let o = &a.objects;
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].class, 0);
        let b = o[0].bbox;
        for (got, want) in [(b.x0, 0.0), (b.y0, 6.0), (b.x1, 20.0), (b.y1, 14.0)] {
            assert!((got - want).abs() < 1e-4, "{b:?}");
        }
        // 0.0005 past the right edge: inside the tolerance, clamped to 40.
        assert_eq!(o[1].bbox.x1, 40.0);
        assert!((o[1].bbox.x0 - 39.94).abs() < 1e-3);
        assert!(ds.issues.is_empty());
        assert_eq!(ds.counts(&ds.train), vec![1, 1, 1, 0]);
    }

    /// Each bad line: the issue (kind, line, message fragment) in lenient mode, and the error in
    /// strict mode.
    #[test]
    fn every_bad_yolo_line_is_reported_or_fatal() {
        let cases: &[(&str, IssueKind, &str)] = &[
            ("0 0.5 0.5 0.2", IssueKind::Malformed, "expected 5 fields"),
            (
                "0 0.5 0.5 0.2 0.2 0.9",
                IssueKind::Malformed,
                "expected 5 fields",
            ),
            ("x 0.5 0.5 0.2 0.2", IssueKind::Malformed, "class `x`"),
            ("-1 0.5 0.5 0.2 0.2", IssueKind::Malformed, "class `-1`"),
            (
                "0 0.5 abc 0.2 0.2",
                IssueKind::Malformed,
                "`abc` is not a finite number",
            ),
            (
                "0 0.5 NaN 0.2 0.2",
                IssueKind::Malformed,
                "`NaN` is not a finite number",
            ),
            (
                "0 0.5 0.5 inf 0.2",
                IssueKind::Malformed,
                "`inf` is not a finite number",
            ),
            (
                "7 0.5 0.5 0.2 0.2",
                IssueKind::UnknownClass,
                "class id 7 is not in data.yaml (0..4)",
            ),
            (
                "0 0.5 0.5 0 0.2",
                IssueKind::EmptyBox,
                "zero or negative size",
            ),
            (
                "0 0.5 0.5 0.2 -0.1",
                IssueKind::EmptyBox,
                "zero or negative size",
            ),
            (
                "0 0.95 0.5 0.2 0.2",
                IssueKind::OutsideImage,
                "outside the picture",
            ),
            (
                "0 0.5 0.01 0.2 0.2",
                IssueKind::OutsideImage,
                "outside the picture",
            ),
        ];
        for (line, kind, fragment) in cases {
            let d = yolo_one(&format!("0 0.5 0.5 0.2 0.2\n{line}\n"));
            let ds = load(d.path(), false).unwrap();
            assert_eq!(ds.issues.len(), 1, "{line}");
            let issue = &ds.issues[0];
            assert_eq!(issue.kind, *kind, "{line}");
            assert_eq!(issue.line, Some(2), "{line}");
            assert!(issue.path.ends_with("labels/a.txt"), "{line}");
            assert!(
                issue.message.contains(fragment),
                "{line}: {}",
                issue.message
            );
            assert_eq!(ds.skipped_objects, 1);
            // The good line on the same file is kept.
            assert_eq!(a_objects(&ds).len(), 1, "{line}");

            let err = load(d.path(), true).unwrap_err().to_string();
            assert!(
                err.contains("labels/a.txt:2: ") && err.contains(fragment),
                "{err}"
            );
            assert!(err.contains("--strict"), "{err}");
        }
    }

    #[test]
    fn issue_display_names_file_and_line() {
        let d = yolo_one("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n");
        let ds = load(d.path(), false).unwrap();
        let shown = ds.issues[0].to_string();
        let want = format!(
            "{}:3: class id 7 is not in data.yaml (0..4)",
            d.path().join("labels/a.txt").display()
        );
        assert_eq!(shown, want);
    }

    #[test]
    fn yolo_missing_and_unreadable_pictures() {
        let d = yolo_one("0 0.5 0.5 0.2 0.2\n");
        // A label file without its picture, and a picture that is not one.
        write(&d.path().join("labels/gone.txt"), "0 0.5 0.5 0.2 0.2\n");
        write(&d.path().join("images/broken.png"), "not a png");
        let ds = load(d.path(), false).unwrap();
        let kinds: Vec<IssueKind> = ds.issues.iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            vec![IssueKind::UnreadableImage, IssueKind::MissingImage],
            "{:?}",
            ds.issues
        );
        assert!(ds.issues[0].path.ends_with("images/broken.png"));
        assert!(ds.issues[1].path.ends_with("labels/gone.txt"));
        assert_eq!(ds.skipped_images, 2);
        assert_eq!(ds.train.len(), 2);
        let err = load(d.path(), true).unwrap_err().to_string();
        assert!(
            err.contains("broken.png") && err.contains("cannot read"),
            "{err}"
        );
        std::fs::remove_file(d.path().join("images/broken.png")).unwrap();
        let err = load(d.path(), true).unwrap_err().to_string();
        assert!(
            err.contains("gone.txt") && err.contains("no picture"),
            "{err}"
        );
    }

    #[test]
    fn ultralytics_split_layout_reports_the_split() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(
            &r.join("data.yaml"),
            "train: images/train\nval: images/val\nnames:\n  - person\n  - 'car, red'\n",
        );
        png(&r.join("images/train/x/1.jpg"), 16, 8);
        png(&r.join("images/train/2.png"), 16, 8);
        png(&r.join("images/val/3.png"), 32, 32);
        png(&r.join("images/test/4.png"), 32, 32);
        write(&r.join("labels/train/x/1.txt"), "1 0.5 0.5 1 1\n");
        write(&r.join("labels/val/3.txt"), "0 0.5 0.5 0.5 0.5\n");
        let ds = load(r, true).unwrap();
        assert_eq!(ds.labels, names(&["person", "car, red"]));
        let files = |v: &[AnnotatedImage]| -> Vec<String> {
            v.iter()
                .map(|i| {
                    i.path
                        .strip_prefix(r)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        assert_eq!(
            files(&ds.train),
            vec!["images/train/2.png", "images/train/x/1.jpg"]
        );
        assert_eq!(files(&ds.val), vec!["images/val/3.png"]);
        // No label file: no objects.
        assert!(ds.train[0].objects.is_empty());
        assert_eq!(ds.train[1].objects[0].bbox, BBox::new(0.0, 0.0, 16.0, 8.0));
        assert_eq!(ds.val[0].objects[0].bbox, BBox::new(8.0, 8.0, 24.0, 24.0));
        // Pointing at data.yaml itself works the same.
        assert_eq!(load(&r.join("data.yaml"), true).unwrap().val.len(), 1);
    }

    #[test]
    fn data_yaml_forms() {
        let ok: &[(&str, &[&str])] = &[
            ("names: [a, 'b c', \"d\"]\nnc: 3", &["a", "b c", "d"]),
            ("nc: 2 # two\nnames:\n- a\n- b\npath: x", &["a", "b"]),
            ("names:\n  1: b\n  0: a # first\n", &["a", "b"]),
            ("names: {0: a, 1: 'it''s'}", &["a", "it's"]),
            ("names: [a,\n  b]\n", &["a", "b"]),
            ("names:\n  - 'x: y'\n  - '#1'\n", &["x: y", "#1"]),
        ];
        for (text, want) in ok {
            assert_eq!(parse_data_yaml(text).unwrap(), names(want), "{text}");
        }
        let bad: &[(&str, usize, &str)] = &[
            ("nc: 2\n", 1, "no `names:`"),
            ("names: [a, b]\nnc: 3\n", 2, "nc is 3 but names has 2"),
            ("names:\n  0: a\n  2: c\n", 1, "without gaps"),
            ("names:\n  0: a\n  0: b\n", 1, "twice"),
            ("names: a\n", 1, "must be a list"),
            ("names: []\n", 1, "empty"),
        ];
        for (text, line, fragment) in bad {
            let (l, m) = parse_data_yaml(text).unwrap_err();
            assert_eq!(l, *line, "{text}");
            assert!(m.contains(fragment), "{text}: {m}");
        }
        // Our own writer reads back, awkward names included.
        let labels = names(&["plain", "a: b", "it's", " pad", "-dash", "[x]"]);
        assert_eq!(
            parse_data_yaml(&data_yaml_text(&labels, true)).unwrap(),
            labels
        );
    }

    #[test]
    fn clear_errors_for_unusable_folders() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        assert!(matches!(
            load(&r.join("nope"), false),
            Err(AnnotationError::NotFound(_))
        ));
        assert!(matches!(
            load(r, false),
            Err(AnnotationError::UnknownLayout(_))
        ));
        // Pictures but no names.
        png(&r.join("images/a.png"), 8, 8);
        let err = load(r, false).unwrap_err();
        assert!(matches!(err, AnnotationError::NoNames(_)), "{err}");
        assert!(err.to_string().contains("data.yaml"));
        // classes.txt is enough; but without label files there is no object at all.
        write(&r.join("classes.txt"), "cat\ndog\n");
        let err = load(r, false).unwrap_err();
        assert!(
            matches!(err, AnnotationError::NoObjects { images: 1, .. }),
            "{err}"
        );
        write(&r.join("labels/a.txt"), "1 0.5 0.5 0.5 0.5\n");
        assert_eq!(load(r, false).unwrap().labels, names(&["cat", "dog"]));
        // A data.yaml wins over classes.txt, and its faults name the file and line.
        write(&r.join("data.yaml"), "names: [a, b]\nnc: 5\n");
        let err = load(r, false).unwrap_err().to_string();
        assert!(err.contains("data.yaml:2: nc is 5"), "{err}");
        // No picture at all.
        let e = tempfile::tempdir().unwrap();
        write(&e.path().join("data.yaml"), "names: [a]\n");
        std::fs::create_dir_all(e.path().join("images")).unwrap();
        assert!(matches!(
            load(e.path(), false),
            Err(AnnotationError::NoImages(_))
        ));
    }

    fn coco_dir(anns: Value, images: Value) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        png(&d.path().join("images/p.png"), 50, 40);
        png(&d.path().join("q.png"), 30, 30);
        let doc = json!({
            "images": images,
            "annotations": anns,
            "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "ant"}, {"id": 17, "name": "bee"}],
        });
        write(&d.path().join("annotations.json"), &doc.to_string());
        d
    }

    fn two_images() -> Value {
        json!([
            {"id": 5, "file_name": "p.png", "width": 50, "height": 40},
            {"id": 6, "file_name": "q.png", "width": 30, "height": 30},
        ])
    }

    #[test]
    fn coco_categories_become_dense_sorted_classes() {
        let anns = json!([
            {"id": 1, "image_id": 5, "category_id": 90, "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 6, "category_id": 3, "bbox": [0.5, 0.5, 29.2, 29]},
            {"id": 3, "image_id": 5, "category_id": 17, "bbox": [1, 1, 2, 2], "iscrowd": 1},
            {"id": 4, "image_id": 5, "category_id": 17, "bbox": [-0.5, 0, 50.9, 40]},
        ]);
        let d = coco_dir(anns, two_images());
        let ds = load(d.path(), true).unwrap();
        assert_eq!(ds.format, Format::Coco);
        assert_eq!(ds.labels, names(&["ant", "bee", "zebra"]));
        assert!(ds.train[0].path.ends_with("images/p.png"));
        assert_eq!((ds.train[0].width, ds.train[0].height), (50, 40));
        let p = &ds.train[0].objects;
        assert_eq!(p.len(), 2, "crowd region left out");
        assert_eq!(
            p[0],
            Object {
                class: 2,
                bbox: BBox::new(10.0, 5.0, 30.0, 15.0)
            }
        );
        // Within tolerance on both sides: clamped.
        assert_eq!(
            p[1],
            Object {
                class: 1,
                bbox: BBox::new(0.0, 0.0, 50.0, 40.0)
            }
        );
        assert_eq!(ds.train[1].objects[0].class, 0);
        // The JSON file itself loads the same.
        assert_eq!(
            load(&d.path().join("annotations.json"), true)
                .unwrap()
                .train,
            ds.train
        );
    }

    #[test]
    fn every_bad_coco_annotation_is_reported_or_fatal() {
        let good = json!({"id": 1, "image_id": 5, "category_id": 3, "bbox": [1, 1, 5, 5]});
        let cases: Vec<(Value, IssueKind, &str)> = vec![
            (
                json!({"id": 9, "image_id": 5, "category_id": 4, "bbox": [1, 1, 5, 5]}),
                IssueKind::UnknownClass,
                "annotation id 9 (annotations[1]): category_id 4 is not in `categories` (ids [3, 17, 90])",
            ),
            (
                json!({"id": 9, "image_id": 77, "category_id": 3, "bbox": [1, 1, 5, 5]}),
                IssueKind::BadReference,
                "image_id 77 is not in `images`",
            ),
            (
                json!({"id": 9, "image_id": 5, "category_id": 3, "bbox": [1, 1, 5]}),
                IssueKind::Malformed,
                "bbox must be 4 finite numbers",
            ),
            (
                json!({"id": 9, "image_id": 5, "category_id": 3, "bbox": [1, "a", 5, 5]}),
                IssueKind::Malformed,
                "bbox must be 4 finite numbers",
            ),
            (
                json!({"id": 9, "image_id": 5, "category_id": 3}),
                IssueKind::Malformed,
                "bbox must be 4 finite numbers",
            ),
            (
                json!({"id": 9, "category_id": 3, "bbox": [1, 1, 5, 5]}),
                IssueKind::Malformed,
                "no integer `image_id`",
            ),
            (
                json!({"id": 9, "image_id": 5, "category_id": 3, "bbox": [1, 1, 0, 5]}),
                IssueKind::EmptyBox,
                "zero or negative size",
            ),
            (
                json!({"id": 9, "image_id": 5, "category_id": 3, "bbox": [1, 1, 5, -2]}),
                IssueKind::EmptyBox,
                "zero or negative size",
            ),
            (
                json!({"id": 9, "image_id": 5, "category_id": 3, "bbox": [40, 1, 15, 5]}),
                IssueKind::OutsideImage,
                "outside the 50x40 picture",
            ),
            (
                json!({"id": 9, "image_id": 5, "category_id": 3, "bbox": [1, -3, 5, 5]}),
                IssueKind::OutsideImage,
                "outside the 50x40 picture",
            ),
        ];
        for (bad, kind, fragment) in cases {
            let d = coco_dir(json!([good, bad]), two_images());
            let ds = load(d.path(), false).unwrap();
            assert_eq!(ds.issues.len(), 1, "{fragment}");
            assert_eq!(ds.issues[0].kind, kind, "{fragment}");
            assert!(ds.issues[0].path.ends_with("annotations.json"));
            assert!(
                ds.issues[0].message.contains(fragment),
                "{}",
                ds.issues[0].message
            );
            assert!(
                ds.issues[0].message.contains("annotations[1]"),
                "{}",
                ds.issues[0].message
            );
            assert_eq!(ds.skipped_objects, 1);
            assert_eq!(ds.train[0].objects.len(), 1);
            let err = load(d.path(), true).unwrap_err().to_string();
            assert!(
                err.contains("annotations.json: annotation") && err.contains(fragment),
                "{err}"
            );
        }
    }

    #[test]
    fn coco_missing_unreadable_and_resized_pictures() {
        let good = json!({"id": 1, "image_id": 5, "category_id": 3, "bbox": [1, 1, 5, 5]});
        let on_gone = json!({"id": 2, "image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5]});
        let mut imgs = two_images();
        imgs.as_array_mut()
            .unwrap()
            .push(json!({"id": 7, "file_name": "gone.png", "width": 9, "height": 9}));
        let d = coco_dir(json!([good, on_gone]), imgs.clone());
        let ds = load(d.path(), false).unwrap();
        assert_eq!(ds.issues.len(), 1);
        assert_eq!(ds.issues[0].kind, IssueKind::MissingImage);
        assert!(ds.issues[0].message.contains("gone.png"));
        assert_eq!((ds.skipped_images, ds.skipped_objects), (1, 1));
        assert_eq!(ds.train.len(), 2);
        assert!(
            load(d.path(), true)
                .unwrap_err()
                .to_string()
                .contains("gone.png not found")
        );

        // Declared 50x40 but the file is 30x30.
        imgs[0]["file_name"] = json!("q.png");
        imgs.as_array_mut().unwrap().pop();
        let d = coco_dir(json!([good]), imgs);
        let ds = load(d.path(), false);
        // Only picture with objects was the mismatched one: nothing left.
        assert!(
            matches!(ds, Err(AnnotationError::NoObjects { images: 1, .. })),
            "{ds:?}"
        );
        let err = load(d.path(), true).unwrap_err().to_string();
        assert!(
            err.contains("is 30x30 but the annotations say 50x40"),
            "{err}"
        );

        // An unreadable picture.
        let imgs = json!([
            {"id": 5, "file_name": "p.png"},
            {"id": 6, "file_name": "r.png"},
        ]);
        let d = coco_dir(json!([good]), imgs);
        write(&d.path().join("r.png"), "junk");
        let ds = load(d.path(), false).unwrap();
        assert_eq!(ds.issues[0].kind, IssueKind::UnreadableImage);
        assert!(ds.issues[0].path.ends_with("r.png"));
        assert_eq!(ds.train.len(), 1);
        assert!(load(d.path(), true).is_err());
    }

    #[test]
    fn coco_structural_faults_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("annotations.json");
        write(&f, "{\"images\": [\n  1,\n");
        let err = load(&f, false).unwrap_err().to_string();
        assert!(
            err.contains("annotations.json: not valid JSON") && err.contains("line"),
            "{err}"
        );
        write(&f, r#"{"images": []}"#);
        assert!(
            load(&f, false)
                .unwrap_err()
                .to_string()
                .contains("no `categories`")
        );
        write(
            &f,
            r#"{"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}"#,
        );
        assert!(
            load(&f, false)
                .unwrap_err()
                .to_string()
                .contains("category id 1 appears twice")
        );
        write(
            &f,
            r#"{"images": [], "categories": [{"id": 1, "name": "a"}]}"#,
        );
        assert!(matches!(load(&f, false), Err(AnnotationError::NoImages(_))));
    }

    /// Pictures with awkward boxes (fractions, edges) for round trips.
    fn sample_set(root: &Path) -> Vec<AnnotatedImage> {
        let mut v = Vec::new();
        for (k, (w, h)) in [(64u32, 48u32), (33, 97), (20, 20)].into_iter().enumerate() {
            let path = root.join(format!("src/sub{k}/pic.png"));
            png(&path, w, h);
            let objects = match k {
                0 => vec![
                    Object {
                        class: 2,
                        bbox: BBox::new(0.0, 0.0, 64.0, 48.0),
                    },
                    Object {
                        class: 0,
                        bbox: BBox::new(3.3, 7.71, 10.05, 30.999),
                    },
                ],
                1 => vec![Object {
                    class: 1,
                    bbox: BBox::new(32.0, 96.0, 33.0, 97.0),
                }],
                _ => vec![],
            };
            v.push(AnnotatedImage {
                path,
                width: w,
                height: h,
                objects,
            });
        }
        v
    }

    fn assert_same_objects(a: &[AnnotatedImage], b: &[AnnotatedImage]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!((x.width, x.height), (y.width, y.height));
            assert_eq!(x.objects.len(), y.objects.len());
            for (o, p) in x.objects.iter().zip(&y.objects) {
                assert_eq!(o.class, p.class);
                let (o, p): ([f32; 4], [f32; 4]) = (o.bbox.into(), p.bbox.into());
                for (u, v) in o.iter().zip(&p) {
                    assert!((u - v).abs() < 1e-3, "{o:?} vs {p:?}");
                }
            }
        }
    }

    #[test]
    fn yolo_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let set = sample_set(d.path());
        let labels = names(&["a", "b", "c"]);
        let out = d.path().join("yolo");
        write_yolo(&out, &labels, &set[..2], &set[2..]).unwrap();
        // Same file names from different folders do not collide.
        assert!(
            out.join("images/train/pic.png").is_file()
                && out.join("images/train/pic_1.png").is_file()
        );
        assert!(out.join("labels/train/pic_1.txt").is_file());
        let ds = load(&out, true).unwrap();
        assert_eq!(ds.labels, labels);
        assert_same_objects(&ds.train, &set[..2]);
        assert_same_objects(&ds.val, &set[2..]);
        // Writing again over itself keeps the pictures.
        write_yolo(&out, &ds.labels, &ds.train, &ds.val).unwrap();
        assert_same_objects(&load(&out, true).unwrap().train, &set[..2]);
        // A class beyond the labels is refused.
        let err = write_yolo(&out, &labels[..2], &set, &[]).unwrap_err();
        assert!(matches!(
            err,
            AnnotationError::ClassOutOfRange {
                class: 2,
                count: 2,
                ..
            }
        ));
    }

    #[test]
    fn coco_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let set = sample_set(d.path());
        let labels = names(&["a", "b", "c"]);
        let f = d.path().join("coco.json");
        write_coco(&f, &labels, &set).unwrap();
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(text.contains("\"src/sub0/pic.png\""), "relative file_name");
        let ds = load(&f, true).unwrap();
        assert_eq!(ds.labels, labels);
        assert_same_objects(&ds.train, &set);
        assert_eq!(ds.train[0].path, set[0].path);
        // And on through YOLO and back to COCO.
        let y = d.path().join("y");
        write_yolo(&y, &ds.labels, &ds.train, &[]).unwrap();
        let back = load(&y, true).unwrap();
        write_coco(
            &d.path().join("again/annotations.json"),
            &back.labels,
            &back.train,
        )
        .unwrap();
        assert_same_objects(&load(&d.path().join("again"), true).unwrap().train, &set);
    }

    #[test]
    fn coco_split_folders() {
        let d = tempfile::tempdir().unwrap();
        let set = sample_set(d.path());
        let labels = names(&["a", "b", "c"]);
        write_coco(&d.path().join("train/annotations.json"), &labels, &set[..1]).unwrap();
        write_coco(&d.path().join("val/annotations.json"), &labels, &set[1..]).unwrap();
        let ds = load(d.path(), true).unwrap();
        assert_same_objects(&ds.train, &set[..1]);
        assert_same_objects(&ds.val, &set[1..]);
        write_coco(
            &d.path().join("val/annotations.json"),
            &names(&["a", "b", "x"]),
            &set[1..],
        )
        .unwrap();
        assert!(matches!(
            load(d.path(), true),
            Err(AnnotationError::SplitLabels { .. })
        ));
    }
}
