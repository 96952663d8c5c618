//! Models loaded on demand, for the two variant kinds that do not keep a
//! model loaded: a serverless variant (`ServerlessConfig`: its one model
//! loaded by the first request, unloaded after an idle period, at most
//! `MaxConcurrency` requests at once) and a multi-model variant (`Mode:
//! MultiModel`: the bundle named by `X-Amzn-SageMaker-Target-Model`, under
//! the model's directory, loaded on demand and kept most-recently-used
//! first within a memory budget).
//!
//! Loading is the same as at start-up (verify, open, health check), on the
//! blocking pool, one load at a time per variant; a model's memory is
//! counted as its bundle's size. An unloaded or evicted model is dropped
//! from the table at once and freed when its last request finishes.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use neoc_runtime::{Model, OpenOptions};

use crate::infer::Inference;
use crate::metrics::LazySeries;
use crate::models::LiveModel;

/// Where the models come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A serverless variant's one bundle.
    Single(PathBuf),
    /// A multi-model endpoint's directory of bundles.
    Dir(PathBuf),
}

/// What a variant was built from (an unchanged variant keeps its models).
pub type SettingsOf = (Option<crate::control::shapes::ServerlessDef>, PathBuf);

pub struct LazyModels {
    pub endpoint: String,
    pub variant: String,
    /// The variant's model name (what a single model is published as).
    pub model_name: String,
    source: Source,
    /// Bytes the loaded models may take together.
    budget: u64,
    /// Unload after this long without a request (serverless, unless
    /// provisioned).
    idle: Option<Duration>,
    max_concurrency: Option<usize>,
    inflight: Arc<AtomicUsize>,
    /// Most recently used last.
    loaded: tokio::sync::Mutex<VecDeque<Entry>>,
    open: OpenOptions,
    inference: Arc<Inference>,
    series: LazySeries,
    pub settings_of: SettingsOf,
}

struct Entry {
    target: String,
    live: Arc<LiveModel>,
    bytes: u64,
    last: Instant,
}

/// Why no model answers.
#[derive(Debug)]
pub enum LazyError {
    /// Over `MaxConcurrency` (429 `ThrottlingException`).
    Throttled(String),
    /// The request named no model, or one that is not there (400).
    Bad(String),
    /// The model did not load (verification, health check, memory) (500).
    Load(String),
}

/// A request's place under `MaxConcurrency`, given back on drop.
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the variant settings say, as `LazyModels::new` takes them.
pub struct Settings {
    pub source: Source,
    pub budget: u64,
    pub idle: Option<Duration>,
    pub max_concurrency: Option<usize>,
}

impl LazyModels {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        endpoint: &str,
        variant: &str,
        model_name: &str,
        settings: Settings,
        settings_of: SettingsOf,
        open: OpenOptions,
        inference: Arc<Inference>,
        series: LazySeries,
    ) -> Arc<LazyModels> {
        let lazy = Arc::new(LazyModels {
            endpoint: endpoint.into(),
            variant: variant.into(),
            model_name: model_name.into(),
            source: settings.source,
            budget: settings.budget,
            idle: settings.idle,
            max_concurrency: settings.max_concurrency,
            inflight: Arc::default(),
            loaded: tokio::sync::Mutex::default(),
            open,
            inference,
            series,
            settings_of,
        });
        if let Some(idle) = lazy.idle {
            // the idle reaper lives as long as the variant does
            let weak = Arc::downgrade(&lazy);
            let tick = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(tick).await;
                    let Some(l) = weak.upgrade() else { break };
                    l.unload_idle(idle).await;
                }
            });
        }
        lazy
    }

    pub fn is_multi_model(&self) -> bool {
        matches!(self.source, Source::Dir(_))
    }

    /// A place under `MaxConcurrency`, or `Throttled`.
    pub fn admit(&self) -> Result<Permit, LazyError> {
        let n = self.inflight.fetch_add(1, Ordering::AcqRel) + 1;
        let permit = Permit(self.inflight.clone());
        if let Some(max) = self.max_concurrency {
            if n > max {
                self.series.throttled.inc();
                return Err(LazyError::Throttled(format!(
                    "endpoint {} variant {}: {max} requests are running (MaxConcurrency); retry later",
                    self.endpoint, self.variant
                )));
            }
        }
        Ok(permit)
    }

    /// The bundle a target names, checked to be under the directory.
    fn bundle_of(&self, target: Option<&str>) -> Result<(String, PathBuf), LazyError> {
        match (&self.source, target) {
            (Source::Single(p), _) => Ok((self.model_name.clone(), p.clone())),
            (Source::Dir(_), None) => Err(LazyError::Bad(format!(
                "endpoint {} is a multi-model endpoint: name the model in X-Amzn-SageMaker-Target-Model (TargetModel)",
                self.endpoint
            ))),
            (Source::Dir(dir), Some(t)) => {
                let bad = t.is_empty()
                    || t.len() > 1024
                    || t.starts_with('/')
                    || t.split('/').any(|p| p.is_empty() || p == "." || p == "..");
                if bad {
                    return Err(LazyError::Bad(format!(
                        "TargetModel {t:?}: a bundle's path relative to the model's directory, without . or .. parts"
                    )));
                }
                let path = dir.join(t);
                if !path.is_file() {
                    return Err(LazyError::Bad(format!(
                        "TargetModel {t:?}: no such bundle under {} (the multi-model endpoint's ModelDataUrl)",
                        dir.display()
                    )));
                }
                Ok((t.to_string(), path))
            }
        }
    }

    /// The model for a request: loaded already (moved to most recent), or
    /// loaded now — a cold start, evicting the least recently used models
    /// the budget needs. Returns the models evicted.
    pub async fn get(
        &self,
        target: Option<&str>,
    ) -> Result<(Arc<LiveModel>, Option<Duration>, Vec<String>), LazyError> {
        let (key, path) = self.bundle_of(target)?;
        let mut loaded = self.loaded.lock().await;
        if let Some(i) = loaded.iter().position(|e| e.target == key) {
            let mut e = loaded.remove(i).expect("present");
            e.last = Instant::now();
            let live = e.live.clone();
            loaded.push_back(e);
            return Ok((live, None, Vec::new()));
        }
        let bytes = std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| LazyError::Load(format!("{}: {e}", path.display())))?;
        if bytes > self.budget {
            return Err(LazyError::Load(format!(
                "model {key} ({:.1} MB) does not fit the variant's memory ({:.0} MB)",
                bytes as f64 / 1e6,
                self.budget as f64 / 1e6
            )));
        }
        let mut evicted = Vec::new();
        while loaded.iter().map(|e| e.bytes).sum::<u64>() + bytes > self.budget {
            let Some(old) = loaded.pop_front() else { break };
            self.series.evictions.inc();
            tracing::info!(endpoint = %self.endpoint, variant = %self.variant, model = %old.target, "evicted: the memory budget needs the room");
            evicted.push(old.target);
        }
        let t0 = Instant::now();
        let (open, p) = (self.open.clone(), path.clone());
        let model = tokio::task::spawn_blocking(move || -> Result<Model, String> {
            let m = Model::open(&p, &open).map_err(|e| format!("{}: {e}", p.display()))?;
            m.self_test().map_err(|e| format!("{}: health check failed: {e}", p.display()))?;
            Ok(m)
        })
        .await
        .map_err(|e| LazyError::Load(e.to_string()))?
        .map_err(LazyError::Load)?;
        let setup = t0.elapsed();
        let name = if self.is_multi_model() { key.clone() } else { self.model_name.clone() };
        let live = Arc::new(self.inference.live_variant(name, Arc::new(model), Some(&self.variant)));
        self.series.cold_starts.inc();
        self.series.setup_time.observe(setup.as_secs_f64());
        tracing::info!(endpoint = %self.endpoint, variant = %self.variant, model = %key, seconds = setup.as_secs_f64(), "loaded on demand (cold start)");
        loaded.push_back(Entry { target: key, live: live.clone(), bytes, last: Instant::now() });
        Ok((live, Some(setup), evicted))
    }

    /// Unloads what has had no request for `idle`.
    async fn unload_idle(&self, idle: Duration) {
        let mut loaded = self.loaded.lock().await;
        let before = loaded.len();
        let inflight = self.inflight.load(Ordering::Acquire);
        loaded.retain(|e| {
            let keep = inflight > 0 || e.last.elapsed() < idle;
            if !keep {
                tracing::info!(endpoint = %self.endpoint, variant = %self.variant, model = %e.target, "unloaded after {idle:?} idle");
            }
            keep
        });
        for _ in loaded.len()..before {
            self.series.idle_unloads.inc();
        }
    }
}

/// The directory a multi-model `ModelDataUrl` names (a local directory,
/// `file://` or a path).
pub fn model_dir(url: &str) -> Option<PathBuf> {
    let p = url.strip_prefix("file://").unwrap_or(url);
    let p = Path::new(p);
    p.is_dir().then(|| p.to_path_buf())
}
