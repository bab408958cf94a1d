//! Turning a detection head's raw outputs into boxes: the one implementation the trainer (for
//! evaluation) and the board (for every frame) share, so both read the head the same way.
//!
//! Two heads exist:
//! - `single`, the book's detector: five numbers `[class, left, right, top, bottom]` in input
//!   pixels; the class is 1 when the first number is above half the input size.
//! - `grid`: a map of `1 + C + 4` channels by `H x W` cells (stride `s` pixels): objectness logit,
//!   `C` class logits, and the box as `(tx, ty, tw, th)`: centre = cell centre + `(tx, ty) * s`,
//!   size = `exp(tw, th) * s`. A cell's score is `sigmoid(objectness) * softmax(class)`.
//!   The `centroids` variant has no box channels (`1 + C`): a detection is a cell, reported as a
//!   box of one cell around its centre.

use serde::{Deserialize, Serialize};

use crate::detect::{BBox, Detection};

/// Largest exponent accepted for box sizes (exp(6) = 403 cells): keeps a wild output finite.
const MAX_LOG_SIZE: f32 = 6.0;

/// How a grid head's output is read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GridSpec {
    /// Number of classes.
    pub classes: usize,
    /// Pixels of input per cell.
    pub stride: usize,
    /// True when the head predicts box sizes; false for the centroids variant.
    pub boxes: bool,
}

impl GridSpec {
    /// Channels per cell.
    pub fn channels(&self) -> usize {
        1 + self.classes + if self.boxes { 4 } else { 0 }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Every cell whose score reaches `score_threshold`, as detections in input pixels (no NMS).
///
/// `raw` is one image's output, channel-major: `[channels, height, width]`.
pub fn decode_grid(
    raw: &[f32],
    spec: &GridSpec,
    height: usize,
    width: usize,
    score_threshold: f32,
) -> Vec<Detection> {
    let cells = height * width;
    assert_eq!(
        raw.len(),
        spec.channels() * cells,
        "grid output of the wrong size"
    );
    let at = |c: usize, cell: usize| raw[c * cells + cell];
    let s = spec.stride as f32;
    let mut out = Vec::new();
    for cell in 0..cells {
        let obj = sigmoid(at(0, cell));
        if obj < score_threshold {
            continue;
        }
        // Softmax over the class logits.
        let logits: Vec<f32> = (0..spec.classes).map(|k| at(1 + k, cell)).collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let (class, p) = exps
            .iter()
            .enumerate()
            .fold((0, 0.0f32), |b, (k, &e)| if e > b.1 { (k, e) } else { b });
        let score = obj * p / sum;
        if score < score_threshold || !score.is_finite() {
            continue;
        }
        let (row, col) = (cell / width, cell % width);
        let (cx, cy) = ((col as f32 + 0.5) * s, (row as f32 + 0.5) * s);
        let bbox = if spec.boxes {
            let b = 1 + spec.classes;
            let (tx, ty) = (at(b, cell), at(b + 1, cell));
            let tw = at(b + 2, cell).clamp(-MAX_LOG_SIZE, MAX_LOG_SIZE);
            let th = at(b + 3, cell).clamp(-MAX_LOG_SIZE, MAX_LOG_SIZE);
            BBox::from_center(cx + tx * s, cy + ty * s, tw.exp() * s, th.exp() * s)
        } else {
            BBox::from_center(cx, cy, s, s)
        };
        if bbox.is_valid() {
            out.push(Detection { class, score, bbox });
        }
    }
    out
}

/// The book's single-object output `[class, left, right, top, bottom]` (input pixels) as one
/// detection: class 1 when the class number is above half of `size` (the input side), else 0.
/// The score says how far the class number is from that threshold (1 at 0 or at `size`).
pub fn decode_single(raw: &[f32; 5], size: f32) -> Detection {
    let half = size / 2.0;
    let class = usize::from(raw[0] > half);
    let score = ((raw[0] - half).abs() / half).clamp(0.0, 1.0);
    let (l, r, t, b) = (raw[1], raw[2], raw[3], raw[4]);
    Detection {
        class,
        score,
        bbox: BBox::new(l.min(r), t.min(b), l.max(r), t.max(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2x3 grid, 2 classes, stride 10: one confident cell with a known box.
    #[test]
    fn grid_cell_decodes_to_its_box() {
        let spec = GridSpec {
            classes: 2,
            stride: 10,
            boxes: true,
        };
        let (h, w) = (2, 3);
        let cells = h * w;
        let mut raw = vec![-20.0f32; spec.channels() * cells];
        // Cell (row 1, col 2): centre (25, 15).
        let cell = w + 2;
        raw[cell] = 20.0; // objectness ~1
        raw[cells + cell] = 0.0; // class 0 logit
        raw[2 * cells + cell] = 20.0; // class 1 logit: wins
        raw[3 * cells + cell] = 0.5; // tx: centre x 25 + 5 = 30
        raw[4 * cells + cell] = -0.5; // ty: centre y 15 - 5 = 10
        raw[5 * cells + cell] = 2f32.ln(); // width 20
        raw[6 * cells + cell] = 0.0; // height 10
        // Other cells: class logits 0, box 0, objectness -20: below threshold.
        for c in 1..spec.channels() {
            for k in 0..cells {
                if k != cell {
                    raw[c * cells + k] = 0.0;
                }
            }
        }
        let d = decode_grid(&raw, &spec, h, w, 0.5);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class, 1);
        assert!(d[0].score > 0.99);
        let b = d[0].bbox;
        for (got, want) in [(b.x0, 20.0), (b.y0, 5.0), (b.x1, 40.0), (b.y1, 15.0)] {
            assert!((got - want).abs() < 1e-4, "{b:?}");
        }
    }

    #[test]
    fn centroids_are_one_cell_boxes() {
        let spec = GridSpec {
            classes: 1,
            stride: 8,
            boxes: false,
        };
        // 1x2 grid: the second cell fires.
        let raw = vec![-10.0, 10.0, 0.0, 0.0];
        let d = decode_grid(&raw, &spec, 1, 2, 0.5);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].bbox, BBox::new(8.0, 0.0, 16.0, 8.0));
    }

    #[test]
    fn single_thresholds_class_at_half_size() {
        let d = decode_single(&[200.0, 10.0, 50.0, 20.0, 60.0], 224.0);
        assert_eq!(d.class, 1);
        assert_eq!(d.bbox, BBox::new(10.0, 20.0, 50.0, 60.0));
        let d = decode_single(&[100.0, 50.0, 10.0, 20.0, 60.0], 224.0);
        assert_eq!(d.class, 0);
        // Left and right swapped by the model still make a proper box.
        assert_eq!(d.bbox, BBox::new(10.0, 20.0, 50.0, 60.0));
    }
}
