//! `<store>/watch.sock`: the agent's detection loop as JSON lines for whoever connects, so a
//! board reached over SSH shows its detections as a serial board does (`kestrel monitor --ssh`
//! runs `kestrel-edge watch` on the board, which reads this socket). A line per frame, in the
//! format `kestrel monitor` prints ([`MonitorLine`]); a reader that cannot keep up is dropped,
//! never waited for.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;
use kestrel_shared::report::FrameResult;
use kestrel_shared::wire::MonitorLine;

use crate::sink::{Sink, SinkError};
use crate::stats::StatsSnapshot;

/// The socket's name in the agent's store.
pub const WATCH_SOCKET: &str = "watch.sock";

/// The loop's end of the socket: a [`Sink`] writing each frame to every connected reader.
pub struct WatchSink {
    listener: UnixListener,
    path: PathBuf,
    readers: Vec<UnixStream>,
}

impl WatchSink {
    /// Binds `<store>/watch.sock` (replacing a stale one of a dead agent).
    pub fn bind(store: &Path) -> std::io::Result<WatchSink> {
        let path = store.join(WATCH_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(WatchSink {
            listener,
            path,
            readers: Vec::new(),
        })
    }
}

impl Sink for WatchSink {
    fn name(&self) -> &str {
        "watch"
    }

    fn handle(
        &mut self,
        result: &FrameResult,
        _image: &RgbImage,
        stats: &StatsSnapshot,
    ) -> Result<(), SinkError> {
        while let Ok((conn, _)) = self.listener.accept() {
            if conn.set_nonblocking(true).is_ok() {
                self.readers.push(conn);
            }
        }
        if self.readers.is_empty() {
            return Ok(());
        }
        let t = crate::agent_loop::telemetry(result, stats);
        let mut line =
            serde_json::to_string(&MonitorLine::from(&t)).map_err(|e| SinkError::Io {
                sink: "watch".into(),
                source: std::io::Error::other(e),
            })?;
        line.push('\n');
        // A full buffer (a reader that stopped reading) or a closed one: that reader goes.
        self.readers
            .retain_mut(|r| r.write_all(line.as_bytes()).is_ok());
        Ok(())
    }
}

impl Drop for WatchSink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What `kestrel-edge watch` reads.
#[derive(Debug, Clone, Default)]
pub struct WatchLimits {
    /// Stop after this many lines.
    pub count: Option<usize>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// Copies the lines of `<store>/watch.sock` to `out` until a limit is reached or the agent goes;
/// returns the lines copied.
pub fn watch(store: &Path, limits: &WatchLimits, out: &mut dyn Write) -> std::io::Result<usize> {
    let path = store.join(WATCH_SOCKET);
    let conn = UnixStream::connect(&path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot connect to {}: {e} (is the agent running on this store with a detection loop, `--source`?)",
                path.display()
            ),
        )
    })?;
    let end = limits.duration.map(|d| Instant::now() + d);
    let mut reader = BufReader::new(conn);
    let mut copied = 0;
    let mut line = String::new();
    loop {
        if limits.count.is_some_and(|c| copied >= c) {
            break;
        }
        let left = match end {
            Some(e) => match e.checked_duration_since(Instant::now()) {
                Some(d) if !d.is_zero() => Some(d),
                _ => break,
            },
            None => None,
        };
        reader.get_ref().set_read_timeout(left)?;
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => break, // the agent went
            Ok(_) => {
                out.write_all(line.as_bytes())?;
                out.flush()?;
                copied += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(frame: u64) -> FrameResult {
        FrameResult {
            timestamp_ms: 0,
            source_ms: 0.0,
            frame,
            width: 32,
            height: 24,
            detections: vec![kestrel_shared::report::LabeledDetection {
                label: "cat".into(),
                class: 1,
                score: 0.75,
                bbox: kestrel_shared::BBox::new(1.0, 2.0, 3.0, 4.0),
            }],
            classification: None,
            inference_ms: 1.0,
        }
    }

    /// A reader connected before the frames gets every one of them as a monitor line; with no
    /// reader nothing is written; the socket goes with the sink.
    #[test]
    fn readers_get_each_frame_as_a_monitor_line() {
        let store = tempfile::tempdir().unwrap();
        let mut sink = WatchSink::bind(store.path()).unwrap();
        let img = RgbImage::new(1, 1);
        let stats = StatsSnapshot::default();
        sink.handle(&result(0), &img, &stats).unwrap();
        let dir = store.path().to_path_buf();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let n = watch(
                &dir,
                &WatchLimits {
                    count: Some(3),
                    duration: Some(Duration::from_secs(10)),
                },
                &mut out,
            )
            .unwrap();
            (n, String::from_utf8(out).unwrap())
        });
        // Frames until the reader has been accepted and has its three lines.
        let mut frame = 1;
        while !reader.is_finished() {
            sink.handle(&result(frame), &img, &stats).unwrap();
            frame += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        let (n, text) = reader.join().unwrap();
        assert_eq!(n, 3);
        let lines: Vec<MonitorLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.windows(2).all(|w| w[1].frame == w[0].frame + 1));
        assert!(lines[0].frame >= 1);
        assert_eq!(
            lines[0].detections[0].bbox,
            kestrel_shared::BBox::new(1.0, 2.0, 3.0, 4.0)
        );
        drop(sink);
        assert!(!store.path().join(WATCH_SOCKET).exists());
        let e = watch(store.path(), &WatchLimits::default(), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("--source"), "{e}");
    }
}
