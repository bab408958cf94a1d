//! `kestrel fleet deploy`: canary boards first, which must install the bundle and stay healthy
//! for a while (the agent answers, runs the bundle, and its detection loop, where one runs, keeps
//! processing frames), then the rest N at a time. Only the blobs a board lacks travel, a board
//! already on the bundle is left alone (so a fleet deploy cut short is simply run again), and a
//! failing board is reported without stopping the others.

use std::time::{Duration, Instant};

use kestrel_shared::listing::StoreListing;
use serde::{Deserialize, Serialize};

use super::{FleetBoard, parallel_map};
use crate::deploy::link::{self, BoardLink};
use crate::deploy::ssh::SshBoard;
use crate::deploy::{DeployError, LocalBundle};
use crate::progress::Silent;

/// How a fleet deploy goes.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetDeployOptions {
    /// Boards deployed at once after the canaries.
    pub parallel: usize,
    /// The first this many selected boards are canaries.
    pub canary: usize,
    /// How long a canary must stay healthy once it runs the bundle.
    pub canary_wait: Duration,
    /// How long a canary's agent may take to switch to the bundle before it counts as unhealthy.
    pub switch_timeout: Duration,
    /// Put canaries that installed the bundle back on their previous one when any canary fails.
    pub rollback_on_failure: bool,
    /// Accept a bundle older than a board's current one.
    pub allow_downgrade: bool,
}

impl Default for FleetDeployOptions {
    fn default() -> Self {
        FleetDeployOptions {
            parallel: 8,
            canary: 0,
            canary_wait: Duration::from_secs(30),
            switch_timeout: Duration::from_secs(15),
            rollback_on_failure: false,
            allow_downgrade: false,
        }
    }
}

/// What became of one board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The bundle was installed (and, for a canary, stayed healthy).
    Deployed,
    /// The board already ran the bundle: nothing was done.
    Current,
    /// ssh could not reach the board.
    Unreachable,
    /// The board refused the bundle (trust list, downgrade, a bundle it cannot load).
    Refused,
    /// The deploy failed on the way (a cut upload, a full disk).
    Failed,
    /// A canary installed the bundle but did not stay healthy.
    Unhealthy,
    /// A canary put back on its previous bundle after the canaries failed.
    RolledBack,
    /// Not tried: the canaries failed.
    Skipped,
}

impl Outcome {
    /// Whether the board ends on the bundle as asked.
    pub fn ok(self) -> bool {
        matches!(self, Outcome::Deployed | Outcome::Current)
    }

    /// The status as `--json` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Deployed => "deployed",
            Outcome::Current => "current",
            Outcome::Unreachable => "unreachable",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::Unhealthy => "unhealthy",
            Outcome::RolledBack => "rolled-back",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One board's line of the report (`--json`: one JSON object per board).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardResult {
    /// The inventory's name for the board.
    pub host: String,
    /// What became of it.
    pub status: Outcome,
    /// The bundle id.
    pub bundle: String,
    /// Whether it was a canary.
    pub canary: bool,
    /// Why it is not deployed (or already was).
    pub reason: Option<String>,
    /// Blob bytes sent to it.
    pub bytes_sent: u64,
    /// Seconds spent on it (deploy and health check).
    pub seconds: f64,
}

/// Deploys `bundle` to `boards` as `opts` says; `done` hears each board's result as it comes.
/// Results are in `boards` order.
pub fn deploy(
    boards: &[FleetBoard],
    bundle: &LocalBundle,
    opts: &FleetDeployOptions,
    done: &(dyn Fn(&BoardResult) + Sync),
) -> Vec<BoardResult> {
    let canaries = opts.canary.min(boards.len());
    let (first, rest) = boards.split_at(canaries);
    let mut results = parallel_map(first, opts.parallel.max(canaries), |b| {
        let r = deploy_canary(b, bundle, opts);
        done(&r.0);
        r
    });
    let failed = results.iter().any(|(r, _)| !r.status.ok());
    if failed {
        let why = "a canary failed: the rest of the fleet was not touched".to_string();
        if opts.rollback_on_failure {
            let back = {
                let pairs: Vec<_> = results.iter().zip(first).collect();
                parallel_map(&pairs, opts.parallel, |(rc, board)| {
                    rc.1.then(|| roll_back(board, &rc.0))
                })
            };
            for ((r, _), b) in results.iter_mut().zip(back) {
                if let Some(b) = b {
                    *r = b;
                    done(r);
                }
            }
        }
        let mut all: Vec<BoardResult> = results.into_iter().map(|(r, _)| r).collect();
        for b in rest {
            let r = BoardResult {
                host: b.name.clone(),
                status: Outcome::Skipped,
                bundle: bundle.id.clone(),
                canary: false,
                reason: Some(why.clone()),
                bytes_sent: 0,
                seconds: 0.0,
            };
            done(&r);
            all.push(r);
        }
        return all;
    }
    let mut all: Vec<BoardResult> = results.drain(..).map(|(r, _)| r).collect();
    all.extend(parallel_map(rest, opts.parallel, |b| {
        let r = deploy_board(b, bundle, opts.allow_downgrade, false).0;
        done(&r);
        r
    }));
    all
}

/// Deploys to one board; the flag says whether its `current` moved (what a rollback undoes).
fn deploy_board(
    board: &FleetBoard,
    bundle: &LocalBundle,
    allow_downgrade: bool,
    canary: bool,
) -> (BoardResult, bool) {
    let start = Instant::now();
    let mut result = BoardResult {
        host: board.name.clone(),
        status: Outcome::Deployed,
        bundle: bundle.id.clone(),
        canary,
        reason: None,
        bytes_sent: 0,
        seconds: 0.0,
    };
    let mut link = SshBoard::new(board.ssh.clone());
    let outcome = link.status().and_then(|status| {
        if status.current.as_deref() == Some(bundle.id.as_str()) {
            return Ok(None);
        }
        link::deploy_onto(&mut link, &status, bundle, allow_downgrade, &Silent, start).map(Some)
    });
    let changed = match outcome {
        Ok(None) => {
            result.status = Outcome::Current;
            result.reason = Some("already runs this bundle".into());
            false
        }
        Ok(Some(report)) => {
            result.bytes_sent = link.line_bytes().out;
            tracing::debug!("{}: {}", board.name, report.message);
            true
        }
        Err(e) => {
            result.bytes_sent = link.line_bytes().out;
            result.status = match &e {
                DeployError::Unreachable { .. } => Outcome::Unreachable,
                DeployError::Refused(_) => Outcome::Refused,
                _ => Outcome::Failed,
            };
            result.reason = Some(e.to_string());
            false
        }
    };
    result.seconds = start.elapsed().as_secs_f64();
    (result, changed)
}

/// Deploys to a canary, then watches it (see [`watch`]).
fn deploy_canary(
    board: &FleetBoard,
    bundle: &LocalBundle,
    opts: &FleetDeployOptions,
) -> (BoardResult, bool) {
    let start = Instant::now();
    let (mut r, changed) = deploy_board(board, bundle, opts.allow_downgrade, true);
    if r.status.ok()
        && let Err(why) = watch(board, &bundle.id, opts.switch_timeout, opts.canary_wait)
    {
        r.status = Outcome::Unhealthy;
        r.reason = Some(why);
    }
    r.seconds = start.elapsed().as_secs_f64();
    (r, changed)
}

/// Puts a canary back on its previous bundle.
fn roll_back(board: &FleetBoard, failed: &BoardResult) -> BoardResult {
    let mut r = failed.clone();
    match SshBoard::new(board.ssh.clone()).rollback() {
        Ok(message) => {
            r.status = Outcome::RolledBack;
            r.reason = Some(format!(
                "{}; rolled back: {message}",
                failed.reason.as_deref().unwrap_or("the canaries failed")
            ));
        }
        Err(e) => {
            r.reason = Some(format!(
                "{}; the rollback failed too: {e}",
                failed.reason.as_deref().unwrap_or("the canaries failed")
            ));
        }
    }
    r
}

/// Whether a listing shows the agent running `id`: `Ok` when it does, else why not.
pub fn runs(listing: &StoreListing, id: &str) -> Result<(), String> {
    let Some(agent) = &listing.agent else {
        return Err(listing
            .agent_error
            .clone()
            .unwrap_or_else(|| "no agent answered".into()));
    };
    if agent.current.as_deref() != Some(id) {
        return Err(format!(
            "the agent runs {}, not {id}",
            agent.current.as_deref().unwrap_or("no bundle")
        ));
    }
    if let Some(d) = &agent.detect {
        if let Some(why) = &d.ended {
            return Err(format!("the detection loop stopped: {why}"));
        }
        if d.bundle.as_deref() != Some(id) {
            return Err(format!(
                "the detection loop still runs {}",
                d.bundle.as_deref().unwrap_or("nothing")
            ));
        }
        match d.last_frame_age_s {
            Some(age) if age > 5.0 => return Err(format!("no frame for {age:.1} s")),
            None => return Err("no frame yet on the new bundle".into()),
            _ => {}
        }
    }
    Ok(())
}

/// How long a canary's agent may be silent (restarting) before the canary counts as unhealthy.
const NO_AGENT_GRACE: Duration = Duration::from_secs(3);

/// Watches a canary: within `switch_timeout` its agent must run `id` (and its loop, where one
/// runs, process frames on it); then it must stay so for `wait`, its frame count rising.
pub fn watch(
    board: &FleetBoard,
    id: &str,
    switch_timeout: Duration,
    wait: Duration,
) -> Result<(), String> {
    let poll = Duration::from_millis(500);
    let started = Instant::now();
    let listing = |what: &str| {
        board
            .ssh
            .listing()
            .map_err(|e| format!("{what}: cannot ask the board: {e}"))
    };
    let mut no_agent_since: Option<Instant> = None;
    let first = loop {
        let l = listing("waiting for the switch")?;
        // An agent that does not answer will not switch: a short grace (it may be starting),
        // not the whole switch timeout.
        if l.agent.is_some() {
            no_agent_since = None;
        } else {
            no_agent_since.get_or_insert_with(Instant::now);
        }
        let silent = no_agent_since.map_or(Duration::ZERO, |t| t.elapsed());
        match runs(&l, id) {
            Ok(()) => break l,
            Err(why) if silent >= NO_AGENT_GRACE => {
                return Err(format!(
                    "no agent answered for {:.0} s: {why}",
                    NO_AGENT_GRACE.as_secs_f64()
                ));
            }
            Err(why) if started.elapsed() >= switch_timeout => {
                return Err(format!(
                    "not running the bundle after {:.0} s: {why}",
                    switch_timeout.as_secs_f64()
                ));
            }
            Err(_) => std::thread::sleep(poll),
        }
    };
    let frames = |l: &StoreListing| {
        l.agent
            .as_ref()
            .and_then(|a| a.detect.as_ref())
            .map(|d| d.frames)
    };
    let healthy_since = Instant::now();
    let mut last = frames(&first);
    let at_start = last;
    while healthy_since.elapsed() < wait {
        std::thread::sleep(poll.min(wait.saturating_sub(healthy_since.elapsed())));
        let l = listing("during the canary wait")?;
        runs(&l, id).map_err(|why| {
            format!(
                "healthy for {:.1} s, then: {why}",
                healthy_since.elapsed().as_secs_f64()
            )
        })?;
        last = frames(&l);
    }
    if let (Some(a), Some(b)) = (at_start, last)
        && b <= a
        && wait >= Duration::from_secs(1)
    {
        return Err(format!(
            "the detection loop processed no frame during the {:.0} s wait ({a} frames)",
            wait.as_secs_f64()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_the_same_in_json_and_for_people() {
        use Outcome::*;
        for o in [
            Deployed,
            Current,
            Unreachable,
            Refused,
            Failed,
            Unhealthy,
            RolledBack,
            Skipped,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.name());
        }
    }
}
