//! The work behind `kestrel-edge`'s subcommands (the binary only parses arguments).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;

use crate::Trunk;

/// Installs the log subscriber: `info` and above by default, so the board's journal shows what the
/// agent does and its security warnings (`RUST_LOG` still wins); colour codes only on a terminal,
/// never in journald or a log file.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Embed each picture and write one JSON object per line; a bad picture is reported on stderr and
/// in its line, and the others still run. Returns how many failed.
pub fn embed_images(
    trunk: &Trunk,
    images: &[PathBuf],
    values: bool,
    out: &mut dyn Write,
) -> std::io::Result<usize> {
    let mut failed = 0;
    for path in images {
        let start = Instant::now();
        let line = match trunk.embed_file(path) {
            Ok(v) => {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                let mut shape = trunk.info.output_shape.clone();
                shape[0] = 1;
                let mut obj = json!({
                    "image": path.display().to_string(),
                    "cut": trunk.info.cut.to_string(),
                    "shape": shape,
                    "l2_norm": norm,
                    "mean": v.iter().sum::<f32>() / v.len() as f32,
                    "ms": start.elapsed().as_secs_f64() * 1e3,
                });
                if values {
                    obj["values"] = json!(v);
                }
                obj
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
                json!({"image": path.display().to_string(), "error": e.to_string()})
            }
        };
        writeln!(out, "{line}")?;
    }
    Ok(failed)
}

/// A JSON description of a loaded trunk: its description and the operators tract runs.
pub fn info_json(trunk: &Trunk) -> serde_json::Value {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for op in trunk.model.op_names() {
        *counts.entry(op).or_default() += 1;
    }
    json!({
        "trunk": trunk.info,
        "input_shape": trunk.model.input_shape(),
        "tract_ops": counts,
    })
}
