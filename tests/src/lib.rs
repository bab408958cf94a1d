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

/// A binary of the workspace, built next to the test executable (`cargo test --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
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
