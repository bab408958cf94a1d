//! `kestrel predict`: ImageNet classification of photos with the full pretrained model.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kestrel_shared::{PreprocessError, PreprocessSpec};
use serde::Serialize;

use crate::mobilenet::MobileNetV2;

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scored {
    /// ImageNet class index.
    pub class: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// The best classes for one picture, best first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The picture.
    pub image: PathBuf,
    /// Best `k` classes.
    pub top: Vec<Scored>,
}

/// Softmax of one row of logits, in f64 for stability, returned as f32.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// Indices and values of the `k` largest entries, largest first.
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx.into_iter().take(k).map(|i| (i, values[i])).collect()
}

/// Classifies pictures in batches; a picture that cannot be read gets its own error.
pub struct Classifier<'a> {
    /// The full pretrained model (with its classifier).
    pub model: &'a MobileNetV2,
    /// Device the model lives on.
    pub device: &'a Device,
    /// Preprocessing (ImageNet evaluation transform).
    pub spec: PreprocessSpec,
    /// Class names, index order.
    pub labels: Vec<&'static str>,
    /// Images per forward pass.
    pub batch: usize,
}

impl Classifier<'_> {
    /// Logits of already-preprocessed images.
    pub fn logits(&self, images: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let (h, w) = (self.spec.height as usize, self.spec.width as usize);
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch.max(1)) {
            let input: Vec<f32> = chunk.iter().flatten().copied().collect();
            let (data, shape) = self.model.run(input, chunk.len(), h, w, self.device);
            out.extend(data.chunks(shape[1]).map(<[f32]>::to_vec));
        }
        out
    }

    /// Classify picture files; results are in input order.
    pub fn classify_files(
        &self,
        paths: &[PathBuf],
        k: usize,
    ) -> Vec<Result<Prediction, PreprocessError>> {
        let loaded: Vec<Result<Vec<f32>, PreprocessError>> =
            paths.iter().map(|p| self.spec.load_and_apply(p)).collect();
        let good: Vec<Vec<f32>> = loaded
            .iter()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect();
        let mut logits = self.logits(&good).into_iter();
        paths
            .iter()
            .zip(loaded)
            .map(|(path, r)| {
                r.map(|_| self.prediction(path, &logits.next().expect("one row per image"), k))
            })
            .collect()
    }

    /// Turn one row of logits into a [`Prediction`].
    pub fn prediction(&self, image: &Path, logits: &[f32], k: usize) -> Prediction {
        prediction(image, logits, &self.labels, k)
    }
}

/// The `k` most probable classes of one row of logits, named by `labels`.
pub fn prediction<S: AsRef<str>>(
    image: &Path,
    logits: &[f32],
    labels: &[S],
    k: usize,
) -> Prediction {
    let probs = softmax(logits);
    Prediction {
        image: image.to_path_buf(),
        top: top_k(&probs, k)
            .into_iter()
            .map(|(class, score)| Scored {
                class,
                label: labels.get(class).map_or("?", |l| l.as_ref()).to_string(),
                score,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_top_k() {
        let p = softmax(&[1.0, 3.0, 2.0, 1000.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(top_k(&p, 2)[0].0, 3);
        let p = softmax(&[0.0, (2.0f32).ln()]);
        assert!((p[1] - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(
            top_k(&[0.1, 0.5, 0.3], 5),
            vec![(1, 0.5), (2, 0.3), (0, 0.1)]
        );
    }
}
