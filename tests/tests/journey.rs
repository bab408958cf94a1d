//! The whole path a user takes, with the real binaries: pictures -> a trained detector -> a
//! signed int8 bundle -> deployed over a serial line to a running agent (a separate process, with
//! a trust list and a replay of held-out scenes as its camera) -> detections coming back as
//! telemetry -> their mAP@0.5 on the host, against what the bundle measured before it travelled.
//!
//! The serial cable is two pseudo-terminal pairs joined by a thread (a null modem): the agent
//! opens one slave, `kestrel deploy` and `kestrel monitor` open the other, as they would open
//! /dev/ttyUSB0.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kestrel_e2e::{bin, kestrel, loopback_ssh_options, run_ok, ssh_user, start_sshd};
use kestrel_shared::detect::Detection;
use kestrel_shared::transport::{TTYPort, Transport, pty_pair};
use kestrel_trainer::deploy::serial::MonitorLine;
use kestrel_trainer::eval::{EvalInput, evaluate};

/// Copies bytes both ways between two pty masters until `stop`.
fn null_modem(a: TTYPort, b: TTYPort, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let pump = |mut from: TTYPort, mut to: TTYPort, stop: Arc<AtomicBool>| {
        std::thread::spawn(move || {
            let _ = serialport::SerialPort::set_timeout(&mut from, Duration::from_millis(20));
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                match from.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        // Nobody on the other end yet: the bytes are lost, as on a real line.
                        let _ = to.write_all(&buf[..n]);
                    }
                    // Timed out, or no one has the slave open (EIO): wait and look again.
                    _ => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })
    };
    let (a2, b2) = (a.try_clone_native().unwrap(), b.try_clone_native().unwrap());
    vec![pump(a, b, stop.clone()), pump(b2, a2, stop)]
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the first steps leave: scenes, a trained detector's signed int8 bundle, the key and a
/// trust list for the board.
struct Trained {
    cache: PathBuf,
    data: PathBuf,
    keys: PathBuf,
    trust: PathBuf,
    bundle: PathBuf,
    id: String,
    manifest: serde_json::Value,
}

const SIZE: [&str; 4] = ["--width", "160", "--height", "120"];

/// Synthetic scenes -> `kestrel train detect` -> `kestrel keygen` -> a signed `kestrel export`.
fn trained_detector(tmp: &Path) -> Trained {
    let cache = tmp.join("cache");
    let data = tmp.join("data");
    run_ok(
        kestrel(&cache)
            .args(["synth", "detect", "--preset", "multi", "--seed", "3"])
            .args(["--count", "200", "--val-count", "31"])
            .args(SIZE)
            .arg("--out")
            .arg(&data),
    );
    let run = tmp.join("run");
    run_ok(
        kestrel(&cache)
            .args(["train", "detect", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .args([
                "--head",
                "grid",
                "--objectness",
                "iou",
                "--shift-cells",
                "1",
            ])
            .args(["--lr-schedule", "cosine", "--epochs", "30"])
            // The board reports what scores at least this; the bundle's own mAP is measured from
            // the same threshold (the AP threshold), so the two numbers can be compared.
            .args(["--patience", "0", "--score-threshold", "0.05"])
            .args(SIZE),
    );
    // A release key, and the board's trust list holding its public half.
    let keys = tmp.join("keys");
    let (out, _) = run_ok(kestrel(&cache).arg("keygen").arg("--out").arg(&keys));
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("trust line for the board: "))
        .unwrap_or_else(|| panic!("no trust line: {out}"));
    let trust = tmp.join("trust");
    std::fs::write(&trust, format!("{line}\n")).unwrap();
    let bundle = tmp.join("bundle");
    run_ok(
        kestrel(&cache)
            .arg("export")
            .arg(&run)
            .arg("--out")
            .arg(&bundle)
            .args(["--quantize", "all", "--sign"])
            .arg(keys.join("kestrel.key")),
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("manifest.json")).unwrap())
            .unwrap();
    let id = kestrel_trainer::deploy::LocalBundle::open(&bundle, true)
        .unwrap()
        .id;
    assert!(
        manifest["signature"].is_object(),
        "a signed bundle: {manifest}"
    );

    Trained {
        cache,
        data,
        keys,
        trust,
        bundle,
        id,
        manifest,
    }
}

/// The mAP@0.5 of the detections in monitor `lines` of bundle `id` (frame i shows picture i mod n
/// of the held-out scenes, in name order), the pictures that came back of n, and the last fps.
fn board_map(lines: &str, id: &str, t: &Trained) -> (f64, usize, usize, f64) {
    let dataset = kestrel_trainer::data::annotations::load_with(&t.data, None, false).unwrap();
    let mut val = dataset.val.clone();
    val.sort_by(|a, b| a.path.cmp(&b.path));
    let n = val.len();
    let mut seen: Vec<Option<Vec<Detection>>> = vec![None; n];
    let mut fps = 0.0f64;
    for l in lines.lines() {
        let m: MonitorLine = serde_json::from_str(l).unwrap();
        if m.bundle.as_deref() != Some(id) || m.frame == 0 {
            continue; // before the install, or a heartbeat
        }
        fps = f64::from(m.fps);
        seen[(m.frame % n as u64) as usize].get_or_insert(m.detections);
    }
    let covered: Vec<usize> = (0..n).filter(|&i| seen[i].is_some()).collect();
    let truth: Vec<Vec<_>> = covered.iter().map(|&i| val[i].objects.clone()).collect();
    let ignored: Vec<Vec<_>> = covered.iter().map(|&i| val[i].ignored.clone()).collect();
    let dets: Vec<Vec<Detection>> = covered.iter().map(|&i| seen[i].clone().unwrap()).collect();
    let map50 = if covered.is_empty() {
        0.0
    } else {
        evaluate(
            &EvalInput {
                ground_truth: &truth,
                ignored: &ignored,
                detections: &dets,
                classes: t.manifest["labels"].as_array().unwrap().len(),
            },
            0.0,
        )
        .unwrap()
        .map50
    };
    (map50, covered.len(), n, fps)
}

/// The board's mAP against the bundle's own, measured before it travelled.
fn assert_same_map(lines: &str, t: &Trained, link: &str) {
    let (map50, covered, n, fps) = board_map(lines, &t.id, t);
    let before = t.manifest["metrics"]["bundle"]["map50"].as_f64().unwrap();
    println!(
        "board over {link}: mAP@0.5 {map50:.3} on {covered} of {n} pictures at {fps:.1} fps; the bundle before deploying: {before:.3}"
    );
    assert!(
        covered * 10 >= n * 9,
        "only {covered} of {n} pictures came back over {link}:\n{lines}"
    );
    assert!(
        before > 0.05,
        "a detector that finds nothing proves nothing"
    );
    assert!(
        (map50 - before).abs() <= 0.05,
        "board {map50} vs bundle {before} over {link}"
    );
}

/// A board on the far end of a serial line: an agent process (`program` and the arguments before
/// `agent`: the x86 binary, or the aarch64 one under qemu) on one pty pair, with a trust list and
/// a replay of the held-out scenes as its camera, joined by a null modem to the pty the host
/// opens.
struct SerialBoard {
    agent: Agent,
    host_tty: String,
    stop: Arc<AtomicBool>,
    pumps: Vec<std::thread::JoinHandle<()>>,
}

impl SerialBoard {
    fn start(t: &Trained, store: &Path, mut program: Command) -> SerialBoard {
        let val_dir = t.data.join("images/val");
        let (agent_master, agent_slave) = pty_pair().unwrap();
        let (host_master, host_slave) = pty_pair().unwrap();
        let (agent_tty, host_tty) = (agent_slave.describe(), host_slave.describe());
        drop((agent_slave, host_slave));
        let stop = Arc::new(AtomicBool::new(false));
        let pumps = null_modem(agent_master, host_master, stop.clone());
        let agent = Agent(
            program
                .args(["agent", "--store"])
                .arg(store)
                .args(["--serial", &agent_tty, "--trust"])
                .arg(&t.trust)
                .arg("--source")
                .arg(format!("dir:{}", val_dir.display()))
                .args(["--fps", "4", "--loop", "--threads", "1"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        SerialBoard {
            agent,
            host_tty,
            stop,
            pumps,
        }
    }

    /// `kestrel deploy BUNDLE --serial` (retrying while the agent starts, up to `patience`): its
    /// JSON report.
    fn deploy(&self, t: &Trained, bundle: &Path, patience: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let out = kestrel(&t.cache)
                .arg("deploy")
                .arg(bundle)
                .args(["--serial", &self.host_tty, "--json"])
                .output()
                .unwrap();
            if out.status.success() {
                break serde_json::from_slice(&out.stdout).unwrap();
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(start.elapsed() < patience, "deploy: {err}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `kestrel monitor --serial` for `seconds`: the telemetry lines.
    fn monitor(&self, t: &Trained, seconds: u32) -> String {
        let (lines, _) = run_ok(
            kestrel(&t.cache)
                .args(["monitor", "--serial", &self.host_tty, "--seconds"])
                .arg(seconds.to_string())
                .args(["--count", "400"])
                .env("RUST_LOG", "warn"),
        );
        lines
    }
}

impl Drop for SerialBoard {
    fn drop(&mut self) {
        let _ = self.agent.0.kill();
        self.stop.store(true, Ordering::SeqCst);
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
    }
}

#[test]
fn pictures_to_a_deployed_detector_whose_detections_come_back_over_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let t = trained_detector(tmp.path());
    let Trained {
        cache,
        data,
        keys,
        bundle,
        ..
    } = &t;
    let mut board = SerialBoard::start(
        &t,
        &tmp.path().join("store"),
        Command::new(bin("kestrel-edge")),
    );

    // The user deploys over the line (retrying while the agent starts), then listens.
    let deploy = |bundle: &Path| board.deploy(&t, bundle, Duration::from_secs(30));
    let report = deploy(bundle);
    println!("deploy: {report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap()
            .contains("signature verified"),
        "{report}"
    );
    let lines = board.monitor(&t, 20);
    assert_same_map(&lines, &t, "serial");

    // Retrain the head only (another seed, the same trunk) and deploy again: only the head and
    // the manifest cross the line, and the running agent switches between two frames.
    let run2 = tmp.path().join("run2");
    run_ok(
        kestrel(cache)
            .args(["train", "detect", "--data"])
            .arg(data)
            .arg("--out")
            .arg(&run2)
            .args(["--head", "grid", "--seed", "1", "--epochs", "5"])
            .args(["--score-threshold", "0.05"])
            .args(SIZE),
    );
    let bundle2 = tmp.path().join("bundle2");
    run_ok(
        kestrel(cache)
            .arg("export")
            .arg(&run2)
            .arg("--out")
            .arg(&bundle2)
            .args(["--quantize", "all", "--sign"])
            .arg(keys.join("kestrel.key")),
    );
    let id2 = kestrel_trainer::deploy::LocalBundle::open(&bundle2, true)
        .unwrap()
        .id;
    let last_frame = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|t| t["frame"].as_u64())
        .max()
        .unwrap();
    let report2 = deploy(&bundle2);
    println!("retrained head: {report2}");
    let sent = |name: &str| {
        report2["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .map_or(0, |b| b["bytes_sent"].as_u64().unwrap())
    };
    assert_eq!(
        sent("trunk.nnef.tar"),
        0,
        "the board has the trunk: {report2}"
    );
    assert!(
        sent("head.nnef.tar") > 0 && sent("manifest.json") > 0,
        "{report2}"
    );
    let lines2 = board.monitor(&t, 4);
    assert!(
        board.agent.0.try_wait().unwrap().is_none(),
        "the agent kept running through the switch"
    );
    let frames2: Vec<u64> = lines2
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|t| t["bundle"].as_str() == Some(id2.as_str()))
        .filter_map(|t| t["frame"].as_u64())
        .collect();
    assert!(!frames2.is_empty(), "no frame of {id2}:\n{lines2}");
    assert!(
        frames2.iter().all(|&f| f > last_frame),
        "the frame count goes on ({last_frame} before): {frames2:?}"
    );
}

/// Classification, as a user runs it: an ImageFolder -> `kestrel train classify` -> `kestrel
/// export` -> `kestrel-edge run --source dir:` on the board's side; every picture gets the label
/// `kestrel predict --run` gives it on the host, with the same probability up to the int8 head.
#[test]
fn pictures_to_a_classifier_that_predicts_on_the_board_as_on_the_host() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let data = tmp.path().join("data");
    run_ok(
        kestrel(&cache)
            .args([
                "synth",
                "classify",
                "--per-class",
                "8",
                "--size",
                "64",
                "--seed",
                "9",
            ])
            .arg("--out")
            .arg(&data),
    );
    let run = tmp.path().join("run");
    run_ok(
        kestrel(&cache)
            .args(["train", "classify", "--epochs", "10", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&run),
    );
    let bundle = tmp.path().join("bundle");
    run_ok(
        kestrel(&cache)
            .arg("export")
            .arg(&run)
            .arg("--out")
            .arg(&bundle)
            .arg("--no-sign"),
    );
    // The pictures the board's camera would see, in one folder.
    let pics = tmp.path().join("pics");
    std::fs::create_dir(&pics).unwrap();
    for class in std::fs::read_dir(&data).unwrap() {
        for p in std::fs::read_dir(class.unwrap().path()).unwrap() {
            let p = p.unwrap().path();
            std::fs::copy(&p, pics.join(p.file_name().unwrap())).unwrap();
        }
    }
    let mut names: Vec<_> = std::fs::read_dir(&pics)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let (board, _) = run_ok(
        Command::new(bin("kestrel-edge"))
            .args(["run", "--threads", "1", "--bundle"])
            .arg(&bundle)
            .arg("--source")
            .arg(format!("dir:{}", pics.display())),
    );
    let (host, _) = run_ok(
        kestrel(&cache)
            .args(["predict", "--json", "--run"])
            .arg(&run)
            .args(&names),
    );
    let board: Vec<serde_json::Value> = board
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let host: Vec<serde_json::Value> = host
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(board.len(), names.len());
    assert_eq!(host.len(), names.len());
    let mut labels = std::collections::BTreeSet::new();
    for (i, (b, h)) in board.iter().zip(&host).enumerate() {
        assert_eq!(b["frame"].as_u64(), Some(i as u64));
        let (bl, hl) = (&b["classification"]["label"], &h["top"][0]["label"]);
        assert_eq!(bl, hl, "{}: board {b}, host {h}", names[i].display());
        let (bs, hs) = (
            b["classification"]["score"].as_f64().unwrap(),
            h["top"][0]["score"].as_f64().unwrap(),
        );
        // The default bundle's head is int8, and with phase 2 (the default) it holds the
        // fine-tuned blocks too: the label must agree, the probability within 0.05.
        assert!(
            (bs - hs).abs() < 0.05,
            "{}: board {bs}, host {hs}",
            names[i].display()
        );
        labels.insert(bl.to_string());
    }
    assert!(
        labels.len() >= 2,
        "a classifier that says one thing proves little: {labels:?}"
    );
}

/// The same detection journey to a board reached over SSH (an sshd on 127.0.0.1): `kestrel
/// deploy --ssh` stores and installs the signed bundle against the board's trust list, the agent
/// running beside switches to it, and `kestrel monitor --ssh` reads its detections back through
/// `kestrel-edge watch`. Without sshd the test fails, unless `KESTREL_SKIP_SSHD=1`.
#[test]
fn the_same_detection_journey_over_ssh() {
    ssh_journey(Path::new(&bin("kestrel-edge")), 14, 4, "ssh");
}

/// The SSH journey with the board's own binary: `kestrel-edge` built for aarch64, run by
/// qemu-aarch64 as a Cortex-A72 (a Pi 4's core, tract's NEON kernels and Kestrel's int8 `smull`
/// tiles) for the agent and for every command `kestrel` runs on the board over SSH.
/// `scripts/test.sh` builds it and runs this test with `KESTREL_AARCH64_EDGE` set. (Not over
/// serial: qemu-user 7.2 has no `TCGETS2`, so the agent cannot set up a tty under emulation.)
#[test]
#[ignore = "needs the aarch64 kestrel-edge: scripts/test.sh runs it with KESTREL_AARCH64_EDGE"]
fn the_ssh_journey_with_the_boards_own_binary_under_qemu() {
    let edge = std::env::var("KESTREL_AARCH64_EDGE").expect(
        "KESTREL_AARCH64_EDGE must name the aarch64 kestrel-edge (scripts/test.sh builds it)",
    );
    let dir = tempfile::tempdir().unwrap();
    // The board's `kestrel-edge`: the aarch64 binary under emulation, as one executable.
    let wrapper = dir.path().join("kestrel-edge");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec qemu-aarch64 -cpu cortex-a72 -L /usr/aarch64-linux-gnu '{edge}' \"$@\"\n"
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).unwrap();
    let (ok, out, err) = kestrel_e2e::run(Command::new(&wrapper).arg("--version"));
    assert!(ok, "the aarch64 kestrel-edge under qemu: {err}");
    println!("board binary: {}", out.trim());
    // The emulated agent runs at 2-3 fps: a replay at 4 fps would make it drop every other
    // frame, as a camera does, so the scenes are played at 2 fps.
    ssh_journey(&wrapper, 40, 2, "ssh, the aarch64 agent under qemu");
}

/// A trained detector deployed over SSH (to the sshd on 127.0.0.1) to an agent `edge` runs, with
/// `edge` as the board's `kestrel-edge` for every remote command; `kestrel monitor --ssh` for
/// `seconds` while the held-out scenes play at `fps`, and the mAP of what came back against the
/// bundle's own.
fn ssh_journey(edge: &Path, seconds: u32, fps: u32, link: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let Some(sshd) = start_sshd(tmp.path()) else {
        return;
    };
    let t = trained_detector(tmp.path());
    let store = tmp.path().join("store");
    let _agent = Agent(
        Command::new(edge)
            .args(["agent", "--store"])
            .arg(&store)
            .arg("--trust")
            .arg(&t.trust)
            .arg("--source")
            .arg(format!("dir:{}", t.data.join("images/val").display()))
            .args(["--fps", &fps.to_string(), "--loop", "--threads", "1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let target = format!("{}@127.0.0.1:{}", ssh_user(), sshd.port);
    let ssh = |c: &mut Command| {
        c.args(["--ssh", &target, "--remote-bin"])
            .arg(edge)
            .arg("--store")
            .arg(&store);
        for o in loopback_ssh_options(&sshd) {
            c.arg("--ssh-option").arg(o);
        }
    };
    let mut deploy = kestrel(&t.cache);
    deploy
        .arg("deploy")
        .arg(&t.bundle)
        .arg("--json")
        .arg("--remote-trust")
        .arg(&t.trust);
    ssh(&mut deploy);
    let (out, _) = run_ok(&mut deploy);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    println!("deploy over {link}: {report}");
    // The board's store answers with what it installed and the key that signed it.
    let installed: serde_json::Value =
        serde_json::from_str(report["message"].as_str().unwrap()).unwrap();
    assert_eq!(installed["current"], t.id.as_str(), "{report}");
    assert!(installed["signed_by"].is_string(), "{report}");
    // The agent notices the new current bundle on its own; then a pass of the replay and more.
    let mut monitor = kestrel(&t.cache);
    monitor
        .args(["monitor", "--seconds"])
        .arg(seconds.to_string());
    ssh(&mut monitor);
    let (lines, _) = run_ok(&mut monitor);
    assert_same_map(&lines, &t, link);
}
