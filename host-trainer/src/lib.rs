//! Kestrel's workstation side: torchvision's pretrained MobileNetV2 in burn, cut into a frozen
//! trunk (`trunk_onnx`), new heads trained on it (`classify`, `detect`, fine-tuning on the fused
//! ops of `ops`), bundles for the board (`bundle`), deploys (`deploy`) and installs (`install`).
//!
//! The binary `kestrel` is a thin layer over these modules.

pub mod backend;
pub mod bench;
pub mod boards;
pub mod bundle;
pub mod checkpoint;
pub mod classify;
pub mod cli;
pub mod data;
pub mod demo;
pub mod demo_board;
pub mod deploy;
pub mod detect;
pub mod doctor;
pub mod eval;
pub mod fleet;
pub mod imagenet;
pub mod install;
pub mod mobilenet;
pub mod onnx;
pub mod ops;
pub mod plot;
pub mod predict;
pub mod pretrained;
pub mod progress;
pub mod results;
pub mod run_config;
pub mod run_dir;
pub mod trunk_onnx;
pub mod video;
pub mod weights;

pub use backend::Backend;
pub use mobilenet::{MobileNetV2, MobileNetV2Config};
pub use pretrained::Pretrained;
