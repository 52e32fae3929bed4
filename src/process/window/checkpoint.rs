//! Checkpoints: for each partition, the earliest offset its state at a committed offset depends
//! on, in one small file (`<data_dir>/state/<group_id>/<topic>-<partition>.json`), written
//! before each commit. A shortcut for rebuilding state, never a source of truth: a file that is
//! missing or belongs to another offset makes the partition be re-read from its start.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What the state file remembers for one partition at one committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(super) struct Checkpoint {
    pub(super) committed: i64,
    pub(super) replay_from: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) time: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StateFile {
    current: Option<Checkpoint>,
    previous: Option<Checkpoint>,
}

/// The checkpoint files of one group.
pub(super) struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    pub(super) fn new(dir: PathBuf) -> Checkpoints {
        Checkpoints { dir }
    }

    fn path(&self, topic: &str, partition: i32) -> PathBuf {
        self.dir.join(format!("{topic}-{partition}.json"))
    }

    /// The checkpoint saved for exactly this committed offset, if any.
    pub(super) fn load(&self, topic: &str, partition: i32, committed: i64) -> Option<Checkpoint> {
        let text = std::fs::read_to_string(self.path(topic, partition)).ok()?;
        let file: StateFile = serde_json::from_str(&text).ok()?;
        [file.current, file.previous]
            .into_iter()
            .flatten()
            .find(|c| c.committed == committed && c.replay_from <= committed)
    }

    /// Writes the checkpoint before its offset is committed. Losing the file (or a write) only
    /// costs a longer rebuild, so a failure is a warning.
    pub(super) fn save(&self, topic: &str, partition: i32, checkpoint: Checkpoint) {
        let path = self.path(topic, partition);
        let previous = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<StateFile>(&t).ok())
            .and_then(|f| f.current)
            .filter(|c| *c != checkpoint);
        let file = StateFile {
            current: Some(checkpoint),
            previous,
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(&file).unwrap_or_default())?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %path.display(), error = %e, "window processor: state file not written");
        }
    }
}
