//! A frozen trunk exported by `kestrel`: `trunk.onnx` plus its description `trunk.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kestrel_shared::hash::sha256_hex;
use kestrel_shared::{PreprocessSpec, TrunkInfo};
use serde_json::json;

use crate::model::{EdgeError, Model, ModelOutput, Threads};

/// File name of a trunk's description inside its directory.
pub const TRUNK_JSON: &str = "trunk.json";

/// A loaded, verified, optimised trunk.
#[derive(Debug)]
pub struct Trunk {
    /// What the trunk is and how to feed it.
    pub info: TrunkInfo,
    /// The optimised model.
    pub model: Model,
}

impl Trunk {
    /// Open a trunk from its directory or its `trunk.json`: check the description, check the
    /// model's sha256, and optimise it for `batch` images at a time.
    pub fn open(path: &Path, batch: usize, threads: Threads) -> Result<Self, EdgeError> {
        let json: PathBuf = if path.is_dir() {
            path.join(TRUNK_JSON)
        } else {
            path.to_path_buf()
        };
        let info = TrunkInfo::read(&json)?;
        let dir = json.parent().unwrap_or(Path::new("."));
        let onnx = dir.join(&info.onnx_file);
        let bytes = std::fs::read(&onnx).map_err(|source| EdgeError::Read {
            path: onnx.clone(),
            source,
        })?;
        let found = sha256_hex(&bytes);
        if found != info.onnx_sha256 {
            return Err(EdgeError::Checksum {
                path: onnx,
                found,
                expected: info.onnx_sha256.clone(),
            });
        }
        let model = Model::from_bytes(&bytes, &onnx, batch, threads)?;
        Ok(Trunk { info, model })
    }

    /// Preprocessing this trunk expects.
    pub fn preprocess(&self) -> &PreprocessSpec {
        &self.info.preprocess
    }

    /// Embed already-preprocessed images (each CHW, `preprocess().len()` values), any count:
    /// they are run in batches of the planned size, the last one padded.
    pub fn embed(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, EdgeError> {
        let per = self.info.preprocess.len();
        let batch = self.model.batch();
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch) {
            let mut input = Vec::with_capacity(batch * per);
            for img in chunk {
                if img.len() != per {
                    return Err(EdgeError::InputSize {
                        path: self.model.path().to_path_buf(),
                        expected: per,
                        got: img.len(),
                    });
                }
                input.extend_from_slice(img);
            }
            input.resize(batch * per, 0.0);
            let ModelOutput { data, .. } = self.model.run(&input)?;
            let each = data.len() / batch;
            out.extend(data.chunks(each).take(chunk.len()).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// Read, decode, preprocess and embed one picture file.
    pub fn embed_file(&self, path: &Path) -> Result<Vec<f32>, EdgeError> {
        let x = self
            .info
            .preprocess
            .apply(&crate::jpeg::load_picture(path)?);
        Ok(self.embed(std::slice::from_ref(&x))?.remove(0))
    }
}

/// Embed each picture and write one JSON object per line; a bad picture is reported on stderr and
/// in its line, and the others still run. Returns how many failed.
pub fn embed_images(
    trunk: &Trunk,
    images: &[PathBuf],
    values: bool,
    out: &mut dyn Write,
) -> std::io::Result<usize> {
    let mut failed = 0;
    for path in images {
        let start = Instant::now();
        let line = match trunk.embed_file(path) {
            Ok(v) => {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let mut shape = trunk.info.output_shape.clone();
                shape[0] = 1;
                let mut obj = json!({
                    "image": path.display().to_string(),
                    "cut": trunk.info.cut.to_string(),
                    "shape": shape,
                    "l2_norm": norm,
                    "mean": v.iter().sum::<f32>() / v.len() as f32,
                    "ms": start.elapsed().as_secs_f64() * 1e3,
                });
                if values {
                    obj["values"] = json!(v);
                }
                obj
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
                json!({"image": path.display().to_string(), "error": e.to_string()})
            }
        };
        writeln!(out, "{line}")?;
    }
    Ok(failed)
}

/// A JSON description of a loaded trunk: its description and the operators tract runs.
pub fn info_json(trunk: &Trunk) -> serde_json::Value {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for op in trunk.model.op_names() {
        *counts.entry(op).or_default() += 1;
    }
    json!({
        "trunk": trunk.info,
        "input_shape": trunk.model.input_shape(),
        "tract_ops": counts,
    })
}
