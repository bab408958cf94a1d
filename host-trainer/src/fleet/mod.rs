//! Many boards at once, from the Ansible inventory users already keep: `kestrel fleet deploy`
//! (canaries first, then the rest N at a time), `status`, `rollback` and `install`.
//!
//! Every board is reached over the SSH path of `kestrel deploy --ssh` ([`crate::deploy::ssh`]),
//! with the connection variables Ansible uses ([`inventory`]); one OpenSSH master connection per
//! board is kept for the length of a command ([`ControlMasters`]), so a fleet deploy does one
//! handshake per board however many store commands it runs. A board that cannot be reached or
//! refuses is reported with its reason and never stops the others.

pub mod deploy;
pub mod inventory;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::deploy::ssh::SshOptions;
use inventory::{Host, Inventory, InventoryError};

/// What applies to every board unless its inventory variables say otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDefaults {
    /// `kestrel-edge` on the boards (host variable `kestrel_edge`).
    pub remote_bin: String,
    /// The store on the boards (host variable `kestrel_store`).
    pub store: String,
    /// A trust list on the boards every install must satisfy (host variable `kestrel_trust`).
    pub trust: Option<String>,
    /// Extra ssh options for every board, before the inventory's.
    pub ssh_options: Vec<String>,
}

impl Default for FleetDefaults {
    fn default() -> Self {
        FleetDefaults {
            remote_bin: "kestrel-edge".into(),
            store: "/var/lib/kestrel".into(),
            trust: None,
            ssh_options: Vec::new(),
        }
    }
}

/// One board of the fleet: its inventory name and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetBoard {
    /// The inventory's name for it.
    pub name: String,
    /// The ssh link's options.
    pub ssh: SshOptions,
    /// Its board file (`kestrel_board`), for `fleet install`.
    pub board_file: Option<String>,
    /// Root on the board under which `fleet install` puts everything (`kestrel_prefix`).
    pub prefix: Option<String>,
}

impl FleetBoard {
    /// The board `host` describes, `defaults` filling what its variables leave out. ssh never asks
    /// (BatchMode: eight parallel prompts would be chaos) and gives up connecting after 10 s;
    /// options given by the user come first, so theirs win (ssh keeps the first value it gets).
    pub fn from_host(host: &Host, defaults: &FleetDefaults) -> Result<Self, InventoryError> {
        let mut ssh = SshOptions::new(&host.ssh_target());
        ssh.options = defaults.ssh_options.clone();
        ssh.options.extend(host.ssh_options()?);
        ssh.options
            .extend(["BatchMode=yes".to_string(), "ConnectTimeout=10".to_string()]);
        ssh.remote_bin = host
            .kestrel_edge()
            .unwrap_or(&defaults.remote_bin)
            .to_string();
        ssh.store = host.kestrel_store().unwrap_or(&defaults.store).to_string();
        ssh.trust = host
            .var("kestrel_trust")
            .map(str::to_string)
            .or_else(|| defaults.trust.clone());
        Ok(FleetBoard {
            name: host.name.clone(),
            ssh,
            board_file: host.kestrel_board().map(str::to_string),
            prefix: host.var("kestrel_prefix").map(str::to_string),
        })
    }
}

/// The boards of `inventory` that `limit` (an Ansible host pattern) selects, in inventory order.
pub fn boards(
    inventory: &Path,
    limit: Option<&str>,
    defaults: &FleetDefaults,
) -> Result<Vec<FleetBoard>, InventoryError> {
    let inv = Inventory::read(inventory)?;
    inv.select(limit)?
        .into_iter()
        .map(|h| FleetBoard::from_host(h, defaults))
        .collect()
}

/// OpenSSH master connections shared by every ssh command of one fleet command, one per board,
/// sockets in a private directory; closed when dropped.
///
/// Each master is started on its own, with no pipe attached (`ssh -o ControlMaster=yes -o
/// ControlPersist=60 HOST true`): a master born from a command whose output is read would keep
/// that pipe open in the background and the reader would wait for it. The commands then use the
/// master if it is there (`ControlMaster=no`), and connect on their own if not.
pub struct ControlMasters {
    dir: PathBuf,
    boards: Vec<SshOptions>,
}

impl ControlMasters {
    /// Starts a master connection to every board, `parallel` at a time, and points every board's
    /// ssh options at it.
    pub fn start(boards: &mut [FleetBoard], parallel: usize) -> std::io::Result<ControlMasters> {
        use std::os::unix::fs::PermissionsExt;
        use std::process::Stdio;
        // A short path: a socket's path must fit in 108 bytes, and %C is 40 of them.
        let dir = tempfile::Builder::new()
            .prefix("kssh")
            .tempdir_in(std::env::temp_dir())?
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let path = format!("ControlPath={}/%C", dir.display());
        parallel_map(boards, parallel, |b| {
            let mut options = b.ssh.options.clone();
            options.extend([
                "ControlMaster=yes".to_string(),
                path.clone(),
                "ControlPersist=60".to_string(),
            ]);
            let started =
                crate::deploy::ssh::ssh_command(&b.ssh.program, &b.ssh.target, &options, "true")
                    .ok()
                    .and_then(|mut c| {
                        c.stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .ok()
                    });
            if !started.is_some_and(|s| s.success()) {
                tracing::debug!(
                    "{}: no master connection (the commands will say why)",
                    b.name
                );
            }
        });
        for b in boards.iter_mut() {
            b.ssh
                .options
                .extend(["ControlMaster=no".to_string(), path.clone()]);
        }
        Ok(ControlMasters {
            dir,
            boards: boards.iter().map(|b| b.ssh.clone()).collect(),
        })
    }
}

impl Drop for ControlMasters {
    /// Asks each master that was started to exit, then removes the sockets' directory.
    fn drop(&mut self) {
        let has_socket = std::fs::read_dir(&self.dir).is_ok_and(|mut d| d.next().is_some());
        if has_socket {
            parallel_map(&self.boards, 8, |o| {
                let mut options = o.options.clone();
                options.push("-O exit".into());
                if let Ok(mut c) =
                    crate::deploy::ssh::ssh_command(&o.program, &o.target, &options, "true")
                {
                    let _ = c
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            });
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `f` on every item, at most `parallel` at a time on scoped threads; results in item order.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    parallel: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every item was done"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_order_and_bounds_concurrency() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let items: Vec<u64> = (0..20).collect();
        let out = parallel_map(&items, 3, |&i| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            running.fetch_sub(1, Ordering::SeqCst);
            i * 2
        });
        assert_eq!(out, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(parallel_map(&[] as &[u8], 4, |_| 0).is_empty());
    }
}
