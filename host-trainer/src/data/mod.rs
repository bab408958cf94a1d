//! Labelled pictures: the ImageFolder layout and its train/validation split, detection datasets
//! in the layouts people have (`annotations`), `kestrel data check` (`check`), synthetic sets.

pub mod annotated;
pub mod annotations;
pub mod augment;
pub mod check;
pub mod folder;
pub mod scenes;
pub mod synth;

pub use annotated::{AnnotatedImage, Object};
pub use folder::{DataError, Dataset, IMAGE_EXTENSIONS, Sample, Split};
