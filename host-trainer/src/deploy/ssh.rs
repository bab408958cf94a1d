//! `kestrel deploy BUNDLE --ssh USER@HOST[:PORT]`: the same deploy over the system OpenSSH client,
//! so `~/.ssh/config`, keys, the agent and `known_hosts` behave as the user expects.
//!
//! Every step is one `ssh` command running `kestrel-edge store ...` on the board:
//! `list --json` (which blobs it has, and how far cut uploads got), `put-blob SHA --size N
//! --offset K` per missing blob with the rest of the file on standard input (appended to the
//! store's partial upload, as over serial, and checked against its sha256 before it becomes a
//! blob; a cut upload keeps its bytes and the next deploy resumes there), and `install` (the same
//! validated, atomic install as over serial). A running agent notices the new `current` within a
//! second and switches its loop to it. [`SshBoard`] is this link as a [`BoardLink`].

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};

use kestrel_shared::listing::StoreListing;
use kestrel_shared::wire::Sha256;

use super::link::{BoardLink, BoardStatus, InstallRequest, LineBytes};
use super::{BlobReport, DeployError, DeployReport, LocalBundle, LocalFile};
use crate::progress::Progress;

/// Where and how to reach the board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    /// `USER@HOST[:PORT]` (or a `Host` alias of `~/.ssh/config`).
    pub target: String,
    /// Extra options: `Key=Value` is passed as `-o Key=Value`; anything starting with `-` is
    /// passed as it is (split at spaces, e.g. `-i /path/key`).
    pub options: Vec<String>,
    /// `kestrel-edge` on the board (a path, or a name on the remote PATH).
    pub remote_bin: String,
    /// The agent's store on the board.
    pub store: String,
    /// A trust list on the board the install must satisfy (the agent checks its own as well).
    pub trust: Option<String>,
    /// Ask the board to accept a bundle older than its current one.
    pub allow_downgrade: bool,
    /// The ssh program (`ssh` unless `KESTREL_SSH` says otherwise).
    pub program: String,
}

/// `PROGRAM [-p PORT] [-o OPTION]... -- DEST REMOTE`: the system ssh running the shell command
/// `remote` on `target` (`USER@HOST[:PORT]`); options starting with `-` are passed as they are,
/// others become `-o OPTION`.
pub fn ssh_command(
    program: &str,
    target: &str,
    options: &[String],
    remote: &str,
) -> Result<Command, DeployError> {
    let (dest, port) = parse_target(target)?;
    let mut c = Command::new(program);
    if let Some(p) = port {
        c.arg("-p").arg(p.to_string());
    }
    for o in options {
        if o.starts_with('-') {
            c.args(o.split_whitespace());
        } else {
            c.arg("-o").arg(o);
        }
    }
    c.arg("--").arg(dest).arg(remote);
    Ok(c)
}

impl SshOptions {
    /// Options for `target` with the defaults: `kestrel-edge` on the remote PATH, the store in
    /// `/var/lib/kestrel` (the board files' default).
    pub fn new(target: &str) -> Self {
        SshOptions {
            target: target.to_string(),
            options: Vec::new(),
            remote_bin: "kestrel-edge".into(),
            store: "/var/lib/kestrel".into(),
            trust: None,
            allow_downgrade: false,
            program: std::env::var("KESTREL_SSH").unwrap_or_else(|_| "ssh".into()),
        }
    }
}

/// Splits `USER@HOST[:PORT]` into the ssh destination and the port (`[v6]:port` works too).
pub fn parse_target(target: &str) -> Result<(String, Option<u16>), DeployError> {
    let bad = |reason: &str| DeployError::Ssh {
        what: "target".into(),
        detail: format!("{target:?}: {reason}; expected USER@HOST[:PORT]"),
    };
    if target.is_empty() || target.starts_with('-') || target.contains(char::is_whitespace) {
        return Err(bad("not a host"));
    }
    let (user, host) = match target.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, target),
    };
    let (host, port) = if let Some(rest) = host.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad("bad port"))?),
            None if after.is_empty() => None,
            None => return Err(bad("junk after ]")),
        };
        (h.to_string(), port)
    } else if host.matches(':').count() == 1 {
        let (h, p) = host.split_once(':').expect("one colon");
        (h.to_string(), Some(p.parse().map_err(|_| bad("bad port"))?))
    } else {
        (host.to_string(), None)
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((
        match user {
            Some(u) => format!("{u}@{host}"),
            None => host,
        },
        port,
    ))
}

/// A word for the remote shell, single-quoted.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn ssh_err(what: &str, detail: String) -> DeployError {
    DeployError::Ssh {
        what: what.into(),
        detail,
    }
}

impl SshOptions {
    /// The ssh command running `kestrel-edge SUB --store DIR ARGS...` on the board.
    fn edge_command(&self, sub: &str, args: &[&str]) -> Result<Command, DeployError> {
        let mut remote = vec![quote(&self.remote_bin), sub.into(), "--store".into()];
        remote.push(quote(&self.store));
        remote.extend(args.iter().map(|a| quote(a)));
        ssh_command(
            &self.program,
            &self.target,
            &self.options,
            &remote.join(" "),
        )
    }

    /// The ssh command running `kestrel-edge watch --store DIR ARGS...` on the board: the
    /// agent's detections as JSON lines on its stdout.
    pub fn watch_command(&self, args: &[&str]) -> Result<Command, DeployError> {
        self.edge_command("watch", args)
    }

    /// The ssh command running `kestrel-edge store --store DIR ARGS...` on the board.
    pub fn store_command(&self, args: &[&str]) -> Result<Command, DeployError> {
        self.edge_command("store", args)
    }

    /// Runs a store command; its stdout on success, else an error with its stderr.
    fn run(&self, what: &str, args: &[&str]) -> Result<String, DeployError> {
        let out = self
            .store_command(args)?
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ssh_err(what, format!("cannot run {}: {e}", self.program)))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        // 255 is ssh's own failure (the remote command's status otherwise).
        if out.status.code() == Some(255) {
            return Err(DeployError::Unreachable {
                target: self.target.clone(),
                detail: stderr,
            });
        }
        if !out.status.success() {
            return Err(ssh_err(what, format!("{}: {stderr}", out.status)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Streams `file` from byte `offset` into `put-blob` on the board; returns the bytes sent.
    fn put_blob(
        &self,
        file: &LocalFile,
        offset: u64,
        progress: &dyn Progress,
    ) -> Result<u64, DeployError> {
        let sha = file.sha256.to_hex();
        let what = format!("upload of {}", file.name);
        let (size, from) = (file.size.to_string(), offset.to_string());
        let mut child = self
            .store_command(&["put-blob", &sha, "--size", &size, "--offset", &from])?
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ssh_err(&what, format!("cannot run {}: {e}", self.program)))?;
        let task = progress.start(&file.name, Some(file.size));
        task.advance(offset);
        let bad = |e: std::io::Error| DeployError::Bundle {
            path: file.path.clone(),
            reason: e.to_string(),
        };
        let mut input = std::fs::File::open(&file.path).map_err(bad)?;
        input.seek(SeekFrom::Start(offset)).map_err(bad)?;
        // Never more than the manifest's size: the board refuses a longer upload anyway.
        let mut input = input.take(file.size.saturating_sub(offset));
        let mut stdin = child.stdin.take().expect("piped");
        let mut buf = vec![0u8; 1 << 16];
        let mut sent = 0u64;
        let copied: std::io::Result<()> = (|| {
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                stdin.write_all(&buf[..n])?;
                sent += n as u64;
                task.advance(n as u64);
            }
        })();
        drop(stdin);
        task.finish();
        let out = child
            .wait_with_output()
            .map_err(|e| ssh_err(&what, e.to_string()))?;
        if !out.status.success() {
            return Err(ssh_err(
                &what,
                format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        copied.map_err(|e| ssh_err(&what, e.to_string()))?;
        Ok(sent)
    }

    /// The board's store listing.
    pub fn listing(&self) -> Result<StoreListing, DeployError> {
        let text = self.run("store list", &["list", "--json"])?;
        StoreListing::from_json(&text).map_err(|e| {
            ssh_err("store list", format!("the board's answer is not a store listing ({e}): is --remote-bin a kestrel-edge of this version?"))
        })
    }

    /// Blob hashes the board's store holds.
    pub fn remote_blobs(&self) -> Result<Vec<String>, DeployError> {
        Ok(self.listing()?.blobs)
    }
}

/// The board over SSH as a [`BoardLink`]: each request is one ssh command; where a cut upload
/// stands comes from the last listing.
pub struct SshBoard {
    opts: SshOptions,
    partial: BTreeMap<Sha256, u64>,
    bytes: LineBytes,
}

impl SshBoard {
    /// The board `opts` names.
    pub fn new(opts: SshOptions) -> Self {
        SshBoard {
            opts,
            partial: BTreeMap::new(),
            bytes: LineBytes::default(),
        }
    }
}

/// A hex hash of a listing as a [`Sha256`]; a malformed one is the board's error.
fn parse_hash(hex: &str) -> Result<Sha256, DeployError> {
    Sha256::from_hex(hex).map_err(|e| ssh_err("store list", format!("blob {hex:?}: {e}")))
}

impl BoardLink for SshBoard {
    fn describe(&self) -> String {
        format!("ssh {}", self.opts.target)
    }

    fn status(&mut self) -> Result<BoardStatus, DeployError> {
        let l = self.opts.listing()?;
        self.partial = l
            .partial
            .iter()
            .map(|(h, &n)| Ok((parse_hash(h)?, n)))
            .collect::<Result<_, DeployError>>()?;
        Ok(BoardStatus {
            kestrel_version: l.kestrel_version,
            current: l.current,
            bundles: l.bundles.into_iter().map(|b| b.id).collect(),
            free_bytes: l.free_bytes,
            blobs: l
                .blobs
                .iter()
                .map(|h| parse_hash(h))
                .collect::<Result<_, _>>()?,
            blobs_complete: true,
            partial: self.partial.clone(),
            ..Default::default()
        })
    }

    fn put_blob(
        &mut self,
        file: &LocalFile,
        progress: &dyn Progress,
    ) -> Result<BlobReport, DeployError> {
        let offset = self
            .partial
            .get(&file.sha256)
            .copied()
            .filter(|&o| o <= file.size)
            .unwrap_or(0);
        let sent = self.opts.put_blob(file, offset, progress)?;
        self.partial.remove(&file.sha256);
        self.bytes.out += sent;
        Ok(BlobReport {
            name: file.name.clone(),
            size: file.size,
            start_offset: offset,
            bytes_sent: sent,
        })
    }

    fn install(&mut self, request: &InstallRequest) -> Result<String, DeployError> {
        let sha = request.manifest.to_hex();
        let mut args = vec!["install", "--id", &request.id, "--manifest", &sha];
        if let Some(t) = &self.opts.trust {
            args.extend(["--trust", t.as_str()]);
        }
        if request.allow_downgrade {
            args.push("--allow-downgrade");
        }
        let message = self.opts.run("install", &args).map_err(|e| match e {
            DeployError::Ssh { detail, .. } => DeployError::Refused(detail),
            other => other,
        })?;
        Ok(message.trim().to_string())
    }

    fn rollback(&mut self) -> Result<String, DeployError> {
        Ok(self.opts.run("rollback", &["rollback"])?.trim().to_string())
    }

    fn line_bytes(&self) -> LineBytes {
        self.bytes
    }
}

/// Deploys `bundle` over SSH: see the module documentation.
pub fn deploy(
    bundle: &LocalBundle,
    opts: &SshOptions,
    progress: &dyn Progress,
) -> Result<DeployReport, DeployError> {
    let mut board = SshBoard::new(opts.clone());
    super::link::deploy(&mut board, bundle, opts.allow_downgrade, progress)
}

/// `kestrel rollback --ssh`: moves the board's `current` back one bundle.
pub fn rollback(opts: &SshOptions) -> Result<String, DeployError> {
    SshBoard::new(opts.clone()).rollback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let p = |s| parse_target(s).unwrap();
        assert_eq!(p("pi@board"), ("pi@board".into(), None));
        assert_eq!(p("pi@board:2222"), ("pi@board".into(), Some(2222)));
        assert_eq!(p("board"), ("board".into(), None));
        assert_eq!(p("root@[::1]:22"), ("root@::1".into(), Some(22)));
        assert_eq!(p("root@fe80::1"), ("root@fe80::1".into(), None));
        for bad in ["", "-oProxyCommand=x", "a b", "pi@board:x", "pi@"] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn remote_words_are_quoted() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        let mut o = SshOptions::new("pi@board:2200");
        o.options = vec!["StrictHostKeyChecking=no".into(), "-i /k".into()];
        o.store = "/var/lib/kestrel store".into();
        let c = o.store_command(&["list", "--json"]).unwrap();
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "-p",
                "2200",
                "-o",
                "StrictHostKeyChecking=no",
                "-i",
                "/k",
                "--",
                "pi@board",
                "'kestrel-edge' store --store '/var/lib/kestrel store' 'list' '--json'"
            ]
        );
    }
}
