//! Training the detection heads on cached trunk feature maps.
//!
//! The trunk (ONNX, run by tract) turns every picture into its stride-16 feature map once; maps
//! are cached on disk like classification embeddings (keyed by trunk hash and picture content).
//! The head then trains in burn on the cached maps with the book's loss (`single`) or the grid
//! loss (`grid`, `centroids`).

use std::path::Path;

use crate::data::annotated::{AnnotatedImage, Object};
use burn::tensor::{Device, Tensor, TensorData};
use kestrel_edge::Trunk;
use kestrel_shared::decode::{GridSpec, decode_grid, decode_single};
use kestrel_shared::detect::Detection;
use kestrel_shared::nms::filter_and_nms;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::heads::{AttentionHead, GridConfig, GridHead, SingleForm, SingleHead};
use super::loss::{GridTargets, Objectness, book_loss, book_target, grid_loss};
use crate::checkpoint::{CheckpointError, FitCheckpoints};
use crate::classify::embed::{EmbeddingCache, Skipped, embed_samples};
use crate::classify::finetune::RunningStats;
use crate::classify::train::{
    BatchLoss, EpochStats, FitSettings, FitStart, Fitted, LrSchedule, OptimizerKind, TrainDefaults,
    fit_batches,
};
use crate::data::Sample;
use crate::mobilenet::InvertedResidual;
use crate::progress::Progress;
use burn::module::Module;
use kestrel_shared::CutPoint;

/// Which detection head to train: the manifest's own type, so the two cannot drift.
pub use kestrel_shared::manifest::DetectHeadKind;

/// What `kestrel train detect` uses for an option the user did not give, for one head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectDefaults {
    /// Model input width.
    pub width: u32,
    /// Model input height.
    pub height: u32,
    /// Dense units (single) or convolution width (grid heads).
    pub units: usize,
    /// Shift augmentation in cells.
    pub shift_cells: usize,
    /// Training settings shared with classification.
    pub train: TrainDefaults,
}

impl DetectDefaults {
    /// The defaults of `head` (and, for the single head, its form): the single head works on
    /// 224x224 pictures and sees each scene anywhere in the picture (shift 64 cells), which the
    /// dense form needs since its dense layer otherwise meets each position only a few times (its
    /// dense 200 is unstable at 1e-3, hence 3e-4); the attention form is convolutional, 64 wide
    /// like the grid head, and keeps the shift as augmentation. Grid heads need no shift. The
    /// grid head fine-tunes the top 3 blocks for 6 epochs after its own fit: on the multi preset
    /// (3,000 / 500 scenes, seed 0) that took mAP@0.5 from 0.803 to 0.828 and mAP@0.5:0.95 from
    /// 0.468 to 0.501, in 7 min 49 s instead of 4 min 01 s on 2 cores.
    pub fn of(head: DetectHeadKind, form: SingleForm) -> Self {
        let train = TrainDefaults {
            lr: 1e-3,
            lr_schedule: LrSchedule::Constant,
            epochs: 30,
            patience: 5,
            fine_tune_blocks: 0,
            fine_tune_epochs: 10,
            fine_tune_lr_divisor: 10.0,
        };
        match (head, form) {
            (DetectHeadKind::Single, SingleForm::Dense) => DetectDefaults {
                width: 224,
                height: 224,
                units: 200,
                shift_cells: 64,
                train: TrainDefaults { lr: 3e-4, ..train },
            },
            (DetectHeadKind::Single, SingleForm::Attention) => DetectDefaults {
                width: 224,
                height: 224,
                units: 64,
                shift_cells: 64,
                train,
            },
            (DetectHeadKind::Grid, _) => DetectDefaults {
                train: TrainDefaults {
                    fine_tune_blocks: 3,
                    fine_tune_epochs: 6,
                    ..train
                },
                ..Self::grid(train)
            },
            (DetectHeadKind::Centroids, _) => Self::grid(train),
        }
    }

    /// The grid-shaped heads' input and width: 320x240, 64 wide, no shift.
    fn grid(train: TrainDefaults) -> Self {
        DetectDefaults {
            width: 320,
            height: 240,
            units: 64,
            shift_cells: 0,
            train,
        }
    }
}

/// Settings of a detection head's training (written to the run's `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectTrainConfig {
    /// Head.
    pub head: DetectHeadKind,
    /// Hidden units (single: dense layer) or convolution width (grid).
    pub units: usize,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Learning rate.
    pub lr: f64,
    /// Maximum epochs.
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Seed for initialisation and shuffling.
    pub seed: u64,
    /// Early-stopping patience (0 = never).
    pub patience: usize,
    /// Augmentation: each training map is moved by up to this many cells (random per step, only
    /// as far as keeps every object inside the picture), with its boxes. Moving the picture by one
    /// stride moves the trunk's map by one cell, so this is a translation of the scene that costs
    /// no trunk run. 0 = off.
    #[serde(default)]
    pub shift_cells: usize,
    /// Dropout on the feature map a single head reads, in training (0 = off); ignored by grid heads.
    #[serde(default)]
    pub dropout: f64,
    /// How a grid head's objectness is trained (focal against 1, or against the box's IoU).
    #[serde(default)]
    pub objectness: Objectness,
    /// Learning-rate schedule of both phases.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Form of the single-object head (runs written before the choice used the book's dense head).
    #[serde(default = "SingleForm::legacy")]
    pub single_form: SingleForm,
}

/// Feature maps of a set of annotated pictures, with their objects in model-input pixels.
#[derive(Debug, Default)]
pub struct FeatureSet {
    /// One flattened `[C, H, W]` map per usable picture.
    pub x: Vec<Vec<f32>>,
    /// Objects of each picture, boxes scaled to the model input.
    pub objects: Vec<Vec<Object>>,
    /// Ignored regions of each picture (crowds, `difficult`), scaled likewise: never trained on,
    /// left out of the scores.
    pub ignored: Vec<Vec<Object>>,
    /// The pictures, in the same order (boxes in their own pixels).
    pub images: Vec<AnnotatedImage>,
    /// Pictures that could not be read.
    pub skipped: Vec<Skipped>,
    /// Maps read from the cache.
    pub cache_hits: usize,
}

/// Run `trunk` over `images` (through `cache`), stretching each to the trunk's input size.
pub fn feature_maps(
    trunk: &Trunk,
    images: &[AnnotatedImage],
    cache: &EmbeddingCache,
    strict: bool,
    progress: &dyn Progress,
) -> anyhow::Result<FeatureSet> {
    let samples: Vec<Sample> = images
        .iter()
        .enumerate()
        .map(|(i, im)| Sample {
            path: im.path.clone(),
            label: i,
        })
        .collect();
    let set = embed_samples(trunk, &samples, cache, 0, strict, progress)?;
    let spec = trunk.preprocess();
    let mut out = FeatureSet {
        skipped: set.skipped,
        cache_hits: set.cache_hits,
        ..Default::default()
    };
    for (x, i) in set.x.into_iter().zip(set.y) {
        let im = &images[i];
        out.objects.push(to_input(im, spec.width, spec.height));
        out.ignored
            .push(scaled(&im.ignored, im, spec.width, spec.height));
        out.x.push(x);
        out.images.push(im.clone());
    }
    Ok(out)
}

/// The picture's objects with boxes scaled to a `width x height` model input (stretch resize).
pub fn to_input(im: &AnnotatedImage, width: u32, height: u32) -> Vec<Object> {
    scaled(&im.objects, im, width, height)
}

/// `objects` of picture `im` with boxes scaled to a `width x height` model input.
fn scaled(objects: &[Object], im: &AnnotatedImage, width: u32, height: u32) -> Vec<Object> {
    let sx = width as f32 / im.width.max(1) as f32;
    let sy = height as f32 / im.height.max(1) as f32;
    objects
        .iter()
        .map(|o| Object {
            class: o.class,
            bbox: o.bbox.scale(sx, sy),
        })
        .collect()
}

/// Stack maps `x[idx]` into a `[B, C, H, W]` tensor.
fn stack_maps(x: &[Vec<f32>], idx: &[usize], chw: [usize; 3], device: &Device) -> Tensor<4> {
    let mut data = Vec::with_capacity(idx.len() * x[0].len());
    for &i in idx {
        data.extend_from_slice(&x[i]);
    }
    Tensor::from_data(
        TensorData::new(data, [idx.len(), chw[0], chw[1], chw[2]]),
        device,
    )
}

/// Augmentation of training batches (see [`DetectTrainConfig::shift_cells`]).
#[derive(Debug, Clone, Copy)]
struct Augment {
    /// Most cells a map moves each way.
    max_shift: usize,
    /// Dropout on map values (0 = off).
    dropout: f64,
    /// Input pixels per cell.
    stride: f32,
}

/// A training batch with the shift augmentation: maps `x[idx]` rolled by a random whole number of
/// cells (at most `max_shift` each way, and only as far as keeps every object inside the
/// `chw[1] x chw[2]` grid of `stride`-pixel cells), with the objects moved alike; then inverted
/// dropout on the map values when `dropout > 0` (masks from `rng`, so runs repeat).
fn shifted_batch(
    set: &FeatureSet,
    idx: &[usize],
    chw: [usize; 3],
    aug: &Augment,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> (Tensor<4>, Vec<Vec<Object>>) {
    let [c, h, w] = chw;
    let (x, objects, stride) = (&set.x, &set.objects, aug.stride);
    let mut data = Vec::with_capacity(idx.len() * c * h * w);
    let mut objs = Vec::with_capacity(idx.len());
    for &i in idx {
        let (dy, dx) = pick_shift(&objects[i], h, w, stride, aug.max_shift, rng);
        let src = &x[i];
        for ch in 0..c {
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                let sy = (y as isize - dy).rem_euclid(h as isize) as usize;
                let row = &plane[sy * w..(sy + 1) * w];
                data.extend(
                    (0..w).map(|xx| row[(xx as isize - dx).rem_euclid(w as isize) as usize]),
                );
            }
        }
        objs.push(
            objects[i]
                .iter()
                .map(|o| Object {
                    class: o.class,
                    bbox: o.bbox.translate(dx as f32 * stride, dy as f32 * stride),
                })
                .collect(),
        );
    }
    if aug.dropout > 0.0 {
        let keep = 1.0 - aug.dropout;
        for v in &mut data {
            *v = if rng.random::<f64>() < keep {
                *v / keep as f32
            } else {
                0.0
            };
        }
    }
    (
        Tensor::from_data(TensorData::new(data, [idx.len(), c, h, w]), device),
        objs,
    )
}

/// A random move `(dy, dx)` in cells that keeps every object inside the grid.
fn pick_shift(
    objects: &[Object],
    h: usize,
    w: usize,
    stride: f32,
    max_shift: usize,
    rng: &mut ChaCha8Rng,
) -> (isize, isize) {
    let max = max_shift as isize;
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for o in objects {
        x0 = x0.min(o.bbox.x0);
        y0 = y0.min(o.bbox.y0);
        x1 = x1.max(o.bbox.x1);
        y1 = y1.max(o.bbox.y1);
    }
    let range = |lo: f32, hi: f32, cells: usize| -> (isize, isize) {
        if lo > hi {
            return (-max, max); // no objects: any move
        }
        let room_before = (lo / stride).floor() as isize;
        let room_after = ((cells as f32 * stride - hi) / stride).floor() as isize;
        (-room_before.clamp(0, max), room_after.clamp(0, max))
    };
    let (ylo, yhi) = range(y0, y1, h);
    let (xlo, xhi) = range(x0, x1, w);
    (
        rng.random_range(ylo as i64..=yhi as i64) as isize,
        rng.random_range(xlo as i64..=xhi as i64) as isize,
    )
}

/// A trained detection head of any kind.
#[derive(Debug)]
pub enum DetectHead {
    /// The book's head.
    Single(Box<SingleHead>),
    /// The single-object head as attention over cells (same outputs as the book's).
    Attention(Box<AttentionHead>),
    /// A grid head (boxes or centroids).
    Grid(Box<GridHead>, GridSpec),
}

/// Raw outputs of `head` for every map, in batches: 5 numbers (single) or `[K, H, W]` (grid).
pub fn raw_outputs(
    head: &DetectHead,
    x: &[Vec<f32>],
    chw: [usize; 3],
    device: &Device,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(x.len());
    let idx: Vec<usize> = (0..x.len()).collect();
    for chunk in idx.chunks(64) {
        let input = stack_maps(x, chunk, chw, device);
        let flat: Vec<f32> = match head {
            DetectHead::Single(h) => h
                .forward(input)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32"),
            DetectHead::Attention(h) => h
                .forward(input)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32"),
            DetectHead::Grid(h, _) => h
                .forward(input)
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32"),
        };
        let per = flat.len() / chunk.len();
        out.extend(flat.chunks(per).map(<[f32]>::to_vec));
    }
    out
}

/// Post-processing settings: score threshold, NMS IoU, detection cap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecodeSettings {
    /// Lowest score kept.
    pub score_threshold: f32,
    /// NMS IoU threshold (per class).
    pub nms_iou: f32,
    /// Most detections per picture.
    pub max_detections: usize,
}

/// Detections (input pixels) from one picture's raw output.
pub fn decode(
    head: &DetectHead,
    raw: &[f32],
    chw: [usize; 3],
    input_size: (u32, u32),
    settings: &DecodeSettings,
) -> Vec<Detection> {
    match head {
        DetectHead::Single(_) | DetectHead::Attention(_) => {
            let r: [f32; 5] = raw.try_into().expect("five outputs");
            vec![decode_single(&r, input_size.0 as f32)]
        }
        DetectHead::Grid(_, spec) => filter_and_nms(
            decode_grid(raw, spec, chw[1], chw[2], settings.score_threshold),
            settings.score_threshold,
            settings.nms_iou,
            settings.max_detections,
        ),
    }
}

/// Mean loss of `head` on a feature set (inference device).
pub fn mean_loss(
    head: &DetectHead,
    set: &FeatureSet,
    chw: [usize; 3],
    size: f32,
    objectness: Objectness,
    device: &Device,
) -> f64 {
    if set.x.is_empty() {
        return f64::NAN;
    }
    let idx: Vec<usize> = (0..set.x.len()).collect();
    let mut total = 0.0;
    for chunk in idx.chunks(64) {
        let input = stack_maps(&set.x, chunk, chw, device);
        let l = match head {
            DetectHead::Single(h) => book_loss(
                h.forward(input),
                single_targets(&set.objects, chunk, size, device),
            ),
            DetectHead::Attention(h) => book_loss(
                h.forward(input),
                single_targets(&set.objects, chunk, size, device),
            ),
            DetectHead::Grid(h, spec) => {
                let objs: Vec<&[Object]> =
                    chunk.iter().map(|&i| set.objects[i].as_slice()).collect();
                let t = GridTargets::build(&objs, spec, chw[1], chw[2]);
                grid_loss(h.forward(input), &t, spec, objectness, device).total
            }
        };
        total += l.into_scalar::<f32>() as f64 * chunk.len() as f64;
    }
    total / set.x.len() as f64
}

fn single_targets(objects: &[Vec<Object>], idx: &[usize], size: f32, device: &Device) -> Tensor<2> {
    let mut t = Vec::with_capacity(idx.len() * 5);
    for &i in idx {
        // The book's scenes hold exactly one target; a picture without one is trained as class 0
        // with an empty box at the origin.
        let o = objects[i].first().copied().unwrap_or(Object {
            class: 0,
            bbox: kestrel_shared::BBox::new(0.0, 0.0, 0.0, 0.0),
        });
        t.extend_from_slice(&book_target(&o, size));
    }
    Tensor::from_data(TensorData::new(t, [idx.len(), 5]), device)
}

/// What a detection head trains on: cached feature maps (`chw` each) of pictures `input_size`
/// (width, height) large, split into training and held-out sets.
#[derive(Clone, Copy)]
pub struct DetectData<'a> {
    /// Channels, rows and columns of one feature map.
    pub chw: [usize; 3],
    /// Width and height of the pictures, in pixels.
    pub input_size: (u32, u32),
    /// The training set.
    pub train: &'a FeatureSet,
    /// The held-out set (scores and early stopping).
    pub val: &'a FeatureSet,
}

/// What the caller watches during a fit: the headline score of a head on a set, each epoch's
/// statistics as it ends (progress bars, logs), and where each epoch is committed (resumable).
pub struct Watch<'a> {
    /// The headline metric of a head on a set (higher is better).
    pub score: &'a mut dyn FnMut(&DetectHead, &FeatureSet) -> f64,
    /// Called after every epoch.
    pub on_epoch: &'a mut dyn FnMut(&EpochStats),
    /// Checkpoint folder of the fit (None: no checkpoints).
    pub checkpoints: Option<&'a FitCheckpoints>,
}

/// Train a detection head on `train` feature maps (shape `chw`), validating on `val` each epoch
/// with `score` (higher is better: mean IoU or mAP@0.5), which `on_epoch` sees as `val_accuracy`.
pub fn train_detect_head(
    cfg: &DetectTrainConfig,
    classes: usize,
    stride: usize,
    data: DetectData<'_>,
    device: &Device,
    watch: Watch<'_>,
) -> Result<(DetectHead, Vec<EpochStats>, usize), CheckpointError> {
    let (chw, input_size) = (data.chw, data.input_size);
    let ad = device.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let head = match (cfg.head, cfg.single_form) {
        (DetectHeadKind::Single, SingleForm::Dense) => {
            DetectHead::Single(Box::new(SingleHead::new(
                chw.iter().product(),
                cfg.units,
                input_size.0 as f64,
                &mut rng,
                &ad,
            )))
        }
        (DetectHeadKind::Single, SingleForm::Attention) => DetectHead::Attention(Box::new(
            AttentionHead::new(chw[0], cfg.units, input_size, &mut rng, &ad),
        )),
        (DetectHeadKind::Grid | DetectHeadKind::Centroids, _) => {
            let spec = GridSpec {
                classes,
                stride,
                boxes: cfg.head == DetectHeadKind::Grid,
            };
            let head = GridConfig {
                in_channels: chw[0],
                width: cfg.units,
                spec,
            }
            .init(&ad, &mut rng);
            DetectHead::Grid(Box::new(head), spec)
        }
    };
    fit_head(head, cfg, None, data, device, &mut rng, watch)
}

/// Phase 2 of a detector (as in the book): the top blocks of the trunk are unfrozen and trained
/// with the head at a lower learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectFineTune {
    /// Inverted-residual blocks below the cut to unfreeze.
    pub blocks: usize,
    /// Epochs of phase 2.
    pub epochs: usize,
    /// Learning rate of phase 2.
    pub lr: f64,
}

impl DetectFineTune {
    /// Where the still-frozen prefix ends for a head cut at `cut`: its outputs are cached.
    pub fn prefix_cut(&self, cut: CutPoint) -> anyhow::Result<CutPoint> {
        // The prefix keeps the cut's stride, so the head's grid and the cached maps line up.
        match cut {
            CutPoint::Features(k)
                if (1..k as usize).contains(&self.blocks)
                    && CutPoint::Features(k - self.blocks as u8).stride() == cut.stride() =>
            {
                Ok(CutPoint::Features(k - self.blocks as u8))
            }
            _ => anyhow::bail!(
                "--fine-tune-blocks {} does not fit below the cut {cut}: the unfrozen blocks must \
                 all work at the cut's stride ({}), e.g. 1 to 6 blocks for stride16, 1 to 3 for stride8",
                self.blocks,
                cut.stride()
            ),
        }
    }
}

/// Train `head` (from phase 1) with `blocks` (the pretrained blocks between the prefix cut and
/// the head's cut) in front of it, on cached prefix feature maps of shape `chw`. BatchNorm stays
/// on its running statistics; the phase-1 head competes as epoch 0, so phase 2 never ends worse.
pub fn fine_tune_detect_head(
    cfg: &DetectTrainConfig,
    ft: &DetectFineTune,
    head: DetectHead,
    blocks: Vec<InvertedResidual>,
    data: DetectData<'_>,
    device: &Device,
    watch: Watch<'_>,
) -> Result<(DetectHead, Vec<EpochStats>, usize), CheckpointError> {
    let ad = device.clone().autodiff();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(1));
    let prepare = |m: DetectHead| match m {
        DetectHead::Single(mut h) => {
            h.blocks = blocks.clone();
            DetectHead::Single(Box::new(h.fork(&ad).train().map(&mut RunningStats)))
        }
        DetectHead::Attention(mut h) => {
            h.blocks = blocks.clone();
            DetectHead::Attention(Box::new(h.fork(&ad).train().map(&mut RunningStats)))
        }
        DetectHead::Grid(mut h, spec) => {
            h.blocks = blocks.clone();
            DetectHead::Grid(Box::new(h.fork(&ad).train().map(&mut RunningStats)), spec)
        }
    };
    fit_head(prepare(head), cfg, Some(ft), data, device, &mut rng, watch)
}

/// The shared loop of both phases and both heads: the book's loss or the grid loss per batch.
/// Phase 2 (`ft` given) takes its epochs and rate from `ft`, and its starting head competes as
/// epoch 0.
fn fit_head(
    head: DetectHead,
    cfg: &DetectTrainConfig,
    ft: Option<&DetectFineTune>,
    data: DetectData<'_>,
    device: &Device,
    rng: &mut ChaCha8Rng,
    watch: Watch<'_>,
) -> Result<(DetectHead, Vec<EpochStats>, usize), CheckpointError> {
    let DetectData {
        chw,
        input_size,
        train,
        val,
    } = data;
    let Watch {
        score,
        on_epoch,
        checkpoints,
    } = watch;
    let ad = &device.clone().autodiff();
    let settings = FitSettings {
        epochs: ft.map_or(cfg.epochs, |f| f.epochs),
        batch_size: cfg.batch_size,
        lr: ft.map_or(cfg.lr, |f| f.lr),
        patience: cfg.patience,
        optimizer: cfg.optimizer,
        schedule: cfg.lr_schedule,
    };
    let start_is_candidate = ft.is_some();
    let objectness = cfg.objectness;
    let size = input_size.0 as f32;
    let aug = Augment {
        max_shift: cfg.shift_cells,
        dropout: cfg.dropout,
        stride: input_size.0 as f32 / chw[2] as f32,
    };
    let grid_aug = Augment {
        dropout: 0.0,
        ..aug
    };
    let mut single = SingleFit {
        train,
        val,
        chw,
        aug,
        size,
        objectness,
        ad,
        device,
        score,
    };
    match head {
        DetectHead::Single(head) => single.fit(
            settings,
            FitStart {
                model: *head,
                rng,
                start_is_candidate,
                checkpoints,
            },
            on_epoch,
        ),
        DetectHead::Attention(head) => single.fit(
            settings,
            FitStart {
                model: *head,
                rng,
                start_is_candidate,
                checkpoints,
            },
            on_epoch,
        ),
        DetectHead::Grid(head, spec) => {
            let Fitted {
                model,
                history,
                best_epoch,
            } = fit_batches(
                settings,
                FitStart {
                    model: *head,
                    rng,
                    start_is_candidate,
                    checkpoints,
                },
                train.x.len(),
                &mut |m: &GridHead, idx, rng| {
                    let (x, objects) = shifted_batch(train, idx, chw, &grid_aug, rng, ad);
                    let objs: Vec<&[Object]> = objects.iter().map(Vec::as_slice).collect();
                    let t = GridTargets::build(&objs, &spec, chw[1], chw[2]);
                    BatchLoss {
                        loss: grid_loss(m.forward(x), &t, &spec, objectness, ad).total,
                        hits: None,
                    }
                },
                &mut |m: &GridHead| {
                    let h = DetectHead::Grid(Box::new(m.clone()), spec);
                    (
                        mean_loss(&h, val, chw, size, objectness, device),
                        (single.score)(&h, val),
                    )
                },
                on_epoch,
            )?;
            Ok((DetectHead::Grid(Box::new(model), spec), history, best_epoch))
        }
    }
}

/// A single-object head of either form, as the shared loop trains it: `[N, 5]` in input pixels.
trait FiveOutputs: Module + Clone {
    fn five(&self, x: Tensor<4>) -> Tensor<2>;
    fn into_head(self) -> DetectHead;
}

impl FiveOutputs for SingleHead {
    fn five(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward(x)
    }
    fn into_head(self) -> DetectHead {
        DetectHead::Single(Box::new(self))
    }
}

impl FiveOutputs for AttentionHead {
    fn five(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward(x)
    }
    fn into_head(self) -> DetectHead {
        DetectHead::Attention(Box::new(self))
    }
}

/// What the loop of a single-object head reads: the sets, the augmentation, the book's loss.
struct SingleFit<'a, 'w> {
    train: &'a FeatureSet,
    val: &'a FeatureSet,
    chw: [usize; 3],
    aug: Augment,
    size: f32,
    objectness: Objectness,
    ad: &'a Device,
    device: &'a Device,
    score: &'w mut dyn FnMut(&DetectHead, &FeatureSet) -> f64,
}

impl SingleFit<'_, '_> {
    /// Train a single-object head with the book's loss on shifted batches.
    fn fit<M: FiveOutputs>(
        &mut self,
        settings: FitSettings,
        start: FitStart<'_, M>,
        on_epoch: &mut dyn FnMut(&EpochStats),
    ) -> Result<(DetectHead, Vec<EpochStats>, usize), CheckpointError> {
        let SingleFit {
            train,
            val,
            chw,
            aug,
            size,
            objectness,
            ad,
            device,
            ref mut score,
        } = *self;
        let Fitted {
            model,
            history,
            best_epoch,
        } = fit_batches(
            settings,
            start,
            train.x.len(),
            &mut |m: &M, idx, rng| {
                let (x, objects) = shifted_batch(train, idx, chw, &aug, rng, ad);
                let all: Vec<usize> = (0..idx.len()).collect();
                BatchLoss {
                    loss: book_loss(m.five(x), single_targets(&objects, &all, size, ad)),
                    hits: None,
                }
            },
            &mut |m: &M| {
                let h = m.clone().into_head();
                (
                    mean_loss(&h, val, chw, size, objectness, device),
                    score(&h, val),
                )
            },
            on_epoch,
        )?;
        Ok((model.into_head(), history, best_epoch))
    }
}

/// Check that a run directory's dataset path exists (helps the error of `eval`).
pub fn ensure_exists(p: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(p.exists(), "{} does not exist", p.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_shared::BBox;

    /// A 2-channel 6x8 map marking the object's cell with (1, 2); every move keeps the mark under
    /// the moved object's centre and the object inside the grid.
    #[test]
    fn shifted_maps_and_boxes_move_together() {
        let (c, h, w, stride) = (2usize, 6usize, 8usize, 16.0f32);
        let object = Object {
            class: 1,
            bbox: BBox::new(40.0, 20.0, 60.0, 44.0), // centre (50, 32): cell (row 2, col 3)
        };
        let mut map = vec![0.0f32; c * h * w];
        map[2 * w + 3] = 1.0;
        map[h * w + 2 * w + 3] = 2.0;
        let set = FeatureSet {
            x: vec![map],
            objects: vec![vec![object]],
            ..Default::default()
        };
        let aug = Augment {
            max_shift: 4,
            dropout: 0.0,
            stride,
        };
        let device = Device::flex();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut moves = std::collections::HashSet::new();
        for _ in 0..200 {
            let (t, objs) = shifted_batch(&set, &[0], [c, h, w], &aug, &mut rng, &device);
            let v = t.into_data().try_to_vec::<f32>().unwrap();
            let b = objs[0][0].bbox;
            assert!(b.x0 >= 0.0 && b.y0 >= 0.0, "{b:?}");
            assert!(
                b.x1 <= w as f32 * stride && b.y1 <= h as f32 * stride,
                "{b:?}"
            );
            let (cx, cy) = b.center();
            let (row, col) = ((cy / stride) as usize, (cx / stride) as usize);
            assert_eq!(v[row * w + col], 1.0);
            assert_eq!(v[h * w + row * w + col], 2.0);
            assert_eq!(v.iter().filter(|&&e| e != 0.0).count(), 2);
            moves.insert(((b.x0 - 40.0) as i32, (b.y0 - 20.0) as i32));
        }
        // Room: 2 cells left, 4 right (of 4.25), 1 up, 3 down -> 7 x 5 moves, all of them seen.
        assert_eq!(moves.len(), 7 * 5, "{moves:?}");
    }

    /// Dropout zeroes about the asked share and scales the rest so the mean is kept.
    #[test]
    fn dropout_keeps_the_mean() {
        let set = FeatureSet {
            x: vec![vec![1.0f32; 4 * 10 * 10]],
            objects: vec![Vec::new()],
            ..Default::default()
        };
        let aug = Augment {
            max_shift: 0,
            dropout: 0.25,
            stride: 16.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (t, _) = shifted_batch(&set, &[0], [4, 10, 10], &aug, &mut rng, &Device::flex());
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        let zeros = v.iter().filter(|&&e| e == 0.0).count() as f64 / v.len() as f64;
        assert!((zeros - 0.25).abs() < 0.05, "{zeros}");
        assert!(v.iter().all(|&e| e == 0.0 || (e - 4.0 / 3.0).abs() < 1e-6));
    }
}
