//! The byte stream between host and board, behind a small trait.
//!
//! The agent (board) and `kestrel deploy --serial` (host) speak the wire protocol of
//! [`crate::wire`] over anything that implements [`Transport`]: a real serial port
//! (`serialport::TTYPort` with the `serial` feature, also what a pseudo-terminal pair gives in
//! tests), an in-memory link
//! ([`memory_pair`]), or either of them wrapped in [`Faulty`], which flips bits, drops bytes and
//! pulls the cable at a chosen byte, so the protocol's repairs are tested with the same code that
//! runs on the board.

use std::collections::VecDeque;
use std::io;
#[cfg(feature = "serial")]
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[cfg(feature = "serial")]
use serialport::SerialPort;
#[cfg(feature = "serial")]
pub use serialport::TTYPort;

/// A byte stream with a read timeout; every method is fallible (a cable can be pulled any time).
pub trait Transport: Send {
    /// Reads what is available into `buf`, waiting at most `timeout` for the first byte.
    /// `Ok(0)` means nothing arrived in time; an error means the link is gone.
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize>;
    /// Writes all of `bytes` (blocking while the line drains).
    fn send(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// A name for messages (the device path, "memory", ...).
    fn describe(&self) -> String;
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        (**self).recv(buf, timeout)
    }
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        (**self).send(bytes)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        (**self).recv(buf, timeout)
    }
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        (**self).send(bytes)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

#[cfg(feature = "serial")]
/// Whether an I/O error only means "nothing yet".
fn is_quiet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

#[cfg(feature = "serial")]
impl Transport for TTYPort {
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        self.set_timeout(timeout.max(Duration::from_millis(1)))
            .map_err(io::Error::other)?;
        match Read::read(self, buf) {
            Ok(n) => Ok(n),
            Err(e) if is_quiet(&e) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        // A full line can take a while to drain at low baud rates: wait, but not forever.
        self.set_timeout(Duration::from_secs(10))
            .map_err(io::Error::other)?;
        Write::write_all(self, bytes)?;
        Write::flush(self)
    }

    fn describe(&self) -> String {
        self.name().unwrap_or_else(|| "serial port".into())
    }
}

#[cfg(feature = "serial")]
/// Opens a serial device (e.g. `/dev/ttyUSB0`, `/dev/serial0`) at `baud`, 8N1, no flow control.
pub fn open_serial(path: &str, baud: u32) -> io::Result<TTYPort> {
    serialport::new(path, baud)
        .timeout(Duration::from_millis(100))
        .open_native()
        .map_err(|e| io::Error::other(format!("cannot open serial device {path}: {e}")))
}

#[cfg(feature = "serial")]
/// A pseudo-terminal pair (master, slave): a serial line inside this machine, for tests. The
/// slave's device path is `slave.name()`, so a separate process can open it too.
pub fn pty_pair() -> io::Result<(TTYPort, TTYPort)> {
    let (master, mut slave) = TTYPort::pair().map_err(io::Error::other)?;
    // Let another process (the agent binary) open the slave as well.
    slave.set_exclusive(false).map_err(io::Error::other)?;
    Ok((master, slave))
}

#[derive(Default)]
struct Pipe {
    bytes: VecDeque<u8>,
    closed: bool,
}

type Shared = Arc<(Mutex<Pipe>, Condvar)>;

/// One end of an in-memory link (see [`memory_pair`]).
pub struct MemoryLink {
    incoming: Shared,
    outgoing: Shared,
}

/// Two connected in-memory ends: what one writes, the other reads. Dropping an end closes it;
/// the other end then reads an error.
pub fn memory_pair() -> (MemoryLink, MemoryLink) {
    let a: Shared = Arc::default();
    let b: Shared = Arc::default();
    (
        MemoryLink {
            incoming: a.clone(),
            outgoing: b.clone(),
        },
        MemoryLink {
            incoming: b,
            outgoing: a,
        },
    )
}

fn lock(p: &Shared) -> std::sync::MutexGuard<'_, Pipe> {
    p.0.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Transport for MemoryLink {
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        let mut pipe = lock(&self.incoming);
        if pipe.bytes.is_empty() && !pipe.closed {
            pipe = self
                .incoming
                .1
                .wait_timeout_while(pipe, timeout, |p| p.bytes.is_empty() && !p.closed)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        if pipe.bytes.is_empty() && pipe.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the other end of the link is closed",
            ));
        }
        let n = buf.len().min(pipe.bytes.len());
        for (slot, b) in buf.iter_mut().zip(pipe.bytes.drain(..n)) {
            *slot = b;
        }
        Ok(n)
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut pipe = lock(&self.outgoing);
        if pipe.closed {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the other end of the link is closed",
            ));
        }
        pipe.bytes.extend(bytes);
        self.outgoing.1.notify_all();
        Ok(())
    }

    fn describe(&self) -> String {
        "in-memory link".into()
    }
}

impl Drop for MemoryLink {
    fn drop(&mut self) {
        for p in [&self.incoming, &self.outgoing] {
            lock(p).closed = true;
            p.1.notify_all();
        }
    }
}

/// Faults to inject on a link, in both directions (what is written and what is read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Seed of the fault pattern (same seed, same faults).
    pub seed: u64,
    /// Bytes in a million that get one bit flipped.
    pub flip_per_million: u32,
    /// Bytes in a million that are lost.
    pub drop_per_million: u32,
    /// The cable is pulled once this many bytes have been written: that write and everything
    /// after it fails with `BrokenPipe`.
    pub cut_after_written: Option<u64>,
}

/// What a [`Faulty`] link did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Bytes written by the user of the link (before faults).
    pub written: u64,
    /// Bytes read by the user of the link (after faults).
    pub read: u64,
    /// Bits flipped.
    pub flipped: u64,
    /// Bytes dropped.
    pub dropped: u64,
    /// Whether the cable was pulled.
    pub cut: bool,
}

/// A link that damages what crosses it (see [`Faults`]).
pub struct Faulty<T> {
    inner: T,
    faults: Faults,
    rng: u64,
    /// What happened so far.
    pub stats: FaultStats,
}

impl<T: Transport> Faulty<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, faults: Faults) -> Self {
        Faulty {
            inner,
            faults,
            rng: faults.seed ^ 0x5DEE_CE66_D1CE_4E5B,
            stats: FaultStats::default(),
        }
    }

    /// The wrapped link back.
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.next() % 1_000_000 < u64::from(per_million)
    }

    /// Applies flips and drops to `bytes`.
    fn damage(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if self.chance(self.faults.drop_per_million) {
                self.stats.dropped += 1;
                continue;
            }
            if self.chance(self.faults.flip_per_million) {
                self.stats.flipped += 1;
                out.push(b ^ (1 << (self.next() % 8)));
            } else {
                out.push(b);
            }
        }
        out
    }

    fn pulled() -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the cable was pulled (injected fault)",
        )
    }
}

impl<T: Transport> Transport for Faulty<T> {
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        if self.stats.cut {
            return Err(Self::pulled());
        }
        let mut raw = vec![0u8; buf.len()];
        let n = self.inner.recv(&mut raw, timeout)?;
        let damaged = self.damage(&raw[..n]);
        buf[..damaged.len()].copy_from_slice(&damaged);
        self.stats.read += damaged.len() as u64;
        Ok(damaged.len())
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.stats.cut {
            return Err(Self::pulled());
        }
        let mut bytes = bytes;
        if let Some(limit) = self.faults.cut_after_written {
            let room = limit.saturating_sub(self.stats.written);
            if room < bytes.len() as u64 {
                bytes = &bytes[..room as usize];
                self.stats.cut = true;
            }
        }
        self.stats.written += bytes.len() as u64;
        let damaged = self.damage(bytes);
        self.inner.send(&damaged)?;
        if self.stats.cut {
            return Err(Self::pulled());
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_link_carries_bytes_both_ways_and_times_out() {
        let (mut a, mut b) = memory_pair();
        a.send(b"hello").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(b.recv(&mut buf, Duration::from_millis(10)).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(b.recv(&mut buf, Duration::from_millis(10)).unwrap(), 0);
        b.send(b"x").unwrap();
        assert_eq!(a.recv(&mut buf, Duration::from_millis(10)).unwrap(), 1);
        drop(b);
        assert!(a.recv(&mut buf, Duration::from_millis(10)).is_err());
        assert!(a.send(b"y").is_err());
    }

    #[test]
    fn faults_are_seeded_and_the_cable_pull_is_exact() {
        let run = |seed| {
            let (a, mut b) = memory_pair();
            let mut f = Faulty::new(
                a,
                Faults {
                    seed,
                    flip_per_million: 20_000,
                    drop_per_million: 20_000,
                    cut_after_written: Some(10_000),
                },
            );
            let data: Vec<u8> = (0..8_000u32).map(|i| i as u8).collect();
            f.send(&data).unwrap();
            assert!(f.send(&data).is_err(), "the cable is pulled at 10,000");
            assert!(f.stats.cut);
            assert!(f.send(b"z").is_err());
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = b.recv(&mut buf, Duration::from_millis(5)).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            (got, f.stats)
        };
        let (got, stats) = run(1);
        assert_eq!(stats.written, 10_000);
        assert!(stats.flipped > 50 && stats.dropped > 50, "{stats:?}");
        assert_eq!(got.len() as u64, 10_000 - stats.dropped);
        assert_eq!(run(1).0, got, "same seed, same faults");
        assert_ne!(run(2).0, got);
    }

    #[test]
    #[cfg(feature = "serial")]
    fn pty_pair_is_a_serial_line() {
        let (mut master, mut slave) = pty_pair().unwrap();
        master
            .send(&[0, 1, 2, 0x11, 0x13, b'\n', b'\r', 0xff])
            .unwrap();
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        while got.len() < 8 {
            let n = slave.recv(&mut buf, Duration::from_millis(500)).unwrap();
            assert!(n > 0, "timed out after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(
            got,
            [0, 1, 2, 0x11, 0x13, b'\n', b'\r', 0xff],
            "raw mode: no translation"
        );
    }
}
