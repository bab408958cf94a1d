//! The live view: annotated video and statistics over HTTP, for a browser on the same network.
//!
//! `GET /` is a self-contained page; `/stream` the annotated frames as MJPEG
//! (`multipart/x-mixed-replace`); `/frame.jpg` the latest one; `/stats` the runtime's figures as
//! JSON. With a token, every request must carry `?token=T` or `Authorization: Bearer T`.
//!
//! The inference thread only copies the newest frame and its result into a shared slot and bumps a
//! generation counter ([`Sink::handle`] never encodes and never waits for a client). The HTTP
//! threads annotate and encode a frame when someone asks for it, once per generation however many
//! clients watch; a slow client just skips frames. Nobody watching costs one frame copy.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::RgbImage;
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, Server, StatusCode};

use super::draw::{annotate, encode_jpeg};
use crate::sink::{FrameResult, Sink, SinkError};
use crate::stats::StatsSnapshot;

/// JPEG quality of the live view.
const QUALITY: u8 = 75;
/// Threads answering requests (a stream gets a thread of its own).
const WORKERS: usize = 3;
/// Most video streams served at once; more get 503.
pub const MAX_STREAMS: usize = 8;
/// Separates the frames of `/stream`.
const BOUNDARY: &str = "kestrel-frame";
/// How long `close` waits for stream threads and for the port to be released.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The page served at `/`.
const PAGE: &str = include_str!("page.html");

/// Starting the live view failed.
#[derive(Debug, thiserror::Error)]
pub enum LiveViewError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}{}", bind_hint(source))]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// An empty token would lock everyone out (or in, by mistake).
    #[error("the live view's token is empty; give a non-empty token or none")]
    EmptyToken,
    /// The server could not start (threads, socket setup).
    #[error("cannot start the live view on {addr}: {reason}")]
    Start {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

fn bind_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => " (another program uses this port: pick another one)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need root: use 8080 or similar)",
        io::ErrorKind::AddrNotAvailable => " (this machine has no such address)",
        _ => "",
    }
}

/// The newest frame handed to the sink.
struct Latest {
    generation: u64,
    result: FrameResult,
    image: RgbImage,
}

#[derive(Default)]
struct State {
    /// Bumped by every handled frame.
    generation: u64,
    frame: Option<Arc<Latest>>,
    stats: Option<StatsSnapshot>,
    /// Stream threads running.
    streams: usize,
}

/// What the sink and the HTTP threads share.
struct Shared {
    token: Option<String>,
    model: String,
    state: Mutex<State>,
    /// Notified on a new frame, on shutdown and when a stream ends.
    changed: Condvar,
    /// The last encoded frame: (generation, JPEG). Only HTTP threads touch it.
    encoded: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    shutdown: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The annotated JPEG of `latest` (or of a newer frame already encoded).
    fn jpeg(&self, latest: &Latest) -> Result<Arc<Vec<u8>>, String> {
        let mut cache = lock(&self.encoded);
        if let Some((g, jpeg)) = &*cache
            && *g >= latest.generation
        {
            return Ok(jpeg.clone());
        }
        let jpeg = Arc::new(encode_jpeg(
            &annotate(&latest.image, &latest.result),
            QUALITY,
        )?);
        *cache = Some((latest.generation, jpeg.clone()));
        Ok(jpeg)
    }

    /// The newest frame after generation `seen`, waiting for it; `None` on shutdown.
    fn next_frame(&self, seen: u64) -> Option<Arc<Latest>> {
        let mut st = lock(&self.state);
        loop {
            if self.shutdown.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(f) = &st.frame
                && f.generation > seen
            {
                return Some(f.clone());
            }
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(500))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn authorized(&self, rq: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let in_query = rq
            .url()
            .split_once('?')
            .into_iter()
            .flat_map(|(_, q)| q.split('&'))
            .filter_map(|pair| pair.strip_prefix("token="))
            .any(|v| same(&percent_decode(v), token));
        in_query
            || rq.headers().iter().any(|h| {
                h.field.equiv("Authorization")
                    && h.value.as_str().split_once(' ').is_some_and(|(scheme, v)| {
                        scheme.eq_ignore_ascii_case("bearer") && same(v.trim(), token)
                    })
            })
    }

    fn stats_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            #[serde(flatten)]
            stats: StatsSnapshot,
            /// Video streams being served.
            clients: usize,
            last: Option<&'a FrameResult>,
        }
        let st = lock(&self.state);
        let mut stats = st.stats.clone().unwrap_or_default();
        if stats.model.is_empty() {
            stats.model.clone_from(&self.model);
        }
        let body = Body {
            stats,
            clients: st.streams,
            last: st.frame.as_ref().map(|f| &f.result),
        };
        serde_json::to_vec(&body).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes())
    }
}

/// Byte-wise comparison that takes the same time wherever the first difference is.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A query value decoded as a browser's `URLSearchParams` does (`%XX`, `+` as space).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header(field: &str, value: &str) -> Header {
    // Only called with ASCII field names and values of our own.
    Header::from_bytes(field.as_bytes(), value.as_bytes()).expect("ASCII header")
}

fn text(status: u16, body: &str) -> Response<io::Cursor<Vec<u8>>> {
    Response::from_string(body)
        .with_status_code(StatusCode(status))
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
        .with_header(header("Cache-Control", "no-store"))
}

/// The `http` sink: serves the live view until closed (or dropped).
pub struct LiveView {
    shared: Arc<Shared>,
    server: Option<Arc<Server>>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl LiveView {
    /// Listen on `addr` (port 0 picks a free port, see [`local_addr`](Self::local_addr)) and
    /// serve the live view of `model_name`; with a `token`, only requests carrying it.
    pub fn start(
        addr: SocketAddr,
        token: Option<String>,
        model_name: &str,
    ) -> Result<LiveView, LiveViewError> {
        if token.as_deref() == Some("") {
            return Err(LiveViewError::EmptyToken);
        }
        let listener =
            TcpListener::bind(addr).map_err(|source| LiveViewError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| LiveViewError::Bind { addr, source })?;
        let server = Server::from_listener(listener, None).map_err(|e| LiveViewError::Start {
            addr: local,
            reason: e.to_string(),
        })?;
        let server = Arc::new(server);
        let shared = Arc::new(Shared {
            token,
            model: model_name.to_string(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            encoded: Mutex::new(None),
            shutdown: AtomicBool::new(false),
        });
        let mut view = LiveView {
            shared,
            server: Some(server.clone()),
            workers: Vec::new(),
            addr: local,
        };
        for i in 0..WORKERS {
            let (server, shared) = (server.clone(), view.shared.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || serve(&server, &shared));
            match spawned {
                Ok(handle) => view.workers.push(handle),
                Err(e) => {
                    // Dropping `view` stops the workers already running.
                    return Err(LiveViewError::Start {
                        addr: local,
                        reason: format!("cannot start a server thread: {e}"),
                    });
                }
            }
        }
        Ok(view)
    }

    /// The address actually listened on (the real port when started with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address, for logs (without the token).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Video streams being served right now.
    pub fn clients(&self) -> usize {
        lock(&self.shared.state).streams
    }

    fn stop(&mut self) {
        let Some(server) = self.server.take() else {
            return;
        };
        {
            let _st = lock(&self.shared.state);
            self.shared.shutdown.store(true, Ordering::SeqCst);
            self.shared.changed.notify_all();
        }
        for _ in 0..self.workers.len() {
            server.unblock();
        }
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                tracing::warn!("http: a server thread panicked");
            }
        }
        // Streams notice the shutdown within one wait; one stuck on a client that stopped
        // reading is left behind after CLOSE_WAIT (it ends when the socket errors).
        let deadline = Instant::now() + CLOSE_WAIT;
        let mut st = lock(&self.shared.state);
        while st.streams > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    "http: {} video stream(s) still writing at close",
                    st.streams
                );
                break;
            }
            st = self
                .shared
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(st);
        // The last reference: tiny_http wakes its accept thread, which drops the listener.
        drop(server);
        // Return only once the port is free, so a restart on the same port succeeds.
        let deadline = Instant::now() + CLOSE_WAIT;
        while TcpListener::bind(self.addr).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Sink for LiveView {
    fn name(&self) -> &str {
        "http"
    }

    fn handle(
        &mut self,
        result: &FrameResult,
        image: &RgbImage,
        stats: &StatsSnapshot,
    ) -> Result<(), SinkError> {
        let mut st = lock(&self.shared.state);
        st.generation += 1;
        let generation = st.generation;
        // Reuse the slot's buffers when no HTTP thread holds the previous frame.
        match st.frame.as_mut().and_then(Arc::get_mut) {
            Some(slot) if slot.image.dimensions() == image.dimensions() => {
                slot.generation = generation;
                slot.result.clone_from(result);
                slot.image.copy_from_slice(image);
            }
            _ => {
                st.frame = Some(Arc::new(Latest {
                    generation,
                    result: result.clone(),
                    image: image.clone(),
                }));
            }
        }
        match &mut st.stats {
            Some(s) => s.clone_from(stats),
            None => st.stats = Some(stats.clone()),
        }
        self.shared.changed.notify_all();
        Ok(())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        self.stop();
        Ok(())
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A worker: answers requests until the server is unblocked at shutdown.
fn serve(server: &Server, shared: &Arc<Shared>) {
    loop {
        match server.recv() {
            Ok(rq) => {
                if shared.shutdown.load(Ordering::SeqCst) {
                    let _ = rq.respond(text(503, "shutting down\n"));
                    continue;
                }
                route(rq, shared);
            }
            Err(e) => {
                if shared.shutdown.load(Ordering::SeqCst) {
                    return;
                }
                tracing::warn!("http: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn route(rq: Request, shared: &Arc<Shared>) {
    if !matches!(rq.method(), Method::Get | Method::Head) {
        let _ = rq.respond(text(405, "only GET\n").with_header(header("Allow", "GET, HEAD")));
        return;
    }
    if !shared.authorized(&rq) {
        let _ = rq.respond(
            text(
                401,
                "token required: add ?token=... or Authorization: Bearer ...\n",
            )
            .with_header(header("WWW-Authenticate", "Bearer realm=\"kestrel\"")),
        );
        return;
    }
    let path = rq.url().split('?').next().unwrap_or("/").to_string();
    let outcome = match path.as_str() {
        "/" | "/index.html" => rq.respond(
            Response::from_string(PAGE)
                .with_header(header("Content-Type", "text/html; charset=utf-8"))
                .with_header(header("Cache-Control", "no-store")),
        ),
        "/stats" => rq.respond(
            Response::from_data(shared.stats_json())
                .with_header(header("Content-Type", "application/json"))
                .with_header(header("Cache-Control", "no-store")),
        ),
        "/frame.jpg" => {
            let latest = lock(&shared.state).frame.clone();
            match latest.map(|l| shared.jpeg(&l)) {
                None => rq.respond(text(503, "no frame yet\n")),
                Some(Err(e)) => rq.respond(text(500, &format!("cannot encode the frame: {e}\n"))),
                Some(Ok(jpeg)) => rq.respond(
                    Response::from_data(jpeg.as_slice())
                        .with_header(header("Content-Type", "image/jpeg"))
                        .with_header(header("Cache-Control", "no-store")),
                ),
            }
        }
        "/stream" => {
            start_stream(rq, shared);
            Ok(())
        }
        _ => rq.respond(text(404, "not found: try / /stream /frame.jpg /stats\n")),
    };
    if let Err(e) = outcome {
        tracing::debug!("http: {path}: {e}");
    }
}

/// Counts a stream thread for as long as it lives.
struct StreamSlot(Arc<Shared>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.streams -= 1;
        self.0.changed.notify_all();
    }
}

fn start_stream(rq: Request, shared: &Arc<Shared>) {
    let slot = {
        let mut st = lock(&shared.state);
        if st.streams >= MAX_STREAMS {
            drop(st);
            let _ = rq.respond(text(503, "too many video streams\n"));
            return;
        }
        st.streams += 1;
        StreamSlot(shared.clone())
    };
    let spawned = std::thread::Builder::new()
        .name("http-stream".into())
        .spawn(move || {
            let shared = slot.0.clone();
            let chunked = *rq.http_version() >= (1, 1);
            let mut out = rq.into_writer();
            if let Err(e) = stream(&mut out, &shared, chunked) {
                tracing::debug!("http: stream ended: {e}");
            }
            drop(slot);
        });
    if let Err(e) = spawned {
        // The request and its slot were dropped with the closure (tiny_http answers 500).
        tracing::warn!("http: cannot start a stream thread: {e}");
    }
}

/// Writes `data` as one chunk of a chunked body, or as is.
fn put(out: &mut dyn Write, chunked: bool, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if chunked {
        write!(out, "{len:X}\r\n")?;
    }
    for p in parts {
        out.write_all(p)?;
    }
    if chunked {
        out.write_all(b"\r\n")?;
    }
    out.flush()
}

/// The MJPEG stream: every new frame as one part, each part followed by the next boundary so a
/// browser shows it at once.
fn stream(out: &mut dyn Write, shared: &Shared, chunked: bool) -> io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace; boundary={BOUNDARY}\r\nCache-Control: no-store\r\nConnection: close\r\n{}\r\n",
        if chunked {
            "Transfer-Encoding: chunked\r\n"
        } else {
            ""
        }
    )?;
    put(out, chunked, &[format!("--{BOUNDARY}\r\n").as_bytes()])?;
    let mut seen = 0;
    while let Some(latest) = shared.next_frame(seen) {
        seen = latest.generation;
        let jpeg = shared.jpeg(&latest).map_err(|e| {
            io::Error::other(format!("encoding frame {}: {e}", latest.result.frame))
        })?;
        drop(latest);
        let head = format!(
            "Content-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
            jpeg.len()
        );
        let tail = format!("\r\n--{BOUNDARY}\r\n");
        put(out, chunked, &[head.as_bytes(), &jpeg, tail.as_bytes()])?;
    }
    // Shutdown: end the body properly.
    if chunked {
        out.write_all(b"0\r\n\r\n")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_decode_like_a_browser() {
        assert_eq!(percent_decode("a%20b+c%2Bd"), "a b c+d");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn token_comparison() {
        assert!(same("secret", "secret"));
        assert!(!same("secret", "secreT"));
        assert!(!same("secret", "secrets"));
    }

    #[test]
    fn live_view_is_send() {
        fn is_send<T: Send>() {}
        is_send::<LiveView>();
    }
}
