//! The board as a service: what `kestrel-edge` writes to the journal by default (its security
//! warnings, no colour codes) when started the way systemd starts it (no RUST_LOG, stderr a pipe),
//! the unit `kestrel install` writes (checked by `systemd-analyze verify`), and the agent's
//! notifications to systemd (ready, then the watchdog).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kestrel_e2e::{assert_systemd_accepts, bin, tiny_bundle};

/// Runs `cmd` with stderr piped and RUST_LOG unset until a stderr line contains `wanted` (or
/// `limit` passes, or the process ends), then kills it; returns all stderr read.
fn stderr_until(cmd: &mut Command, wanted: &str, limit: Duration) -> String {
    let mut child = cmd
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < limit {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
                if line.contains(wanted) {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    text
}

fn assert_plain(log: &str) {
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log that is not a terminal:\n{log:?}"
    );
}

#[test]
fn an_agent_without_a_trust_list_says_so_at_start_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let log = stderr_until(
        Command::new(bin("kestrel-edge"))
            .args(["agent", "--store"])
            .arg(tmp.path().join("store")),
        "no trust list",
        Duration::from_secs(20),
    );
    println!("{log}");
    assert!(log.contains("WARN"), "{log}");
    assert!(
        log.contains("no trust list (--trust FILE): this agent accepts bundles signed by anyone"),
        "{log}"
    );
    assert_plain(&log);
}

#[test]
fn a_live_view_open_to_the_network_without_a_token_is_warned_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    tiny_bundle(&bundle, 1, 1);
    let pictures = tmp.path().join("pictures");
    std::fs::create_dir_all(&pictures).unwrap();
    for i in 0..3u8 {
        image::RgbImage::from_pixel(32, 24, image::Rgb([40 * i, 90, 200]))
            .save(pictures.join(format!("{i}.png")))
            .unwrap();
    }
    let log = stderr_until(
        Command::new(bin("kestrel-edge"))
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg("--source")
            .arg(format!("dir:{}", pictures.display()))
            .args(["--http", "0.0.0.0:0", "--loop"]),
        "without a token",
        Duration::from_secs(30),
    );
    println!("{log}");
    assert!(
        log.contains("WARN") && log.contains("is reachable from the network without a token"),
        "{log}"
    );
    assert_plain(&log);
}

/// The groups of `wanted` that this machine's /etc/group lists (what install keeps on a board).
fn existing_groups(wanted: &[String]) -> Vec<String> {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    wanted
        .iter()
        .filter(|g| groups.lines().any(|l| l.starts_with(&format!("{g}:"))))
        .cloned()
        .collect()
}

#[test]
fn systemd_accepts_the_unit_of_every_builtin_board() {
    use kestrel_trainer::install::{RemotePaths, UnitOptions, unit_file};
    let tmp = tempfile::tempdir().unwrap();
    for board in kestrel_shared::board::load_builtin_boards().unwrap() {
        let mut paths = RemotePaths::new(&board, None);
        // verify wants ExecStart's program to exist: the x86 build stands in for the board's.
        paths.binary = bin("kestrel-edge").display().to_string();
        let opts = UnitOptions {
            trust: true,
            source: Some("camera:0".into()),
            groups: existing_groups(&board.install.groups),
        };
        let unit = unit_file(&board, &paths, &opts);
        for line in [
            "Type=notify\n",
            "WatchdogSec=30\n",
            "StateDirectory=kestrel\n",
            "NoNewPrivileges=yes\n",
            "ProtectSystem=strict\n",
            "ProtectHome=yes\n",
            "PrivateTmp=yes\n",
            "DevicePolicy=closed\n",
        ] {
            assert!(
                unit.contains(line),
                "{}: {line:?} missing\n{unit}",
                board.name
            );
        }
        let dir = tmp.path().join(&board.name);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(board.install.unit_file_name());
        std::fs::write(&file, &unit).unwrap();
        assert_systemd_accepts(&file);
    }
}

/// Under systemd (`NOTIFY_SOCKET`, `WATCHDOG_USEC`) the agent says READY=1 once it serves, then
/// WATCHDOG=1 several times per period.
#[test]
fn the_agent_notifies_systemd_ready_then_feeds_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().unwrap();
    let socket_path = tmp.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = Command::new(bin("kestrel-edge"))
        .args(["agent", "--store"])
        .arg(tmp.path().join("store"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while got.iter().filter(|m| *m == "WATCHDOG=1").count() < 3 {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "no notification after {:?} ({e}); got {got:?}",
                    start.elapsed()
                );
            }
        };
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let elapsed = start.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    println!("notifications: {got:?} in {elapsed:?}");
    assert_eq!(got[0], "READY=1", "{got:?}");
    assert!(got[1..].iter().all(|m| m == "WATCHDOG=1"), "{got:?}");
}
