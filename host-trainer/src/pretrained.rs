//! The pretrained network as the commands use it: weights resolved, model loaded on a backend.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kestrel_shared::hash::sha256_file;
use kestrel_shared::{CutPoint, PreprocessSpec};

use crate::backend::Backend;
use crate::mobilenet::{MobileNetV2, MobileNetV2Config};
use crate::trunk_onnx::{cached_trunk_dir, export_trunk};

/// torchvision's ImageNet MobileNetV2 loaded in burn.
pub struct Pretrained {
    /// The verified weights file.
    pub weights: PathBuf,
    /// Its sha256.
    pub weights_sha256: String,
    /// The full model (features + classifier).
    pub model: MobileNetV2,
    /// burn backend in use.
    pub backend: Backend,
    /// The backend's device.
    pub device: Device,
}

impl Pretrained {
    /// Load verified weights into the full network on `backend`.
    pub fn load(weights: &Path, backend: Backend) -> anyhow::Result<Self> {
        let device = backend.try_device()?;
        let model = MobileNetV2Config::default().load(weights, &device)?;
        // Recorded in every export so a trunk names the exact weights it came from.
        let weights_sha256 = sha256_file(weights)?;
        Ok(Pretrained {
            weights: weights.to_path_buf(),
            weights_sha256,
            model,
            backend,
            device,
        })
    }

    /// Export the trunk cut at `cut` into the cache (once) and return its directory.
    ///
    /// This is model 1 of the book's two-model approach: the host embeds its training pictures
    /// through this ONNX file with tract, exactly as the board will.
    pub fn cached_trunk(
        &self,
        cut: CutPoint,
        spec: PreprocessSpec,
        cache: &Path,
    ) -> anyhow::Result<PathBuf> {
        let dir = cached_trunk_dir(cache, &self.weights_sha256, cut, &spec);
        let usable = |dir: &Path| {
            kestrel_shared::TrunkInfo::read(&dir.join(kestrel_edge::trunk::TRUNK_JSON))
                .ok()
                .is_some_and(|info| {
                    sha256_file(&dir.join(&info.onnx_file)).is_ok_and(|h| h == info.onnx_sha256)
                })
        };
        if !usable(&dir) {
            tracing::info!("exporting trunk {cut} to {}", dir.display());
            let name = dir.file_name().expect("cache entry").to_string_lossy();
            let tmp = dir.with_file_name(format!("{name}.tmp-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            export_trunk(&self.model, cut, spec, &self.weights_sha256, &tmp)?;
            let _ = std::fs::remove_dir_all(&dir);
            if let Err(e) = std::fs::rename(&tmp, &dir) {
                // Another process may have put the same export in place meanwhile.
                let _ = std::fs::remove_dir_all(&tmp);
                if !usable(&dir) {
                    return Err(e.into());
                }
            }
        }
        Ok(dir)
    }
}
