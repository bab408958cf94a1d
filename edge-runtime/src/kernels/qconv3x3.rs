//! An int8 3x3 convolution on many input channels (a detector head's): the input's int8 codes
//! are gathered into patches (im2col on bytes, taps outermost, so that each group of four patch
//! rows is four channels of one tap: a copy of the quantized input shifted), and the patches are
//! multiplied by the int8 pointwise kernel's tiles ([`QPointwise`]). tract's int8 path does the
//! same on 32-bit lanes with its own packing; this one keeps every byte a byte.

use super::conv3x3::{Clamp, Geometry};
use super::qconv1x1::{InputQuant, QIn, QIsa, QPointwise, padded, quantize_groups};

/// An int8 3x3 convolution (group 1) with its requantization fused.
#[derive(Debug, Clone, PartialEq)]
pub struct QConv3x3 {
    /// The input plane, stride and padding.
    pub geom: Geometry,
    /// Input channels.
    pub inputs: usize,
    /// The product over the patches: `9 x inputs` rounded up to whole groups of four channels
    /// per tap, tap-major (`(ky * 3 + kx) * channels + c`).
    pub gemm: QPointwise,
    /// The input's zero point: the code of padding (it adds nothing to a sum).
    zero_point: i8,
}

impl QConv3x3 {
    /// A convolution from `[outputs, inputs, 3, 3]` int8 weights, the input's quantization, the
    /// zero point the product subtracts (`a0`, also the padding's code), and per output channel
    /// the multiplier and bias applied to the int32 sums cast to float.
    ///
    /// # Panics
    /// If `a0` is not an int8 code or the weights are not `[outputs, inputs, 3, 3]`.
    pub fn new(
        geom: Geometry,
        [inputs, outputs]: [usize; 2],
        weights: &[i8],
        quant: InputQuant,
        a0: i32,
        rescale: (&[f32], &[f32]),
        clamp: Clamp,
    ) -> Self {
        assert_eq!(weights.len(), outputs * inputs * 9, "weights are OIHW 3x3");
        let zero_point = i8::try_from(a0).expect("the zero point is an int8 code");
        let channels = Self::tap_channels(inputs);
        let k = 9 * channels;
        let mut w = vec![0i8; outputs * k];
        for o in 0..outputs {
            for c in 0..inputs {
                for t in 0..9 {
                    w[o * k + t * channels + c] = weights[(o * inputs + c) * 9 + t];
                }
            }
        }
        QConv3x3 {
            geom,
            inputs,
            gemm: QPointwise::new(k, outputs, &w, quant, a0, rescale, clamp),
            zero_point,
        }
    }

    /// Input channels rounded up to whole groups of four (the patch rows of one tap).
    fn tap_channels(inputs: usize) -> usize {
        inputs.div_ceil(4) * 4
    }

    /// Output channels.
    pub fn outputs(&self) -> usize {
        self.gemm.outputs
    }

    /// Bytes of one image's quantized input (scratch for [`Self::patches`]).
    pub fn codes_len(&self) -> usize {
        Self::tap_channels(self.inputs) / 4 * padded(self.geom.h * self.geom.w) * 4
    }

    /// Bytes of one image's patches ([`QPointwise::packed_len`] of the output plane).
    pub fn patches_len(&self) -> usize {
        self.gemm.packed_len(self.geom.out_plane())
    }

    /// Quantizes groups `first..` of one image's input `x` (`[inputs, h * w]`) into `codes`
    /// (whole rows of [`Self::codes_len`]'s layout).
    pub fn quantize(&self, isa: QIsa, x: &[f32], first: usize, codes: &mut [u8]) {
        let plane = self.geom.h * self.geom.w;
        quantize_groups(
            isa,
            self.gemm.quant,
            self.inputs,
            QIn::Float(x),
            plane,
            first,
            codes,
        );
    }

    /// Patch rows `first..` from the quantized input `codes` into `dst` (whole rows of
    /// `padded(oh * ow) * 4` bytes): row `t * groups + g` is input group `g` shifted by tap `t`,
    /// the zero point where the tap falls in the padding or past the plane.
    pub fn patches(&self, isa: QIsa, codes: &[u8], first: usize, dst: &mut [u8]) {
        let g = &self.geom;
        let groups = Self::tap_channels(self.inputs) / 4;
        let in_row = padded(g.h * g.w) * 4;
        let out_row = padded(g.out_plane()) * 4;
        let pad = [isa.stored(self.zero_point); 4];
        let zero = [isa.stored(0); 4];
        for (i, out) in dst.chunks_exact_mut(out_row).enumerate() {
            let row = first + i;
            if row >= 9 * groups {
                // The even number of groups the tiles take: zero weights, any codes.
                for px in out.chunks_exact_mut(4) {
                    px.copy_from_slice(&zero);
                }
                continue;
            }
            let (t, group) = (row / groups, row % groups);
            let (ky, kx) = (t / 3, t % 3);
            let src = &codes[group * in_row..][..g.h * g.w * 4];
            // Output columns whose tap lands inside the input: `ox * stride + kx - pad_left` in
            // `0..w`.
            let x0 = g.pad_left.saturating_sub(kx).div_ceil(g.stride).min(g.ow);
            let x1 = (g.w + g.pad_left)
                .saturating_sub(kx)
                .div_ceil(g.stride)
                .clamp(x0, g.ow);
            for oy in 0..g.oh {
                let line = &mut out[oy * g.ow * 4..(oy + 1) * g.ow * 4];
                let iy = (oy * g.stride + ky).wrapping_sub(g.pad_top);
                if iy >= g.h {
                    for px in line.chunks_exact_mut(4) {
                        px.copy_from_slice(&pad);
                    }
                    continue;
                }
                for px in line[..x0 * 4].chunks_exact_mut(4) {
                    px.copy_from_slice(&pad);
                }
                for px in line[x1 * 4..].chunks_exact_mut(4) {
                    px.copy_from_slice(&pad);
                }
                if x1 == x0 {
                    continue;
                }
                let ix0 = x0 * g.stride + kx - g.pad_left;
                let n = x1 - x0;
                let from = &src[(iy * g.w + ix0) * 4..][..((n - 1) * g.stride + 1) * 4];
                let to = &mut line[x0 * 4..x1 * 4];
                if g.stride == 1 {
                    to.copy_from_slice(from);
                } else {
                    for (px, from) in to.chunks_exact_mut(4).zip(from.chunks(4 * g.stride)) {
                        px.copy_from_slice(&from[..4]);
                    }
                }
            }
            for px in out[g.out_plane() * 4..].chunks_exact_mut(4) {
                px.copy_from_slice(&pad);
            }
        }
    }
}
