//! Loading a model into tract (NNEF, tract's own format, or ONNX), optimising it once, and
//! running batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_nnef::prelude::*;
use tract_nnef::tract_core::internal::DimLike;

use crate::kernels::{Kernels, PassReport};

/// Errors of the edge runtime, each naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The model file is missing or unreadable.
    #[error("cannot read model {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// tract refused the model (malformed protobuf, unsupported operator, bad shapes).
    #[error("model {path} cannot be loaded: {reason} (re-export it with `kestrel`)")]
    Load {
        /// The file.
        path: PathBuf,
        /// tract's explanation, outermost context first.
        reason: String,
    },
    /// Running the model failed.
    #[error("running model {path} failed: {reason}")]
    Run {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The input does not have the size the model expects.
    #[error("model {path} expects {expected} input values per image, got {got}")]
    InputSize {
        /// The file.
        path: PathBuf,
        /// Values per image the model wants.
        expected: usize,
        /// Values received.
        got: usize,
    },
    /// The description next to the model is unusable.
    #[error(transparent)]
    Info(#[from] kestrel_shared::TrunkInfoError),
    /// The model file is not the one the description names.
    #[error(
        "{path} has sha256 {found} but its description expects {expected}: the bundle is damaged or mixed up; export it again"
    )]
    Checksum {
        /// The model file.
        path: PathBuf,
        /// Its sha256.
        found: String,
        /// The one in the description.
        expected: String,
    },
    /// A picture could not be read.
    #[error(transparent)]
    Image(#[from] kestrel_shared::PreprocessError),
}

/// How many threads tract's matrix kernels may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One thread: the caller's.
    Single,
    /// A pool of n threads.
    Multi(usize),
}

/// The format of a model file, told by its name: `*.onnx` or `*.nnef.tar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// ONNX: what other runtimes read; needs tract's ONNX front-end (cargo feature `onnx`).
    Onnx,
    /// NNEF in a tar archive, as tract-nnef writes it: what boards read.
    Nnef,
}

impl ModelFormat {
    /// The format `path`'s name says, if any.
    pub fn of(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        if name.ends_with(".onnx") {
            Some(ModelFormat::Onnx)
        } else if name.ends_with(".nnef.tar") {
            Some(ModelFormat::Nnef)
        } else {
            None
        }
    }

    /// True when this build of kestrel-edge can read the format.
    pub fn supported(self) -> bool {
        match self {
            ModelFormat::Onnx => cfg!(feature = "onnx"),
            ModelFormat::Nnef => true,
        }
    }
}

impl std::fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelFormat::Onnx => "ONNX",
            ModelFormat::Nnef => "NNEF",
        })
    }
}

/// tract's optimisation with Kestrel's kernels: decluttered first, so they replace the
/// convolutions they cover before tract lowers the rest to its own kernels.
pub(crate) fn optimize(
    mut typed: TypedModel,
    kernels: Kernels,
) -> TractResult<(TypedModel, PassReport)> {
    let replaced = match kernels {
        Kernels::Tract => PassReport::default(),
        Kernels::Kestrel(isa) => {
            // Where tract has a channels-last depthwise kernel (aarch64), its declutter moves
            // depthwise convolutions, and the 1x1 convolutions around them, to channels-last.
            // Kestrel's kernels are channels-first: they go in before axes move (tract's other
            // declutter passes first), and tract cannot move axes through them afterwards.
            let mut first = tract_nnef::tract_core::optim::Optimizer::declutter();
            first
                .passes
                .retain(|p| !format!("{p:?}").contains("ChangeAxes"));
            first.optimize(&mut typed)?;
            crate::kernels::install(&mut typed, isa)?
        }
    };
    typed.declutter()?;
    Ok((typed.into_optimized()?, replaced))
}

/// Read an NNEF model with the batch dimension fixed to `batch`; also returns the input shape.
fn nnef_typed(
    bytes: &[u8],
    path: &Path,
    batch: usize,
) -> Result<(TypedModel, Vec<usize>), EdgeError> {
    let load_err = |e: TractError| load_error(path, chain(&e));
    let model = crate::nnef::nnef()
        .model_for_read(&mut &*bytes)
        .map_err(load_err)?;
    let fact = model.input_fact(0).map_err(load_err)?.clone();
    let mut symbols = std::collections::HashMap::new();
    let mut concrete = Vec::with_capacity(fact.rank());
    for (i, d) in fact.shape.iter().enumerate() {
        match (d.to_usize(), d) {
            (Ok(v), _) if i > 0 || v == batch => concrete.push(v),
            (_, TDim::Sym(s)) if i == 0 => {
                symbols.insert(s.clone(), TDim::Val(batch as i64));
                concrete.push(batch);
            }
            (Ok(v), _) => {
                return Err(load_error(
                    path,
                    format!("the model is made for batches of {v}, not {batch}"),
                ));
            }
            _ => {
                return Err(load_error(
                    path,
                    format!("input dimension {i} is not fixed ({d})"),
                ));
            }
        }
    }
    if concrete.is_empty() {
        return Err(load_error(path, "the model input has no known shape"));
    }
    let model = if symbols.is_empty() {
        model
    } else {
        model.set_symbols(&symbols).map_err(load_err)?
    };
    Ok((model, concrete))
}

/// Read an ONNX model with the batch dimension fixed to `batch` (the exporter leaves it
/// symbolic, tract plans statically); also returns the input shape.
#[cfg(feature = "onnx")]
fn onnx_typed(
    bytes: &[u8],
    path: &Path,
    batch: usize,
) -> Result<(TypedModel, Vec<usize>), EdgeError> {
    use tract_onnx::prelude::{Framework, InferenceModelExt};
    use tract_onnx::tract_hir::infer::Factoid;
    let load_err = |e: TractError| load_error(path, chain(&e));
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &*bytes)
        .map_err(load_err)?;
    let fact = model.input_fact(0).map_err(load_err)?.clone();
    let shape = fact.shape.dims().cloned().collect::<Vec<_>>();
    let mut concrete = Vec::with_capacity(shape.len());
    for (i, d) in shape.iter().enumerate() {
        match d
            .concretize()
            .and_then(|d| d.as_i64())
            .and_then(|v| usize::try_from(v).ok())
        {
            Some(v) => concrete.push(v),
            None if i == 0 => concrete.push(batch),
            None => {
                return Err(load_error(
                    path,
                    format!("input dimension {i} is not fixed ({d:?})"),
                ));
            }
        }
    }
    if concrete.is_empty() {
        return Err(load_error(path, "the model input has no known shape"));
    }
    concrete[0] = batch;
    model
        .set_input_fact(0, f32::fact(&concrete).into())
        .map_err(load_err)?;
    Ok((model.into_typed().map_err(load_err)?, concrete))
}

/// A model that cannot be loaded, and why.
fn load_error(path: &Path, reason: impl Into<String>) -> EdgeError {
    EdgeError::Load {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// tract's error with all its context, outermost first.
fn chain(e: &TractError) -> String {
    format!("{e:#}")
}

/// One output tensor, flattened, with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOutput {
    /// Shape, batch first.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<f32>,
}

/// A model with one float input, optimised by tract for a fixed batch size.
pub struct Model {
    path: PathBuf,
    plan: Arc<TypedRunnableModel>,
    input_shape: Vec<usize>,
    threads: Threads,
    kernels: Kernels,
    replaced: PassReport,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("input_shape", &self.input_shape)
            .finish()
    }
}

impl Model {
    /// Load `path` (its name tells the format: [`ModelFormat::of`]), fix the batch dimension to
    /// `batch`, and optimise the graph once, with the process's kernel choice
    /// ([`Kernels::from_env`]).
    pub fn load(path: &Path, batch: usize, threads: Threads) -> Result<Self, EdgeError> {
        Self::load_with(path, batch, threads, Kernels::from_env())
    }

    /// Like [`Model::load`], with the convolution kernels given (benchmarks compare them).
    pub fn load_with(
        path: &Path,
        batch: usize,
        threads: Threads,
        kernels: Kernels,
    ) -> Result<Self, EdgeError> {
        let bytes = std::fs::read(path).map_err(|source| EdgeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes_with(&bytes, path, batch, threads, kernels)
    }

    /// Like [`Model::load`], from bytes already in memory (`path` is only used in messages).
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        batch: usize,
        threads: Threads,
    ) -> Result<Self, EdgeError> {
        Self::from_bytes_with(bytes, path, batch, threads, Kernels::from_env())
    }

    /// Like [`Model::from_bytes`], with the convolution kernels given.
    pub fn from_bytes_with(
        bytes: &[u8],
        path: &Path,
        batch: usize,
        threads: Threads,
        kernels: Kernels,
    ) -> Result<Self, EdgeError> {
        let load_err = |e: TractError| load_error(path, chain(&e));
        let format = ModelFormat::of(path).ok_or_else(|| {
            load_error(path, "the file name ends neither in .onnx nor in .nnef.tar")
        })?;
        let (typed, concrete) = match format {
            ModelFormat::Nnef => nnef_typed(bytes, path, batch)?,
            #[cfg(feature = "onnx")]
            ModelFormat::Onnx => onnx_typed(bytes, path, batch)?,
            #[cfg(not(feature = "onnx"))]
            ModelFormat::Onnx => {
                return Err(load_error(
                    path,
                    "this kestrel-edge is a board build without the ONNX reader: it runs \
                             the bundle's NNEF files (trunk.nnef.tar, head.nnef.tar), which \
                             bundles exported by this version of kestrel carry; export the \
                             bundle again",
                ));
            }
        };
        let (typed, replaced) = optimize(typed, kernels).map_err(load_err)?;
        let options = match threads {
            Threads::Single => RunOptions::default(),
            Threads::Multi(n) => RunOptions {
                executor: Some(multithread::Executor::multithread(n)),
                ..Default::default()
            },
        };
        let plan = typed
            .into_runnable_with_options(&options)
            .map_err(load_err)?;
        Ok(Model {
            path: path.to_path_buf(),
            plan,
            input_shape: concrete,
            threads,
            kernels,
            replaced,
        })
    }

    /// Input shape, batch first.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// Batch size the model was planned for.
    pub fn batch(&self) -> usize {
        self.input_shape[0]
    }

    /// Threads the model runs with.
    pub fn threads(&self) -> Threads {
        self.threads
    }

    /// The convolution kernels the model runs with.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The convolutions Kestrel's kernels took over from tract.
    pub fn replaced(&self) -> PassReport {
        self.replaced
    }

    /// The optimised plan (for profiling node by node).
    pub fn plan(&self) -> &Arc<TypedRunnableModel> {
        &self.plan
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the operators tract runs after optimisation, one per node, in order.
    pub fn op_names(&self) -> Vec<String> {
        self.plan
            .model()
            .nodes()
            .iter()
            .map(|n| n.op().name().to_string())
            .collect()
    }

    /// Run one full batch given as flat values; returns the first output.
    pub fn run(&self, input: &[f32]) -> Result<ModelOutput, EdgeError> {
        let expected: usize = self.input_shape.iter().product();
        if input.len() != expected {
            return Err(EdgeError::InputSize {
                path: self.path.clone(),
                expected: expected / self.batch(),
                got: input.len() / self.batch().max(1),
            });
        }
        let run_err = |e: TractError| EdgeError::Run {
            path: self.path.clone(),
            reason: chain(&e),
        };
        let tensor = Tensor::from_shape(&self.input_shape, input).map_err(run_err)?;
        let outputs = self
            .plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(run_err)?;
        let out = outputs[0].to_plain_array_view::<f32>().map_err(run_err)?;
        Ok(ModelOutput {
            shape: out.shape().to_vec(),
            data: out.iter().copied().collect(),
        })
    }
}
