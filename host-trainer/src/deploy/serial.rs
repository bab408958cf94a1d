//! `kestrel deploy BUNDLE --serial DEV`, `kestrel monitor` and `kestrel rollback --serial`: the
//! host's side of the wire protocol ([`kestrel_shared::wire`]) over any [`Transport`].
//!
//! A deploy asks the board for its [`Hello`] (blobs it stores), offers only the blobs it lacks,
//! sends each in chunks within the window the board grants (selective repeat: the board holds
//! chunks that arrive after a gap and says so, only lost chunks travel again, and chunk sizes
//! follow the measured error rate; see [`kestrel_shared::wire::Sender`]), starts where the board's
//! partial upload stands when a transfer was interrupted, then asks the board to install the
//! bundle and reports its answer. Retransmission timeouts follow the baud rate: a window must
//! have time to drain. Without a terminal the progress is a line every few seconds.

/// The JSON line `kestrel monitor` prints per telemetry message.
pub use kestrel_shared::wire::MonitorLine;
use std::collections::VecDeque;
use std::io::Read;
use std::time::{Duration, Instant};

use kestrel_shared::transport::Transport;
use kestrel_shared::wire::{
    self, FileOffer, FrameDecoder, Hello, Message, PROTOCOL_VERSION, Sender,
};

use super::link::{BoardLink, BoardStatus, InstallRequest, LineBytes};
use super::{BlobReport, DeployError, DeployReport, LocalBundle, LocalFile};
use crate::progress::Progress;

/// Settings of a serial deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialOptions {
    /// Baud rate of the line (sets the retransmission timeout).
    pub baud: u32,
    /// Chunk payload in bytes (at most what the board accepts).
    pub chunk: usize,
    /// How long to wait for each Hello (the request is repeated a few times).
    pub hello_timeout: Duration,
    /// How long to wait for the install result (the board loads the models first).
    pub install_timeout: Duration,
    /// Ask the board to accept a bundle older than its current one.
    pub allow_downgrade: bool,
}

impl Default for SerialOptions {
    fn default() -> Self {
        SerialOptions {
            baud: 115_200,
            chunk: wire::DEFAULT_CHUNK,
            hello_timeout: Duration::from_secs(1),
            install_timeout: Duration::from_secs(60),
            allow_downgrade: false,
        }
    }
}

impl SerialOptions {
    /// Time to wait for an acknowledgement before resending: twice the time a full window takes
    /// on the line, at least 100 ms.
    pub fn rto(&self) -> Duration {
        let window_secs = f64::from(wire::DEFAULT_WINDOW) * 10.0 / f64::from(self.baud.max(1));
        Duration::from_secs_f64((2.0 * window_secs).max(0.1))
    }
}

/// Hello attempts before giving up on the board.
const HELLO_TRIES: u32 = 5;
/// Offers repeated when the board does not answer.
const OFFER_TRIES: u32 = 5;
/// Install requests repeated when the answer is lost (installing twice is harmless). On a line
/// that flips and drops 1 byte in 1000 each way, a request and its answer (about 100 bytes each)
/// are lost one try in three: three tries failed one deploy in 20-30 (seen in the noisy-line test),
/// six fail one in about 500.
const INSTALL_TRIES: u32 = 6;

/// The line, framed: counts bytes both ways and keeps decoded messages until asked for.
pub struct Conn<'a> {
    link: &'a mut dyn Transport,
    decoder: FrameDecoder,
    inbox: VecDeque<Message>,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Frames that did not decode (noise, corruption).
    pub bad_frames: u64,
}

impl<'a> Conn<'a> {
    /// Frames `link`.
    pub fn new(link: &'a mut dyn Transport) -> Self {
        Conn {
            link,
            decoder: FrameDecoder::new(),
            inbox: VecDeque::new(),
            bytes_out: 0,
            bytes_in: 0,
            bad_frames: 0,
        }
    }

    fn link_err(&self, what: &str, source: std::io::Error) -> DeployError {
        DeployError::Link {
            what: format!("{what} on {}", self.link.describe()),
            source,
        }
    }

    /// Sends messages in one write.
    pub fn send(&mut self, msgs: &[Message]) -> Result<(), DeployError> {
        let mut bytes = Vec::new();
        for m in msgs {
            wire::encode_into(m, &mut bytes)?;
        }
        self.bytes_out += bytes.len() as u64;
        self.link
            .send(&bytes)
            .map_err(|e| self.link_err("writing", e))
    }

    /// The next message (telemetry included) that arrives before `deadline`.
    pub fn next_any(&mut self, deadline: Instant) -> Result<Option<Message>, DeployError> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(Some(m));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let n = self
                .link
                .recv(&mut buf, (deadline - now).min(Duration::from_millis(100)))
                .map_err(|e| self.link_err("reading", e))?;
            self.bytes_in += n as u64;
            for r in self.decoder.feed(&buf[..n]) {
                match r {
                    Ok(m) => self.inbox.push_back(m),
                    Err(e) => {
                        self.bad_frames += 1;
                        tracing::debug!("frame from the board dropped: {e}");
                    }
                }
            }
        }
    }

    /// The next message other than telemetry before `deadline`.
    pub fn next(&mut self, deadline: Instant) -> Result<Option<Message>, DeployError> {
        loop {
            match self.next_any(deadline)? {
                Some(Message::Telemetry(_)) => continue,
                other => return Ok(other),
            }
        }
    }

    /// Discards what is in flight for `quiet` (stale answers of an earlier session).
    pub fn drain(&mut self, quiet: Duration) -> Result<(), DeployError> {
        let deadline = Instant::now() + quiet;
        while self.next_any(deadline)?.is_some() {}
        self.decoder.reset();
        Ok(())
    }

    /// Asks for the board's Hello (repeated a few times), checks its protocol, answers HelloAck.
    pub fn handshake(&mut self, timeout: Duration) -> Result<Hello, DeployError> {
        self.drain(Duration::from_millis(50))?;
        for attempt in 0..HELLO_TRIES {
            if attempt > 0 {
                tracing::debug!("no Hello yet, asking again ({attempt})");
            }
            self.send(&[Message::HelloRequest])?;
            let deadline = Instant::now() + timeout;
            while let Some(m) = self.next(deadline)? {
                match m {
                    Message::Hello(h) => {
                        h.check_protocol()?;
                        self.send(&[Message::HelloAck {
                            protocol: PROTOCOL_VERSION,
                            kestrel_version: env!("CARGO_PKG_VERSION").into(),
                        }])?;
                        return Ok(h);
                    }
                    Message::Error { message, .. } => return Err(DeployError::Refused(message)),
                    _ => {}
                }
            }
        }
        Err(DeployError::Timeout {
            what: "Hello".into(),
            timeout: timeout * HELLO_TRIES,
        })
    }
}

/// Sends one blob (offer, chunks, completion) on an open connection after the handshake;
/// returns where it started and what it sent.
pub fn send_blob(
    conn: &mut Conn,
    file: &LocalFile,
    opts: &SerialOptions,
    progress: &dyn Progress,
) -> Result<BlobReport, DeployError> {
    let offer = FileOffer {
        sha256: file.sha256,
        size: file.size,
        name: file.name.clone(),
    };
    let rto = opts.rto();
    let mut report = BlobReport {
        name: file.name.clone(),
        size: file.size,
        start_offset: 0,
        bytes_sent: 0,
    };
    let mut data: Option<Vec<u8>> = None;
    let mut offered = false;
    for _ in 0..OFFER_TRIES {
        // The offer and its reply.
        conn.send(&[Message::FileOffer(offer.clone())])?;
        let deadline = Instant::now() + rto.max(Duration::from_secs(1));
        let mut reply = None;
        while let Some(m) = conn.next(deadline)? {
            match m {
                Message::OfferReply(r) if r.sha256 == offer.sha256 => {
                    reply = Some(r);
                    break;
                }
                Message::Error { message, .. } => return Err(DeployError::Refused(message)),
                _ => {}
            }
        }
        let Some(reply) = reply else { continue };
        // Where the transfer started is the first reply's word: after a lost `Complete` the offer
        // is repeated and the board, now holding the whole blob, answers `have_bytes == size`.
        if !offered {
            report.start_offset = reply.have_bytes;
            offered = true;
        }
        if reply.have_bytes < file.size {
            let bytes = match data.take() {
                Some(d) => d,
                None => read_file(file)?,
            };
            let mut sender = Sender::new(&offer, &reply, opts.chunk)?;
            let task = progress.start(&file.name, Some(file.size));
            task.advance(reply.have_bytes);
            while !sender.is_done() {
                let ranges = sender.next_chunks();
                if !ranges.is_empty() {
                    let msgs: Vec<Message> = ranges
                        .iter()
                        .map(|r| Message::Chunk(r.chunk(file.sha256, &bytes)))
                        .collect();
                    report.bytes_sent += ranges.iter().map(|r| r.len as u64).sum::<u64>();
                    conn.send(&msgs)?;
                }
                match conn.next(Instant::now() + rto)? {
                    Some(Message::Ack(a)) if a.sha256 == offer.sha256 => {
                        let before = sender.acked();
                        sender.on_ack(&a)?;
                        task.message(&format!(
                            "chunk {} B, {} resent",
                            sender.chunk_size(),
                            crate::progress::human_bytes(sender.resent_bytes())
                        ));
                        task.advance(sender.acked() - before);
                    }
                    Some(Message::Error { message, .. }) => {
                        task.finish();
                        return Err(DeployError::Refused(message));
                    }
                    Some(_) => {}
                    None => sender.on_timeout()?,
                }
            }
            task.finish();
            data = Some(bytes);
        }
        // The board answers Complete once the blob is whole and its sha256 checked.
        let deadline = Instant::now() + rto.max(Duration::from_secs(2));
        while let Some(m) = conn.next(deadline)? {
            match m {
                Message::Complete { sha256 } if sha256 == offer.sha256 => return Ok(report),
                Message::Error { message, .. } => return Err(DeployError::Refused(message)),
                _ => {}
            }
        }
        tracing::debug!("no Complete for {}: offering it again", file.name);
    }
    Err(DeployError::Timeout {
        what: format!("the offer of {}", file.name),
        timeout: rto.max(Duration::from_secs(1)) * OFFER_TRIES,
    })
}

fn read_file(file: &LocalFile) -> Result<Vec<u8>, DeployError> {
    let bad = |reason: String| DeployError::Bundle {
        path: file.path.clone(),
        reason,
    };
    let f = std::fs::File::open(&file.path).map_err(|e| bad(e.to_string()))?;
    let mut bytes = Vec::new();
    f.take(file.size + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 != file.size {
        return Err(bad(format!(
            "{} bytes but the manifest says {}: export the bundle again",
            bytes.len(),
            file.size
        )));
    }
    Ok(bytes)
}

/// The serial agent as a [`BoardLink`]: the handshake happens on the first request, blobs travel
/// as offers and chunks (the board's `have_bytes` says where a cut upload resumes).
pub struct SerialBoard<'a> {
    conn: Conn<'a>,
    opts: SerialOptions,
    greeted: bool,
}

impl<'a> SerialBoard<'a> {
    /// The agent at the other end of `link`.
    pub fn new(link: &'a mut dyn Transport, opts: SerialOptions) -> Self {
        SerialBoard {
            conn: Conn::new(link),
            opts,
            greeted: false,
        }
    }

    fn greet(&mut self) -> Result<Hello, DeployError> {
        let hello = self.conn.handshake(self.opts.hello_timeout)?;
        self.greeted = true;
        Ok(hello)
    }
}

impl BoardLink for SerialBoard<'_> {
    fn describe(&self) -> String {
        self.conn.link.describe()
    }

    fn status(&mut self) -> Result<BoardStatus, DeployError> {
        let hello = self.greet()?;
        Ok(BoardStatus {
            kestrel_version: hello.kestrel_version,
            device: Some(hello.device),
            board: Some(hello.board),
            free_bytes: Some(hello.free_bytes),
            blobs_complete: hello.blobs.len() < wire::MAX_HASHES,
            blobs: hello.blobs,
            ..Default::default()
        })
    }

    fn put_blob(
        &mut self,
        file: &LocalFile,
        progress: &dyn Progress,
    ) -> Result<BlobReport, DeployError> {
        if !self.greeted {
            self.greet()?;
        }
        send_blob(&mut self.conn, file, &self.opts, progress)
    }

    fn install(&mut self, request: &InstallRequest) -> Result<String, DeployError> {
        if !self.greeted {
            self.greet()?;
        }
        let (bundle, manifest) = (request.id.clone(), request.manifest);
        let msg = if request.allow_downgrade {
            Message::InstallAllowingDowngrade { bundle, manifest }
        } else {
            Message::Install { bundle, manifest }
        };
        request_result(
            &mut self.conn,
            msg,
            INSTALL_TRIES,
            self.opts.install_timeout,
        )
    }

    fn rollback(&mut self) -> Result<String, DeployError> {
        if !self.greeted {
            self.greet()?;
        }
        // Not repeated: a second rollback would go back one bundle more.
        request_result(
            &mut self.conn,
            Message::Rollback,
            1,
            self.opts.install_timeout,
        )
    }

    fn line_bytes(&self) -> LineBytes {
        LineBytes {
            out: self.conn.bytes_out,
            back: self.conn.bytes_in,
        }
    }
}

/// Deploys `bundle` over `link`: only missing blobs travel, then the board installs it.
pub fn deploy(
    link: &mut dyn Transport,
    bundle: &LocalBundle,
    opts: &SerialOptions,
    progress: &dyn Progress,
) -> Result<DeployReport, DeployError> {
    let mut board = SerialBoard::new(link, *opts);
    super::link::deploy(&mut board, bundle, opts.allow_downgrade, progress)
}

/// Sends `msg` (up to `tries` times) and waits for the board's InstallResult.
fn request_result(
    conn: &mut Conn,
    msg: Message,
    tries: u32,
    timeout: Duration,
) -> Result<String, DeployError> {
    let what = msg.kind();
    for _ in 0..tries {
        conn.send(std::slice::from_ref(&msg))?;
        let deadline = Instant::now() + timeout / tries;
        while let Some(m) = conn.next(deadline)? {
            match m {
                Message::InstallResult {
                    ok: true, message, ..
                } => return Ok(message),
                Message::InstallResult { message, .. } => {
                    return Err(DeployError::Refused(message));
                }
                Message::Error { message, .. } => return Err(DeployError::Refused(message)),
                _ => {}
            }
        }
    }
    Err(DeployError::Timeout {
        what: format!("the {what} request"),
        timeout,
    })
}

/// `kestrel rollback --serial`: the board goes back to the bundle installed before the current
/// one. Returns the board's message.
pub fn rollback(link: &mut dyn Transport, opts: &SerialOptions) -> Result<String, DeployError> {
    SerialBoard::new(link, *opts).rollback()
}

/// `kestrel monitor`: writes each telemetry message as a JSON line to `out`, until `count`
/// messages (if given) or `duration` (if given) have passed. Returns the number printed.
pub fn monitor(
    link: &mut dyn Transport,
    out: &mut dyn std::io::Write,
    count: Option<usize>,
    duration: Option<Duration>,
) -> Result<usize, DeployError> {
    let mut conn = Conn::new(link);
    let end = duration.map(|d| Instant::now() + d);
    let mut printed = 0;
    while count.is_none_or(|c| printed < c) {
        let step = Instant::now() + Duration::from_millis(500);
        let deadline = end.map_or(step, |e| e.min(step));
        match conn.next_any(deadline)? {
            Some(Message::Telemetry(t)) => {
                let line = serde_json::to_string(&MonitorLine::from(&t))
                    .expect("a monitor line always serialises");
                writeln!(out, "{line}").map_err(|e| DeployError::Link {
                    what: "writing telemetry".into(),
                    source: e,
                })?;
                printed += 1;
            }
            Some(Message::Error { code, message }) => {
                tracing::warn!("board error ({code:?}): {message}")
            }
            Some(_) => {}
            None => {}
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
    }
    Ok(printed)
}
