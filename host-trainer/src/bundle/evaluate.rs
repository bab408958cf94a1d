//! Measuring a bundle the way the board runs it: the edge loader ([`Bundle`]), tract, the
//! manifest's decoding, on the run's validation pictures.

use crate::eval::single_object_scores;
use crate::eval::{EvalInput, evaluate};
use kestrel_edge::Bundle;
use kestrel_shared::Detection;
use kestrel_shared::detect::clip_detections;
use kestrel_shared::manifest::{DetectHeadKind, MetricSet, Task};

use super::source::ValidationSet;
use crate::classify::embed::{EmbeddingCache, embed_samples};
use crate::classify::train::argmax_rows;
use crate::detect::run::AP_SCORE_THRESHOLD;
use crate::detect::train::feature_maps;
use crate::progress::Progress;

/// A bundle's results on a validation set.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Quality.
    pub metrics: MetricSet,
    /// Raw head outputs, one per usable picture.
    pub raw: Vec<Vec<f32>>,
    /// Detectors: detections at or above the manifest's score threshold, per picture.
    pub detections: Vec<Vec<Detection>>,
    /// Pictures measured.
    pub images: usize,
}

/// Run `bundle` over `val` (trunk outputs through `cache`, keyed by the bundle trunk's sha256).
pub fn evaluate_bundle(
    bundle: &Bundle,
    val: &ValidationSet,
    cache: &EmbeddingCache,
    progress: &dyn Progress,
) -> anyhow::Result<Evaluation> {
    let m = &bundle.manifest;
    match val {
        ValidationSet::Classify(samples) => {
            let set = embed_samples(&bundle.trunk, samples, cache, 0, false, progress)?;
            let raw = bundle.run_head(&set.x)?;
            let flat: Vec<f32> = raw.iter().flatten().copied().collect();
            let pred = argmax_rows(&flat, m.labels.len());
            let right = pred.iter().zip(&set.y).filter(|(p, y)| p == y).count();
            Ok(Evaluation {
                metrics: MetricSet {
                    accuracy: Some(right as f64 / set.y.len().max(1) as f64),
                    ..Default::default()
                },
                images: raw.len(),
                raw,
                detections: Vec::new(),
            })
        }
        ValidationSet::Detect(images) => {
            let set = feature_maps(&bundle.trunk, images, cache, false, progress)?;
            let raw = bundle.run_head(&set.x)?;
            let decode = m.decode.as_ref().ok_or_else(|| {
                anyhow::anyhow!("the manifest of a detector has no decoding parameters")
            })?;
            let p = &m.input.preprocess;
            let (w, h) = (p.width as f32, p.height as f32);
            // As `kestrel train detect` scores: a low threshold so the whole PR curve is seen,
            // boxes clipped to the input.
            let dets: Vec<Vec<Detection>> = raw
                .iter()
                .map(|r| {
                    clip_detections(
                        bundle.decode(r, AP_SCORE_THRESHOLD.min(decode.score_threshold)),
                        w,
                        h,
                    )
                })
                .collect();
            let coco = evaluate(
                &EvalInput {
                    ground_truth: &set.objects,
                    ignored: &set.ignored,
                    detections: &dets,
                    classes: m.labels.len(),
                },
                decode.score_threshold,
            )?;
            let mut metrics = MetricSet {
                map50: Some(coco.map50),
                map50_95: Some(coco.map50_95),
                ..Default::default()
            };
            if m.task
                == (Task::Detect {
                    head: DetectHeadKind::Single,
                })
            {
                let (iou, acc) = single_object_scores(&set.objects, &dets);
                metrics.mean_iou = Some(iou);
                metrics.class_accuracy = Some(acc);
            }
            let above = dets
                .into_iter()
                .map(|ds| {
                    ds.into_iter()
                        .filter(|d| d.score >= decode.score_threshold)
                        .collect()
                })
                .collect();
            Ok(Evaluation {
                metrics,
                images: raw.len(),
                raw,
                detections: above,
            })
        }
    }
}

/// Largest absolute difference between two sets of raw outputs.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs() as f64))
        .fold(0.0, f64::max)
}

/// True when two pictures' detections are the same: as many, and each of `a` (by descending
/// score) pairs with a detection of `b` of its class with IoU at least 0.5.
pub fn same_detections(a: &[Detection], b: &[Detection]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut a: Vec<&Detection> = a.iter().collect();
    a.sort_by(|x, y| y.score.total_cmp(&x.score));
    let mut taken = vec![false; b.len()];
    a.iter().all(|d| {
        let best = b
            .iter()
            .enumerate()
            .filter(|(i, e)| !taken[*i] && e.class == d.class)
            .map(|(i, e)| (i, d.bbox.iou(&e.bbox)))
            .max_by(|x, y| x.1.total_cmp(&y.1));
        match best {
            Some((i, iou)) if iou >= 0.5 => {
                taken[i] = true;
                true
            }
            _ => false,
        }
    })
}

/// Share of pictures on which two evaluations agree: the same top-1 class (classifiers, from
/// `classes` logits per picture) or the same detections above the threshold (detectors).
pub fn agreement(a: &Evaluation, b: &Evaluation, classes: usize, detector: bool) -> f64 {
    let n = a.raw.len().min(b.raw.len()).max(1) as f64;
    let same = if detector {
        a.detections
            .iter()
            .zip(&b.detections)
            .filter(|(x, y)| same_detections(x, y))
            .count()
    } else {
        let top = |e: &Evaluation| {
            argmax_rows(
                &e.raw.iter().flatten().copied().collect::<Vec<f32>>(),
                classes,
            )
        };
        top(a).iter().zip(top(b)).filter(|(x, y)| **x == *y).count()
    };
    same as f64 / n
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_shared::BBox;

    fn det(class: usize, score: f32, x: f32) -> Detection {
        Detection {
            class,
            score,
            bbox: BBox::new(x, 0.0, x + 10.0, 10.0),
        }
    }

    #[test]
    fn detections_are_the_same_when_classes_and_boxes_pair_up() {
        let a = [det(0, 0.9, 0.0), det(1, 0.5, 50.0)];
        assert!(same_detections(&a, &[det(1, 0.6, 51.0), det(0, 0.8, 1.0)]));
        assert!(!same_detections(&a, &[det(0, 0.8, 1.0)]));
        assert!(!same_detections(&a, &[det(0, 0.6, 51.0), det(0, 0.8, 1.0)]));
        assert!(!same_detections(&a, &[det(0, 0.9, 0.0), det(1, 0.5, 58.0)]));
        assert!(same_detections(&[], &[]));
    }
}
