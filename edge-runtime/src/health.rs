//! The agent's health, as a fleet deploy asks it over SSH: the agent answers on a Unix socket in
//! its store directory ([`AGENT_SOCKET`]) from its own loop, so an answer means that loop turns;
//! `kestrel-edge store list --json` asks it ([`ask`]) and puts the answer in the listing.
//!
//! The detection loop records each frame in a [`LoopState`] shared with the agent; nothing is
//! written to the board's disk (an SD card would wear).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use kestrel_shared::listing::{AGENT_SOCKET, AgentHealth, LoopHealth};

use crate::stats::StatsSnapshot;

/// The detection loop's last state, shared between the loop (writer) and the agent (reader).
#[derive(Debug, Clone, Default)]
pub struct LoopState(Arc<Mutex<Option<Frames>>>);

#[derive(Debug)]
struct Frames {
    bundle: String,
    frames: u64,
    fps: f64,
    decode_errors: u64,
    last: Option<Instant>,
    ended: Option<String>,
}

impl LoopState {
    fn with(&self, f: impl FnOnce(&mut Option<Frames>)) {
        // A poisoned lock only means a panicking loop: its last state is still worth reporting.
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// The loop processed a frame; `stats` is its running statistics.
    pub fn frame(&self, stats: &StatsSnapshot) {
        self.with(|s| {
            *s = Some(Frames {
                bundle: stats.model.clone(),
                frames: stats.frames,
                fps: stats.fps,
                decode_errors: stats.decode_errors,
                last: Some(Instant::now()),
                ended: None,
            })
        })
    }

    /// The loop started on `bundle` (before its first frame).
    pub fn started(&self, bundle: &str) {
        self.with(|s| {
            *s = Some(Frames {
                bundle: bundle.to_string(),
                frames: 0,
                fps: 0.0,
                decode_errors: 0,
                last: None,
                ended: None,
            })
        })
    }

    /// The loop ended, and why (`inference failed: ...`, `end of source`, `stopped`).
    pub fn ended(&self, why: &str) {
        self.with(|s| match s {
            Some(f) => f.ended = Some(why.to_string()),
            None => {
                *s = Some(Frames {
                    bundle: String::new(),
                    frames: 0,
                    fps: 0.0,
                    decode_errors: 0,
                    last: None,
                    ended: Some(why.to_string()),
                })
            }
        })
    }

    /// What to report, None when no loop ever started.
    pub fn report(&self) -> Option<LoopHealth> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|f| LoopHealth {
            bundle: (!f.bundle.is_empty()).then(|| f.bundle.clone()),
            frames: f.frames,
            fps: f.fps,
            decode_errors: f.decode_errors,
            last_frame_age_s: f.last.map(|t| t.elapsed().as_secs_f64()),
            ended: f.ended.clone(),
        })
    }
}

/// The agent's end of the socket: bound at start, answered without blocking from its loop.
pub struct HealthSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl HealthSocket {
    /// Binds `<store>/agent.sock` (a stale socket of a dead agent is replaced: the agent holds the
    /// store's agent lock, so no live agent owns it). Anyone who may enter the store directory may
    /// ask (the SSH user of a deploy is not always the service user): the socket only answers
    /// with the health line, it takes no command.
    pub fn bind(store: &Path) -> std::io::Result<HealthSocket> {
        use std::os::unix::fs::PermissionsExt;
        let path = store.join(AGENT_SOCKET);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(HealthSocket { listener, path })
    }

    /// Answers every waiting connection with one JSON line of `health()`; never blocks.
    pub fn serve(&self, health: impl Fn() -> AgentHealth) {
        while let Ok((mut conn, _)) = self.listener.accept() {
            let line = match serde_json::to_string(&health()) {
                Ok(l) => l + "\n",
                Err(e) => {
                    tracing::error!("cannot encode the agent's health: {e}");
                    return;
                }
            };
            // A line of a few hundred bytes fits the socket's buffer: the write does not wait
            // for the reader; a reader that went away is its own business.
            let _ = conn.set_nonblocking(false);
            let _ = conn.set_write_timeout(Some(Duration::from_millis(200)));
            let _ = conn.write_all(line.as_bytes());
        }
    }
}

impl Drop for HealthSocket {
    /// An agent that stops removes its socket: nobody answers there any more.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asks the agent of `store` for its health, waiting at most `timeout`; the error says why none
/// answered (no socket: no agent runs; refused: the agent died without removing it).
pub fn ask(store: &Path, timeout: Duration) -> Result<AgentHealth, String> {
    let path = store.join(AGENT_SOCKET);
    if !path.exists() {
        return Err(format!(
            "no agent runs on this store ({} is missing)",
            path.display()
        ));
    }
    let conn = UnixStream::connect(&path).map_err(|e| format!("the agent does not answer: {e}"))?;
    conn.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    conn.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("the agent did not answer within {timeout:?}: {e}"))?;
    serde_json::from_str(text.trim())
        .map_err(|e| format!("the agent's answer is not its health ({e}): is it this version?"))
}

/// Seconds since the board booted, from `/proc/uptime`.
pub fn board_uptime_s() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(current: &str) -> AgentHealth {
        AgentHealth {
            pid: std::process::id(),
            uptime_s: 1.0,
            current: Some(current.into()),
            detect: None,
            temperature_c: None,
        }
    }

    #[test]
    fn an_agent_answers_on_its_socket_and_a_dead_one_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let e = ask(dir.path(), Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("no agent runs"), "{e}");
        let socket = HealthSocket::bind(dir.path()).unwrap();
        let asker = {
            let d = dir.path().to_path_buf();
            std::thread::spawn(move || ask(&d, Duration::from_secs(5)))
        };
        let start = Instant::now();
        while !asker.is_finished() && start.elapsed() < Duration::from_secs(5) {
            socket.serve(|| health("b1"));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(asker.join().unwrap().unwrap(), health("b1"));
        // A socket left behind by a killed agent: connecting is refused.
        std::mem::forget(socket);
        let e = ask(dir.path(), Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("does not answer") || e.contains("within"), "{e}");
    }

    #[test]
    fn the_loop_state_reports_frames_and_why_it_ended() {
        let s = LoopState::default();
        assert_eq!(s.report(), None);
        s.started("b1");
        let r = s.report().unwrap();
        assert_eq!(
            (r.bundle.as_deref(), r.frames, r.last_frame_age_s),
            (Some("b1"), 0, None)
        );
        s.ended("inference failed: boom");
        assert_eq!(
            s.report().unwrap().ended.as_deref(),
            Some("inference failed: boom")
        );
    }
}
