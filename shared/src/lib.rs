//! Types both sides of Kestrel agree on.
//!
//! The host (`kestrel`, burn) and the board (`kestrel-edge`, tract) must compute exactly the same
//! thing from the same picture, so everything they have to agree on lives here, once: where the
//! trunk is cut, how a picture becomes a tensor, and the description that travels with an exported
//! model. This crate depends on neither burn nor tract.

pub mod board;
pub mod cut;
pub mod decode;
pub mod detect;
pub mod hash;
pub mod listing;
pub mod manifest;
pub mod nms;
pub mod picture;
pub mod preprocess;
pub mod report;
pub mod sign;
pub mod transport;
pub mod trunk;
pub mod wire;

pub use board::{Board, BoardError};
pub use cut::CutPoint;
pub use detect::{BBox, Detection};
pub use manifest::{MANIFEST_SCHEMA_VERSION, Manifest, ManifestError};
pub use nms::{filter_and_nms, nms};
pub use preprocess::{FrameMapping, Normalization, PreprocessError, PreprocessSpec, ResizeMode};
pub use trunk::{TRUNK_SCHEMA_VERSION, TrunkInfo, TrunkInfoError};
