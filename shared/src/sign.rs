//! Bundle signatures: Ed25519 over the manifest, and the board's list of trusted keys.
//!
//! The manifest pins every file of a bundle by sha256 and size, so signing the manifest signs the
//! whole bundle. What is signed is the manifest's *canonical bytes*: the manifest with
//! `signature: None`, serialised by [`Manifest::to_json`] (the one writer of the format). The
//! signer makes sure those bytes are a fixed point of reading and writing again (a float printed
//! and parsed back is the same float), then checks its own signature on what it wrote, so a
//! verifier that parses `manifest.json` and serialises it again gets exactly the signed bytes.
//!
//! Key files are one line of text:
//!
//! ```text
//! kestrel.key    ed25519-secret:<64 hex digits>            (mode 0600)
//! kestrel.pub    ed25519:<64 hex digits> <comment>
//! trust list     one public key per line, `ed25519:<hex or base64> [comment]`; `#` starts a comment
//! ```
//!
//! A key's id is the first 16 hex digits of the sha256 of its 32 public bytes; the manifest's
//! [`Signature`] names the key by that id, so a board with several trusted keys knows which to use.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::manifest::{MANIFEST_FILE, Manifest, ManifestError, Signature};

/// The only signature algorithm, as written in [`Signature::algorithm`] and key files.
pub const ALGORITHM: &str = "ed25519";
/// File name of the private key written by `kestrel keygen`.
pub const SECRET_KEY_FILE: &str = "kestrel.key";
/// File name of the public key written by `kestrel keygen`.
pub const PUBLIC_KEY_FILE: &str = "kestrel.pub";
const SECRET_PREFIX: &str = "ed25519-secret:";
const PUBLIC_PREFIX: &str = "ed25519:";
/// Largest key or trust-list file read, in bytes (a trust list of a few thousand keys).
const MAX_KEY_FILE: u64 = 1 << 20;

/// Failures around keys and signing; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A key file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file or trust-list line is not in the expected format.
    #[error("{path}:{line}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong, and the expected form.
        reason: String,
    },
    /// `keygen` would overwrite a key.
    #[error(
        "{path} already exists: refusing to overwrite a key (bundles signed with it would no longer verify); pass --force to replace it"
    )]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// The operating system gave no random bytes.
    #[error("no randomness from the operating system for a new key: {0}")]
    Random(String),
    /// The manifest to sign is not valid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest did not read back the way it was signed (a bug, not a user error).
    #[error("the signed manifest does not verify after writing it: {0}")]
    SelfCheck(String),
}

/// Why a board refuses a bundle's signature. The messages are what the deploying user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// No signature while a trust list is configured.
    #[error(
        "the bundle is unsigned and this board only accepts bundles signed by a key in its trust list: export with `kestrel export --sign KEY` (after `kestrel keygen`)"
    )]
    Unsigned,
    /// A signature of another algorithm.
    #[error("the bundle's signature uses algorithm {0:?}; this board only knows ed25519")]
    Algorithm(String),
    /// Signed by a key the board does not trust.
    #[error(
        "the bundle is signed by key {key_id}, which is not in the board's trust list {list}: add that public key to the list (`kestrel install` does) or sign with a trusted key"
    )]
    UnknownKey {
        /// The key id in the manifest.
        key_id: String,
        /// The trust list's path.
        list: String,
    },
    /// The signature does not match the manifest: it was changed after signing, or forged.
    #[error(
        "the bundle's signature by key {key_id} does not match its manifest: the manifest was changed after signing (or the signature is forged); export and sign it again"
    )]
    BadSignature {
        /// The key id in the manifest.
        key_id: String,
    },
}

/// Key id: the first 16 hex digits of the sha256 of the 32 public bytes.
pub fn key_id(public: &VerifyingKey) -> String {
    crate::hash::sha256_hex(public.as_bytes())[..16].to_string()
}

/// The bytes a signature covers: the manifest without its signature, as [`Manifest::to_json`]
/// writes it.
pub fn canonical_bytes(manifest: &Manifest) -> Vec<u8> {
    let mut m = manifest.clone();
    m.signature = None;
    m.to_json().into_bytes()
}

/// An Ed25519 private key (what `kestrel keygen` writes and `kestrel export --sign` reads).
pub struct SecretKey {
    key: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(id {})", self.id())
    }
}

fn read_small(path: &Path) -> Result<String, SignError> {
    let io = |action| {
        move |source| SignError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let len = std::fs::metadata(path).map_err(io("read"))?.len();
    if len > MAX_KEY_FILE {
        return Err(SignError::Format {
            path: path.to_path_buf(),
            line: 1,
            reason: format!("the file has {len} bytes, more than a key file or trust list can"),
        });
    }
    std::fs::read_to_string(path).map_err(io("read"))
}

/// 32 bytes from 64 hex digits or from base64 (padded or not).
fn key_bytes(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() == 64 && hex::decode_to_slice(text, &mut out).is_ok() {
        return Some(out);
    }
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|e| e.decode(text).ok())
        .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
}

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, SignError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| SignError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key of a 32-byte seed (tests use fixed seeds).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// The key's id (see [`key_id`]).
    pub fn id(&self) -> String {
        key_id(&self.key.verifying_key())
    }

    /// Reads a key file written by [`SecretKey::write`].
    pub fn read(path: &Path) -> Result<Self, SignError> {
        let text = read_small(path)?;
        let bad = |reason: &str| SignError::Format {
            path: path.to_path_buf(),
            line: 1,
            reason: format!(
                "{reason}; expected `{SECRET_PREFIX}<64 hex digits>` (from `kestrel keygen`)"
            ),
        };
        let body = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| bad("not a Kestrel private key"))?;
        let mut seed = [0u8; 32];
        if body.len() != 64 || hex::decode_to_slice(body, &mut seed).is_err() {
            return Err(bad("the key is not 64 hex digits"));
        }
        Ok(Self::from_seed(seed))
    }

    /// Writes the key to `path` with mode 0600; refuses to replace an existing file unless
    /// `force`. The file is written under a temporary name and renamed, so a crash never leaves
    /// half a key.
    pub fn write(&self, path: &Path, force: bool) -> Result<(), SignError> {
        if !force && std::fs::symlink_metadata(path).is_ok() {
            return Err(SignError::Exists {
                path: path.to_path_buf(),
            });
        }
        let text = format!("{SECRET_PREFIX}{}\n", hex::encode(self.key.to_bytes()));
        write_atomically(path, text.as_bytes(), 0o600)
    }

    /// Signs a manifest: returns it with its [`Signature`] set, its other fields normalised to a
    /// fixed point of writing and reading, and the signature checked on the written form.
    pub fn sign_manifest(&self, manifest: &Manifest) -> Result<Manifest, SignError> {
        let mut m = manifest.clone();
        m.signature = None;
        for _ in 0..4 {
            let back = Manifest::from_json(&m.to_json(), "(manifest being signed)")?;
            if back == m {
                break;
            }
            m = back;
        }
        let signature = self.key.sign(&canonical_bytes(&m));
        m.signature = Some(Signature {
            algorithm: ALGORITHM.into(),
            key_id: self.id(),
            value: hex::encode(signature.to_bytes()),
        });
        let back = Manifest::from_json(&m.to_json(), "(signed manifest)")?;
        let list = TrustList::from_keys(vec![self.public()], "(the signing key)");
        list.verify(&back)
            .map_err(|e| SignError::SelfCheck(e.to_string()))?;
        Ok(m)
    }

    /// Signs the bundle in `dir` in place: its `manifest.json` is replaced (atomically) by the
    /// signed manifest. Returns the signed manifest.
    pub fn sign_bundle(&self, dir: &Path) -> Result<Manifest, SignError> {
        let path = dir.join(MANIFEST_FILE);
        let signed = self.sign_manifest(&Manifest::read(&path)?)?;
        write_atomically(&path, signed.to_json().as_bytes(), 0o644)?;
        Ok(signed)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory (fsync, rename).
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SignError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |action, p: &Path| {
        let p = p.to_path_buf();
        move |source| SignError::Io {
            action,
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or("key".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("write", &tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(io("move into place", path))
}

/// An Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub VerifyingKey);

impl PublicKey {
    /// The key's id (see [`key_id`]).
    pub fn id(&self) -> String {
        key_id(&self.0)
    }

    /// The key as a trust-list line: `ed25519:<hex> comment`.
    pub fn to_line(&self, comment: &str) -> String {
        let comment = comment.replace(['\n', '\r'], " ");
        let line = format!("{PUBLIC_PREFIX}{}", hex::encode(self.0.as_bytes()));
        if comment.trim().is_empty() {
            line
        } else {
            format!("{line} {}", comment.trim())
        }
    }

    /// Parses `ed25519:<hex or base64>` (the comment after it is the caller's business).
    pub fn parse(word: &str) -> Result<Self, String> {
        let body = word.strip_prefix(PUBLIC_PREFIX).ok_or_else(|| {
            format!(
                "{word:?} is not a public key: expected `{PUBLIC_PREFIX}<64 hex digits or base64>`"
            )
        })?;
        let bytes =
            key_bytes(body).ok_or_else(|| format!("{body:?} is not 32 bytes in hex or base64"))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| format!("not a valid Ed25519 public key: {e}"))
    }
}

/// One trusted key and the comment it was listed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The key.
    pub key: PublicKey,
    /// Its id.
    pub id: String,
    /// The comment after the key on its line (who it belongs to).
    pub comment: String,
}

/// The keys a board accepts bundles from (`--trust FILE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustList {
    /// Where it was read from (for messages).
    pub path: String,
    /// The keys, in file order.
    pub keys: Vec<TrustedKey>,
}

impl TrustList {
    /// A list of the given keys.
    pub fn from_keys(keys: Vec<PublicKey>, path: &str) -> Self {
        TrustList {
            path: path.to_string(),
            keys: keys
                .into_iter()
                .map(|key| TrustedKey {
                    id: key.id(),
                    key,
                    comment: String::new(),
                })
                .collect(),
        }
    }

    /// Parses a trust list; `path` names it in errors. Blank lines and `#` comments are skipped;
    /// a malformed line is an error naming the line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SignError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, comment) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let key = PublicKey::parse(word).map_err(|reason| SignError::Format {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            })?;
            keys.push(TrustedKey {
                id: key.id(),
                key,
                comment: comment.trim().to_string(),
            });
        }
        Ok(TrustList {
            path: path.display().to_string(),
            keys,
        })
    }

    /// Reads a trust list file (at most 1 MiB).
    pub fn read(path: &Path) -> Result<Self, SignError> {
        Self::parse(&read_small(path)?, path)
    }

    /// Checks the manifest's signature against the listed keys; returns the key that signed it.
    pub fn verify(&self, manifest: &Manifest) -> Result<&TrustedKey, TrustError> {
        let sig = manifest.signature.as_ref().ok_or(TrustError::Unsigned)?;
        if sig.algorithm != ALGORITHM {
            return Err(TrustError::Algorithm(
                sig.algorithm.chars().take(40).collect(),
            ));
        }
        let key_id: String = sig.key_id.chars().take(40).collect();
        let trusted = self
            .keys
            .iter()
            .find(|k| k.id == sig.key_id)
            .ok_or_else(|| TrustError::UnknownKey {
                key_id: key_id.clone(),
                list: self.path.clone(),
            })?;
        let mut bytes = [0u8; 64];
        if sig.value.len() != 128 || hex::decode_to_slice(&sig.value, &mut bytes).is_err() {
            return Err(TrustError::BadSignature { key_id });
        }
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        trusted
            .key
            .0
            .verify_strict(&canonical_bytes(manifest), &signature)
            .map_err(|_| TrustError::BadSignature { key_id })?;
        Ok(trusted)
    }
}

/// Where `kestrel keygen` puts keys by default: `$KESTREL_CONFIG_DIR`, else the user's config
/// directory (`~/.config/kestrel` on Linux).
pub fn default_key_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KESTREL_CONFIG_DIR") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|c| c.join("kestrel"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        crate::manifest::tests::sample()
    }

    #[test]
    fn sign_then_verify_after_a_round_trip_through_the_file() {
        let key = SecretKey::from_seed([7; 32]);
        let signed = key.sign_manifest(&manifest()).unwrap();
        let back = Manifest::from_json(&signed.to_json(), "m.json").unwrap();
        let list = TrustList::from_keys(vec![key.public()], "trust");
        assert_eq!(list.verify(&back).unwrap().id, key.id());
        assert_eq!(key.id().len(), 16);
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let key = SecretKey::from_seed([7; 32]);
        let other = SecretKey::from_seed([8; 32]);
        let list = TrustList::from_keys(vec![key.public()], "trust.txt");
        assert_eq!(list.verify(&manifest()), Err(TrustError::Unsigned));

        let by_other = other.sign_manifest(&manifest()).unwrap();
        let e = list.verify(&by_other).unwrap_err();
        assert!(matches!(&e, TrustError::UnknownKey { key_id, .. } if *key_id == other.id()));
        assert!(e.to_string().contains("trust.txt"), "{e}");

        let mut tampered = key.sign_manifest(&manifest()).unwrap();
        tampered.labels[0] = "cat".into();
        assert!(matches!(
            list.verify(&tampered),
            Err(TrustError::BadSignature { .. })
        ));
        // A signature copied from another manifest (same key id) is refused too.
        let mut forged = key.sign_manifest(&manifest()).unwrap();
        let mut sig = forged.signature.clone().unwrap();
        sig.value = hex::encode(other.key.sign(&canonical_bytes(&forged)).to_bytes());
        forged.signature = Some(sig.clone());
        assert!(matches!(
            list.verify(&forged),
            Err(TrustError::BadSignature { .. })
        ));
        sig.value = "zz".into();
        forged.signature = Some(sig.clone());
        assert!(matches!(
            list.verify(&forged),
            Err(TrustError::BadSignature { .. })
        ));
        sig.algorithm = "rsa".into();
        forged.signature = Some(sig);
        assert!(matches!(
            list.verify(&forged),
            Err(TrustError::Algorithm(_))
        ));
    }

    #[test]
    fn trust_lists_take_hex_and_base64_with_comments() {
        let a = SecretKey::from_seed([1; 32]).public();
        let b = SecretKey::from_seed([2; 32]).public();
        let b64 = base64::engine::general_purpose::STANDARD.encode(b.0.as_bytes());
        let text = format!(
            "# board trust list\n\n{}\ned25519:{b64} ci@builder\n",
            a.to_line("alice@laptop")
        );
        let list = TrustList::parse(&text, Path::new("t")).unwrap();
        assert_eq!(list.keys.len(), 2);
        assert_eq!(list.keys[0].comment, "alice@laptop");
        assert_eq!(list.keys[1].key, b);
        assert_eq!(list.keys[1].comment, "ci@builder");

        let e = TrustList::parse("ed25519:abc\n", Path::new("t")).unwrap_err();
        assert!(e.to_string().starts_with("t:1:"), "{e}");
        let e = TrustList::parse("\nssh-rsa AAAA x\n", Path::new("t")).unwrap_err();
        assert!(e.to_string().starts_with("t:2:"), "{e}");
    }

    #[test]
    fn key_files_round_trip_with_private_mode_and_no_silent_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("kestrel-sign-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(SECRET_KEY_FILE);
        let _ = std::fs::remove_file(&path);
        let key = SecretKey::generate().unwrap();
        key.write(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SecretKey::read(&path).unwrap().id(), key.id());
        assert!(matches!(
            SecretKey::generate().unwrap().write(&path, false),
            Err(SignError::Exists { .. })
        ));
        let other = SecretKey::generate().unwrap();
        assert_ne!(other.id(), key.id(), "keys are random");
        other.write(&path, true).unwrap();
        assert_eq!(SecretKey::read(&path).unwrap().id(), other.id());
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            SecretKey::read(&path),
            Err(SignError::Format { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
