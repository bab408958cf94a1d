//! The `kestrel` and `kestrel-edge` binaries as a user runs them.

use std::process::Command;

use kestrel_e2e::{bin, golden_manifest, photo, weights};

fn kestrel() -> Command {
    let mut c = Command::new(bin("kestrel"));
    c.env("KESTREL_WEIGHTS", weights()).arg("--quiet");
    c
}

#[test]
fn predict_json_reports_bad_files_and_still_classifies_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 truncated jpeg").unwrap();
    let missing = dir.path().join("missing.png");
    let out = kestrel()
        .args(["predict", "--json", "--top", "3"])
        .arg(photo("chelsea.png"))
        .arg(&corrupt)
        .arg(&missing)
        .arg(photo("coffee.png"))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "bad pictures must give a non-zero exit"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("corrupt.jpg") && stderr.contains("missing.png"),
        "{stderr}"
    );
    assert!(stderr.contains("2 of 4 pictures"), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let manifest = golden_manifest();
    for (line, case) in lines.iter().zip(["chelsea", "coffee"]) {
        assert!(
            line["image"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{case}.png"))
        );
        let top = line["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let want = &manifest["cases"][case]["top5"][0];
        assert_eq!(top[0]["class"], want[0]);
        assert_eq!(top[0]["label"], want[1]);
        let scores: Vec<f64> = top.iter().map(|t| t["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]) && scores[0] <= 1.0 && scores[2] > 0.0);
    }
}

#[test]
fn exported_trunk_runs_in_the_edge_binary() {
    let dir = tempfile::tempdir().unwrap();
    let trunk = dir.path().join("trunk");
    let out = kestrel()
        .args(["export-trunk", "--cut", "stride16", "--out"])
        .arg(&trunk)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["cut"], "features.13");

    let out = Command::new(bin("kestrel-edge"))
        .args(["embed", "--values", "--trunk"])
        .arg(&trunk)
        .arg(photo("coffee.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["shape"], serde_json::json!([1, 96, 14, 14]));
    assert_eq!(line["values"].as_array().unwrap().len(), 96 * 14 * 14);

    // The host's `kestrel embed` goes through the same ONNX trunk with tract: same numbers.
    let host = kestrel()
        .args(["embed", "--values", "--cut", "stride16"])
        .arg(photo("coffee.png"))
        .output()
        .unwrap();
    assert!(
        host.status.success(),
        "{}",
        String::from_utf8_lossy(&host.stderr)
    );
    let host: serde_json::Value = serde_json::from_slice(&host.stdout).unwrap();
    assert_eq!(host["values"], line["values"]);

    let out = Command::new(bin("kestrel-edge"))
        .args(["info", "--trunk"])
        .arg(&trunk)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Kestrel's kernels take every convolution over from tract: depthwise, stem, pointwise.
    assert_eq!(info["tract_ops"]["KestrelDepthwise3x3"], 13, "{info}");
    assert_eq!(info["tract_ops"]["KestrelPointwise"], 25, "{info}");
    assert!(info["tract_ops"]["OptMatMul"].is_null(), "{info}");
    assert_eq!(info["tract_ops"]["KestrelDense3x3"], 1, "{info}");
    assert!(info["tract_ops"]["DepthWiseConv"].is_null(), "{info}");
}

#[test]
fn wrong_weights_file_says_how_to_provide_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("mobilenet_v2-b0353104.pth");
    std::fs::write(&fake, b"not a checkpoint").unwrap();
    let out = Command::new(bin("kestrel"))
        .args(["--quiet", "fetch-weights", "--weights"])
        .arg(&fake)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sha256") && stderr.contains("--weights PATH"),
        "{stderr}"
    );
}

#[test]
fn demo_classifies_exports_and_agrees_with_the_edge_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let out = kestrel()
        .args(["demo", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["demo"]["top1_correct"], 2);
    assert!(
        metrics["demo"]["max_abs_diff_burn_vs_tract"]
            .as_f64()
            .unwrap()
            < 1e-4
    );
    assert!(dir.path().join("trunk/trunk.onnx").exists());
    let acc = metrics["classify"]["val_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.7, "demo head validation accuracy {acc}");
    assert!(dir.path().join("run-classify/head.bpk").exists());
    // The detector went to a board over a serial line and its detections came back.
    let board = &metrics["board"];
    assert_eq!(board["link"], "serial", "{board}");
    assert!(board["scenes"].as_u64().unwrap() >= 20, "{board}");
    assert!(board["bytes_sent"].as_u64().unwrap() > 100_000, "{board}");
    assert!(board["fps"].as_f64().unwrap() > 0.0, "{board}");
    let (on_board, here) = (
        board["map50"].as_f64().unwrap(),
        board["host_map50"].as_f64().unwrap(),
    );
    assert!(here > 0.1, "{board}");
    assert!((on_board - here).abs() <= 0.05, "{board}");
    assert!(dir.path().join("board-snapshot.png").is_file());
}

/// `kestrel boards` lists the built-in boards, reads the repository's board files the same way,
/// and names the file and field of a bad one.
#[test]
fn boards_lists_the_builtin_boards_and_names_a_bad_field() {
    let out = kestrel().arg("boards").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for name in [
        "raspberry-pi-4",
        "raspberry-pi-5",
        "raspberry-pi-zero-2w",
        "generic-aarch64",
    ] {
        assert!(table.contains(name), "{table}");
    }
    let out = kestrel()
        .args(["boards", "--json"])
        .arg(kestrel_e2e::workspace().join("boards"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pi4 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "raspberry-pi-4")
        .expect("the repository's boards/ has the Pi 4");
    assert_eq!(pi4["target"], "aarch64-unknown-linux-gnu");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("my-board.toml");
    let text = std::fs::read_to_string(kestrel_e2e::workspace().join("boards/raspberry-pi-4.toml"))
        .unwrap()
        .replace("fps = 30", "fps = \"fast\"");
    std::fs::write(&bad, text).unwrap();
    let out = kestrel().arg("boards").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("my-board.toml") && err.contains("fps"),
        "{err}"
    );
}

/// Scripts can tell failures apart: usage 2, bad input 3, refused by the board 4 (in
/// deploy_ssh.rs), link failure 5; and both binaries print shell completions.
#[test]
fn exit_statuses_say_what_failed_and_completions_are_printed() {
    let dir = tempfile::tempdir().unwrap();
    let code = |c: &mut Command| {
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (usage, _) = code(kestrel().arg("deploy"));
    assert_eq!(usage, Some(2), "no bundle given");
    let not_a_bundle = dir.path().join("empty");
    std::fs::create_dir(&not_a_bundle).unwrap();
    let (bad, err) = code(
        kestrel()
            .arg("deploy")
            .arg(&not_a_bundle)
            .args(["--serial", "/dev/null"]),
    );
    assert_eq!(bad, Some(3), "{err}");
    assert!(err.contains("manifest.json"), "{err}");
    let bundle = dir.path().join("b");
    kestrel_e2e::tiny_bundle(&bundle, 1, 1);
    let (link, err) = code(
        kestrel()
            .arg("deploy")
            .arg(&bundle)
            .args(["--serial", "/nonexistent/ttyKESTREL"]),
    );
    assert_eq!(link, Some(5), "{err}");
    assert!(err.contains("/nonexistent/ttyKESTREL"), "{err}");
    let (edge_bad, err) = code(
        Command::new(bin("kestrel-edge"))
            .args(["info", "--bundle"])
            .arg(&not_a_bundle),
    );
    assert_eq!(edge_bad, Some(3), "{err}");

    let bash = kestrel().args(["completions", "bash"]).output().unwrap();
    assert!(bash.status.success());
    let bash = String::from_utf8(bash.stdout).unwrap();
    assert!(
        bash.contains("complete -F")
            && bash.contains("deploy")
            && bash.contains("--allow-downgrade"),
        "not a bash completion for kestrel"
    );
    let zsh = Command::new(bin("kestrel-edge"))
        .args(["completions", "zsh"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8(zsh.stdout)
            .unwrap()
            .starts_with("#compdef kestrel-edge")
    );
}

/// The subcommands listed under "Commands:" in a help text (`help` aside).
fn subcommands(help: &str) -> Vec<String> {
    help.split("Commands:\n")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .take_while(|l| l.starts_with("  "))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|name| *name != "help")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Every subcommand of both binaries, groups and leaves, found through their `--help`.
fn every_command() -> Vec<(&'static str, Vec<String>)> {
    let mut out = Vec::new();
    for program in ["kestrel", "kestrel-edge"] {
        let mut todo: Vec<Vec<String>> = vec![Vec::new()];
        while let Some(path) = todo.pop() {
            let (ok, help, err) =
                kestrel_e2e::run(Command::new(bin(program)).args(&path).arg("--help"));
            assert!(ok, "{program} {path:?} --help: {err}");
            for sub in subcommands(&help) {
                let mut p = path.clone();
                p.push(sub);
                todo.push(p);
            }
            if !path.is_empty() {
                out.push((program, path));
            }
        }
    }
    out
}

/// Every subcommand's `--help` has examples, and every example parses: its arguments, followed
/// by `--help`, get through clap (an unknown flag or a bad value would fail before the help).
#[test]
fn help_examples_parse() {
    let commands = every_command();
    assert!(commands.len() >= 40, "{commands:?}");
    let mut checked = 0;
    for (program, sub) in commands {
        let (ok, help, err) = kestrel_e2e::run(Command::new(bin(program)).args(&sub).arg("--help"));
        assert!(ok, "{program} {sub:?} --help: {err}");
        let examples: Vec<&str> = help
            .split("Examples:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("{program} {sub:?} --help has no examples:\n{help}"))
            .lines()
            .take_while(|l| l.starts_with("  "))
            .flat_map(|l| l.split("&&"))
            .collect();
        assert!(!examples.is_empty(), "{help}");
        for example in examples {
            // The command, without a trailing comment or redirection.
            let command = example.split(['#', '>', '<']).next().unwrap();
            let words: Vec<String> = command
                .split_whitespace()
                .map(|w| w.trim_matches('\'').to_string())
                .collect();
            let Some(bin_name) = words.first() else {
                continue;
            };
            assert!(
                bin_name == "kestrel" || bin_name == "kestrel-edge",
                "{example:?}"
            );
            let (ok, _, err) =
                kestrel_e2e::run(Command::new(bin(bin_name)).args(&words[1..]).arg("--help"));
            assert!(ok, "the example {example:?} does not parse: {err}");
            checked += 1;
        }
    }
    println!("{checked} examples parse");
    assert!(checked >= 80, "{checked}");
}

/// The path of the generated command reference, and how to regenerate it.
const REFERENCE: &str = "docs/COMMANDS.md";
const BLESS: &str =
    "KESTREL_BLESS=1 cargo test -p kestrel-e2e --test cli command_reference_is_current";

/// `docs/COMMANDS.md`, the reference of every command and option, is exactly what the binaries'
/// `--help` print now: a changed option fails this test until the reference is regenerated
/// (`KESTREL_BLESS=1` writes it), so the reference cannot drift from the code.
#[test]
fn command_reference_is_current() {
    let mut commands = every_command();
    commands.extend([("kestrel", Vec::new()), ("kestrel-edge", Vec::new())]);
    commands.sort();
    let title = |program: &str, sub: &[String]| {
        std::iter::once(program.to_string())
            .chain(sub.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut doc = format!(
        "# Command reference\n\n\
         Every command of `kestrel` (the workstation) and `kestrel-edge` (the board) with every \
         option, as their `--help` prints it. Generated: `tests/tests/cli.rs` fails when this \
         file differs from the binaries' help, and `{BLESS}` rewrites it. The README tells what \
         the commands are for and how they fit together.\n\n"
    );
    for (program, sub) in &commands {
        let name = title(program, sub);
        let anchor = name.replace(' ', "-");
        doc += &format!("- [`{name}`](#{anchor})\n");
    }
    for (program, sub) in &commands {
        let (ok, help, err) = kestrel_e2e::run(
            Command::new(bin(program))
                .args(sub)
                .arg("--help")
                .env("COLUMNS", "100"),
        );
        assert!(ok, "{program} {sub:?} --help: {err}");
        let help: String = help
            .lines()
            .map(|l| format!("{}\n", l.trim_end()))
            .collect();
        doc += &format!("\n## {}\n\n```text\n{help}```\n", title(program, sub));
    }
    let path = kestrel_e2e::workspace().join(REFERENCE);
    if std::env::var("KESTREL_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &doc).unwrap();
        println!("wrote {} ({} commands)", path.display(), commands.len());
        return;
    }
    let current = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; write it with `{BLESS}`", path.display()));
    if current != doc {
        let line = current
            .lines()
            .zip(doc.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| current.lines().count().min(doc.lines().count()));
        panic!(
            "{REFERENCE} differs from the binaries' --help from line {}:\n  file: {:?}\n  help: {:?}\n\
             Regenerate it with `{BLESS}` and commit it.",
            line + 1,
            current.lines().nth(line).unwrap_or("<end>"),
            doc.lines().nth(line).unwrap_or("<end>"),
        );
    }
}

/// Every `kestrel` and `kestrel-edge` command in the code blocks of the README and the docs parses
/// (its arguments followed by `--help` get through clap), so a tutorial cannot show an option
/// that no longer exists.
#[test]
fn documented_commands_parse() {
    let root = kestrel_e2e::workspace();
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") && !path.ends_with(REFERENCE) {
            files.push(path);
        }
    }
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut fenced = false;
        // Code lines, continuation lines (`\` at the end) joined, with their first line number.
        let mut lines: Vec<(usize, String)> = Vec::new();
        let mut continued = false;
        let mut shell = false;
        for (n, line) in text.lines().enumerate() {
            if let Some(tag) = line.trim_start().strip_prefix("```") {
                fenced = !fenced;
                // Shell blocks: untagged or tagged as a shell (not `text` diagrams or `ini`).
                shell = fenced && ["", "sh", "bash", "shell", "console"].contains(&tag.trim());
                continue;
            }
            // Indented (4 spaces) or shell-block code lines.
            let code = match line.strip_prefix("    ") {
                Some(code) if !fenced => code,
                _ if shell => line,
                _ => {
                    continued = false;
                    continue;
                }
            };
            let (code, more) = match code.trim_end().strip_suffix('\\') {
                Some(head) => (head, true),
                None => (code, false),
            };
            match lines.last_mut() {
                Some((_, last)) if continued => *last += &format!(" {code}"),
                _ => lines.push((n, code.to_string())),
            }
            continued = more;
        }
        for (n, code) in &lines {
            // A prompt or `sudo` before the command.
            let code = code.trim_start().trim_start_matches("$ ");
            let code = code.strip_prefix("sudo ").unwrap_or(code);
            for command in code.split("&&") {
                let command = command.split(['#', '>', '<', '|']).next().unwrap().trim();
                let words: Vec<String> = command
                    .split_whitespace()
                    .map(|w| w.trim_matches(['\'', '"']).to_string())
                    .collect();
                let Some(program) = words.first() else {
                    continue;
                };
                if program != "kestrel" && program != "kestrel-edge" {
                    continue;
                }
                let (ok, _, err) =
                    kestrel_e2e::run(Command::new(bin(program)).args(&words[1..]).arg("--help"));
                assert!(
                    ok,
                    "{}:{}: {command:?} does not parse: {err}",
                    file.display(),
                    n + 1
                );
                checked += 1;
            }
        }
    }
    println!("{checked} documented commands parse");
    assert!(checked >= 20, "{checked}");
}
