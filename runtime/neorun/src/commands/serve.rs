//! `neorun serve`: verify, load and health-check every bundle, restore the
//! control plane's endpoints (`--state-dir`) and apply the declared ones
//! (`--endpoint`), then serve over HTTP until SIGTERM/SIGINT, and drain:
//! in-flight requests finish, shadow copies finish, capture is flushed.
//! SIGHUP re-reads the declared endpoint files. With `--store`, the model
//! store's active versions are served and new installs activated
//! (`modelstore::serve`).

use std::io::Write;
use std::sync::Arc;

use anyhow::anyhow;

use crate::capture::Capture;
use crate::control::store::Store;
use crate::control::ControlPlane;
use crate::exit::Failure;
use crate::http::{self, AppState, HttpSettings};
use crate::infer::spare::SparePool;
use crate::infer::{InferSettings, Inference};
use crate::metrics::Metrics;
use crate::models::ModelTable;
use crate::settings::{self, Serve};

pub fn run(s: Serve) -> Result<(), Failure> {
    settings::init_logging(s.log_format);
    // with --shadow-cpus, everything started from here on (engine thread
    // pools, the async runtime, capture) runs on the live CPUs
    if !s.live_cpus.is_empty() {
        crate::cpus::pin_current_thread(&s.live_cpus)
            .map_err(|e| anyhow!("--shadow-cpus: setting CPU affinity: {e}"))?;
        tracing::info!(live = ?s.live_cpus, shadow = ?s.shadow_cpus, "CPUs split between live traffic and shadows");
    }
    let mut threads = s.threads;
    let mut loaded = Vec::new();
    for b in &s.bundles {
        let model = super::open(b, &s.open)?;
        // without --threads: the first bundle's device default, at most this host's CPUs
        threads.get_or_insert_with(|| model.default_threads());
        let st = model.self_test().map_err(|e| anyhow!("{}: health check failed: {e}", b.display()))?;
        let name = s.name.clone().unwrap_or_else(|| model.manifest.model.name.clone());
        if loaded.iter().any(|(n, _)| *n == name) {
            return Err(anyhow!("two bundles are both named `{name}`").into());
        }
        tracing::info!(model = %name, version = %model.manifest.model.version, engine = %model.running, test_vectors = st.cases, "loaded {}", b.display());
        loaded.push((name, model));
    }
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(threads + 2)
        .enable_all()
        .build()
        .map_err(|e| anyhow!("starting the async runtime: {e}"))?;
    rt.block_on(async move {
        let metrics = Arc::new(Metrics::new(&s.variant));
        let inference = Inference::new(
            InferSettings {
                threads,
                max_queue: s.max_queue,
                max_batch: s.max_batch,
                max_queue_delay: s.max_queue_delay,
            },
            metrics.clone(),
        );
        let models = Arc::new(ModelTable::default());
        for (name, model) in loaded {
            models.publish(inference.live_model(name, model));
        }
        let capture = Capture::start(s.capture.clone(), metrics.capture());
        let store = match &s.state_dir {
            Some(d) => Some(Store::open(d)?),
            None => None,
        };
        if store.is_none() && (s.access_keys.is_some() || s.auth_token.is_some()) {
            tracing::warn!("no --state-dir: endpoints created through the control plane are lost when neorun stops");
        }
        let control = ControlPlane::new(
            store,
            inference.clone(),
            metrics.clone(),
            capture.clone(),
            s.open.clone(),
            s.region.clone(),
        )?;
        control.set_lazy_settings(s.serverless_idle, s.multi_model_bytes);
        control.restore().await?;
        if let Some(dir) = &s.state_dir {
            let queue = crate::control::async_inference::AsyncQueue::open(dir, s.async_input_dir.clone())?;
            control.start_async(queue);
        }
        for f in &s.alarms {
            let n = control.apply_alarms_file(f).map_err(|e| anyhow!("--alarms: {e}"))?;
            tracing::info!(file = %f.display(), alarms = n, "alarms defined");
        }
        control.start_alarms();
        for f in &s.endpoints {
            let name = control.apply_file(f, "--endpoint").await.map_err(|e| anyhow!("{e}"))?;
            tracing::info!(endpoint = %name, file = %f.display(), "endpoint in service");
        }
        let store_routes = s.store.is_some();
        if let Some(ss) = s.store.clone() {
            let dir = ss.dir.clone();
            let driver = crate::modelstore::serve::Driver::start(ss, control.clone(), models.clone(), s.open.clone())
                .await
                .map_err(|e| anyhow!("--store {}: {e:#}", dir.display()))?;
            driver.watch();
            tracing::info!(store = %dir.display(), models = ?models.names(), "serving the model store");
        }
        #[cfg(unix)]
        if !s.endpoints.is_empty() {
            tokio::spawn(reload_on_sighup(control.clone(), s.endpoints.clone()));
        }
        let spare = SparePool::new(s.shadow_threads, s.shadow_cpus.clone());
        let draining = Arc::new(Default::default());
        let state = Arc::new(AppState {
            models,
            inference,
            metrics,
            settings: HttpSettings {
                max_body: s.max_body,
                timeout: s.timeout,
                auth_token: s.auth_token,
                variant: s.variant,
                access_keys: s.access_keys,
                sign_data_plane: s.sign_data_plane,
            },
            draining: Arc::clone(&draining),
            control: Some(control),
            store_routes,
            capture: capture.clone(),
            spare: spare.clone(),
        });
        let listener = tokio::net::TcpListener::bind((s.host.as_str(), s.port))
            .await
            .map_err(|e| anyhow!("cannot listen on {}:{}: {e}", s.host, s.port))?;
        let addr = listener.local_addr().map_err(|e| anyhow!("{e}"))?;
        println!("listening on http://{addr}");
        std::io::stdout().flush().ok();
        tracing::info!(%addr, threads, "serving");
        let conns = http::server::ConnSettings { header_timeout: s.header_timeout, max_connections: s.max_connections };
        let signalled = crate::shutdown::signalled(draining.clone());
        http::server::serve(listener, http::router(state), conns, signalled, draining).await;
        // shadow copies under way finish (and are captured), then capture flushes
        tokio::task::spawn_blocking(move || {
            spare.close();
            capture.close();
        })
        .await
        .ok();
        tracing::info!("drained; exiting");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

/// SIGHUP: apply the declared endpoint files again. A file that fails
/// (bad JSON, a bundle that does not verify) changes nothing; the error is
/// logged and the endpoint keeps serving what it served.
#[cfg(unix)]
async fn reload_on_sighup(control: Arc<ControlPlane>, files: Vec<std::path::PathBuf>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the declared endpoints");
        for f in &files {
            match control.apply_file(f, "SIGHUP").await {
                Ok(name) => tracing::info!(endpoint = %name, file = %f.display(), "reloaded"),
                Err(e) => tracing::error!("reload failed, nothing changed: {e}"),
            }
        }
    }
}
