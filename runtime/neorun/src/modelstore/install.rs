//! `neorun install`: a bundle into the store. Copied into `tmp/`, the copy
//! verified (signature, every digest, target, runtime) and self-tested on
//! this device, and only then moved into a new slot and named by the
//! model's state — so a bad, half-copied or foreign bundle changes
//! nothing, and a `kill -9` at any point leaves the store as it was or with
//! the new slot fully recorded.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use neoc_runtime::{Model, OpenOptions};
use serde_json::json;

use super::{check_model_name, compare_versions, iso_now, ModelStore, Phase, SlotRef, Trial};
use crate::control::store::sync_dir;
use crate::exit::Failure;

pub struct InstallOptions {
    pub open: OpenOptions,
    pub allow_downgrade: bool,
    pub lock_wait: Duration,
    /// Where the bundle came from, for the journal (a path or an oci:// reference).
    pub source: String,
}

#[derive(Debug)]
pub enum Outcome {
    /// A new trial, waiting for a server's guarded activation or `neorun commit`.
    Pending { model: String, trial: Trial },
    /// The model's first version: nothing to bake against, so active at once.
    Committed { model: String, slot: SlotRef },
    /// That very bundle is already active.
    AlreadyActive { model: String, version: String },
}

/// Copies `from` to `to` and syncs it; a full disk is said as such.
fn copy_synced(from: &Path, to: &Path) -> anyhow::Result<()> {
    let mut src = std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut dst = std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let r = std::io::copy(&mut src, &mut dst).and_then(|_| dst.flush()).and_then(|_| dst.sync_all());
    if let Err(e) = r {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            return Err(anyhow!(
                "copying the bundle into the store: no space left on the store's disk ({}); nothing was changed — free space (`neorun gc` removes slots no pointer names)",
                to.parent().unwrap_or(to).display()
            ));
        }
        return Err(anyhow!("copying the bundle into {}: {e}", to.display()));
    }
    Ok(())
}

fn slot_name(seq: u32, version: &str) -> String {
    let v: String =
        version.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    format!("{seq:04}-{v}")
}

pub fn install(store: &ModelStore, bundle: &Path, opts: &InstallOptions) -> Result<Outcome, Failure> {
    let lock = store.lock("neorun install", opts.lock_wait)?;
    store.clean_tmp(&lock);
    let work = store.tmp_dir().join(format!("install-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let staged = work.join("bundle.neo");
    let cleanup = |r: Result<Outcome, Failure>| {
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&work);
        }
        r
    };
    cleanup((|| {
        copy_synced(bundle, &staged)?;
        // what is verified is what is kept: the copy, not the source
        let model = Model::open(&staged, &opts.open)?;
        let name = model.manifest.model.name.clone();
        check_model_name(&name)?;
        let version = model.manifest.model.version.clone();
        let mut st = store.state(&name)?;
        if let Some(t) = &st.trial {
            if t.phase == Phase::Baking {
                return Err(anyhow!(
                    "{name} {} is baking on the server ({}); wait for it to commit or roll back (`neorun status`), or roll it back first (`neorun rollback {name}`)",
                    t.slot.version,
                    store.served_by().unwrap_or_else(|| "no server now: the next start rolls it back".into())
                )
                .into());
            }
        }
        let mut downgrade = false;
        if let Some(a) = &st.active {
            if a.digest == model.digest {
                return Ok(Outcome::AlreadyActive { model: name, version });
            }
            let newer = compare_versions(&version, &a.version) == std::cmp::Ordering::Greater;
            if !newer {
                if !opts.allow_downgrade {
                    return Err(anyhow!(
                        "{name} {version} is not newer than the active {} (anti-rollback); nothing was changed\nhint: give the new build a higher version, or pass --allow-downgrade (journaled)",
                        a.version
                    )
                    .into());
                }
                downgrade = true;
            }
        }
        let test = match model.self_test() {
            Ok(t) => t,
            Err(e) => {
                store.journal(
                    &name,
                    "SelfTestFailed",
                    json!({"version": version, "digest": model.digest, "source": opts.source, "why": e}),
                );
                return Err(anyhow!(
                    "{name} {version}: its own test vectors fail on this device: {e}; nothing was changed"
                )
                .into());
            }
        };
        let (digest, target) = (model.digest.clone(), model.manifest.target.name.clone());
        drop(model);
        // the slot: the staged directory renamed into slots/, then synced
        let slots = store.model_dir(&name).join("slots");
        std::fs::create_dir_all(&slots).with_context(|| format!("creating {}", slots.display()))?;
        let seq = store.slots(&name).iter().filter_map(|s| s.split('-').next()?.parse::<u32>().ok()).max().unwrap_or(0);
        let slot_id = slot_name(seq + 1, &version);
        let slot_dir = slots.join(&slot_id);
        std::fs::rename(&work, &slot_dir)
            .with_context(|| format!("moving the verified bundle into {}", slot_dir.display()))?;
        sync_dir(&slots)?;
        sync_dir(&store.tmp_dir())?;
        let slot = SlotRef { slot: slot_id.clone(), version: version.clone(), digest, target, installed: iso_now() };
        store.journal(
            &name,
            "Installed",
            json!({"slot": slot_id, "version": version, "digest": slot.digest, "source": opts.source,
                   "downgrade": downgrade, "self_test": {"cases": test.cases, "max_abs_error": test.max_abs_error}}),
        );
        if st.active.is_none() {
            st.active = Some(slot.clone());
            store.record(
                &lock,
                &mut st,
                "Committed",
                json!({"slot": slot_id, "version": version, "why": "the model's first version: nothing to bake against"}),
            )?;
            return Ok(Outcome::Committed { model: name, slot });
        }
        if let Some(old) = st.trial.take() {
            store.journal(
                &name,
                "Superseded",
                json!({"slot": old.slot.slot, "version": old.slot.version, "by": version}),
            );
        }
        let trial = Trial { slot, phase: Phase::Pending, since: iso_now(), downgrade };
        st.trial = Some(trial.clone());
        store.record(
            &lock,
            &mut st,
            "SelfTested",
            json!({"slot": slot_id, "version": version, "cases": test.cases,
                   "next": "pending activation: a server serving this store bakes it; without one, `neorun commit` activates it"}),
        )?;
        Ok(Outcome::Pending { model: name, trial })
    })())
}

/// Pulls an `oci://` reference's bundle into `dir`: the manifest, or every
/// entry of an index, each layer digest-checked as it streams (neoc's
/// registry client, which resumes a partial blob left in `work`); the first
/// bundle that passes `Model::verify` here is kept, named by its digest.
/// Registry credentials: `NEOC_REGISTRY_USER`/`_PASSWORD` or the Docker
/// config, as for `neoc pull`.
#[cfg(feature = "registry")]
pub fn pull_bundle(url: &str, work: &Path, dir: &Path, open: &OpenOptions) -> Result<PathBuf, String> {
    use neoc_registry::{pull, Access, Reference, Store, BUNDLE_LAYER};
    let r = Reference::parse(url, || Err(anyhow!("not a remote reference"))).map_err(|e| format!("{e:#}"))?;
    let store = Store::open(&r, &Access::default()).map_err(|e| format!("{e:#}"))?;
    std::fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
    let files = pull(&store, &r, work, None).map_err(|e| format!("{e:#}"))?;
    let mut refused = Vec::new();
    for f in files.iter().filter(|f| f.media_type == BUNDLE_LAYER) {
        match Model::verify(&f.path, open) {
            Ok(v) => {
                let dest = dir.join(format!("{}.neo", v.digest.replace(':', "-")));
                std::fs::rename(&f.path, &dest).map_err(|e| format!("{}: {e}", dest.display()))?;
                return Ok(dest);
            }
            Err(e) => refused.push(format!("{}: {e}", f.from)),
        }
    }
    if refused.is_empty() {
        Err(format!("{url} holds no neoc bundle"))
    } else {
        Err(format!("no bundle in {url} runs here: {}", refused.join("; ")))
    }
}

#[cfg(not(feature = "registry"))]
pub fn pull_bundle(_url: &str, _work: &Path, _dir: &Path, _open: &OpenOptions) -> Result<PathBuf, String> {
    Err("this neorun was built without registry support (cargo feature `registry`): run `neoc pull REF -o model.neo` and install that file".into())
}
