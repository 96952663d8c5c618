//! Control-plane state on disk: one JSON file per model, endpoint
//! configuration and endpoint under the state directory, each written
//! atomically (a new file, fsync, rename over the old, fsync the
//! directory), so a crash or `kill -9` at any instant leaves either the old
//! file or the new one, never a torn one; and `journal.jsonl`, an
//! append-only record of every change: when, who, what, and the details.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, Context};
use serde_json::Value;

pub const KINDS: [&str; 6] =
    ["models", "endpoint-configs", "endpoints", "alarms", "inference-experiments", "transform-jobs"];

pub struct Store {
    dir: PathBuf,
    journal: Mutex<File>,
}

impl Store {
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        for k in KINDS {
            std::fs::create_dir_all(dir.join(k))
                .with_context(|| format!("creating the state directory {}", dir.join(k).display()))?;
        }
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("journal.jsonl"))
            .with_context(|| format!("opening {}", dir.join("journal.jsonl").display()))?;
        std::fs::create_dir_all(dir.join("bundles"))
            .with_context(|| format!("creating {}", dir.join("bundles").display()))?;
        Ok(Store { dir: dir.to_path_buf(), journal: Mutex::new(journal) })
    }

    /// Where bundles pulled from registries are kept.
    pub fn bundles_dir(&self) -> PathBuf {
        self.dir.join("bundles")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.jsonl")
    }

    fn path(&self, kind: &str, name: &str) -> PathBuf {
        self.dir.join(kind).join(format!("{name}.json"))
    }

    /// Every record of a kind, by file name order. A file that does not
    /// parse is an error naming it (it cannot be torn by neorun; someone
    /// edited it).
    pub fn load(&self, kind: &str) -> anyhow::Result<Vec<Value>> {
        let dir = self.dir.join(kind);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for p in names {
            let file = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if file.starts_with('.') {
                // a write that never reached its rename: the old file stands
                let _ = std::fs::remove_file(&p);
                continue;
            }
            if !file.ends_with(".json") {
                continue;
            }
            let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            let v: Value = serde_json::from_slice(&text)
                .map_err(|e| anyhow!("{}: not valid JSON ({e}); restore it or remove it", p.display()))?;
            out.push(v);
        }
        Ok(out)
    }

    pub fn put(&self, kind: &str, name: &str, v: &Value) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(v)?;
        write_atomically(&self.path(kind, name), &bytes)
    }

    pub fn delete(&self, kind: &str, name: &str) -> anyhow::Result<()> {
        let p = self.path(kind, name);
        match std::fs::remove_file(&p) {
            Ok(()) => sync_dir(p.parent().unwrap_or(Path::new("."))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(anyhow!("removing {}: {e}", p.display())),
        }
    }

    /// Appends one line to the journal and syncs it.
    pub fn journal(&self, entry: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut f = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)?;
        f.sync_data()?;
        Ok(())
    }
}

/// Whether a journal entry is about `name`, of operation `op`, at or after
/// `since` (ISO 8601, as entries carry their time); `None` matches all.
pub fn journal_matches(e: &Value, name: Option<&str>, op: Option<&str>, since: Option<&str>) -> bool {
    name.is_none_or(|n| e["name"] == n)
        && op.is_none_or(|o| e["op"] == o)
        && since.is_none_or(|s| e["time"].as_str().is_some_and(|t| t >= s))
}

/// Writes `path` so that it holds either its old contents or `bytes`,
/// whatever happens: the bundle writer's temporary-file-and-rename
/// (`container::write_atomic`, which syncs the file), then the directory
/// synced so that the rename itself survives a crash.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    neoc_bundle::container::write_atomic(path, bytes).map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| anyhow!("syncing {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_round_trip_and_leftover_temporaries_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.put("models", "a", &json!({"ModelName": "a"})).unwrap();
        s.put("models", "a", &json!({"ModelName": "a", "v": 2})).unwrap();
        s.put("models", "b", &json!({"ModelName": "b"})).unwrap();
        // a write killed before its rename
        std::fs::write(d.path().join("models/.c.json.1.tmp"), b"{\"Mode").unwrap();
        let all = s.load("models").unwrap();
        assert_eq!(all, vec![json!({"ModelName": "a", "v": 2}), json!({"ModelName": "b"})]);
        assert!(!d.path().join("models/.c.json.1.tmp").exists());
        s.delete("models", "a").unwrap();
        s.delete("models", "a").unwrap();
        assert_eq!(s.load("models").unwrap().len(), 1);
        s.journal(&json!({"op": "CreateModel"})).unwrap();
        s.journal(&json!({"op": "DeleteModel"})).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("journal.jsonl")).unwrap().lines().count(), 2);
        std::fs::write(d.path().join("models/b.json"), b"{").unwrap();
        let e = s.load("models").unwrap_err().to_string();
        assert!(e.contains("b.json") && e.contains("not valid JSON"), "{e}");
    }
}
