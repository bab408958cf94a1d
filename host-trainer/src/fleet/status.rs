//! `kestrel fleet status`: every board's state in one table, asked in parallel (one store listing
//! per board, which carries the agent's health); unreachable boards are listed, not dropped.

use std::time::Instant;

use kestrel_shared::listing::StoreListing;
use serde::{Deserialize, Serialize};

use super::{FleetBoard, parallel_map};

/// One board's row (`--json`: one JSON object per board).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoardState {
    /// The inventory's name for the board.
    pub host: String,
    /// Whether its store answered.
    pub reachable: bool,
    /// Why it did not.
    pub error: Option<String>,
    /// Its `kestrel-edge` version.
    pub kestrel_version: Option<String>,
    /// Its current bundle.
    pub current: Option<String>,
    /// The current bundle's labels.
    pub labels: Vec<String>,
    /// The bundle a rollback would go back to.
    pub previous: Option<String>,
    /// Seconds since the board booted.
    pub uptime_s: Option<f64>,
    /// Whether its agent answered, and if not, why.
    pub agent: bool,
    /// Why the agent did not answer.
    pub agent_error: Option<String>,
    /// The bundle the agent runs (differs from `current` for a second after an install).
    pub running: Option<String>,
    /// Frames per second of the agent's detection loop.
    pub fps: Option<f64>,
    /// SoC temperature.
    pub temperature_c: Option<f32>,
    /// Free space in the store.
    pub free_bytes: Option<u64>,
    /// Seconds the question took.
    pub seconds: f64,
}

impl BoardState {
    /// The row for a board that answered with `l`.
    pub fn from_listing(host: &str, l: &StoreListing, seconds: f64) -> BoardState {
        let pos = l
            .bundles
            .iter()
            .position(|b| Some(&b.id) == l.current.as_ref());
        let agent = l.agent.as_ref();
        BoardState {
            host: host.to_string(),
            reachable: true,
            error: None,
            kestrel_version: Some(l.kestrel_version.clone()),
            current: l.current.clone(),
            labels: pos.map(|i| l.bundles[i].labels.clone()).unwrap_or_default(),
            previous: pos
                .and_then(|i| i.checked_sub(1))
                .map(|i| l.bundles[i].id.clone()),
            uptime_s: l.uptime_s,
            agent: agent.is_some(),
            agent_error: l.agent_error.clone(),
            running: agent.and_then(|a| a.current.clone()),
            fps: agent.and_then(|a| a.detect.as_ref()).map(|d| d.fps),
            temperature_c: agent.and_then(|a| a.temperature_c),
            free_bytes: l.free_bytes,
            seconds,
        }
    }

    /// The row for a board that did not answer.
    pub fn unreachable(host: &str, error: String, seconds: f64) -> BoardState {
        BoardState {
            host: host.to_string(),
            reachable: false,
            error: Some(error),
            kestrel_version: None,
            current: None,
            labels: Vec::new(),
            previous: None,
            uptime_s: None,
            agent: false,
            agent_error: None,
            running: None,
            fps: None,
            temperature_c: None,
            free_bytes: None,
            seconds,
        }
    }
}

/// Asks every board, `parallel` at a time; rows in `boards` order.
pub fn status(boards: &[FleetBoard], parallel: usize) -> Vec<BoardState> {
    parallel_map(boards, parallel, |b| {
        let start = Instant::now();
        let r = b.ssh.listing();
        let s = start.elapsed().as_secs_f64();
        match r {
            Ok(l) => BoardState::from_listing(&b.name, &l, s),
            Err(e) => BoardState::unreachable(&b.name, e.to_string(), s),
        }
    })
}

/// The rows as a table for people.
pub fn table(rows: &[BoardState]) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut lines = vec![
        [
            "HOST", "STATE", "VERSION", "CURRENT", "LABELS", "PREVIOUS", "UPTIME", "FPS", "TEMP",
            "FREE",
        ]
        .map(str::to_string)
        .to_vec(),
    ];
    for r in rows {
        let state = if !r.reachable {
            "unreachable".to_string()
        } else if !r.agent {
            "no agent".to_string()
        } else if r.running != r.current {
            "switching".to_string()
        } else {
            "ok".to_string()
        };
        lines.push(vec![
            r.host.clone(),
            state,
            opt(&r.kestrel_version),
            opt(&r.current),
            if r.labels.is_empty() {
                "-".into()
            } else {
                r.labels.join(",")
            },
            opt(&r.previous),
            r.uptime_s.map_or("-".into(), human_duration),
            r.fps.map_or("-".into(), |f| format!("{f:.1}")),
            r.temperature_c.map_or("-".into(), |t| format!("{t:.0}C")),
            r.free_bytes
                .map_or("-".into(), crate::progress::human_bytes),
        ]);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for r in rows.iter().filter(|r| !r.reachable) {
        out.push_str(&format!(
            "{}: {}\n",
            r.host,
            r.error.as_deref().unwrap_or("no answer")
        ));
    }
    out
}

/// `3d 4h`, `5h 12m`, `42m`, `17s`.
fn human_duration(s: f64) -> String {
    let s = s as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_shared::listing::{AgentHealth, ListedBundle};

    #[test]
    fn a_row_names_current_previous_and_labels_and_the_table_keeps_unreachable_boards() {
        let bundle = |id: &str, current: bool| ListedBundle {
            id: id.into(),
            current,
            files: Default::default(),
            labels: vec![format!("{id}-label")],
        };
        let l = StoreListing {
            kestrel_version: "1.0.0".into(),
            current: Some("b2".into()),
            blobs: vec![],
            partial: Default::default(),
            bundles: vec![bundle("b1", false), bundle("b2", true)],
            free_bytes: Some(2048),
            uptime_s: Some(7300.0),
            agent: Some(AgentHealth {
                pid: 1,
                uptime_s: 5.0,
                current: Some("b1".into()),
                detect: None,
                temperature_c: Some(51.0),
            }),
            agent_error: None,
        };
        let row = BoardState::from_listing("shelf-1", &l, 0.1);
        assert_eq!(row.previous.as_deref(), Some("b1"));
        assert_eq!(row.labels, ["b2-label"]);
        assert_eq!(row.running.as_deref(), Some("b1"));
        let t = table(&[
            row,
            BoardState::unreachable("shelf-2", "refused".into(), 0.0),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1].starts_with("shelf-1") && lines[1].contains("switching"),
            "{t}"
        );
        assert!(
            lines[1].contains("2h 1m") && lines[1].contains("51C"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("shelf-2") && lines[2].contains("unreachable"),
            "{t}"
        );
        assert_eq!(lines[3], "shelf-2: refused");
    }
}
