//! `kestrel install` against a real OpenSSH server on 127.0.0.1 (the deploy tests' throwaway
//! sshd), with `--prefix` so every path lands in a temporary directory. There is no systemd here:
//! the unit is checked as a file and the output must say that systemd was not found.
//! The "board" is this machine, so an x86 `kestrel-edge` is installed with `--allow-foreign-arch`.
//! Without `sshd` the test fails, unless `KESTREL_SKIP_SSHD=1` (then it is skipped, and says so).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use kestrel_e2e::{
    assert_systemd_accepts, bin, loopback_ssh_options, run_ok, ssh_user, start_sshd, tiny_bundle,
};

fn install(
    config: &Path,
    target: &str,
    options: &[String],
    prefix: &Path,
    edge_bin: &Path,
    bundle: Option<&Path>,
) -> String {
    let mut c = Command::new(bin("kestrel"));
    c.env("KESTREL_CONFIG_DIR", config)
        .args([
            "--quiet",
            "install",
            "--board",
            "raspberry-pi-4",
            "--ssh",
            target,
        ])
        .arg("--prefix")
        .arg(prefix)
        .arg("--edge-bin")
        .arg(edge_bin)
        .arg("--allow-foreign-arch")
        .args(options.iter().flat_map(|o| ["--ssh-option", o.as_str()]));
    if let Some(b) = bundle {
        c.arg("--bundle").arg(b);
    }
    let (out, err) = run_ok(&mut c);
    println!("{out}{err}");
    out
}

#[test]
fn install_over_ssh_writes_binary_unit_and_trust_and_upgrades_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(sshd) = start_sshd(tmp.path()) else {
        return;
    };
    let target = format!("{}@127.0.0.1:{}", ssh_user(), sshd.port);
    let options = loopback_ssh_options(&sshd);
    let config = tmp.path().join("config");
    run_ok(
        Command::new(bin("kestrel"))
            .env("KESTREL_CONFIG_DIR", &config)
            .arg("keygen"),
    );
    let public = std::fs::read_to_string(config.join("kestrel.pub")).unwrap();
    let key_word = public.split_whitespace().next().unwrap().to_string();
    let prefix = tmp.path().join("root");
    std::fs::create_dir_all(&prefix).unwrap();

    // Without a key (and without --no-trust): a clear error.
    let (ok, _, err) = kestrel_e2e::run(
        Command::new(bin("kestrel"))
            .env("KESTREL_CONFIG_DIR", tmp.path().join("nokey"))
            .args(["install", "--board", "raspberry-pi-4", "--ssh", &target])
            .arg("--prefix")
            .arg(&prefix)
            .arg("--edge-bin")
            .arg(bin("kestrel-edge"))
            .arg("--allow-foreign-arch"),
    );
    assert!(!ok && err.contains("kestrel keygen"), "{err}");
    // An x86 binary for an aarch64 board, without the escape hatch: refused.
    let (ok, _, err) = kestrel_e2e::run(
        Command::new(bin("kestrel"))
            .env("KESTREL_CONFIG_DIR", &config)
            .args(["install", "--board", "raspberry-pi-4", "--ssh", &target])
            .arg("--prefix")
            .arg(&prefix)
            .arg("--edge-bin")
            .arg(bin("kestrel-edge")),
    );
    assert!(!ok && err.contains("--allow-foreign-arch"), "{err}");

    // First install.
    let first = bin("kestrel-edge");
    let out = install(&config, &target, &options, &prefix, &first, None);
    assert!(out.contains("systemd was not found"), "{out}");
    let installed = prefix.join("usr/local/bin/kestrel-edge");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&first).unwrap()
    );
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "{mode:o}");

    let store = prefix.join("var/lib/kestrel");
    let trust = store.join("trust.txt");
    let unit =
        std::fs::read_to_string(prefix.join("etc/systemd/system/kestrel-edge.service")).unwrap();
    let exec = format!(
        "ExecStart={} agent --store {} --trust {} --board raspberry-pi-4 --serial /dev/serial0 \
         --baud 115200\n",
        installed.display(),
        store.display(),
        trust.display()
    );
    assert!(unit.contains(&exec), "{unit}");
    for line in [
        "Restart=on-failure\n",
        "RestartSec=2\n",
        "MemoryMax=1024M\n",
        "User=kestrel\n",
        "After=network-online.target\n",
        "WantedBy=multi-user.target\n",
        "Type=notify\n",
        "WatchdogSec=30\n",
        &format!("ReadWritePaths={}\n", store.display()),
    ] {
        assert!(unit.contains(line), "{line:?} missing from\n{unit}");
    }
    // Only the board file's groups that exist on the "board" (this machine).
    let etc_group = std::fs::read_to_string("/etc/group").unwrap();
    let present: Vec<&str> = ["video", "gpio", "dialout"]
        .into_iter()
        .filter(|g| etc_group.lines().any(|l| l.starts_with(&format!("{g}:"))))
        .collect();
    match present.is_empty() {
        true => assert!(!unit.contains("SupplementaryGroups="), "{unit}"),
        false => assert!(
            unit.contains(&format!("SupplementaryGroups={}\n", present.join(" "))),
            "{present:?}\n{unit}"
        ),
    }
    // The unit as written to the board is one systemd accepts.
    assert_systemd_accepts(&prefix.join("etc/systemd/system/kestrel-edge.service"));

    // Rerun with another binary: upgraded in place, the old one kept, the key listed once.
    let second = tmp.path().join("kestrel-edge-2");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes.extend_from_slice(b"kestrel upgrade");
    std::fs::write(&second, &bytes).unwrap();
    std::fs::set_permissions(&second, std::fs::Permissions::from_mode(0o755)).unwrap();

    // Sign a tiny bundle with the host key: the agent's trust list accepts it.
    let bundle = tmp.path().join("bundle");
    tiny_bundle(&bundle, 40, 41);
    run_ok(
        Command::new(bin("kestrel-edge"))
            .args(["info", "--bundle"])
            .arg(&bundle),
    );
    kestrel_trainer::deploy::sign_bundle(&bundle, &config.join("kestrel.key")).unwrap();
    let id = kestrel_trainer::deploy::LocalBundle::open(&bundle, true)
        .unwrap()
        .id;

    let out = install(&config, &target, &options, &prefix, &second, Some(&bundle));
    assert!(out.contains("systemd was not found"), "{out}");
    assert_eq!(std::fs::read(&installed).unwrap(), bytes);
    assert_eq!(
        std::fs::read(prefix.join("usr/local/bin/kestrel-edge.old")).unwrap(),
        std::fs::read(&first).unwrap()
    );
    let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "{mode:o}");
    let listed = std::fs::read_to_string(&trust).unwrap();
    assert_eq!(listed.matches(&key_word).count(), 1, "{listed}");
    assert!(listed.contains(public.trim()), "{listed}");

    // The bundle is current in the installed agent's store.
    let (list, _) = run_ok(
        Command::new(&installed)
            .arg("store")
            .arg("--store")
            .arg(&store)
            .args(["list", "--json"]),
    );
    let v: serde_json::Value = serde_json::from_str(list.trim()).unwrap();
    assert_eq!(v["current"].as_str(), Some(id.as_str()), "{list}");
}
