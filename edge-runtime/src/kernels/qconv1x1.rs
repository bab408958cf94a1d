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

#[cfg(target_arch = "x86_64")]
use super::conv1x1::Pointwise;
use super::conv3x3::Clamp;

/// Output channels per packed panel of weights.
pub const QMR: usize = 8;
/// Pixels per tile (two AVX-512 vectors); threads split a plane in whole tiles.
pub const QNR: usize = 32;
/// Bytes of codes one column block may span (see [`QPointwise::run_columns`]).
const BLOCK_BYTES: usize = 96 * 1024;
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
    /// x86-64 AVX2 without VNNI (Zen 2, Haswell to Skylake client): the codes widened to 16 bits,
    /// `vpmaddwd` (16 products summed pairwise into 32 bits per instruction, exact).
    Avx2,
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
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(QIsa::Avx2);
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
        if v.last() == Some(&QIsa::Vnni) {
            v.insert(1, QIsa::Avx2);
        }
        v
    }

    /// Whether codes are stored as unsigned bytes (`code + 128`, for `vpdpbusd`) rather than
    /// as signed ones.
    fn unsigned(self) -> bool {
        matches!(self, QIsa::Portable | QIsa::Vnni)
    }

    /// Whether the CPU sums four int8 products per lane in one instruction (`vpdpbusd`,
    /// `sdot`).
    pub fn dot_product(self) -> bool {
        matches!(self, QIsa::Vnni | QIsa::NeonDot)
    }

    /// How the tiles read the int8 code `code`: its byte, or `code + 128` where codes are
    /// stored unsigned.
    pub fn stored(self, code: i8) -> u8 {
        (code as u8) ^ if self.unsigned() { 0x80 } else { 0 }
    }

    /// Name for `info` and the benchmark.
    pub fn name(self) -> &'static str {
        match self {
            QIsa::Portable => "portable int8",
            QIsa::Vnni => "avx-512 vnni int8",
            QIsa::Avx2 => "avx2 int8",
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

/// The planes going into an int8 convolution.
#[derive(Debug, Clone, Copy)]
pub enum QIn<'a> {
    /// Floats, quantized by the convolution.
    Float(&'a [f32]),
    /// int8 codes the layer before wrote, quantized as the convolution would (an int8 chain).
    Codes(&'a [i8]),
}

impl QIn<'_> {
    /// Values.
    pub fn len(&self) -> usize {
        match self {
            QIn::Float(x) => x.len(),
            QIn::Codes(x) => x.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    /// The same weights as the NEON tile without dot products reads them: half panel `h`
    /// (output channels `4h..4h + 4`), pair `p` of groups, at `(h * pairs + p) * 32`: per
    /// channel its weights for groups `2p` and `2p + 1`, each repeated in four lanes, so that
    /// one load fills four registers with two channels' broadcast weights.
    #[cfg(target_arch = "aarch64")]
    packed_lanes: Vec<i32>,
    /// The same weights as the AVX2 tile reads them: each `i32` of `packed` as four `i16`s in
    /// one `i64`, broadcast to every pixel with one load.
    #[cfg(target_arch = "x86_64")]
    packed16: Vec<i64>,
    /// What the stored codes add to each output channel's sum over `(code - zero point) * w`,
    /// subtracted before the cast: `(128 + zero point) * sum(w)` for unsigned codes, `zero point *
    /// sum(w)` for signed ones (zero-padded to whole panels).
    correction: [Vec<i32>; 2],
    /// Per output channel, `[-c, 0, -c, 0]` four times, with `c` the signed codes' correction:
    /// where the NEON tile without dot products starts each of the channel's four accumulators
    /// (one load per channel), so that folding its lanes pairwise takes the correction off once.
    pair_start: Vec<i32>,
    /// Per output channel: the float multiplier (input scale x weight scale) and the bias.
    scale: Vec<f32>,
    bias: Vec<f32>,
    /// Per output channel, its bias in four lanes (one load per half panel in the NEON store).
    bias_lanes: Vec<f32>,
    /// Applied after the residual addition.
    pub clamp: Clamp,
    /// The zero point the product subtracts.
    a0: i32,
    /// With AVX2 alone and few inputs: the same convolution in f32 on the codes minus `a0`
    /// ([`Self::float_route`]).
    #[cfg(target_arch = "x86_64")]
    float: Option<Box<Pointwise>>,
}

/// Inputs up to which an int8 1x1 convolution runs in f32 on its codes with AVX2 alone: there
/// two FMA pipes beat `vpmaddwd`'s one and the pairwise fold (Zen 2, 16 -> 96 at 139x139: 0.89
/// against 1.39 ms), while many inputs favour the int8 tiles (43-47 GMAC/s against 35-44). The
/// sums stay exact: `inputs x 255 x 128 < 2^24`.
#[cfg(target_arch = "x86_64")]
const FLOAT_ROUTE_MAX_INPUTS: usize = 32;

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
        let pair_start = correction[0]
            .iter()
            .flat_map(|&c| [-c, 0, -c, 0].repeat(4))
            .collect();
        let pad = |v: &[f32]| {
            let mut v = v.to_vec();
            v.resize(panels * QMR, 0.0);
            v
        };
        let bias = pad(rescale.1);
        #[cfg(target_arch = "aarch64")]
        let packed_lanes = (0..panels * 2)
            .flat_map(|h| (0..groups / 2).map(move |p| (h, p)))
            .flat_map(|(h, p)| {
                let (panel, r0) = (h / 2, 4 * (h % 2));
                (r0..r0 + 4)
                    .flat_map(move |r| [2 * p, 2 * p + 1].map(|g| (panel * groups + g) * QMR + r))
            })
            .flat_map(|i| [packed[i]; 4])
            .collect();
        #[cfg(target_arch = "x86_64")]
        let packed16 = packed
            .iter()
            .map(|w| {
                w.to_le_bytes()
                    .iter()
                    .enumerate()
                    .fold(0i64, |acc, (j, &b)| {
                        acc | (((b as i8 as i16) as u16 as i64) << (16 * j))
                    })
            })
            .collect();
        #[cfg(target_arch = "x86_64")]
        let float = (inputs <= FLOAT_ROUTE_MAX_INPUTS).then(|| {
            let w: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
            Box::new(Pointwise::new(inputs, outputs, &w, rescale.1, clamp).with_scale(rescale.0))
        });
        QPointwise {
            #[cfg(target_arch = "aarch64")]
            packed_lanes,
            #[cfg(target_arch = "x86_64")]
            packed16,
            #[cfg(target_arch = "x86_64")]
            float,
            a0,
            inputs,
            outputs,
            quant,
            packed,
            correction,
            pair_start,
            bias_lanes: bias.iter().flat_map(|&b| [b; 4]).collect(),
            scale: pad(rescale.0),
            bias,
            clamp,
        }
    }

    /// The f32 convolution `isa` runs instead of the int8 tiles, if any: with AVX2 alone and
    /// few inputs, on the codes minus the zero point ([`Self::float_codes`]), whose sums are
    /// exact in f32, rescaled and biased as tract does, so the results are the same bit for
    /// bit.
    pub fn float_route(&self, isa: QIsa) -> Option<&super::conv1x1::Pointwise> {
        #[cfg(target_arch = "x86_64")]
        if isa == QIsa::Avx2 {
            return self.float.as_deref();
        }
        let _ = isa;
        None
    }

    /// Columns `cols` of one image's `x` (`[inputs, pixels]`) as `code - a0` in f32, into `dst`
    /// (`[inputs, cols.len()]`): the input of [`Self::float_route`].
    pub fn float_codes(
        &self,
        x: QIn,
        pixels: usize,
        cols: std::ops::Range<usize>,
        dst: &mut [f32],
    ) {
        if cols.is_empty() {
            return;
        }
        let x = match x {
            QIn::Float(x) => x,
            QIn::Codes(c) => {
                for (k, out) in dst.chunks_exact_mut(cols.len()).enumerate() {
                    let row = &c[k * pixels + cols.start..k * pixels + cols.end];
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o = (v as i32 - self.a0) as f32;
                    }
                }
                return;
            }
        };
        for (k, out) in dst.chunks_exact_mut(cols.len()).enumerate() {
            let row = &x[k * pixels + cols.start..k * pixels + cols.end];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                unsafe { x86::float_codes(self.quant, self.a0, row, out) };
                continue;
            }
            for (o, &v) in out.iter_mut().zip(row) {
                let q = tract_nnef::tract_core::ops::quant::quantize_linear_f32_i8(
                    v,
                    self.quant.scale,
                    self.quant.zero_point,
                );
                *o = (q as i32 - self.a0) as f32;
            }
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

    /// Quantizes groups `first..` of one image's input `x` (`[inputs, pixels]`; codes of an int8
    /// chain are only packed) into `dst` (whole rows of `padded(pixels) * 4` bytes): pixel `n` of
    /// group `g` holds the codes of inputs `4g..4g + 4` as [`QIsa::stored`] gives them (code 0
    /// for inputs past the last, whose weights are zero).
    pub fn quantize(&self, isa: QIsa, x: QIn, pixels: usize, first: usize, dst: &mut [u8]) {
        quantize_groups(isa, self.quant, self.inputs, x, pixels, first, dst);
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
        // The tile function is chosen once: a `match` per tile kept the portable tile inlined
        // here, and its register pressure spilled this loop (8 M instructions a frame on NEON).
        let tile_fn: unsafe fn(&Tile, *mut f32) = match isa {
            #[cfg(target_arch = "x86_64")]
            QIsa::Vnni => x86::tile,
            #[cfg(target_arch = "x86_64")]
            QIsa::Avx2 => x86::tile_avx2,
            #[cfg(target_arch = "aarch64")]
            QIsa::Neon => arm::tile_smull,
            #[cfg(target_arch = "aarch64")]
            QIsa::NeonDot => arm::tile_sdot,
            _ => tile_portable,
        };
        // Blocks of whole tiles whose codes stay in the L2 cache while every panel runs over
        // them; each panel then writes long runs of its rows (a tile at a time across all
        // panels wrote 128 bytes to each of `outputs` planes in turn: 2.6x slower on a
        // 16 -> 96 convolution of 139x139 on Zen 2).
        let block = (BLOCK_BYTES / (self.groups() * 4)).max(QNR) / QNR * QNR;
        let mut b = cols.start;
        while b < cols.end {
            let end = (b + block).min(cols.end);
            for p in 0..self.outputs.div_ceil(QMR) {
                let mut n = b;
                while n < end {
                    let width = QNR.min(end - n);
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
                    // SAFETY: as `run_columns`; the SIMD tiles are only chosen where the CPU
                    // has their instructions (`QIsa::detect`).
                    unsafe { tile_fn(&tile, out) };
                    n += width;
                }
            }
            b = end;
        }
    }
}

/// Pixels of a plane rounded up to whole tiles (the quantized rows' length).
pub fn padded(pixels: usize) -> usize {
    pixels.div_ceil(QNR) * QNR
}

/// Quantizes groups `first..` of one image's `inputs` planes `x` (`[inputs, pixels]`; codes of
/// an int8 chain are only packed) into `dst` (whole rows of `padded(pixels) * 4` bytes), `isa`'s
/// way: pixel `n` of group `g` holds the
/// codes of inputs `4g..4g + 4` (code 0 for inputs past the last), stored as
/// [`QIsa::stored`] gives them.
pub fn quantize_groups(
    isa: QIsa,
    quant: InputQuant,
    inputs: usize,
    x: QIn,
    pixels: usize,
    first: usize,
    dst: &mut [u8],
) {
    let row = padded(pixels) * 4;
    for (i, out) in dst.chunks_exact_mut(row).enumerate() {
        let g = first + i;
        let x = match x {
            QIn::Float(x) => x,
            QIn::Codes(c) => {
                let rows: [Option<&[i8]>; 4] = std::array::from_fn(|j| {
                    let k = 4 * g + j;
                    (k < inputs).then(|| &c[k * pixels..(k + 1) * pixels])
                });
                pack_codes(isa, rows, pixels, out);
                continue;
            }
        };
        let rows: [Option<&[f32]>; 4] = std::array::from_fn(|j| {
            let k = 4 * g + j;
            (k < inputs).then(|| &x[k * pixels..(k + 1) * pixels])
        });
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `QIsa::Vnni` is only chosen where the CPU has AVX-512F/BW.
            QIsa::Vnni => unsafe { x86::quantize_group(quant, rows, pixels, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `QIsa::Avx2` is only chosen where the CPU has AVX2.
            QIsa::Avx2 => unsafe { x86::quantize_group_avx2(quant, rows, pixels, out) },
            #[cfg(target_arch = "aarch64")]
            QIsa::Neon | QIsa::NeonDot => unsafe { arm::quantize_group(quant, rows, pixels, out) },
            _ => quantize_group(quant, rows, pixels, out, isa.unsigned()),
        }
    }
}

/// One group of four rows of codes the layer before wrote (an int8 chain), laid out as
/// [`quantize_groups`] lays out its codes: the same bytes, without the arithmetic.
fn pack_codes(isa: QIsa, rows: [Option<&[i8]>; 4], pixels: usize, out: &mut [u8]) {
    let flip = if isa.unsigned() { 0x80 } else { 0 };
    let mut n = 0;
    while n < padded(pixels) {
        let live = pixels.saturating_sub(n).min(16);
        let block: [[i8; 16]; 4] = std::array::from_fn(|j| {
            let mut b = [0i8; 16];
            if let Some(r) = rows[j]
                && live > 0
            {
                b[..live].copy_from_slice(&r[n..n + live]);
            }
            b
        });
        let dst: &mut [u8; 64] = (&mut out[n * 4..n * 4 + 64])
            .try_into()
            .expect("whole tiles of 16 pixels");
        interleave16(&block, flip, dst);
        n += 16;
    }
}

/// Sixteen pixels of four rows of codes, pixel by pixel (`x ^ flip` per byte): SSE2's or
/// NEON's byte interleaving where there is one.
#[inline(always)]
fn interleave16(rows: &[[i8; 16]; 4], flip: u8, out: &mut [u8; 64]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of every x86-64 target; the loads and stores stay in the arrays.
    unsafe {
        use std::arch::x86_64::*;
        let r: [__m128i; 4] = std::array::from_fn(|j| _mm_loadu_si128(rows[j].as_ptr().cast()));
        let (a, b) = (_mm_unpacklo_epi8(r[0], r[1]), _mm_unpackhi_epi8(r[0], r[1]));
        let (c, d) = (_mm_unpacklo_epi8(r[2], r[3]), _mm_unpackhi_epi8(r[2], r[3]));
        let f = _mm_set1_epi8(flip as i8);
        let px = [
            _mm_unpacklo_epi16(a, c),
            _mm_unpackhi_epi16(a, c),
            _mm_unpacklo_epi16(b, d),
            _mm_unpackhi_epi16(b, d),
        ];
        for (k, v) in px.into_iter().enumerate() {
            _mm_storeu_si128(out[16 * k..].as_mut_ptr().cast(), _mm_xor_si128(v, f));
        }
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of every aarch64 target; the loads and stores stay in the arrays.
    unsafe {
        use std::arch::aarch64::*;
        let f = vdupq_n_s8(flip as i8);
        let r = |j: usize| veorq_s8(vld1q_s8(rows[j].as_ptr()), f);
        vst4q_s8(out.as_mut_ptr().cast(), int8x16x4_t(r(0), r(1), r(2), r(3)));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    for (n, px) in out.chunks_exact_mut(4).enumerate() {
        for (j, b) in px.iter_mut().enumerate() {
            *b = rows[j][n] as u8 ^ flip;
        }
    }
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
#[inline(never)]
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

    /// [`super::QPointwise::float_codes`] of one row, eight values at a time.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn float_codes(quant: InputQuant, a0: i32, row: &[f32], out: &mut [f32]) {
        let scale = _mm256_set1_ps(quant.scale);
        let (lo, hi) = (_mm256_set1_ps(-PRE_CLAMP), _mm256_set1_ps(PRE_CLAMP));
        let zp = _mm256_set1_epi32(quant.zero_point);
        let (qlo, qhi) = (_mm256_set1_epi32(-128), _mm256_set1_epi32(127));
        let a0 = _mm256_set1_epi32(a0);
        let mut n = 0;
        while n < row.len() {
            let live = (row.len() - n).min(8);
            let mut buf = [0f32; 8];
            let (src, dst) = if live == 8 {
                (row[n..].as_ptr(), out[n..].as_mut_ptr())
            } else {
                buf[..live].copy_from_slice(&row[n..n + live]);
                (buf.as_ptr(), buf.as_mut_ptr())
            };
            // SAFETY: `src` and `dst` hold 8 floats (the row's or `buf`'s).
            unsafe {
                let v = _mm256_min_ps(
                    _mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(src), scale), lo),
                    hi,
                );
                // Round half to even (the default rounding mode), as tract.
                let q = _mm256_add_epi32(_mm256_cvtps_epi32(v), zp);
                let q = _mm256_min_epi32(_mm256_max_epi32(q, qlo), qhi);
                _mm256_storeu_ps(dst, _mm256_cvtepi32_ps(_mm256_sub_epi32(q, a0)));
            }
            if live < 8 {
                out[n..n + live].copy_from_slice(&buf[..live]);
            }
            n += 8;
        }
    }

    /// [`super::quantize_group`] eight pixels at a time, as signed codes (the AVX2 tile's): the
    /// four rows' codes saturate to int8 as they are packed (`vpackssdw`, `vpacksswb`: the
    /// clamp), and one byte shuffle puts each pixel's four codes together.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_group_avx2(
        quant: InputQuant,
        rows: [Option<&[f32]>; 4],
        pixels: usize,
        out: &mut [u8],
    ) {
        let scale = _mm256_set1_ps(quant.scale);
        let (lo, hi) = (_mm256_set1_ps(-PRE_CLAMP), _mm256_set1_ps(PRE_CLAMP));
        let zp = _mm256_set1_epi32(quant.zero_point);
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        // After the packs each 128-bit lane holds rows 0-3 of its four pixels, row-major.
        let by_pixel = _mm256_setr_epi8(
            0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6,
            10, 14, 3, 7, 11, 15,
        );
        // (A macro, not a closure: a closure does not inherit the target feature and was not
        // inlined, 6x slower.)
        macro_rules! codes {
            ($x:expr) => {{
                let v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps($x, scale), lo), hi);
                // Round half to even (the default rounding mode), as tract.
                _mm256_add_epi32(_mm256_cvtps_epi32(v), zp)
            }};
        }
        let mut n = 0;
        while n < padded(pixels) {
            let live = pixels.saturating_sub(n).min(8);
            let mut q = [_mm256_setzero_si256(); 4];
            for (q, row) in q.iter_mut().zip(rows) {
                *q = match row {
                    Some(r) if live == 8 => {
                        // SAFETY: pixels `n..n + 8` are inside the row.
                        codes!(unsafe { _mm256_loadu_ps(r.as_ptr().add(n)) })
                    }
                    Some(r) if live > 0 => {
                        let mut buf = [0f32; 8];
                        buf[..live].copy_from_slice(&r[n..n + live]);
                        // SAFETY: `buf` holds 8 floats.
                        codes!(unsafe { _mm256_loadu_ps(buf.as_ptr()) })
                    }
                    _ => _mm256_setzero_si256(),
                };
            }
            let packed = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let mut word = _mm256_shuffle_epi8(packed, by_pixel);
            if live < 8 {
                // Pixels past the plane get code 0, as the portable path.
                let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(live as i32), lane);
                word = _mm256_and_si256(word, keep);
            }
            // SAFETY: `out` holds `padded(pixels)` pixels of 4 bytes.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().add(n * 4).cast(), word) };
            n += 8;
        }
    }

    /// [`QMR`] output channels x up to [`super::QNR`] pixels on AVX2, four channels x eight
    /// pixels per pass over the groups: the codes widened to 16 bits (`vpmovsxbw`), `vpmaddwd`
    /// against a channel's four weights broadcast (two sums per pixel, folded pairwise at the
    /// store). Eight accumulators, two code vectors and a weight vector stay in registers.
    ///
    /// # Safety
    /// As [`super::QPointwise::run_columns`]; the CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn tile_avx2(t: &Tile, out: *mut f32) {
        let c = t.conv;
        let groups = c.groups();
        let row = padded(t.pixels) * 4;
        let (lo, hi) = (_mm256_set1_ps(c.clamp.lo), _mm256_set1_ps(c.clamp.hi));
        for half in 0..2 {
            let o0 = t.panel * QMR + 4 * half;
            if o0 >= c.outputs {
                break;
            }
            let rows = (c.outputs - o0).min(4);
            // Each channel's sums start at minus its correction, in one lane of each pair, so
            // the pairwise fold takes it off once.
            let start: [__m256i; 4] = std::array::from_fn(|r| {
                let corr = if r < rows {
                    c.correction(t.isa, o0 + r)
                } else {
                    0
                };
                _mm256_setr_epi32(-corr, 0, -corr, 0, -corr, 0, -corr, 0)
            });
            for block in 0..t.width.div_ceil(8) {
                let mut acc = start.map(|s| [s; 2]);
                // SAFETY: tiles start at whole tiles of the padded rows, so the 8 pixels read
                // are inside `q`; `packed16` holds whole panels of every group.
                unsafe {
                    let mut x = t.q.as_ptr().add((t.col + 8 * block) * 4);
                    let mut w = c.packed16.as_ptr().add(t.panel * groups * QMR + 4 * half);
                    for _ in 0..groups {
                        let a0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.cast()));
                        let a1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(16).cast()));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let wr = _mm256_set1_epi64x(*w.add(r));
                            acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(a0, wr));
                            acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(a1, wr));
                        }
                        x = x.add(row);
                        w = w.add(QMR);
                    }
                }
                let n = t.col + 8 * block;
                let live = (t.width - 8 * block).min(8);
                // Lanes hold pixels 0-1 | 2-3 and 4-5 | 6-7 as pairs of half sums: `vphaddd`
                // gives [p0 p1 p4 p5 | p2 p3 p6 p7], the permute puts them in order.
                let sums = acc.map(|[a, b]| {
                    _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(a, b))
                });
                for (r, s) in sums.into_iter().enumerate().take(rows) {
                    let o = o0 + r;
                    // SAFETY: `scale` and `bias` are padded to whole panels.
                    let (scale, bias) = unsafe {
                        (
                            _mm256_broadcast_ss(&*c.scale.as_ptr().add(o)),
                            _mm256_broadcast_ss(&*c.bias.as_ptr().add(o)),
                        )
                    };
                    let y = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), scale), bias);
                    let at = o * t.pixels + n;
                    // SAFETY: pixels `n..n + live` of row `o` are inside the output (and the
                    // residual).
                    unsafe {
                        if live == 8 {
                            let y = match t.res {
                                Some(res) => {
                                    _mm256_add_ps(y, _mm256_loadu_ps(res.as_ptr().add(at)))
                                }
                                None => y,
                            };
                            _mm256_storeu_ps(out.add(at), _mm256_min_ps(_mm256_max_ps(y, lo), hi));
                        } else {
                            let mut buf = [0f32; 8];
                            _mm256_storeu_ps(buf.as_mut_ptr(), y);
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
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{InputQuant, QMR, Tile, padded};
    use std::arch::aarch64::*;

    /// Sixteen signed codes from 16 floats at `src`: `fcvtns` rounds half to even as tract does
    /// (and saturates, mapping NaN to 0 as Rust's cast in tract's function), the adds and
    /// narrowings saturate to int8.
    #[inline(always)]
    unsafe fn codes16(src: *const f32, scale: float32x4_t, zp: int32x4_t) -> int8x16_t {
        // SAFETY: the caller's `src` holds 16 floats.
        unsafe {
            let q: [int32x4_t; 4] = std::array::from_fn(|i| {
                let v = vmulq_f32(vld1q_f32(src.add(4 * i)), scale);
                vqaddq_s32(vcvtnq_s32_f32(v), zp)
            });
            let h0 = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
            let h1 = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
            vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1))
        }
    }

    /// [`super::quantize_group`] sixteen pixels at a time, as signed codes; `st4` interleaves
    /// the four rows. A group with its four rows runs a straight loop over the plane's whole
    /// vectors; the rest (a plane's last pixels, a group past the last input) goes through a
    /// buffer.
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
        if let [Some(r0), Some(r1), Some(r2), Some(r3)] = rows {
            let whole = pixels / 16 * 16;
            let src = [r0.as_ptr(), r1.as_ptr(), r2.as_ptr(), r3.as_ptr()];
            while n < whole {
                // SAFETY: pixels `n..n + 16` are inside every row, and `out` holds
                // `padded(pixels)` pixels of 4 bytes.
                unsafe {
                    let codes = int8x16x4_t(
                        codes16(src[0].add(n), scale, zp),
                        codes16(src[1].add(n), scale, zp),
                        codes16(src[2].add(n), scale, zp),
                        codes16(src[3].add(n), scale, zp),
                    );
                    vst4q_s8(out.as_mut_ptr().add(n * 4).cast(), codes);
                }
                n += 16;
            }
        }
        while n < padded(pixels) {
            let live = pixels.saturating_sub(n).min(16);
            let codes: [int8x16_t; 4] = std::array::from_fn(|j| match rows[j] {
                Some(r) if live > 0 => {
                    let mut buf = [0f32; 16];
                    buf[..live].copy_from_slice(&r[n..n + live]);
                    // SAFETY: `buf` holds 16 floats.
                    unsafe { codes16(buf.as_ptr(), scale, zp) }
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

    /// The store of half a panel (output channels `4 * half..4 * half + 4` of the panel) x 8
    /// pixels from `col + 8 * block`: sums with the correction already taken off in, rescaled,
    /// biased, residual, clamped floats out (only the tile's `width` pixels). Four whole rows
    /// of 8 pixels keep everything in registers: the scales are used by lane, the biases
    /// broadcast from a lane.
    #[inline(always)]
    unsafe fn store_half(
        t: &Tile,
        block: usize,
        half: usize,
        sums: &[[int32x4_t; 2]; 4],
        out: *mut f32,
    ) {
        // SAFETY: NEON is part of every aarch64 target; the reads and writes as below.
        unsafe {
            let c = t.conv;
            let (lo, hi) = (vdupq_n_f32(c.clamp.lo), vdupq_n_f32(c.clamp.hi));
            let first = 8 * block;
            let live = t.width.saturating_sub(first).min(8);
            let o0 = t.panel * QMR + 4 * half;
            let rows = c.outputs.saturating_sub(o0).min(4);
            let at0 = o0 * t.pixels + t.col + first;
            if live == 8 && rows == 4 {
                // Every vector is padded to whole panels.
                let scales = vld1q_f32(c.scale.as_ptr().add(o0));
                let biases = vld1q_f32(c.bias.as_ptr().add(o0));
                macro_rules! row {
                    ($r:literal) => {{
                        let at = at0 + $r * t.pixels;
                        let bias = vdupq_laneq_f32::<$r>(biases);
                        let y =
                            |s| vaddq_f32(vmulq_laneq_f32::<$r>(vcvtq_f32_s32(s), scales), bias);
                        let (mut y0, mut y1) = (y(sums[$r][0]), y(sums[$r][1]));
                        if let Some(res) = t.res {
                            let p = res.as_ptr().add(at);
                            y0 = vaddq_f32(y0, vld1q_f32(p));
                            y1 = vaddq_f32(y1, vld1q_f32(p.add(4)));
                        }
                        vst1q_f32(out.add(at), vminq_f32(vmaxq_f32(y0, lo), hi));
                        vst1q_f32(out.add(at + 4), vminq_f32(vmaxq_f32(y1, lo), hi));
                    }};
                }
                row!(0);
                row!(1);
                row!(2);
                row!(3);
                return;
            }
            // A panel's last rows or a plane's last pixels: through a buffer.
            for (r, sums) in sums.iter().enumerate().take(rows) {
                let o = o0 + r;
                let at = at0 + r * t.pixels;
                let mut buf = [0f32; 8];
                vst1q_f32(buf.as_mut_ptr(), vcvtq_f32_s32(sums[0]));
                vst1q_f32(buf.as_mut_ptr().add(4), vcvtq_f32_s32(sums[1]));
                for (i, v) in buf.iter().take(live).enumerate() {
                    let mut v = *v * c.scale[o] + c.bias[o];
                    if let Some(res) = t.res {
                        v += res[at + i];
                    }
                    *out.add(at + i) = v.max(c.clamp.lo).min(c.clamp.hi);
                }
            }
        }
    }

    /// The corrections of panel `panel`'s output channels, negated, as two vectors: the sums'
    /// starting values, so the store has nothing to subtract.
    #[inline(always)]
    unsafe fn neg_corrections(t: &Tile) -> [int32x4_t; 2] {
        let corr = &t.conv.correction[usize::from(t.isa.unsigned())];
        // SAFETY: the corrections are padded to whole panels.
        unsafe {
            let p = corr.as_ptr().add(t.panel * QMR);
            [vnegq_s32(vld1q_s32(p)), vnegq_s32(vld1q_s32(p.add(4)))]
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
        // SAFETY: NEON is part of every aarch64 target.
        let neg = unsafe { neg_corrections(t) };
        for block in 0..t.width.div_ceil(8) {
            let start = |r: usize| {
                let v = match r % 4 {
                    0 => vdupq_laneq_s32::<0>(neg[r / 4]),
                    1 => vdupq_laneq_s32::<1>(neg[r / 4]),
                    2 => vdupq_laneq_s32::<2>(neg[r / 4]),
                    _ => vdupq_laneq_s32::<3>(neg[r / 4]),
                };
                [v; 2]
            };
            let mut acc: [[int32x4_t; 2]; QMR] = std::array::from_fn(start);
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
                let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
                store_half(t, block, 0, &[a0, a1, a2, a3], out);
                store_half(t, block, 1, &[a4, a5, a6, a7], out);
            }
        }
    }

    /// One row of four `smull`/`smull2` + four `smlal`/`smlal2` + four `sadalp` for output
    /// channel `r` of a half panel (`$wa`, `$wb`: its weights for the two groups; `$p`: four
    /// temporaries; accumulators `$a0..$a3`).
    macro_rules! smull_row {
        ($wa:literal, $wb:literal, $post:literal, $p0:literal, $p1:literal, $p2:literal, $p3:literal,
         $a0:literal, $a1:literal, $a2:literal, $a3:literal) => {
            concat!(
                "ld1r {{",
                $wa,
                ".4s}}, [{wa}], ",
                $post,
                "\n",
                "ld1r {{",
                $wb,
                ".4s}}, [{wb}], ",
                $post,
                "\n",
                "smull ",
                $p0,
                ".8h, v0.8b, ",
                $wa,
                ".8b\n",
                "smull2 ",
                $p1,
                ".8h, v0.16b, ",
                $wa,
                ".16b\n",
                "smull ",
                $p2,
                ".8h, v1.8b, ",
                $wa,
                ".8b\n",
                "smull2 ",
                $p3,
                ".8h, v1.16b, ",
                $wa,
                ".16b\n",
                "smlal ",
                $p0,
                ".8h, v2.8b, ",
                $wb,
                ".8b\n",
                "smlal2 ",
                $p1,
                ".8h, v2.16b, ",
                $wb,
                ".16b\n",
                "smlal ",
                $p2,
                ".8h, v3.8b, ",
                $wb,
                ".8b\n",
                "smlal2 ",
                $p3,
                ".8h, v3.16b, ",
                $wb,
                ".16b\n",
                "sadalp ",
                $a0,
                ".4s, ",
                $p0,
                ".8h\n",
                "sadalp ",
                $a1,
                ".4s, ",
                $p1,
                ".8h\n",
                "sadalp ",
                $a2,
                ".4s, ",
                $p2,
                ".8h\n",
                "sadalp ",
                $a3,
                ".4s, ",
                $p3,
                ".8h\n",
            )
        };
    }

    /// The twelve products and sums of [`smull_row`] for one output channel, its weights for the
    /// two groups already broadcast in `$wa` and `$wb` (`$p`: four temporaries; accumulators
    /// `$a0..$a3`).
    macro_rules! smull_products {
        ($wa:literal, $wb:literal, $p0:literal, $p1:literal, $p2:literal, $p3:literal,
         $a0:literal, $a1:literal, $a2:literal, $a3:literal) => {
            concat!(
                "smull ",
                $p0,
                ".8h, v0.8b, ",
                $wa,
                ".8b\n",
                "smull2 ",
                $p1,
                ".8h, v0.16b, ",
                $wa,
                ".16b\n",
                "smull ",
                $p2,
                ".8h, v1.8b, ",
                $wa,
                ".8b\n",
                "smull2 ",
                $p3,
                ".8h, v1.16b, ",
                $wa,
                ".16b\n",
                "smlal ",
                $p0,
                ".8h, v2.8b, ",
                $wb,
                ".8b\n",
                "smlal2 ",
                $p1,
                ".8h, v2.16b, ",
                $wb,
                ".16b\n",
                "smlal ",
                $p2,
                ".8h, v3.8b, ",
                $wb,
                ".8b\n",
                "smlal2 ",
                $p3,
                ".8h, v3.16b, ",
                $wb,
                ".16b\n",
                "sadalp ",
                $a0,
                ".4s, ",
                $p0,
                ".8h\n",
                "sadalp ",
                $a1,
                ".4s, ",
                $p1,
                ".8h\n",
                "sadalp ",
                $a2,
                ".4s, ",
                $p2,
                ".8h\n",
                "sadalp ",
                $a3,
                ".4s, ",
                $p3,
                ".8h\n",
            )
        };
    }

    /// Four output channels (half a panel) x 8 pixels over `pairs` pairs of input groups, in
    /// assembly so that every value stays in a register: per pair, the two groups' codes in two
    /// `ld1` (`x`, `x + row`, each advancing two rows), then per channel its two weights
    /// broadcast (`ld1r`, advancing through the half panel, then to the next pair's) and twelve
    /// products and sums. Returns `acc[r][j]`: channel `r`, pixels `2j` and `2j + 1`, as pairs
    /// of channel sums (`addp` folds them), each accumulator starting from `start[r]`.
    ///
    /// # Safety
    /// `x` must have `pairs * 2` rows of `row` bytes from it with 32 readable bytes each;
    /// `w` must have `pairs * 2 * QMR` `i32`s from it (minus the half panel's offset).
    #[inline(always)]
    unsafe fn smull_half(
        x: *const i8,
        w: *const i32,
        pairs: usize,
        row: usize,
        start: [int32x4_t; 4],
    ) -> [[int32x4_t; 4]; 4] {
        debug_assert!(pairs >= 1, "the loop runs at least once");
        // SAFETY: as the function's contract (`pairs` >= 1: every convolution has an input).
        unsafe {
            let mut a: [int32x4_t; 16] = std::array::from_fn(|i| start[i / 4]);
            std::arch::asm!(
                "2:",
                "ld1 {{v0.16b, v1.16b}}, [{xa}], {step}",
                "ld1 {{v2.16b, v3.16b}}, [{xb}], {step}",
                smull_row!("v4", "v5", "#4", "v6", "v7", "v8", "v9", "v16", "v17", "v18", "v19"),
                smull_row!("v10", "v11", "#4", "v12", "v13", "v14", "v15", "v20", "v21", "v22", "v23"),
                smull_row!("v4", "v5", "#4", "v6", "v7", "v8", "v9", "v24", "v25", "v26", "v27"),
                smull_row!("v10", "v11", "{wstep}", "v12", "v13", "v14", "v15", "v28", "v29", "v30", "v31"),
                "subs {n}, {n}, #1",
                "b.ne 2b",
                xa = inout(reg) x => _,
                xb = inout(reg) x.add(row) => _,
                wa = inout(reg) w => _,
                wb = inout(reg) w.add(QMR) => _,
                n = inout(reg) pairs => _,
                step = in(reg) 2 * row,
                wstep = in(reg) (2 * QMR - 3) * 4,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                inout("v16") a[0], inout("v17") a[1], inout("v18") a[2], inout("v19") a[3],
                inout("v20") a[4], inout("v21") a[5], inout("v22") a[6], inout("v23") a[7],
                inout("v24") a[8], inout("v25") a[9], inout("v26") a[10], inout("v27") a[11],
                inout("v28") a[12], inout("v29") a[13], inout("v30") a[14], inout("v31") a[15],
                options(nostack, readonly),
            );
            [
                [a[0], a[1], a[2], a[3]],
                [a[4], a[5], a[6], a[7]],
                [a[8], a[9], a[10], a[11]],
                [a[12], a[13], a[14], a[15]],
            ]
        }
    }

    /// The operands of [`smull_store`] and [`smull_store_res`]: half a panel's whole 8-pixel
    /// blocks, all four channels live.
    struct HalfBlocks {
        /// Consecutive blocks of 8 pixels.
        blocks: usize,
        /// The first block's codes (first group row).
        x: *const i8,
        /// The half panel's weights in `packed_lanes`.
        w: *const i32,
        /// Pairs of groups.
        pairs: usize,
        /// Bytes per group row.
        row: usize,
        /// The four channels' `pair_start`s (16 `i32`s each).
        start: *const i32,
        /// The four channels' multipliers.
        scale: *const f32,
        /// The four channels' `bias_lanes`.
        bias: *const f32,
        /// The clamp's bounds.
        lo: *const f32,
        hi: *const f32,
        /// The first channel's first output pixel; the next channel's is `plane` bytes on.
        out: *mut f32,
        /// The residual at the same place as `out`, if there is one.
        res: *const f32,
        /// Bytes from one channel's plane to the next.
        plane: usize,
    }

    /// The fused store of [`smull_store`]: fold the pairs, cast, rescale, bias, (residual),
    /// clamp and store four rows of 8 floats. `$res`: the residual's four loads and additions,
    /// or nothing.
    macro_rules! smull_store_asm {
        ($name:ident, $($res:literal),*) => {
            /// Half a panel x whole 8-pixel blocks, from the codes to the stored floats in one
            /// assembly block: per block, the accumulators start from four loads of
            /// `pair_start`; per pair of groups, two loads of codes and two of broadcast weights
            /// (`packed_lanes`) feed 48 products and sums (54 instructions for 256
            /// multiply-adds, against [`smull_half`]'s 60); then the sums are folded (`addp`), cast,
            /// multiplied by lane, biased, clamped and stored by row with post-increments
            /// (tract's order of operations, so the result is bit for bit the same). The Rust
            /// loop and store it replaces cost about 160 instructions per block besides the
            /// products; this costs 72 (80 with the residual).
            ///
            /// # Safety
            /// As [`smull_half`] for `x` (for every block), `w` and `pairs`; `start`, `scale`,
            /// `bias`, `lo`, `hi` readable as [`HalfBlocks`] says; 4 rows of `8 * blocks` floats
            /// writable from `out` (and readable from `res`) `plane` bytes apart.
            #[inline(always)]
            unsafe fn $name(h: &HalfBlocks) {
                debug_assert!(h.pairs >= 1 && h.blocks >= 1, "the loops run at least once");
                // SAFETY: as the function's contract.
                unsafe {
                    std::arch::asm!(
                        "3:",
                        "mov {xa}, {x}",
                        "add {xb}, {x}, {row}",
                        "mov {wa}, {w}",
                        "mov {n}, {pairs}",
                        "mov {st}, {start}",
                        "mov {o}, {out}",
                        "mov {r}, {res}",
                        "ld1 {{v16.4s, v17.4s, v18.4s, v19.4s}}, [{st}], #64",
                        "ld1 {{v20.4s, v21.4s, v22.4s, v23.4s}}, [{st}], #64",
                        "ld1 {{v24.4s, v25.4s, v26.4s, v27.4s}}, [{st}], #64",
                        "ld1 {{v28.4s, v29.4s, v30.4s, v31.4s}}, [{st}]",
                        "2:",
                        "ld1 {{v0.16b, v1.16b}}, [{xa}], {step}",
                        "ld1 {{v2.16b, v3.16b}}, [{xb}], {step}",
                        "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{wa}], #64",
                        smull_products!("v4", "v5", "v8", "v9", "v10", "v11", "v16", "v17", "v18", "v19"),
                        smull_products!("v6", "v7", "v12", "v13", "v14", "v15", "v20", "v21", "v22", "v23"),
                        "ld1 {{v4.16b, v5.16b, v6.16b, v7.16b}}, [{wa}], #64",
                        smull_products!("v4", "v5", "v8", "v9", "v10", "v11", "v24", "v25", "v26", "v27"),
                        smull_products!("v6", "v7", "v12", "v13", "v14", "v15", "v28", "v29", "v30", "v31"),
                        "subs {n}, {n}, #1",
                        "b.ne 2b",
                        "addp v0.4s, v16.4s, v17.4s",
                        "addp v1.4s, v18.4s, v19.4s",
                        "addp v2.4s, v20.4s, v21.4s",
                        "addp v3.4s, v22.4s, v23.4s",
                        "addp v4.4s, v24.4s, v25.4s",
                        "addp v5.4s, v26.4s, v27.4s",
                        "addp v6.4s, v28.4s, v29.4s",
                        "addp v7.4s, v30.4s, v31.4s",
                        "ld1 {{v8.4s}}, [{scale}]",
                        "ld1 {{v10.4s, v11.4s, v12.4s, v13.4s}}, [{bias}]",
                        "scvtf v0.4s, v0.4s",
                        "scvtf v1.4s, v1.4s",
                        "scvtf v2.4s, v2.4s",
                        "scvtf v3.4s, v3.4s",
                        "scvtf v4.4s, v4.4s",
                        "scvtf v5.4s, v5.4s",
                        "scvtf v6.4s, v6.4s",
                        "scvtf v7.4s, v7.4s",
                        "fmul v0.4s, v0.4s, v8.s[0]",
                        "fmul v1.4s, v1.4s, v8.s[0]",
                        "fmul v2.4s, v2.4s, v8.s[1]",
                        "fmul v3.4s, v3.4s, v8.s[1]",
                        "fmul v4.4s, v4.4s, v8.s[2]",
                        "fmul v5.4s, v5.4s, v8.s[2]",
                        "fmul v6.4s, v6.4s, v8.s[3]",
                        "fmul v7.4s, v7.4s, v8.s[3]",
                        "fadd v0.4s, v0.4s, v10.4s",
                        "fadd v1.4s, v1.4s, v10.4s",
                        "fadd v2.4s, v2.4s, v11.4s",
                        "fadd v3.4s, v3.4s, v11.4s",
                        "fadd v4.4s, v4.4s, v12.4s",
                        "fadd v5.4s, v5.4s, v12.4s",
                        "fadd v6.4s, v6.4s, v13.4s",
                        "fadd v7.4s, v7.4s, v13.4s",
                        $($res,)*
                        "ld1r {{v14.4s}}, [{lo}]",
                        "ld1r {{v15.4s}}, [{hi}]",
                        "fmax v0.4s, v0.4s, v14.4s",
                        "fmax v1.4s, v1.4s, v14.4s",
                        "fmax v2.4s, v2.4s, v14.4s",
                        "fmax v3.4s, v3.4s, v14.4s",
                        "fmax v4.4s, v4.4s, v14.4s",
                        "fmax v5.4s, v5.4s, v14.4s",
                        "fmax v6.4s, v6.4s, v14.4s",
                        "fmax v7.4s, v7.4s, v14.4s",
                        "fmin v0.4s, v0.4s, v15.4s",
                        "fmin v1.4s, v1.4s, v15.4s",
                        "fmin v2.4s, v2.4s, v15.4s",
                        "fmin v3.4s, v3.4s, v15.4s",
                        "fmin v4.4s, v4.4s, v15.4s",
                        "fmin v5.4s, v5.4s, v15.4s",
                        "fmin v6.4s, v6.4s, v15.4s",
                        "fmin v7.4s, v7.4s, v15.4s",
                        "st1 {{v0.4s, v1.4s}}, [{o}], {plane}",
                        "st1 {{v2.4s, v3.4s}}, [{o}], {plane}",
                        "st1 {{v4.4s, v5.4s}}, [{o}], {plane}",
                        "st1 {{v6.4s, v7.4s}}, [{o}]",
                        "add {x}, {x}, #32",
                        "add {out}, {out}, #32",
                        "add {res}, {res}, #32",
                        "subs {blocks}, {blocks}, #1",
                        "b.ne 3b",
                        blocks = inout(reg) h.blocks => _,
                        x = inout(reg) h.x => _,
                        row = in(reg) h.row,
                        w = in(reg) h.w,
                        pairs = in(reg) h.pairs,
                        start = in(reg) h.start,
                        out = inout(reg) h.out => _,
                        res = inout(reg) h.res => _,
                        xa = out(reg) _,
                        xb = out(reg) _,
                        wa = out(reg) _,
                        n = out(reg) _,
                        st = out(reg) _,
                        o = out(reg) _,
                        r = out(reg) _,
                        step = in(reg) 2 * h.row,
                        scale = in(reg) h.scale,
                        bias = in(reg) h.bias,
                        lo = in(reg) h.lo,
                        hi = in(reg) h.hi,
                        plane = in(reg) h.plane,
                        out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                        out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                        out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                        out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                        out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                        out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                        out("v24") _, out("v25") _, out("v26") _, out("v27") _,
                        out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                        options(nostack),
                    );
                }
            }
        };
    }

    smull_store_asm!(smull_store, "// no residual");
    smull_store_asm!(
        smull_store_res,
        "ld1 {{v16.4s, v17.4s}}, [{r}], {plane}",
        "fadd v0.4s, v0.4s, v16.4s",
        "fadd v1.4s, v1.4s, v17.4s",
        "ld1 {{v16.4s, v17.4s}}, [{r}], {plane}",
        "fadd v2.4s, v2.4s, v16.4s",
        "fadd v3.4s, v3.4s, v17.4s",
        "ld1 {{v16.4s, v17.4s}}, [{r}], {plane}",
        "fadd v4.4s, v4.4s, v16.4s",
        "fadd v5.4s, v5.4s, v17.4s",
        "ld1 {{v16.4s, v17.4s}}, [{r}]",
        "fadd v6.4s, v6.4s, v16.4s",
        "fadd v7.4s, v7.4s, v17.4s"
    );

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
        for half in 0..2 {
            let o = t.panel * QMR + 4 * half;
            // Whole blocks of four live channels in one call; the rest below.
            let fused = if c.outputs >= o + 4 { t.width / 8 } else { 0 };
            if fused > 0 {
                let at = o * t.pixels + t.col;
                // SAFETY: reads inside `q` (whole padded rows, an even number of groups),
                // `packed`, `pair_start`, `scale` and `bias_lanes` (whole panels); the blocks and
                // the four channels are inside the plane (checked above); writes as
                // `run_columns`. The residual's pointer is only read when there is one.
                unsafe {
                    let h = HalfBlocks {
                        blocks: fused,
                        x: t.q.as_ptr().add(t.col * 4).cast::<i8>(),
                        w: c.packed_lanes
                            .as_ptr()
                            .add((2 * t.panel + half) * groups / 2 * 32),
                        pairs: groups / 2,
                        row,
                        start: c.pair_start.as_ptr().add(16 * o),
                        scale: c.scale.as_ptr().add(o),
                        bias: c.bias_lanes.as_ptr().add(4 * o),
                        lo: &c.clamp.lo,
                        hi: &c.clamp.hi,
                        out: out.add(at),
                        res: t
                            .res
                            .map_or(std::ptr::null(), |r| r.as_ptr().wrapping_add(at)),
                        plane: t.pixels * 4,
                    };
                    if t.res.is_some() {
                        smull_store_res(&h);
                    } else {
                        smull_store(&h);
                    }
                }
            }
            for block in fused..t.width.div_ceil(8) {
                // A plane's last pixels or a panel's last channels.
                // SAFETY: reads inside `q` (whole padded rows, an even number of groups),
                // `packed` (whole panels) and `pair_start` (whole panels); writes as
                // `run_columns`.
                unsafe {
                    let start: [int32x4_t; 4] =
                        std::array::from_fn(|r| vld1q_s32(c.pair_start.as_ptr().add(16 * (o + r))));
                    let acc = smull_half(
                        t.q.as_ptr().add((t.col + 8 * block) * 4).cast::<i8>(),
                        c.packed.as_ptr().add(t.panel * groups * QMR + 4 * half),
                        groups / 2,
                        row,
                        start,
                    );
                    let sums = acc.map(|a| [vpaddq_s32(a[0], a[1]), vpaddq_s32(a[2], a[3])]);
                    store_half(t, block, half, &sums, out);
                }
            }
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
        // Convolutions that took the f32 route (AVX2 alone, few inputs).
        let mut floats = 0;
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
                conv.quantize(isa, QIn::Float(&x), pixels, 0, &mut q);
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
                if let Some(f) = conv.float_route(isa) {
                    let mut codes = vec![0f32; k * pixels];
                    conv.float_codes(QIn::Float(&x), pixels, 0..pixels, &mut codes);
                    let mut got = vec![f32::NAN; m * pixels];
                    f.run_rows(
                        crate::kernels::simd::Isa::detect(),
                        &codes,
                        res.as_deref(),
                        0,
                        &mut got,
                    );
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{isa:?} in f32: k={k} m={m} pixels={pixels} case {case}"
                    );
                    floats += 1;
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if isas.contains(&QIsa::Avx2) {
            assert!(floats > 0, "no case took the f32 route");
        }
        let _ = floats;
    }

    /// Not a test: `cargo test -p kestrel-edge --lib qconv1x1::tests::int8_pointwise_speed --
    /// --ignored --nocapture` times the quantize and the tiles of each int8 path on MobileNetV2's
    /// 1x1 shapes, one thread.
    #[test]
    #[ignore]
    fn int8_pointwise_speed() {
        let extra = [(16, 96, 139), (32, 16, 139), (24, 144, 70), (144, 24, 70)];
        for (k, m, hw) in crate::kernels::testutil::POINTWISE_SHAPES
            .into_iter()
            .chain(extra)
        {
            let pixels = hw * hw;
            let x = crate::kernels::testutil::values(k * pixels, 1);
            let quant = InputQuant {
                scale: 40.0,
                zero_point: 3,
            };
            let conv = QPointwise::new(
                k,
                m,
                &random_i8(k * m, 2),
                quant,
                3,
                (&vec![1e-3; m], &vec![0.0; m]),
                Clamp { lo: 0.0, hi: 6.0 },
            );
            let mut line = format!("{k:>4} -> {m:>4} at {hw:>3}x{hw:<3}");
            let macs = (k * m * pixels) as f64;
            for isa in QIsa::available() {
                let mut q = vec![0u8; conv.packed_len(pixels)];
                let mut out = vec![0f32; m * pixels];
                let reps = (1e8 / macs).ceil() as usize;
                let (mut tq, mut tt) = (f64::MAX, f64::MAX);
                for _ in 0..3 {
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        conv.quantize(isa, QIn::Float(&x), pixels, 0, &mut q);
                    }
                    tq = tq.min(t.elapsed().as_secs_f64() / reps as f64);
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        unsafe {
                            conv.run_columns(isa, &q, pixels, None, 0..pixels, out.as_mut_ptr())
                        };
                    }
                    tt = tt.min(t.elapsed().as_secs_f64() / reps as f64);
                }
                line += &format!(
                    "  {}: quantize {:.3} ms, tiles {:.3} ms ({:.1} GMAC/s)",
                    isa.name(),
                    tq * 1e3,
                    tt * 1e3,
                    macs / tt / 1e9
                );
                if let Some(f) = conv.float_route(isa) {
                    let mut codes = vec![0f32; k * pixels];
                    let (mut tq, mut tt) = (f64::MAX, f64::MAX);
                    for _ in 0..3 {
                        let t = std::time::Instant::now();
                        for _ in 0..reps {
                            conv.float_codes(QIn::Float(&x), pixels, 0..pixels, &mut codes);
                        }
                        tq = tq.min(t.elapsed().as_secs_f64() / reps as f64);
                        let t = std::time::Instant::now();
                        for _ in 0..reps {
                            let fisa = crate::kernels::simd::Isa::detect();
                            f.run_rows(fisa, &codes, None, 0, &mut out);
                        }
                        tt = tt.min(t.elapsed().as_secs_f64() / reps as f64);
                    }
                    line += &format!(
                        ", in f32: codes {:.3} ms, tiles {:.3} ms ({:.1} GMAC/s)",
                        tq * 1e3,
                        tt * 1e3,
                        macs / tt / 1e9
                    );
                }
            }
            println!("{line}");
        }
    }

    /// Not a test: `cargo test -p kestrel-edge --lib qconv1x1::tests::multiply_rates --
    /// --ignored --nocapture` measures the CPU's peak multiply-add rates in registers, one
    /// thread: `vpmaddwd` (the AVX2 int8 tile's product, 16 per instruction), `vfmadd231ps` (the
    /// f32 tiles', 8), both interleaved, and `vpmaddubsw` + `vpmaddwd` (32 int8 products in two
    /// instructions, exact only for weights of 7 bits). It says how fast int8 can be against f32
    /// with AVX2 alone: on Zen 2 all four reach the same ~53 products per ns.
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[ignore]
    fn multiply_rates() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            panic!("this CPU has no AVX2 + FMA: nothing to measure");
        }
        const LOOPS: u64 = 20_000_000;
        /// Best of 5 of `f`'s seconds.
        fn best(f: impl Fn()) -> f64 {
            (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        }
        // SAFETY (each block): register-only instructions of AVX2/FMA, which the CPU has;
        // every register written is declared clobbered.
        let fma = best(|| unsafe {
            std::arch::asm!(
                "2:",
                "vfmadd231ps ymm0, ymm14, ymm15", "vfmadd231ps ymm1, ymm14, ymm15",
                "vfmadd231ps ymm2, ymm14, ymm15", "vfmadd231ps ymm3, ymm14, ymm15",
                "vfmadd231ps ymm4, ymm14, ymm15", "vfmadd231ps ymm5, ymm14, ymm15",
                "vfmadd231ps ymm6, ymm14, ymm15", "vfmadd231ps ymm7, ymm14, ymm15",
                "vfmadd231ps ymm8, ymm14, ymm15", "vfmadd231ps ymm9, ymm14, ymm15",
                "vfmadd231ps ymm10, ymm14, ymm15", "vfmadd231ps ymm11, ymm14, ymm15",
                "dec {n}", "jnz 2b",
                n = inout(reg) LOOPS => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
                out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
                out("ymm10") _, out("ymm11") _, out("ymm14") _, out("ymm15") _,
                options(nostack, nomem),
            )
        });
        let madd = best(|| unsafe {
            std::arch::asm!(
                "2:",
                "vpmaddwd ymm8, ymm14, ymm15", "vpaddd ymm0, ymm0, ymm8",
                "vpmaddwd ymm9, ymm13, ymm15", "vpaddd ymm1, ymm1, ymm9",
                "vpmaddwd ymm10, ymm14, ymm13", "vpaddd ymm2, ymm2, ymm10",
                "vpmaddwd ymm11, ymm13, ymm13", "vpaddd ymm3, ymm3, ymm11",
                "dec {n}", "jnz 2b",
                n = inout(reg) LOOPS => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm8") _,
                out("ymm9") _, out("ymm10") _, out("ymm11") _, out("ymm13") _, out("ymm14") _,
                out("ymm15") _,
                options(nostack, nomem),
            )
        });
        let mixed = best(|| unsafe {
            std::arch::asm!(
                "2:",
                "vpmaddwd ymm12, ymm14, ymm15", "vpaddd ymm8, ymm8, ymm12",
                "vfmadd231ps ymm0, ymm14, ymm15", "vfmadd231ps ymm1, ymm14, ymm15",
                "vpmaddwd ymm12, ymm13, ymm15", "vpaddd ymm9, ymm9, ymm12",
                "vfmadd231ps ymm2, ymm14, ymm15", "vfmadd231ps ymm3, ymm14, ymm15",
                "vpmaddwd ymm11, ymm14, ymm13", "vpaddd ymm10, ymm10, ymm11",
                "vfmadd231ps ymm4, ymm14, ymm15", "vfmadd231ps ymm5, ymm14, ymm15",
                "vpmaddwd ymm11, ymm13, ymm13", "vpaddd ymm10, ymm10, ymm11",
                "vfmadd231ps ymm6, ymm14, ymm15", "vfmadd231ps ymm7, ymm14, ymm15",
                "dec {n}", "jnz 2b",
                n = inout(reg) LOOPS => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
                out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
                out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _, out("ymm14") _,
                out("ymm15") _,
                options(nostack, nomem),
            )
        });
        let ubsw = best(|| unsafe {
            std::arch::asm!(
                "vpcmpeqw ymm10, ymm10, ymm10",
                "2:",
                "vpmaddubsw ymm4, ymm15, ymm14", "vpmaddwd ymm4, ymm4, ymm10",
                "vpaddd ymm0, ymm0, ymm4",
                "vpmaddubsw ymm5, ymm15, ymm13", "vpmaddwd ymm5, ymm5, ymm10",
                "vpaddd ymm1, ymm1, ymm5",
                "vpmaddubsw ymm6, ymm13, ymm14", "vpmaddwd ymm6, ymm6, ymm10",
                "vpaddd ymm2, ymm2, ymm6",
                "vpmaddubsw ymm7, ymm13, ymm15", "vpmaddwd ymm7, ymm7, ymm10",
                "vpaddd ymm3, ymm3, ymm7",
                "dec {n}", "jnz 2b",
                n = inout(reg) LOOPS => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
                out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm10") _, out("ymm13") _,
                out("ymm14") _, out("ymm15") _,
                options(nostack, nomem),
            )
        });
        let rate = |macs_per_loop: u64, secs: f64| (LOOPS * macs_per_loop) as f64 / secs / 1e9;
        let rows = [
            ("vfmadd231ps (f32)", rate(12 * 8, fma)),
            ("vpmaddwd (int8 as int16)", rate(4 * 16, madd)),
            ("vpmaddwd + vfmadd231ps, 1:2", rate(4 * 16 + 8 * 8, mixed)),
            ("vpmaddubsw + vpmaddwd (7-bit weights)", rate(4 * 32, ubsw)),
        ];
        for (name, r) in rows {
            println!("{name:<40} {r:6.1} multiply-adds per ns");
            assert!(r > 0.0 && r.is_finite(), "{name}: no rate");
        }
    }
}
