//! `cargo run -p kestrel-e2e --bin fleet-bench [BOARDS] [RUNS]` (the workspace's dev profile is
//! optimised): the fleet targets of issue 21 on loopback. Starts BOARDS (20) real sshd processes,
//! each a board with its own store, deploys a bundle to all, then times RUNS (5) head-only
//! redeploys with `kestrel fleet deploy --parallel 8` and RUNS `kestrel fleet status`, against the
//! same redeploy done board by board with `kestrel deploy --ssh` (what a user would script without
//! fleet). Prints medians and the spread, and one JSON line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kestrel_e2e::{bin, run, ssh_user, start_sshd, tiny_bundle};

fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn timed(c: &mut Command) -> f64 {
    let start = Instant::now();
    let (ok, out, err) = run(c);
    assert!(ok, "{c:?} failed:\n{out}\n{err}");
    start.elapsed().as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map_or(20, |a| a.parse().expect("BOARDS: a number"));
    let runs: usize = args
        .next()
        .map_or(5, |a| a.parse().expect("RUNS: a number"));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let user = ssh_user();
    let edge = bin("kestrel-edge");
    let mut lines = vec![format!(
        "[boards:vars]\nansible_user={user}\nkestrel_edge={}\n\
         ansible_ssh_common_args='-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o LogLevel=ERROR'\n\n[boards]",
        edge.display()
    )];
    let mut servers = Vec::new();
    let mut singles: Vec<(String, PathBuf, PathBuf)> = Vec::new();
    for i in 0..n {
        let dir = root.join(format!("board{i:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        let sshd = start_sshd(&dir).expect("sshd is needed (apt-get install openssh-server)");
        let store = dir.join("store");
        lines.push(format!(
            "board{i:02} ansible_host=127.0.0.1 ansible_port={} ansible_ssh_private_key_file={} kestrel_store={}",
            sshd.port,
            sshd.key.display(),
            store.display()
        ));
        singles.push((
            format!("{user}@127.0.0.1:{}", sshd.port),
            sshd.key.clone(),
            store,
        ));
        servers.push(sshd);
    }
    let inventory = root.join("hosts.ini");
    std::fs::write(&inventory, lines.join("\n") + "\n").unwrap();
    let bundle = |k: u64| {
        let d = root.join(format!("bundle{k}"));
        tiny_bundle(&d, 1, k);
        d
    };
    let fleet_deploy = |dir: &Path| {
        let mut c = Command::new(bin("kestrel"));
        c.args(["--quiet", "fleet", "deploy"])
            .arg(dir)
            .arg("-i")
            .arg(&inventory)
            .args(["--parallel", "8"]);
        c
    };
    println!("{n} boards on loopback, {runs} runs each");
    let first = timed(&mut fleet_deploy(&bundle(1)));
    println!("first deploy (trunk and head) to {n} boards: {first:.2} s");

    let mut fleet = Vec::new();
    let mut one_by_one = Vec::new();
    for r in 0..runs {
        fleet.push(timed(&mut fleet_deploy(&bundle(100 + r as u64))));
        let next = bundle(200 + r as u64);
        let start = Instant::now();
        for (target, key, store) in &singles {
            let mut c = Command::new(bin("kestrel"));
            c.args(["--quiet", "deploy"])
                .arg(&next)
                .args(["--ssh", target, "--remote-bin"])
                .arg(&edge)
                .arg("--store")
                .arg(store)
                .arg("--ssh-option")
                .arg(format!("IdentityFile={}", key.display()))
                .args([
                    "--ssh-option=UserKnownHostsFile=/dev/null",
                    "--ssh-option=StrictHostKeyChecking=no",
                    "--ssh-option=LogLevel=ERROR",
                    "--ssh-option=BatchMode=yes",
                ]);
            let (ok, out, err) = run(&mut c);
            assert!(ok, "{out}{err}");
        }
        one_by_one.push(start.elapsed().as_secs_f64());
    }
    let mut status = Vec::new();
    for _ in 0..runs {
        let mut c = Command::new(bin("kestrel"));
        c.args(["fleet", "status", "--json", "-i"]).arg(&inventory);
        status.push(timed(&mut c));
    }
    let (f, fmin, fmax) = median_spread(fleet);
    let (o, omin, omax) = median_spread(one_by_one);
    let (s, smin, smax) = median_spread(status);
    println!(
        "head-only redeploy, fleet --parallel 8: median {f:.2} s ({fmin:.2}-{fmax:.2}); target < 10 s"
    );
    println!(
        "same redeploy board by board (kestrel deploy --ssh): median {o:.2} s ({omin:.2}-{omax:.2}); fleet is {:.1}x faster",
        o / f
    );
    println!("fleet status: median {s:.2} s ({smin:.2}-{smax:.2}); target < 3 s");
    println!(
        "{}",
        serde_json::json!({
            "boards": n, "runs": runs, "first_deploy_s": first,
            "redeploy_s": {"median": f, "min": fmin, "max": fmax},
            "one_by_one_s": {"median": o, "min": omin, "max": omax},
            "status_s": {"median": s, "min": smin, "max": smax},
        })
    );
    drop(servers);
}
