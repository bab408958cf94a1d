//! A GPIO indicator: a line goes high while a label is being seen.
//!
//! Hardware sits behind the tiny [`Indicator`] trait, in embedded-hal style: [`PinIndicator`] adapts
//! any `embedded_hal::digital::OutputPin` (a real Linux line from [`open_cdev`], or a mock pin in
//! tests), and [`LabelIndicator`] is the sink that decides when to switch. The decision runs on
//! the source's clock ([`FrameResult::source_ms`]), so a replay switches at the same frames on any
//! machine.

use std::fmt::Debug;
#[cfg(all(target_os = "linux", feature = "gpio"))]
use std::path::Path;
use std::path::PathBuf;

use embedded_hal::digital::OutputPin;
use image::RgbImage;

use crate::sink::{FrameResult, Sink, SinkError};
use crate::stats::StatsSnapshot;

/// Something that can be switched on and off: an LED, a relay, a line to another board.
pub trait Indicator {
    /// Why switching failed.
    type Error: Debug;
    /// Switch on (`true`) or off (`false`).
    fn set(&mut self, on: bool) -> Result<(), Self::Error>;
}

/// Any embedded-hal output pin as an [`Indicator`]: on is high, off is low (a line requested as
/// active-low inverts this at the kernel, see [`open_board`]).
#[derive(Debug)]
pub struct PinIndicator<P>(pub P);

impl<P: OutputPin> Indicator for PinIndicator<P> {
    type Error = P::Error;

    fn set(&mut self, on: bool) -> Result<(), Self::Error> {
        if on {
            self.0.set_high()
        } else {
            self.0.set_low()
        }
    }
}

/// When a [`LabelIndicator`] switches.
#[derive(Debug, Clone, PartialEq)]
pub struct IndicatorConfig {
    /// Label to watch (a detection's or the classification's).
    pub label: String,
    /// Lowest score that counts as seeing it.
    pub min_score: f32,
    /// How long (source milliseconds) the label must go unseen before the indicator turns off:
    /// bridges frames where the detector briefly misses, so the output does not flicker.
    pub hold_ms: f64,
}

impl IndicatorConfig {
    /// True when `result` shows the label with at least `min_score`.
    pub fn matches(&self, result: &FrameResult) -> bool {
        result
            .detections
            .iter()
            .any(|d| d.label == self.label && d.score >= self.min_score)
            || result
                .classification
                .as_ref()
                .is_some_and(|c| c.label == self.label && c.score >= self.min_score)
    }
}

/// The `gpio` sink: drives an [`Indicator`] on while a label is seen, with a hold time.
///
/// On at the first frame that [matches](IndicatorConfig::matches); off once `hold_ms` of source
/// time passed since the last matching frame. The indicator is only written on a change of state
/// (plus once at construction, to a known off, and at [`close`](Sink::close) if it is not off);
/// after a failed write the state counts as unknown and the next frame writes again.
pub struct LabelIndicator<I: Indicator> {
    indicator: I,
    config: IndicatorConfig,
    /// What the indicator was last set to; `None` after a failed write.
    state: Option<bool>,
    /// Source time of the last matching frame.
    last_seen_ms: Option<f64>,
}

impl<I: Indicator> LabelIndicator<I> {
    /// A sink driving `indicator`, which is switched off now so its state is known.
    pub fn new(indicator: I, config: IndicatorConfig) -> Result<Self, SinkError> {
        let mut sink = LabelIndicator {
            indicator,
            config,
            state: None,
            last_seen_ms: None,
        };
        sink.drive(false)?;
        Ok(sink)
    }

    /// The configuration.
    pub fn config(&self) -> &IndicatorConfig {
        &self.config
    }

    /// True while the indicator is (known to be) on.
    pub fn is_on(&self) -> bool {
        self.state == Some(true)
    }

    /// Set the indicator to `on` unless it is known to be there already.
    fn drive(&mut self, on: bool) -> Result<(), SinkError> {
        if self.state == Some(on) {
            return Ok(());
        }
        match self.indicator.set(on) {
            Ok(()) => {
                self.state = Some(on);
                Ok(())
            }
            Err(e) => {
                self.state = None;
                Err(SinkError::Other {
                    sink: "gpio".into(),
                    reason: format!(
                        "switching the indicator for {:?} {}: {e:?}",
                        self.config.label,
                        if on { "on" } else { "off" }
                    ),
                })
            }
        }
    }

    /// The state the indicator should have after a frame at `now_ms` that did (not) match.
    fn want(&mut self, seen: bool, now_ms: f64) -> bool {
        if seen {
            self.last_seen_ms = Some(now_ms);
            return true;
        }
        match self.last_seen_ms {
            // The source's clock went backwards (a restarted replay): hold from here.
            Some(last) if now_ms < last => {
                self.last_seen_ms = Some(now_ms);
                true
            }
            Some(last) => now_ms - last < self.config.hold_ms,
            None => false,
        }
    }
}

impl<I: Indicator> Sink for LabelIndicator<I> {
    fn name(&self) -> &str {
        "gpio"
    }

    fn handle(
        &mut self,
        result: &FrameResult,
        _image: &RgbImage,
        _stats: &StatsSnapshot,
    ) -> Result<(), SinkError> {
        let seen = self.config.matches(result);
        let on = self.want(seen, result.source_ms);
        self.drive(on)
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.last_seen_ms = None;
        self.drive(false)
    }
}

impl<I: Indicator> Drop for LabelIndicator<I> {
    /// Best effort: the indicator is not left on when the sink goes away without `close`.
    fn drop(&mut self) {
        if self.state != Some(false) {
            let _ = self.indicator.set(false);
        }
    }
}

/// Opening a GPIO line failed; the message names the chip and line and what to try.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    /// The chip's device file could not be opened or is not a GPIO chip.
    #[error("cannot open GPIO chip {}: {source}; {hint}", chip.display())]
    Chip {
        /// Device path, e.g. `/dev/gpiochip0`.
        chip: PathBuf,
        /// The error from the kernel.
        source: Box<dyn std::error::Error + Send + Sync>,
        /// What to do about it.
        hint: String,
    },
    /// The line could not be requested as an output.
    #[error("cannot drive line {line} of GPIO chip {}: {source}; {hint}", chip.display())]
    Line {
        /// Device path of the chip.
        chip: PathBuf,
        /// Line offset on the chip.
        line: u32,
        /// The error from the kernel.
        source: Box<dyn std::error::Error + Send + Sync>,
        /// What to do about it.
        hint: String,
    },
    /// No chip carries the label the board file names.
    #[error(
        "no GPIO chip labelled {label:?} ({} has label {found:?}); run `gpiodetect` and fix gpio.chip / gpio.chip_label in the board file",
        chip.display()
    )]
    NoSuchLabel {
        /// The label the board file asks for.
        label: String,
        /// The chip tried first.
        chip: PathBuf,
        /// Its label.
        found: String,
    },
    /// GPIO character devices exist only on Linux, and only builds with the `gpio` feature drive
    /// them.
    #[error(
        "GPIO output needs Linux's GPIO character device (/dev/gpiochipN) and a kestrel-edge built with the `gpio` feature (the board build)"
    )]
    Unsupported,
}

/// A hint for an error of `chip`, from the I/O error kind or the errno in its message.
#[cfg(all(target_os = "linux", feature = "gpio"))]
fn hint(err: &(dyn std::error::Error + 'static), chip: &Path, line: Option<u32>) -> String {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::NotFound => {
                    return "no such device: list the chips with `ls /dev/gpiochip*` or `gpiodetect` and fix gpio.chip in the board file (or pass another chip)".into();
                }
                std::io::ErrorKind::PermissionDenied => {
                    return format!(
                        "permission denied: add the user to the group owning {} (usually `gpio`: `sudo usermod -aG gpio $USER`, then log in again) or run as root",
                        chip.display()
                    );
                }
                _ => {}
            }
        }
        cur = e.source();
    }
    let text = err.to_string();
    if text.contains("EBUSY") {
        let line = line.map_or(String::new(), |l| format!(" {l}"));
        format!(
            "the line{line} is in use by another program or a kernel driver (`gpioinfo` shows its consumer); free it or pick another line"
        )
    } else if text.contains("ENOTTY") {
        "this file is not a GPIO chip; use a /dev/gpiochipN device".into()
    } else if text.contains("ENOSYS") {
        // What qemu's user-mode emulation answers for the GPIO ioctls it does not know.
        "this file is not a GPIO chip, or this system (an emulator?) has no GPIO character device support; use a /dev/gpiochipN device on the board".into()
    } else if text.contains("out of range") || text.contains("EINVAL") {
        "the chip has no such line: check gpio.line in the board file against `gpioinfo`".into()
    } else if text.contains("EACCES") || text.contains("EPERM") {
        "permission denied: add the user to group gpio (`sudo usermod -aG gpio $USER`) or run as root".into()
    } else {
        "check the board file's gpio section against `gpiodetect` and `gpioinfo`".into()
    }
}

/// Line `line` of the GPIO chip at `chip` (e.g. `/dev/gpiochip0`), requested as an output
/// driven low, under the consumer name `consumer` (what `gpioinfo` shows).
#[cfg(all(target_os = "linux", feature = "gpio"))]
pub fn open_cdev(
    chip: &Path,
    line: u32,
    consumer: &str,
) -> Result<PinIndicator<linux_embedded_hal::CdevPin>, GpioError> {
    request(chip, line, consumer, false)
}

#[cfg(all(target_os = "linux", feature = "gpio"))]
fn request(
    chip_path: &Path,
    line: u32,
    consumer: &str,
    active_low: bool,
) -> Result<PinIndicator<linux_embedded_hal::CdevPin>, GpioError> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};

    let chip_err = |e: linux_embedded_hal::gpio_cdev::Error| GpioError::Chip {
        chip: chip_path.to_path_buf(),
        hint: hint(&e, chip_path, None),
        source: Box::new(e),
    };
    let line_err = |e: Box<dyn std::error::Error + Send + Sync>| GpioError::Line {
        chip: chip_path.to_path_buf(),
        line,
        hint: hint(&*e, chip_path, Some(line)),
        source: e,
    };
    let mut chip = Chip::new(chip_path).map_err(chip_err)?;
    let handle_line = chip.get_line(line).map_err(|e| line_err(Box::new(e)))?;
    let mut flags = LineRequestFlags::OUTPUT;
    if active_low {
        flags |= LineRequestFlags::ACTIVE_LOW;
    }
    let handle = handle_line
        .request(flags, 0, consumer)
        .map_err(|e| line_err(Box::new(e)))?;
    let pin = linux_embedded_hal::CdevPin::new(handle).map_err(|e| line_err(Box::new(e)))?;
    Ok(PinIndicator(pin))
}

/// The indicator line a board file describes: its chip (found by `chip_label` when the kernel
/// numbered the chips differently), its line, active-low handled by the kernel so that "on" is
/// always [`Indicator::set`]`(true)`.
#[cfg(all(target_os = "linux", feature = "gpio"))]
pub fn open_board(
    gpio: &kestrel_shared::board::Gpio,
    consumer: &str,
) -> Result<PinIndicator<linux_embedded_hal::CdevPin>, GpioError> {
    let path = gpio.chip_path();
    if let Some(label) = &gpio.chip_label {
        let found = linux_embedded_hal::gpio_cdev::Chip::new(&path)
            .map(|c| c.label().to_string())
            .unwrap_or_default();
        if &found != label {
            let other = linux_embedded_hal::gpio_cdev::chips()
                .into_iter()
                .flatten()
                .flatten()
                .find(|c| c.label() == label);
            return match other {
                Some(c) => request(c.path(), gpio.line, consumer, gpio.active_low),
                None => Err(GpioError::NoSuchLabel {
                    label: label.clone(),
                    chip: path,
                    found,
                }),
            };
        }
    }
    request(&path, gpio.line, consumer, gpio.active_low)
}

/// Without Linux's GPIO character devices or the `gpio` feature: always
/// [`GpioError::Unsupported`].
#[cfg(not(all(target_os = "linux", feature = "gpio")))]
pub fn open_board(
    _gpio: &kestrel_shared::board::Gpio,
    _consumer: &str,
) -> Result<PinIndicator<NoPin>, GpioError> {
    Err(GpioError::Unsupported)
}

/// Stand-in pin type where no line can be opened (not Linux, or no `gpio` feature).
#[cfg(not(all(target_os = "linux", feature = "gpio")))]
#[derive(Debug)]
pub enum NoPin {}

#[cfg(not(all(target_os = "linux", feature = "gpio")))]
impl embedded_hal::digital::ErrorType for NoPin {
    type Error = core::convert::Infallible;
}

#[cfg(not(all(target_os = "linux", feature = "gpio")))]
impl OutputPin for NoPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        match *self {}
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        match *self {}
    }
}
