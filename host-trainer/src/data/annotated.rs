//! Ground truth as the trainer reads it from a dataset: pictures with their objects (and the
//! regions evaluation leaves out). Only the workstation needs these; what the board reports is
//! [`kestrel_shared::Detection`].

use std::path::PathBuf;

use kestrel_shared::BBox;
use serde::{Deserialize, Serialize};

/// One ground-truth object: its class index (into the label list) and box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Class index.
    pub class: usize,
    /// Box in pixels of its picture.
    #[serde(rename = "box")]
    pub bbox: BBox,
}

/// A picture with its ground-truth objects (possibly none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotatedImage {
    /// The picture file.
    pub path: PathBuf,
    /// Picture width in pixels.
    pub width: u32,
    /// Picture height in pixels.
    pub height: u32,
    /// Objects in it: what training learns and evaluation scores.
    pub objects: Vec<Object>,
    /// Regions to leave out: COCO `iscrowd: 1` crowds and Pascal VOC `difficult` objects. Never
    /// trained on (training reads only `objects`); kept so evaluation can leave detections on them
    /// uncounted, as pycocotools and the VOC devkit do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<Object>,
}
