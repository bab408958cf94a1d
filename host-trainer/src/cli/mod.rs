//! `kestrel`'s subcommands: one module per command, each with its arguments (clap derive) and a
//! `run(args, ctx)` doing the work through the library. The binary only parses and dispatches.

pub mod bench;
pub mod data;
pub mod demo;
pub mod doctor;
pub mod embed;
pub mod eval;
pub mod exit;
pub mod export;
pub mod fleet;
pub mod predict;
pub mod synth;
pub mod train;

use std::path::PathBuf;

use crate::backend::Backend;
use crate::pretrained::Pretrained;
use crate::progress::{Bars, Progress, Silent};
use crate::weights::Fetcher;

/// The global options every subcommand may use.
#[derive(Debug, Clone)]
pub struct Context {
    /// `--weights`: a local weights file (else the cache, fetched once).
    pub weights: Option<PathBuf>,
    /// `--backend`.
    pub backend: Backend,
    /// `--threads` as decided for this command.
    pub threads: Option<usize>,
    /// `--quiet`: no progress bars.
    pub quiet: bool,
    /// Kestrel's cache directory (weights, trunks, embeddings).
    pub cache: PathBuf,
}

impl Context {
    /// Progress bars, or nothing under `--quiet`.
    pub fn progress(&self) -> &'static dyn Progress {
        if self.quiet { &Silent } else { &Bars }
    }

    /// The pretrained weights file: `--weights`, else the cache (fetched and verified if needed).
    pub fn weights_path(&self) -> anyhow::Result<PathBuf> {
        Ok(Fetcher::default().resolve(self.weights.as_deref(), self.progress())?)
    }

    /// The pretrained MobileNetV2 on the chosen backend.
    pub fn pretrained(&self) -> anyhow::Result<Pretrained> {
        Pretrained::load(&self.weights_path()?, self.backend)
    }
}

/// Installs the log subscriber: warnings and above unless `RUST_LOG` says otherwise, on stderr
/// (stdout carries the commands' output: JSON, tables, completion scripts).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
