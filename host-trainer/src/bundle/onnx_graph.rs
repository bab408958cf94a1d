//! Writing a [`Net`] as an ONNX graph, in float32 or with int8 layers, and merging a trunk and a
//! head into one graph.
//!
//! A quantized layer is written as operators that tract (and onnxruntime) run with integer
//! kernels: `QuantizeLinear` (float -> int8 codes of the input, per tensor), `MatMulInteger` or
//! `ConvInteger` (int8 x int8 -> int32, symmetric weights per output channel, so no weight zero
//! point), then `Cast` to float, `Mul` by `input_scale * weight_scale[channel]`, `Add` of the
//! float bias, and the activation. The int32 accumulation is exact; the only rounding is that of
//! the input codes and of the weights. (tract folds the input zero point into a constant term of
//! the matrix product: `QDQ` graphs, by contrast, would stay in float there.)

use std::collections::BTreeMap;

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{ModelProto, TypeProto, ValueInfoProto, type_proto};

use super::int8::{ActivationParams, quantize_weights};
use super::layers::{Activation, Conv, Dense, Layer, Net};
use crate::onnx::{Attr, GraphBuilder};

/// Prefix of the calibration outputs: `tap.<layer>` is the input of `<layer>`.
pub const TAP_PREFIX: &str = "tap.";

/// How one layer is written in int8.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerQuant {
    /// Quantization of its input.
    pub input: ActivationParams,
    /// Mean of each input channel over the calibration set (empty: no bias correction).
    pub input_mean: Vec<f32>,
}

/// The layers to write in int8, by name; other layers stay float.
pub type QuantPlan = BTreeMap<String, LayerQuant>;

/// Output and input channel of weight `k` of a convolution with weights `dims` =
/// `[out, in / groups, kh, kw]`: input channel = its group's first channel + its index in the group.
fn conv_channels(dims: [usize; 4], groups: usize, k: usize) -> (usize, usize) {
    let [o, i, kh, kw] = dims;
    let per = i * kh * kw;
    let out = k / per;
    (out, out / (o / groups) * i + (k % per) / (kh * kw))
}

/// Bias correction: the float bias minus the shift the weight rounding adds to each output on
/// average, `sum_i (w_q - w)[o, i] * mean(x_i)` (Nagel et al., 2019). `channel(k)` gives the
/// output channel and the input channel of weight `k`.
fn corrected_bias(
    bias: &[f32],
    weight: &[f32],
    dequantized: impl Fn(usize) -> f32,
    channel: impl Fn(usize) -> (usize, usize),
    input_mean: &[f32],
) -> Vec<f32> {
    if input_mean.is_empty() {
        return bias.to_vec();
    }
    let mut shift = vec![0f64; bias.len()];
    for (k, w) in weight.iter().enumerate() {
        let (o, i) = channel(k);
        shift[o] += (dequantized(k) - w) as f64 * input_mean[i] as f64;
    }
    bias.iter()
        .zip(shift)
        .map(|(b, s)| (*b as f64 - s) as f32)
        .collect()
}

/// A graph's input and output: names and dimensions (`None` = the symbolic batch).
#[derive(Debug, Clone)]
pub struct GraphIo {
    /// Name of the input.
    pub input: String,
    /// Input dimensions.
    pub input_dims: Vec<Option<usize>>,
    /// Name of the output.
    pub output: String,
    /// Output dimensions.
    pub output_dims: Vec<Option<usize>>,
}

struct Emitter<'a> {
    g: GraphBuilder,
    plan: Option<&'a QuantPlan>,
    taps: Option<Vec<String>>,
    clip: Option<(String, String)>,
}

fn i8_bytes(v: &[i8]) -> Vec<u8> {
    v.iter().map(|&b| b as u8).collect()
}

impl Emitter<'_> {
    fn act(&mut self, x: String, act: Activation) -> String {
        match act {
            Activation::None => x,
            Activation::Relu => self.g.node("Relu", &[&x], vec![]),
            Activation::Relu6 => {
                if self.clip.is_none() {
                    let lo = self.g.constant("clip_min", &[], &[0.0]);
                    let hi = self.g.constant("clip_max", &[], &[6.0]);
                    self.clip = Some((lo, hi));
                }
                let (lo, hi) = self.clip.clone().expect("set above");
                self.g.node("Clip", &[&x, &lo, &hi], vec![])
            }
        }
    }

    fn tap(&mut self, layer: &str, x: &str) {
        if let Some(taps) = &mut self.taps {
            let name = format!("{TAP_PREFIX}{layer}");
            // A layer written as two convolutions (an attention pool's output) is tapped once.
            if taps.contains(&name) {
                return;
            }
            self.g.node_into("Identity", &[x], &name, vec![]);
            taps.push(name);
        }
    }

    /// `QuantizeLinear(x)` with the layer's calibrated parameters.
    fn quantize_input(&mut self, x: &str, p: &ActivationParams) -> (String, String) {
        let scale = self.g.constant("x_scale", &[], &[p.scale]);
        let zp = self
            .g
            .initializer("x_zero", &[], DataType::Int8, vec![p.zero_point as u8]);
        let q = self.g.node("QuantizeLinear", &[x, &scale, &zp], vec![]);
        (q, zp)
    }

    /// Cast the int32 accumulators to float, rescale per channel, add the bias.
    fn rescale(&mut self, acc: &str, scales: &[f32], bias: &[f32], dims: &[usize]) -> String {
        let y = self.g.node("Cast", &[acc], vec![("to", Attr::Int(1))]);
        let s = self.g.constant("scale", dims, scales);
        let y = self.g.node("Mul", &[&y, &s], vec![]);
        let b = self.g.constant("bias", dims, bias);
        self.g.node("Add", &[&y, &b], vec![])
    }

    fn conv(&mut self, x: &str, c: &Conv) -> String {
        self.tap(&c.name, x);
        let [o, i, kh, kw] = c.dims;
        let attrs = || {
            vec![
                ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
                (
                    "strides",
                    Attr::Ints(c.stride.iter().map(|&s| s as i64).collect()),
                ),
                (
                    "pads",
                    Attr::Ints(c.pads.iter().map(|&p| p as i64).collect()),
                ),
                ("dilations", Attr::Ints(vec![1, 1])),
                ("group", Attr::Int(c.groups as i64)),
            ]
        };
        let y = match self.plan.and_then(|p| p.get(&c.name)) {
            None => {
                let w = self.g.constant("w", &c.dims, &c.weight);
                let b = self.g.constant("b", &[o], &c.bias);
                self.g.node("Conv", &[x, &w, &b], attrs())
            }
            Some(lq) => {
                let per = i * kh * kw;
                let qw = quantize_weights(&c.weight, o, |k| k / per);
                let bias = corrected_bias(
                    &c.bias,
                    &c.weight,
                    |k| qw.codes[k] as f32 * qw.scales[k / per],
                    |k| conv_channels(c.dims, c.groups, k),
                    &lq.input_mean,
                );
                let p = &lq.input;
                let (q, zp) = self.quantize_input(x, p);
                let w = self
                    .g
                    .initializer("wq", &c.dims, DataType::Int8, i8_bytes(&qw.codes));
                let acc = self.g.node("ConvInteger", &[&q, &w, &zp], attrs());
                let scales: Vec<f32> = qw.scales.iter().map(|s| s * p.scale).collect();
                self.rescale(&acc, &scales, &bias, &[1, o, 1, 1])
            }
        };
        self.act(y, c.act)
    }

    fn dense(&mut self, x: &str, d: &Dense) -> String {
        self.tap(&d.name, x);
        let y = match self.plan.and_then(|p| p.get(&d.name)) {
            None => {
                let w = self.g.constant("w", &[d.inputs, d.outputs], &d.weight);
                let b = self.g.constant("b", &[d.outputs], &d.bias);
                self.g.node("Gemm", &[x, &w, &b], vec![])
            }
            Some(lq) => {
                let n = d.outputs;
                let qw = quantize_weights(&d.weight, n, |k| k % n);
                let bias = corrected_bias(
                    &d.bias,
                    &d.weight,
                    |k| qw.codes[k] as f32 * qw.scales[k % n],
                    |k| (k % n, k / n),
                    &lq.input_mean,
                );
                let p = &lq.input;
                let (q, zp) = self.quantize_input(x, p);
                let w =
                    self.g
                        .initializer("wq", &[d.inputs, n], DataType::Int8, i8_bytes(&qw.codes));
                let acc = self.g.node("MatMulInteger", &[&q, &w, &zp], vec![]);
                let scales: Vec<f32> = qw.scales.iter().map(|s| s * p.scale).collect();
                self.rescale(&acc, &scales, &bias, &[n])
            }
        };
        self.act(y, d.act)
    }

    /// An int64 vector constant (shapes, axes, slice bounds).
    fn ints(&mut self, prefix: &str, v: &[i64]) -> String {
        let raw = v.iter().flat_map(|i| i.to_le_bytes()).collect();
        self.g.initializer(prefix, &[v.len()], DataType::Int64, raw)
    }

    /// [`Layer::AttentionPool`] in ops every runtime and tract's NNEF writer know: the output
    /// convolution as two (the logit's row, the other rows; one name, so one quantization and one
    /// calibration tap), each reshaped to `[N, channels, H * W]`, Softmax over the cells, Add of
    /// the base, Mul, ReduceSum (opset 13).
    fn attention_pool(&mut self, x: &str, out: &Layer, base: &[f32]) -> String {
        let Layer::Conv(c) = out else {
            unreachable!("an attention pool's output layer is a convolution")
        };
        let per: usize = c.dims[1..].iter().product();
        let rows = |r: std::ops::Range<usize>| Conv {
            weight: c.weight[r.start * per..r.end * per].to_vec(),
            dims: [r.len(), c.dims[1], c.dims[2], c.dims[3]],
            bias: c.bias[r].to_vec(),
            ..c.clone()
        };
        let k = c.out_channels() - 1;
        let logits = self.conv(x, &rows(0..1));
        let values = self.conv(x, &rows(1..k + 1));
        let shape = self.ints("shape", &[0, 0, -1]);
        let logits = self.g.node("Reshape", &[&logits, &shape], vec![]);
        let values = self.g.node("Reshape", &[&values, &shape], vec![]);
        let weights = self
            .g
            .node("Softmax", &[&logits], vec![("axis", Attr::Int(2))]);
        let b = self.g.constant("cell_base", &[1, k, base.len() / k], base);
        let placed = self.g.node("Add", &[&values, &b], vec![]);
        let weighted = self.g.node("Mul", &[&placed, &weights], vec![]);
        let axes = self.ints("axes", &[2]);
        self.g.node(
            "ReduceSum",
            &[&weighted, &axes],
            vec![("keepdims", Attr::Int(0))],
        )
    }

    fn layers(&mut self, mut x: String, layers: &[Layer]) -> String {
        for l in layers {
            x = match l {
                Layer::Conv(c) => self.conv(&x, c),
                Layer::Dense(d) => self.dense(&x, d),
                Layer::Residual(inner) => {
                    let y = self.layers(x.clone(), inner);
                    self.g.node("Add", &[&x, &y], vec![])
                }
                Layer::GlobalAvgPool => {
                    let y = self.g.node("GlobalAveragePool", &[&x], vec![]);
                    self.g.node("Flatten", &[&y], vec![("axis", Attr::Int(1))])
                }
                Layer::Flatten => self.g.node("Flatten", &[&x], vec![("axis", Attr::Int(1))]),
                Layer::Scale(s) => {
                    let k = self.g.constant("k", &[], &[*s]);
                    self.g.node("Mul", &[&x, &k], vec![])
                }
                Layer::AttentionPool { out, base } => self.attention_pool(&x, out, base),
            };
        }
        x
    }
}

/// Write `net` as an ONNX graph. Layers named in `plan` are int8; with `taps`, the input of every
/// convolution and dense layer is also an output, named `tap.<layer>` (for calibration).
pub fn emit(
    net: &Net,
    io: &GraphIo,
    plan: Option<&QuantPlan>,
    taps: bool,
    metadata: Vec<(String, String)>,
) -> ModelProto {
    let mut e = Emitter {
        g: GraphBuilder::default(),
        plan,
        taps: taps.then(Vec::new),
        clip: None,
    };
    let last = e.layers(io.input.clone(), &net.layers);
    let tap_names = e.taps.take().unwrap_or_default();
    let mut model = e.g.finish(
        (&io.input, io.input_dims.clone()),
        (&io.output, io.output_dims.clone()),
        metadata,
    );
    let graph = model.graph.as_mut().expect("finish builds a graph");
    // The last value becomes the public output.
    for node in graph.node.iter_mut() {
        for out in node.output.iter_mut() {
            if *out == last {
                *out = io.output.clone();
            }
        }
    }
    for name in tap_names {
        graph.output.push(float_value(&name));
    }
    model
}

/// A float value of unknown shape (calibration outputs).
fn float_value(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Trunk and head in one graph: the head's input is the trunk's output, every other name of
/// the head is prefixed with `head/`; the output is the head's.
pub fn merge(trunk: &ModelProto, head: &ModelProto) -> ModelProto {
    let tg = trunk.graph.clone().unwrap_or_default();
    let hg = head.graph.clone().unwrap_or_default();
    let trunk_out = tg.output[0].name.clone();
    let head_in = hg.input[0].name.clone();
    let head_out = hg.output[0].name.clone();
    let rename = |v: &str| -> String {
        if v == head_in {
            trunk_out.clone()
        } else if v == head_out || v.is_empty() {
            v.to_string()
        } else {
            format!("head/{v}")
        }
    };
    let mut graph = tg.clone();
    for mut n in hg.node {
        n.name = format!("head/{}", n.name);
        n.input = n.input.iter().map(|v| rename(v)).collect();
        n.output = n.output.iter().map(|v| rename(v)).collect();
        graph.node.push(n);
    }
    for mut t in hg.initializer {
        t.name = rename(&t.name);
        graph.initializer.push(t);
    }
    graph.output = vec![hg.output[0].clone()];
    let mut model = trunk.clone();
    model.graph = Some(graph);
    let version = |m: &ModelProto| m.opset_import.iter().map(|o| o.version).max();
    if version(head) > version(trunk) {
        model.opset_import = head.opset_import.clone();
    }
    let mut seen: std::collections::BTreeSet<String> =
        model.metadata_props.iter().map(|p| p.key.clone()).collect();
    for p in &head.metadata_props {
        if seen.insert(p.key.clone()) {
            model.metadata_props.push(p.clone());
        }
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_channels_follow_groups() {
        // Plain 3x3 convolution, 2 -> 3 channels: weight k belongs to output k / 18.
        assert_eq!(conv_channels([3, 2, 3, 3], 1, 0), (0, 0));
        assert_eq!(conv_channels([3, 2, 3, 3], 1, 9), (0, 1));
        assert_eq!(conv_channels([3, 2, 3, 3], 1, 18 + 17), (1, 1));
        // Depthwise 3x3 on 4 channels: output c reads input c.
        for c in 0..4 {
            assert_eq!(conv_channels([4, 1, 3, 3], 4, 9 * c + 4), (c, c));
        }
        // 2 groups, 2 inputs -> 4 outputs: outputs 2 and 3 read input 1.
        assert_eq!(conv_channels([4, 1, 1, 1], 2, 3), (3, 1));
    }

    #[test]
    fn bias_correction_removes_the_mean_shift_of_rounded_weights() {
        // One output, two inputs with means 2 and -1; the rounding moves the weights by +0.1 and
        // -0.2, so the output moves by 0.1 * 2 + (-0.2) * (-1) = 0.4 on average.
        let w = [1.0f32, 0.5];
        let dq = [1.1f32, 0.3];
        let b = corrected_bias(&[0.25], &w, |k| dq[k], |k| (0, k), &[2.0, -1.0]);
        assert!((b[0] - (0.25 - 0.4)).abs() < 1e-6, "{b:?}");
        // Without calibration means, the bias is kept.
        assert_eq!(
            corrected_bias(&[0.25], &w, |k| dq[k], |k| (0, k), &[]),
            vec![0.25]
        );
    }
}
