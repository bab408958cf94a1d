//! The two detection heads, trained in burn on cached trunk feature maps.
//!
//! - [`SingleHead`]: the book's detector. Flatten the stride-16 map, dense 200 + ReLU, dense 5 =
//!   `[class, left, right, top, bottom]` in input pixels. The last layer's output is multiplied by
//!   the input size, so the network itself works in units of "one image" while the loss and the
//!   outputs stay in pixels as in the book.
//! - [`GridHead`]: a small convolutional head on the feature map, `1 + C + 4` channels per cell
//!   (objectness, classes, box) or `1 + C` for the centroids variant; see
//!   [`kestrel_shared::decode`] for how its output is read.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use kestrel_shared::decode::GridSpec;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::classify::head::seeded_linear;
use crate::mobilenet::InvertedResidual;

/// Run the unfrozen blocks (phase 2) in front of a head; none in phase 1.
fn through(blocks: &[InvertedResidual], x: Tensor<4>) -> Tensor<4> {
    blocks.iter().fold(x, |x, b| b.forward(x))
}

/// The book's single-object head: `[N, C, H, W]` features -> `[N, 5]` in input pixels.
#[derive(Module, Debug)]
pub struct SingleHead {
    /// Fine-tuned top blocks of the trunk, run first (empty unless phase 2 ran).
    pub blocks: Vec<InvertedResidual>,
    /// Dense 200 on the flattened map.
    pub hidden: Linear,
    /// Dense 5.
    pub out: Linear,
    /// Input side in pixels (the output scale).
    pub scale: f64,
}

impl SingleHead {
    /// Fresh parameters for `inputs` flattened features and an input of side `scale` pixels.
    pub fn new(
        inputs: usize,
        units: usize,
        scale: f64,
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Self {
        SingleHead {
            blocks: Vec::new(),
            hidden: seeded_linear(inputs, units, rng, device),
            out: seeded_linear(units, 5, rng, device),
            scale,
        }
    }

    /// `[N, C, H, W]` -> `[N, 5]`: class number and left, right, top, bottom, in pixels.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x: Tensor<2> = through(&self.blocks, x).flatten(1, 3);
        self.out.forward(relu(self.hidden.forward(x))) * self.scale
    }
}

/// Settings of a grid head (written to the run's config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GridConfig {
    /// Channels of the input feature map.
    pub in_channels: usize,
    /// Width of the two 3x3 convolutions.
    pub width: usize,
    /// How the output is read (classes, stride, boxes or centroids).
    pub spec: GridSpec,
}

/// Conv 3x3 + ReLU, conv 3x3 + ReLU, conv 1x1 to `1 + C (+ 4)` channels per cell.
#[derive(Module, Debug)]
pub struct GridHead {
    /// Fine-tuned top blocks of the trunk, run first (empty unless phase 2 ran).
    pub blocks: Vec<InvertedResidual>,
    /// First 3x3 convolution.
    pub conv1: Conv2d,
    /// Second 3x3 convolution.
    pub conv2: Conv2d,
    /// Output 1x1 convolution.
    pub out: Conv2d,
}

/// A convolution with PyTorch's default init (uniform +-1/sqrt(fan_in)) from our seeded generator.
fn seeded_conv(cin: usize, cout: usize, k: usize, rng: &mut ChaCha8Rng, device: &Device) -> Conv2d {
    let mut conv = Conv2dConfig::new([cin, cout], [k, k])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .init(device);
    let bound = (1.0 / (cin * k * k) as f64).sqrt() as f32;
    let w: Vec<f32> = (0..cout * cin * k * k)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    let b: Vec<f32> = (0..cout).map(|_| rng.random_range(-bound..bound)).collect();
    conv.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(w, [cout, cin, k, k]),
        device,
    ));
    conv.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [cout]),
        device,
    )));
    conv
}

/// Prior probability of an object in a cell: the objectness bias starts at logit(PRIOR) so the
/// focal loss does not begin swamped by easy negatives (as in RetinaNet).
const PRIOR: f64 = 0.01;

impl GridConfig {
    /// Fresh parameters on `device`, drawn from `rng`.
    pub fn init(&self, device: &Device, rng: &mut ChaCha8Rng) -> GridHead {
        let conv1 = seeded_conv(self.in_channels, self.width, 3, rng, device);
        let conv2 = seeded_conv(self.width, self.width, 3, rng, device);
        let mut out = seeded_conv(self.width, self.spec.channels(), 1, rng, device);
        let mut bias = vec![0.0f32; self.spec.channels()];
        bias[0] = (PRIOR / (1.0 - PRIOR)).ln() as f32;
        out.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [self.spec.channels()]),
            device,
        )));
        GridHead {
            blocks: Vec::new(),
            conv1,
            conv2,
            out,
        }
    }
}

impl GridHead {
    /// `[N, C, H, W]` features -> `[N, channels, H, W]` raw outputs.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = relu(self.conv1.forward(through(&self.blocks, x)));
        let x = relu(self.conv2.forward(x));
        self.out.forward(x)
    }
}
