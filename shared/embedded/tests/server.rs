//! `crcr serve`'s HTTP limits against slow and idle clients (issue 12):
//! silent connections, trickled heads and idle keep-alive connections are
//! closed after the header read timeout, a trickled body gets 408 after the
//! request timeout, and no more than `max_connections` are served at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use crcr_embedded::server::{serve, ConnectionCount, ServerLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Fails the test if `f` is not done within 10 s (the limits below are
/// 200-300 ms: this only bounds a broken server, it waits for nothing).
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f).await.unwrap_or_else(|_| panic!("{what}: still open after 10 s"))
}

async fn start(router: Router, limits: ServerLimits) -> (String, ConnectionCount, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = ConnectionCount::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, router, limits, count.clone(), async move {
        let _ = stopped.await;
    }));
    (addr, count, stop)
}

fn limits() -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_millis(200),
        request_timeout: Duration::from_millis(300),
        max_connections: 2,
    }
}

fn echo() -> Router {
    Router::new().route("/x", post(|b: Bytes| async move { format!("{} bytes", b.len()) }))
}

/// Reads until the server closes the connection; what it sent.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn silent_trickling_and_idle_connections_are_closed() {
    let (addr, count, _stop) = start(echo(), limits()).await;
    // Says nothing.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert_eq!(within("a silent connection", until_closed(&mut silent)).await, "");
    // Starts a head and stops.
    let mut trickle = TcpStream::connect(&addr).await.unwrap();
    trickle.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    assert!(!within("a trickled head", until_closed(&mut trickle)).await.contains("200 OK"));
    // A whole request, then idle on keep-alive.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc").await.unwrap();
    let answered = within("an idle keep-alive connection", until_closed(&mut idle)).await;
    assert!(answered.starts_with("HTTP/1.1 200 OK") && answered.ends_with("3 bytes"), "{answered}");
    within("the connections to be let go", async {
        while count.active() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_trickled_body_gets_408() {
    let (addr, _count, _stop) = start(echo(), limits()).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789").await.unwrap();
    let answer = within("a trickled body", until_closed(&mut s)).await;
    assert!(answer.starts_with("HTTP/1.1 408 Request Timeout"), "{answer}");
}

#[tokio::test]
async fn no_more_connections_than_the_cap_are_served_at_once() {
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (i, p, g) = (inside.clone(), peak.clone(), gate.clone());
    let router = Router::new().route(
        "/x",
        post(move || {
            let (i, p, g) = (i.clone(), p.clone(), g.clone());
            async move {
                p.fetch_max(i.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                g.acquire().await.unwrap().forget();
                i.fetch_sub(1, Ordering::SeqCst);
                "done"
            }
        }),
    );
    let generous = ServerLimits {
        header_read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..limits()
    };
    let (addr, count, _stop) = start(router, generous).await;
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await.unwrap();
                s.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                until_closed(&mut s).await
            })
        })
        .collect();
    // Let the handlers go one at a time, each once two are inside (or all
    // that are left).
    for left in (1..=6).rev() {
        within("two requests inside the handler", async {
            while inside.load(Ordering::SeqCst) < left.min(2) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        gate.add_permits(1);
    }
    for c in clients {
        assert!(within("a client", c).await.unwrap().ends_with("done"));
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2, "handlers inside at once");
    assert!(count.peak() <= 2, "connections served at once: {}", count.peak());
}
