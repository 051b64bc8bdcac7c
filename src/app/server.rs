//! The listener: the router on hyper with the limits a server facing untrusted clients needs,
//! which `axum::serve` does not set. A client must finish a request's headers within
//! `limits.header_read_timeout` of connecting or of its previous response (slowloris, idle
//! keep-alive connections), and at most `limits.max_connections` are open at once: one past
//! that is closed at accept, so a flood of idle sockets cannot starve the process of file
//! descriptors. Request bodies have their own deadline (`proxy::read_body`).

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The connection limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time allowed for a request's headers.
    pub header_read_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

/// Serve `app` on `listener` until `stop` is cancelled, then let the connections finish their
/// in-flight requests (keep-alive connections close after their current response) for up to
/// `drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let mut refused_logged = false;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, _peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, or a connection reset before accept: not fatal.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !refused_logged {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached; new connections are closed until some end"
                );
                refused_logged = true;
            }
            drop(stream);
            continue;
        };
        refused_logged = false;
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|r: http::Request<Incoming>| r.map(Body::new)),
        );
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte = limits.header_read_timeout;
        let stopping = stop.clone();
        tokio::spawn(async move {
            // hyper's header timer starts with the first byte, and telling HTTP/1 from HTTP/2
            // waits for bytes without one: a client that connects and sends nothing would
            // hold its slot forever.
            // A connection that has sent nothing when shutdown starts has nothing in flight:
            // it is closed at once rather than holding the drain open.
            let mut probe = [0u8; 1];
            let first = tokio::select! {
                r = tokio::time::timeout(first_byte, stream.peek(&mut probe)) => r,
                () = stopping.cancelled() => {
                    drop(slot);
                    return;
                }
            };
            if !matches!(first, Ok(Ok(n)) if n > 0) {
                drop(slot);
                return;
            }
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            // A client that vanishes or breaks the protocol ends its own connection only.
            let _ = watcher.watch(conn).await;
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutdown requested: draining in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "drain timeout reached; closing remaining connections"
        );
    }
}
