//! Kestrel's kernels as tract operators: each implements tract's op traits (`Op`, `EvalOp`,
//! `TypedOp`), holds its weights, and splits its planes across the executor tract runs with, so
//! `--threads` applies to them as to tract's matrix products.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::conv3x3::{Dense3x3, Depthwise3x3};
use super::simd::Isa;

/// Checks the input is f32 `[n, c, h, w]` (`batched`) or `[c, h, w]` with the planes this op
/// was built for, and returns the output fact (`c_out` channels of `oh x ow`).
fn output_fact(
    fact: &TypedFact,
    batched: bool,
    [c, h, w]: [usize; 3],
    [c_out, oh, ow]: [usize; 3],
    what: &str,
) -> TractResult<TypedFact> {
    ensure!(fact.datum_type == f32::datum_type(), "{what} takes f32");
    let shape = fact
        .shape
        .as_concrete()
        .with_context(|| format!("{what} needs a concrete input shape"))?;
    if batched {
        ensure!(
            shape.len() == 4 && shape[1..] == [c, h, w],
            "{what} expects [n, {c}, {h}, {w}], got {shape:?}"
        );
        Ok(f32::fact([shape[0], c_out, oh, ow]))
    } else {
        ensure!(
            shape == [c, h, w],
            "{what} expects [{c}, {h}, {w}], got {shape:?}"
        );
        Ok(f32::fact([c_out, oh, ow]))
    }
}

/// The output shape for `n` images: with or without the batch axis.
fn out_shape(batched: bool, n: usize, c: usize, g: &super::conv3x3::Geometry) -> Vec<usize> {
    if batched {
        vec![n, c, g.oh, g.ow]
    } else {
        vec![c, g.oh, g.ow]
    }
}

/// A depthwise 3x3 convolution with bias and clamp fused (replaces tract's `DepthWise` and the
/// `Max`/`Min` pair after it).
#[derive(Debug, Clone)]
pub struct KestrelDepthwise {
    /// The convolution.
    pub conv: Arc<Depthwise3x3>,
    /// NCHW (true) or CHW (tract drops a batch axis of 1).
    pub batched: bool,
    /// The instruction set it runs with.
    pub isa: Isa,
}

impl PartialEq for KestrelDepthwise {
    fn eq(&self, other: &Self) -> bool {
        self.isa == other.isa && self.batched == other.batched && *self.conv == *other.conv
    }
}
impl Eq for KestrelDepthwise {}

impl Op for KestrelDepthwise {
    fn name(&self) -> StaticName {
        "KestrelDepthwise3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let c = &self.conv;
        Ok(vec![format!(
            "{} channels, stride {}, clamp [{}, {}], {}",
            c.channels,
            c.geom.stride,
            c.clamp.lo,
            c.clamp.hi,
            self.isa.name()
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for KestrelDepthwise {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let c = &self.conv;
        let g = c.geom;
        let view = input.try_as_plain_ram()?;
        let x = view.as_slice::<f32>()?;
        ensure!(x.len() % (c.channels * g.in_plane()) == 0, "input size");
        let n = x.len() / (c.channels * g.in_plane());
        let mut output =
            unsafe { Tensor::uninitialized::<f32>(&out_shape(self.batched, n, c.channels, &g))? };
        {
            let mut out_view = output.try_as_plain_ram_mut()?;
            let out = out_view.as_slice_mut::<f32>()?;
            let total = out.len() * 9;
            tract_linalg::multithread::par_chunks_mut(
                out,
                g.out_plane(),
                total,
                |first, chunk| {
                    c.run_planes(self.isa, x, first, chunk);
                    Ok(())
                },
            )?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for KestrelDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (c, g) = (&self.conv, &self.conv.geom);
        Ok(tvec!(output_fact(
            inputs[0],
            self.batched,
            [c.channels, g.h, g.w],
            [c.channels, g.oh, g.ow],
            "KestrelDepthwise3x3"
        )?))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n = if self.batched {
            inputs[0].shape[0].clone()
        } else {
            1.into()
        };
        let macs = self.conv.channels * self.conv.geom.out_plane() * 9;
        Ok(tvec!((Cost::FMA(f32::datum_type()), n * macs)))
    }

    tract_onnx::tract_core::as_op!();
}

/// A dense 3x3 convolution on a few input channels, with bias and clamp fused (replaces tract's
/// convolution of the stem and the `Max`/`Min` pair after it).
#[derive(Debug, Clone)]
pub struct KestrelDense {
    /// The convolution.
    pub conv: Arc<Dense3x3>,
    /// NCHW (true) or CHW (tract drops a batch axis of 1).
    pub batched: bool,
    /// The instruction set it runs with.
    pub isa: Isa,
}

impl PartialEq for KestrelDense {
    fn eq(&self, other: &Self) -> bool {
        self.isa == other.isa && self.batched == other.batched && *self.conv == *other.conv
    }
}
impl Eq for KestrelDense {}

impl Op for KestrelDense {
    fn name(&self) -> StaticName {
        "KestrelDense3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let c = &self.conv;
        Ok(vec![format!(
            "{} -> {} channels, stride {}, clamp [{}, {}], {}",
            c.inputs,
            c.outputs,
            c.geom.stride,
            c.clamp.lo,
            c.clamp.hi,
            self.isa.name()
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for KestrelDense {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let c = &self.conv;
        let g = c.geom;
        let view = input.try_as_plain_ram()?;
        let x = view.as_slice::<f32>()?;
        let image = c.inputs * g.in_plane();
        ensure!(x.len() % image == 0, "input size");
        let n = x.len() / image;
        let mut output =
            unsafe { Tensor::uninitialized::<f32>(&out_shape(self.batched, n, c.outputs, &g))? };
        {
            let mut out_view = output.try_as_plain_ram_mut()?;
            let out = out_view.as_slice_mut::<f32>()?;
            for (i, out) in out.chunks_exact_mut(c.outputs * g.out_plane()).enumerate() {
                let img = &x[i * image..(i + 1) * image];
                let total = out.len() * c.inputs * 9;
                tract_linalg::multithread::par_chunks_mut(
                    out,
                    g.out_plane(),
                    total,
                    |first, chunk| {
                        c.run_channels(self.isa, img, first, chunk);
                        Ok(())
                    },
                )?;
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for KestrelDense {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (c, g) = (&self.conv, &self.conv.geom);
        Ok(tvec!(output_fact(
            inputs[0],
            self.batched,
            [c.inputs, g.h, g.w],
            [c.outputs, g.oh, g.ow],
            "KestrelDense3x3"
        )?))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n = if self.batched {
            inputs[0].shape[0].clone()
        } else {
            1.into()
        };
        let c = &self.conv;
        let macs = c.outputs * c.inputs * c.geom.out_plane() * 9;
        Ok(tvec!((Cost::FMA(f32::datum_type()), n * macs)))
    }

    tract_onnx::tract_core::as_op!();
}
