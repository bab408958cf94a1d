//! Non-maximum suppression: the last step between a detector's raw boxes and its answer.
//!
//! A detector proposes several overlapping boxes for one object; greedy per-class NMS keeps the
//! best-scored one and drops the others. The trainer (before evaluation) and the board (before
//! reporting) run this same code, so both see the same final detections.

use std::cmp::Ordering;

use crate::detect::Detection;

/// Descending score order with NaN last; used with a stable sort so equal scores keep input order.
fn by_score_desc(a: &Detection, b: &Detection) -> Ordering {
    match (a.score.is_nan(), b.score.is_nan()) {
        (false, false) => b.score.partial_cmp(&a.score).unwrap_or(Ordering::Equal),
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (true, true) => Ordering::Equal,
    }
}

/// Per-class greedy non-maximum suppression.
///
/// Detections are taken by score, highest first (a stable sort: equal scores keep their input
/// order; NaN scores come last); one is dropped when its IoU with an already kept detection of the
/// same class is strictly greater than `iou_threshold`. Boxes of different classes never suppress
/// each other. The result is in descending score order.
pub fn nms(mut dets: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    dets.sort_by(by_score_desc);
    let mut kept: Vec<Detection> = Vec::with_capacity(dets.len());
    for d in dets {
        let suppressed = kept
            .iter()
            .any(|k| k.class == d.class && k.bbox.iou(&d.bbox) > iou_threshold);
        if !suppressed {
            kept.push(d);
        }
    }
    kept
}

/// The usual post-processing: drop detections scored below `score_threshold` (and NaN scores),
/// run [`nms`], then keep at most `max_detections` of the best.
pub fn filter_and_nms(
    dets: Vec<Detection>,
    score_threshold: f32,
    iou_threshold: f32,
    max_detections: usize,
) -> Vec<Detection> {
    let dets: Vec<Detection> = dets
        .into_iter()
        .filter(|d| d.score >= score_threshold)
        .collect();
    let mut kept = nms(dets, iou_threshold);
    kept.truncate(max_detections);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::BBox;

    fn det(class: usize, score: f32, b: [f32; 4]) -> Detection {
        Detection {
            class,
            score,
            bbox: BBox::from(b),
        }
    }

    #[test]
    fn overlapping_same_class_keeps_the_best() {
        // IoU of these two: intersection 9x10 = 90, union 100 + 100 - 90 = 110, 0.818.
        let a = det(0, 0.6, [0.0, 0.0, 10.0, 10.0]);
        let b = det(0, 0.9, [1.0, 0.0, 11.0, 10.0]);
        let out = nms(vec![a, b], 0.5);
        assert_eq!(out, vec![b]);
    }

    #[test]
    fn different_classes_do_not_suppress_each_other() {
        let a = det(0, 0.6, [0.0, 0.0, 10.0, 10.0]);
        let b = det(1, 0.9, [0.0, 0.0, 10.0, 10.0]);
        assert_eq!(nms(vec![a, b], 0.5), vec![b, a]);
    }

    #[test]
    fn threshold_is_strict() {
        // Intersection 100, union 200: IoU exactly 0.5 (exact in f32).
        let a = det(0, 0.9, [0.0, 0.0, 10.0, 10.0]);
        let b = det(0, 0.8, [0.0, 0.0, 10.0, 20.0]);
        assert_eq!(a.bbox.iou(&b.bbox), 0.5);
        assert_eq!(nms(vec![a, b], 0.5), vec![a, b], "IoU == threshold is kept");
        assert_eq!(nms(vec![a, b], 0.49), vec![a], "IoU > threshold is dropped");
        // Identical boxes have IoU 1, never > 1: a threshold of 1 disables suppression.
        assert_eq!(nms(vec![a, a], 1.0), vec![a, a]);
        // Boxes that only touch have IoU 0: kept even with threshold 0.
        let c = det(0, 0.7, [10.0, 0.0, 20.0, 10.0]);
        assert_eq!(nms(vec![a, c], 0.0), vec![a, c]);
    }

    #[test]
    fn greedy_chain_keeps_the_third_box() {
        // a suppresses b, b would have suppressed c but b is gone, and a and c do not overlap.
        let a = det(0, 0.9, [0.0, 0.0, 10.0, 10.0]);
        let b = det(0, 0.8, [5.0, 0.0, 15.0, 10.0]); // IoU(a, b) = 50 / 150
        let c = det(0, 0.7, [10.0, 0.0, 20.0, 10.0]); // IoU(b, c) = 50 / 150, IoU(a, c) = 0
        assert_eq!(nms(vec![c, b, a], 0.3), vec![a, c]);
    }

    #[test]
    fn ties_keep_input_order_and_nan_goes_last() {
        let a = det(0, 0.5, [0.0, 0.0, 10.0, 10.0]);
        let b = det(0, 0.5, [0.5, 0.0, 10.5, 10.0]); // IoU(a, b) = 95 / 105
        let n = det(1, f32::NAN, [0.0, 0.0, 10.0, 10.0]);
        let c = det(1, 0.1, [50.0, 50.0, 60.0, 60.0]);
        // a and b tie: a came first and is kept, b is suppressed by it.
        let out = nms(vec![n, a, c, b], 0.5);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], a);
        assert_eq!(nms(vec![b, a], 0.5), vec![b]);
        assert_eq!(out[1], c);
        assert!(out[2].score.is_nan());
        // With distinguishable boxes: the tie keeps input order.
        let d = det(2, 0.5, [30.0, 30.0, 40.0, 40.0]);
        assert_eq!(nms(vec![d, a], 0.5), vec![d, a]);
        assert_eq!(nms(vec![a, d], 0.5), vec![a, d]);
    }

    #[test]
    fn filter_then_nms_then_cap() {
        let dets = vec![
            det(0, 0.95, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.90, [1.0, 1.0, 11.0, 11.0]), // suppressed by the first
            det(1, 0.80, [0.0, 0.0, 10.0, 10.0]),
            det(2, 0.70, [20.0, 20.0, 30.0, 30.0]),
            det(2, 0.20, [50.0, 50.0, 60.0, 60.0]), // below the score threshold
            det(2, 0.30, [70.0, 70.0, 80.0, 80.0]), // exactly at the threshold: kept
            det(1, f32::NAN, [90.0, 90.0, 99.0, 99.0]),
        ];
        let out = filter_and_nms(dets.clone(), 0.3, 0.5, 100);
        let scores: Vec<f32> = out.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.95, 0.80, 0.70, 0.30]);
        let out = filter_and_nms(dets.clone(), 0.3, 0.5, 2);
        assert_eq!(out, vec![dets[0], dets[2]]);
        assert!(filter_and_nms(dets, 0.99, 0.5, 10).is_empty());
    }
}
