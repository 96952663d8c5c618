//! `neorun serve`: verify, load and health-check every bundle, then serve
//! them over HTTP until SIGTERM/SIGINT, and drain.

use std::io::Write;
use std::sync::Arc;

use anyhow::anyhow;

use crate::exit::Failure;
use crate::http::{self, AppState, HttpSettings};
use crate::infer::{InferSettings, Inference};
use crate::metrics::Metrics;
use crate::models::ModelTable;
use crate::settings::{self, Serve};

pub fn run(s: Serve) -> Result<(), Failure> {
    settings::init_logging(s.log_format);
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
    let threads = threads.unwrap_or(1);
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
            },
            draining: Arc::clone(&draining),
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
        tracing::info!("drained; exiting");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
