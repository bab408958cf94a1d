//! Transfer learning for image classification, the book's two-model approach: the frozen ONNX
//! trunk (run by tract) embeds every picture once, into a cache; a small head is trained in burn
//! on the cached embeddings.

pub mod embed;
pub mod finetune;
pub mod head;
pub mod onemodel;
pub mod run;
pub mod train;

pub use embed::{EmbeddedSet, EmbeddingCache, Skipped, embed_samples};
pub use head::{Head, HeadConfig, HeadKind};
pub use run::{ClassifyOptions, RunSummary, train_classify};
pub use train::{
    EpochStats, Examples, FitWatch, LrSchedule, OptimizerKind, TrainConfig, TrainResult, train_head,
};
