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
    /// Lane-wise clamp to `[lo, hi]` (max first, then min, as tract's fused clip does).
    unsafe fn clamp(self, lo: Self, hi: Self) -> Self;
    /// Splits `pairs` pairs from `src` into their first (`firsts[k] = src[2k]`) and second
    /// (`seconds[k] = src[2k + 1]`) values: the even and odd columns a stride-2 kernel reads.
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
    unsafe fn clamp(self, lo: Self, hi: Self) -> Self {
        self.max(lo).min(hi)
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
        unsafe fn store_first(self, p: *mut f32, n: usize) {
            // Lane i is stored where the mask's lane i is all ones: MASKS[8 - n..][..8].
            const MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
            unsafe {
                let mask = _mm256_loadu_si256(MASKS.as_ptr().add(8 - n) as *const __m256i);
                _mm256_maskstore_ps(p, mask, self.0)
            }
        }
        #[inline(always)]
        unsafe fn clamp(self, lo: Self, hi: Self) -> Self {
            unsafe { Avx(_mm256_min_ps(_mm256_max_ps(self.0, lo.0), hi.0)) }
        }
        #[inline(always)]
        unsafe fn deinterleave(src: *const f32, pairs: usize, firsts: *mut f32, seconds: *mut f32) {
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
                for k in k..pairs {
                    *firsts.add(k) = *src.add(2 * k);
                    *seconds.add(k) = *src.add(2 * k + 1);
                }
            }
        }
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
        unsafe fn clamp(self, lo: Self, hi: Self) -> Self {
            unsafe { Neon(vminq_f32(vmaxq_f32(self.0, lo.0), hi.0)) }
        }
        #[inline(always)]
        unsafe fn deinterleave(src: *const f32, pairs: usize, firsts: *mut f32, seconds: *mut f32) {
            unsafe {
                let mut k = 0;
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
