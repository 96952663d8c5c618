//! The model store's commands: `install`, `status`, `rollback`, `commit`,
//! `gc` (the store itself is `modelstore`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde_json::json;

use crate::cli::{CommitArgs, InstallArgs, StatusArgs, StoreArgs, StoreModelArgs};
use crate::exit::Failure;
use crate::modelstore::install::{install as install_bundle, InstallOptions, Outcome};
use crate::modelstore::{state_word, ModelStore, Phase};
use crate::settings::open_options;

fn lock_wait(a: &StoreArgs) -> Result<Duration, Failure> {
    if !(a.lock_wait.is_finite() && a.lock_wait >= 0.0 && a.lock_wait <= 86_400.0) {
        return Err(anyhow!("--lock-wait {}: give seconds from 0 to a day", a.lock_wait).into());
    }
    Ok(Duration::from_secs_f64(a.lock_wait))
}

pub fn install(a: InstallArgs) -> Result<(), Failure> {
    let store = ModelStore::open(&a.store.store)?;
    let open = open_options(&a.load, None)?;
    let t = Instant::now();
    let local = if a.bundle.starts_with("oci://") {
        // pulled next to the store (same disk: the slot is a rename away); a
        // pull cut short resumes from what its downloads/ directory holds
        let downloads = a.store.store.join("downloads");
        let work = downloads.join("partial");
        std::fs::create_dir_all(&work).map_err(|e| anyhow!("{}: {e}", work.display()))?;
        let p = crate::modelstore::install::pull_bundle(&a.bundle, &work, &downloads, &open)
            .map_err(|e| anyhow!("{}: {e}", a.bundle))?;
        eprintln!("pulled {} → {}", a.bundle, p.display());
        p
    } else {
        let p = Path::new(&a.bundle).to_path_buf();
        if !p.is_file() {
            return Err(anyhow!("{}: no such bundle file", p.display()).into());
        }
        p
    };
    let opts = InstallOptions {
        open,
        allow_downgrade: a.allow_downgrade,
        lock_wait: lock_wait(&a.store)?,
        source: a.bundle.clone(),
    };
    let outcome = install_bundle(&store, &local, &opts);
    if a.bundle.starts_with("oci://") && outcome.is_ok() {
        let _ = std::fs::remove_file(&local);
    }
    match outcome? {
        Outcome::AlreadyActive { model, version } => {
            println!("{model} {version} is already the active version: nothing to do");
            Ok(())
        }
        Outcome::Committed { model, slot } => {
            println!(
                "{model} {} installed in slot {} and committed (the model's first version) in {:.2} s",
                slot.version,
                slot.slot,
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Outcome::Pending { model, trial } => {
            let served = store.served_by();
            println!(
                "{model} {} installed in slot {} and self-tested in {:.2} s; {}",
                trial.slot.version,
                trial.slot.slot,
                t.elapsed().as_secs_f64(),
                match &served {
                    Some(s) => format!("{s} activates it now (a guarded update; it commits after a bake without alarms)"),
                    None => "no server serves this store: the next `neorun serve --store` activates it, or `neorun commit` does now".into(),
                }
            );
            if a.wait && served.is_some() {
                return wait_outcome(&store, &model, &trial.slot.slot, Duration::from_secs(a.timeout), t);
            }
            Ok(())
        }
    }
}

/// Waits until `slot`'s trial ends: committed (Ok) or rolled back (exit 1, with why).
fn wait_outcome(store: &ModelStore, model: &str, slot: &str, timeout: Duration, t: Instant) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let mut said = None;
    loop {
        let st = store.state(model)?;
        match &st.trial {
            Some(tr) if tr.slot.slot == slot => {
                if said != Some(tr.phase) {
                    eprintln!("{model} {}: {:?}", tr.slot.version, tr.phase);
                    said = Some(tr.phase);
                }
                if Instant::now() >= deadline {
                    return Err(anyhow!("{model}: still {} after {} s", state_word(&st), timeout.as_secs()).into());
                }
                if tr.phase == Phase::Pending && store.served_by().is_none() {
                    return Err(anyhow!(
                        "{model}: the server stopped before activating slot {slot}; it stays pending (the next `neorun serve --store` activates it)"
                    )
                    .into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => {
                if st.active.as_ref().is_some_and(|a| a.slot == slot) {
                    println!(
                        "{model}: slot {slot} committed, {:.2} s after the install began",
                        t.elapsed().as_secs_f64()
                    );
                    return Ok(());
                }
                let why = st
                    .last_event
                    .as_ref()
                    .and_then(|e| e["detail"]["why"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "see `neorun journal --state-dir STORE`".into());
                return Err(anyhow!("{model}: slot {slot} was rolled back: {why}").into());
            }
        }
    }
}

pub fn status(a: StatusArgs) -> Result<(), Failure> {
    let store = ModelStore::existing(&a.store.store)?;
    let v = crate::modelstore::status_json(&store)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| anyhow!("{e}"))?);
        return Ok(());
    }
    if a.inventory {
        for m in v["models"].as_array().cloned().unwrap_or_default() {
            let key: String = m["model"]
                .as_str()
                .unwrap_or("?")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let or_none = |x: &serde_json::Value| x.as_str().unwrap_or("none").to_string();
            println!("neorun_{key}_active={}", or_none(&m["active"]["version"]));
            println!("neorun_{key}_previous={}", or_none(&m["previous"]["version"]));
            println!("neorun_{key}_state={}", or_none(&m["state"]));
            println!("neorun_{key}_last_event={}", or_none(&m["last_event"]["op"]));
        }
        return Ok(());
    }
    println!(
        "store {} ({})",
        store.root().display(),
        v["served_by"].as_str().map_or("no server serves it".into(), |s| format!("served by {s}"))
    );
    let models = v["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        println!("  no models");
    }
    for m in models {
        println!("{}: {}", m["model"].as_str().unwrap_or("?"), m["state"].as_str().unwrap_or("?"));
        for k in ["active", "previous", "trial"] {
            let s = &m[k];
            if s.is_null() {
                continue;
            }
            let phase = s["phase"].as_str().map(|p| format!(" {p} since {}", s["since"].as_str().unwrap_or("?")));
            println!(
                "  {k:<9} {:<12} slot {:<16} {}{}",
                s["version"].as_str().unwrap_or("?"),
                s["slot"].as_str().unwrap_or("?"),
                s["digest"].as_str().unwrap_or("?"),
                phase.unwrap_or_default()
            );
        }
        if let Some(e) = m["last_event"].as_object() {
            println!(
                "  last      {} at {}: {}",
                e["op"].as_str().unwrap_or("?"),
                e["time"].as_str().unwrap_or("?"),
                e.get("detail").map(|d| d.to_string()).unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub fn rollback(a: StoreModelArgs) -> Result<(), Failure> {
    let store = ModelStore::existing(&a.store.store)?;
    let model = store.the_model(a.model.as_deref())?;
    let lock = store.lock("neorun rollback", lock_wait(&a.store)?)?;
    let mut st = store.state(&model)?;
    let from = a.from.as_deref();
    if let Some(t) = st.trial.clone() {
        if from.is_none_or(|v| v == t.slot.version) {
            st.trial = None;
            store.record(
                &lock,
                &mut st,
                "RolledBack",
                json!({"slot": t.slot.slot, "version": t.slot.version, "why": "neorun rollback", "phase": t.phase}),
            )?;
            println!(
                "{model}: trial {} dropped ({}); {} stays active",
                t.slot.version,
                if t.phase == Phase::Baking { "the server moves every request back now" } else { "it was pending" },
                st.active.as_ref().map_or("nothing".into(), |a| a.version.clone())
            );
            return Ok(());
        }
    }
    let Some(active) = st.active.clone() else {
        return Err(anyhow!("{model}: nothing is active, so there is nothing to roll back").into());
    };
    if let Some(v) = from {
        if v != active.version {
            println!("{model}: {v} is neither the trial nor the active version ({}): nothing to do", active.version);
            return Ok(());
        }
    }
    let Some(previous) = st.previous.clone() else {
        return Err(
            anyhow!("{model}: {} is active and there is no previous version to go back to", active.version).into()
        );
    };
    st.active = Some(previous.clone());
    st.previous = Some(active.clone());
    store.record(
        &lock,
        &mut st,
        "RolledBack",
        json!({"slot": active.slot, "version": active.version, "now_active": previous.slot, "why": "neorun rollback"}),
    )?;
    println!(
        "{model}: {} is active again (was {}){}",
        previous.version,
        active.version,
        if store.served_by().is_some() { "; the server switches within a second" } else { "" }
    );
    Ok(())
}

pub fn commit(a: CommitArgs) -> Result<(), Failure> {
    let store = ModelStore::existing(&a.store.store)?;
    let model = store.the_model(a.model.as_deref())?;
    let t = Instant::now();
    let trial = {
        let lock = store.lock("neorun commit", lock_wait(&a.store)?)?;
        let mut st = store.state(&model)?;
        let Some(trial) = st.trial.clone() else {
            println!(
                "{model}: nothing to commit ({} is active and committed)",
                st.active.as_ref().map_or("nothing".into(), |a| a.version.clone())
            );
            return Ok(());
        };
        if store.served_by().is_none() {
            st.trial = None;
            st.previous = st.active.take();
            st.active = Some(trial.slot.clone());
            store.record(
                &lock,
                &mut st,
                "Committed",
                json!({"slot": trial.slot.slot, "version": trial.slot.version,
                       "why": "neorun commit with no server serving the store (self-tested at install; no bake)"}),
            )?;
            println!("{model}: {} committed and active", trial.slot.version);
            return Ok(());
        }
        trial
    };
    eprintln!("{model}: a server is baking {}; waiting for its outcome", trial.slot.version);
    wait_outcome(&store, &model, &trial.slot.slot, Duration::from_secs(a.timeout), t)
}

pub fn gc(a: StoreArgs) -> Result<(), Failure> {
    let store = ModelStore::existing(&a.store)?;
    let lock = store.lock("neorun gc", lock_wait(&a)?)?;
    for m in store.models()? {
        let removed = store.gc(&lock, &m)?;
        if !removed.is_empty() {
            store.journal(&m, "GarbageCollected", json!({"slots": removed}));
        }
        println!("{m}: removed {}", if removed.is_empty() { "nothing".into() } else { removed.join(", ") });
    }
    Ok(())
}
