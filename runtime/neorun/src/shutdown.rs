//! Shutdown: SIGTERM or SIGINT starts a drain — new requests get 503, the
//! ones in flight finish — and then the server returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Resolves on the first SIGTERM or SIGINT, after setting `draining`.
pub async fn signalled(draining: Arc<AtomicBool>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    draining.store(true, Ordering::SeqCst);
    tracing::info!("shutting down: draining in-flight requests");
}
