//! int8 1x1 convolutions as an int8 bundle has them: the float input quantized
//! (`QuantizeLinear`), an int8 x int8 -> int32 product with weights per output channel
//! (`ConvInteger`), then cast, rescaled, biased, with the residual addition and the clamp — one
//! pass where tract runs five operators and three full-size temporaries (int8 codes, int32
//! accumulators, their float copy).
//!
//! The input is quantized once per image into groups of four input channels per pixel, as
//! unsigned bytes (`code + 128`), the layout of x86's `vpdpbusd` (four u8 x i8 products summed
//! into an i32 lane); the `+ 128` and the input's zero point come off as one integer per output
//! channel. Every step is the integer or float operation tract does, in its order and without
//! fused multiply-adds, so results equal tract's bit for bit.

use super::conv3x3::Clamp;

/// Output channels per packed panel of weights.
pub const QMR: usize = 8;
/// Pixels per tile (two AVX-512 vectors); threads split a plane in whole tiles.
pub const QNR: usize = 32;
#[cfg(target_arch = "x86_64")]
/// Largest magnitude of `x * scale` kept before rounding: beyond it every code saturates anyway,
/// and the vector conversion to int32 would overflow.
const PRE_CLAMP: f32 = 512.0;

/// The kernels an int8 pointwise convolution can run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QIsa {
    /// Scalar Rust: the reference, and every machine without a faster path.
    Portable,
    /// x86-64 AVX-512 with VNNI (`vpdpbusd`: 64 int8 products per instruction).
    Vnni,
    /// aarch64 NEON without dot products (Cortex-A72, the Pi 4): `smull`/`smlal` into 16 bits,
    /// `sadalp` into 32.
    Neon,
    /// aarch64 with `sdot` (Cortex-A76, the Pi 5): 16 int8 products per instruction.
    NeonDot,
}

impl QIsa {
    /// The fastest path this CPU has, if it has one faster than tract's own int8 kernels.
    /// (`KESTREL_KERNELS=portable` rules the SIMD paths out, as for the float kernels.)
    pub fn detect() -> Option<QIsa> {
        if std::env::var("KESTREL_KERNELS").is_ok_and(|v| v == "portable") {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            return Some(QIsa::Vnni);
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return Some(QIsa::NeonDot);
            }
            return Some(QIsa::Neon);
        }
        #[allow(unreachable_code)]
        None
    }

    /// Every path this CPU can run, the portable one first (for the tests).
    pub fn available() -> Vec<QIsa> {
        let mut v = vec![QIsa::Portable];
        v.extend(Self::detect());
        if v.last() == Some(&QIsa::NeonDot) {
            v.insert(1, QIsa::Neon);
        }
        v
    }

    /// Whether codes are stored as unsigned bytes (`code + 128`, for `vpdpbusd`) rather than
    /// as signed ones.
    fn unsigned(self) -> bool {
        matches!(self, QIsa::Portable | QIsa::Vnni)
    }

    /// Name for `info` and the benchmark.
    pub fn name(self) -> &'static str {
        match self {
            QIsa::Portable => "portable int8",
            QIsa::Vnni => "avx-512 vnni int8",
            QIsa::Neon => "neon int8",
            QIsa::NeonDot => "neon sdot int8",
        }
    }
}

/// How the float input becomes int8 codes: `clamp(round_half_even(x * scale) + zero_point)`,
/// tract's `QuantizeLinearI8` (whose `scale` is the reciprocal of the ONNX one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputQuant {
    /// Multiplier applied before rounding.
    pub scale: f32,
    /// Zero point added after rounding.
    pub zero_point: i32,
}

/// An int8 1x1 convolution with its requantization fused.
#[derive(Debug, Clone, PartialEq)]
pub struct QPointwise {
    /// Input channels.
    pub inputs: usize,
    /// Output channels.
    pub outputs: usize,
    /// How the input is quantized.
    pub quant: InputQuant,
    /// Panel `p`, group `g` of four input channels, row `r` at `(p * groups + g) * QMR + r`: the
    /// four weights of output channel `p * QMR + r` for inputs `4g..4g + 4`, as one `i32`'s bytes
    /// (zero past the last channel and input).
    packed: Vec<i32>,
    /// What the stored codes add to each output channel's sum over `(code - zero point) * w`,
    /// subtracted before the cast: `(128 + zero point) * sum(w)` for unsigned codes, `zero point *
    /// sum(w)` for signed ones (zero-padded to whole panels).
    correction: [Vec<i32>; 2],
    /// Per output channel: the float multiplier (input scale x weight scale) and the bias.
    scale: Vec<f32>,
    bias: Vec<f32>,
    /// Applied after the residual addition.
    pub clamp: Clamp,
}

impl QPointwise {
    /// A convolution from `[outputs, inputs]` int8 weights (row-major), the input's
    /// quantization, the zero point the product subtracts (`a0`), and per output channel the
    /// multiplier and bias applied to the int32 sums cast to float.
    pub fn new(
        inputs: usize,
        outputs: usize,
        weights: &[i8],
        quant: InputQuant,
        a0: i32,
        rescale: (&[f32], &[f32]),
        clamp: Clamp,
    ) -> Self {
        assert_eq!(
            weights.len(),
            inputs * outputs,
            "weights are [outputs, inputs]"
        );
        assert_eq!(
            rescale.0.len(),
            outputs,
            "one multiplier per output channel"
        );
        assert_eq!(rescale.1.len(), outputs, "one bias per output channel");
        let (panels, groups) = (outputs.div_ceil(QMR), inputs.div_ceil(8) * 2);
        let mut packed = vec![0i32; panels * groups * QMR];
        let mut correction = [vec![0i32; panels * QMR], vec![0i32; panels * QMR]];
        for o in 0..outputs {
            let (p, r) = (o / QMR, o % QMR);
            let row = &weights[o * inputs..(o + 1) * inputs];
            for g in 0..groups {
                let mut b = [0u8; 4];
                for (j, b) in b.iter_mut().enumerate() {
                    if let Some(&w) = row.get(4 * g + j) {
                        *b = w as u8;
                    }
                }
                packed[(p * groups + g) * QMR + r] = i32::from_le_bytes(b);
            }
            let sum: i32 = row.iter().map(|&w| w as i32).sum();
            correction[0][o] = a0 * sum;
            correction[1][o] = (128 + a0) * sum;
        }
        let pad = |v: &[f32]| {
            let mut v = v.to_vec();
            v.resize(panels * QMR, 0.0);
            v
        };
        QPointwise {
            inputs,
            outputs,
            quant,
            packed,
            correction,
            scale: pad(rescale.0),
            bias: pad(rescale.1),
            clamp,
        }
    }

    /// Groups of four input channels, an even number (the NEON tile takes two at a time; a
    /// last group of zero weights where needed).
    pub fn groups(&self) -> usize {
        self.inputs.div_ceil(8) * 2
    }

    /// The correction of output channel `o` for `isa`'s codes.
    fn correction(&self, isa: QIsa, o: usize) -> i32 {
        self.correction[usize::from(isa.unsigned())][o]
    }

    /// Bytes of one image's quantized input for a plane of `pixels`: `groups` rows of
    /// `padded(pixels)` pixels x 4 bytes.
    pub fn packed_len(&self, pixels: usize) -> usize {
        self.groups() * padded(pixels) * 4
    }

    /// Quantizes groups `first..` of one image's input `x` (`[inputs, pixels]`) into `dst` (whole
    /// rows of `padded(pixels) * 4` bytes): pixel `n` of group `g` holds the unsigned codes of
    /// inputs `4g..4g + 4` (128 for inputs past the last, whose weights are zero).
    pub fn quantize(&self, isa: QIsa, x: &[f32], pixels: usize, first: usize, dst: &mut [u8]) {
        let row = padded(pixels) * 4;
        for (i, out) in dst.chunks_exact_mut(row).enumerate() {
            let g = first + i;
            let rows: [Option<&[f32]>; 4] = std::array::from_fn(|j| {
                let k = 4 * g + j;
                (k < self.inputs).then(|| &x[k * pixels..(k + 1) * pixels])
            });
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `QIsa::Vnni` is only chosen where the CPU has AVX-512F/BW.
                QIsa::Vnni => unsafe { x86::quantize_group(self.quant, rows, pixels, out) },
                #[cfg(target_arch = "aarch64")]
                QIsa::Neon | QIsa::NeonDot => unsafe {
                    arm::quantize_group(self.quant, rows, pixels, out)
                },
                _ => quantize_group(self.quant, rows, pixels, out, isa.unsigned()),
            }
        }
    }

    /// Output columns `cols` (a range of whole [`QNR`] tiles, the last one may be partial) of
    /// every output channel for one image: `q` its quantized input ([`Self::quantize`]), `res`
    /// the residual (`[outputs, pixels]`), written into `out` (`[outputs, pixels]`).
    ///
    /// # Safety
    /// `out` must point to `outputs * pixels` floats; calls running at the same time must write
    /// disjoint column ranges.
    pub unsafe fn run_columns(
        &self,
        isa: QIsa,
        q: &[u8],
        pixels: usize,
        res: Option<&[f32]>,
        cols: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        debug_assert_eq!(q.len(), self.packed_len(pixels));
        let mut n = cols.start;
        while n < cols.end {
            let width = QNR.min(cols.end - n);
            for p in 0..self.outputs.div_ceil(QMR) {
                let tile = Tile {
                    conv: self,
                    isa,
                    q,
                    pixels,
                    res,
                    panel: p,
                    col: n,
                    width,
                };
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as `run_columns`; `QIsa::Vnni` only where the CPU has it.
                    QIsa::Vnni => unsafe { x86::tile(&tile, out) },
                    #[cfg(target_arch = "aarch64")]
                    QIsa::Neon => unsafe { arm::tile_smull(&tile, out) },
                    #[cfg(target_arch = "aarch64")]
                    // SAFETY: `QIsa::NeonDot` only where the CPU has `sdot`.
                    QIsa::NeonDot => unsafe { arm::tile_sdot(&tile, out) },
                    _ => unsafe { tile_portable(&tile, out) },
                }
            }
            n += width;
        }
    }
}

/// Pixels of a plane rounded up to whole tiles (the quantized rows' length).
pub fn padded(pixels: usize) -> usize {
    pixels.div_ceil(QNR) * QNR
}

/// One call's worth of work: `width` pixels from `col`, output channels of panel `panel`.
struct Tile<'a> {
    conv: &'a QPointwise,
    isa: QIsa,
    q: &'a [u8],
    pixels: usize,
    res: Option<&'a [f32]>,
    panel: usize,
    col: usize,
    width: usize,
}

impl Tile<'_> {
    /// From an exact int32 sum to the output value: cast, multiply, bias, residual, clamp, in
    /// tract's order.
    #[inline(always)]
    fn finish(&self, o: usize, n: usize, acc: i32) -> f32 {
        let c = self.conv;
        let mut y = (acc - c.correction(self.isa, o)) as f32 * c.scale[o] + c.bias[o];
        if let Some(r) = self.res {
            y += r[o * self.pixels + n];
        }
        y.max(c.clamp.lo).min(c.clamp.hi)
    }
}

/// The codes of one group of four input rows, tract's arithmetic exactly; `unsigned`: stored as
/// `code + 128`.
fn quantize_group(
    quant: InputQuant,
    rows: [Option<&[f32]>; 4],
    pixels: usize,
    out: &mut [u8],
    unsigned: bool,
) {
    let flip = if unsigned { 0x80 } else { 0 };
    for (n, px) in out.chunks_exact_mut(4).enumerate() {
        for (j, b) in px.iter_mut().enumerate() {
            *b = match rows[j] {
                Some(r) if n < pixels => {
                    let q = tract_nnef::tract_core::ops::quant::quantize_linear_f32_i8(
                        r[n],
                        quant.scale,
                        quant.zero_point,
                    );
                    (q as u8) ^ flip
                }
                _ => flip,
            };
        }
    }
}

/// The scalar tile.
///
/// # Safety
/// As [`QPointwise::run_columns`].
unsafe fn tile_portable(t: &Tile, out: *mut f32) {
    let c = t.conv;
    let groups = c.groups();
    let row = padded(t.pixels) * 4;
    for r in 0..QMR {
        let o = t.panel * QMR + r;
        if o >= c.outputs {
            break;
        }
        for n in t.col..t.col + t.width {
            let mut acc = 0i32;
            for g in 0..groups {
                let w = c.packed[(t.panel * groups + g) * QMR + r].to_le_bytes();
                let x = &t.q[g * row + n * 4..g * row + n * 4 + 4];
                for j in 0..4 {
                    let x = if t.isa.unsigned() {
                        x[j] as i32
                    } else {
                        x[j] as i8 as i32
                    };
                    acc += x * w[j] as i8 as i32;
                }
            }
            // SAFETY: `o < outputs`, `n < pixels`: inside the image's output.
            unsafe { *out.add(o * t.pixels + n) = t.finish(o, n, acc) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{InputQuant, PRE_CLAMP, QMR, Tile, padded};
    use std::arch::x86_64::*;

    /// [`super::quantize_group`] sixteen pixels at a time.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_group(
        quant: InputQuant,
        rows: [Option<&[f32]>; 4],
        pixels: usize,
        out: &mut [u8],
    ) {
        let scale = _mm512_set1_ps(quant.scale);
        let (lo, hi) = (_mm512_set1_ps(-PRE_CLAMP), _mm512_set1_ps(PRE_CLAMP));
        let zp = _mm512_set1_epi32(quant.zero_point);
        let (qlo, qhi) = (_mm512_set1_epi32(-128), _mm512_set1_epi32(127));
        let bias = _mm512_set1_epi32(128);
        let byte = _mm512_set1_epi32(0xff);
        let mut n = 0;
        while n < padded(pixels) {
            let live = pixels.saturating_sub(n).min(16);
            let mask: __mmask16 = ((1u32 << live) - 1) as __mmask16;
            let mut word = _mm512_setzero_si512();
            for (j, row) in rows.iter().enumerate() {
                let code = match row {
                    Some(r) if live > 0 => {
                        // SAFETY: `mask` covers pixels `n..pixels` only.
                        let x = unsafe { _mm512_maskz_loadu_ps(mask, r.as_ptr().add(n)) };
                        let v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(x, scale), lo), hi);
                        // Round half to even (the default rounding mode), as tract.
                        let q = _mm512_add_epi32(_mm512_cvtps_epi32(v), zp);
                        let q = _mm512_min_epi32(_mm512_max_epi32(q, qlo), qhi);
                        // Pixels past the plane get code 0 -> byte 128, as the portable path.
                        _mm512_maskz_add_epi32(mask, q, bias)
                    }
                    _ => bias,
                };
                let code = if live < 16 {
                    _mm512_mask_blend_epi32(mask, bias, code)
                } else {
                    code
                };
                word = _mm512_or_si512(
                    word,
                    _mm512_sllv_epi32(
                        _mm512_and_si512(code, byte),
                        _mm512_set1_epi32(8 * j as i32),
                    ),
                );
            }
            // SAFETY: `out` holds `padded(pixels)` pixels of 4 bytes.
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(n * 4).cast(), word) };
            n += 16;
        }
    }

    /// [`QMR`] output channels x [`QNR`] pixels: 16 accumulators, each `vpdpbusd` summing four
    /// input channels of 16 pixels.
    ///
    /// # Safety
    /// As [`super::QPointwise::run_columns`]; the CPU must have AVX-512F/BW/VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile(t: &Tile, out: *mut f32) {
        let c = t.conv;
        let groups = c.groups();
        let row = padded(t.pixels) * 4;
        let mut acc = [[_mm512_setzero_si512(); 2]; QMR];
        // SAFETY: every read is inside `q` (whole padded rows) and `packed` (whole panels).
        unsafe {
            let mut x = t.q.as_ptr().add(t.col * 4);
            let mut w = c.packed.as_ptr().add(t.panel * groups * QMR);
            for _ in 0..groups {
                let a0 = _mm512_loadu_si512(x.cast());
                let a1 = _mm512_loadu_si512(x.add(64).cast());
                for (r, acc) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_epi32(*w.add(r));
                    acc[0] = _mm512_dpbusd_epi32(acc[0], a0, b);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], a1, b);
                }
                x = x.add(row);
                w = w.add(QMR);
            }
        }
        let (lo, hi) = (_mm512_set1_ps(c.clamp.lo), _mm512_set1_ps(c.clamp.hi));
        for (r, acc) in acc.iter().enumerate() {
            let o = t.panel * QMR + r;
            if o >= c.outputs {
                break;
            }
            let corr = _mm512_set1_epi32(c.correction(t.isa, o));
            let scale = _mm512_set1_ps(c.scale[o]);
            let bias = _mm512_set1_ps(c.bias[o]);
            for (h, acc) in acc.iter().enumerate() {
                let n = t.col + 16 * h;
                let live = t.width.saturating_sub(16 * h).min(16);
                if live == 0 {
                    break;
                }
                let mask: __mmask16 = ((1u32 << live) - 1) as __mmask16;
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(*acc, corr));
                let mut y = _mm512_add_ps(_mm512_mul_ps(v, scale), bias);
                // SAFETY: `mask` keeps pixels `n..n + live` of row `o`, inside the output.
                unsafe {
                    let at = o * t.pixels + n;
                    if let Some(res) = t.res {
                        y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(at)));
                    }
                    y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
                    _mm512_mask_storeu_ps(out.add(at), mask, y);
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{InputQuant, QMR, Tile, padded};
    use std::arch::aarch64::*;

    /// [`super::quantize_group`] sixteen pixels at a time, as signed codes: `fcvtns` rounds half
    /// to even as tract does, the narrowings saturate to int8, `st4` interleaves the four rows.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn quantize_group(
        quant: InputQuant,
        rows: [Option<&[f32]>; 4],
        pixels: usize,
        out: &mut [u8],
    ) {
        let scale = vdupq_n_f32(quant.scale);
        let zp = vdupq_n_s32(quant.zero_point);
        let mut n = 0;
        while n < padded(pixels) {
            let live = pixels.saturating_sub(n).min(16);
            let codes: [int8x16_t; 4] = std::array::from_fn(|j| match rows[j] {
                Some(r) if live > 0 => {
                    let mut buf = [0f32; 16];
                    let src: *const f32 = if live == 16 {
                        // SAFETY: pixels `n..n + 16` are inside the row.
                        unsafe { r.as_ptr().add(n) }
                    } else {
                        buf[..live].copy_from_slice(&r[n..n + live]);
                        buf.as_ptr()
                    };
                    // SAFETY: `src` holds 16 floats.
                    unsafe {
                        // `fcvtns` saturates (and maps NaN to 0, as Rust's cast in tract's
                        // function), so no clamp is needed before it; the adds saturate too.
                        let q: [int32x4_t; 4] = std::array::from_fn(|i| {
                            let v = vmulq_f32(vld1q_f32(src.add(4 * i)), scale);
                            vqaddq_s32(vcvtnq_s32_f32(v), zp)
                        });
                        let h0 = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
                        let h1 = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
                        vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1))
                    }
                }
                _ => vdupq_n_s8(0),
            });
            // SAFETY: `out` holds `padded(pixels)` pixels of 4 bytes.
            unsafe {
                vst4q_s8(
                    out.as_mut_ptr().add(n * 4).cast(),
                    int8x16x4_t(codes[0], codes[1], codes[2], codes[3]),
                )
            };
            n += 16;
        }
    }

    /// `sdot` by lane (not yet a stable intrinsic): lane `L` of `b` is four int8 weights.
    #[inline(always)]
    unsafe fn sdot<const L: i32>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: register-only; the callers run only where the CPU has `sdot`.
        unsafe {
            std::arch::asm!(
                "sdot {acc:v}.4s, {a:v}.16b, {b:v}.4b[{l}]",
                acc = inout(vreg) acc,
                a = in(vreg) a,
                b = in(vreg) b,
                l = const L,
                options(pure, nomem, nostack),
            );
        }
        acc
    }

    /// The store of [`QMR`] rows x 8 pixels from `col + 8 * block`: exact sums in, rescaled,
    /// biased, residual, clamped floats out (only the tile's `width` pixels).
    #[inline(always)]
    unsafe fn store(t: &Tile, block: usize, sums: &[[int32x4_t; 2]; QMR], out: *mut f32) {
        // SAFETY: NEON is part of every aarch64 target; the writes as below.
        unsafe {
            let c = t.conv;
            let (lo, hi) = (vdupq_n_f32(c.clamp.lo), vdupq_n_f32(c.clamp.hi));
            let first = 8 * block;
            let live = t.width.saturating_sub(first).min(8);
            let rows = QMR.min(c.outputs - t.panel * QMR);
            // The panel's constants as fixed-size arrays (every vector is padded to whole
            // panels), so the row loop indexes them without bounds checks.
            let panel = t.panel * QMR..(t.panel + 1) * QMR;
            let scales: &[f32; QMR] = c.scale[panel.clone()].try_into().expect("panel");
            let biases: &[f32; QMR] = c.bias[panel.clone()].try_into().expect("panel");
            let corrs: &[i32; QMR] = c.correction[usize::from(t.isa.unsigned())][panel.clone()]
                .try_into()
                .expect("panel");
            for (r, sums) in sums.iter().enumerate().take(rows) {
                let o = t.panel * QMR + r;
                let corr = vdupq_n_s32(corrs[r]);
                let (scale, bias) = (vdupq_n_f32(scales[r]), vdupq_n_f32(biases[r]));
                let at = o * t.pixels + t.col + first;
                let y: [float32x4_t; 2] = std::array::from_fn(|h| {
                    let v = vcvtq_f32_s32(vsubq_s32(sums[h], corr));
                    vaddq_f32(vmulq_f32(v, scale), bias)
                });
                // Pixels `at..at + live` are inside row `o` of the output and residual.
                if live == 8 {
                    let mut y = y;
                    if let Some(res) = t.res {
                        let p = res.as_ptr().add(at);
                        y = [
                            vaddq_f32(y[0], vld1q_f32(p)),
                            vaddq_f32(y[1], vld1q_f32(p.add(4))),
                        ];
                    }
                    vst1q_f32(out.add(at), vminq_f32(vmaxq_f32(y[0], lo), hi));
                    vst1q_f32(out.add(at + 4), vminq_f32(vmaxq_f32(y[1], lo), hi));
                } else {
                    // A plane's last pixels: through a buffer.
                    let mut buf = [0f32; 8];
                    vst1q_f32(buf.as_mut_ptr(), y[0]);
                    vst1q_f32(buf.as_mut_ptr().add(4), y[1]);
                    for (i, v) in buf.iter().take(live).enumerate() {
                        let mut v = *v;
                        if let Some(res) = t.res {
                            v += res[at + i];
                        }
                        *out.add(at + i) = v.max(c.clamp.lo).min(c.clamp.hi);
                    }
                }
            }
        }
    }

    /// [`QMR`] output channels x 8 pixels per step with `sdot`: 16 accumulators, each `sdot`
    /// summing four input channels of four pixels for one output channel.
    ///
    /// # Safety
    /// As [`super::QPointwise::run_columns`]; the CPU must have `sdot`.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn tile_sdot(t: &Tile, out: *mut f32) {
        let c = t.conv;
        let groups = c.groups();
        let row = padded(t.pixels) * 4;
        for block in 0..t.width.div_ceil(8) {
            let mut acc = [[vdupq_n_s32(0); 2]; QMR];
            // SAFETY: reads inside `q` (whole padded rows) and `packed` (whole panels).
            unsafe {
                let mut x = t.q.as_ptr().add((t.col + 8 * block) * 4).cast::<i8>();
                let mut w = c.packed.as_ptr().add(t.panel * groups * QMR).cast::<i8>();
                for _ in 0..groups {
                    let (x0, x1) = (vld1q_s8(x), vld1q_s8(x.add(16)));
                    let (w0, w1) = (vld1q_s8(w), vld1q_s8(w.add(16)));
                    macro_rules! dot {
                        ($r:expr, $w:expr, $l:expr) => {
                            acc[$r][0] = sdot::<$l>(acc[$r][0], x0, $w);
                            acc[$r][1] = sdot::<$l>(acc[$r][1], x1, $w);
                        };
                    }
                    dot!(0, w0, 0);
                    dot!(1, w0, 1);
                    dot!(2, w0, 2);
                    dot!(3, w0, 3);
                    dot!(4, w1, 0);
                    dot!(5, w1, 1);
                    dot!(6, w1, 2);
                    dot!(7, w1, 3);
                    x = x.add(row);
                    w = w.add(4 * QMR);
                }
                store(t, block, &acc, out);
            }
        }
    }

    /// [`QMR`] output channels x 8 pixels per step without dot products: the products of two
    /// groups of four input channels summed in 16 bits (`smull` + `smlal`: at most 2 x 128 x 127,
    /// no overflow), then pairwise into 32 bits (`sadalp`); lanes hold pairs of channels of two
    /// pixels until `addp` folds them at the end. Half the output channels at a time (32
    /// accumulators would not fit the 32 registers).
    ///
    /// # Safety
    /// As [`super::QPointwise::run_columns`].
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn tile_smull(t: &Tile, out: *mut f32) {
        let c = t.conv;
        let groups = c.groups();
        let row = padded(t.pixels) * 4;
        for block in 0..t.width.div_ceil(8) {
            let mut sums = [[vdupq_n_s32(0); 2]; QMR];
            for half in 0..2 {
                // acc[r][j]: output channel 4 * half + r, pixels 2j and 2j + 1 (channel pairs).
                let mut acc = [[vdupq_n_s32(0); 4]; 4];
                // SAFETY: reads inside `q` (whole padded rows, an even number of groups) and
                // `packed` (whole panels).
                unsafe {
                    let mut x = t.q.as_ptr().add((t.col + 8 * block) * 4).cast::<i8>();
                    let mut w = c.packed.as_ptr().add(t.panel * groups * QMR + 4 * half);
                    for _ in 0..groups / 2 {
                        let (a0, a1) = (vld1q_s8(x), vld1q_s8(x.add(16)));
                        let (b0, b1) = (vld1q_s8(x.add(row)), vld1q_s8(x.add(row + 16)));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let wa = vreinterpretq_s8_s32(vdupq_n_s32(*w.add(r)));
                            let wb = vreinterpretq_s8_s32(vdupq_n_s32(*w.add(QMR + r)));
                            let (wal, wbl) = (vget_low_s8(wa), vget_low_s8(wb));
                            let p0 = vmlal_s8(vmull_s8(vget_low_s8(a0), wal), vget_low_s8(b0), wbl);
                            let p1 = vmlal_high_s8(vmull_high_s8(a0, wa), b0, wb);
                            let p2 = vmlal_s8(vmull_s8(vget_low_s8(a1), wal), vget_low_s8(b1), wbl);
                            let p3 = vmlal_high_s8(vmull_high_s8(a1, wa), b1, wb);
                            acc[0] = vpadalq_s16(acc[0], p0);
                            acc[1] = vpadalq_s16(acc[1], p1);
                            acc[2] = vpadalq_s16(acc[2], p2);
                            acc[3] = vpadalq_s16(acc[3], p3);
                        }
                        x = x.add(2 * row);
                        w = w.add(2 * QMR);
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    sums[4 * half + r] = [vpaddq_s32(acc[0], acc[1]), vpaddq_s32(acc[2], acc[3])];
                }
            }
            // SAFETY: as `run_columns`.
            unsafe { store(t, block, &sums, out) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_i8(n: usize, seed: u64) -> Vec<i8> {
        crate::kernels::testutil::values(n, seed)
            .iter()
            .map(|v| (v * 63.9) as i8)
            .collect()
    }

    /// One test convolution's parameters.
    struct Spec {
        k: usize,
        m: usize,
        w: Vec<i8>,
        quant: InputQuant,
        a0: i32,
        scales: Vec<f32>,
        bias: Vec<f32>,
        clamp: Clamp,
    }

    /// The scalar definition: quantize, exact int32 sums, cast, rescale, bias, residual, clamp.
    fn reference(s: &Spec, x: &[f32], res: Option<&[f32]>) -> Vec<f32> {
        let (k, m) = (s.k, s.m);
        let pixels = x.len() / k;
        let q: Vec<i32> = x
            .iter()
            .map(|&v| {
                tract_nnef::tract_core::ops::quant::quantize_linear_f32_i8(
                    v,
                    s.quant.scale,
                    s.quant.zero_point,
                ) as i32
            })
            .collect();
        let mut out = vec![0f32; m * pixels];
        for o in 0..m {
            for n in 0..pixels {
                let acc: i32 = (0..k)
                    .map(|i| (q[i * pixels + n] - s.a0) * s.w[o * k + i] as i32)
                    .sum();
                let mut y = acc as f32 * s.scales[o] + s.bias[o];
                if let Some(r) = res {
                    y += r[o * pixels + n];
                }
                out[o * pixels + n] = y.max(s.clamp.lo).min(s.clamp.hi);
            }
        }
        out
    }

    #[test]
    fn every_path_equals_the_definition_bit_for_bit() {
        let isas = QIsa::available();
        for case in 0..24u64 {
            let k = 1 + (case as usize * 37) % 203;
            let m = 1 + (case as usize * 11) % 41;
            let pixels = 1 + (case as usize * 29) % 170;
            let x: Vec<f32> = crate::kernels::testutil::values(k * pixels, case + 100)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            let quant = InputQuant {
                scale: 20.0 + case as f32,
                zero_point: (case as i32 * 23) % 256 - 128,
            };
            let spec = Spec {
                k,
                m,
                w: random_i8(k * m, case),
                quant,
                a0: quant.zero_point,
                scales: (0..m).map(|o| 1e-4 * (1 + o % 7) as f32).collect(),
                bias: crate::kernels::testutil::values(m, case + 200),
                clamp: if case % 3 == 0 {
                    Clamp { lo: 0.0, hi: 6.0 }
                } else {
                    Clamp::NONE
                },
            };
            let res =
                (case % 2 == 0).then(|| crate::kernels::testutil::values(m * pixels, case + 300));
            let conv = QPointwise::new(
                k,
                m,
                &spec.w,
                quant,
                spec.a0,
                (&spec.scales, &spec.bias),
                spec.clamp,
            );
            let want = reference(&spec, &x, res.as_deref());
            for &isa in &isas {
                let mut q = vec![0u8; conv.packed_len(pixels)];
                conv.quantize(isa, &x, pixels, 0, &mut q);
                let mut got = vec![f32::NAN; m * pixels];
                // Two column ranges, as two threads would split the plane.
                let split = (pixels / 2).div_ceil(QNR) * QNR;
                for cols in [0..split.min(pixels), split.min(pixels)..pixels] {
                    unsafe {
                        conv.run_columns(isa, &q, pixels, res.as_deref(), cols, got.as_mut_ptr())
                    };
                }
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{isa:?} k={k} m={m} pixels={pixels} case {case}");
            }
        }
    }
}
