//! Kestrel's on-board runtime: runs exported models with tract.
//!
//! This crate never depends on burn: what the host trains is exported to ONNX and run here, and the
//! host itself computes its training embeddings through [`Model`] so both sides compute the same
//! numbers with the same code.

pub mod agent;
pub mod agent_loop;
pub mod bench;
pub mod bundle;
#[cfg(feature = "camera")]
pub mod cameras;
pub mod cli;
pub mod health;
pub mod jpeg;
pub mod kernels;
pub mod libcamera;
pub mod model;
pub mod nnef;
pub mod profile;
pub mod runtime;
pub mod sink;
pub mod sinks;
pub mod source;
pub mod stats;
pub mod store;
pub mod trunk;
pub mod watch;
pub mod watchdog;

pub use bundle::{Bundle, BundleError, BundleOptions};
pub use model::{EdgeError, Model, ModelFormat, ModelOutput, Threads};
pub use trunk::Trunk;
