//! One deploy routine over any [`BoardLink`]: the serial agent ([`super::serial::SerialBoard`]),
//! SSH ([`super::ssh::SshBoard`]) or the in-memory [`super::fake::FakeBoard`] of the tests.
//!
//! A link knows how to ask the board what it holds, put one blob (resuming a partial upload),
//! install a bundle whose blobs are there, and roll back; [`deploy`] decides what travels and in
//! which order (models first, the manifest last), so that logic is written and tested once.

use std::collections::BTreeMap;
use std::time::Instant;

use kestrel_shared::wire::Sha256;

use super::{BlobReport, DeployError, DeployReport, LocalBundle, LocalFile};
use crate::progress::Progress;

/// What a board says about itself and its store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BoardStatus {
    /// Version of the board's `kestrel-edge`.
    pub kestrel_version: String,
    /// Device and board names, where the link reports them (the serial agent's Hello).
    pub device: Option<String>,
    /// The board file's name, where the link reports it.
    pub board: Option<String>,
    /// The current bundle, where the link reports it (the store listing over SSH).
    pub current: Option<String>,
    /// Installed bundles, oldest first, where the link reports them.
    pub bundles: Vec<String>,
    /// Free space in the store, when the board can tell.
    pub free_bytes: Option<u64>,
    /// Blobs the board holds.
    #[serde(serialize_with = "hex_list")]
    pub blobs: Vec<Sha256>,
    /// Whether `blobs` is complete (the serial Hello lists at most a few hundred).
    pub blobs_complete: bool,
    /// Uploads cut short: blob -> bytes held (the serial agent answers this per offer instead).
    #[serde(serialize_with = "hex_map")]
    pub partial: BTreeMap<Sha256, u64>,
}

/// Hashes as hex in JSON, as the store listing has them.
fn hex_list<S: serde::Serializer>(v: &[Sha256], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(Sha256::to_hex))
}

/// Hash keys as hex in JSON.
fn hex_map<S: serde::Serializer>(v: &BTreeMap<Sha256, u64>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(k, n)| (k.to_hex(), n)))
}

impl BoardStatus {
    /// Whether the board surely holds `sha` (a blob missing from an incomplete list may still be
    /// there: offering it then costs one round trip, not a transfer).
    pub fn has(&self, sha: &Sha256) -> bool {
        self.blobs_complete && self.blobs.contains(sha)
    }
}

/// An install request: the bundle's id and manifest blob, and whether a downgrade is wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallRequest {
    /// The bundle id ([`kestrel_shared::listing::bundle_id`] of the manifest hash).
    pub id: String,
    /// The manifest blob.
    pub manifest: Sha256,
    /// Accept a bundle older than the board's current one.
    pub allow_downgrade: bool,
}

/// Bytes a link moved so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineBytes {
    /// Bytes sent to the board (frames and retransmissions over serial; blob bytes over SSH).
    pub out: u64,
    /// Bytes read from the board.
    pub back: u64,
}

/// A way to reach a board's store, in the style of embedded-hal's small traits: each link does
/// its own part (framing and retransmission, or ssh commands), [`deploy`] does the rest.
pub trait BoardLink {
    /// A name for messages (the serial device, the SSH target).
    fn describe(&self) -> String;
    /// What the board holds; asked first by a deploy.
    fn status(&mut self) -> Result<BoardStatus, DeployError>;
    /// Sends `file` to the board's store, starting where a partial upload of it stands.
    fn put_blob(
        &mut self,
        file: &LocalFile,
        progress: &dyn Progress,
    ) -> Result<BlobReport, DeployError>;
    /// Installs a bundle whose blobs the board holds; returns the board's message. A refused
    /// bundle leaves the board's current one in place.
    fn install(&mut self, request: &InstallRequest) -> Result<String, DeployError>;
    /// Makes the bundle installed before the current one current again; returns the message.
    fn rollback(&mut self) -> Result<String, DeployError>;
    /// Bytes moved so far.
    fn line_bytes(&self) -> LineBytes;
}

/// Deploys `bundle` over `link`: only the blobs the board lacks travel (a cut upload resumes),
/// models before the manifest, then the board installs it. Returns what travelled.
pub fn deploy(
    link: &mut dyn BoardLink,
    bundle: &LocalBundle,
    allow_downgrade: bool,
    progress: &dyn Progress,
) -> Result<DeployReport, DeployError> {
    let start = Instant::now();
    let status = link.status()?;
    deploy_onto(link, &status, bundle, allow_downgrade, progress, start)
}

/// [`deploy`] on a board whose `status` the caller already asked (a fleet deploy looks at it
/// first); `start` is when the deploy began, for the report's seconds.
pub fn deploy_onto(
    link: &mut dyn BoardLink,
    status: &BoardStatus,
    bundle: &LocalBundle,
    allow_downgrade: bool,
    progress: &dyn Progress,
    start: Instant,
) -> Result<DeployReport, DeployError> {
    tracing::info!(
        "{}: kestrel-edge {}, {} blobs, current {}",
        link.describe(),
        status.kestrel_version,
        status.blobs.len(),
        status.current.as_deref().unwrap_or("(not reported)")
    );
    let mut report = DeployReport {
        bundle: bundle.id.clone(),
        ..Default::default()
    };
    for file in bundle.files() {
        if status.has(&file.sha256) {
            report.blobs.push(BlobReport {
                name: file.name.clone(),
                size: file.size,
                start_offset: file.size,
                bytes_sent: 0,
            });
            continue;
        }
        let b = link.put_blob(file, progress)?;
        report.payload_bytes += b.size - b.start_offset.min(b.size);
        report.blobs.push(b);
    }
    report.message = link.install(&InstallRequest {
        id: bundle.id.clone(),
        manifest: bundle.manifest_file.sha256,
        allow_downgrade,
    })?;
    let bytes = link.line_bytes();
    report.line_bytes_out = bytes.out;
    report.line_bytes_in = bytes.back;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
