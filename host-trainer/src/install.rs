//! `kestrel install --board NAME --ssh USER@HOST[:PORT]`: from a fresh board to a running agent in
//! one command, and the same command again to upgrade in place.
//!
//! Steps, each one `ssh` command with the system OpenSSH client (so `~/.ssh/config`, keys and
//! `known_hosts` apply, like `kestrel deploy --ssh`):
//!
//! 1. the board's `kestrel-edge`: `--edge-bin PATH`, else the cross-built one in the target
//!    directory (the `board` profile: LTO, one codegen unit, stripped; then release, then debug),
//!    else built with [`board_build_args`] (`cargo build --profile board -p kestrel-edge
//!    --no-default-features --features board --target <board target>`: the board's I/O without
//!    an ONNX reader, the board runs the bundles' NNEF files) when run inside the workspace. The file must be an ELF for the
//!    board's machine (`e_machine` 183 for aarch64); `--allow-foreign-arch` skips that check (the
//!    tests install an x86 binary on a loopback "board").
//! 2. the install directories are created; the binary is streamed to a temporary name, its sha256
//!    is checked on the board (`sha256sum`), it is made mode 755, the previous binary is kept as
//!    `kestrel-edge.old` (manual rollback) and the new one is renamed over it atomically. An
//!    identical binary is not sent again.
//! 3. the host's public key (`kestrel keygen`) is appended to `<store_dir>/trust.txt` unless it is
//!    already listed (`--no-trust` installs an agent without a trust list, with a warning).
//! 4. the service user is created when missing (a system user without login; install stops with
//!    what to do when it cannot be created), and a systemd unit running `kestrel-edge agent` with
//!    the board's settings is written through a temporary file and a rename ([`unit_file`]:
//!    `Type=notify` with a watchdog, the board file's device groups that exist on the board,
//!    sandboxing).
//! 5. with systemd on the board (`/run/systemd/system` and `systemctl`), the unit is enabled and
//!    (re)started; without it, or with `--no-systemd` or `--prefix`, the unit is only written and
//!    the command that starts the agent by hand is printed.
//! 6. `--bundle DIR` is deployed with [`crate::deploy::ssh::deploy`] to the installed agent's store.
//!
//! `--prefix DIR` puts every path (binary, store, unit) under DIR on the board: for tests, or to
//! stage an image.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use kestrel_shared::Board;
use kestrel_shared::sign::{PUBLIC_KEY_FILE, PublicKey};
use sha2::{Digest, Sha256};

use crate::deploy::LocalBundle;
use crate::deploy::ssh::{self, SshOptions};
use crate::progress::Silent;

/// ELF `e_machine` of aarch64.
pub const EM_AARCH64: u16 = 183;
/// ELF `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// ELF `e_machine` of 32-bit ARM.
pub const EM_ARM: u16 = 40;

/// The name of the trust list in the board's store directory.
pub const TRUST_FILE: &str = "trust.txt";

/// `kestrel install` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel keygen                                          # once: bundles are signed, boards trust the key\n  kestrel install --board raspberry-pi-4 --ssh pi@shelf-cam-1 --source camera\n  kestrel install --board raspberry-pi-5 --ssh pi@trap-2 --bundle bundles/shelf-v1"
)]
pub struct InstallArgs {
    /// The board: a built-in name (`kestrel boards`) or a board file.
    #[arg(long)]
    pub board: String,
    /// USER@HOST[:PORT] of the board, reached with the system ssh client.
    #[arg(long)]
    pub ssh: String,
    /// Extra ssh option, repeatable: `Key=Value` becomes `-o Key=Value`; text starting with `-`
    /// is passed as it is (e.g. `--ssh-option='-i /path/key'`).
    #[arg(long = "ssh-option", allow_hyphen_values = true)]
    pub ssh_options: Vec<String>,
    /// What to install and how.
    #[command(flatten)]
    pub what: InstallOptions,
}

/// What `kestrel install` puts on a board and how (the same for every board of `kestrel fleet
/// install`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InstallOptions {
    /// The `kestrel-edge` binary to install (default: the cross-built one in the target directory,
    /// built if missing when run inside the workspace).
    #[arg(long)]
    pub edge_bin: Option<PathBuf>,
    /// Install a binary whose ELF machine is not the board's (it will not run on a real board;
    /// for tests against a loopback "board").
    #[arg(long)]
    pub allow_foreign_arch: bool,
    /// A bundle (from `kestrel export`) to deploy once the agent is installed.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// Root on the board under which every path goes (binary, store, unit); systemd is then not
    /// touched.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Write the unit but do not enable or start it.
    #[arg(long)]
    pub no_systemd: bool,
    /// Install without a trust list: the agent then accepts any bundle (warned).
    #[arg(long)]
    pub no_trust: bool,
    /// Run the detection loop in the agent on this source (e.g. `camera:0`), with the board's
    /// thread count.
    #[arg(long)]
    pub source: Option<String>,
}

/// Where everything goes on the board (the prefix applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePaths {
    /// The installed `kestrel-edge`.
    pub binary: String,
    /// The agent's store.
    pub store: String,
    /// The trust list in the store.
    pub trust: String,
    /// The systemd unit file.
    pub unit: String,
}

impl RemotePaths {
    /// The paths of `board`, under `prefix` when given.
    pub fn new(board: &Board, prefix: Option<&str>) -> Self {
        let under = |p: &Path| -> String {
            match prefix {
                Some(root) => format!(
                    "{}/{}",
                    root.trim_end_matches('/'),
                    p.display().to_string().trim_start_matches('/')
                ),
                None => p.display().to_string(),
            }
        };
        let store = under(&board.install.store_dir);
        RemotePaths {
            binary: under(&board.install.binary_path()),
            trust: format!("{store}/{TRUST_FILE}"),
            store,
            unit: under(&Path::new("/etc/systemd/system").join(board.install.unit_file_name())),
        }
    }
}

/// The ELF machine a Rust target triple runs on, when Kestrel knows it.
pub fn target_machine(target: &str) -> Option<u16> {
    let arch = target.split('-').next().unwrap_or_default();
    match arch {
        "aarch64" => Some(EM_AARCH64),
        "x86_64" => Some(EM_X86_64),
        a if a.starts_with("arm") || a.starts_with("thumb") => Some(EM_ARM),
        _ => None,
    }
}

/// The `e_machine` of the ELF file at `path`; an error if it is not an ELF file.
pub fn elf_machine(path: &Path) -> anyhow::Result<u16> {
    let mut head = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    if &head[..4] != b"\x7fELF" {
        bail!("{} is not an ELF executable", path.display());
    }
    Ok(match head[5] {
        2 => u16::from_be_bytes([head[18], head[19]]),
        _ => u16::from_le_bytes([head[18], head[19]]),
    })
}

/// The sha256 of a file, as hex.
pub fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// A word for the remote shell, single-quoted (the deploy's quoting).
pub use crate::deploy::ssh::quote as sh_quote;

/// A word of a systemd `ExecStart=` line: double-quoted when it needs to be, `%` doubled.
pub fn unit_word(word: &str) -> String {
    let w = word.replace('%', "%%");
    if w.is_empty() || w.contains(|c: char| c.is_whitespace() || "\"'\\;$".contains(c)) {
        format!(
            "\"{}\"",
            w.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "$$")
        )
    } else {
        w
    }
}

/// The agent's command line for `board` with these paths (`trust` when the list is installed).
pub fn agent_command(
    board: &Board,
    paths: &RemotePaths,
    trust: bool,
    source: Option<&str>,
) -> Vec<String> {
    let mut c = vec![
        paths.binary.clone(),
        "agent".into(),
        "--store".into(),
        paths.store.clone(),
    ];
    if trust {
        c.extend(["--trust".into(), paths.trust.clone()]);
    }
    c.extend([
        "--board".into(),
        board.name.clone(),
        "--serial".into(),
        board.serial.device.clone(),
        "--baud".into(),
        board.serial.baud.to_string(),
    ]);
    if let Some(s) = source {
        c.extend([
            "--source".into(),
            s.to_string(),
            "--threads".into(),
            board.threads.to_string(),
        ]);
    }
    c
}

/// Seconds systemd waits for the agent's watchdog notification before restarting it.
pub const WATCHDOG_SECS: u32 = 30;

/// What the unit says besides the board's settings.
#[derive(Debug, Clone, Default)]
pub struct UnitOptions {
    /// The trust list is installed (`--trust` in the agent's command).
    pub trust: bool,
    /// The detection loop's source, if the agent runs one.
    pub source: Option<String>,
    /// The board file's groups that exist on the board (the only ones the unit names).
    pub groups: Vec<String>,
}

/// The systemd unit that runs the agent: `Type=notify` with a watchdog (the agent notifies while
/// its loops turn), the board's memory limit, the service user with the device groups the board
/// has, the store as its only writable place, and the rest of the system read-only, devices
/// limited to the camera, serial port and GPIO chip.
pub fn unit_file(board: &Board, paths: &RemotePaths, opts: &UnitOptions) -> String {
    let exec: Vec<String> = agent_command(board, paths, opts.trust, opts.source.as_deref())
        .iter()
        .map(|w| unit_word(w))
        .collect();
    // The store: systemd creates and owns a state directory under /var/lib itself.
    let store = match paths.store.strip_prefix("/var/lib/") {
        Some(name) if !name.is_empty() && !name.contains("..") => format!(
            "StateDirectory={}\nStateDirectoryMode=0750\n",
            unit_word(name.trim_end_matches('/'))
        ),
        _ => format!("ReadWritePaths={}\n", unit_word(&paths.store)),
    };
    let groups = if opts.groups.is_empty() {
        "# none of the board file's device groups exists on the board\n".to_string()
    } else {
        format!("SupplementaryGroups={}\n", opts.groups.join(" "))
    };
    let mut devices = vec![
        "DeviceAllow=char-video4linux rw".to_string(),
        format!("DeviceAllow={} rw", unit_word(&board.serial.device)),
    ];
    if board.camera.driver == kestrel_shared::board::CameraDriver::Libcamera {
        // rpicam-vid (a child of the agent, in its cgroup) opens the media controller and
        // allocates frame buffers from the DMA heaps besides the video4linux nodes.
        devices.push("DeviceAllow=char-media rw".to_string());
        devices.push("DeviceAllow=char-dma_heap rw".to_string());
    }
    if let Some(g) = &board.gpio {
        devices.push(format!(
            "DeviceAllow={} rw",
            unit_word(&g.chip_path().display().to_string())
        ));
    }
    format!(
        "# Written by `kestrel install --board {name}`; rerunning it rewrites this file.\n\
         [Unit]\n\
         Description=Kestrel edge agent ({desc})\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         StartLimitIntervalSec=120\n\
         StartLimitBurst=10\n\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         ExecStart={exec}\n\
         # The agent notifies while its loop turns and the detection loop sees frames.\n\
         WatchdogSec={WATCHDOG_SECS}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         MemoryMax={mem}M\n\
         User={user}\n\
         # camera, GPIO line, serial port\n\
         {groups}\
         {store}\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectControlGroups=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         DevicePolicy=closed\n\
         {devices}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = board.name,
        desc = board.description.replace('\n', " "),
        exec = exec.join(" "),
        mem = board.memory_limit_mb,
        user = board.install.user,
        devices = devices.join("\n"),
    )
}

/// Runs shell scripts on the board over ssh.
struct Remote {
    program: String,
    target: String,
    options: Vec<String>,
}

impl Remote {
    fn command(&self, script: &str) -> anyhow::Result<Command> {
        let remote = format!("sh -c {}", sh_quote(script));
        Ok(crate::deploy::ssh::ssh_command(
            &self.program,
            &self.target,
            &self.options,
            &remote,
        )?)
    }

    /// Runs `script` (stdin: `input`, if any); its stdout, or an error with its stderr.
    fn run(&self, what: &str, script: &str, input: Option<&Path>) -> anyhow::Result<String> {
        let mut child = self
            .command(script)?
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("{what}: cannot run {}", self.program))?;
        let copied = match (input, child.stdin.take()) {
            (Some(path), Some(mut stdin)) => {
                let r = std::fs::File::open(path)
                    .and_then(|mut f| std::io::copy(&mut f, &mut stdin))
                    .and_then(|_| stdin.flush());
                drop(stdin);
                r.with_context(|| format!("{what}: sending {}", path.display()))
            }
            _ => Ok(()),
        };
        let out = child
            .wait_with_output()
            .with_context(|| format!("{what}: waiting for {}", self.program))?;
        if !out.status.success() {
            bail!(
                "{what} failed on {} ({}): {}",
                self.target,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        copied?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The workspace root above the current directory (a `Cargo.toml` beside `edge-runtime/`).
fn workspace_root() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .find(|d| d.join("Cargo.toml").is_file() && d.join("edge-runtime/Cargo.toml").is_file())
        .map(Path::to_path_buf)
}

/// The `kestrel-edge` to install for `board` (see the module documentation).
pub fn edge_binary(args: &InstallOptions, board: &Board) -> anyhow::Result<PathBuf> {
    let path = match &args.edge_bin {
        Some(p) => {
            if !p.is_file() {
                bail!("--edge-bin {}: no such file", p.display());
            }
            p.clone()
        }
        None => find_or_build(&board.target)?,
    };
    let machine = elf_machine(&path)?;
    match target_machine(&board.target) {
        Some(want) if want != machine && !args.allow_foreign_arch => bail!(
            "{} is an ELF for machine {machine}, but board {} runs {} (machine {want}): pass the \
             right binary with --edge-bin (or --allow-foreign-arch to install it anyway)",
            path.display(),
            board.name,
            board.target
        ),
        Some(want) if want != machine => eprintln!(
            "warning: {} (ELF machine {machine}) is not built for {} (machine {want}); installing it \
             anyway (--allow-foreign-arch)",
            path.display(),
            board.target
        ),
        _ => {}
    }
    Ok(path)
}

/// Cargo arguments of the board build: the `board` profile (LTO, one codegen unit, stripped,
/// panics unwind so a bad frame or file is an error, not a dead agent) and kestrel-edge without
/// its default features (no ONNX reader: boards run the bundles' NNEF files).
pub fn board_build_args(target: &str) -> Vec<String> {
    [
        "build",
        "--profile",
        "board",
        "-p",
        "kestrel-edge",
        "--no-default-features",
        "--features",
        "board",
        "--target",
        target,
    ]
    .map(String::from)
    .to_vec()
}

fn find_or_build(target: &str) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let target_dir = match (std::env::var_os("CARGO_TARGET_DIR"), &root) {
        (Some(d), _) => Some(PathBuf::from(d)),
        (None, Some(r)) => Some(r.join("target")),
        (None, None) => None,
    };
    if let Some(dir) = &target_dir {
        for profile in ["board", "release", "debug"] {
            let p = dir.join(target).join(profile).join("kestrel-edge");
            if p.is_file() {
                println!("using {}", p.display());
                return Ok(p);
            }
        }
    }
    let args = board_build_args(target);
    let command = format!("cargo {}", args.join(" "));
    let (Some(root), Some(dir)) = (root, target_dir) else {
        bail!(
            "no kestrel-edge for {target} found, and this is not the Kestrel workspace: build it \
             there with `{command}` (with the target's linker, see .cargo/config.toml) and pass it \
             with --edge-bin PATH"
        );
    };
    println!("building kestrel-edge for {target} ({command}: LTO, stripped, no ONNX reader)...");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(&args)
        .current_dir(&root)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!(
            "`{command}` failed ({status}): install the target (`rustup target add {target}`) and \
             its linker, or pass --edge-bin PATH"
        );
    }
    let p = dir.join(target).join("board").join("kestrel-edge");
    if !p.is_file() {
        bail!("cargo built, but {} is missing", p.display());
    }
    Ok(p)
}

/// The host's public key line (`kestrel keygen`), from the config directory.
pub fn host_public_key() -> anyhow::Result<(String, PublicKey)> {
    let dir = kestrel_shared::sign::default_key_dir()
        .context("no config directory (set $HOME or $KESTREL_CONFIG_DIR)")?;
    let path = dir.join(PUBLIC_KEY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no public key at {}: run `kestrel keygen` first (or pass --no-trust to install an \
             agent that accepts any bundle)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .with_context(|| format!("{} holds no key", path.display()))?
        .to_string();
    let word = line.split_whitespace().next().unwrap_or_default();
    let key = PublicKey::parse(word).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok((line, key))
}

/// What an install did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// sha256 of the installed binary.
    pub binary_sha256: String,
    /// Whether the binary was sent (false: the board already had these bytes).
    pub binary_sent: bool,
    /// The installed binary's path on the board.
    pub binary: String,
    /// The unit file's path on the board.
    pub unit: String,
    /// The trusted key's id (None with `--no-trust`).
    pub trust_key: Option<String>,
    /// What happened with systemd.
    pub systemd: String,
    /// The bundle deployed, if any.
    pub bundle: Option<String>,
}

/// `kestrel install`: see the module documentation.
pub fn run(args: &InstallArgs) -> anyhow::Result<InstallReport> {
    let board = Board::resolve(&args.board)?;
    if let Some(p) = &args.what.prefix
        && !p.starts_with('/')
    {
        bail!("--prefix {p:?}: must be an absolute path on the board");
    }
    let bundle = match &args.what.bundle {
        Some(dir) => Some(LocalBundle::open(dir, true)?),
        None => None,
    };
    let key = if args.what.no_trust {
        eprintln!(
            "warning: --no-trust: the agent gets no trust list and accepts any bundle, signed or not"
        );
        None
    } else {
        Some(host_public_key()?)
    };
    let bin = edge_binary(&args.what, &board)?;
    let sha = file_sha256(&bin)?;
    let paths = RemotePaths::new(&board, args.what.prefix.as_deref());
    let remote = Remote {
        program: std::env::var("KESTREL_SSH").unwrap_or_else(|_| "ssh".into()),
        target: args.ssh.clone(),
        options: args.ssh_options.clone(),
    };
    let q = |s: &str| sh_quote(s);
    let parent = |p: &str| {
        Path::new(p)
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "/".into())
    };
    // Without root (and outside a prefix), commands go through `sudo -n` when it works.
    let sudo = if args.what.prefix.is_some() {
        "S=;".to_string()
    } else {
        "if [ \"$(id -u)\" = 0 ]; then S=; elif sudo -n true 2>/dev/null; then S='sudo -n'; else S=; fi;".to_string()
    };

    // Directories and what the board has.
    let facts = remote.run(
        "preparing the board",
        &format!(
            "set -e; {sudo} command -v sha256sum >/dev/null || {{ echo 'sha256sum is missing on the board (coreutils)' >&2; exit 3; }}; \
             $S mkdir -p {bdir} {store} {udir}; \
             if [ -f {bin} ]; then echo \"sha=$(sha256sum {bin} | cut -d' ' -f1)\"; fi; \
             if id -u {user} >/dev/null 2>&1; then echo user=yes; else echo user=no; fi; \
             for g in {groups}; do if grep -q \"^$g:\" /etc/group; then echo \"group=$g\"; fi; done; \
             if test -d /run/systemd/system && command -v systemctl >/dev/null 2>&1; then echo systemd=yes; else echo systemd=no; fi",
            bdir = q(&parent(&paths.binary)),
            store = q(&paths.store),
            udir = q(&parent(&paths.unit)),
            bin = q(&paths.binary),
            user = q(&board.install.user),
            groups = board
                .install
                .groups
                .iter()
                .map(|g| q(g))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        None,
    )?;
    let fact = |k: &str| {
        facts
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::trim)
    };
    let mut user_exists = fact("user") == Some("yes");
    let has_systemd = fact("systemd") == Some("yes");
    let groups: Vec<String> = facts
        .lines()
        .filter_map(|l| l.strip_prefix("group="))
        .map(|g| g.trim().to_string())
        .collect();
    let missing_groups: Vec<&String> = board
        .install
        .groups
        .iter()
        .filter(|g| !groups.contains(g))
        .collect();
    if !missing_groups.is_empty() {
        println!(
            "note: the board has no group {:?}: the service gets only {:?}",
            missing_groups, groups
        );
    }

    // The service user: a system user without a login, its home the store.
    if !user_exists && args.what.prefix.is_none() {
        let user = &board.install.user;
        remote
            .run(
                "creating the service user",
                &format!(
                    "set -e; {sudo} if command -v useradd >/dev/null 2>&1; then \
                       $S useradd --system --no-create-home --home-dir {home} --shell /usr/sbin/nologin {u}; \
                     else $S adduser -S -D -H -h {home} {u}; fi",
                    home = q(&paths.store),
                    u = q(user),
                ),
                None,
            )
            .with_context(|| {
                format!(
                    "the service user {user:?} does not exist on the board and could not be \
                     created: run `kestrel install` as root or with passwordless sudo on the board, \
                     or create it there (`sudo useradd --system --no-create-home --shell \
                     /usr/sbin/nologin {user}`) and install again"
                )
            })?;
        println!("created the service user {user:?} on the board");
        user_exists = true;
    }

    // The binary: upload, check, keep the old one, rename over.
    let binary_sent = fact("sha") != Some(sha.as_str());
    if binary_sent {
        let tmp = format!("{}.new", paths.binary);
        remote.run(
            "uploading kestrel-edge",
            &format!(
                "set -e; {sudo} $S rm -f {t}; $S tee {t} >/dev/null",
                t = q(&tmp)
            ),
            Some(&bin),
        )?;
        remote.run(
            "installing kestrel-edge",
            &format!(
                "set -e; {sudo} got=$(sha256sum {t} | cut -d' ' -f1); \
                 if [ \"$got\" != {want} ]; then $S rm -f {t}; echo \"sha256 mismatch after upload: $got\" >&2; exit 3; fi; \
                 $S chmod 755 {t}; \
                 if [ -f {b} ]; then $S cp -p {b} {old}.tmp; $S mv -f {old}.tmp {old}; fi; \
                 $S mv -f {t} {b}",
                t = q(&tmp),
                want = q(&sha),
                b = q(&paths.binary),
                old = q(&format!("{}.old", paths.binary)),
            ),
            None,
        )?;
    }

    // The trust list.
    if let Some((line, _)) = &key {
        let word = line.split_whitespace().next().unwrap_or_default();
        remote.run(
            "updating the trust list",
            &format!(
                "set -e; {sudo} $S touch {f}; \
                 if ! grep -qF -- {w} {f}; then \
                   if [ -s {f} ] && [ -n \"$(tail -c1 {f})\" ]; then echo | $S tee -a {f} >/dev/null; fi; \
                   printf '%s\\n' {l} | $S tee -a {f} >/dev/null; fi",
                f = q(&paths.trust),
                w = q(word),
                l = q(line),
            ),
            None,
        )?;
    }
    // The store belongs to the service user (when it exists and we may chown).
    if user_exists && args.what.prefix.is_none() {
        remote.run(
            "giving the store to the service user",
            &format!(
                "{sudo} $S chown -R {u} {s} 2>/dev/null || true",
                u = q(&board.install.user),
                s = q(&paths.store)
            ),
            None,
        )?;
    }

    // The unit.
    let unit = unit_file(
        &board,
        &paths,
        &UnitOptions {
            trust: key.is_some(),
            source: args.what.source.clone(),
            groups,
        },
    );
    let unit_tmp = std::env::temp_dir().join(format!("kestrel-unit-{}", std::process::id()));
    std::fs::write(&unit_tmp, &unit).with_context(|| format!("writing {}", unit_tmp.display()))?;
    let written = remote.run(
        "writing the systemd unit",
        &format!(
            "set -e; {sudo} $S tee {t} >/dev/null; $S chmod 644 {t}; $S mv -f {t} {u}",
            t = q(&format!("{}.tmp", paths.unit)),
            u = q(&paths.unit),
        ),
        Some(&unit_tmp),
    );
    let _ = std::fs::remove_file(&unit_tmp);
    written?;

    // systemd.
    let service = board.install.unit_file_name();
    let by_hand = agent_command(&board, &paths, key.is_some(), args.what.source.as_deref())
        .iter()
        .map(|w| q(w))
        .collect::<Vec<_>>()
        .join(" ");
    let systemd = if !has_systemd {
        println!(
            "systemd was not found on the board: the unit {} was written but not started; start \
             the agent by hand with:\n  {by_hand}",
            paths.unit
        );
        "not found (unit written, not started)".to_string()
    } else if args.what.no_systemd || args.what.prefix.is_some() {
        let why = if args.what.no_systemd {
            "--no-systemd"
        } else {
            "--prefix (the unit is not in /etc/systemd/system)"
        };
        println!(
            "{why}: the unit {} was written but not enabled; start the agent with `systemctl \
             enable --now {service}` or by hand:\n  {by_hand}",
            paths.unit
        );
        format!("skipped ({why})")
    } else {
        let state = remote.run(
            "starting the service",
            &format!(
                "set -e; {sudo} $S systemctl daemon-reload; $S systemctl enable {s} >/dev/null 2>&1; \
                 $S systemctl restart {s}; sleep 1; systemctl is-active {s} || true",
                s = q(&service)
            ),
            None,
        )?;
        format!("{service} enabled, {}", state.trim())
    };
    if !user_exists {
        println!(
            "note: user {:?} does not exist on the board (--prefix: not created); the unit runs the \
             agent as that user: create it (`useradd --system --no-create-home --shell \
             /usr/sbin/nologin {}`) and `chown -R {} {}`",
            board.install.user, board.install.user, board.install.user, paths.store
        );
    }

    // The bundle.
    let deployed = match &bundle {
        Some(b) => {
            let mut opts = SshOptions::new(&args.ssh);
            opts.options = args.ssh_options.clone();
            opts.remote_bin = paths.binary.clone();
            opts.store = paths.store.clone();
            opts.trust = key.as_ref().map(|_| paths.trust.clone());
            let r = ssh::deploy(b, &opts, &Silent)
                .with_context(|| format!("deploying bundle {} to {}", b.id, args.ssh))?;
            println!(
                "bundle {}: sent {} payload bytes; board: {}",
                r.bundle, r.payload_bytes, r.message
            );
            Some(b.id.clone())
        }
        None => None,
    };

    let report = InstallReport {
        binary_sha256: sha,
        binary_sent,
        binary: paths.binary.clone(),
        unit: paths.unit.clone(),
        trust_key: key.as_ref().map(|(_, k)| k.id()),
        systemd,
        bundle: deployed,
    };
    println!("installed on {} ({}):", args.ssh, board.name);
    println!(
        "  binary   {} sha256 {}{}",
        report.binary,
        report.binary_sha256,
        if report.binary_sent {
            ""
        } else {
            " (unchanged, not sent)"
        }
    );
    println!("  unit     {}", report.unit);
    match &report.trust_key {
        Some(id) => println!("  trust    key {id} in {}", paths.trust),
        None => println!("  trust    none (--no-trust: any bundle is accepted)"),
    }
    println!("  systemd  {}", report.systemd);
    println!(
        "  bundle   {}",
        report.bundle.as_deref().unwrap_or("none deployed")
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_go_under_the_prefix_and_the_unit_has_the_board_settings() {
        let board = Board::builtin("raspberry-pi-4").unwrap();
        let p = RemotePaths::new(&board, Some("/tmp/x/"));
        assert_eq!(p.binary, "/tmp/x/usr/local/bin/kestrel-edge");
        assert_eq!(p.store, "/tmp/x/var/lib/kestrel");
        assert_eq!(p.trust, "/tmp/x/var/lib/kestrel/trust.txt");
        assert_eq!(p.unit, "/tmp/x/etc/systemd/system/kestrel-edge.service");
        let unit = unit_file(
            &board,
            &RemotePaths::new(&board, None),
            &UnitOptions {
                trust: true,
                source: Some("camera:0".into()),
                groups: vec!["video".into(), "dialout".into()],
            },
        );
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/kestrel-edge agent --store /var/lib/kestrel --trust \
             /var/lib/kestrel/trust.txt --board raspberry-pi-4 --serial /dev/serial0 --baud \
             115200 --source camera:0 --threads 3\n"
        ));
        assert!(unit.contains("MemoryMax=1024M\n"));
        assert!(unit.contains("User=kestrel\n"));
        assert!(
            unit.contains("SupplementaryGroups=video dialout\n"),
            "{unit}"
        );
        assert!(unit.contains("StateDirectory=kestrel\n"), "{unit}");
        assert!(unit.contains("Type=notify\n") && unit.contains("WatchdogSec=30\n"));
        assert!(unit.contains("DeviceAllow=/dev/serial0 rw\nDeviceAllow=/dev/gpiochip0 rw\n"));
        assert!(!unit.contains("char-media"), "{unit}");
        // A libcamera board also lets rpicam-vid reach the media controller and DMA heaps.
        let csi = Board::builtin("raspberry-pi-5-csi").unwrap();
        let unit = unit_file(&csi, &RemotePaths::new(&csi, None), &UnitOptions::default());
        assert!(
            unit.contains("DeviceAllow=char-media rw\nDeviceAllow=char-dma_heap rw\n"),
            "{unit}"
        );
        // Outside /var/lib the store is named writable instead.
        let staged = unit_file(&board, &p, &UnitOptions::default());
        assert!(
            staged.contains("ReadWritePaths=/tmp/x/var/lib/kestrel\n"),
            "{staged}"
        );
        assert!(!staged.contains("SupplementaryGroups"), "{staged}");
    }

    #[test]
    fn words_are_quoted() {
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(unit_word("/a b/%c"), "\"/a b/%%c\"");
        assert_eq!(unit_word("/plain"), "/plain");
        assert_eq!(
            target_machine("aarch64-unknown-linux-gnu"),
            Some(EM_AARCH64)
        );
        assert_eq!(
            target_machine("armv7-unknown-linux-gnueabihf"),
            Some(EM_ARM)
        );
    }
}
