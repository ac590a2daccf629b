//! The HTTP stack under the GitHub client: hyper-util's pooled client over
//! rustls (the system's roots, or those of `SSL_CERT_FILE` / `SSL_CERT_DIR`
//! instead when set: rustls-native-certs), offering HTTP/2 and HTTP/1.1 by
//! ALPN, spread over a few connections ([`ConnectionSpread`]).
//!
//! octocrab's default client speaks HTTP/1.1 only, so each request in flight
//! holds a connection of its own (some 33 KB of buffers and task in the
//! relay, plus TLS state, plus a handshake when the pool has none idle).
//! api.github.com negotiates `h2`: one connection carries up to the
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS` requests at once.
//!
//! Rules used: RFC 9113 §6.5.2 (`SETTINGS_MAX_CONCURRENT_STREAMS`: "It is
//! recommended that this value be no smaller than 100"); RFC 9113 §3.3
//! (HTTP/2 over cleartext only with prior knowledge: the `CRCR_GITHUB_H2C`
//! setting, for a loopback stand-in or proxy that speaks it).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use octocrab::OctoBody;

/// Requests one connection is given before the next connection is used:
/// RFC 9113 §6.5.2's recommended floor for `SETTINGS_MAX_CONCURRENT_STREAMS`
/// (a server advertising less makes h2 queue the rest on its connection).
pub const STREAMS_PER_CONNECTION: usize = 100;

/// How long an unused pooled connection is kept (s). hyper-util's default
/// is 90 s; a burst's connections are given back sooner. The pool closes
/// it between requests, never under one.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How often an HTTP/2 connection with requests in flight is pinged, and
/// how long the ping's answer may take before the connection is taken for
/// dead and its requests fail (RFC 9113 §6.7: PING "for measuring a
/// minimal round-trip time ... as well as determining whether an idle
/// connection is still functional").
pub const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The connection settings of [`ConnectionSpread::new`].
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// TCP connection establishment, at most (the TLS handshake and the
    /// exchange are bounded by the caller's deadline per request).
    pub connect_timeout: Duration,
    /// Requests in flight at once, at most (the client's in-flight gate):
    /// sizes the number of connections, one per [`STREAMS_PER_CONNECTION`].
    pub max_in_flight: usize,
    /// Speak HTTP/2 without TLS to an `http://` URL (prior knowledge, RFC
    /// 9113 §3.3). Over `https://` ALPN decides whatever this says.
    pub h2c: bool,
}

type HyperClient = Client<HttpsConnector<HttpConnector>, OctoBody>;

/// Building the TLS connector failed (no usable root certificates).
#[derive(Debug, thiserror::Error)]
#[error("TLS setup for GitHub failed: {0}")]
pub struct TransportError(String);

/// A tower service over `n = ceil(max_in_flight / 100)` hyper-util clients,
/// each with its own pool (hyper-util keeps one HTTP/2 connection per
/// host and queues streams past the server's limit on it rather than open
/// a second one). A request goes to the first client with fewer than
/// [`STREAMS_PER_CONNECTION`] requests in flight, else to the least busy:
/// at GitHub's default of 100 in flight that is one connection.
/// Over HTTP/1.1 (a server that does not negotiate `h2`) every client
/// pools connections as before, one per request in flight.
#[derive(Clone)]
pub struct ConnectionSpread {
    lanes: Arc<[Lane]>,
}

struct Lane {
    client: HyperClient,
    in_flight: AtomicUsize,
}

/// Gives a lane's slot back when its request ends (answered, failed or dropped).
struct LaneSlot {
    lanes: Arc<[Lane]>,
    lane: usize,
}

impl Drop for LaneSlot {
    fn drop(&mut self) {
        self.lanes[self.lane].in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnectionSpread {
    /// # Errors
    /// [`TransportError`] when the platform's root certificates cannot be loaded.
    pub fn new(cfg: &TransportConfig) -> Result<Self, TransportError> {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let mut tcp = HttpConnector::new();
        // hyper_rustls wraps it for https: it must accept that scheme too.
        tcp.enforce_http(false);
        // Many requests share a connection over HTTP/2: with Nagle's
        // algorithm on, a request written while another's bytes are not yet
        // acknowledged waits for the peer's delayed ACK (up to 40 ms on Linux).
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(cfg.connect_timeout));
        // The roots are read once; each lane's client has a pool of its own.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| TransportError(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp);
        let lanes = (0..cfg.max_in_flight.div_ceil(STREAMS_PER_CONNECTION).max(1)).map(|_| Lane {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_keep_alive_interval(HTTP2_KEEP_ALIVE)
                .http2_keep_alive_timeout(HTTP2_KEEP_ALIVE)
                .http2_only(cfg.h2c)
                .build(https.clone()),
            in_flight: AtomicUsize::new(0),
        });
        Ok(Self { lanes: lanes.collect() })
    }

    /// The lane the next request takes (see the type's doc).
    fn pick(&self) -> usize {
        let load = |i: usize| self.lanes[i].in_flight.load(Ordering::Relaxed);
        (0..self.lanes.len())
            .find(|&i| load(i) < STREAMS_PER_CONNECTION)
            .unwrap_or_else(|| (0..self.lanes.len()).min_by_key(|&i| load(i)).unwrap_or(0))
    }
}

impl tower::Service<Request<OctoBody>> for ConnectionSpread {
    type Response = Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper-util's client is always ready: it queues in its pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<OctoBody>) -> Self::Future {
        let lane = self.pick();
        self.lanes[lane].in_flight.fetch_add(1, Ordering::Relaxed);
        let slot = LaneSlot { lanes: self.lanes.clone(), lane };
        let answer = self.lanes[lane].client.request(request);
        Box::pin(async move {
            let _slot = slot;
            answer.await
        })
    }
}
