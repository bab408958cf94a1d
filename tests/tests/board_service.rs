//! The board as a service: what `kestrel-edge` writes to the journal by default (its security
//! warnings, no colour codes) when started the way systemd starts it (no RUST_LOG, stderr a pipe).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kestrel_e2e::{bin, tiny_bundle};

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
