//! Board files: what Kestrel knows about each supported board.
//!
//! One TOML file per board in the repository's `boards/` directory (`boards/README.md` describes
//! the format): the Rust target to build for, the CPU and how many threads to give inference,
//! memory, camera defaults, the indicator GPIO, the serial port of the agent and where things are
//! installed. The same files are compiled into this crate ([`builtin_boards`]), so `kestrel boards`
//! and `kestrel install --board NAME` work from any directory.
//!
//! Reading is strict: unknown fields are refused (a typo must not silently fall back to a default),
//! and every error names the file and the field (`camera.fps`), with the line when the TOML
//! reader knows it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Extension of board files.
pub const BOARD_EXTENSION: &str = "toml";

/// Baud rates a Linux serial port can be set to with the standard termios constants (`B1200` ..
/// `B4000000`); other values need custom divisors and are refused.
pub const STANDARD_BAUD_RATES: &[u32] = &[
    1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 576000, 921600,
    1000000, 1152000, 1500000, 2000000, 2500000, 3000000, 3500000, 4000000,
];

/// The board files in `boards/`, compiled in: (board name = file stem, file text).
const BUILTIN: &[(&str, &str)] = &[
    (
        "generic-aarch64",
        include_str!("../../boards/generic-aarch64.toml"),
    ),
    (
        "raspberry-pi-4",
        include_str!("../../boards/raspberry-pi-4.toml"),
    ),
    (
        "raspberry-pi-5",
        include_str!("../../boards/raspberry-pi-5.toml"),
    ),
    (
        "raspberry-pi-5-csi",
        include_str!("../../boards/raspberry-pi-5-csi.toml"),
    ),
    (
        "raspberry-pi-zero-2w",
        include_str!("../../boards/raspberry-pi-zero-2w.toml"),
    ),
];

/// One supported board, as described by its file in `boards/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Short name, the file's stem: `raspberry-pi-4` for `raspberry-pi-4.toml`.
    pub name: String,
    /// One line for people.
    pub description: String,
    /// Rust target triple to build `kestrel-edge` for, e.g. `aarch64-unknown-linux-gnu`.
    pub target: String,
    /// CPU core type, e.g. `Cortex-A72` (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Nominal CPU clock in MHz (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_mhz: Option<u32>,
    /// CPU cores of the board.
    pub cores: u32,
    /// Threads inference may use (at most `cores`).
    pub threads: u32,
    /// Memory of the board, MB.
    pub memory_mb: u32,
    /// Memory the agent may use, MB (its service's memory limit).
    pub memory_limit_mb: u32,
    /// Camera defaults.
    pub camera: Camera,
    /// Indicator output; absent when the board has no known free line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpio: Option<Gpio>,
    /// Serial port the agent talks on.
    pub serial: Serial,
    /// Where and how `kestrel install` puts the runtime.
    pub install: Install,
}

/// Camera defaults of a board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Camera {
    /// How frames are captured: `v4l2` (USB cameras, the default) or `libcamera` (Raspberry Pi
    /// camera modules on the CSI connector, through `rpicam-vid`).
    #[serde(default)]
    pub driver: CameraDriver,
    /// V4L2 device, e.g. `/dev/video0` (or a `/dev/v4l/by-id/...` link); used with `v4l2`.
    #[serde(default = "default_camera_device")]
    pub device: String,
    /// libcamera camera number as `rpicam-hello --list-cameras` shows it (the Pi 5 has two CSI
    /// connectors); used with `libcamera`, 0 when left out.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub index: u32,
    /// Frame width, pixels.
    pub width: u32,
    /// Frame height, pixels.
    pub height: u32,
    /// Frames per second to ask for.
    pub fps: u32,
    /// Pixel format to ask the camera for.
    pub format: PixelFormat,
}

/// How a board captures camera frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraDriver {
    /// Video4Linux: USB (UVC) cameras, and CSI cameras through the bcm2835 V4L2 driver on older
    /// Pi OS releases (`v4l2`).
    #[default]
    V4l2,
    /// libcamera through `rpicam-vid` (`libcamera`): Raspberry Pi camera modules on Raspberry
    /// Pi OS Bookworm and later, the only way to reach them on a Pi 5.
    Libcamera,
}

impl fmt::Display for CameraDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CameraDriver::V4l2 => "v4l2",
            CameraDriver::Libcamera => "libcamera",
        })
    }
}

/// The V4L2 device a board file without `camera.device` uses.
pub fn default_camera_device() -> String {
    "/dev/video0".into()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Pixel format of camera frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Motion JPEG: every frame a JPEG (`mjpeg`); cheap on USB bandwidth, costs a decode.
    #[cfg_attr(feature = "clap", value(alias = "mjpg"))]
    Mjpeg,
    /// YUYV 4:2:2, uncompressed (`yuyv`); the width must be even.
    #[cfg_attr(feature = "clap", value(alias = "yuy2"))]
    Yuyv,
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PixelFormat::Mjpeg => "mjpeg",
            PixelFormat::Yuyv => "yuyv",
        })
    }
}

/// A GPIO line driven as the indicator, through the Linux GPIO character device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpio {
    /// Chip name (`gpiochip0`) or device path (`/dev/gpiochip0`).
    pub chip: String,
    /// The chip's label as `gpiodetect` shows it (e.g. `pinctrl-rp1`), for finding the chip when
    /// kernels number it differently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip_label: Option<String>,
    /// Line offset on the chip (on Raspberry Pis, the BCM GPIO number).
    pub line: u32,
    /// The indicator is on when the line is low.
    pub active_low: bool,
}

impl Gpio {
    /// The chip's device path: `/dev/gpiochip0` for `gpiochip0`, the path itself otherwise.
    pub fn chip_path(&self) -> PathBuf {
        if self.chip.starts_with('/') {
            PathBuf::from(&self.chip)
        } else {
            Path::new("/dev").join(&self.chip)
        }
    }
}

/// The agent's serial port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serial {
    /// Device, e.g. `/dev/serial0`.
    pub device: String,
    /// Baud rate, one of [`STANDARD_BAUD_RATES`].
    pub baud: u32,
}

/// A Linux user or group name as `useradd` takes it: lowercase letters, digits, `_` and `-`,
/// starting with a letter or `_`, at most 32 characters.
fn is_unix_name(name: &str) -> bool {
    name.len() <= 32
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
}

/// Where and how the runtime is installed on the board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Install {
    /// Directory of the `kestrel-edge` binary (absolute).
    pub bin_dir: PathBuf,
    /// Directory of bundles, keys and state (absolute).
    pub store_dir: PathBuf,
    /// systemd unit name, without `.service`.
    pub service_name: String,
    /// Unprivileged user the service runs as (never `root`).
    pub user: String,
    /// Groups the service needs for the board's devices (camera, GPIO, serial port); `kestrel
    /// install` gives the service only those that exist on the board.
    #[serde(default = "default_groups")]
    pub groups: Vec<String>,
}

/// The groups of Raspberry Pi OS and Debian for the camera, GPIO and serial port.
pub fn default_groups() -> Vec<String> {
    ["video", "gpio", "dialout"].map(String::from).to_vec()
}

impl Install {
    /// Path of the installed binary: `bin_dir/kestrel-edge`.
    pub fn binary_path(&self) -> PathBuf {
        self.bin_dir.join("kestrel-edge")
    }

    /// File name of the systemd unit: `service_name.service`.
    pub fn unit_file_name(&self) -> String {
        format!("{}.service", self.service_name)
    }
}

/// A board file that cannot be used. Every variant names the file (or directory); field errors
/// name the field as a dotted path (`camera.fps`).
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// The file cannot be read.
    #[error("cannot read board file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The directory cannot be listed.
    #[error("cannot list board directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("board file {origin}, line {line}, column {column}: {message}")]
    Syntax {
        /// The file.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A field is unknown, missing, of the wrong type or has a value that makes no sense.
    #[error("board file {origin}, field `{field}`{}: {message}", at_line(.line))]
    Field {
        /// The file.
        origin: String,
        /// Dotted path of the field, e.g. `camera.fps`.
        field: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// No built-in board has this name.
    #[error(
        "no board named `{name}` is built in (known: {known}); give a board file's path instead"
    )]
    Unknown {
        /// The name asked for.
        name: String,
        /// The built-in names, comma-separated.
        known: String,
    },
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

fn field_error(origin: &str, field: impl Into<String>, message: impl Into<String>) -> BoardError {
    BoardError::Field {
        origin: origin.to_string(),
        field: field.into(),
        line: None,
        message: message.into(),
    }
}

impl Board {
    /// Parse and validate a board file's text; `origin` (usually the path) names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Board, BoardError> {
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
            BoardError::Syntax {
                origin: origin.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let board: Board = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let mut message = inner.message().trim().to_string();
            let mut line = inner.span().map(|s| line_column(text, s.start).0);
            let parent = if path == "." { String::new() } else { path };
            let mut field = parent.clone();
            // serde reports a missing field at its parent (whose span is the whole table): name
            // the field itself, and the table's line only for a nested table.
            if let Some(missing) = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string)
            {
                field = if parent.is_empty() {
                    missing
                } else {
                    format!("{parent}.{missing}")
                };
                message = match line.take() {
                    Some(l) if !parent.is_empty() => {
                        format!("is missing from the [{parent}] table (line {l})")
                    }
                    _ => "is missing".to_string(),
                };
            }
            if field.is_empty() {
                field.push_str("(top level)");
            }
            BoardError::Field {
                origin: origin.to_string(),
                field,
                line,
                message,
            }
        })?;
        board.validate(origin)?;
        Ok(board)
    }

    /// Read, parse and validate a board file; its `name` must be the file's stem.
    pub fn load(path: &Path) -> Result<Board, BoardError> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        let board = Board::parse(&text, &origin)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        board.check_name(stem, &origin)?;
        Ok(board)
    }

    /// The built-in board of this name (the file `boards/NAME.toml` compiled in).
    pub fn builtin(name: &str) -> Result<Board, BoardError> {
        let Some((stem, text)) = BUILTIN.iter().find(|(n, _)| *n == name) else {
            return Err(BoardError::Unknown {
                name: name.to_string(),
                known: BUILTIN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let origin = format!("boards/{stem}.{BOARD_EXTENSION} (built in)");
        let board = Board::parse(text, &origin)?;
        board.check_name(stem, &origin)?;
        Ok(board)
    }

    /// A board from what a user typed: a path to a board file when it ends in `.toml` or contains
    /// a `/`, otherwise a built-in board's name.
    pub fn resolve(spec: &str) -> Result<Board, BoardError> {
        if spec.contains('/') || spec.ends_with(&format!(".{BOARD_EXTENSION}")) {
            Board::load(Path::new(spec))
        } else {
            Board::builtin(spec)
        }
    }

    fn check_name(&self, stem: &str, origin: &str) -> Result<(), BoardError> {
        if self.name != stem {
            return Err(field_error(
                origin,
                "name",
                format!(
                    "is `{}` but the file is `{stem}.{BOARD_EXTENSION}`: a board's name is its file name",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// Check that the values make sense together; the error names the first offending field.
    pub fn validate(&self, origin: &str) -> Result<(), BoardError> {
        let err = |field: &str, message: String| Err(field_error(origin, field, message));

        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return err(
                "name",
                format!(
                    "`{}` is not a board name: use lowercase letters, digits and `-`",
                    self.name
                ),
            );
        }
        if self.description.trim().is_empty() {
            return err("description", "is empty".into());
        }
        let parts: Vec<&str> = self.target.split('-').collect();
        if !(3..=4).contains(&parts.len())
            || parts.iter().any(|p| {
                p.is_empty()
                    || !p
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c))
            })
        {
            return err(
                "target",
                format!(
                    "`{}` is not a Rust target triple (arch-vendor-os[-env], e.g. aarch64-unknown-linux-gnu)",
                    self.target
                ),
            );
        }
        if let Some(cpu) = &self.cpu
            && cpu.trim().is_empty()
        {
            return err("cpu", "is empty (leave the field out when unknown)".into());
        }
        if let Some(mhz) = self.cpu_mhz
            && !(100..=10_000).contains(&mhz)
        {
            return err(
                "cpu_mhz",
                format!("{mhz} MHz is not a CPU clock (100 ..= 10000; leave it out when unknown)"),
            );
        }
        if !(1..=1024).contains(&self.cores) {
            return err(
                "cores",
                format!("{} is not a core count (1 ..= 1024)", self.cores),
            );
        }
        if self.threads == 0 {
            return err("threads", "must be at least 1".into());
        }
        if self.threads > self.cores {
            return err(
                "threads",
                format!(
                    "{} is more than the board's {} cores",
                    self.threads, self.cores
                ),
            );
        }
        if self.memory_mb < 64 {
            return err(
                "memory_mb",
                format!(
                    "{} MB is too little to run Kestrel (at least 64)",
                    self.memory_mb
                ),
            );
        }
        if self.memory_limit_mb < 64 {
            return err(
                "memory_limit_mb",
                format!(
                    "{} MB is too little for the agent (at least 64)",
                    self.memory_limit_mb
                ),
            );
        }
        if self.memory_limit_mb > self.memory_mb {
            return err(
                "memory_limit_mb",
                format!(
                    "{} MB is more than the board's memory_mb ({} MB)",
                    self.memory_limit_mb, self.memory_mb
                ),
            );
        }

        let cam = &self.camera;
        if !cam.device.starts_with("/dev/") {
            return err(
                "camera.device",
                format!("`{}` is not a device path (/dev/...)", cam.device),
            );
        }
        match cam.driver {
            CameraDriver::V4l2 if cam.index != 0 => {
                return err(
                    "camera.index",
                    "is the libcamera camera number: set driver = \"libcamera\", or choose a V4L2 camera with `device`".into(),
                );
            }
            CameraDriver::Libcamera if cam.index > 15 => {
                return err(
                    "camera.index",
                    format!(
                        "{} is not a camera number (0 ..= 15, as `rpicam-hello --list-cameras` shows)",
                        cam.index
                    ),
                );
            }
            CameraDriver::Libcamera if cam.format != PixelFormat::Mjpeg => {
                return err(
                    "camera.format",
                    "libcamera frames come from rpicam-vid as MJPEG: set format = \"mjpeg\"".into(),
                );
            }
            _ => {}
        }
        for (field, v) in [("camera.width", cam.width), ("camera.height", cam.height)] {
            if !(16..=8192).contains(&v) {
                return err(field, format!("{v} pixels is out of range (16 ..= 8192)"));
            }
        }
        if cam.format == PixelFormat::Yuyv && !cam.width.is_multiple_of(2) {
            return err(
                "camera.width",
                format!(
                    "{} is odd: yuyv packs two pixels per 4 bytes, the width must be even",
                    cam.width
                ),
            );
        }
        if !(1..=240).contains(&cam.fps) {
            return err(
                "camera.fps",
                format!("{} is not a frame rate (1 ..= 240)", cam.fps),
            );
        }

        if let Some(gpio) = &self.gpio {
            let numbered = gpio
                .chip
                .strip_prefix("gpiochip")
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if !numbered && !gpio.chip.starts_with("/dev/") {
                return err(
                    "gpio.chip",
                    format!(
                        "`{}` is not a GPIO chip (gpiochipN or a /dev/ path)",
                        gpio.chip
                    ),
                );
            }
            if let Some(label) = &gpio.chip_label
                && label.trim().is_empty()
            {
                return err(
                    "gpio.chip_label",
                    "is empty (leave the field out when unknown)".into(),
                );
            }
        }

        if !self.serial.device.starts_with("/dev/") {
            return err(
                "serial.device",
                format!("`{}` is not a device path (/dev/...)", self.serial.device),
            );
        }
        if !STANDARD_BAUD_RATES.contains(&self.serial.baud) {
            return err(
                "serial.baud",
                format!(
                    "{} is not a standard baud rate (e.g. 9600, 115200, 921600)",
                    self.serial.baud
                ),
            );
        }

        let inst = &self.install;
        for (field, dir) in [
            ("install.bin_dir", &inst.bin_dir),
            ("install.store_dir", &inst.store_dir),
        ] {
            if !dir.is_absolute() {
                return err(
                    field,
                    format!("`{}` is not an absolute path", dir.display()),
                );
            }
        }
        if inst.service_name.is_empty()
            || inst.service_name.ends_with(".service")
            || !inst
                .service_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ":_.@-".contains(c))
        {
            return err(
                "install.service_name",
                format!(
                    "`{}` is not a systemd unit name (letters, digits, `:_.@-`, without `.service`)",
                    inst.service_name
                ),
            );
        }
        let user_ok = is_unix_name(&inst.user);
        if !user_ok {
            return err(
                "install.user",
                format!("`{}` is not a Linux user name", inst.user),
            );
        }
        for (i, g) in inst.groups.iter().enumerate() {
            if !is_unix_name(g) {
                return err(
                    &format!("install.groups[{i}]"),
                    format!("`{g}` is not a Linux group name"),
                );
            }
        }
        if inst.user == "root" {
            return err(
                "install.user",
                "the agent must not run as root: give it an unprivileged user (with the video, gpio and dialout groups)".into(),
            );
        }
        Ok(())
    }
}

/// The board files compiled into this build: (name, file text), sorted by name. They are the
/// files of the repository's `boards/` directory.
pub fn builtin_boards() -> Vec<(&'static str, &'static str)> {
    BUILTIN.to_vec()
}

/// Every built-in board, parsed and validated, sorted by name.
pub fn load_builtin_boards() -> Result<Vec<Board>, BoardError> {
    BUILTIN
        .iter()
        .map(|(name, _)| Board::builtin(name))
        .collect()
}

/// Every board file (`*.toml`) in a directory, parsed and validated, sorted by name; other files
/// (such as a README) are ignored. The first bad file fails the whole list.
pub fn boards_in(dir: &Path) -> Result<Vec<Board>, BoardError> {
    let dir_err = |source| BoardError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let path = entry.map_err(dir_err)?.path();
        if path.extension().is_some_and(|e| e == BOARD_EXTENSION) && path.is_file() {
            paths.push(path);
        }
    }
    // By name (the stem): `raspberry-pi-5-csi.toml` sorts before `raspberry-pi-5.toml` as a path.
    paths.sort_by(|a, b| a.file_stem().cmp(&b.file_stem()));
    paths.iter().map(|p| Board::load(p)).collect()
}

/// A plain-text table of boards, one line each under a header, columns aligned, for
/// `kestrel boards`.
pub fn boards_table(boards: &[Board]) -> String {
    let header = [
        "BOARD",
        "TARGET",
        "CPU",
        "THREADS",
        "MEMORY",
        "CAMERA",
        "GPIO",
        "SERIAL",
        "DESCRIPTION",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for b in boards {
        let cpu = match (&b.cpu, b.cpu_mhz) {
            (Some(cpu), Some(mhz)) => format!("{}x {cpu} {:.1} GHz", b.cores, mhz as f64 / 1e3),
            (Some(cpu), None) => format!("{}x {cpu}", b.cores),
            (None, Some(mhz)) => format!("{} cores {:.1} GHz", b.cores, mhz as f64 / 1e3),
            (None, None) => format!("{} cores", b.cores),
        };
        let c = &b.camera;
        let camera = match c.driver {
            CameraDriver::V4l2 => c.device.clone(),
            CameraDriver::Libcamera => format!("libcamera:{}", c.index),
        };
        let gpio = match &b.gpio {
            Some(g) if g.active_low => format!("{}:{} (active low)", g.chip, g.line),
            Some(g) => format!("{}:{}", g.chip, g.line),
            None => "-".to_string(),
        };
        rows.push(vec![
            b.name.clone(),
            b.target.clone(),
            cpu,
            format!("{} of {}", b.threads, b.cores),
            format!("{} of {} MB", b.memory_limit_mb, b.memory_mb),
            format!("{camera} {}x{}@{} {}", c.width, c.height, c.fps, c.format),
            gpio,
            format!("{} {}", b.serial.device, b.serial.baud),
            b.description.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The board's name for itself.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kestrel-board".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boards_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards")
    }

    fn pi4_text() -> &'static str {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == "raspberry-pi-4")
            .unwrap()
            .1
    }

    /// The Pi 4 file with one piece of text replaced (which must be there).
    fn pi4_with(from: &str, to: &str) -> String {
        let text = pi4_text();
        assert!(text.contains(from), "the Pi 4 file no longer has {from:?}");
        text.replacen(from, to, 1)
    }

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("kestrel-board-test-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Parse must fail with a field error naming `field`, and the message must name it and the
    /// file.
    fn assert_field_error(text: &str, field: &str) -> String {
        let err = Board::parse(text, "test-board.toml").unwrap_err();
        let msg = err.to_string();
        match &err {
            BoardError::Field { field: f, .. } => assert_eq!(f, field, "{msg}"),
            other => panic!("expected a field error on {field}, got {other:?}"),
        }
        assert!(msg.contains(&format!("`{field}`")), "{msg}");
        assert!(msg.contains("test-board.toml"), "{msg}");
        msg
    }

    #[test]
    fn every_board_file_parses_and_validates() {
        let boards = boards_in(&boards_dir()).unwrap();
        let names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
        for want in [
            "generic-aarch64",
            "raspberry-pi-4",
            "raspberry-pi-5",
            "raspberry-pi-5-csi",
            "raspberry-pi-zero-2w",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        for b in &boards {
            assert!(b.threads <= b.cores, "{}", b.name);
            assert_eq!(b.target, "aarch64-unknown-linux-gnu", "{}", b.name);
        }
    }

    #[test]
    fn builtin_boards_are_the_directory_contents() {
        let mut on_disk = Vec::new();
        for entry in std::fs::read_dir(boards_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == BOARD_EXTENSION) {
                let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
                on_disk.push((stem, std::fs::read_to_string(&path).unwrap()));
            }
        }
        on_disk.sort();
        let builtin: Vec<(String, String)> = builtin_boards()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        let names = |v: &[(String, String)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&builtin),
            names(&on_disk),
            "add or remove the board in BUILTIN (shared/src/board.rs)"
        );
        assert_eq!(builtin, on_disk);
        assert_eq!(
            load_builtin_boards().unwrap(),
            boards_in(&boards_dir()).unwrap()
        );
    }

    #[test]
    fn builtin_boards_carry_the_board_facts() {
        let pi4 = Board::builtin("raspberry-pi-4").unwrap();
        assert_eq!(
            (pi4.cores, pi4.cpu.as_deref(), pi4.cpu_mhz),
            (4, Some("Cortex-A72"), Some(1800))
        );
        assert_eq!(pi4.gpio.as_ref().unwrap().chip, "gpiochip0");
        assert_eq!(
            (pi4.serial.device.as_str(), pi4.serial.baud),
            ("/dev/serial0", 115200)
        );
        let pi5 = Board::builtin("raspberry-pi-5").unwrap();
        assert_eq!(
            (pi5.cores, pi5.cpu.as_deref(), pi5.cpu_mhz),
            (4, Some("Cortex-A76"), Some(2400))
        );
        assert_eq!(
            pi5.gpio.as_ref().unwrap().chip_label.as_deref(),
            Some("pinctrl-rp1")
        );
        let zero = Board::builtin("raspberry-pi-zero-2w").unwrap();
        assert_eq!(
            (
                zero.cores,
                zero.cpu.as_deref(),
                zero.cpu_mhz,
                zero.memory_mb
            ),
            (4, Some("Cortex-A53"), Some(1000), 512)
        );
        let generic = Board::builtin("generic-aarch64").unwrap();
        assert!(generic.gpio.is_none() && generic.cpu.is_none());
        assert_eq!(
            pi4.install.binary_path(),
            Path::new("/usr/local/bin/kestrel-edge")
        );
        assert_eq!(pi4.install.unit_file_name(), "kestrel-edge.service");
        assert_eq!(pi4.gpio.unwrap().chip_path(), Path::new("/dev/gpiochip0"));
    }

    #[test]
    fn unknown_fields_are_refused_and_named() {
        let msg = assert_field_error(
            &pi4_with("fps = 30", "fps = 30\nframerate = 30"),
            "camera.framerate",
        );
        assert!(msg.contains("unknown field"), "{msg}");
        assert!(msg.contains("line"), "{msg}");
        assert_field_error(&pi4_with("cores = 4", "cores = 4\nclock = 1800"), "clock");
        assert_field_error(
            &pi4_with("[serial]", "[serial]\nparity = \"none\""),
            "serial.parity",
        );
        assert_field_error(&format!("{}\n[wifi]\nssid = \"x\"\n", pi4_text()), "wifi");
    }

    #[test]
    fn malformed_values_name_the_field() {
        assert_field_error(&pi4_with("cores = 4", "cores = \"four\""), "cores");
        assert_field_error(&pi4_with("fps = 30", "fps = -1"), "camera.fps");
        assert_field_error(&pi4_with("fps = 30", "fps = 29.97"), "camera.fps");
        let msg = assert_field_error(
            &pi4_with("format = \"mjpeg\"", "format = \"rgb24\""),
            "camera.format",
        );
        assert!(msg.contains("mjpeg") && msg.contains("yuyv"), "{msg}");
        assert_field_error(
            &pi4_with("active_low = false", "active_low = \"no\""),
            "gpio.active_low",
        );
        let msg = assert_field_error(&pi4_with("fps = 30\n", ""), "camera.fps");
        assert!(msg.contains("is missing from the [camera] table"), "{msg}");
        let msg = assert_field_error(&pi4_with("threads = 3\n", ""), "threads");
        assert!(msg.ends_with("`threads`: is missing"), "{msg}");
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let text = pi4_with("[camera]", "[camera");
        let line = text.lines().position(|l| l == "[camera").unwrap() + 1;
        let err = Board::parse(&text, "broken.toml").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, BoardError::Syntax { line: l, .. } if l == line),
            "{msg}"
        );
        assert!(
            msg.contains("broken.toml") && msg.contains(&format!("line {line}")),
            "{msg}"
        );
    }

    #[test]
    fn nonsense_values_name_the_field() {
        let cases = [
            ("threads = 3", "threads = 5", "threads"),
            ("threads = 3", "threads = 0", "threads"),
            ("baud = 115200", "baud = 115201", "serial.baud"),
            ("fps = 30", "fps = 0", "camera.fps"),
            (
                "memory_limit_mb = 1024",
                "memory_limit_mb = 8192",
                "memory_limit_mb",
            ),
            (
                "bin_dir = \"/usr/local/bin\"",
                "bin_dir = \"bin\"",
                "install.bin_dir",
            ),
            ("user = \"kestrel\"", "user = \"root\"", "install.user"),
            (
                "user = \"kestrel\"",
                "user = \"Kestrel User\"",
                "install.user",
            ),
            (
                "service_name = \"kestrel-edge\"",
                "service_name = \"kestrel-edge.service\"",
                "install.service_name",
            ),
            (
                "target = \"aarch64-unknown-linux-gnu\"",
                "target = \"aarch64\"",
                "target",
            ),
            (
                "device = \"/dev/video0\"",
                "device = \"video0\"",
                "camera.device",
            ),
            (
                "device = \"/dev/serial0\"",
                "device = \"COM1\"",
                "serial.device",
            ),
            ("chip = \"gpiochip0\"", "chip = \"gpio0\"", "gpio.chip"),
            ("cpu_mhz = 1800", "cpu_mhz = 0", "cpu_mhz"),
            (
                "name = \"raspberry-pi-4\"",
                "name = \"Raspberry Pi 4\"",
                "name",
            ),
        ];
        for (from, to, field) in cases {
            assert_field_error(&pi4_with(from, to), field);
        }
        let odd = pi4_with("width = 640", "width = 641").replace("\"mjpeg\"", "\"yuyv\"");
        assert_field_error(&odd, "camera.width");
        // The same odd width is fine in MJPEG.
        Board::parse(&pi4_with("width = 640", "width = 641"), "x").unwrap();
    }

    #[test]
    fn camera_driver_defaults_to_v4l2_and_libcamera_is_checked() {
        // Files without `driver` (every board file before it existed) stay V4L2 on their device.
        let plain = Board::parse(&pi4_with("driver = \"v4l2\"\n", ""), "x").unwrap();
        assert_eq!(plain.camera.driver, CameraDriver::V4l2);
        assert_eq!(
            (plain.camera.device.as_str(), plain.camera.index),
            ("/dev/video0", 0)
        );
        assert_eq!(plain, Board::builtin("raspberry-pi-4").unwrap());

        let csi = Board::builtin("raspberry-pi-5-csi").unwrap();
        assert_eq!(csi.camera.driver, CameraDriver::Libcamera);
        assert_eq!(csi.camera.index, 0);
        let libcamera = |extra: &str| {
            pi4_with(
                "driver = \"v4l2\"",
                &format!("driver = \"libcamera\"{extra}"),
            )
        };
        assert_eq!(
            Board::parse(&libcamera("\nindex = 1"), "x")
                .unwrap()
                .camera
                .index,
            1
        );
        assert_field_error(&libcamera("\nindex = 16"), "camera.index");
        // A V4L2 camera is chosen by its device; the libcamera number there is a mistake.
        let msg = assert_field_error(
            &pi4_with("driver = \"v4l2\"", "driver = \"v4l2\"\nindex = 1"),
            "camera.index",
        );
        assert!(msg.contains("libcamera"), "{msg}");
        let msg = assert_field_error(
            &libcamera("").replace("\"mjpeg\"", "\"yuyv\""),
            "camera.format",
        );
        assert!(msg.contains("rpicam-vid"), "{msg}");
        let msg = assert_field_error(
            &pi4_with("driver = \"v4l2\"", "driver = \"uvc\""),
            "camera.driver",
        );
        assert!(msg.contains("v4l2") && msg.contains("libcamera"), "{msg}");
        // The table names the libcamera camera instead of an unused device.
        let table = boards_table(&[csi]);
        assert!(table.contains("libcamera:0 640x480@30 mjpeg"), "{table}");
    }

    #[test]
    fn load_requires_the_name_to_match_the_file() {
        let dir = Scratch::new("name");
        let path = dir.0.join("my-pi.toml");
        std::fs::write(&path, pi4_text()).unwrap();
        let msg = Board::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains("my-pi.toml") && msg.contains("`name`"),
            "{msg}"
        );
        std::fs::write(&path, pi4_with("\"raspberry-pi-4\"", "\"my-pi\"")).unwrap();
        assert_eq!(Board::load(&path).unwrap().name, "my-pi");
        assert_eq!(
            Board::resolve(path.to_str().unwrap()).unwrap().name,
            "my-pi"
        );
        let missing = Board::load(&dir.0.join("nope.toml")).unwrap_err();
        assert!(
            matches!(missing, BoardError::Io { .. }) && missing.to_string().contains("nope.toml")
        );
    }

    #[test]
    fn boards_in_ignores_other_files_and_names_a_bad_one() {
        let dir = Scratch::new("dir");
        std::fs::write(dir.0.join("README.md"), "not a board").unwrap();
        std::fs::write(dir.0.join("raspberry-pi-4.toml"), pi4_text()).unwrap();
        assert_eq!(boards_in(&dir.0).unwrap().len(), 1);
        std::fs::write(
            dir.0.join("zz-bad.toml"),
            pi4_with("\"raspberry-pi-4\"", "\"zz-bad\"").replace("baud = 115200", "baud = 7"),
        )
        .unwrap();
        let msg = boards_in(&dir.0).unwrap_err().to_string();
        assert!(
            msg.contains("zz-bad.toml") && msg.contains("`serial.baud`"),
            "{msg}"
        );
        assert!(matches!(
            boards_in(&dir.0.join("absent")),
            Err(BoardError::Dir { .. })
        ));
    }

    #[test]
    fn resolve_finds_builtin_names_and_lists_them_when_unknown() {
        assert_eq!(
            Board::resolve("raspberry-pi-5").unwrap().name,
            "raspberry-pi-5"
        );
        let msg = Board::resolve("raspberry-pi-6").unwrap_err().to_string();
        assert!(
            msg.contains("raspberry-pi-6") && msg.contains("raspberry-pi-zero-2w"),
            "{msg}"
        );
    }

    #[test]
    fn table_has_a_header_and_one_aligned_line_per_board() {
        let boards = load_builtin_boards().unwrap();
        let table = boards_table(&boards);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), boards.len() + 1, "{table}");
        assert!(
            lines[0].starts_with("BOARD") && lines[0].contains("SERIAL"),
            "{table}"
        );
        let target_col = lines[0].find("TARGET").unwrap();
        for (line, b) in lines[1..].iter().zip(&boards) {
            assert!(line.starts_with(&b.name), "{table}");
            assert_eq!(line.find(&b.target), Some(target_col), "{table}");
            assert!(!line.ends_with(' '));
        }
        let pi4 = lines
            .iter()
            .find(|l| l.starts_with("raspberry-pi-4 "))
            .unwrap();
        for want in [
            "4x Cortex-A72 1.8 GHz",
            "3 of 4",
            "1024 of 4096 MB",
            "/dev/video0 640x480@30 mjpeg",
            "gpiochip0:17",
            "/dev/serial0 115200",
        ] {
            assert!(pi4.contains(want), "{want:?} not in {pi4:?}");
        }
        let generic = lines
            .iter()
            .find(|l| l.starts_with("generic-aarch64"))
            .unwrap();
        assert!(
            generic.contains("4 cores") && generic.contains(" - "),
            "{generic}"
        );
    }
}
