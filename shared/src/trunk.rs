//! The description written next to an exported trunk (`trunk.onnx` + `trunk.json`).
//!
//! It tells the board how to feed the model (preprocessing, input shape) and what comes out
//! (cut point, output shape), and pins the exact files by sha256. The full bundle manifest of a
//! trained model grows from this.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{CutPoint, PreprocessSpec};

/// Version of the `trunk.json` schema; a reader refuses other versions.
pub const TRUNK_SCHEMA_VERSION: u32 = 1;

/// What an exported frozen trunk is and how to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkInfo {
    /// Schema version, [`TRUNK_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Architecture, e.g. `mobilenet_v2`.
    pub architecture: String,
    /// Width multiplier of the architecture (1.0 for the torchvision weights).
    pub width_multiplier: f32,
    /// Where the network is cut.
    pub cut: CutPoint,
    /// How frames become the input tensor.
    pub preprocess: PreprocessSpec,
    /// Name of the ONNX input.
    pub input_name: String,
    /// Name of the ONNX output.
    pub output_name: String,
    /// Output shape for a batch of one.
    pub output_shape: Vec<usize>,
    /// File name of the ONNX model, relative to this description.
    pub onnx_file: String,
    /// sha256 of the ONNX file.
    pub onnx_sha256: String,
    /// sha256 of the pretrained weights the trunk was made from.
    pub weights_sha256: String,
    /// Version of Kestrel that wrote the file.
    pub kestrel_version: String,
}

/// A trunk description that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrunkInfoError {
    /// Reading failed.
    #[error("cannot read trunk description {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid JSON for this schema.
    #[error("trunk description {path} is malformed: {source}")]
    Malformed {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// Written by an incompatible Kestrel.
    #[error(
        "trunk description {path} has schema version {found}, this Kestrel reads version {expected}: re-export the trunk with this version of `kestrel`"
    )]
    Version {
        /// The file.
        path: String,
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
}

impl TrunkInfo {
    /// Parse and check a description.
    pub fn from_json(text: &str, path: &str) -> Result<Self, TrunkInfoError> {
        // Look at the version first so an old or new file gets the version message, not a
        // confusing field error.
        #[derive(Deserialize)]
        struct Probe {
            schema_version: u32,
        }
        let probe: Probe =
            serde_json::from_str(text).map_err(|source| TrunkInfoError::Malformed {
                path: path.to_string(),
                source,
            })?;
        if probe.schema_version != TRUNK_SCHEMA_VERSION {
            return Err(TrunkInfoError::Version {
                path: path.to_string(),
                found: probe.schema_version,
                expected: TRUNK_SCHEMA_VERSION,
            });
        }
        serde_json::from_str(text).map_err(|source| TrunkInfoError::Malformed {
            path: path.to_string(),
            source,
        })
    }

    /// Read and check a description from a file.
    pub fn read(path: &Path) -> Result<Self, TrunkInfoError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrunkInfoError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Write the description as pretty JSON.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("TrunkInfo serialises");
        std::fs::write(path, text + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TrunkInfo {
        TrunkInfo {
            schema_version: TRUNK_SCHEMA_VERSION,
            architecture: "mobilenet_v2".into(),
            width_multiplier: 1.0,
            cut: CutPoint::Features(13),
            preprocess: PreprocessSpec::imagenet(),
            input_name: "image".into(),
            output_name: "features".into(),
            output_shape: vec![1, 96, 14, 14],
            onnx_file: "trunk.onnx".into(),
            onnx_sha256: "00".repeat(32),
            weights_sha256: "11".repeat(32),
            kestrel_version: "0.1.0".into(),
        }
    }

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("kestrel-trunk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("trunk.json");
        sample().write(&p).unwrap();
        assert_eq!(TrunkInfo::read(&p).unwrap(), sample());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_version_and_garbage_are_clear_errors() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["schema_version"] = 99.into();
        let err = TrunkInfo::from_json(&v.to_string(), "x/trunk.json").unwrap_err();
        assert!(matches!(err, TrunkInfoError::Version { found: 99, .. }));
        assert!(err.to_string().contains("x/trunk.json"));

        let err = TrunkInfo::from_json("{\"schema_version\": 1, \"cut\": ", "t.json").unwrap_err();
        assert!(matches!(err, TrunkInfoError::Malformed { .. }));

        let mut v = serde_json::to_value(sample()).unwrap();
        v["cut"] = "features.77".into();
        assert!(TrunkInfo::from_json(&v.to_string(), "t.json").is_err());
    }
}
