//! int8 depthwise 3x3 convolutions as an int8 bundle has them (`QuantizeLinear`, grouped
//! `ConvInteger`, cast, per-channel rescale, bias, clamp), computed exactly by the float
//! depthwise kernel on the codes: the codes minus the zero point are integers in [-255, 255] and
//! the int8 weights in [-128, 127], so every product and every sum of nine (below 2^19) is exact
//! in f32, in any order, with or without fused multiply-adds. The store then applies
//! `sum * scale + bias` (two roundings, as tract's `Mul` then `Add`) and the clamp, so results
//! equal tract's bit for bit.
//!
//! In an int8 chain the input is the int8 codes the layer before wrote, and the output the codes
//! of the layer after (its `QuantizeLinear` applied here): a quarter of the bytes through memory
//! on each side, with the same arithmetic.

use super::conv3x3::{Clamp, Depthwise3x3, Geometry, float_codes};
use super::qconv1x1::{InputQuant, QIn};
use super::scratch;
use super::simd::Isa;

/// Floats of input codes converted per block of planes (a few planes of a small layer, one of
/// a large one): the block's codes and sums stay in the cache between the passes.
const BLOCK_FLOATS: usize = 8192;

/// An int8 depthwise 3x3 convolution with its requantization fused.
#[derive(Debug, Clone, PartialEq)]
pub struct QDepthwise3x3 {
    /// The convolution of the codes minus `a0`: the int8 weights as floats, no bias, no clamp.
    sums: Depthwise3x3,
    /// How a float input is quantized.
    pub quant: InputQuant,
    /// The zero point the product subtracts (also what ConvInteger pads with).
    pub a0: i32,
    /// Per channel: the multiplier of the int32 sums (input scale x weight scale).
    pub scale: Vec<f32>,
    /// Per channel: the bias added after the multiplier.
    pub bias: Vec<f32>,
    /// Applied after the bias.
    pub clamp: Clamp,
}

/// Where the output planes go.
#[derive(Debug)]
pub enum QOut<'a> {
    /// Floats.
    Float(&'a mut [f32]),
    /// int8 codes of the layer after, quantized the way it quantizes its input.
    Codes(&'a mut [i8], InputQuant),
}

impl QOut<'_> {
    fn len(&self) -> usize {
        match self {
            QOut::Float(o) => o.len(),
            QOut::Codes(o, _) => o.len(),
        }
    }
}

impl QDepthwise3x3 {
    /// A convolution of `channels` planes from `[channels, 9]` int8 weights (row-major taps),
    /// the input's quantization, the zero point the product subtracts, and per channel the
    /// multiplier and bias applied to the int32 sums cast to float.
    pub fn new(
        geom: Geometry,
        weights: &[i8],
        quant: InputQuant,
        a0: i32,
        rescale: (&[f32], &[f32]),
        clamp: Clamp,
    ) -> Self {
        let channels = weights.len() / 9;
        assert_eq!(weights.len(), channels * 9, "nine taps per channel");
        assert_eq!(rescale.0.len(), channels, "one multiplier per channel");
        assert_eq!(rescale.1.len(), channels, "one bias per channel");
        QDepthwise3x3 {
            sums: Depthwise3x3 {
                geom,
                channels,
                weights: weights.iter().map(|&w| w as f32).collect(),
                bias: vec![0.0; channels],
                clamp: Clamp::NONE,
            },
            quant,
            a0,
            scale: rescale.0.to_vec(),
            bias: rescale.1.to_vec(),
            clamp,
        }
    }

    /// Channels (filters).
    pub fn channels(&self) -> usize {
        self.sums.channels
    }

    /// Plane geometry.
    pub fn geom(&self) -> &Geometry {
        &self.sums.geom
    }

    /// Computes output planes `first..first + out_len / out_plane` of a batch laid out
    /// `[n, channels, h, w]` in `input` (plane `p` is channel `p % channels`), with `isa`'s
    /// float kernel.
    pub fn run_planes(&self, isa: Isa, input: QIn, first: usize, mut out: QOut) {
        let g = self.sums.geom;
        let (ip, op) = (g.in_plane(), g.out_plane());
        assert_eq!(out.len() % op, 0, "output is not whole planes");
        let planes = out.len() / op;
        assert!(input.len() >= (first + planes) * ip, "input too short");
        let block = (BLOCK_FLOATS / ip.max(op)).clamp(1, planes.max(1));
        let mut xs = scratch::take::<f32>(block * ip);
        let mut sums = scratch::take::<f32>(match out {
            QOut::Float(_) => 0,
            QOut::Codes(..) => block * op,
        });
        let mut b = 0;
        while b < planes {
            let k = block.min(planes - b);
            let p = first + b;
            let codes = &mut xs[..k * ip];
            match input {
                QIn::Float(x) => float_codes(self.quant, self.a0, &x[p * ip..(p + k) * ip], codes),
                QIn::Codes(x) => {
                    for (o, &c) in codes.iter_mut().zip(&x[p * ip..(p + k) * ip]) {
                        *o = (c as i32 - self.a0) as f32;
                    }
                }
            }
            let range = b * op..(b + k) * op;
            match &mut out {
                QOut::Float(o) => {
                    let dst = &mut o[range];
                    self.sums.run_from(isa, codes, p, dst);
                    for (j, plane) in dst.chunks_exact_mut(op).enumerate() {
                        let c = (p + j) % self.channels();
                        finish_floats(plane, self.scale[c], self.bias[c], self.clamp);
                    }
                }
                QOut::Codes(o, q) => {
                    let s = &mut sums[..k * op];
                    self.sums.run_from(isa, codes, p, s);
                    let dst = &mut o[range];
                    for (j, (plane, codes)) in
                        s.chunks_exact(op).zip(dst.chunks_exact_mut(op)).enumerate()
                    {
                        let c = (p + j) % self.channels();
                        finish_codes(plane, self.scale[c], self.bias[c], self.clamp, *q, codes);
                    }
                }
            }
            b += k;
        }
        scratch::give(xs);
        scratch::give(sums);
    }
}

/// `sum * scale + bias`, clamped, in place: tract's `Mul`, `Add`, `Max`, `Min` (no fused
/// multiply-add: two roundings).
fn finish_floats(plane: &mut [f32], scale: f32, bias: f32, clamp: Clamp) {
    for v in plane.iter_mut() {
        *v = (*v * scale + bias).max(clamp.lo).min(clamp.hi);
    }
}

/// [`finish_floats`] then the next layer's quantization, into `out`.
fn finish_codes(
    sums: &[f32],
    scale: f32,
    bias: f32,
    clamp: Clamp,
    quant: InputQuant,
    out: &mut [i8],
) {
    #[cfg(target_arch = "x86_64")]
    let done = if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        unsafe { x86::finish_codes(sums, scale, bias, clamp, quant, out) }
    } else {
        0
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of every aarch64 target.
    let done = unsafe { arm::finish_codes(sums, scale, bias, clamp, quant, out) };
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    let done = 0;
    for (o, &s) in out[done..].iter_mut().zip(&sums[done..]) {
        let y = (s * scale + bias).max(clamp.lo).min(clamp.hi);
        *o = tract_nnef::tract_core::ops::quant::quantize_linear_f32_i8(
            y,
            quant.scale,
            quant.zero_point,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Clamp, InputQuant};
    use std::arch::x86_64::*;

    /// [`super::finish_codes`] for the whole groups of 16 values; returns how many it did.
    /// `x * scale` is held within +-512 before the conversion (beyond, every code saturates
    /// anyway); `cvtps` rounds half to even, as tract; the packs saturate to int8 (the clamp).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn finish_codes(
        sums: &[f32],
        scale: f32,
        bias: f32,
        clamp: Clamp,
        quant: InputQuant,
        out: &mut [i8],
    ) -> usize {
        let whole = sums.len().min(out.len()) / 16 * 16;
        let (s, b) = (_mm256_set1_ps(scale), _mm256_set1_ps(bias));
        let (lo, hi) = (_mm256_set1_ps(clamp.lo), _mm256_set1_ps(clamp.hi));
        let q = _mm256_set1_ps(quant.scale);
        let (qlo, qhi) = (_mm256_set1_ps(-512.0), _mm256_set1_ps(512.0));
        let zp = _mm256_set1_epi32(quant.zero_point);
        // After the packs: each 128-bit lane holds 4 values of each half, interleaved.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        macro_rules! codes {
            ($p:expr) => {{
                let v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps($p), s), b);
                // max(v, lo) then min(., hi), in tract's order (the same for finite values).
                let v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
                let v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, q), qlo), qhi);
                _mm256_add_epi32(_mm256_cvtps_epi32(v), zp)
            }};
        }
        for i in (0..whole).step_by(16) {
            // SAFETY: `i + 16 <= whole`, inside both slices.
            unsafe {
                let a = codes!(sums.as_ptr().add(i));
                let c = codes!(sums.as_ptr().add(i + 8));
                let w = _mm256_packs_epi32(a, c);
                let w = _mm256_packs_epi16(w, w);
                let w = _mm256_permutevar8x32_epi32(w, order);
                _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), _mm256_castsi256_si128(w));
            }
        }
        whole
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{Clamp, InputQuant};
    use std::arch::aarch64::*;

    /// [`super::finish_codes`] for the whole groups of 8 values; returns how many it did.
    /// `fcvtns` rounds half to even and saturates, as tract's cast; `sqxtn` saturates to int8
    /// (the clamp).
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn finish_codes(
        sums: &[f32],
        scale: f32,
        bias: f32,
        clamp: Clamp,
        quant: InputQuant,
        out: &mut [i8],
    ) -> usize {
        let whole = sums.len().min(out.len()) / 8 * 8;
        let (s, b) = (vdupq_n_f32(scale), vdupq_n_f32(bias));
        let (lo, hi) = (vdupq_n_f32(clamp.lo), vdupq_n_f32(clamp.hi));
        let q = vdupq_n_f32(quant.scale);
        let zp = vdupq_n_s32(quant.zero_point);
        for i in (0..whole).step_by(8) {
            // SAFETY: `i + 8 <= whole`, inside both slices.
            unsafe {
                let code = |p: *const f32| {
                    let v = vaddq_f32(vmulq_f32(vld1q_f32(p), s), b);
                    let v = vminq_f32(vmaxq_f32(v, lo), hi);
                    vqaddq_s32(vcvtnq_s32_f32(vmulq_f32(v, q)), zp)
                };
                let a = code(sums.as_ptr().add(i));
                let c = code(sums.as_ptr().add(i + 4));
                let h = vcombine_s16(vqmovn_s32(a), vqmovn_s32(c));
                vst1_s8(out.as_mut_ptr().add(i), vqmovn_s16(h));
            }
        }
        whole
    }
}
