//! `kestrel train classify`: from a folder of labelled pictures to a trained head in a run
//! directory, with everything needed to reproduce and judge it.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::store::{BurnpackStore, ModuleSnapshot};
use kestrel_edge::{Threads, Trunk};
use kestrel_shared::{CutPoint, PreprocessSpec};
use serde::Serialize;
use serde_json::json;

use super::embed::{EmbeddedSet, EmbeddingCache, Skipped, embed_samples};
use super::finetune::{FineTuneConfig, TopModel, fine_tune, top_logits};
use super::train::{
    EpochStats, Examples, FitWatch, TrainConfig, argmax_rows, head_logits, train_head,
};
use crate::checkpoint::RunCheckpoints;
use crate::data::Dataset;
use crate::pretrained::Pretrained;
use crate::progress::Progress;
use crate::run_config::{RunConfig, RunTask};

/// File name of the head checkpoint (burnpack) inside a run directory.
pub const HEAD_FILE: &str = "head.bpk";
/// File name of the fine-tuned top (blocks + last conv + head) checkpoint.
pub const TOP_FILE: &str = "top.bpk";

/// Settings of one classification run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ClassifyOptions {
    /// Dataset root (ImageFolder layout).
    pub data: PathBuf,
    /// Where the trunk is cut.
    pub cut: CutPoint,
    /// Share of each class held out when there is no `val/` folder.
    pub val_fraction: f64,
    /// Fail on the first unreadable picture instead of skipping it.
    pub strict: bool,
    /// Augmented views embedded per training picture, besides the picture itself.
    #[serde(default)]
    pub views: u32,
    /// Head and optimiser settings.
    pub train: TrainConfig,
    /// Phase 2: fine-tune the top blocks after the head (None = head only).
    #[serde(default)]
    pub fine_tune: Option<FineTuneConfig>,
}

/// Per-class and overall quality of a classifier on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// Fraction classified correctly.
    pub accuracy: f64,
    /// Per class: precision.
    pub precision: Vec<f64>,
    /// Per class: recall.
    pub recall: Vec<f64>,
    /// Per class: F1.
    pub f1: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Compute [`ClassMetrics`] from true and predicted labels.
pub fn class_metrics(truth: &[usize], pred: &[usize], classes: usize) -> ClassMetrics {
    let mut confusion = vec![vec![0usize; classes]; classes];
    for (&t, &p) in truth.iter().zip(pred) {
        confusion[t][p] += 1;
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (mut precision, mut recall, mut f1) = (Vec::new(), Vec::new(), Vec::new());
    for (k, row) in confusion.iter().enumerate() {
        let tp = row[k];
        let predicted: usize = confusion.iter().map(|r| r[k]).sum();
        let actual: usize = row.iter().sum();
        let (p, r) = (ratio(tp, predicted), ratio(tp, actual));
        precision.push(p);
        recall.push(r);
        f1.push(if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        });
    }
    let correct: usize = confusion.iter().enumerate().map(|(k, r)| r[k]).sum();
    ClassMetrics {
        accuracy: ratio(correct, truth.len()),
        precision,
        recall,
        f1,
        confusion,
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run directory.
    pub run: PathBuf,
    /// Validation accuracy of the kept head.
    pub val_accuracy: f64,
    /// Validation loss of the kept head.
    pub val_loss: f64,
    /// Epoch of the kept head.
    pub best_epoch: usize,
    /// Pictures embedded (train + val).
    pub images_used: usize,
    /// Pictures skipped as unreadable.
    pub skipped: Vec<Skipped>,
    /// Embeddings read from the cache instead of running the trunk.
    pub cache_hits: usize,
    /// Validation accuracy of the head alone (phase 1), when phase 2 ran.
    pub phase1_val_accuracy: Option<f64>,
}

/// The live line of a training progress bar.
fn live(e: &EpochStats) -> String {
    format!(
        "epoch {}: loss {:.3} acc {:.3} | val loss {:.3} acc {:.3}",
        e.epoch, e.train_loss, e.train_accuracy, e.val_loss, e.val_accuracy
    )
}

fn write_history(path: &Path, history: &[EpochStats]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "epoch,train_loss,train_accuracy,val_loss,val_accuracy")?;
    for h in history {
        writeln!(
            f,
            "{},{},{},{},{}",
            h.epoch, h.train_loss, h.train_accuracy, h.val_loss, h.val_accuracy
        )?;
    }
    f.flush()
}

/// Train a classification head on `opts.data` and write the run into `out`; with `resume`,
/// continue the interrupted run in `out` from its checkpoints.
pub fn train_classify(
    pretrained: &Pretrained,
    opts: &ClassifyOptions,
    cache: &Path,
    out: &Path,
    resume: bool,
    progress: &dyn Progress,
) -> anyhow::Result<RunSummary> {
    anyhow::ensure!(
        opts.fine_tune.is_none() || opts.cut == CutPoint::Pooled,
        "fine-tuning trains the top blocks under a head on the pooled vector: use --cut pooled with --fine-tune-blocks"
    );
    // A detection dataset's folders (images/, labels/, train/...) would scan as classes: say so.
    if let Ok(found) = crate::data::annotations::find_layout(&opts.data) {
        use crate::data::annotations::Layout;
        anyhow::ensure!(
            found.layout() == Layout::ImageFolder,
            "{} is a detection dataset ({}): train it with `kestrel train detect`, or give a folder of class folders",
            opts.data.display(),
            found.describe()
        );
        tracing::info!("{}: {}", opts.data.display(), found.describe());
    }
    let data = Dataset::scan(&opts.data, opts.val_fraction, opts.train.seed)?;
    std::fs::create_dir_all(out)?;
    let checkpoints = RunCheckpoints::open(out, resume)?;
    let spec = PreprocessSpec::imagenet();
    let trunk_dir = pretrained.cached_trunk(opts.cut, spec, cache)?;
    let trunk = Trunk::open(&trunk_dir, 1, Threads::Single)?;
    // Phase 2 reads the frozen prefix through its own trunk, cut below the unfrozen blocks.
    let prefix = match &opts.fine_tune {
        Some(ft) => Some(Trunk::open(
            &pretrained.cached_trunk(ft.prefix_cut(), spec, cache)?,
            1,
            Threads::Single,
        )?),
        None => None,
    };
    // The configuration goes down before training starts, so a crashed run still says what it was.
    RunConfig::starting(
        RunTask::Classify(opts.clone()),
        &data.labels,
        spec,
        &trunk,
        prefix.as_ref(),
        pretrained,
    )
    .begin(out, resume)?;
    std::fs::write(out.join("labels.txt"), data.labels.join("\n") + "\n")?;

    let emb_cache = EmbeddingCache::new(&cache.join("embeddings"));
    // Training pictures with their augmented views; validation pictures as they are.
    let embed_split = |t: &Trunk| -> anyhow::Result<(EmbeddedSet, EmbeddedSet)> {
        Ok((
            embed_samples(
                t,
                &data.train,
                &emb_cache,
                opts.views,
                opts.strict,
                progress,
            )?,
            embed_samples(t, &data.val, &emb_cache, 0, opts.strict, progress)?,
        ))
    };
    let (train, val) = embed_split(&trunk)?;
    anyhow::ensure!(
        !train.x.is_empty(),
        "no readable training pictures in {}",
        opts.data.display()
    );
    let classes = data.labels.len();
    let bar = progress.start("training head", Some(opts.train.epochs as u64));
    bar.advance(checkpoints.phase(1).epochs_done() as u64);
    let result = train_head(
        &opts.train,
        classes,
        Examples {
            train_x: &train.x,
            train_y: &train.y,
            val_x: &val.x,
            val_y: &val.y,
        },
        &pretrained.device,
        FitWatch {
            checkpoints: Some(&checkpoints.phase(1)),
            on_epoch: &mut |e| {
                bar.advance(1);
                bar.message(&live(e));
                tracing::info!(
                    "epoch {}: loss {:.4} acc {:.3} | val loss {:.4} acc {:.3}",
                    e.epoch,
                    e.train_loss,
                    e.train_accuracy,
                    e.val_loss,
                    e.val_accuracy
                );
            },
        },
    )?;
    bar.finish();

    crate::checkpoint::save(&result.head, &out.join(HEAD_FILE))?;
    write_history(&out.join("history.csv"), &result.history)?;
    let results = out.join("results.csv");
    crate::results::write(
        &results,
        &crate::results::classification(&result.history, &[]),
    )?;
    crate::plot::learning_curves(
        &result.history,
        "head on cached embeddings",
        &out.join("curves.png"),
    )?;
    let best = &result.history[result.best_epoch - 1];
    let (mut val_accuracy, mut val_loss) = (best.val_accuracy, best.val_loss);
    let mut val_logits = head_logits(&result.head, &val.x, &pretrained.device);
    let mut phase2 = serde_json::Value::Null;
    let mut val_y = val.y.clone();
    if let Some(ft) = &opts.fine_tune {
        // The frozen prefix's outputs, through the ONNX trunk cut there, cached like embeddings.
        let prefix = prefix.as_ref().expect("opened above when fine-tuning");
        let (ptrain, pval) = embed_split(prefix)?;
        let s = &prefix.info.output_shape;
        let shape = [s[1], s[2], s[3]];
        let start = TopModel::from_pretrained(
            &pretrained.weights,
            ft.blocks,
            result.head.clone(),
            &pretrained.device,
        )?;
        let bar = progress.start("fine-tuning top blocks", Some(ft.epochs as u64));
        bar.advance(checkpoints.phase(2).epochs_done() as u64);
        let r = fine_tune(
            ft,
            start,
            classes,
            shape,
            Examples {
                train_x: &ptrain.x,
                train_y: &ptrain.y,
                val_x: &pval.x,
                val_y: &pval.y,
            },
            &pretrained.device,
            FitWatch {
                checkpoints: Some(&checkpoints.phase(2)),
                on_epoch: &mut |e| {
                    bar.advance(1);
                    bar.message(&live(e));
                    tracing::info!(
                        "fine-tune epoch {}: loss {:.4} | val loss {:.4} acc {:.3}",
                        e.epoch,
                        e.train_loss,
                        e.val_loss,
                        e.val_accuracy
                    );
                },
            },
        )?;
        bar.finish();
        crate::checkpoint::save(&r.model, &out.join(TOP_FILE))?;
        write_history(&out.join("finetune-history.csv"), &r.history)?;
        crate::results::write(
            &results,
            &crate::results::classification(&result.history, &r.history),
        )?;
        crate::plot::learning_curves(
            &r.history,
            &format!("fine-tuning the top {} blocks", ft.blocks),
            &out.join("finetune-curves.png"),
        )?;
        val_logits = top_logits(&r.model, &pval.x, shape, &pretrained.device);
        val_y = pval.y.clone();
        if r.best_epoch > 0 {
            let b = &r.history[r.best_epoch - 1];
            (val_accuracy, val_loss) = (b.val_accuracy, b.val_loss);
        }
        phase2 = json!({
            "blocks": ft.blocks,
            "prefix_cut": ft.prefix_cut().to_string(),
            "best_epoch": r.best_epoch,
            "epochs_run": r.history.len(),
            "val_accuracy": val_accuracy,
            "val_loss": val_loss,
            "phase1_val_accuracy": best.val_accuracy,
        });
    }
    let val_pred = argmax_rows(&val_logits, classes);
    let val_metrics = class_metrics(&val_y, &val_pred, classes);
    crate::plot::confusion_matrix(
        &val_metrics.confusion,
        &data.labels,
        &out.join("confusion.png"),
    )?;
    let mut skipped = train.skipped.clone();
    skipped.extend(val.skipped.iter().cloned());
    let summary = RunSummary {
        run: out.to_path_buf(),
        val_accuracy,
        val_loss,
        best_epoch: result.best_epoch,
        images_used: train.x.len() + val.x.len(),
        skipped,
        cache_hits: train.cache_hits + val.cache_hits,
        phase1_val_accuracy: opts.fine_tune.as_ref().map(|_| best.val_accuracy),
    };
    std::fs::write(
        out.join("metrics.json"),
        serde_json::to_string_pretty(&json!({
            "val_accuracy": summary.val_accuracy,
            "val_loss": summary.val_loss,
            "best_epoch": summary.best_epoch,
            "epochs_run": result.history.len(),
            "labels": data.labels,
            "val": val_metrics,
            // Embeddings trained on (pictures x (1 + views)) and distinct pictures behind them.
            "train_images": train.x.len(),
            "train_pictures": train.paths.iter().collect::<std::collections::BTreeSet<_>>().len(),
            "views": opts.views,
            "val_images": val.x.len(),
            "images_used": summary.images_used,
            "images_skipped": summary.skipped.len(),
            "skipped": summary.skipped,
            "embedding_cache_hits": summary.cache_hits,
            "phase1": {"val_accuracy": best.val_accuracy, "val_loss": best.val_loss, "best_epoch": result.best_epoch},
            "phase2": phase2,
        }))? + "\n",
    )?;
    Ok(summary)
}

/// What turns a trunk output into logits: the head alone, or the fine-tuned top.
pub enum TrainedModel {
    /// Phase 1 only: the head on pooled embeddings.
    Head(Box<super::head::Head>),
    /// Phase 2: the fine-tuned blocks + last conv + head, on prefix feature maps of this shape.
    Top(Box<TopModel>, [usize; 3]),
}

/// A trained run loaded back: its trunk (tract), its trained part (burn) and its labels.
pub struct TrainedClassifier {
    /// Class names.
    pub labels: Vec<String>,
    /// The frozen trunk (or frozen prefix, for fine-tuned runs) the model was trained on.
    pub trunk: Trunk,
    /// The trained part.
    pub model: TrainedModel,
    device: burn::tensor::Device,
}

impl TrainedClassifier {
    /// Load `run` (written by [`train_classify`]); the trunk comes from the cache (exported again
    /// if needed) and must be the very one the head was trained on.
    pub fn open(run: &Path, pretrained: &Pretrained, cache: &Path) -> anyhow::Result<Self> {
        let (config, opts) = RunConfig::read_classify(run)?;
        let labels = config.labels.clone();
        let spec = config.preprocess;
        let cut = opts
            .fine_tune
            .as_ref()
            .map_or(opts.cut, FineTuneConfig::prefix_cut);
        let trunk = Trunk::open(
            &pretrained.cached_trunk(cut, spec, cache)?,
            1,
            Threads::Single,
        )?;
        let device = pretrained.device.clone();
        let mut head = super::head::HeadConfig {
            kind: opts.train.head,
            // The head reads the pooled vector when the top was fine-tuned, else the trunk output.
            inputs: match &opts.fine_tune {
                Some(_) => CutPoint::Pooled.channels(),
                None => trunk.info.output_shape.iter().skip(1).product(),
            },
            classes: labels.len(),
        }
        .init(
            &device,
            &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0),
        );
        config.check_trunk(run, &trunk.info.onnx_sha256)?;
        let model = match &opts.fine_tune {
            None => {
                load_checkpoint(&mut head, &run.join(HEAD_FILE))?;
                TrainedModel::Head(Box::new(head))
            }
            Some(ft) => {
                let mut top =
                    TopModel::from_pretrained(&pretrained.weights, ft.blocks, head, &device)?;
                load_checkpoint(&mut top, &run.join(TOP_FILE))?;
                let s = &trunk.info.output_shape;
                TrainedModel::Top(Box::new(top), [s[1], s[2], s[3]])
            }
        };
        Ok(TrainedClassifier {
            labels,
            trunk,
            model,
            device,
        })
    }

    /// Logits for trunk outputs.
    pub fn logits(&self, x: &[Vec<f32>]) -> Vec<f32> {
        match &self.model {
            TrainedModel::Head(head) => head_logits(head, x, &self.device),
            TrainedModel::Top(top, shape) => top_logits(top, x, *shape, &self.device),
        }
    }

    /// Classify picture files, results in input order; a bad file gets its own error.
    pub fn classify_files(
        &self,
        paths: &[PathBuf],
        k: usize,
    ) -> Vec<anyhow::Result<crate::predict::Prediction>> {
        paths
            .iter()
            .map(|p| {
                let e = self.trunk.embed_file(p)?;
                Ok(crate::predict::prediction(
                    p,
                    &self.logits(&[e]),
                    &self.labels,
                    k,
                ))
            })
            .collect()
    }

    /// Metrics on another labelled folder (all of it; its labels must be among the run's).
    pub fn evaluate(
        &self,
        data: &Path,
        cache: &Path,
        strict: bool,
        progress: &dyn Progress,
    ) -> anyhow::Result<serde_json::Value> {
        let set = Dataset::scan(data, 0.0, 0)?;
        let mut samples = set.train.clone();
        samples.extend(set.val.iter().cloned());
        // Map the folder's label indices onto the run's.
        for s in &mut samples {
            let name = &set.labels[s.label];
            s.label = self.labels.iter().position(|l| l == name).ok_or_else(|| {
                anyhow::anyhow!(
                    "class `{name}` in {} is unknown to this run (labels: {})",
                    data.display(),
                    self.labels.join(", ")
                )
            })?;
        }
        let emb = embed_samples(
            &self.trunk,
            &samples,
            &EmbeddingCache::new(&cache.join("embeddings")),
            0,
            strict,
            progress,
        )?;
        let classes = self.labels.len();
        let logits = self.logits(&emb.x);
        let loss = super::train::cross_entropy(&logits, &emb.y, classes);
        let pred = argmax_rows(&logits, classes);
        let m = class_metrics(&emb.y, &pred, classes);
        Ok(json!({
            "data": data,
            "accuracy": m.accuracy,
            "loss": loss,
            "labels": self.labels,
            "metrics": m,
            "images_used": emb.x.len(),
            "images_skipped": emb.skipped.len(),
            "skipped": emb.skipped,
        }))
    }
}

/// Load a burnpack checkpoint into `module`; every parameter must be found.
fn load_checkpoint<M: ModuleSnapshot>(module: &mut M, file: &Path) -> anyhow::Result<()> {
    let result = module
        .load_from(&mut BurnpackStore::from_file(file))
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", file.display()))?;
    anyhow::ensure!(
        result.missing.is_empty() && result.errors.is_empty(),
        "{} does not fit the run's config: missing {:?}, errors {:?}",
        file.display(),
        result.missing,
        result.errors
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        // truth: 0 0 1 1 2 ; pred: 0 1 1 1 0
        let m = class_metrics(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3);
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(m.precision, vec![0.5, 2.0 / 3.0, 0.0]);
        assert_eq!(m.recall, vec![0.5, 1.0, 0.0]);
        assert!((m.f1[1] - 0.8).abs() < 1e-12);
        assert_eq!(m.f1[2], 0.0);
    }
}
