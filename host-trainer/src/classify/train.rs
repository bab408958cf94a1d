//! Training a head on cached embeddings: mini-batches, Adam / SGD with momentum / RMSProp,
//! early stopping on validation loss with the best head kept. Same seed, same result.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{
    AdamConfig, GradientsParams, ModuleOptimizer, RmsPropConfig, SgdConfig,
    momentum::MomentumConfig,
};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::head::{Head, HeadConfig, HeadKind};
use crate::checkpoint::{Best, CheckpointError, FitCheckpoints, FitState, RngState};
use std::path::Path;

/// Optimisers offered for the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (default).
    Adam,
    /// SGD with momentum 0.9.
    Sgd,
    /// RMSProp.
    Rmsprop,
}

impl OptimizerKind {
    /// A fresh optimiser of this kind.
    pub fn init(self) -> ModuleOptimizer {
        match self {
            OptimizerKind::Adam => AdamConfig::new().init(),
            OptimizerKind::Sgd => SgdConfig::new()
                .with_momentum(Some(
                    MomentumConfig::new().with_momentum(0.9).with_dampening(0.0),
                ))
                .init(),
            OptimizerKind::Rmsprop => RmsPropConfig::new().init(),
        }
    }
}

/// How the learning rate moves over a fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// The same rate at every step.
    #[default]
    Constant,
    /// Half a cosine, step by step, from the rate down to 1% of it at the last of the maximum
    /// epochs: large steps to get near, small ones to settle (early stopping still applies).
    Cosine,
}

impl LrSchedule {
    /// The rate at `step` (0-based) of `total` steps, for the base rate `lr`.
    pub fn rate(self, lr: f64, step: usize, total: usize) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => {
                let floor = lr * 0.01;
                let t = step.min(total) as f64 / total.max(1) as f64;
                floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Head training settings (written to the run's `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Head layers.
    pub head: HeadKind,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// Maximum epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Seed for initialisation, shuffling and dropout.
    pub seed: u64,
    /// Stop after this many epochs without a better validation loss (0 = never stop early).
    pub patience: usize,
    /// Learning-rate schedule.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
}

/// What training uses for an option the user did not give (`kestrel train classify|detect`);
/// each task, and each detection head, has its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainDefaults {
    /// Learning rate of phase 1.
    pub lr: f64,
    /// Learning-rate schedule.
    pub lr_schedule: LrSchedule,
    /// Maximum epochs of phase 1.
    pub epochs: usize,
    /// Early-stopping patience (0 = never).
    pub patience: usize,
    /// Blocks below the cut unfrozen in phase 2 (0 = no phase 2).
    pub fine_tune_blocks: usize,
    /// Epochs of phase 2.
    pub fine_tune_epochs: usize,
    /// Phase 2's learning rate is phase 1's divided by this.
    pub fine_tune_lr_divisor: f64,
}

impl TrainDefaults {
    /// Classification: Adam at 1e-3, 30 epochs, patience 5, then phase 2 on the top 2 blocks
    /// for 5 epochs at a hundredth of the rate (with BatchNorm on fixed statistics, larger steps
    /// undo the pretrained features). On scikit-learn's handwritten digits (1,797 pictures,
    /// seeds 0-2) phase 2 took validation accuracy from 0.969 to 0.975 on average, for about
    /// 35 s more on 2 cores.
    pub const CLASSIFY: TrainDefaults = TrainDefaults {
        lr: 1e-3,
        lr_schedule: LrSchedule::Constant,
        epochs: 30,
        patience: 5,
        fine_tune_blocks: 2,
        fine_tune_epochs: 5,
        fine_tune_lr_divisor: 100.0,
    };
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            head: HeadKind::Dense {
                units: 100,
                dropout: 0.2,
            },
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            epochs: 30,
            batch_size: 32,
            seed: 0,
            patience: 5,
            lr_schedule: LrSchedule::Constant,
        }
    }
}

/// Loss and accuracy after one epoch (NaN is written as null, and read back as NaN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Training accuracy over the epoch (with dropout active).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_accuracy: f64,
    /// Validation loss (NaN without a validation set).
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss: f64,
    /// Validation accuracy (NaN without a validation set).
    #[serde(deserialize_with = "nan_if_null")]
    pub val_accuracy: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
}

/// JSON has no NaN: serde_json writes it as null, and this reads null back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A trained head with its history.
#[derive(Debug)]
pub struct TrainResult {
    /// The best head (lowest validation loss), on the inference device.
    pub head: Head,
    /// One row per epoch run.
    pub history: Vec<EpochStats>,
    /// Epoch whose head was kept.
    pub best_epoch: usize,
}

/// Items of `x` selected by `idx`, stacked into a `[idx.len(), item...]` tensor (an item is an
/// embedding, a feature map or a picture, flattened).
pub fn stack<const D: usize>(
    x: &[Vec<f32>],
    idx: &[usize],
    item: &[usize],
    device: &Device,
) -> Tensor<D> {
    let data: Vec<f32> = idx.iter().flat_map(|&i| x[i].iter().copied()).collect();
    let shape: Vec<usize> = std::iter::once(idx.len())
        .chain(item.iter().copied())
        .collect();
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Logits for `n` items, computed `chunk` at a time by `forward` (inference), concatenated.
pub fn logits_in_batches(
    n: usize,
    chunk: usize,
    forward: impl Fn(&[usize]) -> Tensor<2>,
) -> Vec<f32> {
    let idx: Vec<usize> = (0..n).collect();
    let mut out = Vec::new();
    for c in idx.chunks(chunk) {
        out.extend(
            forward(c)
                .into_data()
                .try_into_vec::<f32>()
                .expect("float logits"),
        );
    }
    out
}

fn labels(y: &[usize], idx: &[usize], device: &Device) -> Tensor<1, Int> {
    let data: Vec<i64> = idx.iter().map(|&i| y[i] as i64).collect();
    Tensor::from_data(TensorData::new(data, [idx.len()]), device)
}

/// Predicted class of each row of logits.
pub fn argmax_rows(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks(classes)
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0)
        })
        .collect()
}

/// Logits of a head for every row of `x`, in batches, on the inference device.
pub fn head_logits(head: &Head, x: &[Vec<f32>], device: &Device) -> Vec<f32> {
    let d = [x.first().map_or(0, Vec::len)];
    logits_in_batches(x.len(), 256, |idx| head.forward(stack(x, idx, &d, device)))
}

/// Mean cross-entropy of rows of logits against their labels (NaN for an empty set).
pub fn cross_entropy(logits: &[f32], y: &[usize], classes: usize) -> f64 {
    if y.is_empty() {
        return f64::NAN;
    }
    let mut loss = 0.0;
    for (row, &t) in logits.chunks(classes).zip(y) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        loss += lse - row[t] as f64;
    }
    loss / y.len() as f64
}

/// Mean cross-entropy and accuracy from rows of logits (NaN for an empty set).
pub fn loss_and_accuracy(logits: &[f32], y: &[usize], classes: usize) -> (f64, f64) {
    if y.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let pred = argmax_rows(logits, classes);
    let correct = pred.iter().zip(y).filter(|(p, t)| p == t).count();
    (
        cross_entropy(logits, y, classes),
        correct as f64 / y.len() as f64,
    )
}

/// Mean cross-entropy and accuracy of `head` on a set (inference mode).
pub fn evaluate(
    head: &Head,
    x: &[Vec<f32>],
    y: &[usize],
    classes: usize,
    device: &Device,
) -> (f64, f64) {
    loss_and_accuracy(&head_logits(head, x, device), y, classes)
}

/// Settings of the shared training loop.
#[derive(Debug, Clone, Copy)]
pub struct FitSettings {
    /// Maximum epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// Early-stopping patience in epochs (0 = never stop early).
    pub patience: usize,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// How the rate moves from step to step.
    pub schedule: LrSchedule,
}

/// What [`fit`] returns: the best model (validation snapshot), the history and its epoch.
pub struct Fitted<M> {
    /// Best model by validation loss (inference snapshot).
    pub model: M,
    /// One row per epoch run.
    pub history: Vec<EpochStats>,
    /// Epoch of the kept model (0 = the starting model, when it was a candidate and never beaten).
    pub best_epoch: usize,
}

/// What one training batch gives back: its loss (on the autodiff device, a scalar) and, for
/// classifiers, how many of its items were classified right.
pub struct BatchLoss {
    /// Mean loss of the batch.
    pub loss: Tensor<1>,
    /// Correct items, when the task has a notion of accuracy.
    pub hits: Option<Tensor<1, Int>>,
}

/// The training loop every trainable part shares (head, fine-tuned top, one-model network):
/// shuffled mini-batches, cross-entropy, an optimiser step, validation after each epoch, the model
/// with the lowest validation loss kept, early stopping.
///
/// `forward` gives training logits for a batch of training indices (on the autodiff device);
/// `validate` gives validation loss and accuracy of an inference snapshot.
pub fn fit<M: Module>(
    settings: FitSettings,
    start: FitStart<'_, M>,
    train_y: &[usize],
    ad: &Device,
    forward: &mut dyn FnMut(&M, &[usize], &mut ChaCha8Rng) -> Tensor<2>,
    validate: &mut dyn FnMut(&M) -> (f64, f64),
    on_epoch: &mut dyn FnMut(&EpochStats),
) -> Result<Fitted<M>, CheckpointError> {
    let loss_fn = CrossEntropyLossConfig::new().init(ad);
    fit_batches(
        settings,
        start,
        train_y.len(),
        &mut |m, idx, rng| {
            let logits = forward(m, idx, rng);
            let targets = labels(train_y, idx, ad);
            let hits = logits
                .clone()
                .inner()
                .argmax(1)
                .reshape([idx.len()])
                .equal(targets.clone().inner())
                .int()
                .sum();
            BatchLoss {
                loss: loss_fn.forward(logits, targets),
                hits: Some(hits),
            }
        },
        validate,
        on_epoch,
    )
}

/// Where a fit starts: the model, the randomness it draws from, whether the untrained model
/// competes for "best" (phase 2 must never end worse than it began), and where it keeps its
/// per-epoch checkpoints (a fit that finds one there continues from it).
pub struct FitStart<'r, M> {
    /// The model before training.
    pub model: M,
    /// Shuffling, dropout and augmentation draw from it.
    pub rng: &'r mut ChaCha8Rng,
    /// Validate the untrained model and keep it if no epoch beats it.
    pub start_is_candidate: bool,
    /// Checkpoint folder of this fit (None: no checkpoints).
    pub checkpoints: Option<&'r FitCheckpoints>,
}

/// [`fit`] for any loss: `batch` computes the loss of a batch of training indices (classification,
/// the detectors' custom losses). `validate` returns (validation loss, validation score).
///
/// With checkpoints, the state after each epoch is committed after `on_epoch` has seen it; a fit
/// that finds a committed state resumes after it and gives the numbers of an uninterrupted fit.
pub fn fit_batches<M: Module>(
    settings: FitSettings,
    start: FitStart<'_, M>,
    n_train: usize,
    batch: &mut dyn FnMut(&M, &[usize], &mut ChaCha8Rng) -> BatchLoss,
    validate: &mut dyn FnMut(&M) -> (f64, f64),
    on_epoch: &mut dyn FnMut(&EpochStats),
) -> Result<Fitted<M>, CheckpointError> {
    let FitStart {
        mut model,
        rng,
        start_is_candidate,
        checkpoints,
    } = start;
    let mut optim = settings.optimizer.init();
    let mut order: Vec<usize> = (0..n_train).collect();
    let steps_per_epoch = n_train.div_ceil(settings.batch_size.max(1));
    let total_steps = settings.epochs * steps_per_epoch;
    let mut step = 0usize;
    let mut history = Vec::new();
    let mut best: Option<(f64, usize, M)> = None;
    let mut first_epoch = 1;
    let mut done = false;
    // The best model is written when it changes (the starting model at the first commit).
    let mut best_changed = false;
    if let Some(restored) = checkpoints.map(FitCheckpoints::read).transpose()?.flatten() {
        let state = &restored.state;
        restored.load(&mut model, &state.model)?;
        optim = restored.optimizer(optim)?;
        *rng = restored.rng()?;
        if let Some(b) = &state.best {
            let mut snapshot = model.valid();
            restored.load(&mut snapshot, &b.file)?;
            best = Some((b.score, b.epoch, snapshot));
        }
        (step, history, first_epoch, done) = (
            state.step,
            state.history.clone(),
            state.epoch + 1,
            state.done,
        );
        // Each epoch shuffles the order the last one left.
        if state.order.len() != n_train {
            return Err(restored.mismatch(format!(
                "it trained on {} examples, the data now gives {n_train}",
                state.order.len()
            )));
        }
        order = state.order.clone();
        tracing::info!(
            "resuming after epoch {} from {}",
            state.epoch,
            checkpoints.map_or(Path::new(""), |c| c.dir()).display()
        );
    } else if start_is_candidate {
        let snapshot = model.valid();
        let (loss, _) = validate(&snapshot);
        if loss.is_finite() {
            best = Some((loss, 0, snapshot));
            best_changed = true;
        }
    }
    let mut epoch = first_epoch;
    while epoch <= settings.epochs && !done {
        order.shuffle(rng);
        // Loss and hits stay on the device during the epoch: one read at its end, not one per step.
        let mut loss_sum: Option<Tensor<1>> = None;
        let mut hits: Option<Tensor<1, Int>> = None;
        let mut batches = 0usize;
        for idx in order.chunks(settings.batch_size.max(1)) {
            let out = batch(&model, idx, rng);
            if let Some(h) = out.hits {
                hits = Some(match hits {
                    Some(t) => t + h,
                    None => h,
                });
            }
            let l = out.loss.clone().inner();
            loss_sum = Some(match loss_sum {
                Some(t) => t + l,
                None => l,
            });
            batches += 1;
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            let lr = settings.schedule.rate(settings.lr, step, total_steps);
            step += 1;
            model = optim.step(lr, model, grads);
        }
        let loss_sum = loss_sum.map_or(0.0, |t| t.into_scalar::<f32>() as f64);
        let train_accuracy = hits.map_or(f64::NAN, |t| {
            t.into_scalar::<i64>() as f64 / n_train.max(1) as f64
        });
        let snapshot = model.valid();
        let (val_loss, val_accuracy) = validate(&snapshot);
        let stats = EpochStats {
            epoch,
            train_loss: loss_sum / batches.max(1) as f64,
            train_accuracy,
            val_loss,
            val_accuracy,
            lr: settings
                .schedule
                .rate(settings.lr, step.saturating_sub(1), total_steps),
        };
        on_epoch(&stats);
        history.push(stats);
        // Without a validation set, the latest model is the best one.
        let score = if val_loss.is_nan() {
            -(epoch as f64)
        } else {
            val_loss
        };
        if best.as_ref().is_none_or(|(b, _, _)| score < *b) {
            best = Some((score, epoch, snapshot));
            best_changed = true;
        } else if settings.patience > 0
            && epoch - best.as_ref().map_or(0, |b| b.1) >= settings.patience
        {
            tracing::info!(
                "early stop at epoch {epoch}: no better validation loss for {} epochs",
                settings.patience
            );
            done = true;
        }
        done |= epoch == settings.epochs;
        if let Some(c) = checkpoints {
            let (model_file, optimizer_file) = FitState::names(epoch);
            let state = FitState {
                epoch,
                step,
                rng: RngState::of(rng),
                history: history.clone(),
                best: best.as_ref().map(|(score, e, _)| Best {
                    score: *score,
                    epoch: *e,
                    file: format!("best-{e}.bpk"),
                }),
                done,
                order: order.clone(),
                model: model_file,
                optimizer: optimizer_file,
            };
            let best_model = best.as_ref().filter(|_| best_changed).map(|b| &b.2);
            c.commit(&state, &model, &optim, best_model)?;
            best_changed = false;
        }
        epoch += 1;
    }
    let (_, best_epoch, model) = best.unwrap_or_else(|| (0.0, 0, model.valid()));
    Ok(Fitted {
        model,
        history,
        best_epoch,
    })
}

impl TrainConfig {
    /// The loop settings of this configuration.
    pub fn fit_settings(&self) -> FitSettings {
        FitSettings {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            patience: self.patience,
            optimizer: self.optimizer,
            schedule: self.lr_schedule,
        }
    }
}

/// What the caller of a fit sees and keeps: each epoch's statistics as it ends (progress
/// display), and the folder each epoch is committed to (a committed state is resumed from).
pub struct FitWatch<'a> {
    /// Called after every epoch.
    pub on_epoch: &'a mut dyn FnMut(&EpochStats),
    /// Checkpoint folder of the fit (None: no checkpoints).
    pub checkpoints: Option<&'a FitCheckpoints>,
}

impl<'a> FitWatch<'a> {
    /// Epoch statistics to `on_epoch`, no checkpoints.
    pub fn epochs(on_epoch: &'a mut dyn FnMut(&EpochStats)) -> FitWatch<'a> {
        FitWatch {
            on_epoch,
            checkpoints: None,
        }
    }
}

/// Examples (embeddings or pictures, as flat vectors) with their class labels, split into a
/// training set and a held-out set (which may be empty).
#[derive(Debug, Clone, Copy)]
pub struct Examples<'a> {
    /// Training examples.
    pub train_x: &'a [Vec<f32>],
    /// Their labels.
    pub train_y: &'a [usize],
    /// Held-out examples (validation each epoch, early stopping).
    pub val_x: &'a [Vec<f32>],
    /// Their labels.
    pub val_y: &'a [usize],
}

/// Train a head on embeddings `train_x` (labels `train_y`), validating on `val_x` each epoch.
///
/// `device` is the inference device of a backend (e.g. `Device::flex()`); training runs on its
/// autodiff version. `watch` sees each epoch's statistics as they come and says where each epoch
/// is committed.
pub fn train_head(
    cfg: &TrainConfig,
    classes: usize,
    data: Examples<'_>,
    device: &Device,
    watch: FitWatch<'_>,
) -> Result<TrainResult, CheckpointError> {
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
    assert!(!train_x.is_empty(), "no training embeddings");
    let ad = device.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let head_cfg = HeadConfig {
        kind: cfg.head,
        inputs: train_x[0].len(),
        classes,
    };
    let model = head_cfg.init(&ad, &mut rng);
    let start = FitStart {
        model,
        rng: &mut rng,
        start_is_candidate: false,
        checkpoints,
    };
    let fitted = fit(
        cfg.fit_settings(),
        start,
        train_y,
        &ad,
        &mut |m: &Head, idx, rng| {
            m.forward_train(stack(train_x, idx, &[train_x[0].len()], &ad), rng)
        },
        &mut |m: &Head| evaluate(m, val_x, val_y, classes, device),
        on_epoch,
    )?;
    Ok(TrainResult {
        head: fitted.model,
        history: fitted.history,
        best_epoch: fitted.best_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaussian blobs: class k centred at +3 on coordinate k, noise 1.0, in 16 dimensions.
    fn blobs(n_per: usize, classes: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for k in 0..classes {
            for _ in 0..n_per {
                let mut v: Vec<f32> = (0..16).map(|_| rng.random_range(-1.0..1.0)).collect();
                v[k] += 3.0;
                x.push(v);
                y.push(k);
            }
        }
        (x, y)
    }

    fn run(cfg: &TrainConfig) -> TrainResult {
        run_with(cfg, None, &mut |_| {}).unwrap()
    }

    fn run_with(
        cfg: &TrainConfig,
        checkpoints: Option<&FitCheckpoints>,
        on_epoch: &mut dyn FnMut(&EpochStats),
    ) -> Result<TrainResult, CheckpointError> {
        let (tx, ty) = blobs(40, 3, 1);
        let (vx, vy) = blobs(10, 3, 2);
        train_head(
            cfg,
            3,
            Examples {
                train_x: &tx,
                train_y: &ty,
                val_x: &vx,
                val_y: &vy,
            },
            &Device::flex(),
            FitWatch {
                on_epoch,
                checkpoints,
            },
        )
    }

    /// A fit that dies after epoch 3 (a panic in the epoch callback, before the epoch is
    /// committed) and is resumed gives the uninterrupted fit's history and best head to the last
    /// bit: the model, Adam's moments, the generator and the schedule's step all come back.
    #[test]
    fn a_resumed_fit_gives_the_uninterrupted_numbers() {
        let cfg = TrainConfig {
            epochs: 7,
            lr: 0.01,
            patience: 0,
            lr_schedule: LrSchedule::Cosine,
            ..TrainConfig::default()
        };
        let whole = run(&cfg);
        let dir = tempfile::tempdir().unwrap();
        let ck = FitCheckpoints::new(dir.path());
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_with(&cfg, Some(&ck), &mut |e| {
                assert!(e.epoch < 4, "killed in epoch {}", e.epoch);
            })
        }));
        assert!(cut.is_err());
        assert_eq!(ck.epochs_done(), 3);
        let mut seen = Vec::new();
        let resumed = run_with(&cfg, Some(&ck), &mut |e| seen.push(e.epoch)).unwrap();
        assert_eq!(seen, vec![4, 5, 6, 7], "only the missing epochs run");
        assert_eq!(resumed.history, whole.history);
        assert_eq!(resumed.best_epoch, whole.best_epoch);
        let (vx, _) = blobs(10, 3, 2);
        let d = Device::flex();
        assert_eq!(
            head_logits(&resumed.head, &vx, &d),
            head_logits(&whole.head, &vx, &d)
        );
        // Only the last epoch's files stay beside the state.
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        let best = format!("best-{}.bpk", whole.best_epoch);
        let mut want = vec![
            best,
            "last-7.bpk".into(),
            "optimizer-7.bpk".into(),
            "state.json".into(),
        ];
        want.sort();
        assert_eq!(files, want);
        // A finished fit resumed runs nothing and gives the same head.
        let mut again = Vec::new();
        let done = run_with(&cfg, Some(&ck), &mut |e| again.push(e.epoch)).unwrap();
        assert!(again.is_empty());
        assert_eq!(done.history, whole.history);
    }

    /// A damaged state is refused with its path and what to do, not trained over.
    #[test]
    fn a_damaged_checkpoint_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), "{\"epoch\": 2,").unwrap();
        let ck = FitCheckpoints::new(dir.path());
        let e = run_with(&TrainConfig::default(), Some(&ck), &mut |_| {})
            .expect_err("refused")
            .to_string();
        assert!(e.contains("state.json") && e.contains("delete"), "{e}");
    }

    #[test]
    fn every_optimizer_and_head_learns_separable_classes() {
        for optimizer in [
            OptimizerKind::Adam,
            OptimizerKind::Sgd,
            OptimizerKind::Rmsprop,
        ] {
            for head in [
                HeadKind::Linear,
                HeadKind::Dense {
                    units: 16,
                    dropout: 0.1,
                },
            ] {
                let cfg = TrainConfig {
                    head,
                    optimizer,
                    lr: 0.01,
                    epochs: 15,
                    batch_size: 16,
                    seed: 3,
                    patience: 0,
                    lr_schedule: if optimizer == OptimizerKind::Adam {
                        LrSchedule::Cosine
                    } else {
                        LrSchedule::Constant
                    },
                };
                let r = run(&cfg);
                let last = r.history.last().unwrap();
                assert!(
                    last.val_accuracy >= 0.95,
                    "{optimizer:?} {head:?}: {last:?}"
                );
                assert!(
                    r.history[0].train_loss > last.train_loss,
                    "{optimizer:?} {head:?} did not learn"
                );
            }
        }
    }

    /// Cosine: the full rate first, half of it (plus half the 1% floor) midway, the floor at the
    /// end and beyond; constant never moves.
    #[test]
    fn cosine_schedule_by_hand() {
        let c = LrSchedule::Cosine;
        assert_eq!(c.rate(0.1, 0, 100), 0.1);
        assert!((c.rate(0.1, 50, 100) - (0.001 + 0.099 * 0.5)).abs() < 1e-12);
        assert!(
            (c.rate(0.1, 25, 100) - (0.001 + 0.099 * 0.5 * (1.0 + 0.5f64.sqrt()))).abs() < 1e-12
        );
        assert!((c.rate(0.1, 100, 100) - 0.001).abs() < 1e-12);
        assert!((c.rate(0.1, 150, 100) - 0.001).abs() < 1e-12);
        assert!(c.rate(0.1, 10, 100) > c.rate(0.1, 11, 100));
        assert_eq!(LrSchedule::Constant.rate(0.1, 70, 100), 0.1);
    }

    #[test]
    fn same_seed_same_result_and_best_head_is_kept() {
        let cfg = TrainConfig {
            epochs: 6,
            lr: 0.01,
            patience: 2,
            ..TrainConfig::default()
        };
        let a = run(&cfg);
        let b = run(&cfg);
        assert_eq!(a.history, b.history);
        let c = run(&TrainConfig {
            seed: 9,
            ..cfg.clone()
        });
        assert_ne!(a.history, c.history);
        // The kept head is the one with the lowest validation loss, and evaluating it again gives
        // that epoch's numbers.
        let best = a
            .history
            .iter()
            .min_by(|x, y| x.val_loss.total_cmp(&y.val_loss))
            .unwrap();
        assert_eq!(a.best_epoch, best.epoch);
        let (vx, vy) = blobs(10, 3, 2);
        let (loss, acc) = evaluate(&a.head, &vx, &vy, 3, &Device::flex());
        assert!((loss - best.val_loss).abs() < 1e-6 && acc == best.val_accuracy);
    }
}
