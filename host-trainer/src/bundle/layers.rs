//! The layers of a bundle's graphs, independent of burn: what the exporter writes to ONNX (in
//! float32 or int8) and what calibration observes.
//!
//! Every trained part Kestrel has (classification head, fine-tuned top, single and grid detection
//! heads, and the MobileNetV2 trunk itself) is a short list of convolutions and dense layers with
//! their activation, residual additions, pooling, flattening and scaling. BatchNorm is folded into
//! the convolutions here ([`crate::onnx::fold_batchnorm`], the same folding as the trunk export).

use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::Tensor;

use crate::classify::finetune::TopModel;
use crate::classify::head::Head;
use crate::detect::heads::{ATTENTION_CHANNELS, AttentionHead, GridHead, SingleHead};
use crate::mobilenet::{ConvBn, InvertedResidual, MobileNetV2};
use crate::onnx::fold_batchnorm;

/// What follows a layer's affine part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Nothing.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

/// A 2D convolution (NCHW, weights `[out, in / groups, kh, kw]`), bias and activation.
#[derive(Debug, Clone)]
pub struct Conv {
    /// Name of the layer (torchvision's for the trunk, `head.*` for heads).
    pub name: String,
    /// Weights, row-major `[out, in / groups, kh, kw]`.
    pub weight: Vec<f32>,
    /// Weight shape.
    pub dims: [usize; 4],
    /// Bias, one per output channel.
    pub bias: Vec<f32>,
    /// Strides (height, width).
    pub stride: [usize; 2],
    /// Padding: top, left, bottom, right (ONNX order).
    pub pads: [usize; 4],
    /// Groups (the input channels for a depthwise convolution).
    pub groups: usize,
    /// Activation after the bias.
    pub act: Activation,
}

impl Conv {
    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.dims[0]
    }

    /// True for a depthwise convolution (one input channel per group, more than one group).
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.dims[1] == 1
    }

    /// True for a 1x1 convolution without grouping.
    pub fn is_pointwise(&self) -> bool {
        self.groups == 1 && self.dims[2] == 1 && self.dims[3] == 1
    }
}

/// A dense layer on `[N, inputs]`: `y = x W + b` with `W` row-major `[inputs, outputs]`.
#[derive(Debug, Clone)]
pub struct Dense {
    /// Name of the layer.
    pub name: String,
    /// Weights, row-major `[inputs, outputs]` (burn's layout).
    pub weight: Vec<f32>,
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Bias, one per output.
    pub bias: Vec<f32>,
    /// Activation after the bias.
    pub act: Activation,
}

/// One step of a network.
#[derive(Debug, Clone)]
pub enum Layer {
    /// A convolution.
    Conv(Conv),
    /// A dense layer.
    Dense(Dense),
    /// `x + f(x)` with `f` the inner layers.
    Residual(Vec<Layer>),
    /// Global average pooling then flattening: `[N, C, H, W] -> [N, C]`.
    GlobalAvgPool,
    /// `[N, C, H, W] -> [N, C * H * W]`.
    Flatten,
    /// Multiplication by a constant.
    Scale(f32),
    /// `[N, C, H, W] -> [N, K]` ([`AttentionHead`]): the 1x1 convolution `out` gives `1 + K`
    /// channels per cell; the softmax over the `H * W` cells of channel 0 weighs the other `K`
    /// channels plus `base` (`[K, H * W]`), summed over the cells.
    AttentionPool {
        /// The output convolution (a [`Layer::Conv`] with `1 + K` output channels).
        out: Box<Layer>,
        /// Values added to each cell's channels before the weighted sum, `[K, H * W]` row-major.
        base: Vec<f32>,
    },
}

/// A network as a list of layers.
#[derive(Debug, Clone, Default)]
pub struct Net {
    /// Layers in execution order.
    pub layers: Vec<Layer>,
}

impl Net {
    /// Every convolution and dense layer, in execution order (the layers that can be quantized).
    pub fn weighted(&self) -> Vec<&Layer> {
        fn walk<'a>(layers: &'a [Layer], out: &mut Vec<&'a Layer>) {
            for l in layers {
                match l {
                    Layer::Conv(_) | Layer::Dense(_) => out.push(l),
                    Layer::Residual(inner) => walk(inner, out),
                    Layer::AttentionPool { out: conv, .. } => walk(std::slice::from_ref(conv), out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.layers, &mut out);
        out
    }

    /// Number of weights (convolutions and dense layers).
    pub fn weight_count(&self) -> usize {
        self.weighted()
            .iter()
            .map(|l| match l {
                Layer::Conv(c) => c.weight.len(),
                Layer::Dense(d) => d.weight.len(),
                _ => 0,
            })
            .sum()
    }
}

impl Layer {
    /// Name of a convolution or dense layer.
    pub fn name(&self) -> Option<&str> {
        match self {
            Layer::Conv(c) => Some(&c.name),
            Layer::Dense(d) => Some(&d.name),
            _ => None,
        }
    }
}

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("float parameters")
}

fn dense(name: &str, l: &Linear, act: Activation) -> Layer {
    let [inputs, outputs] = l.weight.dims();
    Layer::Dense(Dense {
        name: name.to_string(),
        weight: floats(l.weight.val()),
        inputs,
        outputs,
        bias: l
            .bias
            .as_ref()
            .map_or_else(|| vec![0.0; outputs], |b| floats(b.val())),
        act,
    })
}

/// ONNX padding of a burn convolution (odd kernels only for `Same`).
fn pads(conv: &Conv2d) -> [usize; 4] {
    match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => [top, left, bottom, right],
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Same => {
            let [kh, kw] = conv.kernel_size;
            [(kh - 1) / 2, (kw - 1) / 2, (kh - 1) / 2, (kw - 1) / 2]
        }
    }
}

fn conv(name: &str, c: &Conv2d, act: Activation) -> Layer {
    let dims = c.weight.dims();
    Layer::Conv(Conv {
        name: name.to_string(),
        weight: floats(c.weight.val()),
        dims,
        bias: c
            .bias
            .as_ref()
            .map_or_else(|| vec![0.0; dims[0]], |b| floats(b.val())),
        stride: c.stride,
        pads: pads(c),
        groups: c.groups,
        act,
    })
}

/// A MobileNetV2 convolution with its BatchNorm folded in (padding `(k - 1) / 2`, as torchvision).
fn conv_bn(name: &str, layer: &ConvBn) -> Layer {
    let (weight, bias) = fold_batchnorm(layer);
    let dims = layer.conv.weight.dims();
    let [ph, pw] = [(dims[2] - 1) / 2, (dims[3] - 1) / 2];
    Layer::Conv(Conv {
        name: name.to_string(),
        weight,
        dims,
        bias,
        stride: layer.conv.stride,
        pads: [ph, pw, ph, pw],
        groups: layer.conv.groups,
        act: if layer.relu6 {
            Activation::Relu6
        } else {
            Activation::None
        },
    })
}

/// An inverted-residual block named `features.{index}`.
fn block(index: usize, b: &InvertedResidual) -> Vec<Layer> {
    let mut inner = Vec::new();
    if let Some(e) = &b.expand {
        inner.push(conv_bn(&format!("features.{index}.expand"), e));
    }
    inner.push(conv_bn(
        &format!("features.{index}.depthwise"),
        &b.depthwise,
    ));
    inner.push(conv_bn(&format!("features.{index}.project"), &b.project));
    if b.residual {
        vec![Layer::Residual(inner)]
    } else {
        inner
    }
}

/// Blocks `features.{first}..` in order.
fn blocks(first: usize, bs: &[InvertedResidual]) -> Vec<Layer> {
    bs.iter()
        .enumerate()
        .flat_map(|(i, b)| block(first + i, b))
        .collect()
}

/// A (possibly cut) MobileNetV2 without its classifier: the trunk.
pub fn trunk(model: &MobileNetV2) -> Net {
    let mut layers = vec![conv_bn("features.0", &model.stem)];
    layers.extend(blocks(1, &model.blocks));
    if let Some(last) = &model.last {
        layers.push(conv_bn("features.18", last));
    }
    if model.pooled {
        layers.push(Layer::GlobalAvgPool);
    }
    Net { layers }
}

/// A classification head on the pooled vector (or any flat trunk output).
pub fn classify_head(head: &Head) -> Net {
    let mut layers = Vec::new();
    if let Some(h) = &head.hidden {
        layers.push(dense("head.hidden", h, Activation::Relu));
    }
    layers.push(dense("head.out", &head.out, Activation::None));
    Net { layers }
}

/// A fine-tuned top (blocks `features.{first}..17`, `features.18`, pooling, head).
pub fn top(model: &TopModel, first: usize) -> Net {
    let mut layers = blocks(first, &model.blocks);
    layers.push(conv_bn("features.18", &model.last));
    layers.push(Layer::GlobalAvgPool);
    layers.extend(classify_head(&model.head).layers);
    Net { layers }
}

/// The book's single-object detection head (tuned blocks `features.{first}..` first, if any).
pub fn single_head(h: &SingleHead, first: usize) -> Net {
    let mut layers = blocks(first, &h.blocks);
    layers.push(Layer::Flatten);
    layers.push(dense("head.hidden", &h.hidden, Activation::Relu));
    layers.push(dense("head.out", &h.out, Activation::None));
    layers.push(Layer::Scale(h.scale as f32));
    Net { layers }
}

/// The single-object head as attention over the cells of a `hw` map (tuned blocks
/// `features.{first}..` first, if any).
pub fn attention_head(h: &AttentionHead, first: usize, hw: [usize; 2]) -> Net {
    let mut layers = blocks(first, &h.blocks);
    layers.push(conv("head.conv1", &h.conv1, Activation::Relu));
    layers.push(conv("head.conv2", &h.conv2, Activation::Relu));
    debug_assert_eq!(h.out.weight.dims()[0], ATTENTION_CHANNELS);
    layers.push(Layer::AttentionPool {
        out: Box::new(conv("head.out", &h.out, Activation::None)),
        base: h.cell_base(hw[0], hw[1]),
    });
    layers.push(Layer::Scale(h.width as f32));
    Net { layers }
}

/// A grid detection head (tuned blocks `features.{first}..` first, if any).
pub fn grid_head(h: &GridHead, first: usize) -> Net {
    let mut layers = blocks(first, &h.blocks);
    layers.push(conv("head.conv1", &h.conv1, Activation::Relu));
    layers.push(conv("head.conv2", &h.conv2, Activation::Relu));
    layers.push(conv("head.out", &h.out, Activation::None));
    Net { layers }
}
