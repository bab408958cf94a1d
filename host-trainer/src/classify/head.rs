//! The new head on top of the frozen trunk: linear, or dense (units, ReLU, dropout) then linear,
//! as in the book's webcam transfer-learning example. Softmax is applied by the loss and at
//! prediction time.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Shape of the head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadKind {
    /// One linear layer: embedding -> class logits.
    Linear,
    /// Dense(units, ReLU) with dropout, then linear.
    Dense {
        /// Hidden units.
        units: usize,
        /// Dropout probability after the hidden layer.
        dropout: f64,
    },
}

/// Everything needed to build a head.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Layers.
    pub kind: HeadKind,
    /// Embedding size (input).
    pub inputs: usize,
    /// Number of classes (output).
    pub classes: usize,
}

/// A classification head: `[N, inputs] -> [N, classes]` logits.
#[derive(Module, Debug)]
pub struct Head {
    /// Hidden dense layer (dense heads only).
    pub hidden: Option<Linear>,
    /// Dropout probability after the hidden layer (training only).
    pub dropout: f64,
    /// Output layer.
    pub out: Linear,
}

/// A linear layer initialised like PyTorch's (uniform in +-1/sqrt(fan_in)) from our own seeded
/// generator: burn's device generator is process-wide, so it is not reproducible when other work
/// draws from it concurrently.
pub(crate) fn seeded_linear(
    din: usize,
    dout: usize,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Linear {
    let k = (1.0 / din as f64).sqrt() as f32;
    let w: Vec<f32> = (0..din * dout).map(|_| rng.random_range(-k..k)).collect();
    let b: Vec<f32> = (0..dout).map(|_| rng.random_range(-k..k)).collect();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [din, dout]), device)),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b, [dout]),
            device,
        ))),
    }
}

impl HeadConfig {
    /// Fresh parameters on `device`, drawn from `rng`.
    pub fn init(&self, device: &Device, rng: &mut ChaCha8Rng) -> Head {
        match self.kind {
            HeadKind::Linear => Head {
                hidden: None,
                dropout: 0.0,
                out: seeded_linear(self.inputs, self.classes, rng, device),
            },
            HeadKind::Dense { units, dropout } => Head {
                hidden: Some(seeded_linear(self.inputs, units, rng, device)),
                dropout,
                out: seeded_linear(units, self.classes, rng, device),
            },
        }
    }
}

impl Head {
    /// `[N, inputs] -> [N, classes]` logits, inference (no dropout).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_with(x, None)
    }

    /// Training forward pass: dropout masks drawn from `rng` (reproducible).
    pub fn forward_train(&self, x: Tensor<2>, rng: &mut ChaCha8Rng) -> Tensor<2> {
        self.forward_with(x, Some(rng))
    }

    fn forward_with(&self, x: Tensor<2>, rng: Option<&mut ChaCha8Rng>) -> Tensor<2> {
        let mut x = x;
        if let Some(h) = &self.hidden {
            x = relu(h.forward(x));
            if let (Some(rng), true) = (rng, self.dropout > 0.0) {
                let keep = 1.0 - self.dropout;
                let [n, d] = x.dims();
                let mask: Vec<f32> = (0..n * d)
                    .map(|_| {
                        if rng.random::<f64>() < keep {
                            (1.0 / keep) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let device = x.device();
                x = x * Tensor::from_data(TensorData::new(mask, [n, d]), &device);
            }
        }
        self.out.forward(x)
    }
}
