//! Datasets as people have them, end to end through `kestrel data` and `kestrel train detect`:
//! one small synthetic dataset converted to every layout Kestrel writes loads as the same dataset
//! (same pictures in the same order, same labels, same boxes) and trains to the same metrics with
//! the same seed.

use std::path::{Path, PathBuf};

use kestrel_e2e::{kestrel, run, run_ok};
use kestrel_trainer::data::annotations::{self, DetectDataset};

fn names(ds: &DetectDataset) -> Vec<Vec<String>> {
    ds.splits()
        .iter()
        .map(|(_, s)| {
            s.iter()
                .map(|i| {
                    let stem = i.path.file_stem().unwrap().to_string_lossy().into_owned();
                    // The VOC writer gives the validation pictures (000000.png again) `_1` names.
                    stem.split('_').next().unwrap().to_string()
                })
                .collect()
        })
        .collect()
}

fn assert_same(a: &DetectDataset, b: &DetectDataset) {
    assert_eq!(a.labels, b.labels, "{}", b.layout);
    assert_eq!(names(a), names(b), "{}", b.layout);
    for ((_, x), (_, y)) in a.splits().iter().zip(b.splits()) {
        for (p, q) in x.iter().zip(y) {
            assert_eq!((p.width, p.height), (q.width, q.height));
            assert_eq!(p.objects.len(), q.objects.len(), "{}", q.path.display());
            for (o, r) in p.objects.iter().zip(&q.objects) {
                assert_eq!(o.class, r.class);
                let (o, r): ([f32; 4], [f32; 4]) = (o.bbox.into(), r.bbox.into());
                assert!(
                    o.iter().zip(&r).all(|(u, v)| (u - v).abs() < 1e-3),
                    "{o:?} vs {r:?} in {}",
                    q.path.display()
                );
            }
        }
    }
}

/// The headline metrics line of `kestrel train detect`.
fn metrics_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("val mAP@0.5"))
        .unwrap_or_else(|| panic!("no metrics in {stdout}"))
        .to_string()
}

#[test]
fn one_dataset_in_every_layout_loads_and_trains_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = tmp.path().join("yolo");
    let size = ["--width", "160", "--height", "120"];
    run_ok(
        kestrel(&cache)
            .args(["synth", "detect", "--preset", "multi", "--seed", "5"])
            .args(["--count", "24", "--val-count", "8"])
            .args(size)
            .arg("--out")
            .arg(&src),
    );
    let (check, _) = run_ok(kestrel(&cache).args(["data", "check"]).arg(&src));
    assert!(check.contains("layout: YOLO (Ultralytics)"), "{check}");
    assert!(check.contains("no problems found"), "{check}");
    let source = annotations::load(&src, true).unwrap();

    let mut dirs: Vec<(String, PathBuf)> = vec![("yolo".into(), src.clone())];
    for (to, layout) in [
        ("coco", "layout: COCO"),
        ("voc", "layout: Pascal VOC"),
        ("yolo", "layout: YOLO (Ultralytics)"),
    ] {
        let out = tmp.path().join(format!("as-{to}"));
        run_ok(
            kestrel(&cache)
                .args(["data", "convert"])
                .arg(&src)
                .args(["--to", to, "--out"])
                .arg(&out),
        );
        let (check, _) = run_ok(kestrel(&cache).args(["data", "check"]).arg(&out));
        assert!(check.contains(layout), "{to}: {check}");
        assert_same(&source, &annotations::load(&out, true).unwrap());
        dirs.push((to.into(), out));
    }

    // Same seed, same data: the same model, whatever the layout.
    let train = |data: &Path, name: &str| {
        let out = tmp.path().join(format!("run-{name}"));
        let (stdout, _) = run_ok(
            kestrel(&cache)
                .args(["train", "detect", "--data"])
                .arg(data)
                .arg("--out")
                .arg(&out)
                .args(["--head", "grid", "--epochs", "2", "--patience", "0"])
                .args(["--seed", "4", "--batch-size", "8"])
                .args(size),
        );
        metrics_line(&stdout)
    };
    let first = train(&dirs[0].1, "yolo-source");
    for (name, dir) in &dirs[1..3] {
        assert_eq!(train(dir, name), first, "{name}");
    }
}

#[test]
fn data_check_lists_every_problem_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("images")).unwrap();
    std::fs::create_dir_all(d.join("labels")).unwrap();
    image::RgbImage::new(32, 16)
        .save(d.join("images/a.png"))
        .unwrap();
    std::fs::write(d.join("data.yaml"), "names: [cat]\n").unwrap();
    std::fs::write(
        d.join("labels/a.txt"),
        "0 0.5 0.5 0.5 0.5\n0 0.5 0.5 two 0.5\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = run(kestrel(&d.join("cache")).args(["data", "check"]).arg(d));
    assert!(!ok, "a problem must fail the check: {stdout}");
    let want = format!(
        "{}:2: `two` is not a finite number",
        d.join("labels/a.txt").display()
    );
    assert!(stdout.contains(&want), "{stdout}");
    assert!(stderr.contains("1 problem (listed above)"), "{stderr}");
    // A classification folder is recognised too.
    let c = d.join("cls");
    for (k, class) in ["cat", "dog"].iter().enumerate() {
        std::fs::create_dir_all(c.join(class).join("nested")).unwrap();
        image::RgbImage::new(8, 8)
            .save(c.join(class).join("nested").join(format!("{k}.png")))
            .unwrap();
    }
    let (stdout, _) = run_ok(kestrel(&d.join("cache")).args(["data", "check"]).arg(&c));
    assert!(
        stdout.contains("layout: ImageFolder (classification)"),
        "{stdout}"
    );
    assert!(stdout.contains("classes (2): cat, dog"), "{stdout}");
}
