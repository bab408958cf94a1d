//! `kestrel-edge`'s subcommands, one module each with its clap arguments and `run` (the binary
//! only parses and dispatches), and the log subscriber they share.

pub mod agent;
pub mod bench;
#[cfg(feature = "camera")]
pub mod cameras;
pub mod capture;
pub mod embed;
pub mod info;
pub mod run;
pub mod store;
pub mod watch;

use std::io::IsTerminal;

/// Installs the log subscriber: `info` and above by default, so the board's journal shows what the
/// agent does and its security warnings (`RUST_LOG` still wins); colour codes only on a terminal,
/// never in journald or a log file.
pub fn init_logging(quiet: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if quiet { "warn" } else { "info" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The exit status for `err`: 3 when a bundle, trunk or picture does not load (bad input), else 1
/// (clap exits 2 on usage errors itself).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|c| {
        c.is::<crate::BundleError>() || c.is::<crate::EdgeError>() || c.is::<image::ImageError>()
    });
    if bad_input { 3 } else { 1 }
}
