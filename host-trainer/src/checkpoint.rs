//! Checkpoints of a run: each module is written as burn's own file (`.bpk`, what Kestrel reads
//! back) and, beside it, as safetensors with PyTorch's layout (linear weights transposed, names
//! as burn gives them), so PyTorch and Hugging Face tools can open the weights. A fit's per-epoch
//! state ([`FitCheckpoints`]) lets an interrupted run resume.

use std::path::{Path, PathBuf};

use burn::optim::ModuleOptimizer;
use burn::store::{BurnToPyTorchAdapter, BurnpackStore, ModuleSnapshot, SafetensorsStore};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::classify::train::EpochStats;

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

/// The state of a fit after its last finished epoch, kept in `DIR/state.json` beside the files it
/// names, so `kestrel train --resume` continues exactly where an interrupted run stopped (same
/// batches, same dropout, same optimiser moments: the same numbers as a run never interrupted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FitState {
    /// Epochs finished.
    pub epoch: usize,
    /// Optimiser steps taken (the learning-rate schedule's position).
    pub step: usize,
    /// The fit's random generator after the last epoch.
    pub rng: RngState,
    /// The training order the last epoch shuffled (the next shuffles it again).
    pub order: Vec<usize>,
    /// One row per epoch finished.
    pub history: Vec<EpochStats>,
    /// The best model so far: its score (lower is better), epoch and file.
    pub best: Option<Best>,
    /// Early stopping fired, or every epoch ran: nothing is left to train.
    pub done: bool,
    /// The training model after the last epoch (`.bpk`).
    pub model: String,
    /// The optimiser's state after the last epoch (`.bpk`).
    pub optimizer: String,
}

/// The best model of a fit so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Best {
    /// Its validation score (lower is better).
    pub score: f64,
    /// Its epoch (0: the starting model).
    pub epoch: usize,
    /// Its file (`.bpk`) in the checkpoint folder.
    pub file: String,
}

/// A ChaCha8 generator's exact position.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RngState {
    /// Seed, as hex.
    pub seed: String,
    /// Stream.
    pub stream: u64,
    /// Word position (a decimal string: JSON numbers cannot hold every u128).
    pub word_pos: String,
}

impl RngState {
    /// Where `rng` stands.
    pub fn of(rng: &ChaCha8Rng) -> RngState {
        RngState {
            seed: hex::encode(rng.get_seed()),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    /// A generator at this position.
    pub fn restore(&self) -> Option<ChaCha8Rng> {
        let seed: [u8; 32] = hex::decode(&self.seed).ok()?.try_into().ok()?;
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().ok()?);
        Some(rng)
    }
}

/// What went wrong with a fit's checkpoint folder.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be written.
    #[error("cannot write checkpoint {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A checkpoint exists but cannot be read back.
    #[error(
        "cannot resume from {path}: {reason} (delete {dir} to train this phase again from its start)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Its folder.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A fit's checkpoint folder: after each epoch the model, optimiser and best model are written
/// under new names, then `state.json` (written whole, then renamed over the old one) names them,
/// then the files it no longer names go. A kill at any moment leaves the last complete epoch.
#[derive(Debug, Clone)]
pub struct FitCheckpoints {
    dir: PathBuf,
}

/// A fit's state read back, with the folder it came from (to load the files it names).
pub struct Restored {
    /// The state.
    pub state: FitState,
    dir: PathBuf,
}

const STATE_FILE: &str = "state.json";

impl FitCheckpoints {
    /// Checkpoints in `dir` (created on the first commit).
    pub fn new(dir: &Path) -> FitCheckpoints {
        FitCheckpoints {
            dir: dir.to_path_buf(),
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Epochs already finished here (0 when none, or when the state cannot be read).
    pub fn epochs_done(&self) -> usize {
        self.read().ok().flatten().map_or(0, |r| r.state.epoch)
    }

    /// The state of the last finished epoch, or None when the fit never finished one.
    pub fn read(&self) -> Result<Option<Restored>, CheckpointError> {
        let path = self.dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.read_error(&path, e)),
        };
        let state: FitState = serde_json::from_str(&text).map_err(|e| self.read_error(&path, e))?;
        Ok(Some(Restored {
            state,
            dir: self.dir.clone(),
        }))
    }

    fn read_error(&self, path: &Path, e: impl std::fmt::Display) -> CheckpointError {
        CheckpointError::Read {
            path: path.to_path_buf(),
            dir: self.dir.clone(),
            reason: e.to_string(),
        }
    }

    /// Writes epoch `state.epoch`: `model` and `optimizer` (and `best`, the best model, when it
    /// changed this epoch), then the state naming them; then removes the files of earlier epochs.
    pub fn commit<M: ModuleSnapshot>(
        &self,
        state: &FitState,
        model: &M,
        optimizer: &ModuleOptimizer,
        best: Option<&M>,
    ) -> Result<(), CheckpointError> {
        let write_err = |path: &Path, e: &dyn std::fmt::Display| CheckpointError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| write_err(&self.dir, &e))?;
        let save = |m: &M, name: &str| {
            let path = self.dir.join(name);
            m.save_into(&mut BurnpackStore::from_file(&path).overwrite(true))
                .map_err(|e| write_err(&path, &e))
        };
        save(model, &state.model)?;
        let opt = self.dir.join(&state.optimizer);
        optimizer.save(&opt).map_err(|e| write_err(&opt, &e))?;
        if let (Some(m), Some(b)) = (best, &state.best) {
            save(m, &b.file)?;
        }
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(state).map_err(|e| write_err(&tmp, &e))?;
        std::fs::write(&tmp, text + "\n").map_err(|e| write_err(&tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| write_err(&path, &e))?;
        let keep = [
            Some(state.model.as_str()),
            Some(state.optimizer.as_str()),
            state.best.as_ref().map(|b| b.file.as_str()),
        ];
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".bpk") && !keep.contains(&Some(name.as_ref())) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

impl FitState {
    /// File names for the state after `epoch`.
    pub fn names(epoch: usize) -> (String, String) {
        (
            format!("last-{epoch}.bpk"),
            format!("optimizer-{epoch}.bpk"),
        )
    }
}

impl Restored {
    /// Loads the file `name` of the checkpoint into `module` (same structure).
    pub fn load<M: ModuleSnapshot>(
        &self,
        module: &mut M,
        name: &str,
    ) -> Result<(), CheckpointError> {
        let path = self.dir.join(name);
        let err = |e: &dyn std::fmt::Display| CheckpointError::Read {
            path: path.clone(),
            dir: self.dir.clone(),
            reason: e.to_string(),
        };
        let applied = module
            .load_from(&mut BurnpackStore::from_file(&path))
            .map_err(|e| err(&e))?;
        if !applied.missing.is_empty() || !applied.errors.is_empty() {
            return Err(err(&format!(
                "it does not match the model ({} tensors missing, {} errors)",
                applied.missing.len(),
                applied.errors.len()
            )));
        }
        Ok(())
    }

    /// The optimiser state, loaded into `fresh`.
    pub fn optimizer(&self, fresh: ModuleOptimizer) -> Result<ModuleOptimizer, CheckpointError> {
        let path = self.dir.join(&self.state.optimizer);
        fresh.load(&path).map_err(|e| CheckpointError::Read {
            path: path.clone(),
            dir: self.dir.clone(),
            reason: e.to_string(),
        })
    }

    /// An error saying the checkpoint does not fit this fit, and why.
    pub fn mismatch(&self, reason: String) -> CheckpointError {
        CheckpointError::Read {
            path: self.dir.join(STATE_FILE),
            dir: self.dir.clone(),
            reason,
        }
    }

    /// The generator at its saved position.
    pub fn rng(&self) -> Result<ChaCha8Rng, CheckpointError> {
        self.state
            .rng
            .restore()
            .ok_or_else(|| CheckpointError::Read {
                path: self.dir.join(STATE_FILE),
                dir: self.dir.clone(),
                reason: "its random generator state is malformed".into(),
            })
    }
}

/// The checkpoint folders of a run: `RUN/checkpoints/phase1` (the head) and `phase2`
/// (fine-tuning).
#[derive(Debug, Clone)]
pub struct RunCheckpoints {
    root: PathBuf,
}

impl RunCheckpoints {
    /// The folders of the run in `out`. A new run clears what an earlier run there left
    /// (`--exist-ok`); a resumed one needs them.
    pub fn open(out: &Path, resume: bool) -> Result<RunCheckpoints, CheckpointError> {
        let root = out.join("checkpoints");
        if resume {
            if !root.join("phase1").join(STATE_FILE).is_file() {
                return Err(CheckpointError::Read {
                    path: root.join("phase1").join(STATE_FILE),
                    dir: root.clone(),
                    reason: "the run never finished an epoch, so there is nothing to resume".into(),
                });
            }
        } else if root.exists() {
            std::fs::remove_dir_all(&root).map_err(|e| CheckpointError::Write {
                path: root.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(RunCheckpoints { root })
    }

    /// The folder of phase `n` (1 or 2).
    pub fn phase(&self, n: u8) -> FitCheckpoints {
        FitCheckpoints::new(&self.root.join(format!("phase{n}")))
    }
}
