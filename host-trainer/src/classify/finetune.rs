//! Phase 2 of the book's transfer learning: unfreeze the top inverted-residual blocks and train
//! them together with the head at a lower learning rate.
//!
//! The frozen prefix (everything below the unfrozen blocks) never changes, so its outputs are
//! computed once through the ONNX trunk cut there (tract) and cached like embeddings; phase 2 only
//! runs the top blocks, the last 1x1 convolution, the pooling and the head.

use std::path::Path;

use burn::module::{Flag, Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor};
use kestrel_shared::CutPoint;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::head::Head;
use super::train::{
    EpochStats, Examples, FitSettings, FitStart, FitWatch, LrSchedule, OptimizerKind, fit,
    logits_in_batches, loss_and_accuracy, stack,
};
use crate::checkpoint::CheckpointError;
use crate::mobilenet::{ConvBn, InvertedResidual, MobileNetV2, MobileNetV2Config, NUM_BLOCKS};

/// The trainable top of the network: the unfrozen blocks, the last convolution, pooling, head.
#[derive(Module, Debug)]
pub struct TopModel {
    /// Unfrozen inverted-residual blocks (pretrained weights to start).
    pub blocks: Vec<InvertedResidual>,
    /// `features.18`.
    pub last: ConvBn,
    /// The head (phase-1 weights to start).
    pub head: Head,
}

/// Puts every BatchNorm on its running statistics (small fine-tuning batches would make batch
/// statistics noisy), while its scale and shift stay trainable.
pub(crate) struct RunningStats;

impl ModuleMapper for RunningStats {
    fn map_flag(&mut self, flag: Param<Flag>) -> Param<Flag> {
        flag.with_value(false)
    }
}

/// Phase-2 settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FineTuneConfig {
    /// Number of top inverted-residual blocks to unfreeze (1..=17).
    pub blocks: usize,
    /// Epochs of phase 2.
    pub epochs: usize,
    /// Learning rate (lower than phase 1's).
    pub lr: f64,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Seed for shuffling and dropout.
    pub seed: u64,
}

impl FineTuneConfig {
    /// Where the frozen prefix ends: the trunk is cut there and its outputs cached.
    pub fn prefix_cut(&self) -> CutPoint {
        CutPoint::Features((NUM_BLOCKS - self.blocks) as u8)
    }
}

/// Result of phase 2.
#[derive(Debug)]
pub struct FineTuneResult {
    /// The best top model (lowest validation loss), inference device.
    pub model: TopModel,
    /// One row per epoch.
    pub history: Vec<EpochStats>,
    /// Epoch whose model was kept (0 = the starting point was never beaten).
    pub best_epoch: usize,
}

impl TopModel {
    /// Build from pretrained weights (top `n` blocks and `features.18`) and a trained head.
    pub fn from_pretrained(
        weights: &Path,
        n: usize,
        head: Head,
        device: &Device,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=NUM_BLOCKS).contains(&n),
            "--fine-tune-blocks must be 1..={NUM_BLOCKS}, got {n}"
        );
        let full: MobileNetV2 = MobileNetV2Config::default().load(weights, device)?;
        let blocks = full.blocks.into_iter().skip(NUM_BLOCKS - n).collect();
        Ok(TopModel {
            blocks,
            last: full.last.expect("full model has features.18"),
            head: head.fork(device),
        })
    }

    fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = x;
        for b in &self.blocks {
            x = b.forward(x);
        }
        MobileNetV2::pool(self.last.forward(x))
    }

    /// Logits from prefix features `[N, C, H, W]` (inference).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }

    fn forward_train(&self, x: Tensor<4>, rng: &mut ChaCha8Rng) -> Tensor<2> {
        self.head.forward_train(self.features(x), rng)
    }
}

/// Move `start` to the training device with every BatchNorm on its running statistics.
pub(crate) fn prepare(start: TopModel, ad: &Device) -> TopModel {
    start.fork(ad).train().map(&mut RunningStats)
}

/// One layer moved to the training device with its BatchNorm on running statistics (tests).
#[cfg(test)]
pub(crate) fn prepare_layer(layer: ConvBn, ad: &Device) -> ConvBn {
    layer.fork(ad).train().map(&mut RunningStats)
}

/// Logits of `model` for every prefix feature map in `x` (inference, batches of 16).
pub fn top_logits(
    model: &TopModel,
    x: &[Vec<f32>],
    shape: [usize; 3],
    device: &Device,
) -> Vec<f32> {
    logits_in_batches(x.len(), 16, |idx| {
        model.forward(stack(x, idx, &shape, device))
    })
}

/// Train the top blocks and the head on cached prefix features. `start` is the model built by
/// [`TopModel::from_pretrained`]; it competes as epoch 0, so phase 2 never ends worse than it began.
pub fn fine_tune(
    cfg: &FineTuneConfig,
    start: TopModel,
    classes: usize,
    shape: [usize; 3],
    data: Examples<'_>,
    device: &Device,
    watch: FitWatch<'_>,
) -> Result<FineTuneResult, CheckpointError> {
    let FitWatch {
        on_epoch,
        checkpoints,
    } = watch;
    let Examples {
        train_x,
        train_y,
        val_x,
        val_y,
    } = data;
    let ad = device.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let settings = FitSettings {
        epochs: cfg.epochs,
        batch_size: cfg.batch_size,
        lr: cfg.lr,
        patience: 0,
        optimizer: OptimizerKind::Adam,
        schedule: LrSchedule::Constant,
    };
    // The untrained top competes: phase 2 never ends worse than it began.
    let from = FitStart {
        model: prepare(start, &ad),
        rng: &mut rng,
        start_is_candidate: true,
        checkpoints,
    };
    let fitted = fit(
        settings,
        from,
        train_y,
        &ad,
        &mut |m: &TopModel, idx, rng| m.forward_train(stack(train_x, idx, &shape, &ad), rng),
        &mut |m: &TopModel| loss_and_accuracy(&top_logits(m, val_x, shape, device), val_y, classes),
        on_epoch,
    )?;
    Ok(FineTuneResult {
        model: fitted.model,
        history: fitted.history,
        best_epoch: fitted.best_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::head::{HeadConfig, HeadKind};

    #[test]
    fn batchnorm_runs_on_running_statistics_while_training() {
        let device = Device::flex();
        let full = MobileNetV2Config::default().init(&device);
        let head = HeadConfig {
            kind: HeadKind::Linear,
            inputs: 1280,
            classes: 3,
        }
        .init(&device, &mut ChaCha8Rng::seed_from_u64(0));
        let top = TopModel {
            blocks: full.blocks.into_iter().skip(15).collect(),
            last: full.last.unwrap(),
            head,
        };
        let m = prepare(top, &device.autodiff());
        assert!(!m.blocks[0].depthwise.bn.training.is_enabled());
        assert!(!m.last.bn.training.is_enabled());
    }
}
