//! burn's MobileNetV2, loaded from torchvision's weights, against torchvision's own outputs.
//!
//! Tolerances (max abs error): feature maps and the pooled vector 1e-4, logits 2e-3.

use kestrel_e2e::{golden, golden_manifest, max_abs_diff, photo, weights};
use kestrel_shared::{CutPoint, PreprocessSpec};
use kestrel_trainer::bench::synthetic_input;
use kestrel_trainer::predict::top_k;
use kestrel_trainer::{Backend, Pretrained};

const FEATURE_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 2e-3;

#[test]
fn synthetic_input_formula_matches_the_golden_input() {
    let ours = synthetic_input(224, 224);
    let theirs = golden("synthetic", "input");
    assert_eq!(theirs.shape, vec![1, 3, 224, 224]);
    assert!(max_abs_diff(&ours, &theirs.data) < 1e-6);
}

fn check_backend(backend: Backend) {
    let p = Pretrained::load(&weights(), backend).unwrap();
    let x = golden("synthetic", "input").data;
    for n in [0u8, 6, 13, 18] {
        let want = golden("synthetic", &format!("features.{n}"));
        let (got, shape) =
            p.model
                .clone()
                .truncate(CutPoint::Features(n))
                .run(x.clone(), 1, 224, 224, &p.device);
        assert_eq!(shape, want.shape, "features.{n} shape");
        let err = max_abs_diff(&got, &want.data);
        assert!(
            err <= FEATURE_TOL,
            "{backend:?} features.{n}: max abs err {err}"
        );
    }
    let want = golden("synthetic", "pooled");
    let (got, shape) =
        p.model
            .clone()
            .truncate(CutPoint::Pooled)
            .run(x.clone(), 1, 224, 224, &p.device);
    assert_eq!(shape, want.shape);
    let err = max_abs_diff(&got, &want.data);
    assert!(err <= FEATURE_TOL, "{backend:?} pooled: {err}");

    // Logits of all three cases in one batch (batching must not change results).
    let cases = ["synthetic", "chelsea", "coffee"];
    let input: Vec<f32> = cases.iter().flat_map(|c| golden(c, "input").data).collect();
    let (got, shape) = p.model.run(input, 3, 224, 224, &p.device);
    assert_eq!(shape, vec![3, 1000]);
    let manifest = golden_manifest();
    for (i, case) in cases.iter().enumerate() {
        let row = &got[i * 1000..(i + 1) * 1000];
        let err = max_abs_diff(row, &golden(case, "logits").data);
        assert!(err <= LOGIT_TOL, "{backend:?} {case} logits: {err}");
        let top5: Vec<usize> = top_k(row, 5).into_iter().map(|(c, _)| c).collect();
        let want: Vec<usize> = manifest["cases"][case]["top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t[0].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(top5, want, "{backend:?} {case} top-5");
    }
}

#[test]
fn flex_matches_torchvision() {
    check_backend(Backend::Flex);
}

#[test]
fn ndarray_matches_torchvision() {
    check_backend(Backend::Ndarray);
}

#[test]
fn photos_preprocessed_from_png_give_torchvision_top1() {
    let p = Pretrained::load(&weights(), Backend::Flex).unwrap();
    let spec = PreprocessSpec::imagenet();
    let manifest = golden_manifest();
    for case in ["chelsea", "coffee"] {
        let ours = spec.load_and_apply(&photo(&format!("{case}.png"))).unwrap();
        // Our resize differs slightly from PIL's; the tensors stay close.
        let theirs = golden(case, "input").data;
        let mean_err = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / ours.len() as f32;
        assert!(
            mean_err < 0.02,
            "{case}: mean preprocessing difference {mean_err}"
        );
        let (logits, _) = p.model.run(ours, 1, 224, 224, &p.device);
        let top1 = top_k(&logits, 1)[0].0 as u64;
        assert_eq!(
            top1,
            manifest["cases"][case]["top5"][0][0].as_u64().unwrap(),
            "{case}"
        );
    }
}

#[test]
fn frozen_trunk_on_a_training_device_stays_exact() {
    use kestrel_trainer::MobileNetV2Config;
    let device = Backend::Flex.device().autodiff();
    let trunk = MobileNetV2Config::default()
        .load(&weights(), &device)
        .unwrap()
        .frozen_trunk(CutPoint::Features(13));
    let layers = trunk.conv_layers();
    assert_eq!(
        layers.len(),
        1 + 2 + 12 * 3,
        "stem, block 1 (no expansion), blocks 2..13"
    );
    for l in &layers {
        assert!(!l.conv.weight.is_require_grad());
        assert!(!l.bn.gamma.is_require_grad() && !l.bn.beta.is_require_grad());
        assert!(!l.bn.training.is_enabled());
    }
    // Running statistics, not batch statistics: a batch of two different images gives each image
    // torchvision's output for it alone.
    let x: Vec<f32> = ["synthetic", "chelsea"]
        .iter()
        .flat_map(|c| golden(c, "input").data)
        .collect();
    let (got, shape) = trunk.run(x, 2, 224, 224, &device);
    assert_eq!(shape, vec![2, 96, 14, 14]);
    let per = 96 * 14 * 14;
    let err = max_abs_diff(&got[..per], &golden("synthetic", "features.13").data);
    assert!(err <= FEATURE_TOL, "frozen features.13 on autodiff: {err}");
}
