//! `kestrel deploy --ssh` against a real OpenSSH server on 127.0.0.1 (a throwaway host key and
//! user key in a temporary directory), with a running agent that follows the store's `current`.
//! Without `sshd` the test fails, unless `KESTREL_SKIP_SSHD=1` (then it is skipped, and says so).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kestrel_e2e::{
    assert_store_blobs_intact, bin, edge_store, run_ok, ssh_user as user, start_sshd, tiny_bundle,
    tiny_released_bundle, wait_for_current,
};
use kestrel_edge::agent::{Agent, AgentConfig, BundleHost};
use kestrel_trainer::deploy::ssh::{self, SshOptions};
use kestrel_trainer::deploy::{DeployError, LocalBundle};
use kestrel_trainer::progress::Silent;

/// Remembers what the agent switched to (stands in for the detection loop).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<PathBuf>>>);

impl BundleHost for Recorder {
    fn switch(&mut self, dir: &Path) -> Result<(), String> {
        self.0.lock().unwrap().push(dir.to_path_buf());
        Ok(())
    }
}

impl Recorder {
    /// Waits until the agent switched to bundle `id`.
    fn wait_for(&self, id: &str) -> Duration {
        let start = Instant::now();
        loop {
            if self
                .0
                .lock()
                .unwrap()
                .last()
                .is_some_and(|p| p.ends_with(id))
            {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the agent did not switch to {id}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn deploy_over_ssh_sends_only_missing_blobs_and_the_agent_switches() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(sshd) = start_sshd(tmp.path()) else {
        return;
    };
    let store = tmp.path().join("store");
    let target = format!("{}@127.0.0.1:{}", user(), sshd.port);
    let options = vec![
        format!("IdentityFile={}", sshd.key.display()),
        "UserKnownHostsFile=/dev/null".to_string(),
        "StrictHostKeyChecking=no".to_string(),
        "BatchMode=yes".to_string(),
        "LogLevel=ERROR".to_string(),
    ];
    let mut opts = SshOptions::new(&target);
    opts.options = options.clone();
    opts.remote_bin = bin("kestrel-edge").display().to_string();
    opts.store = store.display().to_string();

    // The agent runs beside (no serial line): it follows `current`.
    let mut cfg = AgentConfig::new(store.clone());
    cfg.poll = Duration::from_millis(200);
    let (mut agent, handle) = Agent::new(cfg).unwrap();
    let recorder = Recorder::default();
    let mut host = recorder.clone();
    let agent_thread = std::thread::spawn(move || agent.run(None, &mut host).unwrap());

    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tiny_bundle(&a, 30, 30);
    tiny_bundle(&b, 30, 31);
    let bundle_a = LocalBundle::open(&a, true).unwrap();
    let full = ssh::deploy(&bundle_a, &opts, &Silent).unwrap();
    // trunk, head, manifest (never model.onnx: boards run trunk + head).
    assert_eq!(full.sent().len(), 3, "{:?}", full.sent());
    let seen = recorder.wait_for(&bundle_a.id);
    println!(
        "ssh full deploy: {} bytes in {:.2} s (agent switched {:?} later); board: {}",
        full.payload_bytes, full.seconds, seen, full.message
    );

    // The command line, head-only: the trunk stays on the board.
    let start = Instant::now();
    let (out, _) = run_ok(
        Command::new(bin("kestrel"))
            .args(["--quiet", "deploy"])
            .arg(&b)
            .args(["--json", "--ssh", &target, "--remote-bin"])
            .arg(bin("kestrel-edge"))
            .arg("--store")
            .arg(&store)
            .args(options.iter().flat_map(|o| ["--ssh-option", o.as_str()])),
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let sent: Vec<&str> = report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["bytes_sent"].as_u64() > Some(0))
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert!(!sent.contains(&"trunk.nnef.tar"), "{sent:?}");
    assert_eq!(sent.len(), 2, "head and manifest only: {sent:?}");
    let bundle_b = LocalBundle::open(&b, true).unwrap();
    recorder.wait_for(&bundle_b.id);
    println!(
        "ssh head-only deploy (kestrel deploy): {} bytes, {:.2} s with the CLI",
        report["payload_bytes"],
        start.elapsed().as_secs_f64()
    );

    // A board trust list the bundle does not satisfy: refused, the board stays on B.
    let trust = tmp.path().join("trust");
    let key = kestrel_shared::sign::SecretKey::from_seed([3; 32]);
    std::fs::write(&trust, key.public().to_line("ci") + "\n").unwrap();
    let c = tmp.path().join("c");
    tiny_bundle(&c, 30, 32);
    let mut strict = opts.clone();
    strict.trust = Some(trust.display().to_string());
    let err = ssh::deploy(&LocalBundle::open(&c, true).unwrap(), &strict, &Silent).unwrap_err();
    println!("unsigned over ssh: {err}");
    assert!(
        matches!(&err, DeployError::Refused(m) if m.contains("unsigned")),
        "{err}"
    );
    // Signed, it goes through.
    key.sign_bundle(&c).unwrap();
    let bundle_c = LocalBundle::open(&c, true).unwrap();
    ssh::deploy(&bundle_c, &strict, &Silent).unwrap();
    recorder.wait_for(&bundle_c.id);

    // Rollback over ssh, with the command line.
    let (out, _) = run_ok(
        Command::new(bin("kestrel"))
            .args(["--quiet", "rollback", "--ssh", &target, "--remote-bin"])
            .arg(bin("kestrel-edge"))
            .arg("--store")
            .arg(&store)
            .args(options.iter().flat_map(|o| ["--ssh-option", o.as_str()])),
    );
    assert!(out.contains(&bundle_b.id), "{out}");
    recorder.wait_for(&bundle_b.id);

    // Anti-rollback: a newer bundle goes in; an older one sent afterwards is refused (the command
    // exits non-zero and says why) unless the operator allows the downgrade.
    let (d, e) = (tmp.path().join("d"), tmp.path().join("e"));
    tiny_released_bundle(&d, 30, 33, 2_000);
    tiny_released_bundle(&e, 30, 34, 1_000);
    // Both validly signed: the age alone refuses the older one.
    let release_key = kestrel_shared::sign::SecretKey::from_seed([13; 32]);
    release_key.sign_bundle(&d).unwrap();
    release_key.sign_bundle(&e).unwrap();
    let bundle_d = LocalBundle::open(&d, true).unwrap();
    ssh::deploy(&bundle_d, &opts, &Silent).unwrap();
    recorder.wait_for(&bundle_d.id);
    let deploy_e = |extra: &[&str]| {
        Command::new(bin("kestrel"))
            .args(["--quiet", "deploy"])
            .arg(&e)
            .args(["--ssh", &target, "--remote-bin"])
            .arg(bin("kestrel-edge"))
            .arg("--store")
            .arg(&store)
            .args(options.iter().flat_map(|o| ["--ssh-option", o.as_str()]))
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = deploy_e(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    println!("older bundle over ssh: {stderr}");
    assert_eq!(
        refused.status.code(),
        Some(4),
        "a downgrade is refused by the board (exit status 4)"
    );
    assert!(
        stderr.contains("older than the current bundle") && stderr.contains("sequence 2000"),
        "{stderr}"
    );
    let listing = |store: &Path| {
        kestrel_edge::store::Store::open(store)
            .unwrap()
            .current()
            .unwrap()
    };
    assert_eq!(listing(&store).as_deref(), Some(bundle_d.id.as_str()));
    let allowed = deploy_e(&["--allow-downgrade"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let bundle_e = LocalBundle::open(&e, true).unwrap();
    recorder.wait_for(&bundle_e.id);

    // An older bundle switched in behind the agent's back (the link renamed by hand, not through
    // the store): the agent refuses it and puts its own bundle back.
    let tmp_link = store.join("current.by-hand");
    std::os::unix::fs::symlink(Path::new("bundles").join(&bundle_b.id), &tmp_link).unwrap();
    std::fs::rename(&tmp_link, store.join("current")).unwrap();
    wait_for_current(
        &store,
        &bundle_e.id,
        "the agent did not put its own bundle back",
    );
    assert!(
        recorder
            .0
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .ends_with(&bundle_e.id),
        "the agent never ran the older bundle"
    );

    handle.stop();
    agent_thread.join().unwrap();
    assert_store_blobs_intact(&store);
}

/// The agent's own trust list also guards bundles installed behind its back: an unsigned bundle
/// put current by the store commands an SSH deploy runs, without `--trust`, is refused by the
/// running agent, which puts its own bundle back. (The commands run here directly: over SSH they
/// are the same commands, as the test above shows.)
#[test]
fn an_untrusted_bundle_installed_behind_the_agents_back_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let key = kestrel_shared::sign::SecretKey::from_seed([12; 32]);
    let trust_path = tmp.path().join("trust");
    std::fs::write(&trust_path, key.public().to_line("board key") + "\n").unwrap();
    let (good, bad) = (tmp.path().join("good"), tmp.path().join("bad"));
    tiny_bundle(&good, 50, 50);
    key.sign_bundle(&good).unwrap();
    tiny_bundle(&bad, 50, 51);
    let store_cmd = |args: &[&str], stdin: Option<&Path>| {
        let out = edge_store(&store, args, stdin, &[]);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let install = |dir: &Path| {
        let b = LocalBundle::open(dir, true).unwrap();
        for f in b.files() {
            store_cmd(&["put-blob", &f.sha256.to_hex()], Some(&dir.join(&f.name)));
        }
        store_cmd(
            &[
                "install",
                "--id",
                &b.id,
                "--manifest",
                &b.manifest_file.sha256.to_hex(),
            ],
            None,
        );
        b.id
    };
    let good_id = install(&good);
    let mut cfg = AgentConfig::new(store.clone());
    cfg.poll = Duration::from_millis(100);
    cfg.trust = Some(kestrel_shared::sign::TrustList::read(&trust_path).unwrap());
    let (mut agent, handle) = Agent::new(cfg).unwrap();
    let recorder = Recorder::default();
    let mut host = recorder.clone();
    let agent_thread = std::thread::spawn(move || agent.run(None, &mut host).unwrap());
    recorder.wait_for(&good_id);
    let bad_id = install(&bad);
    wait_for_current(
        &store,
        &good_id,
        "the agent left the unsigned bundle current",
    );
    assert!(
        recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|p| !p.ends_with(&bad_id)),
        "the agent never ran the unsigned bundle"
    );
    handle.stop();
    agent_thread.join().unwrap();
}

/// A `current` switched by hand while no agent ran: the agent judges it when it starts, against
/// the bundle the store last made current, and puts that one back when the moved one is older.
#[test]
fn an_older_bundle_switched_in_while_the_agent_was_stopped_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (old, new) = (tmp.path().join("old"), tmp.path().join("new"));
    tiny_released_bundle(&old, 60, 60, 1_000);
    tiny_released_bundle(&new, 60, 61, 2_000);
    let install = |dir: &Path| {
        let b = LocalBundle::open(dir, true).unwrap();
        for f in b.files() {
            let out = edge_store(
                &store,
                &["put-blob", &f.sha256.to_hex()],
                Some(&dir.join(&f.name)),
                &[],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let sha = b.manifest_file.sha256.to_hex();
        let out = edge_store(
            &store,
            &["install", "--id", &b.id, "--manifest", &sha],
            None,
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        b.id
    };
    let old_id = install(&old);
    let new_id = install(&new);
    // By hand, no agent running.
    let link = store.join("current.by-hand");
    std::os::unix::fs::symlink(Path::new("bundles").join(&old_id), &link).unwrap();
    std::fs::rename(&link, store.join("current")).unwrap();

    let mut cfg = AgentConfig::new(store.clone());
    cfg.poll = Duration::from_millis(100);
    let (mut agent, handle) = Agent::new(cfg).unwrap();
    let recorder = Recorder::default();
    let mut host = recorder.clone();
    let agent_thread = std::thread::spawn(move || agent.run(None, &mut host).unwrap());
    recorder.wait_for(&new_id);
    wait_for_current(
        &store,
        &new_id,
        "the agent did not put the newer bundle back",
    );
    assert!(
        recorder
            .0
            .lock()
            .unwrap()
            .iter()
            .all(|p| !p.ends_with(&old_id)),
        "the agent never ran the older bundle"
    );
    handle.stop();
    agent_thread.join().unwrap();
}

/// An SSH upload cut mid-blob keeps what arrived on the board, and the next deploy resumes at
/// that byte, as over serial. The cut is real: the ssh client's standard input ends after
/// `CUT` bytes (a wrapper around the system ssh), so the board's `put-blob` sees its input end.
#[test]
fn an_ssh_upload_cut_mid_blob_resumes_where_it_stopped() {
    const CUT: u64 = 40_000;
    let tmp = tempfile::tempdir().unwrap();
    let Some(sshd) = start_sshd(tmp.path()) else {
        return;
    };
    let store = tmp.path().join("store");
    let mut opts = SshOptions::new(&format!("{}@127.0.0.1:{}", user(), sshd.port));
    opts.options = kestrel_e2e::loopback_ssh_options(&sshd);
    opts.remote_bin = bin("kestrel-edge").display().to_string();
    opts.store = store.display().to_string();
    let cutting = tmp.path().join("cutting-ssh");
    std::fs::write(
        &cutting,
        format!("#!/bin/sh\nhead -c {CUT} | exec {} \"$@\"\n", opts.program),
    )
    .unwrap();
    std::fs::set_permissions(
        &cutting,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let dir = tmp.path().join("a");
    tiny_bundle(&dir, 70, 70);
    let bundle = LocalBundle::open(&dir, true).unwrap();
    let first = bundle.files()[0].clone();
    assert!(
        first.size > CUT,
        "the first blob must be longer than the cut"
    );

    let mut cut_opts = opts.clone();
    cut_opts.program = cutting.display().to_string();
    let err = ssh::deploy(&bundle, &cut_opts, &Silent).unwrap_err();
    println!("cut upload: {err}");
    assert!(
        matches!(&err, DeployError::Ssh { detail, .. } if detail.contains(&format!("stopped at byte {CUT}"))),
        "{err}"
    );
    let held = std::fs::metadata(store.join("partial").join(first.sha256.to_hex()))
        .unwrap()
        .len();
    assert_eq!(held, CUT, "the board keeps the bytes that arrived");
    assert_eq!(
        kestrel_edge::store::Store::open(&store)
            .unwrap()
            .current()
            .unwrap(),
        None
    );

    let report = ssh::deploy(&bundle, &opts, &Silent).unwrap();
    let resumed = &report.blobs[0];
    assert_eq!(resumed.name, first.name);
    assert_eq!(resumed.start_offset, CUT, "resumes at the cut, not at 0");
    assert_eq!(resumed.bytes_sent, first.size - CUT);
    wait_for_current(&store, &bundle.id, "the resumed deploy did not install");
    assert!(
        std::fs::read_dir(store.join("partial"))
            .unwrap()
            .next()
            .is_none(),
        "no partial upload left"
    );
    assert_store_blobs_intact(&store);

    // `kestrel status` over the same link tells what the board now holds.
    let (out, _) = run_ok(
        Command::new(bin("kestrel"))
            .args(["status", "--json", "--ssh", &opts.target, "--remote-bin"])
            .arg(bin("kestrel-edge"))
            .arg("--store")
            .arg(&store)
            .args(
                opts.options
                    .iter()
                    .flat_map(|o| ["--ssh-option", o.as_str()]),
            ),
    );
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(status["current"], bundle.id.as_str(), "{status}");
    assert_eq!(
        status["blobs"].as_array().unwrap().len(),
        bundle.files().len(),
        "{status}"
    );
    assert!(
        status["blobs"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(first.sha256.to_hex())),
        "{status}"
    );
}
