//! systemd's service notifications (`Type=notify`, `WatchdogSec=`): `READY=1` once the agent
//! serves, then `WATCHDOG=1` while its loop turns and the detection loop (if any) processes
//! frames. When either stalls the notifications stop and systemd restarts the service.
//!
//! The protocol is one datagram per message to the Unix socket named by `$NOTIFY_SOCKET` (a path,
//! or an abstract name starting with `@`); `$WATCHDOG_USEC` is the period systemd expects.
//! Without `$NOTIFY_SOCKET` (not under systemd) everything here does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Where notifications go.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` names, if any (None when unset or unusable, logged).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_string_lossy().into_owned();
        match Notifier::connect(&name) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(
                    "NOTIFY_SOCKET={name} cannot be used ({e}): no systemd notifications"
                );
                None
            }
        }
    }

    /// A notifier for socket `name` (a path, or `@abstract`).
    pub fn connect(name: &str) -> std::io::Result<Notifier> {
        let target = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(name)?,
        };
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            target,
        })
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, `STATUS=...`).
    pub fn notify(&self, message: &str) -> std::io::Result<()> {
        self.socket
            .send_to_addr(message.as_bytes(), &self.target)
            .map(|_| ())
    }
}

/// The period systemd's watchdog expects (`$WATCHDOG_USEC`, when it is meant for this process).
pub fn period_from_env() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_string_lossy().trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// When to notify: every quarter period while both loops are alive, never once one stalls.
#[derive(Debug, Clone)]
pub struct Watchdog {
    /// The period systemd expects a notification in.
    pub period: Duration,
    last_kick: Option<Instant>,
    stalled: bool,
}

impl Watchdog {
    /// A watchdog expecting a notification every `period`.
    pub fn new(period: Duration) -> Watchdog {
        Watchdog {
            period,
            last_kick: None,
            stalled: false,
        }
    }

    /// Whether to send `WATCHDOG=1` now. Called from the agent's loop (so a stalled agent loop
    /// never gets here); `last_frame` is how long ago the detection loop processed a frame (None:
    /// no detection loop running). A frame older than the period stops the notifications (logged
    /// once), a new frame resumes them.
    pub fn due(&mut self, now: Instant, last_frame: Option<Duration>) -> bool {
        let stalled = last_frame.is_some_and(|age| age > self.period);
        if stalled != self.stalled {
            self.stalled = stalled;
            if stalled {
                tracing::error!(
                    "the detection loop has processed no frame for {:.1} s: no longer notifying \
                     systemd's watchdog, which restarts the agent",
                    last_frame.unwrap_or_default().as_secs_f64()
                );
            }
        }
        if stalled {
            return false;
        }
        let due = self
            .last_kick
            .is_none_or(|t| now.duration_since(t) >= self.period / 4);
        if due {
            self.last_kick = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        n.notify("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        // Abstract names too.
        let name = format!("kestrel-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::connect(&format!("@{name}"))
            .unwrap()
            .notify("WATCHDOG=1")
            .unwrap();
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn kicks_every_quarter_period_and_stop_while_frames_stall() {
        let period = Duration::from_secs(20);
        let mut w = Watchdog::new(period);
        let t0 = Instant::now();
        assert!(w.due(t0, None), "the first call notifies");
        assert!(!w.due(t0 + Duration::from_secs(1), None));
        assert!(w.due(t0 + Duration::from_secs(5), None));
        assert!(w.due(
            t0 + Duration::from_secs(10),
            Some(Duration::from_millis(30))
        ));
        // Frames stopped 21 s ago: no notification however long the agent loop keeps turning.
        for s in [15, 20, 25, 60] {
            assert!(
                !w.due(t0 + Duration::from_secs(s), Some(Duration::from_secs(21))),
                "at {s} s"
            );
        }
        // Frames again: notifications resume.
        assert!(w.due(
            t0 + Duration::from_secs(61),
            Some(Duration::from_millis(50))
        ));
    }
}
