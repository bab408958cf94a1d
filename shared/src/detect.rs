//! Detection types both sides share: boxes, ground-truth objects, detections.
//!
//! Boxes are corner coordinates in pixels of the picture they belong to (`x0 <= x1`, `y0 <= y1`,
//! `x1`/`y1` exclusive like a pixel count: a box covering the whole 320x240 frame is
//! `[0, 0, 320, 240]`). The trainer, the evaluator and the board all use these, so a box means the
//! same thing everywhere.

use serde::{Deserialize, Serialize};

/// An axis-aligned box, corners in pixels: `[x0, y0, x1, y1]` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "[f32; 4]", into = "[f32; 4]")]
pub struct BBox {
    /// Left edge.
    pub x0: f32,
    /// Top edge.
    pub y0: f32,
    /// Right edge.
    pub x1: f32,
    /// Bottom edge.
    pub y1: f32,
}

impl From<[f32; 4]> for BBox {
    fn from(v: [f32; 4]) -> Self {
        BBox {
            x0: v[0],
            y0: v[1],
            x1: v[2],
            y1: v[3],
        }
    }
}

impl From<BBox> for [f32; 4] {
    fn from(b: BBox) -> Self {
        [b.x0, b.y0, b.x1, b.y1]
    }
}

impl BBox {
    /// A box from its corners.
    pub fn new(x0: f32, y0: f32, x1: f32, y1: f32) -> Self {
        BBox { x0, y0, x1, y1 }
    }

    /// A box from its centre and size.
    pub fn from_center(cx: f32, cy: f32, w: f32, h: f32) -> Self {
        BBox::new(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)
    }

    /// Width (0 for an inverted box).
    pub fn width(&self) -> f32 {
        (self.x1 - self.x0).max(0.0)
    }

    /// Height (0 for an inverted box).
    pub fn height(&self) -> f32 {
        (self.y1 - self.y0).max(0.0)
    }

    /// Area in square pixels.
    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    /// Centre point.
    pub fn center(&self) -> (f32, f32) {
        ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)
    }

    /// Intersection over union (0 when either box is empty).
    pub fn iou(&self, other: &BBox) -> f32 {
        let iw = (self.x1.min(other.x1) - self.x0.max(other.x0)).max(0.0);
        let ih = (self.y1.min(other.y1) - self.y0.max(other.y0)).max(0.0);
        let inter = iw * ih;
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }

    /// Scale x by `sx` and y by `sy` (e.g. from model input pixels to frame pixels).
    pub fn scale(&self, sx: f32, sy: f32) -> BBox {
        BBox::new(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)
    }

    /// Move by `dx`, `dy` pixels.
    pub fn translate(&self, dx: f32, dy: f32) -> BBox {
        BBox::new(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)
    }

    /// Clip to a `width` x `height` picture.
    pub fn clamp(&self, width: f32, height: f32) -> BBox {
        BBox::new(
            self.x0.clamp(0.0, width),
            self.y0.clamp(0.0, height),
            self.x1.clamp(0.0, width),
            self.y1.clamp(0.0, height),
        )
    }

    /// True when all four coordinates are finite and the box has positive area.
    pub fn is_valid(&self) -> bool {
        [self.x0, self.y0, self.x1, self.y1]
            .iter()
            .all(|v| v.is_finite())
            && self.x1 > self.x0
            && self.y1 > self.y0
    }
}

/// One detection made by a model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Class index.
    pub class: usize,
    /// Confidence in [0, 1].
    pub score: f32,
    /// Box in pixels of the picture.
    #[serde(rename = "box")]
    pub bbox: BBox,
}

/// Clip every detection's box to a `width` x `height` picture and drop the boxes left empty, as
/// the trainer, the bundle evaluation and `predict` all report them.
pub fn clip_detections(dets: Vec<Detection>, width: f32, height: f32) -> Vec<Detection> {
    dets.into_iter()
        .map(|d| Detection {
            bbox: d.bbox.clamp(width, height),
            ..d
        })
        .filter(|d| d.bbox.is_valid())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_what_is_inside() {
        let d = |x0, x1| Detection {
            class: 0,
            score: 0.5,
            bbox: BBox::new(x0, 0.0, x1, 5.0),
        };
        let got = clip_detections(vec![d(-5.0, 5.0), d(12.0, 20.0)], 10.0, 10.0);
        assert_eq!(got.len(), 1, "the box wholly outside is dropped");
        assert_eq!(got[0].bbox, BBox::new(0.0, 0.0, 5.0, 5.0));
    }

    #[test]
    fn iou_by_hand() {
        let a = BBox::new(0.0, 0.0, 10.0, 10.0);
        let b = BBox::new(5.0, 0.0, 15.0, 10.0);
        // Intersection 50, union 150.
        assert!((a.iou(&b) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BBox::new(20.0, 20.0, 30.0, 30.0)), 0.0);
        assert_eq!(a.iou(&BBox::new(3.0, 3.0, 3.0, 9.0)), 0.0);
    }

    #[test]
    fn box_serialises_as_four_numbers() {
        let d = Detection {
            class: 1,
            score: 0.5,
            bbox: BBox::new(1.0, 2.0, 3.0, 4.0),
        };
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(s, r#"{"class":1,"score":0.5,"box":[1.0,2.0,3.0,4.0]}"#);
        assert_eq!(serde_json::from_str::<Detection>(&s).unwrap(), d);
    }
}
