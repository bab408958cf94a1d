//! Support for Kestrel's end-to-end tests: fixtures, `.npy` reading, weights, comparisons.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Root of the workspace.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The golden MobileNetV2 references (torchvision outputs).
pub fn golden_dir() -> PathBuf {
    workspace().join("tests/fixtures/mobilenet_v2")
}

/// A sample photo shipped with `kestrel`.
pub fn photo(name: &str) -> PathBuf {
    workspace().join("host-trainer/assets").join(name)
}

/// The golden manifest.
pub fn golden_manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(golden_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A float32 array read from an `.npy` file.
#[derive(Debug, Clone)]
pub struct Npy {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, C order.
    pub data: Vec<f32>,
}

/// Read a little-endian float32, C-order `.npy` file (format 1.0/2.0).
pub fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    Npy { shape, data }
}

/// A golden array by case and name (`synthetic`, `features.13`).
pub fn golden(case: &str, name: &str) -> Npy {
    read_npy(&golden_dir().join(format!("{case}.{name}.npy")))
}

/// Largest absolute difference; panics on length mismatch.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The verified pretrained weights (fetched into the user cache on first use, as `kestrel` does).
pub fn weights() -> PathBuf {
    static W: OnceLock<PathBuf> = OnceLock::new();
    W.get_or_init(|| {
        let explicit = std::env::var_os(kestrel_trainer::weights::WEIGHTS_ENV).map(PathBuf::from);
        kestrel_trainer::weights::Fetcher::default()
            .resolve(explicit.as_deref(), &kestrel_trainer::progress::Silent)
            .unwrap_or_else(|e| panic!("the tests need the pretrained weights: {e}"))
    })
    .clone()
}

/// A binary of the workspace, built next to the test executable (`cargo test --workspace`; a
/// test runs from `deps/`, a benchmark binary such as `fleet-bench` from the profile directory).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap();
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built: run the tests with `cargo test --workspace`",
        p.display()
    );
    p
}

/// Python interpreter for cross-checks (onnxruntime).
pub fn python() -> String {
    std::env::var("KESTREL_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `kestrel --quiet` with the test weights and its own cache folder.
pub fn kestrel(cache: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(bin("kestrel"));
    c.env("KESTREL_WEIGHTS", weights())
        .env("KESTREL_CACHE_DIR", cache)
        .arg("--quiet");
    c
}

/// Kills `cmd` (SIGKILL, as a power cut or the OOM killer would) once the fit whose checkpoint
/// folder is `phase` has committed `epochs` epochs; fails if it ends on its own first.
pub fn kill_after(cmd: &mut std::process::Command, phase: &Path, epochs: u64) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = phase.join("state.json");
    loop {
        let done = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["epoch"].as_u64())
            .unwrap_or(0);
        if done >= epochs {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "training ended ({status}) before {} had {epochs} epochs",
                phase.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Run a command: (succeeded, stdout, stderr).
pub fn run(c: &mut std::process::Command) -> (bool, String, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run a command that must succeed (both outputs shown if not): (stdout, stderr).
pub fn run_ok(c: &mut std::process::Command) -> (String, String) {
    let (ok, so, se) = run(c);
    assert!(ok, "stdout: {so}\nstderr: {se}");
    (so, se)
}

/// splitmix64 values in [-0.5, 0.5): seeded weights for tiny test models.
fn seeded(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x1234_5678;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Channels of the tiny trunk's output (and of its hidden convolution).
pub const TINY_CHANNELS: usize = 64;

/// Writes a tiny but valid classification bundle into `dir` (in milliseconds, no weights or
/// training needed) and returns its manifest: a 16x16 RGB input, a trunk of two 3x3 convolutions
/// (about 150 KB, its weights from `trunk_seed`), global pooling to 64 features, a linear head to
/// three labels (its weights from `head_seed`), the merged model, and trunk and head in NNEF. It
/// passes `Bundle::open`. Two bundles with the same `trunk_seed` share `trunk.onnx` and
/// `trunk.nnef.tar` byte for byte, as a retrained head does.
pub fn tiny_bundle(dir: &Path, trunk_seed: u64, head_seed: u64) -> kestrel_shared::Manifest {
    use kestrel_shared::manifest::*;
    use kestrel_trainer::onnx::{Attr, GraphBuilder, write_model};
    let c = TINY_CHANNELS;
    let labels = ["left", "right", "none"];
    let conv = |g: &mut GraphBuilder, x: &str, cin: usize, seed: u64| {
        let w = g.constant("w", &[c, cin, 3, 3], &seeded(seed, c * cin * 9));
        let b = g.constant("b", &[c], &seeded(seed + 1, c));
        let y = g.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ("kernel_shape", Attr::Ints(vec![3, 3])),
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
            ],
        );
        g.node("Relu", &[&y], vec![])
    };
    let mut g = GraphBuilder::default();
    let x = conv(&mut g, "input", 3, trunk_seed * 10);
    let x = conv(&mut g, &x, c, trunk_seed * 10 + 2);
    let x = g.node("GlobalAveragePool", &[&x], vec![]);
    g.node_into("Flatten", &[&x], "features", vec![("axis", Attr::Int(1))]);
    let trunk = g.finish(
        ("input", vec![None, Some(3), Some(16), Some(16)]),
        ("features", vec![None, Some(c)]),
        vec![],
    );
    let mut g = GraphBuilder::default();
    let w = g.constant(
        "w",
        &[c, labels.len()],
        &seeded(head_seed * 7 + 1, c * labels.len()),
    );
    let b = g.constant(
        "b",
        &[labels.len()],
        &seeded(head_seed * 7 + 2, labels.len()),
    );
    g.node_into("Gemm", &["features", &w, &b], "logits", vec![]);
    let head = g.finish(
        ("features", vec![None, Some(c)]),
        ("logits", vec![None, Some(labels.len())]),
        vec![],
    );
    let model = kestrel_trainer::bundle::onnx_graph::merge(&trunk, &head);
    std::fs::create_dir_all(dir).unwrap();
    let file = |name: &str, proto, input: TensorInfo, output: TensorInfo| {
        let path = dir.join(name);
        write_model(proto, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        ModelFile {
            path: name.into(),
            sha256: kestrel_shared::hash::sha256_hex(&bytes),
            size: bytes.len() as u64,
            precision: Precision::Float32,
            input,
            output,
        }
    };
    // NNEF pair as `kestrel export` writes it: what a board runs and a deploy sends.
    let nnef = |name: &str, onnx: &ModelFile| {
        let bytes = kestrel_edge::nnef::onnx_to_nnef(&std::fs::read(dir.join(&onnx.path)).unwrap())
            .unwrap();
        std::fs::write(dir.join(name), &bytes).unwrap();
        ModelFile {
            path: name.into(),
            sha256: kestrel_shared::hash::sha256_hex(&bytes),
            size: bytes.len() as u64,
            ..onnx.clone()
        }
    };
    let picture = TensorInfo::float("input", vec![1, 3, 16, 16]);
    let features = TensorInfo::float("features", vec![1, c]);
    let logits = TensorInfo::float("logits", vec![1, labels.len()]);
    let manifest = Manifest {
        schema_version: MANIFEST_SCHEMA_VERSION,
        kestrel_version: "test".into(),
        task: Task::Classify {
            head: ClassifyHeadKind::Linear,
        },
        labels: labels.iter().map(|s| s.to_string()).collect(),
        input: InputSpec {
            layout: Layout::Nchw,
            color: ColorOrder::Rgb,
            preprocess: kestrel_shared::PreprocessSpec {
                height: 16,
                width: 16,
                resize: kestrel_shared::ResizeMode::Stretch,
                ..kestrel_shared::PreprocessSpec::imagenet()
            },
        },
        cut: kestrel_shared::CutPoint::Pooled,
        fine_tuned_blocks: 0,
        architecture: "tiny-test".into(),
        weights_sha256: "00".repeat(32),
        files: {
            let trunk = file(TRUNK_FILE, &trunk, picture.clone(), features.clone());
            let head = file(HEAD_FILE, &head, features, logits.clone());
            BundleFiles {
                nnef: Some(NnefFiles {
                    trunk: nnef(TRUNK_NNEF_FILE, &trunk),
                    head: nnef(HEAD_NNEF_FILE, &head),
                }),
                trunk,
                head,
                model: file(MODEL_FILE, &model, picture, logits),
            }
        },
        quantization: Quantization {
            mode: QuantizeMode::None,
            calibration: None,
            layers: vec![],
        },
        decode: None,
        metrics: ValidationMetrics {
            images: 0,
            headline: "accuracy".into(),
            fp32: MetricSet::default(),
            bundle: MetricSet::default(),
            max_abs_diff: 0.0,
            agreement: 1.0,
        },
        release: None,
        signature: None,
    };
    manifest.write(&dir.join(MANIFEST_FILE)).unwrap();
    manifest
}

/// [`tiny_bundle`] with a [`Release`](kestrel_shared::manifest::Release) of this sequence (made
/// "now"), for anti-rollback tests: a higher sequence is a newer bundle.
pub fn tiny_released_bundle(
    dir: &Path,
    trunk_seed: u64,
    head_seed: u64,
    sequence: u64,
) -> kestrel_shared::Manifest {
    let mut manifest = tiny_bundle(dir, trunk_seed, head_seed);
    manifest.release = Some(kestrel_shared::manifest::Release {
        created: format!("2026-12-04T00:00:{:02}Z", sequence % 60),
        sequence,
    });
    manifest
        .write(&dir.join(kestrel_shared::manifest::MANIFEST_FILE))
        .unwrap();
    manifest
}

/// `kestrel-edge store --store STORE ARGS` (what `kestrel deploy --ssh` runs on a board), with
/// `stdin` from a file and extra environment variables; its output, whatever the status.
pub fn edge_store(
    store: &Path,
    args: &[&str],
    stdin: Option<&Path>,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin("kestrel-edge"));
    cmd.arg("store")
        .arg("--store")
        .arg(store)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(match stdin {
            Some(p) => std::process::Stdio::from(std::fs::File::open(p).unwrap()),
            None => std::process::Stdio::null(),
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Waits up to 5 s for the store at `store` to name bundle `id` current (an agent reacting to a
/// change behind its back); panics with `why` otherwise.
pub fn wait_for_current(store: &Path, id: &str, why: &str) {
    let start = std::time::Instant::now();
    while std::fs::read_link(store.join("current")).ok().as_deref()
        != Some(Path::new("bundles").join(id).as_path())
    {
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "{why}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Every blob of the store at `root` has the content its name says (sha256).
pub fn assert_store_blobs_intact(root: &Path) {
    for e in std::fs::read_dir(root.join("blobs")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let found = kestrel_shared::hash::sha256_file(&e.path()).unwrap();
        assert_eq!(found, name, "blob {} is corrupt", e.path().display());
    }
}

/// sshd's path (Debian's openssh-server).
pub const SSHD: &str = "/usr/sbin/sshd";

/// A throwaway OpenSSH server on 127.0.0.1 (see [`start_sshd`]); killed when dropped.
pub struct Sshd {
    child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
    /// The user key it accepts (private key file).
    pub key: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ssh_keygen(path: &Path) {
    run_ok(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path),
    );
}

/// Whether a test may use an outside tool: true when `present`. A missing tool fails the test
/// (with how to install it) unless `KESTREL_SKIP_<TOOL>=1` says to skip; the skip is then
/// printed (scripts/test.sh lists the skip variables in its summary).
pub fn tool_available(tool: &str, present: bool, install: &str) -> bool {
    if present {
        return true;
    }
    let var = format!("KESTREL_SKIP_{}", tool.to_ascii_uppercase());
    let skip = std::env::var(&var).is_ok_and(|v| v == "1");
    assert!(
        skip,
        "{tool} is missing: {install} (scripts/setup.sh does), or set {var}=1 to skip this test"
    );
    println!("SKIPPED: {tool} is missing and {var}=1");
    eprintln!("SKIPPED: {tool} is missing and {var}=1");
    false
}

/// `systemd-analyze verify` on a unit file: no error, and no warning about the file either
/// (unknown keys and bad values are only warnings, with exit status 0).
pub fn assert_systemd_accepts(unit: &Path) {
    let present = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !tool_available("systemd", present, "apt-get install systemd") {
        return;
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = unit.file_name().unwrap().to_string_lossy();
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains(&*name)).collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {}: {}\n{stderr}\n{}",
        unit.display(),
        out.status,
        std::fs::read_to_string(unit).unwrap()
    );
}

/// Starts an sshd on 127.0.0.1 with a throwaway host key and user key in `dir`; None (printed)
/// only when sshd is missing and `KESTREL_SKIP_SSHD=1` (see [`tool_available`]).
pub fn start_sshd(dir: &Path) -> Option<Sshd> {
    use std::time::{Duration, Instant};
    if !tool_available(
        "sshd",
        Path::new(SSHD).exists(),
        "apt-get install openssh-server",
    ) {
        return None;
    }
    let (host_key, user_key) = (dir.join("host_key"), dir.join("user_key"));
    ssh_keygen(&host_key);
    ssh_keygen(&user_key);
    let auth = dir.join("authorized_keys");
    std::fs::copy(user_key.with_extension("pub"), &auth).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin yes\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPidFile {}\n",
            host_key.display(),
            auth.display(),
            dir.join("sshd.pid").display()
        ),
    )
    .unwrap();
    // sshd's privilege separation directory (root only; a user's sshd does without).
    let _ = std::fs::create_dir_all("/run/sshd");
    let child = std::process::Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sshd does not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Sshd {
        child,
        port,
        key: user_key,
    })
}

/// The current user's name (`id -un`), to log in to the loopback sshd.
pub fn ssh_user() -> String {
    let (ok, out, _) = run(std::process::Command::new("id").arg("-un"));
    assert!(ok);
    out.trim().to_string()
}

/// ssh options for the loopback sshd: its user key, no known_hosts, batch mode.
pub fn loopback_ssh_options(sshd: &Sshd) -> Vec<String> {
    vec![
        format!("IdentityFile={}", sshd.key.display()),
        "UserKnownHostsFile=/dev/null".to_string(),
        "StrictHostKeyChecking=no".to_string(),
        "BatchMode=yes".to_string(),
        "LogLevel=ERROR".to_string(),
    ]
}
