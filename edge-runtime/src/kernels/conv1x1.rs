//! 1x1 convolutions (pointwise: a matrix product over channels) on CHW planes, computed where the
//! activations already are. tract turns each into a matrix product that first repacks the whole
//! input into column panels; here the input's rows are read in place against weights packed once
//! when the model loads, with bias, clamp (ReLU6) and the residual addition of an
//! inverted-residual block fused into the store.
//!
//! Two kinds of tiles: *pixel tiles* (vectors over pixels, each multiplied by one weight per
//! output channel: by lane on NEON, broadcast on x86) and *channel tiles* (vectors over output
//! channels, each multiplied by one broadcast pixel, written out transposed). Pixel tiles do the
//! work; channel tiles take the last columns of a plane when fewer than a vector (49 = 48 + 1 on
//! 7x7). (With AVX2 alone they also took small planes and convolutions of many inputs until the
//! 4 x 24 pixel tile, which beats them on every MobileNetV2 shape on Zen 2.)

use super::conv3x3::Clamp;
use super::simd::{Isa, Lanes};

/// Output channels per packed panel of weights; calls start at a panel and threads split the rows
/// of a plane in whole panels.
pub const MR: usize = 8;
/// Column granularity of [`Pointwise::run_columns`] (how threads split a large plane): a multiple
/// of every pixel tile's width (12 on NEON, 24 with AVX2, 16 portable, 48 with AVX-512).
pub const NC: usize = 48;
/// Input channels summed in one pass over a tile: its input rows and weights stay in the L1
/// cache. On x86 128: a 7x7 plane's 48 columns of 256 channels (48 KB) overflowed Zen 2's 32 KB
/// L1 and every tile of 4 channels streamed them from L2 again; with 128 (24 KB) the 7x7 layers
/// went from 37-40 to 42-43 GMAC/s (`pointwise_speed`), the other shapes unchanged. aarch64
/// keeps 256 (more partial-sum passes would add instructions; not measured on a board).
const KC: usize = if cfg!(target_arch = "x86_64") {
    128
} else {
    256
};
/// Bytes of input one column block may span, so a block stays in the L2 cache while every panel
/// of weights runs over it.
const BLOCK_BYTES: usize = 96 * 1024;

/// A 1x1 convolution with bias and clamp fused, its weights packed in panels of [`MR`] output
/// channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Pointwise {
    /// Input channels.
    pub inputs: usize,
    /// Output channels.
    pub outputs: usize,
    /// Panel `p`, input channel `k`, row `r` at `(p * inputs + k) * MR + r`: weight of output
    /// channel `p * MR + r` (zero past the last one).
    packed: Vec<f32>,
    /// One bias per output channel, zero-padded to whole panels.
    bias: Vec<f32>,
    /// Empty, or one multiplier per output channel (zero-padded to whole panels) applied to the
    /// sums before the bias: an int8 convolution's rescale, where its integer sums are exact in
    /// f32 ([`Self::with_scale`]).
    scale: Vec<f32>,
    /// Fused activation, applied after the residual addition.
    pub clamp: Clamp,
}

/// Which tiles a call runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Channel tiles for small planes where the instruction set has them, else pixel tiles.
    Auto,
    /// Pixel tiles.
    #[cfg_attr(not(test), allow(dead_code))]
    Pixels,
    /// Channel tiles where the instruction set has them, else pixel tiles.
    #[cfg_attr(not(test), allow(dead_code))]
    Channels,
}

impl Pointwise {
    /// A convolution from `[outputs, inputs]` weights (row-major) and one bias per output.
    pub fn new(inputs: usize, outputs: usize, weights: &[f32], bias: &[f32], clamp: Clamp) -> Self {
        assert_eq!(
            weights.len(),
            inputs * outputs,
            "weights are [outputs, inputs]"
        );
        assert_eq!(bias.len(), outputs, "one bias per output channel");
        let panels = outputs.div_ceil(MR);
        let mut packed = vec![0f32; panels * inputs * MR];
        for o in 0..outputs {
            let (p, r) = (o / MR, o % MR);
            for k in 0..inputs {
                packed[(p * inputs + k) * MR + r] = weights[o * inputs + k];
            }
        }
        let mut padded = bias.to_vec();
        padded.resize(panels * MR, 0.0);
        Pointwise {
            inputs,
            outputs,
            packed,
            bias: padded,
            scale: Vec::new(),
            clamp,
        }
    }

    /// The same convolution with its sums multiplied by `scale` (one per output channel) before
    /// the bias, each operation rounded on its own (no fused multiply-add): what tract does to
    /// an int8 convolution's sums, so that integer-valued inputs and weights whose sums stay
    /// below 2^24 give tract's results bit for bit. Not on NEON, whose tiles start from the
    /// bias (and only built for x86-64, where the int8 f32 route uses it: on aarch64 the
    /// option's test in the store cost the A72 0.5% of a frame's instructions).
    #[cfg(target_arch = "x86_64")]
    pub fn with_scale(mut self, scale: &[f32]) -> Self {
        assert_eq!(
            scale.len(),
            self.outputs,
            "one multiplier per output channel"
        );
        self.scale = scale.to_vec();
        self.scale.resize(self.bias.len(), 0.0);
        self
    }

    /// The multipliers from row `row` on, if any (never on aarch64: see [`Self::with_scale`]).
    #[inline(always)]
    fn scale_at(&self, row: usize) -> Option<*const f32> {
        #[cfg(target_arch = "x86_64")]
        return (!self.scale.is_empty()).then(|| self.scale[row..].as_ptr());
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = row;
            None
        }
    }

    /// Panels of [`MR`] output channels (the last may be partial).
    pub fn panels(&self) -> usize {
        self.outputs.div_ceil(MR)
    }

    /// Pixels per plane of an input `x` (`[inputs, pixels]`), checking the residual's size.
    fn pixels(&self, x: &[f32], residual: Option<&[f32]>) -> usize {
        let pixels = x.len() / self.inputs.max(1);
        assert_eq!(x.len(), self.inputs * pixels, "input is [inputs, pixels]");
        if let Some(r) = residual {
            assert_eq!(
                r.len(),
                self.outputs * pixels,
                "residual is [outputs, pixels]"
            );
        }
        pixels
    }

    /// Computes output channels `first_panel * MR ..` (as many as `out` holds, whole rows of
    /// `pixels`) of one image: `x` is `[inputs, pixels]`, `residual` (added before the clamp)
    /// `[outputs, pixels]` like the whole output.
    pub fn run_rows(
        &self,
        isa: Isa,
        x: &[f32],
        residual: Option<&[f32]>,
        first_panel: usize,
        out: &mut [f32],
    ) {
        self.run_rows_with(isa, (Path::Auto, true), x, residual, first_panel, out)
    }

    /// [`Self::run_rows`] with the tiles `path` says (and AVX-512's where the CPU has it if
    /// `.1`).
    fn run_rows_with(
        &self,
        isa: Isa,
        path: (Path, bool),
        x: &[f32],
        residual: Option<&[f32]>,
        first_panel: usize,
        out: &mut [f32],
    ) {
        let pixels = self.pixels(x, residual);
        if pixels == 0 {
            return;
        }
        assert_eq!(out.len() % pixels, 0, "output is whole rows");
        let rows = out.len() / pixels;
        assert!(
            first_panel * MR + rows <= self.outputs,
            "rows past the output"
        );
        let run = Run {
            pw: self,
            x,
            ldx: pixels,
            xcol0: 0,
            pixels,
            residual,
            first_row: first_panel * MR,
            rows,
            cols: (0, pixels),
        };
        unsafe { run.dispatch(isa, path.0, path.1, out.as_mut_ptr()) }
    }

    /// Computes pixels `cols` (a range starting at a multiple of [`NC`]) of every output channel
    /// of one image into `out`, the whole `[outputs, pixels]` output: how threads split a large
    /// plane, each reading only its part of the input.
    ///
    /// # Safety
    /// `out` holds `outputs * pixels` values, and nothing else reads or writes these columns of
    /// it during the call.
    pub unsafe fn run_columns(
        &self,
        isa: Isa,
        x: &[f32],
        residual: Option<&[f32]>,
        cols: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        unsafe { self.run_columns_with(isa, (Path::Auto, true), x, residual, cols, out) }
    }

    /// [`Self::run_columns`] with the tiles `path` says, as [`Self::run_rows_with`].
    unsafe fn run_columns_with(
        &self,
        isa: Isa,
        path: (Path, bool),
        x: &[f32],
        residual: Option<&[f32]>,
        cols: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        let pixels = self.pixels(x, residual);
        assert!(
            cols.start.is_multiple_of(NC) && cols.end <= pixels,
            "columns"
        );
        if cols.is_empty() {
            return;
        }
        let run = Run {
            pw: self,
            x,
            ldx: pixels,
            xcol0: 0,
            pixels,
            residual,
            first_row: 0,
            rows: self.outputs,
            cols: (cols.start, cols.end),
        };
        unsafe { run.dispatch(isa, path.0, path.1, out) }
    }

    /// [`Self::run_columns`] from an input holding only those columns: `x` is `[inputs,
    /// cols.len()]`, a block of the plane's `pixels` columns (`residual` and `out` are whole
    /// planes). How a caller that prepares the input block by block (an int8 convolution's
    /// codes) keeps each block in the cache.
    ///
    /// # Safety
    /// As [`Self::run_columns`].
    pub unsafe fn run_block(
        &self,
        isa: Isa,
        x: &[f32],
        pixels: usize,
        residual: Option<&[f32]>,
        cols: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        assert!(
            cols.start.is_multiple_of(NC) && cols.end <= pixels,
            "columns"
        );
        assert_eq!(
            x.len(),
            self.inputs * cols.len(),
            "input is [inputs, columns]"
        );
        if let Some(r) = residual {
            assert_eq!(
                r.len(),
                self.outputs * pixels,
                "residual is [outputs, pixels]"
            );
        }
        if cols.is_empty() {
            return;
        }
        let run = Run {
            pw: self,
            x,
            ldx: cols.len(),
            xcol0: cols.start,
            pixels,
            residual,
            first_row: 0,
            rows: self.outputs,
            cols: (cols.start, cols.end),
        };
        unsafe { run.dispatch(isa, Path::Auto, true, out) }
    }
}

/// A pixel tile's signature (see [`tile`]).
type TileFn = unsafe fn(usize, *const f32, *const f32, usize, *const f32, Store);

/// An instruction set's pixel tiles: `rows` output channels (a divisor of [`MR`]) by `v` vectors
/// of `lanes` pixels, `f[v - 1]`, the last the widest.
struct Tiles {
    rows: usize,
    lanes: usize,
    f: &'static [TileFn],
}

const PORTABLE_TILES: Tiles = Tiles {
    rows: MR,
    lanes: 16,
    f: &[tile::<f32, MR, 16>],
};

// The tiles are functions of their own (not inlined into the loops around them): sharing a
// register allocation with the edge code spills accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn tile_avx<const NV: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    bias: *const f32,
    s: Store,
) {
    unsafe { tile::<super::simd::Avx, 4, NV>(k, a, b, ldb, bias, s) }
}

/// The AVX2 pixel tile of 4 rows by 24 pixels: 12 accumulators, 3 pixel vectors and a broadcast
/// weight take all 16 registers, so its loop is written out (LLVM spilled one accumulator and
/// moved the others around). Per input channel 3 loads and 4 broadcasts feed 12 multiply-adds,
/// where the 4 x 16 tile has 6 for 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn tile_avx_24(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    bias: *const f32,
    s: Store,
) {
    use super::simd::Avx;
    // SAFETY: the caller's pointers cover `k` input channels of 24 pixels (rows `ldb` apart)
    // and of 4 packed weights ([`MR`] apart); the loop only reads them.
    unsafe {
        // (No closures here: they do not inherit the target feature, and were called per
        // vector.)
        let [
            [Avx(mut c00), Avx(mut c01), Avx(mut c02)],
            [Avx(mut c10), Avx(mut c11), Avx(mut c12)],
            [Avx(mut c20), Avx(mut c21), Avx(mut c22)],
            [Avx(mut c30), Avx(mut c31), Avx(mut c32)],
        ] = start::<Avx, 4, 3>(&s, None);
        std::arch::asm!(
            "test {k}, {k}",
            "jz 3f",
            "2:",
            "vmovups {b0}, ymmword ptr [{bp}]",
            "vmovups {b1}, ymmword ptr [{bp} + 32]",
            "vmovups {b2}, ymmword ptr [{bp} + 64]",
            "vbroadcastss {w}, dword ptr [{ap}]",
            "vfmadd231ps {c00}, {w}, {b0}",
            "vfmadd231ps {c01}, {w}, {b1}",
            "vfmadd231ps {c02}, {w}, {b2}",
            "vbroadcastss {w}, dword ptr [{ap} + 4]",
            "vfmadd231ps {c10}, {w}, {b0}",
            "vfmadd231ps {c11}, {w}, {b1}",
            "vfmadd231ps {c12}, {w}, {b2}",
            "vbroadcastss {w}, dword ptr [{ap} + 8]",
            "vfmadd231ps {c20}, {w}, {b0}",
            "vfmadd231ps {c21}, {w}, {b1}",
            "vfmadd231ps {c22}, {w}, {b2}",
            "vbroadcastss {w}, dword ptr [{ap} + 12]",
            "vfmadd231ps {c30}, {w}, {b0}",
            "vfmadd231ps {c31}, {w}, {b1}",
            "vfmadd231ps {c32}, {w}, {b2}",
            "add {ap}, {astep}",
            "add {bp}, {bstep}",
            "dec {k}",
            "jnz 2b",
            "3:",
            k = inout(reg) k => _,
            ap = inout(reg) a => _,
            bp = inout(reg) b => _,
            astep = in(reg) MR * 4,
            bstep = in(reg) ldb * 4,
            b0 = out(ymm_reg) _,
            b1 = out(ymm_reg) _,
            b2 = out(ymm_reg) _,
            w = out(ymm_reg) _,
            c00 = inout(ymm_reg) c00,
            c01 = inout(ymm_reg) c01,
            c02 = inout(ymm_reg) c02,
            c10 = inout(ymm_reg) c10,
            c11 = inout(ymm_reg) c11,
            c12 = inout(ymm_reg) c12,
            c20 = inout(ymm_reg) c20,
            c21 = inout(ymm_reg) c21,
            c22 = inout(ymm_reg) c22,
            c30 = inout(ymm_reg) c30,
            c31 = inout(ymm_reg) c31,
            c32 = inout(ymm_reg) c32,
            options(nostack, readonly),
        );
        let acc = [
            [Avx(c00), Avx(c01), Avx(c02)],
            [Avx(c10), Avx(c11), Avx(c12)],
            [Avx(c20), Avx(c21), Avx(c22)],
            [Avx(c30), Avx(c31), Avx(c32)],
        ];
        finish::<Avx, 4, 3>(&acc, Some(bias), s)
    }
}

/// AVX2: 4 rows (half a panel) by up to 24 pixels; the 24-pixel tile is [`tile_avx_24`].
#[cfg(target_arch = "x86_64")]
const AVX_TILES: Tiles = Tiles {
    rows: 4,
    lanes: 8,
    f: &[tile_avx::<1>, tile_avx::<2>, tile_avx_24],
};

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn tile_avx512<const NV: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    bias: *const f32,
    s: Store,
) {
    unsafe { tile::<super::simd::Avx512, MR, NV>(k, a, b, ldb, bias, s) }
}

/// AVX-512: 8 rows (a panel) by 48 pixels (24 of the 32 registers accumulate; per input
/// channel 3 loads and 8 broadcasts for 24 FMAs).
#[cfg(target_arch = "x86_64")]
const AVX512_TILES: Tiles = Tiles {
    rows: MR,
    lanes: 16,
    f: &[tile_avx512::<1>, tile_avx512::<2>, tile_avx512::<3>],
};

#[cfg(target_arch = "aarch64")]
#[inline(never)]
unsafe fn tile_neon<const NV: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    bias: *const f32,
    s: Store,
) {
    unsafe { tile_by_lane::<NV>(k, a, b, ldb, bias, s) }
}

/// NEON: 8 rows (a panel) by 12 pixels (24 accumulators, 3 pixel vectors, the panel's 8 weights
/// in 2 registers; per input channel 5 loads for 24 multiply-adds by lane).
#[cfg(target_arch = "aarch64")]
const NEON_TILES: Tiles = Tiles {
    rows: MR,
    lanes: 4,
    f: &[tile_neon::<1>, tile_neon::<2>, tile_neon::<3>],
};

/// A channel tile's signature (see [`channel_tile`]).
type ChannelFn = unsafe fn(usize, *const f32, usize, *const f32, usize, *const f32, *mut f32);

/// Channel tiles: `f[panels - 1][pixels - 1]`, up to [`CP`] pixels.
type ChannelTiles = [[ChannelFn; CP]; 2];

/// Pixels of a channel tile.
const CP: usize = 6;

macro_rules! channel_tiles {
    ($f:ident) => {
        [
            [
                $f::<1, 1>, $f::<1, 2>, $f::<1, 3>, $f::<1, 4>, $f::<1, 5>, $f::<1, 6>,
            ],
            [
                $f::<2, 1>, $f::<2, 2>, $f::<2, 3>, $f::<2, 4>, $f::<2, 5>, $f::<2, 6>,
            ],
        ]
    };
}

unsafe fn channel_portable<const NP: usize, const PX: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    x: *const f32,
    ldx: usize,
    bias: *const f32,
    buf: *mut f32,
) {
    unsafe { channel_tile::<f32, MR, NP, PX>(k, a, lda, x, ldx, bias, buf) }
}

const PORTABLE_CHANNELS: ChannelTiles = channel_tiles!(channel_portable);

/// AVX2: 2 panels (16 channels, 2 vectors) by 6 pixels: 12 accumulators, per input channel 2
/// loads and 6 broadcasts for 12 FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn channel_avx<const NP: usize, const PX: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    x: *const f32,
    ldx: usize,
    bias: *const f32,
    buf: *mut f32,
) {
    unsafe { channel_tile::<super::simd::Avx, 1, NP, PX>(k, a, lda, x, ldx, bias, buf) }
}

#[cfg(target_arch = "x86_64")]
const AVX_CHANNELS: ChannelTiles = channel_tiles!(channel_avx);

#[cfg(target_arch = "aarch64")]
#[inline(never)]
unsafe fn channel_neon<const NP: usize, const PX: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    x: *const f32,
    ldx: usize,
    bias: *const f32,
    buf: *mut f32,
) {
    unsafe { channel_tile::<super::simd::Neon, 2, NP, PX>(k, a, lda, x, ldx, bias, buf) }
}

/// NEON: 2 panels (16 channels, 4 vectors) by up to 6 pixels; only for the last columns of a
/// plane, fewer than a vector.
#[cfg(target_arch = "aarch64")]
const NEON_CHANNELS: ChannelTiles = channel_tiles!(channel_neon);

/// One call's inputs: which rows of which image.
#[derive(Clone, Copy)]
struct Run<'a> {
    pw: &'a Pointwise,
    /// The input: `inputs` rows `ldx` apart, holding columns `xcol0..xcol0 + ldx` of the plane
    /// (the whole plane: 0 and `pixels`).
    x: &'a [f32],
    ldx: usize,
    xcol0: usize,
    pixels: usize,
    residual: Option<&'a [f32]>,
    /// A multiple of [`MR`].
    first_row: usize,
    rows: usize,
    /// Pixels computed: `[start, end)`.
    cols: (usize, usize),
}

impl Run<'_> {
    /// Runs with `isa`'s tiles (on x86 AVX-512's pixel tiles where the CPU has it, if `wide`);
    /// `out` is the start of row `first_row`.
    unsafe fn dispatch(&self, isa: Isa, path: Path, wide: bool, out: *mut f32) {
        let _ = wide; // Only x86 has a choice of pixel tiles.
        let channels: Option<&ChannelTiles> = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => Some(&AVX_CHANNELS),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Some(&NEON_CHANNELS),
            _ => Some(&PORTABLE_CHANNELS),
        };
        let tiles = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma if wide && super::simd::has_avx512() => &AVX512_TILES,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => &AVX_TILES,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => &NEON_TILES,
            _ => &PORTABLE_TILES,
        };
        match path {
            Path::Pixels => unsafe { self.rows(out, tiles) },
            Path::Channels => match channels {
                Some(f) => unsafe { self.channels(out, f) },
                None => unsafe { self.rows(out, tiles) },
            },
            // Pixel tiles, and channel tiles for the last columns if fewer than a vector.
            Path::Auto => match channels {
                Some(f) => {
                    let (c0, c1) = self.cols;
                    let cs = c1 - (c1 - c0) % tiles.lanes;
                    unsafe {
                        Run {
                            cols: (c0, cs),
                            ..*self
                        }
                        .rows(out, tiles);
                        Run {
                            cols: (cs, c1),
                            ..*self
                        }
                        .channels(out, f);
                    }
                }
                None => unsafe { self.rows(out, tiles) },
            },
        }
    }

    /// Input channel `k`, column `c` of the plane.
    fn xp(&self, k: usize, c: usize) -> *const f32 {
        self.x[k * self.ldx + c - self.xcol0..].as_ptr()
    }

    /// Packed weights of row `r` of the call (`first_row + r`), from input channel `k0`.
    fn weights(&self, r: usize, k0: usize) -> *const f32 {
        let row = self.first_row + r;
        self.pw.packed[(row / MR * self.pw.inputs + k0) * MR + row % MR..].as_ptr()
    }

    /// Every row of the call with pixel tiles: column block by column block, then input-channel
    /// block by block over the tiles whose rows and columns are all computed (partial sums kept
    /// in `out` between blocks), then the partial tiles through a scratch tile.
    unsafe fn rows(&self, out: *mut f32, t: &Tiles) {
        let (k, n) = (self.pw.inputs, self.pixels);
        let (c0, c1) = self.cols;
        let width = t.lanes * t.f.len();
        // Columns [c0, cs) go in whole vectors; [cs, c1), fewer than a vector, in a scratch
        // tile of one vector, read from `tail` (zero-padded) if that vector would pass the
        // plane's end.
        let cs = c1 - (c1 - c0) % t.lanes;
        let x_end = self.xcol0 + self.ldx;
        let tail: Vec<f32> = if cs < c1 && cs + t.lanes > x_end {
            let mut v = vec![0f32; k * t.lanes];
            for (c, row) in v.chunks_exact_mut(t.lanes).enumerate() {
                let from = c * self.ldx + cs - self.xcol0;
                row[..x_end - cs].copy_from_slice(&self.x[from..from + x_end - cs]);
            }
            v
        } else {
            vec![]
        };
        let kc = k.min(KC);
        let block = (BLOCK_BYTES / (4 * kc.max(1)) / width * width).max(width);
        let Clamp { lo, hi } = self.pw.clamp;
        let whole_rows = self.rows / t.rows * t.rows;
        let mut n0 = c0;
        while n0 < cs {
            let n1 = (n0 + block).min(cs);
            let mut k0 = 0;
            while k0 < k {
                let kl = KC.min(k - k0);
                let mut r0 = 0;
                while r0 < whole_rows {
                    let row = self.first_row + r0;
                    let a = self.weights(r0, k0);
                    let bias = self.pw.bias[row..].as_ptr();
                    let dst = unsafe { out.add(r0 * n) };
                    let res = self.residual.map(|r| r[row * n..].as_ptr());
                    let mut c = n0;
                    while c < n1 {
                        let nv = (n1 - c).min(width) / t.lanes;
                        unsafe {
                            let store = Store {
                                dst: dst.add(c),
                                ld: n,
                                scale: self.pw.scale_at(row),
                                res: res.map(|r| r.add(c)),
                                lo,
                                hi,
                                accumulate: k0 > 0,
                                finish: k0 + kl == k,
                            };
                            t.f[nv - 1](kl, a, self.xp(k0, c), self.ldx, bias, store);
                        }
                        c += nv * t.lanes;
                    }
                    r0 += t.rows;
                }
                k0 += kl;
            }
            n0 = n1;
        }
        // Partial tiles (the last rows if fewer than a tile's, the last columns if fewer than a
        // vector): computed whole into scratch, then the live part finished value by value.
        let mut scratch = [0f32; MR * 64];
        debug_assert!(width <= 64);
        let mut r0 = 0;
        while r0 < self.rows {
            let row = self.first_row + r0;
            let live = t.rows.min(self.rows - r0);
            let a = self.weights(r0, 0);
            let bias = self.pw.bias[row..].as_ptr();
            let dst = unsafe { out.add(r0 * n) };
            let res = self.residual.map(|r| r[row * n..].as_ptr());
            let mut c = if live == t.rows { cs } else { c0 };
            while c < c1 {
                let (nv, cols, b, ldb) = if c < cs {
                    let nv = (cs - c).min(width) / t.lanes;
                    (nv, nv * t.lanes, self.xp(0, c), self.ldx)
                } else if tail.is_empty() {
                    (1, c1 - c, self.xp(0, c), self.ldx)
                } else {
                    (1, c1 - c, tail.as_ptr(), t.lanes)
                };
                unsafe {
                    let none = Store {
                        dst: scratch.as_mut_ptr(),
                        ld: width,
                        scale: self.pw.scale_at(row),
                        res: None,
                        lo: f32::NEG_INFINITY,
                        hi: f32::INFINITY,
                        accumulate: false,
                        finish: true,
                    };
                    t.f[nv - 1](k, a, b, ldb, bias, none);
                    for r in 0..live {
                        for j in 0..cols {
                            let mut v = scratch[r * width + j];
                            if let Some(res) = res {
                                v += *res.add(r * n + c + j);
                            }
                            *dst.add(r * n + c + j) = v.max(lo).min(hi);
                        }
                    }
                }
                c += cols;
            }
            r0 += t.rows;
        }
    }

    /// Every row of the call with channel tiles: pairs of panels by [`CP`] pixels, every input
    /// channel at once, written out through a scratch tile.
    unsafe fn channels(&self, out: *mut f32, f: &ChannelTiles) {
        let (k, n) = (self.pw.inputs, self.pixels);
        let (c0, c1) = self.cols;
        let Clamp { lo, hi } = self.pw.clamp;
        let mut buf = [0f32; 2 * MR * CP];
        let mut r0 = 0;
        while r0 < self.rows {
            let live = (2 * MR).min(self.rows - r0);
            let panels = live.div_ceil(MR);
            let row = self.first_row + r0;
            let a = self.weights(r0, 0);
            let bias = &self.pw.bias[row..];
            let scale = self.pw.scale_at(row).map(|_| &self.pw.scale[row..]);
            // With multipliers, the tiles sum alone and the bias comes after the rescale.
            let zeros = [0f32; 2 * MR];
            let tile_bias = if scale.is_some() { &zeros[..] } else { bias };
            let dst = unsafe { out.add(r0 * n) };
            let res = self.residual.map(|r| r[row * n..].as_ptr());
            let mut c = c0;
            while c < c1 {
                let px = CP.min(c1 - c);
                unsafe {
                    f[panels - 1][px - 1](
                        k,
                        a,
                        k * MR,
                        self.xp(0, c),
                        self.ldx,
                        tile_bias.as_ptr(),
                        buf.as_mut_ptr(),
                    );
                    let ldbuf = panels * MR;
                    for r in 0..live {
                        let d = dst.add(r * n + c);
                        let sum = |j: usize| match scale {
                            Some(s) => buf[j * ldbuf + r] * s[r] + bias[r],
                            None => buf[j * ldbuf + r],
                        };
                        match res {
                            Some(res) => {
                                let res = res.add(r * n + c);
                                for j in 0..px {
                                    let v = sum(j) + *res.add(j);
                                    *d.add(j) = v.max(lo).min(hi);
                                }
                            }
                            None => {
                                for j in 0..px {
                                    *d.add(j) = sum(j).max(lo).min(hi);
                                }
                            }
                        }
                    }
                }
                c += px;
            }
            r0 += 2 * MR;
        }
    }
}

/// Where a pixel tile's results go: `dst` rows `ld` apart. `accumulate`: `dst` holds the sums
/// over earlier input channels to start from. `finish`: the last input channels, so the bias,
/// then `res` (same layout, if a residual is added) are added and the result clamped to
/// `[lo, hi]`. (Bounds as scalars: vectors would hold two registers through the whole tile.)
struct Store {
    dst: *mut f32,
    ld: usize,
    /// Multipliers of the rows' sums, applied before the bias ([`Pointwise::with_scale`]).
    scale: Option<*const f32>,
    res: Option<*const f32>,
    lo: f32,
    hi: f32,
    accumulate: bool,
    finish: bool,
}

/// A tile's accumulators: the partial sums in `store.dst`, else zero or (if `bias`) each
/// row's bias.
#[inline(always)]
unsafe fn start<L: Lanes, const R: usize, const NV: usize>(
    store: &Store,
    bias: Option<*const f32>,
) -> [[L; NV]; R] {
    unsafe {
        let mut acc: [[L; NV]; R] = [[L::splat(0.0); NV]; R];
        if let (false, Some(bias)) = (store.accumulate, bias) {
            for (r, row) in acc.iter_mut().enumerate() {
                *row = [L::splat(*bias.add(r)); NV];
            }
        }
        if store.accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = L::load(store.dst.add(r * store.ld + v * L::N));
                }
            }
        }
        acc
    }
}

/// Stores a tile's accumulators as `store` says (adding `bias`, one per row, if the
/// accumulators did not start from it).
#[inline(always)]
unsafe fn finish<L: Lanes, const R: usize, const NV: usize>(
    acc: &[[L; NV]; R],
    bias: Option<*const f32>,
    store: Store,
) {
    unsafe {
        if !store.finish {
            for (r, row) in acc.iter().enumerate() {
                for (v, x) in row.iter().enumerate() {
                    x.store(store.dst.add(r * store.ld + v * L::N));
                }
            }
            return;
        }
        let (lo, hi) = (L::splat(store.lo), L::splat(store.hi));
        for (r, row) in acc.iter().enumerate() {
            let d = store.dst.add(r * store.ld);
            let bias = bias.map(|b| L::splat(*b.add(r)));
            let scale = store.scale.map(|s| L::splat(*s.add(r)));
            for (v, x) in row.iter().enumerate() {
                let x = match scale {
                    Some(s) => x.mul(s),
                    None => *x,
                };
                let mut y = match bias {
                    Some(b) => x.add(b),
                    None => x,
                };
                if let Some(res) = store.res {
                    y = y.add(L::load(res.add(r * store.ld + v * L::N)));
                }
                y.clamp(lo, hi).store(d.add(v * L::N));
            }
        }
    }
}

/// One pixel tile: `R` output channels (packed weights `a`, [`MR`] apart from one input channel
/// to the next) by `NV` vectors of `L` pixels of `b` (rows `ldb` apart), accumulated in
/// registers over `k` input channels; the bias is added at the end (initialising the registers
/// with it makes LLVM spill two of them).
#[inline(always)]
unsafe fn tile<L: Lanes, const R: usize, const NV: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    bias: *const f32,
    store: Store,
) {
    unsafe {
        let mut acc = start::<L, R, NV>(&store, None);
        let mut ap = a;
        let mut bp = b;
        for _ in 0..k {
            let mut bv: [L; NV] = [L::splat(0.0); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = L::load(bp.add(v * L::N));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let w = L::splat(*ap.add(r));
                for (x, b) in row.iter_mut().zip(&bv) {
                    *x = x.mul_add(w, *b);
                }
            }
            ap = ap.add(MR);
            bp = bp.add(ldb);
        }
        finish(&acc, Some(bias), store)
    }
}

/// One input channel of the NEON 8x12 tile (see [`tile_by_lane`]).
#[cfg(target_arch = "aarch64")]
macro_rules! lane_step {
    () => {
        concat!(
            "ld1 {{v29.4s, v30.4s, v31.4s}}, [{bp}], {ldb}\n",
            "ldp q27, q28, [{ap}], #32\n",
            "fmla {c00:v}.4s, v29.4s, v27.s[0]\n",
            "fmla {c01:v}.4s, v30.4s, v27.s[0]\n",
            "fmla {c02:v}.4s, v31.4s, v27.s[0]\n",
            "fmla {c10:v}.4s, v29.4s, v27.s[1]\n",
            "fmla {c11:v}.4s, v30.4s, v27.s[1]\n",
            "fmla {c12:v}.4s, v31.4s, v27.s[1]\n",
            "fmla {c20:v}.4s, v29.4s, v27.s[2]\n",
            "fmla {c21:v}.4s, v30.4s, v27.s[2]\n",
            "fmla {c22:v}.4s, v31.4s, v27.s[2]\n",
            "fmla {c30:v}.4s, v29.4s, v27.s[3]\n",
            "fmla {c31:v}.4s, v30.4s, v27.s[3]\n",
            "fmla {c32:v}.4s, v31.4s, v27.s[3]\n",
            "fmla {c40:v}.4s, v29.4s, v28.s[0]\n",
            "fmla {c41:v}.4s, v30.4s, v28.s[0]\n",
            "fmla {c42:v}.4s, v31.4s, v28.s[0]\n",
            "fmla {c50:v}.4s, v29.4s, v28.s[1]\n",
            "fmla {c51:v}.4s, v30.4s, v28.s[1]\n",
            "fmla {c52:v}.4s, v31.4s, v28.s[1]\n",
            "fmla {c60:v}.4s, v29.4s, v28.s[2]\n",
            "fmla {c61:v}.4s, v30.4s, v28.s[2]\n",
            "fmla {c62:v}.4s, v31.4s, v28.s[2]\n",
            "fmla {c70:v}.4s, v29.4s, v28.s[3]\n",
            "fmla {c71:v}.4s, v30.4s, v28.s[3]\n",
            "fmla {c72:v}.4s, v31.4s, v28.s[3]\n",
        )
    };
}

/// The NEON pixel tile: a panel's 8 weights of an input channel loaded in two registers and
/// multiplied by lane, no broadcasts.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn tile_by_lane<const NV: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    bias: *const f32,
    store: Store,
) {
    use super::simd::Neon;
    use std::arch::aarch64::*;
    unsafe {
        // Starting from the bias saves adding it at the end (32 registers leave room for it).
        let mut c = start::<Neon, MR, NV>(&store, Some(bias));
        if NV == 3 && k > 0 {
            // The full tile in assembly: LLVM splits `vld1q_f32_x3` into ldp + ldr and adds
            // the row stride apart; ld1 of 3 registers with the stride as post-increment is one
            // instruction (per input channel 2 loads and 24 fmla; the counter and the branch
            // once per two).
            let acc: &mut [[Neon; 3]; MR] = &mut *(&mut c as *mut [[Neon; NV]; MR]).cast();
            let [
                [c00, c01, c02],
                [c10, c11, c12],
                [c20, c21, c22],
                [c30, c31, c32],
                [c40, c41, c42],
                [c50, c51, c52],
                [c60, c61, c62],
                [c70, c71, c72],
            ] = acc;
            std::arch::asm!(
                // An odd input channel first, then two per iteration.
                "tbz {k}, #0, 3f",
                lane_step!(),
                "subs {k}, {k}, #1",
                "b.eq 4f",
                "3:",
                lane_step!(),
                lane_step!(),
                "subs {k}, {k}, #2",
                "b.ne 3b",
                "4:",
                bp = inout(reg) b => _,
                ap = inout(reg) a => _,
                ldb = in(reg) ldb * 4,
                k = inout(reg) k => _,
                c00 = inout(vreg) c00.0, c01 = inout(vreg) c01.0, c02 = inout(vreg) c02.0,
                c10 = inout(vreg) c10.0, c11 = inout(vreg) c11.0, c12 = inout(vreg) c12.0,
                c20 = inout(vreg) c20.0, c21 = inout(vreg) c21.0, c22 = inout(vreg) c22.0,
                c30 = inout(vreg) c30.0, c31 = inout(vreg) c31.0, c32 = inout(vreg) c32.0,
                c40 = inout(vreg) c40.0, c41 = inout(vreg) c41.0, c42 = inout(vreg) c42.0,
                c50 = inout(vreg) c50.0, c51 = inout(vreg) c51.0, c52 = inout(vreg) c52.0,
                c60 = inout(vreg) c60.0, c61 = inout(vreg) c61.0, c62 = inout(vreg) c62.0,
                c70 = inout(vreg) c70.0, c71 = inout(vreg) c71.0, c72 = inout(vreg) c72.0,
                out("v27") _, out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                options(nostack, readonly),
            );
            return finish(&c, None, store);
        }
        let mut ap = a;
        let mut bp = b;
        // One input channel: the panel's weights in two registers, 8 * NV multiply-adds by
        // lane.
        for _ in 0..k {
            let w0 = vld1q_f32(ap);
            let w1 = vld1q_f32(ap.add(4));
            let mut bv = [vdupq_n_f32(0.0); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = vld1q_f32(bp.add(4 * v));
            }
            for (v, &x) in bv.iter().enumerate() {
                c[0][v].0 = vfmaq_laneq_f32::<0>(c[0][v].0, x, w0);
                c[1][v].0 = vfmaq_laneq_f32::<1>(c[1][v].0, x, w0);
                c[2][v].0 = vfmaq_laneq_f32::<2>(c[2][v].0, x, w0);
                c[3][v].0 = vfmaq_laneq_f32::<3>(c[3][v].0, x, w0);
                c[4][v].0 = vfmaq_laneq_f32::<0>(c[4][v].0, x, w1);
                c[5][v].0 = vfmaq_laneq_f32::<1>(c[5][v].0, x, w1);
                c[6][v].0 = vfmaq_laneq_f32::<2>(c[6][v].0, x, w1);
                c[7][v].0 = vfmaq_laneq_f32::<3>(c[7][v].0, x, w1);
            }
            ap = ap.add(MR);
            bp = bp.add(ldb);
        }
        finish(&c, None, store)
    }
}

/// One channel tile: `NP` panels of [`MR`] output channels (`VP` vectors of `L` each; packed
/// weights `a`, panels `lda` apart) by `PX` pixels of `x` (rows `ldx` apart, each value
/// broadcast), over `k` input channels; the sums plus bias go to `buf`, pixel by pixel
/// (`[PX][NP * MR]`).
#[inline(always)]
unsafe fn channel_tile<L: Lanes, const VP: usize, const NP: usize, const PX: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    x: *const f32,
    ldx: usize,
    bias: *const f32,
    buf: *mut f32,
) {
    debug_assert_eq!(VP * L::N, MR);
    unsafe {
        let mut acc: [[[L; VP]; NP]; PX] = [[[L::splat(0.0); VP]; NP]; PX];
        let mut ap = a;
        let mut xp = x;
        for _ in 0..k {
            let mut w: [[L; VP]; NP] = [[L::splat(0.0); VP]; NP];
            for (p, panel) in w.iter_mut().enumerate() {
                for (v, x) in panel.iter_mut().enumerate() {
                    *x = L::load(ap.add(p * lda + v * L::N));
                }
            }
            for (j, pixel) in acc.iter_mut().enumerate() {
                let xb = L::splat(*xp.add(j));
                for (panel, wp) in pixel.iter_mut().zip(&w) {
                    for (s, wv) in panel.iter_mut().zip(wp) {
                        *s = s.mul_add(xb, *wv);
                    }
                }
            }
            ap = ap.add(MR);
            xp = xp.add(ldx);
        }
        for (j, pixel) in acc.iter().enumerate() {
            for (p, panel) in pixel.iter().enumerate() {
                for (v, s) in panel.iter().enumerate() {
                    let o = p * MR + v * L::N;
                    s.add(L::load(bias.add(o))).store(buf.add(j * NP * MR + o));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::values;
    use proptest::prelude::*;

    /// The straightforward sum, in f64.
    fn reference(
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        clamp: Clamp,
        [k, m, n]: [usize; 3],
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for o in 0..m {
            for p in 0..n {
                let mut s = bias[o] as f64;
                for i in 0..k {
                    s += w[o * k + i] as f64 * x[i * n + p] as f64;
                }
                if let Some(r) = residual {
                    s += r[o * n + p] as f64;
                }
                out[o * n + p] = (s as f32).max(clamp.lo).min(clamp.hi);
            }
        }
        out
    }

    /// Runs every output channel of one image as the op does on one thread.
    fn run_all(pw: &Pointwise, isa: Isa, path: (Path, bool), x: &[f32], out: &mut [f32]) {
        let pixels = x.len() / pw.inputs;
        if pixels >= 512 {
            unsafe { pw.run_columns_with(isa, path, x, None, 0..pixels, out.as_mut_ptr()) };
        } else {
            let whole = pw.outputs / MR;
            let (head, tail) = out.split_at_mut(whole * MR * pixels);
            if !head.is_empty() {
                pw.run_rows_with(isa, path, x, None, 0, head);
            }
            if !tail.is_empty() {
                pw.run_rows_with(isa, path, x, None, whole, tail);
            }
        }
    }

    /// Not a test: `cargo test -p kestrel-edge --lib conv1x1::tests::pointwise_kernel_speed --
    /// --ignored --nocapture` times the kernel alone (one thread, the best instruction set) on
    /// MobileNetV2's shapes: median, slowest and fastest of 11 rounds. `KESTREL_PW_PATH` picks
    /// the tiles: `pixels`, `pixels-avx2` (no AVX-512), `channels`, `avx2` (as the op does on a
    /// CPU without AVX-512), else as the op does.
    #[test]
    #[ignore]
    fn pointwise_kernel_speed() {
        let isa = Isa::detect();
        let path = match std::env::var("KESTREL_PW_PATH").as_deref() {
            Ok("pixels") => (Path::Pixels, true),
            Ok("pixels-avx2") => (Path::Pixels, false),
            Ok("avx2") => (Path::Auto, false),
            Ok("channels") => (Path::Channels, true),
            _ => (Path::Auto, true),
        };
        for (k, m, hw) in crate::kernels::testutil::POINTWISE_SHAPES {
            let n = hw * hw;
            let (x, w, b) = (values(k * n, 1), values(m * k, 2), values(m, 3));
            let pw = Pointwise::new(k, m, &w, &b, Clamp { lo: 0.0, hi: 6.0 });
            let mut out = vec![0f32; m * n];
            let macs = (k * m * n) as f64;
            let reps = (5e9 / macs / 11.0).ceil() as usize;
            let mut rates: Vec<f64> = (0..11)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for _ in 0..reps {
                        run_all(&pw, isa, path, &x, &mut out);
                    }
                    macs * reps as f64 / t.elapsed().as_secs_f64() / 1e9
                })
                .collect();
            rates.sort_by(f64::total_cmp);
            println!(
                "{k:>4} -> {m:>4} at {hw:>3}x{hw:<3} {} {:?}: {:5.1} GMAC/s (min {:.1}, max {:.1})",
                isa.name(),
                path.0,
                rates[5],
                rates[0],
                rates[10]
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every instruction set, with either kind of tile, computes the straightforward sum
        /// for any channel counts (one block of input channels or several) and plane sizes
        /// (partial tiles of rows and of columns, one column block or several), with and
        /// without residual and clamp, whichever panel the rows start at.
        #[test]
        fn pointwise_matches_reference(
            k in prop_oneof![1usize..40, 250usize..600], m in 1usize..30,
            n in prop_oneof![1usize..90, 90usize..200],
            residual in any::<bool>(),
            relu6 in any::<bool>(), start in 0usize..5, seed in any::<u64>(),
        ) {
            let clamp = if relu6 { Clamp { lo: 0.0, hi: 6.0 } } else { Clamp::NONE };
            let (x, w, b) = (values(k * n, seed), values(m * k, seed + 1), values(m, seed + 2));
            let r = residual.then(|| values(m * n, seed + 3));
            let pw = Pointwise::new(k, m, &w, &b, clamp);
            let want = reference(&x, &w, &b, r.as_deref(), clamp, [k, m, n]);
            let first = start.min(pw.panels() - 1);
            for isa in Isa::available() {
                let paths = [Path::Pixels, Path::Channels, Path::Auto].map(|p| (p, true));
                let narrow = [(Path::Pixels, false), (Path::Auto, false)];
                for path in paths.into_iter().chain(narrow) {
                    // Columns split at a multiple of NC (as threads split a large plane).
                    let mut whole = vec![f32::NAN; m * n];
                    let split = (start * NC).min(n / NC * NC);
                    unsafe {
                        pw.run_columns_with(isa, path, &x, r.as_deref(), 0..split, whole.as_mut_ptr());
                        pw.run_columns_with(isa, path, &x, r.as_deref(), split..n, whole.as_mut_ptr());
                    }
                    for (i, (a, b)) in want.iter().zip(&whole).enumerate() {
                        prop_assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + a.abs()) + 1e-6 * k as f32,
                            "{:?} {:?} columns, value {}: reference {} vs kernel {}",
                            isa, path, i, a, b
                        );
                    }
                    let mut out = vec![f32::NAN; (m - first * MR) * n];
                    pw.run_rows_with(isa, path, &x, r.as_deref(), first, &mut out);
                    for (i, (a, b)) in want[first * MR * n..].iter().zip(&out).enumerate() {
                        prop_assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + a.abs()) + 1e-6 * k as f32,
                            "{:?} {:?} value {}: reference {} vs kernel {}", isa, path, i, a, b
                        );
                    }
                }
            }
        }

        /// With multipliers ([`Pointwise::with_scale`]) on integer inputs and weights, run
        /// block by block from inputs holding only each block's columns ([`Pointwise::run_block`]),
        /// the results equal `sum * scale + bias (+ residual)`, clamped, bit for bit: how an int8
        /// convolution's f32 route matches tract.
        #[cfg(target_arch = "x86_64")]
        #[test]
        fn scaled_blocks_are_exact(
            k in 1usize..40, m in 1usize..30, n in 1usize..400, blocks in 1usize..4,
            residual in any::<bool>(), relu6 in any::<bool>(), seed in any::<u64>(),
        ) {
            let clamp = if relu6 { Clamp { lo: 0.0, hi: 6.0 } } else { Clamp::NONE };
            let ints = |len, seed| -> Vec<f32> {
                values(len, seed).iter().map(|v| (v * 127.0).round()).collect()
            };
            let (x, w) = (ints(k * n, seed), ints(m * k, seed + 1));
            let b = values(m, seed + 2);
            let scale: Vec<f32> = values(m, seed + 4).iter().map(|v| 1e-4 * (1.5 + v)).collect();
            let r = residual.then(|| values(m * n, seed + 3));
            let pw = Pointwise::new(k, m, &w, &b, clamp).with_scale(&scale);
            let want: Vec<f32> = (0..m * n)
                .map(|i| {
                    let (o, j) = (i / n, i % n);
                    let sum: i64 = (0..k).map(|c| (x[c * n + j] * w[o * k + c]) as i64).sum();
                    let mut y = sum as f32 * scale[o] + b[o];
                    if let Some(r) = &r {
                        y += r[i];
                    }
                    y.max(clamp.lo).min(clamp.hi)
                })
                .collect();
            let width = blocks * NC;
            for isa in Isa::available().into_iter().filter(|&i| i != Isa::Neon) {
                let mut got = vec![f32::NAN; m * n];
                let mut c0 = 0;
                while c0 < n {
                    let c1 = (c0 + width).min(n);
                    let block: Vec<f32> = (0..k)
                        .flat_map(|c| x[c * n + c0..c * n + c1].iter().copied())
                        .collect();
                    unsafe { pw.run_block(isa, &block, n, r.as_deref(), c0..c1, got.as_mut_ptr()) };
                    c0 = c1;
                }
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    prop_assert!(a.to_bits() == b.to_bits(), "{:?} value {}: {} vs {}", isa, i, a, b);
                }
            }
        }
    }
}
