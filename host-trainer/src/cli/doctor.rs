//! `kestrel doctor`: what this machine has for each step, and how to fix what is missing.

use std::path::PathBuf;

use super::Context;
use crate::doctor::{DoctorInputs, examine, table};

/// Arguments of `kestrel doctor`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kestrel doctor\n  kestrel doctor -i hosts.ini --json      # the boards of an inventory too, as one JSON object"
)]
pub struct DoctorArgs {
    /// Also check that every board of this Ansible inventory answers over ssh.
    #[arg(long, short = 'i')]
    pub inventory: Option<PathBuf>,
    /// One JSON object: `ready` and a row per check (`name`, `status` ok|warn|missing, `needed`,
    /// `detail`, `fix`).
    #[arg(long)]
    pub json: bool,
}

/// Runs the checks and prints them; fails (exit 1) when a needed part is missing.
pub fn run(a: &DoctorArgs, ctx: &Context) -> anyhow::Result<()> {
    let report = examine(&DoctorInputs {
        cache: ctx.cache.clone(),
        weights: ctx.weights.clone(),
        python: std::env::var("KESTREL_PYTHON").unwrap_or_else(|_| "python3".into()),
        inventory: a.inventory.clone(),
        dev: PathBuf::from("/dev"),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    let missing: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.needed && c.status == crate::doctor::Status::Missing)
        .map(|c| c.name.as_str())
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "not ready: {} missing (see the fixes above)",
        missing.join(", ")
    );
    Ok(())
}
