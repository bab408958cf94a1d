//! `kestrel train classify` end to end: synthetic pictures, embeddings through the ONNX trunk
//! with tract (cached), a head trained in burn, and the run directory it leaves.

use kestrel_e2e::{kestrel, kill_after, run_ok};

fn metrics(run: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn trains_a_head_on_synthetic_shapes_and_reuses_the_embedding_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, cache) = (tmp.path().join("data"), tmp.path().join("cache"));
    run_ok(
        kestrel(&cache)
            .args([
                "synth",
                "classify",
                "--per-class",
                "20",
                "--size",
                "64",
                "--seed",
                "5",
                "--out",
            ])
            .arg(&data),
    );
    // A corrupt picture among the good ones is skipped and reported by name.
    std::fs::write(
        data.join("circle/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    // Any size is valid input, even 8x8: it is resized.
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 30, 30]))
        .save(data.join("square/tiny.png"))
        .unwrap();

    let run1 = tmp.path().join("run1");
    let (_, stderr) = run_ok(
        kestrel(&cache)
            .args(["train", "classify", "--fine-tune-blocks", "0"])
            .args(["--epochs", "25", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&run1),
    );
    assert!(stderr.contains("broken.png"), "{stderr}");
    let m = metrics(&run1);
    assert_eq!(m["images_skipped"], 1);
    assert_eq!(m["images_used"], 81);
    assert_eq!(m["embedding_cache_hits"], 0);
    let acc = m["val_accuracy"].as_f64().unwrap();
    // 12 validation pictures of 4 classes (chance: 0.25); 64-pixel shapes with 20 per class.
    assert!(acc >= 0.6, "validation accuracy {acc} on 4 easy shapes");
    assert_eq!(m["val"]["confusion"].as_array().unwrap().len(), 4);
    for f in [
        "head.bpk",
        "head.safetensors",
        "config.json",
        "labels.txt",
        "history.csv",
        "curves.png",
        "confusion.png",
    ] {
        assert!(run1.join(f).exists(), "{f} missing");
    }
    assert_eq!(
        std::fs::read_to_string(run1.join("labels.txt")).unwrap(),
        "circle\ncross\nsquare\ntriangle\n"
    );
    // The head also as safetensors in PyTorch's layout: a linear layer's weight is [out, in].
    let st = std::fs::read(run1.join("head.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt", "{header}");
    let tensors: Vec<(&String, &serde_json::Value)> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .collect();
    assert!(tensors.len() >= 2, "{header}");
    for (name, t) in &tensors {
        assert_eq!(t["dtype"], "F32", "{name}: {t}");
        let end = t["data_offsets"][1].as_u64().unwrap() as usize;
        assert!(8 + n + end <= st.len(), "{name}: {t}");
    }
    let first = tensors
        .iter()
        .find_map(|(name, t)| {
            let shape: Vec<u64> = t["shape"]
                .as_array()?
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            (name.ends_with("weight") && shape.len() == 2 && shape.contains(&1280)).then_some(shape)
        })
        .unwrap_or_else(|| panic!("no linear weight on the 1280 features: {header}"));
    assert_eq!(first[1], 1280, "[out, in] as PyTorch stores it: {first:?}");
    let history = std::fs::read_to_string(run1.join("history.csv")).unwrap();
    assert!(history.starts_with("epoch,train_loss,train_accuracy,val_loss,val_accuracy\n"));
    assert!(history.lines().count() >= 2);
    let results = std::fs::read_to_string(run1.join("results.csv")).unwrap();
    assert!(
        results.starts_with("epoch,phase,train_loss,val_loss,train_accuracy,val_accuracy,lr\n"),
        "{results}"
    );
    assert_eq!(
        results.lines().count(),
        history.lines().count(),
        "{results}"
    );

    // The trained run classifies new pictures (`predict --run`) and evaluates another folder.
    let fresh = tmp.path().join("fresh");
    run_ok(
        kestrel(&cache)
            .args([
                "synth",
                "classify",
                "--per-class",
                "6",
                "--size",
                "64",
                "--seed",
                "77",
                "--out",
            ])
            .arg(&fresh),
    );
    let (stdout, _) = run_ok(
        kestrel(&cache)
            .args(["predict", "--json", "--top", "2", "--run"])
            .arg(&run1)
            .arg(fresh.join("square/square_0000.png"))
            .arg(fresh.join("cross/cross_0001.png")),
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["top"].as_array().unwrap().len(), 2);
    assert!(
        ["circle", "cross", "square", "triangle"]
            .contains(&lines[0]["top"][0]["label"].as_str().unwrap())
    );
    let (stdout, _) = run_ok(
        kestrel(&cache)
            .arg("eval")
            .arg(&run1)
            .arg("--data")
            .arg(&fresh),
    );
    let eval: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(eval["images_used"], 24);
    let eval_acc = eval["accuracy"].as_f64().unwrap();
    assert!(eval_acc >= 0.6, "accuracy on fresh pictures {eval_acc}");

    // Other head settings: every embedding comes from the cache, the trunk never runs.
    let run2 = tmp.path().join("run2");
    run_ok(
        kestrel(&cache)
            .args([
                "train", "classify", "--head", "linear", "--lr", "0.01", "--epochs", "5", "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&run2),
    );
    assert_eq!(metrics(&run2)["embedding_cache_hits"], 81);

    // Augmented views are embedded once and cached too: with --views 2 the training set triples,
    // and a second run finds every view in the cache.
    let run_views = tmp.path().join("run-views");
    run_ok(
        kestrel(&cache)
            .args([
                "train", "classify", "--views", "2", "--epochs", "3", "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&run_views),
    );
    let mv = metrics(&run_views);
    assert_eq!(
        mv["train_images"].as_u64().unwrap(),
        3 * m["train_images"].as_u64().unwrap()
    );
    assert_eq!(
        mv["val_images"], m["val_images"],
        "validation is never augmented"
    );
    assert_eq!(mv["train_pictures"], m["train_pictures"]);
    assert_eq!(mv["train_pictures"], m["train_images"]);
    let run_views2 = tmp.path().join("run-views2");
    run_ok(
        kestrel(&cache)
            .args([
                "train", "classify", "--views", "2", "--epochs", "3", "--lr", "0.002", "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&run_views2),
    );
    let total = mv["train_images"].as_u64().unwrap() + mv["val_images"].as_u64().unwrap();
    assert_eq!(
        metrics(&run_views2)["embedding_cache_hits"]
            .as_u64()
            .unwrap(),
        total
    );

    // Same seed and settings: the same result.
    let run3 = tmp.path().join("run3");
    run_ok(
        kestrel(&cache)
            .args(["train", "classify", "--fine-tune-blocks", "0"])
            .args(["--epochs", "25", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&run3),
    );
    assert_eq!(
        std::fs::read_to_string(run1.join("history.csv")).unwrap(),
        std::fs::read_to_string(run3.join("history.csv")).unwrap()
    );

    // An earlier run is never overwritten: an existing --out is refused without --exist-ok, and
    // without --out runs are numbered under runs/classify/.
    let again = kestrel(&cache)
        .args(["train", "classify", "--epochs", "1", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&run3)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("--exist-ok") && err.contains("run3"), "{err}");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    for expected in ["train", "train2"] {
        let (stdout, _) = run_ok(
            kestrel(&cache)
                .current_dir(&work)
                .args(["train", "classify", "--epochs", "1", "--data"])
                .arg(&data),
        );
        let dir = work.join("runs/classify").join(expected);
        assert!(dir.join("history.csv").is_file(), "{stdout}");
        assert!(
            stdout.contains(&format!("runs/classify/{expected}")),
            "{stdout}"
        );
    }

    // --strict turns the corrupt picture into an error naming it.
    let out = kestrel(&cache)
        .args(["train", "classify", "--strict", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("run4"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.png"));
}

#[test]
fn a_single_class_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(
        kestrel(tmp.path())
            .args([
                "synth",
                "classify",
                "--per-class",
                "2",
                "--size",
                "32",
                "--out",
            ])
            .arg(&data),
    );
    for extra in ["cross", "square", "triangle"] {
        std::fs::remove_dir_all(data.join(extra)).unwrap();
    }
    let out = kestrel(tmp.path())
        .args(["train", "classify", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("single class `circle`"));
}

#[test]
fn fine_tuning_writes_phase_two_and_the_run_still_predicts() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, cache) = (tmp.path().join("data"), tmp.path().join("cache"));
    run_ok(
        kestrel(&cache)
            .args([
                "synth",
                "classify",
                "--per-class",
                "8",
                "--size",
                "64",
                "--seed",
                "9",
                "--out",
            ])
            .arg(&data),
    );
    let run = tmp.path().join("run");
    let (stdout, _) = run_ok(
        kestrel(&cache)
            .args([
                "train",
                "classify",
                "--epochs",
                "10",
                // Phase 2 on the top 2 blocks is the default: not asked for here.
                "--fine-tune-epochs",
                "2",
                "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&run),
    );
    assert!(stdout.contains("phase 1 (head only)"), "{stdout}");
    let m = metrics(&run);
    assert_eq!(m["phase2"]["blocks"], 2);
    assert_eq!(m["phase2"]["prefix_cut"], "features.15");
    assert_eq!(m["phase2"]["epochs_run"], 2);
    // The kept model is never worse on validation loss than the head it started from.
    assert!(
        m["phase2"]["val_loss"].as_f64().unwrap()
            <= m["phase1"]["val_loss"].as_f64().unwrap() + 1e-9
    );
    for f in ["top.bpk", "finetune-history.csv", "finetune-curves.png"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // predict --run goes through the prefix trunk and the fine-tuned top.
    let (stdout, _) = run_ok(
        kestrel(&cache)
            .args(["predict", "--json", "--run"])
            .arg(&run)
            .arg(data.join("triangle/triangle_0000.png")),
    );
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["top"].as_array().unwrap().len(), 4);
    let (stdout, _) = run_ok(
        kestrel(&cache)
            .arg("eval")
            .arg(&run)
            .arg("--data")
            .arg(&data),
    );
    let eval: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(eval["images_used"], 32);
    // Fine-tuning needs the pooled head.
    let out = kestrel(&cache)
        .args([
            "train",
            "classify",
            "--cut",
            "stride16",
            "--fine-tune-blocks",
            "2",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cut pooled"));

    // Killed in phase 2 and resumed: the uninterrupted run's rows and accuracy.
    let args = [
        "train",
        "classify",
        "--epochs",
        "10",
        "--fine-tune-blocks",
        "2",
        "--fine-tune-epochs",
        "6",
        "--data",
    ];
    let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
    run_ok(
        kestrel(&cache)
            .args(args)
            .arg(&data)
            .arg("--out")
            .arg(&whole),
    );
    let mut cmd = kestrel(&cache);
    cmd.args(args).arg(&data).arg("--out").arg(&cut);
    kill_after(&mut cmd, &cut.join("checkpoints/phase2"), 1);
    run_ok(kestrel(&cache).arg("train").arg("--resume").arg(&cut));
    let read = |run: &std::path::Path| std::fs::read_to_string(run.join("results.csv")).unwrap();
    assert_eq!(read(&cut), read(&whole));
    assert_eq!(
        metrics(&cut)["val_accuracy"],
        metrics(&whole)["val_accuracy"]
    );
}
