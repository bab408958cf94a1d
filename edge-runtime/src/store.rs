//! The board's content-addressed bundle store.
//!
//! ```text
//! DIR/lock                       held (flock) while a Store is open: one agent per store
//! DIR/blobs/<sha256>             verified file contents, read-only, named by their hash
//! DIR/partial/<sha256>           an upload in progress; its length is where it resumes
//! DIR/bundles/<id>/<name>        hard links to the blobs (same inode: no copy, no extra space)
//! DIR/bundles/<id>/.kestrel-store.json   the bundle's file list (name -> sha256)
//! DIR/history.json               validated bundles, oldest first: rollback order, what prune keeps
//! DIR/current -> bundles/<id>    the active bundle (relative symlink)
//! DIR/approved                   the id the store itself last made current (see [`approved`])
//! ```
//!
//! Bundle files are hard links rather than symlinks so a bundle directory is self-contained for
//! the model loader and never points anywhere; the store therefore needs a file system with hard
//! links and symlinks (ext4, f2fs, btrfs; not FAT).
//!
//! Every change is crash-safe: new files and directories are built under a `.tmp-` name, fsynced,
//! renamed into place and their directory fsynced; `current` is switched by renaming a new link
//! over it, only after the caller's validation of the new bundle succeeded. [`Store::open`]
//! removes what an interrupted operation left (temporary files, bundles that were assembled but
//! never validated) and repairs `current` if it does not name a valid bundle (it then points to the
//! last validated bundle; if `history.json` was lost, only `current` survives as history). Names from the wire or
//! a manifest go through [`check_name`] and hashes through [`Sha256::from_hex`], so nothing can
//! escape the store; files the store did not create as such (symlinks planted inside it) are
//! never followed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kestrel_shared::wire::{BadHash, BadName, Sha256, check_name};
use sha2::Digest;

/// The bundle the store itself last made current in the store at `root` (install, rollback or
/// restore), read without opening the store. When `current` names another bundle, someone
/// switched it behind the store's back.
pub fn approved(root: &Path) -> Option<String> {
    let text = fs::read_to_string(root.join(APPROVED)).ok()?;
    let id = text.trim().to_string();
    check_name(&id).ok().map(|()| id)
}

/// Every step of receiving and installing at which a crash is tested: with
/// `KESTREL_FAIL_POINT=<name>` in its environment, a process kills itself (SIGKILL) on reaching
/// that step, and the store must come back consistent (tests/tests/crash_safety.rs).
pub const FAIL_POINTS: &[&str] = &[
    // Serial uploads (`write_partial`, `finish_partial`).
    "partial-last-byte-written",
    "partial-before-fsync",
    "partial-before-rename",
    "partial-after-rename",
    "partial-after-dir-fsync",
    // SSH uploads (`install_blob`).
    "upload-before-fsync",
    "upload-before-rename",
    "upload-after-rename",
    // Installs (`install_bundle`, `assemble`, `switch_current`).
    "assemble-linked",
    "assemble-before-rename",
    "assemble-after-rename",
    "install-validated",
    "install-history-written",
    "switch-approved-written",
    "switch-before-rename",
    "switch-after-rename",
    "install-done",
];

/// The test hook `KESTREL_FAIL_POINT` names (read once).
fn armed_fail_point() -> Option<&'static str> {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("KESTREL_FAIL_POINT").ok())
        .as_deref()
}

/// A failing disk's test hook: with `KESTREL_FAIL_POINT=eio:partial-write`, every serial upload
/// chunk after the first fails with EIO (an I/O error mid-blob).
fn injected_eio(point: &'static str) -> Option<io::Error> {
    (armed_fail_point().and_then(|p| p.strip_prefix("eio:")) == Some(point))
        .then(|| io::Error::from_raw_os_error(libc::EIO))
}

/// A crash test's hook: kills this process with SIGKILL when `KESTREL_FAIL_POINT` names `point`
/// (one of [`FAIL_POINTS`]); does nothing otherwise.
fn fail_point(point: &'static str) {
    if armed_fail_point() == Some(point) {
        debug_assert!(FAIL_POINTS.contains(&point));
        eprintln!("kestrel: fail point {point} reached: killing this process (KESTREL_FAIL_POINT)");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

/// Bundles kept by default: the current one and two to roll back to.
pub const DEFAULT_KEEP: usize = 3;

const RECORD: &str = ".kestrel-store.json";
const HISTORY: &str = "history.json";
const CURRENT: &str = "current";
const APPROVED: &str = "approved";
const TMP: &str = ".tmp-";

/// A failed store operation; each names the path involved and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused an operation.
    #[error("cannot {action} {path}: {source} (check the store's permissions and disk)")]
    Io {
        /// What the store was doing.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The disk is full.
    #[error(
        "no space left on the board while writing {path}: keep fewer bundles or free space, then deploy again (uploads resume)"
    )]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// Another process has the store open.
    #[error("store {path} is in use by another process: stop the other kestrel-edge agent first")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A path inside the store is a symlink or special file the store did not create.
    #[error(
        "{path} is a symbolic link or not a regular file/directory: the store never follows links it did not create; remove it"
    )]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
    /// A file or bundle name that could escape the store.
    #[error(transparent)]
    Name(#[from] BadName),
    /// A hash that is not 64 lowercase hex digits.
    #[error(transparent)]
    Hash(#[from] BadHash),
    /// Content does not match its sha256; the bad copy was deleted.
    #[error(
        "{path} has sha256 {found}, expected {expected}: the upload was corrupted and has been discarded; send it again"
    )]
    HashMismatch {
        /// The file checked.
        path: PathBuf,
        /// The hash it should have.
        expected: String,
        /// The hash it has.
        found: String,
    },
    /// A chunk does not continue the partial upload.
    #[error(
        "partial upload {path} holds {have} bytes but data came for offset {offset}: resume from offset {have}"
    )]
    OffsetMismatch {
        /// The partial file.
        path: PathBuf,
        /// Bytes it holds.
        have: u64,
        /// Offset of the data received.
        offset: u64,
    },
    /// Data beyond the declared size of a blob.
    #[error(
        "data for {path} reaches byte {end} but the blob has {size} bytes: the sender is broken; restart the deploy"
    )]
    TooLong {
        /// The partial file.
        path: PathBuf,
        /// Declared size.
        size: u64,
        /// End of the data received.
        end: u64,
    },
    /// A partial upload is not finished.
    #[error("partial upload {path} has {have} of {size} bytes: send the rest before completing it")]
    Incomplete {
        /// The partial file.
        path: PathBuf,
        /// Bytes it holds.
        have: u64,
        /// Declared size.
        size: u64,
    },
    /// A bundle needs blobs the store does not have.
    #[error("bundle {bundle} needs {} blob(s) the store lacks ({}): send them first", .missing.len(), .missing.join(", "))]
    MissingBlobs {
        /// The bundle.
        bundle: String,
        /// Their sha256.
        missing: Vec<String>,
    },
    /// A manifest lists a file twice or no file at all.
    #[error("manifest of bundle {bundle} is malformed: {reason}; re-export the bundle")]
    BadManifest {
        /// The bundle.
        bundle: String,
        /// What is wrong.
        reason: String,
    },
    /// A bundle of that id exists with other files.
    #[error(
        "bundle {bundle} already exists in {path} with other files: install it under another id (ids should be the manifest's hash)"
    )]
    Conflict {
        /// The bundle.
        bundle: String,
        /// Its directory.
        path: PathBuf,
    },
    /// The caller's validation refused the bundle; `current` did not move.
    #[error("bundle {bundle} failed validation: {reason}; {kept}")]
    Validation {
        /// The bundle.
        bundle: String,
        /// The validator's error.
        reason: String,
        /// What still runs.
        kept: String,
    },
    /// Nothing to roll back to.
    #[error(
        "no earlier bundle to roll back to from {current}: the store keeps the last {keep} bundles; install an older bundle again instead"
    )]
    NoPrevious {
        /// The current bundle, or "no bundle".
        current: String,
        /// Bundles kept.
        keep: usize,
    },
    /// A store file the store itself wrote does not parse (edited by hand or disk damage).
    #[error(
        "{path} is corrupt ({reason}): remove that bundle directory, it will be re-sent on the next deploy"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// `current` is not a link to a bundle of this store.
    #[error(
        "{path} is not a link to a bundle of this store (target {target:?}): reopen the store to repair it"
    )]
    CurrentInvalid {
        /// The `current` path.
        path: PathBuf,
        /// Where it points, if it is a link.
        target: Option<PathBuf>,
    },
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| {
        if source.kind() == io::ErrorKind::StorageFull {
            StoreError::NoSpace {
                path: path.to_path_buf(),
            }
        } else {
            StoreError::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// What a bundle consists of: file names and the sha256 of each. The real manifest type will
/// implement this; a `BTreeMap<String, String>` (name -> sha256) does already.
pub trait ManifestFiles {
    /// Every (file name, sha256 hex) pair of the bundle.
    fn files(&self) -> Vec<(&str, &str)>;
}

impl ManifestFiles for BTreeMap<String, String> {
    fn files(&self) -> Vec<(&str, &str)> {
        self.iter().map(|(n, s)| (n.as_str(), s.as_str())).collect()
    }
}

/// A bundle in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    /// Its id (directory name).
    pub id: String,
    /// Its directory.
    pub path: PathBuf,
    /// File name -> sha256.
    pub files: BTreeMap<String, String>,
    /// Whether `current` points to it.
    pub current: bool,
}

/// What [`Store::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Bundle ids removed.
    pub bundles: Vec<String>,
    /// Blob hashes removed.
    pub blobs: Vec<String>,
}

/// The store, opened and locked; see the module documentation for the layout.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    keep: usize,
    _lock: File,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_name(label: &str) -> String {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TMP}{label}-{}-{n}", std::process::id())
}

/// `path` exactly as it is, without following a final symlink: Some(meta) or None if absent.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// Opens a regular file that is not a symlink (checked before and, by inode, after opening).
fn open_regular(path: &Path, options: &OpenOptions) -> Result<File> {
    let before = lstat(path)?.ok_or_else(|| StoreError::Io {
        action: "open",
        path: path.to_path_buf(),
        source: io::ErrorKind::NotFound.into(),
    })?;
    if !before.file_type().is_file() {
        return Err(StoreError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let file = options.open(path).map_err(io_err("open", path))?;
    let after = file.metadata().map_err(io_err("inspect", path))?;
    if (after.dev(), after.ino()) != (before.dev(), before.ino()) || !after.is_file() {
        return Err(StoreError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

fn read_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true);
    o
}

/// Whether `path` is a real directory (not a symlink to one).
fn is_real_dir(path: &Path) -> Result<bool> {
    match lstat(path)? {
        None => Ok(false),
        Some(m) if m.file_type().is_dir() => Ok(true),
        Some(_) => Err(StoreError::NotRegular {
            path: path.to_path_buf(),
        }),
    }
}

fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", path))
}

/// sha256 of an open file, streamed.
fn hash_file(file: &mut File, path: &Path) -> Result<String> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn parse_sha(sha: &str) -> Result<String> {
    Ok(Sha256::from_hex(sha)?.to_hex())
}

/// Removes a temporary file or directory unless disarmed (on every early return).
struct TmpGuard(Option<PathBuf>);

impl TmpGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let is_dir = fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
            let _ = if is_dir {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store at `dir`, keeping [`DEFAULT_KEEP`] bundles.
    pub fn open(dir: &Path) -> Result<Store> {
        Self::open_keeping(dir, DEFAULT_KEEP)
    }

    /// Opens the store keeping the last `keep` (at least 1) validated bundles. Takes the store's
    /// lock, removes what interrupted operations left, and repairs `current`.
    pub fn open_keeping(dir: &Path, keep: usize) -> Result<Store> {
        fs::create_dir_all(dir).map_err(io_err("create store directory", dir))?;
        let root = dir.canonicalize().map_err(io_err("resolve", dir))?;
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: lock_path });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        let store = Store {
            root,
            keep: keep.max(1),
            _lock: lock,
        };
        for sub in ["blobs", "bundles", "partial"] {
            let p = store.root.join(sub);
            if !is_real_dir(&p)? {
                fs::create_dir(&p).map_err(io_err("create", &p))?;
                fsync_dir(&store.root)?;
            }
        }
        store.recover()?;
        Ok(store)
    }

    /// The store's directory (resolved).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    fn bundles_dir(&self) -> PathBuf {
        self.root.join("bundles")
    }

    /// Where the blob of `sha` lives (whether or not it is there).
    pub fn blob_path(&self, sha: &str) -> Result<PathBuf> {
        Ok(self.blobs_dir().join(parse_sha(sha)?))
    }

    /// Whether the blob is stored (as a regular file; a planted symlink does not count).
    pub fn has_blob(&self, sha: &str) -> Result<bool> {
        let path = self.blob_path(sha)?;
        Ok(lstat(&path)?.is_some_and(|m| m.file_type().is_file()))
    }

    /// Hashes of every stored blob, sorted (for the wire's Hello).
    pub fn blobs(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (name, meta) in self.list(&self.blobs_dir())? {
            if meta.file_type().is_file() && Sha256::from_hex(&name).is_ok() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Partial uploads in progress: sha256 (hex) -> bytes held, so an interrupted upload resumes
    /// where it stopped (over serial through `OfferReply::have_bytes`, over SSH through the
    /// listing).
    pub fn partials(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for (name, meta) in self.list(&self.partial_dir())? {
            if meta.file_type().is_file() && Sha256::from_hex(&name).is_ok() {
                out.insert(name, meta.len());
            }
        }
        Ok(out)
    }

    /// The distinct blobs of `manifest` that are not stored yet, sorted: only these need to travel.
    pub fn missing_blobs<M: ManifestFiles + ?Sized>(&self, manifest: &M) -> Result<Vec<String>> {
        let mut missing = BTreeSet::new();
        for (name, sha) in manifest.files() {
            check_name(name)?;
            let sha = parse_sha(sha)?;
            if !self.has_blob(&sha)? {
                missing.insert(sha);
            }
        }
        Ok(missing.into_iter().collect())
    }

    /// Bytes of the blob the store already has: `size` if stored, the partial upload's length if
    /// one is in progress, else 0. This is the wire's `OfferReply::have_bytes`.
    pub fn have_bytes(&self, sha: &str, size: u64) -> Result<u64> {
        if self.has_blob(sha)? {
            return Ok(size);
        }
        let path = self.partial_dir().join(parse_sha(sha)?);
        match lstat(&path)? {
            None => Ok(0),
            Some(m) if !m.file_type().is_file() => Err(StoreError::NotRegular { path }),
            Some(m) if m.len() > size => {
                tracing::warn!(
                    "{}: {} bytes for a {size}-byte blob, starting over",
                    path.display(),
                    m.len()
                );
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                Ok(0)
            }
            Some(m) => Ok(m.len()),
        }
    }

    /// Appends `data` at `offset` to the partial upload of a `size`-byte blob; `offset` must be the
    /// partial's current length. Returns the new length. Chunks are not fsynced one by one: the
    /// sha256 check in [`Store::finish_partial`] catches a tail torn by a power cut.
    pub fn write_partial(&self, sha: &str, size: u64, offset: u64, data: &[u8]) -> Result<u64> {
        let sha = parse_sha(sha)?;
        let path = self.partial_dir().join(&sha);
        if self.has_blob(&sha)? {
            return Ok(size);
        }
        let have = self.have_bytes(&sha, size)?;
        if offset != have {
            return Err(StoreError::OffsetMismatch { path, have, offset });
        }
        let end = offset + data.len() as u64;
        if end > size {
            return Err(StoreError::TooLong { path, size, end });
        }
        let mut file = if have == 0 && lstat(&path)?.is_none() {
            OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(io_err("create", &path))?
        } else {
            let mut o = OpenOptions::new();
            o.append(true);
            open_regular(&path, &o)?
        };
        let written = match injected_eio("partial-write") {
            Some(e) if offset > 0 => Err(e),
            _ => file.write_all(data),
        };
        if let Err(e) = written {
            let _ = file.set_len(have);
            return Err(io_err("write", &path)(e));
        }
        if end == size {
            fail_point("partial-last-byte-written");
        }
        Ok(end)
    }

    /// Turns a complete partial upload into a blob: fsync, verify sha256, rename into `blobs/`,
    /// fsync both directories. On a hash mismatch the partial is deleted (the upload starts over).
    pub fn finish_partial(&self, sha: &str, size: u64) -> Result<PathBuf> {
        let sha = parse_sha(sha)?;
        let path = self.partial_dir().join(&sha);
        let target = self.blobs_dir().join(&sha);
        if self.has_blob(&sha)? {
            let _ = fs::remove_file(&path);
            return Ok(target);
        }
        if size == 0 {
            // An empty blob needs no upload.
            if lstat(&path)?.is_some() {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
            return self.install_blob(&sha, io::empty());
        }
        let have = self.have_bytes(&sha, size)?;
        if have != size {
            return Err(StoreError::Incomplete { path, have, size });
        }
        let mut file = open_regular(&path, &read_options())?;
        fail_point("partial-before-fsync");
        file.sync_all().map_err(io_err("sync", &path))?;
        let found = hash_file(&mut file, &path)?;
        if found != sha {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            return Err(StoreError::HashMismatch {
                path,
                expected: sha,
                found,
            });
        }
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err("set permissions of", &path))?;
        fail_point("partial-before-rename");
        fs::rename(&path, &target).map_err(io_err("move into place", &target))?;
        fail_point("partial-after-rename");
        fsync_dir(&self.blobs_dir())?;
        fsync_dir(&self.partial_dir())?;
        fail_point("partial-after-dir-fsync");
        Ok(target)
    }

    /// Stores a whole blob from `reader` (e.g. one uploaded over SSH): written to a temporary file
    /// in `blobs/`, fsynced, verified, renamed, directory fsynced. Nothing changes on a mismatch.
    pub fn install_blob<R: Read>(&self, sha: &str, mut reader: R) -> Result<PathBuf> {
        let sha = parse_sha(sha)?;
        let target = self.blobs_dir().join(&sha);
        if self.has_blob(&sha)? {
            return Ok(target);
        }
        let tmp = self.blobs_dir().join(tmp_name(&sha));
        let mut guard = TmpGuard(Some(tmp.clone()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read the upload for", &target)(e)),
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io_err("write", &tmp))?;
        }
        fail_point("upload-before-fsync");
        file.sync_all().map_err(io_err("sync", &tmp))?;
        let found = hex::encode(hasher.finalize());
        if found != sha {
            return Err(StoreError::HashMismatch {
                path: target,
                expected: sha,
                found,
            });
        }
        file.set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err("set permissions of", &tmp))?;
        fail_point("upload-before-rename");
        fs::rename(&tmp, &target).map_err(io_err("move into place", &target))?;
        guard.disarm();
        fail_point("upload-after-rename");
        fsync_dir(&self.blobs_dir())?;
        Ok(target)
    }

    /// Installs bundle `id` from blobs already stored: checks every name and hash, re-verifies every
    /// blob, assembles `bundles/<id>/` (hard links), then calls `validate` on that directory (e.g.
    /// load the model; what it returns is handed back, so the caller keeps the loaded model). Only
    /// if it succeeds is the bundle recorded and `current` switched to it; otherwise `current` stays
    /// where it was and the new directory is removed. Older bundles beyond the kept number are then
    /// pruned.
    pub fn install_bundle<M, T, E, F>(&mut self, id: &str, manifest: &M, validate: F) -> Result<T>
    where
        M: ManifestFiles + ?Sized,
        E: fmt::Display,
        F: FnOnce(&Path) -> std::result::Result<T, E>,
    {
        check_name(id)?;
        let files = self.checked_files(id, manifest)?;
        let missing = self.missing_blobs(manifest)?;
        if !missing.is_empty() {
            return Err(StoreError::MissingBlobs {
                bundle: id.to_string(),
                missing,
            });
        }
        for sha in files.values().collect::<BTreeSet<_>>() {
            self.verify_blob(sha)?;
        }
        let dir = self.bundles_dir().join(id);
        let existed = match lstat(&dir)? {
            Some(m) if m.file_type().is_dir() => {
                if self.read_record(&dir).ok().as_ref() != Some(&files) {
                    return Err(StoreError::Conflict {
                        bundle: id.to_string(),
                        path: dir,
                    });
                }
                true
            }
            Some(_) => return Err(StoreError::NotRegular { path: dir }),
            None => {
                self.assemble(id, &files)?;
                false
            }
        };
        let value = match validate(&dir) {
            Ok(v) => v,
            Err(e) => {
                if !existed {
                    fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
                    fsync_dir(&self.bundles_dir())?;
                }
                let kept = match self.current() {
                    Ok(Some(c)) => format!("`current` still points to bundle {c}"),
                    _ => "there is still no current bundle".to_string(),
                };
                return Err(StoreError::Validation {
                    bundle: id.to_string(),
                    reason: format!("{e:#}"),
                    kept,
                });
            }
        };
        fail_point("install-validated");
        let mut history = self.history()?;
        history.retain(|h| h != id);
        history.push(id.to_string());
        self.write_history(&history)?;
        fail_point("install-history-written");
        self.switch_current(id)?;
        fail_point("install-done");
        if let Err(e) = self.prune() {
            tracing::warn!("bundle {id} installed, but pruning old bundles failed: {e}");
        }
        Ok(value)
    }

    /// Switches `current` back to the bundle installed before the current one, after `validate`
    /// accepts it. Returns its id and what `validate` returned.
    pub fn rollback<T, E, F>(&mut self, validate: F) -> Result<(String, T)>
    where
        E: fmt::Display,
        F: FnOnce(&Path) -> std::result::Result<T, E>,
    {
        let current = self.current()?;
        let history = self.history()?;
        let previous = current
            .as_ref()
            .and_then(|c| history.iter().position(|h| h == c))
            .and_then(|i| i.checked_sub(1))
            .map(|i| history[i].clone());
        let Some(previous) = previous else {
            return Err(StoreError::NoPrevious {
                current: current.map_or("no bundle".into(), |c| format!("bundle {c}")),
                keep: self.keep,
            });
        };
        let dir = self.bundles_dir().join(&previous);
        let value = validate(&dir).map_err(|e| StoreError::Validation {
            bundle: previous.clone(),
            reason: format!("{e:#}"),
            kept: format!(
                "`current` still points to bundle {}",
                current.as_deref().unwrap_or("none")
            ),
        })?;
        self.switch_current(&previous)?;
        Ok((previous, value))
    }

    /// The current bundle's id, if any.
    pub fn current(&self) -> Result<Option<String>> {
        let link = self.root.join(CURRENT);
        let Some(meta) = lstat(&link)? else {
            return Ok(None);
        };
        if !meta.file_type().is_symlink() {
            return Err(StoreError::CurrentInvalid {
                path: link,
                target: None,
            });
        }
        let target = fs::read_link(&link).map_err(io_err("read link", &link))?;
        let invalid = || StoreError::CurrentInvalid {
            path: link.clone(),
            target: Some(target.clone()),
        };
        let mut parts = target.components();
        let (
            Some(std::path::Component::Normal(first)),
            Some(std::path::Component::Normal(id)),
            None,
        ) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let id = id.to_str().ok_or_else(invalid)?;
        if first != "bundles" || check_name(id).is_err() {
            return Err(invalid());
        }
        let dir = self.bundles_dir().join(id);
        if !matches!(lstat(&dir)?, Some(m) if m.file_type().is_dir())
            || self.read_record(&dir).is_err()
        {
            return Err(invalid());
        }
        Ok(Some(id.to_string()))
    }

    /// Directory of the current bundle, if any.
    pub fn current_path(&self) -> Result<Option<PathBuf>> {
        Ok(self.current()?.map(|id| self.bundles_dir().join(id)))
    }

    /// Validated bundles, oldest first.
    pub fn bundles(&self) -> Result<Vec<BundleInfo>> {
        let current = self.current().ok().flatten();
        self.history()?
            .into_iter()
            .map(|id| {
                let path = self.bundles_dir().join(&id);
                let files = self.read_record(&path)?;
                Ok(BundleInfo {
                    current: current.as_deref() == Some(id.as_str()),
                    id,
                    path,
                    files,
                })
            })
            .collect()
    }

    /// Removes bundles other than the last kept ones and `current`, then blobs no remaining bundle
    /// uses. Partial uploads stay (they may be resumed).
    pub fn prune(&mut self) -> Result<Pruned> {
        let current = self.current().ok().flatten();
        let mut history = self.history()?;
        let cut = history.len().saturating_sub(self.keep);
        let keep: BTreeSet<String> = history[cut..]
            .iter()
            .cloned()
            .chain(current.clone())
            .collect();
        history.retain(|h| keep.contains(h));
        self.write_history(&history)?;

        let mut pruned = Pruned::default();
        let bundles_dir = self.bundles_dir();
        let mut used = BTreeSet::new();
        for (name, meta) in self.list(&bundles_dir)? {
            if name.starts_with('.') {
                continue;
            }
            let path = bundles_dir.join(&name);
            if keep.contains(&name) && meta.file_type().is_dir() {
                used.extend(self.read_record(&path)?.into_values());
                continue;
            }
            if meta.file_type().is_dir() {
                fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
            } else {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
            pruned.bundles.push(name);
        }
        fsync_dir(&bundles_dir)?;
        for sha in self.blobs()? {
            if !used.contains(&sha) {
                let path = self.blobs_dir().join(&sha);
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                pruned.blobs.push(sha);
            }
        }
        fsync_dir(&self.blobs_dir())?;
        pruned.bundles.sort();
        Ok(pruned)
    }

    /// Entries of a store directory with their own (not followed) metadata, names as UTF-8.
    fn list(&self, dir: &Path) -> Result<Vec<(String, fs::Metadata)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            let meta = entry.metadata().map_err(io_err("inspect", &entry.path()))?;
            match entry.file_name().into_string() {
                Ok(name) => out.push((name, meta)),
                Err(name) => {
                    tracing::warn!("ignoring non-UTF-8 entry {name:?} in {}", dir.display())
                }
            }
        }
        Ok(out)
    }

    /// The manifest's files as a map, every name and hash checked, duplicates refused.
    fn checked_files<M: ManifestFiles + ?Sized>(
        &self,
        id: &str,
        manifest: &M,
    ) -> Result<BTreeMap<String, String>> {
        let mut files = BTreeMap::new();
        for (name, sha) in manifest.files() {
            check_name(name)?;
            if files.insert(name.to_string(), parse_sha(sha)?).is_some() {
                return Err(StoreError::BadManifest {
                    bundle: id.into(),
                    reason: format!("file {name:?} is listed twice"),
                });
            }
        }
        if files.is_empty() {
            return Err(StoreError::BadManifest {
                bundle: id.into(),
                reason: "it lists no file".into(),
            });
        }
        Ok(files)
    }

    /// Re-hashes a stored blob; a damaged one is deleted so the next deploy sends it again.
    fn verify_blob(&self, sha: &str) -> Result<()> {
        let path = self.blob_path(sha)?;
        let found = hash_file(&mut open_regular(&path, &read_options())?, &path)?;
        if found != sha {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            return Err(StoreError::HashMismatch {
                path,
                expected: sha.to_string(),
                found,
            });
        }
        Ok(())
    }

    /// Builds `bundles/<id>/` under a temporary name (hard links + record), fsyncs, renames it in.
    fn assemble(&self, id: &str, files: &BTreeMap<String, String>) -> Result<()> {
        let bundles = self.bundles_dir();
        let tmp = bundles.join(tmp_name(id));
        let mut guard = TmpGuard(Some(tmp.clone()));
        fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
        for (name, sha) in files {
            let link = tmp.join(name);
            fs::hard_link(self.blobs_dir().join(sha), &link).map_err(io_err(
                "hard-link a blob (the store needs a file system with hard links, e.g. ext4) as",
                &link,
            ))?;
        }
        fail_point("assemble-linked");
        let record = tmp.join(RECORD);
        let json = serde_json::to_vec_pretty(files).expect("a map of strings serializes");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&record)
            .map_err(io_err("create", &record))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(io_err("write", &record))?;
        fsync_dir(&tmp)?;
        let dir = bundles.join(id);
        fail_point("assemble-before-rename");
        fs::rename(&tmp, &dir).map_err(io_err("move into place", &dir))?;
        guard.disarm();
        fail_point("assemble-after-rename");
        fsync_dir(&bundles)
    }

    /// The file list a bundle directory was assembled with.
    fn read_record(&self, dir: &Path) -> Result<BTreeMap<String, String>> {
        let path = dir.join(RECORD);
        let mut text = String::new();
        open_regular(&path, &read_options())?
            .read_to_string(&mut text)
            .map_err(io_err("read", &path))?;
        let files: BTreeMap<String, String> =
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        for (name, sha) in &files {
            if check_name(name).is_err() || Sha256::from_hex(sha).is_err() {
                return Err(StoreError::Corrupt {
                    path,
                    reason: format!("bad entry {name:?}"),
                });
            }
        }
        Ok(files)
    }

    /// Validated bundle ids, oldest first, restricted to bundles that exist.
    fn history(&self) -> Result<Vec<String>> {
        let path = self.root.join(HISTORY);
        if lstat(&path)?.is_none() {
            return Ok(Vec::new());
        }
        let mut text = String::new();
        open_regular(&path, &read_options())?
            .read_to_string(&mut text)
            .map_err(io_err("read", &path))?;
        let ids: Vec<String> = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(ids
            .into_iter()
            .filter(|id| {
                check_name(id).is_ok()
                    && matches!(lstat(&self.bundles_dir().join(id)), Ok(Some(m)) if m.file_type().is_dir())
            })
            .collect())
    }

    /// Rewrites `history.json` atomically.
    fn write_history(&self, ids: &[String]) -> Result<()> {
        let json = serde_json::to_vec_pretty(ids).expect("strings serialize");
        self.write_small(HISTORY, &json)
    }

    /// Replaces the store's file `name` with `bytes`: a temporary file, fsync, rename, fsync of
    /// the directory.
    fn write_small(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tmp = self.root.join(tmp_name(name));
        let mut guard = TmpGuard(Some(tmp.clone()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err("write", &tmp))?;
        let path = self.root.join(name);
        fs::rename(&tmp, &path).map_err(io_err("move into place", &path))?;
        guard.disarm();
        fsync_dir(&self.root)
    }

    /// Makes the recorded bundle `id` current again (the agent putting back its own bundle after
    /// refusing one that was switched in behind its back).
    pub fn restore(&mut self, id: &str) -> Result<()> {
        check_name(id)?;
        let dir = self.bundles_dir().join(id);
        self.read_record(&dir)?;
        self.switch_current(id)
    }

    /// Points `current` at `bundles/<id>`: a new link under a temporary name renamed over it.
    /// [`APPROVED`] names `id` first, so a `current` that differs from it was moved by someone
    /// else (or the switch was interrupted, and `current` still names the bundle before).
    fn switch_current(&self, id: &str) -> Result<()> {
        let link = self.root.join(CURRENT);
        if matches!(lstat(&link)?, Some(m) if m.file_type().is_dir()) {
            return Err(StoreError::NotRegular { path: link });
        }
        self.write_small(APPROVED, id.as_bytes())?;
        fail_point("switch-approved-written");
        let tmp = self.root.join(tmp_name("current"));
        let mut guard = TmpGuard(Some(tmp.clone()));
        std::os::unix::fs::symlink(Path::new("bundles").join(id), &tmp)
            .map_err(io_err("create link", &tmp))?;
        fail_point("switch-before-rename");
        fs::rename(&tmp, &link).map_err(io_err("switch", &link))?;
        guard.disarm();
        fail_point("switch-after-rename");
        fsync_dir(&self.root)
    }

    /// Cleans after interrupted operations and repairs `current` (called by `open`, under the lock).
    fn recover(&self) -> Result<()> {
        // Temporary files and directories: never complete, never referenced.
        for dir in [
            self.root.clone(),
            self.blobs_dir(),
            self.bundles_dir(),
            self.partial_dir(),
        ] {
            for (name, meta) in self.list(&dir)? {
                let path = dir.join(&name);
                let planted_link = dir != self.root && meta.file_type().is_symlink();
                if !name.starts_with(TMP) && !planted_link {
                    continue;
                }
                if planted_link {
                    tracing::warn!(
                        "removing {}: a link the store did not create",
                        path.display()
                    );
                } else {
                    tracing::info!(
                        "removing {}, left by an interrupted operation",
                        path.display()
                    );
                }
                if meta.file_type().is_dir() {
                    fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
                } else {
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                }
            }
        }
        let mut history = match self.history() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("{e}; the rollback history is lost, only `current` is kept");
                Vec::new()
            }
        };
        let current = match self.current() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        };
        if let Some(c) = &current
            && !history.contains(c)
        {
            history.push(c.clone());
        }
        // Bundles assembled but never validated (the install was interrupted): not history, not current.
        for (name, _) in self.list(&self.bundles_dir())? {
            if !history.contains(&name) {
                let path = self.bundles_dir().join(&name);
                tracing::info!("removing {}: its install did not finish", path.display());
                if is_real_dir(&path).unwrap_or(false) {
                    fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
                } else {
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                }
            }
        }
        history.retain(|id| self.read_record(&self.bundles_dir().join(id)).is_ok());
        self.write_history(&history)?;
        if current.as_ref().is_none_or(|c| !history.contains(c)) {
            let link = self.root.join(CURRENT);
            if let Some(last) = history.last() {
                if lstat(&link)?.is_some() {
                    tracing::warn!(
                        "`current` was not valid; pointing it to the last validated bundle {last}"
                    );
                }
                self.switch_current(last)?;
            } else if let Some(m) = lstat(&link)? {
                tracing::warn!(
                    "removing {}: it names no bundle of this store",
                    link.display()
                );
                if m.file_type().is_dir() {
                    return Err(StoreError::NotRegular { path: link });
                }
                fs::remove_file(&link).map_err(io_err("remove", &link))?;
                fsync_dir(&self.root)?;
            }
        }
        fsync_dir(&self.bundles_dir())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha_hex(bytes: &[u8]) -> String {
        Sha256::of(bytes).to_hex()
    }

    /// A store with blobs for `files` (name -> content) and the manifest of those files.
    fn upload(store: &Store, files: &[(&str, &[u8])]) -> BTreeMap<String, String> {
        let mut manifest = BTreeMap::new();
        for (name, content) in files {
            store.install_blob(&sha_hex(content), *content).unwrap();
            manifest.insert(name.to_string(), sha_hex(content));
        }
        manifest
    }

    /// A validator that checks the bundle really holds `model.onnx` with the expected content,
    /// the way the agent would load a model.
    fn expects(content: &'static [u8]) -> impl FnOnce(&Path) -> Result<(), String> {
        move |dir| match fs::read(dir.join("model.onnx")) {
            Ok(b) if b == content => Ok(()),
            Ok(_) => Err("model.onnx has the wrong content".into()),
            Err(e) => Err(format!("model.onnx: {e}")),
        }
    }

    /// `current` exists, is a relative link into `bundles/`, and its target has a model.
    fn assert_current_is(root: &Path, id: Option<&str>) {
        let link = root.join("current");
        match id {
            None => assert!(
                fs::symlink_metadata(&link).is_err(),
                "current should not exist"
            ),
            Some(id) => {
                assert_eq!(fs::read_link(&link).unwrap(), Path::new("bundles").join(id));
                assert!(link.join("model.onnx").is_file(), "current is dangling");
            }
        }
    }

    /// Every entry under `dir` whose name starts with `.tmp-`.
    fn temp_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().starts_with(TMP) {
                out.push(e.path());
            }
            if e.file_type().unwrap().is_dir() {
                out.extend(temp_files(&e.path()));
            }
        }
        out
    }

    #[test]
    fn install_verify_switch() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let manifest = upload(
            &store,
            &[("model.onnx", b"weights v1"), ("labels.txt", b"cat\ndog\n")],
        );
        assert_eq!(
            store.missing_blobs(&manifest).unwrap(),
            Vec::<String>::new()
        );
        let loaded = store
            .install_bundle("b1", &manifest, |dir: &Path| {
                fs::read(dir.join("labels.txt")).map_err(|e| e.to_string())
            })
            .unwrap();
        assert_eq!(
            loaded, b"cat\ndog\n",
            "the validator's value is handed back"
        );
        assert_current_is(tmp.path(), Some("b1"));
        assert_eq!(store.current().unwrap().as_deref(), Some("b1"));

        // Bundle files are hard links to the blobs, read-only.
        let model = tmp.path().join("bundles/b1/model.onnx");
        let blob = store.blob_path(&sha_hex(b"weights v1")).unwrap();
        assert_eq!(
            fs::metadata(&model).unwrap().ino(),
            fs::metadata(&blob).unwrap().ino()
        );
        assert_eq!(fs::metadata(&blob).unwrap().permissions().mode() & 0o222, 0);
        assert_eq!(
            fs::read(store.current_path().unwrap().unwrap().join("model.onnx")).unwrap(),
            b"weights v1"
        );

        // A second bundle sharing the labels: only its model is missing.
        let mut m2 = manifest.clone();
        m2.insert("model.onnx".into(), sha_hex(b"weights v2"));
        assert_eq!(
            store.missing_blobs(&m2).unwrap(),
            vec![sha_hex(b"weights v2")]
        );
        assert!(matches!(
            store.install_bundle("b2", &m2, expects(b"weights v2")),
            Err(StoreError::MissingBlobs { .. })
        ));
        assert_current_is(tmp.path(), Some("b1"));
        upload(&store, &[("model.onnx", b"weights v2")]);
        store
            .install_bundle("b2", &m2, expects(b"weights v2"))
            .unwrap();
        assert_current_is(tmp.path(), Some("b2"));
        let ids: Vec<_> = store
            .bundles()
            .unwrap()
            .into_iter()
            .map(|b| (b.id, b.current))
            .collect();
        assert_eq!(
            ids,
            vec![("b1".to_string(), false), ("b2".to_string(), true)]
        );
        assert!(temp_files(tmp.path()).is_empty());
    }

    #[test]
    fn wrong_sha_is_refused_and_nothing_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let manifest = upload(&store, &[("model.onnx", b"good")]);
        store
            .install_bundle("b1", &manifest, expects(b"good"))
            .unwrap();
        let blobs_before = store.blobs().unwrap();

        // Whole upload with the wrong content.
        let claimed = sha_hex(b"what the host meant");
        let err = store
            .install_blob(&claimed, &b"what arrived"[..])
            .unwrap_err();
        assert!(matches!(err, StoreError::HashMismatch { .. }), "{err}");
        assert!(err.to_string().contains("send it again"));
        assert!(!store.has_blob(&claimed).unwrap());

        // Chunked upload with the wrong content: the partial is discarded, the next one starts at 0.
        store
            .write_partial(&claimed, 12, 0, b"what arrived")
            .unwrap();
        assert_eq!(store.have_bytes(&claimed, 12).unwrap(), 12);
        assert!(matches!(
            store.finish_partial(&claimed, 12),
            Err(StoreError::HashMismatch { .. })
        ));
        assert_eq!(store.have_bytes(&claimed, 12).unwrap(), 0);
        assert!(!store.has_blob(&claimed).unwrap());

        // A stored blob damaged on disk is caught at install, deleted, and current stays.
        let m2 = upload(&store, &[("model.onnx", b"new")]);
        let blob = store.blob_path(&sha_hex(b"new")).unwrap();
        fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&blob, b"neW").unwrap();
        assert!(matches!(
            store.install_bundle("b2", &m2, expects(b"new")),
            Err(StoreError::HashMismatch { .. })
        ));
        assert!(!blob.exists());
        assert!(!tmp.path().join("bundles/b2").exists());
        assert_current_is(tmp.path(), Some("b1"));
        assert_eq!(store.blobs().unwrap(), blobs_before);
        assert!(temp_files(tmp.path()).is_empty());
    }

    #[test]
    fn failed_validation_keeps_the_old_current() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let m1 = upload(&store, &[("model.onnx", b"v1")]);
        store.install_bundle("b1", &m1, expects(b"v1")).unwrap();
        let m2 = upload(&store, &[("model.onnx", b"v2")]);
        let err = store
            .install_bundle("b2", &m2, |_: &Path| {
                Err::<(), _>("tract: Conv has 3 inputs, expected 2")
            })
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, StoreError::Validation { .. }));
        assert!(
            text.contains("Conv has 3 inputs") && text.contains("still points to bundle b1"),
            "{text}"
        );
        assert_current_is(tmp.path(), Some("b1"));
        assert!(
            !tmp.path().join("bundles/b2").exists(),
            "the refused bundle is not kept"
        );
        assert_eq!(store.bundles().unwrap().len(), 1);

        // First install ever failing: still no current.
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        let m = upload(&store, &[("model.onnx", b"v1")]);
        let err = store
            .install_bundle("b1", &m, |_: &Path| Err::<(), _>("bad"))
            .unwrap_err();
        assert!(err.to_string().contains("no current bundle"), "{err}");
        assert_current_is(tmp.path(), None);
    }

    #[test]
    fn interrupted_operations_are_recovered_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let sha = sha_hex(&big);
        {
            let mut store = Store::open(root).unwrap();
            let m1 = upload(&store, &[("model.onnx", b"v1")]);
            store.install_bundle("b1", &m1, expects(b"v1")).unwrap();
            assert_eq!(
                store.write_partial(&sha, 10_000, 0, &big[..4000]).unwrap(),
                4000
            );
            // A chunk that does not continue the partial is refused, naming where to resume.
            let err = store
                .write_partial(&sha, 10_000, 5000, &big[5000..6000])
                .unwrap_err();
            assert!(
                matches!(err, StoreError::OffsetMismatch { have: 4000, .. }),
                "{err}"
            );
        } // the agent dies here, leaving what a kill at various points would leave:
        fs::write(root.join("blobs/.tmp-abc-1-0"), b"half a blob").unwrap();
        fs::create_dir(root.join("bundles/.tmp-b2-1-1")).unwrap();
        std::os::unix::fs::symlink("bundles/b2", root.join(".tmp-current-1-2")).unwrap();
        fs::write(root.join(".tmp-history-1-3"), b"[\"b1\", \"b2\"").unwrap();
        // ... and a bundle assembled but never validated.
        fs::create_dir(root.join("bundles/b2")).unwrap();
        fs::write(root.join("bundles/b2/model.onnx"), b"unvalidated").unwrap();
        fs::write(root.join("bundles/b2").join(RECORD), b"{}").unwrap();

        let store = Store::open(root).unwrap();
        assert!(temp_files(root).is_empty(), "left: {:?}", temp_files(root));
        assert!(
            !root.join("bundles/b2").exists(),
            "an unvalidated bundle must not survive"
        );
        assert_current_is(root, Some("b1"));
        assert_eq!(
            store.have_bytes(&sha, 10_000).unwrap(),
            4000,
            "the upload resumes where it stopped"
        );
        assert_eq!(
            store
                .write_partial(&sha, 10_000, 4000, &big[4000..])
                .unwrap(),
            10_000
        );
        store.finish_partial(&sha, 10_000).unwrap();
        assert_eq!(fs::read(store.blob_path(&sha).unwrap()).unwrap(), big);
        assert_eq!(store.have_bytes(&sha, 10_000).unwrap(), 10_000);
        assert!(!root.join("partial").join(&sha).exists());
    }

    #[test]
    fn current_is_repaired_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let outside = tempfile::tempdir().unwrap();
        {
            let mut store = Store::open(root).unwrap();
            for (id, content) in [("b1", &b"v1"[..]), ("b2", b"v2")] {
                let m = upload(&store, &[("model.onnx", content)]);
                store
                    .install_bundle(id, &m, |_: &Path| Ok::<_, String>(()))
                    .unwrap();
            }
        }
        for target in [
            outside.path().to_path_buf(),
            PathBuf::from("bundles/gone"),
            PathBuf::from("../../etc"),
        ] {
            fs::remove_file(root.join("current")).unwrap();
            std::os::unix::fs::symlink(&target, root.join("current")).unwrap();
            let store = Store::open(root).unwrap();
            assert_current_is(root, Some("b2"));
            assert_eq!(store.current().unwrap().as_deref(), Some("b2"));
        }
        // A missing link comes back too.
        fs::remove_file(root.join("current")).unwrap();
        drop(Store::open(root).unwrap());
        assert_current_is(root, Some("b2"));
    }

    #[test]
    fn prune_keeps_the_last_k_and_their_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open_keeping(tmp.path(), 2).unwrap();
        let contents: [&'static [u8]; 4] = [b"m1", b"m2", b"m3", b"m4"];
        for (i, content) in contents.iter().enumerate() {
            let m = upload(
                &store,
                &[("model.onnx", content), ("labels.txt", b"shared labels")],
            );
            store
                .install_bundle(&format!("b{}", i + 1), &m, expects(content))
                .unwrap();
        }
        let ids: Vec<_> = store.bundles().unwrap().into_iter().map(|b| b.id).collect();
        assert_eq!(ids, vec!["b3", "b4"]);
        assert!(!tmp.path().join("bundles/b1").exists() && !tmp.path().join("bundles/b2").exists());
        let mut expected = vec![sha_hex(b"m3"), sha_hex(b"m4"), sha_hex(b"shared labels")];
        expected.sort();
        assert_eq!(
            store.blobs().unwrap(),
            expected,
            "blobs of pruned bundles go, shared ones stay"
        );
        assert_current_is(tmp.path(), Some("b4"));

        // After a rollback, the current bundle is kept even when it is not among the newest.
        store.rollback(expects(b"m3")).unwrap();
        let m5 = upload(&store, &[("model.onnx", b"m5")]);
        store.install_bundle("b5", &m5, expects(b"m5")).unwrap();
        store.rollback(expects(b"m4")).unwrap();
        let pruned = store.prune().unwrap();
        assert!(pruned.bundles.is_empty());
        let ids: Vec<_> = store.bundles().unwrap().into_iter().map(|b| b.id).collect();
        assert_eq!(ids, vec!["b4", "b5"]);
        assert_current_is(tmp.path(), Some("b4"));
    }

    #[test]
    fn rollback_goes_back_one_bundle_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(tmp.path()).unwrap();
        assert!(matches!(
            store.rollback(expects(b"")),
            Err(StoreError::NoPrevious { .. })
        ));
        let contents: [&'static [u8]; 3] = [b"v1", b"v2", b"v3"];
        for (i, content) in contents.iter().enumerate() {
            let m = upload(&store, &[("model.onnx", content)]);
            store
                .install_bundle(&format!("b{}", i + 1), &m, expects(content))
                .unwrap();
        }
        // A previous bundle that no longer loads is not switched to.
        let err = store
            .rollback(|_: &Path| Err::<(), _>("does not load"))
            .unwrap_err();
        assert!(matches!(err, StoreError::Validation { .. }));
        assert_current_is(tmp.path(), Some("b3"));

        assert_eq!(store.rollback(expects(b"v2")).unwrap().0, "b2");
        assert_current_is(tmp.path(), Some("b2"));
        assert_eq!(store.rollback(expects(b"v1")).unwrap().0, "b1");
        assert_current_is(tmp.path(), Some("b1"));
        assert!(matches!(
            store.rollback(expects(b"")),
            Err(StoreError::NoPrevious { .. })
        ));
        assert_current_is(tmp.path(), Some("b1"));

        // Reinstalling a kept bundle makes it current again without re-assembling it.
        let m3: BTreeMap<_, _> = [("model.onnx".to_string(), sha_hex(b"v3"))].into();
        store.install_bundle("b3", &m3, expects(b"v3")).unwrap();
        assert_current_is(tmp.path(), Some("b3"));
        // The same id with other files is a conflict.
        let other: BTreeMap<_, _> = [("model.onnx".to_string(), sha_hex(b"v1"))].into();
        assert!(matches!(
            store.install_bundle("b3", &other, expects(b"v1")),
            Err(StoreError::Conflict { .. })
        ));
        assert_current_is(tmp.path(), Some("b3"));
    }

    #[test]
    fn names_and_hashes_can_never_escape_the_store() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("store");
        let mut store = Store::open(&root).unwrap();
        let good = sha_hex(b"v1");
        store.install_blob(&good, &b"v1"[..]).unwrap();
        let bad_names = [
            "",
            ".",
            "..",
            "../escape",
            "../../etc/passwd",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "x\0y",
            RECORD,
            ".hidden",
            "line\nbreak",
        ];
        for name in bad_names {
            let manifest: BTreeMap<_, _> = [(name.to_string(), good.clone())].into();
            assert!(
                matches!(store.missing_blobs(&manifest), Err(StoreError::Name(_))),
                "{name:?}"
            );
            let r = store.install_bundle("b1", &manifest, |_: &Path| Ok::<_, String>(()));
            assert!(
                matches!(r, Err(StoreError::Name(_))),
                "file name {name:?}: {r:?}"
            );
            let ok: BTreeMap<_, _> = [("model.onnx".to_string(), good.clone())].into();
            let r = store.install_bundle(name, &ok, |_: &Path| Ok::<_, String>(()));
            assert!(
                matches!(r, Err(StoreError::Name(_))),
                "bundle id {name:?}: {r:?}"
            );
        }
        for sha in [
            "../../escape",
            "/etc/passwd",
            &good.to_uppercase(),
            &good[..63],
            "",
            "x",
        ] {
            assert!(
                matches!(store.install_blob(sha, &b"x"[..]), Err(StoreError::Hash(_))),
                "{sha:?}"
            );
            assert!(
                matches!(
                    store.write_partial(sha, 1, 0, b"x"),
                    Err(StoreError::Hash(_))
                ),
                "{sha:?}"
            );
            assert!(
                matches!(store.have_bytes(sha, 1), Err(StoreError::Hash(_))),
                "{sha:?}"
            );
            let manifest: BTreeMap<_, _> = [("model.onnx".to_string(), sha.to_string())].into();
            assert!(
                matches!(store.missing_blobs(&manifest), Err(StoreError::Hash(_))),
                "{sha:?}"
            );
        }
        // Nothing appeared next to the store, nothing was installed.
        let siblings: Vec<_> = fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(siblings, vec![std::ffi::OsString::from("store")]);
        assert!(store.bundles().unwrap().is_empty());
        assert_eq!(store.current().unwrap(), None);
    }

    #[test]
    fn planted_symlinks_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        fs::write(&secret, b"v1").unwrap(); // same content as the blob we will want
        let root = tmp.path();
        let sha = sha_hex(b"v1");
        let mut store = Store::open(root).unwrap();

        // A blob that is a link to a file outside does not count as stored.
        std::os::unix::fs::symlink(&secret, root.join("blobs").join(&sha)).unwrap();
        assert!(!store.has_blob(&sha).unwrap());
        let manifest: BTreeMap<_, _> = [("model.onnx".to_string(), sha.clone())].into();
        assert_eq!(store.missing_blobs(&manifest).unwrap(), vec![sha.clone()]);
        assert!(
            store
                .install_bundle("b1", &manifest, expects(b"v1"))
                .is_err()
        );

        // A partial upload that is a link: writing to it is refused, the target is untouched.
        let other = sha_hex(b"other");
        std::os::unix::fs::symlink(&secret, root.join("partial").join(&other)).unwrap();
        assert!(matches!(
            store.write_partial(&other, 100, 2, b"XX"),
            Err(StoreError::NotRegular { .. })
        ));
        assert_eq!(fs::read(&secret).unwrap(), b"v1");

        // Uploading the real blob replaces the planted link instead of writing through it.
        store.install_blob(&sha, &b"v1"[..]).unwrap();
        assert!(
            fs::symlink_metadata(root.join("blobs").join(&sha))
                .unwrap()
                .file_type()
                .is_file()
        );
        store
            .install_bundle("b1", &manifest, expects(b"v1"))
            .unwrap();
        assert_current_is(root, Some("b1"));

        // A bundle directory replaced by a link is not current any more; reopening removes the
        // planted links.
        drop(store);
        fs::rename(root.join("bundles/b1"), root.join("bundles/moved")).unwrap();
        std::os::unix::fs::symlink(root.join("bundles/moved"), root.join("bundles/b1")).unwrap();
        let store = Store::open(root).unwrap();
        assert!(fs::symlink_metadata(root.join("bundles/b1")).is_err());
        assert!(fs::symlink_metadata(root.join("partial").join(&other)).is_err());
        assert_eq!(
            store.current().unwrap(),
            None,
            "no valid bundle is left to point to"
        );
        assert_eq!(fs::read(&secret).unwrap(), b"v1");

        // A store whose blobs directory is a link is refused outright.
        let tmp2 = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp2.path().join("blobs")).unwrap();
        assert!(matches!(
            Store::open(tmp2.path()),
            Err(StoreError::NotRegular { .. })
        ));
    }

    #[test]
    fn one_process_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let err = Store::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        drop(store);
        Store::open(tmp.path()).unwrap();
    }

    #[test]
    fn partial_uploads_are_bounded_by_the_declared_size() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let sha = sha_hex(b"0123456789");
        assert!(matches!(
            store.write_partial(&sha, 10, 0, b"0123456789AB"),
            Err(StoreError::TooLong { .. })
        ));
        assert_eq!(store.have_bytes(&sha, 10).unwrap(), 0);
        store.write_partial(&sha, 10, 0, b"01234").unwrap();
        assert!(matches!(
            store.finish_partial(&sha, 10),
            Err(StoreError::Incomplete { have: 5, .. })
        ));
        // Offered again with a smaller size than what is stored: start over.
        assert_eq!(store.have_bytes(&sha, 3).unwrap(), 0);
        // An empty blob needs no chunk.
        let empty = sha_hex(b"");
        assert_eq!(
            store.finish_partial(&empty, 0).unwrap(),
            store.blob_path(&empty).unwrap()
        );
        assert!(store.has_blob(&empty).unwrap());
    }
}
