//! A model bundle on the board: `manifest.json`, trunk and head (`trunk.nnef.tar` and
//! `head.nnef.tar`, or `trunk.onnx` and `head.onnx` in bundles without NNEF) and `model.onnx`,
//! written by `kestrel export`, checked and run with tract.
//!
//! [`Bundle::open`] refuses a bundle it cannot trust, with an error naming the file and what to
//! do, and never panics: a missing file, a size or sha256 that is not the manifest's, an unknown
//! manifest schema version, a truncated or unreadable model, a trunk whose output does not fit the
//! head's input, labels that do not fit the head's output. The shapes are those tract computes
//! from the files themselves, not only what the manifest claims.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use kestrel_shared::decode::{decode_grid, decode_single};
use kestrel_shared::hash::sha256_hex;
use kestrel_shared::manifest::{MANIFEST_FILE, Manifest, ManifestError, ModelFile, Task};
use kestrel_shared::trunk::TRUNK_SCHEMA_VERSION;
use kestrel_shared::{Detection, TrunkInfo, filter_and_nms};
use serde_json::json;
use tract_nnef::tract_core::ops::matmul::optimized::{OptMatMul, ProtoFusedSpec};
use tract_nnef::tract_core::tract_linalg::WeightType;

use crate::kernels::Kernels;
use crate::model::{EdgeError, Model, ModelFormat, ModelOutput, Threads};
use crate::trunk::Trunk;

/// A bundle that cannot be used. Every variant names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The manifest is missing, malformed, of another schema version, or inconsistent.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A file the manifest lists is not in the bundle.
    #[error(
        "{path} is missing: the manifest lists it as the bundle's {role}; copy the whole bundle again"
    )]
    Missing {
        /// The file.
        path: PathBuf,
        /// `trunk`, `head` or `model`.
        role: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not have the manifest's size.
    #[error(
        "{path} is {found} bytes but the manifest says {expected}: the file is truncated or was replaced; copy the bundle again"
    )]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// The manifest's.
        expected: u64,
    },
    /// A file is not the one the manifest pins.
    #[error(
        "{path} has sha256 {found} but the manifest expects {expected}: the bundle is damaged or mixed up; copy or export it again"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Its sha256.
        found: String,
        /// The manifest's.
        expected: String,
    },
    /// tract cannot read a file as a model (ONNX or NNEF, as its name says).
    #[error(
        "{path} is not a usable model ({reason}); the file is damaged or not a model: export the bundle again"
    )]
    NotModel {
        /// The file.
        path: PathBuf,
        /// tract's explanation.
        reason: String,
    },
    /// The trunk's output does not fit the head's input.
    #[error(
        "the trunk {trunk} outputs {trunk_output:?} but the head {head} takes {head_input:?}: they come from different exports (another cut or input size); export the bundle again"
    )]
    TrunkHead {
        /// The trunk file.
        trunk: PathBuf,
        /// The head file.
        head: PathBuf,
        /// Trunk output shape, batch first.
        trunk_output: Vec<usize>,
        /// Head input shape, batch first.
        head_input: Vec<usize>,
    },
    /// The labels do not fit the head's output.
    #[error(
        "{manifest} has {labels} labels but the head {head} outputs {output:?} ({expected} values per item would fit {task}): the head and the manifest come from different runs; export the bundle again"
    )]
    Labels {
        /// The manifest.
        manifest: PathBuf,
        /// The head file.
        head: PathBuf,
        /// Number of labels.
        labels: usize,
        /// The head's output shape, batch first.
        output: Vec<usize>,
        /// Values per item (or per cell) the labels call for.
        expected: usize,
        /// The task, in words.
        task: String,
    },
    /// A model's tensor does not have the shape the manifest declares.
    #[error(
        "{path}: {what} has shape {found:?} but the manifest declares {expected:?}; export the bundle again"
    )]
    Shape {
        /// The file.
        path: PathBuf,
        /// Which tensor.
        what: String,
        /// Shape tract computes (batch of one).
        found: Vec<usize>,
        /// Shape in the manifest.
        expected: Vec<usize>,
    },
    /// NNEF was asked for and the bundle has none.
    #[error(
        "{manifest} lists no NNEF files (trunk.nnef.tar, head.nnef.tar): the bundle was exported by an older kestrel; export it again"
    )]
    NoNnef {
        /// The manifest.
        manifest: PathBuf,
    },
    /// Running a model failed, or it was not loaded.
    #[error(transparent)]
    Run(#[from] EdgeError),
}

/// How to load a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleOptions {
    /// Images per run the models are planned for.
    pub batch: usize,
    /// Threads for tract.
    pub threads: Threads,
    /// Also load `model.onnx` (trunk and head in one graph) for [`Bundle::run_merged`].
    pub merged: bool,
    /// Which convolution kernels run the models.
    pub kernels: Kernels,
    /// Which trunk and head files to run: `None` for what a board runs (NNEF when the bundle has
    /// it, [`kestrel_shared::manifest::BundleFiles::on_board`]); `Some(Onnx)` for the ONNX pair
    /// (to compare the two); `Some(Nnef)` insists on NNEF.
    pub format: Option<ModelFormat>,
}

impl Default for BundleOptions {
    fn default() -> Self {
        BundleOptions {
            batch: 1,
            threads: Threads::Single,
            merged: false,
            kernels: Kernels::from_env(),
            format: None,
        }
    }
}

/// A checked, loaded bundle.
#[derive(Debug)]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The trunk (`trunk.nnef.tar` or `trunk.onnx`), with a description built from the manifest.
    pub trunk: Trunk,
    /// The head (`head.nnef.tar` or `head.onnx`).
    pub head: Model,
    /// `model.onnx`, when loaded ([`BundleOptions::merged`]).
    pub model: Option<Model>,
}

/// Read a listed file and check its size and sha256.
fn verified_bytes(
    dir: &Path,
    role: &str,
    f: &ModelFile,
) -> Result<(PathBuf, Vec<u8>), BundleError> {
    let path = dir.join(&f.path);
    if !path.is_file() {
        return Err(BundleError::Missing {
            path,
            role: role.to_string(),
        });
    }
    let bytes = std::fs::read(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    if bytes.len() as u64 != f.size {
        return Err(BundleError::Size {
            path,
            found: bytes.len() as u64,
            expected: f.size,
        });
    }
    let found = sha256_hex(&bytes);
    if found != f.sha256 {
        return Err(BundleError::Checksum {
            path,
            found,
            expected: f.sha256.clone(),
        });
    }
    Ok((path, bytes))
}

/// Load a model with tract; anything tract refuses, or panics on, is "not a model".
fn load(
    path: &Path,
    bytes: &[u8],
    batch: usize,
    opts: &BundleOptions,
) -> Result<Model, BundleError> {
    let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Model::from_bytes_with(bytes, path, batch, opts.threads, opts.kernels)
    }));
    match loaded {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(EdgeError::Load { reason, .. })) => Err(BundleError::NotModel {
            path: path.to_path_buf(),
            reason,
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(BundleError::NotModel {
            path: path.to_path_buf(),
            reason: "tract panicked while reading it".into(),
        }),
    }
}

/// Shape of `model`'s output for a batch of zeros (batch first, as planned).
fn output_shape(model: &Model) -> Result<Vec<usize>, BundleError> {
    let n: usize = model.input_shape().iter().product();
    let out = std::panic::catch_unwind(AssertUnwindSafe(|| model.run(&vec![0.0; n]))).map_err(
        |_| BundleError::NotModel {
            path: model.path().to_path_buf(),
            reason: "tract panicked while running it".into(),
        },
    )??;
    Ok(out.shape)
}

/// `shape` with the batch dimension set to one.
fn one(shape: &[usize]) -> Vec<usize> {
    let mut s = shape.to_vec();
    if let Some(b) = s.first_mut() {
        *b = 1;
    }
    s
}

/// The description of a bundle's trunk, as [`Trunk`] wants it. It names the trunk by its ONNX
/// file, whichever file runs: the NNEF one is the same graph, and embedding caches stay keyed alike.
pub fn trunk_info(m: &Manifest) -> TrunkInfo {
    let t = &m.files.trunk;
    TrunkInfo {
        schema_version: TRUNK_SCHEMA_VERSION,
        architecture: m.architecture.clone(),
        width_multiplier: 1.0,
        cut: m.cut,
        preprocess: m.input.preprocess,
        input_name: t.input.name.clone(),
        output_name: t.output.name.clone(),
        output_shape: t.output.shape.clone(),
        onnx_file: t.path.clone(),
        onnx_sha256: t.sha256.clone(),
        weights_sha256: m.weights_sha256.clone(),
        kestrel_version: m.kestrel_version.clone(),
    }
}

/// Run `model` on `items` (each `per` values) in batches of its planned size, the last padded.
fn run_batched(model: &Model, items: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, BundleError> {
    let batch = model.batch();
    let per: usize = model.input_shape().iter().skip(1).product();
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch) {
        let mut input = Vec::with_capacity(batch * per);
        for x in chunk {
            if x.len() != per {
                return Err(EdgeError::InputSize {
                    path: model.path().to_path_buf(),
                    expected: per,
                    got: x.len(),
                }
                .into());
            }
            input.extend_from_slice(x);
        }
        input.resize(batch * per, 0.0);
        let ModelOutput { data, .. } = model.run(&input)?;
        let each = data.len() / batch;
        out.extend(data.chunks(each).take(chunk.len()).map(<[f32]>::to_vec));
    }
    Ok(out)
}

impl Bundle {
    /// Open a bundle directory with the default options (batch 1, one thread, trunk + head).
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        Self::open_with(dir, &BundleOptions::default())
    }

    /// Open a bundle directory (or its `manifest.json`): read and check the manifest, check every
    /// file's size and sha256, load the models into tract and check their shapes against each
    /// other, the labels and the manifest.
    pub fn open_with(path: &Path, opts: &BundleOptions) -> Result<Self, BundleError> {
        // The manifest file itself, or (anything else) the bundle directory.
        let dir = if !path.is_dir() && path.extension().is_some_and(|e| e == "json") {
            path.parent().unwrap_or(Path::new(".")).to_path_buf()
        } else {
            path.to_path_buf()
        };
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest = Manifest::read(&manifest_path)?;
        let files = &manifest.files;
        let [(_, trunk_file), (_, head_file)] = match opts.format {
            None => files.on_board(),
            Some(ModelFormat::Onnx) => files.onnx_pair(),
            Some(ModelFormat::Nnef) if files.nnef.is_some() => files.on_board(),
            Some(ModelFormat::Nnef) => {
                return Err(BundleError::NoNnef {
                    manifest: manifest_path,
                });
            }
        };
        // Integrity first: every file, before spending time in tract.
        let (trunk_path, trunk_bytes) = verified_bytes(&dir, "trunk", trunk_file)?;
        let (head_path, head_bytes) = verified_bytes(&dir, "head", head_file)?;
        // model.onnx only when asked for: boards run trunk + head and deploys do not send it.
        let merged = if opts.merged {
            Some(verified_bytes(&dir, "model", &files.model)?)
        } else {
            None
        };

        let batch = opts.batch.max(1);
        let trunk = load(&trunk_path, &trunk_bytes, batch, opts)?;
        let head = load(&head_path, &head_bytes, batch, opts)?;
        let trunk_out = one(&output_shape(&trunk)?);
        let head_in = one(head.input_shape());
        if trunk_out != head_in {
            return Err(BundleError::TrunkHead {
                trunk: trunk_path,
                head: head_path,
                trunk_output: trunk_out,
                head_input: head_in,
            });
        }
        let head_out = one(&output_shape(&head)?);
        let expected = manifest.expected_head_channels();
        if head_out.get(1) != Some(&expected) {
            let task = match manifest.task {
                Task::Classify { .. } => "a classifier (one logit per label)".to_string(),
                Task::Detect { head } => format!("a {head:?} detection head").to_lowercase(),
            };
            return Err(BundleError::Labels {
                manifest: manifest_path,
                head: head_path,
                labels: manifest.labels.len(),
                output: head_out,
                expected,
                task,
            });
        }
        let declared = [
            (
                &trunk_path,
                "the trunk's input",
                one(trunk.input_shape()),
                &trunk_file.input.shape,
            ),
            (
                &trunk_path,
                "the trunk's output",
                trunk_out,
                &trunk_file.output.shape,
            ),
            (
                &head_path,
                "the head's input",
                head_in,
                &head_file.input.shape,
            ),
            (
                &head_path,
                "the head's output",
                head_out.clone(),
                &head_file.output.shape,
            ),
        ];
        for (path, what, found, expected) in declared {
            if &found != expected {
                return Err(BundleError::Shape {
                    path: path.to_path_buf(),
                    what: what.to_string(),
                    found,
                    expected: expected.clone(),
                });
            }
        }
        let model = if let Some((model_path, model_bytes)) = merged {
            let m = load(&model_path, &model_bytes, batch, opts)?;
            let out = one(&output_shape(&m)?);
            for (what, found, expected) in [
                ("its input", one(m.input_shape()), &files.model.input.shape),
                ("its output", out, &head_out),
            ] {
                if &found != expected {
                    return Err(BundleError::Shape {
                        path: model_path,
                        what: what.to_string(),
                        found,
                        expected: expected.clone(),
                    });
                }
            }
            Some(m)
        } else {
            None
        };
        let trunk = Trunk {
            info: trunk_info(&manifest),
            model: trunk,
        };
        Ok(Bundle {
            dir,
            manifest,
            trunk,
            head,
            model,
        })
    }

    /// Raw outputs of the head for trunk outputs (each `files.head.input` item), any count.
    pub fn run_head(&self, features: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, BundleError> {
        run_batched(&self.head, features)
    }

    /// Raw outputs for preprocessed images (CHW, [`kestrel_shared::PreprocessSpec::apply`]),
    /// through `trunk.onnx` then `head.onnx`.
    pub fn run(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, BundleError> {
        let features = self.trunk.embed(images)?;
        self.run_head(&features)
    }

    /// Raw outputs for preprocessed images through `model.onnx` (opened with
    /// [`BundleOptions::merged`]).
    pub fn run_merged(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, BundleError> {
        let model = self.model.as_ref().ok_or_else(|| EdgeError::Run {
            path: self.dir.join(&self.manifest.files.model.path),
            reason: "model.onnx was not loaded: open the bundle with `merged: true`".into(),
        })?;
        run_batched(model, images)
    }

    /// Read, decode, preprocess and run one picture file (trunk then head).
    pub fn run_file(&self, path: &Path) -> Result<Vec<f32>, BundleError> {
        let x = self
            .manifest
            .input
            .preprocess
            .apply(&crate::jpeg::load_picture(path).map_err(EdgeError::from)?);
        Ok(self.run(std::slice::from_ref(&x))?.remove(0))
    }

    /// Detections (input pixels, after NMS for grids) from one item's raw output, keeping scores
    /// of at least `score_threshold` (the manifest's: `decode.score_threshold`). Empty for
    /// classifiers.
    pub fn decode(&self, raw: &[f32], score_threshold: f32) -> Vec<Detection> {
        let Some(d) = &self.manifest.decode else {
            return Vec::new();
        };
        let p = &self.manifest.input.preprocess;
        match &d.grid {
            None => match <[f32; 5]>::try_from(raw) {
                Ok(r) => vec![decode_single(&r, p.width as f32)],
                Err(_) => Vec::new(),
            },
            Some(spec) => {
                let s = &self.manifest.files.head.output.shape;
                let (h, w) = (s[2], s[3]);
                filter_and_nms(
                    decode_grid(raw, spec, h, w, score_threshold),
                    score_threshold,
                    d.nms_iou,
                    d.max_detections,
                )
            }
        }
    }

    /// A JSON description: the manifest, and per file the operators tract runs and the input
    /// types of its matrix products (`present: false` for files a deploy did not send).
    pub fn info_json(&self) -> serde_json::Value {
        let mut files = serde_json::Map::new();
        for (role, f) in self.manifest.files.all() {
            let path = self.dir.join(&f.path);
            if !path.is_file() {
                // A deployed bundle holds only what the board runs (the NNEF pair).
                files.insert(role.to_string(), json!({"path": path, "present": false}));
                continue;
            }
            let v = match inspect(&path) {
                Ok(ops) => json!({
                    "path": path,
                    "size": f.size,
                    "precision": f.precision,
                    "tract_ops": ops.op_counts(),
                    "matmuls": ops.matmuls.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"path": path, "error": e.to_string()}),
            };
            files.insert(role.to_string(), v);
        }
        json!({
            "manifest": self.manifest,
            "files": files,
        })
    }
}

/// One matrix product tract runs after optimisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatMulInfo {
    /// Node name.
    pub node: String,
    /// Element type of the left operand as the kernel reads it (e.g. `I8`, `F32`).
    pub a: String,
    /// Element type of the right operand.
    pub b: String,
    /// Accumulator type of the kernel (e.g. `I32`, `F32`).
    pub accumulator: String,
    /// Kernel name.
    pub kernel: String,
}

impl MatMulInfo {
    /// True when both operands are 8-bit integers.
    pub fn is_8bit(&self) -> bool {
        let int8 = |t: &str| matches!(t, "I8" | "U8");
        int8(&self.a) && int8(&self.b)
    }
}

impl std::fmt::Display for MatMulInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} x {} -> {} ({})",
            self.node, self.a, self.b, self.accumulator, self.kernel
        )
    }
}

/// The optimised graph of one model file, as tract will run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptimizedOps {
    /// Operator name of every node, in order.
    pub ops: Vec<String>,
    /// Every matrix product with its operand types.
    pub matmuls: Vec<MatMulInfo>,
}

impl OptimizedOps {
    /// How many nodes run each operator.
    pub fn op_counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for op in &self.ops {
            *counts.entry(op.clone()).or_default() += 1;
        }
        counts
    }
}

fn weight_type(w: WeightType) -> String {
    match w {
        WeightType::Plain(dt) => format!("{dt:?}"),
        WeightType::BlockQuant(_) => "block-quantized".into(),
    }
}

/// Load a model file (ONNX or NNEF) into tract (batch 1), optimise it, and list what tract will
/// run, with the operand types of every matrix product (how to check that an int8 head really
/// multiplies in 8 bits).
pub fn inspect(path: &Path) -> Result<OptimizedOps, BundleError> {
    // The same loading and optimisation the runtime does, Kestrel's kernels included.
    let opts = BundleOptions::default();
    let bytes = std::fs::read(path).map_err(|source| BundleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let model = load(path, &bytes, 1, &opts)?;
    let optimized = model.plan().model();
    let mut ops = Vec::new();
    let mut matmuls = Vec::new();
    for node in optimized.nodes() {
        ops.push(node.op().name().to_string());
        // The input's codes as Kestrel's int8 tiles store them: unsigned bytes (code + 128) for
        // `vpdpbusd`, else signed.
        let codes =
            |isa: crate::kernels::qconv1x1::QIsa| if isa.stored(0) == 0x80 { "U8" } else { "I8" };
        if let Some(q) = node.op_as::<crate::kernels::ops::KestrelQPointwise>() {
            // Kestrel's int8 1x1 convolution (or dense layer): int8 weights against the input's
            // codes, int32 sums.
            matmuls.push(MatMulInfo {
                node: node.name.clone(),
                a: "I8".into(),
                b: codes(q.isa).into(),
                accumulator: "I32".into(),
                kernel: format!("KestrelQPointwise ({})", q.isa.name()),
            });
            continue;
        }
        if let Some(q) = node.op_as::<crate::kernels::ops::KestrelQConv3x3>() {
            // Kestrel's int8 3x3 convolution: the same product on patches of the codes.
            matmuls.push(MatMulInfo {
                node: node.name.clone(),
                a: "I8".into(),
                b: codes(q.isa).into(),
                accumulator: "I32".into(),
                kernel: format!("KestrelQConv3x3 ({})", q.isa.name()),
            });
            continue;
        }
        let Some(mm) = node.op_as::<OptMatMul>() else {
            continue;
        };
        for micro in &mm.micro_ops {
            if let ProtoFusedSpec::AddMatMul { packings, .. } = micro {
                for (kernel, (packing, _)) in mm.mmm.iter().zip(packings) {
                    let (a, b) = &kernel.packings()[*packing];
                    matmuls.push(MatMulInfo {
                        node: node.name.clone(),
                        a: weight_type(a.precursor()),
                        b: weight_type(b.precursor()),
                        accumulator: format!("{:?}", kernel.internal_type()),
                        kernel: kernel.name().to_string(),
                    });
                }
            }
        }
    }
    Ok(OptimizedOps { ops, matmuls })
}
