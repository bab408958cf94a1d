//! The sinks beyond JSON lines: a GPIO indicator, the live view over HTTP, annotated snapshots.
//!
//! [`draw`] annotates frames for the live view and the snapshots.

pub mod draw;
pub mod gpio;
pub mod http;
pub mod snapshot;

pub use draw::annotate;
#[cfg(target_os = "linux")]
pub use gpio::open_cdev;
pub use gpio::{GpioError, Indicator, IndicatorConfig, LabelIndicator, PinIndicator, open_board};
pub use http::{LiveView, LiveViewError};
pub use snapshot::{SnapshotError, Snapshots};
