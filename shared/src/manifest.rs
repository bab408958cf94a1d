//! The bundle manifest (`manifest.json`): what travels to a board with the exported models, and the
//! one description both sides read.
//!
//! A bundle is a directory holding `trunk.onnx` (the frozen trunk up to the cut), `head.onnx`
//! (everything that was trained, int8 by default), `model.onnx` (both merged into one graph, for
//! other runtimes), trunk and head again in tract's NNEF format (`trunk.nnef.tar`,
//! `head.nnef.tar`: what boards run, read without an ONNX parser) and this manifest. The manifest says how to feed the models (input size, layout,
//! colour order, resize mode, normalisation), what comes out (tensor names and shapes, labels,
//! how detections are decoded), pins every file by sha256 and size, records how the head was
//! quantized and what that cost on the validation set, and leaves room for a signature.
//!
//! `kestrel export` writes it ([`Manifest::write`]); `kestrel-edge` reads it ([`Manifest::read`])
//! and then checks the files against it. Reading is strict: an unknown schema version, a missing
//! or unknown field, or a manifest that contradicts itself is an error naming the file and the field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::decode::GridSpec;
use crate::{CutPoint, PreprocessSpec};

/// Version of the manifest schema written; a reader accepts versions
/// [`MANIFEST_OLDEST_SCHEMA_VERSION`] to this one. Version 2 added [`Release`], version 3 the
/// NNEF files ([`BundleFiles::nnef`]).
pub const MANIFEST_SCHEMA_VERSION: u32 = 3;
/// The oldest schema version still read (a version-1 manifest has no [`Release`]).
pub const MANIFEST_OLDEST_SCHEMA_VERSION: u32 = 1;
/// File name of the manifest inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the frozen trunk inside a bundle.
pub const TRUNK_FILE: &str = "trunk.onnx";
/// File name of the trained part inside a bundle.
pub const HEAD_FILE: &str = "head.onnx";
/// File name of trunk and head merged into one graph.
pub const MODEL_FILE: &str = "model.onnx";
/// File name of the frozen trunk in NNEF (tract's format, a tar archive).
pub const TRUNK_NNEF_FILE: &str = "trunk.nnef.tar";
/// File name of the trained part in NNEF.
pub const HEAD_NNEF_FILE: &str = "head.nnef.tar";

/// Everything a runtime needs to run a bundle, and what it was measured to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version, [`MANIFEST_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Version of Kestrel that wrote the bundle.
    pub kestrel_version: String,
    /// What the model does and with which head.
    pub task: Task,
    /// Class names, in output order.
    pub labels: Vec<String>,
    /// How a frame becomes the input tensor.
    pub input: InputSpec,
    /// Where `trunk.onnx` ends (for a fine-tuned run: below the tuned blocks, which are in the head).
    pub cut: CutPoint,
    /// Pretrained inverted-residual blocks that were fine-tuned and therefore live in `head.onnx`
    /// (0 when only the head was trained).
    pub fine_tuned_blocks: usize,
    /// Architecture of the trunk, e.g. `mobilenet_v2`.
    pub architecture: String,
    /// sha256 of the pretrained weights the trunk was made from.
    pub weights_sha256: String,
    /// The three model files.
    pub files: BundleFiles,
    /// How the models were quantized.
    pub quantization: Quantization,
    /// How a detector's output becomes boxes (absent for classifiers).
    pub decode: Option<Decoding>,
    /// Validation metrics of the fp32 model and of the bundle as exported.
    pub metrics: ValidationMetrics,
    /// When and in which order the bundle was made: a board refuses a bundle older than its
    /// current one (anti-rollback). Absent in bundles of schema version 1, which count as oldest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
    /// Signature of the manifest (none until bundles are signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// When a bundle was made, and its place in the order of bundles: signed with the manifest, so a
/// board can refuse an older bundle sent again (a downgrade, or the replay of a flawed bundle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Creation time, RFC 3339 in UTC (`2026-12-04T01:30:00Z`).
    pub created: String,
    /// Strictly increasing over the bundles a workstation exports: milliseconds since 1970 at
    /// export, raised above the last sequence that workstation wrote if its clock went back.
    pub sequence: u64,
}

impl Release {
    /// The sequence of a manifest's release; 0 (oldest) when it has none.
    pub fn sequence_of(manifest: &Manifest) -> u64 {
        manifest.release.as_ref().map_or(0, |r| r.sequence)
    }

    /// How a manifest's release reads in messages.
    pub fn describe(manifest: &Manifest) -> String {
        match &manifest.release {
            Some(r) => format!("made {}, sequence {}", r.created, r.sequence),
            None => "made before releases were recorded, sequence 0".to_string(),
        }
    }

    /// Why `new` may not replace `current` without the operator's say-so: `Some(reason)` when
    /// `new` is older (a lower sequence); bundles with equal sequences (the same bundle) pass.
    pub fn downgrade(new: &Manifest, current: &Manifest) -> Option<String> {
        (Self::sequence_of(new) < Self::sequence_of(current)).then(|| {
            format!(
                "it is older than the current bundle ({} against {}): a downgrade is refused; \
                 to go back on purpose use `kestrel rollback` or `kestrel deploy --allow-downgrade`",
                Self::describe(new),
                Self::describe(current)
            )
        })
    }
}

/// What the model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Task {
    /// Image classification: the head outputs one logit per label, `[N, labels]`.
    Classify {
        /// The head's layers.
        head: ClassifyHeadKind,
    },
    /// Object detection.
    Detect {
        /// The head's kind; see [`crate::decode`] for how each output is read.
        head: DetectHeadKind,
    },
}

/// Layers of a classification head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifyHeadKind {
    /// One linear layer.
    Linear,
    /// Dense + ReLU, then linear.
    Dense,
}

/// Kind of detection head: what the trainer trains (`kestrel train detect --head`) and the
/// manifest records, so the board reads the output the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum DetectHeadKind {
    /// The book's detector: one object per picture, `[N, 5]` = class and left, right, top, bottom.
    Single,
    /// Several objects: objectness, classes and a box per cell, `[N, 1 + C + 4, H, W]`.
    Grid,
    /// Several objects, centres only (FOMO-style, for the cheapest boards), `[N, 1 + C, H, W]`.
    Centroids,
}

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    /// Batch, channels, height, width.
    #[serde(rename = "NCHW")]
    Nchw,
}

/// Order of the colour channels in the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColorOrder {
    /// Red, green, blue.
    #[serde(rename = "RGB")]
    Rgb,
}

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    /// 32-bit float.
    Float32,
}

/// How frames are fed to the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Tensor layout.
    pub layout: Layout,
    /// Colour order.
    pub color: ColorOrder,
    /// Size, resize mode and normalisation (the one implementation is
    /// [`PreprocessSpec::apply`]).
    pub preprocess: PreprocessSpec,
}

/// A tensor a graph takes or gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorInfo {
    /// Name in the ONNX graph.
    pub name: String,
    /// Shape for a batch of one (the batch dimension is symbolic in the files).
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

impl TensorInfo {
    /// A float tensor.
    pub fn float(name: &str, shape: Vec<usize>) -> Self {
        TensorInfo {
            name: name.to_string(),
            shape,
            dtype: DType::Float32,
        }
    }

    /// Values per item (the shape without its batch dimension).
    pub fn item_len(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
}

/// Numeric precision of a model file's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Float weights and arithmetic.
    Float32,
    /// int8 weights; 8-bit integer matrix products.
    Int8,
}

/// One model file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// File name, relative to the bundle directory (a plain name, no directories).
    pub path: String,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Weight precision.
    pub precision: Precision,
    /// The graph's input.
    pub input: TensorInfo,
    /// The graph's output.
    pub output: TensorInfo,
}

/// The bundle's model files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFiles {
    /// The frozen trunk: picture in, features out.
    pub trunk: ModelFile,
    /// The trained part: features in, raw outputs out.
    pub head: ModelFile,
    /// Trunk and head in one graph: picture in, raw outputs out.
    pub model: ModelFile,
    /// Trunk and head in NNEF, the same graphs as `trunk.onnx` and `head.onnx` (absent in bundles
    /// of schema versions 1 and 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nnef: Option<NnefFiles>,
}

/// Trunk and head in tract's NNEF format: what a board runs when the bundle has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NnefFiles {
    /// `trunk.nnef.tar`.
    pub trunk: ModelFile,
    /// `head.nnef.tar`.
    pub head: ModelFile,
}

impl BundleFiles {
    /// Every file with its role name (`trunk`, `head`, `model`, `nnef.trunk`, `nnef.head`).
    pub fn all(&self) -> Vec<(&'static str, &ModelFile)> {
        let mut all = vec![
            ("trunk", &self.trunk),
            ("head", &self.head),
            ("model", &self.model),
        ];
        if let Some(n) = &self.nnef {
            all.extend([("nnef.trunk", &n.trunk), ("nnef.head", &n.head)]);
        }
        all
    }

    /// The files a board needs: trunk and head, in NNEF when the bundle has them (every
    /// kestrel-edge reads NNEF; board builds read nothing else), else the ONNX pair. Deploys send
    /// only these: `model.onnx` (the same network in one graph, for other runtimes) holds a copy
    /// of the trunk, and a retrained head then costs only the head and the manifest on the line.
    /// The manifest still pins every file's hash.
    pub fn on_board(&self) -> [(&'static str, &ModelFile); 2] {
        match &self.nnef {
            Some(n) => [("trunk", &n.trunk), ("head", &n.head)],
            None => [("trunk", &self.trunk), ("head", &self.head)],
        }
    }

    /// The ONNX trunk and head (what other runtimes, and the workstation's checks, read).
    pub fn onnx_pair(&self) -> [(&'static str, &ModelFile); 2] {
        [("trunk", &self.trunk), ("head", &self.head)]
    }
}

/// Which parts of a bundle are quantized to int8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantizeMode {
    /// Everything in float32.
    None,
    /// The head in int8, the trunk in float32 (the default: a small head to ship, a fast trunk).
    Head,
    /// The head and the trunk in int8.
    All,
}

impl QuantizeMode {
    /// The name used on the command line and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            QuantizeMode::None => "none",
            QuantizeMode::Head => "head",
            QuantizeMode::All => "all",
        }
    }
}

impl std::fmt::Display for QuantizeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for QuantizeMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(QuantizeMode::None),
            "head" => Ok(QuantizeMode::Head),
            "all" => Ok(QuantizeMode::All),
            other => Err(format!(
                "unknown quantization `{other}`: use none, head or all"
            )),
        }
    }
}

/// How activation ranges were chosen from the calibration data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CalibrationMethod {
    /// The smallest and largest value seen.
    MinMax,
    /// The given percentile at both ends (e.g. 99.99: the lowest and highest 0.01% are clipped).
    Percentile {
        /// Percentile in (50, 100].
        percentile: f32,
    },
}

/// The calibration behind the activation ranges.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Range rule.
    pub method: CalibrationMethod,
    /// Training pictures whose (cached) features or activations were observed.
    pub samples: usize,
}

/// The input quantization of one integer layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizedLayer {
    /// Which file the layer is in: `trunk` or `head`.
    pub file: String,
    /// Name of the layer (torchvision's `features.N.*` in the trunk, `head.*` in the head).
    pub layer: String,
    /// Integer operator (`MatMulInteger`, `ConvInteger`).
    pub op: String,
    /// Scale of the int8 input: `real = scale * (q - zero_point)`.
    pub input_scale: f32,
    /// Zero point of the int8 input.
    pub input_zero_point: i8,
    /// Calibrated input range `[low, high]` (before widening to include 0).
    pub input_range: [f32; 2],
    /// Output channels, each with its own symmetric int8 weight scale.
    pub channels: usize,
}

/// How the bundle was quantized. Weights: per output channel, symmetric int8 (zero point 0,
/// scale = max |w| / 127), biases corrected for the weights' rounding. Activations: per tensor,
/// asymmetric int8 with calibrated ranges. Integer layers are `QuantizeLinear` ->
/// `MatMulInteger` / `ConvInteger` (int32 accumulators) -> float rescale, bias and activation.
/// Depthwise convolutions stay float32 (tract has no int8 depthwise kernel: they would only be
/// slower); `layers` lists exactly the int8 layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// What is quantized.
    pub mode: QuantizeMode,
    /// The calibration (absent when nothing is quantized).
    pub calibration: Option<Calibration>,
    /// Every integer layer and its input quantization.
    pub layers: Vec<QuantizedLayer>,
}

/// How a detector's raw output becomes detections (see [`crate::decode`] and [`crate::nms`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decoding {
    /// Lowest score kept.
    pub score_threshold: f32,
    /// IoU above which NMS drops the weaker of two boxes of a class.
    pub nms_iou: f32,
    /// Most detections per picture.
    pub max_detections: usize,
    /// Input pixels per cell of the feature map the head reads.
    pub stride: usize,
    /// How a grid head's output is read (absent for the single head).
    pub grid: Option<GridSpec>,
}

/// Quality on the validation set, measured by running the models in tract.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSet {
    /// Classification: share of pictures classified right.
    pub accuracy: Option<f64>,
    /// Detection: COCO mAP at IoU 0.5.
    pub map50: Option<f64>,
    /// Detection: COCO mAP averaged over IoU 0.5:0.95.
    pub map50_95: Option<f64>,
    /// Single-object detection: mean IoU of the predicted box with the picture's object.
    pub mean_iou: Option<f64>,
    /// Single-object detection: share of pictures whose class is right.
    pub class_accuracy: Option<f64>,
}

/// fp32 against the bundle on the run's validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationMetrics {
    /// Validation pictures measured.
    pub images: usize,
    /// The headline metric's name (`accuracy`, `map50`, `mean_iou`).
    pub headline: String,
    /// The float model (trunk and head in float32).
    pub fp32: MetricSet,
    /// The bundle as exported.
    pub bundle: MetricSet,
    /// Largest absolute difference between the fp32 and the bundle's raw outputs.
    pub max_abs_diff: f64,
    /// Classification: share of pictures with the same top-1 class; detection: share of pictures
    /// with the same detections above the score threshold (same classes, boxes within IoU 0.5).
    pub agreement: f64,
}

impl MetricSet {
    /// The value of a metric by its name.
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "accuracy" => self.accuracy,
            "map50" => self.map50,
            "map50_95" => self.map50_95,
            "mean_iou" => self.mean_iou,
            "class_accuracy" => self.class_accuracy,
            _ => None,
        }
    }
}

/// A signature over the manifest (filled in when bundles are signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Signature algorithm, e.g. `ed25519`.
    pub algorithm: String,
    /// Which key signed.
    pub key_id: String,
    /// The signature, encoded as the algorithm specifies.
    pub value: String,
}

/// A manifest that cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error(
        "cannot read bundle manifest {path}: {source} (is this a bundle written by `kestrel export`?)"
    )]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not JSON at all.
    #[error(
        "bundle manifest {path} is not valid JSON (line {line}, column {column}): {reason}; export the bundle again"
    )]
    Json {
        /// The file.
        path: String,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's explanation.
        reason: String,
    },
    /// Written by an incompatible Kestrel.
    #[error(
        "bundle manifest {path} has schema version {found}, this Kestrel reads versions 1 to {expected}: export the bundle with a matching version of `kestrel`, or upgrade kestrel-edge on the board (`kestrel install`)"
    )]
    Version {
        /// The file.
        path: String,
        /// Version in the file.
        found: u64,
        /// Version this build reads.
        expected: u32,
    },
    /// A required field is absent.
    #[error("bundle manifest {path} lacks the field `{field}`: export the bundle again")]
    MissingField {
        /// The file.
        path: String,
        /// Dotted path of the field.
        field: String,
    },
    /// A field has the wrong type or value, or is unknown.
    #[error("bundle manifest {path}: field `{field}`: {reason}")]
    Field {
        /// The file.
        path: String,
        /// Dotted path of the field (`(top level)` for the document itself).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The fields contradict each other.
    #[error("bundle manifest {path} is inconsistent: {reason}; export the bundle again")]
    Inconsistent {
        /// The file.
        path: String,
        /// What does not fit.
        reason: String,
    },
}

impl Manifest {
    /// Parse and check a manifest; `path` names it in errors.
    pub fn from_json(text: &str, path: &str) -> Result<Self, ManifestError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ManifestError::Json {
                path: path.to_string(),
                line: e.line(),
                column: e.column(),
                reason: e.to_string(),
            })?;
        // The version first, so an old or new file gets the version message, not a field error.
        match value.get("schema_version") {
            None => {
                return Err(ManifestError::MissingField {
                    path: path.to_string(),
                    field: "schema_version".into(),
                });
            }
            Some(v) => match v.as_u64() {
                Some(found)
                    if (MANIFEST_OLDEST_SCHEMA_VERSION as u64..=MANIFEST_SCHEMA_VERSION as u64)
                        .contains(&found) => {}
                Some(found) => {
                    return Err(ManifestError::Version {
                        path: path.to_string(),
                        found,
                        expected: MANIFEST_SCHEMA_VERSION,
                    });
                }
                None => {
                    return Err(ManifestError::Field {
                        path: path.to_string(),
                        field: "schema_version".into(),
                        reason: format!("expected a whole number, found {v}"),
                    });
                }
            },
        }
        let manifest: Manifest = serde_path_to_error::deserialize(value).map_err(|e| {
            let at = e.path().to_string();
            let parent = if at == "." { String::new() } else { at };
            let reason = e.into_inner().to_string();
            let join = |name: &str| {
                if parent.is_empty() {
                    name.to_string()
                } else {
                    format!("{parent}.{name}")
                }
            };
            // serde reports a missing field at its parent: name the field itself.
            match reason
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                Some(missing) => ManifestError::MissingField {
                    path: path.to_string(),
                    field: join(missing),
                },
                None => ManifestError::Field {
                    path: path.to_string(),
                    field: if parent.is_empty() {
                        "(top level)".into()
                    } else {
                        parent.clone()
                    },
                    reason,
                },
            }
        })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    /// Read and check `manifest.json` (a bundle directory or the file itself).
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        // A directory, or anything not named like a JSON file, is a bundle directory.
        let file = if path.is_dir() || path.extension().is_none_or(|e| e != "json") {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &file.display().to_string())
    }

    /// The manifest as pretty JSON (what [`Manifest::write`] writes).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serialises") + "\n"
    }

    /// Write the manifest as pretty JSON.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json())
    }

    /// Values per item (classifiers, the single head) or per cell (grids) the head must output
    /// for these labels and this task: the size of the output's second dimension.
    pub fn expected_head_channels(&self) -> usize {
        match self.task {
            Task::Classify { .. } => self.labels.len(),
            Task::Detect {
                head: DetectHeadKind::Single,
            } => 5,
            Task::Detect {
                head: DetectHeadKind::Grid,
            } => 1 + self.labels.len() + 4,
            Task::Detect {
                head: DetectHeadKind::Centroids,
            } => 1 + self.labels.len(),
        }
    }

    /// Check that the fields agree with each other (the files are checked by the loader).
    pub fn validate(&self, path: &str) -> Result<(), ManifestError> {
        let bad = |reason: String| {
            Err(ManifestError::Inconsistent {
                path: path.to_string(),
                reason,
            })
        };
        if self.labels.is_empty() {
            return bad("there are no labels".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for l in &self.labels {
            if !seen.insert(l) {
                return bad(format!("label `{l}` appears twice"));
            }
        }
        for (role, f) in self.files.all() {
            if f.path.is_empty() || f.path.contains(['/', '\\']) || f.path == ".." || f.path == "."
            {
                return bad(format!(
                    "files.{role}.path `{}` must be a plain file name inside the bundle",
                    f.path
                ));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!(
                    "files.{role}.sha256 `{}` is not a sha256 (64 hex digits)",
                    f.sha256
                ));
            }
        }
        let (trunk, head, model) = (&self.files.trunk, &self.files.head, &self.files.model);
        let p = &self.input.preprocess;
        let input = vec![1, 3, p.height as usize, p.width as usize];
        for (role, f) in [("trunk", trunk), ("model", model)] {
            if f.input.shape != input {
                return bad(format!(
                    "files.{role}.input.shape is {:?} but the preprocessing gives {input:?}",
                    f.input.shape
                ));
            }
        }
        if trunk.output.shape != head.input.shape {
            return bad(format!(
                "the trunk's output shape {:?} is not the head's input shape {:?}",
                trunk.output.shape, head.input.shape
            ));
        }
        if model.output.shape != head.output.shape {
            return bad(format!(
                "model.onnx's output shape {:?} is not the head's {:?}",
                model.output.shape, head.output.shape
            ));
        }
        if let Some(n) = &self.files.nnef {
            for (role, nnef, onnx) in [("trunk", &n.trunk, trunk), ("head", &n.head, head)] {
                if nnef.input != onnx.input || nnef.output != onnx.output {
                    return bad(format!(
                        "files.nnef.{role} takes {:?} and gives {:?}, but files.{role} takes {:?} \
                         and gives {:?}: they must be the same graph",
                        nnef.input, nnef.output, onnx.input, onnx.output
                    ));
                }
            }
        }
        let channels = self.expected_head_channels();
        let out = &head.output.shape;
        if out.len() < 2 || out[1] != channels {
            return bad(format!(
                "the head's output shape {out:?} does not fit {} labels for {:?} (expected {channels} values per item{})",
                self.labels.len(),
                self.task,
                if out.len() > 2 { " per cell" } else { "" }
            ));
        }
        match (self.task, &self.decode) {
            (Task::Classify { .. }, Some(_)) => {
                return bad("a classifier has no detection decoding".into());
            }
            (Task::Detect { .. }, None) => {
                return bad("a detector needs its decoding parameters (`decode`)".into());
            }
            (Task::Detect { head }, Some(d)) => {
                let grid = head != DetectHeadKind::Single;
                match (&d.grid, grid) {
                    (Some(g), true) => {
                        if g.channels() != channels || g.classes != self.labels.len() {
                            return bad(format!(
                                "decode.grid {g:?} does not fit {} labels",
                                self.labels.len()
                            ));
                        }
                        if g.boxes != (head == DetectHeadKind::Grid) {
                            return bad(format!("decode.grid.boxes does not fit a {head:?} head"));
                        }
                        if out.len() != 4 {
                            return bad(format!("a grid head outputs [N, C, H, W], not {out:?}"));
                        }
                    }
                    (None, false) => {
                        if self.labels.len() != 2 {
                            return bad("the single head is a two-class detector".into());
                        }
                    }
                    _ => return bad(format!("decode.grid does not fit a {head:?} head")),
                }
            }
            (Task::Classify { .. }, None) => {}
        }
        let q = &self.quantization;
        let int8 = |f: &ModelFile| f.precision == Precision::Int8;
        let expected = match q.mode {
            QuantizeMode::None => (false, false),
            QuantizeMode::Head => (false, true),
            QuantizeMode::All => (true, true),
        };
        if (int8(trunk), int8(head)) != expected || int8(model) != (expected.0 || expected.1) {
            return bad(format!(
                "quantization mode `{}` does not fit the files' precisions",
                q.mode
            ));
        }
        if q.mode != QuantizeMode::None && q.calibration.is_none() {
            return bad("quantized models need their calibration".into());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ResizeMode;

    fn file(path: &str, precision: Precision, input: Vec<usize>, output: Vec<usize>) -> ModelFile {
        ModelFile {
            path: path.into(),
            sha256: "ab".repeat(32),
            size: 1000,
            precision,
            input: TensorInfo::float("in", input),
            output: TensorInfo::float("out", output),
        }
    }

    pub(crate) fn sample() -> Manifest {
        let preprocess = PreprocessSpec {
            height: 120,
            width: 160,
            resize: ResizeMode::Stretch,
            ..PreprocessSpec::imagenet()
        };
        let picture = vec![1, 3, 120, 160];
        let map = vec![1, 96, 8, 10];
        let out = vec![1, 1 + 2 + 4, 8, 10];
        Manifest {
            schema_version: MANIFEST_SCHEMA_VERSION,
            kestrel_version: "0.1.0".into(),
            task: Task::Detect {
                head: DetectHeadKind::Grid,
            },
            labels: vec!["circle".into(), "square".into()],
            input: InputSpec {
                layout: Layout::Nchw,
                color: ColorOrder::Rgb,
                preprocess,
            },
            cut: CutPoint::Features(13),
            fine_tuned_blocks: 0,
            architecture: "mobilenet_v2".into(),
            weights_sha256: "cd".repeat(32),
            files: BundleFiles {
                trunk: file(TRUNK_FILE, Precision::Float32, picture.clone(), map.clone()),
                head: file(HEAD_FILE, Precision::Int8, map.clone(), out.clone()),
                model: file(MODEL_FILE, Precision::Int8, picture.clone(), out.clone()),
                nnef: Some(NnefFiles {
                    trunk: file(TRUNK_NNEF_FILE, Precision::Float32, picture, map.clone()),
                    head: file(HEAD_NNEF_FILE, Precision::Int8, map, out),
                }),
            },
            quantization: Quantization {
                mode: QuantizeMode::Head,
                calibration: Some(Calibration {
                    method: CalibrationMethod::Percentile { percentile: 99.99 },
                    samples: 100,
                }),
                layers: vec![QuantizedLayer {
                    file: "head".into(),
                    layer: "head.conv1".into(),
                    op: "ConvInteger".into(),
                    input_scale: 0.05,
                    input_zero_point: 100,
                    input_range: [-5.0, 7.7],
                    channels: 64,
                }],
            },
            decode: Some(Decoding {
                score_threshold: 0.3,
                nms_iou: 0.5,
                max_detections: 100,
                stride: 16,
                grid: Some(GridSpec {
                    classes: 2,
                    stride: 16,
                    boxes: true,
                }),
            }),
            metrics: ValidationMetrics {
                images: 40,
                headline: "map50".into(),
                fp32: MetricSet {
                    map50: Some(0.5),
                    map50_95: Some(0.2),
                    ..Default::default()
                },
                bundle: MetricSet {
                    map50: Some(0.49),
                    map50_95: Some(0.2),
                    ..Default::default()
                },
                max_abs_diff: 0.05,
                agreement: 0.95,
            },
            release: Some(Release {
                created: "2026-12-04T01:30:00Z".into(),
                sequence: 1_796_347_800_000,
            }),
            signature: None,
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = std::env::temp_dir().join(format!("kestrel-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = sample();
        m.write(&dir.join(MANIFEST_FILE)).unwrap();
        assert_eq!(Manifest::read(&dir).unwrap(), m);
        assert_eq!(Manifest::read(&dir.join(MANIFEST_FILE)).unwrap(), m);
        let mut signed = m.clone();
        signed.signature = Some(Signature {
            algorithm: "ed25519".into(),
            key_id: "k1".into(),
            value: "00".into(),
        });
        let text = signed.to_json();
        assert_eq!(Manifest::from_json(&text, "m.json").unwrap(), signed);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_board_gets_the_nnef_pair_when_the_bundle_has_one() {
        let m = sample();
        let names =
            |files: [(&'static str, &ModelFile); 2]| files.map(|(r, f)| (r, f.path.clone()));
        assert_eq!(
            names(m.files.on_board()),
            [
                ("trunk", TRUNK_NNEF_FILE.to_string()),
                ("head", HEAD_NNEF_FILE.to_string())
            ]
        );
        assert_eq!(
            names(m.files.onnx_pair()),
            [
                ("trunk", TRUNK_FILE.to_string()),
                ("head", HEAD_FILE.to_string())
            ]
        );
        let roles: Vec<_> = m.files.all().iter().map(|(r, _)| *r).collect();
        assert_eq!(roles, ["trunk", "head", "model", "nnef.trunk", "nnef.head"]);
    }

    #[test]
    fn the_format_reads_as_documented() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(
            v["task"],
            serde_json::json!({"kind": "detect", "head": "grid"})
        );
        assert_eq!(v["input"]["layout"], "NCHW");
        assert_eq!(v["input"]["color"], "RGB");
        assert_eq!(v["input"]["preprocess"]["resize"]["kind"], "stretch");
        assert_eq!(v["cut"], "features.13");
        assert_eq!(v["files"]["head"]["precision"], "int8");
        assert_eq!(v["quantization"]["mode"], "head");
        assert_eq!(
            v["quantization"]["calibration"]["method"]["kind"],
            "percentile"
        );
        let p = v["quantization"]["calibration"]["method"]["percentile"].as_f64();
        assert!((p.unwrap() - 99.99).abs() < 1e-4);
        assert!(v.get("signature").is_none());
    }

    fn err(v: &serde_json::Value) -> ManifestError {
        Manifest::from_json(&v.to_string(), "b/manifest.json").unwrap_err()
    }

    #[test]
    fn an_older_release_is_a_downgrade_and_the_same_one_is_not() {
        let current = sample();
        assert_eq!(Release::downgrade(&current, &current), None);
        let mut older = sample();
        older.release.as_mut().unwrap().sequence -= 1;
        let reason = Release::downgrade(&older, &current).expect("older is refused");
        assert!(reason.contains("--allow-downgrade"), "{reason}");
        assert!(reason.contains("sequence 1796347799999"), "{reason}");
        assert_eq!(Release::downgrade(&current, &older), None, "newer passes");
        let mut unversioned = sample();
        unversioned.release = None;
        assert!(Release::downgrade(&unversioned, &current).is_some());
        assert_eq!(Release::downgrade(&current, &unversioned), None);
    }

    #[test]
    fn version_missing_fields_and_garbage_are_typed_errors_naming_the_file() {
        let good = serde_json::to_value(sample()).unwrap();

        let mut v = good.clone();
        v["schema_version"] = 4.into();
        let e = err(&v);
        assert!(matches!(e, ManifestError::Version { found: 4, .. }), "{e}");
        assert!(e.to_string().contains("b/manifest.json"));
        assert!(e.to_string().contains("upgrade kestrel-edge"), "{e}");

        // Version 1 (no release, no NNEF) is still read; its bundles count as the oldest, and a
        // board runs their ONNX files.
        let mut v = good.clone();
        v["schema_version"] = 1.into();
        v.as_object_mut().unwrap().remove("release");
        v["files"].as_object_mut().unwrap().remove("nnef");
        let old = Manifest::from_json(&v.to_string(), "b/manifest.json").unwrap();
        assert_eq!(Release::sequence_of(&old), 0);
        assert_eq!(old.files.on_board()[0].1.path, TRUNK_FILE);
        assert_eq!(old.files.all().len(), 3);

        let mut v = good.clone();
        v["release"]["sequence"] = "soon".into();
        assert!(
            matches!(err(&v), ManifestError::Field { field, .. } if field == "release.sequence"),
            "{}",
            err(&v)
        );

        let mut v = good.clone();
        v.as_object_mut().unwrap().remove("schema_version");
        assert!(
            matches!(err(&v), ManifestError::MissingField { field, .. } if field == "schema_version")
        );

        let mut v = good.clone();
        v.as_object_mut().unwrap().remove("labels");
        let e = err(&v);
        assert!(
            matches!(&e, ManifestError::MissingField { field, .. } if field == "labels"),
            "{e}"
        );
        assert!(e.to_string().contains("b/manifest.json") && e.to_string().contains("labels"));

        let mut v = good.clone();
        v["files"]["head"].as_object_mut().unwrap().remove("sha256");
        let e = err(&v);
        assert!(
            matches!(&e, ManifestError::MissingField { field, .. } if field == "files.head.sha256"),
            "{e}"
        );

        let mut v = good.clone();
        v["input"]["layout"] = "NHWC".into();
        let e = err(&v);
        assert!(
            matches!(&e, ManifestError::Field { field, .. } if field == "input.layout"),
            "{e}"
        );

        let mut v = good.clone();
        v["extra"] = 1.into();
        assert!(matches!(err(&v), ManifestError::Field { .. }));

        let e = Manifest::from_json("{\"schema_version\": 1, \"task\": ", "x.json").unwrap_err();
        assert!(matches!(e, ManifestError::Json { line: 1, .. }), "{e}");
        assert!(e.to_string().contains("x.json"));

        let e = Manifest::read(Path::new("/nonexistent/bundle")).unwrap_err();
        assert!(matches!(e, ManifestError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/bundle/manifest.json"));
    }

    #[test]
    fn contradictions_are_refused() {
        type Change = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Change)> = vec![
            ("labels", Box::new(|m| m.labels.push("star".into()))),
            ("twice", Box::new(|m| m.labels[1] = "circle".into())),
            (
                "plain file name",
                Box::new(|m| m.files.head.path = "../head.onnx".into()),
            ),
            ("sha256", Box::new(|m| m.files.trunk.sha256 = "abc".into())),
            (
                "files.nnef.head.path",
                Box::new(|m| m.files.nnef.as_mut().unwrap().head.path = "x/h.nnef.tar".into()),
            ),
            (
                "must be the same graph",
                Box::new(|m| {
                    m.files.nnef.as_mut().unwrap().trunk.output.shape = vec![1, 32, 8, 10]
                }),
            ),
            (
                "head's input shape",
                Box::new(|m| m.files.head.input.shape = vec![1, 32, 8, 10]),
            ),
            (
                "preprocessing",
                Box::new(|m| m.input.preprocess.width = 320),
            ),
            ("decoding", Box::new(|m| m.decode = None)),
            (
                "precisions",
                Box::new(|m| m.quantization.mode = QuantizeMode::None),
            ),
        ];
        for (what, change) in cases {
            let mut m = sample();
            change(&mut m);
            let e = m.validate("m.json").unwrap_err();
            assert!(
                matches!(e, ManifestError::Inconsistent { .. }),
                "{what}: {e}"
            );
            assert!(e.to_string().contains(what), "{what}: {e}");
        }
    }

    #[test]
    fn quantize_mode_parses() {
        for m in [QuantizeMode::None, QuantizeMode::Head, QuantizeMode::All] {
            assert_eq!(m.name().parse::<QuantizeMode>(), Ok(m));
        }
        assert!(
            "int4"
                .parse::<QuantizeMode>()
                .unwrap_err()
                .contains("none, head or all")
        );
    }
}
