//! Checkpoints of a run: each module is written as burn's own file (`.bpk`, what Kestrel reads
//! back) and, beside it, as safetensors with PyTorch's layout (linear weights transposed, names
//! as burn gives them), so PyTorch and Hugging Face tools can open the weights.

use std::path::Path;

use burn::store::{BurnToPyTorchAdapter, BurnpackStore, ModuleSnapshot, SafetensorsStore};

/// Writes `module` to `path` (`.bpk`) and to the same path with the extension `.safetensors`.
pub fn save<M: ModuleSnapshot>(module: &M, path: &Path) -> anyhow::Result<()> {
    module
        .save_into(&mut BurnpackStore::from_file(path).overwrite(true))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    let st = path.with_extension("safetensors");
    module
        .save_into(
            &mut SafetensorsStore::from_file(&st)
                .with_to_adapter(BurnToPyTorchAdapter)
                .metadata("format", "pt")
                .overwrite(true),
        )
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", st.display()))
}
