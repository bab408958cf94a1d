//! Deploys over a real serial line (a pseudo-terminal pair) between `kestrel deploy`'s library and
//! the board's agent (in a thread, or the real `kestrel-edge agent` binary for the SIGKILL test),
//! with tiny valid bundles. Each fault must end with the board on a good bundle and an intact store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kestrel_e2e::{assert_store_blobs_intact, bin, tiny_bundle, tiny_released_bundle};
use kestrel_edge::Bundle;
use kestrel_edge::agent::{Agent, AgentConfig, AgentHandle, AgentStats, NoLoop};
use kestrel_shared::manifest::Manifest;
use kestrel_shared::sign::{SecretKey, TrustList};
use kestrel_shared::transport::{Faults, Faulty, TTYPort, Transport, pty_pair};
use kestrel_shared::wire::{self, Message, Sha256, Telemetry};
use kestrel_trainer::deploy::link::{BoardLink, InstallRequest};
use kestrel_trainer::deploy::serial::{self, Conn, SerialBoard, SerialOptions};
use kestrel_trainer::deploy::{DeployError, DeployReport, LocalBundle, LocalFile};
use kestrel_trainer::progress::Silent;

/// The serial line's nominal speed for the derived times (the pty itself is not rate-limited).
const BAUD: u32 = 115_200;

/// Options for the pty: a short retransmission timeout (the pty is fast), Hello waits short.
fn fast() -> SerialOptions {
    SerialOptions {
        baud: 2_000_000,
        hello_timeout: Duration::from_millis(500),
        install_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

/// An agent thread serving the slave end of a pty; the test keeps the master.
struct Board {
    store: PathBuf,
    handle: AgentHandle,
    thread: Option<JoinHandle<AgentStats>>,
}

impl Board {
    fn start(cfg: AgentConfig) -> (Board, TTYPort) {
        let (master, slave) = pty_pair().unwrap();
        let store = cfg.store.clone();
        let (mut agent, handle) = Agent::new(cfg).unwrap();
        let thread = std::thread::spawn(move || {
            let mut slave = slave;
            agent.run(Some(&mut slave), &mut NoLoop).unwrap();
            agent.stats.clone()
        });
        (
            Board {
                store,
                handle,
                thread: Some(thread),
            },
            master,
        )
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.store.join("current"))
            .ok()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
    }

    /// The current bundle loads, and every blob is intact.
    fn assert_good(&self, id: &str) {
        assert_eq!(self.current().as_deref(), Some(id), "current bundle");
        Bundle::open(&self.store.join("current")).unwrap();
        assert_store_blobs_intact(&self.store);
    }

    fn stop(mut self) -> AgentStats {
        self.handle.stop();
        self.thread.take().unwrap().join().unwrap()
    }
}

fn config(store: &Path) -> AgentConfig {
    let mut c = AgentConfig::new(store.to_path_buf());
    c.heartbeat = Duration::from_millis(300);
    c.idle_release = Duration::from_millis(500);
    c
}

fn deploy(link: &mut dyn Transport, dir: &Path) -> Result<DeployReport, DeployError> {
    serial::deploy(
        link,
        &LocalBundle::open(dir, true).unwrap(),
        &fast(),
        &Silent,
    )
}

fn sent_bytes(r: &DeployReport, name: &str) -> u64 {
    r.blobs.iter().find(|b| b.name == name).unwrap().bytes_sent
}

#[test]
fn full_deploy_then_a_retrained_head_sends_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tiny_bundle(&a, 1, 1);
    tiny_bundle(&b, 1, 2);
    let (board, mut line) = Board::start(config(&tmp.path().join("store")));

    let full = deploy(&mut line, &a).unwrap();
    let bundle_a = LocalBundle::open(&a, true).unwrap();
    let total: u64 = bundle_a.files().iter().map(|f| f.size).sum();
    assert_eq!(
        full.payload_bytes, total,
        "everything travels the first time"
    );
    // The NNEF trunk and head and the manifest: the ONNX files (for other runtimes, and
    // model.onnx, trunk and head in one graph) never go to a board.
    let mut sent = full.sent();
    sent.sort();
    assert_eq!(sent, ["head.nnef.tar", "manifest.json", "trunk.nnef.tar"]);
    let eff = full.efficiency();
    println!(
        "full bundle: {} payload bytes, {} line bytes, wire efficiency {eff:.4}, {:.3} s over the pty, {:.1} s at {BAUD} baud; board: {}",
        full.payload_bytes,
        full.line_bytes_out,
        full.seconds,
        full.seconds_at(BAUD),
        full.message
    );
    assert!(eff >= 0.9, "payload / line bytes = {eff}");
    board.assert_good(&bundle_a.id);

    let head_only = deploy(&mut line, &b).unwrap();
    let bundle_b = LocalBundle::open(&b, true).unwrap();
    assert_eq!(
        sent_bytes(&head_only, "trunk.nnef.tar"),
        0,
        "the trunk stays"
    );
    let mut sent = head_only.sent();
    sent.sort();
    assert_eq!(sent, ["head.nnef.tar", "manifest.json"]);
    let changed: u64 = bundle_b
        .files()
        .iter()
        .filter(|f| f.name != "trunk.nnef.tar")
        .map(|f| f.size)
        .sum();
    assert_eq!(head_only.payload_bytes, changed);
    println!(
        "head-only redeploy: {} payload bytes (head.nnef.tar and manifest.json), {} line bytes, {:.1} s at {BAUD} baud",
        head_only.payload_bytes,
        head_only.line_bytes_out,
        head_only.seconds_at(BAUD)
    );
    board.assert_good(&bundle_b.id);

    // Deploying what the board runs sends nothing but the install request.
    let again = deploy(&mut line, &b).unwrap();
    assert_eq!(again.payload_bytes, 0);
    assert!(again.line_bytes_out < 200, "{}", again.line_bytes_out);

    // Rollback over the line: back to A.
    let msg = serial::rollback(&mut line, &fast()).unwrap();
    assert!(msg.contains(&bundle_a.id), "{msg}");
    board.assert_good(&bundle_a.id);

    // Telemetry pushed by the loop arrives as JSON lines; heartbeats name the bundle.
    assert!(board.handle.send_telemetry(Telemetry {
        bundle: Some("x".into()),
        frame: 42,
        fps: 12.5,
        temperature_c: None,
        detections: vec![],
    }));
    let mut out = Vec::new();
    let n = serial::monitor(&mut line, &mut out, Some(3), Some(Duration::from_secs(5))).unwrap();
    assert_eq!(n, 3);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|v| v["frame"] == 42), "{text}");
    assert!(
        lines.iter().any(|v| v["bundle"] == bundle_a.id.as_str()),
        "{text}"
    );
    let stats = board.stop();
    assert_eq!(stats.installs, 3, "{stats:?}");
}

/// Lines that flip and drop bytes both ways (a fresh board each time): the bundle arrives intact,
/// only lost chunks are sent again, and the wire efficiency stays above the floors: 0.8
/// at 1e-4 of the bytes damaged, 0.3 at 1e-3 (here 0.5 each of flips and drops, and the worse
/// 1e-3 + 1e-3 as well).
#[test]
fn bit_flips_and_dropped_bytes_still_deliver() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    tiny_bundle(&a, 3, 3);
    let id = LocalBundle::open(&a, true).unwrap().id;
    let mut curve = Vec::new();
    for (ppm, floor) in [(50, 0.8), (500, 0.3), (1000, 0.3)] {
        let (board, line) = Board::start(config(&tmp.path().join(format!("store-{ppm}"))));
        let mut noisy = Faulty::new(
            line,
            Faults {
                seed: 7 + ppm as u64,
                flip_per_million: ppm,
                drop_per_million: ppm,
                cut_after_written: None,
            },
        );
        let r = deploy(&mut noisy, &a).unwrap();
        let st = noisy.stats;
        curve.push(format!(
            "flip {ppm}e-6 + drop {ppm}e-6: {} bits flipped, {} bytes dropped; {} payload bytes in {} line bytes (efficiency {:.3}), {:.2} s",
            st.flipped,
            st.dropped,
            r.payload_bytes,
            r.line_bytes_out,
            r.efficiency(),
            r.seconds
        ));
        assert!(st.flipped > 0 && st.dropped > 0, "{st:?}");
        assert!(
            r.blobs.iter().map(|b| b.bytes_sent).sum::<u64>() > r.payload_bytes,
            "losses were repaired by resending"
        );
        assert!(
            r.efficiency() >= floor,
            "{ppm} ppm: efficiency {:.3} < {floor}",
            r.efficiency()
        );
        board.assert_good(&id);
        let stats = board.stop();
        assert!(stats.bad_frames > 0, "{stats:?}");
    }
    println!("noisy lines:\n{}", curve.join("\n"));
}

/// The host's end of the line with the board's first `Complete` frame for one blob taken out:
/// what a noisy line does to it now and then. Frames are passed on whole (up to their closing
/// delimiter) so the one to drop is always seen in one piece.
struct LoseComplete<T> {
    inner: T,
    frame: Vec<u8>,
    pending: Vec<u8>,
    lost: bool,
}

impl<T: Transport> Transport for LoseComplete<T> {
    fn recv(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.pending.iter().rposition(|&b| b == 0) {
                if !self.lost
                    && let Some(at) = self
                        .pending
                        .windows(self.frame.len())
                        .position(|w| w == self.frame.as_slice())
                {
                    self.pending.drain(at..at + self.frame.len());
                    self.lost = true;
                    continue;
                }
                let n = (end + 1).min(buf.len());
                buf[..n].copy_from_slice(&self.pending[..n]);
                self.pending.drain(..n);
                return Ok(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut piece = [0u8; 4096];
            let n = self.inner.recv(&mut piece, left)?;
            if n == 0 {
                return Ok(0);
            }
            self.pending.extend_from_slice(&piece[..n]);
        }
    }
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.send(bytes)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A lost `Complete` costs a second offer, which the board answers with the whole blob in hand:
/// the deploy still succeeds, the blob is not sent again, and the report still counts its bytes
/// as sent (the efficiency once fell to 0.02 here, failing the noisy-line test now and then).
#[test]
fn a_lost_complete_is_asked_again_and_the_report_keeps_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    tiny_bundle(&a, 3, 3);
    let bundle = LocalBundle::open(&a, true).unwrap();
    let trunk = bundle.files()[0].clone();
    assert_eq!(trunk.name, "trunk.nnef.tar");
    let (board, line) = Board::start(config(&tmp.path().join("store")));
    let mut lossy = LoseComplete {
        inner: line,
        frame: wire::encode(&Message::Complete {
            sha256: trunk.sha256,
        })
        .unwrap(),
        pending: Vec::new(),
        lost: false,
    };
    // The encoded frame starts and ends with a delimiter; the one before may belong to the
    // previous frame, so match from the body on.
    lossy.frame.remove(0);
    let r = deploy(&mut lossy, &a).unwrap();
    assert!(lossy.lost, "the Complete frame was never seen");
    let blob = r.blobs.iter().find(|b| b.name == trunk.name).unwrap();
    assert_eq!(blob.start_offset, 0, "{blob:?}");
    assert_eq!(blob.bytes_sent, trunk.size, "sent once: {blob:?}");
    let total: u64 = bundle.files().iter().map(|f| f.size).sum();
    assert_eq!(r.payload_bytes, total);
    assert!(r.efficiency() > 0.9, "efficiency {}", r.efficiency());
    board.assert_good(&bundle.id);
    board.stop();
}

#[test]
fn cable_pulled_mid_transfer_resumes_at_the_stored_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    tiny_bundle(&a, 4, 4);
    let store = tmp.path().join("store");
    let (board, line) = Board::start(config(&store));
    let bundle = LocalBundle::open(&a, true).unwrap();
    // Files go models first: trunk.nnef.tar (about 150 KB) is cut after 60 KB on the line.
    let first = bundle.files()[0].clone();
    assert_eq!(first.name, "trunk.nnef.tar");
    let mut cut = Faulty::new(
        line,
        Faults {
            cut_after_written: Some(60_000),
            ..Default::default()
        },
    );
    let err = serial::deploy(&mut cut, &bundle, &fast(), &Silent).unwrap_err();
    assert!(matches!(err, DeployError::Link { .. }), "{err}");
    println!("first attempt: {err}");
    let mut line = cut.into_inner();
    std::thread::sleep(Duration::from_millis(300));
    let partial = store.join("partial").join(first.sha256.to_hex());
    let stored = std::fs::metadata(&partial).unwrap().len();
    assert!(
        stored > 0 && stored < first.size,
        "{stored} of {}",
        first.size
    );

    let second = serial::deploy(&mut line, &bundle, &fast(), &Silent).unwrap();
    let trunk = &second.blobs[0];
    println!(
        "second attempt: trunk.nnef.tar resumed at {} of {} bytes, sent {}",
        trunk.start_offset, trunk.size, trunk.bytes_sent
    );
    assert_eq!(
        trunk.start_offset, stored,
        "resumes where the board stands, not at 0"
    );
    assert_eq!(
        trunk.bytes_sent,
        first.size - stored,
        "nothing before it is resent"
    );
    board.assert_good(&bundle.id);
    board.stop();
}

/// Sends `files` (name, bytes) as blobs and asks the board to install the last one as manifest.
fn raw_install(
    line: &mut dyn Transport,
    tmp: &Path,
    files: &[(&str, Vec<u8>)],
) -> Result<String, DeployError> {
    let mut board = SerialBoard::new(line, fast());
    let mut last = None;
    for (name, bytes) in files {
        let path = tmp.join(format!("raw-{}", Sha256::of(bytes).to_hex()));
        std::fs::write(&path, bytes).unwrap();
        let f = LocalFile {
            name: name.to_string(),
            sha256: Sha256::of(bytes),
            size: bytes.len() as u64,
            path,
        };
        board.put_blob(&f, &Silent)?;
        last = Some(f.sha256);
    }
    let sha = last.unwrap();
    board.install(&InstallRequest {
        id: kestrel_shared::listing::bundle_id(&sha),
        manifest: sha,
        allow_downgrade: false,
    })
}

fn edited(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    edit(&mut v);
    serde_json::to_vec_pretty(&v).unwrap()
}

fn refused(r: Result<impl std::fmt::Debug, DeployError>, what: &str, expect: &str) {
    match r {
        Err(DeployError::Refused(m)) => {
            println!("{what}: refused: {m}");
            assert!(m.contains(expect), "{what}: {m:?} lacks {expect:?}");
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[test]
fn bad_bundles_and_bad_frames_are_refused_and_the_board_keeps_its_model() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed([9; 32]);
    let stranger = SecretKey::from_seed([10; 32]);
    let trust_path = tmp.path().join("trust");
    std::fs::write(&trust_path, key.public().to_line("test key") + "\n").unwrap();
    let mut cfg = config(&tmp.path().join("store"));
    cfg.trust = Some(TrustList::read(&trust_path).unwrap());
    let (board, mut line) = Board::start(cfg);

    let good = tmp.path().join("good");
    tiny_bundle(&good, 5, 5);
    key.sign_bundle(&good).unwrap();
    let good_id = deploy(&mut line, &good).unwrap().bundle;
    board.assert_good(&good_id);

    let variant = |name: &str, head: u64| {
        let d = tmp.path().join(name);
        tiny_bundle(&d, 5, head);
        d
    };
    // Unsigned, signed by an unknown key, and tampered after signing.
    refused(
        deploy(&mut line, &variant("unsigned", 6)),
        "unsigned",
        "unsigned",
    );
    let d = variant("stranger", 7);
    stranger.sign_bundle(&d).unwrap();
    refused(
        deploy(&mut line, &d),
        "unknown key",
        "not in the board's trust list",
    );
    let d = variant("tampered", 8);
    key.sign_bundle(&d).unwrap();
    let m = edited(&d, |v| v["metrics"]["images"] = 999.into());
    std::fs::write(d.join("manifest.json"), m).unwrap();
    refused(
        deploy(&mut line, &d),
        "bad signature",
        "does not match its manifest",
    );
    board.assert_good(&good_id);

    // A file whose content is not the manifest's hash (the host's own check turned off).
    let d = variant("badhash", 9);
    key.sign_bundle(&d).unwrap();
    let mut head = std::fs::read(d.join("head.nnef.tar")).unwrap();
    head[100] ^= 0xff;
    std::fs::write(d.join("head.nnef.tar"), head).unwrap();
    assert!(
        LocalBundle::open(&d, true).is_err(),
        "the host notices first"
    );
    // Opened without the host's own check, so the board's is what refuses it.
    let r = serial::deploy(
        &mut line,
        &LocalBundle::open(&d, false).unwrap(),
        &fast(),
        &Silent,
    );
    refused(r, "bad hash", "sha256");

    // Manifests the host would refuse, sent raw: escaping paths, unknown schema.
    let signed = |edit: &dyn Fn(&mut serde_json::Value)| -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(&edited(&good, |_| {})).unwrap();
        edit(&mut v);
        // Re-sign what the board will parse, so the signature is not what refuses it.
        match Manifest::from_json(&v.to_string(), "x") {
            Ok(m) => key.sign_manifest(&m).unwrap().to_json().into_bytes(),
            Err(_) => serde_json::to_vec_pretty(&v).unwrap(),
        }
    };
    for (what, path, reason) in [
        (
            "dot-dot",
            "../x",
            "`../x` must be a plain file name inside the bundle",
        ),
        (
            "absolute",
            "/etc/passwd",
            "`/etc/passwd` must be a plain file name inside the bundle",
        ),
        (
            "store record",
            ".kestrel-store.json",
            "refusing name \".kestrel-store.json\": it starts with a dot",
        ),
    ] {
        // The head the board installs: the NNEF one.
        let m = signed(&|v| v["files"]["nnef"]["head"]["path"] = path.into());
        refused(
            raw_install(&mut line, tmp.path(), &[("manifest.json", m)]),
            what,
            reason,
        );
    }
    let m = signed(&|v| v["schema_version"] = 4.into());
    refused(
        raw_install(&mut line, tmp.path(), &[("manifest.json", m)]),
        "schema 4",
        "schema version 4",
    );
    // A blob offered under a name that escapes the store.
    let r = raw_install(&mut line, tmp.path(), &[("../../etc/x", b"x".to_vec())]);
    refused(r, "offered name", "refusing name");
    board.assert_good(&good_id);

    // A symlink planted in the store's upload area never leads outside it.
    let outside = tmp.path().join("outside");
    std::fs::write(&outside, b"precious").unwrap();
    let victim = variant("victim", 11);
    key.sign_bundle(&victim).unwrap();
    let vb = LocalBundle::open(&victim, true).unwrap();
    let head_sha = vb
        .files()
        .iter()
        .find(|f| f.name == "head.nnef.tar")
        .unwrap()
        .sha256;
    std::os::unix::fs::symlink(
        &outside,
        board.store.join("partial").join(head_sha.to_hex()),
    )
    .unwrap();
    let r = serial::deploy(&mut line, &vb, &fast(), &Silent);
    println!("planted symlink: {:?}", r.as_ref().map(|r| &r.message));
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    if r.is_ok() {
        board.assert_good(&vb.id);
        serial::rollback(&mut line, &fast()).unwrap();
    }
    board.assert_good(&good_id);

    // Garbage and an oversized frame: answered with an error naming the problem.
    let mut garbage = vec![0u8];
    garbage.extend((0..3000u32).map(|i| (i % 251 + 1) as u8));
    garbage.push(0);
    garbage.extend(std::iter::repeat_n(0x55, wire::MAX_ENCODED_FRAME + 10));
    garbage.push(0);
    line.send(&garbage).unwrap();
    let mut conn = Conn::new(&mut line);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut errors = Vec::new();
    while let Some(m) = conn.next(deadline).unwrap() {
        if let Message::Error { message, .. } = m {
            let done = message.contains("longer than");
            errors.push(message);
            if done {
                break;
            }
        }
    }
    println!("garbage: {errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("longer than")),
        "{errors:?}"
    );
    drop(conn);
    board.assert_good(&good_id);
    // And the board still deploys.
    let d = variant("after", 12);
    key.sign_bundle(&d).unwrap();
    let id = deploy(&mut line, &d).unwrap().bundle;
    board.assert_good(&id);
    let stats = board.stop();
    assert!(stats.refused >= 6, "{stats:?}");
}

#[test]
fn a_full_store_refuses_with_a_clear_reason_and_keeps_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    tiny_bundle(&a, 13, 13);
    let size: u64 = LocalBundle::open(&a, true)
        .unwrap()
        .files()
        .iter()
        .map(|f| f.size)
        .sum();
    // A quota (the agent's --max-store-bytes) just above one bundle stands in for a full disk.
    let mut cfg = config(&tmp.path().join("store"));
    cfg.quota = Some(size + 10_000);
    let (board, mut line) = Board::start(cfg);
    let id = deploy(&mut line, &a).unwrap().bundle;
    board.assert_good(&id);
    let b = tmp.path().join("b");
    tiny_bundle(&b, 14, 14);
    refused(deploy(&mut line, &b), "full store", "no space left");
    board.assert_good(&id);
    board.stop();
}

#[test]
fn an_older_signed_bundle_is_refused_unless_the_downgrade_is_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let (new, old) = (tmp.path().join("new"), tmp.path().join("old"));
    tiny_released_bundle(&new, 40, 41, 2_000);
    tiny_released_bundle(&old, 40, 40, 1_000);
    // Both validly signed by a key the board trusts: the signature is not what refuses the old one.
    let key = SecretKey::from_seed([11; 32]);
    key.sign_bundle(&new).unwrap();
    key.sign_bundle(&old).unwrap();
    let trust_path = tmp.path().join("trust");
    std::fs::write(&trust_path, key.public().to_line("release key") + "\n").unwrap();
    let mut cfg = config(&tmp.path().join("store"));
    cfg.trust = Some(TrustList::read(&trust_path).unwrap());
    let (board, mut line) = Board::start(cfg);
    let id = deploy(&mut line, &new).unwrap().bundle;
    board.assert_good(&id);
    refused(
        deploy(&mut line, &old),
        "older bundle",
        "older than the current bundle (made 2026-12-04T00:00:40Z, sequence 1000 against made 2026-12-04T00:00:20Z, sequence 2000)",
    );
    board.assert_good(&id);
    // Sending the current bundle again is not a downgrade.
    deploy(&mut line, &new).unwrap();
    board.assert_good(&id);
    let allowing = SerialOptions {
        allow_downgrade: true,
        ..fast()
    };
    let bundle = LocalBundle::open(&old, true).unwrap();
    let r = serial::deploy(&mut line, &bundle, &allowing, &Silent).unwrap();
    board.assert_good(&r.bundle);
    assert_eq!(r.bundle, bundle.id);
    let stats = board.stop();
    assert_eq!(stats.refused, 1, "{stats:?}");
}

/// The real agent binary on the slave end of `pty`.
fn spawn_agent(store: &Path, slave: &str) -> Child {
    Command::new(bin("kestrel-edge"))
        .args(["agent", "--store"])
        .arg(store)
        .args(["--serial", slave, "--telemetry-interval", "0.5"])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap()
}

#[test]
fn agent_killed_at_random_points_recovers_to_a_good_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (master, slave) = pty_pair().unwrap();
    let slave_name = slave.describe();
    // The agent opens the slave itself (serialport locks a port exclusively).
    drop(slave);
    let mut line = master;
    let mut rng = 0x1234_5678_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut installed = None;
    for round in 0..6u64 {
        let dir = tmp.path().join(format!("b{round}"));
        // Every other round retrains only the head.
        tiny_bundle(&dir, 20 + round / 2, 20 + round);
        let bundle = LocalBundle::open(&dir, true).unwrap();
        let mut agent = spawn_agent(&store, &slave_name);
        let kill_after = Duration::from_millis(10 + next() % 150);
        let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = killed.clone();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            agent.kill().unwrap(); // SIGKILL
            agent.wait().unwrap();
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // Until the agent has opened its end the line reads EIO: try again until it answers.
        let r = loop {
            let r = serial::deploy(&mut line, &bundle, &fast(), &Silent);
            if r.is_ok() || killed.load(std::sync::atomic::Ordering::SeqCst) {
                break r;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        killer.join().unwrap();
        println!(
            "round {round}: killed after {kill_after:?}: deploy {:?}",
            r.as_ref()
                .map(|r| r.bundle.clone())
                .map_err(|e| e.to_string())
        );
        if r.is_ok() {
            installed = Some(bundle.id.clone());
        }
        // Whatever the moment, the store opens clean: current (if any) loads, blobs are intact.
        let s = kestrel_edge::store::Store::open(&store).unwrap();
        if let Some(dir) = s.current_path().unwrap() {
            Bundle::open(&dir).unwrap();
        }
        if let Some(id) = &installed {
            assert!(
                s.current().unwrap().is_some(),
                "an installed bundle ({id}) stays installed"
            );
        }
        drop(s);
        assert_store_blobs_intact(&store);
    }
    // Restarted, the agent finishes the last deploy (resuming what was stored).
    let last = LocalBundle::open(&tmp.path().join("b5"), true).unwrap();
    let mut agent = spawn_agent(&store, &slave_name);
    let start = Instant::now();
    let r = loop {
        match serial::deploy(&mut line, &last, &fast(), &Silent) {
            Ok(r) => break r,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                println!("retrying: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{e}"),
        }
    };
    println!(
        "after the kills: {} payload bytes to finish, board: {}",
        r.payload_bytes, r.message
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
    let s = kestrel_edge::store::Store::open(&store).unwrap();
    assert_eq!(s.current().unwrap().as_deref(), Some(last.id.as_str()));
    Bundle::open(&s.current_path().unwrap().unwrap()).unwrap();
    drop(s);
    assert_store_blobs_intact(&store);
}
