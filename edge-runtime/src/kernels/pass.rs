//! The graph pass that puts Kestrel's kernels into a model tract has decluttered: each 3x3
//! convolution they cover, with the clamp (ReLU6) after it, becomes one Kestrel op; tract then
//! optimises the rest as usual. The bundle's ONNX files are untouched.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use super::conv3x3::{Clamp, Dense3x3, Depthwise3x3, Geometry, MAX_DENSE_INPUTS};
use super::ops::{KestrelDense, KestrelDepthwise};
use super::simd::Isa;

/// What the pass replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Depthwise 3x3 convolutions now run by Kestrel.
    pub depthwise: usize,
    /// Dense 3x3 convolutions on few channels (the stem) now run by Kestrel.
    pub dense: usize,
    /// Clamps (`Max`/`Min` after a convolution) fused into them.
    pub clamps: usize,
}

/// The two convolutions Kestrel computes itself.
enum Kind {
    Depthwise(Depthwise3x3),
    Dense(Dense3x3),
}

/// A constant input's values as f32, if the wire is a constant.
fn konst(model: &TypedModel, outlet: OutletId) -> Option<Arc<Tensor>> {
    model.outlet_fact(outlet).ok()?.konst.clone()
}

/// The convolution at `node` as a Kestrel kernel, if it is one they cover: f32, NCHW, OIHW
/// constant weights, 3x3, stride 1 or 2 on both axes, no dilation, depthwise or on at most
/// [`MAX_DENSE_INPUTS`] input channels.
fn as_kernel(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Kind>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.kernel_shape.as_slice() != [3, 3]
        || spec.dilations().iter().any(|&d| d != 1)
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let strides = spec.strides();
    if strides[0] != strides[1] {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    if input.datum_type != f32::datum_type() {
        return Ok(None);
    }
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

/// Replaces every convolution Kestrel's kernels cover in `model` (decluttered, concrete shapes,
/// NCHW or CHW) with a Kestrel op running on `isa`.
pub fn install(model: &mut TypedModel, isa: Isa) -> TractResult<PassReport> {
    let mut report = PassReport::default();
    // One convolution per patch, looking again from the start after each (a patch may renumber
    // the graph's nodes); a convolution that is left is never looked at twice.
    let mut left = std::collections::HashSet::new();
    loop {
        let mut found = None;
        for id in model.eval_order()? {
            let node = model.node(id);
            if left.contains(&node.name) || node.op_as::<Conv>().is_none() {
                continue;
            }
            match as_kernel(model, node)? {
                Some(kind) => {
                    found = Some((id, kind));
                    break;
                }
                None => {
                    tracing::debug!("{} stays tract's: {:?}", node.name, node.op());
                    left.insert(node.name.clone());
                }
            }
        }
        let Some((id, mut kind)) = found else {
            break;
        };
        let node = model.node(id);
        let batched = model.outlet_fact(node.inputs[0])?.rank() == 4;
        // Fuse up to two bounds (Clip becomes Max then Min).
        let mut fused = vec![];
        let mut last = id;
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
        if clamp.lo > clamp.hi {
            left.insert(node.name.clone());
            continue;
        }
        let name = format!("{}.kestrel", node.name);
        let mut patch = TypedModelPatch::new("kestrel-kernels");
        let tap = patch.tap_model(model, node.inputs[0])?;
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
                report.dense += 1;
                let op = KestrelDense {
                    conv: Arc::new(d.clone()),
                    batched,
                    isa,
                };
                patch.wire_node(name, op, &[tap])?[0]
            }
        };
        report.clamps += fused.len();
        patch.shunt_outside(model, OutletId::new(last, 0), out)?;
        patch.obliterate(id)?;
        for f in fused {
            patch.obliterate(f)?;
        }
        patch.apply(model)?;
        model.compact()?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tract_onnx::tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::math::{Max, Min};

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
    }

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
            })
            .collect()
    }

    fn model(c: &Case) -> TypedModel {
        let mut m = TypedModel::default();
        let x = m
            .add_source("x", f32::fact([c.n, c.cin, c.h, c.w]))
            .unwrap();
        let kernel = Tensor::from_shape(
            &[c.cout, c.cin / c.group, 3, 3],
            &values(c.cout * c.cin / c.group * 9, c.seed + 1),
        )
        .unwrap();
        let bias = Tensor::from_shape(&[c.cout], &values(c.cout, c.seed + 2)).unwrap();
        let k = m.add_const("k", kernel).unwrap();
        let b = m.add_const("b", bias).unwrap();
        let [top, left, bottom, right] = c.pads;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec![3, 3],
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
                Case { n, cin: c.min(MAX_DENSE_INPUTS), cout, group: 1, h, w, stride, pads, relu6, seed }
            } else {
                Case { n, cin: c, cout: c, group: c, h, w, stride, pads, relu6, seed }
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
        };
        let (want, got, report) = both(&dense16, Isa::detect());
        assert_eq!(report, PassReport::default());
        assert_eq!(want, got);
    }
}
