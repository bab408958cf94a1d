//! COCO detection JSON: any file name, one file or one per split (Roboflow's
//! `<split>/_annotations.coco.json`, the official `annotations/instances_<split>.json`).
//!
//! A file has `images` (`id`, `file_name`, `width`, `height`), `annotations` (`image_id`,
//! `category_id`, `bbox` as `[x, y, w, h]` in pixels, `iscrowd`) and `categories` (`id`, `name`,
//! `supercategory`). Category ids may be anything: they become dense class indices in increasing
//! id order, names kept. A category without annotations that is another category's
//! `supercategory` (Roboflow writes its project as category 0 so) is dropped, with a note. Crowd
//! regions (`iscrowd: 1`) are never trained on: they go to [`AnnotatedImage::ignored`].
//! `file_name` is relative to the JSON file's folder (or its `images/` subfolder, the folder the
//! file sits in for `annotations/`, or the `--data` folder given with `--annotations`).
//!
//! Entries are read one by one into typed structs, so a bad picture or annotation is one issue
//! (named by its index and id) and the rest of the file still loads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::data::annotated::{AnnotatedImage, Object};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    AnnotationError, COCO_TOLERANCE, IssueKind, Issues, Splits, check_classes, f32_json, io_err,
    object, picture_size, pixel_box, place, unique_name,
};

/// COCO files per split.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SplitFiles {
    /// Training annotations.
    pub train: Vec<PathBuf>,
    /// Validation annotations.
    pub val: Vec<PathBuf>,
    /// Test annotations.
    pub test: Vec<PathBuf>,
}

impl SplitFiles {
    /// Each file with its split's name.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, &PathBuf)> {
        let t = self.train.iter().map(|f| ("train", f));
        let v = self.val.iter().map(|f| ("val", f));
        t.chain(v).chain(self.test.iter().map(|f| ("test", f)))
    }
}

/// A COCO id: an integer (some tools write whole floats).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum CocoId {
    Int(i64),
    Float(f64),
}

impl CocoId {
    fn get(self) -> Option<i64> {
        match self {
            CocoId::Int(i) => Some(i),
            CocoId::Float(f) if f.fract() == 0.0 && f.is_finite() => Some(f as i64),
            CocoId::Float(_) => None,
        }
    }
}

/// A COCO file as read: the entries stay JSON until each is read into its type, so one bad entry
/// is one issue.
#[derive(Debug, Deserialize)]
struct CocoFileIn {
    images: Option<Vec<Value>>,
    #[serde(default)]
    annotations: Option<Vec<Value>>,
    categories: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct CategoryIn {
    id: CocoId,
    name: String,
    #[serde(default)]
    supercategory: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ImageIn {
    id: CocoId,
    file_name: String,
    #[serde(default)]
    width: Option<u64>,
    #[serde(default)]
    height: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct AnnotationIn {
    #[serde(default)]
    image_id: Option<CocoId>,
    #[serde(default)]
    category_id: Option<CocoId>,
    #[serde(default)]
    bbox: Option<Vec<f64>>,
    #[serde(default)]
    iscrowd: Option<CocoId>,
}

/// Just the id of an entry, to name a bad one.
#[derive(Debug, Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<CocoId>,
}

/// Only the keys that make a JSON file a COCO file (for finding them in a folder).
#[derive(Debug, Deserialize)]
struct Probe {
    #[allow(dead_code)]
    images: IgnoredAny,
    #[allow(dead_code)]
    categories: IgnoredAny,
}

/// Whether `path` is a JSON file with COCO's `images` and `categories`.
pub fn is_coco_file(path: &Path) -> bool {
    let ext_ok = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    ext_ok
        && std::fs::File::open(path)
            .ok()
            .and_then(|f| serde_json::from_reader::<_, Probe>(std::io::BufReader::new(f)).ok())
            .is_some()
}

/// Roboflow's name for a split's COCO file.
pub fn is_roboflow_file(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n == "_annotations.coco.json")
}

/// The COCO files of a folder, sorted.
fn coco_files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_coco_file(p))
        .collect();
    v.sort();
    v
}

/// Which split a file name speaks of.
fn split_of_name(path: &Path) -> Option<usize> {
    let n = path.file_stem()?.to_string_lossy().to_ascii_lowercase();
    if n.contains("train") {
        Some(0)
    } else if n.contains("val") {
        Some(1)
    } else if n.contains("test") {
        Some(2)
    } else {
        None
    }
}

/// Files sorted into splits by their names; `None` unless there is a training file and every
/// file has a split.
fn by_name(files: &[PathBuf]) -> Option<SplitFiles> {
    let mut out = SplitFiles::default();
    for f in files {
        match split_of_name(f)? {
            0 => out.train.push(f.clone()),
            1 => out.val.push(f.clone()),
            _ => out.test.push(f.clone()),
        }
    }
    (out.train.len() == 1 && out.val.len() <= 1 && out.test.len() <= 1).then_some(out)
}

/// Find the COCO files of a dataset folder: `DIR/annotations.json` or the one COCO file in `DIR`
/// (or one per split named train/val/test); one per split folder (`train/`, `valid/` or `val/`,
/// `test/`; Roboflow's `_annotations.coco.json` first); or per split in `DIR/annotations/`.
pub fn discover(dir: &Path) -> Result<Option<SplitFiles>, AnnotationError> {
    let single = |f: PathBuf| SplitFiles {
        train: vec![f],
        ..Default::default()
    };
    let top = coco_files_in(dir);
    if let Some(f) = top.iter().find(|f| f.ends_with("annotations.json")) {
        return Ok(Some(single(f.clone())));
    }
    if top.len() == 1 {
        return Ok(Some(single(top[0].clone())));
    }
    if let Some(s) = by_name(&top) {
        return Ok(Some(s));
    }
    let in_split = |names: &[&str]| -> Option<PathBuf> {
        names.iter().find_map(|n| {
            let files = coco_files_in(&dir.join(n));
            let pick = files
                .iter()
                .find(|f| is_roboflow_file(f))
                .or_else(|| files.iter().find(|f| f.ends_with("annotations.json")))
                .or(if files.len() == 1 {
                    files.first()
                } else {
                    None
                });
            pick.cloned()
        })
    };
    if let Some(train) = in_split(&["train"]) {
        return Ok(Some(SplitFiles {
            train: vec![train],
            val: in_split(&["valid", "val"]).into_iter().collect(),
            test: in_split(&["test"]).into_iter().collect(),
        }));
    }
    let ann = coco_files_in(&dir.join("annotations"));
    let instances: Vec<PathBuf> = ann
        .iter()
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("instances_"))
        })
        .cloned()
        .collect();
    let ann = if instances.is_empty() { ann } else { instances };
    if ann.len() == 1 {
        return Ok(Some(single(ann[0].clone())));
    }
    Ok(by_name(&ann))
}

fn coco_err(path: &Path, message: impl Into<String>) -> AnnotationError {
    AnnotationError::Coco {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// One file read and its categories checked.
struct Doc {
    path: PathBuf,
    split: usize,
    images: Vec<Value>,
    annotations: Vec<Value>,
    /// id -> (name, supercategory)
    categories: BTreeMap<i64, (String, Option<String>)>,
}

fn read_doc(path: &Path, split: usize) -> Result<Doc, AnnotationError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let doc: CocoFileIn = serde_json::from_str(&text).map_err(|source| AnnotationError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let cats = doc.categories.ok_or_else(|| {
        coco_err(
            path,
            "no `categories` array: list each class as {\"id\": 1, \"name\": \"cat\"}",
        )
    })?;
    let mut categories = BTreeMap::new();
    for (k, c) in cats.iter().enumerate() {
        let parsed = CategoryIn::deserialize(c).ok();
        let Some((id, cat)) = parsed.and_then(|c| Some((c.id.get()?, c))) else {
            return Err(coco_err(
                path,
                format!("categories[{k}] needs an integer `id` and a string `name`"),
            ));
        };
        if categories
            .insert(id, (cat.name, cat.supercategory))
            .is_some()
        {
            return Err(coco_err(
                path,
                format!("category id {id} appears twice in `categories`"),
            ));
        }
    }
    if categories.is_empty() {
        return Err(coco_err(path, "`categories` is empty: list the classes"));
    }
    let images = doc.images.ok_or_else(|| {
        coco_err(
            path,
            "no `images` array: list each picture with id, file_name, width, height",
        )
    })?;
    Ok(Doc {
        path: path.to_path_buf(),
        split,
        images,
        annotations: doc.annotations.unwrap_or_default(),
        categories,
    })
}

/// Read COCO files (one per split); `extra_root` is another folder pictures may be under (the
/// `--data` folder when the file was given with `--annotations`).
pub(crate) fn load(
    files: &SplitFiles,
    extra_root: Option<&Path>,
    issues: &mut Issues,
) -> Result<(Vec<String>, Splits), AnnotationError> {
    let mut docs = Vec::new();
    for (split, list) in [&files.train, &files.val, &files.test].iter().enumerate() {
        for f in *list {
            docs.push(read_doc(f, split)?);
        }
    }
    let first = docs
        .first()
        .ok_or_else(|| AnnotationError::UnknownLayout(PathBuf::new()))?;
    let names = |d: &Doc| -> Vec<String> { d.categories.values().map(|c| c.0.clone()).collect() };
    for d in &docs[1..] {
        if d.categories.keys().ne(first.categories.keys()) || names(d) != names(first) {
            return Err(AnnotationError::SplitLabels {
                train_path: first.path.clone(),
                val_path: d.path.clone(),
                train: names(first),
                val: names(d),
            });
        }
    }
    // Categories without annotations in any file that are another's supercategory: dropped.
    let used: HashSet<i64> = docs
        .iter()
        .flat_map(|d| &d.annotations)
        .filter_map(|a| AnnotationIn::deserialize(a).ok()?.category_id?.get())
        .collect();
    // Supercategories of other categories (COCO's `person` is its own: not a group).
    let supers: HashSet<&str> = first
        .categories
        .values()
        .filter_map(|(name, sup)| sup.as_deref().filter(|s| s != name))
        .collect();
    let mut kept = BTreeMap::new();
    let mut dropped = Vec::new();
    for (id, (name, _)) in &first.categories {
        if !used.contains(id) && supers.contains(name.as_str()) {
            dropped.push(format!("id {id} `{name}`"));
        } else {
            kept.insert(*id, name.clone());
        }
    }
    if !dropped.is_empty() {
        issues.note(format!(
            "{}: categories without annotations that group the others (a supercategory, as Roboflow writes) dropped: {}",
            first.path.display(),
            dropped.join(", ")
        ));
    }
    let unused: Vec<&str> = kept
        .iter()
        .filter(|(id, _)| !used.contains(id))
        .map(|(_, n)| n.as_str())
        .collect();
    if !unused.is_empty() && !used.is_empty() {
        issues.note(format!(
            "{}: categories without any annotation, kept as classes: {}",
            first.path.display(),
            unused.join(", ")
        ));
    }
    let class_of: HashMap<i64, usize> = kept.keys().enumerate().map(|(k, id)| (*id, k)).collect();
    let labels: Vec<String> = kept.into_values().collect();
    let mut splits = Splits::default();
    for d in &docs {
        let images = load_doc(d, &class_of, extra_root, issues)?;
        match d.split {
            0 => splits.train.extend(images),
            1 => splits.val.extend(images),
            _ => splits.test.extend(images),
        }
    }
    Ok((labels, splits))
}

/// A name for an entry in messages: `annotation id 9 (annotations[1])`.
fn entry_name(kind: &str, list: &str, k: usize, v: &Value) -> String {
    match IdOnly::deserialize(v).ok().and_then(|i| i.id?.get()) {
        Some(id) => format!("{kind} id {id} ({list}[{k}])"),
        None => format!("{list}[{k}]"),
    }
}

/// Where a `file_name` may be.
fn candidates(json: &Path, file: &str, extra_root: Option<&Path>) -> Vec<PathBuf> {
    let base = json.parent().unwrap_or(Path::new("."));
    let mut c = vec![base.join(file), base.join("images").join(file)];
    if base.file_name().is_some_and(|n| n == "annotations")
        && let Some(up) = base.parent()
    {
        c.push(up.join(file));
        // instances_val2017.json -> val2017/
        let stem = json.file_stem().unwrap_or_default().to_string_lossy();
        if let Some(split) = stem.strip_prefix("instances_") {
            c.push(up.join(split).join(file));
        }
        c.push(up.join("images").join(file));
    }
    if let Some(r) = extra_root {
        c.push(r.join(file));
        c.push(r.join("images").join(file));
    }
    c
}

/// The pictures of one file, in `images` order, with their objects.
fn load_doc(
    d: &Doc,
    class_of: &HashMap<i64, usize>,
    extra_root: Option<&Path>,
    issues: &mut Issues,
) -> Result<Vec<AnnotatedImage>, AnnotationError> {
    let path = &d.path;
    let mut images: Vec<AnnotatedImage> = Vec::new();
    // image id -> Some(index into images) or None when the picture was skipped.
    let mut slot: HashMap<i64, Option<usize>> = HashMap::new();
    for (k, v) in d.images.iter().enumerate() {
        let parsed = ImageIn::deserialize(v).ok();
        let Some((id, im)) = parsed.and_then(|im| Some((im.id.get()?, im))) else {
            let msg = format!(
                "{}: needs an integer `id` and a string `file_name`; picture skipped",
                entry_name("image", "images", k, v)
            );
            issues.report(path, None, IssueKind::Malformed, msg, true)?;
            continue;
        };
        let file = &im.file_name;
        if slot.contains_key(&id) {
            let msg =
                format!("image id {id} (images[{k}], {file}) appears twice; the second is skipped");
            issues.report(path, None, IssueKind::BadReference, msg, true)?;
            continue;
        }
        let cands = candidates(path, file, extra_root);
        let Some(img_path) = cands.iter().find(|p| p.is_file()).cloned() else {
            let msg = format!(
                "image id {id}: picture {} not found (also looked in {}); picture skipped",
                cands[0].display(),
                cands[1..]
                    .iter()
                    .map(|p| p.parent().unwrap_or(p).display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            slot.insert(id, None);
            issues.report(path, None, IssueKind::MissingImage, msg, true)?;
            continue;
        };
        let Some((width, height)) = picture_size(&img_path, issues)? else {
            slot.insert(id, None);
            continue;
        };
        if let (Some(w), Some(h)) = (im.width, im.height)
            && (w, h) != (u64::from(width), u64::from(height))
        {
            slot.insert(id, None);
            let msg = format!(
                "image id {id}: {} is {width}x{height} (as displayed) but the annotations say {w}x{h} (resized or rotated after labelling?); picture skipped",
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
            ignored: Vec::new(),
        });
    }
    for (k, a) in d.annotations.iter().enumerate() {
        match annotation(a, &slot, class_of, &images) {
            Ann::Keep(target, o) => images[target].objects.push(o),
            Ann::Crowd(target, o) => images[target].ignored.push(o),
            Ann::Skip => {}
            // Its picture was skipped and reported already.
            Ann::OnSkippedImage => issues.skipped_objects += 1,
            Ann::Bad(kind, what) => {
                let name = entry_name("annotation", "annotations", k, a);
                issues.report(path, None, kind, format!("{name}: {what}"), false)?;
            }
        }
    }
    Ok(images)
}

/// What to do with one COCO annotation.
enum Ann {
    /// Add this object to picture `.0`.
    Keep(usize, Object),
    /// A crowd region on picture `.0`: never trained on, kept for evaluation.
    Crowd(usize, Object),
    /// A crowd region without a usable box, or on a dropped category: nothing to keep.
    Skip,
    /// Belongs to a picture that was skipped.
    OnSkippedImage,
    /// A bad annotation.
    Bad(IssueKind, String),
}

/// Check one COCO annotation against the pictures and categories.
fn annotation(
    v: &Value,
    slot: &HashMap<i64, Option<usize>>,
    class_of: &HashMap<i64, usize>,
    images: &[AnnotatedImage],
) -> Ann {
    let a = match serde_path_to_error::deserialize::<_, AnnotationIn>(v) {
        Ok(a) => a,
        Err(e) => return Ann::Bad(IssueKind::Malformed, format!("{}: {}", e.path(), e.inner())),
    };
    let crowd = a.iscrowd.and_then(CocoId::get) == Some(1);
    let Some(image_id) = a.image_id.and_then(CocoId::get) else {
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
    let Some(cat) = a.category_id.and_then(CocoId::get) else {
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
    let Some([x, y, w, h]) = a.bbox.and_then(|b| <[f64; 4]>::try_from(b).ok()) else {
        if crowd {
            return Ann::Skip;
        }
        return Ann::Bad(
            IssueKind::Malformed,
            "bbox must be 4 finite numbers [x, y, w, h]".into(),
        );
    };
    let im = &images[target];
    match pixel_box([x, y, x + w, y + h], im.width, im.height, COCO_TOLERANCE) {
        Ok(b) if crowd => Ann::Crowd(target, object(class, b)),
        Ok(b) => Ann::Keep(target, object(class, b)),
        Err(_) if crowd => Ann::Skip,
        Err((kind, msg)) => Ann::Bad(kind, format!("bbox [{x}, {y}, {w}, {h}]: {msg}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

/// A COCO document as Kestrel writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CocoOut {
    /// Pictures, numbered from 1.
    pub images: Vec<ImageOut>,
    /// Objects, numbered from 1.
    pub annotations: Vec<AnnotationOut>,
    /// Classes, ids 1..=N in label order.
    pub categories: Vec<CategoryOut>,
}

/// One picture entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageOut {
    /// Image id.
    pub id: usize,
    /// Path relative to the JSON file's folder (or absolute).
    pub file_name: String,
    /// Width in pixels (as displayed).
    pub width: u32,
    /// Height in pixels (as displayed).
    pub height: u32,
}

/// One object entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnnotationOut {
    /// Annotation id.
    pub id: usize,
    /// Its picture.
    pub image_id: usize,
    /// Its category (class + 1).
    pub category_id: usize,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    /// Box area in pixels.
    pub area: f64,
    /// 1 for an ignored region (crowd / difficult).
    pub iscrowd: u8,
}

/// One category entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CategoryOut {
    /// Category id (class + 1).
    pub id: usize,
    /// Class name.
    pub name: String,
}

/// The COCO document of a set of pictures: categories with ids 1..=N in label order, pictures and
/// annotations numbered from 1, `file_name` relative to `base` when the picture is under it.
/// Ignored regions are written as `iscrowd: 1`.
pub fn coco_json(labels: &[String], images: &[AnnotatedImage], base: &Path) -> CocoOut {
    let mut imgs = Vec::with_capacity(images.len());
    let mut anns: Vec<AnnotationOut> = Vec::new();
    for (k, im) in images.iter().enumerate() {
        let file = im.path.strip_prefix(base).unwrap_or(&im.path);
        imgs.push(ImageOut {
            id: k + 1,
            file_name: file.to_string_lossy().replace('\\', "/"),
            width: im.width,
            height: im.height,
        });
        let all = im
            .objects
            .iter()
            .map(|o| (o, 0))
            .chain(im.ignored.iter().map(|o| (o, 1)));
        for (o, iscrowd) in all {
            let b = o.bbox;
            anns.push(AnnotationOut {
                id: anns.len() + 1,
                image_id: k + 1,
                category_id: o.class + 1,
                bbox: [
                    f32_json(b.x0),
                    f32_json(b.y0),
                    f32_json(b.width()),
                    f32_json(b.height()),
                ],
                area: f32_json(b.area()),
                iscrowd,
            });
        }
    }
    let categories = labels
        .iter()
        .enumerate()
        .map(|(k, l)| CategoryOut {
            id: k + 1,
            name: l.clone(),
        })
        .collect();
    CocoOut {
        images: imgs,
        annotations: anns,
        categories,
    }
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
    let text = serde_json::to_string_pretty(&doc).expect("a COCO document serialises");
    std::fs::write(path, text + "\n").map_err(io_err(path))
}

/// Write a self-contained COCO dataset under `out`: per split (`train`, and `val`, `test` when not
/// empty) `out/<split>/images/` with the pictures linked or copied in and
/// `out/<split>/annotations.json`.
pub(crate) fn write_splits(
    out: &Path,
    labels: &[String],
    train: &[AnnotatedImage],
    val: &[AnnotatedImage],
    test: &[AnnotatedImage],
) -> Result<(), AnnotationError> {
    for (split, images) in [("train", train), ("val", val), ("test", test)] {
        if images.is_empty() && split != "train" {
            continue;
        }
        let dir = out.join(split);
        let mut taken = HashSet::new();
        let mut placed = Vec::with_capacity(images.len());
        for im in images {
            let (_, file) = unique_name(&mut taken, &im.path);
            let dest = dir.join("images").join(file);
            place(&im.path, &dest)?;
            placed.push(AnnotatedImage {
                path: dest,
                ..im.clone()
            });
        }
        write_coco(&dir.join("annotations.json"), labels, &placed)?;
    }
    Ok(())
}
