//! Where frames come from: a camera (V4L2 through nokhwa, or a Raspberry Pi camera through
//! libcamera's `rpicam-vid`, see [`crate::libcamera`]) or a replay of recorded frames, behind one
//! [`FrameSource`] trait, and the one decode path ([`decode`]) they all share. V4L2 cameras need
//! the `camera` feature; replays and the Pi camera's `rpicam-vid` stream do not.
//!
//! A source yields raw camera bytes ([`RawFrame`]: MJPEG, YUYV or RGB as the camera sends them);
//! decoding happens on the inference side, so a replayed MJPEG file exercises exactly the code a
//! live camera does. Replays can be paced at a frame rate and looped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
#[cfg(feature = "camera")]
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;
use kestrel_shared::board::{self, CameraDriver, PixelFormat};
#[cfg(feature = "camera")]
use nokhwa::pixel_format::RgbFormat;
#[cfg(feature = "camera")]
use nokhwa::utils::{FrameFormat, Resolution};
#[cfg(feature = "camera")]
use tracing::info;
use tracing::warn;

/// Largest frame a replay file may hold (a 4K RGB frame is 25 MB): bounds what one read allocates.
pub const MAX_FRAME_BYTES: u64 = 64 * 1024 * 1024;

/// Pixel layout of a frame's bytes, as cameras deliver them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFormat {
    /// One JPEG picture per frame.
    Mjpeg,
    /// YUV 4:2:2, two bytes per pixel (Y0 U Y1 V).
    Yuyv,
    /// Packed 8-bit RGB.
    Rgb,
    /// A picture file in another format (PNG, BMP, WebP) from a `dir:` replay.
    Encoded,
}

/// One frame as the source delivered it, not yet decoded.
#[derive(Debug, Clone)]
pub struct RawFrame {
    /// Frame number from the source (0-based, counting on across loops of a replay).
    pub index: u64,
    /// Time on the source's clock, ms since it started (`index * 1000 / fps` for a paced replay).
    pub source_ms: f64,
    /// Wall-clock time the frame was taken.
    pub captured: SystemTime,
    /// Width in pixels (0 when only the decoder knows, for `Encoded`).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Layout of `data`.
    pub format: RawFormat,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The `--source` text is not understood.
    #[error(
        "bad source {spec:?}: {reason} (use camera[:INDEX], camera:/dev/videoN, libcamera[:INDEX], dir:PATH, mjpeg:FILE or yuyv:FILE:WxH)"
    )]
    Spec {
        /// What was given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A replay file or directory cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A replay file is not what its kind says.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The camera cannot be opened or stopped delivering.
    #[error("camera {index}: {reason}")]
    Camera {
        /// Camera index.
        index: u32,
        /// nokhwa's explanation.
        reason: String,
    },
    /// A V4L2 device path does not name a capture node (`camera:/dev/...`, the board's
    /// `camera.device`).
    #[error(
        "camera {path}: {reason} (give /dev/videoN, or a link to one such as /dev/v4l/by-id/...; `kestrel-edge cameras` lists them)"
    )]
    Device {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A V4L2 camera was asked of a build without the `camera` feature.
    #[error(
        "this kestrel-edge was built without V4L2 cameras (the `camera` feature): use the board build (`kestrel install` makes one), or a replay source"
    )]
    NoCameraSupport,
    /// A libcamera camera (through `rpicam-vid`) cannot be started.
    #[error("libcamera camera {camera}: {reason}")]
    Libcamera {
        /// Camera number, as `rpicam-hello --list-cameras` numbers them.
        camera: u32,
        /// What is wrong, and what to do.
        reason: String,
    },
}

/// A frame could not be decoded (it is counted and skipped).
#[derive(Debug, thiserror::Error)]
#[error("frame {index} ({format:?}, {width}x{height}, {bytes} bytes) does not decode: {reason}")]
pub struct DecodeError {
    /// Frame number.
    pub index: u64,
    /// Its format.
    pub format: RawFormat,
    /// Claimed width.
    pub width: u32,
    /// Claimed height.
    pub height: u32,
    /// Size of the data.
    pub bytes: usize,
    /// The decoder's explanation.
    pub reason: String,
}

/// Decode a raw frame to RGB, as a live camera frame is: JPEG (MJPEG frames and JPEG files) with
/// the board's one JPEG codec ([`crate::jpeg`]), YUYV with [`yuyv_to_rgb`], RGB as it is, other
/// picture files with `image`. Never panics on bad bytes (the JPEG decoder's panics are caught).
pub fn decode(raw: &RawFrame) -> Result<RgbImage, DecodeError> {
    let err = |reason: String| DecodeError {
        index: raw.index,
        format: raw.format,
        width: raw.width,
        height: raw.height,
        bytes: raw.data.len(),
        reason,
    };
    let jpeg = raw.format == RawFormat::Mjpeg
        || (raw.format == RawFormat::Encoded && crate::jpeg::is_jpeg(&raw.data));
    if jpeg {
        return crate::jpeg::decode(&raw.data).map_err(err);
    }
    let pixels = raw.width as usize * raw.height as usize;
    let expected = match raw.format {
        RawFormat::Yuyv => pixels * 2,
        RawFormat::Rgb => pixels * 3,
        _ => {
            return image::load_from_memory(&raw.data)
                .map(|i| i.to_rgb8())
                .map_err(|e| err(e.to_string()));
        }
    };
    if raw.data.len() != expected {
        return Err(err(format!("expected {expected} bytes")));
    }
    if pixels == 0 {
        return Err(err("empty frame".into()));
    }
    let rgb = match raw.format {
        RawFormat::Yuyv if pixels % 2 == 1 => {
            return Err(err("YUYV needs an even number of pixels".into()));
        }
        RawFormat::Yuyv => yuyv_to_rgb(&raw.data),
        _ => raw.data.clone(),
    };
    RgbImage::from_raw(raw.width, raw.height, rgb).ok_or_else(|| err("wrong size".into()))
}

/// YUYV 4:2:2 (Y0 U Y1 V: two pixels per four bytes) to packed RGB, with the integer BT.601
/// conversion V4L2 drivers and nokhwa use (studio range: Y 16-235, U and V centred on 128).
pub fn yuyv_to_rgb(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 * 3);
    for q in data.chunks_exact(4) {
        let (d, e) = (i32::from(q[1]) - 128, i32::from(q[3]) - 128);
        for y in [q[0], q[2]] {
            let c = (i32::from(y) - 16) * 298;
            out.extend([
                ((c + 409 * e + 128) >> 8).clamp(0, 255) as u8,
                ((c - 100 * d - 208 * e + 128) >> 8).clamp(0, 255) as u8,
                ((c + 516 * d + 128) >> 8).clamp(0, 255) as u8,
            ]);
        }
    }
    out
}

/// Something that delivers frames, one at a time, in order.
pub trait FrameSource {
    /// The next frame; `Ok(None)` at the end of a replay. A camera blocks until it has one.
    fn next_frame(&mut self) -> Result<Option<RawFrame>, SourceError>;
    /// A short description for logs and stats (`mjpeg:video.mjpeg`, `camera:0 640x480 MJPEG`).
    fn describe(&self) -> String;
    /// True for a live camera (drop frames when inference is busy); false for a replay (which
    /// may be processed frame by frame).
    fn is_live(&self) -> bool {
        false
    }
}

/// Camera settings: resolution, frame rate and pixel format to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraSettings {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second.
    pub fps: u32,
    /// Pixel format.
    pub format: PixelFormat,
}

impl Default for CameraSettings {
    fn default() -> Self {
        CameraSettings {
            width: 640,
            height: 480,
            fps: 30,
            format: PixelFormat::Mjpeg,
        }
    }
}

/// What `--source` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// `camera`: the board file's camera (its `[camera]` driver and device, see
    /// [`SourceSpec::with_board`]); V4L2 camera 0 without a board file.
    DefaultCamera,
    /// `camera:INDEX`: V4L2 camera `/dev/videoINDEX`.
    Camera(u32),
    /// `camera:/dev/videoN`: a V4L2 device by its path (or a link to it, such as
    /// `/dev/v4l/by-id/...`), resolved when opened.
    Device(PathBuf),
    /// `libcamera[:INDEX]`: a Raspberry Pi camera module through `rpicam-vid` (camera 0 by
    /// default, numbered as `rpicam-hello --list-cameras` does).
    Libcamera(u32),
    /// `dir:PATH`: picture files in name order.
    Dir(PathBuf),
    /// `mjpeg:FILE`: concatenated JPEG frames.
    Mjpeg(PathBuf),
    /// `yuyv:FILE:WxH`: raw YUYV frames of one size, back to back.
    Yuyv(PathBuf, u32, u32),
}

impl std::str::FromStr for SourceSpec {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, SourceError> {
        let bad = |reason: &str| SourceError::Spec {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "camera" if !s.contains(':') => Ok(SourceSpec::DefaultCamera),
            "camera" if rest.starts_with('/') => {
                if !rest.starts_with("/dev/") {
                    return Err(bad("a camera device path is under /dev/, e.g. /dev/video0"));
                }
                Ok(
                    match rest.strip_prefix("/dev/video").map(str::parse::<u32>) {
                        Some(Ok(n)) => SourceSpec::Camera(n),
                        _ => SourceSpec::Device(rest.into()),
                    },
                )
            }
            "camera" => rest
                .parse()
                .map(SourceSpec::Camera)
                .map_err(|_| bad("the camera index must be a number or a /dev/videoN path")),
            "libcamera" if !s.contains(':') => Ok(SourceSpec::Libcamera(0)),
            "libcamera" => rest
                .parse()
                .map(SourceSpec::Libcamera)
                .map_err(|_| bad("the libcamera camera index must be a number")),
            "dir" | "mjpeg" if rest.is_empty() => Err(bad("a path is needed")),
            "dir" => Ok(SourceSpec::Dir(rest.into())),
            "mjpeg" => Ok(SourceSpec::Mjpeg(rest.into())),
            "yuyv" => {
                let (path, size) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| bad("yuyv needs FILE:WxH"))?;
                let (w, h) = size
                    .split_once('x')
                    .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
                    .filter(|&(w, h)| w > 0 && h > 0 && w % 2 == 0)
                    .ok_or_else(|| bad("the size must be WxH with an even width, e.g. 640x480"))?;
                Ok(SourceSpec::Yuyv(path.into(), w, h))
            }
            _ => Err(bad("unknown kind")),
        }
    }
}

/// How a replay is played.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Replay {
    /// Pace at this many frames per second (none: as fast as the consumer takes them).
    pub fps: Option<f64>,
    /// Start again at the end.
    pub looping: bool,
}

impl SourceSpec {
    /// Plain `camera` made concrete by the board file's `[camera]`: its V4L2 `device`, or its
    /// libcamera camera `index` with `driver = "libcamera"`; V4L2 camera 0 without a board.
    /// Every other source is returned as it is.
    pub fn with_board(self, camera: Option<&board::Camera>) -> SourceSpec {
        match (self, camera) {
            (SourceSpec::DefaultCamera, Some(c)) => match c.driver {
                CameraDriver::Libcamera => SourceSpec::Libcamera(c.index),
                CameraDriver::V4l2 => format!("camera:{}", c.device)
                    .parse()
                    .unwrap_or_else(|_| SourceSpec::Device(c.device.clone().into())),
            },
            (SourceSpec::DefaultCamera, None) => SourceSpec::Camera(0),
            (spec, _) => spec,
        }
    }

    /// Open the source. `stop` ends a camera's reconnection attempts.
    pub fn open(
        &self,
        replay: Replay,
        camera: CameraSettings,
        stop: Arc<AtomicBool>,
    ) -> Result<Box<dyn FrameSource>, SourceError> {
        Ok(match self {
            #[cfg(feature = "camera")]
            SourceSpec::DefaultCamera => Box::new(CameraSource::new(0, camera, stop)),
            #[cfg(feature = "camera")]
            SourceSpec::Camera(index) => Box::new(CameraSource::new(*index, camera, stop)),
            #[cfg(feature = "camera")]
            SourceSpec::Device(path) => {
                let index = v4l2_index(path)?;
                info!("camera {} is /dev/video{index}", path.display());
                Box::new(CameraSource::new(index, camera, stop))
            }
            #[cfg(not(feature = "camera"))]
            SourceSpec::DefaultCamera | SourceSpec::Camera(_) | SourceSpec::Device(_) => {
                return Err(SourceError::NoCameraSupport);
            }
            SourceSpec::Libcamera(index) => Box::new(crate::libcamera::LibcameraSource::new(
                *index, camera, stop,
            )?),
            SourceSpec::Dir(p) => Box::new(Paced::new(DirFrames::open(p)?, replay)),
            SourceSpec::Mjpeg(p) => Box::new(Paced::new(MjpegFrames::open(p)?, replay)),
            SourceSpec::Yuyv(p, w, h) => Box::new(Paced::new(YuyvFrames::open(p, *w, *h)?, replay)),
        })
    }
}

/// Recorded frames addressable by position (what every replay is underneath).
pub trait Recording {
    /// Number of frames.
    fn len(&self) -> usize;
    /// True when there is no frame.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Frame `i`: format, width, height, bytes.
    fn read(&mut self, i: usize) -> Result<(RawFormat, u32, u32, Vec<u8>), SourceError>;
    /// Description for logs.
    fn describe(&self) -> String;

    /// Frame `i` as a [`RawFrame`] numbered `i`, at source time 0 (for checks outside a replay).
    fn raw_frame(&mut self, i: usize) -> Result<RawFrame, SourceError> {
        let (format, width, height, data) = self.read(i)?;
        Ok(RawFrame {
            index: i as u64,
            source_ms: 0.0,
            captured: SystemTime::now(),
            width,
            height,
            format,
            data,
        })
    }
}

/// A [`Recording`] played in order, optionally paced and looped.
pub struct Paced<R: Recording> {
    rec: R,
    replay: Replay,
    next: u64,
    start: Option<Instant>,
}

impl<R: Recording> Paced<R> {
    /// Play `rec` as `replay` says.
    pub fn new(rec: R, replay: Replay) -> Self {
        Paced {
            rec,
            replay,
            next: 0,
            start: None,
        }
    }
}

impl<R: Recording> FrameSource for Paced<R> {
    fn next_frame(&mut self) -> Result<Option<RawFrame>, SourceError> {
        let n = self.rec.len() as u64;
        if n == 0 || (!self.replay.looping && self.next >= n) {
            return Ok(None);
        }
        let start = *self.start.get_or_insert_with(Instant::now);
        let index = self.next;
        let source_ms = match self.replay.fps {
            Some(fps) => {
                let due = Duration::from_secs_f64(index as f64 / fps);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                index as f64 * 1000.0 / fps
            }
            None => start.elapsed().as_secs_f64() * 1e3,
        };
        let (format, width, height, data) = self.rec.read((index % n) as usize)?;
        self.next += 1;
        Ok(Some(RawFrame {
            index,
            source_ms,
            captured: SystemTime::now(),
            width,
            height,
            format,
            data,
        }))
    }

    fn describe(&self) -> String {
        self.rec.describe()
    }
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// `dir:PATH`: picture files in name order (hidden and non-picture files ignored). JPEGs go
/// through the MJPEG decoder like camera frames; other formats through the image crate.
#[derive(Debug)]
pub struct DirFrames {
    dir: PathBuf,
    files: Vec<PathBuf>,
}

impl DirFrames {
    /// List the pictures in `dir`.
    pub fn open(dir: &Path) -> Result<Self, SourceError> {
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).map_err(read_err(dir))? {
            let p = e.map_err(read_err(dir))?.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            let picture = matches!(
                ext.as_deref(),
                Some("jpg" | "jpeg" | "png" | "bmp" | "webp")
            );
            if picture && !name.starts_with('.') && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(SourceError::Format {
                path: dir.to_path_buf(),
                reason: "no pictures (.jpg, .png, .bmp, .webp) in this directory".into(),
            });
        }
        Ok(DirFrames {
            dir: dir.to_path_buf(),
            files,
        })
    }
}

impl Recording for DirFrames {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn read(&mut self, i: usize) -> Result<(RawFormat, u32, u32, Vec<u8>), SourceError> {
        let path = &self.files[i];
        let len = std::fs::metadata(path).map_err(read_err(path))?.len();
        if len > MAX_FRAME_BYTES {
            return Err(SourceError::Format {
                path: path.clone(),
                reason: format!("{len} bytes is too large for one frame"),
            });
        }
        let data = std::fs::read(path).map_err(read_err(path))?;
        if data.starts_with(&[0xFF, 0xD8]) {
            // A JPEG: its size from the header; a broken header still travels (and fails to
            // decode on the inference side, where it is counted).
            let (w, h) = jpeg_size(&data).unwrap_or((0, 0));
            Ok((RawFormat::Mjpeg, w, h, data))
        } else {
            Ok((RawFormat::Encoded, 0, 0, data))
        }
    }

    fn describe(&self) -> String {
        format!("dir:{} ({} pictures)", self.dir.display(), self.files.len())
    }
}

/// Width and height from a JPEG's start-of-frame marker.
pub fn jpeg_size(data: &[u8]) -> Option<(u32, u32)> {
    let mut i = 2;
    while i + 4 <= data.len() {
        if data[i] != 0xFF {
            return None;
        }
        let marker = data[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = u16::from_be_bytes([data[i + 2], data[i + 3]]) as usize;
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let s = data.get(i + 5..i + 9)?;
            let h = u16::from_be_bytes([s[0], s[1]]) as u32;
            let w = u16::from_be_bytes([s[2], s[3]]) as u32;
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

/// Byte ranges of the JPEG pictures in a concatenated MJPEG stream: each starts at an SOI
/// (`FF D8`) and ends after its EOI (`FF D9`). Marker segments are skipped by their length and
/// entropy-coded data by its byte stuffing, so an EXIF thumbnail inside a frame does not split it.
/// Bytes between pictures are ignored; a picture cut off by the end of the data is dropped.
pub fn split_mjpeg(data: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 1 < data.len() {
        if !(data[i] == 0xFF && data[i + 1] == 0xD8) {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i + 2;
        let mut end = None;
        while j + 1 < data.len() {
            if data[j] != 0xFF {
                j += 1;
                continue;
            }
            let m = data[j + 1];
            match m {
                0xD9 => {
                    end = Some(j + 2);
                    break;
                }
                // Stuffed 0xFF, fill bytes, restart markers, a nested SOI: no length.
                0x00 | 0xFF | 0xD0..=0xD8 | 0x01 => j += if m == 0xFF { 1 } else { 2 },
                _ => {
                    let Some(len) = data.get(j + 2..j + 4) else {
                        break;
                    };
                    let len = u16::from_be_bytes([len[0], len[1]]) as usize;
                    j += 2 + len;
                }
            }
        }
        match end {
            Some(e) => {
                frames.push(start..e);
                i = e;
            }
            None => break,
        }
    }
    frames
}

/// The V4L2 index N of a capture device path: `/dev/videoN` itself, or a link to it (udev's
/// `/dev/v4l/by-id/...` and `/dev/v4l/by-path/...` names stay put when cameras are re-plugged).
pub fn v4l2_index(path: &Path) -> Result<u32, SourceError> {
    let bad = |reason: String| SourceError::Device {
        path: path.to_path_buf(),
        reason,
    };
    let index_of = |p: &Path| {
        p.to_str()
            .and_then(|s| s.strip_prefix("/dev/video"))
            .and_then(|n| n.parse::<u32>().ok())
    };
    if let Some(n) = index_of(path) {
        return Ok(n);
    }
    // Follow the links by hand (udev's are relative, `../../video0`), so a link names its node
    // even while the camera is unplugged.
    let mut real = path.to_path_buf();
    for _ in 0..16 {
        let Ok(target) = std::fs::read_link(&real) else {
            break;
        };
        let joined = real.parent().unwrap_or(Path::new("/")).join(target);
        real = PathBuf::new();
        for c in joined.components() {
            match c {
                std::path::Component::ParentDir => {
                    real.pop();
                }
                std::path::Component::CurDir => {}
                c => real.push(c),
            }
        }
    }
    if let Some(n) = index_of(&real) {
        return Ok(n);
    }
    match std::fs::metadata(&real) {
        Ok(_) => Err(bad(format!(
            "it is {}, not a V4L2 video node",
            real.display()
        ))),
        Err(e) => Err(bad(format!("cannot resolve it: {e}"))),
    }
}

/// Offsets of the first JPEG start-of-image marker (`FF D8`) in `data`.
fn find_soi(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == [0xFF, 0xD8])
}

/// Splits an MJPEG byte stream that arrives in pieces (a pipe from `rpicam-vid`) into its JPEG
/// pictures, as [`split_mjpeg`] does for a whole file: pictures split across reads are
/// reassembled, bytes between pictures are dropped. Memory is bounded: a picture still open after
/// `max_frame` bytes (garbage that happens to start with `FF D8`, or a truncated picture) is
/// given up and the search resumes at the next start marker, so no input grows the buffer beyond
/// `max_frame` plus one read.
#[derive(Debug)]
pub struct MjpegSplitter {
    buf: Vec<u8>,
    max_frame: usize,
    discarded: u64,
}

impl MjpegSplitter {
    /// A splitter that gives up on pictures larger than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        MjpegSplitter {
            buf: Vec::new(),
            max_frame: max_frame.max(4),
            discarded: 0,
        }
    }

    /// Add the next bytes of the stream; returns the pictures they completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let mut consumed = 0;
            for r in split_mjpeg(&self.buf) {
                if r.len() <= self.max_frame {
                    out.push(self.buf[r.clone()].to_vec());
                } else {
                    self.discarded += r.len() as u64;
                }
                self.discarded += (r.start - consumed) as u64;
                consumed = r.end;
            }
            // What follows the last picture: keep from the next start marker (or a lone last
            // 0xFF, which may be the first half of one).
            let rest = &self.buf[consumed..];
            let mut keep = match find_soi(rest) {
                Some(p) => consumed + p,
                None => self.buf.len() - usize::from(rest.last() == Some(&0xFF)),
            };
            let resync = self.buf.len() - keep > self.max_frame;
            if resync {
                // A picture that never ends: give up on it, look for the next start.
                keep = match find_soi(&self.buf[keep + 2..]) {
                    Some(p) => keep + 2 + p,
                    None => self.buf.len() - 1,
                };
            }
            self.discarded += (keep - consumed) as u64;
            self.buf.drain(..keep);
            if !resync {
                return out;
            }
        }
    }

    /// Forget a picture in progress (its writer went away; the next stream starts afresh).
    pub fn reset(&mut self) {
        self.discarded += self.buf.len() as u64;
        self.buf.clear();
    }

    /// Bytes held for a picture in progress.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes dropped so far: between pictures, oversized or unfinished pictures.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }
}

/// `mjpeg:FILE`: concatenated JPEG frames. The file is indexed once; frames are read as played,
/// so a long recording costs no memory.
#[derive(Debug)]
pub struct MjpegFrames {
    path: PathBuf,
    file: File,
    frames: Vec<(u64, u64, u32, u32)>,
}

impl MjpegFrames {
    /// Index the frames of `path`.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let data = std::fs::read(path).map_err(read_err(path))?;
        let frames: Vec<_> = split_mjpeg(&data)
            .into_iter()
            .filter(|r| (r.len() as u64) <= MAX_FRAME_BYTES)
            .map(|r| {
                let (w, h) = jpeg_size(&data[r.clone()]).unwrap_or((0, 0));
                (r.start as u64, r.len() as u64, w, h)
            })
            .collect();
        if frames.is_empty() {
            return Err(SourceError::Format {
                path: path.to_path_buf(),
                reason: "no JPEG frame (FF D8 ... FF D9) in this file; is it an MJPEG stream?"
                    .into(),
            });
        }
        let file = File::open(path).map_err(read_err(path))?;
        Ok(MjpegFrames {
            path: path.to_path_buf(),
            file,
            frames,
        })
    }
}

impl Recording for MjpegFrames {
    fn len(&self) -> usize {
        self.frames.len()
    }

    fn read(&mut self, i: usize) -> Result<(RawFormat, u32, u32, Vec<u8>), SourceError> {
        let (offset, len, w, h) = self.frames[i];
        let mut data = vec![0; len as usize];
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(&mut data))
            .map_err(read_err(&self.path))?;
        Ok((RawFormat::Mjpeg, w, h, data))
    }

    fn describe(&self) -> String {
        format!(
            "mjpeg:{} ({} frames)",
            self.path.display(),
            self.frames.len()
        )
    }
}

/// `yuyv:FILE:WxH`: raw YUYV frames back to back, `W * H * 2` bytes each.
#[derive(Debug)]
pub struct YuyvFrames {
    path: PathBuf,
    file: File,
    width: u32,
    height: u32,
    count: usize,
}

impl YuyvFrames {
    /// Open `path` holding `width` x `height` YUYV frames.
    pub fn open(path: &Path, width: u32, height: u32) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(read_err(path))?;
        let size = file.metadata().map_err(read_err(path))?.len();
        let frame = width as u64 * height as u64 * 2;
        if frame > MAX_FRAME_BYTES {
            return Err(SourceError::Format {
                path: path.to_path_buf(),
                reason: format!("{width}x{height} YUYV frames are too large"),
            });
        }
        if size < frame {
            return Err(SourceError::Format {
                path: path.to_path_buf(),
                reason: format!(
                    "{size} bytes is less than one {width}x{height} YUYV frame ({frame} bytes); check the size"
                ),
            });
        }
        if size % frame != 0 {
            warn!(
                "{}: {} trailing bytes after {} whole {width}x{height} frames are ignored",
                path.display(),
                size % frame,
                size / frame
            );
        }
        Ok(YuyvFrames {
            path: path.to_path_buf(),
            file,
            width,
            height,
            count: (size / frame) as usize,
        })
    }
}

impl Recording for YuyvFrames {
    fn len(&self) -> usize {
        self.count
    }

    fn read(&mut self, i: usize) -> Result<(RawFormat, u32, u32, Vec<u8>), SourceError> {
        let frame = self.width as u64 * self.height as u64 * 2;
        let mut data = vec![0; frame as usize];
        self.file
            .seek(SeekFrom::Start(i as u64 * frame))
            .and_then(|_| self.file.read_exact(&mut data))
            .map_err(read_err(&self.path))?;
        Ok((RawFormat::Yuyv, self.width, self.height, data))
    }

    fn describe(&self) -> String {
        format!(
            "yuyv:{} ({}x{}, {} frames)",
            self.path.display(),
            self.width,
            self.height,
            self.count
        )
    }
}

/// Longest wait between attempts to reopen a camera that went away.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A V4L2 camera through nokhwa. When it disappears (unplugged, driver reset) the source says so,
/// retries with exponential backoff up to [`MAX_BACKOFF`], and carries on when it returns.
#[cfg(feature = "camera")]
pub struct CameraSource {
    index: u32,
    settings: CameraSettings,
    stop: Arc<AtomicBool>,
    camera: Option<nokhwa::Camera>,
    start: Instant,
    next: u64,
}

#[cfg(feature = "camera")]
impl CameraSource {
    /// A camera to open on first use.
    pub fn new(index: u32, settings: CameraSettings, stop: Arc<AtomicBool>) -> Self {
        CameraSource {
            index,
            settings,
            stop,
            camera: None,
            start: Instant::now(),
            next: 0,
        }
    }

    fn open(&self) -> Result<nokhwa::Camera, SourceError> {
        use nokhwa::utils::{CameraFormat, CameraIndex, RequestedFormat, RequestedFormatType};
        let s = self.settings;
        let format = match s.format {
            PixelFormat::Mjpeg => FrameFormat::MJPEG,
            PixelFormat::Yuyv => FrameFormat::YUYV,
        };
        let wanted = CameraFormat::new(Resolution::new(s.width, s.height), format, s.fps);
        let request = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(wanted));
        let err = |e: nokhwa::NokhwaError| SourceError::Camera {
            index: self.index,
            reason: e.to_string(),
        };
        let mut cam = nokhwa::Camera::new(CameraIndex::Index(self.index), request).map_err(err)?;
        cam.open_stream().map_err(err)?;
        let got = cam.camera_format();
        info!(
            "camera {}: {}x{} {} at {} fps",
            self.index,
            got.resolution().width(),
            got.resolution().height(),
            got.format(),
            got.frame_rate()
        );
        Ok(cam)
    }
}

#[cfg(feature = "camera")]
impl FrameSource for CameraSource {
    fn next_frame(&mut self) -> Result<Option<RawFrame>, SourceError> {
        let mut backoff = Duration::from_millis(250);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if self.camera.is_none() {
                match self.open() {
                    Ok(c) => self.camera = Some(c),
                    Err(e) => {
                        warn!("{e}; retrying in {:.1} s", backoff.as_secs_f64());
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            let Some(cam) = self.camera.as_mut() else {
                continue;
            };
            match cam.frame() {
                Ok(buf) => {
                    let res = buf.resolution();
                    let format = match buf.source_frame_format() {
                        FrameFormat::MJPEG => RawFormat::Mjpeg,
                        FrameFormat::YUYV => RawFormat::Yuyv,
                        FrameFormat::RAWRGB => RawFormat::Rgb,
                        other => {
                            return Err(SourceError::Camera {
                                index: self.index,
                                reason: format!(
                                    "delivers {other} frames; ask for MJPEG or YUYV (--pixel-format)"
                                ),
                            });
                        }
                    };
                    let index = self.next;
                    self.next += 1;
                    return Ok(Some(RawFrame {
                        index,
                        source_ms: self.start.elapsed().as_secs_f64() * 1e3,
                        captured: SystemTime::now(),
                        width: res.width(),
                        height: res.height(),
                        format,
                        data: buf.buffer().to_vec(),
                    }));
                }
                Err(e) => {
                    warn!(
                        "camera {} stopped delivering frames ({e}); reopening",
                        self.index
                    );
                    self.camera = None;
                }
            }
        }
    }

    fn describe(&self) -> String {
        let s = self.settings;
        format!(
            "camera:{} {}x{} {:?} {} fps",
            self.index, s.width, s.height, s.format, s.fps
        )
    }

    fn is_live(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32, shade: u8) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, _| image::Rgb([shade, (x % 256) as u8, 40]));
        crate::jpeg::encode(&img, 90).unwrap()
    }

    #[test]
    fn spec_parsing() {
        assert_eq!(
            "camera".parse::<SourceSpec>().unwrap(),
            SourceSpec::DefaultCamera
        );
        assert_eq!(
            "camera:/dev/video3".parse::<SourceSpec>().unwrap(),
            SourceSpec::Camera(3)
        );
        assert_eq!(
            "camera:/dev/v4l/by-id/usb-cam-video-index0"
                .parse::<SourceSpec>()
                .unwrap(),
            SourceSpec::Device("/dev/v4l/by-id/usb-cam-video-index0".into())
        );
        assert_eq!(
            "libcamera".parse::<SourceSpec>().unwrap(),
            SourceSpec::Libcamera(0)
        );
        assert_eq!(
            "libcamera:1".parse::<SourceSpec>().unwrap(),
            SourceSpec::Libcamera(1)
        );
        assert_eq!(
            "camera:2".parse::<SourceSpec>().unwrap(),
            SourceSpec::Camera(2)
        );
        assert_eq!(
            "yuyv:/a:b/c.raw:640x480".parse::<SourceSpec>().unwrap(),
            SourceSpec::Yuyv("/a:b/c.raw".into(), 640, 480)
        );
        for bad in [
            "camera:x",
            "camera:",
            "camera:/tmp/video0",
            "libcamera:x",
            "libcamera:",
            "yuyv:f:641x480",
            "yuyv:f",
            "dir:",
            "video:x",
        ] {
            let e = bad.parse::<SourceSpec>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn plain_camera_is_the_board_files_camera() {
        let pi4 = kestrel_shared::Board::builtin("raspberry-pi-4").unwrap();
        let csi = kestrel_shared::Board::builtin("raspberry-pi-5-csi").unwrap();
        let camera = || "camera".parse::<SourceSpec>().unwrap();
        assert_eq!(camera().with_board(None), SourceSpec::Camera(0));
        assert_eq!(
            camera().with_board(Some(&pi4.camera)),
            SourceSpec::Camera(0)
        );
        assert_eq!(
            camera().with_board(Some(&csi.camera)),
            SourceSpec::Libcamera(0)
        );
        let mut usb = pi4.camera.clone();
        usb.device = "/dev/video2".into();
        assert_eq!(camera().with_board(Some(&usb)), SourceSpec::Camera(2));
        usb.device = "/dev/v4l/by-id/usb-x-video-index0".into();
        assert_eq!(
            camera().with_board(Some(&usb)),
            SourceSpec::Device(usb.device.clone().into())
        );
        // An explicit choice is kept whatever the board says.
        assert_eq!(
            SourceSpec::Camera(1).with_board(Some(&csi.camera)),
            SourceSpec::Camera(1)
        );
        assert_eq!(
            SourceSpec::Libcamera(1).with_board(Some(&pi4.camera)),
            SourceSpec::Libcamera(1)
        );
    }

    #[test]
    fn device_paths_resolve_to_their_video_node() {
        assert_eq!(v4l2_index(Path::new("/dev/video7")).unwrap(), 7);
        let dir = tempfile::tempdir().unwrap();
        // A link to /dev/video4 is video 4, whether or not the camera is plugged in; udev's links
        // are relative and may be chained.
        let link = dir.path().join("usb-cam-video-index0");
        std::os::unix::fs::symlink("/dev/video4", &link).unwrap();
        assert_eq!(v4l2_index(&link).unwrap(), 4);
        let by_id = dir.path().join("by-id");
        std::fs::create_dir(&by_id).unwrap();
        std::os::unix::fs::symlink("../usb-cam-video-index0", by_id.join("cam")).unwrap();
        assert_eq!(v4l2_index(&by_id.join("cam")).unwrap(), 4);
        let e = v4l2_index(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(
            e.contains("/dev/null") && e.contains("not a V4L2 video node"),
            "{e}"
        );
        let e = v4l2_index(Path::new("/dev/v4l/by-id/absent"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot resolve") && e.contains("kestrel-edge cameras"),
            "{e}"
        );
    }

    #[test]
    fn mjpeg_stream_splits_into_its_frames_despite_noise() {
        let (a, b) = (jpeg(64, 48, 10), jpeg(32, 16, 200));
        let mut stream = vec![1, 2, 3];
        stream.extend(&a);
        stream.extend([0xFF, 0x00, 7]);
        stream.extend(&b);
        stream.extend(&a[..a.len() / 2]); // cut off: dropped
        let frames = split_mjpeg(&stream);
        assert_eq!(frames.len(), 2);
        assert_eq!(&stream[frames[0].clone()], &a[..]);
        assert_eq!(&stream[frames[1].clone()], &b[..]);
        assert_eq!(jpeg_size(&a), Some((64, 48)));
        assert_eq!(jpeg_size(&b), Some((32, 16)));
    }

    /// Kestrel's YUYV conversion gives nokhwa's bytes (what decoded camera frames before it), on
    /// random frames: replays recorded with nokhwa-era builds decode the same.
    #[cfg(feature = "camera")]
    mod yuyv_like_nokhwa {
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn same_bytes(data in proptest::collection::vec(any::<u8>(), 0..64usize)
                .prop_map(|mut d| { d.truncate(d.len() / 4 * 4); d })) {
                let ours = super::super::yuyv_to_rgb(&data);
                let theirs = nokhwa::utils::yuyv422_to_rgb(&data, false).unwrap();
                prop_assert_eq!(ours, theirs);
            }
        }
    }

    #[test]
    fn decodes_mjpeg_and_yuyv_and_refuses_garbage() {
        let j = jpeg(64, 48, 128);
        let raw = |format, width, height, data| RawFrame {
            index: 3,
            source_ms: 0.0,
            captured: SystemTime::now(),
            width,
            height,
            format,
            data,
        };
        let img = decode(&raw(RawFormat::Mjpeg, 64, 48, j.clone())).unwrap();
        assert_eq!(img.dimensions(), (64, 48));
        assert!((img.get_pixel(10, 10).0[0] as i32 - 128).abs() < 8);
        // YUYV mid-grey: Y=128, U=V=128 -> RGB ~ (128, 128, 128).
        let yuyv = vec![128u8; 4 * 2 * 2];
        let img = decode(&raw(RawFormat::Yuyv, 4, 2, yuyv)).unwrap();
        assert!(
            img.pixels()
                .all(|p| p.0.iter().all(|&c| (c as i32 - 128).abs() < 4))
        );
        let mut broken = j.clone();
        broken.truncate(j.len() / 3);
        for bad in [
            raw(RawFormat::Mjpeg, 64, 48, broken),
            raw(RawFormat::Mjpeg, 64, 48, vec![0xFF, 0xD8, 1, 2, 3]),
            raw(RawFormat::Yuyv, 4, 2, vec![0; 5]),
            raw(RawFormat::Yuyv, 3, 1, vec![0; 6]),
            raw(RawFormat::Rgb, 4, 2, vec![0; 23]),
            raw(RawFormat::Rgb, 0, 0, vec![]),
            raw(RawFormat::Encoded, 0, 0, b"not a picture".to_vec()),
        ] {
            let e = decode(&bad).unwrap_err();
            assert_eq!(e.index, 3);
        }
    }

    #[test]
    fn paced_replay_loops_and_keeps_source_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = Vec::new();
        for i in 0..3 {
            stream.extend(jpeg(16, 16, i * 50));
        }
        let path = dir.path().join("v.mjpeg");
        std::fs::write(&path, &stream).unwrap();
        let spec: SourceSpec = format!("mjpeg:{}", path.display()).parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let replay = Replay {
            fps: Some(100.0),
            looping: true,
        };
        let mut src = spec
            .open(replay, CameraSettings::default(), stop.clone())
            .unwrap();
        let t = Instant::now();
        let frames: Vec<_> = (0..7).map(|_| src.next_frame().unwrap().unwrap()).collect();
        assert!(
            t.elapsed() >= Duration::from_millis(55),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(frames[6].index, 6);
        assert_eq!(frames[6].source_ms, 60.0);
        assert_eq!(frames[3].data, frames[0].data);
        let once = Replay {
            fps: None,
            looping: false,
        };
        let mut src = spec.open(once, CameraSettings::default(), stop).unwrap();
        let mut n = 0;
        while src.next_frame().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn yuyv_file_checks_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.yuyv");
        std::fs::write(&path, vec![128u8; 10]).unwrap();
        let e = YuyvFrames::open(&path, 4, 2).unwrap_err().to_string();
        assert!(e.contains("less than one 4x2"), "{e}");
        std::fs::write(&path, vec![128u8; 16 * 3 + 5]).unwrap();
        let f = YuyvFrames::open(&path, 4, 2).unwrap();
        assert_eq!(f.len(), 3);
    }
}
