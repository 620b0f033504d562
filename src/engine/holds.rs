//! Held updates survive a restart of berth: a spec that failed to replace
//! its container (and was rolled back) must not be tried again just because
//! berth or the host restarted. Kept as a small JSON file in the state
//! directory, written atomically (temporary file, then rename).
//!
//! Warning: when the state directory cannot be written, holds live in
//! memory only (logged once); a restarted berth then tries such an update
//! once more, and holds it again if it fails again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::names::InstanceKey;

/// A spec that failed to replace an instance's container, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldSpec {
    pub hash: String,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    task: String,
    index: u32,
    hash: String,
    reason: String,
}

/// Where a namespace's holds are kept.
#[derive(Debug, Clone)]
pub struct HoldStore {
    path: PathBuf,
    warned: bool,
}

impl HoldStore {
    pub fn new(state_dir: &Path, namespace: &str) -> HoldStore {
        HoldStore {
            path: state_dir.join(format!("held-{namespace}.json")),
            warned: false,
        }
    }

    /// The holds a previous berth left; none when there is no file or it
    /// cannot be read (a broken file is reported and ignored).
    pub fn load(&self) -> BTreeMap<InstanceKey, HeldSpec> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read the held updates; starting without");
                return BTreeMap::new();
            }
        };
        match serde_json::from_str::<Vec<Record>>(&text) {
            Ok(records) => records
                .into_iter()
                .map(|r| {
                    (
                        InstanceKey::new(r.task, r.index),
                        HeldSpec {
                            hash: r.hash,
                            reason: r.reason,
                        },
                    )
                })
                .collect(),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "the held updates file is damaged; starting without");
                BTreeMap::new()
            }
        }
    }

    /// Write the holds (an empty set removes the file).
    pub fn save(&mut self, held: &BTreeMap<InstanceKey, HeldSpec>) {
        if let Err(e) = self.write(held) {
            if !self.warned {
                warn!(path = %self.path.display(), error = %e, "cannot keep held updates across restarts; they are kept in memory only");
                self.warned = true;
            }
        }
    }

    fn write(&self, held: &BTreeMap<InstanceKey, HeldSpec>) -> std::io::Result<()> {
        if held.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let records: Vec<Record> = held
            .iter()
            .map(|(k, h)| Record {
                task: k.task.clone(),
                index: k.index,
                hash: h.hash.clone(),
                reason: h.reason.clone(),
            })
            .collect();
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&records)?)?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_survive_a_restart_and_an_empty_set_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = HoldStore::new(dir.path(), "edge");
        let held = BTreeMap::from([(
            InstanceKey::new("web", 0),
            HeldSpec {
                hash: "abc".into(),
                reason: "rolled back: exited with code 1 after 2.0s".into(),
            },
        )]);
        store.save(&held);
        assert_eq!(HoldStore::new(dir.path(), "edge").load(), held);
        assert!(HoldStore::new(dir.path(), "other").load().is_empty());
        store.save(&BTreeMap::new());
        assert!(!dir.path().join("held-edge.json").exists());
    }

    #[test]
    fn a_damaged_file_is_ignored_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("held-edge.json"), "{not json").unwrap();
        assert!(HoldStore::new(dir.path(), "edge").load().is_empty());
    }
}
