//! The graph pass that puts Kestrel's kernels into a model tract has decluttered: each 3x3
//! convolution they cover, with the clamp (ReLU6) after it, and each 1x1 convolution (an einsum
//! by then), with its bias, residual addition and clamp, becomes one Kestrel op; tract then
//! optimises the rest as usual. The bundle's ONNX files are untouched.

use std::sync::Arc;

use tract_nnef::prelude::*;
use tract_nnef::tract_core::ops::binary::TypedBinOp;
use tract_nnef::tract_core::ops::cast::Cast;
use tract_nnef::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_nnef::tract_core::ops::einsum::EinSum;
use tract_nnef::tract_core::ops::element_wise::ElementWiseOp;
use tract_nnef::tract_core::ops::nn::DataFormat;
use tract_nnef::tract_core::ops::quant::QuantizeLinearI8;

use super::conv1x1::Pointwise;
use super::conv3x3::{Clamp, Dense3x3, Depthwise3x3, Geometry, Int8Dense, MAX_DENSE_INPUTS};
use super::ops::{
    KestrelDense, KestrelDepthwise, KestrelPointwise, KestrelQConv3x3, KestrelQDepthwise,
    KestrelQPointwise,
};
use super::qconv1x1::{InputQuant, QIsa, QPointwise};
use super::qconv3x3::QConv3x3;
use super::qdepthwise::QDepthwise3x3;
use super::simd::Isa;

/// What the pass replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Depthwise 3x3 convolutions now run by Kestrel.
    pub depthwise: usize,
    /// Dense 3x3 convolutions on few channels (the stem) now run by Kestrel.
    pub dense: usize,
    /// 1x1 convolutions (tract's einsums over channels) now run by Kestrel.
    pub pointwise: usize,
    /// Clamps (`Max`/`Min` after a convolution) fused into them.
    pub clamps: usize,
    /// Residual additions fused into a pointwise convolution.
    pub residuals: usize,
    /// int8 1x1 convolutions (quantize, integer product, rescale) now run by Kestrel.
    pub int8_pointwise: usize,
    /// int8 stems (quantize, integer 3x3 convolution, rescale) now run by Kestrel.
    pub int8_dense: usize,
    /// int8 3x3 convolutions on more channels (a detector head's) now run by Kestrel.
    pub int8_conv: usize,
    /// int8 depthwise 3x3 convolutions now run by Kestrel.
    pub int8_depthwise: usize,
    /// int8 ops that now hand the next int8 op its codes rather than floats (int8 chains).
    pub int8_chains: usize,
}

impl PassReport {
    /// Convolutions now run by Kestrel, of every kind.
    pub fn convolutions(&self) -> usize {
        self.depthwise
            + self.dense
            + self.pointwise
            + self.int8_pointwise
            + self.int8_dense
            + self.int8_conv
            + self.int8_depthwise
    }
}

/// The 3x3 convolutions Kestrel computes itself.
enum Kind {
    Depthwise(Depthwise3x3),
    Dense(Dense3x3),
    /// An int8 convolution on more than [`MAX_DENSE_INPUTS`] channels, with its int8 path.
    Int8(QConv3x3, QIsa),
    /// An int8 depthwise convolution.
    Int8Depthwise(QDepthwise3x3),
}

/// A constant input's values as f32, if the wire is a constant.
fn konst(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    model.outlet_fact(outlet).ok()?.konst.clone()
}

/// The geometry of the 3x3 convolution at `node`, if Kestrel's kernels cover its layout: NCHW
/// (or CHW), OIHW weights, 3x3, stride 1 or 2 on both axes, no dilation, concrete shapes. Its
/// input channels too.
fn conv3x3_geometry(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
) -> TractResult<Option<(usize, Geometry)>> {
    let spec = &conv.pool_spec;
    if !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.kernel_shape.as_slice() != [3, 3]
        || spec.dilations().iter().any(|&d| d != 1)
    {
        return Ok(None);
    }
    let strides = spec.strides();
    if strides[0] != strides[1] {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = input.shape.as_concrete() else {
        return Ok(None);
    };
    // tract drops the batch axis (NCHW -> CHW) wherever the batch is 1.
    let (cin, h, w) = match (spec.data_format, shape) {
        (DataFormat::NCHW, &[_, c, h, w]) | (DataFormat::CHW, &[c, h, w]) => (c, h, w),
        _ => return Ok(None),
    };
    let pads = spec.computed_padding(&[h, w]);
    let Some(geom) = Geometry::new(
        h,
        w,
        strides[0],
        [
            pads[0].pad_before,
            pads[1].pad_before,
            pads[0].pad_after,
            pads[1].pad_after,
        ],
    ) else {
        return Ok(None);
    };
    if (geom.oh, geom.ow) != (pads[0].convoluted, pads[1].convoluted) {
        return Ok(None);
    }
    Ok(Some((cin, geom)))
}

/// The convolution at `node` as a Kestrel kernel, if it is one they cover: f32, the layout of
/// [`conv3x3_geometry`], constant weights, depthwise or on at most [`MAX_DENSE_INPUTS`] input
/// channels.
fn as_kernel(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Kind>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    if conv.q_params.is_some()
        || node.inputs.len() != 3
        || model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type()
    {
        return Ok(None);
    }
    let Some((cin, geom)) = conv3x3_geometry(model, node, conv)? else {
        return Ok(None);
    };
    let (Some(kernel), Some(bias)) = (konst(model, node.inputs[1]), konst(model, node.inputs[2]))
    else {
        return Ok(None);
    };
    if kernel.datum_type() != f32::datum_type() || bias.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let cout = conv.output_channels();
    let weights = kernel.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let bias_values = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let bias = match bias_values.len() {
        1 => vec![bias_values[0]; cout],
        n if n == cout => bias_values,
        _ => return Ok(None),
    };
    if conv.group == cin && cout == cin && weights.len() == cin * 9 {
        return Ok(Some(Kind::Depthwise(Depthwise3x3 {
            geom,
            channels: cin,
            weights,
            bias,
            clamp: Clamp::NONE,
        })));
    }
    if conv.group == 1 && cin <= MAX_DENSE_INPUTS && weights.len() == cout * cin * 9 {
        return Ok(Some(Kind::Dense(Dense3x3 {
            geom,
            inputs: cin,
            outputs: cout,
            weights,
            bias,
            clamp: Clamp::NONE,
            int8: None,
        })));
    }
    Ok(None)
}

/// If the only reader of `node`'s output is a `Max` or `Min` with a scalar constant, the bound it
/// applies and that reader.
fn clamp_after(model: &TypedModel, node: &TypedNode) -> Option<(usize, bool, f32)> {
    let succ = &node.outputs[0].successors;
    if succ.len() != 1 || node.outputs.len() != 1 {
        return None;
    }
    let next = model.node(succ[0].node);
    let bin = next.op_as::<TypedBinOp>()?;
    let is_max = match bin.0.name() {
        "Max" => true,
        "Min" => false,
        _ => return None,
    };
    let other = next.inputs[1 - succ[0].slot];
    let k = konst(model, other)?;
    if k.len() != 1 || k.datum_type() != f32::datum_type() {
        return None;
    }
    let fact = model.outlet_fact(OutletId::new(next.id, 0)).ok()?;
    let ours = model.outlet_fact(OutletId::new(node.id, 0)).ok()?;
    // The constant must not broadcast the output to a larger shape.
    if fact.shape != ours.shape || fact.datum_type != f32::datum_type() {
        return None;
    }
    let v = k.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?[0];
    Some((next.id, is_max, v))
}

/// Up to two bounds (ONNX's Clip becomes `Max` then `Min`) read after `node`: the clamp, the
/// nodes that apply it, and the last of them (`node` itself if none).
fn clamps_after(model: &TypedModel, node: usize) -> (Clamp, Vec<usize>, usize) {
    let mut fused = vec![];
    let mut last = node;
    let mut clamp = Clamp::NONE;
    while fused.len() < 2 {
        let Some((next, is_max, v)) = clamp_after(model, model.node(last)) else {
            break;
        };
        if is_max {
            clamp.lo = clamp.lo.max(v);
        } else {
            clamp.hi = clamp.hi.min(v);
        }
        fused.push(next);
        last = next;
    }
    (clamp, fused, last)
}

/// If the only reader of `node`'s output is an `Add`, that reader and its other input.
fn add_after(model: &TypedModel, node: &TypedNode) -> Option<(usize, OutletId)> {
    let succ = &node.outputs[0].successors;
    if succ.len() != 1 || node.outputs.len() != 1 {
        return None;
    }
    let next = model.node(succ[0].node);
    let bin = next.op_as::<TypedBinOp>()?;
    if bin.0.name() != "Add" || next.inputs.len() != 2 {
        return None;
    }
    Some((next.id, next.inputs[1 - succ[0].slot]))
}

/// A 1x1 convolution as tract's declutter leaves it: an einsum of the activations (`[c, ...]` or
/// `[n, c, ...]`) with constant `[o, c]` weights, then the bias `Add` (for int8, a
/// `QuantizeLinear` before it and a cast and rescale after it); and what Kestrel fuses after it
/// (a residual `Add` of the output's shape, then a clamp).
struct PointwiseMatch {
    einsum: usize,
    conv: PointwiseConv,
    /// The op's (float) input.
    input: OutletId,
    /// Input and output with a batch axis.
    batched: [bool; 2],
    /// Nodes replaced after the einsum, in order; the last one's output is the op's.
    fused: Vec<usize>,
    residual: Option<OutletId>,
    clamps: usize,
}

/// The two kinds of pointwise convolution Kestrel runs.
enum PointwiseConv {
    Float(Pointwise),
    Int8(QPointwise, QIsa),
}

/// The shape of a 1x1 convolution's einsum: input and output channels and which side has a
/// batch axis.
struct EinsumLayout {
    k: usize,
    m: usize,
    batched: [bool; 2],
    /// A dense layer (`mk,kn->mn`, weights `[k, m]`): each row of the input is a plane of one
    /// pixel (a classifier head's `MatMulInteger`).
    dense: bool,
}

/// Whether `op` at `node` reads `[n,] i rest, o i -> [n,] o rest` (channels mixed, every other
/// axis kept) on concrete shapes, with `[o, i]` weights (or `[i]` for one output channel).
fn einsum_layout(
    model: &TypedModel,
    node: &TypedNode,
    op: &EinSum,
    weights: &Tensor,
) -> TractResult<Option<EinsumLayout>> {
    let input = model.outlet_fact(node.inputs[0])?;
    let output = model.outlet_fact(OutletId::new(node.id, 0))?;
    let (Some(shape), Some(out_shape)) = (input.shape.as_concrete(), output.shape.as_concrete())
    else {
        return Ok(None);
    };
    let axes = op.axes.to_string();
    let Some((ins, out)) = axes.split_once("->") else {
        return Ok(None);
    };
    let ins: Vec<Vec<char>> = ins.split(',').map(|s| s.chars().collect()).collect();
    let out: Vec<char> = out.chars().collect();
    // The quantized form has seven more inputs (bias, zero points, scales), all scalars here.
    let (Some(x), Some(w)) = (ins.first(), ins.get(1)) else {
        return Ok(None);
    };
    if ins[2..].iter().any(|a| !a.is_empty()) {
        return Ok(None);
    }
    // A dense layer: rows of `k` inputs, weights `[k, m]`.
    if let ([r, i], [wi, o], [ro, oo]) = (x.as_slice(), w.as_slice(), out.as_slice()) {
        let (k, m) = (shape[1], out_shape[1]);
        let fits = i == wi && r == ro && o == oo && r != i && o != r && o != i;
        return Ok((fits && weights.shape() == [k, m]).then_some(EinsumLayout {
            k,
            m,
            batched: [true, true],
            dense: true,
        }));
    }
    // A batch axis on either side, or on one only where tract dropped it (then of size 1).
    let (bx, bo) = (x.len().saturating_sub(3), out.len().saturating_sub(3));
    if x.len() - bx != 3 || out.len() - bo != 3 || bx > 1 || bo > 1 {
        return Ok(None);
    }
    let batch_ok = match (bx, bo) {
        (1, 1) => x[0] == out[0],
        (1, 0) => shape[0] == 1,
        (0, 1) => out_shape[0] == 1,
        _ => true,
    };
    // One output channel: tract drops the weights' unit axis (`[n,] i h w, i -> [n,] o h w`).
    let (o, i) = match *w.as_slice() {
        [o, i] => (o, i),
        [i] => (out[bo], i),
        _ => return Ok(None),
    };
    let mut labels = x.clone();
    labels.extend(&out);
    labels.sort_unstable();
    labels.dedup();
    let distinct = 3 + 1 + usize::from(bx + bo > 0);
    if !batch_ok
        || x[bx] != i
        || out[bo] != o
        || x[bx + 1..] != out[bo + 1..]
        || labels.len() != distinct
    {
        return Ok(None);
    }
    let (k, m) = (shape[bx], out_shape[bo]);
    if weights.shape() != [m, k] && !(w.len() == 1 && m == 1 && weights.shape() == [k]) {
        return Ok(None);
    }
    Ok(Some(EinsumLayout {
        k,
        m,
        batched: [bx == 1, bo == 1],
        dense: false,
    }))
}

/// If the only reader of `last`'s output is the binary op `name` (`Add`, `Mul`) with a constant
/// f32 per output channel (or one for all) that keeps the shape, that reader and the values
/// (one per channel).
fn channel_const_after(
    model: &TypedModel,
    last: usize,
    name: &str,
    layout: &EinsumLayout,
) -> TractResult<Option<(usize, Vec<f32>)>> {
    let node = model.node(last);
    let succ = &node.outputs[0].successors;
    if succ.len() != 1 || node.outputs.len() != 1 {
        return Ok(None);
    }
    let next = model.node(succ[0].node);
    match next.op_as::<TypedBinOp>() {
        Some(bin) if bin.0.name() == name && next.inputs.len() == 2 => {}
        _ => return Ok(None),
    }
    let output = model.outlet_fact(OutletId::new(last, 0))?;
    let Some(b) = konst(model, next.inputs[1 - succ[0].slot]) else {
        return Ok(None);
    };
    if b.datum_type() != f32::datum_type()
        || model.outlet_fact(OutletId::new(next.id, 0))?.shape != output.shape
    {
        return Ok(None);
    }
    let (m, rank, bo) = (layout.m, output.rank(), usize::from(layout.batched[1]));
    let bs = b.shape();
    let per_channel = b.len() == m
        && bs.len() <= rank
        && bs.iter().rev().enumerate().all(|(j, &d)| {
            let axis = rank - 1 - j;
            d == 1 || (axis == bo && d == m)
        });
    if b.len() != 1 && !per_channel {
        return Ok(None);
    }
    let v = b.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let values = (0..m)
        .map(|o| v[if v.len() == 1 { 0 } else { o }])
        .collect();
    Ok(Some((next.id, values)))
}

/// After `last`, a residual: an Add of a same-shaped f32 tensor that is not a constant and is
/// computed before `einsum` (so cannot depend on its output). The Add and the other input.
fn residual_after(
    model: &TypedModel,
    last: usize,
    einsum: usize,
) -> TractResult<Option<(usize, OutletId)>> {
    let output = model.outlet_fact(OutletId::new(last, 0))?;
    let Some((add, other)) = add_after(model, model.node(last)) else {
        return Ok(None);
    };
    let f = model.outlet_fact(other)?;
    let order = model.eval_order()?;
    let before = |n: usize| order.iter().position(|&x| x == n);
    let fits = f.konst.is_none()
        && before(other.node) < before(einsum)
        && f.datum_type == f32::datum_type()
        && f.shape == output.shape
        && model.outlet_fact(OutletId::new(add, 0))?.shape == output.shape;
    Ok(fits.then_some((add, other)))
}

/// What follows a convolution's bias in both kinds of pointwise ops: the residual `Add` and the
/// clamp, appended to `fused` from `last`.
struct Tail {
    residual: Option<OutletId>,
    clamp: Clamp,
    clamps: usize,
}

fn tail_after(
    model: &TypedModel,
    mut last: usize,
    einsum: usize,
    fused: &mut Vec<usize>,
) -> TractResult<Option<Tail>> {
    let mut residual = None;
    if let Some((add, other)) = residual_after(model, last, einsum)? {
        residual = Some(other);
        fused.push(add);
        last = add;
    }
    let (clamp, clamps, _) = clamps_after(model, last);
    if clamp.lo > clamp.hi {
        return Ok(None);
    }
    let n = clamps.len();
    fused.extend(clamps);
    Ok(Some(Tail {
        residual,
        clamp,
        clamps: n,
    }))
}

/// The einsum at `node` as a Kestrel pointwise convolution, if it is one.
fn as_pointwise(model: &TypedModel, node: &TypedNode) -> TractResult<Option<PointwiseMatch>> {
    let Some(op) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let Some(weights) = konst(model, node.inputs[1]) else {
        return Ok(None);
    };
    if input.datum_type != f32::datum_type() || weights.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    // tract's own kernels run f32 dense layers well: only convolutions here.
    let Some(layout) = einsum_layout(model, node, op, &weights)?.filter(|l| !l.dense) else {
        return Ok(None);
    };
    let wv = weights.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    // The bias, if tract kept one.
    let mut fused = vec![];
    let mut last = node.id;
    let mut bias = vec![0f32; layout.m];
    if let Some((add, values)) = channel_const_after(model, last, "Add", &layout)? {
        bias = values;
        fused.push(add);
        last = add;
    }
    let Some(tail) = tail_after(model, last, node.id, &mut fused)? else {
        return Ok(None);
    };
    Ok(Some(PointwiseMatch {
        einsum: node.id,
        conv: PointwiseConv::Float(Pointwise::new(layout.k, layout.m, &wv, &bias, tail.clamp)),
        input: node.inputs[0],
        batched: layout.batched,
        fused,
        residual: tail.residual,
        clamps: tail.clamps,
    }))
}

/// A scalar constant input of `node`, as `T`.
fn scalar<T: Datum + Copy>(model: &TypedModel, node: &TypedNode, slot: usize) -> Option<T> {
    let k = konst(model, node.inputs[slot])?;
    if k.len() != 1 || k.datum_type() != T::datum_type() {
        return None;
    }
    k.try_as_plain_ram()
        .ok()?
        .as_slice::<T>()
        .ok()
        .map(|v| v[0])
}

/// The operands of an int8 product at `node` (an einsum or convolution with tract's nine
/// quantized inputs) as an int8 bundle writes them: the codes of a float tensor
/// (`QuantizeLinearI8`), constant int8 weights without zero point, no bias, unit scales, int32
/// output. The float input, its quantization, the zero point subtracted (`a0`), the weights.
struct Int8Operands {
    input: OutletId,
    quant: InputQuant,
    a0: i32,
    weights: Arc<Tensor>,
}

fn int8_operands(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Int8Operands>> {
    if node.inputs.len() != 9 {
        return Ok(None);
    }
    let mut qnode = model.node(node.inputs[0].node);
    // A model read from NNEF has the codes cast to a quantized type carrying the product's zero
    // point with scale 1 (tract's NNEF writer adds the cast): the same bytes, so look through it.
    if let Some(cast) = qnode.op_as::<Cast>()
        && cast.to.unquantized() == i8::datum_type()
        && cast.to.qparams().is_some_and(|q| {
            Some(q.zp_scale()) == scalar::<i32>(model, node, 3).map(|a0| (a0, 1.0))
        })
        && model.outlet_fact(qnode.inputs[0])?.datum_type == i8::datum_type()
    {
        qnode = model.node(qnode.inputs[0].node);
    }
    let Some(quant) = qnode
        .op_as::<ElementWiseOp>()
        .and_then(|e| e.0.downcast_ref::<QuantizeLinearI8>())
    else {
        return Ok(None);
    };
    if model.outlet_fact(qnode.inputs[0])?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let Some(weights) = konst(model, node.inputs[1]) else {
        return Ok(None);
    };
    let zero_bias = konst(model, node.inputs[2]).is_some_and(|b| {
        b.datum_type() == i32::datum_type()
            && b.try_as_plain_ram()
                .ok()
                .and_then(|v| v.as_slice::<i32>().ok().map(|v| v.iter().all(|&x| x == 0)))
                .unwrap_or(false)
    });
    let ones = [4, 6, 8]
        .iter()
        .all(|&s| scalar::<f32>(model, node, s) == Some(1.0));
    // The input's zero point: int32, or int8 as a dense layer (`MatMulInteger`) has it.
    let a0 = scalar::<i32>(model, node, 3).or_else(|| scalar::<i8>(model, node, 3).map(i32::from));
    let (Some(a0), Some(0), Some(0)) = (
        a0,
        scalar::<i32>(model, node, 5),
        scalar::<i32>(model, node, 7),
    ) else {
        return Ok(None);
    };
    // int8 weights; from NNEF they are typed as quantized int8 with zero point 0 and scale 1:
    // the same values.
    let plain_i8 = match weights.datum_type().qparams() {
        None => weights.datum_type() == i8::datum_type(),
        Some(q) => {
            weights.datum_type().unquantized() == i8::datum_type() && q.zp_scale() == (0, 1.0)
        }
    };
    if !plain_i8 || !zero_bias || !ones {
        return Ok(None);
    }
    Ok(Some(Int8Operands {
        input: qnode.inputs[0],
        quant: InputQuant {
            scale: quant.scale,
            zero_point: quant.zero_point as i32,
        },
        a0,
        weights,
    }))
}

/// What follows an int8 product: its nodes (cast, `Mul`, `Add`), per output channel the
/// multiplier and the bias.
struct Rescale {
    nodes: Vec<usize>,
    scale: Vec<f32>,
    bias: Vec<f32>,
}

/// After an int8 product at `node`: the cast of its int32 sums to f32, then a per-channel `Mul`
/// (the rescale) and `Add` (the bias).
fn rescale_after(
    model: &TypedModel,
    node: &TypedNode,
    layout: &EinsumLayout,
) -> TractResult<Option<Rescale>> {
    let succ = &node.outputs[0].successors;
    if succ.len() != 1 {
        return Ok(None);
    }
    let cast = model.node(succ[0].node);
    if cast
        .op_as::<Cast>()
        .is_none_or(|c| c.to != f32::datum_type())
    {
        return Ok(None);
    }
    let Some((mul, scales)) = channel_const_after(model, cast.id, "Mul", layout)? else {
        return Ok(None);
    };
    let Some((add, bias)) = channel_const_after(model, mul, "Add", layout)? else {
        return Ok(None);
    };
    Ok(Some(Rescale {
        nodes: vec![cast.id, mul, add],
        scale: scales,
        bias,
    }))
}

/// Whether `isa`'s tiles take these int8 weights: the Pi 4's (`smull` + `smlal`) sum two
/// products in 16 bits, which only a weight of -128 can overflow (`2 x -128 x -128`). Kestrel's
/// bundles keep weights in [-127, 127]; another quantizer's may not, and then tract keeps the
/// convolution.
fn weights_fit(isa: QIsa, w: &[i8]) -> bool {
    isa != QIsa::Neon || !w.contains(&i8::MIN)
}

/// The int8 einsum at `node` (an int8 bundle's `ConvInteger` on 1x1 kernels) as a Kestrel int8
/// pointwise convolution, with the `QuantizeLinear` before it and the cast, rescale, bias,
/// residual and clamp after it, if it is one.
fn as_qpointwise(
    model: &TypedModel,
    node: &TypedNode,
    isa: QIsa,
) -> TractResult<Option<PointwiseMatch>> {
    let Some(op) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if op.q_params != Some(i32::datum_type()) || op.operating_dt != i32::datum_type() {
        return Ok(None);
    }
    let Some(operands) = int8_operands(model, node)? else {
        return Ok(None);
    };
    let Some(layout) = einsum_layout(model, node, op, &operands.weights)? else {
        return Ok(None);
    };
    let Some(Rescale {
        nodes: mut fused,
        scale: scales,
        bias,
    }) = rescale_after(model, node, &layout)?
    else {
        return Ok(None);
    };
    let last = *fused.last().expect("three nodes");
    let Some(tail) = tail_after(model, last, node.id, &mut fused)? else {
        return Ok(None);
    };
    let mut w = operands
        .weights
        .try_as_plain_ram()?
        .as_slice::<i8>()?
        .to_vec();
    if layout.dense {
        // `[k, m]` to the `[m, k]` of a convolution.
        w = (0..layout.m * layout.k)
            .map(|j| w[(j % layout.k) * layout.m + j / layout.k])
            .collect();
    }
    if !weights_fit(isa, &w) {
        return Ok(None);
    }
    let conv = QPointwise::new(
        layout.k,
        layout.m,
        &w,
        operands.quant,
        operands.a0,
        (&scales, &bias),
        tail.clamp,
    );
    Ok(Some(PointwiseMatch {
        einsum: node.id,
        conv: PointwiseConv::Int8(conv, isa),
        input: operands.input,
        batched: layout.batched,
        fused,
        residual: tail.residual,
        clamps: tail.clamps,
    }))
}

/// An int8 bundle's 3x3 convolution (`ConvInteger`, any groups) as the pass finds it: its int8
/// operands, channels, groups, geometry, and the cast, rescale and bias after it.
struct Int8Conv3x3 {
    operands: Int8Operands,
    cin: usize,
    cout: usize,
    group: usize,
    geom: Geometry,
    rescale: Rescale,
}

/// The int8 3x3 convolution at `node`, if it is one Kestrel's kernels read: tract's quantized
/// `Conv` with the operands of [`int8_operands`], the layout of [`conv3x3_geometry`], `[cout,
/// cin / group, 3, 3]` weights and the rescale of [`rescale_after`].
fn int8_conv3x3(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Int8Conv3x3>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    if conv.q_params != Some(i32::datum_type()) {
        return Ok(None);
    }
    let Some(operands) = int8_operands(model, node)? else {
        return Ok(None);
    };
    let Some((cin, geom)) = conv3x3_geometry(model, node, conv)? else {
        return Ok(None);
    };
    let (cout, group) = (conv.output_channels(), conv.group);
    if group == 0 || cin % group != 0 || operands.weights.shape() != [cout, cin / group, 3, 3] {
        return Ok(None);
    }
    let out_rank = model.outlet_fact(OutletId::new(node.id, 0))?.rank();
    let layout = EinsumLayout {
        k: cin,
        m: cout,
        batched: [out_rank == 4; 2],
        dense: false,
    };
    let Some(rescale) = rescale_after(model, node, &layout)? else {
        return Ok(None);
    };
    Ok(Some(Int8Conv3x3 {
        operands,
        cin,
        cout,
        group,
        geom,
        rescale,
    }))
}

/// An int8 bundle's 3x3 convolution at `node` (`ConvInteger`, group 1), with the quantization
/// before it and the cast, rescale and bias after it: the kernel, its float input and the nodes
/// it replaces before the clamp: patches of int8 codes through the int8 tiles of `isa`
/// ([`QConv3x3`]), except on at most [`MAX_DENSE_INPUTS`] inputs (the stem) without a dot
/// product, where Kestrel's dense 3x3 kernel in its exact int8 mode ([`Int8Dense`]) is faster
/// (the stem's patches are half padding: 27 products in 40 lanes; measured on the Cortex-A72).
fn as_qconv3x3(
    model: &TypedModel,
    node: &TypedNode,
    isa: QIsa,
) -> TractResult<Option<(Kind, OutletId, Vec<usize>)>> {
    let Some(Int8Conv3x3 {
        operands,
        cin,
        cout,
        group: 1,
        geom,
        rescale: Rescale {
            nodes: fused,
            scale,
            bias,
        },
    }) = int8_conv3x3(model, node)?
    else {
        return Ok(None);
    };
    let w = &operands.weights;
    let codes = w.try_as_plain_ram()?;
    let codes = codes.as_slice::<i8>()?;
    if cin > MAX_DENSE_INPUTS || isa.dot_product() {
        if i8::try_from(operands.a0).is_err() || !weights_fit(isa, codes) {
            return Ok(None);
        }
        let conv = QConv3x3::new(
            geom,
            [cin, cout],
            codes,
            operands.quant,
            operands.a0,
            (&scale, &bias),
            Clamp::NONE,
        );
        return Ok(Some((Kind::Int8(conv, isa), operands.input, fused)));
    }
    let weights = codes.iter().map(|&v| v as f32).collect();
    let dense = Dense3x3 {
        geom,
        inputs: cin,
        outputs: cout,
        weights,
        bias,
        clamp: Clamp::NONE,
        int8: Some(Int8Dense {
            quant: operands.quant,
            a0: operands.a0,
            scale,
        }),
    };
    Ok(Some((Kind::Dense(dense), operands.input, fused)))
}

/// An int8 bundle's depthwise 3x3 convolution at `node` (`ConvInteger` with one group per
/// channel), with the quantization before it and the cast, rescale and bias after it: the
/// kernel ([`QDepthwise3x3`]), its float input and the nodes it replaces before the clamp.
fn as_qdepthwise(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(Kind, OutletId, Vec<usize>)>> {
    let Some(Int8Conv3x3 {
        operands,
        cin,
        cout,
        group,
        geom,
        rescale: Rescale {
            nodes: fused,
            scale,
            bias,
        },
    }) = int8_conv3x3(model, node)?
    else {
        return Ok(None);
    };
    if group != cin || cout != cin {
        return Ok(None);
    }
    let codes = operands.weights.try_as_plain_ram()?;
    let conv = QDepthwise3x3::new(
        geom,
        codes.as_slice::<i8>()?,
        operands.quant,
        operands.a0,
        (&scale, &bias),
        Clamp::NONE,
    );
    Ok(Some((Kind::Int8Depthwise(conv), operands.input, fused)))
}

/// Links int8 ops into chains: where a Kestrel int8 depthwise convolution's only reader is a
/// Kestrel int8 pointwise one, the depthwise writes the pointwise's int8 codes (its
/// quantization applied at the store, the same arithmetic) and the pointwise reads them: a
/// quarter of the bytes through memory, and no quantize pass.
fn chain_codes(model: &mut TypedModel, report: &mut PassReport) -> TractResult<()> {
    let outputs = model.output_outlets()?.to_vec();
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(dw) = node.op_as::<KestrelQDepthwise>() else {
            continue;
        };
        let out = OutletId::new(id, 0);
        let succ = &node.outputs[0].successors;
        if dw.codes_out.is_some() || succ.len() != 1 || succ[0].slot != 0 || outputs.contains(&out)
        {
            continue;
        }
        let next = succ[0].node;
        let Some(pw) = model.node(next).op_as::<KestrelQPointwise>() else {
            continue;
        };
        if pw.codes_in {
            continue;
        }
        let dw = KestrelQDepthwise {
            codes_out: Some(pw.conv.quant),
            ..dw.clone()
        };
        let pw = KestrelQPointwise {
            codes_in: true,
            ..pw.clone()
        };
        let fact = i8::fact(model.outlet_fact(out)?.shape.clone());
        model.node_mut(id).op = Box::new(dw);
        model.node_mut(next).op = Box::new(pw);
        model.set_outlet_fact(out, fact)?;
        report.int8_chains += 1;
    }
    Ok(())
}

/// Replaces the matched einsum and what follows it with one [`KestrelPointwise`] or
/// [`KestrelQPointwise`].
fn install_pointwise(
    model: &mut TypedModel,
    found: PointwiseMatch,
    isa: Isa,
    report: &mut PassReport,
) -> TractResult<()> {
    let node = model.node(found.einsum);
    let name = format!("{}.kestrel", node.name);
    let mut patch = TypedModelPatch::new("kestrel-pointwise");
    let mut taps = vec![patch.tap_model(model, found.input)?];
    if let Some(r) = found.residual {
        taps.push(patch.tap_model(model, r)?);
        report.residuals += 1;
    }
    let residual = found.residual.is_some();
    let out = match found.conv {
        PointwiseConv::Float(pw) => {
            report.pointwise += 1;
            let op = KestrelPointwise {
                conv: Arc::new(pw),
                batched: found.batched,
                residual,
                isa,
            };
            patch.wire_node(name, op, &taps)?[0]
        }
        PointwiseConv::Int8(pw, isa) => {
            report.int8_pointwise += 1;
            let op = KestrelQPointwise {
                conv: Arc::new(pw),
                batched: found.batched,
                residual,
                isa,
                codes_in: false,
            };
            patch.wire_node(name, op, &taps)?[0]
        }
    };
    let last = *found.fused.last().unwrap_or(&found.einsum);
    patch.shunt_outside(model, OutletId::new(last, 0), out)?;
    patch.obliterate(found.einsum)?;
    for f in &found.fused {
        patch.obliterate(*f)?;
    }
    patch.apply(model)?;
    model.compact()?;
    report.clamps += found.clamps;
    Ok(())
}

/// Replaces every convolution Kestrel's kernels cover in `model` (decluttered, concrete shapes,
/// NCHW or CHW) with a Kestrel op running on `isa`, and int8 pointwise convolutions where this
/// CPU has a fast int8 path ([`QIsa::detect`]).
pub fn install(model: &mut TypedModel, isa: Isa) -> TractResult<PassReport> {
    let qisa = if isa == Isa::Portable {
        None
    } else {
        QIsa::detect()
    };
    install_with(model, isa, qisa)
}

/// [`install`] with the int8 path chosen by the caller (`None`: int8 stays tract's).
pub fn install_with(
    model: &mut TypedModel,
    isa: Isa,
    qisa: Option<QIsa>,
) -> TractResult<PassReport> {
    let mut report = PassReport::default();
    // One convolution per patch, looking again from the start after each (a patch may renumber
    // the graph's nodes); a convolution that is left is never looked at twice.
    let mut left = std::collections::HashSet::new();
    loop {
        let mut found = None;
        for id in model.eval_order()? {
            let node = model.node(id);
            if left.contains(&node.name) {
                continue;
            }
            if node.op_as::<EinSum>().is_some() {
                if let Some(pw) = as_pointwise(model, node)? {
                    found = Some(Found::Pointwise(pw));
                    break;
                }
                if let Some(q) = qisa
                    && let Some(pw) = as_qpointwise(model, node, q)?
                {
                    found = Some(Found::Pointwise(pw));
                    break;
                }
                tracing::debug!("{} stays tract's: {:?}", node.name, node.op());
                left.insert(node.name.clone());
            } else if node.op_as::<Conv>().is_some() {
                if let Some(kind) = as_kernel(model, node)? {
                    found = Some(Found::Conv3x3(id, kind, None));
                    break;
                }
                if let Some(q) = qisa
                    && let Some((kind, input, chain)) = as_qconv3x3(model, node, q)?
                {
                    found = Some(Found::Conv3x3(id, kind, Some((input, chain))));
                    break;
                }
                if qisa.is_some()
                    && let Some((kind, input, chain)) = as_qdepthwise(model, node)?
                {
                    found = Some(Found::Conv3x3(id, kind, Some((input, chain))));
                    break;
                }
                tracing::debug!("{} stays tract's: {:?}", node.name, node.op());
                left.insert(node.name.clone());
            }
        }
        match found {
            None => break,
            Some(Found::Pointwise(pw)) => install_pointwise(model, pw, isa, &mut report)?,
            Some(Found::Conv3x3(id, kind, int8)) => {
                if !install_conv3x3(model, id, kind, int8, isa, &mut report)? {
                    left.insert(model.node(id).name.clone());
                }
            }
        }
    }
    chain_codes(model, &mut report)?;
    Ok(report)
}

/// A convolution the pass takes over.
enum Found {
    /// The convolution, the kernel, and for an int8 convolution its float input and the nodes
    /// between it and the clamp.
    Conv3x3(usize, Kind, Option<(OutletId, Vec<usize>)>),
    Pointwise(PointwiseMatch),
}

/// Replaces the 3x3 convolution `id` and the clamp after it with one Kestrel op (for an int8
/// convolution, `int8`: from its float input, the cast, rescale and bias too); false if the clamp
/// is empty (left to tract).
fn install_conv3x3(
    model: &mut TypedModel,
    id: usize,
    mut kind: Kind,
    int8: Option<(OutletId, Vec<usize>)>,
    isa: Isa,
    report: &mut PassReport,
) -> TractResult<bool> {
    let node = model.node(id);
    let batched = model.outlet_fact(node.inputs[0])?.rank() == 4;
    let (input, mut fused) = int8.unwrap_or((node.inputs[0], vec![]));
    let (clamp, clamps, last) = clamps_after(model, *fused.last().unwrap_or(&id));
    if clamp.lo > clamp.hi {
        return Ok(false);
    }
    let n_clamps = clamps.len();
    fused.extend(clamps);
    let name = format!("{}.kestrel", node.name);
    let mut patch = TypedModelPatch::new("kestrel-kernels");
    let tap = patch.tap_model(model, input)?;
    let out = match &mut kind {
        Kind::Depthwise(dw) => {
            dw.clamp = clamp;
            report.depthwise += 1;
            let op = KestrelDepthwise {
                conv: Arc::new(dw.clone()),
                batched,
                isa,
            };
            patch.wire_node(name, op, &[tap])?[0]
        }
        Kind::Dense(d) => {
            d.clamp = clamp;
            if d.int8.is_some() {
                report.int8_dense += 1;
            } else {
                report.dense += 1;
            }
            let op = KestrelDense {
                conv: Arc::new(d.clone()),
                batched,
                isa,
            };
            patch.wire_node(name, op, &[tap])?[0]
        }
        Kind::Int8Depthwise(q) => {
            q.clamp = clamp;
            report.int8_depthwise += 1;
            let op = KestrelQDepthwise {
                conv: Arc::new(q.clone()),
                batched,
                isa,
                codes_in: false,
                codes_out: None,
            };
            patch.wire_node(name, op, &[tap])?[0]
        }
        Kind::Int8(q, qisa) => {
            q.gemm.clamp = clamp;
            report.int8_conv += 1;
            let op = KestrelQConv3x3 {
                conv: Arc::new(q.clone()),
                batched,
                isa: *qisa,
            };
            patch.wire_node(name, op, &[tap])?[0]
        }
    };
    report.clamps += n_clamps;
    patch.shunt_outside(model, OutletId::new(last, 0), out)?;
    patch.obliterate(id)?;
    for f in fused {
        patch.obliterate(f)?;
    }
    patch.apply(model)?;
    model.compact()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tract_nnef::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_nnef::tract_core::ops::math::{Add, Max, Min};

    /// One convolution as tract builds it from ONNX, with an optional ReLU6 after it.
    struct Case {
        n: usize,
        cin: usize,
        cout: usize,
        group: usize,
        h: usize,
        w: usize,
        stride: usize,
        pads: [usize; 4],
        relu6: bool,
        seed: u64,
        /// Kernel size (3, or 1 for a pointwise convolution).
        kernel: usize,
        /// The input added to the output before the clamp (needs `cin == cout`).
        residual: bool,
    }

    /// Values in [-4, 4).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        crate::kernels::testutil::values(n, seed)
            .into_iter()
            .map(|v| 2.0 * v)
            .collect()
    }

    fn model(c: &Case) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m
            .add_source("x", f32::fact([c.n, c.cin, c.h, c.w]))
            .unwrap();
        let ks = c.kernel;
        let kernel = Tensor::from_shape(
            &[c.cout, c.cin / c.group, ks, ks],
            &values(c.cout * c.cin / c.group * ks * ks, c.seed + 1),
        )
        .unwrap();
        let bias = Tensor::from_shape(&[c.cout], &values(c.cout, c.seed + 2)).unwrap();
        let k = m.add_const("k", kernel).unwrap();
        let b = m.add_const("b", bias).unwrap();
        let [top, left, bottom, right] = c.pads;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![ks, ks],
                padding: PaddingSpec::Explicit(tvec![top, left], tvec![bottom, right]),
                dilations: None,
                strides: Some(tvec![c.stride, c.stride]),
                input_channels: c.cin,
                output_channels: c.cout,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: c.group,
            q_params: None,
        };
        let mut y = m.wire_node("conv", conv, &[x, k, b]).unwrap()[0];
        if c.residual {
            y = m
                .wire_node("residual", TypedBinOp(Box::new(Add), None), &[x, y])
                .unwrap()[0];
        }
        if c.relu6 {
            let lo = m.add_const("lo", tensor4(&[[[[0f32]]]])).unwrap();
            let hi = m.add_const("hi", tensor4(&[[[[6f32]]]])).unwrap();
            y = m
                .wire_node("max", TypedBinOp(Box::new(Max), None), &[y, lo])
                .unwrap()[0];
            y = m
                .wire_node("min", TypedBinOp(Box::new(Min), None), &[y, hi])
                .unwrap()[0];
        }
        m.select_output_outlets(&[y]).unwrap();
        m
    }

    /// Whether Kestrel's output `got` equals tract's `want` bit for bit (`what`: the paths run).
    fn same_bits(want: &[f32], got: &[f32], what: &str) -> Result<(), TestCaseError> {
        prop_assert_eq!(want.len(), got.len());
        for (i, (a, b)) in want.iter().zip(got).enumerate() {
            prop_assert!(
                a.to_bits() == b.to_bits(),
                "{} value {}: tract {} vs kestrel {}",
                what,
                i,
                a,
                b
            );
        }
        Ok(())
    }

    /// Runs the case with tract's kernels and with Kestrel's on `isa`; returns both outputs and
    /// what the pass replaced.
    fn both(c: &Case, isa: Isa) -> (Vec<f32>, Vec<f32>, PassReport) {
        let input = Tensor::from_shape(
            &[c.n, c.cin, c.h, c.w],
            &values(c.n * c.cin * c.h * c.w, c.seed),
        )
        .unwrap();
        let run = |m: TypedModel| {
            let out = m
                .into_optimized()
                .unwrap()
                .into_runnable()
                .unwrap()
                .run(tvec!(input.clone().into_tvalue()))
                .unwrap();
            out[0]
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec()
        };
        let want = run(model(c).into_decluttered().unwrap());
        let mut ours = model(c).into_decluttered().unwrap();
        let report = install(&mut ours, isa).unwrap();
        (want, run(ours), report)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Kestrel's ops compute what tract's own convolution (and clamp) computes, within 1e-5
        /// relative, on random shapes, strides, paddings and channel counts; and the pass takes
        /// over exactly the convolutions it covers, clamp included.
        #[test]
        fn kestrel_ops_match_tract(
            n in 1usize..3, c in 1usize..10, h in 3usize..24, w in 3usize..30,
            stride in 1usize..=2, pads in proptest::array::uniform4(0usize..=1),
            dense in any::<bool>(), cout in 1usize..9, relu6 in any::<bool>(), seed in any::<u64>(),
        ) {
            let case = if dense {
                Case { n, cin: c.min(MAX_DENSE_INPUTS), cout, group: 1, h, w, stride, pads, relu6, seed, kernel: 3, residual: false }
            } else {
                Case { n, cin: c, cout: c, group: c, h, w, stride, pads, relu6, seed, kernel: 3, residual: false }
            };
            for isa in Isa::available() {
                let (want, got, report) = both(&case, isa);
                prop_assert_eq!(report.depthwise + report.dense, 1);
                prop_assert_eq!(report.clamps, if case.relu6 { 2 } else { 0 });
                prop_assert_eq!(want.len(), got.len());
                // Rounding grows with the terms summed (|x|, |w| <= 4), not with the result:
                // 1e-5 relative plus a bound proportional to the sum of the terms' magnitudes.
                let terms = (case.cin / case.group * 9) as f32;
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    prop_assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()) + 1e-7 * terms * 16.0,
                        "{:?} value {}: tract {} vs kestrel {}", isa, i, a, b
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Kestrel's pointwise op computes what tract's own 1x1 convolution (an einsum after
        /// declutter), bias, residual addition and clamp compute, within 1e-5 relative, and the
        /// pass fuses every one of them. (One input channel is not a matrix product: tract turns
        /// it into a broadcast multiplication.)
        #[test]
        fn kestrel_pointwise_matches_tract(
            n in 1usize..3, cin in 2usize..40, cout in 1usize..30, h in 1usize..30,
            w in 1usize..40, residual in any::<bool>(), relu6 in any::<bool>(), seed in any::<u64>(),
        ) {
            let cout = if residual { cin } else { cout };
            let case = Case {
                n, cin, cout, group: 1, h, w, stride: 1, pads: [0; 4], relu6, seed, kernel: 1,
                residual,
            };
            for isa in Isa::available() {
                let (want, got, report) = both(&case, isa);
                prop_assert_eq!(report.pointwise, 1);
                prop_assert_eq!(report.residuals, usize::from(residual));
                prop_assert_eq!(report.clamps, if relu6 { 2 } else { 0 });
                prop_assert_eq!(want.len(), got.len());
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    prop_assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()) + 1e-7 * cin as f32 * 16.0,
                        "{:?} value {}: tract {} vs kestrel {}", isa, i, a, b
                    );
                }
            }
        }
    }

    /// `m` optimised and run on `input`: its first output's values.
    fn run_f32(m: TypedModel, input: &Tensor) -> Vec<f32> {
        let out = m
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap()
            .run(tvec!(input.clone().into_tvalue()))
            .unwrap();
        out[0]
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    /// `x` through tract's `QuantizeLinear` with multiplier `scale` and a zero point drawn from
    /// `seed`: the codes and the zero point.
    fn quantized(m: &mut TypedModel, x: OutletId, scale: f32, seed: u64) -> (OutletId, i32) {
        let zp = (seed % 200) as i32 - 100;
        let quant = tract_nnef::tract_core::ops::quant::quantize_linear_i8(scale, zp as i8);
        (m.wire_node("q", quant, &[x]).unwrap()[0], zp)
    }

    /// The codes `q` times constant int8 `weights` through tract's quantized einsum (`axes`, the
    /// codes' zero point `a0`, no bias, unit scales, int32 sums), cast to f32.
    fn int8_product(
        m: &mut TypedModel,
        q: OutletId,
        axes: &str,
        weights: Tensor,
        a0: Tensor,
    ) -> OutletId {
        let wq = m.add_const("w", weights).unwrap();
        let zero = m.add_const("zero", tensor0(0i32)).unwrap();
        let a0 = m.add_const("a0", a0).unwrap();
        let one = m.add_const("one", tensor0(1f32)).unwrap();
        let einsum = EinSum::newq(axes.parse().unwrap(), i32::datum_type(), i32::datum_type());
        let acc = m
            .wire_node(
                "product",
                einsum,
                &[q, wq, zero, a0, one, zero, one, zero, one],
            )
            .unwrap()[0];
        m.wire_node(
            "cast",
            Cast {
                to: f32::datum_type(),
            },
            &[acc],
        )
        .unwrap()[0]
    }

    /// `y` times a per-output multiplier, plus a per-output bias, as tract rescales an int8
    /// product: both constants of `shape` (one value per output), drawn from `seed`.
    fn rescaled(m: &mut TypedModel, y: OutletId, shape: &[usize], seed: u64) -> OutletId {
        use tract_nnef::tract_core::ops::math::Mul;
        let n = shape.iter().product();
        let scales: Vec<f32> = values(n, seed)
            .iter()
            .map(|v| 1e-3 * (v.abs() + 0.1))
            .collect();
        let s = m
            .add_const(
                m.unique_name("s").into_owned(),
                Tensor::from_shape(shape, &scales).unwrap(),
            )
            .unwrap();
        let bias = Tensor::from_shape(shape, &values(n, seed + 1)).unwrap();
        let b = m.add_const(m.unique_name("b").into_owned(), bias).unwrap();
        let y = m
            .wire_node(
                m.unique_name("mul").into_owned(),
                TypedBinOp(Box::new(Mul), None),
                &[y, s],
            )
            .unwrap()[0];
        m.wire_node(
            m.unique_name("add").into_owned(),
            TypedBinOp(Box::new(Add), None),
            &[y, b],
        )
        .unwrap()[0]
    }

    /// An int8 bundle's 1x1 convolution as tract declutters it: `QuantizeLinear` of a float
    /// input, the int8 einsum with its nine inputs, cast, per-channel rescale and bias, then an
    /// optional residual and ReLU6.
    fn qmodel(
        [n, cin, cout, h, w]: [usize; 5],
        residual: bool,
        relu6: bool,
        seed: u64,
    ) -> (TypedModel, Tensor) {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([n, cin, h, w])).unwrap();
        let (q, zp) = quantized(&mut m, x, 10.0 + (seed % 30) as f32, seed);
        let weights: Vec<i8> = values(cin * cout, seed + 1)
            .iter()
            .map(|v| (v * 31.9) as i8)
            .collect();
        let weights = Tensor::from_shape(&[cout, cin], &weights).unwrap();
        let y = int8_product(&mut m, q, "NIHW,OI,,,,,,,->NOHW", weights, tensor0(zp));
        let mut y = rescaled(&mut m, y, &[1, cout, 1, 1], seed + 2);
        if residual {
            y = m
                .wire_node("residual", TypedBinOp(Box::new(Add), None), &[x, y])
                .unwrap()[0];
        }
        if relu6 {
            let lo = m.add_const("lo", tensor4(&[[[[0f32]]]])).unwrap();
            let hi = m.add_const("hi", tensor4(&[[[[6f32]]]])).unwrap();
            y = m
                .wire_node("max", TypedBinOp(Box::new(Max), None), &[y, lo])
                .unwrap()[0];
            y = m
                .wire_node("min", TypedBinOp(Box::new(Min), None), &[y, hi])
                .unwrap()[0];
        }
        m.select_output_outlets(&[y]).unwrap();
        let input =
            Tensor::from_shape(&[n, cin, h, w], &values(n * cin * h * w, seed + 4)).unwrap();
        (m, input)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Kestrel's int8 pointwise op computes exactly what tract's quantize, int8 einsum, cast,
        /// rescale, bias, residual and clamp compute (bit for bit), with every int8 path, and the
        /// pass fuses all of them. (One input channel is not a matrix product for tract.)
        #[test]
        fn kestrel_int8_pointwise_equals_tract(
            n in 1usize..3, cin in 2usize..80, cout in 1usize..30, h in 1usize..20,
            w in 1usize..40, residual in any::<bool>(), relu6 in any::<bool>(), seed in any::<u64>(),
        ) {
            let cout = if residual { cin } else { cout };
            let (m, input) = qmodel([n, cin, cout, h, w], residual, relu6, seed);
            let want = run_f32(m.clone().into_decluttered().unwrap(), &input);
            for qisa in QIsa::available() {
                let mut ours = m.clone().into_decluttered().unwrap();
                let report = install_with(&mut ours, Isa::Portable, Some(qisa)).unwrap();
                prop_assert_eq!(report.int8_pointwise, 1, "{:?}", qisa);
                prop_assert_eq!(report.residuals, usize::from(residual));
                prop_assert_eq!(report.clamps, if relu6 { 2 } else { 0 });
                let got = run_f32(ours, &input);
                same_bits(&want, &got, &format!("{qisa:?}"))?;
            }
        }
    }

    /// A classifier head's int8 dense layer as tract reads it (`MatMulInteger`): `QuantizeLinear`,
    /// `mk,kn->mn` with weights `[k, m]` and an int8 zero point, cast, rescale and bias per
    /// output, and a ReLU.
    fn qdense([rows, k, m_out]: [usize; 3], relu: bool, seed: u64) -> (TypedModel, Tensor) {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([rows, k])).unwrap();
        let (q, zp) = quantized(&mut m, x, 10.0 + (seed % 30) as f32, seed);
        // Kestrel's quantizer keeps weights in [-127, 127]; odd seeds also have -128 (another
        // quantizer's), which the Pi 4's tiles leave to tract.
        let weights: Vec<i8> = values(k * m_out, seed + 1)
            .iter()
            .map(|v| ((v * 40.0) as i8).max(if seed.is_multiple_of(2) { -127 } else { -128 }))
            .collect();
        let weights = Tensor::from_shape(&[k, m_out], &weights).unwrap();
        let y = int8_product(&mut m, q, "mk,kn,,,,,,,->mn", weights, tensor0(zp as i8));
        let mut y = rescaled(&mut m, y, &[1, m_out], seed + 2);
        if relu {
            let lo = m.add_const("lo", tensor2(&[[0f32]])).unwrap();
            y = m
                .wire_node("max", TypedBinOp(Box::new(Max), None), &[y, lo])
                .unwrap()[0];
        }
        m.select_output_outlets(&[y]).unwrap();
        let input = Tensor::from_shape(&[rows, k], &values(rows * k, seed + 4)).unwrap();
        (m, input)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// A classifier head's int8 dense layers take Kestrel's int8 pointwise op (each row a
        /// plane of one pixel, the weights transposed) and compute what tract computes, bit for
        /// bit, with every int8 path (with AVX2 alone they ran in tract's int8 product: 1.7 ms of
        /// a 14 ms classifier frame on Zen 2).
        #[test]
        fn kestrel_int8_dense_equals_tract(
            rows in 1usize..3, k in 2usize..1300, m_out in 2usize..120, relu in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let (m, input) = qdense([rows, k, m_out], relu, seed);
            let want = run_f32(m.clone().into_decluttered().unwrap(), &input);
            let min_weight = seed % 2 == 1
                && values(k * m_out, seed + 1).iter().any(|v| v * 40.0 <= -128.0);
            for qisa in QIsa::available() {
                let mut ours = m.clone().into_decluttered().unwrap();
                let report = install_with(&mut ours, Isa::Portable, Some(qisa)).unwrap();
                let replaced = !(qisa == QIsa::Neon && min_weight);
                prop_assert_eq!(report.int8_pointwise, usize::from(replaced), "{:?}", qisa);
                let got = run_f32(ours, &input);
                same_bits(&want, &got, &format!("{qisa:?}"))?;
            }
        }
    }

    /// An int8 bundle's stem as tract declutters it: `QuantizeLinear`, the int8 3x3 convolution
    /// with its nine inputs, cast, per-channel rescale and bias, ReLU6.
    fn qstem(
        shape: [usize; 5],
        stride: usize,
        pads: [usize; 4],
        seed: u64,
    ) -> (TypedModel, Tensor) {
        qconv(shape, 3, stride, pads, seed)
    }

    /// [`qstem`] with a `k`x`k` kernel (1: an int8 bundle's pointwise convolution as ONNX's
    /// `ConvInteger` gives it, before tract turns it into an einsum).
    fn qconv(
        [n, cin, cout, h, w]: [usize; 5],
        k: usize,
        stride: usize,
        pads: [usize; 4],
        seed: u64,
    ) -> (TypedModel, Tensor) {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([n, cin, h, w])).unwrap();
        let layer = QLayer {
            channels: [cin, cout],
            k,
            group: 1,
            stride,
            pads,
            relu6: true,
        };
        let y = qconv_layer(&mut m, x, &layer, seed);
        m.select_output_outlets(&[y]).unwrap();
        let input =
            Tensor::from_shape(&[n, cin, h, w], &values(n * cin * h * w, seed + 4)).unwrap();
        (m, input)
    }

    /// One int8 convolution of a test model.
    struct QLayer {
        /// Input and output channels.
        channels: [usize; 2],
        /// Kernel size.
        k: usize,
        /// Groups (the channels for a depthwise convolution).
        group: usize,
        stride: usize,
        pads: [usize; 4],
        relu6: bool,
    }

    /// An int8 bundle's convolution on `x` as tract reads it: `QuantizeLinear`, the int8
    /// convolution with its nine inputs, cast, per-channel rescale and bias, ReLU6 (optional);
    /// node names made unique, so that layers can follow one another.
    fn qconv_layer(m: &mut TypedModel, x: OutletId, l: &QLayer, seed: u64) -> OutletId {
        let [cin, cout] = l.channels;
        let k = l.k;
        let name = |m: &TypedModel, s: &str| m.unique_name(s).into_owned();
        let zp = (seed % 200) as i32 - 100;
        let quant = tract_nnef::tract_core::ops::quant::quantize_linear_i8(
            20.0 + (seed % 40) as f32,
            zp as i8,
        );
        let q = m.wire_node(name(m, "q"), quant, &[x]).unwrap()[0];
        let per = cin / l.group;
        let weights: Vec<i8> = values(cout * per * k * k, seed + 1)
            .iter()
            .map(|v| (v * 31.9) as i8)
            .collect();
        let wq = m
            .add_const(
                name(m, "w"),
                Tensor::from_shape(&[cout, per, k, k], &weights).unwrap(),
            )
            .unwrap();
        let zero = m.add_const(name(m, "zero"), tensor0(0i32)).unwrap();
        let a0 = m.add_const(name(m, "a0"), tensor0(zp)).unwrap();
        let one = m.add_const(name(m, "one"), tensor0(1f32)).unwrap();
        let [top, left, bottom, right] = l.pads;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![k, k],
                padding: PaddingSpec::Explicit(tvec![top, left], tvec![bottom, right]),
                dilations: None,
                strides: Some(tvec![l.stride, l.stride]),
                input_channels: cin,
                output_channels: cout,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: l.group,
            q_params: Some(i32::datum_type()),
        };
        let acc = m
            .wire_node(
                name(m, "conv"),
                conv,
                &[q, wq, zero, a0, one, zero, one, zero, one],
            )
            .unwrap()[0];
        let mut y = m
            .wire_node(
                name(m, "cast"),
                Cast {
                    to: f32::datum_type(),
                },
                &[acc],
            )
            .unwrap()[0];
        y = rescaled(m, y, &[1, cout, 1, 1], seed + 2);
        if l.relu6 {
            let lo = m.add_const(name(m, "lo"), tensor4(&[[[[0f32]]]])).unwrap();
            let hi = m.add_const(name(m, "hi"), tensor4(&[[[[6f32]]]])).unwrap();
            y = m
                .wire_node(name(m, "max"), TypedBinOp(Box::new(Max), None), &[y, lo])
                .unwrap()[0];
            y = m
                .wire_node(name(m, "min"), TypedBinOp(Box::new(Min), None), &[y, hi])
                .unwrap()[0];
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Kestrel's dense 3x3 kernel in its int8 mode computes exactly what tract's quantize,
        /// int8 convolution (padded with the zero point), cast, rescale, bias and clamp compute,
        /// bit for bit, on every float instruction set, and the pass fuses all of them.
        #[test]
        fn kestrel_int8_stem_equals_tract(
            n in 1usize..3, cin in 1usize..=MAX_DENSE_INPUTS, cout in 1usize..12, h in 3usize..24,
            w in 3usize..30, stride in 1usize..=2, pads in proptest::array::uniform4(0usize..=1),
            seed in any::<u64>(),
        ) {
            let (m, input) = qstem([n, cin, cout, h, w], stride, pads, seed);
            let want = run_f32(m.clone().into_decluttered().unwrap(), &input);
            for isa in Isa::available() {
                let mut ours = m.clone().into_decluttered().unwrap();
                let report = install_with(&mut ours, isa, Some(QIsa::Portable)).unwrap();
                prop_assert_eq!(report.int8_dense, 1, "{:?}", isa);
                prop_assert_eq!(report.clamps, 2);
                let got = run_f32(ours, &input);
                same_bits(&want, &got, &format!("{isa:?}"))?;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Kestrel's int8 3x3 convolution (patches of codes through the int8 tiles; the exact
        /// int8 stem kernel on few channels without a dot product) computes exactly what tract's
        /// quantize, int8 convolution, cast, rescale, bias and clamp compute, bit for bit, with
        /// every int8 path, read from the graph or back from NNEF.
        #[test]
        fn kestrel_int8_conv3x3_equals_tract(
            n in 1usize..3, cin in 1usize..40, cout in 1usize..20, h in 1usize..14,
            w in 1usize..22, stride in 1usize..=2, pads in proptest::array::uniform4(0usize..=2),
            nnef in any::<bool>(), seed in any::<u64>(),
        ) {
            let (m, input) = qconv([n, cin, cout, h, w], 3, stride, pads, seed);
            let want = run_f32(m.clone().into_decluttered().unwrap(), &input);
            // Shapes with an empty output are not convolutions to take over.
            prop_assume!(!want.is_empty());
            for qisa in QIsa::available() {
                let mut ours = if nnef { through_nnef(&m) } else { m.clone() }
                    .into_decluttered()
                    .unwrap();
                let report = install_with(&mut ours, Isa::Portable, Some(qisa)).unwrap();
                let patches = cin > MAX_DENSE_INPUTS || qisa.dot_product();
                prop_assert_eq!(
                    (report.int8_conv, report.int8_dense),
                    if patches { (1, 0) } else { (0, 1) },
                    "{:?}", qisa
                );
                prop_assert_eq!(report.clamps, 2);
                let got = run_f32(ours, &input);
                same_bits(&want, &got, &format!("{qisa:?}"))?;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Kestrel's int8 depthwise op (the float kernel on the codes, exact) computes what
        /// tract's quantize, grouped int8 convolution (padded with the zero point), cast,
        /// rescale, bias and clamp compute, bit for bit, on every float instruction set, read
        /// from the graph or back from NNEF.
        #[test]
        fn kestrel_int8_depthwise_equals_tract(
            n in 1usize..3, c in 2usize..20, h in 1usize..16, w in 1usize..40,
            stride in 1usize..=2, pads in proptest::array::uniform4(0usize..=2),
            relu6 in any::<bool>(), nnef in any::<bool>(), seed in any::<u64>(),
        ) {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([n, c, h, w])).unwrap();
            let layer = QLayer { channels: [c, c], k: 3, group: c, stride, pads, relu6 };
            let y = qconv_layer(&mut m, x, &layer, seed);
            m.select_output_outlets(&[y]).unwrap();
            let input =
                Tensor::from_shape(&[n, c, h, w], &values(n * c * h * w, seed + 4)).unwrap();
            let want = run_f32(m.clone().into_decluttered().unwrap(), &input);
            prop_assume!(!want.is_empty());
            for isa in Isa::available() {
                let mut ours = if nnef { through_nnef(&m) } else { m.clone() }
                    .into_decluttered()
                    .unwrap();
                let report = install_with(&mut ours, isa, Some(QIsa::Portable)).unwrap();
                prop_assert_eq!(report.int8_depthwise, 1, "{:?}", isa);
                prop_assert_eq!(report.clamps, if relu6 { 2 } else { 0 });
                let got = run_f32(ours, &input);
                same_bits(&want, &got, &format!("{isa:?}"))?;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// An int8 depthwise convolution read only by an int8 pointwise one (an inverted
        /// residual block's depthwise and projection) becomes an int8 chain: the depthwise
        /// writes the pointwise's codes, and the pair still computes what tract computes, bit
        /// for bit, with every float and int8 path, read from the graph or back from NNEF.
        #[test]
        fn int8_chain_equals_tract(
            n in 1usize..3, c in 2usize..48, cout in 1usize..24, h in 1usize..14,
            w in 1usize..30, stride in 1usize..=2, relu6 in any::<bool>(), nnef in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact([n, c, h, w])).unwrap();
            let dw = QLayer { channels: [c, c], k: 3, group: c, stride, pads: [1; 4], relu6: true };
            let y = qconv_layer(&mut m, x, &dw, seed);
            let pw = QLayer { channels: [c, cout], k: 1, group: 1, stride: 1, pads: [0; 4], relu6 };
            let y = qconv_layer(&mut m, y, &pw, seed / 2);
            m.select_output_outlets(&[y]).unwrap();
            let input =
                Tensor::from_shape(&[n, c, h, w], &values(n * c * h * w, seed + 4)).unwrap();
            let want = run_f32(m.clone().into_decluttered().unwrap(), &input);
            for (isa, qisa) in Isa::available().into_iter().flat_map(|i| QIsa::available().into_iter().map(move |q| (i, q))) {
                let mut ours = if nnef { through_nnef(&m) } else { m.clone() }
                    .into_decluttered()
                    .unwrap();
                let report = install_with(&mut ours, isa, Some(qisa)).unwrap();
                prop_assert_eq!(
                    (report.int8_depthwise, report.int8_pointwise, report.int8_chains),
                    (1, 1, 1),
                    "{:?} {:?}", isa, qisa
                );
                let got = run_f32(ours, &input);
                same_bits(&want, &got, &format!("{isa:?} {qisa:?}"))?;
            }
        }
    }

    /// `m` written by tract's NNEF writer with Kestrel's registry and read back: the form a board
    /// loads from a bundle's `.nnef.tar` (the writer types int8 codes as quantized types).
    fn through_nnef(m: &TypedModel) -> TypedModel {
        let nnef = crate::nnef::nnef();
        let tar = nnef
            .write_to_tar_with_config(m, Vec::new(), false, true)
            .unwrap();
        nnef.model_for_read(&mut &tar[..]).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Read back from NNEF, an int8 bundle's stem and pointwise convolutions still become
        /// Kestrel's int8 ops, and compute bit for bit what tract computes on the original graph.
        #[test]
        fn int8_convolutions_read_from_nnef_take_kestrel_kernels(
            n in 1usize..3, cin in 2usize..=MAX_DENSE_INPUTS, cout in 1usize..12, h in 3usize..20,
            w in 3usize..24, stride in 1usize..=2, pads in proptest::array::uniform4(0usize..=1),
            pointwise in any::<bool>(), seed in any::<u64>(),
        ) {
            let (k, stride, pads, cin) =
                if pointwise { (1, 1, [0; 4], cin * 9) } else { (3, stride, pads, cin) };
            let (m, input) = qconv([n, cin, cout, h, w], k, stride, pads, seed);
            let want = run_f32(m.clone().into_decluttered().unwrap(), &input);
            let mut ours = through_nnef(&m).into_decluttered().unwrap();
            let report = install_with(&mut ours, Isa::Portable, Some(QIsa::Portable)).unwrap();
            prop_assert_eq!(
                (report.int8_dense, report.int8_pointwise),
                if pointwise { (0, 1) } else { (1, 0) }
            );
            prop_assert_eq!(report.clamps, 2);
            let got = run_f32(ours, &input);
            same_bits(&want, &got, "")?;
        }
    }

    /// Not a test: `cargo test -p kestrel-edge --lib kernels::pass::tests::pointwise_speed --
    /// --ignored --nocapture` times tract's 1x1 convolution against Kestrel's on MobileNetV2's
    /// shapes, one thread.
    #[test]
    #[ignore]
    fn pointwise_speed() {
        for (k, m, hw) in crate::kernels::testutil::POINTWISE_SHAPES
            .into_iter()
            .chain([(16, 96, 139), (24, 144, 70)])
        {
            let case = Case {
                n: 1,
                cin: k,
                cout: m,
                group: 1,
                h: hw,
                w: hw,
                stride: 1,
                pads: [0; 4],
                relu6: true,
                seed: 1,
                kernel: 1,
                residual: false,
            };
            let input = Tensor::from_shape(&[1, k, hw, hw], &values(k * hw * hw, 2)).unwrap();
            let mut ours = model(&case).into_decluttered().unwrap();
            install(&mut ours, Isa::detect()).unwrap();
            let mut line = format!("{k:>4} -> {m:>4} at {hw:>3}x{hw:<3}");
            let macs = (k * m * hw * hw) as f64;
            for (name, graph) in [
                ("tract", model(&case).into_decluttered().unwrap()),
                ("kestrel", ours),
            ] {
                let plan = graph.into_optimized().unwrap().into_runnable().unwrap();
                let reps = (3e8 / macs).ceil() as usize;
                let mut best = f64::MAX;
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        plan.run(tvec!(input.clone().into_tvalue())).unwrap();
                    }
                    best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                }
                let gmacs = macs / best / 1e9;
                line += &format!("  {name} {:.3} ms ({gmacs:.1} GMAC/s)", best * 1e3);
            }
            println!("{line}");
        }
    }

    /// tract sometimes drops the batch axis of 1 on one side of a 1x1 convolution only (the first
    /// and last of a trunk): Kestrel's op takes those too and gives tract's shapes and values.
    #[test]
    fn pointwise_with_a_batch_axis_on_one_side() {
        for (axes, input) in [
            ("NIHW,OI->OHW", vec![1, 5, 3, 4]),
            ("IHW,OI->NOHW", vec![5, 3, 4]),
        ] {
            let build = || {
                let mut m = TypedModel::default();
                let x = m.add_source("x", f32::fact(&input)).unwrap();
                let w = Tensor::from_shape(&[7, 5], &values(35, 9)).unwrap();
                let w = m.add_const("w", w).unwrap();
                let op = EinSum {
                    axes: axes.parse().unwrap(),
                    operating_dt: f32::datum_type(),
                    q_params: None,
                };
                let y = m.wire_node("einsum", op, &[x, w]).unwrap();
                m.select_output_outlets(&y).unwrap();
                m
            };
            let x = Tensor::from_shape(&input, &values(60, 4)).unwrap();
            let run = |m: TypedModel| {
                let out = m.into_optimized().unwrap().into_runnable().unwrap();
                out.run(tvec!(x.clone().into_tvalue())).unwrap().remove(0)
            };
            let want = run(build());
            let mut ours = build();
            let report = install(&mut ours, Isa::detect()).unwrap();
            assert_eq!(report.pointwise, 1, "{axes}");
            let got = run(ours);
            assert_eq!(want.shape(), got.shape(), "{axes}");
            let (a, b) = (
                want.try_as_plain_ram().unwrap(),
                got.try_as_plain_ram().unwrap(),
            );
            let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
            for (a, b) in a.iter().zip(b) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                    "{axes}: {a} vs {b}"
                );
            }
        }
    }

    /// With a pool of threads, every Kestrel op (planes, output channels or, on a large plane,
    /// pixel columns split across threads) computes what one thread computes, bit for bit.
    #[test]
    fn threads_compute_what_one_thread_computes() {
        use tract_linalg::multithread::{Executor, multithread_tract_scope};
        let cases = [
            (16, 48, 1, 1, 30, 40, false),  // pointwise, columns split
            (24, 24, 1, 1, 30, 40, true),   // pointwise with residual, columns split
            (20, 30, 1, 1, 7, 9, false),    // pointwise, output channels split
            (24, 24, 24, 3, 30, 40, false), // depthwise
            (3, 32, 1, 3, 40, 50, false),   // stem
        ];
        for (cin, cout, group, kernel, h, w, residual) in cases {
            let pads = if kernel == 3 { [1; 4] } else { [0; 4] };
            let case = Case {
                n: 1,
                cin,
                cout,
                group,
                h,
                w,
                stride: 1,
                pads,
                relu6: true,
                seed: 5,
                kernel,
                residual,
            };
            let input = Tensor::from_shape(&[1, cin, h, w], &values(cin * h * w, 6)).unwrap();
            let mut m = model(&case).into_decluttered().unwrap();
            let report = install(&mut m, Isa::detect()).unwrap();
            assert_eq!(report.convolutions(), 1);
            let plan = m.into_optimized().unwrap().into_runnable().unwrap();
            let one = plan
                .run(tvec!(input.clone().into_tvalue()))
                .unwrap()
                .remove(0);
            tract_linalg::multithread::set_threading_element_threshold(0);
            let two = multithread_tract_scope(Executor::multithread(2), || {
                plan.run(tvec!(input.clone().into_tvalue()))
                    .unwrap()
                    .remove(0)
            });
            assert_eq!(
                *one, *two,
                "{cin} -> {cout}, group {group}, {kernel}x{kernel}"
            );
        }
    }

    /// Convolutions the kernels do not cover stay tract's: 1x1, 5x5, dilated, many-channel dense.
    #[test]
    fn leaves_other_convolutions_alone() {
        let dense16 = Case {
            n: 1,
            cin: 16,
            cout: 8,
            group: 1,
            h: 8,
            w: 8,
            stride: 1,
            pads: [1; 4],
            relu6: true,
            seed: 3,
            kernel: 3,
            residual: false,
        };
        let (want, got, report) = both(&dense16, Isa::detect());
        assert_eq!(report, PassReport::default());
        assert_eq!(want, got);
    }
}
