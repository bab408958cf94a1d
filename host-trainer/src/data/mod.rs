//! Labelled pictures: the ImageFolder layout, its train/validation split, and synthetic sets.

pub mod annotations;
pub mod augment;
pub mod folder;
pub mod scenes;
pub mod synth;

pub use folder::{DataError, Dataset, IMAGE_EXTENSIONS, Sample, Split};
