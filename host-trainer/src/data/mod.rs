//! Labelled pictures: the ImageFolder layout, its train/validation split, and synthetic sets.

pub mod augment;
pub mod folder;
pub mod synth;

pub use folder::{DataError, Dataset, IMAGE_EXTENSIONS, Sample, Split};
