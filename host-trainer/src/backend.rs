//! Choice of burn backend (`--backend`).

use burn::tensor::Device;

/// burn backends Kestrel supports: the CPU ones always, wgpu when built with the `wgpu` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// burn-flex: burn's own CPU backend, the fastest here (default).
    #[default]
    Flex,
    /// burn-ndarray: the older CPU backend (deprecated upstream; slow for depthwise training).
    Ndarray,
    /// burn-wgpu: a GPU through wgpu (Vulkan, Metal or DX12), or a software Vulkan driver such as
    /// Mesa's lavapipe; built only with the cargo feature `wgpu`.
    #[cfg(feature = "wgpu")]
    Wgpu,
}

impl Backend {
    /// The inference device of this backend.
    ///
    /// # Panics
    ///
    /// For wgpu, when no adapter comes up: call [`Backend::try_device`] first (as
    /// [`crate::Pretrained::load`] does) to get that as an error.
    pub fn device(self) -> Device {
        self.try_device().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The inference device of this backend, or why it cannot be had (wgpu without an adapter).
    #[allow(deprecated)] // ndarray is deprecated upstream but still asked for by the issue.
    pub fn try_device(self) -> anyhow::Result<Device> {
        match self {
            Backend::Flex => Ok(Device::flex()),
            Backend::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => wgpu_device(),
        }
    }

    /// Name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => "wgpu",
        }
    }

    /// Every CPU backend (what `kestrel bench` compares on one core; wgpu is not among them).
    pub const ALL: [Backend; 2] = [Backend::Flex, Backend::Ndarray];
}

/// The wgpu device and its adapter's description, set up once per process.
#[cfg(feature = "wgpu")]
fn wgpu_setup() -> anyhow::Result<&'static (Device, WgpuAdapter)> {
    use std::sync::OnceLock;
    static SETUP: OnceLock<Result<(Device, WgpuAdapter), String>> = OnceLock::new();
    SETUP
        .get_or_init(|| {
            let (device, setup) = Device::wgpu_options().init_with_setup().map_err(|e| {
                format!(
                    "--backend wgpu: no usable wgpu adapter ({e}). Install a Vulkan driver: your \
                     GPU's, or the software one (Debian/Ubuntu: apt-get install \
                     mesa-vulkan-drivers libvulkan1)"
                )
            })?;
            let info = setup.adapter.get_info();
            let adapter = WgpuAdapter {
                name: info.name,
                api: format!("{:?}", info.backend),
                kind: format!("{:?}", info.device_type),
                driver: format!("{} {}", info.driver, info.driver_info),
            };
            tracing::info!("wgpu adapter: {adapter}");
            Ok((device, adapter))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The wgpu device: wgpu's default adapter (a high-performance GPU first; a CPU adapter such as
/// lavapipe when that is all there is; `CUBECL_WGPU_DEFAULT_DEVICE=Cpu` etc. overrides) on the
/// first graphics API that has one (Vulkan first on Linux, then OpenGL). A machine without an
/// adapter gets an error saying what to install, not a panic inside burn.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> anyhow::Result<Device> {
    wgpu_setup().map(|(d, _)| d.clone())
}

/// What the wgpu backend runs on (sets the device up if it is not yet).
#[cfg(feature = "wgpu")]
pub fn wgpu_adapter() -> anyhow::Result<&'static WgpuAdapter> {
    wgpu_setup().map(|(_, a)| a)
}

/// The adapter the wgpu backend runs on.
#[cfg(feature = "wgpu")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgpuAdapter {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Graphics API, e.g. `Vulkan`, `Gl`, `Metal`.
    pub api: String,
    /// Device type, e.g. `DiscreteGpu`, `Cpu`.
    pub kind: String,
    /// Driver and its version.
    pub driver: String,
}

#[cfg(feature = "wgpu")]
impl std::fmt::Display for WgpuAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}, driver {})",
            self.name, self.api, self.kind, self.driver
        )
    }
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
