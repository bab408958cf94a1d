//! Kestrel's own kernels for what tract runs slowly on MobileNetV2-like graphs, plugged into
//! tract's model as operators of Kestrel's (tract stays the engine; the bundle format does not
//! change): the depthwise 3x3 convolutions, the dense stem convolution and the pointwise (1x1)
//! convolutions, with bias, ReLU6 and residual additions fused, in AVX2+FMA (AVX-512 for the 1x1
//! tiles where the CPU has it), NEON or portable code chosen at run time.

pub mod conv1x1;
pub mod conv3x3;
pub mod ops;
pub mod pass;
pub mod qconv1x1;
pub mod qconv3x3;
pub mod qdepthwise;
pub mod simd;

pub use pass::{PassReport, install};

/// Scratch buffers of the int8 ops, kept per thread across layers and frames: a fresh buffer of
/// a few MB per layer and frame cost page faults and zeroing (about 0.3 ms of a 32 -> 16
/// convolution at 120x160 on Zen 2). Every op writes its buffer whole before reading it.
pub(crate) mod scratch {
    use std::cell::RefCell;

    /// The element types with a pool.
    pub(crate) trait Pooled: Copy + Default + 'static {
        fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R;
    }

    macro_rules! pooled {
        ($t:ty) => {
            impl Pooled for $t {
                fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> R {
                    thread_local! {
                        static POOL: RefCell<Vec<Vec<$t>>> = const { RefCell::new(Vec::new()) };
                    }
                    POOL.with_borrow_mut(f)
                }
            }
        };
    }
    pooled!(u8);
    pooled!(f32);

    /// A buffer of `len` elements (contents unspecified): the largest kept one, else new.
    pub(crate) fn take<T: Pooled>(len: usize) -> Vec<T> {
        let mut v = T::with_pool(|pool| pool.pop()).unwrap_or_default();
        v.resize(len, T::default());
        v
    }

    /// Keeps `v` for the next [`take`] on this thread.
    pub(crate) fn give<T: Pooled>(v: Vec<T>) {
        T::with_pool(|pool| {
            pool.push(v);
            pool.sort_by_key(|v| v.capacity());
        });
    }
}

/// What the kernels' tests share.
#[cfg(test)]
pub(crate) mod testutil {
    /// `n` pseudo-random values in [-2, 2), the same for the same `seed`.
    pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
        let step = |s: u64| {
            s.wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
        };
        let mut s = step(seed);
        (0..n)
            .map(|_| {
                s = step(s);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// MobileNetV2's 1x1 convolutions at 224x224: (inputs, outputs, plane side), for the
    /// pointwise timing tests.
    pub(crate) const POINTWISE_SHAPES: [(usize, usize, usize); 14] = [
        (16, 96, 112),
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
    ];

    /// Milliseconds per call of `f`: the best of `rounds` rounds of `calls` calls (the machine is
    /// shared; the least disturbed round is the closest to the kernel's own time).
    pub(crate) fn best_ms(rounds: usize, calls: usize, mut f: impl FnMut()) -> f64 {
        (0..rounds)
            .map(|_| {
                let t = std::time::Instant::now();
                for _ in 0..calls {
                    f();
                }
                t.elapsed().as_secs_f64() / calls as f64 * 1e3
            })
            .fold(f64::INFINITY, f64::min)
    }
}
pub use simd::Isa;

/// Which kernels run a model's convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// tract's own for everything (what Kestrel ran before its kernels).
    Tract,
    /// Kestrel's where they apply, with this instruction set; tract's for the rest.
    Kestrel(Isa),
}

impl Kernels {
    /// The process default: Kestrel's kernels with the best instruction set, unless
    /// `KESTREL_KERNELS` says `tract` (tract's only) or `portable` (Kestrel's, scalar).
    pub fn from_env() -> Kernels {
        match std::env::var("KESTREL_KERNELS").as_deref() {
            Ok("tract") => Kernels::Tract,
            _ => Kernels::Kestrel(Isa::detect()),
        }
    }

    /// Short name for reports.
    pub fn name(self) -> String {
        match self {
            Kernels::Tract => "tract".into(),
            Kernels::Kestrel(isa) => format!("kestrel ({})", isa.name()),
        }
    }
}
