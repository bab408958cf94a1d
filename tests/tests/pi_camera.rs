//! The Raspberry Pi camera path through the real `kestrel-edge` binary, with fake rpicam-apps on
//! `PATH`: `run --source libcamera` and a board file with `driver = "libcamera"` get frames from
//! a fake `rpicam-vid` that streams a recorded MJPEG file (and dies mid-frame on its first run:
//! the runtime restarts it and only whole frames reach the model), and `cameras` lists what a
//! fake `rpicam-hello --list-cameras` reports, or says rpicam-apps is missing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use image::codecs::jpeg::JpegEncoder;
use kestrel_e2e::{bin, tiny_bundle};

/// Frames of the recording, in pixels.
const W: u32 = 64;
const H: u32 = 48;

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `dir` then the test's own `PATH`.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// A recorded MJPEG stream of three different frames, and where its second frame is cut in half.
fn recording(dir: &Path) -> (PathBuf, usize) {
    let frames: Vec<Vec<u8>> = [[200u8, 30, 30], [30, 200, 30], [30, 30, 200]]
        .iter()
        .map(|&rgb| {
            let img = image::RgbImage::from_fn(W, H, |x, y| {
                image::Rgb([
                    rgb[0],
                    rgb[1].wrapping_add(x as u8),
                    rgb[2].wrapping_add(y as u8),
                ])
            });
            let mut out = Vec::new();
            JpegEncoder::new_with_quality(&mut out, 85)
                .encode_image(&img)
                .unwrap();
            out
        })
        .collect();
    let path = dir.join("recorded.mjpeg");
    std::fs::write(&path, frames.concat()).unwrap();
    (path, frames[0].len() + frames[1].len() / 2)
}

/// A fake `rpicam-vid` in `dir`: refuses arguments without `--codec mjpeg ... -o -`, logs its
/// arguments and runs, and on its first run writes a frame and a half then dies (exit status 3,
/// with an error on stderr); later runs stream the recording in a loop at about 25 fps.
fn fake_rpicam_vid(dir: &Path) {
    let (video, half) = recording(dir);
    write_script(
        &dir.join("rpicam-vid"),
        &format!(
            r#"#!/bin/sh
echo "$*" >> '{log}'
case " $* " in
  *" -t 0 "*"--codec mjpeg"*" -n --flush -o - "*) ;;
  *) echo "ERROR: this fake only streams MJPEG to stdout: $*" >&2; exit 2 ;;
esac
n=$(cat '{runs}' 2>/dev/null || echo 0)
n=$((n + 1))
echo $n > '{runs}'
echo "[0:00:01.0] [99] INFO Camera camera_manager.cpp:313 libcamera v0.3.2+rpt" >&2
if [ $n -eq 1 ]; then
  head -c {half} '{video}'
  echo "ERROR: *** fake camera unplugged mid-frame ***" >&2
  exit 3
fi
while :; do cat '{video}'; echo . >> '{beats}'; sleep 0.12; done
"#,
            log = dir.join("args.log").display(),
            runs = dir.join("runs").display(),
            beats = dir.join("beats").display(),
            video = video.display(),
        ),
    );
}

/// Run `cmd` to its end (at most 60 s): (succeeded, stdout, stderr).
fn run_bounded(cmd: &mut Command) -> (bool, String, String) {
    let mut child = cmd
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("still running after 60 s; stderr:\n{}", err.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

/// The JSON lines of a `run`: every one a classification of a 64x48 frame from the fake.
fn check_results(stdout: &str, stderr: &str, want: usize) {
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert_eq!(lines.len(), want, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for l in &lines {
        assert_eq!(
            (l["width"].as_u64(), l["height"].as_u64()),
            (Some(W as u64), Some(H as u64))
        );
        let label = l["classification"]["label"].as_str().unwrap_or_default();
        assert!(["left", "right", "none"].contains(&label), "{l}");
    }
}

/// The fake died mid-frame once: the runtime said why and started it again; the half frame
/// never reached the decoder.
fn check_restart(dir: &Path, stderr: &str) {
    println!("{stderr}");
    let runs = std::fs::read_to_string(dir.join("runs")).unwrap();
    assert_eq!(runs.trim(), "2", "{stderr}");
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(stderr.contains("exit status: 3"), "{stderr}");
    assert!(
        stderr.contains("fake camera unplugged mid-frame"),
        "the child's stderr is quoted: {stderr}"
    );
    assert!(stderr.contains("unfinished frame dropped"), "{stderr}");
    assert!(stderr.contains("restarting in 0.25 s"), "{stderr}");
    assert!(!stderr.contains("does not decode"), "{stderr}");
}

#[test]
fn run_source_libcamera_detects_on_frames_from_rpicam_vid_and_survives_its_death() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    tiny_bundle(&bundle, 1, 1);
    let fake = tmp.path().join("fake-bin");
    std::fs::create_dir(&fake).unwrap();
    fake_rpicam_vid(&fake);

    let (ok, stdout, stderr) = run_bounded(
        Command::new(bin("kestrel-edge"))
            .env("PATH", path_with(&fake))
            .env_remove("KESTREL_RPICAM_VID")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .args(["--source", "libcamera", "--max-frames", "5"])
            .args(["--width", "64", "--height", "48", "--camera-fps", "25"]),
    );
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    check_results(&stdout, &stderr, 5);
    check_restart(&fake, &stderr);
    let args = std::fs::read_to_string(fake.join("args.log")).unwrap();
    for line in args.lines() {
        assert_eq!(
            line,
            "-t 0 --codec mjpeg --width 64 --height 48 --framerate 25 --camera 0 -n --flush -o -"
        );
    }
    // The child was killed with the run: its loop has stopped beating.
    let beats = || std::fs::read_to_string(fake.join("beats")).unwrap().len();
    let before = beats();
    assert!(before > 0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(beats(), before, "rpicam-vid outlived kestrel-edge");
}

#[test]
fn a_board_file_with_driver_libcamera_makes_plain_camera_the_pi_camera() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    tiny_bundle(&bundle, 2, 2);
    let fake = tmp.path().join("fake-bin");
    std::fs::create_dir(&fake).unwrap();
    fake_rpicam_vid(&fake);
    // The built-in CSI board, on its second connector, at the recording's size.
    let text = kestrel_shared::board::builtin_boards()
        .into_iter()
        .find(|(n, _)| *n == "raspberry-pi-5-csi")
        .unwrap()
        .1
        .replace("name = \"raspberry-pi-5-csi\"", "name = \"my-pi\"")
        .replace("index = 0", "index = 1")
        .replace("width = 640", "width = 64")
        .replace("height = 480", "height = 48")
        .replace("fps = 30", "fps = 10");
    let board = tmp.path().join("my-pi.toml");
    std::fs::write(&board, text).unwrap();

    // No --source: the default `camera` is the board's camera.
    let (ok, stdout, stderr) = run_bounded(
        Command::new(bin("kestrel-edge"))
            .env("PATH", path_with(&fake))
            .env_remove("KESTREL_RPICAM_VID")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg("--board")
            .arg(&board)
            .args(["--max-frames", "3"]),
    );
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    check_results(&stdout, &stderr, 3);
    check_restart(&fake, &stderr);
    let args = std::fs::read_to_string(fake.join("args.log")).unwrap();
    assert!(
        args.lines()
            .all(|l| l.contains("--width 64 --height 48 --framerate 10 --camera 1 ")),
        "{args}"
    );

    // Without rpicam-vid the error says what to install.
    let empty = tmp.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, stderr) = run_bounded(
        Command::new(bin("kestrel-edge"))
            .env("PATH", &empty)
            .env_remove("KESTREL_RPICAM_VID")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg("--board")
            .arg(&board),
    );
    assert!(!ok);
    assert!(
        stderr.contains("libcamera camera 1")
            && stderr.contains("rpicam-vid or libcamera-vid")
            && stderr.contains("apt install rpicam-apps"),
        "{stderr}"
    );
}

/// What `rpicam-hello --list-cameras` prints on a Pi 5 with a Camera Module 3.
const LIST_CAMERAS: &str = "Available cameras
-----------------
0 : imx708 [4608x2592 10-bit RGGB] (/base/axi/pcie@120000/rp1/i2c@88000/imx708@1a)
    Modes: 'SRGGB10_CSI2P' : 1536x864 [120.13 fps - (768, 432)/3072x1728 crop]
                             2304x1296 [56.03 fps - (0, 0)/4608x2592 crop]
                             4608x2592 [14.35 fps - (0, 0)/4608x2592 crop]

";

#[test]
fn cameras_lists_libcamera_cameras_and_says_when_there_is_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake-bin");
    std::fs::create_dir(&fake).unwrap();
    let listing = tmp.path().join("listing.txt");
    std::fs::write(&listing, LIST_CAMERAS).unwrap();
    write_script(
        &fake.join("rpicam-hello"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = --list-cameras ] || exit 2\n\
             echo '[0:00:00.5] [7] INFO Camera camera_manager.cpp:313 libcamera v0.3.2' >&2\n\
             cat '{}'\n",
            listing.display()
        ),
    );
    let (ok, stdout, stderr) = run_bounded(
        Command::new(bin("kestrel-edge"))
            .env("PATH", path_with(&fake))
            .env_remove("KESTREL_RPICAM_HELLO")
            .args(["cameras", "--json"]),
    );
    assert!(ok, "{stderr}");
    let list: kestrel_edge::cameras::CameraList = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list.libcamera.program, Some(fake.join("rpicam-hello")));
    assert_eq!(list.libcamera.error, None);
    assert_eq!(list.libcamera.cameras.len(), 1);
    let cam = &list.libcamera.cameras[0];
    assert_eq!((cam.index, cam.model.as_str()), (0, "imx708"));
    assert_eq!(cam.modes.len(), 3);
    assert_eq!(cam.modes[1].max_fps, Some(56.03));
    // V4L2 devices are whatever this machine has (none here): each one is a /dev/videoN node,
    // listed with its formats or with why it could not be opened.
    for d in &list.v4l2 {
        assert!(d.path.starts_with("/dev"), "{d:?}");
        assert!(
            !d.capture || !d.formats.is_empty() || d.error.is_some(),
            "{d:?}"
        );
    }

    // No rpicam-apps at all: the list still works and says so.
    let empty = tmp.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let (ok, stdout, stderr) = run_bounded(
        Command::new(bin("kestrel-edge"))
            .env("PATH", &empty)
            .env_remove("KESTREL_RPICAM_HELLO")
            .arg("cameras"),
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("libcamera: rpicam-apps not installed"),
        "{stdout}"
    );
    let has_video = std::fs::read_dir("/dev").unwrap().flatten().any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("video"))
    });
    if !has_video {
        assert!(stdout.contains("V4L2: no camera"), "{stdout}");
    }
}
