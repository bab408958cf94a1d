//! `--backend wgpu` against flex on tiny models: the same seeded training gives the same losses
//! step by step (within [`HEAD_TOL`], [`FINETUNE_TOL`]) and the loss goes down.
//!
//! Built only with `--features wgpu`. Needs a wgpu adapter: in CI, Mesa's software Vulkan driver
//! (lavapipe, Debian's `mesa-vulkan-drivers`), which `scripts/setup.sh --vulkan` installs. Without
//! an adapter these tests fail (they never pass by skipping).
#![cfg(feature = "wgpu")]

use std::time::Instant;

use burn::tensor::Device;
use kestrel_trainer::Backend;
use kestrel_trainer::backend::wgpu_adapter;
use kestrel_trainer::classify::finetune::{FineTuneConfig, TopModel, fine_tune};
use kestrel_trainer::classify::{
    EpochStats, Examples, FitWatch, HeadConfig, HeadKind, LrSchedule, OptimizerKind, TrainConfig,
    train_head,
};
use kestrel_trainer::mobilenet::{MobileNetV2Config, NUM_BLOCKS};
use kestrel_trainer::ops::{OpsMode, with_mode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Largest relative difference allowed between a flex loss and the wgpu loss of the same step,
/// head training. Measured on lavapipe (Mesa 22.3.6, LLVM 15): 2.3e-7.
const HEAD_TOL: f64 = 1e-5;

/// The same for fine-tuning through an inverted-residual block. Measured on lavapipe: 9.8e-5 by
/// the fourth step (1.9e-4 and 3.2e-4 with other initial weights), the same as flex's own two
/// implementations differ by (fused ops against burn's: 9.8e-5, printed as "calibration"): float
/// sums in another order, which Adam's normalised steps amplify from step to step.
const FINETUNE_TOL: f64 = 1e-3;

/// The wgpu device, or a failure saying why (never a silent skip). With `CI` set the adapter must
/// be a Vulkan one (lavapipe there), not wgpu's OpenGL fallback.
fn wgpu() -> Device {
    let ci = std::env::var_os("CI").is_some();
    let device = Backend::Wgpu
        .try_device()
        .unwrap_or_else(|e| panic!("{e:#}{}", if ci { " (CI is set)" } else { "" }));
    let adapter = wgpu_adapter().expect("set up with the device");
    eprintln!("wgpu adapter: {adapter}");
    assert!(
        !ci || adapter.api == "Vulkan",
        "CI is set but the wgpu adapter is not a Vulkan one ({adapter}): install a Vulkan driver \
         (Debian: apt-get install mesa-vulkan-drivers libvulkan1)"
    );
    device
}

/// `n` seeded values in `[-scale, scale)`.
fn values(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Seeded classes: item `i` has class `i % classes` and 1 added to its class's slice of values.
fn items(n: usize, len: usize, classes: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let y: Vec<usize> = (0..n).map(|i| i % classes).collect();
    let x = y
        .iter()
        .map(|&k| {
            let mut v = values(&mut rng, len, 1.0);
            let part = len / classes;
            for x in &mut v[k * part..(k + 1) * part] {
                *x += 1.0;
            }
            v
        })
        .collect();
    (x, y)
}

/// Per-step (one batch per epoch) training and validation losses of flex and wgpu side by side;
/// returns the largest relative difference.
fn compare(what: &str, flex: &[EpochStats], wgpu: &[EpochStats], tol: f64) -> f64 {
    assert_eq!(flex.len(), wgpu.len(), "{what}: steps");
    let mut worst = 0f64;
    for (f, g) in flex.iter().zip(wgpu) {
        for (a, b) in [(f.train_loss, g.train_loss), (f.val_loss, g.val_loss)] {
            assert!(a.is_finite() && b.is_finite(), "{what}: loss {a} vs {b}");
            let rel = (a - b).abs() / a.abs().max(1e-3);
            worst = worst.max(rel);
            assert!(
                rel <= tol,
                "{what} step {}: flex {a} vs wgpu {b} (relative {rel:.2e} > {tol:.0e})",
                f.epoch
            );
        }
        eprintln!(
            "{what} step {}: train loss flex {:.7} wgpu {:.7}, val loss flex {:.7} wgpu {:.7}",
            f.epoch, f.train_loss, g.train_loss, f.val_loss, g.val_loss
        );
    }
    let (first, last) = (flex[0].train_loss, flex[flex.len() - 1].train_loss);
    assert!(
        last < 0.8 * first,
        "{what}: loss does not go down ({first} -> {last})"
    );
    eprintln!("{what}: largest relative difference {worst:.2e}");
    worst
}

#[test]
fn head_training_matches_flex() {
    let device = wgpu();
    let (tx, ty) = items(64, 48, 4, 1);
    let (vx, vy) = items(32, 48, 4, 2);
    // The whole set is one batch: each epoch is one optimiser step. Dropout masks come from the
    // seeded generator, not the backend's, so both backends draw the same ones.
    let cfg = TrainConfig {
        head: HeadKind::Dense {
            units: 32,
            dropout: 0.2,
        },
        optimizer: OptimizerKind::Adam,
        lr: 1e-2,
        epochs: 8,
        batch_size: 64,
        seed: 5,
        patience: 0,
        lr_schedule: LrSchedule::Constant,
    };
    let run = |d: &Device| {
        let t = Instant::now();
        let data = Examples {
            train_x: &tx,
            train_y: &ty,
            val_x: &vx,
            val_y: &vy,
        };
        let r = train_head(&cfg, 4, data, d, FitWatch::epochs(&mut |_| {})).unwrap();
        (r.history, t.elapsed())
    };
    let (flex, tf) = run(&Device::flex());
    let (gpu, tg) = run(&device);
    eprintln!(
        "head: flex {tf:.2?}, wgpu {tg:.2?} for {} steps",
        flex.len()
    );
    compare("head", &flex, &gpu, HEAD_TOL);
}

#[test]
fn fine_tuning_one_block_matches_flex() {
    let device = wgpu();
    // The last inverted-residual block (features.17: 160 -> 960 -> 320 channels, depthwise 3x3),
    // features.18 (1x1 to 1280) and a linear head, on 4x4 prefix maps. Initialised once on flex
    // (burn's random init is per backend) and copied to wgpu.
    let flex = Device::flex();
    flex.seed(11);
    let full = MobileNetV2Config::default().init(&flex);
    let head = HeadConfig {
        kind: HeadKind::Linear,
        inputs: 1280,
        classes: 3,
    }
    .init(&flex, &mut ChaCha8Rng::seed_from_u64(0));
    let top = TopModel {
        blocks: full.blocks.into_iter().skip(NUM_BLOCKS - 1).collect(),
        last: full.last.expect("features.18"),
        head,
    };
    let shape = [160, 4, 4];
    let (tx, ty) = items(12, 160 * 16, 3, 3);
    let (vx, vy) = items(6, 160 * 16, 3, 4);
    let cfg = FineTuneConfig {
        blocks: 1,
        epochs: 4,
        lr: 1e-3,
        batch_size: 12,
        seed: 7,
    };
    let run = |start: TopModel, d: &Device| {
        let t = Instant::now();
        let data = Examples {
            train_x: &tx,
            train_y: &ty,
            val_x: &vx,
            val_y: &vy,
        };
        let r = fine_tune(
            &cfg,
            start,
            3,
            shape,
            data,
            d,
            FitWatch::epochs(&mut |_| {}),
        )
        .unwrap();
        (r.history, t.elapsed())
    };
    let on_gpu = top.clone();
    let burn_ops = top.clone();
    let (f, tf) = run(top, &flex);
    let (g, tg) = run(on_gpu, &device);
    let (b, _) = with_mode(OpsMode::BurnOps, || run(burn_ops, &flex));
    for (x, y) in f.iter().zip(&b) {
        eprintln!(
            "calibration step {}: flex fused vs flex burn-ops: train {:.2e}, val {:.2e}",
            x.epoch,
            (x.train_loss - y.train_loss).abs() / x.train_loss,
            (x.val_loss - y.val_loss).abs() / x.val_loss
        );
    }
    eprintln!(
        "fine-tune: flex {tf:.2?}, wgpu {tg:.2?} for {} steps (plus validation)",
        f.len()
    );
    compare("fine-tune", &f, &g, FINETUNE_TOL);
}
