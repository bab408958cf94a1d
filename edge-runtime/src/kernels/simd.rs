//! The vector instructions Kestrel's kernels are written against: one small trait with an
//! implementation per instruction set (AVX2+FMA on x86-64, NEON on aarch64, plain `f32` anywhere),
//! and the choice among them made once at run time.

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Scalar Rust: every machine, and the reference the SIMD paths are tested against.
    Portable,
    /// x86-64 with AVX2 and FMA (8 lanes).
    Avx2Fma,
    /// aarch64 Advanced SIMD (4 lanes); every aarch64 board has it.
    Neon,
}

impl Isa {
    /// The best instruction set this CPU has. `KESTREL_KERNELS=portable` forces the scalar path
    /// (for comparisons and to rule the SIMD code out when something looks wrong).
    pub fn detect() -> Isa {
        if std::env::var("KESTREL_KERNELS").is_ok_and(|v| v == "portable") {
            return Isa::Portable;
        }
        Self::best()
    }

    fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Isa::Neon;
        }
        Isa::Portable
    }

    /// Every instruction set this CPU can run, the portable one first (tests run each).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        let best = Self::best();
        if best != Isa::Portable {
            v.push(best);
        }
        v
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            // The 1x1 kernel's tiles use AVX-512 where the CPU has it (see conv1x1.rs).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma if has_avx512() => "avx2+fma, avx-512 1x1",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Neon => "neon",
        }
    }
}

/// A vector of `N` f32 lanes. Every method is `unsafe` because the implementations are only
/// valid on a CPU with their instruction set, and `load`/`store` take raw pointers to `N` values.
pub(crate) trait Lanes: Copy {
    /// Lanes per vector.
    const N: usize;
    /// A 3x3 filter's nine taps as registers, in the form [`Lanes::mul_add_tap`] reads.
    type Taps: Copy;
    /// The taps of `k` (row-major).
    unsafe fn taps(k: &[f32; 9]) -> Self::Taps;
    /// `self + a * k[t]`, `t` a constant once inlined.
    unsafe fn mul_add_tap(self, a: Self, taps: &Self::Taps, t: usize) -> Self;
    /// Every lane set to `v`.
    unsafe fn splat(v: f32) -> Self;
    /// `N` values from `p` (no alignment needed).
    unsafe fn load(p: *const f32) -> Self;
    /// Writes the `N` lanes to `p`.
    unsafe fn store(self, p: *mut f32);
    /// `self + a * b`.
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    /// `self + a`.
    unsafe fn add(self, a: Self) -> Self;
    /// `self * a`, rounded once (no fused addition).
    unsafe fn mul(self, a: Self) -> Self;
    /// Writes the first `n` lanes (`n < N`) to `p`.
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        unsafe {
            let mut tmp = [0f32; 16];
            self.store(tmp.as_mut_ptr());
            for (i, v) in tmp.iter().enumerate().take(n) {
                *p.add(i) = *v;
            }
        }
    }
    /// The first `n` values from `p` (`n <= N`), the other lanes zero; reads nothing past them.
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        unsafe {
            let mut tmp = [0f32; 16];
            for (i, v) in tmp.iter_mut().enumerate().take(n) {
                *v = *p.add(i);
            }
            Self::load(tmp.as_ptr())
        }
    }
    /// Copies `n` values from `src` to `dst` a vector at a time (rows too short for a `memcpy`
    /// call to pay), storing zeros after them up to the next multiple of `N`.
    #[inline(always)]
    unsafe fn copy_zero_tail(src: *const f32, dst: *mut f32, n: usize) {
        unsafe {
            let mut i = 0;
            while i + 4 * Self::N <= n {
                let v: [Self; 4] = std::array::from_fn(|j| Self::load(src.add(i + j * Self::N)));
                for (j, v) in v.iter().enumerate() {
                    v.store(dst.add(i + j * Self::N));
                }
                i += 4 * Self::N;
            }
            while i + Self::N <= n {
                Self::load(src.add(i)).store(dst.add(i));
                i += Self::N;
            }
            if i < n {
                Self::load_first(src.add(i), n - i).store(dst.add(i));
            }
        }
    }
    /// The lanes moved up one with a zero in the first, `[0, a0, .., a(N-2)]`: a row's left
    /// zero border made in a register.
    #[inline(always)]
    unsafe fn zero_first(self) -> Self {
        unsafe {
            let mut tmp = [0f32; 17];
            self.store(tmp[1..].as_mut_ptr());
            Self::load(tmp.as_ptr())
        }
    }
    /// The lanes moved down one with a zero in the last, `[a1, .., a(N-1), 0]`: a row's right
    /// zero border made in a register.
    #[inline(always)]
    unsafe fn zero_last(self) -> Self {
        unsafe {
            let mut tmp = [0f32; 17];
            self.store(tmp.as_mut_ptr());
            Self::load(tmp[1..].as_ptr())
        }
    }
    /// The lanes moved up one with `prev`'s last lane in the first, `[p(N-1), a0, .., a(N-2)]`:
    /// the column left of a vector's first, from the vector before it.
    #[inline(always)]
    unsafe fn shift_in(self, prev: Self) -> Self {
        unsafe {
            let mut tmp = [0f32; 32];
            prev.store(tmp.as_mut_ptr());
            self.store(tmp[Self::N..].as_mut_ptr());
            Self::load(tmp[Self::N - 1..].as_ptr())
        }
    }
    /// `2N` values from `p` split into their even and odd positions, `(p[2i], p[2i + 1])`: a
    /// stride-2 row's taps read in place.
    #[inline(always)]
    unsafe fn load2(p: *const f32) -> (Self, Self) {
        unsafe {
            let (mut evens, mut odds) = ([0f32; 16], [0f32; 16]);
            for (i, (e, o)) in evens.iter_mut().zip(&mut odds).take(Self::N).enumerate() {
                *e = *p.add(2 * i);
                *o = *p.add(2 * i + 1);
            }
            (Self::load(evens.as_ptr()), Self::load(odds.as_ptr()))
        }
    }
    /// `4N` values from `p` split by their position modulo 4, `[p[4i], p[4i + 1], p[4i + 2],
    /// p[4i + 3]]`: the taps of two interleaved stride-2 output vectors read in place.
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> [Self; 4] {
        unsafe {
            let mut tmp = [[0f32; 16]; 4];
            for i in 0..Self::N {
                for (j, t) in tmp.iter_mut().enumerate() {
                    t[i] = *p.add(4 * i + j);
                }
            }
            tmp.map(|t| Self::load(t.as_ptr()))
        }
    }
    /// Writes `a` and `b` interleaved, `a0, b0, a1, b1, ..`, to `2N` values at `p`.
    #[inline(always)]
    unsafe fn store2(a: Self, b: Self, p: *mut f32) {
        unsafe {
            let (mut ta, mut tb) = ([0f32; 16], [0f32; 16]);
            a.store(ta.as_mut_ptr());
            b.store(tb.as_mut_ptr());
            for (i, (a, b)) in ta.iter().zip(&tb).take(Self::N).enumerate() {
                *p.add(2 * i) = *a;
                *p.add(2 * i + 1) = *b;
            }
        }
    }
    /// Lane-wise clamp to `[lo, hi]` (max first, then min, as tract's fused clip does).
    unsafe fn clamp(self, lo: Self, hi: Self) -> Self;
    /// Splits `pairs` pairs from `src` into their first (`firsts[k] = src[2k]`) and second
    /// (`seconds[k] = src[2k + 1]`) values: the even and odd columns a stride-2 kernel reads.
    /// Reads nothing past the pairs, but may store zeros after them in both outputs, up to the
    /// next multiple of `N`.
    #[inline(always)]
    unsafe fn deinterleave(src: *const f32, pairs: usize, firsts: *mut f32, seconds: *mut f32) {
        unsafe {
            for k in 0..pairs {
                *firsts.add(k) = *src.add(2 * k);
                *seconds.add(k) = *src.add(2 * k + 1);
            }
        }
    }
}

impl Lanes for f32 {
    const N: usize = 1;
    type Taps = [f32; 9];
    #[inline(always)]
    unsafe fn taps(k: &[f32; 9]) -> Self::Taps {
        *k
    }
    #[inline(always)]
    unsafe fn mul_add_tap(self, a: Self, taps: &Self::Taps, t: usize) -> Self {
        self + a * taps[t]
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        v
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { *p = self }
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        self + a * b
    }
    #[inline(always)]
    unsafe fn add(self, a: Self) -> Self {
        self + a
    }
    #[inline(always)]
    unsafe fn mul(self, a: Self) -> Self {
        self * a
    }
    #[inline(always)]
    unsafe fn clamp(self, lo: Self, hi: Self) -> Self {
        self.max(lo).min(hi)
    }
    #[inline(always)]
    unsafe fn shift_in(self, prev: Self) -> Self {
        prev
    }
    #[inline(always)]
    unsafe fn load2(p: *const f32) -> (Self, Self) {
        unsafe { (*p, *p.add(1)) }
    }
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> [Self; 4] {
        unsafe { [*p, *p.add(1), *p.add(2), *p.add(3)] }
    }
    #[inline(always)]
    unsafe fn store2(a: Self, b: Self, p: *mut f32) {
        unsafe {
            *p = a;
            *p.add(1) = b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Eight lanes in an AVX register.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx(pub __m256);

    impl super::Lanes for Avx {
        const N: usize = 8;
        /// Nine broadcast registers (x86 has no multiply-add by lane).
        type Taps = [Avx; 9];
        #[inline(always)]
        unsafe fn taps(k: &[f32; 9]) -> Self::Taps {
            unsafe { std::array::from_fn(|i| Avx(_mm256_set1_ps(k[i]))) }
        }
        #[inline(always)]
        unsafe fn mul_add_tap(self, a: Self, taps: &Self::Taps, t: usize) -> Self {
            unsafe { self.mul_add(a, taps[t]) }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            unsafe { Avx(_mm256_set1_ps(v)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Avx(_mm256_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            unsafe { Avx(_mm256_fmadd_ps(a.0, b.0, self.0)) }
        }
        #[inline(always)]
        unsafe fn add(self, a: Self) -> Self {
            unsafe { Avx(_mm256_add_ps(self.0, a.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, a: Self) -> Self {
            unsafe { Avx(_mm256_mul_ps(self.0, a.0)) }
        }
        #[inline(always)]
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            unsafe { _mm256_maskstore_ps(p, first(n), self.0) }
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> Self {
            unsafe { Avx(_mm256_maskload_ps(p, first(n))) }
        }
        #[inline(always)]
        unsafe fn clamp(self, lo: Self, hi: Self) -> Self {
            unsafe { Avx(_mm256_min_ps(_mm256_max_ps(self.0, lo.0), hi.0)) }
        }
        #[inline(always)]
        unsafe fn deinterleave(src: *const f32, pairs: usize, firsts: *mut f32, seconds: *mut f32) {
            unsafe { deinterleave_avx2(src, pairs, firsts, seconds) }
        }
    }

    /// [`super::Lanes::deinterleave`] for AVX2: its own function with the feature enabled, so
    /// the shuffles are inlined (called from the trait method, LLVM kept them as calls, which
    /// made the stem's padding as slow as its convolution).
    #[target_feature(enable = "avx2")]
    unsafe fn deinterleave_avx2(
        src: *const f32,
        pairs: usize,
        firsts: *mut f32,
        seconds: *mut f32,
    ) {
        unsafe {
            let mut k = 0;
            while k + 8 <= pairs {
                let a = _mm256_loadu_ps(src.add(2 * k));
                let b = _mm256_loadu_ps(src.add(2 * k + 8));
                // [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit lanes put in order.
                let f = _mm256_shuffle_ps::<0x88>(a, b);
                let s = _mm256_shuffle_ps::<0xDD>(a, b);
                let f = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(f)));
                let s = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(s)));
                _mm256_storeu_ps(firsts.add(k), f);
                _mm256_storeu_ps(seconds.add(k), s);
                k += 8;
            }
            if k < pairs {
                // The last pairs with masked loads; the lanes past them are stored as zeros,
                // which the padded rows have room for.
                let n = 2 * (pairs - k);
                let a = _mm256_maskload_ps(src.add(2 * k), first(n.min(8)));
                let b = _mm256_maskload_ps(src.add(2 * k + 8), first(n.saturating_sub(8)));
                let f = _mm256_shuffle_ps::<0x88>(a, b);
                let s = _mm256_shuffle_ps::<0xDD>(a, b);
                let f = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(f)));
                let s = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(s)));
                _mm256_storeu_ps(firsts.add(k), f);
                _mm256_storeu_ps(seconds.add(k), s);
            }
        }
    }

    /// A mask of the first `n` lanes (`n <= 8`) for masked loads and stores.
    #[inline(always)]
    unsafe fn first(n: usize) -> __m256i {
        // Lane i is set where the mask's lane i is all ones: MASKS[8 - n..][..8].
        const MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
        unsafe { _mm256_loadu_si256(MASKS.as_ptr().add(8 - n) as *const __m256i) }
    }
}
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::Avx;

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    /// Four lanes in a NEON register.
    #[derive(Clone, Copy)]
    pub(crate) struct Neon(pub float32x4_t);

    impl super::Lanes for Neon {
        const N: usize = 4;
        /// Three registers, read by lane (`fmla v.4s, v.4s, v.s[i]`): six registers fewer than
        /// nine broadcasts, which keeps a depthwise step's accumulators from spilling.
        type Taps = [float32x4_t; 3];
        #[inline(always)]
        unsafe fn taps(k: &[f32; 9]) -> Self::Taps {
            unsafe {
                let last = [k[8], 0.0, 0.0, 0.0];
                [
                    vld1q_f32(k.as_ptr()),
                    vld1q_f32(k[4..].as_ptr()),
                    vld1q_f32(last.as_ptr()),
                ]
            }
        }
        #[inline(always)]
        unsafe fn mul_add_tap(self, a: Self, taps: &Self::Taps, t: usize) -> Self {
            unsafe {
                let (acc, k) = (self.0, &taps);
                Neon(match t {
                    0 => vfmaq_laneq_f32::<0>(acc, a.0, k[0]),
                    1 => vfmaq_laneq_f32::<1>(acc, a.0, k[0]),
                    2 => vfmaq_laneq_f32::<2>(acc, a.0, k[0]),
                    3 => vfmaq_laneq_f32::<3>(acc, a.0, k[0]),
                    4 => vfmaq_laneq_f32::<0>(acc, a.0, k[1]),
                    5 => vfmaq_laneq_f32::<1>(acc, a.0, k[1]),
                    6 => vfmaq_laneq_f32::<2>(acc, a.0, k[1]),
                    7 => vfmaq_laneq_f32::<3>(acc, a.0, k[1]),
                    _ => vfmaq_laneq_f32::<0>(acc, a.0, k[2]),
                })
            }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            unsafe { Neon(vdupq_n_f32(v)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Neon(vld1q_f32(p)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { vst1q_f32(p, self.0) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            unsafe { Neon(vfmaq_f32(self.0, a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn add(self, a: Self) -> Self {
            unsafe { Neon(vaddq_f32(self.0, a.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, a: Self) -> Self {
            unsafe { Neon(vmulq_f32(self.0, a.0)) }
        }
        #[inline(always)]
        unsafe fn clamp(self, lo: Self, hi: Self) -> Self {
            unsafe { Neon(vminq_f32(vmaxq_f32(self.0, lo.0), hi.0)) }
        }
        #[inline(always)]
        unsafe fn zero_first(self) -> Self {
            unsafe { Neon(vextq_f32::<3>(vdupq_n_f32(0.0), self.0)) }
        }
        #[inline(always)]
        unsafe fn zero_last(self) -> Self {
            unsafe { Neon(vextq_f32::<1>(self.0, vdupq_n_f32(0.0))) }
        }
        #[inline(always)]
        unsafe fn shift_in(self, prev: Self) -> Self {
            unsafe { Neon(vextq_f32::<3>(prev.0, self.0)) }
        }
        #[inline(always)]
        unsafe fn load2(p: *const f32) -> (Self, Self) {
            unsafe {
                let v = vld2q_f32(p);
                (Neon(v.0), Neon(v.1))
            }
        }
        #[inline(always)]
        unsafe fn load4(p: *const f32) -> [Self; 4] {
            unsafe {
                let v = vld4q_f32(p);
                [Neon(v.0), Neon(v.1), Neon(v.2), Neon(v.3)]
            }
        }
        #[inline(always)]
        unsafe fn store2(a: Self, b: Self, p: *mut f32) {
            unsafe { vst2q_f32(p, float32x4x2_t(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn deinterleave(src: *const f32, pairs: usize, firsts: *mut f32, seconds: *mut f32) {
            unsafe {
                let mut k = 0;
                while k + 8 <= pairs {
                    let a = vld2q_f32(src.add(2 * k));
                    let b = vld2q_f32(src.add(2 * k + 8));
                    vst1q_f32(firsts.add(k), a.0);
                    vst1q_f32(firsts.add(k + 4), b.0);
                    vst1q_f32(seconds.add(k), a.1);
                    vst1q_f32(seconds.add(k + 4), b.1);
                    k += 8;
                }
                while k + 4 <= pairs {
                    let v = vld2q_f32(src.add(2 * k));
                    vst1q_f32(firsts.add(k), v.0);
                    vst1q_f32(seconds.add(k), v.1);
                    k += 4;
                }
                for k in k..pairs {
                    *firsts.add(k) = *src.add(2 * k);
                    *seconds.add(k) = *src.add(2 * k + 1);
                }
            }
        }
    }
}
#[cfg(target_arch = "aarch64")]
pub(crate) use arm::Neon;

#[cfg(target_arch = "x86_64")]
mod x86_512 {
    use std::arch::x86_64::*;

    /// Sixteen lanes in an AVX-512 register (AVX-512F; 32 registers).
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512(pub __m512);

    impl super::Lanes for Avx512 {
        const N: usize = 16;
        type Taps = [Avx512; 9];
        #[inline(always)]
        unsafe fn taps(k: &[f32; 9]) -> Self::Taps {
            unsafe { std::array::from_fn(|i| Avx512(_mm512_set1_ps(k[i]))) }
        }
        #[inline(always)]
        unsafe fn mul_add_tap(self, a: Self, taps: &Self::Taps, t: usize) -> Self {
            unsafe { self.mul_add(a, taps[t]) }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            unsafe { Avx512(_mm512_set1_ps(v)) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Avx512(_mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn mul_add(self, a: Self, b: Self) -> Self {
            unsafe { Avx512(_mm512_fmadd_ps(a.0, b.0, self.0)) }
        }
        #[inline(always)]
        unsafe fn add(self, a: Self) -> Self {
            unsafe { Avx512(_mm512_add_ps(self.0, a.0)) }
        }
        #[inline(always)]
        unsafe fn mul(self, a: Self) -> Self {
            unsafe { Avx512(_mm512_mul_ps(self.0, a.0)) }
        }
        #[inline(always)]
        unsafe fn clamp(self, lo: Self, hi: Self) -> Self {
            unsafe { Avx512(_mm512_min_ps(_mm512_max_ps(self.0, lo.0), hi.0)) }
        }
    }

    /// Whether this CPU runs AVX-512F.
    pub(crate) fn has_avx512() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
    }
}
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_512::{Avx512, has_avx512};
