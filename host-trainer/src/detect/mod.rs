//! Object detection by transfer learning: the book's single-object detector and a multi-object
//! grid detector, both heads trained in burn on the frozen trunk's cached stride-16 feature maps.

pub mod heads;
pub mod loss;
pub mod run;
pub mod train;

pub use heads::{AttentionHead, GridConfig, GridHead, SingleForm, SingleHead};
pub use run::{DetectOptions, DetectScores, DetectSummary, TrainedDetector, train_detect};
pub use train::{DetectHead, DetectHeadKind, DetectTrainConfig, FeatureSet};
