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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
            }],
            free_bytes: Some(42),
        };
        assert_eq!(StoreListing::from_json(&l.to_json()).unwrap(), l);
        let mut v: serde_json::Value = serde_json::from_str(&l.to_json()).unwrap();
        v.as_object_mut().unwrap().remove("blobs");
        let e = StoreListing::from_json(&v.to_string()).unwrap_err();
        assert!(e.to_string().contains("blobs"), "{e}");
    }
}
