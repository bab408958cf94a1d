//! 1x1 convolutions (pointwise: a matrix product over channels) on CHW planes, computed where the
//! activations already are. tract turns each into a matrix product that first repacks the whole
//! input into column panels; here the input's rows are read in place, 16 pixels at a time, against
//! weights packed once when the model loads, with bias, clamp (ReLU6) and the residual addition of
//! an inverted-residual block fused into the store.

use super::conv3x3::Clamp;
use super::simd::{Isa, Lanes};

/// Output channels computed together (rows of a tile).
pub const MR: usize = 6;
/// Pixels computed together (columns of a tile): two AVX vectors, four NEON vectors.
pub const NC: usize = 16;
/// Input channels summed in one pass over a tile: its input rows (64 bytes each) and weights
/// stay in the L1 cache.
const KC: usize = 256;
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
    /// Fused activation, applied after the residual addition.
    pub clamp: Clamp,
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
            clamp,
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
            pixels,
            residual,
            first_row: first_panel * MR,
            rows,
            cols: (0, pixels),
        };
        unsafe { run.dispatch(isa, out.as_mut_ptr()) }
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
        let pixels = self.pixels(x, residual);
        assert!(
            cols.start.is_multiple_of(NC) && cols.end <= pixels,
            "columns"
        );
        let run = Run {
            pw: self,
            x,
            pixels,
            residual,
            first_row: 0,
            rows: self.outputs,
            cols: (cols.start, cols.end),
        };
        unsafe { run.dispatch(isa, out) }
    }
}

/// One tile's signature (see [`tile`]).
type TileFn = unsafe fn(usize, *const f32, *const f32, usize, *const f32, Store);

// The tiles are functions of their own (not inlined into the loops around them): sharing a
// register allocation with the edge code spills accumulators out of the 16 AVX registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn tile_avx(k: usize, a: *const f32, b: *const f32, ldb: usize, bias: *const f32, s: Store) {
    unsafe { tile::<super::simd::Avx, 2>(k, a, b, ldb, bias, s) }
}

#[cfg(target_arch = "aarch64")]
#[inline(never)]
unsafe fn tile_neon(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    bias: *const f32,
    s: Store,
) {
    unsafe { tile::<super::simd::Neon, 4>(k, a, b, ldb, bias, s) }
}

/// One call's inputs: which rows of which image.
struct Run<'a> {
    pw: &'a Pointwise,
    x: &'a [f32],
    pixels: usize,
    residual: Option<&'a [f32]>,
    first_row: usize,
    rows: usize,
    /// Pixels computed: `[start, end)`, `start` a multiple of [`NC`].
    cols: (usize, usize),
}

impl Run<'_> {
    /// Runs with `isa`'s tile; `out` is the start of row `first_row`.
    unsafe fn dispatch(&self, isa: Isa, out: *mut f32) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { self.rows(out, tile_avx) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { self.rows(out, tile_neon) },
            _ => unsafe { self.rows(out, tile::<f32, 16>) },
        }
    }

    /// Every row of the call: column block by column block, then input-channel block by block
    /// over whole tiles (partial sums kept in `out` between blocks), then the partial tiles.
    unsafe fn rows(&self, out: *mut f32, tile: TileFn) {
        let (k, n) = (self.pw.inputs, self.pixels);
        let full = n / NC * NC;
        // The last, partial column tile of every input row, zero-padded to NC.
        let tail: Vec<f32> = if full < self.cols.1 {
            let mut t = vec![0f32; k * NC];
            for (c, row) in t.chunks_exact_mut(NC).enumerate() {
                row[..n - full].copy_from_slice(&self.x[c * n + full..(c + 1) * n]);
            }
            t
        } else {
            vec![]
        };
        let kc = k.min(KC);
        let block = (BLOCK_BYTES / (4 * kc.max(1)) / NC * NC).max(NC);
        let Clamp { lo, hi } = self.pw.clamp;
        let whole_rows = self.rows / MR * MR;
        let mut scratch = [0f32; MR * NC];
        let mut n0 = self.cols.0;
        while n0 < self.cols.1 {
            let n1 = (n0 + block).min(self.cols.1);
            let tiles_end = n1.min(full);
            let mut k0 = 0;
            while k0 < k {
                let kl = KC.min(k - k0);
                let mut r0 = 0;
                while r0 < whole_rows {
                    let row = self.first_row + r0;
                    let a = self.pw.packed[(row / MR * k + k0) * MR..].as_ptr();
                    let bias = self.pw.bias[row..].as_ptr();
                    let dst = unsafe { out.add(r0 * n) };
                    let res = self.residual.map(|r| r[row * n..].as_ptr());
                    let mut c = n0;
                    while c < tiles_end {
                        unsafe {
                            let store = Store {
                                dst: dst.add(c),
                                ld: n,
                                res: res.map(|r| r.add(c)),
                                lo,
                                hi,
                                accumulate: k0 > 0,
                                finish: k0 + kl == k,
                            };
                            tile(kl, a, self.x.as_ptr().add(k0 * n + c), n, bias, store);
                        }
                        c += NC;
                    }
                    r0 += MR;
                }
                k0 += kl;
            }
            // Partial tiles (the last rows if fewer than MR, the last columns if fewer than
            // NC): computed whole into scratch, then the live part finished value by value.
            let mut r0 = 0;
            while r0 < self.rows {
                let row = self.first_row + r0;
                let live = MR.min(self.rows - r0);
                let a = self.pw.packed[row / MR * k * MR..].as_ptr();
                let bias = self.pw.bias[row..].as_ptr();
                let dst = unsafe { out.add(r0 * n) };
                let res = self.residual.map(|r| r[row * n..].as_ptr());
                let mut c = if live == MR { tiles_end } else { n0 };
                while c < n1 {
                    let cols = NC.min(n - c);
                    unsafe {
                        let (b, ldb) = if cols == NC {
                            (self.x.as_ptr().add(c), n)
                        } else {
                            (tail.as_ptr(), NC)
                        };
                        let none = Store {
                            dst: scratch.as_mut_ptr(),
                            ld: NC,
                            res: None,
                            lo: f32::NEG_INFINITY,
                            hi: f32::INFINITY,
                            accumulate: false,
                            finish: true,
                        };
                        tile(k, a, b, ldb, bias, none);
                        for r in 0..live {
                            for j in 0..cols {
                                let mut v = scratch[r * NC + j];
                                if let Some(res) = res {
                                    v += *res.add(r * n + c + j);
                                }
                                *dst.add(r * n + c + j) = v.max(lo).min(hi);
                            }
                        }
                    }
                    c += NC;
                }
                r0 += MR;
            }
            n0 = n1;
        }
    }
}

/// Where a tile's [`MR`] x [`NC`] results go: `dst` rows `ld` apart. `accumulate`: `dst` holds
/// the sums over earlier input channels to start from. `finish`: the last input channels, so
/// the bias, then `res` (same layout, if a residual is added) are added and the result clamped
/// to `[lo, hi]`. (Bounds as scalars: vectors would hold two registers through the whole tile.)
struct Store {
    dst: *mut f32,
    ld: usize,
    res: Option<*const f32>,
    lo: f32,
    hi: f32,
    accumulate: bool,
    finish: bool,
}

/// One tile: `MR` output channels (packed weights `a`, `k` of them per row, interleaved) by
/// [`NC`] pixels of `b` (rows `ldb` apart), accumulated in registers; the bias is added at the
/// end (initialising the registers with it makes LLVM spill two of them).
/// `NV` vectors of `L` make one tile row of [`NC`] pixels.
#[inline(always)]
unsafe fn tile<L: Lanes, const NV: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    bias: *const f32,
    store: Store,
) {
    debug_assert_eq!(NV * L::N, NC);
    unsafe {
        let mut acc: [[L; NV]; MR] = [[L::splat(0.0); NV]; MR];
        if store.accumulate {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = L::load(store.dst.add(r * store.ld + v * L::N));
                }
            }
        }
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
            let bias = L::splat(*bias.add(r));
            for (v, x) in row.iter().enumerate() {
                let mut y = x.add(bias);
                if let Some(res) = store.res {
                    y = y.add(L::load(res.add(r * store.ld + v * L::N)));
                }
                y.clamp(lo, hi).store(d.add(v * L::N));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

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
    fn run_all(pw: &Pointwise, isa: Isa, x: &[f32], out: &mut [f32]) {
        let pixels = x.len() / pw.inputs;
        if pixels >= 512 {
            unsafe { pw.run_columns(isa, x, None, 0..pixels, out.as_mut_ptr()) };
        } else {
            let whole = pw.outputs / MR;
            let (head, tail) = out.split_at_mut(whole * MR * pixels);
            if !head.is_empty() {
                pw.run_rows(isa, x, None, 0, head);
            }
            if !tail.is_empty() {
                pw.run_rows(isa, x, None, whole, tail);
            }
        }
    }

    /// Not a test: `cargo test -p kestrel-edge --lib conv1x1::tests::pointwise_kernel_speed --
    /// --ignored --nocapture` times the kernel alone (one thread, the best instruction set) on
    /// MobileNetV2's shapes: median, slowest and fastest of 11 rounds.
    #[test]
    #[ignore]
    fn pointwise_kernel_speed() {
        let isa = Isa::detect();
        for (k, m, hw) in [
            (16usize, 96usize, 112usize),
            (24, 144, 56),
            (144, 24, 56),
            (32, 192, 28),
            (192, 32, 28),
            (64, 384, 14),
            (384, 64, 14),
            (96, 576, 14),
            (576, 96, 14),
            (576, 160, 7),
            (160, 960, 7),
            (960, 160, 7),
            (960, 320, 7),
            (320, 1280, 7),
        ] {
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
                        run_all(&pw, isa, &x, &mut out);
                    }
                    macs * reps as f64 / t.elapsed().as_secs_f64() / 1e9
                })
                .collect();
            rates.sort_by(f64::total_cmp);
            println!(
                "{k:>4} -> {m:>4} at {hw:>3}x{hw:<3} {}: {:5.1} GMAC/s (min {:.1}, max {:.1})",
                isa.name(),
                rates[5],
                rates[0],
                rates[10]
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every instruction set computes the straightforward sum for any channel counts (one
        /// block of input channels or several) and plane sizes (partial tiles of rows and of
        /// columns), with and without residual and clamp, whichever panel the rows start at.
        #[test]
        fn pointwise_matches_reference(
            k in prop_oneof![1usize..40, 250usize..600], m in 1usize..30, n in 1usize..90,
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
                // Columns split at a tile boundary (as threads split a large plane).
                let mut whole = vec![f32::NAN; m * n];
                let split = (start * NC).min(n / NC * NC);
                unsafe {
                    pw.run_columns(isa, &x, r.as_deref(), 0..split, whole.as_mut_ptr());
                    pw.run_columns(isa, &x, r.as_deref(), split..n, whole.as_mut_ptr());
                }
                for (i, (a, b)) in want.iter().zip(&whole).enumerate() {
                    prop_assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()) + 1e-6 * k as f32,
                        "{:?} columns, value {}: reference {} vs kernel {}", isa, i, a, b
                    );
                }
                let mut out = vec![f32::NAN; (m - first * MR) * n];
                pw.run_rows(isa, &x, r.as_deref(), first, &mut out);
                for (i, (a, b)) in want[first * MR * n..].iter().zip(&out).enumerate() {
                    prop_assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()) + 1e-6 * k as f32,
                        "{:?} value {}: reference {} vs kernel {}", isa, i, a, b
                    );
                }
            }
        }
    }
}
