//! `kestrel export`: a trained run as a model bundle for the board.
//!
//! The bundle is a directory: `trunk.onnx` (the frozen trunk up to the cut, exactly the file the
//! run was trained on, or its int8 version with `--quantize all`), `head.onnx` (everything that
//! was trained: the head, plus any fine-tuned blocks; int8 by default), `model.onnx` (both merged
//! in one graph), trunk and head again in tract's NNEF format (`trunk.nnef.tar`, `head.nnef.tar`:
//! what boards run, read without an ONNX parser; converted by tract from the ONNX files) and
//! `manifest.json` ([`kestrel_shared::Manifest`], the one description both sides read).
//!
//! Quantization is post-training and real int8 on the board: weights per output channel,
//! symmetric, with bias correction; activations per tensor, calibrated on N training pictures
//! (their cached trunk outputs for the head); layers written as `QuantizeLinear` +
//! `MatMulInteger` / `ConvInteger`, which tract runs with 8-bit matrix kernels. Depthwise
//! convolutions stay float32: tract has no int8 kernel for them. The bundle is then measured by
//! running it (its NNEF files) with the edge loader in tract on the run's validation set, next to the float
//! model, and the numbers go into the manifest.

pub mod calibrate;
pub mod evaluate;
pub mod export;
pub mod int8;
pub mod layers;
pub mod onnx_graph;
pub mod release;
pub mod source;

pub use export::{BundleReport, ExportOptions, export_bundle, export_demo_detector, print_report};
