//! The readers and writers of every layout, on tiny datasets the tests write themselves.

use std::path::Path;

use crate::data::annotated::{AnnotatedImage, Object};
use kestrel_shared::BBox;
use serde_json::{Value, json};

use super::yolo::parse_data_yaml;
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
        assert_eq!(parse_data_yaml(text).unwrap().1, names(want), "{text}");
    }
    let bad: &[(&str, usize, &str)] = &[
        ("nc: 2\n", 1, "no `names:`"),
        ("names: [a, b]\nnc: 3\n", 2, "nc is 3 but names has 2"),
        ("names:\n  0: a\n  2: c\n", 1, "without gaps"),
        ("names: a\n", 1, "must be a list"),
        ("names: []\n", 1, "empty"),
    ];
    for (text, line, fragment) in bad {
        let (l, m) = parse_data_yaml(text).unwrap_err();
        assert_eq!(l, Some(*line), "{text}");
        assert!(m.contains(fragment), "{text}: {m}");
    }
    // Our own writer reads back, awkward names included.
    let labels = names(&["plain", "a: b", "it's", " pad", "-dash", "[x]"]);
    assert_eq!(
        parse_data_yaml(&data_yaml_text(&labels, true, false))
            .unwrap()
            .1,
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
            "bbox[1]: invalid type: string",
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
        err.contains("is 30x30") && err.contains("the annotations say 50x40"),
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
            ignored: Vec::new(),
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
        out.join("images/train/pic.png").is_file() && out.join("images/train/pic_1.png").is_file()
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

// ---------------------------------------------------------------------------------------------
// Layouts as people have them.

fn rel_names(v: &[AnnotatedImage]) -> Vec<String> {
    v.iter()
        .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn near(b: BBox, want: [f32; 4]) -> bool {
    let got: [f32; 4] = b.into();
    got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-3)
}

/// Roboflow's YOLO export: `../` paths relative to the yaml that do not exist from there.
#[test]
fn roboflow_yolo_export() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(
        &r.join("data.yaml"),
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: 2\nnames: ['cat', 'dog']\n\nroboflow:\n  workspace: w\n  project: p\n  version: 1\n  license: CC BY 4.0\n  url: https://example.invalid/p/1\n",
    );
    png(&r.join("train/images/a.png"), 40, 20);
    write(&r.join("train/labels/a.txt"), "1 0.5 0.5 0.5 0.5\n");
    png(&r.join("valid/images/b.png"), 40, 20);
    write(&r.join("valid/labels/b.txt"), "0 0.25 0.5 0.5 1\n");
    png(&r.join("test/images/c.png"), 40, 20);
    let ds = load(r, true).unwrap();
    assert_eq!(ds.layout, Layout::RoboflowYolo);
    assert_eq!(ds.labels, names(&["cat", "dog"]));
    assert_eq!(rel_names(&ds.train), ["a.png"]);
    assert_eq!(rel_names(&ds.val), ["b.png"]);
    assert_eq!(rel_names(&ds.test), ["c.png"]);
    assert!(near(ds.val[0].objects[0].bbox, [0.0, 0.0, 20.0, 20.0]));
    // Each `../` fallback is said.
    assert_eq!(ds.notes.len(), 4, "{:?}", ds.notes);
    assert!(ds.notes[3].contains("1 of 3 pictures have no label file"));
    assert!(ds.notes[0].contains("Roboflow") && ds.notes[0].contains("../train/images"));
    // Without data.yaml's splits the folders say the same.
    write(&r.join("data.yaml"), "names: [cat, dog]\n");
    let ds2 = load(r, true).unwrap();
    assert_eq!(
        (
            rel_names(&ds2.train),
            rel_names(&ds2.val),
            rel_names(&ds2.test)
        ),
        (
            rel_names(&ds.train),
            rel_names(&ds.val),
            rel_names(&ds.test)
        )
    );
    // A path that exists nowhere is an error naming the yaml and the key.
    write(
        &r.join("data.yaml"),
        "train: ../nowhere/images\nnames: [cat, dog]\n",
    );
    let err = load(r, false).unwrap_err().to_string();
    assert!(
        err.contains("data.yaml") && err.contains("train: `../nowhere/images` not found"),
        "{err}"
    );
}

/// data.yaml with `path`, a list file, a YAML list of sources and names as a map.
#[test]
fn data_yaml_path_lists_and_map_names() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let root = r.join("set");
    png(&root.join("images/one/a.png"), 10, 10);
    png(&root.join("images/two/b.png"), 10, 10);
    png(&root.join("images/three/c.png"), 10, 10);
    for n in ["one/a", "two/b", "three/c"] {
        write(&root.join(format!("labels/{n}.txt")), "0 0.5 0.5 0.2 0.2\n");
    }
    write(
        &root.join("val.txt"),
        "./images/three/c.png\n\nimages/three/gone.png\n",
    );
    write(
        &r.join("cfg/data.yaml"),
        "path: ../set\ntrain: [images/one, images/two]\nval: val.txt\nnames:\n  0: person\n  1: car\nnc: 2\n",
    );
    let ds = load(&r.join("cfg/data.yaml"), false).unwrap();
    assert!(ds.notes.is_empty(), "{:?}", ds.notes);
    assert_eq!(ds.labels, names(&["person", "car"]));
    assert_eq!(rel_names(&ds.train), ["a.png", "b.png"]);
    assert_eq!(rel_names(&ds.val), ["c.png"]);
    // The list's missing picture: file and line.
    assert_eq!(ds.issues.len(), 1);
    let shown = ds.issues[0].to_string();
    assert!(
        shown.contains("val.txt:3: picture `images/three/gone.png` not found"),
        "{shown}"
    );
    let err = load(&r.join("cfg/data.yaml"), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("val.txt:3:"), "{err}");
}

#[test]
fn label_files_are_found_as_ultralytics_finds_them() {
    use super::yolo::label_path;
    assert_eq!(
        label_path(Path::new("/d/images/train/images/a.jpg")),
        Path::new("/d/images/train/labels/a.txt")
    );
    assert_eq!(
        label_path(Path::new("/d/train/images/x/b.png")),
        Path::new("/d/train/labels/x/b.txt")
    );
    assert_eq!(
        label_path(Path::new("/d/pics/c.jpg")),
        Path::new("/d/pics/c.txt")
    );
}

#[test]
fn polygon_lines_become_their_bounding_box() {
    let d = yolo_one("2 0.1 0.2 0.5 0.1 0.4 0.8 0.2 0.6\n");
    let ds = load(d.path(), true).unwrap();
    let o = a_objects(&ds);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].class, 2);
    // x 0.1..0.5 of 40, y 0.1..0.8 of 20.
    assert!(near(o[0].bbox, [4.0, 2.0, 20.0, 16.0]), "{:?}", o[0].bbox);
    // An even count of numbers is neither a box nor a polygon; points on one line have no area.
    for bad in ["0 0.1 0.1 0.2 0.2 0.3 0.3 0.4", "0 0.1 0.5 0.2 0.5 0.3 0.5"] {
        let d = yolo_one(&format!("{bad}\n"));
        let err = load(d.path(), true).unwrap_err().to_string();
        assert!(
            err.contains("labels/a.txt:1:") && err.contains("polygon") | err.contains("no area"),
            "{bad}: {err}"
        );
    }
}

/// A Roboflow COCO export: per-split `_annotations.coco.json`, the project as category 0.
fn roboflow_coco(r: &Path) {
    png(&r.join("train/p.png"), 50, 40);
    png(&r.join("valid/q.png"), 50, 40);
    let cats = json!([
        {"id": 0, "name": "cells", "supercategory": "none"},
        {"id": 1, "name": "RBC", "supercategory": "cells"},
        {"id": 2, "name": "WBC", "supercategory": "cells"},
    ]);
    let train = json!({
        "info": {"year": "2024"}, "licenses": [],
        "categories": cats,
        "images": [{"id": 0, "license": 1, "file_name": "p.png", "height": 40, "width": 50}],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 2, "bbox": [10, 5, 20, 10], "area": 200, "segmentation": [], "iscrowd": 0},
            {"id": 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 8, 8], "area": 64, "segmentation": [], "iscrowd": 1},
        ],
    });
    let valid = json!({
        "categories": cats,
        "images": [{"id": 0, "file_name": "q.png", "height": 40, "width": 50}],
        "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}],
    });
    write(&r.join("train/_annotations.coco.json"), &train.to_string());
    write(&r.join("valid/_annotations.coco.json"), &valid.to_string());
}

#[test]
fn roboflow_coco_export_drops_the_supercategory_and_flags_crowds() {
    let d = tempfile::tempdir().unwrap();
    roboflow_coco(d.path());
    let ds = load(d.path(), true).unwrap();
    assert_eq!(ds.layout, Layout::RoboflowCoco);
    assert_eq!(ds.labels, names(&["RBC", "WBC"]));
    assert!(
        ds.notes.iter().any(|n| n.contains("id 0 `cells`")),
        "{:?}",
        ds.notes
    );
    let p = &ds.train[0];
    assert_eq!(
        p.objects,
        vec![Object {
            class: 1,
            bbox: BBox::new(10.0, 5.0, 30.0, 15.0)
        }]
    );
    // The crowd is kept aside, never among the objects.
    assert_eq!(p.ignored.len(), 1);
    assert_eq!(p.ignored[0].class, 0);
    assert_eq!(ds.val[0].objects[0].class, 0);
}

#[test]
fn coco_file_of_any_name_with_annotations_option() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    png(&r.join("pics/images/p.png"), 50, 40);
    let doc = json!({
        "images": [{"id": 1, "file_name": "p.png", "width": 50, "height": 40}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 7, "name": "bee"}],
    });
    write(&r.join("labels/export-2024.json"), &doc.to_string());
    let ds = load_with(
        &r.join("pics"),
        Some(&r.join("labels/export-2024.json")),
        true,
    )
    .unwrap();
    assert_eq!(ds.labels, names(&["bee"]));
    assert!(ds.train[0].path.ends_with("pics/images/p.png"));
    // Found by its keys in a folder too, whatever its name.
    write(&r.join("pics/mine.json"), &doc.to_string());
    let found = find_layout(&r.join("pics")).unwrap();
    assert_eq!(found.layout(), Layout::Coco);
    assert!(
        found.describe().contains("mine.json"),
        "{}",
        found.describe()
    );
    // A missing --annotations file is named.
    let err = load_with(&r.join("pics"), Some(&r.join("nope.json")), true).unwrap_err();
    assert!(err.to_string().contains("nope.json"), "{err}");
}

/// A VOC folder: 1-based boxes, a difficult object, ImageSets.
fn voc_dir(r: &Path) {
    png(&r.join("JPEGImages/000001.png"), 50, 40);
    png(&r.join("JPEGImages/000002.png"), 30, 30);
    write(
        &r.join("Annotations/000001.xml"),
        "<annotation>\n  <filename>000001.png</filename>\n  <size><width>50</width><height>40</height><depth>3</depth></size>\n  <object>\n    <name>zebra</name><difficult>0</difficult>\n    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>50</xmax><ymax>40</ymax></bndbox>\n  </object>\n  <object>\n    <name>ant</name><difficult>1</difficult>\n    <bndbox><xmin>11</xmin><ymin>6</ymin><xmax>20</xmax><ymax>15</ymax></bndbox>\n  </object>\n</annotation>\n",
    );
    write(
        &r.join("Annotations/000002.xml"),
        "<annotation><filename>000002.png</filename><object><name>bee</name><bndbox><xmin>3.5</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox><pose>Left</pose></object></annotation>",
    );
    write(&r.join("ImageSets/Main/train.txt"), "000002\n");
    write(&r.join("ImageSets/Main/val.txt"), "000001\n");
}

#[test]
fn pascal_voc_layout() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    voc_dir(r);
    let ds = load(r, true).unwrap();
    assert_eq!((ds.layout, ds.format), (Layout::Voc, Format::Voc));
    assert_eq!(ds.labels, names(&["ant", "bee", "zebra"]));
    assert_eq!(rel_names(&ds.train), ["000002.png"]);
    assert_eq!(rel_names(&ds.val), ["000001.png"]);
    let v = &ds.val[0];
    assert_eq!(v.objects.len(), 1);
    assert_eq!(v.objects[0].class, 2);
    assert!(near(v.objects[0].bbox, [0.0, 0.0, 50.0, 40.0]));
    assert_eq!(v.ignored.len(), 1);
    assert!(near(v.ignored[0].bbox, [10.0, 5.0, 20.0, 15.0]));
    assert!(near(ds.train[0].objects[0].bbox, [2.5, 1.0, 10.0, 12.0]));
    // Without ImageSets: everything trains, and a note says so.
    std::fs::remove_dir_all(r.join("ImageSets")).unwrap();
    let ds = load(r, true).unwrap();
    assert_eq!(rel_names(&ds.train), ["000001.png", "000002.png"]);
    assert!(ds.val.is_empty());
    assert!(
        ds.notes.iter().any(|n| n.contains("ImageSets")),
        "{:?}",
        ds.notes
    );
    // A classes.txt (Kestrel's writer adds one) keeps the order; a name it lacks is an error.
    write(&r.join("classes.txt"), "zebra\nbee\nant\nowl\n");
    assert_eq!(
        load(r, true).unwrap().labels,
        names(&["zebra", "bee", "ant", "owl"])
    );
    write(&r.join("classes.txt"), "zebra\nbee\n");
    let err = load(r, true).unwrap_err().to_string();
    assert!(err.contains("classes.txt: objects named `ant`"), "{err}");
}

#[test]
fn bad_voc_files_name_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    voc_dir(r);
    // Malformed XML: the picture is skipped, with the position.
    write(
        &r.join("Annotations/000002.xml"),
        "<annotation>\n<object><name>bee</name>\n</annotation>\n",
    );
    let ds = load(r, false).unwrap();
    assert_eq!(ds.issues.len(), 1);
    assert_eq!(ds.issues[0].kind, IssueKind::Malformed);
    assert_eq!(ds.issues[0].line, Some(3));
    assert!(ds.train.is_empty(), "nothing trains on a half-read file");
    let err = load(r, true).unwrap_err().to_string();
    assert!(err.contains("000002.xml:3: not well-formed XML"), "{err}");
    // A bad number: the line of its element.
    write(
        &r.join("Annotations/000002.xml"),
        "<annotation>\n<object><name>bee</name>\n<bndbox><xmin>3</xmin>\n<ymin>two</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>\n</annotation>\n",
    );
    let err = load(r, true).unwrap_err().to_string();
    assert!(
        err.contains("000002.xml:4: <ymin> `two` is not a number"),
        "{err}"
    );
    // A list naming an id without annotation file.
    write(&r.join("ImageSets/Main/train.txt"), "000001\n000009\n");
    write(&r.join("ImageSets/Main/val.txt"), "");
    let err = load(r, true).unwrap_err().to_string();
    assert!(err.contains("train.txt:2: no annotation file"), "{err}");
}

#[test]
fn coco_category_missing_from_categories_is_named() {
    let d = tempfile::tempdir().unwrap();
    roboflow_coco(d.path());
    let p = d.path().join("valid/_annotations.coco.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"category_id\":1", "\"category_id\":5");
    write(&p, &text);
    let err = load(d.path(), true).unwrap_err().to_string();
    assert!(
        err.contains("_annotations.coco.json: annotation id 0 (annotations[0]): category_id 5 is not in `categories`"),
        "{err}"
    );
}

/// Pictures as phones store them: the pixels sideways, an EXIF tag to turn them. Boxes are given
/// for the picture as displayed, and loaded size, pixels and boxes must agree.
#[test]
fn exif_rotated_picture_loads_as_displayed() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    // Stored 40x20: red in the stored top-left 10x10.
    let stored = image::RgbImage::from_fn(40, 20, |x, y| {
        if x < 10 && y < 10 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode_image(&stored)
        .unwrap();
    let rotated = kestrel_shared::picture::with_exif_orientation(&jpeg, 6).unwrap();
    write(&r.join("data.yaml"), "names: [red]\n");
    std::fs::create_dir_all(r.join("images")).unwrap();
    std::fs::write(r.join("images/phone.jpg"), rotated).unwrap();
    // Displayed 20x40 (rotated 90° clockwise): the red square is at the top right.
    write(&r.join("labels/phone.txt"), "0 0.75 0.125 0.5 0.25\n");
    let ds = load(r, true).unwrap();
    let im = &ds.train[0];
    assert_eq!((im.width, im.height), (20, 40));
    let b = im.objects[0].bbox;
    assert!(near(b, [10.0, 0.0, 20.0, 10.0]), "{b:?}");
    let pixels = kestrel_shared::PreprocessSpec::load(&im.path).unwrap();
    assert_eq!(pixels.dimensions(), (20, 40));
    let inside = pixels.get_pixel(15, 5);
    let outside = pixels.get_pixel(5, 5);
    assert!(inside[0] > 200 && inside[2] < 60, "{inside:?}");
    assert!(outside[2] > 200 && outside[0] < 60, "{outside:?}");
}

#[test]
fn layouts_are_told_apart() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    png(&r.join("cls/cat/a.png"), 8, 8);
    png(&r.join("cls/dog/deep/b.png"), 8, 8);
    assert_eq!(
        find_layout(&r.join("cls")).unwrap().layout(),
        Layout::ImageFolder
    );
    let err = load(&r.join("cls"), false).unwrap_err();
    assert!(
        matches!(err, AnnotationError::ClassificationFolder(_)),
        "{err}"
    );
    voc_dir(&r.join("voc"));
    assert_eq!(find_layout(&r.join("voc")).unwrap().layout(), Layout::Voc);
    roboflow_coco(&r.join("rf"));
    assert_eq!(
        find_layout(&r.join("rf")).unwrap().layout(),
        Layout::RoboflowCoco
    );
}

/// The issue's target: the same small dataset written in each layout loads as the same dataset
/// (same pictures in the same order, same labels, same boxes).
#[test]
fn the_same_dataset_in_every_layout_loads_the_same() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    let labels = names(&["ant", "bee", "cat"]);
    let mut all = Vec::new();
    for k in 0..6u32 {
        let (w, h) = (40 + 4 * k, 30 + 2 * k);
        let path = r.join(format!("src/p{k}.png"));
        png(&path, w, h);
        let objects = (0..=k % 3)
            .map(|j| Object {
                class: ((k + j) % 3) as usize,
                bbox: BBox::new(
                    1.0 + j as f32 * 3.0,
                    2.0 + j as f32,
                    20.0 + j as f32 * 4.0,
                    h as f32 - 1.0,
                ),
            })
            .collect();
        all.push(AnnotatedImage {
            path,
            width: w,
            height: h,
            objects,
            ignored: Vec::new(),
        });
    }
    write_yolo(&r.join("yolo"), &labels, &all[..4], &all[4..]).unwrap();
    let source = load(&r.join("yolo"), true).unwrap();
    let mut loaded = vec![source.clone()];
    for f in [Format::Coco, Format::Voc, Format::Yolo] {
        let out = r.join(format!("out-{f}"));
        super::write(f, &out, &source).unwrap();
        let ds = load(&out, true).unwrap();
        assert_eq!(ds.format, f);
        loaded.push(ds);
    }
    for ds in &loaded[1..] {
        assert_eq!(ds.labels, source.labels, "{}", ds.format);
        for ((_, a), (_, b)) in source.splits().iter().zip(ds.splits()) {
            assert_eq!(rel_names(a), rel_names(b), "{}", ds.format);
            assert_same_objects(a, b);
        }
        assert!(
            ds.issues.is_empty() && ds.notes.is_empty(),
            "{:?}",
            ds.notes
        );
    }
}

/// The official COCO download: `annotations/instances_<split>.json`, pictures in `<split>/`.
#[test]
fn official_coco_layout_is_found_per_split() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    png(&r.join("train2017/a.png"), 20, 20);
    png(&r.join("val2017/b.png"), 20, 20);
    let doc = |file: &str| {
        json!({
            "images": [{"id": 1, "file_name": file, "width": 20, "height": 20}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 5, 5], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
        })
        .to_string()
    };
    write(
        &r.join("annotations/instances_train2017.json"),
        &doc("a.png"),
    );
    write(&r.join("annotations/instances_val2017.json"), &doc("b.png"));
    // Captions have no categories: not a detection file.
    write(
        &r.join("annotations/captions_train2017.json"),
        r#"{"images": [], "annotations": []}"#,
    );
    let ds = load(r, true).unwrap();
    assert_eq!(ds.layout, Layout::Coco);
    assert_eq!(rel_names(&ds.train), ["a.png"]);
    assert_eq!(rel_names(&ds.val), ["b.png"]);
    // `person` is its own supercategory but has annotations: kept.
    assert_eq!(ds.labels, names(&["person"]));
}

/// `val:` naming the training folder (a quick setup): each picture is read once, with a note.
#[test]
fn a_picture_in_two_splits_is_read_once_with_a_note() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    png(&r.join("images/a.png"), 10, 10);
    write(&r.join("labels/a.txt"), "0 0.5 0.5 0.2 0.2\n");
    write(
        &r.join("data.yaml"),
        "train: images\nval: images\nnames: [x]\n",
    );
    let ds = load(r, true).unwrap();
    assert_eq!((ds.train.len(), ds.val.len()), (1, 0));
    assert!(
        ds.notes
            .iter()
            .any(|n| n.contains("1 pictures of val were listed before")),
        "{:?}",
        ds.notes
    );
}
