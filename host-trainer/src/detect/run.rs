//! `kestrel train detect`: from an annotated dataset (YOLO or COCO) to a run folder, and the
//! trained detector read back for `eval` and `predict`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::data::annotated::{AnnotatedImage, Object};
use crate::eval::{
    CentroidScores, DetectionMetrics, EvalInput, centroid_scores, coco_ground_truth_json,
    coco_results_json, evaluate, single_object_scores,
};
use burn::store::{BurnpackStore, ModuleSnapshot};
use kestrel_edge::{Threads, Trunk};
use kestrel_shared::detect::{Detection, clip_detections};
use kestrel_shared::{CutPoint, Normalization, PreprocessSpec, ResizeMode};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::heads::{AttentionHead, GridConfig, SingleForm, SingleHead};
use super::train::{
    DecodeSettings, DetectData, DetectFineTune, DetectHead, DetectHeadKind, DetectTrainConfig,
    FeatureSet, Watch, decode, feature_maps, fine_tune_detect_head, raw_outputs, to_input,
    train_detect_head,
};
use crate::Pretrained;
use crate::checkpoint::RunCheckpoints;
use crate::classify::embed::{EmbeddingCache, Skipped};
use crate::classify::train::EpochStats;
use crate::data::annotations;
use crate::progress::Progress;
use crate::run_config::{RunConfig, RunTask};

/// File name of the head checkpoint inside a run.
pub const HEAD_FILE: &str = "head.bpk";
/// Score threshold used to rank detections for AP (low, so the whole PR curve is seen).
pub const AP_SCORE_THRESHOLD: f32 = 0.05;

/// Everything a detection run needs (written to `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectOptions {
    /// Dataset (a folder in any layout `data::annotations` reads, a COCO JSON or a data.yaml).
    pub data: PathBuf,
    /// A COCO annotation file (any name) for the pictures under `data` (`--annotations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<PathBuf>,
    /// Model input width in pixels (pictures are stretched to it).
    pub width: u32,
    /// Model input height in pixels.
    pub height: u32,
    /// Where the trunk is cut (stride 16 by default; stride 8 for small objects).
    pub cut: CutPoint,
    /// Share of the pictures held out when the dataset has no validation split.
    pub val_fraction: f64,
    /// Fail on the first unreadable picture or bad annotation instead of skipping it.
    pub strict: bool,
    /// Head and optimiser settings.
    pub train: DetectTrainConfig,
    /// Post-processing of `predict` (and of precision / recall in the metrics).
    pub decode: DecodeSettings,
    /// Phase 2: fine-tune the top blocks below the cut with the head (None = head only).
    #[serde(default)]
    pub fine_tune: Option<DetectFineTune>,
}

impl DetectOptions {
    /// The preprocessing of this run: stretch to the input size, ImageNet statistics.
    pub fn preprocess(&self) -> PreprocessSpec {
        PreprocessSpec {
            height: self.height,
            width: self.width,
            resize: ResizeMode::Stretch,
            normalization: Normalization::IMAGENET,
        }
    }
}

/// Quality of a detector on a set of pictures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectScores {
    /// COCO-style metrics (every head; the single head gives one detection per picture).
    pub coco: DetectionMetrics,
    /// Single head: mean IoU of the predicted box with the picture's one object.
    pub mean_iou: Option<f64>,
    /// Single head: share of pictures whose class is right.
    pub class_accuracy: Option<f64>,
    /// Centroids head: centre hits (a detection's centre inside an object of its class), at the
    /// run's score threshold. Its boxes are one cell, so IoU-based AP says little about it.
    #[serde(default)]
    pub centroids: Option<CentroidScores>,
}

impl DetectScores {
    /// The number shown per epoch: mean IoU (single), centre F1 (centroids) or mAP@0.5 (grid).
    pub fn headline(&self) -> f64 {
        self.mean_iou
            .or(self.centroids.map(|c| c.f1))
            .unwrap_or(self.coco.map50)
    }
}

/// What a training run reports.
#[derive(Debug, Clone, Serialize)]
pub struct DetectSummary {
    /// Class names.
    pub labels: Vec<String>,
    /// Validation scores of the kept head.
    pub val: DetectScores,
    /// Epoch of the kept head.
    pub best_epoch: usize,
    /// Training pictures used.
    pub train_images: usize,
    /// Validation pictures used.
    pub val_images: usize,
    /// Pictures skipped as unreadable.
    pub skipped: Vec<Skipped>,
    /// Annotation problems skipped (file:line: what).
    pub annotation_issues: Vec<String>,
    /// Feature maps read from the cache.
    pub cache_hits: usize,
    /// Seconds spent computing or reading feature maps.
    pub feature_seconds: f64,
    /// Seconds spent training the head (both phases).
    pub train_seconds: f64,
    /// Validation scores after phase 1 (the head alone), when phase 2 ran.
    pub phase1: Option<DetectScores>,
}

/// Score of a head on a feature set: the number that picks the best epoch's head is the loss;
/// this is what is shown (mean IoU for single, mAP@0.5 for grid).
pub fn scores(
    head: &DetectHead,
    set: &FeatureSet,
    chw: [usize; 3],
    opts: &DetectOptions,
    classes: usize,
    device: &burn::tensor::Device,
) -> anyhow::Result<DetectScores> {
    let raw = raw_outputs(head, &set.x, chw, device);
    let settings = DecodeSettings {
        score_threshold: AP_SCORE_THRESHOLD.min(opts.decode.score_threshold),
        ..opts.decode
    };
    // Boxes are clipped to the input as they are to the picture in `predict` and in the COCO
    // files (the stretch resize maps one onto the other), so every report agrees.
    let (w, h) = (opts.width as f32, opts.height as f32);
    let dets: Vec<Vec<Detection>> = raw
        .iter()
        .map(|r| {
            clip_detections(
                decode(head, r, chw, (opts.width, opts.height), &settings),
                w,
                h,
            )
        })
        .collect();
    let coco = evaluate(
        &EvalInput {
            ground_truth: &set.objects,
            ignored: &set.ignored,
            detections: &dets,
            classes,
        },
        opts.decode.score_threshold,
    )?;
    let (mean_iou, class_accuracy) = match head {
        DetectHead::Single(_) | DetectHead::Attention(_) => {
            let (iou, acc) = single_object_scores(&set.objects, &dets);
            (Some(iou), Some(acc))
        }
        DetectHead::Grid(..) => (None, None),
    };
    let centroids = match head {
        DetectHead::Grid(_, spec) if !spec.boxes => Some(centroid_scores(
            &EvalInput {
                ground_truth: &set.objects,
                ignored: &set.ignored,
                detections: &dets,
                classes,
            },
            opts.decode.score_threshold,
        )),
        _ => None,
    };
    Ok(DetectScores {
        coco,
        mean_iou,
        class_accuracy,
        centroids,
    })
}

fn live(e: &EpochStats, score: &str) -> String {
    format!(
        "epoch {}: loss {:.3} | val loss {:.3} {score} {:.3}",
        e.epoch, e.train_loss, e.val_loss, e.val_accuracy
    )
}

fn score_name(kind: DetectHeadKind) -> &'static str {
    match kind {
        DetectHeadKind::Single => "mean IoU",
        DetectHeadKind::Centroids => "centre F1",
        DetectHeadKind::Grid => "mAP@0.5",
    }
}

fn write_history(path: &Path, history: &[EpochStats], score: &str) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let col = match score {
        "mean IoU" => "val_mean_iou",
        "centre F1" => "val_centre_f1",
        _ => "val_map50",
    };
    writeln!(f, "epoch,train_loss,val_loss,{col}")?;
    for h in history {
        writeln!(
            f,
            "{},{},{},{}",
            h.epoch, h.train_loss, h.val_loss, h.val_accuracy
        )?;
    }
    f.flush()
}

/// Collects the rows of `results.csv` while a fit runs: the score closure leaves each epoch's
/// validation scores here, the epoch callback turns them into the epoch's row.
#[derive(Default)]
struct EpochRecorder {
    path: PathBuf,
    last: std::cell::RefCell<Option<crate::results::ResultRow>>,
    rows: std::cell::RefCell<Vec<crate::results::ResultRow>>,
}

impl EpochRecorder {
    /// Rows for `path`: none for a new run, the file's rows for a resumed one.
    fn new(path: &Path, resume: bool) -> anyhow::Result<EpochRecorder> {
        let rows = if resume && path.is_file() {
            crate::results::read(path)?
        } else {
            Vec::new()
        };
        Ok(EpochRecorder {
            path: path.to_path_buf(),
            last: Default::default(),
            rows: std::cell::RefCell::new(rows),
        })
    }

    /// The validation scores of the model just trained.
    fn scored(&self, s: &DetectScores) {
        *self.last.borrow_mut() = Some(crate::results::ResultRow {
            precision: Some(s.coco.precision),
            recall: Some(s.coco.recall),
            map50: Some(s.coco.map50),
            map50_95: Some(s.coco.map50_95),
            mean_iou: s.mean_iou,
            centre_f1: s.centroids.map(|c| c.f1),
            ..Default::default()
        });
    }

    /// An epoch of `phase` ended (epochs of phase 2 count on after phase 1's `offset`): its row
    /// replaces any row from that epoch on (a resumed run redoes an epoch whose checkpoint was
    /// not committed), and the file is written again.
    fn epoch(&self, e: &EpochStats, phase: u8, offset: usize) {
        let scores = self.last.borrow_mut().take().unwrap_or_default();
        let epoch = e.epoch + offset;
        let mut rows = self.rows.borrow_mut();
        rows.retain(|r| r.epoch < epoch);
        rows.push(crate::results::ResultRow {
            epoch,
            phase,
            train_loss: e.train_loss,
            val_loss: e.val_loss,
            lr: e.lr,
            ..scores
        });
        drop(rows);
        if let Err(e) = self.write() {
            tracing::warn!("cannot write {}: {e}", self.path.display());
        }
    }

    /// Writes the rows to the file.
    fn write(&self) -> std::io::Result<()> {
        crate::results::write(&self.path, &self.rows.borrow())
    }
}

/// Seeded split of `images` into (train, val) when the dataset has no validation split.
fn split(
    mut images: Vec<AnnotatedImage>,
    fraction: f64,
    seed: u64,
) -> (Vec<AnnotatedImage>, Vec<AnnotatedImage>) {
    images.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n_val =
        ((images.len() as f64 * fraction).round() as usize).min(images.len().saturating_sub(1));
    let train = images.split_off(n_val);
    (train, images)
}

/// Shape `[C, H, W]` of the trunk's output for `opts`.
fn map_shape(trunk: &Trunk) -> [usize; 3] {
    let s = &trunk.info.output_shape;
    [s[1], s[2], s[3]]
}

/// Train a detection head on `opts.data` and write the run into `out`; with `resume`, continue
/// the interrupted run in `out` from its checkpoints.
pub fn train_detect(
    pretrained: &Pretrained,
    opts: &DetectOptions,
    cache: &Path,
    out: &Path,
    resume: bool,
    progress: &dyn Progress,
) -> anyhow::Result<DetectSummary> {
    anyhow::ensure!(
        opts.cut != CutPoint::Pooled,
        "a detector needs a feature map: use --cut stride16 (default) or stride8, not pooled"
    );
    let data = annotations::load_with(&opts.data, opts.annotations.as_deref(), opts.strict)?;
    let labels = data.labels.clone();
    anyhow::ensure!(
        opts.train.head != DetectHeadKind::Single || labels.len() == 2,
        "the single head is the book's two-class detector ({} has {} classes): use --head grid",
        opts.data.display(),
        labels.len()
    );
    let (train_images, val_images) = if data.val.is_empty() {
        split(data.train, opts.val_fraction, opts.train.seed)
    } else {
        (data.train, data.val)
    };
    std::fs::create_dir_all(out)?;
    let checkpoints = RunCheckpoints::open(out, resume)?;
    let spec = opts.preprocess();
    let trunk = Trunk::open(
        &pretrained.cached_trunk(opts.cut, spec, cache)?,
        1,
        Threads::Single,
    )?;
    let prefix = match &opts.fine_tune {
        Some(ft) => Some(Trunk::open(
            &pretrained.cached_trunk(ft.prefix_cut(opts.cut)?, spec, cache)?,
            1,
            Threads::Single,
        )?),
        None => None,
    };
    RunConfig::starting(
        RunTask::Detect(opts.clone()),
        &labels,
        spec,
        &trunk,
        prefix.as_ref(),
        pretrained,
    )
    .begin(out, resume)?;
    std::fs::write(out.join("labels.txt"), labels.join("\n") + "\n")?;

    let t0 = Instant::now();
    let emb_cache = EmbeddingCache::new(&cache.join("embeddings"));
    let train = feature_maps(&trunk, &train_images, &emb_cache, opts.strict, progress)?;
    let val = feature_maps(&trunk, &val_images, &emb_cache, opts.strict, progress)?;
    let feature_seconds = t0.elapsed().as_secs_f64();
    anyhow::ensure!(
        !train.x.is_empty(),
        "no readable training pictures in {}",
        opts.data.display()
    );
    let chw = map_shape(&trunk);
    let stride = opts.cut.stride();
    let device = pretrained.device.clone();
    let name = score_name(opts.train.head);
    let bar = progress.start("training detector", Some(opts.train.epochs as u64));
    bar.advance(checkpoints.phase(1).epochs_done() as u64);
    let t1 = Instant::now();
    // results.csv grows epoch by epoch; a resumed run keeps the rows of the epochs it skips.
    let recorder = EpochRecorder::new(&out.join("results.csv"), resume)?;
    let (head, history, best_epoch) = train_detect_head(
        &opts.train,
        labels.len(),
        stride,
        DetectData {
            chw,
            input_size: (opts.width, opts.height),
            train: &train,
            val: &val,
        },
        &device,
        Watch {
            score: &mut |h, set| {
                if set.x.is_empty() {
                    return f64::NAN;
                }
                match scores(h, set, chw, opts, labels.len(), &device) {
                    Ok(s) => {
                        recorder.scored(&s);
                        s.headline()
                    }
                    Err(_) => f64::NAN,
                }
            },
            on_epoch: &mut |e| {
                recorder.epoch(e, 1, 0);
                bar.advance(1);
                bar.message(&live(e, name));
                tracing::info!("{}", live(e, name));
            },
            checkpoints: Some(&checkpoints.phase(1)),
        },
    )?;
    bar.finish();

    write_history(&out.join("history.csv"), &history, name)?;
    crate::plot::learning_curves_of(
        &history,
        "detection head on cached feature maps",
        name,
        &out.join("curves.png"),
    )?;
    // Phase 2: the top blocks below the cut train with the head on the cached prefix outputs.
    let (mut head, mut best_epoch, mut chw) = (head, best_epoch, chw);
    let (mut train, mut val) = (train, val);
    let mut phase1 = None;
    if let (Some(ft), Some(prefix)) = (&opts.fine_tune, &prefix) {
        let eval_set = if val.x.is_empty() { &train } else { &val };
        phase1 = Some(scores(&head, eval_set, chw, opts, labels.len(), &device)?);
        let ptrain = feature_maps(prefix, &train_images, &emb_cache, opts.strict, progress)?;
        let pval = feature_maps(prefix, &val_images, &emb_cache, opts.strict, progress)?;
        let pchw = map_shape(prefix);
        let CutPoint::Features(k) = opts.cut else {
            unreachable!("checked above: the cut is a feature map")
        };
        let k = k as usize;
        // features.j is block j - 1 of the burn model.
        let blocks = pretrained.model.blocks[k - ft.blocks..k].to_vec();
        let bar = progress.start("fine-tuning top blocks", Some(ft.epochs as u64));
        bar.advance(checkpoints.phase(2).epochs_done() as u64);
        let (h2, history2, best2) = fine_tune_detect_head(
            &opts.train,
            ft,
            head,
            blocks,
            DetectData {
                chw: pchw,
                input_size: (opts.width, opts.height),
                train: &ptrain,
                val: &pval,
            },
            &device,
            Watch {
                score: &mut |h, set| {
                    if set.x.is_empty() {
                        return f64::NAN;
                    }
                    match scores(h, set, pchw, opts, labels.len(), &device) {
                        Ok(s) => {
                            recorder.scored(&s);
                            s.headline()
                        }
                        Err(_) => f64::NAN,
                    }
                },
                on_epoch: &mut |e| {
                    recorder.epoch(e, 2, history.len());
                    bar.advance(1);
                    bar.message(&live(e, name));
                    tracing::info!("phase 2 {}", live(e, name));
                },
                checkpoints: Some(&checkpoints.phase(2)),
            },
        )?;
        bar.finish();
        write_history(&out.join("finetune-history.csv"), &history2, name)?;
        crate::plot::learning_curves_of(
            &history2,
            "fine-tuning the top blocks with the head",
            name,
            &out.join("finetune-curves.png"),
        )?;
        (head, best_epoch, chw, train, val) = (h2, best2, pchw, ptrain, pval);
    }
    let train_seconds = t1.elapsed().as_secs_f64();
    recorder.write()?;
    save_head(&head, &out.join(HEAD_FILE))?;
    let eval_set = if val.x.is_empty() { &train } else { &val };
    let val_scores = scores(&head, eval_set, chw, opts, labels.len(), &device)?;
    let ap: Vec<Option<f64>> = val_scores.coco.per_class.iter().map(|c| c.ap50).collect();
    crate::plot::pr_curves(
        &val_scores.coco.pr_curves,
        &labels,
        &ap,
        &out.join("pr_curve.png"),
    )?;
    crate::plot::f1_curves(
        &crate::eval::f1_thresholds(),
        &val_scores.coco.f1_curves,
        &val_scores.coco.f1_all,
        &labels,
        &out.join("f1_curve.png"),
    )?;
    let mut with_background = labels.clone();
    with_background.push("background".into());
    crate::plot::confusion_matrix(
        &val_scores.coco.confusion,
        &with_background,
        &out.join("confusion.png"),
    )?;
    // Predictions on the validation pictures as COCO results, with the matching ground truth,
    // in the pictures' own pixels: pycocotools and other tools read them as they are.
    let dets = detections_in_pictures(&head, eval_set, chw, opts, &device);
    std::fs::write(
        out.join("val_predictions.json"),
        serde_json::to_string(&coco_results_json(&dets))?,
    )?;
    std::fs::write(
        out.join("val_ground_truth.json"),
        serde_json::to_string(&coco_ground_truth_json(&eval_set.images, &labels))?,
    )?;
    let summary = DetectSummary {
        labels,
        val: val_scores,
        best_epoch,
        train_images: train.x.len(),
        val_images: val.x.len(),
        skipped: train.skipped.iter().chain(&val.skipped).cloned().collect(),
        annotation_issues: data.issues.iter().map(ToString::to_string).collect(),
        cache_hits: train.cache_hits + val.cache_hits,
        feature_seconds,
        train_seconds,
        phase1,
    };
    let mut metrics = serde_json::to_value(&summary)?;
    // The headline numbers at the top level, as `eval` and scripts expect them.
    metrics["map50"] = json!(summary.val.coco.map50);
    metrics["map50_95"] = json!(summary.val.coco.map50_95);
    if let Some(v) = summary.val.mean_iou {
        metrics["mean_iou"] = json!(v);
    }
    if let Some(v) = summary.val.class_accuracy {
        metrics["class_accuracy"] = json!(v);
    }
    if let Some(c) = summary.val.centroids {
        metrics["centre_f1"] = json!(c.f1);
    }
    std::fs::write(
        out.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)? + "\n",
    )?;
    Ok(summary)
}

/// Post-processed detections of every picture of `set`, boxes in the picture's own pixels.
fn detections_in_pictures(
    head: &DetectHead,
    set: &FeatureSet,
    chw: [usize; 3],
    opts: &DetectOptions,
    device: &burn::tensor::Device,
) -> Vec<Vec<Detection>> {
    let settings = DecodeSettings {
        score_threshold: AP_SCORE_THRESHOLD.min(opts.decode.score_threshold),
        ..opts.decode
    };
    raw_outputs(head, &set.x, chw, device)
        .iter()
        .zip(&set.images)
        .map(|(r, im)| {
            to_picture(
                decode(head, r, chw, (opts.width, opts.height), &settings),
                im,
                opts,
            )
        })
        .collect()
}

/// Detections from model-input pixels to the picture's pixels (clipped to the picture).
pub fn to_picture(
    dets: Vec<Detection>,
    im: &AnnotatedImage,
    opts: &DetectOptions,
) -> Vec<Detection> {
    let sx = im.width as f32 / opts.width as f32;
    let sy = im.height as f32 / opts.height as f32;
    let scaled = dets
        .into_iter()
        .map(|d| Detection {
            bbox: d.bbox.scale(sx, sy),
            ..d
        })
        .collect();
    clip_detections(scaled, im.width as f32, im.height as f32)
}

fn save_head(head: &DetectHead, path: &Path) -> anyhow::Result<()> {
    match head {
        DetectHead::Single(h) => crate::checkpoint::save(h.as_ref(), path),
        DetectHead::Attention(h) => crate::checkpoint::save(h.as_ref(), path),
        DetectHead::Grid(h, _) => crate::checkpoint::save(h.as_ref(), path),
    }
}

/// A trained detector read back from its run folder.
pub struct TrainedDetector {
    /// Class names.
    pub labels: Vec<String>,
    /// The run's options.
    pub options: DetectOptions,
    /// The head.
    pub head: DetectHead,
    /// The frozen trunk (tract).
    pub trunk: Trunk,
    device: burn::tensor::Device,
}

impl TrainedDetector {
    /// Read `run/config.json` and `run/head.bpk`; the trunk comes from the cache (exported if needed).
    pub fn open(run: &Path, pretrained: &Pretrained, cache: &Path) -> anyhow::Result<Self> {
        let (config, options) = RunConfig::read_detect(run)?;
        let labels = config.labels.clone();
        // A fine-tuned run reads the frozen prefix; its head carries the tuned blocks.
        let trunk_cut = match &options.fine_tune {
            Some(ft) => ft.prefix_cut(options.cut)?,
            None => options.cut,
        };
        let trunk = Trunk::open(
            &pretrained.cached_trunk(trunk_cut, options.preprocess(), cache)?,
            1,
            Threads::Single,
        )?;
        config.check_trunk(run, &trunk.info.onnx_sha256)?;
        let device = pretrained.device.clone();
        let out = options
            .cut
            .output_shape(options.height as usize, options.width as usize);
        let cut_chw = [out[1], out[2], out[3]];
        let blocks = match (&options.fine_tune, options.cut) {
            (Some(ft), CutPoint::Features(k)) => {
                pretrained.model.blocks[k as usize - ft.blocks..k as usize].to_vec()
            }
            _ => Vec::new(),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let path = run.join(HEAD_FILE);
        let mut store = BurnpackStore::from_file(&path);
        let bad = |e: String| {
            anyhow::anyhow!(
                "cannot load {}: {e} (retrain, or check the run folder)",
                path.display()
            )
        };
        let head = match (options.train.head, options.train.single_form) {
            (DetectHeadKind::Single, SingleForm::Dense) => {
                let mut h = SingleHead::new(
                    cut_chw.iter().product(),
                    options.train.units,
                    options.width as f64,
                    &mut rng,
                    &device,
                );
                h.blocks = blocks;
                h.load_from(&mut store).map_err(|e| bad(e.to_string()))?;
                DetectHead::Single(Box::new(h))
            }
            (DetectHeadKind::Single, SingleForm::Attention) => {
                let mut h = AttentionHead::new(
                    cut_chw[0],
                    options.train.units,
                    (options.width, options.height),
                    &mut rng,
                    &device,
                );
                h.blocks = blocks;
                h.load_from(&mut store).map_err(|e| bad(e.to_string()))?;
                DetectHead::Attention(Box::new(h))
            }
            (kind, _) => {
                let spec = kestrel_shared::decode::GridSpec {
                    classes: labels.len(),
                    stride: options.cut.stride(),
                    boxes: kind == DetectHeadKind::Grid,
                };
                let mut h = GridConfig {
                    in_channels: cut_chw[0],
                    width: options.train.units,
                    spec,
                }
                .init(&device, &mut rng);
                h.blocks = blocks;
                h.load_from(&mut store).map_err(|e| bad(e.to_string()))?;
                DetectHead::Grid(Box::new(h), spec)
            }
        };
        Ok(TrainedDetector {
            labels,
            options,
            head,
            trunk,
            device,
        })
    }

    /// Detections on one picture file, boxes in its pixels.
    pub fn detect_file(&self, path: &Path) -> anyhow::Result<(AnnotatedImage, Vec<Detection>)> {
        let img = PreprocessSpec::load(path)?;
        let x = self.trunk.preprocess().apply(&img);
        let map = self.trunk.embed(std::slice::from_ref(&x))?.remove(0);
        let chw = map_shape(&self.trunk);
        let raw = raw_outputs(&self.head, std::slice::from_ref(&map), chw, &self.device).remove(0);
        let im = AnnotatedImage {
            path: path.to_path_buf(),
            width: img.width(),
            height: img.height(),
            objects: Vec::new(),
            ignored: Vec::new(),
        };
        let dets = decode(
            &self.head,
            &raw,
            chw,
            (self.options.width, self.options.height),
            &self.options.decode,
        );
        Ok((im.clone(), to_picture(dets, &im, &self.options)))
    }

    /// Scores on another annotated dataset (every split of it), as `kestrel eval` prints them;
    /// `annotations` is a COCO file for the pictures under `data` (`--annotations`).
    pub fn evaluate(
        &self,
        data: &Path,
        annotations: Option<&Path>,
        cache: &Path,
        progress: &dyn Progress,
    ) -> anyhow::Result<DetectScores> {
        let d = annotations::load_with(data, annotations, self.options.strict)?;
        anyhow::ensure!(
            d.labels == self.labels,
            "{} has classes {:?} but the run was trained on {:?}",
            data.display(),
            d.labels,
            self.labels
        );
        let images: Vec<AnnotatedImage> = d.train.into_iter().chain(d.val).chain(d.test).collect();
        let emb_cache = EmbeddingCache::new(&cache.join("embeddings"));
        let set = feature_maps(
            &self.trunk,
            &images,
            &emb_cache,
            self.options.strict,
            progress,
        )?;
        anyhow::ensure!(
            !set.x.is_empty(),
            "no readable pictures in {}",
            data.display()
        );
        scores(
            &self.head,
            &set,
            map_shape(&self.trunk),
            &self.options,
            self.labels.len(),
            &self.device,
        )
    }
}

/// Objects of a picture in model-input pixels (re-exported for tests and the demo).
pub fn objects_in_input(im: &AnnotatedImage, opts: &DetectOptions) -> Vec<Object> {
    to_input(im, opts.width, opts.height)
}

/// One picture's detections as `predict --json` prints them.
#[derive(Debug, Serialize)]
pub struct PredictLine<'a> {
    /// The picture.
    pub image: &'a Path,
    /// Its detections, boxes in its pixels.
    pub detections: Vec<LabelledDetection<'a>>,
}

/// A detection with its class name.
#[derive(Debug, Serialize)]
pub struct LabelledDetection<'a> {
    /// Class name.
    pub label: &'a str,
    /// Class index.
    pub class: usize,
    /// Score in [0, 1].
    pub score: f32,
    /// `[x0, y0, x1, y1]` in picture pixels.
    #[serde(rename = "box")]
    pub bbox: kestrel_shared::BBox,
}

/// `kestrel predict --run RUN` for a detector: one line (JSON or text) per picture on `out`,
/// pictures with boxes drawn into `draw` if given. Unreadable pictures are reported on stderr
/// and counted; the count is returned.
pub fn predict_files(
    det: &TrainedDetector,
    images: &[PathBuf],
    draw: Option<&Path>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    if let Some(d) = draw {
        std::fs::create_dir_all(d)?;
    }
    let mut failed = 0;
    for path in images {
        let (_, dets) = match det.detect_file(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
                continue;
            }
        };
        let line = PredictLine {
            image: path,
            detections: dets
                .iter()
                .map(|d| LabelledDetection {
                    label: det.labels.get(d.class).map_or("?", String::as_str),
                    class: d.class,
                    score: d.score,
                    bbox: d.bbox,
                })
                .collect(),
        };
        if json {
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            writeln!(out, "{}: {} detection(s)", path.display(), dets.len())?;
            for d in &line.detections {
                let b = d.bbox;
                writeln!(
                    out,
                    "  {:>6.2}%  {:<12} [{:.0}, {:.0}, {:.0}, {:.0}]",
                    100.0 * d.score,
                    d.label,
                    b.x0,
                    b.y0,
                    b.x1,
                    b.y1
                )?;
            }
        }
        if let Some(d) = draw {
            let mut img = PreprocessSpec::load(path)?;
            crate::plot::draw_detections(&mut img, &dets, &det.labels)?;
            let name = path
                .file_stem()
                .map_or("picture".into(), |s| s.to_string_lossy().to_string());
            let dest = d.join(format!("{name}.png"));
            img.save(&dest)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dest.display()))?;
        }
    }
    Ok(failed)
}
