//! `kestrel-edge store ...`: the store from the command line, what `kestrel deploy --ssh` runs on
//! the board over SSH.
//!
//! - `list --json`: blobs, bundles (with their labels), `current`, free space, the board's uptime
//!   and the running agent's health (`crate::health`), so only missing blobs travel and a fleet
//!   deploy sees whether the agent runs its new bundle;
//! - `put-blob SHA`: stores a blob read from standard input (temporary file, fsync, sha256 checked
//!   on the board, rename): a bad upload never becomes a blob; with `--size N [--offset K]` the
//!   bytes go to the store's partial upload instead (as over serial), so an upload cut mid-blob
//!   keeps what arrived and the next one resumes at the byte the listing's `partial` names;
//! - `install --id ID --manifest SHA [--trust FILE] [--allow-downgrade]`: the same atomic,
//!   validated install as the serial agent ([`install_from_store`]), which refuses a bundle older
//!   than the current one unless allowed; a running agent notices the new `current` and switches;
//! - `rollback`, `verify` (re-hash every blob).
//!
//! A running agent holds the store only while a serial deploy talks to it; these commands wait up
//! to 30 s for the store's lock.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kestrel_shared::listing::{ListedBundle, StoreListing};
use kestrel_shared::manifest::{MANIFEST_FILE, Manifest};
use kestrel_shared::sign::TrustList;
use serde_json::json;

use crate::agent::{InstallPolicy, MAX_BLOB, free_bytes, install_from_store};
use crate::bundle::Bundle;
use crate::store::{DEFAULT_KEEP, Store, StoreError};

/// `kestrel-edge store` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Store directory (the agent's --store).
    #[arg(long)]
    pub store: PathBuf,
    /// Bundles kept for rollback.
    #[arg(long, default_value_t = DEFAULT_KEEP)]
    pub keep: usize,
    /// What to do.
    #[command(subcommand)]
    pub command: StoreCommand,
}

/// `kestrel-edge store` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StoreCommand {
    /// Blobs, bundles and the current bundle.
    #[command(
        after_help = "Examples:\n  kestrel-edge store --store /var/lib/kestrel list\n  kestrel-edge store --store /var/lib/kestrel list --json"
    )]
    List {
        /// As one JSON object (what `kestrel deploy --ssh` reads).
        #[arg(long)]
        json: bool,
    },
    /// Store a blob read from standard input; its sha256 is checked before it is kept.
    #[command(
        after_help = "Examples:\n  kestrel-edge store --store /var/lib/kestrel put-blob SHA256 < blob\n  kestrel-edge store --store /var/lib/kestrel put-blob SHA256 --size 3500000 --offset 1048576 < rest"
    )]
    PutBlob {
        /// The blob's sha256 (64 lowercase hex digits).
        sha256: String,
        /// The blob's size: standard input is appended to its partial upload (resumable); the
        /// blob is checked and kept once all `size` bytes are there.
        #[arg(long)]
        size: Option<u64>,
        /// Where standard input starts in the blob (with --size): must be what the partial upload
        /// holds (`list --json` names it), so a stale resume is refused rather than misplaced.
        #[arg(long, requires = "size", default_value_t = 0)]
        offset: u64,
    },
    /// Install a bundle whose blobs are stored, validate it, and make it current.
    #[command(
        after_help = "Examples:\n  kestrel-edge store --store /var/lib/kestrel install --id shelf-v2 --manifest SHA256 --trust /etc/kestrel/trust"
    )]
    Install {
        /// Bundle id (a plain name).
        #[arg(long)]
        id: String,
        /// sha256 of its manifest blob.
        #[arg(long)]
        manifest: String,
        /// Accept it only if signed by a key of this trust list.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// Accept it even if it is older than the current bundle.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Make the bundle installed before the current one current again.
    #[command(after_help = "Examples:\n  kestrel-edge store --store /var/lib/kestrel rollback")]
    Rollback,
    /// Re-hash every blob; fails if any does not match its name.
    #[command(after_help = "Examples:\n  kestrel-edge store --store /var/lib/kestrel verify")]
    Verify,
}

/// Opens the store, waiting up to `wait` for another process's lock.
pub fn open_waiting(dir: &Path, keep: usize, wait: Duration) -> Result<Store, StoreError> {
    let start = Instant::now();
    loop {
        match Store::open_keeping(dir, keep) {
            Err(StoreError::Locked { .. }) if start.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The store's content (`list --json`), with the board's uptime and what its agent, if one
/// runs, says about itself.
pub fn listing(store: &Store) -> Result<StoreListing, StoreError> {
    let bundles = store
        .bundles()?
        .into_iter()
        .map(|b| ListedBundle {
            labels: Manifest::read(&b.path.join(MANIFEST_FILE))
                .map(|m| m.labels)
                .unwrap_or_default(),
            id: b.id,
            current: b.current,
            files: b.files,
        })
        .collect();
    let (agent, agent_error) = match crate::health::ask(store.root(), Duration::from_secs(2)) {
        Ok(h) => (Some(h), None),
        Err(e) => (None, Some(e)),
    };
    Ok(StoreListing {
        kestrel_version: env!("CARGO_PKG_VERSION").into(),
        current: store.current()?,
        blobs: store.blobs()?,
        partial: store.partials()?,
        bundles,
        free_bytes: free_bytes(store.root()),
        uptime_s: crate::health::board_uptime_s(),
        agent,
        agent_error,
    })
}

/// Appends `input` to the partial upload of blob `sha` (`size` bytes) from `offset`, then checks
/// and keeps the blob once whole. Input that ends early leaves the partial upload in place (the
/// error says where the next upload resumes); a wrong hash deletes it.
pub fn put_resumable<R: Read>(
    store: &Store,
    sha: &str,
    size: u64,
    offset: u64,
    mut input: R,
) -> anyhow::Result<PathBuf> {
    let mut at = offset;
    if store.has_blob(sha)? {
        return Ok(store.blob_path(sha)?);
    }
    let mut buf = vec![0u8; 1 << 16];
    while at < size {
        let want = buf.len().min((size - at) as usize);
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => bail!(
                "blob {sha}: the upload stopped at byte {at} of {size}; the {at} bytes are kept and the next deploy resumes there"
            ),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("blob {sha}: reading the upload at byte {at} of {size}")
                });
            }
        };
        at = store
            .write_partial(sha, size, at, &buf[..n])
            .with_context(|| format!("storing blob {sha}"))?;
    }
    store
        .finish_partial(sha, size)
        .with_context(|| format!("storing blob {sha}"))
}

/// Runs `kestrel-edge store ...`.
pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    let mut store = open_waiting(&args.store, args.keep.max(1), Duration::from_secs(30))
        .with_context(|| format!("opening the store {}", args.store.display()))?;
    let mut out = std::io::stdout().lock();
    match args.command {
        StoreCommand::List { json } => {
            let l = listing(&store)?;
            if json {
                writeln!(out, "{}", l.to_json())?;
            } else {
                writeln!(out, "current: {}", l.current.as_deref().unwrap_or("(none)"))?;
                for b in &l.bundles {
                    writeln!(out, "{} {}", if b.current { "*" } else { " " }, b.id)?;
                    for (name, sha) in &b.files {
                        writeln!(out, "      {name} {sha}")?;
                    }
                }
                writeln!(out, "{} blobs", l.blobs.len())?;
            }
        }
        StoreCommand::PutBlob {
            sha256, size: None, ..
        } => {
            let stdin = std::io::stdin().lock();
            let path = store
                .install_blob(&sha256, stdin.take(MAX_BLOB))
                .with_context(|| format!("storing blob {sha256}"))?;
            writeln!(out, "{}", path.display())?;
        }
        StoreCommand::PutBlob {
            sha256,
            size: Some(size),
            offset,
        } => {
            if size > MAX_BLOB {
                bail!("blob {sha256}: {size} bytes is more than a board accepts ({MAX_BLOB})");
            }
            let path = put_resumable(&store, &sha256, size, offset, std::io::stdin().lock())?;
            writeln!(out, "{}", path.display())?;
        }
        StoreCommand::Install {
            id,
            manifest,
            trust,
            allow_downgrade,
        } => {
            let trust = match trust {
                Some(p) => Some(
                    TrustList::read(&p)
                        .with_context(|| format!("reading the trust list {}", p.display()))?,
                ),
                None => {
                    tracing::warn!("no --trust FILE: the bundle's signature is not checked");
                    None
                }
            };
            let policy = InstallPolicy {
                trust: trust.as_ref(),
                allow_downgrade,
            };
            let m = install_from_store(&mut store, &id, &manifest, policy, &mut |_| Ok(()))
                .map_err(|e| {
                    let kept = match store.current() {
                        Ok(Some(c)) => format!("; bundle {c} stays current"),
                        _ => String::new(),
                    };
                    anyhow::anyhow!("bundle {id} refused: {e}{kept}")
                })?;
            writeln!(
                out,
                "{}",
                json!({"installed": id, "current": store.current()?, "labels": m.labels,
                       "signed_by": m.signature.map(|s| s.key_id)})
            )?;
        }
        StoreCommand::Rollback => {
            let (id, ()) = store.rollback(|dir: &Path| -> Result<(), String> {
                Bundle::open(dir).map(|_| ()).map_err(|e| e.to_string())
            })?;
            writeln!(out, "{}", json!({"current": id}))?;
        }
        StoreCommand::Verify => {
            let mut bad = Vec::new();
            let blobs = store.blobs()?;
            for sha in &blobs {
                let path = store.blob_path(sha)?;
                let found = kestrel_shared::hash::sha256_file(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if &found != sha {
                    bad.push(sha.clone());
                }
            }
            writeln!(out, "{}", json!({"blobs": blobs.len(), "bad": bad}))?;
            if !bad.is_empty() {
                bail!(
                    "{} blob(s) do not match their hash: {}",
                    bad.len(),
                    bad.join(", ")
                );
            }
        }
    }
    Ok(())
}
