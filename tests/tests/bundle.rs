//! `kestrel export`: model bundles (trunk.onnx, head.onnx, model.onnx, manifest.json) from tiny
//! classification and detection runs, checked end to end.
//!
//! - the int8 head really multiplies in 8 bits once tract has optimised it, and is small;
//! - burn, tract on trunk + head, tract on model.onnx and onnxruntime on model.onnx agree (fp32 to
//!   1e-4; int8 to the same top-1 / detections, differences printed);
//! - the edge loader refuses every kind of bad bundle with a clear error and no panic;
//! - `--quantize all` and the percentile calibration give bundles that still agree with fp32.

use std::path::{Path, PathBuf};
use std::process::Command;

use kestrel_e2e::{bin, kestrel, python, run_ok, weights};
use kestrel_edge::bundle::inspect;
use kestrel_edge::{Bundle, BundleError, BundleOptions, ModelFormat, Threads};
use kestrel_shared::manifest::{
    CalibrationMethod, HEAD_FILE, HEAD_NNEF_FILE, MANIFEST_FILE, MODEL_FILE, Manifest,
    ManifestError, Precision, QuantizeMode, TRUNK_FILE, TRUNK_NNEF_FILE,
};
use kestrel_shared::{CutPoint, PreprocessSpec};
use kestrel_trainer::bundle::evaluate::same_detections;
use kestrel_trainer::bundle::{ExportOptions, export_bundle};
use kestrel_trainer::classify::run::TrainedClassifier;
use kestrel_trainer::detect::run::TrainedDetector;
use kestrel_trainer::detect::train::raw_outputs;
use kestrel_trainer::progress::Silent;
use kestrel_trainer::{Backend, Pretrained};

/// fp32 paths must agree to this (max abs difference on raw outputs).
const FP32_TOL: f32 = 1e-4;
/// int8 head against the float model, as a fraction of the largest float output.
const INT8_TOL: f32 = 0.08;
/// NNEF (what boards run) against the ONNX file it was converted from, relative to the largest
/// output: the same graph, so at most float rounding.
const NNEF_TOL: f32 = 1e-5;

/// stdout of a command that must succeed.
fn run_ok_stdout(c: &mut Command) -> String {
    run_ok(c).0
}

/// A tiny classification run: 4 shapes x 10 pictures of 64 px, on the frozen trunk unless
/// `extra` asks for phase 2.
fn classify_run(tmp: &Path, cache: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let data = tmp.join("shapes");
    if !data.exists() {
        run_ok_stdout(
            kestrel(cache)
                .args(["synth", "classify", "--per-class", "10", "--size", "64"])
                .args(["--seed", "4", "--out"])
                .arg(&data),
        );
    }
    let run = tmp.join(name);
    run_ok_stdout(
        kestrel(cache)
            .args(["train", "classify", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .args(["--epochs", "12", "--val-fraction", "0.25", "--units", "32"])
            .args(frozen_unless_asked(extra)),
    );
    run
}

/// `extra`, with `--fine-tune-blocks 0` unless it sets the blocks: these tests look at the
/// frozen-trunk bundle (phase 2 is the default for classification and the grid head).
fn frozen_unless_asked<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = extra.to_vec();
    if !args.contains(&"--fine-tune-blocks") {
        args.extend(["--fine-tune-blocks", "0"]);
    }
    args
}

/// A tiny detection run on 160x120 scenes (stride-16 map of 10x8 cells), or on 224x224 book
/// scenes for `single` (the attention form) and `single-dense` (the book's dense head), on the
/// frozen trunk.
fn detect_run(tmp: &Path, cache: &Path, name: &str, head: &str) -> PathBuf {
    let (preset, size): (&str, &[&str]) = match head {
        "single" | "single-dense" => ("book", &["--width", "224", "--height", "224"]),
        _ => ("multi", &["--width", "160", "--height", "120"]),
    };
    let head_args: &[&str] = match head {
        "single-dense" => &["--head", "single", "--single-form", "dense"],
        _ => &["--head", head],
    };
    let data = tmp.join(format!("scenes-{preset}"));
    if !data.exists() {
        run_ok_stdout(
            kestrel(cache)
                .args(["synth", "detect", "--preset", preset, "--seed", "3"])
                .args(["--count", "80", "--val-count", "16"])
                .args(size)
                .arg("--out")
                .arg(&data),
        );
    }
    let run = tmp.join(name);
    run_ok_stdout(
        kestrel(cache)
            .args(["train", "detect", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .args(frozen_unless_asked(head_args))
            .args(["--epochs", "10", "--patience", "0"])
            .args(size),
    );
    run
}

fn pretrained() -> Pretrained {
    Pretrained::load(&weights(), Backend::Flex).unwrap()
}

fn export(p: &Pretrained, run: &Path, out: &Path, cache: &Path, q: QuantizeMode) -> Manifest {
    let opts = ExportOptions {
        quantize: q,
        calibration: 16,
        method: CalibrationMethod::MinMax,
    };
    export_bundle(p, run, out, &opts, cache, &Silent)
        .unwrap()
        .manifest
}

#[test]
fn int8_head_multiplies_in_8_bits_is_small_and_keeps_its_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let run = classify_run(tmp.path(), &cache, "run", &[]);
    let bundle = tmp.path().join("bundle");
    let stdout = run_ok_stdout(
        kestrel(&cache)
            .arg("export")
            .arg(&run)
            .arg("--out")
            .arg(&bundle)
            .args(["--calibration", "20"]),
    );
    for f in [
        TRUNK_FILE,
        HEAD_FILE,
        MODEL_FILE,
        TRUNK_NNEF_FILE,
        HEAD_NNEF_FILE,
        MANIFEST_FILE,
    ] {
        assert!(bundle.join(f).is_file(), "{f} missing: {stdout}");
    }
    assert!(stdout.contains("accuracy fp32"), "{stdout}");
    let m = Manifest::read(&bundle).unwrap();
    assert_eq!(m.quantization.mode, QuantizeMode::Head);
    assert_eq!(m.files.head.precision, Precision::Int8);
    assert_eq!(m.files.trunk.precision, Precision::Float32);
    assert_eq!(m.quantization.calibration.unwrap().samples, 20);
    assert_eq!(m.quantization.layers.len(), 2, "dense head: hidden + out");
    assert_eq!(m.labels, ["circle", "cross", "square", "triangle"]);

    // After tract's optimisation, every matrix product of the head takes 8-bit operands, read
    // from ONNX or from NNEF (what the board runs): the same operators either way.
    let head = inspect(&bundle.join(HEAD_FILE)).unwrap();
    println!("head ops: {:?}", head.op_counts());
    for mm in &head.matmuls {
        println!("  {mm}");
    }
    assert_eq!(head.matmuls.len(), 2, "{:?}", head.matmuls);
    assert!(
        head.matmuls.iter().all(|m| m.is_8bit()),
        "{:?}",
        head.matmuls
    );
    // The input is quantized: by tract's QuantizeLinear, or inside Kestrel's int8 op.
    assert!(
        head.ops.iter().any(|o| o.starts_with("QuantizeLinear"))
            || head
                .matmuls
                .iter()
                .all(|m| m.kernel.starts_with("KestrelQ")),
        "{:?}",
        head.ops
    );
    let head_nnef = inspect(&bundle.join(HEAD_NNEF_FILE)).unwrap();
    assert_eq!(head_nnef.op_counts(), head.op_counts());
    assert_eq!(head_nnef.matmuls.len(), 2, "{:?}", head_nnef.matmuls);
    assert!(head_nnef.matmuls.iter().all(|m| m.is_8bit()));
    // The float trunk's are float, of course.
    let trunk = inspect(&bundle.join(TRUNK_FILE)).unwrap();
    assert!(trunk.matmuls.iter().all(|m| !m.is_8bit()));
    let trunk_nnef = inspect(&bundle.join(TRUNK_NNEF_FILE)).unwrap();
    assert_eq!(trunk_nnef.op_counts(), trunk.op_counts());

    // Size: the int8 head is at most 30% of the float one.
    let fp32 = tmp.path().join("fp32");
    run_ok_stdout(
        kestrel(&cache)
            .arg("export")
            .arg(&run)
            .arg("--out")
            .arg(&fp32)
            .args(["--quantize", "none"]),
    );
    let m32 = Manifest::read(&fp32).unwrap();
    assert_eq!(m32.files.head.precision, Precision::Float32);
    assert!(m32.quantization.layers.is_empty() && m32.quantization.calibration.is_none());
    let ratio = m.files.head.size as f64 / m32.files.head.size as f64;
    println!(
        "head.onnx: int8 {} bytes, fp32 {} bytes ({:.1}%)",
        m.files.head.size,
        m32.files.head.size,
        100.0 * ratio
    );
    assert!(ratio <= 0.30, "int8 head is {:.1}% of fp32", 100.0 * ratio);
    // The float trunk is the very file the run was trained on.
    assert_eq!(m.files.trunk.sha256, m32.files.trunk.sha256);

    // Metrics were measured in tract and written into the manifest; the head loses at most a point.
    let v = &m.metrics;
    println!("{v:?}");
    assert_eq!(v.headline, "accuracy");
    assert!(v.images >= 8, "{v:?}");
    let (a32, a8) = (v.fp32.accuracy.unwrap(), v.bundle.accuracy.unwrap());
    // Tiny validation set: at most one picture may change its class.
    assert!(
        a8 >= a32 - 1.0 / v.images as f64 - 1e-9,
        "fp32 {a32}, int8 {a8}"
    );
    assert_eq!(m32.metrics.fp32.accuracy, m32.metrics.bundle.accuracy);
    assert_eq!(m32.metrics.max_abs_diff, 0.0);
    // And the run's own validation accuracy is what the fp32 bundle measures.
    let run_metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert!((run_metrics["val_accuracy"].as_f64().unwrap() - a32).abs() < 1e-9);

    // `kestrel-edge info --bundle` shows the same.
    let out = Command::new(bin("kestrel-edge"))
        .args(["info", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mm = info["files"]["head"]["matmuls"].as_array().unwrap();
    assert!(
        mm.iter()
            .all(|m| m.as_str().unwrap().contains("I8 x I8 -> I32")),
        "{mm:?}"
    );
    assert_eq!(info["manifest"]["labels"], serde_json::json!(m.labels));

    // The percentile option is recorded and gives a working bundle.
    let pct = tmp.path().join("pct");
    run_ok_stdout(
        kestrel(&cache)
            .arg("export")
            .arg(&run)
            .arg("--out")
            .arg(&pct)
            .args(["--calibration", "8", "--percentile", "99.9"]),
    );
    let mp = Manifest::read(&pct).unwrap();
    assert_eq!(
        mp.quantization.calibration.unwrap().method,
        CalibrationMethod::Percentile { percentile: 99.9 }
    );
    Bundle::open(&pct).unwrap();
    // A bad option is refused before any work.
    let out = kestrel(&cache)
        .arg("export")
        .arg(&run)
        .arg("--out")
        .arg(tmp.path().join("x"))
        .args(["--quantize", "int4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("none, head or all"));
}

/// Write `[n, 3, h, w]` float32 pictures as `.npy`.
fn write_npy(path: &Path, shape: &[usize], data: &[f32]) {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

const ORT_RUN: &str = r#"
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
y = s.run(None, {s.get_inputs()[0].name: x})[0]
np.save(sys.argv[3], np.ascontiguousarray(y.astype(np.float32)))
"#;

/// onnxruntime's outputs of `model.onnx` for `images`, one row per picture.
fn onnxruntime(
    model: &Path,
    images: &[Vec<f32>],
    spec: &PreprocessSpec,
    dir: &Path,
) -> Vec<Vec<f32>> {
    let (x, y) = (dir.join("ort-in.npy"), dir.join("ort-out.npy"));
    let flat: Vec<f32> = images.iter().flatten().copied().collect();
    write_npy(&x, &spec.input_shape(images.len()), &flat);
    let status = Command::new(python())
        .args(["-c", ORT_RUN])
        .arg(model)
        .arg(&x)
        .arg(&y)
        .status()
        .expect("python3 with onnxruntime and numpy is needed (scripts/setup.sh installs them)");
    assert!(
        status.success(),
        "onnxruntime failed on {}",
        model.display()
    );
    let out = kestrel_e2e::read_npy(&y);
    let per = out.data.len() / images.len();
    out.data.chunks(per).map(<[f32]>::to_vec).collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| kestrel_e2e::max_abs_diff(x, y))
        .fold(0.0, f32::max)
}

fn top1(rows: &[Vec<f32>]) -> Vec<usize> {
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        })
        .collect()
}

/// The validation pictures of a bundle's run, preprocessed (at most `n`).
fn pictures(run: &Path, spec: &PreprocessSpec, n: usize) -> Vec<Vec<f32>> {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    let data = PathBuf::from(config["options"]["data"].as_str().unwrap());
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![data];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "png") {
                files.push(p);
            }
        }
    }
    files.sort();
    let step = (files.len() / n).max(1);
    files
        .iter()
        .step_by(step)
        .take(n)
        .map(|f| spec.load_and_apply(f).unwrap())
        .collect()
}

/// burn's fp32 outputs for `images`: the burn trunk cut where the run's trunk is, then the run's
/// trained part in burn.
fn burn_outputs(p: &Pretrained, run: &Path, cache: &Path, images: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let detector = kestrel_trainer::run_config::run_task(run) == Some("detect");
    let (cut, spec) = if detector {
        let d = TrainedDetector::open(run, p, cache).unwrap();
        (d.trunk.info.cut, d.trunk.info.preprocess)
    } else {
        let c = TrainedClassifier::open(run, p, cache).unwrap();
        (c.trunk.info.cut, c.trunk.info.preprocess)
    };
    let trunk = p.model.clone().truncate(cut);
    let (h, w) = (spec.height as usize, spec.width as usize);
    let features: Vec<Vec<f32>> = images
        .iter()
        .map(|x| trunk.run(x.clone(), 1, h, w, &p.device).0)
        .collect();
    if detector {
        let d = TrainedDetector::open(run, p, cache).unwrap();
        let s = &d.trunk.info.output_shape;
        raw_outputs(&d.head, &features, [s[1], s[2], s[3]], &p.device)
    } else {
        let c = TrainedClassifier::open(run, p, cache).unwrap();
        let classes = c.labels.len();
        c.logits(&features)
            .chunks(classes)
            .map(<[f32]>::to_vec)
            .collect()
    }
}

/// fp32: burn, tract (trunk + head), tract (model.onnx), onnxruntime (model.onnx) within 1e-4.
/// int8: tract split, tract merged and onnxruntime give the same top-1 / detections.
fn check_agreement(p: &Pretrained, run: &Path, cache: &Path, tmp: &Path) {
    let name = run.file_name().unwrap().to_string_lossy().to_string();
    let opts = BundleOptions {
        batch: 1,
        threads: Threads::Single,
        merged: true,
        ..Default::default()
    };
    let fp32_dir = tmp.join(format!("{name}-fp32"));
    let m = export(p, run, &fp32_dir, cache, QuantizeMode::None);
    let spec = m.input.preprocess;
    let images = pictures(run, &spec, 6);
    let fp32 = Bundle::open_with(&fp32_dir, &opts).unwrap();
    // What the board runs (NNEF) against the ONNX pair it was converted from.
    let onnx_opts = BundleOptions {
        format: Some(ModelFormat::Onnx),
        ..opts
    };
    let split = fp32.run(&images).unwrap();
    let split_onnx = Bundle::open_with(&fp32_dir, &onnx_opts)
        .unwrap()
        .run(&images)
        .unwrap();
    let merged = fp32.run_merged(&images).unwrap();
    let ort = onnxruntime(&fp32_dir.join(MODEL_FILE), &images, &spec, tmp);
    let burn = burn_outputs(p, run, cache, &images);
    let diffs = [
        ("burn vs tract trunk+head", max_diff(&burn, &split)),
        (
            "tract trunk+head vs tract model.onnx",
            max_diff(&split, &merged),
        ),
        ("tract model.onnx vs onnxruntime", max_diff(&merged, &ort)),
        ("tract NNEF vs tract ONNX", max_diff(&split, &split_onnx)),
        ("burn vs onnxruntime", max_diff(&burn, &ort)),
    ];
    println!("{name} fp32: {diffs:?}");
    // Absolute for outputs up to 1; relative above (the book's head outputs pixels, up to 224,
    // where one float32 step is already 1.5e-5).
    let scale = burn.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
    let nnef_vs_onnx = max_diff(&split, &split_onnx);
    assert!(
        nnef_vs_onnx <= NNEF_TOL * scale,
        "{name} fp32 NNEF vs ONNX: {nnef_vs_onnx}"
    );
    for (what, d) in diffs {
        assert!(
            d <= FP32_TOL * scale,
            "{name} fp32 {what}: {d} (outputs up to {scale})"
        );
    }

    let int8_dir = tmp.join(format!("{name}-int8"));
    let m8 = export(p, run, &int8_dir, cache, QuantizeMode::Head);
    let int8 = Bundle::open_with(&int8_dir, &opts).unwrap();
    let split8 = int8.run(&images).unwrap();
    let split8_onnx = Bundle::open_with(&int8_dir, &onnx_opts)
        .unwrap()
        .run(&images)
        .unwrap();
    // The same int8 graph from either file: the same codes, the same outputs.
    let nnef_vs_onnx = max_diff(&split8, &split8_onnx);
    assert!(
        nnef_vs_onnx <= NNEF_TOL * scale,
        "{name} int8 NNEF vs ONNX: {nnef_vs_onnx}"
    );
    let merged8 = int8.run_merged(&images).unwrap();
    let ort8 = onnxruntime(&int8_dir.join(MODEL_FILE), &images, &spec, tmp);
    let int8_vs_fp32 = max_diff(&split8, &split);
    println!(
        "{name} int8: tract split vs merged {:.3e}, tract vs onnxruntime {:.3e}, int8 vs fp32 {:.3e} ({:.2e} of the largest output {scale}); on the validation set: agreement with fp32 {:.3}, max diff {:.3e}",
        max_diff(&split8, &merged8),
        max_diff(&merged8, &ort8),
        int8_vs_fp32,
        int8_vs_fp32 / scale,
        m8.metrics.agreement,
        m8.metrics.max_abs_diff
    );
    // An int8 head (per-channel weights, calibrated activations) stays within 8% of the largest
    // output of the float model (measured 0.3-4.1% on these runs; 4.1% for the fine-tuned one).
    assert!(
        int8_vs_fp32 <= INT8_TOL * scale,
        "{name}: int8 differs from fp32 by {int8_vs_fp32} (outputs up to {scale})"
    );
    if let Some(decode) = m.decode {
        let thr = decode.score_threshold;
        let dets = |rows: &[Vec<f32>]| -> Vec<_> {
            rows.iter()
                .map(|r| {
                    int8.decode(r, thr)
                        .into_iter()
                        .filter(|d| d.score >= thr)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let (a, b, c) = (dets(&split8), dets(&merged8), dets(&ort8));
        // Agreement on nothing proves nothing: the int8 detector must find something.
        let found: usize = a.iter().map(Vec::len).sum();
        assert!(
            found > 0,
            "{name}: the int8 detector found nothing on {} pictures",
            images.len()
        );
        for i in 0..images.len() {
            assert!(
                same_detections(&a[i], &b[i]),
                "{name} picture {i}: split vs merged"
            );
            assert!(
                same_detections(&b[i], &c[i]),
                "{name} picture {i}: tract vs onnxruntime"
            );
        }
    } else {
        assert_eq!(top1(&split8), top1(&merged8), "{name}");
        // The runtimes' float trunks differ by about 1e-6, which can move an input code of the
        // int8 head by one step: only a near-tie (two logits closer than that) may then flip.
        let noise = max_diff(&merged8, &ort8);
        for (i, (a, b)) in top1(&merged8).into_iter().zip(top1(&ort8)).enumerate() {
            let margin = (merged8[i][a] - merged8[i][b]).abs();
            assert!(
                a == b || margin <= 2.0 * noise,
                "{name} picture {i}: tract says {a}, onnxruntime {b} (margin {margin}, noise {noise})"
            );
        }
    }
    assert_eq!(max_diff(&split8, &merged8), 0.0, "same graph, same numbers");
}

#[test]
fn classifiers_agree_across_burn_tract_and_onnxruntime() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let p = pretrained();
    let head = classify_run(tmp.path(), &cache, "dense", &[]);
    check_agreement(&p, &head, &cache, tmp.path());
    // Phase 2: the fine-tuned blocks, features.18 and the pooling go into head.onnx.
    let tuned = classify_run(
        tmp.path(),
        &cache,
        "tuned",
        &["--fine-tune-blocks", "2", "--fine-tune-epochs", "1"],
    );
    check_agreement(&p, &tuned, &cache, tmp.path());
    let m = Manifest::read(&tmp.path().join("tuned-int8")).unwrap();
    assert_eq!(m.fine_tuned_blocks, 2);
    assert_eq!(m.cut, CutPoint::Features(15));
    assert_eq!(m.files.head.input.shape, vec![1, 160, 7, 7]);
    let head = inspect(&tmp.path().join("tuned-int8").join(HEAD_FILE)).unwrap();
    // 2 blocks x (expand, project) + features.18 + 2 dense layers in int8; the depthwise
    // convolutions stay float (tract has no int8 depthwise kernel).
    assert_eq!(m.quantization.layers.len(), 2 * 2 + 1 + 2);
    assert_eq!(head.matmuls.iter().filter(|m| m.is_8bit()).count(), 7);
    // ... and run on Kestrel's depthwise kernel.
    assert_eq!(
        head.ops
            .iter()
            .filter(|o| *o == "KestrelDepthwise3x3")
            .count(),
        2
    );
}

#[test]
fn detectors_agree_across_burn_tract_and_onnxruntime() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let p = pretrained();
    let grid = detect_run(tmp.path(), &cache, "grid", "grid");
    check_agreement(&p, &grid, &cache, tmp.path());
    let m = Manifest::read(&tmp.path().join("grid-int8")).unwrap();
    let d = m.decode.unwrap();
    assert_eq!((d.stride, d.score_threshold, d.nms_iou), (16, 0.3, 0.5));
    assert_eq!(d.grid.unwrap().classes, 5);
    assert_eq!(m.files.head.output.shape, vec![1, 1 + 5 + 4, 8, 10]);
    assert_eq!(m.metrics.headline, "map50");
    let single = detect_run(tmp.path(), &cache, "single", "single");
    check_agreement(&p, &single, &cache, tmp.path());
    let m = Manifest::read(&tmp.path().join("single-int8")).unwrap();
    assert_eq!(m.metrics.headline, "mean_iou");
    assert!(m.metrics.bundle.mean_iou.is_some() && m.decode.unwrap().grid.is_none());
    let dense = detect_run(tmp.path(), &cache, "single-dense", "single-dense");
    check_agreement(&p, &dense, &cache, tmp.path());
    let m = Manifest::read(&tmp.path().join("single-dense-int8")).unwrap();
    assert_eq!(m.files.head.output.shape, vec![1, 5]);
}

#[test]
fn quantize_all_gives_an_int8_trunk_that_agrees_with_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let p = pretrained();
    let run = detect_run(tmp.path(), &cache, "grid", "grid");
    let out = tmp.path().join("all");
    let opts = ExportOptions {
        quantize: QuantizeMode::All,
        calibration: 20,
        method: CalibrationMethod::Percentile { percentile: 99.99 },
    };
    let r = export_bundle(&p, &run, &out, &opts, &cache, &Silent).unwrap();
    kestrel_trainer::bundle::print_report(&r, &mut std::io::stdout()).unwrap();
    let m = &r.manifest;
    assert_eq!(m.files.trunk.precision, Precision::Int8);
    assert!((m.files.trunk.size as f64) < 0.35 * r.trunk_fp32_size as f64);
    let trunk_layers = m.quantization.layers.iter().filter(|l| l.file == "trunk");
    // features.0 .. features.13: the stem and the 1x1 convolutions; depthwise stays float.
    assert_eq!(trunk_layers.count(), 1 + 12 * 2 + 1);
    let trunk = inspect(&out.join(TRUNK_FILE)).unwrap();
    let int8 = trunk.matmuls.iter().filter(|m| m.is_8bit()).count();
    println!(
        "int8 trunk: {int8} 8-bit matrix products; {:?}",
        trunk.op_counts()
    );
    // Every layer of the plan in 8 bits: the 1x1 convolutions as 8-bit matrix products (tract's
    // or Kestrel's), the stem as tract's 8-bit product or Kestrel's exact int8 stem.
    let int8_stems = trunk
        .ops
        .iter()
        .filter(|o| *o == "KestrelQDense3x3")
        .count();
    assert_eq!(int8 + int8_stems, 26);
    assert!(
        trunk
            .ops
            .iter()
            .filter(|o| *o == "KestrelDepthwise3x3")
            .count()
            == 13
    );
    // The board runs the NNEF trunk: Kestrel's int8 kernels must take it over just as they take
    // the ONNX one (tract's NNEF writer types the codes differently; the pass looks through it).
    // Where they do not run (an x86 CPU without AVX-512 VNNI), tract's own int8 path remains and
    // the NNEF graph keeps the extra casts of its typing: every other op must still match.
    let trunk_nnef = inspect(&out.join(TRUNK_NNEF_FILE)).unwrap();
    let kestrel_int8 = trunk.ops.iter().any(|o| o.starts_with("KestrelQ"));
    let counts = |o: &kestrel_edge::bundle::OptimizedOps| {
        let mut c = o.op_counts();
        if !kestrel_int8 {
            c.remove("Cast");
        }
        c
    };
    assert_eq!(counts(&trunk_nnef), counts(&trunk));
    let kinds = |o: &kestrel_edge::bundle::OptimizedOps| -> Vec<String> {
        o.matmuls
            .iter()
            .map(|m| format!("{} x {} -> {} ({})", m.a, m.b, m.accumulator, m.kernel))
            .collect()
    };
    assert_eq!(kinds(&trunk_nnef), kinds(&trunk));
    let v = &m.metrics;
    let (a, b) = (v.fp32.map50.unwrap(), v.bundle.map50.unwrap());
    println!(
        "mAP@0.5 fp32 {a:.3}, all-int8 {b:.3}, agreement {:.3}",
        v.agreement
    );
    assert!(v.agreement >= 0.5, "{v:?}");
    // The bundle runs as a whole through model.onnx too.
    let b = Bundle::open_with(
        &out,
        &BundleOptions {
            merged: true,
            ..Default::default()
        },
    )
    .unwrap();
    let images = pictures(&run, &m.input.preprocess, 3);
    assert_eq!(
        max_diff(&b.run(&images).unwrap(), &b.run_merged(&images).unwrap()),
        0.0
    );
}

/// Copy a bundle directory.
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Replace `file` in `dir` with `bytes` and make the manifest pin the new file (as a careless
/// copy would not, but a forged or mixed-up bundle might).
fn replace_and_repin(dir: &Path, file: &str, bytes: &[u8]) {
    std::fs::write(dir.join(file), bytes).unwrap();
    let path = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entry = match file.strip_suffix(".nnef.tar") {
        Some(role) => &mut v["files"]["nnef"][role],
        None => &mut v["files"][file.trim_end_matches(".onnx")],
    };
    entry["sha256"] = kestrel_shared::hash::sha256_hex(bytes).into();
    entry["size"] = bytes.len().into();
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn edit_manifest(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(MANIFEST_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn bad_bundles_are_refused_with_clear_errors_and_no_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let run = classify_run(tmp.path(), &cache, "run", &["--head", "linear"]);
    let good = tmp.path().join("good");
    run_ok_stdout(
        kestrel(&cache)
            .arg("export")
            .arg(&run)
            .arg("--out")
            .arg(&good)
            .args(["--calibration", "8"]),
    );
    Bundle::open(&good).unwrap();
    let other_trunk = tmp.path().join("other-trunk");
    run_ok_stdout(
        kestrel(&cache)
            .args(["export-trunk", "--cut", "stride16", "--out"])
            .arg(&other_trunk),
    );
    let n = std::cell::Cell::new(0);
    let case = |prepare: &dyn Fn(&Path)| -> (PathBuf, BundleError) {
        n.set(n.get() + 1);
        let dir = tmp.path().join(format!("bad{}", n.get()));
        copy(&good, &dir);
        prepare(&dir);
        let err = Bundle::open(&dir).unwrap_err();
        // The command line says the same, with a non-zero exit and no panic.
        let out = Command::new(bin("kestrel-edge"))
            .args(["info", "--bundle"])
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{}: accepted", dir.display());
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(&err.to_string()), "{stderr}\nvs {err}");
        println!("{}: {err}", dir.display());
        (dir, err)
    };

    // No bundle at all.
    let nowhere = tmp.path().join("nowhere");
    let e = Bundle::open(&nowhere).unwrap_err();
    assert!(
        matches!(e, BundleError::Manifest(ManifestError::Io { .. })),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(&nowhere.join(MANIFEST_FILE).display().to_string()),
        "{e}"
    );

    // A missing file (the board runs the NNEF pair).
    let (dir, e) = case(&|d| std::fs::remove_file(d.join(HEAD_NNEF_FILE)).unwrap());
    assert!(
        matches!(&e, BundleError::Missing { role, .. } if role == "head"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(&dir.join(HEAD_NNEF_FILE).display().to_string())
    );
    let (_, e) = case(&|d| std::fs::remove_file(d.join(MANIFEST_FILE)).unwrap());
    assert!(
        matches!(e, BundleError::Manifest(ManifestError::Io { .. })),
        "{e}"
    );

    // A sha256 mismatch: one byte changed, same size.
    let (_, e) = case(&|d| {
        let mut b = std::fs::read(d.join(HEAD_NNEF_FILE)).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0x55;
        std::fs::write(d.join(HEAD_NNEF_FILE), b).unwrap();
    });
    assert!(matches!(e, BundleError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("head.nnef.tar"));

    // An unknown manifest schema version.
    let (_, e) = case(&|d| edit_manifest(d, |v| v["schema_version"] = 99.into()));
    assert!(
        matches!(
            e,
            BundleError::Manifest(ManifestError::Version { found: 99, .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("manifest.json"));

    // A truncated file: its size gives it away...
    let (_, e) = case(&|d| {
        let b = std::fs::read(d.join(TRUNK_NNEF_FILE)).unwrap();
        std::fs::write(d.join(TRUNK_NNEF_FILE), &b[..b.len() / 3]).unwrap();
    });
    assert!(matches!(e, BundleError::Size { .. }), "{e}");
    assert!(e.to_string().contains("truncated"));
    // ...and re-pinned in the manifest, tract refuses it...
    let (_, e) = case(&|d| {
        let b = std::fs::read(d.join(TRUNK_NNEF_FILE)).unwrap();
        replace_and_repin(d, TRUNK_NNEF_FILE, &b[..b.len() / 3]);
    });
    assert!(matches!(e, BundleError::NotModel { .. }), "{e}");
    assert!(e.to_string().contains(TRUNK_NNEF_FILE), "{e}");
    // ...and so it does the ONNX trunk when asked to run the ONNX pair (a board, which runs the
    // NNEF pair, never reads it).
    let onnx_cut = tmp.path().join("onnx-cut");
    copy(&good, &onnx_cut);
    let b = std::fs::read(onnx_cut.join(TRUNK_FILE)).unwrap();
    replace_and_repin(&onnx_cut, TRUNK_FILE, &b[..b.len() / 3]);
    Bundle::open(&onnx_cut).unwrap();
    let onnx = BundleOptions {
        format: Some(ModelFormat::Onnx),
        ..BundleOptions::default()
    };
    let e = Bundle::open_with(&onnx_cut, &onnx).unwrap_err();
    assert!(matches!(e, BundleError::NotModel { .. }), "{e}");
    assert!(e.to_string().contains(TRUNK_FILE), "{e}");
    // A file that is not a model at all.
    let (_, e) = case(&|d| replace_and_repin(d, HEAD_NNEF_FILE, b"{\"this is\": \"json\"}"));
    assert!(matches!(e, BundleError::NotModel { .. }), "{e}");

    // A trunk whose output does not fit the head's input (another cut).
    let (_, e) = case(&|d| {
        let b = std::fs::read(other_trunk.join("trunk.onnx")).unwrap();
        let nnef = kestrel_edge::nnef::onnx_to_nnef(&b).unwrap();
        replace_and_repin(d, TRUNK_NNEF_FILE, &nnef);
    });
    assert!(
        matches!(&e, BundleError::TrunkHead { trunk_output, head_input, .. }
            if trunk_output == &vec![1, 96, 14, 14] && head_input == &vec![1, 1280]),
        "{e}"
    );

    // Labels that do not fit the head: caught in the manifest itself...
    let (_, e) = case(&|d| {
        edit_manifest(d, |v| {
            v["labels"].as_array_mut().unwrap().pop();
        })
    });
    assert!(
        matches!(e, BundleError::Manifest(ManifestError::Inconsistent { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("labels"));
    // ...and, when the manifest is consistent with itself, against the head file.
    let (_, e) = case(&|d| {
        edit_manifest(d, |v| {
            v["labels"].as_array_mut().unwrap().pop();
            for role in ["head", "model"] {
                v["files"][role]["output"]["shape"] = serde_json::json!([1, 3]);
            }
            v["files"]["nnef"]["head"]["output"]["shape"] = serde_json::json!([1, 3]);
        })
    });
    assert!(
        matches!(
            e,
            BundleError::Labels {
                labels: 3,
                expected: 3,
                ..
            }
        ),
        "{e}"
    );
    // A manifest field that is missing is named.
    let (_, e) = case(&|d| {
        edit_manifest(d, |v| {
            v["files"]["trunk"]
                .as_object_mut()
                .unwrap()
                .remove("sha256");
        })
    });
    assert!(
        matches!(&e, BundleError::Manifest(ManifestError::MissingField { field, .. }) if field == "files.trunk.sha256"),
        "{e}"
    );
}
