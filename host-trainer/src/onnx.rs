//! Writing MobileNetV2 (or any cut of it) as a clean ONNX graph that tract and onnxruntime run fast.
//!
//! Built directly as ONNX protobuf rather than traced: BatchNorm is folded into the convolution
//! weights (in f64), ReLU6 becomes `Clip(0, 6)`, and there is no reshape or identity clutter, so the
//! graph is exactly Conv / Clip / Add (+ GlobalAveragePool, Flatten, Gemm at the end).

use std::path::Path;

use burn::tensor::Tensor;
use prost::Message;
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto::Dimension, tensor_shape_proto::dimension,
    type_proto,
};

use crate::mobilenet::{ConvBn, MobileNetV2};

/// ONNX operator set the exporter writes.
pub const OPSET: i64 = 13;
/// Name of the batch dimension in exported graphs.
pub const BATCH_DIM: &str = "batch";

/// Export failures.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file could not be written.
    #[error("cannot write ONNX model {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A small ONNX graph builder: named values, initializers and nodes.
#[derive(Default)]
pub struct GraphBuilder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    next_id: usize,
}

/// An ONNX node attribute.
pub enum Attr {
    /// A single integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A single float.
    Float(f32),
}

impl GraphBuilder {
    /// A fresh value name with a readable prefix.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_{}", self.next_id)
    }

    /// Add a float32 constant.
    pub fn constant(&mut self, prefix: &str, dims: &[usize], data: &[f32]) -> String {
        assert_eq!(dims.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(prefix, dims, DataType::Float, raw)
    }

    /// Add a constant of any element type from its little-endian bytes (`raw`).
    pub fn initializer(
        &mut self,
        prefix: &str,
        dims: &[usize],
        data_type: DataType,
        raw: Vec<u8>,
    ) -> String {
        let name = self.fresh(prefix);
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data: raw,
            ..Default::default()
        });
        name
    }

    /// Add a node with one output and return the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node_into(op, inputs, &out, attrs);
        out
    }

    /// Add a node writing to a chosen output name.
    pub fn node_into(&mut self, op: &str, inputs: &[&str], output: &str, attrs: Vec<(&str, Attr)>) {
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = AttributeProto {
                    name: name.to_string(),
                    ..Default::default()
                };
                match a {
                    Attr::Int(i) => {
                        p.i = i;
                        p.r#type = AttributeType::Int as i32;
                    }
                    Attr::Ints(v) => {
                        p.ints = v;
                        p.r#type = AttributeType::Ints as i32;
                    }
                    Attr::Float(f) => {
                        p.f = f;
                        p.r#type = AttributeType::Float as i32;
                    }
                }
                p
            })
            .collect();
        let name = format!("{}_{}", op.to_lowercase(), self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name,
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
    }

    /// Finish into a model with one float input and one float output.
    pub fn finish(
        self,
        input: (&str, Vec<Option<usize>>),
        output: (&str, Vec<Option<usize>>),
        metadata: Vec<(String, String)>,
    ) -> ModelProto {
        let value_info = |name: &str, dims: Vec<Option<usize>>| ValueInfoProto {
            name: name.to_string(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .into_iter()
                            .map(|d| Dimension {
                                value: Some(match d {
                                    Some(v) => dimension::Value::DimValue(v as i64),
                                    None => dimension::Value::DimParam(BATCH_DIM.into()),
                                }),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "kestrel".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(GraphProto {
                name: "kestrel".into(),
                node: self.nodes,
                initializer: self.initializers,
                input: vec![value_info(input.0, input.1)],
                output: vec![value_info(output.0, output.1)],
                ..Default::default()
            }),
            metadata_props: metadata
                .into_iter()
                .map(|(key, value)| StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        }
    }
}

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec::<f32>()
        .expect("float parameters")
}

/// A convolution's weights `[out, in / groups, kh, kw]` and bias `[out]` with its BatchNorm (on
/// running statistics) folded in, computed in f64.
pub fn fold_batchnorm(layer: &ConvBn) -> (Vec<f32>, Vec<f32>) {
    let conv = &layer.conv;
    let bn = &layer.bn;
    let w = floats(conv.weight.val());
    let [cout, cin_g, kh, kw] = conv.weight.dims();
    let gamma = floats(bn.gamma.val());
    let beta = floats(bn.beta.val());
    let mean = floats(bn.running_mean.value());
    let var = floats(bn.running_var.value());
    let bias = conv.bias.as_ref().map(|b| floats(b.val()));
    let per_out = cin_g * kh * kw;
    let mut wf = vec![0f32; w.len()];
    let mut bf = vec![0f32; cout];
    for o in 0..cout {
        let scale = gamma[o] as f64 / (var[o] as f64 + bn.epsilon).sqrt();
        for i in 0..per_out {
            wf[o * per_out + i] = (w[o * per_out + i] as f64 * scale) as f32;
        }
        let b0 = bias.as_ref().map_or(0.0, |b| b[o] as f64);
        bf[o] = ((b0 - mean[o] as f64) * scale + beta[o] as f64) as f32;
    }
    (wf, bf)
}

/// Append a convolution with its BatchNorm folded in, and the ReLU6 as a Clip.
fn conv_bn(g: &mut GraphBuilder, x: &str, layer: &ConvBn, clip: (&str, &str)) -> String {
    let conv = &layer.conv;
    let [cout, cin_g, kh, kw] = conv.weight.dims();
    let (wf, bf) = fold_batchnorm(layer);
    let wn = g.constant("w", &[cout, cin_g, kh, kw], &wf);
    let bn_name = g.constant("b", &[cout], &bf);
    let [ph, pw] = [(kh - 1) / 2, (kw - 1) / 2];
    let y = g.node(
        "Conv",
        &[x, &wn, &bn_name],
        vec![
            ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
            (
                "strides",
                Attr::Ints(conv.stride.iter().map(|&s| s as i64).collect()),
            ),
            (
                "pads",
                Attr::Ints(vec![ph as i64, pw as i64, ph as i64, pw as i64]),
            ),
            ("dilations", Attr::Ints(vec![1, 1])),
            ("group", Attr::Int(conv.groups as i64)),
        ],
    );
    if layer.relu6 {
        g.node("Clip", &[&y, clip.0, clip.1], vec![])
    } else {
        y
    }
}

/// Build the ONNX graph of a (possibly cut) MobileNetV2 for inputs of `height` x `width`.
///
/// The batch dimension is symbolic (`batch`); the input is named `input_name`, the output
/// `output_name`.
pub fn mobilenet_graph(
    model: &MobileNetV2,
    height: usize,
    width: usize,
    input_name: &str,
    output_name: &str,
    metadata: Vec<(String, String)>,
) -> ModelProto {
    let mut g = GraphBuilder::default();
    let lo = g.constant("clip_min", &[], &[0.0]);
    let hi = g.constant("clip_max", &[], &[6.0]);
    let clip = (lo.as_str(), hi.as_str());
    let mut x = conv_bn(&mut g, input_name, &model.stem, clip);
    for block in &model.blocks {
        let input = x.clone();
        if let Some(expand) = &block.expand {
            x = conv_bn(&mut g, &x, expand, clip);
        }
        x = conv_bn(&mut g, &x, &block.depthwise, clip);
        x = conv_bn(&mut g, &x, &block.project, clip);
        if block.residual {
            x = g.node("Add", &[&input, &x], vec![]);
        }
    }
    if let Some(last) = &model.last {
        x = conv_bn(&mut g, &x, last, clip);
    }
    let out_dims: Vec<Option<usize>>;
    if model.pooled {
        x = g.node("GlobalAveragePool", &[&x], vec![]);
        x = g.node("Flatten", &[&x], vec![("axis", Attr::Int(1))]);
        if let Some(fc) = &model.classifier {
            let [din, dout] = fc.weight.dims();
            let w = g.constant("fc_w", &[din, dout], &floats(fc.weight.val()));
            let b = fc
                .bias
                .as_ref()
                .map_or_else(|| vec![0.0; dout], |b| floats(b.val()));
            let b = g.constant("fc_b", &[dout], &b);
            g.node("Gemm", &[&x, &w, &b], vec![]);
            out_dims = vec![None, Some(dout)];
        } else {
            let c = model.last.as_ref().map_or(0, |l| l.conv.weight.dims()[0]);
            out_dims = vec![None, Some(c)];
        }
    } else {
        // Shape of a feature map: channels of the last layer, spatial size from the strides.
        let channels = match (&model.last, model.blocks.last()) {
            (Some(l), _) => l.conv.weight.dims()[0],
            (None, Some(b)) => b.project.conv.weight.dims()[0],
            (None, None) => model.stem.conv.weight.dims()[0],
        };
        let mut stride = model.stem.conv.stride[0];
        for b in &model.blocks {
            stride *= b.depthwise.conv.stride[0];
        }
        out_dims = vec![
            None,
            Some(channels),
            Some(height.div_ceil(stride)),
            Some(width.div_ceil(stride)),
        ];
    }
    // Give the last value the public output name.
    let last = g.nodes.last_mut().expect("at least the stem");
    last.output = vec![output_name.to_string()];
    g.finish(
        (input_name, vec![None, Some(3), Some(height), Some(width)]),
        (output_name, out_dims),
        metadata,
    )
}

/// Encode a model and write it to `path`.
pub fn write_model(model: &ModelProto, path: &Path) -> Result<(), ExportError> {
    std::fs::write(path, model.encode_to_vec()).map_err(|source| ExportError::Io {
        path: path.display().to_string(),
        source,
    })
}
