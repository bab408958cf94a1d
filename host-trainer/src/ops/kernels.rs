//! Plain-slice CPU kernels for MobileNetV2's two convolution kinds, forward and backward, on
//! contiguous NCHW `f32` data. Backend-free so they can be tested and reused directly.
//!
//! Pointwise (1x1) convolutions are matrix products on the `gemm` crate (the kernels burn-flex
//! uses); depthwise 3x3 convolutions are computed directly, plane by plane, as a few contiguous
//! multiply-adds over a zero-padded copy of the plane (vectorisable, no im2col, no per-group conv).
//! Work is split over rayon's current pool: one thread runs everything in order.

use rayon::prelude::*;

/// Shape of a pointwise convolution: `x [n, cin, p] -> y [n, cout, p]` (`p` = height x width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointwiseShape {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Pixels per plane.
    pub p: usize,
}

/// Shape of a depthwise 3x3 convolution (padding 1): `x [n, c, h, w] -> y [n, c, ho, wo]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseShape {
    /// Batch size.
    pub n: usize,
    /// Channels (one filter each).
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Stride (1 or 2 in MobileNetV2; any positive stride works).
    pub stride: usize,
}

impl DepthwiseShape {
    /// Output height: `(h + 2 - 3) / stride + 1`.
    pub fn ho(&self) -> usize {
        (self.h - 1) / self.stride + 1
    }

    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w - 1) / self.stride + 1
    }
}

/// Gradients of a convolution with bias.
#[derive(Debug, Clone)]
pub struct ConvGrads {
    /// Gradient of the input (None when it was not asked for).
    pub x: Option<Vec<f32>>,
    /// Gradient of the weight, laid out like the weight.
    pub weight: Vec<f32>,
    /// Gradient of the bias.
    pub bias: Vec<f32>,
}

/// gemm's threading for one big product: rayon's pool when it has more than one thread.
fn gemm_parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) . rhs (k x n)`, each matrix given by pointer, row stride and
/// column stride (in elements).
///
/// # Safety
/// Every index reached through the strides must lie inside the matrices' buffers, and `dst`
/// must not overlap the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    lhs: (*const f32, isize, isize),
    rhs: (*const f32, isize, isize),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.2,
            dst.1,
            accumulate,
            lhs.0,
            lhs.2,
            lhs.1,
            rhs.0,
            rhs.2,
            rhs.1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Whether this CPU has AVX2 and FMA (checked once by std, then a cached load).
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Dot product of the common length of `a` and `b`. The workspace builds for baseline x86-64,
/// where such loops stay scalar or 4-wide, so the hot loops use AVX2 + FMA when the CPU has them.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA; both slices hold at least n values.
        return unsafe { x86::dot(&a[..n], &b[..n]) };
    }
    a[..n].iter().zip(&b[..n]).map(|(x, y)| x * y).sum()
}

/// Sum of `a` (vectorised like [`dot`]).
fn sum(a: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { x86::sum(a) };
    }
    a.iter().sum()
}

/// `dst += alpha * src` over their common length (vectorised like [`dot`]).
fn axpy(dst: &mut [f32], alpha: f32, src: &[f32]) {
    let n = dst.len().min(src.len());
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA; both slices hold at least n values.
        unsafe { x86::axpy(&mut dst[..n], alpha, &src[..n]) };
        return;
    }
    for (d, x) in dst[..n].iter_mut().zip(&src[..n]) {
        *d += alpha * x;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Eight floats at any alignment. Loads and stores go through this packed struct rather than
    /// `_mm256_loadu_ps`, which is a `copy_nonoverlapping` whose overlap check stays in a build
    /// with debug assertions (the workspace's dev profile) and costs more than the arithmetic.
    #[derive(Clone, Copy)]
    #[repr(C, packed)]
    struct Unaligned(__m256);

    /// # Safety
    /// `p` must point to eight readable floats.
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: forwarded; a packed struct has alignment 1.
        unsafe { (*(p as *const Unaligned)).0 }
    }

    /// # Safety
    /// `p` must point to eight writable floats.
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: forwarded; a packed struct has alignment 1.
        unsafe { (*(p as *mut Unaligned)).0 = v }
    }

    /// Horizontal sum of eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// AVX2 and FMA must be available; `a` and `b` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY: every load reads 8 values at i < n - 7 (or 16 at i < n - 15).
        unsafe {
            while i + 16 <= n {
                let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
                acc0 = _mm256_fmadd_ps(load(pa), load(pb), acc0);
                acc1 = _mm256_fmadd_ps(load(pa.add(8)), load(pb.add(8)), acc1);
                i += 16;
            }
            if i + 8 <= n {
                let (pa, pb) = (a.as_ptr().add(i), b.as_ptr().add(i));
                acc0 = _mm256_fmadd_ps(load(pa), load(pb), acc0);
                i += 8;
            }
        }
        let mut s = hsum(_mm256_add_ps(acc0, acc1));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn clamp6(v: &mut [f32]) {
        let n = v.len();
        let (lo, hi) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
        let mut i = 0;
        // SAFETY: every load and store touches 8 values at i <= n - 8.
        unsafe {
            while i + 8 <= n {
                let p = v.as_mut_ptr().add(i);
                store(p, _mm256_min_ps(_mm256_max_ps(load(p), lo), hi));
                i += 8;
            }
        }
        for x in &mut v[i..] {
            *x = x.clamp(0.0, 6.0);
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; the three slices have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn relu6_mask(dst: &mut [f32], gy: &[f32], y: &[f32]) {
        let n = dst.len();
        let (lo, hi) = (_mm256_setzero_ps(), _mm256_set1_ps(6.0));
        let mut i = 0;
        // SAFETY: every load and store touches 8 values at i <= n - 8.
        unsafe {
            while i + 8 <= n {
                let yv = load(y.as_ptr().add(i));
                let pass = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(yv, lo),
                    _mm256_cmp_ps::<_CMP_LT_OQ>(yv, hi),
                );
                store(
                    dst.as_mut_ptr().add(i),
                    _mm256_and_ps(pass, load(gy.as_ptr().add(i))),
                );
                i += 8;
            }
        }
        for j in i..n {
            dst[j] = if super::relu6_pass(y[j]) { gy[j] } else { 0.0 };
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn sum(a: &[f32]) -> f32 {
        let n = a.len();
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: every load reads 8 values at i <= n - 8.
        unsafe {
            while i + 8 <= n {
                acc = _mm256_add_ps(acc, load(a.as_ptr().add(i)));
                i += 8;
            }
        }
        hsum(acc) + a[i..].iter().sum::<f32>()
    }

    /// # Safety
    /// AVX2 and FMA must be available; `dst` and `src` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy(dst: &mut [f32], alpha: f32, src: &[f32]) {
        let n = dst.len();
        let va = _mm256_set1_ps(alpha);
        let mut i = 0;
        // SAFETY: every load and store touches 8 values at i <= n - 8.
        unsafe {
            while i + 8 <= n {
                let pd = dst.as_mut_ptr().add(i);
                let v = _mm256_fmadd_ps(va, load(src.as_ptr().add(i)), load(pd));
                store(pd, v);
                i += 8;
            }
        }
        while i < n {
            dst[i] += alpha * src[i];
            i += 1;
        }
    }
}

fn clamp6(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { x86::clamp6(v) };
        return;
    }
    for x in v {
        *x = x.clamp(0.0, 6.0);
    }
}

/// `dst = gy` where ReLU6 passed (`0 < y < 6`), else 0, over the common length.
fn relu6_mask(dst: &mut [f32], gy: &[f32], y: &[f32]) {
    let n = dst.len().min(gy.len()).min(y.len());
    #[cfg(target_arch = "x86_64")]
    if avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA; all three slices hold n values.
        unsafe { x86::relu6_mask(&mut dst[..n], &gy[..n], &y[..n]) };
        return;
    }
    for ((d, &g), &v) in dst[..n].iter_mut().zip(&gy[..n]).zip(&y[..n]) {
        *d = if relu6_pass(v) { g } else { 0.0 };
    }
}

/// ReLU6's gradient mask from the layer's output: the gradient passes where `0 < y < 6`.
fn relu6_pass(y: f32) -> bool {
    y > 0.0 && y < 6.0
}

/// `y[n] = act(weight . x[n] + bias)`: `x [n, cin, p]`, `weight [cout, cin]`, `bias [cout]`.
pub fn pointwise_forward(
    s: PointwiseShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    relu6: bool,
) -> Vec<f32> {
    assert_eq!(x.len(), s.n * s.cin * s.p, "pointwise input size");
    assert_eq!(weight.len(), s.cout * s.cin, "pointwise weight size");
    assert_eq!(bias.len(), s.cout, "pointwise bias size");
    let mut y = vec![0f32; s.n * s.cout * s.p];
    if y.is_empty() {
        return y;
    }
    let p = s.p;
    y.par_chunks_mut(s.cout * p)
        .zip(x.par_chunks(s.cin * p))
        .for_each(|(yn, xn)| {
            for (row, b) in yn.chunks_mut(p).zip(bias) {
                row.fill(*b);
            }
            // SAFETY: yn is cout x p (row stride p), weight cout x cin (row stride cin), xn
            // cin x p (row stride p); all contiguous and disjoint.
            unsafe {
                matmul(
                    (s.cout, p, s.cin),
                    (yn.as_mut_ptr(), p as isize, 1),
                    true,
                    (weight.as_ptr(), s.cin as isize, 1),
                    (xn.as_ptr(), p as isize, 1),
                    gemm::Parallelism::None,
                );
            }
            if relu6 {
                clamp6(yn);
            }
        });
    y
}

/// Gradients of [`pointwise_forward`] given its input `x`, weight, output `y` and the output's
/// gradient `gy`. The input's gradient is computed only when `want_x`.
pub fn pointwise_backward(
    s: PointwiseShape,
    x: &[f32],
    weight: &[f32],
    y: &[f32],
    gy: &[f32],
    relu6: bool,
    want_x: bool,
) -> ConvGrads {
    let PointwiseShape { n, cin, cout, p } = s;
    assert_eq!(x.len(), n * cin * p, "pointwise input size");
    assert_eq!(y.len(), n * cout * p, "pointwise output size");
    assert_eq!(gy.len(), y.len(), "pointwise output gradient size");
    let np = n * p;
    with_scratch(cout * np, cin * np, |g, xt| {
        // The masked output gradient, channel-major [cout, n * p], so that the weight gradient is a
        // single product over all pixels of the batch.
        g.par_chunks_mut(np.max(1))
            .enumerate()
            .for_each(|(co, gc)| {
                for b in 0..n {
                    let src = (b * cout + co) * p;
                    let dst = &mut gc[b * p..(b + 1) * p];
                    if relu6 {
                        relu6_mask(dst, &gy[src..src + p], &y[src..src + p]);
                    } else {
                        dst.copy_from_slice(&gy[src..src + p]);
                    }
                }
            });
        let bias: Vec<f32> = g.par_chunks(np.max(1)).map(sum).collect();
        // x channel-major [cin, n * p].
        xt.par_chunks_mut(np.max(1))
            .enumerate()
            .for_each(|(ci, xc)| {
                for b in 0..n {
                    let src = (b * cin + ci) * p;
                    xc[b * p..(b + 1) * p].copy_from_slice(&x[src..src + p]);
                }
            });
        let mut gw = vec![0f32; cout * cin];
        if np > 0 && !gw.is_empty() {
            // SAFETY: g is cout x np (row stride np); xt^T is np x cin (row stride 1, column stride
            // np); gw is cout x cin; all disjoint.
            unsafe {
                matmul(
                    (cout, cin, np),
                    (gw.as_mut_ptr(), cin as isize, 1),
                    false,
                    (g.as_ptr(), np as isize, 1),
                    (xt.as_ptr(), 1, np as isize),
                    gemm_parallelism(),
                );
            }
        }
        let gx = want_x.then(|| {
            let mut gx = vec![0f32; n * cin * p];
            if !gx.is_empty() && cout > 0 {
                gx.par_chunks_mut(cin * p).enumerate().for_each(|(b, gxn)| {
                    // SAFETY: weight^T is cin x cout (row stride 1, column stride cin); the
                    // batch's slice of g is cout x p (row stride np, starting at b * p); gxn is
                    // cin x p.
                    unsafe {
                        matmul(
                            (cin, p, cout),
                            (gxn.as_mut_ptr(), p as isize, 1),
                            false,
                            (weight.as_ptr(), 1, cin as isize),
                            (g.as_ptr().add(b * p), np as isize, 1),
                            gemm::Parallelism::None,
                        );
                    }
                });
            }
            gx
        });
        ConvGrads {
            x: gx,
            weight: gw,
            bias,
        }
    })
}

thread_local! {
    /// Per-thread temporaries of [`pointwise_backward`], kept between calls: allocating them
    /// afresh each step costs page faults comparable to the arithmetic.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Run `f` with two scratch buffers of `a` and `b` values (contents unspecified).
fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (va, vb) = &mut *bufs;
            va.resize(va.len().max(a), 0.0);
            vb.resize(vb.len().max(b), 0.0);
            f(&mut va[..a], &mut vb[..b])
        }
        // Re-entered (another op on this thread while the buffers are lent): fresh buffers.
        Err(_) => f(&mut vec![0.0; a], &mut vec![0.0; b]),
    })
}

/// One depthwise plane's geometry: the input zero-padded by one on each side (`hp x wp`), and the
/// stride-1 output grid laid out with the padded row length (`h` rows of `wp`, the last two
/// columns of each row unused), so that each of the nine filter taps is one contiguous
/// multiply-add over the whole plane.
#[derive(Debug, Clone, Copy)]
struct Plane {
    h: usize,
    w: usize,
    wp: usize,
    stride: usize,
    ho: usize,
    wo: usize,
}

impl Plane {
    fn new(s: &DepthwiseShape) -> Self {
        Plane {
            h: s.h,
            w: s.w,
            wp: s.w + 2,
            stride: s.stride,
            ho: s.ho(),
            wo: s.wo(),
        }
    }

    /// Length of the padded input buffer, with two values of slack: the last tap reads two past
    /// the last padded row through the unused columns of the wide grid.
    fn padded_len(&self) -> usize {
        (self.h + 2) * self.wp + 2
    }

    /// Length of the wide stride-1 output grid.
    fn wide_len(&self) -> usize {
        self.h * self.wp
    }

    /// Offset of tap (kh, kw) in the padded buffer relative to a wide output index.
    fn tap(&self, kh: usize, kw: usize) -> usize {
        kh * self.wp + kw
    }

    fn pad_into(&self, src: &[f32], dst: &mut [f32]) {
        dst.fill(0.0);
        for r in 0..self.h {
            let o = (r + 1) * self.wp + 1;
            dst[o..o + self.w].copy_from_slice(&src[r * self.w..(r + 1) * self.w]);
        }
    }

    /// Wide index of output (oh, ow) (its stride-1 position).
    fn wide(&self, oh: usize, ow: usize) -> usize {
        oh * self.stride * self.wp + ow * self.stride
    }
}

/// `y = act(depthwise3x3(x, weight, stride, padding 1) + bias)`: `x [n, c, h, w]`,
/// `weight [c, 9]` (row-major 3x3), `bias [c]`.
pub fn depthwise_forward(
    s: DepthwiseShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    relu6: bool,
) -> Vec<f32> {
    assert!(s.stride > 0 && s.h > 0 && s.w > 0, "depthwise shape {s:?}");
    assert_eq!(x.len(), s.n * s.c * s.h * s.w, "depthwise input size");
    assert_eq!(weight.len(), s.c * 9, "depthwise weight size");
    assert_eq!(bias.len(), s.c, "depthwise bias size");
    let pl = Plane::new(&s);
    let mut y = vec![0f32; s.n * s.c * pl.ho * pl.wo];
    if y.is_empty() {
        return y;
    }
    let wide_len = pl.wide_len();
    y.par_chunks_mut(pl.ho * pl.wo)
        .zip(x.par_chunks(s.h * s.w))
        .enumerate()
        .for_each_init(
            || (vec![0f32; pl.padded_len()], vec![0f32; wide_len]),
            |(padded, acc), (i, (yp, xp))| {
                let c = i % s.c;
                pl.pad_into(xp, padded);
                acc.fill(bias[c]);
                let k = &weight[c * 9..c * 9 + 9];
                for kh in 0..3 {
                    for kw in 0..3 {
                        let t = pl.tap(kh, kw);
                        axpy(acc, k[kh * 3 + kw], &padded[t..t + wide_len]);
                    }
                }
                if pl.stride == 1 {
                    for (oh, row) in yp.chunks_exact_mut(pl.wo).enumerate() {
                        row.copy_from_slice(&acc[oh * pl.wp..oh * pl.wp + pl.wo]);
                    }
                } else {
                    for oh in 0..pl.ho {
                        for ow in 0..pl.wo {
                            yp[oh * pl.wo + ow] = acc[pl.wide(oh, ow)];
                        }
                    }
                }
                if relu6 {
                    clamp6(yp);
                }
            },
        );
    y
}

/// Gradients of [`depthwise_forward`] given its input `x`, weight, output `y` and the output's
/// gradient `gy`. The input's gradient is computed only when `want_x`.
pub fn depthwise_backward(
    s: DepthwiseShape,
    x: &[f32],
    weight: &[f32],
    y: &[f32],
    gy: &[f32],
    relu6: bool,
    want_x: bool,
) -> ConvGrads {
    let pl = Plane::new(&s);
    let (plane_in, plane_out) = (s.h * s.w, pl.ho * pl.wo);
    assert_eq!(x.len(), s.n * s.c * plane_in, "depthwise input size");
    assert_eq!(weight.len(), s.c * 9, "depthwise weight size");
    assert_eq!(y.len(), s.n * s.c * plane_out, "depthwise output size");
    assert_eq!(gy.len(), y.len(), "depthwise output gradient size");
    let planes = s.n * s.c;
    // Per plane: 9 weight-gradient taps and the bias gradient, summed over the batch below.
    let mut partial = vec![0f32; planes * 10];
    let mut gx = vec![0f32; if want_x { planes * plane_in } else { 0 }];
    let wide_len = pl.wide_len();
    let body = |(padded, g, gpad): &mut (Vec<f32>, Vec<f32>, Vec<f32>),
                i: usize,
                part: &mut [f32],
                gxp: Option<&mut [f32]>| {
        let c = i % s.c;
        // The masked output gradient, placed at the stride-1 positions of the wide grid.
        g.fill(0.0);
        let range = i * plane_out..(i + 1) * plane_out;
        let (yp, gyp) = (&y[range.clone()], &gy[range]);
        if pl.stride == 1 {
            for oh in 0..pl.ho {
                let (dst, src) = (oh * pl.wp, oh * pl.wo);
                let (d, g, v) = (&mut g[dst..dst + pl.wo], &gyp[src..src + pl.wo], &yp[src..]);
                if relu6 {
                    relu6_mask(d, g, v);
                } else {
                    d.copy_from_slice(g);
                }
            }
        } else {
            for oh in 0..pl.ho {
                for ow in 0..pl.wo {
                    let j = oh * pl.wo + ow;
                    let pass = !relu6 || relu6_pass(yp[j]);
                    g[pl.wide(oh, ow)] = if pass { gyp[j] } else { 0.0 };
                }
            }
        }
        // The unused columns of the wide grid are zero, so the whole grid sums to the bias's share.
        part[9] = sum(g);
        pl.pad_into(&x[i * plane_in..(i + 1) * plane_in], padded);
        for kh in 0..3 {
            for kw in 0..3 {
                let src = &padded[pl.tap(kh, kw)..pl.tap(kh, kw) + wide_len];
                part[kh * 3 + kw] = dot(g, src);
            }
        }
        if let Some(gxp) = gxp {
            gpad.fill(0.0);
            let k = &weight[c * 9..c * 9 + 9];
            for kh in 0..3 {
                for kw in 0..3 {
                    let t = pl.tap(kh, kw);
                    axpy(&mut gpad[t..t + wide_len], k[kh * 3 + kw], g);
                }
            }
            for r in 0..s.h {
                let o = (r + 1) * pl.wp + 1;
                gxp[r * s.w..(r + 1) * s.w].copy_from_slice(&gpad[o..o + s.w]);
            }
        }
    };
    let init = || {
        (
            vec![0f32; pl.padded_len()],
            vec![0f32; wide_len],
            vec![0f32; pl.padded_len()],
        )
    };
    if want_x {
        partial
            .par_chunks_mut(10)
            .zip(gx.par_chunks_mut(plane_in))
            .enumerate()
            .for_each_init(init, |bufs, (i, (part, gxp))| {
                body(bufs, i, part, Some(gxp))
            });
    } else {
        partial
            .par_chunks_mut(10)
            .enumerate()
            .for_each_init(init, |bufs, (i, part)| body(bufs, i, part, None));
    }
    let mut gw = vec![0f32; s.c * 9];
    let mut gb = vec![0f32; s.c];
    for (i, part) in partial.chunks(10).enumerate() {
        let c = i % s.c;
        for t in 0..9 {
            gw[c * 9 + t] += part[t];
        }
        gb[c] += part[9];
    }
    ConvGrads {
        x: want_x.then_some(gx),
        weight: gw,
        bias: gb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct, loop-by-loop depthwise convolution to check the padded-plane trick against.
    fn naive_depthwise(s: DepthwiseShape, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let (ho, wo) = (s.ho(), s.wo());
        let mut y = vec![0f32; s.n * s.c * ho * wo];
        for i in 0..s.n * s.c {
            let c = i % s.c;
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut acc = b[c];
                    for kh in 0..3 {
                        for kw in 0..3 {
                            let ih = (oh * s.stride + kh) as isize - 1;
                            let iw = (ow * s.stride + kw) as isize - 1;
                            if ih >= 0 && iw >= 0 && (ih as usize) < s.h && (iw as usize) < s.w {
                                acc += w[c * 9 + kh * 3 + kw]
                                    * x[i * s.h * s.w + ih as usize * s.w + iw as usize];
                            }
                        }
                    }
                    y[i * ho * wo + oh * wo + ow] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn depthwise_matches_a_direct_loop_on_odd_sizes_and_strides() {
        for (h, w, stride) in [(5, 7, 1), (5, 7, 2), (1, 1, 1), (4, 3, 2), (6, 6, 3)] {
            let s = DepthwiseShape {
                n: 2,
                c: 3,
                h,
                w,
                stride,
            };
            let x: Vec<f32> = (0..2 * 3 * h * w)
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let wt: Vec<f32> = (0..27).map(|i| (i as f32 * 0.71).cos()).collect();
            let b = [0.1, -0.2, 0.3];
            let got = depthwise_forward(s, &x, &wt, &b, false);
            let want = naive_depthwise(s, &x, &wt, &b);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{h}x{w}/{stride}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn pointwise_is_a_matrix_product_per_image() {
        let s = PointwiseShape {
            n: 2,
            cin: 2,
            cout: 3,
            p: 2,
        };
        // x[0] = [[1, 2], [3, 4]], x[1] = [[-1, 0], [0, 10]]
        let x = [1.0, 2.0, 3.0, 4.0, -1.0, 0.0, 0.0, 10.0];
        let w = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let b = [0.0, 0.5, -1.0];
        let y = pointwise_forward(s, &x, &w, &b, false);
        assert_eq!(
            y,
            vec![
                1.0, 2.0, 3.5, 4.5, 3.0, 5.0, -1.0, 0.0, 0.5, 10.5, -2.0, 9.0
            ]
        );
        let y6 = pointwise_forward(s, &x, &w, &b, true);
        assert_eq!(
            y6,
            vec![1.0, 2.0, 3.5, 4.5, 3.0, 5.0, 0.0, 0.0, 0.5, 6.0, 0.0, 6.0]
        );
    }
}
