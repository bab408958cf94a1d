//! The sinks beyond JSON lines: a GPIO indicator, the live view over HTTP, annotated snapshots.
//!
//! [`draw`] annotates frames for the live view and the snapshots.

pub mod draw;
pub mod gpio;
#[cfg(feature = "http")]
pub mod http;
pub mod snapshot;

pub use draw::annotate;
#[cfg(all(target_os = "linux", feature = "gpio"))]
pub use gpio::open_cdev;
pub use gpio::{GpioError, Indicator, IndicatorConfig, LabelIndicator, PinIndicator, open_board};
#[cfg(feature = "http")]
pub use http::{LiveView, LiveViewError};
pub use snapshot::{SnapshotError, Snapshots};
