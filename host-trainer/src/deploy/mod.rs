//! Deploying bundles to boards: over a serial line ([`serial`]) or SSH ([`ssh`]), hearing back
//! from the board ([`serial::monitor`]), and the keys that sign bundles ([`keygen`]).
//!
//! Both transports send only the blobs the board lacks: a bundle is four files (manifest, trunk,
//! head, merged model), each stored on the board under its sha256, so after retraining a head only
//! the files whose hash changed travel. The board installs a bundle atomically and only after it
//! validated it (and, with a trust list, its signature); a refused bundle leaves the board on the
//! model it ran.

pub mod cli;
pub mod fake;
pub mod link;
pub mod serial;
pub mod ssh;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kestrel_shared::listing::bundle_id;
use kestrel_shared::manifest::{MANIFEST_FILE, Manifest};
use kestrel_shared::sign::{PUBLIC_KEY_FILE, SECRET_KEY_FILE, SecretKey, SignError};
use kestrel_shared::wire::Sha256;

/// A deploy that failed; each variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The local bundle is unusable.
    #[error("bundle {path}: {reason}")]
    Bundle {
        /// The bundle directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The link to the board failed.
    #[error("{what}: {source} (deploy again: the transfer resumes where the board stands)")]
    Link {
        /// What was being done.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The board did not answer in time.
    #[error(
        "the board did not answer {what} within {timeout:?}: check that `kestrel-edge agent` runs on it with this serial device and baud rate"
    )]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// The board refused something, with its reason.
    #[error("the board refused: {0}")]
    Refused(String),
    /// The transfer could not go on (too many retries, protocol confusion).
    #[error("{0}")]
    Transfer(#[from] kestrel_shared::wire::TransferError),
    /// The peer speaks another protocol.
    #[error("{0}")]
    Protocol(#[from] kestrel_shared::wire::FrameError),
    /// ssh could not reach the board (ssh's own exit status 255: no route, refused, no key).
    #[error(
        "cannot reach {target}: {detail} (check the address and port, that sshd runs there, and the key)"
    )]
    Unreachable {
        /// The ssh target.
        target: String,
        /// What ssh said.
        detail: String,
    },
    /// An SSH command failed.
    #[error("ssh {what} failed: {detail}")]
    Ssh {
        /// Which step.
        what: String,
        /// Exit status and the remote's stderr.
        detail: String,
    },
}

/// One file of a local bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// File name in the bundle.
    pub name: String,
    /// Its sha256 as the manifest pins it.
    pub sha256: Sha256,
    /// Its size as the manifest says.
    pub size: u64,
    /// Where it is on this machine.
    pub path: PathBuf,
}

/// A bundle directory on the host, ready to travel.
#[derive(Debug, Clone)]
pub struct LocalBundle {
    /// The directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The bundle's id on the board ([`bundle_id`] of the manifest's hash).
    pub id: String,
    /// The manifest file.
    pub manifest_file: LocalFile,
    /// The three model files.
    pub models: Vec<LocalFile>,
}

impl LocalBundle {
    /// Reads a bundle directory: the manifest (strictly), and with `verify` every file's size and
    /// sha256 against it (so a damaged bundle is refused here, before anything travels; the board
    /// checks again anyway).
    pub fn open(dir: &Path, verify: bool) -> Result<Self, DeployError> {
        let bad = |reason: String| DeployError::Bundle {
            path: dir.to_path_buf(),
            reason,
        };
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&manifest_path)
            .map_err(|e| bad(format!("cannot read {}: {e}", manifest_path.display())))?;
        let text = String::from_utf8(bytes.clone())
            .map_err(|_| bad("manifest.json is not UTF-8".into()))?;
        let manifest = Manifest::from_json(&text, &manifest_path.display().to_string())
            .map_err(|e| bad(e.to_string()))?;
        let manifest_sha = Sha256::of(&bytes);
        let mut models = Vec::new();
        for (role, f) in manifest.files.on_board() {
            let sha256 = Sha256::from_hex(&f.sha256).map_err(|e| bad(e.to_string()))?;
            let path = dir.join(&f.path);
            if verify {
                let found = kestrel_shared::hash::sha256_file(&path)
                    .map_err(|e| bad(format!("cannot read the {role} {}: {e}", path.display())))?;
                if found != f.sha256 {
                    return Err(bad(format!(
                        "{} has sha256 {found} but the manifest pins {}: export the bundle again",
                        path.display(),
                        f.sha256
                    )));
                }
            }
            models.push(LocalFile {
                name: f.path.clone(),
                sha256,
                size: f.size,
                path,
            });
        }
        Ok(LocalBundle {
            dir: dir.to_path_buf(),
            id: bundle_id(&manifest_sha),
            manifest,
            manifest_file: LocalFile {
                name: MANIFEST_FILE.into(),
                sha256: manifest_sha,
                size: bytes.len() as u64,
                path: manifest_path,
            },
            models,
        })
    }

    /// Every file, models first and the manifest last (the manifest is what install asks for).
    pub fn files(&self) -> Vec<&LocalFile> {
        self.models
            .iter()
            .chain(std::iter::once(&self.manifest_file))
            .collect()
    }
}

/// One blob that travelled (or not) in a deploy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlobReport {
    /// File name in the bundle.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Where the transfer started (0, or where an interrupted upload resumed; `size` when the
    /// board had it).
    pub start_offset: u64,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
}

/// What a deploy did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeployReport {
    /// The bundle id on the board.
    pub bundle: String,
    /// Each file of the bundle.
    pub blobs: Vec<BlobReport>,
    /// File bytes the board lacked and received (each byte once).
    pub payload_bytes: u64,
    /// Bytes the host put on the line (frames, retransmissions, handshakes).
    pub line_bytes_out: u64,
    /// Bytes the host read from the line.
    pub line_bytes_in: u64,
    /// Wall time.
    pub seconds: f64,
    /// The board's answer to the install.
    pub message: String,
}

impl DeployReport {
    /// Payload bytes over bytes the host sent (1.0 when nothing travelled).
    pub fn efficiency(&self) -> f64 {
        if self.line_bytes_out == 0 || self.payload_bytes == 0 {
            1.0
        } else {
            self.payload_bytes as f64 / self.line_bytes_out as f64
        }
    }

    /// Seconds the bytes sent would take on a serial line at `baud` (8N1: 10 bits per byte).
    pub fn seconds_at(&self, baud: u32) -> f64 {
        self.line_bytes_out as f64 * 10.0 / f64::from(baud.max(1))
    }

    /// Names of the files that travelled.
    pub fn sent(&self) -> Vec<&str> {
        self.blobs
            .iter()
            .filter(|b| b.bytes_sent > 0)
            .map(|b| b.name.as_str())
            .collect()
    }
}

/// What `kestrel keygen` wrote.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// The private key (mode 0600).
    pub secret: PathBuf,
    /// The public key, one trust-list line.
    pub public: PathBuf,
    /// The key id.
    pub id: String,
    /// The trust-list line.
    pub line: String,
}

/// `kestrel keygen`: a new Ed25519 key pair in `dir` (`kestrel.key`, `kestrel.pub`); refuses to
/// replace an existing key unless `force`.
pub fn keygen(dir: &Path, force: bool) -> Result<KeyFiles, SignError> {
    std::fs::create_dir_all(dir).map_err(|source| SignError::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let secret = dir.join(SECRET_KEY_FILE);
    let public = dir.join(PUBLIC_KEY_FILE);
    if !force && std::fs::symlink_metadata(&secret).is_ok() {
        return Err(SignError::Exists { path: secret });
    }
    let key = SecretKey::generate()?;
    let who = format!(
        "{}@{}",
        std::env::var("USER").unwrap_or_else(|_| "kestrel".into()),
        kestrel_shared::board::hostname()
    );
    let line = key.public().to_line(&who);
    key.write(&secret, force)?;
    std::fs::write(&public, format!("{line}\n")).map_err(|source| SignError::Io {
        action: "write",
        path: public.clone(),
        source,
    })?;
    Ok(KeyFiles {
        secret,
        public,
        id: key.id(),
        line,
    })
}

/// The key `kestrel export` signs with when none is given: the one `kestrel keygen` wrote, if any.
pub fn default_signing_key() -> Option<PathBuf> {
    kestrel_shared::sign::default_key_dir()
        .map(|d| d.join(SECRET_KEY_FILE))
        .filter(|p| p.is_file())
}

/// Signs the bundle in `dir` with the key file `key` (in place); returns the key id.
pub fn sign_bundle(dir: &Path, key: &Path) -> Result<String, SignError> {
    let key = SecretKey::read(key)?;
    key.sign_bundle(dir)?;
    Ok(key.id())
}
