//! The detectors' losses and training targets, as plain burn code on tensors.
//!
//! - [`book_loss`]: the book's custom loss: mean squared error between the five outputs and
//!   `[class * size, left, right, top, bottom]`, the class target scaled by the image size so that
//!   both terms weigh alike.
//! - [`grid_loss`]: focal loss on objectness (normalised by the number of positive cells),
//!   cross-entropy on the classes of positive cells, and for boxes L1 on `(tx, ty, tw, th)` plus
//!   generalised IoU. Each part is a function with hand-checked unit tests.

use crate::data::annotated::Object;
use burn::tensor::activation::{log_softmax, sigmoid};
use burn::tensor::{Device, Int, Tensor, TensorData};
use kestrel_shared::decode::GridSpec;
use serde::Serialize;

/// Largest box exponent used in the loss (as in decoding): exp(6) cells.
const MAX_LOG_SIZE: f32 = 6.0;
/// Focal loss balance for positives.
pub const FOCAL_ALPHA: f32 = 0.25;
/// Weight of the GIoU term.
pub const GIOU_WEIGHT: f32 = 2.0;

/// The book's target for one picture's object: `[class * size, left, right, top, bottom]`.
pub fn book_target(object: &Object, size: f32) -> [f32; 5] {
    let b = object.bbox;
    [object.class as f32 * size, b.x0, b.x1, b.y0, b.y1]
}

/// The book's loss: mean squared error over the five numbers of every item.
pub fn book_loss(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    (pred - target).powi_scalar(2).mean()
}

/// Focal loss (gamma 2) of each logit `z` against a 0/1 target `t`, not reduced.
pub fn focal(z: Tensor<1>, t: Tensor<1>, alpha: f32) -> Tensor<1> {
    let p = sigmoid(z.clone());
    // Binary cross-entropy with logits, written to stay finite for large |z|.
    let ce = z.clone().clamp_min(0.0) - z.clone() * t.clone() + z.abs().neg().exp().log1p();
    let p_t = p.clone() * t.clone() + (p.neg() + 1.0) * (t.clone().neg() + 1.0);
    let a_t = t.clone() * alpha + (t.neg() + 1.0) * (1.0 - alpha);
    let m = p_t.neg() + 1.0;
    a_t * m.clone() * m * ce
}

/// `1 - GIoU` of predicted and target boxes, both `[P, 4]` as `(tx, ty, tw, th)` relative to the
/// same cell (centre offset and log size, in cells), not reduced.
pub fn giou_loss(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    iou_giou(pred, target).1.neg() + 1.0
}

/// IoU and generalised IoU of predicted and target boxes (as in [`giou_loss`]), not reduced.
pub fn iou_giou(pred: Tensor<2>, target: Tensor<2>) -> (Tensor<1>, Tensor<1>) {
    let corners = |b: Tensor<2>| {
        let [p, _] = b.dims();
        let cx = b.clone().narrow(1, 0, 1).reshape([p]);
        let cy = b.clone().narrow(1, 1, 1).reshape([p]);
        let w = b
            .clone()
            .narrow(1, 2, 1)
            .reshape([p])
            .clamp(-MAX_LOG_SIZE, MAX_LOG_SIZE)
            .exp();
        let h = b
            .narrow(1, 3, 1)
            .reshape([p])
            .clamp(-MAX_LOG_SIZE, MAX_LOG_SIZE)
            .exp();
        let area = w.clone() * h.clone();
        (
            cx.clone() - w.clone() / 2.0,
            cy.clone() - h.clone() / 2.0,
            cx + w / 2.0,
            cy + h / 2.0,
            area,
        )
    };
    let (ax0, ay0, ax1, ay1, aa) = corners(pred);
    let (bx0, by0, bx1, by1, ba) = corners(target);
    let iw = (ax1.clone().min_pair(bx1.clone()) - ax0.clone().max_pair(bx0.clone())).clamp_min(0.0);
    let ih = (ay1.clone().min_pair(by1.clone()) - ay0.clone().max_pair(by0.clone())).clamp_min(0.0);
    let inter = iw * ih;
    let union = aa + ba - inter.clone();
    let cw = ax1.max_pair(bx1) - ax0.min_pair(bx0);
    let ch = ay1.max_pair(by1) - ay0.min_pair(by0);
    let c = cw * ch + 1e-9;
    let iou = inter / (union.clone() + 1e-9);
    let giou = iou.clone() - (c.clone() - union) / c;
    (iou, giou)
}

/// Quality focal loss (Li et al., GFL) of logits `z` against soft targets `t` in [0, 1]:
/// `|t - sigmoid(z)|^2 * BCE(z, t)`, not reduced. With `t` = the IoU of a cell's predicted box,
/// the score learns to rank boxes by how well they fit, which NMS and AP@0.5:0.95 reward.
pub fn quality_focal(z: Tensor<1>, t: Tensor<1>) -> Tensor<1> {
    let p = sigmoid(z.clone());
    let ce = z.clone().clamp_min(0.0) - z.clone() * t.clone() + z.abs().neg().exp().log1p();
    let d = (t - p).abs();
    d.clone() * d * ce
}

/// How the grid head's objectness is trained.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Objectness {
    /// Focal loss against 0/1 (RetinaNet): every positive cell aims at a score of 1.
    #[default]
    Focal,
    /// Quality focal loss against the IoU of the cell's predicted box (boxes only; centroids use
    /// focal): the best-fitting box gets the highest score.
    Iou,
}

/// Training targets of a batch for a grid head.
#[derive(Debug, Clone, Default)]
pub struct GridTargets {
    /// Objectness target per cell, `N * H * W` in row-major (image, row, column) order.
    pub objectness: Vec<f32>,
    /// Flat indices of the positive cells.
    pub positives: Vec<i64>,
    /// Class of each positive cell.
    pub classes: Vec<i64>,
    /// `(tx, ty, tw, th)` of each positive cell's object (4 per positive).
    pub boxes: Vec<f32>,
}

/// The cells responsible for `objects` (boxes in input pixels) on an `h x w` grid: every cell
/// whose centre is less than one stride from the object's centre in both directions (one to four
/// cells per object); a cell claimed twice goes to the nearer centre. Returns
/// `(cell, class, [tx, ty, tw, th])`.
pub fn assign(
    objects: &[Object],
    spec: &GridSpec,
    h: usize,
    w: usize,
) -> Vec<(usize, usize, [f32; 4])> {
    let s = spec.stride as f32;
    let mut best: Vec<Option<(f32, usize, [f32; 4])>> = vec![None; h * w];
    for o in objects {
        let (ocx, ocy) = o.bbox.center();
        let (bw, bh) = (o.bbox.width().max(1.0), o.bbox.height().max(1.0));
        for (row, slot_row) in best.chunks_mut(w).enumerate() {
            let cy = (row as f32 + 0.5) * s;
            if (cy - ocy).abs() >= s {
                continue;
            }
            for (col, slot) in slot_row.iter_mut().enumerate() {
                let cx = (col as f32 + 0.5) * s;
                if (cx - ocx).abs() >= s {
                    continue;
                }
                let d = (cx - ocx).powi(2) + (cy - ocy).powi(2);
                if slot.is_none_or(|(bd, _, _)| d < bd) {
                    let t = [(ocx - cx) / s, (ocy - cy) / s, (bw / s).ln(), (bh / s).ln()];
                    *slot = Some((d, o.class, t));
                }
            }
        }
    }
    best.into_iter()
        .enumerate()
        .filter_map(|(cell, b)| b.map(|(_, class, t)| (cell, class, t)))
        .collect()
}

impl GridTargets {
    /// Targets for a batch: `objects[i]` are image i's boxes in input pixels.
    pub fn build(objects: &[&[Object]], spec: &GridSpec, h: usize, w: usize) -> Self {
        let mut t = GridTargets {
            objectness: vec![0.0; objects.len() * h * w],
            ..Default::default()
        };
        for (i, objs) in objects.iter().enumerate() {
            for (cell, class, b) in assign(objs, spec, h, w) {
                let flat = i * h * w + cell;
                t.objectness[flat] = 1.0;
                t.positives.push(flat as i64);
                t.classes.push(class as i64);
                t.boxes.extend_from_slice(&b);
            }
        }
        t
    }
}

/// The parts of a grid loss (each a scalar tensor), for logging.
pub struct GridLoss {
    /// Sum of the weighted parts: what is minimised.
    pub total: Tensor<1>,
    /// Focal objectness loss per positive cell.
    pub objectness: Tensor<1>,
    /// Class cross-entropy over positive cells.
    pub class: Tensor<1>,
    /// L1 on box parameters plus weighted `1 - GIoU` over positive cells.
    pub boxes: Tensor<1>,
}

/// Loss parts read back as numbers.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GridLossValues {
    /// Total.
    pub total: f64,
    /// Objectness part.
    pub objectness: f64,
    /// Class part.
    pub class: f64,
    /// Box part.
    pub boxes: f64,
}

impl GridLoss {
    /// The parts as numbers (reads the device).
    pub fn values(&self) -> GridLossValues {
        let v = |t: &Tensor<1>| t.clone().into_scalar::<f32>() as f64;
        GridLossValues {
            total: v(&self.total),
            objectness: v(&self.objectness),
            class: v(&self.class),
            boxes: v(&self.boxes),
        }
    }
}

/// The grid head's loss for raw outputs `[N, channels, H, W]` against `targets`.
pub fn grid_loss(
    raw: Tensor<4>,
    targets: &GridTargets,
    spec: &GridSpec,
    objectness: Objectness,
    device: &Device,
) -> GridLoss {
    let [n, k, h, w] = raw.dims();
    let flat: Tensor<2> = raw.permute([0, 2, 3, 1]).reshape([n * h * w, k]);
    let obj_t = Tensor::<1>::from_data(
        TensorData::new(targets.objectness.clone(), [n * h * w]),
        device,
    );
    let obj_logits: Tensor<1> = flat.clone().narrow(1, 0, 1).reshape([n * h * w]);
    let p = targets.positives.len();
    let norm = p.max(1) as f32;
    let kind = objectness;
    let zero = || Tensor::<1>::zeros([1], device);
    if p == 0 {
        let objectness = match kind {
            Objectness::Focal => focal(obj_logits, obj_t, FOCAL_ALPHA).sum(),
            Objectness::Iou => quality_focal(obj_logits, obj_t.zeros_like()).sum(),
        };
        return GridLoss {
            total: objectness.clone(),
            objectness,
            class: zero(),
            boxes: zero(),
        };
    }
    let idx = Tensor::<1, Int>::from_data(TensorData::new(targets.positives.clone(), [p]), device);
    let pos = flat.select(0, idx.clone());
    let c = spec.classes;
    let mut one_hot = vec![0.0f32; p * c];
    for (i, &k) in targets.classes.iter().enumerate() {
        one_hot[i * c + k as usize] = 1.0;
    }
    let one_hot = Tensor::<2>::from_data(TensorData::new(one_hot, [p, c]), device);
    let class = (log_softmax(pos.clone().narrow(1, 1, c), 1) * one_hot)
        .sum()
        .neg()
        / p as f32;
    let (boxes, objectness) = if spec.boxes {
        let pred = pos.narrow(1, 1 + c, 4);
        let target = Tensor::<2>::from_data(TensorData::new(targets.boxes.clone(), [p, 4]), device);
        let l1 = (pred.clone() - target.clone()).abs().sum() / (4 * p) as f32;
        let (iou, giou) = iou_giou(pred, target);
        let objectness = match kind {
            Objectness::Focal => focal(obj_logits, obj_t, FOCAL_ALPHA).sum() / norm,
            Objectness::Iou => {
                // Soft targets: 0 everywhere, the (constant) IoU of the predicted box at positives.
                let t = obj_t.zeros_like().select_assign(
                    0,
                    idx,
                    iou.detach().clamp(0.0, 1.0),
                    burn::tensor::IndexingUpdateOp::Assign,
                );
                quality_focal(obj_logits, t).sum() / norm
            }
        };
        (l1 + (giou.neg() + 1.0).mean() * GIOU_WEIGHT, objectness)
    } else {
        (zero(), focal(obj_logits, obj_t, FOCAL_ALPHA).sum() / norm)
    };
    GridLoss {
        total: objectness.clone() + class.clone() + boxes.clone(),
        objectness,
        class,
        boxes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_shared::BBox;

    fn dev() -> Device {
        Device::flex()
    }

    fn v1(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn focal_by_hand() {
        let d = dev();
        let z = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 0.0, 100.0, -100.0], [4]), &d);
        let t = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 0.0, 1.0, 1.0], [4]), &d);
        let got = v1(focal(z, t, 0.25));
        let ln2 = std::f32::consts::LN_2;
        // z = 0: p = 0.5, (1 - p_t)^2 = 0.25, CE = ln 2; alpha 0.25 for a positive, 0.75 for a negative.
        assert!((got[0] - 0.25 * 0.25 * ln2).abs() < 1e-6, "{got:?}");
        assert!((got[1] - 0.75 * 0.25 * ln2).abs() < 1e-6, "{got:?}");
        // A confident right answer costs nothing; a confident wrong one 0.25 * 1 * 100, finite.
        assert!(got[2].abs() < 1e-6);
        assert!((got[3] - 25.0).abs() < 1e-3, "{got:?}");
    }

    #[test]
    fn quality_focal_by_hand() {
        let d = dev();
        let z = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 0.0, 0.0, 20.0], [4]), &d);
        let t = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, 1.0, 0.0, 1.0], [4]), &d);
        let got = v1(quality_focal(z, t));
        let ln2 = std::f32::consts::LN_2;
        // p = 0.5 meets t = 0.5: nothing to learn. Against 1 or 0: 0.25 * ln 2. p ~ 1 vs 1: ~0.
        assert!(got[0].abs() < 1e-7, "{got:?}");
        assert!((got[1] - 0.25 * ln2).abs() < 1e-6, "{got:?}");
        assert!((got[2] - 0.25 * ln2).abs() < 1e-6, "{got:?}");
        assert!(got[3].abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn giou_by_hand() {
        let d = dev();
        let two = 2f32.ln();
        // Same box: loss 0. Disjoint 2x2 boxes 3 apart: IoU 0, hull 5x2 = 10, union 8,
        // GIoU = -0.2, loss 1.2. Half-overlapping: inter 2, union 6, hull 3x2: GIoU = 1/3, loss 2/3.
        let pred = Tensor::<2>::from_data(
            TensorData::new(
                vec![0.0, 0.0, two, two, 0.0, 0.0, two, two, 0.0, 0.0, two, two],
                [3, 4],
            ),
            &d,
        );
        let target = Tensor::<2>::from_data(
            TensorData::new(
                vec![0.0, 0.0, two, two, 3.0, 0.0, two, two, 1.0, 0.0, two, two],
                [3, 4],
            ),
            &d,
        );
        let got = v1(giou_loss(pred, target));
        assert!(got[0].abs() < 1e-5, "{got:?}");
        assert!((got[1] - 1.2).abs() < 1e-5, "{got:?}");
        assert!((got[2] - 2.0 / 3.0).abs() < 1e-5, "{got:?}");
    }

    #[test]
    fn book_loss_by_hand() {
        let d = dev();
        let o = Object {
            class: 1,
            bbox: BBox::new(10.0, 20.0, 50.0, 60.0),
        };
        let t = book_target(&o, 224.0);
        assert_eq!(t, [224.0, 10.0, 50.0, 20.0, 60.0]);
        let target = Tensor::<2>::from_data(TensorData::new(t.to_vec(), [1, 5]), &d);
        // Off by 2 on the class number and by 1 on the left edge: (4 + 1) / 5 = 1.
        let pred = Tensor::<2>::from_data(
            TensorData::new(vec![222.0, 11.0, 50.0, 20.0, 60.0], [1, 5]),
            &d,
        );
        let got = book_loss(pred, target).into_scalar::<f32>();
        assert!((got - 1.0).abs() < 1e-6, "{got}");
    }

    fn spec() -> GridSpec {
        GridSpec {
            classes: 2,
            stride: 16,
            boxes: true,
        }
    }

    #[test]
    fn assignment_takes_the_cells_nearest_the_centre() {
        // Centre (32, 32) lies between cell centres 24 and 40: four cells; 32x16 box.
        let o = Object {
            class: 1,
            bbox: BBox::from_center(32.0, 32.0, 32.0, 16.0),
        };
        let a = assign(&[o], &spec(), 4, 4);
        let cells: Vec<usize> = a.iter().map(|x| x.0).collect();
        assert_eq!(cells, vec![5, 6, 9, 10]);
        // Cell 5 (centre 24, 24): offset +0.5 cell each way, log sizes ln 2 and 0.
        let t = a[0].2;
        assert!((t[0] - 0.5).abs() < 1e-6 && (t[1] - 0.5).abs() < 1e-6);
        assert!((t[2] - 2f32.ln()).abs() < 1e-6 && t[3].abs() < 1e-6);
        assert!(a.iter().all(|x| x.1 == 1));
        // Centred exactly on a cell centre: that cell only.
        let o = Object {
            class: 0,
            bbox: BBox::from_center(40.0, 40.0, 16.0, 16.0),
        };
        assert_eq!(
            assign(&[o], &spec(), 4, 4)
                .iter()
                .map(|x| x.0)
                .collect::<Vec<_>>(),
            vec![10]
        );
    }

    #[test]
    fn a_shared_cell_goes_to_the_nearer_centre() {
        let a = Object {
            class: 0,
            bbox: BBox::from_center(30.0, 24.0, 8.0, 8.0),
        };
        let b = Object {
            class: 1,
            bbox: BBox::from_center(42.0, 24.0, 8.0, 8.0),
        };
        // Cell (row 1, col 2) has centre (40, 24): 2 px from b, 10 px from a.
        let got = assign(&[a, b], &spec(), 3, 4);
        let cell6 = got.iter().find(|x| x.0 == 6).unwrap();
        assert_eq!(cell6.1, 1);
        let cell5 = got.iter().find(|x| x.0 == 5).unwrap();
        assert_eq!(cell5.1, 0);
    }

    #[test]
    fn grid_loss_is_small_for_the_right_answer_and_large_otherwise() {
        let d = dev();
        let spec = spec();
        let (h, w) = (3, 3);
        let o = Object {
            class: 1,
            bbox: BBox::from_center(24.0, 24.0, 16.0, 32.0),
        };
        let objs: Vec<&[Object]> = vec![std::slice::from_ref(&o)];
        let t = GridTargets::build(&objs, &spec, h, w);
        assert_eq!(t.positives, vec![4]);
        // A perfect output: objectness +20 on the centre cell, -20 elsewhere, class 1, exact box.
        let k = spec.channels();
        let mut raw = vec![0.0f32; k * h * w];
        for (cell, v) in raw.iter_mut().take(h * w).enumerate() {
            *v = if cell == 4 { 20.0 } else { -20.0 };
        }
        raw[2 * h * w + 4] = 20.0;
        raw[5 * h * w + 4] = 0.0;
        raw[6 * h * w + 4] = 2f32.ln();
        let good = Tensor::<4>::from_data(TensorData::new(raw.clone(), [1, k, h, w]), &d);
        let g = grid_loss(good.clone(), &t, &spec, Objectness::Focal, &d).values();
        let gi = grid_loss(good, &t, &spec, Objectness::Iou, &d).values();
        assert!(gi.total < 1e-4, "{gi:?}");
        assert!(g.total < 1e-4, "{g:?}");
        // Wrong class and a box twice too wide: class and box terms grow, objectness does not.
        raw[h * w + 4] = 20.0;
        raw[2 * h * w + 4] = -20.0;
        raw[5 * h * w + 4] = 2f32.ln();
        let bad = Tensor::<4>::from_data(TensorData::new(raw, [1, k, h, w]), &d);
        let b = grid_loss(bad.clone(), &t, &spec, Objectness::Focal, &d).values();
        // IoU-aware: the confident score (p = 1) now aims at the box's IoU 0.5:
        // |0.5 - 1|^2 * BCE(20, 0.5) = 0.25 * (20 - 10 + ln(1 + e^-20)) = 2.5, over 1 positive.
        let bi = grid_loss(bad, &t, &spec, Objectness::Iou, &d).values();
        assert!((bi.objectness - 2.5).abs() < 1e-3, "{bi:?}");
        assert!((bi.boxes - b.boxes).abs() < 1e-6);
        assert!(b.class > 39.0, "{b:?}");
        // L1: |ln 2| / 4 = 0.173; GIoU of a 2x2 box around a 1x2 one: IoU 0.5, hull = union, loss 0.5.
        assert!(
            (b.boxes - (2f64.ln() / 4.0 + GIOU_WEIGHT as f64 * 0.5)).abs() < 1e-4,
            "{b:?}"
        );
        assert!(b.objectness < 1e-4);
    }
}
