//! Where inference time goes: each node of tract's optimised plan timed as it runs, summed by
//! operator kind (stem convolution, depthwise, pointwise/matrix product, other convolutions,
//! element-wise, the rest), for `kestrel-edge bench --profile`.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use tract_nnef::prelude::*;

use crate::model::{EdgeError, Model};

/// The kinds of work a MobileNetV2 bundle does, as the profile reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// The first convolution, on the 3 colour channels (with its im2col and matrix product).
    Stem,
    /// Depthwise convolutions.
    Depthwise,
    /// 1x1 convolutions and other matrix products.
    Pointwise,
    /// Dense convolutions other than the stem (the detection head's 3x3 convolutions).
    OtherConv,
    /// Element-wise arithmetic: residual additions, clamps, casts, (de)quantisation.
    ElementWise,
    /// Everything else: reshapes, pooling, copies, sources.
    Rest,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 6] = [
        OpKind::Stem,
        OpKind::Depthwise,
        OpKind::Pointwise,
        OpKind::OtherConv,
        OpKind::ElementWise,
        OpKind::Rest,
    ];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Stem => "stem conv",
            OpKind::Depthwise => "depthwise",
            OpKind::Pointwise => "pointwise / matmul",
            OpKind::OtherConv => "other conv",
            OpKind::ElementWise => "element-wise",
            OpKind::Rest => "rest",
        }
    }
}

/// Channels of a node's first input, if it is an NCHW image.
fn input_channels(model: &TypedModel, node: &TypedNode) -> Option<usize> {
    let fact = model.outlet_fact(*node.inputs.first()?).ok()?;
    let shape = fact.shape.as_concrete()?;
    (shape.len() == 4).then(|| shape[1])
}

fn is_im2col(name: &str) -> bool {
    name.contains("Im2col") || name.contains("Im2Col")
}

/// The kind of one node of an optimised plan, from its op and what feeds it.
pub fn kind_of(model: &TypedModel, node: &TypedNode) -> OpKind {
    let name = node.op().name();
    let conv_kind = |n: &TypedNode| {
        if input_channels(model, n).is_some_and(|c| c <= 4) {
            OpKind::Stem
        } else {
            OpKind::OtherConv
        }
    };
    match name.as_ref() {
        "KestrelDepthwise3x3" | "KestrelQDepthwise3x3" | "DepthWiseConv" => {
            return OpKind::Depthwise;
        }
        "KestrelDense3x3" | "KestrelQDense3x3" => return OpKind::Stem,
        "KestrelPointwise" | "KestrelQPointwise" => return OpKind::Pointwise,
        "KestrelQConv3x3" => return OpKind::OtherConv,
        "DirectSpatialConv" | "BlockedConv" | "ConvHir" | "Conv" => return conv_kind(node),
        n if is_im2col(n) => return conv_kind(node),
        _ => {}
    }
    if name.contains("MatMul") || name.contains("Mmm") || name.contains("EinSum") {
        // A matrix product fed by im2col is that convolution's.
        for input in &node.inputs {
            let producer = model.node(input.node);
            if is_im2col(&producer.op().name()) {
                return conv_kind(producer);
            }
        }
        return OpKind::Pointwise;
    }
    const ELEMENT_WISE: [&str; 14] = [
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Clip",
        "Cast",
        "Quantize",
        "Dequantize",
        "ByScalar",
        "Unicast",
        "BinChain",
        "ElementWise",
    ];
    if ELEMENT_WISE.iter().any(|e| name.contains(e)) {
        return OpKind::ElementWise;
    }
    OpKind::Rest
}

/// Nodes a profile lists one by one.
pub const SLOWEST_NODES: usize = 12;

/// One node of the plan and its time.
#[derive(Debug, Clone, Serialize)]
pub struct NodeTime {
    /// The node's name in the plan (the ONNX node's, with tract's or Kestrel's suffix).
    pub node: String,
    /// Its operator.
    pub op: String,
    /// Its output shape.
    pub shape: String,
    /// Milliseconds per run.
    pub ms: f64,
}

/// Time per kind and per operator name over some runs of one model.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Profile {
    /// Milliseconds per run, by kind.
    pub by_kind: BTreeMap<OpKind, f64>,
    /// Milliseconds per run and node count, by operator name.
    pub by_op: BTreeMap<String, (f64, usize)>,
    /// The slowest nodes, slowest first (at most [`SLOWEST_NODES`] per model).
    pub slowest: Vec<NodeTime>,
    /// Sum of all nodes, milliseconds per run.
    pub total_ms: f64,
}

impl Profile {
    /// Adds another model's profile (trunk + head).
    pub fn add(&mut self, other: &Profile) {
        for (k, v) in &other.by_kind {
            *self.by_kind.entry(*k).or_default() += v;
        }
        for (k, (v, n)) in &other.by_op {
            let e = self.by_op.entry(k.clone()).or_default();
            e.0 += v;
            e.1 += n;
        }
        self.total_ms += other.total_ms;
        self.slowest.extend(other.slowest.iter().cloned());
        self.slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        self.slowest.truncate(SLOWEST_NODES);
    }
}

/// Runs `model` on `input` `iterations` times (after two warm-up runs) timing every node, and
/// reports the mean per run by kind and by operator.
pub fn profile(model: &Model, input: &[f32], iterations: usize) -> Result<Profile, EdgeError> {
    let run_err = |e: TractError| EdgeError::Run {
        path: model.path().to_path_buf(),
        reason: format!("{e:#}"),
    };
    let plan = model.plan();
    let graph = plan.model();
    let tensor = Tensor::from_shape(model.input_shape(), input).map_err(run_err)?;
    let mut per_node = vec![0f64; graph.nodes().len()];
    let iterations = iterations.max(1);
    let mut state = plan.spawn().map_err(run_err)?;
    for i in 0..iterations + 2 {
        let keep = i >= 2;
        state
            .run_plan_with_eval(
                tvec!(tensor.clone().into_tvalue()),
                |ctx, op_state, node, inputs| {
                    let t = Instant::now();
                    let r = tract_nnef::tract_core::plan::eval(ctx, op_state, node, inputs);
                    if keep {
                        per_node[node.id] += t.elapsed().as_secs_f64() * 1e3;
                    }
                    r
                },
            )
            .map_err(run_err)?;
    }
    let mut p = Profile::default();
    for node in graph.nodes() {
        let ms = per_node[node.id] / iterations as f64;
        *p.by_kind.entry(kind_of(graph, node)).or_default() += ms;
        let e = p.by_op.entry(node.op().name().to_string()).or_default();
        e.0 += ms;
        e.1 += 1;
        p.total_ms += ms;
        let fact = &node.outputs[0].fact;
        p.slowest.push(NodeTime {
            node: node.name.clone(),
            op: node.op().name().to_string(),
            shape: match fact.shape.as_concrete() {
                Some(dims) => dims
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x"),
                None => format!("{:?}", fact.shape),
            },
            ms,
        });
    }
    p.slowest.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    p.slowest.truncate(SLOWEST_NODES);
    Ok(p)
}
