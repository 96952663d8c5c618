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
//!
//! A request hyper cannot parse (a bad request line or `Content-Length`,
//! control bytes in a header, a 100 KB path, headers past hyper's buffer)
//! is answered by hyper itself, before any handler runs, with an empty
//! 400, 414 or 431. [`JsonErrors`] gives those answers the body every other
//! error has (`{"error": …, "message": …}`), so no client sees an empty
//! error.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
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
    let conn = builder.serve_connection(TokioIo::new(JsonErrors::new(stream)), TowerToHyperService::new(app));
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

/// A connection's stream that rewrites hyper's own answers to requests it
/// could not parse (an empty 400, 414 or 431: see the module doc) into JSON
/// errors. Those are the only empty 4xx answers neorun writes (each of its
/// handlers' errors has a body), and hyper writes one as a whole head with
/// nothing after it, so they are told apart by their bytes alone.
struct JsonErrors<S> {
    inner: S,
    /// A rewritten answer being written: its bytes, how many are out, and
    /// the length of hyper's original (what to report written).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> JsonErrors<S> {
    fn new(inner: S) -> JsonErrors<S> {
        JsonErrors { inner, pending: None }
    }
}

/// The JSON answer for hyper's automatic error head `head`, if it is one.
fn rewrite_parse_error(head: &[u8]) -> Option<Vec<u8>> {
    // every write passes here: hyper's automatic head is short and a 4xx,
    // so anything else is let through without looking further
    if head.len() > 512 || !head.starts_with(b"HTTP/1.") || head.get(9) != Some(&b'4') {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let status = text.strip_prefix("HTTP/1.1 ").or_else(|| text.strip_prefix("HTTP/1.0 "))?.get(..3)?;
    let message = match status {
        "400" => "the request could not be parsed (its request line, a header, or Content-Length is malformed)",
        "414" => "the request's URI is too long",
        "431" => "the request's headers are too large or too many (at most 100 headers, ~400 KiB)",
        _ => return None,
    };
    let (lines, rest) = text.split_once("\r\n\r\n")?;
    if !rest.is_empty() || !lines.to_ascii_lowercase().contains("\r\ncontent-length: 0") {
        return None;
    }
    let body = serde_json::json!({ "error": message, "message": message }).to_string();
    let mut out = String::with_capacity(lines.len() + body.len() + 160);
    for line in lines.split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("content-type: application/json\r\nx-amzn-ErrorType: ValidationError\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    Some(out.into_bytes())
}

impl<S: tokio::io::AsyncWrite + Unpin> JsonErrors<S> {
    /// Writes out the pending rewrite; `Ready(n)`: hyper's `n` bytes are done.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let (bytes, off, original) = self.pending.as_mut().expect("a pending rewrite");
        while *off < bytes.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*off..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *off += n;
        }
        let original = *original;
        self.pending = None;
        Poll::Ready(Ok(original))
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonErrors<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonErrors<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            match rewrite_parse_error(buf) {
                Some(json) => this.pending = Some((json, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.poll_pending(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            let mut parts = bufs.iter().filter(|b| !b.is_empty());
            let rewrite = match (parts.next(), parts.next()) {
                (Some(one), None) => rewrite_parse_error(one).map(|json| (json, one.len())),
                _ => None,
            };
            match rewrite {
                Some((json, len)) => this.pending = Some((json, 0, len)),
                None => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        this.poll_pending(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite_parse_error;

    #[test]
    fn only_hypers_empty_parse_errors_are_rewritten() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 18:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite_parse_error(head).unwrap()).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            h.starts_with("HTTP/1.1 431 ") && h.contains("\r\ndate: ") && h.contains("content-type: application/json")
        );
        assert!(h.contains(&format!("content-length: {}", body.len())), "{h}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("headers are too large"));
        // a response with a body, a 200, or a head followed by more bytes is left alone
        assert!(rewrite_parse_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none());
        assert!(rewrite_parse_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite_parse_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1").is_none());
    }
}
