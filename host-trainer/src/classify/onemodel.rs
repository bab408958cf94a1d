//! The book's other approach: one model, the pretrained network with its trunk frozen and a new
//! head on top, trained end to end on pixels (every step runs the frozen trunk in burn).
//!
//! Slower than the two-model approach (nothing is cached), but it is the reference the two-model
//! approach must match, and it proves freezing: the optimiser sees the trunk and leaves it
//! bit-identical.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use kestrel_shared::CutPoint;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::head::{Head, HeadConfig};
use super::train::{
    EpochStats, Examples, FitStart, Fitted, TrainConfig, fit, logits_in_batches, loss_and_accuracy,
    stack,
};
use crate::mobilenet::{MobileNetV2, MobileNetV2Config};

/// Frozen pretrained trunk (cut at the pooled vector) plus a trainable head.
#[derive(Module, Debug)]
pub struct OneModel {
    /// MobileNetV2 up to the pooled 1280-vector, frozen.
    pub trunk: MobileNetV2,
    /// The new head.
    pub head: Head,
}

impl OneModel {
    /// Logits for preprocessed pictures `[N, 3, H, W]` (inference).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.trunk.forward(x).0)
    }
}

/// Logits of `model` for preprocessed pictures, in batches of 8.
pub fn one_model_logits(
    model: &OneModel,
    x: &[Vec<f32>],
    hw: (usize, usize),
    device: &Device,
) -> Vec<f32> {
    logits_in_batches(x.len(), 8, |idx| {
        model.forward(stack(x, idx, &[3, hw.0, hw.1], device))
    })
}

/// Train a head on top of the frozen pretrained trunk, end to end on preprocessed pictures.
/// The head starts from the same seeded initialisation as [`super::train::train_head`].
pub fn train_one_model(
    weights: &Path,
    cfg: &TrainConfig,
    classes: usize,
    hw: (usize, usize),
    data: Examples<'_>,
    device: &Device,
    on_epoch: &mut dyn FnMut(&EpochStats),
) -> anyhow::Result<Fitted<OneModel>> {
    let Examples {
        train_x,
        train_y,
        val_x,
        val_y,
    } = data;
    let ad = device.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let trunk = MobileNetV2Config::default()
        .load(weights, &ad)?
        .frozen_trunk(CutPoint::Pooled);
    let head = HeadConfig {
        kind: cfg.head,
        inputs: CutPoint::Pooled.channels(),
        classes,
    }
    .init(&ad, &mut rng);
    let start = FitStart {
        model: OneModel { trunk, head },
        rng: &mut rng,
        start_is_candidate: false,
        checkpoints: None,
    };
    Ok(fit(
        cfg.fit_settings(),
        start,
        train_y,
        &ad,
        &mut |m: &OneModel, idx, rng| {
            let features = m
                .trunk
                .forward(stack(train_x, idx, &[3, hw.0, hw.1], &ad))
                .0;
            m.head.forward_train(features, rng)
        },
        &mut |m: &OneModel| {
            loss_and_accuracy(&one_model_logits(m, val_x, hw, device), val_y, classes)
        },
        on_epoch,
    )?)
}
