//! `kestrel-edge cameras`: what can be opened as a camera on this board, and how.
//!
//! Two kinds are listed: V4L2 nodes (`/dev/video*`, USB cameras and older CSI drivers; the
//! `camera[:N]` and `camera:/dev/videoN` sources) with their pixel formats, frame sizes and
//! frame rates read with V4L2's enumeration ioctls (nothing is configured or streamed, so a camera
//! in use by the agent is listed too); and libcamera cameras (Raspberry Pi camera modules, the
//! `libcamera[:N]` source) with their sensor modes, from `rpicam-hello --list-cameras`. A node
//! that cannot be opened is listed with the reason; a board without rpicam-apps says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::libcamera::resolve_program;

/// Environment variable naming the program that lists libcamera cameras (a path or a name on
/// `PATH`), for a non-standard install or a test's fake.
pub const RPICAM_HELLO_ENV: &str = "KESTREL_RPICAM_HELLO";

/// Programs that list libcamera cameras with `--list-cameras`, in order (Bookworm's names, then
/// Bullseye's; every rpicam app takes the option).
pub const LIST_PROGRAMS: &[&str] = &[
    "rpicam-hello",
    "rpicam-vid",
    "libcamera-hello",
    "libcamera-vid",
];

/// How long `--list-cameras` may take (libcamera probes every sensor mode).
const LIST_TIMEOUT: Duration = Duration::from_secs(20);

/// `kestrel-edge cameras`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  kestrel-edge cameras\n  kestrel-edge cameras --json")]
pub struct CamerasArgs {
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Every camera found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraList {
    /// V4L2 nodes, in number order.
    pub v4l2: Vec<V4l2Device>,
    /// libcamera cameras.
    pub libcamera: LibcameraList,
}

/// One `/dev/videoN` node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V4l2Device {
    /// Device path.
    pub path: PathBuf,
    /// N of `/dev/videoN`: `--source camera:N`.
    pub index: u32,
    /// The device's name (`card`), e.g. `HD Pro Webcam C920`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kernel driver, e.g. `uvcvideo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Bus, e.g. `usb-0000:01:00.0-1.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// True when it captures video (USB cameras have a second, metadata node that does not).
    pub capture: bool,
    /// Pixel formats with their sizes (capture nodes only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<V4l2Format>,
    /// Why it could not be opened or queried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A hint, e.g. that the node belongs to libcamera's pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A pixel format of a V4L2 camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct V4l2Format {
    /// FourCC, e.g. `MJPG`, `YUYV`.
    pub fourcc: String,
    /// The driver's description, e.g. `Motion-JPEG`.
    pub description: String,
    /// Frame sizes.
    pub sizes: Vec<FrameSize>,
}

/// A frame size a V4L2 camera offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FrameSize {
    /// One size with its frame rates.
    Discrete {
        /// Width, pixels.
        width: u32,
        /// Height, pixels.
        height: u32,
        /// Frame rates, fastest first (for a range, its two ends).
        fps: Vec<f64>,
    },
    /// Any size in a range, in steps.
    Stepwise {
        /// Smallest width.
        min_width: u32,
        /// Smallest height.
        min_height: u32,
        /// Largest width.
        max_width: u32,
        /// Largest height.
        max_height: u32,
        /// Width step.
        step_width: u32,
        /// Height step.
        step_height: u32,
    },
}

/// The libcamera side: which program was asked, and what it said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LibcameraList {
    /// The program run (`rpicam-hello`), absent when none is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<PathBuf>,
    /// Why there is no list (not installed, failed, timed out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The cameras.
    pub cameras: Vec<LibcameraCamera>,
}

/// A libcamera camera as `rpicam-hello --list-cameras` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LibcameraCamera {
    /// Camera number: `--source libcamera:N`, a board file's `camera.index`.
    pub index: u32,
    /// Sensor model, e.g. `imx708_wide`.
    pub model: String,
    /// The sensor's summary, e.g. `4608x2592 10-bit RGGB`.
    pub sensor: String,
    /// libcamera's id, the sensor's device-tree path.
    pub id: String,
    /// Sensor modes.
    pub modes: Vec<SensorMode>,
}

/// A sensor mode (the ISP scales it to the size asked for).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorMode {
    /// Raw format, e.g. `SRGGB10_CSI2P`.
    pub format: String,
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Highest frame rate (absent when libcamera does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fps: Option<f64>,
    /// The sensor area it reads, e.g. `(0, 0)/4608x2592`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<String>,
}

/// Drivers of `/dev/video*` nodes that are parts of libcamera's pipeline on Raspberry Pis (the
/// CSI receivers give raw Bayer data, the rest are the ISP and codecs).
const PIPELINE_DRIVERS: &[&str] = &["unicam", "rp1-cfe", "pispbe", "bcm2835-isp"];

/// List the V4L2 nodes under `dev` (`/dev` on a board) and the libcamera cameras.
pub fn list(dev: &Path) -> CameraList {
    CameraList {
        v4l2: list_v4l2(dev),
        libcamera: list_libcamera(),
    }
}

/// The `videoN` nodes of `dev`, each queried.
pub fn list_v4l2(dev: &Path) -> Vec<V4l2Device> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix("video")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(n, p)| query_v4l2(n, &p)).collect()
}

#[cfg(target_os = "linux")]
fn query_v4l2(index: u32, path: &Path) -> V4l2Device {
    use v4l::capability::Flags;
    use v4l::video::Capture;
    let mut d = V4l2Device {
        path: path.to_path_buf(),
        index,
        name: None,
        driver: None,
        bus: None,
        capture: false,
        formats: Vec::new(),
        error: None,
        note: None,
    };
    let dev = match v4l::Device::with_path(path) {
        Ok(dev) => dev,
        Err(e) => {
            d.error = Some(open_error(&e));
            return d;
        }
    };
    let caps = match dev.query_caps() {
        Ok(c) => c,
        Err(e) => {
            d.error = Some(format!("not a V4L2 device ({e})"));
            return d;
        }
    };
    d.capture = caps.capabilities.contains(Flags::VIDEO_CAPTURE)
        || caps.capabilities.contains(Flags::VIDEO_CAPTURE_MPLANE);
    if PIPELINE_DRIVERS.contains(&caps.driver.as_str()) {
        d.note = Some(
            "part of libcamera's pipeline (a CSI camera module): use --source libcamera".into(),
        );
    }
    d.name = Some(caps.card);
    d.driver = Some(caps.driver);
    d.bus = Some(caps.bus);
    if !caps.capabilities.contains(Flags::VIDEO_CAPTURE) {
        // Metadata, codec and ISP nodes; multi-planar capture is not enumerated by nokhwa either.
        return d;
    }
    let formats = match dev.enum_formats() {
        Ok(f) => f,
        Err(e) => {
            d.error = Some(format!("cannot list its formats: {e}"));
            return d;
        }
    };
    for f in formats {
        let mut sizes = Vec::new();
        for s in dev.enum_framesizes(f.fourcc).unwrap_or_default() {
            match s.size {
                v4l::framesize::FrameSizeEnum::Discrete(z) => {
                    let mut fps: Vec<f64> = dev
                        .enum_frameintervals(f.fourcc, z.width, z.height)
                        .unwrap_or_default()
                        .into_iter()
                        .flat_map(|i| match i.interval {
                            v4l::frameinterval::FrameIntervalEnum::Discrete(f) => vec![f],
                            v4l::frameinterval::FrameIntervalEnum::Stepwise(s) => {
                                vec![s.min, s.max]
                            }
                        })
                        .filter(|f| f.numerator > 0)
                        .map(|f| f.denominator as f64 / f.numerator as f64)
                        .collect();
                    fps.sort_by(|a, b| b.total_cmp(a));
                    fps.dedup();
                    sizes.push(FrameSize::Discrete {
                        width: z.width,
                        height: z.height,
                        fps,
                    });
                }
                v4l::framesize::FrameSizeEnum::Stepwise(s) => sizes.push(FrameSize::Stepwise {
                    min_width: s.min_width,
                    min_height: s.min_height,
                    max_width: s.max_width,
                    max_height: s.max_height,
                    step_width: s.step_width,
                    step_height: s.step_height,
                }),
            }
        }
        d.formats.push(V4l2Format {
            fourcc: f.fourcc.str().unwrap_or("????").trim_end().to_string(),
            description: f.description,
            sizes,
        });
    }
    d
}

#[cfg(not(target_os = "linux"))]
fn query_v4l2(index: u32, path: &Path) -> V4l2Device {
    V4l2Device {
        path: path.to_path_buf(),
        index,
        name: None,
        driver: None,
        bus: None,
        capture: false,
        formats: Vec::new(),
        error: Some("V4L2 devices can only be queried on Linux".into()),
        note: None,
    }
}

#[cfg(target_os = "linux")]
fn open_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot open it: {e} (add the user to the `video` group)")
        }
        _ => format!("cannot open it: {e}"),
    }
}

/// The libcamera cameras, from `rpicam-hello --list-cameras` (or the program
/// [`RPICAM_HELLO_ENV`] names).
pub fn list_libcamera() -> LibcameraList {
    let program = match resolve_program(RPICAM_HELLO_ENV, LIST_PROGRAMS) {
        Ok(p) => p,
        Err(why) => {
            return LibcameraList {
                program: None,
                error: Some(format!("rpicam-apps not installed ({why})")),
                cameras: Vec::new(),
            };
        }
    };
    let mut list = LibcameraList {
        program: Some(program.clone()),
        error: None,
        cameras: Vec::new(),
    };
    match run_with_timeout(Command::new(&program).arg("--list-cameras"), LIST_TIMEOUT) {
        Ok((true, stdout, _)) => list.cameras = parse_list_cameras(&stdout),
        Ok((false, stdout, stderr)) => {
            // Some versions exit non-zero after listing; keep what was listed.
            list.cameras = parse_list_cameras(&stdout);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            list.error = Some(format!(
                "{} --list-cameras failed{}",
                program.display(),
                last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
            ));
        }
        Err(why) => list.error = Some(format!("{} --list-cameras: {why}", program.display())),
    }
    list
}

/// Run a command to its end, killing it after `timeout`: (succeeded, stdout, stderr).
fn run_with_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<(bool, String, String), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer in {} s", timeout.as_secs()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok((status.success(), stdout, stderr))
}

/// Read a pipe to its end on a thread (so a chatty child never blocks on a full pipe).
fn read_all<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Parse the output of `rpicam-hello --list-cameras` (rpicam-apps `core/options.cpp`):
///
/// ```text
/// Available cameras
/// -----------------
/// 0 : imx708 [4608x2592 10-bit RGGB] (/base/soc/i2c0mux/i2c@1/imx708@1a)
///     Modes: 'SRGGB10_CSI2P' : 1536x864 [120.13 fps - (768, 432)/3072x1728 crop]
///                              2304x1296 [56.03 fps - (0, 0)/4608x2592 crop]
/// ```
///
/// or `No cameras available!`. Lines it does not recognise (libcamera's log) are skipped.
pub fn parse_list_cameras(text: &str) -> Vec<LibcameraCamera> {
    let mut cameras: Vec<LibcameraCamera> = Vec::new();
    let mut format = String::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(cam) = parse_camera_line(t) {
            cameras.push(cam);
            format.clear();
            continue;
        }
        let Some(cam) = cameras.last_mut() else {
            continue;
        };
        let mut rest = t.strip_prefix("Modes:").map(str::trim).unwrap_or(t);
        if let Some(quoted) = rest.strip_prefix('\'')
            && let Some((f, after)) = quoted.split_once('\'')
        {
            format = f.to_string();
            rest = after.trim_start().strip_prefix(':').unwrap_or(after).trim();
        }
        if let Some(mode) = parse_mode(rest, &format) {
            cam.modes.push(mode);
        }
    }
    cameras
}

/// `0 : imx708 [4608x2592 10-bit RGGB] (/base/...)`.
fn parse_camera_line(t: &str) -> Option<LibcameraCamera> {
    let (n, rest) = t.split_once(" : ")?;
    let index = n.trim().parse().ok()?;
    let (model, rest) = rest.split_once(" [")?;
    let (sensor, rest) = rest.split_once(']')?;
    let id = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(rest.trim());
    Some(LibcameraCamera {
        index,
        model: model.trim().to_string(),
        sensor: sensor.trim().to_string(),
        id: id.to_string(),
        modes: Vec::new(),
    })
}

/// `1536x864 [120.13 fps - (768, 432)/3072x1728 crop]`.
fn parse_mode(t: &str, format: &str) -> Option<SensorMode> {
    if format.is_empty() {
        return None;
    }
    let (size, rest) = t.split_once(' ').unwrap_or((t, ""));
    let (w, h) = size.split_once('x')?;
    let (width, height) = (w.parse().ok()?, h.parse().ok()?);
    let inner = rest
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or("");
    let (fps, crop) = inner.split_once(" - ").unwrap_or((inner, ""));
    let max_fps = fps
        .trim()
        .strip_suffix("fps")
        .and_then(|f| f.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite());
    let crop = crop
        .trim()
        .strip_suffix("crop")
        .map(|c| c.trim().to_string());
    Some(SensorMode {
        format: format.to_string(),
        width,
        height,
        max_fps,
        crop: crop.filter(|c| !c.is_empty()),
    })
}

/// The list as text for people.
pub fn render(list: &CameraList) -> String {
    let mut out = String::new();
    let capture: Vec<&V4l2Device> = list
        .v4l2
        .iter()
        .filter(|d| d.capture || d.error.is_some())
        .collect();
    if capture.is_empty() {
        out.push_str("V4L2: no camera (no /dev/video* capture device)\n");
    } else {
        out.push_str("V4L2 (--source camera:N or camera:/dev/videoN):\n");
    }
    for d in capture {
        let mut head = format!("  {}", d.path.display());
        if let Some(n) = &d.name {
            head.push_str(&format!("  {n}"));
        }
        if let (Some(drv), Some(bus)) = (&d.driver, &d.bus) {
            head.push_str(&format!(" ({drv}, {bus})"));
        }
        out.push_str(&head);
        out.push('\n');
        if let Some(e) = &d.error {
            out.push_str(&format!("    {e}\n"));
        }
        if let Some(n) = &d.note {
            out.push_str(&format!("    note: {n}\n"));
        }
        for f in &d.formats {
            let sizes: Vec<String> = f
                .sizes
                .iter()
                .map(|s| match s {
                    FrameSize::Discrete { width, height, fps } if fps.is_empty() => {
                        format!("{width}x{height}")
                    }
                    FrameSize::Discrete { width, height, fps } => {
                        let fps: Vec<String> = fps.iter().map(|f| format!("{f:.4}")).map(|f| {
                            f.trim_end_matches('0').trim_end_matches('.').to_string()
                        }).collect();
                        format!("{width}x{height}@{}", fps.join("/"))
                    }
                    FrameSize::Stepwise {
                        min_width,
                        min_height,
                        max_width,
                        max_height,
                        step_width,
                        step_height,
                    } => format!(
                        "{min_width}x{min_height} to {max_width}x{max_height} in steps of {step_width}x{step_height}"
                    ),
                })
                .collect();
            out.push_str(&format!(
                "    {} ({}): {}\n",
                f.fourcc,
                f.description,
                if sizes.is_empty() {
                    "no sizes listed".to_string()
                } else {
                    sizes.join(", ")
                }
            ));
        }
    }
    let other: Vec<String> = list
        .v4l2
        .iter()
        .filter(|d| !d.capture && d.error.is_none())
        .map(|d| d.path.display().to_string())
        .collect();
    if !other.is_empty() {
        out.push_str(&format!(
            "  not capture devices (metadata, codec, ISP nodes): {}\n",
            other.join(" ")
        ));
    }
    let lc = &list.libcamera;
    match (&lc.program, &lc.error) {
        (None, Some(e)) => out.push_str(&format!("libcamera: {e}\n")),
        (_, _) if lc.cameras.is_empty() => out.push_str(&format!(
            "libcamera: no camera{}\n",
            lc.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )),
        _ => {
            out.push_str(
                "libcamera (--source libcamera:N, or driver = \"libcamera\" in a board file):\n",
            );
            for c in &lc.cameras {
                out.push_str(&format!(
                    "  {}: {} [{}] ({})\n",
                    c.index, c.model, c.sensor, c.id
                ));
                for m in &c.modes {
                    let fps = m
                        .max_fps
                        .map(|f| format!(" up to {f:.2} fps"))
                        .unwrap_or_default();
                    out.push_str(&format!("    {} {}x{}{fps}\n", m.format, m.width, m.height));
                }
            }
            if let Some(e) = &lc.error {
                out.push_str(&format!("  ({e})\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Raspberry Pi 5 with a Camera Module 3 Wide and an HQ camera, as rpicam-apps prints it.
    const PI5_TWO_CAMERAS: &str = "\
Available cameras
-----------------
0 : imx708_wide [4608x2592 10-bit RGGB] (/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a)
    Modes: 'SRGGB10_CSI2P' : 1536x864 [120.13 fps - (768, 432)/3072x1728 crop]
                             2304x1296 [56.03 fps - (0, 0)/4608x2592 crop]
                             4608x2592 [14.35 fps - (0, 0)/4608x2592 crop]

1 : imx477 [4056x3040 12-bit RGGB] (/base/axi/pcie@120000/rp1/i2c@80000/imx477@1a)
    Modes: 'SRGGB10_CSI2P' : 1332x990 [120.05 fps - (696, 528)/2664x1980 crop]
           'SRGGB12_CSI2P' : 2028x1080 [50.03 fps - (0, 440)/4056x2160 crop]
                             2028x1520 [40.01 fps - (0, 0)/4056x3040 crop]
                             4056x3040 [10.00 fps - (0, 0)/4056x3040 crop]

";

    #[test]
    fn list_cameras_output_is_parsed() {
        let cams = parse_list_cameras(PI5_TWO_CAMERAS);
        assert_eq!(cams.len(), 2);
        let wide = &cams[0];
        assert_eq!(
            (wide.index, wide.model.as_str(), wide.sensor.as_str()),
            (0, "imx708_wide", "4608x2592 10-bit RGGB")
        );
        assert_eq!(wide.id, "/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a");
        assert_eq!(wide.modes.len(), 3);
        assert_eq!(
            wide.modes[0],
            SensorMode {
                format: "SRGGB10_CSI2P".into(),
                width: 1536,
                height: 864,
                max_fps: Some(120.13),
                crop: Some("(768, 432)/3072x1728".into()),
            }
        );
        assert_eq!(
            (wide.modes[2].width, wide.modes[2].max_fps),
            (4608, Some(14.35))
        );
        let hq = &cams[1];
        assert_eq!((hq.index, hq.model.as_str()), (1, "imx477"));
        let modes: Vec<(&str, u32, u32)> = hq
            .modes
            .iter()
            .map(|m| (m.format.as_str(), m.width, m.height))
            .collect();
        assert_eq!(
            modes,
            [
                ("SRGGB10_CSI2P", 1332, 990),
                ("SRGGB12_CSI2P", 2028, 1080),
                ("SRGGB12_CSI2P", 2028, 1520),
                ("SRGGB12_CSI2P", 4056, 3040),
            ]
        );
    }

    #[test]
    fn no_cameras_and_log_noise_give_an_empty_or_clean_list() {
        assert!(parse_list_cameras("No cameras available!\n").is_empty());
        assert!(parse_list_cameras("").is_empty());
        // libcamera's log lines (normally on stderr) and an unknown fps do not confuse it.
        let text = "[0:01:02.345678901] [1234]  INFO Camera camera_manager.cpp:327 libcamera v0.3.2\n\
                    Available cameras\n-----------------\n\
                    0 : ov5647 [2592x1944 10-bit GBRG] (/base/soc/i2c0mux/i2c@1/ov5647@36)\n    \
                    Modes: 'SGBRG10_CSI2P' : 640x480 [nan fps - (16, 0)/2560x1920 crop]\n";
        let cams = parse_list_cameras(text);
        assert_eq!(cams.len(), 1);
        assert_eq!(cams[0].modes.len(), 1);
        assert_eq!(cams[0].modes[0].max_fps, None);
        assert_eq!(
            (cams[0].modes[0].width, cams[0].modes[0].height),
            (640, 480)
        );
    }

    #[test]
    fn an_empty_dev_lists_nothing_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("null"), "").unwrap();
        assert!(list_v4l2(dir.path()).is_empty());
        // A videoN that is not a device is listed with the reason, not dropped.
        std::fs::write(dir.path().join("video3"), "").unwrap();
        let listed = list_v4l2(dir.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].index, 3);
        assert!(!listed[0].capture);
        let e = listed[0].error.as_deref().unwrap();
        assert!(
            e.contains("not a V4L2 device") || e.contains("cannot open"),
            "{e}"
        );

        let empty = CameraList {
            v4l2: Vec::new(),
            libcamera: LibcameraList {
                program: None,
                error: Some("rpicam-apps not installed (no rpicam-hello on PATH)".into()),
                cameras: Vec::new(),
            },
        };
        let text = render(&empty);
        assert!(text.contains("V4L2: no camera"), "{text}");
        assert!(
            text.contains("libcamera: rpicam-apps not installed"),
            "{text}"
        );
        let with = CameraList {
            libcamera: LibcameraList {
                program: Some("/usr/bin/rpicam-hello".into()),
                error: None,
                cameras: parse_list_cameras(PI5_TWO_CAMERAS),
            },
            ..empty
        };
        let text = render(&with);
        assert!(text.contains("1: imx477 [4056x3040 12-bit RGGB]"), "{text}");
        assert!(
            text.contains("SRGGB10_CSI2P 1536x864 up to 120.13 fps"),
            "{text}"
        );
        let json = serde_json::to_string(&with).unwrap();
        assert_eq!(serde_json::from_str::<CameraList>(&json).unwrap(), with);
    }
}
