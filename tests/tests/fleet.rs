//! `kestrel fleet` against several real OpenSSH servers on 127.0.0.1, each a "board" with its own
//! port, key and store, named in an Ansible inventory: two boards running the agent with a
//! detection loop, one reached through an ssh_config alias, one whose trust list refuses unsigned
//! bundles, and one that does not answer. Without `sshd` the test fails, unless
//! `KESTREL_SKIP_SSHD=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kestrel_e2e::{Sshd, bin, run, ssh_user, start_sshd, tiny_bundle};
use kestrel_trainer::deploy::LocalBundle;
use kestrel_trainer::fleet::deploy::{BoardResult, Outcome};
use kestrel_trainer::fleet::status::BoardState;

/// A board: its sshd (None: nothing listens on its port), store and agent process.
struct Board {
    name: &'static str,
    sshd: Option<Sshd>,
    port: u16,
    store: PathBuf,
    agent: Option<Child>,
}

impl Drop for Board {
    fn drop(&mut self) {
        self.stop_agent();
    }
}

impl Board {
    /// Starts `kestrel-edge agent` on the store, with a detection loop on `frames` if given.
    fn start_agent(&mut self, frames: Option<&Path>) {
        let mut c = Command::new(bin("kestrel-edge"));
        c.arg("agent")
            .arg("--store")
            .arg(&self.store)
            .args(["--threads", "1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(f) = frames {
            c.arg("--source")
                .arg(format!("dir:{}", f.display()))
                .args(["--fps", "20", "--loop"]);
        }
        self.agent = Some(c.spawn().unwrap());
        let start = Instant::now();
        while !self.store.join("agent.sock").exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{}: no agent",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the agent the way a crash would (its socket stays behind).
    fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.store.join("current"))
            .ok()
            .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
    }
}

/// `kestrel fleet ARGS`: success, the JSON rows, stderr.
fn fleet<T: serde::de::DeserializeOwned>(
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, Vec<T>, String) {
    let mut c = Command::new(bin("kestrel"));
    c.arg("fleet").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let (ok, out, err) = run(&mut c);
    let rows = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{err}")))
        .collect();
    (ok, rows, err)
}

fn by_host<'a>(rows: &'a [BoardResult], host: &str) -> &'a BoardResult {
    rows.iter()
        .find(|r| r.host == host)
        .unwrap_or_else(|| panic!("no row for {host}: {rows:?}"))
}

#[test]
fn a_fleet_deploy_goes_canary_first_reports_every_board_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let names = ["c1", "b2", "b3", "r4", "u5"];
    let mut boards = Vec::new();
    for name in names {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let sshd = if name == "u5" {
            None
        } else {
            match start_sshd(&dir) {
                Some(s) => Some(s),
                None => return,
            }
        };
        let port = match &sshd {
            Some(s) => s.port,
            // A port nothing listens on: bound, then released.
            None => std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
        };
        boards.push(Board {
            name,
            sshd,
            port,
            store: dir.join("store"),
            agent: None,
        });
    }
    let user = ssh_user();
    let key = |b: &Board| {
        b.sshd
            .as_ref()
            .map_or(PathBuf::from("/nonexistent"), |s| s.key.clone())
    };

    // b3 is known only by its alias in an ssh_config (what `~/.ssh/config` gives a user).
    let ssh_config = root.join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host b3\n  HostName 127.0.0.1\n  Port {}\n  User {user}\n  IdentityFile {}\n  \
             UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  LogLevel ERROR\n",
            boards[2].port,
            key(&boards[2]).display()
        ),
    )
    .unwrap();
    // r4 trusts one key only; the test bundles are unsigned.
    let keys = kestrel_trainer::deploy::keygen(&root.join("keys"), false).unwrap();
    let trust = root.join("trust.list");
    std::fs::write(&trust, format!("{}\n", keys.line)).unwrap();

    let host_line = |b: &Board| {
        format!(
            "{} ansible_host=127.0.0.1 ansible_port={} ansible_ssh_private_key_file={} kestrel_store={}",
            b.name,
            b.port,
            key(b).display(),
            b.store.display()
        )
    };
    let inventory = root.join("hosts.ini");
    std::fs::write(
        &inventory,
        format!(
            "# the shop's boards\n[shelf]\n{}\n{}\n\n[lab]\nb3 ansible_ssh_common_args=\"-F {}\" kestrel_store={}\n\
             {} kestrel_trust={}\n{}\n\n[boards:children]\nshelf\nlab\n\n[boards:vars]\n\
             ansible_user={user}\nkestrel_edge={}\n\
             ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR'\n",
            host_line(&boards[0]),
            host_line(&boards[1]),
            ssh_config.display(),
            boards[2].store.display(),
            host_line(&boards[3]),
            trust.display(),
            host_line(&boards[4]),
            bin("kestrel-edge").display()
        ),
    )
    .unwrap();
    let inv = inventory.to_str().unwrap();

    // Frames for the detection loops, and three bundles: b shares a's trunk (a head-only
    // change), c has a trunk of its own.
    let frames = root.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..4u8 {
        image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([x as u8 * 8, y as u8 * 8, i * 60])
        })
        .save(frames.join(format!("{i}.png")))
        .unwrap();
    }
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|n| root.join(n)).collect();
    tiny_bundle(&dirs[0], 40, 40);
    tiny_bundle(&dirs[1], 40, 41);
    tiny_bundle(&dirs[2], 42, 42);
    let ids: Vec<String> = dirs
        .iter()
        .map(|d| LocalBundle::open(d, true).unwrap().id)
        .collect();
    let bundle = |i: usize| dirs[i].to_str().unwrap().to_string();

    boards[0].start_agent(Some(&frames));
    boards[1].start_agent(Some(&frames));
    boards[2].start_agent(None);
    let t0 = Instant::now();
    let step = |what: &str| println!("{:6.2} s  {what}", t0.elapsed().as_secs_f64());

    // 1. Bundle a everywhere, c1 as the canary.
    let start = Instant::now();
    let (ok, rows, err) = fleet::<BoardResult>(
        &[
            "deploy",
            &bundle(0),
            "-i",
            inv,
            "--canary",
            "1",
            "--canary-wait",
            "1",
            "--parallel",
            "4",
            "--json",
        ],
        &[],
    );
    println!(
        "first fleet deploy in {:.1} s: {rows:#?}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        !ok,
        "a refused and an unreachable board make the exit status non-zero: {err}"
    );
    assert_eq!(rows.len(), 5, "one row per board: {rows:?}");
    let c1 = by_host(&rows, "c1");
    assert!(c1.canary && c1.status == Outcome::Deployed, "{c1:?}");
    for h in ["b2", "b3"] {
        assert_eq!(by_host(&rows, h).status, Outcome::Deployed, "{rows:?}");
    }
    let r4 = by_host(&rows, "r4");
    assert_eq!(r4.status, Outcome::Refused, "{r4:?}");
    assert!(r4.reason.as_deref().unwrap().contains("unsigned"), "{r4:?}");
    let u5 = by_host(&rows, "u5");
    assert_eq!(u5.status, Outcome::Unreachable, "{u5:?}");
    for b in &boards[..3] {
        assert_eq!(b.current().as_deref(), Some(ids[0].as_str()), "{}", b.name);
    }
    assert_eq!(boards[3].current(), None, "r4 keeps what it had: nothing");

    step("first deploy");
    // 2. One table: the agents' health, the unreachable board listed.
    let start = Instant::now();
    let (ok, states, _) = fleet::<BoardState>(&["status", "-i", inv, "--json"], &[]);
    println!("fleet status in {:.2} s", start.elapsed().as_secs_f64());
    assert!(!ok, "an unreachable board makes the status non-zero");
    assert_eq!(
        states.iter().map(|s| s.host.as_str()).collect::<Vec<_>>(),
        names
    );
    let c1 = &states[0];
    assert!(c1.reachable && c1.agent, "{c1:?}");
    assert_eq!(c1.current.as_deref(), Some(ids[0].as_str()));
    assert_eq!(c1.labels, ["left", "right", "none"]);
    assert!(c1.fps.is_some_and(|f| f > 0.0), "the loop runs: {c1:?}");
    assert!(
        states[2].agent && states[2].fps.is_none(),
        "b3 runs no loop: {:?}",
        states[2]
    );
    assert!(
        states[3].reachable && !states[3].agent,
        "r4 runs no agent: {:?}",
        states[3]
    );
    assert!(
        !states[4].reachable && states[4].error.is_some(),
        "{:?}",
        states[4]
    );
    let (_, table, _) = {
        let mut c = Command::new(bin("kestrel"));
        c.args(["fleet", "status", "-i", inv]);
        run(&mut c)
    };
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("u5") && l.contains("unreachable")),
        "{table}"
    );

    // `kestrel doctor -i` asks the same question of every board, one check each.
    let out = Command::new(bin("kestrel"))
        .args(["doctor", "--json", "-i", inv])
        .env("KESTREL_WEIGHTS", kestrel_e2e::weights())
        .output()
        .unwrap();
    assert!(!out.status.success(), "u5 is unreachable: not ready");
    let report: kestrel_trainer::doctor::Report = serde_json::from_slice(&out.stdout).unwrap();
    let board = |name: &str| {
        report
            .checks
            .iter()
            .find(|c| c.name == format!("board {name}"))
            .unwrap_or_else(|| panic!("no check of {name}: {report:?}"))
    };
    use kestrel_trainer::doctor::Status;
    assert_eq!(board("c1").status, Status::Ok, "{:?}", board("c1"));
    assert_eq!(board("r4").status, Status::Warn, "r4 runs no agent");
    assert_eq!(board("u5").status, Status::Missing);
    assert!(!report.ready);
    let weights = report.checks.iter().find(|c| c.name == "weights").unwrap();
    assert_eq!(weights.status, Status::Ok);

    step("status");
    // 3. A canary whose agent died: it fails its health check, is put back, the rest wait.
    boards[0].stop_agent();
    let (ok, rows, _) = fleet::<BoardResult>(
        &[
            "deploy",
            &bundle(1),
            "-i",
            inv,
            "--limit",
            "boards:!r4:!u5",
            "--canary",
            "1",
            "--canary-wait",
            "1",
            "--rollback-on-failure",
            "--json",
        ],
        &[],
    );
    assert!(!ok);
    let c1_rows: Vec<_> = rows.iter().filter(|r| r.host == "c1").collect();
    assert_eq!(c1_rows.len(), 2, "failed, then rolled back: {rows:?}");
    assert_eq!(c1_rows[0].status, Outcome::Unhealthy, "{rows:?}");
    assert!(
        c1_rows[0].reason.as_deref().unwrap().contains("agent"),
        "{rows:?}"
    );
    assert_eq!(c1_rows[1].status, Outcome::RolledBack, "{rows:?}");
    assert_eq!(
        boards[0].current().as_deref(),
        Some(ids[0].as_str()),
        "c1 back on a"
    );
    for h in ["b2", "b3"] {
        assert_eq!(by_host(&rows, h).status, Outcome::Skipped, "{rows:?}");
    }
    assert_eq!(
        boards[1].current().as_deref(),
        Some(ids[0].as_str()),
        "b2 untouched"
    );

    step("failed canary, rolled back");
    // 4. A fleet deploy cut mid-upload (every board), run again: it resumes, then is a no-op.
    boards[0].start_agent(Some(&frames));
    const CUT: u64 = 30_000;
    let cutting = root.join("cutting-ssh");
    std::fs::write(
        &cutting,
        format!("#!/bin/sh\nhead -c {CUT} | exec ssh \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        &cutting,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let limit = ["--limit", "shelf,b3"];
    let deploy_c = |env: &[(&str, &str)]| {
        let mut a = vec!["deploy", dirs[2].to_str().unwrap(), "-i", inv, "--json"];
        a.extend(limit);
        fleet::<BoardResult>(&a, env)
    };
    let (ok, cut, _) = deploy_c(&[("KESTREL_SSH", cutting.to_str().unwrap())]);
    assert!(
        !ok && cut.iter().all(|r| r.status == Outcome::Failed),
        "{cut:?}"
    );
    assert!(
        cut.iter().all(|r| r
            .reason
            .as_deref()
            .unwrap()
            .contains(&format!("stopped at byte {CUT}"))),
        "{cut:?}"
    );
    step("cut deploy done");
    let (ok, resumed, err) = deploy_c(&[]);
    step("resumed deploy done");
    assert!(ok, "{err}\n{resumed:?}");
    let trunk = std::fs::metadata(dirs[2].join("trunk.nnef.tar"))
        .unwrap()
        .len();
    for r in &resumed {
        assert_eq!(r.status, Outcome::Deployed, "{r:?}");
        assert!(
            r.bytes_sent < trunk,
            "{}: resumed after the {CUT} bytes the board kept ({} bytes sent, trunk {trunk})",
            r.host,
            r.bytes_sent
        );
    }
    let (ok, again, _) = deploy_c(&[]);
    assert!(
        ok && again
            .iter()
            .all(|r| r.status == Outcome::Current && r.bytes_sent == 0),
        "{again:?}"
    );
    for b in &boards[..3] {
        assert_eq!(b.current().as_deref(), Some(ids[2].as_str()), "{}", b.name);
    }

    step("deploy run again: nothing to do");
    // 5. Roll one group back: each board to the bundle it installed before c (c1 got b in step
    // 3, then was put back on a; b2 never had b).
    let mut c = Command::new(bin("kestrel"));
    c.args(["fleet", "rollback", "-i", inv, "--limit", "shelf"]);
    let (ok, out, err) = run(&mut c);
    assert!(ok, "{out}{err}");
    assert_eq!(boards[0].current().as_deref(), Some(ids[1].as_str()));
    assert_eq!(boards[1].current().as_deref(), Some(ids[0].as_str()));
    assert_eq!(
        boards[2].current().as_deref(),
        Some(ids[2].as_str()),
        "b3 is not in shelf"
    );

    // 6. `kestrel install` on every board of a YAML inventory, each under its own root (this
    // machine plays both boards, so the x86 binary goes with --allow-foreign-arch).
    let yaml = root.join("hosts.yml");
    let mut hosts = String::new();
    for b in &boards[..2] {
        hosts.push_str(&format!(
            "        {}:\n          ansible_host: 127.0.0.1\n          ansible_port: {}\n          \
             ansible_ssh_private_key_file: {}\n          kestrel_prefix: {}\n",
            b.name,
            b.port,
            key(b).display(),
            root.join(b.name).join("root").display()
        ));
    }
    std::fs::write(
        &yaml,
        format!(
            "all:\n  vars:\n    ansible_user: {user}\n    kestrel_board: raspberry-pi-4\n    \
             ansible_ssh_common_args: -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR\n  \
             children:\n    shelf:\n      hosts:\n{hosts}"
        ),
    )
    .unwrap();
    let mut c = Command::new(bin("kestrel"));
    c.env("KESTREL_CONFIG_DIR", root.join("keys"))
        .args([
            "--quiet",
            "fleet",
            "install",
            "-i",
            yaml.to_str().unwrap(),
            "--edge-bin",
        ])
        .arg(bin("kestrel-edge"))
        .arg("--allow-foreign-arch");
    let (ok, out, err) = run(&mut c);
    assert!(ok, "{out}{err}");
    for b in &boards[..2] {
        let installed = root.join(b.name).join("root/usr/local/bin/kestrel-edge");
        assert!(installed.is_file(), "{}: {out}", installed.display());
        assert!(
            out.lines()
                .any(|l| l.starts_with(b.name) && l.contains(" ok ")),
            "{out}"
        );
    }
}
