//! `kestrel data check`: read a dataset in any supported layout without training and say what is
//! in it (layout, classes, pictures and objects per split and class, box sizes) and every problem
//! as `file:line: what`, so a bad export is found before an hour of training on it.

use std::fmt;
use std::path::Path;

use crate::data::annotated::AnnotatedImage;

use super::annotations::{self, DetectDataset, Layout, find_layout};
use super::folder::Dataset;

/// What `kestrel data check` found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The layout and the files it was found by (`None` when not even that could be read).
    pub found: Option<String>,
    /// Class names.
    pub labels: Vec<String>,
    /// Per split (train, val, test): name, pictures, objects per class, ignored regions.
    pub splits: Vec<SplitCount>,
    /// Box widths and heights in pixels (kept objects of every split).
    pub boxes: Option<BoxSizes>,
    /// What the loader decided on its own.
    pub notes: Vec<String>,
    /// Every problem, `file:line: what`; each one is an error (data that will not be used as
    /// written).
    pub problems: Vec<String>,
}

/// Counts of one split.
#[derive(Debug, Clone)]
pub struct SplitCount {
    /// train, val or test.
    pub name: &'static str,
    /// Pictures.
    pub pictures: usize,
    /// Objects (or, for an ImageFolder, pictures) per class.
    pub per_class: Vec<usize>,
    /// Crowd / difficult regions (not trained on).
    pub ignored: usize,
}

/// A summary of box sizes.
#[derive(Debug, Clone, Copy)]
pub struct BoxSizes {
    /// Number of boxes.
    pub count: usize,
    /// Smallest, median and largest width in pixels.
    pub width: [f32; 3],
    /// Smallest, median and largest height in pixels.
    pub height: [f32; 3],
    /// Smallest, median and largest share of the picture's area.
    pub area: [f32; 3],
    /// Boxes under 8 pixels on their shorter side (hard for a stride-16 detector).
    pub tiny: usize,
}

impl Report {
    /// Whether there is any problem (then `kestrel data check` exits non-zero).
    pub fn has_errors(&self) -> bool {
        !self.problems.is_empty()
    }
}

fn min_med_max(mut v: Vec<f32>) -> [f32; 3] {
    v.sort_by(f32::total_cmp);
    [v[0], v[v.len() / 2], v[v.len() - 1]]
}

fn box_sizes(images: &[&AnnotatedImage]) -> Option<BoxSizes> {
    let mut w = Vec::new();
    let mut h = Vec::new();
    let mut a = Vec::new();
    for im in images {
        let pic = (im.width.max(1) * im.height.max(1)) as f32;
        for o in &im.objects {
            w.push(o.bbox.width());
            h.push(o.bbox.height());
            a.push(o.bbox.area() / pic);
        }
    }
    if w.is_empty() {
        return None;
    }
    let tiny = w.iter().zip(&h).filter(|(w, h)| w.min(**h) < 8.0).count();
    Some(BoxSizes {
        count: w.len(),
        width: min_med_max(w),
        height: min_med_max(h),
        area: min_med_max(a),
        tiny,
    })
}

fn detect_report(found: String, ds: &DetectDataset) -> Report {
    let splits = ds
        .splits()
        .iter()
        .filter(|(name, s)| !s.is_empty() || *name == "train")
        .map(|(name, s)| SplitCount {
            name,
            pictures: s.len(),
            per_class: ds.counts(s),
            ignored: s.iter().map(|i| i.ignored.len()).sum(),
        })
        .collect();
    let all: Vec<&AnnotatedImage> = ds.splits().iter().flat_map(|(_, s)| s.iter()).collect();
    Report {
        found: Some(found),
        labels: ds.labels.clone(),
        splits,
        boxes: box_sizes(&all),
        notes: ds.notes.clone(),
        problems: ds.issues.iter().map(ToString::to_string).collect(),
    }
}

fn folder_report(found: String, root: &Path) -> Report {
    let ds = match Dataset::scan(root, 0.0, 0) {
        Ok(d) => d,
        Err(e) => return failed(Some(found), e.to_string()),
    };
    // Every picture's header, so an unreadable file shows here rather than mid-training.
    let problems = ds
        .train
        .iter()
        .chain(&ds.val)
        .filter_map(|s| {
            kestrel_shared::picture::dimensions(&s.path)
                .err()
                .map(|e| format!("{}: cannot read the picture ({e})", s.path.display()))
        })
        .collect();
    let splits = [("train", &ds.train), ("val", &ds.val)]
        .into_iter()
        .filter(|(name, s)| !s.is_empty() || *name == "train")
        .map(|(name, s)| SplitCount {
            name,
            pictures: s.len(),
            per_class: ds.counts(s),
            ignored: 0,
        })
        .collect();
    Report {
        found: Some(found),
        labels: ds.labels.clone(),
        splits,
        boxes: None,
        notes: Vec::new(),
        problems,
    }
}

fn failed(found: Option<String>, problem: String) -> Report {
    Report {
        found,
        labels: Vec::new(),
        splits: Vec::new(),
        boxes: None,
        notes: Vec::new(),
        problems: vec![problem],
    }
}

/// Read `data` (with the COCO file `annotations`, if given) in whatever layout it is and report.
/// Problems do not stop the reading: each bad annotation is listed; a dataset that cannot be
/// read at all is one problem.
pub fn check(data: &Path, annotations: Option<&Path>) -> Report {
    if annotations.is_some() {
        return match annotations::load_for_check(data, annotations) {
            Ok(ds) => detect_report(format!("{} (--annotations)", Layout::Coco), &ds),
            Err(e) => failed(None, e.to_string()),
        };
    }
    let found = match find_layout(data) {
        Ok(f) => f,
        Err(e) => return failed(None, e.to_string()),
    };
    let line = found.describe();
    if found.layout() == Layout::ImageFolder {
        return folder_report(line, data);
    }
    match annotations::load_for_check(data, None) {
        Ok(ds) => detect_report(line, &ds),
        Err(e) => failed(Some(line), e.to_string()),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(found) = &self.found {
            writeln!(f, "layout: {found}")?;
        }
        if !self.labels.is_empty() {
            writeln!(
                f,
                "classes ({}): {}",
                self.labels.len(),
                self.labels.join(", ")
            )?;
            let wide = self
                .labels
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(5)
                .max(8);
            write!(f, "  {:<wide$}", "")?;
            for s in &self.splits {
                write!(f, " {:>8}", s.name)?;
            }
            writeln!(f)?;
            write!(f, "  {:<wide$}", "pictures")?;
            for s in &self.splits {
                write!(f, " {:>8}", s.pictures)?;
            }
            writeln!(f)?;
            for (k, l) in self.labels.iter().enumerate() {
                write!(f, "  {l:<wide$}")?;
                for s in &self.splits {
                    write!(f, " {:>8}", s.per_class.get(k).copied().unwrap_or(0))?;
                }
                writeln!(f)?;
            }
            if self.splits.iter().any(|s| s.ignored > 0) {
                write!(f, "  {:<wide$}", "ignored")?;
                for s in &self.splits {
                    write!(f, " {:>8}", s.ignored)?;
                }
                writeln!(f, "  (crowd / difficult: not trained on)")?;
            }
        }
        if let Some(b) = &self.boxes {
            writeln!(
                f,
                "boxes: {} (min / median / max) width {:.0} / {:.0} / {:.0} px, height {:.0} / {:.0} / {:.0} px, area {:.2}% / {:.2}% / {:.2}% of the picture; {} under 8 px on a side",
                b.count,
                b.width[0],
                b.width[1],
                b.width[2],
                b.height[0],
                b.height[1],
                b.height[2],
                100.0 * b.area[0],
                100.0 * b.area[1],
                100.0 * b.area[2],
                b.tiny
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        if self.problems.is_empty() {
            writeln!(f, "no problems found")?;
        } else {
            let n = self.problems.len();
            writeln!(f, "{n} problem{}:", if n == 1 { "" } else { "s" })?;
            for p in &self.problems {
                writeln!(f, "{p}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_layout_counts_and_problems() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let png = |p: &Path| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            image::RgbImage::new(40, 20).save(p).unwrap();
        };
        png(&r.join("images/train/a.png"));
        png(&r.join("images/val/b.png"));
        std::fs::create_dir_all(r.join("labels/train")).unwrap();
        std::fs::write(
            r.join("labels/train/a.txt"),
            "0 0.5 0.5 0.5 0.5\n3 0.5 0.5 0.1 0.1\n",
        )
        .unwrap();
        std::fs::write(r.join("data.yaml"), "names: [cat, dog]\n").unwrap();
        let report = check(r, None);
        let text = report.to_string();
        assert!(text.contains("layout: YOLO (Ultralytics)"), "{text}");
        assert!(text.contains("classes (2): cat, dog"), "{text}");
        assert!(text.contains("labels/train/a.txt:2: class id 3"), "{text}");
        assert!(report.has_errors());
        assert_eq!(report.splits[0].per_class, vec![1, 0]);
        assert_eq!(report.boxes.unwrap().width[0], 20.0);
        // Nothing readable: one problem naming the folder.
        let empty = tempfile::tempdir().unwrap();
        let report = check(empty.path(), None);
        assert!(report.has_errors() && report.problems[0].contains("cannot tell the layout"));
    }
}
