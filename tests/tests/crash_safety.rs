//! Crash safety proven step by step: at every fail point of receiving and installing
//! (`kestrel_edge::store::FAIL_POINTS`) the real `kestrel-edge` kills itself (SIGKILL) while it
//! takes a new bundle, over the serial agent (a pseudo-terminal pair) and through the store
//! commands an SSH deploy runs. After each kill the store must open consistent: every blob matches
//! its hash, no temporary file is left, every bundle directory matches its record, `current` is
//! the old or the new bundle and loads; and the same deploy then completes.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kestrel_e2e::{assert_store_blobs_intact, bin, edge_store, tiny_bundle};
use kestrel_edge::Bundle;
use kestrel_edge::agent::{InstallPolicy, bundle_id, install_from_store};
use kestrel_edge::store::{FAIL_POINTS, Store};
use kestrel_shared::transport::{Transport, pty_pair};
use kestrel_shared::wire::Sha256;
use kestrel_trainer::deploy::LocalBundle;
use kestrel_trainer::deploy::serial::{self, SerialOptions};
use kestrel_trainer::progress::Silent;

/// Signal 9 on Linux.
const SIGKILL: i32 = 9;

/// How a fail point is reached.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    /// `kestrel-edge agent` on a serial line, `kestrel deploy --serial`'s library on the other end.
    Serial,
    /// `kestrel-edge store put-blob` then `store install`, as `kestrel deploy --ssh` runs them.
    StoreCommands,
}

/// Puts bundle `dir` into the store in-process (no fail point), as the base every case starts from.
fn install_in_process(store: &Path, dir: &Path) -> String {
    let bundle = LocalBundle::open(dir, true).unwrap();
    let mut s = Store::open(store).unwrap();
    for f in bundle.files() {
        let file = std::fs::File::open(dir.join(&f.name)).unwrap();
        s.install_blob(&f.sha256.to_hex(), file).unwrap();
    }
    let sha = bundle.manifest_file.sha256;
    let id = bundle_id(&sha);
    install_from_store(
        &mut s,
        &id,
        &sha.to_hex(),
        InstallPolicy::default(),
        &mut |_| Ok(()),
    )
    .unwrap();
    id
}

/// The store at `root` after a crash: opens (recovering), blobs intact, nothing temporary left,
/// bundle directories equal their records, history names existing bundles, and `current` is one
/// of `allowed` and loads. Returns the current id.
fn assert_consistent(root: &Path, allowed: &[&str], what: &str) -> String {
    let store =
        Store::open(root).unwrap_or_else(|e| panic!("{what}: the store does not open: {e}"));
    let current = store
        .current()
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: no current bundle"));
    assert!(
        allowed.contains(&current.as_str()),
        "{what}: current is {current}, expected one of {allowed:?}"
    );
    Bundle::open(&store.current_path().unwrap().unwrap())
        .unwrap_or_else(|e| panic!("{what}: the current bundle does not load: {e}"));
    for b in store.bundles().unwrap() {
        for (name, sha) in &b.files {
            let file = root.join("bundles").join(&b.id).join(name);
            let blob = root.join("blobs").join(sha);
            assert_eq!(
                std::fs::metadata(&file).unwrap().ino(),
                std::fs::metadata(&blob).unwrap().ino(),
                "{what}: {} is not the blob its record names",
                file.display()
            );
        }
    }
    drop(store);
    assert_store_blobs_intact(root);
    for sub in ["", "blobs", "bundles", "partial"] {
        let Ok(entries) = std::fs::read_dir(root.join(sub)) else {
            continue;
        };
        for e in entries {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(".tmp-"),
                "{what}: {sub}/{name} left after recovery"
            );
        }
    }
    let history: Vec<String> =
        serde_json::from_slice(&std::fs::read(root.join("history.json")).unwrap()).unwrap();
    for id in &history {
        assert!(
            root.join("bundles").join(id).is_dir(),
            "{what}: history names {id}, which is not in the store"
        );
    }
    current
}

fn options() -> SerialOptions {
    SerialOptions {
        baud: 2_000_000,
        hello_timeout: Duration::from_millis(500),
        install_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// Deploys `bundle` over a pty to a real agent armed with `point`; returns the agent's stderr
/// after it died (it must have been killed by SIGKILL at that point).
fn serial_crash(store: &Path, bundle: &LocalBundle, point: Option<&str>) -> Option<String> {
    let env: Vec<(&str, &str)> = point
        .map(|p| ("KESTREL_FAIL_POINT", p))
        .into_iter()
        .collect();
    let (mut agent, mut line) = spawn_agent(store, &env, Stdio::piped());
    let start = std::time::Instant::now();
    let result = loop {
        let r = serial::deploy(&mut line, bundle, &options(), &Silent);
        let died = agent.try_wait().unwrap().is_some();
        if r.is_ok() || died || start.elapsed() > Duration::from_secs(20) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match point {
        None => {
            result.unwrap_or_else(|e| panic!("deploy without a fail point: {e}"));
            agent.kill().unwrap();
            agent.wait().unwrap();
            None
        }
        Some(p) => {
            assert!(
                result.is_err(),
                "{p}: the deploy succeeded although the agent was to die"
            );
            let out = agent.wait_with_output().unwrap();
            Some(killed_at(p, out))
        }
    }
}

/// The process ended by SIGKILL and said it reached `point`; returns its stderr.
fn killed_at(point: &str, out: std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        Some(SIGKILL),
        "{point}: not killed at the fail point ({}); stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains(&format!("fail point {point} reached")),
        "{point}: {stderr}"
    );
    stderr
}

/// `kestrel-edge store ARGS` with `stdin`, and `point` armed.
fn store_command(
    store: &Path,
    args: &[&str],
    stdin: Option<&Path>,
    point: Option<&str>,
) -> std::process::Output {
    match point {
        Some(p) => edge_store(store, args, stdin, &[("KESTREL_FAIL_POINT", p)]),
        None => edge_store(store, args, stdin, &[]),
    }
}

/// Every blob, then the install, through the store commands; stops at the first command killed
/// by `point` (returns true) or completes (false).
fn store_commands_crash(store: &Path, dir: &Path, point: Option<&str>) -> bool {
    // Whether the command was killed at the fail point; any other failure fails the test.
    let killed = |out: std::process::Output, what: &str| -> bool {
        if out.status.signal().is_some() {
            killed_at(point.unwrap(), out);
            return true;
        }
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        false
    };
    let bundle = LocalBundle::open(dir, true).unwrap();
    for f in bundle.files() {
        let sha = f.sha256.to_hex();
        let out = store_command(store, &["put-blob", &sha], Some(&dir.join(&f.name)), point);
        if killed(out, &format!("put-blob {}", f.name)) {
            return true;
        }
    }
    let sha = bundle.manifest_file.sha256.to_hex();
    let id = bundle_id(&Sha256::from_hex(&sha).unwrap());
    let args = ["install", "--id", &id, "--manifest", &sha];
    killed(store_command(store, &args, None, point), "install")
}

fn path_of(point: &str) -> &'static [Route] {
    if point.starts_with("partial-") {
        &[Route::Serial]
    } else if point.starts_with("upload-") {
        &[Route::StoreCommands]
    } else {
        &[Route::Serial, Route::StoreCommands]
    }
}

#[test]
fn a_kill_at_every_step_of_receive_and_install_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tiny_bundle(&a, 1, 1);
    // Same trunk: only the head and the manifest travel, as for a retrained head.
    tiny_bundle(&b, 1, 2);
    let bundle_b = LocalBundle::open(&b, true).unwrap();
    let base = tmp.path().join("base");
    let id_a = install_in_process(&base, &a);
    let mut table = Vec::new();
    for &point in FAIL_POINTS {
        for &path in path_of(point) {
            let what = format!("{point} ({path:?})");
            let store = tmp.path().join(format!("store-{point}-{path:?}"));
            let status = Command::new("cp")
                .arg("-a")
                .arg(&base)
                .arg(&store)
                .status()
                .unwrap();
            assert!(status.success());
            match path {
                Route::Serial => {
                    serial_crash(&store, &bundle_b, Some(point));
                }
                Route::StoreCommands => {
                    assert!(
                        store_commands_crash(&store, &b, Some(point)),
                        "{what}: the fail point was never reached"
                    );
                }
            }
            let after_crash = assert_consistent(&store, &[&id_a, &bundle_b.id], &what);
            // The same deploy, no fail point: it completes.
            match path {
                Route::Serial => {
                    serial_crash(&store, &bundle_b, None);
                }
                Route::StoreCommands => {
                    assert!(!store_commands_crash(&store, &b, None));
                }
            }
            let finally =
                assert_consistent(&store, &[&bundle_b.id], &format!("{what}, redeployed"));
            table.push(format!(
                "{point:<26} {:<13} current after the kill: {}, after the redeploy: {}",
                format!("{path:?}"),
                if after_crash == id_a { "old" } else { "new" },
                if finally == bundle_b.id { "new" } else { "old" }
            ));
        }
    }
    println!("{}", table.join("\n"));
    assert!(table.len() >= FAIL_POINTS.len());
}

/// A real agent on a pty, with `env`; the test keeps the master end.
fn spawn_agent(
    store: &Path,
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (std::process::Child, kestrel_shared::transport::TTYPort) {
    let (master, slave) = pty_pair().unwrap();
    let slave_name = slave.describe();
    drop(slave);
    let mut cmd = Command::new(bin("kestrel-edge"));
    cmd.args(["agent", "--store"])
        .arg(store)
        .args(["--serial", &slave_name, "--telemetry-interval", "0.5"])
        .env("RUST_LOG", "warn")
        .stderr(stderr);
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().unwrap(), master)
}

/// Deploys until the agent answers (it opens its end of the line after starting).
fn deploy_when_up(
    line: &mut dyn Transport,
    bundle: &LocalBundle,
) -> Result<kestrel_trainer::deploy::DeployReport, kestrel_trainer::deploy::DeployError> {
    let start = std::time::Instant::now();
    loop {
        match serial::deploy(line, bundle, &options(), &Silent) {
            Err(kestrel_trainer::deploy::DeployError::Refused(m)) => {
                return Err(kestrel_trainer::deploy::DeployError::Refused(m));
            }
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// An I/O error in the middle of a blob (an injected EIO on the second chunk): the deploy fails
/// with the board's reason, the agent keeps running its model, and a later deploy resumes at the
/// bytes stored before the error.
#[test]
fn an_io_error_mid_blob_is_reported_and_the_upload_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tiny_bundle(&a, 1, 1);
    tiny_bundle(&b, 2, 2);
    let store = tmp.path().join("store");
    let id_a = install_in_process(&store, &a);
    let bundle_b = LocalBundle::open(&b, true).unwrap();
    let (mut agent, mut line) = spawn_agent(
        &store,
        &[("KESTREL_FAIL_POINT", "eio:partial-write")],
        Stdio::null(),
    );
    let err = deploy_when_up(&mut line, &bundle_b)
        .unwrap_err()
        .to_string();
    println!("deploy with a failing disk: {err}");
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent keeps running"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert_eq!(assert_consistent(&store, &[&id_a], "after EIO"), id_a);
    let (mut agent, mut line) = spawn_agent(&store, &[], Stdio::null());
    let r = deploy_when_up(&mut line, &bundle_b).unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    let trunk = r.blobs.iter().find(|x| x.name == "trunk.nnef.tar").unwrap();
    println!(
        "resumed: trunk.nnef.tar from byte {} of {} ({} sent)",
        trunk.start_offset, trunk.size, trunk.bytes_sent
    );
    assert!(
        trunk.start_offset > 0,
        "the stored bytes are kept: {trunk:?}"
    );
    assert_eq!(
        assert_consistent(&store, &[&bundle_b.id], "after the resume"),
        bundle_b.id
    );
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A real full disk: the store on a 320 KiB tmpfs that holds one tiny bundle (about 150 KB) but
/// not a second with another trunk. The deploy is refused as "no space left", nothing is
/// corrupted, and the board keeps its bundle.
#[test]
fn a_real_full_disk_refuses_the_deploy_and_keeps_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let mount = tmp.path().join("small");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=320k", "tmpfs"])
        .arg(&mount)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !kestrel_e2e::tool_available(
        "tmpfs",
        mounted,
        "run the tests as root (mounting a small tmpfs needs it)",
    ) {
        return;
    }
    let _guard = Tmpfs(mount.clone());
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tiny_bundle(&a, 3, 3);
    tiny_bundle(&b, 4, 4);
    let store = mount.join("store");
    let id_a = install_in_process(&store, &a);
    let (mut agent, mut line) = spawn_agent(&store, &[], Stdio::null());
    let err = deploy_when_up(&mut line, &LocalBundle::open(&b, true).unwrap())
        .unwrap_err()
        .to_string();
    agent.kill().unwrap();
    agent.wait().unwrap();
    println!("deploy to a full disk: {err}");
    assert!(err.contains("no space left on the board"), "{err}");
    assert_eq!(assert_consistent(&store, &[&id_a], "full disk"), id_a);
    // The SSH path writes without asking first: the kernel's own ENOSPC, mid-blob.
    let trunk = LocalBundle::open(&b, true).unwrap().files()[0].clone();
    let out = store_command(
        &store,
        &["put-blob", &trunk.sha256.to_hex()],
        Some(&b.join(&trunk.name)),
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("put-blob to a full disk: {stderr}");
    assert!(!out.status.success());
    assert!(
        stderr.contains("no space left on the board while writing"),
        "{stderr}"
    );
    assert_eq!(assert_consistent(&store, &[&id_a], "full disk, ssh"), id_a);
}
