//! A trained run read back for export: its trained part as [`Net`], where its trunk is cut, how
//! its pictures are fed, and its training (calibration) and validation pictures.

use std::path::Path;

use crate::data::annotated::AnnotatedImage;
use kestrel_shared::manifest::{ClassifyHeadKind, Decoding, Task};
use kestrel_shared::{CutPoint, PreprocessSpec};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::layers::{self, Net};
use crate::classify::head::HeadKind;
use crate::classify::run::{TrainedClassifier, TrainedModel};
use crate::data::{Dataset, Sample, annotations};
use crate::detect::run::TrainedDetector;
use crate::detect::train::DetectHead;
use crate::mobilenet::NUM_BLOCKS;
use crate::pretrained::Pretrained;
use crate::run_config::{RunConfig, run_task};

/// The pictures a run is validated on, with what is right for each.
#[derive(Debug, Clone)]
pub enum ValidationSet {
    /// Classification: pictures with their label index.
    Classify(Vec<Sample>),
    /// Detection: annotated pictures (boxes in their own pixels).
    Detect(Vec<AnnotatedImage>),
}

impl ValidationSet {
    /// Number of pictures.
    pub fn len(&self) -> usize {
        match self {
            ValidationSet::Classify(s) => s.len(),
            ValidationSet::Detect(s) => s.len(),
        }
    }

    /// True without pictures.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything the exporter needs from a run.
pub struct RunSource {
    /// Task and head kind.
    pub task: Task,
    /// Class names.
    pub labels: Vec<String>,
    /// Preprocessing of the run.
    pub spec: PreprocessSpec,
    /// Where `trunk.onnx` ends (the frozen prefix of a fine-tuned run).
    pub cut: CutPoint,
    /// Fine-tuned blocks, which go into the head.
    pub fine_tuned_blocks: usize,
    /// The trained part.
    pub head: Net,
    /// Shape of the head's input for one item, batch first (`[1, C, H, W]` or `[1, D]`).
    pub head_input: Vec<usize>,
    /// Shape of the head's output for one item, batch first.
    pub head_output: Vec<usize>,
    /// Name of the head's output tensor.
    pub output_name: &'static str,
    /// How detections are decoded (detectors only).
    pub decode: Option<Decoding>,
    /// Training pictures (calibration draws from them).
    pub train: Vec<Sample>,
    /// Validation pictures.
    pub val: ValidationSet,
}

/// Read a run written by `kestrel train classify` or `kestrel train detect`.
pub fn open(pretrained: &Pretrained, run: &Path, cache: &Path) -> anyhow::Result<RunSource> {
    match run_task(run) {
        Some("detect") => open_detector(pretrained, run, cache),
        Some("classify") => open_classifier(pretrained, run, cache),
        Some(other) => anyhow::bail!(
            "{} is a `{other}` run: `kestrel export` takes classification and detection runs",
            run.display()
        ),
        None => anyhow::bail!(
            "{} is not a run directory (no readable config.json with a task): pass a folder written by `kestrel train classify` or `kestrel train detect`",
            run.display()
        ),
    }
}

fn open_classifier(pretrained: &Pretrained, run: &Path, cache: &Path) -> anyhow::Result<RunSource> {
    let c = TrainedClassifier::open(run, pretrained, cache)?;
    let (_, opts) = RunConfig::read_classify(run)?;
    let data = Dataset::scan(&opts.data, opts.val_fraction, opts.train.seed).map_err(|e| {
        anyhow::anyhow!(
            "{e} (the run's pictures are needed to calibrate and validate the bundle: {} must still exist)",
            opts.data.display()
        )
    })?;
    anyhow::ensure!(
        data.labels == c.labels,
        "{} now has classes {:?} but the run was trained on {:?}",
        opts.data.display(),
        data.labels,
        c.labels
    );
    let head_kind = match opts.train.head {
        HeadKind::Linear => ClassifyHeadKind::Linear,
        HeadKind::Dense { .. } => ClassifyHeadKind::Dense,
    };
    let (head, fine_tuned_blocks) = match &c.model {
        TrainedModel::Head(h) => {
            let mut net = layers::classify_head(h);
            // A head on a feature map reads it flattened, as it was trained.
            if c.trunk.info.output_shape.len() > 2 {
                net.layers.insert(0, layers::Layer::Flatten);
            }
            (net, 0)
        }
        TrainedModel::Top(top, _) => {
            let n = top.blocks.len();
            (layers::top(top, NUM_BLOCKS - n + 1), n)
        }
    };
    let mut head_input = c.trunk.info.output_shape.clone();
    head_input[0] = 1;
    let val = if data.val.is_empty() {
        data.train.clone()
    } else {
        data.val.clone()
    };
    Ok(RunSource {
        task: Task::Classify { head: head_kind },
        spec: c.trunk.info.preprocess,
        cut: c.trunk.info.cut,
        fine_tuned_blocks,
        head,
        head_input,
        head_output: vec![1, c.labels.len()],
        output_name: "logits",
        decode: None,
        train: data.train,
        val: ValidationSet::Classify(val),
        labels: c.labels,
    })
}

fn open_detector(pretrained: &Pretrained, run: &Path, cache: &Path) -> anyhow::Result<RunSource> {
    let d = TrainedDetector::open(run, pretrained, cache)?;
    let o = &d.options;
    let data = annotations::load_with(&o.data, o.annotations.as_deref(), o.strict).map_err(|e| {
        anyhow::anyhow!(
            "{e} (the run's pictures are needed to calibrate and validate the bundle: {} must still exist)",
            o.data.display()
        )
    })?;
    anyhow::ensure!(
        data.labels == d.labels,
        "{} now has classes {:?} but the run was trained on {:?}",
        o.data.display(),
        data.labels,
        d.labels
    );
    // The run's split: the dataset's own, or the seeded one `train detect` made.
    let (train, val) = if data.val.is_empty() {
        let mut images = data.train;
        images.shuffle(&mut ChaCha8Rng::seed_from_u64(o.train.seed));
        let n_val = ((images.len() as f64 * o.val_fraction).round() as usize)
            .min(images.len().saturating_sub(1));
        let train = images.split_off(n_val);
        (train, images)
    } else {
        (data.train, data.val)
    };
    let val = if val.is_empty() { train.clone() } else { val };
    let first = match (&o.fine_tune, o.cut) {
        (Some(ft), CutPoint::Features(k)) => k as usize - ft.blocks + 1,
        _ => 0,
    };
    let out = o.cut.output_shape(o.height as usize, o.width as usize);
    let kind = o.train.head;
    let (head, head_output, grid) = match &d.head {
        DetectHead::Single(h) => (layers::single_head(h, first), vec![1, 5], None),
        DetectHead::Attention(h) => (
            layers::attention_head(h, first, [out[2], out[3]]),
            vec![1, 5],
            None,
        ),
        DetectHead::Grid(h, spec) => (
            layers::grid_head(h, first),
            vec![1, spec.channels(), out[2], out[3]],
            Some(*spec),
        ),
    };
    let mut head_input = d.trunk.info.output_shape.clone();
    head_input[0] = 1;
    Ok(RunSource {
        task: Task::Detect { head: kind },
        spec: d.trunk.info.preprocess,
        cut: d.trunk.info.cut,
        fine_tuned_blocks: o.fine_tune.as_ref().map_or(0, |f| f.blocks),
        head,
        head_input,
        head_output,
        output_name: "raw",
        decode: Some(Decoding {
            score_threshold: o.decode.score_threshold,
            nms_iou: o.decode.nms_iou,
            max_detections: o.decode.max_detections,
            stride: o.cut.stride(),
            grid,
        }),
        train: train
            .iter()
            .enumerate()
            .map(|(i, im)| Sample {
                path: im.path.clone(),
                label: i,
            })
            .collect(),
        val: ValidationSet::Detect(val),
        labels: d.labels,
    })
}
