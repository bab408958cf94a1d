//! The two detection heads, trained in burn on cached trunk feature maps.
//!
//! - [`SingleHead`]: the book's detector. Flatten the stride-16 map, dense 200 + ReLU, dense 5 =
//!   `[class, left, right, top, bottom]` in input pixels. The last layer's output is multiplied by
//!   the input size, so the network itself works in units of "one image" while the loss and the
//!   outputs stay in pixels as in the book.
//! - [`AttentionHead`]: the same five outputs from a convolutional head: every cell of the map
//!   proposes a box (its edges as offsets from the cell's centre) and a class number, and a softmax
//!   over the cells' attention logits averages them. Unlike the dense layer it is the same at every
//!   position, so it learns each position from all of them (the default form of `--head single`).
//! - [`GridHead`]: a small convolutional head on the feature map, `1 + C + 4` channels per cell
//!   (objectness, classes, box) or `1 + C` for the centroids variant; see
//!   [`kestrel_shared::decode`] for how its output is read.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::activation::{relu, softmax};
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

/// Which form the single-object head takes (`kestrel train detect --head single --single-form`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SingleForm {
    /// The book's head: flatten, dense + ReLU, dense 5 ([`SingleHead`]).
    Dense,
    /// A box per cell averaged by softmax attention over the cells ([`AttentionHead`]).
    #[default]
    Attention,
}

impl SingleForm {
    /// The form of a run whose `config.json` predates the choice: the book's.
    pub fn legacy() -> Self {
        SingleForm::Dense
    }
}

/// The single-object head as attention over cells: `[N, C, H, W]` -> `[N, 5]` in input pixels.
///
/// Two 3x3 convolutions (ReLU) and a 1x1 convolution give six numbers per cell: an attention
/// logit, a class number and the box's left, right, top and bottom edges as offsets from the
/// cell's centre (in units of the input width). The output is the softmax-weighted mean over the
/// cells of the class number and of centre + offset, times the input width, as the book's head.
#[derive(Module, Debug)]
pub struct AttentionHead {
    /// Fine-tuned top blocks of the trunk, run first (empty unless phase 2 ran).
    pub blocks: Vec<InvertedResidual>,
    /// First 3x3 convolution.
    pub conv1: Conv2d,
    /// Second 3x3 convolution.
    pub conv2: Conv2d,
    /// Output 1x1 convolution to [`ATTENTION_CHANNELS`] per cell.
    pub out: Conv2d,
    /// Input width in pixels (the output scale).
    pub width: f64,
    /// Input height in pixels.
    pub height: f64,
}

/// Channels per cell of an [`AttentionHead`]: logit, class, left, right, top, bottom.
pub const ATTENTION_CHANNELS: usize = 6;

impl AttentionHead {
    /// Fresh parameters for `in_channels` input channels, convolutions `width` wide, pictures
    /// `input` = (width, height) pixels.
    pub fn new(
        in_channels: usize,
        width: usize,
        input: (u32, u32),
        rng: &mut ChaCha8Rng,
        device: &Device,
    ) -> Self {
        AttentionHead {
            blocks: Vec::new(),
            conv1: seeded_conv(in_channels, width, 3, rng, device),
            conv2: seeded_conv(width, width, 3, rng, device),
            out: seeded_conv(width, ATTENTION_CHANNELS, 1, rng, device),
            width: input.0 as f64,
            height: input.1 as f64,
        }
    }

    /// `[N, C, H, W]` -> `[N, 5]`: class number and left, right, top, bottom, in pixels.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv1.forward(through(&self.blocks, x)));
        let y = self.out.forward(relu(self.conv2.forward(x)));
        let [n, _, h, w] = y.dims();
        let base = Tensor::<3>::from_data(
            TensorData::new(self.cell_base(h, w), [1, 5, h * w]),
            &y.device(),
        );
        let y = y.reshape([n, ATTENTION_CHANNELS, h * w]);
        let a = softmax(y.clone().narrow(1, 0, 1), 2);
        let v = y.narrow(1, 1, 5) + base;
        (v * a).sum_dim(2).reshape([n, 5]) * self.width
    }

    /// What each cell's offsets are added to, `[5, H * W]` row-major: 0 for the class number, the
    /// cell centre's column for left and right, its row for top and bottom, in input widths.
    pub fn cell_base(&self, h: usize, w: usize) -> Vec<f32> {
        let (sx, sy) = (1.0 / w as f64, self.height / self.width / h as f64);
        let mut base = vec![0f32; 5 * h * w];
        for i in 0..h {
            for j in 0..w {
                let k = i * w + j;
                let (cx, cy) = ((j as f64 + 0.5) * sx, (i as f64 + 0.5) * sy);
                base[h * w + k] = cx as f32;
                base[2 * h * w + k] = cx as f32;
                base[3 * h * w + k] = cy as f32;
                base[4 * h * w + k] = cy as f32;
            }
        }
        base
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// With the output convolution zeroed every cell gets the same weight and proposes a point at
    /// its own centre: the output is class 0 and a point at the middle of the picture, in pixels.
    /// The cell centres themselves are checked on one cell.
    #[test]
    fn attention_averages_the_cells_centres_by_their_weights() {
        let device = Device::flex();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (w, h) = (64u32, 32u32); // a 4 x 2 map at stride 16
        let mut head = AttentionHead::new(3, 4, (w, h), &mut rng, &device);
        head.out.weight =
            Param::from_tensor(Tensor::<4>::zeros([ATTENTION_CHANNELS, 4, 1, 1], &device));
        head.out.bias = Some(Param::from_tensor(Tensor::<1>::zeros([6], &device)));
        let x = Tensor::<4>::random(
            [2, 3, 2, 4],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let got = head.forward(x).into_data().try_to_vec::<f32>().unwrap();
        for r in got.chunks(5) {
            assert!(r[0].abs() < 1e-4, "{got:?}");
            for (v, want) in r[1..].iter().zip([32.0, 32.0, 16.0, 16.0]) {
                assert!((v - want).abs() < 1e-3, "{got:?}");
            }
        }
        // Cell (row 1, column 2): centre (40, 24) pixels.
        let base = head.cell_base(2, 4);
        let k = 4 + 2;
        assert_eq!(
            [base[8 + k], base[16 + k], base[24 + k], base[32 + k]].map(|v| v * 64.0),
            [40.0, 40.0, 24.0, 24.0]
        );
        assert!(base[..8].iter().all(|v| *v == 0.0));
    }
}
