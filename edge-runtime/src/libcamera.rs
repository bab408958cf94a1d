//! Raspberry Pi camera modules (CSI) through libcamera: [`LibcameraSource`] runs `rpicam-vid`
//! and reads the MJPEG stream it writes to stdout.
//!
//! Why a child process rather than bindings: on Raspberry Pi OS Bookworm every CSI camera module
//! (v1 to Camera Module 3, HQ, GS, and third-party sensors with a libcamera tuning file) is driven
//! by libcamera and the Pi's ISP, and on a Pi 5 there is no other way to reach them (the RP1
//! front end's `/dev/video*` nodes give raw Bayer data that only libcamera's pipeline handler
//! turns into pictures). `rpicam-vid` (`libcamera-vid` on Bullseye) ships with the OS, picks the
//! sensor mode, runs the ISP (debayering, white balance, exposure, and the scaling to the asked
//! size) and encodes MJPEG, so frames arrive as the same JPEGs a USB camera sends and go through
//! the same decoder. libcamera itself is C++: bindings (libcamera-rs) need libcamera's headers and
//! a C++ toolchain when building, tie the build to the board's libcamera version, and would make
//! cross-building `kestrel-edge` on the workstation much harder; a pipe needs none of that. A
//! crash or hang in the camera stack also stays in the child, which is simply restarted.
//!
//! The child runs `-t 0 --codec mjpeg --width W --height H --framerate F --camera N -n --flush -o -`
//! (no timeout, no preview window, each frame flushed to the pipe as it is encoded). Its stdout
//! is read on a thread and split into pictures by [`MjpegSplitter`]; when it exits or stalls,
//! the source logs its exit status and last stderr lines and starts it again with exponential
//! backoff (250 ms doubling up to [`MAX_BACKOFF`]), as [`crate::source::CameraSource`] does for a
//! V4L2 camera that went away.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use kestrel_shared::board::PixelFormat;
use tracing::{debug, info, warn};

use crate::source::{
    CameraSettings, FrameSource, MAX_BACKOFF, MAX_FRAME_BYTES, MjpegSplitter, RawFormat, RawFrame,
    SourceError, jpeg_size,
};

/// Environment variable naming the `rpicam-vid` program to run (a path, or a name looked up on
/// `PATH`), for a non-standard install or a test's fake.
pub const RPICAM_VID_ENV: &str = "KESTREL_RPICAM_VID";

/// The video programs looked up on `PATH`, in order: Bookworm's name, then Bullseye's.
pub const RPICAM_VID_NAMES: &[&str] = &["rpicam-vid", "libcamera-vid"];

/// First wait before restarting a child that died.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Lines of the child's stderr kept to explain its exit.
const STDERR_LINES: usize = 12;

/// Bytes read from the pipe at a time.
const READ_CHUNK: usize = 64 * 1024;

/// A program by name on `PATH` (or as given, when it contains a `/`): the first executable file.
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// The program `env` names (it must exist), else the first of `names` on `PATH`. `Err` says what
/// was looked for.
pub fn resolve_program(env: &str, names: &[&str]) -> Result<PathBuf, String> {
    if let Some(given) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        let given = given.to_string_lossy().into_owned();
        return find_program(&given)
            .ok_or_else(|| format!("{env}={given} is not an executable program"));
    }
    names
        .iter()
        .find_map(|n| find_program(n))
        .ok_or_else(|| format!("no {} on PATH", names.join(" or ")))
}

/// The arguments `rpicam-vid` gets for camera `camera` at `settings`.
pub fn rpicam_vid_args(camera: u32, settings: &CameraSettings) -> Vec<String> {
    [
        "-t",
        "0",
        "--codec",
        "mjpeg",
        "--width",
        &settings.width.to_string(),
        "--height",
        &settings.height.to_string(),
        "--framerate",
        &settings.fps.to_string(),
        "--camera",
        &camera.to_string(),
        "-n",
        "--flush",
        "-o",
        "-",
    ]
    .map(String::from)
    .to_vec()
}

/// What the pipe reader hands over.
enum Chunk {
    Data(Vec<u8>),
    End(Option<std::io::Error>),
}

/// The last lines of a child's stderr, and whether it has closed.
#[derive(Default)]
struct StderrTail {
    lines: VecDeque<String>,
    closed: bool,
}

/// One running `rpicam-vid`.
struct Running {
    child: Child,
    chunks: mpsc::Receiver<Chunk>,
    stderr: Arc<Mutex<StderrTail>>,
    last_data: Instant,
    frames: u64,
}

impl Running {
    fn spawn(program: &Path, args: &[String]) -> std::io::Result<Running> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that a wrapper script's children die with it on kill.
            .process_group(0)
            .spawn()?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // A bounded channel: a slow consumer stalls the reader, not memory.
        let (tx, chunks) = mpsc::sync_channel(16);
        std::thread::Builder::new()
            .name("rpicam-vid stdout".into())
            .spawn(move || {
                let mut buf = vec![0u8; READ_CHUNK];
                loop {
                    match stdout.read(&mut buf) {
                        Ok(0) => break tx.send(Chunk::End(None)),
                        Ok(n) => {
                            if tx.send(Chunk::Data(buf[..n].to_vec())).is_err() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => break tx.send(Chunk::End(Some(e))),
                    }
                }
            })?;
        let tail = Arc::new(Mutex::new(StderrTail::default()));
        {
            let tail = tail.clone();
            std::thread::Builder::new()
                .name("rpicam-vid stderr".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).split(b'\n') {
                        let Ok(line) = line else { break };
                        let line = String::from_utf8_lossy(&line);
                        let line: String = line.trim_end().chars().take(300).collect();
                        debug!("rpicam-vid: {line}");
                        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                        if t.lines.len() == STDERR_LINES {
                            t.lines.pop_front();
                        }
                        t.lines.push_back(line);
                    }
                    tail.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
                })?;
        }
        Ok(Running {
            child,
            chunks,
            stderr: tail,
            last_data: Instant::now(),
            frames: 0,
        })
    }

    /// Kill the child's process group (if it still runs) and reap it; its exit status.
    fn finish(mut self, grace: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.kill_group();
                    return Some(status);
                }
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => break,
                Err(_) => break,
            }
        }
        self.kill_group();
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    fn kill_group(&self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals the process group the child leads
            // (spawned with process_group(0)); it touches no memory of ours.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

impl StderrTail {
    /// The last lines, once the pipe has closed (waiting at most `wait` for it).
    fn wait_for(tail: &Mutex<StderrTail>, wait: Duration) -> String {
        let until = Instant::now() + wait;
        loop {
            let t = tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.closed || Instant::now() >= until {
                return t.lines.iter().cloned().collect::<Vec<_>>().join("\n");
            }
            drop(t);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A Raspberry Pi camera module through libcamera: MJPEG frames from a supervised `rpicam-vid`
/// (see the [module documentation](self) for why).
pub struct LibcameraSource {
    program: PathBuf,
    camera: u32,
    settings: CameraSettings,
    stop: Arc<AtomicBool>,
    stall: Duration,
    running: Option<Running>,
    retry_at: Option<Instant>,
    backoff: Duration,
    splitter: MjpegSplitter,
    pending: VecDeque<Vec<u8>>,
    runs: u64,
    start: Instant,
    next: u64,
}

impl LibcameraSource {
    /// Camera `camera` at `settings`, through the `rpicam-vid` that [`RPICAM_VID_ENV`] names or
    /// `PATH` holds (`libcamera-vid` when there is no `rpicam-vid`). Fails when there is none, or
    /// when `settings` asks for a pixel format other than MJPEG. The child starts on first use.
    pub fn new(
        camera: u32,
        settings: CameraSettings,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, SourceError> {
        let program = resolve_program(RPICAM_VID_ENV, RPICAM_VID_NAMES).map_err(|why| {
            SourceError::Libcamera {
                camera,
                reason: format!(
                    "{why}: install rpicam-apps (`sudo apt install rpicam-apps` on Raspberry Pi OS), or set {RPICAM_VID_ENV}"
                ),
            }
        })?;
        Self::with_program(program, camera, settings, stop)
    }

    /// As [`LibcameraSource::new`] with the program given.
    pub fn with_program(
        program: PathBuf,
        camera: u32,
        settings: CameraSettings,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, SourceError> {
        if settings.format != PixelFormat::Mjpeg {
            return Err(SourceError::Libcamera {
                camera,
                reason: format!(
                    "libcamera frames come from rpicam-vid as MJPEG, not {}: drop --pixel-format or use mjpeg",
                    settings.format
                ),
            });
        }
        // A JPEG is smaller than the raw picture it encodes, with room for headers.
        let raw = settings.width as u64 * settings.height as u64 * 3 + 64 * 1024;
        let max_frame = raw.clamp(1 << 20, MAX_FRAME_BYTES) as usize;
        Ok(LibcameraSource {
            program,
            camera,
            settings,
            stop,
            stall: Duration::from_secs(10),
            running: None,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            splitter: MjpegSplitter::new(max_frame),
            pending: VecDeque::new(),
            runs: 0,
            start: Instant::now(),
            next: 0,
        })
    }

    /// Restart the child when it has sent nothing for this long (default 10 s: libcamera takes a
    /// second or two to start a camera).
    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// How many times the child has been started.
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// The running child's process id (tests check it is reaped).
    pub fn child_id(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    fn start_child(&mut self) -> Result<(), String> {
        let args = rpicam_vid_args(self.camera, &self.settings);
        let running = Running::spawn(&self.program, &args)
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        self.runs += 1;
        info!(
            "libcamera camera {}: started {} {} (pid {})",
            self.camera,
            self.program.display(),
            args.join(" "),
            running.child.id()
        );
        self.running = Some(running);
        Ok(())
    }

    /// The child is gone or useless: say why, reap it, and schedule the next start.
    fn restart_later(&mut self, why: &str) {
        let Some(running) = self.running.take() else {
            return;
        };
        let frames = running.frames;
        let stderr = running.stderr.clone();
        let exit = running.finish(Duration::from_secs(1));
        let status = StderrTail::wait_for(&stderr, Duration::from_millis(300));
        let exit = exit.map_or("unknown exit status".to_string(), |s| s.to_string());
        let partial = self.splitter.buffered();
        self.splitter.reset();
        self.pending.clear();
        let tail = if status.is_empty() {
            String::from(" (nothing on stderr)")
        } else {
            format!("; its last stderr lines:\n{status}")
        };
        warn!(
            "libcamera camera {}: {} {why} ({exit}) after {frames} frames{}; restarting in {:.2} s{tail}",
            self.camera,
            self.program.display(),
            if partial > 0 {
                format!(", {partial} bytes of an unfinished frame dropped")
            } else {
                String::new()
            },
            self.backoff.as_secs_f64(),
        );
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn frame(&mut self, data: Vec<u8>) -> RawFrame {
        let (width, height) = jpeg_size(&data).unwrap_or((0, 0));
        let index = self.next;
        self.next += 1;
        RawFrame {
            index,
            source_ms: self.start.elapsed().as_secs_f64() * 1e3,
            captured: SystemTime::now(),
            width,
            height,
            format: RawFormat::Mjpeg,
            data,
        }
    }
}

impl FrameSource for LibcameraSource {
    fn next_frame(&mut self) -> Result<Option<RawFrame>, SourceError> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if let Some(data) = self.pending.pop_front() {
                // The child delivers again: the next failure starts the backoff afresh.
                self.backoff = FIRST_BACKOFF;
                return Ok(Some(self.frame(data)));
            }
            if self.running.is_none() {
                if let Some(at) = self.retry_at {
                    let now = Instant::now();
                    if now < at {
                        std::thread::sleep((at - now).min(Duration::from_millis(50)));
                        continue;
                    }
                }
                self.retry_at = None;
                if let Err(e) = self.start_child() {
                    warn!(
                        "libcamera camera {}: {e}; retrying in {:.2} s",
                        self.camera,
                        self.backoff.as_secs_f64()
                    );
                    self.retry_at = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
                continue;
            }
            let Some(running) = self.running.as_mut() else {
                continue;
            };
            match running.chunks.recv_timeout(Duration::from_millis(100)) {
                Ok(Chunk::Data(bytes)) => {
                    running.last_data = Instant::now();
                    let frames = self.splitter.push(&bytes);
                    running.frames += frames.len() as u64;
                    self.pending.extend(frames);
                }
                Ok(Chunk::End(None)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.restart_later("closed its output");
                }
                Ok(Chunk::End(Some(e))) => {
                    self.restart_later(&format!("could not be read ({e})"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if running.last_data.elapsed() >= self.stall {
                        let why = format!(
                            "sent nothing for {:.1} s and was stopped",
                            self.stall.as_secs_f64()
                        );
                        self.restart_later(&why);
                    }
                }
            }
        }
    }

    fn describe(&self) -> String {
        let s = self.settings;
        format!(
            "libcamera:{} {}x{} MJPEG {} fps ({})",
            self.camera,
            s.width,
            s.height,
            s.fps,
            self.program.display()
        )
    }

    fn is_live(&self) -> bool {
        true
    }
}

impl Drop for LibcameraSource {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // Killed and reaped here: no orphan holding the camera, no zombie.
            running.finish(Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::RgbImage;
    use proptest::prelude::*;

    fn jpeg(w: u32, h: u32, shade: u8) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([shade, (x * 7 % 256) as u8, y as u8])
        });
        crate::jpeg::encode(&img, 80).unwrap()
    }

    /// Small JPEGs of a few sizes and shades, made once.
    fn pictures() -> &'static [Vec<u8>] {
        static P: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        P.get_or_init(|| {
            (0..6u8)
                .map(|i| jpeg(8 + 8 * i as u32, 8 + 4 * i as u32, i * 40))
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// However the stream is cut into reads, the splitter gives back exactly the pictures put
        /// in, in order, and never holds more than one picture plus one read.
        #[test]
        fn splitter_reassembles_pictures_across_any_reads(
            order in prop::collection::vec((0usize..6, prop::collection::vec(0u8..0xFF, 0..20)), 1..12),
            cuts in prop::collection::vec(1usize..3000, 1..40),
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (i, noise) in &order {
                // Noise without 0xFF between pictures: no marker, as a camera's padding.
                stream.extend(noise);
                stream.extend(&pictures()[*i]);
                want.push(pictures()[*i].clone());
            }
            let largest = pictures().iter().map(Vec::len).max().unwrap();
            let mut splitter = MjpegSplitter::new(largest);
            let mut got = Vec::new();
            let mut at = 0;
            for cut in cuts.iter().cycle() {
                if at >= stream.len() {
                    break;
                }
                let end = (at + cut).min(stream.len());
                got.extend(splitter.push(&stream[at..end]));
                prop_assert!(splitter.buffered() <= largest + cut);
                at = end;
            }
            prop_assert_eq!(got.len(), want.len());
            prop_assert!(got == want);
            prop_assert_eq!(splitter.buffered(), 0);
        }

        /// Garbage (start markers included) never grows the buffer past its bound, and a picture
        /// sent after it still comes out.
        #[test]
        fn splitter_stays_bounded_on_garbage(
            garbage in prop::collection::vec(any::<u8>(), 0..20_000),
            read in 1usize..5000,
        ) {
            let max = 4096;
            let mut splitter = MjpegSplitter::new(max);
            for chunk in garbage.chunks(read) {
                splitter.push(chunk);
                prop_assert!(splitter.buffered() <= max + read);
            }
            // A start marker followed by max bytes without an end: given up.
            let mut stuck = vec![0xFF, 0xD8];
            stuck.extend(std::iter::repeat_n(0x11, max + 10));
            splitter.push(&stuck);
            prop_assert!(splitter.buffered() <= max);
            let pic = &pictures()[1];
            let mut got = splitter.push(pic);
            got.extend(splitter.push(pic));
            prop_assert!(got.last() == Some(pic), "the stream resynchronises");
        }
    }

    #[test]
    fn the_rpicam_vid_arguments_are_the_documented_options() {
        let s = CameraSettings {
            width: 1280,
            height: 720,
            fps: 25,
            format: PixelFormat::Mjpeg,
        };
        assert_eq!(
            rpicam_vid_args(1, &s).join(" "),
            "-t 0 --codec mjpeg --width 1280 --height 720 --framerate 25 --camera 1 -n --flush -o -"
        );
    }

    #[test]
    fn yuyv_is_refused_and_a_missing_program_is_named() {
        let stop = Arc::new(AtomicBool::new(false));
        let yuyv = CameraSettings {
            format: PixelFormat::Yuyv,
            ..CameraSettings::default()
        };
        let e = LibcameraSource::with_program("/bin/true".into(), 0, yuyv, stop)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("MJPEG") && e.contains("yuyv"), "{e}");
        assert!(find_program("/nonexistent/rpicam-vid").is_none());
        assert_eq!(find_program("sh").map(|p| p.is_absolute()), Some(true));
        let e = resolve_program("KESTREL_TEST_UNSET_VARIABLE", &["kestrel-no-such-program"])
            .unwrap_err();
        assert!(e.contains("kestrel-no-such-program"), "{e}");
    }

    /// A fake `rpicam-vid`: checks its arguments, counts its runs in a file, dies after half a
    /// frame on its first run, then streams the recording in a loop.
    fn fake_rpicam_vid(dir: &Path, video: &Path, half: usize) -> PathBuf {
        let script = dir.join("rpicam-vid");
        let runs = dir.join("runs");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
case " $* " in
  *" --codec mjpeg"*" --width 48 --height 32 --framerate 50 --camera 2"*" -n --flush -o - "*) ;;
  *) echo "ERROR: unexpected arguments: $*" >&2; exit 2 ;;
esac
n=$(cat '{runs}' 2>/dev/null || echo 0)
n=$((n + 1))
echo $n > '{runs}'
echo "Preview window unavailable" >&2
if [ $n -eq 1 ]; then
  head -c {half} '{video}'
  echo "ERROR: *** camera went away ***" >&2
  exit 3
fi
while :; do cat '{video}'; sleep 0.02; done
"#,
                runs = runs.display(),
                video = video.display(),
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    #[test]
    fn a_child_that_dies_mid_frame_is_restarted_and_only_whole_frames_come_out() {
        let dir = tempfile::tempdir().unwrap();
        let frames: Vec<Vec<u8>> = (0..3).map(|i| jpeg(48, 32, 60 * i)).collect();
        let video = dir.path().join("recorded.mjpeg");
        std::fs::write(&video, frames.concat()).unwrap();
        // The first run writes frame 0 and half of frame 1.
        let half = frames[0].len() + frames[1].len() / 2;
        let program = fake_rpicam_vid(dir.path(), &video, half);
        let settings = CameraSettings {
            width: 48,
            height: 32,
            fps: 50,
            format: PixelFormat::Mjpeg,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut src = LibcameraSource::with_program(program, 2, settings, stop.clone()).unwrap();
        assert!(src.is_live());
        assert!(
            src.describe().starts_with("libcamera:2 48x32"),
            "{}",
            src.describe()
        );
        let t = Instant::now();
        let got: Vec<RawFrame> = (0..8).map(|_| src.next_frame().unwrap().unwrap()).collect();
        // Frame 0 of the first run, then the second run's frames 0, 1, 2, 0, ...
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.index, i as u64);
            assert_eq!((f.format, f.width, f.height), (RawFormat::Mjpeg, 48, 32));
            let k = if i == 0 { 0 } else { (i - 1) % 3 };
            assert!(
                f.data == frames[k],
                "frame {i}: {} bytes, not frame {k} of the recording ({} bytes)",
                f.data.len(),
                frames[k].len()
            );
            crate::source::decode(f).unwrap();
        }
        assert_eq!(src.runs(), 2);
        let runs = std::fs::read_to_string(dir.path().join("runs")).unwrap();
        assert_eq!(runs.trim(), "2");
        // The restart waited for the first backoff step, but not much longer.
        assert!(t.elapsed() >= FIRST_BACKOFF, "{:?}", t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

        // Dropping the source kills and reaps the child (and the script's `cat`/`sleep`).
        let pid = src.child_id().unwrap();
        drop(src);
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        assert!(
            !proc_dir.exists(),
            "pid {pid} is still there (zombie or alive)"
        );

        // A stop request ends next_frame while the child is down.
        let stop = Arc::new(AtomicBool::new(true));
        let mut src = LibcameraSource::with_program("/bin/true".into(), 0, settings, stop).unwrap();
        assert!(src.next_frame().unwrap().is_none());
        assert_eq!(src.runs(), 0);
    }

    #[test]
    fn a_stalled_child_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let script = dir.path().join("stuck");
        let frame = jpeg(16, 16, 9);
        let video = dir.path().join("one.mjpeg");
        std::fs::write(&video, &frame).unwrap();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho x >> '{}'\ncat '{}'\nexec sleep 30\n",
                runs.display(),
                video.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut src =
            LibcameraSource::with_program(script, 0, CameraSettings::default(), stop.clone())
                .unwrap()
                .with_stall_timeout(Duration::from_millis(300));
        let t = Instant::now();
        for _ in 0..2 {
            assert_eq!(src.next_frame().unwrap().unwrap().data, frame);
        }
        assert_eq!(src.runs(), 2);
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        let lines = std::fs::read_to_string(&runs).unwrap();
        assert_eq!(lines.lines().count(), 2);
    }
}
