//! 3x3 convolutions over NCHW planes, computed directly: the depthwise convolution of every
//! inverted-residual block, and the dense stem convolution on a few input channels. Both can read
//! a zero-bordered copy of the input laid out so each kernel tap is one contiguous run, then sweep
//! the output row by row, a vector of outputs at a time, with bias and clamp (ReLU6) fused. On
//! NEON (and the portable path) the depthwise convolution reads planes with a border of one
//! (MobileNetV2's, both strides) in place instead, walking down them in column strips.

use super::simd::{Isa, Lanes};

/// Where a 3x3 convolution reads and writes in one plane (both axes use the same stride).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Input plane height.
    pub h: usize,
    /// Input plane width.
    pub w: usize,
    /// 1 or 2.
    pub stride: usize,
    /// Zero rows above the input.
    pub pad_top: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
    /// Output plane height.
    pub oh: usize,
    /// Output plane width.
    pub ow: usize,
}

impl Geometry {
    /// The geometry of a 3x3 convolution with ONNX-style explicit paddings
    /// (`[top, left, bottom, right]`); `None` for a stride other than 1 or 2, or an empty output.
    pub fn new(h: usize, w: usize, stride: usize, pads: [usize; 4]) -> Option<Geometry> {
        if !(1..=2).contains(&stride) {
            return None;
        }
        let [top, left, bottom, right] = pads;
        let (ph, pw) = (h + top + bottom, w + left + right);
        if ph < 3 || pw < 3 {
            return None;
        }
        Some(Geometry {
            h,
            w,
            stride,
            pad_top: top,
            pad_left: left,
            oh: (ph - 3) / stride + 1,
            ow: (pw - 3) / stride + 1,
        })
    }

    /// Values in one input plane.
    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }

    /// Values in one output plane.
    pub fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
}

/// The activation fused after the bias: a clamp to `[lo, hi]` (ReLU6 is `[0, 6]`, ReLU
/// `[0, inf]`, none `[-inf, inf]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    /// Lower bound.
    pub lo: f32,
    /// Upper bound.
    pub hi: f32,
}

impl Clamp {
    /// No activation.
    pub const NONE: Clamp = Clamp {
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    };
}

/// The input plane with its zero border, stored so that the three taps of a kernel row are three
/// contiguous runs: with stride 1 a padded row read at offsets 0, 1 and 2; with stride 2 the
/// padded row split into its even and odd columns, read as `even[x]`, `odd[x]`, `even[x + 1]`.
struct Padded {
    buf: Vec<f32>,
    /// Floats per stored row.
    row_len: usize,
    /// Offsets of the three taps in a stored row.
    taps: [usize; 3],
    /// The geometry (and vector width) the buffer's zeros are laid out for: planes of the same
    /// geometry only overwrite the input's values, the border stays zero.
    zeros_for: Option<(Geometry, usize)>,
}

thread_local! {
    /// Padded planes kept between calls on this thread. A plane's buffer is reused, and so are
    /// its zero borders while the geometry stays: fresh buffers cost page faults on every call
    /// (the detector's three stem planes, 900 KB, took as long to pad as to convolve).
    static POOL: std::cell::RefCell<Vec<Padded>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Padded {
    /// A padded plane from this thread's pool (or a new one).
    fn take() -> Padded {
        POOL.with_borrow_mut(|pool| pool.pop())
            .unwrap_or_else(Padded::new)
    }

    /// Gives a padded plane back to this thread's pool.
    fn give_back(self) {
        POOL.with_borrow_mut(|pool| pool.push(self));
    }

    fn new() -> Padded {
        Padded {
            buf: Vec::new(),
            row_len: 0,
            taps: [0; 3],
            zeros_for: None,
        }
    }

    /// Fill from one input plane for geometry `g`, output rows rounded up to two vectors (the
    /// most a step reads).
    // Not inlined on aarch64: inlined, it made the stride-2 steps spill (0.5 M more instructions
    // on the detector's layers); x86 needs it inlined into the AVX2 function.
    #[cfg_attr(target_arch = "aarch64", inline(never))]
    #[cfg_attr(not(target_arch = "aarch64"), inline(always))]
    fn fill<L: Lanes>(&mut self, plane: &[f32], g: &Geometry) {
        let lanes = 2 * L::N;
        let owr = g.ow.div_ceil(lanes) * lanes;
        let rows = (g.oh - 1) * g.stride + 3;
        if g.stride == 1 {
            // Room for the zeros a row copy stores after the row, up to a whole vector.
            self.row_len = (owr + 2).max(g.pad_left + g.w.next_multiple_of(L::N));
            self.taps = [0, 1, 2];
        } else {
            let half = (owr + 1).max((g.w + g.pad_left) / 2 + 1);
            self.row_len = 2 * half;
            self.taps = [0, half, 1];
        }
        if self.zeros_for != Some((*g, L::N)) {
            self.buf.clear();
            self.buf.resize(rows * self.row_len, 0.0);
            self.zeros_for = Some((*g, L::N));
        }
        // Padded rows pad_top.. hold input rows 0..; the rows around them stay zero.
        let valid = g.h.min(rows.saturating_sub(g.pad_top));
        if g.stride == 1 {
            let span = g.pad_left + g.w.next_multiple_of(L::N);
            assert!(span <= self.row_len && (g.pad_top + valid) * self.row_len <= self.buf.len());
            let dst = self.buf[g.pad_top * self.row_len + g.pad_left..].as_mut_ptr();
            for iy in 0..valid {
                unsafe {
                    L::copy_zero_tail(
                        plane.as_ptr().add(iy * g.w),
                        dst.add(iy * self.row_len),
                        g.w,
                    )
                };
            }
            return;
        }
        let half = self.row_len / 2;
        for iy in 0..valid {
            let r = iy + g.pad_top;
            let dst = &mut self.buf[r * self.row_len..(r + 1) * self.row_len];
            let src = &plane[iy * g.w..(iy + 1) * g.w];
            if g.pad_left == 1 {
                let (even, odd) = dst.split_at_mut(half);
                // Padded column c = x + 1: input column 2k lands odd[k], 2k + 1 lands even[k + 1].
                let pairs = g.w / 2;
                // Room for the zeros a vector implementation may store after the pairs.
                let room = pairs.next_multiple_of(L::N);
                assert!(room <= odd.len() && room < even.len());
                unsafe {
                    L::deinterleave(
                        src.as_ptr(),
                        pairs,
                        odd.as_mut_ptr(),
                        even[1..].as_mut_ptr(),
                    )
                };
                if g.w % 2 == 1 {
                    odd[pairs] = src[g.w - 1];
                }
            } else {
                dst.fill(0.0);
                let (even, odd) = dst.split_at_mut(half);
                for (x, &v) in src.iter().enumerate() {
                    let c = x + g.pad_left;
                    if c.is_multiple_of(2) {
                        even[c / 2] = v;
                    } else {
                        odd[c / 2] = v;
                    }
                }
            }
        }
    }

    /// Start of padded row `r`.
    #[inline(always)]
    fn row(&self, r: usize) -> *const f32 {
        self.buf[r * self.row_len..].as_ptr()
    }
}

/// Stores `v` at `dst`, or only its first `n` lanes when the row ends inside the vector.
#[inline(always)]
unsafe fn store_part<L: Lanes>(v: L, dst: *mut f32, n: usize) {
    unsafe {
        if n >= L::N {
            v.store(dst);
        } else {
            v.store_first(dst, n);
        }
    }
}

/// A depthwise 3x3 convolution with its bias and activation: one filter per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Depthwise3x3 {
    /// Plane geometry.
    pub geom: Geometry,
    /// Channels (filters).
    pub channels: usize,
    /// `channels x 9` taps, row-major per channel.
    pub weights: Vec<f32>,
    /// One bias per channel.
    pub bias: Vec<f32>,
    /// Fused activation.
    pub clamp: Clamp,
}

impl Depthwise3x3 {
    /// Computes output planes `first..first + out.len() / out_plane` of a batch laid out
    /// `[n, channels, h, w]` in `input` (plane `p` is channel `p % channels` of image
    /// `p / channels`).
    pub fn run_planes(&self, isa: Isa, input: &[f32], first: usize, out: &mut [f32]) {
        let ip = self.geom.in_plane();
        assert!(input.len() >= first * ip, "input too short");
        self.run_from(isa, &input[first * ip..], first, out);
    }

    /// Computes `out.len() / out_plane` output planes from as many planes at the start of
    /// `input`, the first of them plane `plane` of the batch (channel `plane % channels`): a
    /// block of planes copied out of a larger input.
    pub fn run_from(&self, isa: Isa, input: &[f32], plane: usize, out: &mut [f32]) {
        let (ip, op) = (self.geom.in_plane(), self.geom.out_plane());
        assert_eq!(out.len() % op, 0, "output is not whole planes");
        assert!(input.len() >= out.len() / op * ip, "input too short");
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { dw_avx(self, input, plane, out) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe {
                dw_planes::<super::simd::Neon, 2, true>(self, input, plane, out)
            },
            _ => unsafe { dw_planes::<f32, 1, true>(self, input, plane, out) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_avx(dw: &Depthwise3x3, input: &[f32], plane: usize, out: &mut [f32]) {
    unsafe { dw_planes::<super::simd::Avx, 1, false>(dw, input, plane, out) }
}

/// The planes of a depthwise convolution from the planes at the start of `input`, the first of
/// them plane `plane` of the batch; `V` vectors of a row per step; `DIRECT`: planes with
/// a zero border of one are read in place, in column strips (see [`walk_plan`]). AVX2 keeps the
/// padded copy (reading stride 1 in place was slower there).
#[inline(always)]
unsafe fn dw_planes<L: Lanes, const V: usize, const DIRECT: bool>(
    dw: &Depthwise3x3,
    input: &[f32],
    plane: usize,
    out: &mut [f32],
) {
    let g = &dw.geom;
    let (ip, op) = (g.in_plane(), g.out_plane());
    // `if DIRECT` alone: with a constant false the block is not even generated (the AVX2 code
    // stays as it was).
    if DIRECT && let Some(plan) = walk_plan::<L>(g) {
        for (i, oplane) in out.chunks_exact_mut(op).enumerate() {
            let c = (plane + i) % dw.channels;
            let k: &[f32; 9] = dw.weights[c * 9..c * 9 + 9].try_into().expect("9 taps");
            let consts = unsafe { Consts::new(k, dw.bias[c], dw.clamp) };
            let iplane = &input[i * ip..(i + 1) * ip];
            for &(strip, x0) in &plan {
                // SAFETY: the plan's strips read inside the input plane and write inside the
                // output plane (see walk_plan).
                unsafe { strip(iplane, oplane, &consts, g, x0) };
            }
        }
        return;
    }
    let mut padded = Padded::take();
    for (i, oplane) in out.chunks_exact_mut(op).enumerate() {
        let c = (plane + i) % dw.channels;
        padded.fill::<L>(&input[i * ip..(i + 1) * ip], g);
        let k: &[f32; 9] = dw.weights[c * 9..c * 9 + 9].try_into().expect("9 taps");
        unsafe { dw_plane::<L, V>(&padded, k, dw.bias[c], dw.clamp, g, oplane.as_mut_ptr()) };
    }
    padded.give_back();
}

/// One column strip of a plane with a zero border of one, read in place (see [`walk_plan`]):
/// the input plane, the output plane, the filter, the geometry and the strip's first output
/// column.
/// Slices rather than pointers: LLVM then knows the input and output do not overlap.
type Strip<L> = unsafe fn(&[f32], &mut [f32], &Consts<L>, &Geometry, usize);

/// Output vectors a stride-1 strip computes at most: with 5, LLVM kept taps in registers past
/// their vector and NEON's registers spilled (detector's stride-1 layers on cortex-a72: 12.58 M
/// instructions with 5, 12.23 M with 4, before the other changes).
const S1_VECTORS: usize = 4;

/// Output vector pairs a stride-2 strip computes at most (one output row of sums at a time):
/// with 4 pairs NEON's registers spilled (detector's stride-2 layers on cortex-a72: 3.06 M
/// instructions with 4, 2.95 M with 3, 2.96 M with 2, 3.62 M with 5).
const S2_PAIRS: usize = 3;

/// The strips of a plane with a zero border of one that a depthwise convolution reads in place,
/// with stride 1 or 2: each strip walks down the plane a few vectors wide, so each input row
/// is loaded once for every output row it serves and only two pointers move per row (a group
/// of rows walking right moves one per row). `None` where the plane is too narrow (or the
/// border another), which the padded copy serves.
fn walk_plan<L: Lanes>(g: &Geometry) -> Option<Vec<(Strip<L>, usize)>> {
    if g.pad_top != 1 || g.pad_left != 1 {
        return None;
    }
    let n = L::N;
    let mut plan: Vec<(Strip<L>, usize)> = Vec::new();
    // Splits `total` units into strips of at most `max`, balanced; their first unit and size.
    let split = |total: usize, max: usize| {
        let strips = total.div_ceil(max);
        (0..strips).scan(0, move |at, k| {
            let len = total / strips + usize::from(k < total % strips);
            let first = *at;
            *at += len;
            Some((first, len))
        })
    };
    if g.stride == 1 {
        if g.oh != g.h || g.ow != g.w || g.ow < n {
            return None;
        }
        // Whole vectors from the left, then the last vector ending at the row's end.
        let whole = g.ow / n;
        let tail = !g.ow.is_multiple_of(n);
        for (first, len) in split(whole, S1_VECTORS) {
            let (left, right) = (first == 0, !tail && first + len == whole);
            plan.push((s1_strip_fn::<L>(len, left, right), first * n));
        }
        if tail {
            plan.push((s1_strip_fn::<L>(1, false, true), g.ow - n));
        }
    } else {
        if g.oh != (g.h - 1) / 2 + 1 || g.ow != (g.w - 1) / 2 + 1 || g.ow <= 2 * n {
            return None;
        }
        // Pairs of vectors up to the last output (whose right tap is the border when the width
        // is odd), then one or two single vectors, the last ending at the row's end.
        let odd = g.w % 2 == 1;
        let pairs = (g.ow - usize::from(odd)) / (2 * n);
        for (first, len) in split(pairs, S2_PAIRS) {
            plan.push((s2_pairs_fn::<L>(len, first == 0), first * 2 * n));
        }
        let rest = g.ow - pairs * 2 * n;
        if rest > n {
            plan.push((dw_s2_single::<L, false>, pairs * 2 * n));
        }
        if rest > 0 {
            let f: Strip<L> = if odd {
                dw_s2_single::<L, true>
            } else {
                dw_s2_single::<L, false>
            };
            plan.push((f, g.ow - n));
        }
    }
    Some(plan)
}

/// The stride-1 strip of `v` vectors (`1..=S1_VECTORS`), on the left or right border or both.
fn s1_strip_fn<L: Lanes>(v: usize, left: bool, right: bool) -> Strip<L> {
    macro_rules! pick {
        ($($v:literal)*) => {
            match (v, left, right) {
                $(
                    ($v, false, false) => dw_s1_strip::<L, $v, false, false>,
                    ($v, true, false) => dw_s1_strip::<L, $v, true, false>,
                    ($v, false, true) => dw_s1_strip::<L, $v, false, true>,
                    ($v, true, true) => dw_s1_strip::<L, $v, true, true>,
                )*
                _ => unreachable!("strip of {v} vectors"),
            }
        };
    }
    pick!(1 2 3 4)
}

/// The stride-2 strip of `p` vector pairs (`1..=S2_PAIRS`), on the left border or not.
fn s2_pairs_fn<L: Lanes>(p: usize, left: bool) -> Strip<L> {
    macro_rules! pick {
        ($($p:literal)*) => {
            match (p, left) {
                $(
                    ($p, false) => dw_s2_pairs::<L, $p, false>,
                    ($p, true) => dw_s2_pairs::<L, $p, true>,
                )*
                _ => unreachable!("strip of {p} pairs"),
            }
        };
    }
    pick!(1 2 3)
}

/// Clamps and stores `V` vectors of sums at `dst`.
#[inline(always)]
unsafe fn store_sums<L: Lanes, const V: usize>(acc: &[L; V], c: &Consts<L>, dst: *mut f32) {
    unsafe {
        for (v, a) in acc.iter().enumerate() {
            a.clamp(c.lo, c.hi).store(dst.add(v * L::N));
        }
    }
}

/// A stride-1 strip: output columns `x0..x0 + V * N` of every row (`LEFT`: `x0` is 0, `RIGHT`:
/// the strip ends at the row's end; their border taps are zeros shifted in). Input row `i`
/// finishes output row `i - 1` (kernel row 2), adds to row `i` (kernel row 1) and starts row
/// `i + 1` (kernel row 0): two rows of sums are carried down, and the loop takes two input
/// rows per turn so they swap roles without moves.
unsafe fn dw_s1_strip<L: Lanes, const V: usize, const LEFT: bool, const RIGHT: bool>(
    plane: &[f32],
    out: &mut [f32],
    c: &Consts<L>,
    g: &Geometry,
    x0: usize,
) {
    // Slices (see Strip): LLVM pairs a row's loads and stores (`ldp`, `stp`; 11.8 -> 11.1 M
    // instructions on the detector's stride-1 layers).
    let (plane, out) = (plane.as_ptr(), out.as_mut_ptr());
    unsafe {
        let (h, w) = (g.h, g.w);
        let src = |i: usize| plane.add(i * w + x0);
        let dst = |y: usize| out.add(y * w + x0);
        // `q` is output row 0, `p` row 1 once started.
        let mut p = [c.bias; V];
        let mut q = [c.bias; V];
        if h == 1 {
            s1_row::<L, V, LEFT, RIGHT, false, false>(src(0), &mut p, &mut q, c, dst(0));
            store_sums(&q, c, dst(0));
            return;
        }
        s1_row::<L, V, LEFT, RIGHT, false, true>(src(0), &mut p, &mut q, c, dst(0));
        // Two pointers bumped per turn (indexing from the plane, LLVM kept one per row).
        let (mut s, mut d) = (src(1), dst(0));
        let mut turns = (h - 2) / 2;
        while turns > 0 {
            s1_row::<L, V, LEFT, RIGHT, true, true>(s, &mut q, &mut p, c, d);
            s1_row::<L, V, LEFT, RIGHT, true, true>(s.add(w), &mut p, &mut q, c, d.add(w));
            s = s.add(2 * w);
            d = d.add(2 * w);
            turns -= 1;
        }
        let i = 1 + (h - 2) / 2 * 2;
        if i + 2 == h {
            s1_row::<L, V, LEFT, RIGHT, true, true>(src(i), &mut q, &mut p, c, dst(i - 1));
            s1_row::<L, V, LEFT, RIGHT, true, false>(src(i + 1), &mut p, &mut q, c, dst(i));
            store_sums(&q, c, dst(i + 1));
        } else {
            s1_row::<L, V, LEFT, RIGHT, true, false>(src(i), &mut q, &mut p, c, dst(i - 1));
            store_sums(&p, c, dst(i));
        }
    }
}

/// One input row of a stride-1 strip at `src`: with `FIN`, `done` (the output row above) takes
/// the row's taps with kernel row 2 and is stored at `dst`; `mid` (this row's output row) takes
/// them with kernel row 1; with `NEW`, `done` restarts as the output row below, from the bias
/// and kernel row 0.
#[inline(always)]
unsafe fn s1_row<
    L: Lanes,
    const V: usize,
    const LEFT: bool,
    const RIGHT: bool,
    const FIN: bool,
    const NEW: bool,
>(
    src: *const f32,
    done: &mut [L; V],
    mid: &mut [L; V],
    c: &Consts<L>,
    dst: *mut f32,
) {
    unsafe {
        for v in 0..V {
            let at = src.add(v * L::N);
            let t1 = L::load(at);
            let t0 = if LEFT && v == 0 {
                t1.zero_first()
            } else {
                L::load(at.wrapping_sub(1))
            };
            let t2 = if RIGHT && v == V - 1 {
                t1.zero_last()
            } else {
                L::load(at.add(1))
            };
            let taps = [t0, t1, t2];
            if FIN {
                let mut a = done[v];
                for (kx, &t) in taps.iter().enumerate() {
                    a = a.mul_add_tap(t, &c.kv, 6 + kx);
                }
                a.clamp(c.lo, c.hi).store(dst.add(v * L::N));
            }
            for (kx, &t) in taps.iter().enumerate() {
                mid[v] = mid[v].mul_add_tap(t, &c.kv, 3 + kx);
            }
            if NEW {
                let mut a = c.bias;
                for (kx, &t) in taps.iter().enumerate() {
                    a = a.mul_add_tap(t, &c.kv, kx);
                }
                done[v] = a;
            }
        }
    }
}

/// A stride-2 strip of `P` pairs of output vectors from column `x0` (`LEFT`: `x0` is 0). A
/// pair's input columns `2 * x0..` are loaded split by their position modulo 4 (`ld4`): the
/// pair's first vector holds the even outputs `x0, x0 + 2, ..`, its second the odd ones, each
/// tap a whole register but one, shifted in from the vector before; the store interleaves
/// them again (`st2`). Output row `y` reads input rows `2y - 1` (the one before finishing row
/// `y - 1`), `2y` and `2y + 1`.
unsafe fn dw_s2_pairs<L: Lanes, const P: usize, const LEFT: bool>(
    plane: &[f32],
    out: &mut [f32],
    c: &Consts<L>,
    g: &Geometry,
    x0: usize,
) {
    unsafe { dw_s2_pairs_at::<L, P, LEFT>(plane.as_ptr(), out.as_mut_ptr(), c, g, x0) }
}

/// The body of [`dw_s2_pairs`], on pointers in a function of its own: told that input and output
/// do not overlap, LLVM scheduled the stride-2 steps into more register moves (3.07 -> 3.31 M
/// instructions on the detector's stride-2 layers).
#[inline(never)]
unsafe fn dw_s2_pairs_at<L: Lanes, const P: usize, const LEFT: bool>(
    plane: *const f32,
    out: *mut f32,
    c: &Consts<L>,
    g: &Geometry,
    x0: usize,
) {
    unsafe {
        let (h, w) = (g.h, g.w);
        let src = |i: usize| plane.add(i * w + 2 * x0);
        let dst = |y: usize| out.add(y * g.ow + x0);
        let mut acc = [[c.bias; 2]; P];
        // Two pointers bumped per output row (indexing from the plane, LLVM kept more).
        let (mut s, mut d) = (src(0), dst(0));
        for _ in 1..g.oh {
            s2_pairs_row::<L, P, LEFT, 1, false>(s, &mut acc, c, d);
            s2_pairs_row::<L, P, LEFT, 2, true>(s.add(w), &mut acc, c, d);
            s = s.add(2 * w);
            d = d.add(g.ow);
        }
        let y = g.oh - 1;
        s2_pairs_row::<L, P, LEFT, 1, false>(src(2 * y), &mut acc, c, dst(y));
        if 2 * y + 1 < h {
            s2_pairs_row::<L, P, LEFT, 2, false>(src(2 * y + 1), &mut acc, c, dst(y));
        }
        for (p, a) in acc.iter().enumerate() {
            L::store2(
                a[0].clamp(c.lo, c.hi),
                a[1].clamp(c.lo, c.hi),
                dst(y).add(2 * p * L::N),
            );
        }
    }
}

/// One input row of a stride-2 pair strip at `src`: its taps multiplied into `acc` with kernel
/// row `KY`; with `NEXT` (kernel row 2) the sums are then stored at `dst` and restarted as the
/// next output row's, from the bias and this row's taps with kernel row 0.
#[inline(always)]
unsafe fn s2_pairs_row<
    L: Lanes,
    const P: usize,
    const LEFT: bool,
    const KY: usize,
    const NEXT: bool,
>(
    src: *const f32,
    acc: &mut [[L; 2]; P],
    c: &Consts<L>,
    dst: *mut f32,
) {
    unsafe {
        // The column before the pair's first: the border, or the last lane of a vector.
        let mut prev = if LEFT {
            L::splat(0.0)
        } else {
            L::load(src.sub(L::N))
        };
        for (p, a) in acc.iter_mut().enumerate() {
            let [r0, r1, r2, r3] = L::load4(src.add(4 * p * L::N));
            let taps = [[r3.shift_in(prev), r0, r1], [r1, r2, r3]];
            prev = r3;
            for (a, taps) in a.iter_mut().zip(&taps) {
                for (kx, &t) in taps.iter().enumerate() {
                    *a = a.mul_add_tap(t, &c.kv, KY * 3 + kx);
                }
            }
            if NEXT {
                L::store2(
                    a[0].clamp(c.lo, c.hi),
                    a[1].clamp(c.lo, c.hi),
                    dst.add(2 * p * L::N),
                );
                for (a, taps) in a.iter_mut().zip(&taps) {
                    *a = c.bias;
                    for (kx, &t) in taps.iter().enumerate() {
                        *a = a.mul_add_tap(t, &c.kv, kx);
                    }
                }
            }
        }
    }
}

/// A stride-2 strip of one output vector from column `x0 >= 1`, read with `ld2`; `ODD`: it ends
/// at the row's end and the width is odd, so its last right tap is the border column.
unsafe fn dw_s2_single<L: Lanes, const ODD: bool>(
    plane: &[f32],
    out: &mut [f32],
    c: &Consts<L>,
    g: &Geometry,
    x0: usize,
) {
    unsafe { dw_s2_single_at::<L, ODD>(plane.as_ptr(), out.as_mut_ptr(), c, g, x0) }
}

/// The body of [`dw_s2_single`], on pointers in a function of its own: told that input and output
/// do not overlap, LLVM scheduled the stride-2 steps into more register moves (3.07 -> 3.31 M
/// instructions on the detector's stride-2 layers).
#[inline(never)]
unsafe fn dw_s2_single_at<L: Lanes, const ODD: bool>(
    plane: *const f32,
    out: *mut f32,
    c: &Consts<L>,
    g: &Geometry,
    x0: usize,
) {
    unsafe {
        let taps = |i: usize| {
            let at = plane.add(i * g.w + 2 * x0);
            let (t0, t1) = L::load2(at.sub(1));
            if ODD {
                [t0, t1, t0.zero_last()]
            } else {
                let (t1, t2) = L::load2(at);
                [t0, t1, t2]
            }
        };
        let mul = |mut a: L, taps: [L; 3], ky: usize| {
            for (kx, t) in taps.into_iter().enumerate() {
                a = a.mul_add_tap(t, &c.kv, ky * 3 + kx);
            }
            a
        };
        let mut acc = c.bias;
        for y in 0..g.oh {
            acc = mul(acc, taps(2 * y), 1);
            if 2 * y + 1 < g.h {
                let t = taps(2 * y + 1);
                acc = mul(acc, t, 2);
                acc.clamp(c.lo, c.hi).store(out.add(y * g.ow + x0));
                acc = mul(c.bias, t, 0);
            } else {
                acc.clamp(c.lo, c.hi).store(out.add(y * g.ow + x0));
            }
        }
    }
}

/// Output rows computed together: each input row a step loads serves every output row that
/// reads it (up to three), so a step of four stride-1 rows loads 6 rows' taps for 36
/// multiply-adds instead of 12 rows' taps.
const DW_ROWS: usize = 4;

/// Output rows computed together with stride 2, which reads 9 input rows for 4: with 3 rows
/// (7 input rows) NEON's registers hold a 2-vector step without spilling (measured on the
/// detector's stride-2 layers: 0.69 instead of 0.74 instructions per multiply-add).
const DW_ROWS_S2: usize = 3;

/// One output plane of a depthwise convolution from its padded input plane, `V` vectors of each
/// row per step (one where registers are few: AVX2's 16 hold the nine taps and four rows).
#[inline(always)]
unsafe fn dw_plane<L: Lanes, const V: usize>(
    p: &Padded,
    k: &[f32; 9],
    bias: f32,
    clamp: Clamp,
    g: &Geometry,
    out: *mut f32,
) {
    unsafe {
        let c = Consts::new(k, bias, clamp);
        if g.stride == 1 {
            dw_plane_rows::<L, 1, V, DW_ROWS>(p, &c, g, out);
        } else {
            dw_plane_rows::<L, 2, V, DW_ROWS_S2>(p, &c, g, out);
        }
    }
}

/// Every output row of a plane with stride `S`, `G` at a time, then the rest.
#[inline(always)]
unsafe fn dw_plane_rows<L: Lanes, const S: usize, const V: usize, const G: usize>(
    p: &Padded,
    c: &Consts<L>,
    g: &Geometry,
    out: *mut f32,
) {
    unsafe {
        let mut y = 0;
        while y + G <= g.oh {
            dw_rows::<L, G, S, V>(p, c, g, out, y);
            y += G;
        }
        match g.oh - y {
            3 => dw_rows::<L, 3, S, V>(p, c, g, out, y),
            2 => dw_rows::<L, 2, S, V>(p, c, g, out, y),
            1 => dw_rows::<L, 1, S, V>(p, c, g, out, y),
            _ => {}
        }
    }
}

/// A depthwise filter's taps, bias and bounds as vectors.
struct Consts<L: Lanes> {
    kv: L::Taps,
    bias: L,
    lo: L,
    hi: L,
}

impl<L: Lanes> Consts<L> {
    #[inline(always)]
    unsafe fn new(k: &[f32; 9], bias: f32, clamp: Clamp) -> Consts<L> {
        unsafe {
            Consts {
                kv: L::taps(k),
                bias: L::splat(bias),
                lo: L::splat(clamp.lo),
                hi: L::splat(clamp.hi),
            }
        }
    }
}

/// The first step of a row, whose left taps read the zero border.
const LEFT: u8 = 1;
/// The last step of a row, whose right taps read the zero border.
const RIGHT: u8 = 2;

/// Padded input rows a group of `r` output rows with stride `s` reads.
const fn rows_in(r: usize, s: usize) -> usize {
    (r - 1) * s + 3
}

/// Output rows `y0..y0 + R` of one plane with stride `S`: `V` vectors of each row per step,
/// then single vectors up to the row's end.
#[inline(always)]
unsafe fn dw_rows<L: Lanes, const R: usize, const S: usize, const V: usize>(
    p: &Padded,
    c: &Consts<L>,
    g: &Geometry,
    out: *mut f32,
    y0: usize,
) {
    unsafe {
        // The padded rows the group reads and the rows it writes, advanced one step at a time
        // so every load is a row pointer plus a constant.
        let base = p.row(y0 * S);
        let mut src = [base; rows_in(DW_ROWS, 2)];
        for (j, row) in src.iter_mut().enumerate().take(rows_in(R, S)) {
            *row = base.add(j * p.row_len);
        }
        let mut dst: [*mut f32; R] = std::array::from_fn(|r| out.add((y0 + r) * g.ow));
        let step = V * L::N;
        let mut x = 0;
        while x + step <= g.ow {
            dw_step_store::<L, R, S, V, 0>(&src, &dst, p.taps, c);
            advance::<R, S>(&mut src, &mut dst, step as isize);
            x += step;
        }
        while x + L::N <= g.ow {
            dw_step_store::<L, R, S, 1, 0>(&src, &dst, p.taps, c);
            advance::<R, S>(&mut src, &mut dst, L::N as isize);
            x += L::N;
        }
        if x == g.ow {
            return;
        }
        if g.ow >= L::N {
            // The row ends inside a vector: its last vector is computed whole, ending at the row's
            // end, its first lanes storing the values already there again (no partial store).
            advance::<R, S>(&mut src, &mut dst, g.ow as isize - (x + L::N) as isize);
            dw_step_store::<L, R, S, 1, 0>(&src, &dst, p.taps, c);
            return;
        }
        // A row shorter than a vector is stored whole, spilling into the next rows, which are
        // stored after it (masked stores are slow on some CPUs), if the plane has room.
        let plane = g.oh * g.ow;
        let acc = dw_step::<L, R, S, 1, 0>(&src, p.taps, c);
        for (r, (d, row_acc)) in dst.iter().zip(&acc).enumerate() {
            let v = row_acc[0].clamp(c.lo, c.hi);
            if (y0 + r) * g.ow + L::N <= plane {
                v.store(*d);
            } else {
                store_part(v, *d, g.ow);
            }
        }
    }
}

/// One step of `V` vectors of `R` rows, clamped and stored whole at `dst`.
#[inline(always)]
unsafe fn dw_step_store<L: Lanes, const R: usize, const S: usize, const V: usize, const E: u8>(
    src: &[*const f32; rows_in(DW_ROWS, 2)],
    dst: &[*mut f32; R],
    taps: [usize; 3],
    c: &Consts<L>,
) {
    unsafe {
        let acc = dw_step::<L, R, S, V, E>(src, taps, c);
        for (d, row_acc) in dst.iter().zip(&acc) {
            for (v, a) in row_acc.iter().enumerate() {
                a.clamp(c.lo, c.hi).store(d.add(v * L::N));
            }
        }
    }
}

/// Moves a step's row pointers `n` outputs along the rows (input and output alike: a padded row
/// holds its taps for output `x` at `x` plus a tap offset, with either stride).
#[inline(always)]
unsafe fn advance<const R: usize, const S: usize>(
    src: &mut [*const f32; rows_in(DW_ROWS, 2)],
    dst: &mut [*mut f32; R],
    n: isize,
) {
    unsafe {
        for row in src.iter_mut().take(rows_in(R, S)) {
            *row = row.wrapping_offset(n);
        }
        for d in dst.iter_mut() {
            *d = d.offset(n);
        }
    }
}

/// The sums of one step: `V` vectors of `R` output rows, from the padded rows at `src`. Each
/// tap of an input row is loaded once and multiplied into every output row that reads it, in
/// the reference's order (kernel row, then column). `E` says whether the step is the first
/// ([`LEFT`]) or the last ([`RIGHT`]) of a stride-1 row read in place, whose border taps are
/// zeros shifted in rather than loaded. Every caller passes 0 since the column strips read in
/// place; the branches stay because without them LLVM generated other code for the AVX2 steps,
/// 3-5% slower on stride 1 (`where_time_goes`).
#[inline(always)]
unsafe fn dw_step<L: Lanes, const R: usize, const S: usize, const V: usize, const E: u8>(
    src: &[*const f32; rows_in(DW_ROWS, 2)],
    taps: [usize; 3],
    c: &Consts<L>,
) -> [[L; V]; R] {
    unsafe {
        // Stride 1 reads a padded row at offsets 0, 1, 2: constants the loads can carry.
        let taps = if S == 1 { [0, 1, 2] } else { taps };
        let mut acc = [[c.bias; V]; R];
        for (j, row) in src.iter().enumerate().take(rows_in(R, S)) {
            for (kx, &t) in taps.iter().enumerate() {
                let vals: [L; V] = std::array::from_fn(|v| {
                    if E & LEFT != 0 && kx == 0 && v == 0 {
                        L::load(row.wrapping_add(1)).zero_first()
                    } else if E & RIGHT != 0 && kx == 2 && v == V - 1 {
                        L::load(row.wrapping_add(1 + v * L::N)).zero_last()
                    } else {
                        L::load(row.wrapping_add(t + v * L::N))
                    }
                });
                for (r, row_acc) in acc.iter_mut().enumerate() {
                    let Some(ky) = j.checked_sub(r * S).filter(|&ky| ky < 3) else {
                        continue;
                    };
                    for (a, &x) in row_acc.iter_mut().zip(&vals) {
                        *a = a.mul_add_tap(x, &c.kv, ky * 3 + kx);
                    }
                }
            }
        }
        acc
    }
}

/// Input channels the dense kernel takes: the stem's 3 (RGB), with room for grey or RGBA.
pub const MAX_DENSE_INPUTS: usize = 4;

/// A dense 3x3 convolution on a few input channels (the stem), with bias and activation.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense3x3 {
    /// Plane geometry.
    pub geom: Geometry,
    /// Input channels (at most [`MAX_DENSE_INPUTS`]).
    pub inputs: usize,
    /// Output channels.
    pub outputs: usize,
    /// `outputs x inputs x 9` taps (ONNX's OIHW order).
    pub weights: Vec<f32>,
    /// One bias per output channel.
    pub bias: Vec<f32>,
    /// Fused activation.
    pub clamp: Clamp,
    /// An int8 convolution computed exactly in f32 (see [`Int8Dense`]), or `None`.
    pub int8: Option<Int8Dense>,
}

/// An int8 bundle's stem (`QuantizeLinear`, `ConvInteger`, cast, rescale, bias) in f32: the
/// input becomes its integer codes minus the zero point (zero in the padding, as ConvInteger
/// pads with the zero point), the weights are int8 values; every product (at most 255 x 127)
/// and sum of 9 x 4 of them is an integer below 2^24, so f32 computes tract's int32 sums exactly.
/// The store then applies `sum * scale + bias` (two roundings, as tract's `Mul` then `Add`).
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Dense {
    /// How the input is quantized.
    pub quant: super::qconv1x1::InputQuant,
    /// The zero point the integer product subtracts.
    pub a0: i32,
    /// Per output channel multiplier of the sums (the bias is [`Dense3x3::bias`]).
    pub scale: Vec<f32>,
}

impl Int8Dense {
    /// The input's int8 codes minus the zero point the product subtracts, as floats: tract's
    /// `quantize_linear_f32_i8` per value (NEON: sixteen at a time, the same arithmetic).
    fn codes(&self, image: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; image.len()];
        float_codes(self.quant, self.a0, image, &mut out);
        out
    }
}

/// `x`'s int8 codes minus the zero point `a0` a product subtracts, as floats, into `out`:
/// tract's `quantize_linear_f32_i8` per value (AVX2 or NEON where the CPU has them, the same
/// arithmetic).
pub(super) fn float_codes(quant: super::qconv1x1::InputQuant, a0: i32, x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "codes of every value");
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of every aarch64 target.
    let done = unsafe { neon_codes(quant, a0, x, out) };
    #[cfg(target_arch = "x86_64")]
    let done = if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        unsafe { avx2_codes(quant, a0, x, out) }
    } else {
        0
    };
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    let done = 0;
    for (o, &v) in out[done..].iter_mut().zip(&x[done..]) {
        let c = tract_nnef::tract_core::ops::quant::quantize_linear_f32_i8(
            v,
            quant.scale,
            quant.zero_point,
        );
        *o = (c as i32 - a0) as f32;
    }
}

/// [`float_codes`] for the whole vectors of `image`; returns how many values it did.
/// `fcvtns` rounds half to even and saturates (NaN to 0), as Rust's cast in tract's function.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn neon_codes(
    quant: super::qconv1x1::InputQuant,
    a0: i32,
    image: &[f32],
    out: &mut [f32],
) -> usize {
    use std::arch::aarch64::*;
    let whole = image.len() / 4 * 4;
    let scale = vdupq_n_f32(quant.scale);
    let zp = vdupq_n_s32(quant.zero_point);
    let (lo, hi) = (vdupq_n_s32(i8::MIN as i32), vdupq_n_s32(i8::MAX as i32));
    let a0 = vdupq_n_s32(a0);
    for i in (0..whole).step_by(4) {
        // SAFETY: `i + 4 <= whole <= len` for both slices (same length).
        unsafe {
            let q = vqaddq_s32(
                vcvtnq_s32_f32(vmulq_f32(vld1q_f32(image.as_ptr().add(i)), scale)),
                zp,
            );
            let q = vminq_s32(vmaxq_s32(q, lo), hi);
            vst1q_f32(out.as_mut_ptr().add(i), vcvtq_f32_s32(vsubq_s32(q, a0)));
        }
    }
    whole
}

/// [`float_codes`] for the whole vectors of `image` on x86; returns how many values it
/// did. `x * scale` is held within +-512 before the conversion (beyond, every code saturates
/// anyway, and the conversion would overflow); `cvtps` rounds half to even, as tract.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_codes(
    quant: super::qconv1x1::InputQuant,
    a0: i32,
    image: &[f32],
    out: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let whole = image.len() / 8 * 8;
    let scale = _mm256_set1_ps(quant.scale);
    let (lo, hi) = (_mm256_set1_ps(-512.0), _mm256_set1_ps(512.0));
    let zp = _mm256_set1_epi32(quant.zero_point);
    let (qlo, qhi) = (
        _mm256_set1_epi32(i8::MIN as i32),
        _mm256_set1_epi32(i8::MAX as i32),
    );
    let a0 = _mm256_set1_epi32(a0);
    for i in (0..whole).step_by(8) {
        // SAFETY: `i + 8 <= whole <= len` for both slices (same length).
        unsafe {
            let v = _mm256_mul_ps(_mm256_loadu_ps(image.as_ptr().add(i)), scale);
            let v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
            let q = _mm256_add_epi32(_mm256_cvtps_epi32(v), zp);
            let q = _mm256_min_epi32(_mm256_max_epi32(q, qlo), qhi);
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm256_cvtepi32_ps(_mm256_sub_epi32(q, a0)),
            );
        }
    }
    whole
}

/// Output channels computed together: they share every input load.
const DENSE_BLOCK: usize = 4;
/// Vectors of a row computed together (measured on x86: 3 or 4 spill, 1 with 8 channels is
/// slower); the padded rows have room for two.
const DENSE_V: usize = 2;

/// An image's input planes, each with its zero border, laid out for one geometry: made once
/// per image, then read by every thread computing some of its output channels.
pub struct PaddedImage {
    planes: Vec<Padded>,
    isa: Isa,
}

impl Drop for PaddedImage {
    /// The planes go back to the pool of the thread that drops the image (the one that made it).
    fn drop(&mut self) {
        for p in self.planes.drain(..) {
            p.give_back();
        }
    }
}

impl Dense3x3 {
    /// Computes output channels `first..first + out.len() / out_plane` of one image laid out
    /// `[inputs, h, w]` in `image`.
    pub fn run_channels(&self, isa: Isa, image: &[f32], first: usize, out: &mut [f32]) {
        let padded = self.pad(isa, image);
        self.run_padded(&padded, first, out);
    }

    /// The padded planes of one image laid out `[inputs, h, w]`, for [`Dense3x3::run_padded`].
    pub fn pad(&self, isa: Isa, image: &[f32]) -> PaddedImage {
        assert!(self.inputs <= MAX_DENSE_INPUTS, "too many input channels");
        assert_eq!(
            image.len(),
            self.inputs * self.geom.in_plane(),
            "image size"
        );
        let codes: Vec<f32>;
        let image = match &self.int8 {
            Some(q) => {
                codes = q.codes(image);
                &codes
            }
            None => image,
        };
        let planes = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { pad_avx(self, image) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => pad_planes::<super::simd::Neon>(self, image),
            _ => pad_planes::<f32>(self, image),
        };
        PaddedImage { planes, isa }
    }

    /// Computes output channels `first..first + out.len() / out_plane` from an image's padded
    /// planes, with the instruction set they were padded for.
    pub fn run_padded(&self, padded: &PaddedImage, first: usize, out: &mut [f32]) {
        assert_eq!(padded.planes.len(), self.inputs, "padded planes");
        assert_eq!(
            out.len() % self.geom.out_plane(),
            0,
            "output is not whole planes"
        );
        assert!(first + out.len() / self.geom.out_plane() <= self.outputs);
        let planes = &padded.planes;
        match padded.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { dense_avx(self, planes, first, out) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => unsafe { dense_channels::<super::simd::Neon>(self, planes, first, out) },
            _ => unsafe { dense_channels::<f32>(self, planes, first, out) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pad_avx(d: &Dense3x3, image: &[f32]) -> Vec<Padded> {
    pad_planes::<super::simd::Avx>(d, image)
}

#[inline(always)]
fn pad_planes<L: Lanes>(d: &Dense3x3, image: &[f32]) -> Vec<Padded> {
    let ip = d.geom.in_plane();
    (0..d.inputs)
        .map(|ic| {
            let mut p = Padded::take();
            p.fill::<L>(&image[ic * ip..(ic + 1) * ip], &d.geom);
            p
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dense_avx(d: &Dense3x3, padded: &[Padded], first: usize, out: &mut [f32]) {
    unsafe { dense_channels::<super::simd::Avx>(d, padded, first, out) }
}

#[inline(always)]
unsafe fn dense_channels<L: Lanes>(d: &Dense3x3, padded: &[Padded], first: usize, out: &mut [f32]) {
    unsafe {
        match d.inputs {
            3 => dense_blocks::<L, 3>(d, padded, first, out),
            1 => dense_blocks::<L, 1>(d, padded, first, out),
            2 => dense_blocks::<L, 2>(d, padded, first, out),
            _ => dense_blocks::<L, 4>(d, padded, first, out),
        }
    }
}

/// Output channels in blocks of [`DENSE_BLOCK`], for `I` input channels (a constant, so a
/// step's taps are straight-line code).
#[inline(always)]
unsafe fn dense_blocks<L: Lanes, const I: usize>(
    d: &Dense3x3,
    padded: &[Padded],
    first: usize,
    out: &mut [f32],
) {
    let op = d.geom.out_plane();
    let count = out.len() / op;
    let mut oc = 0;
    while oc < count {
        let n = (count - oc).min(DENSE_BLOCK);
        let dst = out[oc * op..].as_mut_ptr();
        unsafe {
            match n {
                4 => dense_block::<L, I, 4>(d, padded, first + oc, dst),
                3 => dense_block::<L, I, 3>(d, padded, first + oc, dst),
                2 => dense_block::<L, I, 2>(d, padded, first + oc, dst),
                _ => dense_block::<L, I, 1>(d, padded, first + oc, dst),
            }
        }
        oc += n;
    }
}

/// `B` output channels from `oc` of a convolution on `I` input channels, written as
/// consecutive planes from `out`.
#[inline(always)]
unsafe fn dense_block<L: Lanes, const I: usize, const B: usize>(
    d: &Dense3x3,
    padded: &[Padded],
    oc: usize,
    out: *mut f32,
) {
    unsafe {
        let g = &d.geom;
        let op = g.out_plane();
        assert!(padded.len() == I && d.inputs == I && oc + B <= d.outputs);
        // The block's taps, kernel row `t` (input channel, row) and column `kx` of output
        // channel `o` at `(t * 3 + kx) * B + o`: a step reads them in order.
        let mut wb = [0f32; 9 * MAX_DENSE_INPUTS * DENSE_BLOCK];
        for o in 0..B {
            for tk in 0..9 * I {
                wb[tk * B + o] = d.weights[(oc + o) * I * 9 + tk];
            }
        }
        let bias: [L; B] = std::array::from_fn(|o| L::splat(d.bias[oc + o]));
        // int8: sums start at zero, the store rescales and adds the bias.
        let scale: Option<[L; B]> = d
            .int8
            .as_ref()
            .map(|q| std::array::from_fn(|o| L::splat(q.scale[oc + o])));
        let start = if scale.is_some() {
            [L::splat(0.0); B]
        } else {
            bias
        };
        let (lo, hi) = (L::splat(d.clamp.lo), L::splat(d.clamp.hi));
        let [ta, tb, tc] = padded[0].taps;
        for y in 0..g.oh {
            let rows: [*const f32; 12] = std::array::from_fn(|t| {
                if t < 3 * I {
                    padded[t / 3].row(y * g.stride + t % 3)
                } else {
                    std::ptr::null()
                }
            });
            // DENSE_V vectors per step: DENSE_V x B independent chains of multiply-adds.
            let mut x = 0;
            while x < g.ow {
                let mut acc = [[start[0]; DENSE_V]; B];
                for (o, acc) in acc.iter_mut().enumerate() {
                    *acc = [start[o]; DENSE_V];
                }
                for (t, row) in rows.iter().enumerate().take(3 * I) {
                    let taps: [[L; 3]; DENSE_V] = std::array::from_fn(|v| {
                        let at = row.add(x + v * L::N);
                        [
                            L::load(at.add(ta)),
                            L::load(at.add(tb)),
                            L::load(at.add(tc)),
                        ]
                    });
                    let k = &wb[t * 3 * B..(t + 1) * 3 * B];
                    for (o, acc) in acc.iter_mut().enumerate() {
                        let (k0, k1, k2) =
                            (L::splat(k[o]), L::splat(k[B + o]), L::splat(k[2 * B + o]));
                        for (a, tap) in acc.iter_mut().zip(&taps) {
                            *a = a
                                .mul_add(tap[0], k0)
                                .mul_add(tap[1], k1)
                                .mul_add(tap[2], k2);
                        }
                    }
                }
                for v in 0..DENSE_V {
                    let o = x + v * L::N;
                    if o >= g.ow {
                        break;
                    }
                    for (oc, acc) in acc.iter().enumerate() {
                        let dst = out.add(oc * op + y * g.ow + o);
                        let y = match &scale {
                            Some(s) => acc[v].mul(s[oc]).add(bias[oc]),
                            None => acc[v],
                        };
                        store_part(y.clamp(lo, hi), dst, g.ow - o);
                    }
                }
                x += DENSE_V * L::N;
            }
        }
    }
}

/// Straightforward reference in f64: what both kernels must compute (used by the tests).
#[cfg(test)]
pub(crate) struct Reference<'a> {
    pub g: Geometry,
    pub inputs: usize,
    pub outputs: usize,
    pub weights: &'a [f32],
    pub bias: &'a [f32],
    pub depthwise: bool,
    pub clamp: Clamp,
}

#[cfg(test)]
impl Reference<'_> {
    pub(crate) fn run(&self, input: &[f32]) -> Vec<f32> {
        let g = &self.g;
        let mut out = vec![0f32; self.outputs * g.out_plane()];
        for oc in 0..self.outputs {
            let ics: Vec<usize> = if self.depthwise {
                vec![oc]
            } else {
                (0..self.inputs).collect()
            };
            for y in 0..g.oh {
                for x in 0..g.ow {
                    let mut acc = self.bias[oc] as f64;
                    for (j, &ic) in ics.iter().enumerate() {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let iy = (y * g.stride + ky) as isize - g.pad_top as isize;
                                let ix = (x * g.stride + kx) as isize - g.pad_left as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let v = input[ic * g.in_plane() + iy as usize * g.w + ix as usize];
                                let wi = (oc * ics.len() + j) * 9;
                                acc += v as f64 * self.weights[wi + ky * 3 + kx] as f64;
                            }
                        }
                    }
                    out[oc * g.out_plane() + y * g.ow + x] =
                        (acc as f32).max(self.clamp.lo).min(self.clamp.hi);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::values;
    use proptest::prelude::*;

    fn close(a: &[f32], b: &[f32]) -> Result<(), String> {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            if (x - y).abs() > 1e-5 * (1.0 + x.abs().max(y.abs())) {
                return Err(format!("value {i}: {x} vs {y}"));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every instruction set computes the straightforward convolution, for both kernels,
        /// odd and even sizes, both strides and paddings 0..=2.
        #[test]
        fn kernels_match_reference(
            h in 1usize..20, w in 1usize..40, stride in 1usize..=2,
            pads in proptest::array::uniform4(0usize..=2), channels in 1usize..7,
            inputs in 1usize..=MAX_DENSE_INPUTS, relu6 in any::<bool>(), seed in any::<u64>(),
        ) {
            let Some(g) = Geometry::new(h, w, stride, pads) else { return Ok(()) };
            let clamp = if relu6 { Clamp { lo: 0.0, hi: 6.0 } } else { Clamp::NONE };
            let x = values(channels.max(inputs) * g.in_plane(), seed);
            let dw = Depthwise3x3 {
                geom: g, channels, weights: values(channels * 9, seed + 1),
                bias: values(channels, seed + 2), clamp,
            };
            let want = Reference {
                g, inputs: channels, outputs: channels, weights: &dw.weights, bias: &dw.bias,
                depthwise: true, clamp,
            }.run(&x);
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; channels * g.out_plane()];
                dw.run_planes(isa, &x, 0, &mut out);
                close(&out, &want).map_err(|e| TestCaseError::fail(format!("{isa:?} depthwise: {e}")))?;
            }
            let dense = Dense3x3 {
                geom: g, inputs, outputs: channels, weights: values(channels * inputs * 9, seed + 3),
                bias: values(channels, seed + 4), clamp, int8: None,
            };
            let img = &x[..inputs * g.in_plane()];
            let want = Reference {
                g, inputs, outputs: channels, weights: &dense.weights, bias: &dense.bias,
                depthwise: false, clamp,
            }.run(img);
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; channels * g.out_plane()];
                dense.run_channels(isa, img, 0, &mut out);
                close(&out, &want).map_err(|e| TestCaseError::fail(format!("{isa:?} dense: {e}")))?;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Planes with a zero border of one (MobileNetV2's), which the depthwise kernel reads in
        /// place with either stride: every width (odd ones with stride 2 end on the border),
        /// rows ending inside a vector, planes of a few rows, no border below or right; up to
        /// 99 wide, so rows take several strips of every size.
        #[test]
        fn depthwise_border_of_one_matches_reference(
            h in 1usize..12, w in 1usize..100, stride in 1usize..=2,
            [bottom, right] in proptest::array::uniform2(0usize..=1), channels in 1usize..4,
            relu6 in any::<bool>(), seed in any::<u64>(),
        ) {
            let Some(g) = Geometry::new(h, w, stride, [1, 1, bottom, right]) else {
                return Ok(());
            };
            let clamp = if relu6 { Clamp { lo: 0.0, hi: 6.0 } } else { Clamp::NONE };
            let x = values(channels * g.in_plane(), seed);
            let dw = Depthwise3x3 {
                geom: g, channels, weights: values(channels * 9, seed + 1),
                bias: values(channels, seed + 2), clamp,
            };
            let want = Reference {
                g, inputs: channels, outputs: channels, weights: &dw.weights, bias: &dw.bias,
                depthwise: true, clamp,
            }.run(&x);
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; channels * g.out_plane()];
                dw.run_planes(isa, &x, 0, &mut out);
                close(&out, &want).map_err(|e| TestCaseError::fail(format!("{isa:?}: {e}")))?;
            }
        }
    }

    /// The detector's depthwise layers (MobileNetV2 features.1..=13 on a 320x240 frame):
    /// channels, input rows, input columns, stride.
    const DETECTOR_DEPTHWISE: [(usize, usize, usize, usize); 13] = [
        (32, 120, 160, 1),
        (96, 120, 160, 2),
        (144, 60, 80, 1),
        (144, 60, 80, 2),
        (192, 30, 40, 1),
        (192, 30, 40, 1),
        (192, 30, 40, 2),
        (384, 15, 20, 1),
        (384, 15, 20, 1),
        (384, 15, 20, 1),
        (576, 15, 20, 1),
        (576, 15, 20, 1),
        (576, 15, 20, 1),
    ];

    /// Not a test: runs the detector's depthwise layers `KESTREL_DW_ITERS` times (default 1),
    /// only those of stride `KESTREL_DW_STRIDE` if set, for counting instructions per
    /// multiply-add under qemu (`scripts/latency_estimate.py count`).
    #[test]
    #[ignore]
    fn count_depthwise_detector() {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
        };
        let iters = env("KESTREL_DW_ITERS").unwrap_or(1);
        let mut layers: Vec<_> = DETECTOR_DEPTHWISE
            .iter()
            .filter(|l| env("KESTREL_DW_STRIDE").is_none_or(|s| s == l.3))
            .map(|&(c, h, w, s)| {
                let g = Geometry::new(h, w, s, [1, 1, 1, 1]).unwrap();
                let dw = Depthwise3x3 {
                    geom: g,
                    channels: c,
                    weights: values(c * 9, 1),
                    bias: values(c, 2),
                    clamp: Clamp { lo: 0.0, hi: 6.0 },
                };
                (
                    dw,
                    values(c * g.in_plane(), 3),
                    vec![0f32; c * g.out_plane()],
                )
            })
            .collect();
        let isa = Isa::detect();
        for _ in 0..iters {
            for (dw, x, out) in &mut layers {
                dw.run_planes(isa, x, 0, out);
            }
        }
        let macs: usize = layers.iter().map(|(_, _, out)| out.len() * 9).sum();
        println!("{isa:?}: {macs} multiply-adds per iteration, {iters} iterations");
    }

    /// Planes can be computed in any split (how threads share the work).
    #[test]
    fn split_runs_equal_one_run() {
        let g = Geometry::new(9, 13, 2, [1, 1, 1, 1]).unwrap();
        let dw = Depthwise3x3 {
            geom: g,
            channels: 5,
            weights: values(45, 1),
            bias: values(5, 2),
            clamp: Clamp { lo: 0.0, hi: 6.0 },
        };
        let x = values(2 * 5 * g.in_plane(), 3);
        for isa in Isa::available() {
            let mut whole = vec![0f32; 10 * g.out_plane()];
            dw.run_planes(isa, &x, 0, &mut whole);
            let mut parts = vec![0f32; 10 * g.out_plane()];
            let (a, b) = parts.split_at_mut(3 * g.out_plane());
            dw.run_planes(isa, &x, 0, a);
            dw.run_planes(isa, &x, 3, b);
            assert_eq!(whole, parts, "{isa:?}");
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    use crate::kernels::testutil::best_ms;

    /// Not a test: `cargo test -p kestrel-edge --lib kernels::conv3x3::timing -- --ignored --nocapture`
    /// prints where a depthwise layer's time goes (padded copy vs compute).
    #[test]
    #[ignore]
    fn where_time_goes() {
        for (c, hw, s) in [
            (32usize, 112usize, 1usize),
            (96, 112, 2),
            (144, 56, 1),
            (144, 56, 2),
            (384, 14, 1),
            (576, 14, 2),
            (960, 7, 1),
        ] {
            let g = Geometry::new(hw, hw, s, [1, 1, 1, 1]).unwrap();
            let x = vec![0.5f32; c * g.in_plane()];
            let dw = Depthwise3x3 {
                geom: g,
                channels: c,
                weights: vec![0.1; c * 9],
                bias: vec![0.0; c],
                clamp: Clamp { lo: 0.0, hi: 6.0 },
            };
            let mut out = vec![0f32; c * g.out_plane()];
            let isa = Isa::detect();
            // The best of nine rounds of 20 runs: the machine is shared.
            let all = best_ms(9, 20, || dw.run_planes(isa, &x, 0, &mut out));
            let mut p = Padded::new();
            let t = std::time::Instant::now();
            for _ in 0..20 {
                for ch in 0..c {
                    p.fill::<f32>(&x[ch * g.in_plane()..(ch + 1) * g.in_plane()], &g);
                }
            }
            let fill = t.elapsed().as_secs_f64() / 20.0 * 1e3;
            let macs = (c * g.out_plane() * 9) as f64;
            println!(
                "c {c} {hw}x{hw} s{s}: {all:.3} ms ({:.2} GMAC/s), fill {fill:.3} ms",
                macs / all / 1e6
            );
        }
        // The stem: 3 -> 32 channels, stride 2, at the classifier's and the detector's sizes.
        for (h, w) in [(224usize, 224usize), (240, 320)] {
            let g = Geometry::new(h, w, 2, [1, 1, 1, 1]).unwrap();
            let d = Dense3x3 {
                geom: g,
                inputs: 3,
                outputs: 32,
                weights: vec![0.1; 32 * 27],
                bias: vec![0.0; 32],
                clamp: Clamp { lo: 0.0, hi: 6.0 },
                int8: None,
            };
            let x = vec![0.5f32; 3 * g.in_plane()];
            let mut out = vec![0f32; 32 * g.out_plane()];
            let isa = Isa::detect();
            let best = best_ms(9, 10, || d.run_channels(isa, &x, 0, &mut out));
            let pad = best_ms(9, 10, || {
                std::hint::black_box(d.pad(isa, &x));
            });
            let macs = (32 * 27 * g.out_plane()) as f64;
            println!(
                "stem {h}x{w}: {best:.3} ms ({:.2} GMAC/s), of which padding {pad:.3} ms",
                macs / best / 1e6
            );
        }
    }
}
