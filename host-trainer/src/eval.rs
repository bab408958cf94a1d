//! COCO-style detection evaluation (mAP@0.5, mAP@0.5:0.95), the numbers detection papers report.
//!
//! This is pycocotools' `COCOeval` (iouType `bbox`) for Kestrel's case: one area range ("all"), at
//! most [`MAX_DETECTIONS`] detections per image and class. Step by step, as pycocotools does it:
//!
//! - per image and class, detections are sorted by score (descending, stable) and cut to
//!   [`MAX_DETECTIONS`]; each one in turn is matched to the still unmatched ground-truth box with
//!   the highest IoU, if that IoU is at least the threshold (on equal IoUs the later box wins);
//! - IoU thresholds are 0.50:0.05:0.95 (numpy's `linspace`, so the same doubles);
//! - per class, the detections of all images are sorted by score (descending, stable: ties keep
//!   image order), precision is made monotone (running max from the right) and sampled at the
//!   101 recall points 0:0.01:1 (first detection whose recall reaches the point; 0 where recall
//!   never reaches it); AP is the mean of those 101 values;
//! - classes without ground truth have no AP (pycocotools' -1) and are left out of the means;
//! - ignored regions ([`EvalInput::ignored`]: COCO crowds, VOC `difficult` objects): a detection
//!   that matches no ground-truth box at a threshold but overlaps an ignored region of its class by
//!   at least that IoU is left out at that threshold, neither true nor false positive, as
//!   pycocotools does with crowds (which it matches by intersection over the detection's area;
//!   Kestrel uses IoU for both kinds, as the VOC devkit does for `difficult`).
//!
//! IoU is computed in f64 from the box as COCO JSON carries it (`[x, y, w, h]`, no +1), exactly as
//! pycocotools' `maskUtils.iou` does, so the two agree to rounding of the final means (the e2e test
//! `coco_eval` checks this against pycocotools itself).
//!
//! The COCO JSON writers ([`coco_ground_truth_json`], [`coco_results_json`]) number images from 1
//! (image id = index + 1) and categories from 1 (category id = class + 1), because COCO tools treat
//! id 0 as "no match".

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use thiserror::Error;

use kestrel_shared::{BBox, Detection};

use crate::data::annotated::{AnnotatedImage, Object};

/// Most detections per image and class that count (COCO's `maxDets` = 100); lower-scored ones are
/// ignored, like pycocotools does.
pub const MAX_DETECTIONS: usize = 100;

/// Number of IoU thresholds (0.50, 0.55, ..., 0.95).
const IOU_STEPS: usize = 10;
/// Index of the 0.5 threshold.
const T50: usize = 0;
/// Index of the 0.75 threshold.
const T75: usize = 5;
/// Number of recall points (0.00, 0.01, ..., 1.00).
const RECALL_STEPS: usize = 101;

/// numpy's `linspace(start, stop, num)` bit for bit: `i * step + start`, the last one `stop`.
fn linspace<const N: usize>(start: f64, stop: f64) -> [f64; N] {
    let step = (stop - start) / (N - 1) as f64;
    let mut out = [0.0; N];
    for (i, v) in out.iter_mut().enumerate() {
        *v = i as f64 * step + start;
    }
    out[N - 1] = stop;
    out
}

/// The IoU thresholds 0.50:0.05:0.95, the same doubles as pycocotools' `Params.iouThrs`.
pub fn iou_thresholds() -> [f64; IOU_STEPS] {
    linspace(0.5, 0.95)
}

/// The recall points 0:0.01:1, the same doubles as pycocotools' `Params.recThrs`.
pub fn recall_thresholds() -> [f64; RECALL_STEPS] {
    linspace(0.0, 1.0)
}

/// What to evaluate: ground truth and detections per image (same index = same image).
#[derive(Debug, Clone, Copy)]
pub struct EvalInput<'a> {
    /// Ground-truth objects of each image.
    pub ground_truth: &'a [Vec<Object>],
    /// Regions to ignore in each image (crowds, `difficult` objects); empty when there are none.
    pub ignored: &'a [Vec<Object>],
    /// The model's detections on each image (already post-processed, e.g. by NMS).
    pub detections: &'a [Vec<Detection>],
    /// Number of classes; every class index must be below it.
    pub classes: usize,
}

/// Why an evaluation could not be made.
#[derive(Debug, Error, PartialEq)]
pub enum EvalError {
    /// The ignored regions do not describe the same images as the ground truth.
    #[error("{ground_truth} images of ground truth but {ignored} of ignored regions")]
    IgnoredCount {
        /// Images of ground truth.
        ground_truth: usize,
        /// Images of ignored regions.
        ignored: usize,
    },
    /// The two lists do not describe the same images.
    #[error("{ground_truth} images of ground truth but {detections} of detections")]
    ImageCount {
        /// Images of ground truth.
        ground_truth: usize,
        /// Images of detections.
        detections: usize,
    },
    /// A ground-truth object has a class index out of range.
    #[error("image {image}: ground-truth class {class} out of range ({classes} classes)")]
    GroundTruthClass {
        /// Image index.
        image: usize,
        /// The class found.
        class: usize,
        /// Number of classes.
        classes: usize,
    },
    /// A detection has a class index out of range.
    #[error("image {image}: detection class {class} out of range ({classes} classes)")]
    DetectionClass {
        /// Image index.
        image: usize,
        /// The class found.
        class: usize,
        /// Number of classes.
        classes: usize,
    },
    /// A detection's score is NaN, so it cannot be ranked.
    #[error("image {image}: detection with a NaN score")]
    NanScore {
        /// Image index.
        image: usize,
    },
    /// No ground truth at all: no class has an AP, so there is no mean.
    #[error("no ground-truth object in any image: nothing to evaluate against")]
    NoGroundTruth,
}

/// Metrics of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAp {
    /// Class index.
    pub class: usize,
    /// Ground-truth objects of this class.
    pub ground_truth: usize,
    /// AP at IoU 0.5 (`None` without ground truth, pycocotools' -1).
    pub ap50: Option<f64>,
    /// AP at IoU 0.75.
    pub ap75: Option<f64>,
    /// AP averaged over IoU 0.50:0.05:0.95.
    pub ap50_95: Option<f64>,
    /// Precision at IoU 0.5 of the detections scored at least the score threshold (0 if none).
    pub precision: f64,
    /// Recall at IoU 0.5 of the detections scored at least the score threshold (0 without
    /// ground truth).
    pub recall: f64,
}

/// The result of [`evaluate`]; serialises into a run's `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionMetrics {
    /// Mean AP at IoU 0.5 over the classes that have ground truth (COCO `stats[1]`).
    pub map50: f64,
    /// Mean AP at IoU 0.75 (COCO `stats[2]`).
    pub map75: f64,
    /// Mean AP over IoU 0.50:0.05:0.95 (COCO `stats[0]`, "the" COCO mAP).
    pub map50_95: f64,
    /// Score threshold used for `precision` and `recall`.
    pub score_threshold: f32,
    /// Precision at IoU 0.5 over all classes, counting detections scored at least
    /// `score_threshold` (0 when there is none).
    pub precision: f64,
    /// Recall at IoU 0.5 over all classes, same detections.
    pub recall: f64,
    /// Images evaluated.
    pub images: usize,
    /// Ground-truth objects, all classes.
    pub ground_truth: usize,
    /// Detections evaluated, all scores (after the [`MAX_DETECTIONS`] cap).
    pub detections: usize,
    /// Per-class metrics, index = class.
    pub per_class: Vec<ClassAp>,
    /// Precision-recall curve of each class at IoU 0.5 (index = class), for plotting: the 101
    /// `(recall, interpolated precision)` points whose mean is the class's AP50. Empty for a
    /// class without ground truth.
    pub pr_curves: Vec<Vec<(f64, f64)>>,
    /// F1 at IoU 0.5 of each class (index = class) against the score threshold, at
    /// [`f1_thresholds`]; empty for a class without ground truth. Where it peaks is the threshold
    /// to deploy with.
    #[serde(default)]
    pub f1_curves: Vec<Vec<f64>>,
    /// The same over all classes together.
    #[serde(default)]
    pub f1_all: Vec<f64>,
    /// Confusion matrix at IoU 0.5 of the detections scored at least `score_threshold`, as
    /// Ultralytics draws it: rows are the true class and then `background` (detections on no
    /// object), columns the predicted class and then `background` (objects nothing found).
    /// Detections are matched to objects whatever their class, best IoU first.
    #[serde(default)]
    pub confusion: Vec<Vec<usize>>,
}

/// Score thresholds of the F1 curves: 0.00, 0.01, ..., 1.00.
pub fn f1_thresholds() -> [f64; RECALL_STEPS] {
    linspace(0.0, 1.0)
}

/// F1 from true positives, detections kept and objects (0 when undefined).
fn f1(tp: usize, kept: usize, objects: usize) -> f64 {
    if tp == 0 {
        return 0.0;
    }
    let (p, r) = (tp as f64 / kept as f64, tp as f64 / objects as f64);
    2.0 * p * r / (p + r)
}

/// The confusion matrix of [`DetectionMetrics::confusion`].
fn confusion(input: &EvalInput, score_threshold: f32) -> Vec<Vec<usize>> {
    let bg = input.classes;
    let mut m = vec![vec![0usize; bg + 1]; bg + 1];
    for (k, (gts, dets)) in input.ground_truth.iter().zip(input.detections).enumerate() {
        let ignored = input.ignored.get(k).map_or(&[][..], Vec::as_slice);
        let dets: Vec<&Detection> = dets
            .iter()
            .filter(|d| d.score >= score_threshold)
            .filter(|d| !ignored.iter().any(|r| coco_iou(&d.bbox, &r.bbox) >= 0.5))
            .collect();
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (g, o) in gts.iter().enumerate() {
            for (d, det) in dets.iter().enumerate() {
                let v = coco_iou(&det.bbox, &o.bbox);
                if v >= 0.5 {
                    pairs.push((v, g, d));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut g_used, mut d_used) = (vec![false; gts.len()], vec![false; dets.len()]);
        for (_, g, d) in pairs {
            if !g_used[g] && !d_used[d] {
                g_used[g] = true;
                d_used[d] = true;
                m[gts[g].class][dets[d].class] += 1;
            }
        }
        for (o, _) in gts.iter().zip(&g_used).filter(|(_, used)| !**used) {
            m[o.class][bg] += 1;
        }
        for (det, _) in dets.iter().zip(&d_used).filter(|(_, used)| !**used) {
            m[bg][det.class] += 1;
        }
    }
    m
}

/// The book's single-object scores: mean IoU of each picture's first detection with its first
/// object, and the share whose class is right (pictures lacking either are left out).
pub fn single_object_scores(
    ground_truth: &[Vec<Object>],
    detections: &[Vec<Detection>],
) -> (f64, f64) {
    let pairs: Vec<(&Object, &Detection)> = ground_truth
        .iter()
        .zip(detections)
        .filter_map(|(o, d)| Some((o.first()?, d.first()?)))
        .collect();
    let n = pairs.len().max(1) as f64;
    let iou = pairs
        .iter()
        .map(|(o, d)| o.bbox.iou(&d.bbox) as f64)
        .sum::<f64>()
        / n;
    let right = pairs.iter().filter(|(o, d)| o.class == d.class).count() as f64 / n;
    (iou, right)
}

/// A box as COCO JSON carries it, `[x, y, w, h]` in f64; `x + w` gives back `x1` exactly.
pub fn coco_bbox(b: &BBox) -> [f64; 4] {
    let (x0, y0) = (b.x0 as f64, b.y0 as f64);
    [x0, y0, b.x1 as f64 - x0, b.y1 as f64 - y0]
}

/// IoU of a detection and a ground-truth box, as pycocotools' `bbIou` computes it (f64, xywh).
fn coco_iou(dt: &BBox, gt: &BBox) -> f64 {
    let [dx, dy, dw, dh] = coco_bbox(dt);
    let [gx, gy, gw, gh] = coco_bbox(gt);
    let da = dw * dh;
    let ga = gw * gh;
    let w = (dw + dx).min(gw + gx) - dx.max(gx);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (dh + dy).min(gh + gy) - dy.max(gy);
    if h <= 0.0 {
        return 0.0;
    }
    let i = w * h;
    i / (da + ga - i)
}

/// Descending score, for stable sorts (scores are checked not to be NaN first).
fn desc(a: f32, b: f32) -> std::cmp::Ordering {
    b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal)
}

/// One detection after matching: its score, whether it matched, and whether it is left out (it
/// lies on an ignored region), per IoU threshold.
struct Matched {
    score: f32,
    tp: [bool; IOU_STEPS],
    ignored: [bool; IOU_STEPS],
}

/// Match one image's detections of one class to its ground truth of that class, per threshold.
fn match_image(
    gts: &[BBox],
    ignored: &[BBox],
    dets: &[&Detection],
    thresholds: &[f64; IOU_STEPS],
) -> Vec<Matched> {
    let ious: Vec<Vec<f64>> = dets
        .iter()
        .map(|d| gts.iter().map(|g| coco_iou(&d.bbox, g)).collect())
        .collect();
    let mut taken = [(); IOU_STEPS].map(|_| vec![false; gts.len()]);
    dets.iter()
        .zip(&ious)
        .map(|(d, iou)| {
            let mut tp = [false; IOU_STEPS];
            let mut left_out = [false; IOU_STEPS];
            for (t, &thr) in thresholds.iter().enumerate() {
                let mut best = thr.min(1.0 - 1e-10);
                let mut m = None;
                for (g, &v) in iou.iter().enumerate() {
                    if taken[t][g] || v < best {
                        continue;
                    }
                    best = v;
                    m = Some(g);
                }
                if let Some(g) = m {
                    taken[t][g] = true;
                    tp[t] = true;
                } else {
                    let thr = thr.min(1.0 - 1e-10);
                    left_out[t] = ignored.iter().any(|r| coco_iou(&d.bbox, r) >= thr);
                }
            }
            Matched {
                score: d.score,
                tp,
                ignored: left_out,
            }
        })
        .collect()
}

/// The 101 interpolated precisions of one class at one threshold (pycocotools' `accumulate`).
fn interpolated_precision(
    ranked: &[Matched],
    t: usize,
    npig: usize,
    recalls: &[f64; RECALL_STEPS],
) -> [f64; RECALL_STEPS] {
    let mut rc = Vec::with_capacity(ranked.len());
    let mut pr = Vec::with_capacity(ranked.len());
    let (mut tp, mut fp) = (0.0f64, 0.0f64);
    for m in ranked.iter().filter(|m| !m.ignored[t]) {
        if m.tp[t] {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        rc.push(tp / npig as f64);
        pr.push(tp / (fp + tp + f64::EPSILON));
    }
    for i in (1..pr.len()).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    let mut q = [0.0; RECALL_STEPS];
    for (qi, &r) in q.iter_mut().zip(recalls) {
        // np.searchsorted(rc, r, side='left'): first index with rc >= r.
        let idx = rc.partition_point(|&x| x < r);
        match pr.get(idx) {
            Some(&p) => *qi = p,
            None => break,
        }
    }
    q
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn check(input: &EvalInput) -> Result<(), EvalError> {
    if input.ground_truth.len() != input.detections.len() {
        return Err(EvalError::ImageCount {
            ground_truth: input.ground_truth.len(),
            detections: input.detections.len(),
        });
    }
    let classes = input.classes;
    for (image, (gts, dets)) in input.ground_truth.iter().zip(input.detections).enumerate() {
        if let Some(o) = gts.iter().find(|o| o.class >= classes) {
            return Err(EvalError::GroundTruthClass {
                image,
                class: o.class,
                classes,
            });
        }
        if let Some(d) = dets.iter().find(|d| d.class >= classes) {
            return Err(EvalError::DetectionClass {
                image,
                class: d.class,
                classes,
            });
        }
        if dets.iter().any(|d| d.score.is_nan()) {
            return Err(EvalError::NanScore { image });
        }
    }
    if !input.ignored.is_empty() && input.ignored.len() != input.ground_truth.len() {
        return Err(EvalError::IgnoredCount {
            ground_truth: input.ground_truth.len(),
            ignored: input.ignored.len(),
        });
    }
    if input.ground_truth.iter().all(Vec::is_empty) {
        return Err(EvalError::NoGroundTruth);
    }
    Ok(())
}

/// COCO-style evaluation of detections against ground truth (see the module doc for the exact
/// rules); `score_threshold` only affects the reported precision and recall, never the APs.
pub fn evaluate(input: &EvalInput, score_threshold: f32) -> Result<DetectionMetrics, EvalError> {
    check(input)?;
    let thresholds = iou_thresholds();
    let recalls = recall_thresholds();
    let mut per_class = Vec::with_capacity(input.classes);
    let mut pr_curves = Vec::with_capacity(input.classes);
    let mut f1_curves = Vec::with_capacity(input.classes);
    let mut f1_counts = vec![(0usize, 0usize); RECALL_STEPS];
    let (mut tp_all, mut kept_all, mut gt_all, mut det_all) = (0usize, 0usize, 0usize, 0usize);
    for class in 0..input.classes {
        let mut ranked: Vec<Matched> = Vec::new();
        let mut npig = 0;
        for (k, (gts, dets)) in input.ground_truth.iter().zip(input.detections).enumerate() {
            let gts: Vec<BBox> = gts
                .iter()
                .filter(|o| o.class == class)
                .map(|o| o.bbox)
                .collect();
            let ignored: Vec<BBox> = input
                .ignored
                .get(k)
                .into_iter()
                .flatten()
                .filter(|o| o.class == class)
                .map(|o| o.bbox)
                .collect();
            let mut dets: Vec<&Detection> = dets.iter().filter(|d| d.class == class).collect();
            dets.sort_by(|a, b| desc(a.score, b.score));
            dets.truncate(MAX_DETECTIONS);
            npig += gts.len();
            ranked.extend(match_image(&gts, &ignored, &dets, &thresholds));
        }
        ranked.sort_by(|a, b| desc(a.score, b.score));
        // F1 against the score threshold (greedy matching by score: the matches of the
        // detections above a threshold do not depend on those below it).
        let counts: Vec<(usize, usize)> = f1_thresholds()
            .iter()
            .map(|&t| {
                ranked
                    .iter()
                    .filter(|m| f64::from(m.score) >= t && !m.ignored[T50])
                    .fold((0, 0), |(tp, n), m| (tp + m.tp[T50] as usize, n + 1))
            })
            .collect();
        for (all, &(tp, n)) in f1_counts.iter_mut().zip(&counts) {
            all.0 += tp;
            all.1 += n;
        }
        f1_curves.push(if npig == 0 {
            Vec::new()
        } else {
            counts.iter().map(|&(tp, n)| f1(tp, n, npig)).collect()
        });
        let kept = ranked
            .iter()
            .filter(|m| m.score >= score_threshold && !m.ignored[T50]);
        let (tp, n) = kept.fold((0, 0), |(tp, n), m| (tp + m.tp[T50] as usize, n + 1));
        tp_all += tp;
        kept_all += n;
        gt_all += npig;
        det_all += ranked.len();
        let precision = if n == 0 { 0.0 } else { tp as f64 / n as f64 };
        let recall = if npig == 0 {
            0.0
        } else {
            tp as f64 / npig as f64
        };
        if npig == 0 {
            per_class.push(ClassAp {
                class,
                ground_truth: 0,
                ap50: None,
                ap75: None,
                ap50_95: None,
                precision,
                recall,
            });
            pr_curves.push(Vec::new());
            continue;
        }
        let aps: Vec<f64> = (0..IOU_STEPS)
            .map(|t| {
                let q = interpolated_precision(&ranked, t, npig, &recalls);
                if t == T50 {
                    pr_curves.push(recalls.iter().copied().zip(q).collect());
                }
                mean(&q)
            })
            .collect();
        per_class.push(ClassAp {
            class,
            ground_truth: npig,
            ap50: Some(aps[T50]),
            ap75: Some(aps[T75]),
            ap50_95: Some(mean(&aps)),
            precision,
            recall,
        });
    }
    let map = |f: fn(&ClassAp) -> Option<f64>| {
        let v: Vec<f64> = per_class.iter().filter_map(f).collect();
        mean(&v)
    };
    Ok(DetectionMetrics {
        map50: map(|c| c.ap50),
        map75: map(|c| c.ap75),
        map50_95: map(|c| c.ap50_95),
        score_threshold,
        precision: if kept_all == 0 {
            0.0
        } else {
            tp_all as f64 / kept_all as f64
        },
        recall: tp_all as f64 / gt_all as f64,
        images: input.ground_truth.len(),
        ground_truth: gt_all,
        detections: det_all,
        per_class,
        pr_curves,
        f1_curves,
        f1_all: f1_counts.iter().map(|&(tp, n)| f1(tp, n, gt_all)).collect(),
        confusion: confusion(input, score_threshold),
    })
}

/// Ground truth as a COCO dataset JSON (`images`, `annotations`, `categories`), for pycocotools
/// and other COCO tools. Image id = index + 1, category id = class + 1 (`labels[class]` is its
/// name), annotation ids from 1; boxes as `[x, y, w, h]` ([`coco_bbox`]), `area` = w * h,
/// `iscrowd` 0 for objects and 1 for ignored regions (crowds, `difficult`).
pub fn coco_ground_truth_json<S: AsRef<str>>(images: &[AnnotatedImage], labels: &[S]) -> Value {
    let mut annotations = Vec::new();
    for (i, img) in images.iter().enumerate() {
        // Ignored regions (crowds, `difficult`) as COCO crowds, which pycocotools leaves out too.
        let all = img
            .objects
            .iter()
            .map(|o| (o, 0))
            .chain(img.ignored.iter().map(|o| (o, 1)));
        for (o, iscrowd) in all {
            let b = coco_bbox(&o.bbox);
            annotations.push(json!({
                "id": annotations.len() + 1,
                "image_id": i + 1,
                "category_id": o.class + 1,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": iscrowd,
            }));
        }
    }
    let images: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            json!({
                "id": i + 1,
                "file_name": img.path.to_string_lossy(),
                "width": img.width,
                "height": img.height,
            })
        })
        .collect();
    let categories: Vec<Value> = labels
        .iter()
        .enumerate()
        .map(|(c, name)| json!({"id": c + 1, "name": name.as_ref(), "supercategory": "object"}))
        .collect();
    json!({"images": images, "annotations": annotations, "categories": categories})
}

/// Detections as a COCO results JSON (a list of `{image_id, category_id, bbox, score}`), what
/// `COCO.loadRes` reads. Index = image, image id = index + 1, category id = class + 1, boxes as
/// `[x, y, w, h]` ([`coco_bbox`]); scores are written as the exact f64 of the f32.
pub fn coco_results_json(detections: &[Vec<Detection>]) -> Value {
    let results: Vec<Value> = detections
        .iter()
        .enumerate()
        .flat_map(|(i, dets)| {
            dets.iter().map(move |d| {
                json!({
                    "image_id": i + 1,
                    "category_id": d.class + 1,
                    "bbox": coco_bbox(&d.bbox),
                    "score": d.score as f64,
                })
            })
        })
        .collect();
    Value::Array(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_object_scores_by_hand() {
        let o = |class, x0| Object {
            class,
            bbox: BBox::new(x0, 0.0, x0 + 10.0, 10.0),
        };
        let d = |class, x0| Detection {
            class,
            score: 1.0,
            bbox: BBox::new(x0, 0.0, x0 + 10.0, 10.0),
        };
        // Exact box and class; half-overlapping box (IoU 5/15) with the wrong class; a picture
        // without a detection is left out.
        let gt = vec![vec![o(0, 0.0)], vec![o(1, 0.0)], vec![o(1, 0.0)]];
        let dets = vec![vec![d(0, 0.0)], vec![d(0, 5.0)], vec![]];
        let (iou, acc) = single_object_scores(&gt, &dets);
        assert!((iou - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-6, "{iou}");
        assert_eq!(acc, 0.5);
    }

    const EPS: f64 = 1e-12;

    fn obj(class: usize, b: [f32; 4]) -> Object {
        Object {
            class,
            bbox: BBox::from(b),
        }
    }

    fn det(class: usize, score: f32, b: [f32; 4]) -> Detection {
        Detection {
            class,
            score,
            bbox: BBox::from(b),
        }
    }

    fn run(gt: &[Vec<Object>], dets: &[Vec<Detection>], classes: usize) -> DetectionMetrics {
        evaluate(
            &EvalInput {
                ground_truth: gt,
                ignored: &[],
                detections: dets,
                classes,
            },
            0.5,
        )
        .unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < EPS
    }

    const A: [f32; 4] = [0.0, 0.0, 10.0, 10.0];
    const B: [f32; 4] = [20.0, 20.0, 40.0, 30.0];
    const FAR: [f32; 4] = [100.0, 100.0, 110.0, 110.0];

    #[test]
    fn confusion_and_f1_curves_by_hand() {
        // Class 0 found at A; a class-0 detection on the class-1 object (a confusion); a class-1
        // detection on nothing (background); in a second picture a class-1 object nobody found.
        let gt = vec![vec![obj(0, A), obj(1, B)], vec![obj(1, A)]];
        let dets = vec![
            vec![det(0, 0.9, A), det(0, 0.8, B), det(1, 0.7, FAR)],
            vec![],
        ];
        let m = run(&gt, &dets, 2);
        assert_eq!(
            m.confusion,
            vec![vec![1, 0, 0], vec![1, 0, 1], vec![0, 1, 0]]
        );
        let at = |t: f64| (t * 100.0).round() as usize;
        assert_eq!(f1_thresholds()[at(0.85)], 0.85);
        // Class 0 at threshold 0: 2 kept, 1 right, 1 object -> P 0.5, R 1, F1 2/3; above 0.8
        // only the right one is kept -> F1 1; above 0.9 nothing -> 0.
        assert!(close(m.f1_curves[0][0], 2.0 / 3.0), "{:?}", m.f1_curves[0]);
        assert!(close(m.f1_curves[0][at(0.85)], 1.0));
        assert!(close(m.f1_curves[0][at(0.95)], 0.0));
        assert!(
            m.f1_curves[1].iter().all(|&f| f == 0.0),
            "class 1 is never found"
        );
        // All classes at 0: 3 kept, 1 right, 3 objects -> P 1/3, R 1/3, F1 1/3.
        assert!(close(m.f1_all[0], 1.0 / 3.0), "{:?}", m.f1_all);
        // Above the score threshold (0.5) nothing changes; at 0.75 the background one goes.
        let strict = evaluate(
            &EvalInput {
                ground_truth: &gt,
                ignored: &[],
                detections: &dets,
                classes: 2,
            },
            0.75,
        )
        .unwrap();
        assert_eq!(strict.confusion[2], vec![0, 0, 0]);
    }

    #[test]
    fn thresholds_are_numpys() {
        // repr() of pycocotools' Params().iouThrs and recThrs (numpy linspace), printed by Python.
        let t = iou_thresholds();
        let numpy = [
            0.5,
            0.55,
            0.6,
            0.65,
            0.7,
            0.75,
            0.8,
            0.85,
            0.8999999999999999,
            0.95,
        ];
        assert_eq!(t, numpy);
        let r = recall_thresholds();
        assert_eq!(
            (r[0], r[7], r[29], r[50], r[100]),
            (0.0, 0.07, 0.29, 0.5, 1.0)
        );
    }

    #[test]
    fn perfect_detector_scores_one() {
        let gt = vec![
            vec![obj(0, A), obj(1, B)],
            vec![],
            vec![obj(1, A), obj(1, FAR), obj(2, B)],
        ];
        let dets: Vec<Vec<Detection>> = gt
            .iter()
            .map(|objs| {
                objs.iter()
                    .map(|o| det(o.class, 0.9, o.bbox.into()))
                    .collect()
            })
            .collect();
        let m = run(&gt, &dets, 3);
        // Every detection matches at IoU 1; precision tp / (tp + fp + eps) is 1 up to 2e-16.
        assert!(close(m.map50, 1.0), "{}", m.map50);
        assert!(close(m.map75, 1.0));
        assert!(close(m.map50_95, 1.0));
        assert_eq!((m.precision, m.recall), (1.0, 1.0));
        assert_eq!(m.ground_truth, 5);
        assert_eq!(m.detections, 5);
        assert_eq!(m.per_class[1].ground_truth, 3);
        assert!(m.pr_curves[1].iter().all(|&(_, p)| close(p, 1.0)));
    }

    #[test]
    fn empty_detector_scores_zero() {
        let gt = vec![vec![obj(0, A)], vec![obj(1, B)]];
        let m = run(&gt, &[vec![], vec![]], 2);
        assert_eq!((m.map50, m.map75, m.map50_95), (0.0, 0.0, 0.0));
        assert_eq!((m.precision, m.recall), (0.0, 0.0));
        assert_eq!(m.per_class[0].ap50, Some(0.0));
    }

    #[test]
    fn false_positive_ranked_first() {
        // 2 GT, 3 detections: FP 0.9, A 0.8, B 0.7 (exact boxes, so the same at every IoU).
        // cumulative tp = [0, 1, 2], fp = [1, 1, 1]; recall = [0, .5, 1], precision = [0, 1/2,
        // 2/3]; made monotone from the right: [2/3, 2/3, 2/3]. Every recall point 0..1 finds a
        // detection reaching it, at precision 2/3: AP = 2/3 at every threshold.
        let gt = vec![vec![obj(0, A), obj(0, B)]];
        let dets = vec![vec![det(0, 0.9, FAR), det(0, 0.8, A), det(0, 0.7, B)]];
        let m = run(&gt, &dets, 1);
        assert!(close(m.map50, 2.0 / 3.0), "{}", m.map50);
        assert!(close(m.map50_95, 2.0 / 3.0));
        // At score >= 0.5, all three count: precision 2/3, recall 1.
        assert!(close(m.precision, 2.0 / 3.0));
        assert_eq!(m.recall, 1.0);
    }

    #[test]
    fn false_positive_ranked_second() {
        // A 0.9, FP 0.8, B 0.7: recall = [.5, .5, 1], precision = [1, 1/2, 2/3] -> monotone
        // [1, 2/3, 2/3]. Recall points 0.00..=0.50 (51 of them) are reached by the first
        // detection (recall 0.5 >= r): precision 1; 0.51..=1.00 (50) only by the third: 2/3.
        // AP = (51 * 1 + 50 * 2/3) / 101 = 253/303.
        let gt = vec![vec![obj(0, A), obj(0, B)]];
        let dets = vec![vec![det(0, 0.8, FAR), det(0, 0.7, B), det(0, 0.9, A)]];
        let m = run(&gt, &dets, 1);
        assert!(close(m.map50, 253.0 / 303.0), "{}", m.map50);
        assert!(close(m.map50_95, 253.0 / 303.0));
        // The curve: 1 up to recall 0.5, then 2/3.
        let c = &m.pr_curves[0];
        assert_eq!(c.len(), 101);
        assert!(close(c[50].1, 1.0) && close(c[51].1, 2.0 / 3.0));
    }

    #[test]
    fn half_recall_without_false_positive() {
        // One of two GT found: recall 0.5 at precision 1. Points 0.00..=0.50 (51) get 1, the 50
        // beyond recall 0.5 get 0: AP = 51/101.
        let gt = vec![vec![obj(0, A), obj(0, B)]];
        let dets = vec![vec![det(0, 0.9, A)]];
        let m = run(&gt, &dets, 1);
        assert!(close(m.map50, 51.0 / 101.0), "{}", m.map50);
        assert_eq!((m.precision, m.recall), (1.0, 0.5));
    }

    #[test]
    fn iou_decides_which_thresholds_count() {
        // Against A = 10x10: [0,0,6,10] has IoU 60/100 = 0.6, [0,0,7,10] 70/100 = 0.7 (the same
        // doubles as the literals 0.6 and 0.7, and as the thresholds, which are inclusive).
        // IoU 0.6 counts at 0.5, 0.55, 0.6 and not from 0.65: AP 1 at 3 of 10 thresholds.
        let gt = vec![vec![obj(0, A)]];
        let m = run(&gt, &[vec![det(0, 0.9, [0.0, 0.0, 6.0, 10.0])]], 1);
        assert!(close(m.map50, 1.0));
        assert_eq!(m.map75, 0.0);
        assert!(close(m.map50_95, 0.3), "{}", m.map50_95);
        // IoU 0.7: 0.5 ..= 0.7, 5 of 10.
        let m = run(&gt, &[vec![det(0, 0.9, [0.0, 0.0, 7.0, 10.0])]], 1);
        assert!(close(m.map50_95, 0.5), "{}", m.map50_95);
        // IoU 0.49 (49/100): nothing at all, and it is a false positive for precision.
        let m = run(&gt, &[vec![det(0, 0.9, [0.0, 0.0, 4.9, 10.0])]], 1);
        assert_eq!((m.map50, m.precision, m.recall), (0.0, 0.0, 0.0));
    }

    #[test]
    fn matching_takes_the_best_unmatched_ground_truth() {
        // GT P = [0,0,10,10], Q = [4,0,14,10]. Detection 1 (0.9) [3,0,13,10]: IoU with P 70/130
        // = 0.54, with Q 90/110 = 0.82 -> takes Q. Detection 2 (0.8) = P exactly -> takes P.
        // Both true positives: AP50 = 1. (Taking the first GT above 0.5 instead would give P to
        // detection 1 and leave detection 2 with Q at IoU 60/140 < 0.5, a false positive.)
        let gt = vec![vec![obj(0, A), obj(0, [4.0, 0.0, 14.0, 10.0])]];
        let dets = vec![vec![det(0, 0.9, [3.0, 0.0, 13.0, 10.0]), det(0, 0.8, A)]];
        let m = run(&gt, &dets, 1);
        assert!(close(m.map50, 1.0), "{}", m.map50);
        // A duplicate on an already matched GT is a false positive: P, then P again.
        let dets = vec![vec![det(0, 0.9, A), det(0, 0.8, A)]];
        let m = run(&gt, &dets, 1);
        // recall [.5, .5], precision [1, .5] -> [1, .5]: 51 points at 1, the rest 0: 51/101.
        assert!(close(m.map50, 51.0 / 101.0), "{}", m.map50);
        assert_eq!(m.precision, 0.5);
    }

    #[test]
    fn ranking_is_across_images() {
        // GT only in image 1, found at score 0.3; image 2 has an FP at 0.9. Ranked by score over
        // all images the FP comes first: recall [0, 1], precision [0, 1/2] -> [1/2, 1/2], AP 1/2
        // (image by image it would be TP then FP: AP 1).
        let gt = vec![vec![obj(0, A)], vec![]];
        let dets = vec![vec![det(0, 0.3, A)], vec![det(0, 0.9, FAR)]];
        let m = run(&gt, &dets, 1);
        assert!(close(m.map50, 0.5), "{}", m.map50);
    }

    #[test]
    fn score_ties_keep_image_order() {
        // One GT, in image 2. Image 1 has an FP at 0.5, image 2 the TP at 0.5. Stable order puts
        // image 1 first: recall [0, 1], precision [0, 1/2] -> monotone [1/2, 1/2]: AP 1/2.
        // (TP first would give precision [1, 1/2] -> AP 1.)
        let gt = vec![vec![], vec![obj(0, A)]];
        let dets = vec![vec![det(0, 0.5, FAR)], vec![det(0, 0.5, A)]];
        let m = run(&gt, &dets, 1);
        assert!(close(m.map50, 0.5), "{}", m.map50);
        // Swapping the images swaps the order: AP 1.
        let gt = vec![vec![obj(0, A)], vec![]];
        let dets = vec![vec![det(0, 0.5, A)], vec![det(0, 0.5, FAR)]];
        assert!(close(run(&gt, &dets, 1).map50, 1.0));
    }

    #[test]
    fn classes_without_ground_truth_are_left_out() {
        // Class 0: perfect. Class 1: no GT, one FP. mAP is class 0's alone, 1; the FP still
        // lowers precision: 1 TP of 2 detections.
        let gt = vec![vec![obj(0, A)]];
        let dets = vec![vec![det(0, 0.9, A), det(1, 0.9, B)]];
        let m = run(&gt, &dets, 2);
        assert!(close(m.map50, 1.0) && close(m.map50_95, 1.0));
        assert_eq!(m.per_class[1].ap50, None);
        assert!(m.pr_curves[1].is_empty());
        assert_eq!(m.precision, 0.5);
        // Class 1 with a GT it misses: mean of 1 and 0.
        let gt = vec![vec![obj(0, A), obj(1, FAR)]];
        assert!(close(run(&gt, &dets, 2).map50, 0.5));
    }

    #[test]
    fn only_the_best_hundred_per_image_and_class_count() {
        // 100 FPs above a TP at the lowest score: the TP is the 101st, cut, so AP 0. Uncut it
        // would be recall 1 at precision 1/101, AP 1/101.
        let gt = vec![vec![obj(0, A)]];
        let mut dets: Vec<Detection> = (0..100)
            .map(|i| det(0, 0.9, [100.0 + i as f32, 100.0, 101.0 + i as f32, 101.0]))
            .collect();
        dets.push(det(0, 0.1, A));
        let m = run(&gt, std::slice::from_ref(&dets), 1);
        assert_eq!(m.map50, 0.0);
        assert_eq!(m.detections, 100);
        // The cap is per class: the same TP as class 1 with class 1 GT is not cut.
        let gt = vec![vec![obj(0, A), obj(1, A)]];
        dets.push(det(1, 0.1, A));
        let m = run(&gt, &[dets], 2);
        assert_eq!(m.per_class[1].ap50.map(|v| close(v, 1.0)), Some(true));
    }

    #[test]
    fn score_threshold_only_moves_precision_and_recall() {
        let gt = vec![vec![obj(0, A), obj(0, B)]];
        let dets = vec![vec![det(0, 0.9, A), det(0, 0.3, B), det(0, 0.2, FAR)]];
        let input = EvalInput {
            ground_truth: &gt,
            ignored: &[],
            detections: &dets,
            classes: 1,
        };
        let hi = evaluate(&input, 0.5).unwrap();
        let lo = evaluate(&input, 0.25).unwrap();
        assert_eq!(hi.map50, lo.map50);
        assert_eq!((hi.precision, hi.recall), (1.0, 0.5));
        assert_eq!((lo.precision, lo.recall), (1.0, 1.0));
        let all = evaluate(&input, 0.0).unwrap();
        assert!(close(all.precision, 2.0 / 3.0));
        assert_eq!(all.per_class[0].recall, 1.0);
    }

    #[test]
    fn bad_input_is_an_error() {
        let gt = vec![vec![obj(0, A)]];
        let e = |gt: &[Vec<Object>], dets: &[Vec<Detection>], classes| {
            evaluate(
                &EvalInput {
                    ground_truth: gt,
                    ignored: &[],
                    detections: dets,
                    classes,
                },
                0.5,
            )
            .unwrap_err()
        };
        assert!(matches!(e(&gt, &[], 1), EvalError::ImageCount { .. }));
        assert!(matches!(
            e(&[vec![obj(2, A)]], &[vec![]], 2),
            EvalError::GroundTruthClass { class: 2, .. }
        ));
        assert!(matches!(
            e(&gt, &[vec![det(1, 0.5, A)]], 1),
            EvalError::DetectionClass { class: 1, .. }
        ));
        assert_eq!(
            e(&gt, &[vec![det(0, f32::NAN, A)]], 1),
            EvalError::NanScore { image: 0 }
        );
        assert_eq!(
            e(&[vec![]], &[vec![det(0, 0.5, A)]], 1),
            EvalError::NoGroundTruth
        );
    }

    /// A detection on an ignored region (crowd, difficult) is neither a hit nor a false alarm;
    /// elsewhere it is still a false alarm.
    #[test]
    fn detections_on_ignored_regions_are_left_out() {
        let det = |b: [f32; 4], score| Detection {
            class: 0,
            score,
            bbox: BBox::new(b[0], b[1], b[2], b[3]),
        };
        let gt = vec![vec![obj(0, [0.0, 0.0, 10.0, 10.0])]];
        let crowd = vec![vec![obj(0, [50.0, 50.0, 80.0, 80.0])]];
        // The false alarm scores highest: it drags AP down unless it is left out.
        let dets = vec![vec![
            det([50.0, 50.0, 80.0, 80.0], 0.9),
            det([0.0, 0.0, 10.0, 10.0], 0.8),
        ]];
        let run = |ignored: &[Vec<Object>]| {
            evaluate(
                &EvalInput {
                    ground_truth: &gt,
                    ignored,
                    detections: &dets,
                    classes: 1,
                },
                0.5,
            )
            .unwrap()
        };
        let plain = run(&[]);
        assert!(plain.map50 < 0.6, "{}", plain.map50);
        assert_eq!(plain.precision, 0.5);
        let with = run(&crowd);
        assert!((with.map50 - 1.0).abs() < 1e-9, "{}", with.map50);
        assert_eq!(with.precision, 1.0);
        // Another class's region does not excuse it.
        let other = vec![vec![obj(1, [50.0, 50.0, 80.0, 80.0])]];
        let e = evaluate(
            &EvalInput {
                ground_truth: &gt,
                ignored: &other,
                detections: &dets,
                classes: 2,
            },
            0.5,
        )
        .unwrap();
        assert_eq!(e.map50, plain.map50);
        assert!(matches!(
            evaluate(
                &EvalInput {
                    ground_truth: &gt,
                    ignored: &[vec![], vec![]],
                    detections: &dets,
                    classes: 1,
                },
                0.5,
            ),
            Err(EvalError::IgnoredCount { .. })
        ));
    }

    #[test]
    fn coco_json_ids_start_at_one() {
        let images = vec![
            AnnotatedImage {
                path: "a.png".into(),
                width: 64,
                height: 48,
                objects: vec![obj(1, [1.5, 2.0, 11.5, 7.0])],
                ignored: Vec::new(),
            },
            AnnotatedImage {
                path: "b.png".into(),
                width: 64,
                height: 48,
                objects: vec![obj(0, A), obj(1, B)],
                ignored: Vec::new(),
            },
        ];
        let gt = coco_ground_truth_json(&images, &["circle", "square"]);
        assert_eq!(gt["images"][1]["id"], 2);
        assert_eq!(gt["images"][1]["file_name"], "b.png");
        let a = &gt["annotations"];
        assert_eq!(a.as_array().unwrap().len(), 3);
        assert_eq!(a[0]["id"], 1);
        assert_eq!(a[0]["image_id"], 1);
        assert_eq!(a[0]["category_id"], 2);
        assert_eq!(a[0]["bbox"], json!([1.5, 2.0, 10.0, 5.0]));
        assert_eq!(a[0]["area"], 50.0);
        assert_eq!(a[0]["iscrowd"], 0);
        assert_eq!(a[2]["id"], 3);
        assert_eq!(a[2]["image_id"], 2);
        assert_eq!(
            gt["categories"][0],
            json!({"id": 1, "name": "circle", "supercategory": "object"})
        );
        let res = coco_results_json(&[vec![], vec![det(1, 0.25, B)]]);
        assert_eq!(
            res,
            json!([{"image_id": 2, "category_id": 2, "bbox": [20.0, 20.0, 20.0, 10.0], "score": 0.25}])
        );
        // 0.1f32 is written as the exact double of the f32, not as 0.1.
        let res = coco_results_json(&[vec![det(0, 0.1, A)]]);
        assert_eq!(res[0]["score"].as_f64().unwrap(), 0.1f32 as f64);
    }

    #[test]
    fn coco_bbox_gives_back_the_corners() {
        let b = BBox::new(0.1, 123.456, 77.7, 300.3);
        let [x, y, w, h] = coco_bbox(&b);
        assert_eq!((x + w, y + h), (b.x1 as f64, b.y1 as f64));
    }
}

/// Centre-point quality of a centroids (FOMO-style) detector, whose boxes carry no size: a
/// detection is right when its centre lies inside an unmatched ground-truth box of its class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CentroidScores {
    /// Right detections over all detections (0 without detections).
    pub precision: f64,
    /// Found objects over all objects (0 without objects).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
}

/// [`CentroidScores`] of detections scored at least `score_threshold`: per image, detections
/// by descending score each take the unmatched object of their class with the nearest centre
/// among those whose box holds the detection's centre.
pub fn centroid_scores(input: &EvalInput, score_threshold: f32) -> CentroidScores {
    let (mut tp, mut dets, mut objects) = (0usize, 0usize, 0usize);
    for (gt, ds) in input.ground_truth.iter().zip(input.detections) {
        objects += gt.len();
        let mut taken = vec![false; gt.len()];
        let mut ds: Vec<&Detection> = ds.iter().filter(|d| d.score >= score_threshold).collect();
        ds.sort_by(|a, b| b.score.total_cmp(&a.score));
        for d in ds {
            dets += 1;
            let (cx, cy) = d.bbox.center();
            let hit = gt
                .iter()
                .enumerate()
                .filter(|(i, o)| {
                    !taken[*i]
                        && o.class == d.class
                        && (o.bbox.x0..=o.bbox.x1).contains(&cx)
                        && (o.bbox.y0..=o.bbox.y1).contains(&cy)
                })
                .min_by(|(_, a), (_, b)| {
                    let da = (a.bbox.center().0 - cx).powi(2) + (a.bbox.center().1 - cy).powi(2);
                    let db = (b.bbox.center().0 - cx).powi(2) + (b.bbox.center().1 - cy).powi(2);
                    da.total_cmp(&db)
                });
            if let Some((i, _)) = hit {
                taken[i] = true;
                tp += 1;
            }
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (precision, recall) = (ratio(tp, dets), ratio(tp, objects));
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    CentroidScores {
        precision,
        recall,
        f1,
    }
}

#[cfg(test)]
mod centroid_tests {
    use super::*;
    use crate::data::annotated::Object;
    use kestrel_shared::{BBox, Detection};

    #[test]
    fn centres_inside_boxes_count_once() {
        let gt = vec![vec![
            Object {
                class: 0,
                bbox: BBox::new(0.0, 0.0, 10.0, 10.0),
            },
            Object {
                class: 1,
                bbox: BBox::new(20.0, 20.0, 30.0, 30.0),
            },
        ]];
        let det = |class, score, cx, cy| Detection {
            class,
            score,
            bbox: BBox::from_center(cx, cy, 2.0, 2.0),
        };
        let dets = vec![vec![
            det(0, 0.9, 5.0, 5.0),   // hit
            det(0, 0.8, 6.0, 6.0),   // same object again: a false positive
            det(0, 0.7, 25.0, 25.0), // wrong class there
            det(1, 0.1, 25.0, 25.0), // right, but under the threshold
        ]];
        let input = EvalInput {
            ground_truth: &gt,
            ignored: &[],
            detections: &dets,
            classes: 2,
        };
        // 1 hit of 3 detections above 0.5; 1 of 2 objects.
        let s = centroid_scores(&input, 0.5);
        assert!((s.precision - 1.0 / 3.0).abs() < 1e-12);
        assert!((s.recall - 0.5).abs() < 1e-12);
        assert!((s.f1 - 0.4).abs() < 1e-12);
        // With the threshold at 0.05 the class-1 detection finds the second object.
        let s = centroid_scores(&input, 0.05);
        assert!((s.recall - 1.0).abs() < 1e-12 && (s.precision - 0.5).abs() < 1e-12);
    }
}
