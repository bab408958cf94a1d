//! Choice of burn backend (`--backend`).

use burn::tensor::Device;

/// burn CPU backends Kestrel supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// burn-flex: burn's own CPU backend, the fastest here (default).
    #[default]
    Flex,
    /// burn-ndarray: the older CPU backend (deprecated upstream; slow for depthwise training).
    Ndarray,
}

impl Backend {
    /// The inference device of this backend.
    #[allow(deprecated)] // ndarray is deprecated upstream but still asked for by the issue.
    pub fn device(self) -> Device {
        match self {
            Backend::Flex => Device::flex(),
            Backend::Ndarray => Device::ndarray(),
        }
    }

    /// Name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
        }
    }

    /// Every supported backend.
    pub const ALL: [Backend; 2] = [Backend::Flex, Backend::Ndarray];
}

/// Limit the CPU threads burn (through rayon's global pool) may use. Call once, early.
pub fn set_threads(n: usize) {
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
    {
        tracing::warn!("thread count already fixed: {e}");
    }
}
