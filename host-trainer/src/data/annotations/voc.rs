//! Pascal VOC: `Annotations/<id>.xml` per picture, the pictures in `JPEGImages/`, the splits in
//! `ImageSets/Main/{train,val,test}.txt` (one id per line; `trainval.txt` is the training set
//! when there is no `train.txt`). Without `ImageSets/Main/` every annotation file is a training
//! picture and the validation set is held out as for the other layouts (`--val-fraction`).
//!
//! VOC boxes are 1-based inclusive pixel indices (`xmin = 1` is the first column, `xmax = width`
//! the last): they become 0-based corners (`x0 = xmin - 1`, `x1 = xmax`), as Detectron2 and
//! torchvision read them. `difficult` objects are flagged, never trained on and left for
//! evaluation to ignore, as the VOC devkit does ([`AnnotatedImage::ignored`]). Class names are
//! those of the objects, sorted; VOC has no class list, so Kestrel's writer adds a `classes.txt`
//! (one name per line) that the reader follows when present, keeping the class order (and classes
//! without objects) of a converted dataset.
//!
//! The XML is read with roxmltree, which keeps positions: a bad value is reported as
//! `file.xml:line`.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use crate::data::annotated::AnnotatedImage;
use kestrel_shared::BBox;

use super::{
    AnnotationError, COCO_TOLERANCE, IssueKind, Issues, Splits, check_classes, io_err, object,
    picture_size, pixel_box, place, short, unique_name, walk,
};
use crate::data::folder::IMAGE_EXTENSIONS;

/// One object of an annotation file, before class names are numbered.
#[derive(Debug, Clone, PartialEq)]
struct VocObject {
    name: String,
    difficult: bool,
    /// `[xmin, ymin, xmax, ymax]` as written (1-based, inclusive).
    bndbox: [f64; 4],
    /// Line of `<object>`.
    line: usize,
}

/// One annotation file as read.
#[derive(Debug, Clone, PartialEq)]
struct VocAnnotation {
    filename: Option<String>,
    size: Option<(u64, u64)>,
    objects: Vec<VocObject>,
}

/// The first child element of `n` named `tag`.
fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == tag)
}

/// The trimmed text of `n`'s child `tag`, if it has one.
fn text_of(n: roxmltree::Node<'_, '_>, tag: &str) -> Option<String> {
    child(n, tag).map(|c| c.text().unwrap_or("").trim().to_string())
}

/// Parse an annotation file; `Err((line, what))` for malformed XML or a bad value (the whole file
/// is then skipped: a half-read picture would train on missing objects).
fn parse_xml(text: &str) -> Result<VocAnnotation, (usize, String)> {
    let doc = roxmltree::Document::parse(text)
        .map_err(|e| (e.pos().row as usize, format!("not well-formed XML: {e}")))?;
    let line_of = |n: roxmltree::Node| doc.text_pos_at(n.range().start).row as usize;
    let root = doc.root_element();
    if root.tag_name().name() != "annotation" {
        return Err((
            line_of(root),
            format!(
                "the root element is <{}>, not <annotation>: not a Pascal VOC file",
                root.tag_name().name()
            ),
        ));
    }
    let number = |n: roxmltree::Node<'_, '_>, tag: &str| -> Result<f64, (usize, String)> {
        let c = child(n, tag).ok_or((line_of(n), format!("<{tag}> is missing")))?;
        let t = c.text().unwrap_or("").trim();
        t.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or((line_of(c), format!("<{tag}> `{t}` is not a number")))
    };
    let size = match child(root, "size") {
        Some(s) => {
            let (w, h) = (number(s, "width")?, number(s, "height")?);
            (w > 0.0 && h > 0.0).then_some((w as u64, h as u64))
        }
        None => None,
    };
    let mut objects = Vec::new();
    for o in root
        .children()
        .filter(|c| c.is_element() && c.tag_name().name() == "object")
    {
        let name = text_of(o, "name")
            .filter(|n| !n.is_empty())
            .ok_or((line_of(o), "<object> without a <name>".to_string()))?;
        let difficult = match text_of(o, "difficult").as_deref() {
            None | Some("" | "0") => false,
            Some("1") => true,
            Some(other) => {
                return Err((
                    line_of(o),
                    format!("<difficult> `{other}` is neither 0 nor 1"),
                ));
            }
        };
        let b =
            child(o, "bndbox").ok_or((line_of(o), format!("object `{name}` has no <bndbox>")))?;
        let bndbox = [
            number(b, "xmin")?,
            number(b, "ymin")?,
            number(b, "xmax")?,
            number(b, "ymax")?,
        ];
        objects.push(VocObject {
            name,
            difficult,
            bndbox,
            line: line_of(o),
        });
    }
    Ok(VocAnnotation {
        filename: text_of(root, "filename").filter(|f| !f.is_empty()),
        size,
        objects,
    })
}

/// A split's ids, each with the list file and line that named it (none when every annotation
/// file is read).
type Ids = Vec<(String, Option<(PathBuf, usize)>)>;

/// The ids of each split: from `ImageSets/Main/`, or every annotation file as training.
fn split_ids(root: &Path, issues: &mut Issues) -> Result<[Ids; 3], AnnotationError> {
    let main = root.join("ImageSets").join("Main");
    let read = |name: &str| -> Result<Option<Ids>, AnnotationError> {
        let p = main.join(name);
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
        Ok(Some(
            text.lines()
                .enumerate()
                // Per-class lists have `id  1` lines; the id is the first field.
                .filter_map(|(i, l)| {
                    l.split_whitespace()
                        .next()
                        .map(|id| (id.to_string(), Some((p.clone(), i + 1))))
                })
                .collect(),
        ))
    };
    if let Some(train) = match read("train.txt")? {
        Some(t) => Some(t),
        None => read("trainval.txt")?,
    } {
        let val = if main.join("train.txt").is_file() {
            read("val.txt")?.unwrap_or_default()
        } else {
            Vec::new()
        };
        return Ok([train, val, read("test.txt")?.unwrap_or_default()]);
    }
    let ann = root.join("Annotations");
    let all: Ids = walk(&ann)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("xml")))
        .map(|p| (p.with_extension("").to_string_lossy().into_owned(), None))
        .collect();
    issues.note(format!(
        "{}: no ImageSets/Main/train.txt: all {} annotation files are training pictures",
        root.display(),
        all.len()
    ));
    Ok([all, Vec::new(), Vec::new()])
}

/// The picture of an annotation file: `JPEGImages/<filename>`, else `JPEGImages/<id>.<ext>`.
fn picture_of(root: &Path, id: &str, filename: Option<&str>) -> Option<PathBuf> {
    let dir = root.join("JPEGImages");
    let named = filename.map(|f| dir.join(f));
    let by_id = IMAGE_EXTENSIONS
        .iter()
        .flat_map(|e| [e.to_string(), e.to_ascii_uppercase()])
        .map(|e| dir.join(format!("{id}.{e}")));
    named.into_iter().chain(by_id).find(|p| p.is_file())
}

/// Read a Pascal VOC folder.
pub(crate) fn load(
    root: &Path,
    issues: &mut Issues,
) -> Result<(Vec<String>, Splits), AnnotationError> {
    let ids = split_ids(root, issues)?;
    // First pass: every file parsed (class names come from all of them).
    let mut parsed: [Vec<(PathBuf, PathBuf, VocAnnotation)>; 3] = Default::default();
    let mut names = BTreeSet::new();
    let mut seen = HashSet::new();
    for (k, list) in ids.iter().enumerate() {
        for (id, origin) in list {
            if !seen.insert(id.clone()) {
                continue;
            }
            let xml = root.join("Annotations").join(format!("{id}.xml"));
            if !xml.is_file() {
                let (file, line) = origin.clone().unzip();
                let msg = format!(
                    "no annotation file {} for id `{id}`; skipped",
                    xml.display()
                );
                issues.report(
                    file.as_deref().unwrap_or(&xml),
                    line,
                    IssueKind::BadReference,
                    msg,
                    true,
                )?;
                continue;
            }
            let text = std::fs::read_to_string(&xml).map_err(io_err(&xml))?;
            let ann = match parse_xml(&text) {
                Ok(a) => a,
                Err((line, what)) => {
                    let msg = format!("{what}; picture skipped");
                    issues.report(&xml, Some(line), IssueKind::Malformed, msg, true)?;
                    continue;
                }
            };
            let Some(picture) = picture_of(root, id, ann.filename.as_deref()) else {
                let msg = format!(
                    "picture {} not found (nor {id}.{{{}}}); picture skipped",
                    root.join("JPEGImages")
                        .join(ann.filename.as_deref().unwrap_or(id))
                        .display(),
                    IMAGE_EXTENSIONS.join(",")
                );
                issues.report(&xml, None, IssueKind::MissingImage, msg, true)?;
                continue;
            };
            names.extend(ann.objects.iter().map(|o| o.name.clone()));
            parsed[k].push((xml, picture, ann));
        }
    }
    let listed = root.join("classes.txt");
    let labels: Vec<String> = if listed.is_file() {
        let text = std::fs::read_to_string(&listed).map_err(io_err(&listed))?;
        let list: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if let Some(extra) = names.iter().find(|n| !list.contains(n)) {
            return Err(AnnotationError::DataFile {
                path: listed,
                line: None,
                message: format!(
                    "objects named `{extra}` but the class is not listed here: add it, or delete the file to use the names found, sorted"
                ),
            });
        }
        list
    } else {
        names.into_iter().collect()
    };
    let mut splits = Splits::default();
    for (k, files) in parsed.into_iter().enumerate() {
        let dest = match k {
            0 => &mut splits.train,
            1 => &mut splits.val,
            _ => &mut splits.test,
        };
        for (xml, picture, ann) in files {
            let Some((width, height)) = picture_size(&picture, issues)? else {
                continue;
            };
            if let Some((w, h)) = ann.size
                && (w, h) != (u64::from(width), u64::from(height))
            {
                let msg = format!(
                    "{} is {width}x{height} (as displayed) but <size> says {w}x{h} (resized or rotated after labelling?); picture skipped",
                    picture.display()
                );
                issues.report(&xml, None, IssueKind::SizeMismatch, msg, true)?;
                continue;
            }
            let mut im = AnnotatedImage {
                path: picture,
                width,
                height,
                objects: Vec::new(),
                ignored: Vec::new(),
            };
            for o in &ann.objects {
                let class = labels
                    .iter()
                    .position(|l| *l == o.name)
                    .expect("every name was collected or checked");
                let [xmin, ymin, xmax, ymax] = o.bndbox;
                match pixel_box(
                    [xmin - 1.0, ymin - 1.0, xmax, ymax],
                    width,
                    height,
                    COCO_TOLERANCE,
                ) {
                    Ok(b) if o.difficult => im.ignored.push(object(class, b)),
                    Ok(b) => im.objects.push(object(class, b)),
                    Err((kind, what)) => {
                        let msg = format!("object `{}`: {what}", o.name);
                        issues.report(&xml, Some(o.line), kind, msg, false)?;
                    }
                }
            }
            dest.push(im);
        }
    }
    Ok((labels, splits))
}

// ---------------------------------------------------------------------------------------------
// Writer

/// Text for an XML element body.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The VOC annotation file of a picture (`filename` in `JPEGImages/`); ignored regions are
/// written as `difficult` objects.
pub fn voc_xml(filename: &str, im: &AnnotatedImage, labels: &[String]) -> String {
    let mut s = format!(
        "<annotation>\n  <folder>JPEGImages</folder>\n  <filename>{}</filename>\n  <size>\n    <width>{}</width>\n    <height>{}</height>\n    <depth>3</depth>\n  </size>\n",
        xml_escape(filename),
        im.width,
        im.height
    );
    let all = im
        .objects
        .iter()
        .map(|o| (o, 0))
        .chain(im.ignored.iter().map(|o| (o, 1)));
    for (o, difficult) in all {
        let b: BBox = o.bbox;
        s.push_str(&format!(
            "  <object>\n    <name>{}</name>\n    <truncated>0</truncated>\n    <difficult>{difficult}</difficult>\n    <bndbox>\n      <xmin>{}</xmin>\n      <ymin>{}</ymin>\n      <xmax>{}</xmax>\n      <ymax>{}</ymax>\n    </bndbox>\n  </object>\n",
            xml_escape(&labels[o.class]),
            short(f64::from(b.x0) + 1.0),
            short(f64::from(b.y0) + 1.0),
            short(f64::from(b.x1)),
            short(f64::from(b.y1)),
        ));
    }
    s.push_str("</annotation>\n");
    s
}

/// Write a Pascal VOC dataset under `out`: `JPEGImages/` (pictures linked or copied in, one name
/// space for all splits), `Annotations/<id>.xml`, `ImageSets/Main/{train,val,test}.txt`, and
/// `classes.txt` (the class order).
pub fn write_voc(
    out: &Path,
    labels: &[String],
    train: &[AnnotatedImage],
    val: &[AnnotatedImage],
    test: &[AnnotatedImage],
) -> Result<(), AnnotationError> {
    for s in [train, val, test] {
        check_classes(labels, s)?;
    }
    let (jpeg, ann, main) = (
        out.join("JPEGImages"),
        out.join("Annotations"),
        out.join("ImageSets").join("Main"),
    );
    for d in [&jpeg, &ann, &main] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    let cp = out.join("classes.txt");
    std::fs::write(&cp, labels.join("\n") + "\n").map_err(io_err(&cp))?;
    let mut taken = HashSet::new();
    for (split, images) in [("train", train), ("val", val), ("test", test)] {
        if images.is_empty() && split != "train" {
            continue;
        }
        let mut list = String::new();
        for im in images {
            let (id, file) = unique_name(&mut taken, &im.path);
            place(&im.path, &jpeg.join(&file))?;
            let xp = ann.join(format!("{id}.xml"));
            std::fs::write(&xp, voc_xml(&file, im, labels)).map_err(io_err(&xp))?;
            list.push_str(&id);
            list.push('\n');
        }
        let lp = main.join(format!("{split}.txt"));
        std::fs::write(&lp, list).map_err(io_err(&lp))?;
    }
    Ok(())
}
