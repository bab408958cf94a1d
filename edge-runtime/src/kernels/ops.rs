//! Kestrel's kernels as tract operators: each implements tract's op traits (`Op`, `EvalOp`,
//! `TypedOp`), holds its weights, and splits its planes across the executor tract runs with, so
//! `--threads` applies to them as to tract's matrix products.

use std::sync::Arc;

use tract_nnef::prelude::*;
use tract_nnef::tract_core::internal::*;

use super::conv1x1::{MR, NC, Pointwise};
use super::qconv1x1::{InputQuant, QIn, QIsa, QNR, QPointwise, padded};
use super::qconv3x3::QConv3x3;
use super::qdepthwise::{QDepthwise3x3, QOut};
use super::scratch;

/// Pixels from which a pointwise convolution's threads split the plane's columns rather than
/// its output channels (each then reads a part of the input instead of all of it).
const COLUMN_SPLIT: usize = 512;

/// The output of one image, written by several threads in disjoint column ranges.
struct SharedOut(*mut f32);
// SAFETY: the threads write disjoint columns (see `KestrelPointwise::eval`).
unsafe impl Sync for SharedOut {}
use super::conv3x3::{Dense3x3, Depthwise3x3};
use super::simd::Isa;

/// The output of a 1x1 convolution of `[inputs, outputs]` channels on `fact` (f32, the
/// channels on axis 0, or 1 with `batched[0]`), with a batch axis when `batched[1]`.
fn pointwise_fact(
    fact: &TypedFact,
    batched: [bool; 2],
    [inputs, outputs]: [usize; 2],
    input_type: DatumType,
) -> TractResult<TVec<TypedFact>> {
    ensure!(
        fact.datum_type == input_type,
        "a Kestrel pointwise op takes {input_type:?}, got {:?}",
        fact.datum_type
    );
    let [bi, bo] = batched.map(usize::from);
    // Two axes of pixels after the channels (a convolution), or none (a dense layer's rows).
    ensure!(
        (fact.rank() == 3 + bi || fact.rank() == 1 + bi) && fact.shape[bi] == inputs.to_dim(),
        "a Kestrel pointwise op expects {inputs} channels on axis {bi} of a rank {} or {} input, \
         got {:?}",
        1 + bi,
        3 + bi,
        fact.shape
    );
    let n = if bi == 1 {
        fact.shape[0].clone()
    } else {
        1.to_dim()
    };
    if bi != bo {
        ensure!(
            n == 1.to_dim(),
            "a batch axis of 1 can be added or dropped, not {n}"
        );
    }
    let mut shape: TVec<TDim> = if bo == 1 { tvec![n] } else { tvec![] };
    shape.push(outputs.to_dim());
    shape.extend(fact.shape.iter().skip(bi + 1).cloned());
    Ok(tvec!(f32::fact(shape)))
}

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

    tract_nnef::tract_core::op_as_typed_op!();
}

impl EvalOp for KestrelDepthwise {
    tract_nnef::tract_core::op_out_of_plan!();

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

    tract_nnef::tract_core::as_op!();
}

/// An int8 depthwise 3x3 convolution with its quantization, rescale, bias and clamp fused
/// ([`QDepthwise3x3`]): float or int8 codes in, float or the next layer's codes out (an int8
/// chain).
#[derive(Debug, Clone)]
pub struct KestrelQDepthwise {
    /// The convolution.
    pub conv: Arc<QDepthwise3x3>,
    /// NCHW (true) or CHW (tract drops a batch axis of 1).
    pub batched: bool,
    /// The float kernel it runs with.
    pub isa: Isa,
    /// Whether the input is already int8 codes, quantized as this convolution quantizes.
    pub codes_in: bool,
    /// Writes the int8 codes of the op after it, quantized this way, rather than floats.
    pub codes_out: Option<InputQuant>,
}

impl PartialEq for KestrelQDepthwise {
    fn eq(&self, other: &Self) -> bool {
        self.isa == other.isa
            && self.batched == other.batched
            && self.codes_in == other.codes_in
            && self.codes_out == other.codes_out
            && *self.conv == *other.conv
    }
}
impl Eq for KestrelQDepthwise {}

impl Op for KestrelQDepthwise {
    fn name(&self) -> StaticName {
        "KestrelQDepthwise3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let c = &self.conv;
        Ok(vec![format!(
            "{} channels, stride {}, clamp [{}, {}], {} in, {} out, {}",
            c.channels(),
            c.geom().stride,
            c.clamp.lo,
            c.clamp.hi,
            if self.codes_in { "int8" } else { "f32" },
            if self.codes_out.is_some() {
                "int8"
            } else {
                "f32"
            },
            self.isa.name()
        )])
    }

    tract_nnef::tract_core::op_as_typed_op!();
}

impl EvalOp for KestrelQDepthwise {
    tract_nnef::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let c = &self.conv;
        let g = *c.geom();
        let view = input.try_as_plain_ram()?;
        let x = if self.codes_in {
            QIn::Codes(view.as_slice::<i8>()?)
        } else {
            QIn::Float(view.as_slice::<f32>()?)
        };
        ensure!(x.len() % (c.channels() * g.in_plane()) == 0, "input size");
        let n = x.len() / (c.channels() * g.in_plane());
        let shape = out_shape(self.batched, n, c.channels(), &g);
        let total = n * c.channels() * g.out_plane() * 9;
        let output = match self.codes_out {
            None => planes_tensor::<f32>(&shape, g.out_plane(), total, |first, chunk| {
                c.run_planes(self.isa, x, first, QOut::Float(chunk))
            })?,
            Some(q) => planes_tensor::<i8>(&shape, g.out_plane(), total, |first, chunk| {
                c.run_planes(self.isa, x, first, QOut::Codes(chunk, q))
            })?,
        };
        Ok(tvec!(output.into_tvalue()))
    }
}

/// A tensor of `shape` whose planes of `plane` values `f(first, planes)` computes, the planes
/// split across tract's executor (`cost`: the work, for its choice of threads).
fn planes_tensor<T: Datum + Copy>(
    shape: &[usize],
    plane: usize,
    cost: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) -> TractResult<Tensor> {
    let mut output = unsafe { Tensor::uninitialized::<T>(shape)? };
    {
        let mut view = output.try_as_plain_ram_mut()?;
        tract_linalg::multithread::par_chunks_mut(
            view.as_slice_mut::<T>()?,
            plane,
            cost,
            |first, chunk| {
                f(first, chunk);
                Ok(())
            },
        )?;
    }
    Ok(output)
}

impl TypedOp for KestrelQDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (c, g) = (&self.conv, self.conv.geom());
        let fact = inputs[0];
        let want = if self.codes_in {
            i8::datum_type()
        } else {
            f32::datum_type()
        };
        ensure!(
            fact.datum_type == want,
            "KestrelQDepthwise3x3 takes {want:?}, got {:?}",
            fact.datum_type
        );
        let out = output_fact(
            &f32::fact(fact.shape.clone()),
            self.batched,
            [c.channels(), g.h, g.w],
            [c.channels(), g.oh, g.ow],
            "KestrelQDepthwise3x3",
        )?;
        Ok(tvec!(match self.codes_out {
            None => out,
            Some(_) => i8::fact(out.shape),
        }))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n = if self.batched {
            inputs[0].shape[0].clone()
        } else {
            1.into()
        };
        let macs = self.conv.channels() * self.conv.geom().out_plane() * 9;
        Ok(tvec!((Cost::FMA(i8::datum_type()), n * macs)))
    }

    tract_nnef::tract_core::as_op!();
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
        // The int8 stem (exact int8 arithmetic in f32) under its own name, so listings and
        // profiles tell the two apart.
        if self.conv.int8.is_some() {
            "KestrelQDense3x3".into()
        } else {
            "KestrelDense3x3".into()
        }
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

    tract_nnef::tract_core::op_as_typed_op!();
}

impl EvalOp for KestrelDense {
    tract_nnef::tract_core::op_out_of_plan!();

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
                // Padded once, read by every thread.
                let padded = c.pad(self.isa, img);
                tract_linalg::multithread::par_chunks_mut(
                    out,
                    g.out_plane(),
                    total,
                    |first, chunk| {
                        c.run_padded(&padded, first, chunk);
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

    tract_nnef::tract_core::as_op!();
}

/// A 1x1 convolution with bias, clamp and optionally the residual addition fused (replaces
/// tract's einsum, the `Add`s after it and the `Max`/`Min` pair). Inputs: the activations, then
/// the residual if `residual`.
#[derive(Debug, Clone)]
pub struct KestrelPointwise {
    /// The convolution.
    pub conv: Arc<Pointwise>,
    /// Input, then output: `[n, c, h, w]` (true) or `[c, h, w]` (tract drops a batch axis of 1,
    /// sometimes on one side only).
    pub batched: [bool; 2],
    /// A second input is added before the clamp.
    pub residual: bool,
    /// The instruction set it runs with.
    pub isa: Isa,
}

impl PartialEq for KestrelPointwise {
    fn eq(&self, other: &Self) -> bool {
        self.isa == other.isa
            && self.batched == other.batched
            && self.residual == other.residual
            && *self.conv == *other.conv
    }
}
impl Eq for KestrelPointwise {}

impl Op for KestrelPointwise {
    fn name(&self) -> StaticName {
        "KestrelPointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let c = &self.conv;
        Ok(vec![format!(
            "{} -> {} channels{}, clamp [{}, {}], {}",
            c.inputs,
            c.outputs,
            if self.residual { ", residual" } else { "" },
            c.clamp.lo,
            c.clamp.hi,
            self.isa.name()
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    tract_nnef::tract_core::op_as_typed_op!();
}

impl EvalOp for KestrelPointwise {
    tract_nnef::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let c = &self.conv;
        let input = &inputs[0];
        let facts = self.output_facts(&[&TypedFact::shape_and_dt_of(input)])?;
        let out_shape = facts[0]
            .shape
            .as_concrete()
            .context("concrete shape")?
            .to_vec();
        let view = input.try_as_plain_ram()?;
        let x = view.as_slice::<f32>()?;
        let res_view = if self.residual {
            ensure!(
                inputs.len() == 2,
                "KestrelPointwise: residual input missing"
            );
            ensure!(inputs[1].shape() == &*out_shape, "residual shape");
            Some(inputs[1].try_as_plain_ram()?)
        } else {
            None
        };
        let res = match &res_view {
            Some(v) => Some(v.as_slice::<f32>()?),
            None => None,
        };
        let n = if self.batched[0] { input.shape()[0] } else { 1 };
        let pixels = x.len() / (n * c.inputs).max(1);
        let mut output = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        {
            let mut out_view = output.try_as_plain_ram_mut()?;
            let out = out_view.as_slice_mut::<f32>()?;
            let (xi, oi) = (c.inputs * pixels, c.outputs * pixels);
            for i in 0..n {
                let img = &x[i * xi..(i + 1) * xi];
                let r = res.map(|r| &r[i * oi..(i + 1) * oi]);
                let out = &mut out[i * oi..(i + 1) * oi];
                run_f32_tiles(c, self.isa, img, pixels, r, out)?;
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for KestrelPointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        pointwise_fact(
            inputs[0],
            self.batched,
            [self.conv.inputs, self.conv.outputs],
            f32::datum_type(),
        )
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let axis = usize::from(self.batched[0]);
        let others: TDim = inputs[0]
            .shape
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != axis)
            .map(|(_, d)| d.clone())
            .product();
        let c = &self.conv;
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            others * (c.inputs * c.outputs)
        )))
    }

    tract_nnef::tract_core::as_op!();
}

/// An int8 1x1 convolution with its quantization and requantization fused
/// ([`QPointwise`]): float in (or the int8 codes of an int8 chain), float out, int8 products
/// inside.
#[derive(Debug, Clone)]
pub struct KestrelQPointwise {
    /// The convolution.
    pub conv: Arc<QPointwise>,
    /// Input and output with a batch axis.
    pub batched: [bool; 2],
    /// Whether a second input is added before the clamp.
    pub residual: bool,
    /// The kernels.
    pub isa: QIsa,
    /// Whether the input is already int8 codes (written by the op before it, quantized as this
    /// convolution quantizes) rather than floats.
    pub codes_in: bool,
}

impl PartialEq for KestrelQPointwise {
    fn eq(&self, other: &Self) -> bool {
        self.isa == other.isa
            && self.batched == other.batched
            && self.residual == other.residual
            && self.codes_in == other.codes_in
            && *self.conv == *other.conv
    }
}
impl Eq for KestrelQPointwise {}

impl Op for KestrelQPointwise {
    fn name(&self) -> StaticName {
        "KestrelQPointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let c = &self.conv;
        Ok(vec![format!(
            "{} -> {} channels{}{}, input x{} + {}, clamp [{}, {}], {}",
            c.inputs,
            c.outputs,
            if self.residual { ", residual" } else { "" },
            if self.codes_in { ", int8 codes in" } else { "" },
            c.quant.scale,
            c.quant.zero_point,
            c.clamp.lo,
            c.clamp.hi,
            self.isa.name()
        )])
    }

    tract_nnef::tract_core::op_as_typed_op!();
}

impl EvalOp for KestrelQPointwise {
    tract_nnef::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let c = &self.conv;
        let input = &inputs[0];
        let facts = self.output_facts(&[&TypedFact::shape_and_dt_of(input)])?;
        let out_shape = facts[0]
            .shape
            .as_concrete()
            .context("concrete shape")?
            .to_vec();
        let view = input.try_as_plain_ram()?;
        let x = if self.codes_in {
            QIn::Codes(view.as_slice::<i8>()?)
        } else {
            QIn::Float(view.as_slice::<f32>()?)
        };
        let res_view = if self.residual {
            ensure!(
                inputs.len() == 2,
                "KestrelQPointwise: residual input missing"
            );
            ensure!(inputs[1].shape() == &*out_shape, "residual shape");
            Some(inputs[1].try_as_plain_ram()?)
        } else {
            None
        };
        let res = match &res_view {
            Some(v) => Some(v.as_slice::<f32>()?),
            None => None,
        };
        let n = if self.batched[0] { input.shape()[0] } else { 1 };
        let pixels = x.len() / (n * c.inputs).max(1);
        let mut output = unsafe { Tensor::uninitialized::<f32>(&out_shape)? };
        let float = c.float_route(self.isa);
        let mut codes = scratch::take::<u8>(if float.is_some() {
            0
        } else {
            c.packed_len(pixels)
        });
        {
            let mut out_view = output.try_as_plain_ram_mut()?;
            let out = out_view.as_slice_mut::<f32>()?;
            let (xi, oi) = (c.inputs * pixels, c.outputs * pixels);
            for i in 0..n {
                let img = match x {
                    QIn::Float(x) => QIn::Float(&x[i * xi..(i + 1) * xi]),
                    QIn::Codes(x) => QIn::Codes(&x[i * xi..(i + 1) * xi]),
                };
                let r = res.map(|r| &r[i * oi..(i + 1) * oi]);
                let out = &mut out[i * oi..(i + 1) * oi];
                if let Some(f) = float {
                    run_float_route(c, f, img, pixels, r, out)?;
                    continue;
                }
                tract_linalg::multithread::par_chunks_mut(
                    &mut codes,
                    padded(pixels) * 4,
                    xi,
                    |first, chunk| {
                        c.quantize(self.isa, img, pixels, first, chunk);
                        Ok(())
                    },
                )?;
                run_q_tiles(c, self.isa, &codes, pixels, r, out)?;
            }
        }
        scratch::give(codes);
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for KestrelQPointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        pointwise_fact(
            inputs[0],
            self.batched,
            [self.conv.inputs, self.conv.outputs],
            if self.codes_in {
                i8::datum_type()
            } else {
                f32::datum_type()
            },
        )
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let axis = usize::from(self.batched[0]);
        let others: TDim = inputs[0]
            .shape
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != axis)
            .map(|(_, d)| d.clone())
            .product();
        let c = &self.conv;
        Ok(tvec!((
            Cost::FMA(i8::datum_type()),
            others * (c.inputs * c.outputs)
        )))
    }

    tract_nnef::tract_core::as_op!();
}

/// Runs `conv` over one image `img` (`[inputs, pixels]`) into `out` (`[outputs, pixels]`): a
/// large plane in column ranges of every output channel per thread (each reading only its part
/// of the input), else whole panels of [`MR`] channels per thread.
fn run_f32_tiles(
    c: &Pointwise,
    isa: Isa,
    img: &[f32],
    pixels: usize,
    r: Option<&[f32]>,
    out: &mut [f32],
) -> TractResult<()> {
    if pixels >= COLUMN_SPLIT {
        let mut tiles: Vec<usize> = (0..pixels.div_ceil(NC)).collect();
        let base = SharedOut(out.as_mut_ptr());
        let base = &base;
        return tract_linalg::multithread::par_chunks_mut(
            &mut tiles,
            1,
            c.outputs * pixels * c.inputs,
            |first, chunk| {
                let cols = first * NC..((first + chunk.len()) * NC).min(pixels);
                // SAFETY: the chunks' column ranges are disjoint, and `out` is this image's
                // whole output.
                unsafe { c.run_columns(isa, img, r, cols, base.0) };
                Ok(())
            },
        );
    }
    // Whole panels of MR channels split across threads; the partial one after.
    let whole = c.outputs / MR;
    let (head, tail) = out.split_at_mut(whole * MR * pixels);
    if !head.is_empty() {
        tract_linalg::multithread::par_chunks_mut(
            head,
            MR * pixels,
            whole * MR * pixels * c.inputs,
            |first, chunk| {
                c.run_rows(isa, img, r, first, chunk);
                Ok(())
            },
        )?;
    }
    if !tail.is_empty() {
        c.run_rows(isa, img, r, whole, tail);
    }
    Ok(())
}

/// Columns per block of an int8 convolution's f32 route: its codes (`inputs x` this many
/// floats, 96 KB at 32 inputs) are made just before the tiles read them, in the cache.
const FLOAT_BLOCK: usize = 16 * NC;

/// Runs `conv`'s f32 route `f` ([`QPointwise::float_route`]) over one image `img` into `out`:
/// threads take column ranges, each making the codes of a block of columns and running the
/// tiles on it (one pass over memory, where codes made for the whole plane first cost 2x on a
/// 32 -> 16 convolution at 120x160).
fn run_float_route(
    conv: &QPointwise,
    f: &Pointwise,
    img: QIn,
    pixels: usize,
    res: Option<&[f32]>,
    out: &mut [f32],
) -> TractResult<()> {
    ensure!(out.len() == conv.outputs * pixels, "output size");
    let mut blocks: Vec<usize> = (0..pixels.div_ceil(FLOAT_BLOCK)).collect();
    let base = SharedOut(out.as_mut_ptr());
    let base = &base;
    tract_linalg::multithread::par_chunks_mut(
        &mut blocks,
        1,
        conv.outputs * pixels * conv.inputs,
        |first, chunk| {
            let mut codes = scratch::take::<f32>(conv.inputs * FLOAT_BLOCK);
            for b in first..first + chunk.len() {
                let cols = b * FLOAT_BLOCK..((b + 1) * FLOAT_BLOCK).min(pixels);
                let codes = &mut codes[..conv.inputs * cols.len()];
                conv.float_codes(img, pixels, cols.clone(), codes);
                // SAFETY: the blocks' column ranges are disjoint, and `out` is this image's
                // whole output.
                unsafe { f.run_block(Isa::Avx2Fma, codes, pixels, res, cols, base.0) };
            }
            scratch::give(codes);
            Ok(())
        },
    )
}

/// Runs `conv`'s tiles over one image's quantized input `codes` (planes of `pixels`) into `out`
/// (`[outputs, pixels]`), threads taking column ranges of every output channel.
fn run_q_tiles(
    conv: &QPointwise,
    isa: QIsa,
    codes: &[u8],
    pixels: usize,
    res: Option<&[f32]>,
    out: &mut [f32],
) -> TractResult<()> {
    ensure!(out.len() == conv.outputs * pixels, "output size");
    let mut tiles: Vec<usize> = (0..pixels.div_ceil(QNR)).collect();
    let base = SharedOut(out.as_mut_ptr());
    let base = &base;
    tract_linalg::multithread::par_chunks_mut(
        &mut tiles,
        1,
        conv.outputs * pixels * conv.inputs,
        |first, chunk| {
            let cols = first * QNR..((first + chunk.len()) * QNR).min(pixels);
            // SAFETY: the chunks' column ranges are disjoint, and `out` is this image's whole
            // output.
            unsafe { conv.run_columns(isa, codes, pixels, res, cols, base.0) };
            Ok(())
        },
    )
}

/// An int8 3x3 convolution on many input channels ([`QConv3x3`]: patches of int8 codes through
/// the int8 pointwise tiles): float in, float out. It replaces tract's quantize, int8
/// convolution, cast, rescale, bias and clamp, as a detector head's int8 bundle has them.
#[derive(Debug, Clone)]
pub struct KestrelQConv3x3 {
    /// The convolution.
    pub conv: Arc<QConv3x3>,
    /// NCHW (true) or CHW (tract drops a batch axis of 1).
    pub batched: bool,
    /// The int8 path it runs with.
    pub isa: QIsa,
}

impl PartialEq for KestrelQConv3x3 {
    fn eq(&self, other: &Self) -> bool {
        self.isa == other.isa && self.batched == other.batched && *self.conv == *other.conv
    }
}
impl Eq for KestrelQConv3x3 {}

impl Op for KestrelQConv3x3 {
    fn name(&self) -> StaticName {
        "KestrelQConv3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let c = &self.conv;
        Ok(vec![format!(
            "{} -> {} channels, stride {}, input x{} + {}, clamp [{}, {}], {}",
            c.inputs,
            c.outputs(),
            c.geom.stride,
            c.gemm.quant.scale,
            c.gemm.quant.zero_point,
            c.gemm.clamp.lo,
            c.gemm.clamp.hi,
            self.isa.name()
        )])
    }

    tract_nnef::tract_core::op_as_typed_op!();
}

impl EvalOp for KestrelQConv3x3 {
    tract_nnef::tract_core::op_out_of_plan!();

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
            unsafe { Tensor::uninitialized::<f32>(&out_shape(self.batched, n, c.outputs(), &g))? };
        let mut codes = scratch::take::<u8>(c.codes_len());
        let mut patches = scratch::take::<u8>(c.patches_len());
        {
            let mut out_view = output.try_as_plain_ram_mut()?;
            let out = out_view.as_slice_mut::<f32>()?;
            let in_row = padded(g.in_plane()) * 4;
            let out_row = padded(g.out_plane()) * 4;
            for (i, out) in out
                .chunks_exact_mut(c.outputs() * g.out_plane())
                .enumerate()
            {
                let img = &x[i * image..(i + 1) * image];
                tract_linalg::multithread::par_chunks_mut(
                    &mut codes,
                    in_row,
                    image,
                    |first, chunk| {
                        c.quantize(self.isa, img, first, chunk);
                        Ok(())
                    },
                )?;
                let codes = &codes;
                tract_linalg::multithread::par_chunks_mut(
                    &mut patches,
                    out_row,
                    c.patches_len(),
                    |first, chunk| {
                        c.patches(self.isa, codes, first, chunk);
                        Ok(())
                    },
                )?;
                run_q_tiles(&c.gemm, self.isa, &patches, g.out_plane(), None, out)?;
            }
        }
        scratch::give(codes);
        scratch::give(patches);
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for KestrelQConv3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (c, g) = (&self.conv, &self.conv.geom);
        Ok(tvec!(output_fact(
            inputs[0],
            self.batched,
            [c.inputs, g.h, g.w],
            [c.outputs(), g.oh, g.ow],
            "KestrelQConv3x3"
        )?))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n = if self.batched {
            inputs[0].shape[0].clone()
        } else {
            1.into()
        };
        let c = &self.conv;
        let macs = c.outputs() * c.inputs * c.geom.out_plane() * 9;
        Ok(tvec!((Cost::FMA(i8::datum_type()), n * macs)))
    }

    tract_nnef::tract_core::as_op!();
}
