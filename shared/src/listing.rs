//! What a board's store holds, as `kestrel-edge store list --json` prints it and `kestrel deploy
//! --ssh` reads it (so only the blobs the board lacks travel), and the ids bundles get there. One
//! type for both sides: a field the host needs and the board does not send is an error, not an
//! empty list.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::Sha256;

/// The id a bundle gets in stores: the first 16 hex digits of its manifest's sha256 (the same
/// over serial and SSH, and the same bundle is never installed twice under two names).
pub fn bundle_id(manifest_sha: &Sha256) -> String {
    manifest_sha.to_hex()[..16].to_string()
}

/// The board store's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreListing {
    /// Version of the `kestrel-edge` that listed it.
    pub kestrel_version: String,
    /// Id of the current bundle, if any.
    pub current: Option<String>,
    /// sha256 (hex) of every blob held.
    pub blobs: Vec<String>,
    /// Uploads cut short: sha256 (hex) -> bytes the board holds, where a new upload resumes.
    pub partial: BTreeMap<String, u64>,
    /// Installed bundles, oldest first.
    pub bundles: Vec<ListedBundle>,
    /// Free space of the store's file system, when it can be read.
    pub free_bytes: Option<u64>,
    /// Seconds since the board booted (`/proc/uptime`), when it can be read.
    #[serde(default)]
    pub uptime_s: Option<f64>,
    /// What the store's running agent says about itself, when one answered on its socket.
    #[serde(default)]
    pub agent: Option<AgentHealth>,
    /// Why no agent answered (no socket: none runs; refused: it died), when none did.
    #[serde(default)]
    pub agent_error: Option<String>,
}

/// The socket in the store directory on which a running agent answers with its [`AgentHealth`]:
/// the answer comes from the agent's own loop, so an answer means that loop turns.
pub const AGENT_SOCKET: &str = "agent.sock";

/// A running agent's state, one JSON line on [`AGENT_SOCKET`] (and in `store list --json`), so a
/// fleet deploy can tell a canary that runs its new bundle from one that only stored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// The agent's process id.
    pub pid: u32,
    /// Seconds since the agent started.
    pub uptime_s: f64,
    /// The bundle the agent follows (its store's `current` as it last saw it).
    pub current: Option<String>,
    /// The detection loop, when the agent runs one (`--source`).
    pub detect: Option<LoopHealth>,
    /// SoC temperature, where the board reports it.
    pub temperature_c: Option<f32>,
}

/// The agent's detection loop as its last frame left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopHealth {
    /// The bundle the loop runs (its id).
    pub bundle: Option<String>,
    /// Frames processed since the loop started.
    pub frames: u64,
    /// Frames per second over the loop's window.
    pub fps: f64,
    /// Frames that could not be decoded and were skipped.
    pub decode_errors: u64,
    /// Seconds since the last processed frame (None before the first).
    pub last_frame_age_s: Option<f64>,
    /// Why the loop stopped (`inference failed: ...`, `end of source`), None while it runs.
    pub ended: Option<String>,
}

/// One installed bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedBundle {
    /// Its id.
    pub id: String,
    /// Whether it is the current one.
    pub current: bool,
    /// File name -> sha256 (hex).
    pub files: BTreeMap<String, String>,
    /// Its labels (from its manifest; empty when unreadable or listed by an older board).
    #[serde(default)]
    pub labels: Vec<String>,
}

impl StoreListing {
    /// Read a listing printed by `store list --json`.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text.trim())
    }

    /// The listing as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a store listing always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_a_listing_without_blobs() {
        let l = StoreListing {
            kestrel_version: "1.2.3".into(),
            current: Some("abc".into()),
            blobs: vec!["00".repeat(32)],
            partial: [("11".repeat(32), 4096)].into(),
            bundles: vec![ListedBundle {
                id: "abc".into(),
                current: true,
                files: [("manifest.json".to_string(), "00".repeat(32))].into(),
                labels: vec!["cat".into()],
            }],
            free_bytes: Some(42),
            uptime_s: Some(12.5),
            agent: Some(AgentHealth {
                pid: 7,
                uptime_s: 3.0,
                current: Some("abc".into()),
                detect: Some(LoopHealth {
                    bundle: Some("abc".into()),
                    frames: 9,
                    fps: 4.5,
                    decode_errors: 0,
                    last_frame_age_s: Some(0.1),
                    ended: None,
                }),
                temperature_c: None,
            }),
            agent_error: None,
        };
        assert_eq!(StoreListing::from_json(&l.to_json()).unwrap(), l);
        let mut v: serde_json::Value = serde_json::from_str(&l.to_json()).unwrap();
        v.as_object_mut().unwrap().remove("blobs");
        let e = StoreListing::from_json(&v.to_string()).unwrap_err();
        assert!(e.to_string().contains("blobs"), "{e}");
    }

    #[test]
    fn a_listing_from_a_board_without_health_still_reads() {
        let old = r#"{"kestrel_version":"0.9","current":null,"blobs":[],"partial":{},
            "bundles":[{"id":"a","current":false,"files":{}}],"free_bytes":null}"#;
        let l = StoreListing::from_json(old).unwrap();
        assert_eq!((l.agent, l.uptime_s), (None, None));
        assert!(l.bundles[0].labels.is_empty());
    }
}
