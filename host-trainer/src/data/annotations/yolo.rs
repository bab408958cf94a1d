//! YOLO datasets as Ultralytics reads them, Roboflow's export included.
//!
//! data.yaml (read with serde_norway into [`DataYaml`]):
//! - `path`: the dataset root, relative to the yaml's folder (absent: the yaml's folder; missing
//!   on disk, as with a `path: /content/datasets/x` from a notebook: the yaml's folder, noted);
//! - `train`, `val`, `test`: each a folder of pictures (searched recursively), a list file (`.txt`,
//!   one picture path per line, relative to the list file's folder or the root) or a YAML list of
//!   those; relative to the root. Roboflow writes `train: ../train/images`, which is wrong from
//!   the yaml's folder: like Ultralytics, when a `../` path does not exist it is tried without the
//!   `../` (and a note says so);
//! - `names`: a list, or a map `{0: a, 1: b}` with ids 0..N-1; `nc`, when present, must agree.
//!
//! Without `train` in the yaml (or without a data.yaml: class names from `classes.txt`), the
//! folders say the split: `images/{train,val|valid,test}/` (Ultralytics), `{train,valid|val,test}/images/`
//! (Roboflow), or everything under `images/` as training pictures.
//!
//! A picture's label file is found as Ultralytics finds it: the last `images` component of its
//! path becomes `labels`, the extension `.txt` (`d/images/train/a.jpg` -> `d/labels/train/a.txt`).
//! Each line is `class cx cy w h` (normalised to [0, 1]) or a polygon `class x1 y1 ... xn yn`
//! (normalised, at least three points: a segmentation label), which becomes its bounding box. A
//! picture without a label file has no objects.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};

use crate::data::annotated::{AnnotatedImage, Object};
use serde::{Deserialize, Serialize};

use super::{
    AnnotationError, IssueKind, Issues, Splits, YOLO_TOLERANCE, check_classes, io_err, object,
    picture_size, place, short, unique_name, walk,
};
use crate::data::folder::{IMAGE_EXTENSIONS, is_image};

/// An Ultralytics data.yaml, as far as Kestrel uses it (other keys, such as Roboflow's
/// `roboflow:` block or `download:`, are allowed and ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DataYaml {
    /// Dataset root.
    #[serde(default)]
    pub path: Option<String>,
    /// Training pictures.
    #[serde(default)]
    pub train: Option<Sources>,
    /// Validation pictures.
    #[serde(default)]
    pub val: Option<Sources>,
    /// Test pictures.
    #[serde(default)]
    pub test: Option<Sources>,
    /// Number of classes.
    #[serde(default)]
    pub nc: Option<usize>,
    /// Class names.
    #[serde(default)]
    pub names: Option<Names>,
}

/// One split's pictures in data.yaml: a path, or a list of paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Sources {
    /// One folder or list file.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl Sources {
    fn list(&self) -> Vec<&str> {
        match self {
            Sources::One(s) => vec![s.as_str()],
            Sources::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// `names:` as a list or a map from class id to name.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Names {
    /// `[a, b]` or `- a` lines.
    List(Vec<Name>),
    /// `{0: a, 1: b}` or `0: a` lines.
    Map(BTreeMap<usize, Name>),
}

/// A class name; YAML may read a name such as `1` or `2.5` as a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Name {
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
    /// Another number.
    Float(f64),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Text(s) => s.clone(),
            Name::Int(i) => i.to_string(),
            Name::Float(f) => f.to_string(),
        }
    }
}

/// What the writer puts in data.yaml.
#[derive(Debug, Serialize)]
struct DataYamlOut<'a> {
    train: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    val: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test: Option<&'static str>,
    nc: usize,
    names: BTreeMap<usize, &'a str>,
}

/// The 1-based line of the first top-level `key:` in a YAML text (for messages about values).
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

/// A data.yaml's content and its class names (checked: not empty, map ids 0..N-1 without gaps,
/// `nc` agreeing). Errors carry a 1-based line when one is known.
pub fn parse_data_yaml(text: &str) -> Result<(DataYaml, Vec<String>), (Option<usize>, String)> {
    let de = serde_norway::Deserializer::from_str(text);
    let doc: DataYaml = match serde_path_to_error::deserialize(de) {
        Ok(d) => d,
        Err(e) => {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.location().map(|l| l.line());
            let at = if field == "." {
                String::new()
            } else {
                format!("{field}: ")
            };
            let hint = match field.split(['.', '[']).next() {
                Some("names") => " (names must be a list `[a, b]` or a map `{0: a, 1: b}`)",
                Some("train" | "val" | "test") => {
                    " (a folder, a .txt list of pictures, or a list of those)"
                }
                Some("nc") => " (the number of classes)",
                Some("path") => " (the dataset folder)",
                _ => "",
            };
            return Err((line, format!("{at}{inner}{hint}")));
        }
    };
    let nl = key_line(text, "names").or(Some(1));
    let names: Vec<String> = match &doc.names {
        None => {
            return Err((
                Some(1),
                "no `names:` entry: list the class names, e.g. `names: [cat, dog]`".into(),
            ));
        }
        Some(Names::List(v)) => v.iter().map(Name::text).collect(),
        Some(Names::Map(m)) => {
            for (k, id) in m.keys().enumerate() {
                if k != *id {
                    return Err((
                        nl,
                        format!("names: class ids must be 0..N-1 without gaps, found {id}"),
                    ));
                }
            }
            m.values().map(Name::text).collect()
        }
    };
    if names.is_empty() {
        return Err((nl, "names is empty".into()));
    }
    if let Some(bad) = names.iter().position(|n| n.trim().is_empty()) {
        return Err((nl, format!("names: class {bad} has an empty name")));
    }
    if let Some(n) = doc.nc
        && n != names.len()
    {
        return Err((
            key_line(text, "nc"),
            format!("nc is {n} but names has {} entries", names.len()),
        ));
    }
    Ok((doc, names))
}

/// Where one split's pictures come from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// Every picture under a folder.
    Folder(PathBuf),
    /// A text file, one picture path per line.
    List(PathBuf),
    /// One picture.
    Picture(PathBuf),
}

/// Resolve one data.yaml path (`key` names the split, for messages).
fn resolve(
    root: &Path,
    yaml: &Path,
    key: &str,
    entry: &str,
    issues: &mut Issues,
) -> Result<Source, AnnotationError> {
    let given = Path::new(entry);
    let mut candidates = vec![root.join(given)];
    let rest = entry
        .strip_prefix("../")
        .or_else(|| entry.strip_prefix("..\\"));
    if let Some(rest) = rest {
        candidates.push(root.join(rest));
    }
    let Some(k) = candidates.iter().position(|c| c.exists()) else {
        let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
        return Err(AnnotationError::DataFile {
            path: yaml.to_path_buf(),
            line: None,
            message: format!(
                "{key}: `{entry}` not found (looked at {}): fix the path in the yaml (relative to `path:`, or to the yaml's folder when there is none)",
                looked.join(" and ")
            ),
        });
    };
    let p = candidates.swap_remove(k);
    if k > 0 {
        issues.note(format!(
            "{}: {key}: `{entry}` is not at {}; using {} (Roboflow's `../` paths, resolved as Ultralytics does)",
            yaml.display(),
            root.join(given).display(),
            p.display()
        ));
    }
    Ok(if p.is_dir() {
        Source::Folder(p)
    } else if is_image(&p) {
        Source::Picture(p)
    } else {
        Source::List(p)
    })
}

/// The label file of a picture: the last `images` component becomes `labels`, the extension
/// `.txt` (no `images` component: next to the picture).
pub fn label_path(picture: &Path) -> PathBuf {
    let comps: Vec<Component> = picture.components().collect();
    let last = comps
        .iter()
        .rposition(|c| c.as_os_str() == "images")
        .filter(|&i| i + 1 < comps.len());
    let mut out = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        if Some(i) == last {
            out.push("labels");
        } else {
            out.push(c.as_os_str());
        }
    }
    out.with_extension("txt")
}

/// The split folders of a YOLO folder without `train:` in its yaml.
fn folder_splits(root: &Path, issues: &mut Issues) -> Result<[Vec<Source>; 3], AnnotationError> {
    let first = |names: &[&str], f: &dyn Fn(&str) -> PathBuf| -> Vec<Source> {
        names
            .iter()
            .map(|n| f(n))
            .find(|p| p.is_dir())
            .map(Source::Folder)
            .into_iter()
            .collect()
    };
    let images = root.join("images");
    if images.join("train").is_dir() {
        let under = |n: &str| images.join(n);
        // Other folders of pictures under images/ are left out, with a note.
        let mut left = BTreeMap::<String, usize>::new();
        for rel in walk(&images)?.into_iter().filter(|p| is_image(p)) {
            let top = rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default();
            if !["train", "val", "valid", "test"].contains(&top.as_str()) {
                *left.entry(top).or_default() += 1;
            }
        }
        for (dir, n) in left {
            issues.note(format!(
                "{}: {n} pictures in images/{dir} left out (only train/, val/ or valid/, and test/ are read)",
                root.display()
            ));
        }
        return Ok([
            first(&["train"], &under),
            first(&["val", "valid"], &under),
            first(&["test"], &under),
        ]);
    }
    if root.join("train").join("images").is_dir() {
        let under = |n: &str| root.join(n).join("images");
        return Ok([
            first(&["train"], &under),
            first(&["valid", "val"], &under),
            first(&["test"], &under),
        ]);
    }
    if images.is_dir() {
        return Ok([vec![Source::Folder(images)], Vec::new(), Vec::new()]);
    }
    Err(AnnotationError::NoImages(images))
}

/// Class names from `classes.txt` (in the root or `labels/`), for folders without data.yaml.
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
                return Err(AnnotationError::DataFile {
                    path: p,
                    line: Some(1),
                    message: "no class names: write one name per line".into(),
                });
            }
            return Ok(names);
        }
    }
    Err(AnnotationError::NoNames(root.to_path_buf()))
}

/// Read a YOLO dataset rooted at `root` (with its data.yaml `yaml`, if any).
pub(crate) fn load(
    root: &Path,
    yaml: Option<&Path>,
    issues: &mut Issues,
) -> Result<(Vec<String>, Splits), AnnotationError> {
    let (labels, sources) = match yaml {
        Some(y) => {
            let text = std::fs::read_to_string(y).map_err(io_err(y))?;
            let (doc, names) =
                parse_data_yaml(&text).map_err(|(line, message)| AnnotationError::DataFile {
                    path: y.to_path_buf(),
                    line,
                    message,
                })?;
            let ydir = y.parent().unwrap_or(Path::new("."));
            let base = match doc.path.as_deref().filter(|p| !p.trim().is_empty()) {
                None => ydir.to_path_buf(),
                Some(p) => {
                    let b = ydir.join(p);
                    if b.is_dir() {
                        b
                    } else {
                        issues.note(format!(
                            "{}: path `{p}` does not exist here; using the yaml's folder {} as the root",
                            y.display(),
                            ydir.display()
                        ));
                        ydir.to_path_buf()
                    }
                }
            };
            let sources = match &doc.train {
                None => folder_splits(root, issues)?,
                Some(train) => {
                    let mut out: [Vec<Source>; 3] = Default::default();
                    for (k, (key, spec)) in [("train", Some(train)), ("val", doc.val.as_ref())]
                        .into_iter()
                        .chain([("test", doc.test.as_ref())])
                        .enumerate()
                    {
                        for entry in spec.map(Sources::list).unwrap_or_default() {
                            if entry.trim().is_empty() {
                                continue;
                            }
                            match resolve(&base, y, key, entry, issues) {
                                Ok(s) => out[k].push(s),
                                // A missing test split does not stop training.
                                Err(e) if key == "test" => {
                                    issues.note(format!("{e}; no test split"))
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    out
                }
            };
            (names, sources)
        }
        None => (read_classes_txt(root)?, folder_splits(root, issues)?),
    };
    let mut splits = Splits::default();
    let mut seen = HashSet::new();
    let mut unlabelled = 0;
    let mut repeated = [0usize; 3];
    for (k, srcs) in sources.iter().enumerate() {
        let dest = match k {
            0 => &mut splits.train,
            1 => &mut splits.val,
            _ => &mut splits.test,
        };
        for src in srcs {
            for picture in pictures_of(src, root, issues)? {
                // The same picture listed twice (or in two splits) is read once.
                if !seen.insert(picture.clone()) {
                    repeated[k] += 1;
                    continue;
                }
                if !label_path(&picture).is_file() {
                    unlabelled += 1;
                }
                if let Some(im) = read_picture(&picture, labels.len(), issues)? {
                    dest.push(im);
                }
            }
            if let Source::Folder(dir) = src {
                orphan_labels(dir, issues)?;
            }
        }
    }
    for (k, n) in repeated.into_iter().enumerate().filter(|(_, n)| *n > 0) {
        let split = ["train", "val", "test"][k];
        issues.note(format!(
            "{}: {n} pictures of {split} were listed before (in it or an earlier split): each picture is read once, where it first appears",
            root.display()
        ));
    }
    if unlabelled > 0 {
        issues.note(format!(
            "{}: {unlabelled} of {} pictures have no label file (read as pictures without objects; labels of images/x/a.jpg go in labels/x/a.txt)",
            root.display(),
            seen.len()
        ));
    }
    Ok((labels, splits))
}

/// The pictures of one source, in order; list entries that name no file are issues.
fn pictures_of(
    src: &Source,
    root: &Path,
    issues: &mut Issues,
) -> Result<Vec<PathBuf>, AnnotationError> {
    match src {
        Source::Picture(p) => Ok(vec![p.clone()]),
        Source::Folder(dir) => Ok(walk(dir)?
            .into_iter()
            .filter(|p| is_image(p))
            .map(|rel| dir.join(rel))
            .collect()),
        Source::List(file) => {
            let text = std::fs::read_to_string(file).map_err(io_err(file))?;
            let dir = file.parent().unwrap_or(Path::new("."));
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let entry = line.trim();
                if entry.is_empty() || entry.starts_with('#') {
                    continue;
                }
                let rel = entry.strip_prefix("./").unwrap_or(entry);
                let candidates = [dir.join(rel), root.join(rel)];
                match candidates.iter().find(|c| c.is_file()) {
                    Some(p) => out.push(p.clone()),
                    None => {
                        let msg = format!(
                            "picture `{entry}` not found (looked at {}); picture skipped",
                            candidates[0].display()
                        );
                        issues.report(file, Some(i + 1), IssueKind::MissingImage, msg, true)?;
                    }
                }
            }
            Ok(out)
        }
    }
}

/// One picture with the objects of its label file; `None` when the picture is unreadable.
fn read_picture(
    path: &Path,
    classes: usize,
    issues: &mut Issues,
) -> Result<Option<AnnotatedImage>, AnnotationError> {
    let Some((width, height)) = picture_size(path, issues)? else {
        return Ok(None);
    };
    let lp = label_path(path);
    let objects = if lp.is_file() {
        let text = std::fs::read_to_string(&lp).map_err(io_err(&lp))?;
        parse_yolo_labels(&text, &lp, classes, width, height, issues)?
    } else {
        Vec::new()
    };
    Ok(Some(AnnotatedImage {
        path: path.to_path_buf(),
        width,
        height,
        objects,
        ignored: Vec::new(),
    }))
}

/// Label files under the labels folder of a picture folder that have no picture.
fn orphan_labels(images: &Path, issues: &mut Issues) -> Result<(), AnnotationError> {
    let probe = label_path(&images.join("x"));
    let Some(labels) = probe.parent() else {
        return Ok(());
    };
    if labels == images || !labels.is_dir() {
        return Ok(());
    }
    let stems: HashSet<PathBuf> = walk(images)?
        .into_iter()
        .filter(|p| is_image(p))
        .map(|p| p.with_extension(""))
        .collect();
    for rel in walk(labels)? {
        let is_txt = rel
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"));
        if !is_txt || rel == Path::new("classes.txt") || stems.contains(&rel.with_extension("")) {
            continue;
        }
        let msg = format!(
            "no picture for this label file (looked for {}.{{{}}})",
            images.join(rel.with_extension("")).display(),
            IMAGE_EXTENSIONS.join(",")
        );
        issues.report(&labels.join(&rel), None, IssueKind::MissingImage, msg, true)?;
    }
    Ok(())
}

/// Parse one label file into objects in pixels, reporting bad lines.
pub(crate) fn parse_yolo_labels(
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

/// One label line: `class cx cy w h`, or a polygon `class x1 y1 ... xn yn` (its bounding box).
pub(crate) fn parse_yolo_line(
    line: &str,
    classes: usize,
    width: u32,
    height: u32,
) -> Result<Object, (IssueKind, String)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let n = fields.len();
    let polygon = n >= 7 && n % 2 == 1;
    if n != 5 && !polygon {
        return Err((
            IssueKind::Malformed,
            format!(
                "expected 5 fields `class cx cy w h` or a polygon `class x1 y1 ... xn yn` (3 points or more), found {n} fields: `{}`",
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
    let mut v = Vec::with_capacity(n - 1);
    for f in &fields[1..] {
        match f.parse::<f64>() {
            Ok(x) if x.is_finite() => v.push(x),
            _ => {
                return Err((
                    IssueKind::Malformed,
                    format!("`{f}` is not a finite number"),
                ));
            }
        }
    }
    if class >= classes {
        return Err((
            IssueKind::UnknownClass,
            format!("class id {class} is not in data.yaml (0..{classes})"),
        ));
    }
    let (x0, y0, x1, y1) = if polygon {
        let xs = v.iter().step_by(2);
        let ys = v.iter().skip(1).step_by(2);
        let (lo, hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let (x0, x1) = xs.fold((lo, hi), |(a, b), &x| (a.min(x), b.max(x)));
        let (y0, y1) = ys.fold((lo, hi), |(a, b), &y| (a.min(y), b.max(y)));
        if x1 <= x0 || y1 <= y0 {
            return Err((
                IssueKind::EmptyBox,
                "polygon has no area (all its points on a line)".into(),
            ));
        }
        (x0, y0, x1, y1)
    } else {
        let [cx, cy, w, h] = [v[0], v[1], v[2], v[3]];
        if w <= 0.0 || h <= 0.0 {
            return Err((
                IssueKind::EmptyBox,
                format!("box has zero or negative size (w {w}, h {h})"),
            ));
        }
        (cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)
    };
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
    let bbox = kestrel_shared::BBox::new(
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
    Ok(object(class, bbox))
}

// ---------------------------------------------------------------------------------------------
// Writer

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

/// An Ultralytics data.yaml: the split folders present (`images/<split>`, relative to the yaml's
/// folder) and the names as a map.
pub fn data_yaml_text(labels: &[String], has_val: bool, has_test: bool) -> String {
    let doc = DataYamlOut {
        train: "images/train",
        val: has_val.then_some("images/val"),
        test: has_test.then_some("images/test"),
        nc: labels.len(),
        names: labels
            .iter()
            .enumerate()
            .map(|(k, l)| (k, l.as_str()))
            .collect(),
    };
    let body = serde_norway::to_string(&doc).expect("a data.yaml serialises");
    format!("# Written by kestrel. Paths are relative to this file's folder.\n{body}")
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
    write_splits(out, labels, train, val, &[])
}

/// [`write_yolo`] with a test split (`images/test/`) as well.
pub fn write_splits(
    out: &Path,
    labels: &[String],
    train: &[AnnotatedImage],
    val: &[AnnotatedImage],
    test: &[AnnotatedImage],
) -> Result<(), AnnotationError> {
    for s in [train, val, test] {
        check_classes(labels, s)?;
    }
    for (split, images) in [("train", train), ("val", val), ("test", test)] {
        if images.is_empty() && split != "train" {
            continue;
        }
        let img_dir = out.join("images").join(split);
        let lab_dir = out.join("labels").join(split);
        for d in [&img_dir, &lab_dir] {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let mut taken = HashSet::new();
        for im in images {
            let (name, file) = unique_name(&mut taken, &im.path);
            place(&im.path, &img_dir.join(file))?;
            let lp = lab_dir.join(format!("{name}.txt"));
            std::fs::write(&lp, yolo_label_text(&im.objects, im.width, im.height))
                .map_err(io_err(&lp))?;
        }
    }
    let yp = out.join("data.yaml");
    std::fs::write(
        &yp,
        data_yaml_text(labels, !val.is_empty(), !test.is_empty()),
    )
    .map_err(io_err(&yp))
}
