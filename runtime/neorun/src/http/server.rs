//! The connection side of the server: accepting, a bound on open
//! connections, the header-read timeout, and the graceful drain.
//!
//! `axum::serve` sets no timer on hyper's connections, so a client that
//! never finishes its headers, or an idle keep-alive connection, was held
//! for ever and a few hundred of them exhausted the server. Here every
//! connection runs hyper's HTTP/1 with `header_read_timeout`, which covers
//! both (hyper starts it whenever the connection waits for a request head,
//! so an idle keep-alive connection is closed after it too), and at most
//! `max_connections` are open: beyond, a new one is closed at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What the connection side decides.
#[derive(Clone, Copy, Debug)]
pub struct ConnSettings {
    /// How long a connection may take to send a request's headers, and
    /// stay idle between requests.
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves (which sets
/// `draining`), then lets every open connection finish the request it is
/// on, closes it, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ConnSettings,
    shutdown: impl std::future::Future<Output = ()>,
    draining: Arc<AtomicBool>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    // each connection holds a receiver; dropping the sender asks them to
    // close, and `closed()` resolves when the last has gone
    let (close_tx, close_rx) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // out of file descriptors, say: wait, do not spin
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = settings.max_connections, "connection refused: --max-connections reached");
            drop(stream);
            continue;
        };
        let app = app.clone();
        let mut close = close_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            connection(stream, peer, app, settings, &mut close).await;
        });
    }
    draining.store(true, Ordering::SeqCst);
    drop(listener);
    drop(close_rx);
    let _ = close_tx.send(());
    close_tx.closed().await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    settings: ConnSettings,
    close: &mut tokio::sync::watch::Receiver<()>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(settings.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        }
        _ = close.changed() => {
            // finish the request in progress, then close
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
