//! Cross-architecture parity: the board's build must compute what the workstation computes.
//!
//! The edge crate cannot export a trunk (that needs burn, on the host), so the reference is made
//! outside this test, on x86_64, by `scripts/test.sh`:
//!
//! ```text
//! kestrel export-trunk --cut features.2 --out $DIR/trunk
//! kestrel-edge embed --trunk $DIR/trunk --values /abs/path/photo.png ... > $DIR/reference.jsonl
//! ```
//!
//! and this test, built for aarch64 and run under `qemu-aarch64`, embeds the same photos through
//! the same trunk and compares every value with the x86 ones (max abs difference at most 1e-4).
//!
//! `KESTREL_PARITY_DIR=$DIR` points the test at the reference. Without it the test fails and says
//! how to make one, unless `KESTREL_PARITY_SKIP=1` is set (an explicit, printed opt-out). On
//! x86_64 the test is ignored (it would compare x86 with itself); `scripts/test.sh` still runs it
//! there with `--include-ignored` to check the reference before the slow emulated run.

use std::path::{Path, PathBuf};

use kestrel_edge::{Threads, Trunk};

/// Largest difference allowed between an aarch64 value and its x86 reference.
const TOLERANCE: f32 = 1e-4;

/// One line of `kestrel-edge embed --values` output.
struct Reference {
    image: PathBuf,
    cut: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn read_reference(dir: &Path) -> Vec<Reference> {
    let path = dir.join("reference.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; make it with `kestrel-edge embed --values`",
            path.display()
        )
    });
    let refs: Vec<Reference> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", path.display()));
            assert!(
                v.get("error").is_none(),
                "{}: the reference run failed: {line}",
                path.display()
            );
            let values: Vec<f32> = v["values"]
                .as_array()
                .unwrap_or_else(|| {
                    panic!("{}: no values (run embed with --values)", path.display())
                })
                .iter()
                .map(|x| x.as_f64().expect("numeric value") as f32)
                .collect();
            Reference {
                image: PathBuf::from(v["image"].as_str().expect("image path")),
                cut: v["cut"].as_str().expect("cut").to_string(),
                shape: v["shape"]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|d| d.as_u64().expect("dimension") as usize)
                    .collect(),
                values,
            }
        })
        .collect();
    assert!(!refs.is_empty(), "{} has no pictures", path.display());
    refs
}

/// Largest absolute difference, and where.
fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs(), i))
        .fold((0.0, 0), |m, d| if d.0 > m.0 { d } else { m })
}

fn check(label: &str, got: &[f32], want: &Reference) {
    assert_eq!(
        got.len(),
        want.values.len(),
        "{label}: {} values, the reference has {}",
        got.len(),
        want.values.len()
    );
    assert!(
        got.iter().all(|x| x.is_finite()),
        "{label}: non-finite output"
    );
    let (diff, at) = max_abs_diff(got, &want.values);
    eprintln!(
        "parity {label} on {}: {} values, max abs difference {diff:e} (at {at})",
        std::env::consts::ARCH,
        got.len()
    );
    assert!(
        diff <= TOLERANCE,
        "{label}: value {at} is {} here ({}) but {} in the reference (difference {diff:e} > {TOLERANCE:e})",
        got[at],
        std::env::consts::ARCH,
        want.values[at]
    );
}

#[test]
#[cfg_attr(
    target_arch = "x86_64",
    ignore = "compares an aarch64 build with x86 references: scripts/test.sh runs it under qemu-aarch64 (KESTREL_PARITY_DIR, see the file's header)"
)]
fn embeddings_match_the_x86_reference() {
    let Some(dir) = std::env::var_os("KESTREL_PARITY_DIR") else {
        if std::env::var("KESTREL_PARITY_SKIP").as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED: aarch64 parity check opted out with KESTREL_PARITY_SKIP=1 (nothing was compared)"
            );
            return;
        }
        panic!(
            "KESTREL_PARITY_DIR is not set. This test compares this build's embeddings with \
             x86_64 references; make them on an x86_64 machine with\n  \
             kestrel export-trunk --cut features.2 --out DIR/trunk\n  \
             kestrel-edge embed --values --trunk DIR/trunk /abs/path/chelsea.png > DIR/reference.jsonl\n\
             then run with KESTREL_PARITY_DIR=DIR (scripts/test.sh does all of this), or set \
             KESTREL_PARITY_SKIP=1 to skip the check on purpose."
        );
    };
    let dir = PathBuf::from(dir);
    let refs = read_reference(&dir);
    for r in &refs {
        let n: usize = r.shape.iter().product();
        assert_eq!(
            n,
            r.values.len(),
            "{}: shape and values disagree",
            r.image.display()
        );
        let norm = r.values.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            norm > 1.0,
            "{}: reference is (nearly) all zeros",
            r.image.display()
        );
    }

    // One picture at a time on one thread: what `kestrel-edge embed` does on the board.
    let trunk = Trunk::open(&dir.join("trunk"), 1, Threads::Single).unwrap();
    for r in &refs {
        assert_eq!(
            trunk.info.cut.to_string(),
            r.cut,
            "reference made with another cut"
        );
        let got = trunk.embed_file(&r.image).unwrap();
        check(&format!("{} (1 thread)", r.image.display()), &got, r);
    }

    // All pictures in one batch on two threads: tract's multithreaded kernels and batching.
    let batch = refs.len();
    let trunk = Trunk::open(&dir.join("trunk"), batch, Threads::Multi(2)).unwrap();
    let inputs: Vec<Vec<f32>> = refs
        .iter()
        .map(|r| trunk.preprocess().load_and_apply(&r.image).unwrap())
        .collect();
    let got = trunk.embed(&inputs).unwrap();
    assert_eq!(got.len(), refs.len());
    for (g, r) in got.iter().zip(&refs) {
        check(
            &format!("{} (batch {batch}, 2 threads)", r.image.display()),
            g,
            r,
        );
    }
}

#[test]
fn max_abs_diff_finds_the_largest_difference() {
    assert_eq!(max_abs_diff(&[1.0, 2.0, 3.0], &[1.0, 2.5, 2.9]), (0.5, 1));
    assert_eq!(max_abs_diff(&[0.0], &[0.0]), (0.0, 0));
}

/// Parity of whole bundles (trunk + head + decoding, the board's real work), fp32 and int8
/// (`--quantize all`): `scripts/test.sh` exports a small detector into
/// `$KESTREL_PARITY_DIR/bundle` and `bundle-int8`, saves JPEG frames in `$KESTREL_PARITY_DIR/frames/`
/// and the x86 `kestrel-edge run --source dir:... --score-threshold 0` JSON lines (every cell that
/// survives NMS, so a barely trained model still gives many) in `bundle-reference.jsonl` and
/// `bundle-int8-reference.jsonl`. Here, the same frames through the same code: the same
/// detections, scores within 1e-3, boxes within 0.05 px. A detection may only be missing on one
/// side when its score is within 1e-3 of the threshold.
#[test]
#[cfg_attr(
    target_arch = "x86_64",
    ignore = "compares an aarch64 build with x86 references: scripts/test.sh runs it under qemu-aarch64 (KESTREL_PARITY_DIR, see the file's header)"
)]
fn bundle_detections_match_the_x86_reference() {
    let Some(dir) = std::env::var_os("KESTREL_PARITY_DIR") else {
        if std::env::var("KESTREL_PARITY_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIPPED: aarch64 bundle parity opted out with KESTREL_PARITY_SKIP=1");
            return;
        }
        panic!("KESTREL_PARITY_DIR is not set: scripts/test.sh makes the bundle reference");
    };
    let dir = PathBuf::from(dir);
    for bundle in ["bundle", "bundle-int8"] {
        bundle_matches(&dir, bundle);
    }
}

/// One bundle of `dir` against its x86 reference (see above).
fn bundle_matches(dir: &std::path::Path, bundle: &str) {
    use kestrel_edge::runtime::Detector;
    use kestrel_edge::sink::FrameResult;
    use kestrel_edge::source::{DirFrames, Recording, decode};
    use kestrel_edge::stats::Stats;

    const THRESHOLD: f32 = 0.0;
    let reference_file = dir.join(format!("{bundle}-reference.jsonl"));
    let text = std::fs::read_to_string(&reference_file).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (made by scripts/test.sh)",
            reference_file.display()
        )
    });
    let reference: Vec<FrameResult> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a FrameResult line"))
        .collect();
    assert!(reference.len() >= 4, "{bundle}: too few reference frames");
    let detector = Detector::open(&dir.join(bundle), Threads::Single)
        .unwrap()
        .with_score_threshold(THRESHOLD);
    // Kestrel's kernels run the trunk on this architecture too (features.0 - 13: 13 depthwise
    // convolutions and, in fp32, the stem and 25 pointwise ones; int8 keeps tract's int8 ones).
    let trunk = detector.bundle().trunk.model.replaced();
    let (dense, pointwise) = if bundle.contains("int8") {
        (0, 0)
    } else {
        (1, 25)
    };
    assert_eq!(
        (trunk.dense, trunk.depthwise, trunk.pointwise),
        (dense, 13, pointwise),
        "{bundle}: Kestrel's kernels on {}",
        std::env::consts::ARCH
    );
    let mut frames = DirFrames::open(&dir.join("frames")).unwrap();
    assert_eq!(frames.len(), reference.len());
    let mut stats = Stats::new("parity");
    let (mut compared, mut worst_score, mut worst_box) = (0, 0f32, 0f32);
    for r in &reference {
        let raw = frames.raw_frame(r.frame as usize).unwrap();
        let img = decode(&raw).unwrap();
        let (got, _, _) = detector.infer(&img, &mut stats).unwrap();
        let near = |s: f32| (s - THRESHOLD).abs() <= 1e-3;
        for want in &r.detections {
            let matched = got.iter().find(|g| {
                g.class == want.class && (g.score - want.score).abs() <= 1e-3 && {
                    let (a, b): ([f32; 4], [f32; 4]) = (g.bbox.into(), want.bbox.into());
                    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 0.05)
                }
            });
            match matched {
                Some(g) => {
                    compared += 1;
                    worst_score = worst_score.max((g.score - want.score).abs());
                    let (a, b): ([f32; 4], [f32; 4]) = (g.bbox.into(), want.bbox.into());
                    for (x, y) in a.iter().zip(b) {
                        worst_box = worst_box.max((x - y).abs());
                    }
                }
                None => assert!(
                    near(want.score),
                    "{bundle} frame {}: x86 detection {want:?} has no match here: {got:?}",
                    r.frame
                ),
            }
        }
        let extra = got.len().saturating_sub(r.detections.len());
        assert!(
            extra == 0 || got.iter().filter(|g| near(g.score)).count() >= extra,
            "{bundle} frame {}: {} detections here, {} on x86",
            r.frame,
            got.len(),
            r.detections.len()
        );
    }
    eprintln!(
        "{bundle} parity on {}: {compared} detections in {} frames, max score difference {worst_score:e}, max box difference {worst_box:e} px",
        std::env::consts::ARCH,
        reference.len()
    );
    assert!(compared > 0, "{bundle}: no detection to compare");
}

/// NNEF (what boards run) against the ONNX files it was converted from, on this architecture:
/// the bundles `scripts/test.sh` exports (fp32 and int8), their frames through both pairs, raw
/// outputs within 1e-5 of the largest output. Runs on x86 too (same-architecture check). Needs the
/// ONNX reader (the `onnx` feature; board builds have none and are checked by the test above).
#[cfg(feature = "onnx")]
#[test]
#[cfg_attr(
    target_arch = "x86_64",
    ignore = "needs the bundles scripts/test.sh makes (KESTREL_PARITY_DIR); it runs this with --include-ignored"
)]
fn nnef_outputs_equal_onnx_outputs() {
    use kestrel_edge::bundle::BundleOptions;
    use kestrel_edge::source::{DirFrames, Recording, decode};
    use kestrel_edge::{Bundle, ModelFormat};

    let Some(dir) = std::env::var_os("KESTREL_PARITY_DIR") else {
        if std::env::var("KESTREL_PARITY_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIPPED: NNEF/ONNX parity opted out with KESTREL_PARITY_SKIP=1");
            return;
        }
        panic!("KESTREL_PARITY_DIR is not set: scripts/test.sh makes the bundles");
    };
    let dir = PathBuf::from(dir);
    let mut frames = DirFrames::open(&dir.join("frames")).unwrap();
    let spec = |b: &Bundle| b.manifest.input.preprocess;
    for bundle in ["bundle", "bundle-int8"] {
        let open = |format| {
            let opts = BundleOptions {
                format: Some(format),
                ..BundleOptions::default()
            };
            Bundle::open_with(&dir.join(bundle), &opts).unwrap()
        };
        let (nnef, onnx) = (open(ModelFormat::Nnef), open(ModelFormat::Onnx));
        assert!(nnef.trunk.model.path().ends_with("trunk.nnef.tar"));
        assert!(onnx.trunk.model.path().ends_with("trunk.onnx"));
        let inputs: Vec<Vec<f32>> = (0..frames.len())
            .map(|i| spec(&nnef).apply(&decode(&frames.raw_frame(i).unwrap()).unwrap()))
            .collect();
        let (a, b) = (nnef.run(&inputs).unwrap(), onnx.run(&inputs).unwrap());
        let (a, b) = (a.concat(), b.concat());
        let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
        let (diff, at) = max_abs_diff(&a, &b);
        eprintln!(
            "{bundle} on {}: NNEF vs ONNX, {} values, max abs difference {diff:e} (largest output {scale})",
            std::env::consts::ARCH,
            a.len()
        );
        assert!(
            diff <= 1e-5 * scale,
            "{bundle}: value {at} is {} from NNEF but {} from ONNX",
            a[at],
            b[at]
        );
    }
}
