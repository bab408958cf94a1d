//! The exported ONNX trunk, run by tract (the board's runtime) and by onnxruntime, against burn
//! and torchvision. Tolerance: max abs error 1e-4 on every output.

use std::process::Command;

use kestrel_e2e::{golden, max_abs_diff, python, weights};
use kestrel_edge::{EdgeError, Threads, Trunk};
use kestrel_shared::{CutPoint, PreprocessSpec};
use kestrel_trainer::trunk_onnx::export_trunk;
use kestrel_trainer::{Backend, Pretrained};

const TOL: f32 = 1e-4;

fn golden_name(cut: CutPoint) -> String {
    cut.to_string()
}

#[test]
fn tract_runs_every_preset_cut_like_burn_and_torchvision() {
    let p = Pretrained::load(&weights(), Backend::Flex).unwrap();
    let x = golden("synthetic", "input").data;
    let dir = tempfile::tempdir().unwrap();
    for cut in [
        CutPoint::Features(0),
        CutPoint::Features(6),
        CutPoint::Features(13),
        CutPoint::Features(18),
        CutPoint::Pooled,
    ] {
        let out = dir.path().join(cut.to_string());
        let info = export_trunk(
            &p.model,
            cut,
            PreprocessSpec::imagenet(),
            &p.weights_sha256,
            &out,
        )
        .unwrap();
        let trunk = Trunk::open(&out, 1, Threads::Single).unwrap();
        let ours = trunk.model.run(&x).unwrap();
        assert_eq!(ours.shape, info.output_shape, "{cut}");
        let (burn, _) = p
            .model
            .clone()
            .truncate(cut)
            .run(x.clone(), 1, 224, 224, &p.device);
        let vs_burn = max_abs_diff(&ours.data, &burn);
        let vs_torch = max_abs_diff(&ours.data, &golden("synthetic", &golden_name(cut)).data);
        assert!(vs_burn <= TOL, "{cut}: tract vs burn {vs_burn}");
        assert!(vs_torch <= TOL, "{cut}: tract vs torchvision {vs_torch}");
    }
}

#[test]
fn tract_graph_is_clean_after_optimisation() {
    let p = Pretrained::load(&weights(), Backend::Flex).unwrap();
    let dir = tempfile::tempdir().unwrap();
    export_trunk(
        &p.model,
        CutPoint::Pooled,
        PreprocessSpec::imagenet(),
        &p.weights_sha256,
        dir.path(),
    )
    .unwrap();
    let trunk = Trunk::open(dir.path(), 1, Threads::Single).unwrap();
    let ops = trunk.model.op_names();
    let count = |name: &str| ops.iter().filter(|o| o.as_str() == name).count();
    // 52 convolutions, all on Kestrel's kernels: the 17 depthwise ones and the stem (clip fused),
    // the 34 pointwise ones with bias, clip and residual add fused in; no matrix product of
    // tract's left.
    assert_eq!(count("KestrelDepthwise3x3"), 17, "{ops:?}");
    assert_eq!(count("KestrelDense3x3"), 1, "{ops:?}");
    assert_eq!(count("DepthWiseConv"), 0, "{ops:?}");
    assert_eq!(count("KestrelPointwise"), 34, "{ops:?}");
    assert_eq!(count("OptMatMul"), 0, "{ops:?}");
    // Nothing left unfused: no BatchNorm, no standalone Clip or Add.
    for bad in ["BatchNorm", "Clip", "Add", "Max", "Min"] {
        assert_eq!(count(bad), 0, "{bad} left in {ops:?}");
    }
}

#[test]
fn batched_tract_equals_one_at_a_time() {
    let p = Pretrained::load(&weights(), Backend::Flex).unwrap();
    let dir = tempfile::tempdir().unwrap();
    export_trunk(
        &p.model,
        CutPoint::Pooled,
        PreprocessSpec::imagenet(),
        &p.weights_sha256,
        dir.path(),
    )
    .unwrap();
    let images: Vec<Vec<f32>> = ["synthetic", "chelsea", "coffee"]
        .iter()
        .map(|c| golden(c, "input").data)
        .collect();
    let single = Trunk::open(dir.path(), 1, Threads::Single)
        .unwrap()
        .embed(&images)
        .unwrap();
    let batched = Trunk::open(dir.path(), 2, Threads::Multi(2))
        .unwrap()
        .embed(&images)
        .unwrap();
    for (i, case) in ["synthetic", "chelsea", "coffee"].iter().enumerate() {
        assert!(max_abs_diff(&single[i], &batched[i]) < 1e-5);
        assert!(
            max_abs_diff(&single[i], &golden(case, "pooled").data) <= TOL,
            "{case}"
        );
    }
}

const ORT_CHECK: &str = r#"
import sys, numpy as np, onnxruntime as ort
path, inp, out = sys.argv[1], sys.argv[2], sys.argv[3]
s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
x = np.load(inp)
y = s.run(None, {s.get_inputs()[0].name: x})[0]
np.save(out, y.astype(np.float32))
"#;

#[test]
fn onnxruntime_agrees_on_the_same_file() {
    let p = Pretrained::load(&weights(), Backend::Flex).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [CutPoint::Features(13), CutPoint::Pooled] {
        let out = dir.path().join(cut.to_string());
        export_trunk(
            &p.model,
            cut,
            PreprocessSpec::imagenet(),
            &p.weights_sha256,
            &out,
        )
        .unwrap();
        let result = out.join("ort.npy");
        let status = Command::new(python())
            .args(["-c", ORT_CHECK])
            .arg(out.join("trunk.onnx"))
            .arg(kestrel_e2e::golden_dir().join("synthetic.input.npy"))
            .arg(&result)
            .status()
            .expect("python3 with onnxruntime and numpy is needed (pip install onnxruntime numpy)");
        assert!(
            status.success(),
            "onnxruntime failed on {cut}: is it installed (pip install onnxruntime numpy)?"
        );
        let ort = kestrel_e2e::read_npy(&result);
        let trunk = Trunk::open(&out, 1, Threads::Single).unwrap();
        let tract = trunk.model.run(&golden("synthetic", "input").data).unwrap();
        assert_eq!(ort.shape, tract.shape);
        let d = max_abs_diff(&ort.data, &tract.data);
        assert!(d <= TOL, "{cut}: onnxruntime vs tract {d}");
        let d = max_abs_diff(&ort.data, &golden("synthetic", &golden_name(cut)).data);
        assert!(d <= TOL, "{cut}: onnxruntime vs torchvision {d}");
    }
}

#[test]
fn damaged_trunks_are_refused_with_the_file_named() {
    let p = Pretrained::load(&weights(), Backend::Flex).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    export_trunk(
        &p.model,
        CutPoint::Features(6),
        PreprocessSpec::imagenet(),
        &p.weights_sha256,
        &good,
    )
    .unwrap();
    let onnx = std::fs::read(good.join("trunk.onnx")).unwrap();

    // Truncated file: the checksum no longer matches.
    let cut_short = dir.path().join("short");
    std::fs::create_dir_all(&cut_short).unwrap();
    std::fs::copy(good.join("trunk.json"), cut_short.join("trunk.json")).unwrap();
    std::fs::write(cut_short.join("trunk.onnx"), &onnx[..onnx.len() / 2]).unwrap();
    let err = Trunk::open(&cut_short, 1, Threads::Single).unwrap_err();
    assert!(matches!(err, EdgeError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("short/trunk.onnx"));

    // Garbage bytes loaded directly: tract's refusal is reported with the path.
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"definitely not protobuf \x00\x01\x02").unwrap();
    let err = kestrel_edge::Model::load(&garbage, 1, Threads::Single).unwrap_err();
    assert!(matches!(err, EdgeError::Load { .. }), "{err}");
    assert!(err.to_string().contains("garbage.onnx"));
    let err = kestrel_edge::Model::load(&dir.path().join("missing.onnx"), 1, Threads::Single)
        .unwrap_err();
    assert!(matches!(err, EdgeError::Read { .. }));

    // Wrong schema version in the description.
    let json = std::fs::read_to_string(good.join("trunk.json")).unwrap();
    std::fs::write(
        good.join("trunk.json"),
        json.replace("\"schema_version\": 1", "\"schema_version\": 7"),
    )
    .unwrap();
    let err = Trunk::open(&good, 1, Threads::Single).unwrap_err();
    assert!(err.to_string().contains("schema version 7"), "{err}");

    // Wrong input size is an error, not a panic.
    std::fs::write(good.join("trunk.json"), json).unwrap();
    let t = Trunk::open(&good, 1, Threads::Single).unwrap();
    assert!(matches!(
        t.model.run(&[0.0; 10]),
        Err(EdgeError::InputSize { .. })
    ));
}

#[test]
fn cached_trunk_is_exported_once_and_repaired_when_damaged() {
    let p = Pretrained::load(&weights(), Backend::Flex).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let spec = PreprocessSpec::imagenet();
    let a = p
        .cached_trunk(CutPoint::Features(6), spec, cache.path())
        .unwrap();
    let b = p
        .cached_trunk(CutPoint::Features(13), spec, cache.path())
        .unwrap();
    assert_ne!(a, b, "each cut has its own entry");
    let onnx = a.join("trunk.onnx");
    let stamp = std::fs::metadata(&onnx).unwrap().modified().unwrap();
    assert_eq!(
        p.cached_trunk(CutPoint::Features(6), spec, cache.path())
            .unwrap(),
        a
    );
    assert_eq!(
        std::fs::metadata(&onnx).unwrap().modified().unwrap(),
        stamp,
        "reused, not re-exported"
    );
    // A damaged entry is exported again rather than used.
    std::fs::write(&onnx, b"damaged").unwrap();
    let again = p
        .cached_trunk(CutPoint::Features(6), spec, cache.path())
        .unwrap();
    let trunk = Trunk::open(&again, 1, Threads::Single).unwrap();
    let out = trunk.model.run(&golden("synthetic", "input").data).unwrap();
    assert!(max_abs_diff(&out.data, &golden("synthetic", "features.6").data) <= TOL);
    // Nothing but the two entries is left behind.
    assert_eq!(
        std::fs::read_dir(cache.path().join("trunks"))
            .unwrap()
            .count(),
        2
    );
}
