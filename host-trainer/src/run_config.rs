//! A run folder's `config.json`: what a training run was asked to do and what it trained on.
//!
//! Written once when training starts (so a crashed run still says what it was) and read back by
//! `kestrel export`, `eval` and `predict`. One type, one reader ([`RunConfig::read`]) and one
//! writer ([`RunConfig::write`]); the version field lets a Kestrel refuse, with a clear message, a
//! run folder whose layout it does not know.

use std::path::{Path, PathBuf};

use kestrel_edge::Trunk;
use kestrel_shared::PreprocessSpec;
use serde::{Deserialize, Serialize};

use crate::classify::run::ClassifyOptions;
use crate::detect::run::DetectOptions;
use crate::pretrained::Pretrained;

/// File name of the run configuration inside a run folder.
pub const RUN_CONFIG_FILE: &str = "config.json";

/// Layout version this Kestrel writes and reads. Run folders written before the field existed
/// have the same layout and count as version 1.
pub const RUN_CONFIG_VERSION: u32 = 1;

/// What was trained: the task, with the options of that task (`"task"` and `"options"` in the file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "task", content = "options", rename_all = "lowercase")]
pub enum RunTask {
    /// `kestrel train classify`.
    Classify(ClassifyOptions),
    /// `kestrel train detect`.
    Detect(DetectOptions),
}

impl RunTask {
    /// The task's name as written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            RunTask::Classify(_) => "classify",
            RunTask::Detect(_) => "detect",
        }
    }
}

/// The contents of `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// Layout version ([`RUN_CONFIG_VERSION`] when written by this Kestrel).
    #[serde(default = "first_version")]
    pub config_version: u32,
    /// Task and its options.
    #[serde(flatten)]
    pub task: RunTask,
    /// Class names, in output order.
    pub labels: Vec<String>,
    /// How pictures became input tensors.
    pub preprocess: PreprocessSpec,
    /// sha256 of the frozen trunk the head was trained on.
    pub trunk_sha256: String,
    /// sha256 of the frozen prefix below the fine-tuned blocks (phase 2 runs only).
    pub prefix_trunk_sha256: Option<String>,
    /// sha256 of the pretrained weights.
    pub weights_sha256: String,
    /// burn backend the run trained on.
    pub backend: String,
    /// Version of the Kestrel that wrote the file.
    pub kestrel_version: String,
}

fn first_version() -> u32 {
    1
}

/// Why a run folder's configuration cannot be used; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RunConfigError {
    /// The file is missing or unreadable.
    #[error(
        "cannot read {path}: {source} (pass a run folder written by `kestrel train classify` or `kestrel train detect`)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not JSON, or a field is missing or of the wrong type.
    #[error("{path} is malformed: {source} (train the run again, or restore the file)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What serde found.
        source: serde_json::Error,
    },
    /// Written by a Kestrel with a newer layout.
    #[error(
        "{path} was written by a newer Kestrel ({writer}, run config version {found}); this Kestrel {ours} reads version {RUN_CONFIG_VERSION}: update kestrel, or train the run again with this one"
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The Kestrel that wrote it, as it says.
        writer: String,
        /// This Kestrel's version.
        ours: &'static str,
    },
    /// Written by a Kestrel whose layout this one no longer reads.
    #[error(
        "{path} was written by an older Kestrel ({writer}, run config version {found}); this Kestrel {ours} reads version {RUN_CONFIG_VERSION}: train the run again with this one"
    )]
    Older {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The Kestrel that wrote it, as it says.
        writer: String,
        /// This Kestrel's version.
        ours: &'static str,
    },
}

/// Just enough of the file to tell its version before reading the rest.
#[derive(Deserialize)]
struct VersionProbe {
    #[serde(default = "first_version")]
    config_version: u32,
    #[serde(default)]
    kestrel_version: Option<String>,
}

impl RunConfig {
    /// The configuration of a run starting now: `task` trained on `trunk` (and, in phase 2, on
    /// `prefix`, the frozen part below the unfrozen blocks) from `pretrained`'s weights.
    pub fn starting(
        task: RunTask,
        labels: &[String],
        preprocess: PreprocessSpec,
        trunk: &Trunk,
        prefix: Option<&Trunk>,
        pretrained: &Pretrained,
    ) -> Self {
        RunConfig {
            config_version: RUN_CONFIG_VERSION,
            task,
            labels: labels.to_vec(),
            preprocess,
            trunk_sha256: trunk.info.onnx_sha256.clone(),
            prefix_trunk_sha256: prefix.map(|p| p.info.onnx_sha256.clone()),
            weights_sha256: pretrained.weights_sha256.clone(),
            backend: pretrained.backend.name().into(),
            kestrel_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Writes this configuration into `run`; when `resume`, first checks that the run there
    /// started from the same classes, trunk and weights (its checkpoints fit nothing else).
    pub fn begin(&self, run: &Path, resume: bool) -> anyhow::Result<()> {
        if resume {
            let before = RunConfig::read(run)?;
            let differs = [
                ("classes", before.labels != self.labels),
                ("trunk", before.trunk_sha256 != self.trunk_sha256),
                (
                    "frozen prefix",
                    before.prefix_trunk_sha256 != self.prefix_trunk_sha256,
                ),
                ("weights", before.weights_sha256 != self.weights_sha256),
            ];
            if let Some((what, _)) = differs.iter().find(|d| d.1) {
                anyhow::bail!(
                    "cannot resume {}: its {what} changed since it started (the dataset or the weights are not the ones it trained on); start a new run",
                    run.display()
                );
            }
        }
        Ok(self.write(run)?)
    }

    /// Read `run/config.json`, refusing layouts this Kestrel does not know.
    pub fn read(run: &Path) -> Result<Self, RunConfigError> {
        let path = run.join(RUN_CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| RunConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let malformed = |source| RunConfigError::Malformed {
            path: path.clone(),
            source,
        };
        let probe: VersionProbe = serde_json::from_str(&text).map_err(malformed)?;
        let writer = || {
            probe
                .kestrel_version
                .clone()
                .map_or("an unknown version".into(), |v| format!("Kestrel {v}"))
        };
        let ours = env!("CARGO_PKG_VERSION");
        match probe.config_version {
            RUN_CONFIG_VERSION => {}
            v if v > RUN_CONFIG_VERSION => {
                return Err(RunConfigError::Newer {
                    path,
                    found: v,
                    writer: writer(),
                    ours,
                });
            }
            v => {
                return Err(RunConfigError::Older {
                    path,
                    found: v,
                    writer: writer(),
                    ours,
                });
            }
        }
        serde_json::from_str(&text).map_err(malformed)
    }

    /// Write `run/config.json` (pretty, newline-terminated).
    pub fn write(&self, run: &Path) -> Result<(), RunConfigError> {
        let path = run.join(RUN_CONFIG_FILE);
        let text = serde_json::to_string_pretty(self).expect("a run config always serialises");
        std::fs::write(&path, text + "\n").map_err(|source| RunConfigError::Write { path, source })
    }

    /// Read a classification run's configuration and its options (a detection run is refused).
    pub fn read_classify(run: &Path) -> anyhow::Result<(Self, ClassifyOptions)> {
        let config = Self::read(run)?;
        match config.task.clone() {
            RunTask::Classify(o) => Ok((config, o)),
            other => Err(wrong_task(run, other.name(), "classify")),
        }
    }

    /// Read a detection run's configuration and its options (a classification run is refused).
    pub fn read_detect(run: &Path) -> anyhow::Result<(Self, DetectOptions)> {
        let config = Self::read(run)?;
        match config.task.clone() {
            RunTask::Detect(o) => Ok((config, o)),
            other => Err(wrong_task(run, other.name(), "detect")),
        }
    }

    /// sha256 of the trunk the trained part reads: the frozen prefix when blocks were
    /// fine-tuned, else the trunk up to the cut.
    pub fn input_trunk_sha256(&self) -> &str {
        self.prefix_trunk_sha256
            .as_deref()
            .unwrap_or(&self.trunk_sha256)
    }

    /// Fail unless the trunk exported now (`actual` sha256) is the one the run trained on.
    pub fn check_trunk(&self, run: &Path, actual: &str) -> anyhow::Result<()> {
        let expected = self.input_trunk_sha256();
        anyhow::ensure!(
            expected == actual,
            "{} was trained on trunk {expected} but this Kestrel exports {actual}: train the run again with this version",
            run.display()
        );
        Ok(())
    }
}

fn wrong_task(run: &Path, found: &str, wanted: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is a `{found}` run, not a `{wanted}` run: pass a folder written by `kestrel train {wanted}`",
        run.display()
    )
}

/// The task of a run folder (`classify`, `detect`), if its configuration can be read.
pub fn run_task(run: &Path) -> Option<&'static str> {
    RunConfig::read(run).ok().map(|c| c.task.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::train::OptimizerKind;
    use crate::detect::train::{DecodeSettings, DetectHeadKind, DetectTrainConfig};
    use kestrel_shared::CutPoint;

    fn detect_config() -> RunConfig {
        let options = DetectOptions {
            data: "data".into(),
            annotations: None,
            width: 320,
            height: 240,
            cut: CutPoint::Features(13),
            val_fraction: 0.15,
            strict: false,
            train: DetectTrainConfig {
                head: DetectHeadKind::Grid,
                units: 64,
                optimizer: OptimizerKind::Adam,
                lr: 1e-3,
                epochs: 3,
                batch_size: 32,
                seed: 7,
                patience: 5,
                shift_cells: 0,
                dropout: 0.0,
                objectness: Default::default(),
                lr_schedule: Default::default(),
                single_form: Default::default(),
            },
            decode: DecodeSettings {
                score_threshold: 0.3,
                nms_iou: 0.5,
                max_detections: 20,
            },
            fine_tune: None,
        };
        RunConfig {
            config_version: RUN_CONFIG_VERSION,
            preprocess: options.preprocess(),
            task: RunTask::Detect(options),
            labels: vec!["a".into(), "b".into()],
            trunk_sha256: "t".repeat(64),
            prefix_trunk_sha256: None,
            weights_sha256: "w".repeat(64),
            backend: "flex".into(),
            kestrel_version: "0.0.0".into(),
        }
    }

    #[test]
    fn round_trips_and_keeps_the_task_and_options_layout() {
        let dir = tempfile::tempdir().unwrap();
        let config = detect_config();
        config.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(RUN_CONFIG_FILE)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["task"], "detect");
        assert_eq!(value["options"]["width"], 320);
        let back = RunConfig::read(dir.path()).unwrap();
        let again = tempfile::tempdir().unwrap();
        back.write(again.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.path().join(RUN_CONFIG_FILE)).unwrap(),
            text,
            "what is read is what was written"
        );
        assert_eq!(run_task(dir.path()), Some("detect"));
        assert!(RunConfig::read_detect(dir.path()).is_ok());
        let e = RunConfig::read_classify(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a `detect` run"), "{e}");
    }

    #[test]
    fn a_file_without_a_version_is_version_1() {
        let dir = tempfile::tempdir().unwrap();
        let mut value = serde_json::to_value(detect_config()).unwrap();
        value.as_object_mut().unwrap().remove("config_version");
        std::fs::write(dir.path().join(RUN_CONFIG_FILE), value.to_string()).unwrap();
        assert_eq!(RunConfig::read(dir.path()).unwrap().config_version, 1);
    }

    #[test]
    fn newer_older_and_malformed_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RUN_CONFIG_FILE);
        let mut value = serde_json::to_value(detect_config()).unwrap();
        value["config_version"] = (RUN_CONFIG_VERSION + 1).into();
        // A newer layout may differ anywhere: the version alone decides the message.
        value["labels"] = "changed".into();
        std::fs::write(&path, value.to_string()).unwrap();
        let e = RunConfig::read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("newer Kestrel") && e.contains("config.json"),
            "{e}"
        );
        value["config_version"] = 0.into();
        std::fs::write(&path, value.to_string()).unwrap();
        let e = RunConfig::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("older Kestrel"), "{e}");
        std::fs::write(&path, "{\"task\": \"detect\"").unwrap();
        let e = RunConfig::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("malformed") && e.contains("config.json"), "{e}");
        let e = RunConfig::read(&dir.path().join("nothing")).unwrap_err();
        assert!(matches!(e, RunConfigError::Read { .. }), "{e}");
        assert_eq!(run_task(&dir.path().join("nothing")), None);
    }
}
