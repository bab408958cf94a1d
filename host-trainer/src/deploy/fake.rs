//! An in-memory board for testing the deploy logic without a serial line or sshd: it stores
//! blobs and partial uploads by hash, checks each blob's sha256 and each bundle's manifest at
//! install like a real store, and can cut an upload after a number of bytes, refuse installs, or
//! damage a byte in flight.

use std::collections::BTreeMap;
use std::io::Read;

use kestrel_shared::manifest::Manifest;
use kestrel_shared::wire::Sha256;

use super::link::{BoardLink, BoardStatus, InstallRequest, LineBytes};
use super::{BlobReport, DeployError, LocalFile};
use crate::progress::Progress;

/// A board in memory. Its fields are public so a test can set faults and inspect the store.
#[derive(Debug, Default)]
pub struct FakeBoard {
    /// Whole blobs, checked against their hash.
    pub blobs: BTreeMap<Sha256, Vec<u8>>,
    /// Uploads cut short: the bytes that arrived.
    pub partial: BTreeMap<Sha256, Vec<u8>>,
    /// Installed bundles, oldest first.
    pub history: Vec<String>,
    /// The current bundle.
    pub current: Option<String>,
    /// The link breaks after this many more blob bytes (None: never).
    pub cut_after: Option<u64>,
    /// Every install is refused with this reason.
    pub refuse: Option<String>,
    /// The byte at this offset of every upload arrives flipped (a link that damages data).
    pub damage_at: Option<u64>,
    /// What the host asked, in order (`status`, `put NAME@OFFSET`, `install ID`, `rollback`).
    pub calls: Vec<String>,
    bytes: LineBytes,
}

impl FakeBoard {
    /// An empty board.
    pub fn new() -> Self {
        Self::default()
    }
}

/// The error of a cut link.
fn cut(what: &str) -> DeployError {
    DeployError::Link {
        what: what.into(),
        source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the fake link was cut"),
    }
}

impl BoardLink for FakeBoard {
    fn describe(&self) -> String {
        "fake board".into()
    }

    fn status(&mut self) -> Result<BoardStatus, DeployError> {
        self.calls.push("status".into());
        Ok(BoardStatus {
            kestrel_version: env!("CARGO_PKG_VERSION").into(),
            current: self.current.clone(),
            bundles: self.history.clone(),
            blobs: self.blobs.keys().copied().collect(),
            blobs_complete: true,
            partial: self
                .partial
                .iter()
                .map(|(k, v)| (*k, v.len() as u64))
                .collect(),
            ..Default::default()
        })
    }

    fn put_blob(
        &mut self,
        file: &LocalFile,
        _progress: &dyn Progress,
    ) -> Result<BlobReport, DeployError> {
        let bad = |e: std::io::Error| DeployError::Bundle {
            path: file.path.clone(),
            reason: e.to_string(),
        };
        let mut bytes = Vec::new();
        std::fs::File::open(&file.path)
            .map_err(bad)?
            .take(file.size)
            .read_to_end(&mut bytes)
            .map_err(bad)?;
        let held = self.partial.entry(file.sha256).or_default();
        let start = held.len().min(bytes.len());
        self.calls.push(format!("put {}@{start}", file.name));
        let mut sent = 0u64;
        for (i, &b) in bytes.iter().enumerate().skip(start) {
            if let Some(left) = self.cut_after.as_mut() {
                if *left == 0 {
                    self.bytes.out += sent;
                    return Err(cut(&format!("sending {}", file.name)));
                }
                *left -= 1;
            }
            let b = if self.damage_at == Some(i as u64) {
                b ^ 1
            } else {
                b
            };
            held.push(b);
            sent += 1;
        }
        self.bytes.out += sent;
        let whole = self.partial.remove(&file.sha256).unwrap_or_default();
        if Sha256::of(&whole) != file.sha256 {
            return Err(DeployError::Refused(format!(
                "{}: sha256 {} does not match {}; the upload is dropped",
                file.name,
                Sha256::of(&whole).to_hex(),
                file.sha256.to_hex()
            )));
        }
        self.blobs.insert(file.sha256, whole);
        Ok(BlobReport {
            name: file.name.clone(),
            size: file.size,
            start_offset: start as u64,
            bytes_sent: sent,
        })
    }

    fn install(&mut self, request: &InstallRequest) -> Result<String, DeployError> {
        self.calls.push(format!("install {}", request.id));
        if let Some(reason) = &self.refuse {
            return Err(DeployError::Refused(reason.clone()));
        }
        let refused = |why: String| DeployError::Refused(format!("bundle {}: {why}", request.id));
        let text = self
            .blobs
            .get(&request.manifest)
            .ok_or_else(|| refused("its manifest blob is not stored".into()))?;
        let text = std::str::from_utf8(text).map_err(|e| refused(e.to_string()))?;
        let manifest =
            Manifest::from_json(text, "manifest.json").map_err(|e| refused(e.to_string()))?;
        for (role, f) in manifest.files.on_board() {
            let sha = Sha256::from_hex(&f.sha256).map_err(|e| refused(e.to_string()))?;
            if !self.blobs.contains_key(&sha) {
                return Err(refused(format!("the {role} {} is not stored", f.path)));
            }
        }
        self.history.retain(|id| id != &request.id);
        self.history.push(request.id.clone());
        self.current = Some(request.id.clone());
        Ok(format!("installed {}", request.id))
    }

    fn rollback(&mut self) -> Result<String, DeployError> {
        self.calls.push("rollback".into());
        let at = self
            .current
            .as_ref()
            .and_then(|c| self.history.iter().position(|id| id == c));
        match at {
            Some(i) if i > 0 => {
                self.current = Some(self.history[i - 1].clone());
                Ok(format!("current {}", self.history[i - 1]))
            }
            _ => Err(DeployError::Refused(
                "no bundle before the current one".into(),
            )),
        }
    }

    fn line_bytes(&self) -> LineBytes {
        self.bytes
    }
}
