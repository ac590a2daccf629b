//! `crcr serve`'s HTTP server: axum's router on hyper's HTTP/1 connection
//! with the limits a public endpoint needs against slow or silent clients
//! (issue 12), which `axum::serve` does not expose:
//!
//! - a request head must arrive within [`ServerLimits::header_read_timeout`]
//!   of the connection opening or going idle after a response, else the
//!   connection is closed: this ends clients that say nothing, trickle a
//!   head, or keep an idle keep-alive connection open (hyper's
//!   `http1::Builder::header_read_timeout`, started again when a connection
//!   goes idle since hyper 1.6, hyperium/hyper#3828);
//! - a request (its body read and the answer written) must be done within
//!   [`ServerLimits::request_timeout`], else 408 Request Timeout (RFC 9110
//!   §15.5.9) and the connection is closed;
//! - at most [`ServerLimits::max_connections`] connections are served at
//!   once; more wait in the kernel's accept backlog (no new ones are
//!   accepted until one closes).
//!
//! GitHub gives a webhook delivery 10 s ("Troubleshooting webhooks"), so an
//! honest client never comes near these limits.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use crcr_core::config::ServerLimits;

/// Connections being served now and the most at once so far (for tests and
/// on-call: both stay at most [`ServerLimits::max_connections`]).
#[derive(Clone, Debug, Default)]
pub struct ConnectionCount {
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl ConnectionCount {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// 408 when the request is not done within the limit.
async fn request_deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            let mut res =
                (StatusCode::REQUEST_TIMEOUT, format!("request not received within {} s", limit.as_secs_f64()))
                    .into_response();
            res.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            res
        }
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` resolves;
/// then stops accepting and returns once the open connections finished
/// (idle ones are closed at once; the caller bounds the wait). `count`
/// follows the connections.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    count: ConnectionCount,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(limits.request_timeout, request_deadline));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: as axum::serve does.
                    tracing::warn!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let active = count.active.fetch_add(1, Ordering::SeqCst) + 1;
        count.peak.fetch_max(active, Ordering::SeqCst);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let count = count.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            count.active.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
