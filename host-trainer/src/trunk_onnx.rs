//! Exporting the frozen trunk to ONNX, with its description, for the board and for embedding.

use std::path::{Path, PathBuf};

use kestrel_shared::hash::sha256_file;
use kestrel_shared::trunk::TRUNK_SCHEMA_VERSION;
use kestrel_shared::{CutPoint, PreprocessSpec, TrunkInfo};

use crate::mobilenet::MobileNetV2;
use crate::onnx::{ExportError, mobilenet_graph, write_model};

/// Name of the ONNX input of every Kestrel model.
pub const INPUT_NAME: &str = "image";

/// Name of a trunk's output at `cut`.
pub fn output_name(cut: CutPoint) -> &'static str {
    match cut {
        CutPoint::Pooled => "embedding",
        CutPoint::Features(_) => "features",
    }
}

/// Export `model` cut at `cut` into `dir` as `trunk.onnx` + `trunk.json`.
///
/// `model` may be the full network or already truncated at `cut` or later.
pub fn export_trunk(
    model: &MobileNetV2,
    cut: CutPoint,
    preprocess: PreprocessSpec,
    weights_sha256: &str,
    dir: &Path,
) -> Result<TrunkInfo, ExportError> {
    let io = |source, path: &Path| ExportError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(e, dir))?;
    let trunk = model.clone().truncate(cut);
    let (h, w) = (preprocess.height as usize, preprocess.width as usize);
    let output = output_name(cut);
    let proto = mobilenet_graph(
        &trunk,
        h,
        w,
        INPUT_NAME,
        output,
        vec![
            ("kestrel.cut".into(), cut.to_string()),
            ("kestrel.weights_sha256".into(), weights_sha256.to_string()),
        ],
    );
    let onnx = dir.join("trunk.onnx");
    write_model(&proto, &onnx)?;
    let mut output_shape = cut.output_shape(h, w);
    output_shape[0] = 1;
    let info = TrunkInfo {
        schema_version: TRUNK_SCHEMA_VERSION,
        architecture: "mobilenet_v2".into(),
        width_multiplier: 1.0,
        cut,
        preprocess,
        input_name: INPUT_NAME.into(),
        output_name: output.into(),
        output_shape,
        onnx_file: "trunk.onnx".into(),
        onnx_sha256: sha256_file(&onnx).map_err(|e| io(e, &onnx))?,
        weights_sha256: weights_sha256.to_string(),
        kestrel_version: env!("CARGO_PKG_VERSION").into(),
    };
    let json = dir.join(kestrel_edge::trunk::TRUNK_JSON);
    info.write(&json).map_err(|e| io(e, &json))?;
    Ok(info)
}

/// Directory of the cached trunk export for these weights, cut and preprocessing.
pub fn cached_trunk_dir(
    cache: &Path,
    weights_sha256: &str,
    cut: CutPoint,
    spec: &PreprocessSpec,
) -> PathBuf {
    let key = kestrel_shared::hash::sha256_hex(
        serde_json::to_string(&(weights_sha256, cut, spec, env!("CARGO_PKG_VERSION")))
            .expect("serialisable")
            .as_bytes(),
    );
    cache.join("trunks").join(format!("{cut}-{}", &key[..16]))
}
