//! Kestrel's own kernels for what tract runs slowly on MobileNetV2-like graphs, plugged into
//! tract's model as operators of Kestrel's (tract stays the engine; the bundle format does not
//! change): the depthwise 3x3 convolutions, the dense stem convolution and the pointwise (1x1)
//! convolutions, with bias, ReLU6 and residual additions fused, in AVX2+FMA, NEON or portable
//! code chosen at run time.

pub mod conv1x1;
pub mod conv3x3;
pub mod ops;
pub mod pass;
pub mod simd;

pub use pass::{PassReport, install};
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
