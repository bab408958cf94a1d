//! `kestrel-edge agent`: the board's side of deploys.
//!
//! The agent keeps bundles in the content-addressed [`Store`], speaks the wire protocol of
//! [`kestrel_shared::wire`] on a serial line (when there is one), and tells whatever runs the model
//! (a [`BundleHost`], the detection loop) to switch bundles. On the line it speaks first with a
//! [`Hello`] listing the blobs it has (and again on [`Message::HelloRequest`]), receives offered
//! blobs into `partial/` (an interrupted upload resumes where the store stands), installs a bundle
//! atomically when asked ([`install_from_store`]: manifest parsed strictly, signature checked
//! against the trust list, every file re-hashed, the bundle loaded by [`Bundle::open`] and handed to
//! the host before `current` moves), rolls back on request, and forwards telemetry.
//!
//! Bundles installed by other means (`kestrel-edge store install`, run over SSH by
//! `kestrel deploy --ssh`) are noticed by polling the store's `current` link about once a second;
//! the agent then checks the bundle's signature and switches the host to it, or moves `current`
//! back if the bundle is refused.
//!
//! The store is opened (and its lock taken) only while a deploy talks to the agent, and released
//! after a short idle time, so `kestrel-edge store ...` commands can run beside a running agent.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kestrel_shared::manifest::{MANIFEST_FILE, Manifest, Release};
use kestrel_shared::sign::{TrustError, TrustList};
use kestrel_shared::wire::{
    self, Ack, ErrorCode, FileOffer, FrameDecoder, FrameError, Hello, Message, PROTOCOL_VERSION,
    Receiver, Sha256, Telemetry,
};

use crate::bundle::Bundle;
use crate::health::{AgentHealth, HealthSocket, LoopState};
use crate::store::{Store, StoreError};
use crate::watchdog::{Notifier, Watchdog, period_from_env};
use kestrel_shared::transport::Transport;

/// Largest blob the agent accepts (a bundle file): 4 GiB.
pub const MAX_BLOB: u64 = 4 << 30;
/// Largest manifest read from the store (they are a few KiB).
pub const MAX_MANIFEST: u64 = 1 << 20;
/// Telemetry messages the loop may queue before new ones are dropped.
pub const TELEMETRY_QUEUE: usize = 64;

/// What runs the model: told to switch to a newly installed (or rolled back) bundle.
pub trait BundleHost {
    /// Load and start running the bundle in `bundle_dir` (already validated by
    /// [`Bundle::open`]). On `Err` the agent keeps the previous bundle current and reports the
    /// reason; the host must then keep running what it ran before.
    fn switch(&mut self, bundle_dir: &Path) -> Result<(), String>;
}

/// A host that runs nothing (the agent alone: deploys, store, telemetry forwarding).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLoop;

impl BundleHost for NoLoop {
    fn switch(&mut self, bundle_dir: &Path) -> Result<(), String> {
        tracing::info!(
            "bundle {} is current (no detection loop attached)",
            bundle_dir.display()
        );
        Ok(())
    }
}

/// Settings of an agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The store directory.
    pub store: PathBuf,
    /// Bundles kept for rollback.
    pub keep: usize,
    /// Accept only bundles signed by these keys (`None`: accept any, with a warning).
    pub trust: Option<TrustList>,
    /// Device name sent in Hello.
    pub device: String,
    /// Board name sent in Hello.
    pub board: String,
    /// Most bytes the store's blobs and uploads may take (`None`: the disk's free space).
    pub quota: Option<u64>,
    /// How often the store's `current` is checked for bundles installed over SSH.
    pub poll: Duration,
    /// Telemetry is sent at least this often (the agent's own heartbeat when the loop is silent).
    pub heartbeat: Duration,
    /// The store is released after this long without a message from the host.
    pub idle_release: Duration,
}

impl AgentConfig {
    /// Defaults for a store directory: keep 3, no trust list, host name as device.
    pub fn new(store: PathBuf) -> Self {
        AgentConfig {
            store,
            keep: crate::store::DEFAULT_KEEP,
            trust: None,
            device: hostname(),
            board: "generic-aarch64".into(),
            quota: None,
            poll: Duration::from_secs(1),
            heartbeat: Duration::from_secs(5),
            idle_release: Duration::from_secs(2),
        }
    }
}

/// Failures that stop the agent (everything else is answered on the line and logged).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store cannot be opened or repaired.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another agent serves this store.
    #[error("another kestrel-edge agent already serves the store {0}: stop it first")]
    Busy(PathBuf),
    /// The serial link failed.
    #[error("serial link {link}: {source}")]
    Link {
        /// The link.
        link: String,
        /// Why.
        source: io::Error,
    },
}

/// Why an install or rollback was refused. The message is what the deploying user reads.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The manifest is not in the store.
    #[error("the manifest blob {0} is not in the store: send it first")]
    NoManifest(String),
    /// The manifest blob is too large to be one.
    #[error("the manifest blob {sha} has {size} bytes, more than a manifest can ({MAX_MANIFEST})")]
    ManifestTooLarge {
        /// Its hash.
        sha: String,
        /// Its size.
        size: u64,
    },
    /// The manifest does not parse (unknown schema version, missing field, unsafe file name...).
    #[error("{0}")]
    Manifest(#[from] kestrel_shared::ManifestError),
    /// The signature is refused.
    #[error("{0}")]
    Trust(#[from] TrustError),
    /// The bundle is older than the current one and the operator did not allow a downgrade.
    #[error("{0}")]
    Downgrade(String),
    /// The store refused (missing blobs, bad hash, validation failed, name escaping the store...).
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl InstallError {
    /// The wire's error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            InstallError::NoManifest(_) => ErrorCode::MissingBlobs,
            InstallError::Store(e) => store_code(e),
            _ => ErrorCode::InstallFailed,
        }
    }
}

fn store_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::NoSpace { .. } => ErrorCode::NoSpace,
        StoreError::Name(_) | StoreError::Hash(_) | StoreError::NotRegular { .. } => {
            ErrorCode::UnsafeName
        }
        StoreError::HashMismatch { .. } => ErrorCode::HashMismatch,
        StoreError::MissingBlobs { .. } => ErrorCode::MissingBlobs,
        StoreError::Validation { .. } | StoreError::BadManifest { .. } => ErrorCode::InstallFailed,
        _ => ErrorCode::Internal,
    }
}

/// Reads and parses the manifest blob `sha` of the store (bounded size, strict parsing).
pub fn read_manifest_blob(store: &Store, sha: &str) -> Result<Manifest, InstallError> {
    let path = store.blob_path(sha)?;
    if !store.has_blob(sha)? {
        return Err(InstallError::NoManifest(sha.to_string()));
    }
    let size = std::fs::symlink_metadata(&path)
        .map_err(|source| StoreError::Io {
            action: "inspect",
            path: path.clone(),
            source,
        })?
        .len();
    if size > MAX_MANIFEST {
        return Err(InstallError::ManifestTooLarge {
            sha: sha.to_string(),
            size,
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| StoreError::Io {
        action: "read",
        path: path.clone(),
        source,
    })?;
    Ok(Manifest::from_json(
        &text,
        &format!("manifest {}", &sha[..sha.len().min(16)]),
    )?)
}

/// The bundle's files as the store wants them: `manifest.json`, trunk and head (`model.onnx` is
/// not needed on a board, see [`kestrel_shared::manifest::BundleFiles::on_board`]).
pub fn bundle_files(
    manifest: &Manifest,
    manifest_sha: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut files = std::collections::BTreeMap::new();
    files.insert(MANIFEST_FILE.to_string(), manifest_sha.to_string());
    for (_, f) in manifest.files.on_board() {
        files.insert(f.path.clone(), f.sha256.clone());
    }
    files
}

pub use kestrel_shared::listing::bundle_id;

/// What an install accepts besides a well-formed bundle.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstallPolicy<'a> {
    /// Keys the bundle must be signed by (None: any bundle, signed or not).
    pub trust: Option<&'a TrustList>,
    /// Accept a bundle older than the current one (`kestrel deploy --allow-downgrade`).
    pub allow_downgrade: bool,
}

/// Installs bundle `id` from blobs already in the store: reads its manifest (strict schema), checks
/// the signature against the policy's trust list and that it is not older than the current bundle
/// (unless allowed), then [`Store::install_bundle`] re-verifies every blob, assembles the bundle,
/// and validates it with [`Bundle::open`] and then `switch` (the running loop loads it); only then
/// does `current` move. On any error `current` stays where it was. Returns the manifest.
pub fn install_from_store(
    store: &mut Store,
    id: &str,
    manifest_sha: &str,
    policy: InstallPolicy<'_>,
    switch: &mut dyn FnMut(&Path) -> Result<(), String>,
) -> Result<Manifest, InstallError> {
    wire::check_name(id).map_err(StoreError::from)?;
    Sha256::from_hex(manifest_sha).map_err(StoreError::from)?;
    let manifest = read_manifest_blob(store, manifest_sha)?;
    if let Some(list) = policy.trust {
        let key = list.verify(&manifest)?;
        tracing::info!(
            "bundle {id} is signed by trusted key {} {}",
            key.id,
            key.comment
        );
    }
    let current = store.current()?;
    if current.as_deref() != Some(id) {
        let reason = store
            .current_path()?
            .and_then(|dir| downgrade_reason(&dir, &manifest));
        match reason {
            Some(r) if !policy.allow_downgrade => return Err(InstallError::Downgrade(r)),
            Some(_) => tracing::warn!(
                "bundle {id} is older than the current one; installed because a downgrade was allowed"
            ),
            None => {}
        }
    }
    let files = bundle_files(&manifest, manifest_sha);
    store.install_bundle(id, &files, |dir: &Path| -> Result<(), String> {
        Bundle::open(dir).map_err(|e| e.to_string())?;
        switch(dir).map_err(|e| format!("the running loop could not switch to it: {e}"))
    })?;
    Ok(manifest)
}

/// Why `manifest` would be a downgrade from the bundle in `current_dir` ([`Release::downgrade`]);
/// None when it is not, or when the current bundle's manifest cannot be read (a broken current
/// bundle is no reason to refuse a replacement).
pub fn downgrade_reason(current_dir: &Path, manifest: &Manifest) -> Option<String> {
    match Manifest::read(current_dir) {
        Ok(current) => Release::downgrade(manifest, &current),
        Err(e) => {
            tracing::warn!(
                "cannot read the current bundle's manifest ({e}); not comparing releases"
            );
            None
        }
    }
}

/// Checks the signature of the bundle in `dir` against `trust` (for bundles installed by others).
pub fn check_bundle_trust(dir: &Path, trust: &TrustList) -> Result<(), String> {
    let manifest = Manifest::read(dir).map_err(|e| e.to_string())?;
    trust
        .verify(&manifest)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Free bytes of the file system holding `dir` (for the Hello and the space check).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Bytes under `dir` (regular files only, links not followed).
fn used_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for sub in ["blobs", "partial"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                if let Ok(m) = e.metadata()
                    && m.is_file()
                {
                    total += m.len();
                }
            }
        }
    }
    total
}

pub use kestrel_shared::board::hostname;

/// SoC temperature from the kernel's first thermal zone, when there is one.
pub fn temperature_c() -> Option<f32> {
    let text = std::fs::read_to_string("/sys/class/thermal/thermal_zone0/temp").ok()?;
    text.trim().parse::<f32>().ok().map(|m| m / 1000.0)
}

/// The id `current` names, read without the store's lock (a link read is atomic).
fn read_current(store: &Path) -> Option<String> {
    let target = std::fs::read_link(store.join("current")).ok()?;
    let id = target.file_name()?.to_str()?.to_string();
    wire::check_name(&id).ok().map(|()| id)
}

/// Handle the detection loop uses to talk to a running agent.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    telemetry: mpsc::SyncSender<Telemetry>,
    stop: Arc<AtomicBool>,
    pulse: Pulse,
    /// What the detection loop reports in the agent's health.
    pub loop_state: LoopState,
}

/// When the detection loop last processed a frame, shared with the agent for the watchdog.
#[derive(Debug, Clone)]
struct Pulse {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last frame, plus one; 0 while no loop runs.
    last: Arc<AtomicU64>,
}

impl Pulse {
    fn new() -> Pulse {
        Pulse {
            epoch: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How long ago the last frame was (None: no detection loop running).
    fn age(&self) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms - 1)),
            ),
        }
    }
}

impl AgentHandle {
    /// Queues telemetry for the serial line; dropped (and `false`) when the queue is full, so the
    /// loop never waits for a slow line.
    pub fn send_telemetry(&self, t: Telemetry) -> bool {
        self.telemetry.try_send(t).is_ok()
    }

    /// Asks the agent to stop after its current step.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The detection loop processed a frame (what keeps systemd's watchdog fed).
    pub fn frame_processed(&self) {
        let ms = self.pulse.epoch.elapsed().as_millis() as u64 + 1;
        self.pulse.last.store(ms, Ordering::Relaxed);
    }

    /// The detection loop ended (on purpose): the watchdog no longer waits for its frames.
    pub fn loop_ended(&self) {
        self.pulse.last.store(0, Ordering::Relaxed);
    }
}

/// A blob upload in progress.
struct Upload {
    offer: FileOffer,
    receiver: Receiver,
}

/// What the agent has done (for tests and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStats {
    /// Blobs completed.
    pub blobs: u64,
    /// Bytes written to uploads.
    pub bytes: u64,
    /// Frames refused (CRC, COBS, oversize, unknown message).
    pub bad_frames: u64,
    /// Bundles installed.
    pub installs: u64,
    /// Installs or rollbacks refused.
    pub refused: u64,
}

/// The agent: see the module documentation.
pub struct Agent {
    cfg: AgentConfig,
    store: Option<Store>,
    last_host_message: Instant,
    upload: Option<Upload>,
    /// The blob last stored: chunks of it still in flight are answered as complete (the host may
    /// have lost the last acknowledgement and resends).
    completed: Option<FileOffer>,
    current: Option<String>,
    telemetry: mpsc::Receiver<Telemetry>,
    last_telemetry: Instant,
    last_poll: Instant,
    stop: Arc<AtomicBool>,
    decoder: FrameDecoder,
    out: Vec<u8>,
    pulse: Pulse,
    notifier: Option<Notifier>,
    watchdog: Option<Watchdog>,
    health: Option<HealthSocket>,
    loop_state: LoopState,
    born: Instant,
    /// What the agent has done so far.
    pub stats: AgentStats,
    _agent_lock: std::fs::File,
}

impl Agent {
    /// Opens (and repairs) the store, takes the one-agent-per-store lock, and returns the agent
    /// with the handle the detection loop keeps.
    pub fn new(cfg: AgentConfig) -> Result<(Agent, AgentHandle), AgentError> {
        let store = Store::open_keeping(&cfg.store, cfg.keep)?;
        let lock_path = store.root().join("agent.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StoreError::Io {
                action: "open",
                path: lock_path.clone(),
                source,
            })?;
        if lock.try_lock().is_err() {
            return Err(AgentError::Busy(cfg.store.clone()));
        }
        let current = store.current()?;
        drop(store);
        if cfg.trust.is_none() {
            tracing::warn!(
                "no trust list (--trust FILE): this agent accepts bundles signed by anyone, or unsigned"
            );
        }
        let (tx, rx) = mpsc::sync_channel(TELEMETRY_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let now = Instant::now();
        let pulse = Pulse::new();
        let loop_state = LoopState::default();
        let agent = Agent {
            cfg,
            store: None,
            last_host_message: now,
            upload: None,
            completed: None,
            current,
            telemetry: rx,
            last_telemetry: now,
            last_poll: now,
            stop: stop.clone(),
            decoder: FrameDecoder::new(),
            out: Vec::new(),
            pulse: pulse.clone(),
            notifier: None,
            watchdog: None,
            health: None,
            loop_state: loop_state.clone(),
            born: now,
            stats: AgentStats::default(),
            _agent_lock: lock,
        };
        Ok((
            agent,
            AgentHandle {
                telemetry: tx,
                stop,
                pulse,
                loop_state,
            },
        ))
    }

    /// The current bundle's id.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// The current bundle's directory.
    pub fn current_dir(&self) -> Option<PathBuf> {
        self.current
            .as_ref()
            .map(|id| self.cfg.store.join("bundles").join(id))
    }

    fn store(&mut self) -> Result<&mut Store, StoreError> {
        if self.store.is_none() {
            // Another process (an SSH install) may hold the lock for a moment: wait a little.
            let mut tries = 0;
            loop {
                match Store::open_keeping(&self.cfg.store, self.cfg.keep) {
                    Ok(s) => {
                        self.store = Some(s);
                        break;
                    }
                    Err(StoreError::Locked { .. }) if tries < 50 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(self.store.as_mut().expect("opened above"))
    }

    /// Runs until stopped: serves `link` (if any), forwards telemetry, follows `current`.
    pub fn run(
        &mut self,
        mut link: Option<&mut dyn Transport>,
        host: &mut dyn BundleHost,
    ) -> Result<(), AgentError> {
        // A `current` moved while no agent ran, and not by the store: judged now as if it had moved
        // under a running agent, against the bundle the store last made current.
        let approved = crate::store::approved(&self.cfg.store)
            .filter(|a| self.cfg.store.join("bundles").join(a).is_dir());
        let mut started = false;
        if let Some(approved) = approved.filter(|a| self.current.as_deref() != Some(a.as_str())) {
            tracing::warn!(
                "`current` names {} but the store last made {approved} current: checking it",
                self.current.as_deref().unwrap_or("nothing")
            );
            self.current = Some(approved.clone());
            self.judge_current(host);
            // Accepted: the host already runs it.
            started = self.current.as_deref() != Some(approved.as_str());
        }
        if !started
            && let Some(dir) = self.current_dir()
            && let Err(e) = host.switch(&dir)
        {
            tracing::error!("the current bundle {} does not start: {e}", dir.display());
        }
        if let Some(l) = link.as_deref_mut() {
            self.send_hello(l)?;
        }
        self.notifier = Notifier::from_env();
        if let Some(n) = &self.notifier {
            self.watchdog = period_from_env().map(Watchdog::new);
            if let Err(e) = n.notify("READY=1") {
                tracing::warn!("cannot notify systemd: {e}");
            }
            tracing::info!(
                "systemd notified (ready{})",
                match &self.watchdog {
                    Some(w) => format!(", watchdog every {:.1} s", w.period.as_secs_f64()),
                    None => String::new(),
                }
            );
        }
        match HealthSocket::bind(&self.cfg.store) {
            Ok(s) => self.health = Some(s),
            Err(e) => tracing::warn!(
                "cannot open the health socket in {}: {e} (fleet health checks will not see this agent)",
                self.cfg.store.display()
            ),
        }
        let mut buf = vec![0u8; 4096];
        while !self.stop.load(Ordering::SeqCst) {
            self.feed_watchdog();
            self.answer_health();
            match link.as_deref_mut() {
                Some(l) => {
                    let n = l
                        .recv(&mut buf, Duration::from_millis(50))
                        .map_err(|source| AgentError::Link {
                            link: l.describe(),
                            source,
                        })?;
                    if n > 0 {
                        for msg in self.decoder.feed(&buf[..n]) {
                            self.on_frame(msg, host);
                        }
                    }
                    self.flush(l)?;
                    self.forward_telemetry(l)?;
                }
                None => {
                    std::thread::sleep(Duration::from_millis(50));
                    while self.telemetry.try_recv().is_ok() {}
                }
            }
            self.follow_current(host);
            if self.store.is_some() && self.last_host_message.elapsed() > self.cfg.idle_release {
                tracing::debug!("releasing the store after {:?} idle", self.cfg.idle_release);
                self.store = None;
            }
        }
        Ok(())
    }

    /// Answers health questions waiting on the socket (a fleet deploy's canary check).
    fn answer_health(&self) {
        if let Some(socket) = &self.health {
            socket.serve(|| AgentHealth {
                pid: std::process::id(),
                uptime_s: self.born.elapsed().as_secs_f64(),
                current: self.current.clone(),
                detect: self.loop_state.report(),
                temperature_c: temperature_c(),
            });
        }
    }

    /// `WATCHDOG=1` when due ([`Watchdog::due`]).
    fn feed_watchdog(&mut self) {
        let (Some(n), Some(w)) = (&self.notifier, &mut self.watchdog) else {
            return;
        };
        if w.due(Instant::now(), self.pulse.age())
            && let Err(e) = n.notify("WATCHDOG=1")
        {
            tracing::warn!("cannot notify systemd's watchdog: {e}");
        }
    }

    fn push(&mut self, msg: &Message) {
        if let Err(e) = wire::encode_into(msg, &mut self.out) {
            tracing::error!("cannot encode {}: {e}", msg.kind());
        }
    }

    fn flush(&mut self, link: &mut dyn Transport) -> Result<(), AgentError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        link.send(&out).map_err(|source| AgentError::Link {
            link: link.describe(),
            source,
        })
    }

    fn error(&mut self, code: ErrorCode, message: String) {
        tracing::warn!("refused ({code:?}): {message}");
        let message = truncate(message, wire::MAX_TEXT);
        self.push(&Message::Error { code, message });
    }

    fn hello(&mut self) -> Result<Hello, StoreError> {
        let quota = self.cfg.quota;
        let root = self.cfg.store.clone();
        let store = self.store()?;
        // The current bundle's blobs first: they matter most when the list is cut at MAX_HASHES.
        let mut hex: Vec<String> = store
            .bundles()?
            .into_iter()
            .filter(|b| b.current)
            .flat_map(|b| b.files.into_values())
            .collect();
        for sha in store.blobs()? {
            if !hex.contains(&sha) {
                hex.push(sha);
            }
        }
        let mut blobs: Vec<Sha256> = hex
            .iter()
            .filter_map(|h| Sha256::from_hex(h).ok())
            .collect();
        blobs.dedup();
        blobs.truncate(wire::MAX_HASHES);
        let free = space_left(&root, quota);
        Ok(Hello::new(
            truncate(self.cfg.device.clone(), wire::MAX_TEXT),
            truncate(self.cfg.board.clone(), wire::MAX_TEXT),
            free,
            blobs,
        ))
    }

    fn send_hello(&mut self, link: &mut dyn Transport) -> Result<(), AgentError> {
        match self.hello() {
            Ok(h) => self.push(&Message::Hello(h)),
            Err(e) => self.error(ErrorCode::Internal, format!("cannot list the store: {e}")),
        }
        self.flush(link)
    }

    fn on_frame(&mut self, frame: Result<Message, FrameError>, host: &mut dyn BundleHost) {
        let msg = match frame {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_frames += 1;
                match e {
                    // Line noise: the sender repeats what was lost.
                    FrameError::BadCrc { .. }
                    | FrameError::BadCobs { .. }
                    | FrameError::TooShort { .. } => {
                        tracing::debug!("{e}")
                    }
                    FrameError::ProtocolMismatch { .. } => {
                        self.error(ErrorCode::VersionMismatch, e.to_string())
                    }
                    _ => self.error(ErrorCode::BadRequest, e.to_string()),
                }
                return;
            }
        };
        self.last_host_message = Instant::now();
        match msg {
            Message::HelloRequest => match self.hello() {
                Ok(h) => self.push(&Message::Hello(h)),
                Err(e) => self.error(ErrorCode::Internal, format!("cannot list the store: {e}")),
            },
            Message::HelloAck { protocol, .. } => {
                if protocol != PROTOCOL_VERSION {
                    let e = FrameError::ProtocolMismatch {
                        ours: PROTOCOL_VERSION,
                        theirs: protocol,
                    };
                    self.error(ErrorCode::VersionMismatch, e.to_string());
                }
            }
            Message::FileOffer(offer) => self.on_offer(offer),
            Message::Chunk(chunk) => self.on_chunk(&chunk),
            Message::Install { bundle, manifest } => {
                self.on_install(&bundle, &manifest, false, host)
            }
            Message::InstallAllowingDowngrade { bundle, manifest } => {
                self.on_install(&bundle, &manifest, true, host)
            }
            Message::Rollback => self.on_rollback(host),
            other => self.error(
                ErrorCode::BadRequest,
                format!("{} is not a message the board takes", other.kind()),
            ),
        }
    }

    fn on_offer(&mut self, offer: FileOffer) {
        self.upload = None;
        if let Err(e) = wire::check_name(&offer.name) {
            return self.error(ErrorCode::UnsafeName, e.to_string());
        }
        if offer.size > MAX_BLOB {
            return self.error(
                ErrorCode::NoSpace,
                format!(
                    "{} has {} bytes, more than a bundle file may ({MAX_BLOB})",
                    offer.name, offer.size
                ),
            );
        }
        let sha = offer.sha256.to_hex();
        let quota = self.cfg.quota;
        let root = self.cfg.store.clone();
        let have = match self.store().and_then(|s| s.have_bytes(&sha, offer.size)) {
            Ok(h) => h,
            Err(e) => return self.error(store_code(&e), e.to_string()),
        };
        let needed = offer.size - have;
        let left = space_left(&root, quota);
        if needed > left {
            return self.error(
                ErrorCode::NoSpace,
                format!(
                    "no space left on the board for {} ({needed} more bytes, {left} free): keep fewer bundles (--keep) or free space, then deploy again",
                    offer.name
                ),
            );
        }
        let receiver = match Receiver::new(&offer, have) {
            Ok(r) => r,
            Err(e) => return self.error(ErrorCode::BadRequest, e.to_string()),
        };
        tracing::info!(
            "receiving {} ({} bytes{})",
            offer.name,
            offer.size,
            if have > 0 {
                format!(", resuming at {have}")
            } else {
                String::new()
            }
        );
        self.push(&Message::OfferReply(receiver.reply()));
        if receiver.is_complete() {
            self.complete(&offer);
        } else {
            self.upload = Some(Upload { offer, receiver });
        }
    }

    fn complete(&mut self, offer: &FileOffer) {
        let sha = offer.sha256.to_hex();
        let done = self
            .store()
            .and_then(|s| s.finish_partial(&sha, offer.size));
        self.upload = None;
        match done {
            Ok(_) => {
                self.stats.blobs += 1;
                self.completed = Some(offer.clone());
                tracing::info!("{} stored and verified", offer.name);
                self.push(&Message::Complete {
                    sha256: offer.sha256,
                });
            }
            Err(e) => self.error(store_code(&e), e.to_string()),
        }
    }

    fn on_chunk(&mut self, chunk: &wire::Chunk) {
        if self.upload.is_none()
            && let Some(done) = self.completed.as_ref().filter(|o| o.sha256 == chunk.sha256)
        {
            let (sha256, size) = (done.sha256, done.size);
            self.push(&Message::Ack(Ack {
                sha256,
                next_offset: size,
                held: Vec::new(),
            }));
            self.push(&Message::Complete { sha256 });
            return;
        }
        let Some(up) = self.upload.as_mut() else {
            tracing::debug!(
                "chunk at {} with no upload in progress: ignored",
                chunk.offset
            );
            return;
        };
        if up.offer.sha256 != chunk.sha256 {
            tracing::debug!("chunk of another blob: ignored");
            return;
        }
        let accepted = match up.receiver.accept(chunk) {
            Ok(a) => a,
            Err(e) => {
                self.upload = None;
                return self.error(ErrorCode::BadRequest, e.to_string());
            }
        };
        let (ack, complete) = (accepted.ack, accepted.complete);
        let offer = up.offer.clone();
        if let Some((at, data)) = accepted.write {
            let len = data.len();
            let sha = offer.sha256.to_hex();
            let quota = self.cfg.quota;
            let root = self.cfg.store.clone();
            if quota.is_some() && (len as u64) > space_left(&root, quota) {
                self.upload = None;
                return self.error(
                    ErrorCode::NoSpace,
                    format!("no space left on the board while receiving {}: the upload stops at {at} bytes and resumes there", offer.name),
                );
            }
            if let Err(e) = self
                .store()
                .and_then(|s| s.write_partial(&sha, offer.size, at, &data))
            {
                self.upload = None;
                return self.error(store_code(&e), e.to_string());
            }
            self.stats.bytes += len as u64;
        }
        self.push(&Message::Ack(ack));
        if complete {
            self.complete(&offer);
        }
    }

    fn on_install(
        &mut self,
        id: &str,
        manifest: &Sha256,
        allow_downgrade: bool,
        host: &mut dyn BundleHost,
    ) {
        let trust = self.cfg.trust.clone();
        let sha = manifest.to_hex();
        let policy = InstallPolicy {
            trust: trust.as_ref(),
            allow_downgrade,
        };
        let result = match self.store() {
            Ok(store) => install_from_store(store, id, &sha, policy, &mut |d| host.switch(d)),
            Err(e) => Err(e.into()),
        };
        let bundle = truncate(id.to_string(), wire::MAX_NAME);
        match result {
            Ok(m) => {
                self.stats.installs += 1;
                self.current = Some(id.to_string());
                let message = format!(
                    "bundle {id} installed and current ({:?}, {} labels{})",
                    m.task,
                    m.labels.len(),
                    if trust.is_some() {
                        ", signature verified"
                    } else {
                        ", signature not checked: no trust list"
                    }
                );
                tracing::info!("{message}");
                self.push(&Message::InstallResult {
                    bundle,
                    ok: true,
                    message: truncate(message, wire::MAX_TEXT),
                });
            }
            Err(e) => {
                self.stats.refused += 1;
                let kept = match &self.current {
                    Some(c) => format!("; the board keeps running bundle {c}"),
                    None => "; the board has no bundle yet".into(),
                };
                let message = format!("bundle {id} refused: {e}{kept}");
                tracing::warn!("{message}");
                self.push(&Message::InstallResult {
                    bundle,
                    ok: false,
                    message: truncate(message, wire::MAX_TEXT),
                });
            }
        }
    }

    fn on_rollback(&mut self, host: &mut dyn BundleHost) {
        let result = self.store().and_then(|s| {
            s.rollback(|dir: &Path| -> Result<(), String> {
                Bundle::open(dir).map_err(|e| e.to_string())?;
                host.switch(dir)
            })
        });
        match result {
            Ok((id, ())) => {
                self.current = Some(id.clone());
                let message = format!("rolled back: bundle {id} is current");
                tracing::info!("{message}");
                self.push(&Message::InstallResult {
                    bundle: id,
                    ok: true,
                    message,
                });
            }
            Err(e) => {
                self.stats.refused += 1;
                let bundle = self.current.clone().unwrap_or_default();
                self.push(&Message::InstallResult {
                    bundle,
                    ok: false,
                    message: truncate(format!("rollback refused: {e}"), wire::MAX_TEXT),
                });
            }
        }
    }

    fn forward_telemetry(&mut self, link: &mut dyn Transport) -> Result<(), AgentError> {
        let mut sent = false;
        for _ in 0..8 {
            match self.telemetry.try_recv() {
                Ok(t) => {
                    self.push(&Message::Telemetry(t));
                    sent = true;
                }
                Err(_) => break,
            }
        }
        if !sent && self.last_telemetry.elapsed() >= self.cfg.heartbeat {
            let t = Telemetry {
                bundle: self.current.clone(),
                frame: 0,
                fps: 0.0,
                temperature_c: temperature_c(),
                detections: Vec::new(),
            };
            self.push(&Message::Telemetry(t));
            sent = true;
        }
        if sent {
            self.last_telemetry = Instant::now();
        }
        self.flush(link)
    }

    /// Notices a `current` moved by someone else (an SSH install or rollback) and switches the
    /// host; a bundle the trust list refuses, or the host cannot run, is rolled back.
    fn follow_current(&mut self, host: &mut dyn BundleHost) {
        if self.last_poll.elapsed() < self.cfg.poll {
            return;
        }
        self.last_poll = Instant::now();
        self.judge_current(host);
    }

    /// When `current` names another bundle than the one this agent runs: switch to it if the trust
    /// list accepts it, it is not a downgrade behind the store's back, and the host runs it; else
    /// put the agent's own bundle back.
    fn judge_current(&mut self, host: &mut dyn BundleHost) {
        let seen = read_current(&self.cfg.store);
        if seen == self.current || seen.is_none() {
            return;
        }
        let id = seen.expect("checked above");
        let dir = self.cfg.store.join("bundles").join(&id);
        tracing::info!("bundle {id} was installed by another process: switching to it");
        let verdict = match &self.cfg.trust {
            Some(t) => check_bundle_trust(&dir, t),
            None => Ok(()),
        }
        .and_then(|()| self.not_a_downgrade_behind_our_back(&id, &dir))
        .and_then(|()| host.switch(&dir));
        match verdict {
            Ok(()) => self.current = Some(id),
            Err(e) => {
                tracing::error!("bundle {id} refused: {e}; moving `current` back");
                let mine = self.current.clone();
                let back = self.store().and_then(|s| match mine {
                    Some(mine) => s.restore(&mine).map(|()| mine),
                    None => s.rollback(|_: &Path| Ok::<(), String>(())).map(|(p, ())| p),
                });
                match back {
                    Ok(prev) => self.current = Some(prev),
                    Err(e) => tracing::error!("cannot move `current` back: {e}"),
                }
                self.store = None;
            }
        }
    }

    /// A `current` the store did not approve (someone renamed the link themselves) may not be
    /// older than the bundle this agent runs: the store's own installs check that, and allowed
    /// downgrades and rollbacks go through the store.
    fn not_a_downgrade_behind_our_back(&self, id: &str, dir: &Path) -> Result<(), String> {
        if crate::store::approved(&self.cfg.store).as_deref() == Some(id) {
            return Ok(());
        }
        let Some(mine) = &self.current else {
            return Ok(());
        };
        let new = Manifest::read(dir).map_err(|e| e.to_string())?;
        match downgrade_reason(&self.cfg.store.join("bundles").join(mine), &new) {
            Some(reason) => Err(format!(
                "it was switched in behind the agent's back (not through the store) and {reason}"
            )),
            None => Ok(()),
        }
    }
}

/// Bytes the store may still take: the disk's free space, and under the quota if one is set.
fn space_left(root: &Path, quota: Option<u64>) -> u64 {
    let disk = free_bytes(root).unwrap_or(u64::MAX);
    match quota {
        Some(q) => disk.min(q.saturating_sub(used_bytes(root))),
        None => disk,
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("abc".into(), 5), "abc");
    }

    #[test]
    fn one_agent_per_store_and_the_store_is_free_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let (agent, _h) = Agent::new(AgentConfig::new(dir.path().to_path_buf())).unwrap();
        assert!(matches!(
            Agent::new(AgentConfig::new(dir.path().to_path_buf())),
            Err(AgentError::Busy(_))
        ));
        // The agent does not hold the store itself while idle: store commands can run.
        drop(Store::open(dir.path()).unwrap());
        drop(agent);
        Agent::new(AgentConfig::new(dir.path().to_path_buf())).unwrap();
    }
}
