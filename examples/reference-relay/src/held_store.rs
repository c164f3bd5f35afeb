//! The durable purgatory: every held event is written to `<data>/purgatory/<id>.json`
//! *before* the hold is reported (a user's `OK false "restricted: held ..."`, or
//! `IngestOutcome::Purgatory` to the sync engine, which then counts the event as
//! handled), and its file is removed when the event is released or dropped. Each write
//! goes to a temp file that is then renamed over the final name, so a kill -9 at any
//! moment leaves either the whole event or nothing. At start every file is read back
//! and its git hunt resumes.
//!
//! One file per event keeps each change O(1) (no whole-purgatory rewrite per event).
//! Like the LMDB event store beside it, writes are not fsynced one by one: a process
//! crash loses nothing, a power cut may lose the last moments of both.

use std::path::PathBuf;

use nostr::EventId;

use crate::host::HeldEvent;
use crate::ports::write_atomically;

/// Where held events live; `None` for in-memory storage (nothing survives a restart).
#[derive(Debug, Clone)]
pub struct HeldStore {
    dir: Option<PathBuf>,
}

impl HeldStore {
    /// Held events in `dir` (created if missing), or nowhere.
    pub fn open(dir: Option<PathBuf>) -> std::io::Result<Self> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self { dir })
    }

    fn path(&self, id: &EventId) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("{}.json", id.to_hex())))
    }

    /// Writes one held event; returns once it would survive a crash of this process.
    pub async fn put(&self, held: &HeldEvent) -> Result<(), String> {
        let Some(path) = self.path(&held.event.id) else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(held).map_err(|e| e.to_string())?;
        write_atomically(&path, &bytes)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Forgets one held event (released, expired or refused on restart).
    pub async fn remove(&self, id: &EventId) {
        let Some(path) = self.path(id) else {
            return;
        };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a held event's file")
            }
        }
    }

    /// Every held event on disk. Unreadable files (a foreign file, a temp file of a
    /// write that a crash cut short) are skipped with a warning.
    pub fn load(&self) -> Vec<HeldEvent> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the purgatory directory");
                return Vec::new();
            }
        };
        let mut held = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                // `*.tmp`: a write a crash cut short; its event was never reported held.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<HeldEvent>(&b).map_err(|e| e.to_string()))
            {
                Ok(h) => held.push(h),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable held event")
                }
            }
        }
        held
    }
}
