//! The on-device model store (`--store DIR`, default `/var/lib/neorun`):
//! per model, slots holding verified bundles, the active and previous
//! pointers, a trial (a bundle installed and self-tested, waiting to be
//! activated or baking), and a journal of what happened.
//!
//! ```text
//! DIR/.lock                       flock: one change at a time (install, commit, rollback, gc, the server)
//! DIR/.serving                    flock held by the `neorun serve --store` serving it
//! DIR/journal.jsonl               append-only, synced: {time, who, op, name, detail}
//! DIR/tmp/                        installs in progress (removed by the next change)
//! DIR/models/NAME/state.json      {active, previous, trial, last_event}: switched by atomic rename
//! DIR/models/NAME/slots/ID/bundle.neo   the signed bundle, as verified
//! ```
//!
//! A slot keeps the signed bundle itself rather than its unpacked files:
//! it is verified again (signature, every digest) each time it is loaded,
//! so a slot corrupted on disk is found at start-up instead of being run.
//! Every change writes a new file, syncs it and its directory, then
//! renames it over the old one: a crash at any instant leaves the old
//! state or the new one.

pub mod install;
pub mod serve;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::control::store::{sync_dir, write_atomically};

pub const DEFAULT_STORE: &str = "/var/lib/neorun";

/// One installed bundle, as the pointers name it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotRef {
    pub slot: String,
    pub version: String,
    /// sha256 of the bundle file.
    pub digest: String,
    pub target: String,
    pub installed: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Installed and self-tested on this device; not serving yet.
    Pending,
    /// A server is moving traffic onto it under the activation policy.
    Baking,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    #[serde(flatten)]
    pub slot: SlotRef,
    pub phase: Phase,
    /// When it entered its phase.
    pub since: String,
    /// Installed with --allow-downgrade over a newer active version.
    #[serde(default)]
    pub downgrade: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    pub model: String,
    pub active: Option<SlotRef>,
    pub previous: Option<SlotRef>,
    pub trial: Option<Trial>,
    /// The last journal entry about this model.
    pub last_event: Option<Value>,
}

pub struct ModelStore {
    root: PathBuf,
}

/// Held while the store changes; released when dropped (or when the
/// process dies: the kernel drops the flock).
pub struct Locked {
    _file: File,
}

pub fn iso_now() -> String {
    chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn flock(f: &File, blocking: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let op = libc::LOCK_EX | if blocking { 0 } else { libc::LOCK_NB };
    // SAFETY: flock on a file descriptor this File owns for the call
    let r = unsafe { libc::flock(f.as_raw_fd(), op) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// A lock file, created when missing (its contents name the holder).
fn lock_file(path: &Path) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Model names become directory names: letters, digits, `-`, `_`, `.` (not leading).
pub fn check_model_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        bail!("model name {name:?} (from the bundle's manifest) cannot name a store directory: use letters, digits, '-', '_' and '.'")
    }
}

impl ModelStore {
    /// Opens (creating when missing) the store at `root`.
    pub fn open(root: &Path) -> anyhow::Result<ModelStore> {
        for d in ["models", "tmp"] {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating the model store {}", root.join(d).display()))?;
        }
        Ok(ModelStore { root: root.to_path_buf() })
    }

    /// Opens an existing store (for reading commands: a typo in --store is an error, not a new store).
    pub fn existing(root: &Path) -> anyhow::Result<ModelStore> {
        if !root.join("models").is_dir() {
            bail!(
                "{} is not a model store (no models/ in it)\nhint: `neorun install BUNDLE --store {}` creates one",
                root.display(),
                root.display()
            );
        }
        Ok(ModelStore { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn model_dir(&self, model: &str) -> PathBuf {
        self.root.join("models").join(model)
    }

    pub fn slot_bundle(&self, model: &str, slot: &str) -> PathBuf {
        self.model_dir(model).join("slots").join(slot).join("bundle.neo")
    }

    /// Takes the change lock: at once, or waiting up to `wait`. The holder's
    /// pid and command are written into the lock file so a refusal names it.
    pub fn lock(&self, what: &str, wait: Duration) -> anyhow::Result<Locked> {
        let path = self.root.join(".lock");
        let mut f = lock_file(&path)?;
        let deadline = Instant::now() + wait;
        loop {
            if flock(&f, false).with_context(|| format!("locking {}", path.display()))? {
                break;
            }
            if Instant::now() >= deadline {
                let mut holder = String::new();
                f.read_to_string(&mut holder).ok();
                bail!(
                    "the store {} is being changed by {} — try again when it ends (or give --lock-wait SECONDS)",
                    self.root.display(),
                    if holder.trim().is_empty() { "another neorun".to_string() } else { holder.trim().to_string() }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        f.set_len(0).ok();
        f.rewind().ok();
        write!(f, "{what} (pid {})", std::process::id()).ok();
        Ok(Locked { _file: f })
    }

    /// Blocks until the change lock is free (the server's own changes).
    pub fn lock_blocking(&self, what: &str) -> anyhow::Result<Locked> {
        self.lock(what, Duration::from_secs(24 * 3600))
    }

    /// Marks this process as the server of the store, for as long as the
    /// returned file is open. Refused when another server holds it.
    pub fn claim_serving(&self) -> anyhow::Result<File> {
        let path = self.root.join(".serving");
        let mut f = lock_file(&path)?;
        if !flock(&f, false)? {
            let mut holder = String::new();
            f.read_to_string(&mut holder).ok();
            bail!("the store {} is already served by {}: one server per store", self.root.display(), holder.trim());
        }
        f.set_len(0).ok();
        f.rewind().ok();
        write!(f, "neorun serve (pid {})", std::process::id()).ok();
        Ok(f)
    }

    /// The server serving this store, if one is (its pid line).
    pub fn served_by(&self) -> Option<String> {
        let path = self.root.join(".serving");
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).ok()?;
        match flock(&f, false) {
            // free: nobody serves (the lock is dropped with `f`)
            Ok(true) => None,
            Ok(false) => {
                let mut s = String::new();
                f.read_to_string(&mut s).ok();
                Some(s.trim().to_string())
            }
            Err(_) => None,
        }
    }

    /// The models in the store, by name.
    pub fn models(&self) -> anyhow::Result<Vec<String>> {
        let dir = self.root.join("models");
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        v.sort();
        Ok(v)
    }

    /// The one model a command means when it names none.
    pub fn the_model(&self, given: Option<&str>) -> anyhow::Result<String> {
        let all = self.models()?;
        match given {
            Some(m) if all.iter().any(|x| x == m) => Ok(m.to_string()),
            Some(m) => bail!(
                "the store {} has no model {m:?}; it has: {}",
                self.root.display(),
                if all.is_empty() { "none".into() } else { all.join(", ") }
            ),
            None => match all.as_slice() {
                [one] => Ok(one.clone()),
                [] => bail!("the store {} holds no model yet", self.root.display()),
                many => bail!("the store holds several models ({}): name one", many.join(", ")),
            },
        }
    }

    pub fn state(&self, model: &str) -> anyhow::Result<ModelState> {
        let p = self.model_dir(model).join("state.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| anyhow!("{}: not a store state ({e}); it is only written by neorun", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(ModelState { model: model.to_string(), ..Default::default() })
            }
            Err(e) => Err(anyhow!("reading {}: {e}", p.display())),
        }
    }

    /// Writes a model's state (the pointer switch): atomic, synced. The
    /// caller holds the lock.
    pub fn put_state(&self, _lock: &Locked, st: &ModelState) -> anyhow::Result<()> {
        let dir = self.model_dir(&st.model);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomically(&dir.join("state.json"), &serde_json::to_vec_pretty(st)?)
    }

    /// Appends an event to the journal (synced) and returns it, for the
    /// state's `last_event`.
    pub fn journal(&self, model: &str, op: &str, detail: Value) -> Value {
        let e = json!({
            "time": iso_now(),
            "who": format!("{} (pid {})", who(), std::process::id()),
            "op": op,
            "name": model,
            "detail": detail,
        });
        let path = self.root.join("journal.jsonl");
        let r = (|| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            let mut line = serde_json::to_vec(&e).unwrap_or_default();
            line.push(b'\n');
            f.write_all(&line)?;
            f.sync_data()
        })();
        if let Err(err) = r {
            tracing::error!("cannot append to the store journal {}: {err}", path.display());
            eprintln!("warning: cannot append to the store journal {}: {err}", path.display());
        }
        e
    }

    /// Records an event in the journal and as the model's last event, and
    /// writes `st` (the caller holds the lock).
    pub fn record(&self, lock: &Locked, st: &mut ModelState, op: &str, detail: Value) -> anyhow::Result<()> {
        st.last_event = Some(json!({"time": iso_now(), "op": op, "detail": detail.clone()}));
        self.put_state(lock, st)?;
        self.journal(&st.model, op, detail);
        Ok(())
    }

    /// Removes installs a killed process left in tmp/ (the caller holds the lock).
    pub fn clean_tmp(&self, _lock: &Locked) {
        if let Ok(rd) = std::fs::read_dir(self.tmp_dir()) {
            for e in rd.filter_map(|e| e.ok()) {
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }

    /// Slot directories of a model, by name.
    pub fn slots(&self, model: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.model_dir(model).join("slots"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Removes every slot of `model` that no pointer names (active,
    /// previous, trial) and leftovers of killed installs; returns what went.
    pub fn gc(&self, lock: &Locked, model: &str) -> anyhow::Result<Vec<String>> {
        self.clean_tmp(lock);
        let st = self.state(model)?;
        let keep: Vec<&str> = [st.active.as_ref(), st.previous.as_ref(), st.trial.as_ref().map(|t| &t.slot)]
            .into_iter()
            .flatten()
            .map(|s| s.slot.as_str())
            .collect();
        let slots_dir = self.model_dir(model).join("slots");
        let mut removed = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&slots_dir) {
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name.as_str()) {
                    continue;
                }
                std::fs::remove_dir_all(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
                removed.push(name);
            }
        }
        if !removed.is_empty() {
            sync_dir(&slots_dir)?;
        }
        removed.sort();
        Ok(removed)
    }
}

fn who() -> String {
    let args: Vec<String> = std::env::args().skip(1).take(1).collect();
    format!("neorun {}", args.join(" "))
}

/// Orders two version strings: dot/dash-separated parts, numerically where
/// both are numbers (`1.10` > `1.9`), else as text. `None`: the same parts.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let parts = |s: &str| s.split(['.', '-', '+', '_']).map(str::to_string).collect::<Vec<_>>();
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let (x, y) = (pa.get(i).map(String::as_str).unwrap_or("0"), pb.get(i).map(String::as_str).unwrap_or("0"));
        let o = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(m), Ok(n)) => m.cmp(&n),
            _ => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// What `neorun status --json` prints: the store, who serves it, and each
/// model's pointers, trial and last event.
pub fn status_json(store: &ModelStore) -> anyhow::Result<Value> {
    let mut models = Vec::new();
    for m in store.models()? {
        let st = store.state(&m)?;
        models.push(json!({
            "model": st.model,
            "state": state_word(&st),
            "active": st.active,
            "previous": st.previous,
            "trial": st.trial,
            "last_event": st.last_event,
            "slots": store.slots(&m),
        }));
    }
    Ok(json!({
        "store": store.root(),
        "served_by": store.served_by(),
        "models": models,
    }))
}

/// One word for a model's state: `committed`, `pending` (a trial waits for
/// a server or `neorun commit`), `baking`, or `empty`.
pub fn state_word(st: &ModelState) -> &'static str {
    match (&st.trial, &st.active) {
        (Some(t), _) if t.phase == Phase::Baking => "baking",
        (Some(_), _) => "pending",
        (None, Some(_)) => "committed",
        (None, None) => "empty",
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;

    #[test]
    fn versions_order_by_parts() {
        assert_eq!(compare_versions("1.10", "1.9"), Ordering::Greater);
        assert_eq!(compare_versions("2", "10"), Ordering::Less);
        assert_eq!(compare_versions("1.0", "1"), Ordering::Equal);
        assert_eq!(compare_versions("1.2.0-rc1", "1.2.0-rc2"), Ordering::Less);
        assert_eq!(compare_versions("b", "a"), Ordering::Greater);
    }

    #[test]
    fn state_switches_atomically_and_the_lock_refuses_a_second_holder() {
        let d = tempfile::tempdir().unwrap();
        let s = ModelStore::open(d.path()).unwrap();
        let l = s.lock("test", Duration::ZERO).unwrap();
        let e = s.lock("second", Duration::from_millis(100)).err().unwrap().to_string();
        assert!(e.contains("being changed by test (pid"), "{e}");
        let mut st = ModelState { model: "m".into(), ..Default::default() };
        st.active = Some(SlotRef {
            slot: "0001-1".into(),
            version: "1".into(),
            digest: "sha256:00".into(),
            target: "host".into(),
            installed: iso_now(),
        });
        s.record(&l, &mut st, "Committed", json!({"version": "1"})).unwrap();
        assert_eq!(s.state("m").unwrap(), st);
        assert_eq!(s.models().unwrap(), vec!["m".to_string()]);
        assert_eq!(state_word(&st), "committed");
        drop(l);
        assert!(s.lock("again", Duration::ZERO).is_ok());
        let journal = std::fs::read_to_string(d.path().join("journal.jsonl")).unwrap();
        assert!(journal.contains("\"op\":\"Committed\""), "{journal}");
    }

    #[test]
    fn names_that_cannot_be_directories_are_refused() {
        assert!(check_model_name("fraud-xgb_v1.2").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_model_name(bad).is_err(), "{bad}");
        }
    }
}
