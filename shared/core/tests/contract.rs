//! Adapter contract suite: ONE set of cases, run against the SQLite adapters
//! (the embedded default) and against the AWS adapters (SQS + DynamoDB) on
//! moto's server.
//!
//! Run: `cargo test -p crcr-core --test contract`. The AWS half needs moto:
//!
//! ```text
//! python3 -m venv .venv && .venv/bin/pip install 'moto[server]==5.2.5'
//! .venv/bin/moto_server -H 127.0.0.1 -p 5000 &
//! ```
//!
//! (endpoint override: `CRCR_TEST_MOTO_URL`, default `http://127.0.0.1:5000`).
//! A test that cannot reach moto fails; it never skips. Every AWS test
//! creates its own uniquely named queues and tables, so tests run in parallel
//! without resetting moto.
//!
//! Each case is a generic async fn over [`Backend`]; the `contract_suite!`
//! macro instantiates one `#[tokio::test]` per case and backend.

use std::collections::BTreeSet;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crcr_core::domain::{DeliveryId, HeadSha, Level, RepoFullName};
use crcr_core::lifecycle::{
    CallbackCounts, CheckRunOutbox, HudOutbox, HudSync, JobKey, JobLifecycle, JobRecord, JobState, JobStats, JobStore,
    OutboxBacklog, OutboxItem, Violation,
};
use crcr_core::oidc::{IdentityBindings, ReplayGuard, ReplayVerdict};
use crcr_core::ports::RateLimiter;
use crcr_core::ports::{
    AttemptOutcome, BlobError, BlobStore, Claim, Clock, DispatchMeta, DispatchRecord, DispatchStatus, DispatchStore,
    EventQueue, ManualClock, QueueError, QueueInspect, QueueReceive, QueueSend, QueueSettle, QueueSide, StateStore,
};

// ================================================================ backends

/// An adapter plus whatever must live as long as it (a temp file to remove).
struct Fx<T> {
    inner: T,
    _guard: Option<TempDb>,
}

impl<T> Deref for Fx<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

/// Builds fresh, empty adapters of one backend: nothing is shared between
/// two calls.
trait Backend {
    type Queue: EventQueue + 'static;
    type Store: DispatchStore + 'static;
    type Blobs: BlobStore + 'static;
    type Jobs: JobStore + 'static;
    /// The small stores (bindings, replay guard, rate limiter, state) in one adapter.
    type Kv: IdentityBindings + ReplayGuard + RateLimiter + StateStore + Clone + 'static;
    /// A source queue whose messages move to its DLQ after `max_receive_count` receives.
    async fn queue(max_receive_count: u32) -> Fx<Self::Queue>;
    async fn store() -> Fx<Self::Store>;
    async fn blobs() -> Fx<Self::Blobs>;
    async fn jobs() -> Fx<Self::Jobs>;
    /// Two instances of the small stores on ONE table / database file (two
    /// Lambda instances, or `crcr serve` before and after a restart), both
    /// judging expiry by `clock`, `rate_per_min` callbacks per minute.
    async fn kv_pair(clock: Arc<ManualClock>, rate_per_min: u32) -> Fx<(Self::Kv, Self::Kv)>;
}

// ---------------------------------------------------------------- SQLite

/// A database file in the temp dir, removed (with its WAL files) on drop.
struct TempDb(std::path::PathBuf);

impl TempDb {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("crcr-contract-{}.db", uuid::Uuid::new_v4().simple())))
    }
    fn open(&self) -> crcr_embedded::sqlite::Db {
        crcr_embedded::sqlite::Db::open(&self.0).unwrap_or_else(|e| panic!("open SQLite {}: {e}", self.0.display()))
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

struct Sqlite;

impl Backend for Sqlite {
    type Queue = crcr_embedded::sqlite::SqliteQueue;
    type Store = crcr_embedded::sqlite::SqliteDispatchStore;
    type Blobs = crcr_embedded::sqlite::SqliteBlobStore;
    type Jobs = crcr_embedded::sqlite::SqliteJobStore;
    type Kv = crcr_embedded::sqlite::SqliteKv;

    async fn queue(max_receive_count: u32) -> Fx<Self::Queue> {
        let tmp = TempDb::new();
        let q = crcr_embedded::sqlite::SqliteQueue::new(tmp.open(), "contract", max_receive_count);
        Fx { inner: q, _guard: Some(tmp) }
    }
    async fn store() -> Fx<Self::Store> {
        let tmp = TempDb::new();
        Fx { inner: crcr_embedded::sqlite::SqliteDispatchStore::new(tmp.open()), _guard: Some(tmp) }
    }
    async fn blobs() -> Fx<Self::Blobs> {
        let tmp = TempDb::new();
        Fx { inner: crcr_embedded::sqlite::SqliteBlobStore::new(tmp.open()), _guard: Some(tmp) }
    }
    async fn jobs() -> Fx<Self::Jobs> {
        let tmp = TempDb::new();
        Fx { inner: crcr_embedded::sqlite::SqliteJobStore::new(tmp.open()), _guard: Some(tmp) }
    }
    async fn kv_pair(clock: Arc<ManualClock>, rate_per_min: u32) -> Fx<(Self::Kv, Self::Kv)> {
        let tmp = TempDb::new();
        let kv = |db| crcr_embedded::sqlite::SqliteKv::new(db, clock.clone()).with_rate_per_min(rate_per_min);
        Fx { inner: (kv(tmp.open()), kv(tmp.open())), _guard: Some(tmp) }
    }
}

// ---------------------------------------------------------------- AWS on moto

struct Moto;

use crcr_standin::moto;

/// moto's SDK configuration; fails the test (never skips) when moto does not answer.
async fn moto_config() -> aws_config::SdkConfig {
    moto::sdk().await
}

fn moto_url() -> String {
    moto::url()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Starts (on the test's runtime) an HTTP proxy to `upstream` that forwards
/// one request at a time, and returns its URL.
///
/// Why: DynamoDB applies every single-item write atomically, condition
/// included. moto's server (5.2.5) runs each request on its own thread and
/// evaluates a `ConditionExpression` and then applies the write without a
/// lock, so two concurrent conditional writes to one item can both succeed
/// (observed: two concurrent lease takeovers both returned `Acquired`, one
/// of them even `Acquired { attempt: 2 }` twice). Serializing requests
/// restores the per-request atomicity the adapter relies on, while claims
/// still interleave request by request as they do on DynamoDB.
async fn atomic_proxy(upstream: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().unwrap();
    let upstream_host =
        upstream.split("://").nth(1).unwrap_or(&upstream).split('/').next().unwrap_or_default().to_owned();
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (lock, host) = (lock.clone(), upstream_host.clone());
        async move {
            let _one_at_a_time = lock.lock().await;
            forward(&host, req).await
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.expect("proxy") });
    format!("http://{addr}")
}

/// Forwards one HTTP/1.1 request to `host` over a fresh connection
/// (`Connection: close`) and returns the response.
async fn forward(host: &str, req: axum::extract::Request) -> axum::response::Response {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("request body");
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut raw = format!(
        "{} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        parts.method,
        body.len()
    );
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "connection" | "content-length" | "transfer-encoding") {
            raw.push_str(&format!("{name}: {}\r\n", value.to_str().expect("ASCII header")));
        }
    }
    raw.push_str("\r\n");
    let mut conn = tokio::net::TcpStream::connect(host).await.expect("connect to moto");
    conn.write_all(raw.as_bytes()).await.unwrap();
    conn.write_all(&body).await.unwrap();
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).await.expect("moto response");
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("response head");
    let head = std::str::from_utf8(&resp[..split]).expect("UTF-8 response head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let mut out = axum::response::Response::builder().status(status);
    let mut content_length = None;
    for line in lines {
        let (name, value) = line.split_once(':').expect("header line");
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "content-length" => content_length = value.parse::<usize>().ok(),
            "transfer-encoding" => {
                panic!("moto answered with transfer-encoding {value}: the proxy expects content-length")
            }
            "connection" | "keep-alive" => {}
            _ => out = out.header(name, value),
        }
    }
    let mut payload = resp[split + 4..].to_vec();
    if let Some(n) = content_length {
        payload.truncate(n);
    }
    out.body(axum::body::Body::from(payload)).unwrap()
}

impl Backend for Moto {
    type Queue = crcr_aws::SqsQueue;
    type Store = crcr_aws::DynamoDispatchStore;
    type Blobs = crcr_aws::DynamoBlobStore;
    type Jobs = crcr_aws::DynamoJobStore;
    type Kv = crcr_aws::DynamoKv;

    async fn queue(max_receive_count: u32) -> Fx<Self::Queue> {
        use aws_sdk_sqs::error::DisplayErrorContext;
        use aws_sdk_sqs::types::QueueAttributeName;
        let client = aws_sdk_sqs::Client::new(&moto_config().await);
        let name = unique("crcr-contract");
        let dlq_url = client
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
            .send()
            .await
            .unwrap_or_else(|e| panic!("create DLQ: {}", DisplayErrorContext(e)))
            .queue_url
            .expect("DLQ url");
        let dlq_arn = client
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DLQ arn: {}", DisplayErrorContext(e)))
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .expect("DLQ arn");
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": max_receive_count.to_string(),
        });
        let queue_url = client
            .create_queue()
            .queue_name(&name)
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .attributes(QueueAttributeName::MaximumMessageSize, "262144")
            .attributes(QueueAttributeName::VisibilityTimeout, "30")
            .send()
            .await
            .unwrap_or_else(|e| panic!("create queue: {}", DisplayErrorContext(e)))
            .queue_url
            .expect("queue url");
        Fx { inner: crcr_aws::SqsQueue::new(client, queue_url, dlq_url), _guard: None }
    }

    async fn store() -> Fx<Self::Store> {
        // Through a proxy that forwards one request at a time: see `atomic_proxy`.
        let cfg = moto_config().await;
        let proxied = cfg.to_builder().endpoint_url(atomic_proxy(moto_url()).await).build();
        let client = aws_sdk_dynamodb::Client::new(&proxied);
        let table = unique("crcr-dispatches");
        // As infra/modules/crcr/tables.json (and so dynamodb.tf) defines it (both sparse GSIs).
        moto::dispatch_table(&proxied, &table).await;
        Fx { inner: crcr_aws::DynamoDispatchStore::new(client, table), _guard: None }
    }

    async fn blobs() -> Fx<Self::Blobs> {
        let cfg = moto_config().await;
        let client = aws_sdk_dynamodb::Client::new(&cfg);
        let table = unique("crcr-blobs");
        // As infra/modules/crcr/tables.json (and so dynamodb.tf) defines it.
        moto::relay_table(&cfg, "payloads", &table).await;
        Fx { inner: crcr_aws::DynamoBlobStore::new(client, table), _guard: None }
    }

    async fn jobs() -> Fx<Self::Jobs> {
        // Through the one-request-at-a-time proxy (see `atomic_proxy`): moto
        // 5.2.5's TransactWriteItems checks its conditions, then writes, with
        // no lock; and it rolls a cancelled transaction back by restoring a
        // copy of the whole table taken before it, which would also undo a
        // concurrent transaction's writes.
        let cfg = moto_config().await;
        let proxied = cfg.to_builder().endpoint_url(atomic_proxy(moto_url()).await).build();
        let client = aws_sdk_dynamodb::Client::new(&proxied);
        let table = unique("crcr-jobs");
        moto::relay_table(&proxied, "jobs", &table).await;
        Fx { inner: crcr_aws::DynamoJobStore::new(client, table), _guard: None }
    }

    async fn kv_pair(clock: Arc<ManualClock>, rate_per_min: u32) -> Fx<(Self::Kv, Self::Kv)> {
        // Through the one-request-at-a-time proxy (see `atomic_proxy`): the
        // replay guard's conditional put must be atomic, as on DynamoDB.
        let cfg = moto_config().await;
        let proxied = cfg.to_builder().endpoint_url(atomic_proxy(moto_url()).await).build();
        let client = aws_sdk_dynamodb::Client::new(&proxied);
        let table = unique("crcr-kv");
        // The kv table as infra/modules/crcr/tables.json (and so dynamodb.tf) defines it: hash key `pk` (S), TTL.
        moto::relay_table(&proxied, "kv", &table).await;
        let kv =
            || crcr_aws::DynamoKv::new(client.clone(), table.clone(), clock.clone()).with_rate_per_min(rate_per_min);
        Fx { inner: (kv(), kv()), _guard: None }
    }
}

// ================================================================ helpers

const LONG: Duration = Duration::from_secs(60);

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn body(tag: &str) -> String {
    format!("{{\"type\":\"contract\",\"tag\":\"{tag}\",\"id\":\"{}\"}}", uuid::Uuid::new_v4())
}

fn delivery() -> DeliveryId {
    DeliveryId::parse(&uuid::Uuid::new_v4().to_string()).unwrap()
}

fn repo(s: &str) -> RepoFullName {
    RepoFullName::parse(s).unwrap()
}

fn meta() -> DispatchMeta {
    DispatchMeta {
        event: "pull_request".into(),
        action: Some("synchronize".into()),
        head_sha: Some(HeadSha::parse("ec26c78d6d7e1b2a3c4d5e6f708192a3b4c5d6e7").unwrap()),
        pr_number: Some(12345),
        level: Level::L3,
        check_run: true,
        device: None,
        received_at_ms: Some(1_700_000_000_123),
        hook_id: None,
    }
}

fn bare_meta() -> DispatchMeta {
    DispatchMeta {
        event: "push".into(),
        action: None,
        head_sha: None,
        pr_number: None,
        level: Level::L1,
        check_run: false,
        device: None,
        received_at_ms: None,
        hook_id: None,
    }
}

async fn receive_all(
    q: &impl EventQueue,
    side: QueueSide,
    visibility: Duration,
) -> Vec<crcr_core::ports::ReceivedMessage> {
    q.receive(side, 10, visibility, Duration::ZERO).await.expect("receive")
}

async fn one_record(s: &impl DispatchStore, d: &DeliveryId) -> DispatchRecord {
    let mut r = s.records(d).await.expect("records");
    assert_eq!(r.len(), 1, "expected exactly one record for {d}: {r:?}");
    r.pop().unwrap()
}

// ================================================================ queue cases

mod cases {
    use super::*;

    /// send → receive (all fields) → delete → gone.
    pub async fn queue_send_receive_delete<B: Backend>() {
        let q = B::queue(5).await;
        let b = body("srd");
        let before = wall_ms();
        let id = q.send(&b).await.expect("send");
        let after = wall_ms();
        let got = q.receive(QueueSide::Source, 10, LONG, Duration::from_secs(1)).await.expect("receive");
        assert_eq!(got.len(), 1, "{got:?}");
        let m = &got[0];
        assert_eq!(m.message_id, id);
        assert_eq!(m.body, b);
        assert_eq!(m.receive_count, 1);
        assert_eq!(m.dead_letter_reason, None);
        assert!(
            (before - 2_000..=after + 2_000).contains(&m.sent_at_ms),
            "sent_at_ms {} not within [{before}, {after}] (±2 s)",
            m.sent_at_ms
        );
        assert!(!m.receipt.is_empty());
        // Hidden while in flight.
        assert!(receive_all(&*q, QueueSide::Source, LONG).await.is_empty());
        q.delete(QueueSide::Source, &m.receipt).await.expect("delete");
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 0);
        assert!(receive_all(&*q, QueueSide::Source, LONG).await.is_empty());
        assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 0);
    }

    /// A received, undeleted message reappears after its visibility timeout,
    /// with receive_count 2 and a new receipt.
    pub async fn queue_visibility_timeout_redelivers<B: Backend>() {
        let q = B::queue(5).await;
        let b = body("vis");
        let id = q.send(&b).await.unwrap();
        let first = q.receive(QueueSide::Source, 1, Duration::from_secs(1), Duration::from_secs(1)).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].receive_count, 1);
        assert!(receive_all(&*q, QueueSide::Source, LONG).await.is_empty(), "visible during its timeout");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let second = q.receive(QueueSide::Source, 1, LONG, Duration::from_secs(1)).await.unwrap();
        assert_eq!(second.len(), 1, "did not reappear after the visibility timeout");
        assert_eq!(second[0].message_id, id);
        assert_eq!(second[0].body, b);
        assert_eq!(second[0].receive_count, 2);
        assert_ne!(second[0].receipt, first[0].receipt);
        q.delete(QueueSide::Source, &second[0].receipt).await.unwrap();
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 0);
    }

    /// change_visibility(0) makes an in-flight message visible at once.
    pub async fn queue_change_visibility_zero<B: Backend>() {
        let q = B::queue(5).await;
        let id = q.send(&body("cv")).await.unwrap();
        let first = receive_all(&*q, QueueSide::Source, LONG).await;
        assert_eq!(first.len(), 1);
        assert!(receive_all(&*q, QueueSide::Source, LONG).await.is_empty());
        q.change_visibility(QueueSide::Source, &first[0].receipt, Duration::ZERO).await.expect("change visibility");
        let started = std::time::Instant::now();
        let again = q.receive(QueueSide::Source, 10, LONG, Duration::from_secs(2)).await.unwrap();
        assert_eq!(again.len(), 1, "not visible after change_visibility(0)");
        assert!(started.elapsed() < Duration::from_millis(1_500), "took {:?}", started.elapsed());
        assert_eq!(again[0].message_id, id);
        assert_eq!(again[0].receive_count, 2);
    }

    /// SQS redrive semantics, as moto 5.2.5 implements them: with
    /// maxReceiveCount = n the message is delivered n times (receive_count
    /// 1..=n); the (n+1)-th receive moves it to the DLQ instead of returning
    /// it. On the DLQ it keeps its message id, body and sent time, has no
    /// crcr reason, and its receive count carries on (first DLQ receive
    /// reports n + 1).
    pub async fn queue_moves_to_dlq_after_max_receives<B: Backend>() {
        const MAX: u32 = 2;
        let q = B::queue(MAX).await;
        let b = body("dlq");
        let id = q.send(&b).await.unwrap();
        let mut sent_at = None;
        for n in 1..=MAX {
            let got = receive_all(&*q, QueueSide::Source, LONG).await;
            assert_eq!(got.len(), 1, "receive {n} of {MAX} must still deliver");
            assert_eq!(got[0].receive_count, n);
            sent_at = Some(got[0].sent_at_ms);
            q.change_visibility(QueueSide::Source, &got[0].receipt, Duration::ZERO).await.unwrap();
        }
        assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 0, "moved before receive {}", MAX + 1);
        let got = receive_all(&*q, QueueSide::Source, LONG).await;
        assert!(got.is_empty(), "receive {} returned it instead of moving it: {got:?}", MAX + 1);
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 0);
        assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 1);
        let dl = receive_all(&*q, QueueSide::DeadLetter, LONG).await;
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].message_id, id);
        assert_eq!(dl[0].body, b);
        assert_eq!(Some(dl[0].sent_at_ms), sent_at, "sent time must be kept on the DLQ");
        assert_eq!(dl[0].dead_letter_reason, None);
        assert_eq!(dl[0].receive_count, MAX + 1, "receive count carries on into the DLQ (moto/SQS)");
    }

    /// postpone: the message is hidden for the delay, then back with its
    /// body and a receive count that did not grow, however often it is
    /// postponed: never redriven to the DLQ for waiting.
    pub async fn queue_postpone_does_not_count_the_receive<B: Backend>() {
        const MAX: u32 = 2;
        let q = B::queue(MAX).await;
        let b = body("pp");
        q.send(&b).await.unwrap();
        for round in 1..=MAX + 1 {
            let got = q.receive(QueueSide::Source, 1, LONG, Duration::from_secs(5)).await.unwrap();
            assert_eq!(got.len(), 1, "postponed message not back in round {round}");
            assert_eq!((got[0].receive_count, got[0].body.as_str()), (1, b.as_str()), "round {round}");
            q.postpone(&got[0], Duration::from_secs(1)).await.expect("postpone");
            assert!(receive_all(&*q, QueueSide::Source, LONG).await.is_empty(), "visible during its delay");
        }
        assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 0);
        let got = q.receive(QueueSide::Source, 1, LONG, Duration::from_secs(5)).await.unwrap();
        q.delete(QueueSide::Source, &got[0].receipt).await.unwrap();
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 0, "postponing left no copy behind");
    }

    /// dead_letter puts a copy with the reason on the DLQ and removes the original.
    pub async fn queue_dead_letter_with_reason<B: Backend>() {
        let q = B::queue(5).await;
        let b = body("dl");
        q.send(&b).await.unwrap();
        let got = receive_all(&*q, QueueSide::Source, LONG).await;
        assert_eq!(got.len(), 1);
        let reason = "permanent: GitHub rejected the request (422): No ref found for: nope";
        q.dead_letter(&got[0], reason).await.expect("dead_letter");
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 0, "original still on the source queue");
        assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 1);
        let dl = receive_all(&*q, QueueSide::DeadLetter, LONG).await;
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].body, b);
        assert_eq!(dl[0].dead_letter_reason.as_deref(), Some(reason));
        assert_eq!(dl[0].receive_count, 1);
    }

    /// redrive moves DLQ messages back (bodies preserved, no reason), up to
    /// the limit; the DLQ is empty after.
    pub async fn queue_redrive_moves_back<B: Backend>() {
        let q = B::queue(5).await;
        let bodies: BTreeSet<String> = (0..3).map(|i| body(&format!("rd{i}"))).collect();
        for b in &bodies {
            q.send(b).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 3 {
            let batch = q.receive(QueueSide::Source, 10, LONG, Duration::from_secs(1)).await.unwrap();
            assert!(!batch.is_empty(), "only {} of 3 received", got.len());
            got.extend(batch);
        }
        for m in &got {
            q.dead_letter(m, "boom").await.unwrap();
        }
        assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 3);
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 0);
        assert_eq!(crcr_core::ports::redrive(&*q, 2).await.expect("redrive"), 2, "limit not honoured");
        assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 1);
        assert_eq!(crcr_core::ports::redrive(&*q, 10).await.expect("redrive"), 1);
        assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 0);
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 3);
        assert!(receive_all(&*q, QueueSide::DeadLetter, LONG).await.is_empty());
        let mut back = Vec::new();
        while back.len() < 3 {
            let batch = q.receive(QueueSide::Source, 10, LONG, Duration::from_secs(1)).await.unwrap();
            assert!(!batch.is_empty(), "only {} of 3 came back", back.len());
            back.extend(batch);
        }
        let back_bodies: BTreeSet<String> = back.iter().map(|m| m.body.clone()).collect();
        assert_eq!(back_bodies, bodies);
        for m in &back {
            assert_eq!(m.dead_letter_reason, None, "a redriven message is a new message");
            assert_eq!(m.receive_count, 1);
        }
    }

    /// depth counts visible and in-flight messages.
    pub async fn queue_depth_counts<B: Backend>() {
        let q = B::queue(5).await;
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 0);
        for i in 0..3 {
            q.send(&body(&format!("d{i}"))).await.unwrap();
        }
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 3);
        let got = q.receive(QueueSide::Source, 1, LONG, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 3, "in-flight messages count");
        q.delete(QueueSide::Source, &got[0].receipt).await.unwrap();
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 2);
        assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 0);
    }

    /// A body of exactly max_message_bytes is accepted; one byte more is refused.
    pub async fn queue_rejects_oversized<B: Backend>() {
        let q = B::queue(5).await;
        let max = q.max_message_bytes();
        assert_eq!(max, 262_144, "SQS's classic 256 KiB limit");
        match q.send(&"x".repeat(max + 1)).await {
            Err(QueueError::TooLarge { size, limit }) => assert_eq!((size, limit), (max + 1, max)),
            other => panic!("a body of {} bytes must be refused with TooLarge, got {other:?}", max + 1),
        }
        assert_eq!(q.depth(QueueSide::Source).await.unwrap(), 0);
        q.send(&"y".repeat(max)).await.expect("a body of exactly the limit is accepted");
        let got = receive_all(&*q, QueueSide::Source, LONG).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].body.len(), max);
    }

    // ============================================================ dispatch store cases

    /// `dispatched_between` lists only dispatched records in `[from, to)`,
    /// oldest first, across a UTC day boundary, up to `limit`.
    pub async fn store_dispatched_between<B: Backend>() {
        let s = B::store().await;
        let midnight = 1_700_006_400_000; // 2023-11-15T00:00:00Z
        let d = delivery();
        let mut at = Vec::new();
        for (i, offset) in [-120_000i64, -1, 0, 60_000].into_iter().enumerate() {
            let t = repo(&format!("org/ok{i}"));
            let when = midnight + offset;
            assert_eq!(s.claim(&d, &t, &meta(), when - 10, LONG).await.unwrap(), Claim::Acquired { attempt: 1 });
            s.finish(&d, &t, 1, &AttemptOutcome::Dispatched { payload_trimmed: false }, when).await.unwrap();
            at.push((t, when));
        }
        let (failed, pending) = (repo("org/failed"), repo("org/pending"));
        s.claim(&d, &failed, &meta(), midnight - 50, LONG).await.unwrap();
        s.finish(&d, &failed, 1, &AttemptOutcome::Failed { reason: "404".into() }, midnight - 40).await.unwrap();
        s.claim(&d, &pending, &meta(), midnight - 30, LONG).await.unwrap();
        let list = |from: i64, to: i64, limit: usize| {
            let s = &s;
            async move {
                s.dispatched_between(from, to, limit)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.target, r.dispatched_at_ms.unwrap()))
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(list(midnight - 3_600_000, midnight + 3_600_000, 100).await, at);
        assert_eq!(list(midnight - 1, midnight + 60_000, 100).await, at[1..3].to_vec(), "[from, to)");
        assert_eq!(list(midnight - 3_600_000, midnight + 3_600_000, 2).await, at[..2].to_vec(), "limit");
        assert_eq!(list(midnight + 60_001, midnight + 3_600_000, 100).await, vec![]);
    }

    /// A random 40-hex commit id.
    fn sha() -> HeadSha {
        HeadSha::parse(&format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())[..40]).unwrap()
    }

    /// `records_for_commit` lists the records (any status) of one commit,
    /// oldest created first, ties by delivery id then lower-cased target;
    /// `limit` cuts the list (also inside a tie); other commits and records
    /// without a commit are not listed. `meta.device` round-trips.
    pub async fn dispatch_records_for_commit<B: Backend>() {
        let s = B::store().await;
        let (sha_a, sha_b) = (sha(), sha());
        let mut ds = [delivery(), delivery()];
        ds.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let [lo, hi] = ds;
        let other = delivery();
        let on = |sha: &HeadSha, device: Option<&str>| DispatchMeta {
            head_sha: Some(sha.clone()),
            device: device.map(str::to_owned),
            ..meta()
        };
        let t = 1_700_000_000_000;
        // (delivery, target, meta, created at), claimed out of the expected order.
        let plan = [
            (&hi, "org/b", on(&sha_a, None), t + 100),
            (&other, "org/x", on(&sha_b, Some("b200")), t + 75),
            (&lo, "org/z", on(&sha_a, Some("h100")), t + 100),
            (&other, "org/y", bare_meta(), t + 80),
            (&hi, "Org/A", on(&sha_a, None), t + 100),
            (&lo, "org/late", on(&sha_a, Some("mi300")), t + 200),
            (&hi, "org/c", on(&sha_a, None), t + 50),
        ];
        for (d, target, m, at) in &plan {
            assert_eq!(s.claim(d, &repo(target), m, *at, LONG).await.unwrap(), Claim::Acquired { attempt: 1 });
        }
        let finish = |d: &DeliveryId, target: &str, outcome: AttemptOutcome, at: i64| {
            let (s, d, target) = (&s, d.clone(), repo(target));
            async move { s.finish(&d, &target, 1, &outcome, at).await.unwrap() }
        };
        finish(&hi, "org/c", AttemptOutcome::Failed { reason: "404".into() }, t + 300).await;
        finish(&lo, "org/z", AttemptOutcome::Dispatched { payload_trimmed: false }, t + 301).await;
        finish(&hi, "org/b", AttemptOutcome::Retry { reason: "502".into() }, t + 302).await;
        finish(&lo, "org/late", AttemptOutcome::Dispatched { payload_trimmed: true }, t + 303).await;

        let mut stored = Vec::new();
        for d in [&lo, &hi, &other] {
            stored.extend(s.records(d).await.unwrap());
        }
        let find = |d: &DeliveryId, target: &str| {
            stored
                .iter()
                .find(|r| &r.delivery_id == d && r.target.key() == target)
                .unwrap_or_else(|| panic!("no record {d}/{target}"))
                .clone()
        };
        let (c, z, a, b, late) =
            (find(&hi, "org/c"), find(&lo, "org/z"), find(&hi, "org/a"), find(&hi, "org/b"), find(&lo, "org/late"));
        assert_eq!(
            [c.status, z.status, a.status, b.status, late.status],
            [
                DispatchStatus::Failed,
                DispatchStatus::Dispatched,
                DispatchStatus::Pending,
                DispatchStatus::Pending,
                DispatchStatus::Dispatched
            ]
        );
        assert_eq!(z.meta, on(&sha_a, Some("h100")), "meta with a device round-trips");
        assert_eq!(late.meta.device.as_deref(), Some("mi300"));
        assert_eq!(a.meta, on(&sha_a, None), "meta without a device round-trips");
        assert_eq!(find(&other, "org/y").meta, bare_meta());
        let all_a = vec![c.clone(), z.clone(), a.clone(), b.clone(), late.clone()];

        assert_eq!(s.records_for_commit(&sha_a, 100).await.unwrap(), all_a, "created order, ties by delivery, target");
        assert_eq!(s.records_for_commit(&sha_a, 5).await.unwrap(), all_a, "limit = count");
        assert_eq!(s.records_for_commit(&sha_a, 3).await.unwrap(), all_a[..3].to_vec(), "limit inside a tie");
        assert_eq!(s.records_for_commit(&sha_a, 2).await.unwrap(), all_a[..2].to_vec(), "limit inside a tie");
        assert_eq!(s.records_for_commit(&sha_a, 1).await.unwrap(), vec![c]);
        assert_eq!(s.records_for_commit(&sha_a, 0).await.unwrap(), vec![]);
        assert_eq!(s.records_for_commit(&sha_b, 100).await.unwrap(), vec![find(&other, "org/x")]);
        assert_eq!(find(&other, "org/x").meta.device.as_deref(), Some("b200"));
        assert_eq!(s.records_for_commit(&sha(), 100).await.unwrap(), vec![], "unknown commit");
    }

    /// New key → Acquired{1}; again while leased (up to and including the
    /// lease's last millisecond) → Leased{until}.
    pub async fn store_claim_new_then_leased<B: Backend>() {
        let s = B::store().await;
        let (d, t) = (delivery(), repo("org/a"));
        let now = 1_700_000_000_000;
        assert_eq!(s.claim(&d, &t, &meta(), now, LONG).await.unwrap(), Claim::Acquired { attempt: 1 });
        let until = now + 60_000;
        assert_eq!(s.claim(&d, &t, &meta(), now + 1, LONG).await.unwrap(), Claim::Leased { until_ms: until });
        assert_eq!(s.claim(&d, &t, &meta(), until, LONG).await.unwrap(), Claim::Leased { until_ms: until });
        // Another target of the same delivery is independent.
        assert_eq!(s.claim(&d, &repo("org/b"), &meta(), now, LONG).await.unwrap(), Claim::Acquired { attempt: 1 });
        assert_eq!(one_record_of(&*s, &d, "org/a").await.attempts, 1);
    }

    /// `claim_each` answers each target as its own `claim` would, in the
    /// order given, and writes each record with its own meta: a dispatched,
    /// a leased and a failed target next to two new ones (one under a hook
    /// id); once the lease expired, the leased one is taken over.
    pub async fn store_claim_each_answers_each_target<B: Backend>() {
        let s = B::store().await;
        let d = delivery();
        let now = 1_700_000_000_000;
        for (t, outcome) in [
            ("org/done", Some(AttemptOutcome::Dispatched { payload_trimmed: false })),
            ("org/held", None),
            ("org/refused", Some(AttemptOutcome::Failed { reason: "422".into() })),
        ] {
            assert_eq!(s.claim(&d, &repo(t), &meta(), now, LONG).await.unwrap(), Claim::Acquired { attempt: 1 });
            if let Some(outcome) = outcome {
                s.finish(&d, &repo(t), 1, &outcome, now + 1).await.unwrap();
            }
        }
        let device = |name: &str| DispatchMeta { device: Some(name.into()), ..meta() };
        let targets = [
            (repo("org/done"), meta()),
            (repo("org/held"), meta()),
            (repo("org/refused"), meta()),
            (repo("org/new"), device("cuda")),
            (repo("org/hooked"), DispatchMeta { hook_id: Some(7), ..device("rocm") }),
        ];
        let answers: Vec<Claim> =
            s.claim_each(&d, &targets, now + 5, LONG).await.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            answers,
            [
                Claim::AlreadyDispatched,
                Claim::Leased { until_ms: now + 60_000 },
                Claim::AlreadyFailed,
                Claim::Acquired { attempt: 1 },
                Claim::Acquired { attempt: 1 },
            ]
        );
        let new = one_record_of(&*s, &d, "org/new").await;
        assert_eq!(
            (new.status, new.meta.device.as_deref(), new.lease_until_ms),
            (DispatchStatus::Pending, Some("cuda"), now + 5 + 60_000)
        );
        let hooked = one_record_of(&*s, &d, "org/hooked").await;
        assert_eq!((hooked.meta.hook_id, hooked.meta.device.as_deref()), (Some(7), Some("rocm")));
        let again = s.claim_each(&d, &targets[1..2], now + 60_001, LONG).await;
        assert_eq!(again.into_iter().map(Result::unwrap).collect::<Vec<_>>(), [Claim::Acquired { attempt: 2 }]);
    }

    /// GitHub gives every webhook of one event the same `X-GitHub-Delivery`
    /// GUID and keeps hook and GUID on redelivery (REST "Webhook
    /// deliveries": `guid` "shared with all deliveries for all webhooks that
    /// subscribe to this event"): records are keyed by (GUID, hook, target)
    /// ([`crcr_core::ports::record_key`]). Two hooks' deliveries of one
    /// GUID each get their own record; a redelivery of either finds its
    /// own; a delivery without a hook id (older messages) is a third; all
    /// are found by the GUID, with their hook.
    pub async fn store_hooks_of_one_guid_are_separate_deliveries<B: Backend>() {
        let s = B::store().await;
        let (d, t) = (delivery(), repo("Org/A"));
        let now = 1_700_000_000_000;
        let hook = |h: Option<u64>| DispatchMeta { hook_id: h, ..meta() };
        let done = AttemptOutcome::Dispatched { payload_trimmed: false };
        for h in [Some(292_430_182), Some(7), None] {
            assert_eq!(s.claim(&d, &t, &hook(h), now, LONG).await.unwrap(), Claim::Acquired { attempt: 1 }, "{h:?}");
        }
        s.finish_for_hook(&d, Some(292_430_182), &t, 1, &done, now + 10).await.unwrap();
        s.finish_for_hook(&d, Some(7), &t, 1, &AttemptOutcome::Failed { reason: "422".into() }, now + 10)
            .await
            .unwrap();
        // The delivery without a hook id is still pending: finishing the
        // others did not touch it.
        assert_eq!(
            s.claim(&d, &t, &hook(None), now + 20, LONG).await.unwrap(),
            Claim::Leased { until_ms: now + 60_000 }
        );
        // Redeliveries (same hook, same GUID) find their own record.
        assert_eq!(s.claim(&d, &t, &hook(Some(292_430_182)), now + 20, LONG).await.unwrap(), Claim::AlreadyDispatched);
        assert_eq!(s.claim(&d, &t, &hook(Some(7)), now + 20, LONG).await.unwrap(), Claim::AlreadyFailed);
        s.finish(&d, &t, 1, &done, now + 30).await.unwrap();
        assert_eq!(s.claim(&d, &t, &hook(None), now + 40, LONG).await.unwrap(), Claim::AlreadyDispatched);
        // All three under the GUID, in record_key order, each with its hook.
        let all = s.records(&d).await.unwrap();
        let got: Vec<_> = all.iter().map(|r| (r.target.as_str(), r.meta.hook_id, r.status)).collect();
        assert_eq!(
            got,
            [
                ("Org/A", None, DispatchStatus::Dispatched),
                ("Org/A", Some(292_430_182), DispatchStatus::Dispatched),
                ("Org/A", Some(7), DispatchStatus::Failed),
            ]
        );
        assert_eq!(all[1].dispatched_at_ms, Some(now + 10));
        assert_eq!(s.records_for_commit(meta().head_sha.as_ref().unwrap(), 10).await.unwrap().len(), 3);
    }

    async fn one_record_of(s: &impl DispatchStore, d: &DeliveryId, target: &str) -> DispatchRecord {
        let all = s.records(d).await.unwrap();
        let mut it = all.into_iter().filter(|r| r.target == repo(target));
        let r = it.next().unwrap_or_else(|| panic!("no record for {target}"));
        assert!(it.next().is_none(), "two records for {target}");
        r
    }

    /// finish(Dispatched) → AlreadyDispatched, even long after the lease.
    pub async fn store_dispatched_is_final<B: Backend>() {
        let s = B::store().await;
        let (d, t) = (delivery(), repo("org/a"));
        let now = 1_700_000_000_000;
        assert_eq!(s.claim(&d, &t, &meta(), now, LONG).await.unwrap(), Claim::Acquired { attempt: 1 });
        s.finish(&d, &t, 1, &AttemptOutcome::Dispatched { payload_trimmed: false }, now + 10).await.unwrap();
        assert_eq!(s.claim(&d, &t, &meta(), now + 20, LONG).await.unwrap(), Claim::AlreadyDispatched);
        assert_eq!(s.claim(&d, &t, &meta(), now + 3_600_000, LONG).await.unwrap(), Claim::AlreadyDispatched);
        let r = one_record(&*s, &d).await;
        assert_eq!((r.status, r.attempts), (DispatchStatus::Dispatched, 1));
    }

    /// finish(Failed) → AlreadyFailed, even long after the lease.
    pub async fn store_failed_is_final<B: Backend>() {
        let s = B::store().await;
        let (d, t) = (delivery(), repo("org/a"));
        let now = 1_700_000_000_000;
        assert_eq!(s.claim(&d, &t, &meta(), now, LONG).await.unwrap(), Claim::Acquired { attempt: 1 });
        let reason = "GitHub rejected the request (404): Not Found";
        s.finish(&d, &t, 1, &AttemptOutcome::Failed { reason: reason.into() }, now + 10).await.unwrap();
        assert_eq!(s.claim(&d, &t, &meta(), now + 20, LONG).await.unwrap(), Claim::AlreadyFailed);
        assert_eq!(s.claim(&d, &t, &meta(), now + 3_600_000, LONG).await.unwrap(), Claim::AlreadyFailed);
        let r = one_record(&*s, &d).await;
        assert_eq!(r.status, DispatchStatus::Failed);
        assert_eq!(r.last_error.as_deref(), Some(reason));
        assert_eq!(r.updated_at_ms, now + 10);
        assert_eq!(r.dispatched_at_ms, None);
    }

    /// Retry keeps the record pending with the reason and releases the
    /// lease: a claim right after (same instant, long before the lease
    /// would have ended) → Acquired{2}.
    pub async fn store_retry_releases_lease<B: Backend>() {
        let s = B::store().await;
        let (d, t) = (delivery(), repo("org/a"));
        let now = 1_700_000_000_000;
        assert_eq!(s.claim(&d, &t, &meta(), now, LONG).await.unwrap(), Claim::Acquired { attempt: 1 });
        s.finish(&d, &t, 1, &AttemptOutcome::Retry { reason: "502 Bad Gateway".into() }, now + 5).await.unwrap();
        let r = one_record(&*s, &d).await;
        assert_eq!(r.status, DispatchStatus::Pending);
        assert_eq!(r.last_error.as_deref(), Some("502 Bad Gateway"));
        assert_eq!(r.updated_at_ms, now + 5);
        assert_eq!(s.claim(&d, &t, &meta(), now + 5, LONG).await.unwrap(), Claim::Acquired { attempt: 2 });
        assert_eq!(
            s.claim(&d, &t, &meta(), now + 6, LONG).await.unwrap(),
            Claim::Leased { until_ms: now + 5 + 60_000 }
        );
        let r = one_record(&*s, &d).await;
        assert_eq!((r.status, r.attempts, r.lease_until_ms), (DispatchStatus::Pending, 2, now + 5 + 60_000));
    }

    /// An attempt that never finishes: once its lease has ended the next
    /// claim takes over (Acquired{2}) under a new lease.
    pub async fn store_expired_lease_taken_over<B: Backend>() {
        let s = B::store().await;
        let (d, t) = (delivery(), repo("org/a"));
        let now = 1_700_000_000_000;
        let lease = Duration::from_secs(30);
        assert_eq!(s.claim(&d, &t, &meta(), now, lease).await.unwrap(), Claim::Acquired { attempt: 1 });
        assert_eq!(
            s.claim(&d, &t, &meta(), now + 10_000, lease).await.unwrap(),
            Claim::Leased { until_ms: now + 30_000 }
        );
        let later = now + 30_001;
        assert_eq!(s.claim(&d, &t, &meta(), later, lease).await.unwrap(), Claim::Acquired { attempt: 2 });
        assert_eq!(
            s.claim(&d, &t, &meta(), later + 1, lease).await.unwrap(),
            Claim::Leased { until_ms: later + 30_000 }
        );
        let r = one_record(&*s, &d).await;
        assert_eq!((r.status, r.attempts, r.lease_until_ms), (DispatchStatus::Pending, 2, later + 30_000));
        assert_eq!(r.created_at_ms, now);
        assert_eq!(r.updated_at_ms, later);
    }

    /// Concurrent claims on one key: exactly one wins, for a new record and
    /// for the takeover of an expired lease.
    pub async fn store_concurrent_claims_one_winner<B: Backend>() {
        const N: usize = 8;
        let s = Arc::new(B::store().await);
        let (d, t) = (delivery(), repo("org/race"));
        let now = 1_700_000_000_000;
        let race = |at: i64| {
            let tasks: Vec<_> = (0..N)
                .map(|_| {
                    let (s, d, t) = (s.clone(), d.clone(), t.clone());
                    tokio::spawn(async move { s.claim(&d, &t, &meta(), at, LONG).await.expect("claim") })
                })
                .collect();
            async move {
                let mut out = Vec::new();
                for task in tasks {
                    out.push(task.await.unwrap());
                }
                out
            }
        };
        for (at, attempt) in [(now, 1), (now + 60_001, 2)] {
            let results = race(at).await;
            let won = results.iter().filter(|c| matches!(c, Claim::Acquired { .. })).count();
            assert_eq!(won, 1, "claims at {at}: {results:?}");
            assert!(results.contains(&Claim::Acquired { attempt }), "{results:?}");
            for c in &results {
                let ok = match c {
                    Claim::Acquired { .. } => true,
                    Claim::Leased { until_ms } => *until_ms == at + 60_000,
                    _ => false,
                };
                assert!(ok, "a loser must see the winner's lease: {results:?}");
            }
            assert_eq!(one_record(&**s, &d).await.attempts, attempt);
        }
    }

    /// finish by an attempt whose record another attempt already finished
    /// changes nothing; finish without a record creates none.
    pub async fn store_stale_finish_is_noop<B: Backend>() {
        let s = B::store().await;
        let (d, t) = (delivery(), repo("org/a"));
        let now = 1_700_000_000_000;
        let lease = Duration::from_secs(30);
        assert_eq!(s.claim(&d, &t, &meta(), now, lease).await.unwrap(), Claim::Acquired { attempt: 1 });
        let later = now + 30_001;
        assert_eq!(s.claim(&d, &t, &meta(), later, lease).await.unwrap(), Claim::Acquired { attempt: 2 });
        // Attempt 1 (its lease expired) wakes up with a 5xx while attempt 2
        // runs: attempt 2 keeps the record and its lease.
        s.finish(&d, &t, 1, &AttemptOutcome::Retry { reason: "late 502".into() }, later + 50).await.expect("stale");
        s.finish(&d, &t, 1, &AttemptOutcome::Failed { reason: "late 422".into() }, later + 60).await.expect("stale");
        let running = one_record(&*s, &d).await;
        assert_eq!((running.status, running.attempts), (DispatchStatus::Pending, 2));
        assert_eq!(running.lease_until_ms, later + 30_000, "attempt 2's lease is not released");
        assert_eq!(running.last_error, None);
        assert_eq!(
            s.claim(&d, &t, &meta(), later + 70, lease).await.unwrap(),
            Claim::Leased { until_ms: later + 30_000 }
        );
        s.finish(&d, &t, 2, &AttemptOutcome::Dispatched { payload_trimmed: true }, later + 100).await.unwrap();
        let done = one_record(&*s, &d).await;
        // Once finished, nothing changes it.
        s.finish(&d, &t, 1, &AttemptOutcome::Failed { reason: "late".into() }, later + 200)
            .await
            .expect("stale finish");
        s.finish(&d, &t, 2, &AttemptOutcome::Retry { reason: "late".into() }, later + 300).await.expect("stale finish");
        s.finish(&d, &t, 1, &AttemptOutcome::Dispatched { payload_trimmed: false }, later + 400).await.unwrap();
        assert_eq!(one_record(&*s, &d).await, done);
        assert_eq!(done.status, DispatchStatus::Dispatched);
        assert_eq!(done.dispatched_at_ms, Some(later + 100));
        assert!(done.payload_trimmed);
        // A 204 an expired attempt got is recorded: GitHub took it.
        let (d2, t2) = (delivery(), repo("org/b"));
        s.claim(&d2, &t2, &meta(), now, lease).await.unwrap();
        s.claim(&d2, &t2, &meta(), later, lease).await.unwrap();
        s.finish(&d2, &t2, 1, &AttemptOutcome::Dispatched { payload_trimmed: false }, later + 10).await.unwrap();
        assert_eq!(one_record(&*s, &d2).await.status, DispatchStatus::Dispatched);
        // No record: finish is a no-op and creates none.
        let other = delivery();
        s.finish(&other, &t, 1, &AttemptOutcome::Retry { reason: "x".into() }, now)
            .await
            .expect("finish without record");
        assert!(s.records(&other).await.unwrap().is_empty());
    }

    /// records() returns every field as written, ordered by the lower-cased
    /// target; targets compare case-insensitively and keep the first spelling.
    pub async fn store_records_round_trip<B: Backend>() {
        let s = B::store().await;
        let d = delivery();
        let now = 1_700_000_000_000;
        let lease = Duration::from_secs(45);
        assert_eq!(s.claim(&d, &repo("Org/Repo"), &meta(), now, lease).await.unwrap(), Claim::Acquired { attempt: 1 });
        // Same repository, other spelling: the same record.
        assert_eq!(
            s.claim(&d, &repo("org/repo"), &bare_meta(), now + 1, lease).await.unwrap(),
            Claim::Leased { until_ms: now + 45_000 }
        );
        assert_eq!(
            s.claim(&d, &repo("zeta/Last"), &bare_meta(), now + 2, lease).await.unwrap(),
            Claim::Acquired { attempt: 1 }
        );
        assert_eq!(
            s.claim(&d, &repo("Alpha/first"), &meta(), now + 3, lease).await.unwrap(),
            Claim::Acquired { attempt: 1 }
        );
        let expected_org = DispatchRecord {
            delivery_id: d.clone(),
            target: repo("Org/Repo"),
            status: DispatchStatus::Pending,
            attempts: 1,
            last_error: None,
            lease_until_ms: now + 45_000,
            created_at_ms: now,
            updated_at_ms: now,
            dispatched_at_ms: None,
            payload_trimmed: false,
            meta: meta(),
        };
        let expected_zeta = DispatchRecord {
            target: repo("zeta/Last"),
            lease_until_ms: now + 2 + 45_000,
            created_at_ms: now + 2,
            updated_at_ms: now + 2,
            meta: bare_meta(),
            ..expected_org.clone()
        };
        let recs = s.records(&d).await.unwrap();
        let order: Vec<&str> = recs.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(order, ["Alpha/first", "Org/Repo", "zeta/Last"], "ordered by lower-cased target, spelling kept");
        assert_eq!(recs[1], expected_org);
        assert_eq!(recs[1].target.as_str(), "Org/Repo");
        assert_eq!(recs[2], expected_zeta);
        assert_eq!(recs[2].meta, bare_meta());

        s.finish(&d, &repo("ORG/REPO"), 1, &AttemptOutcome::Dispatched { payload_trimmed: true }, now + 500)
            .await
            .unwrap();
        s.finish(&d, &repo("zeta/last"), 1, &AttemptOutcome::Failed { reason: "422: Unprocessable".into() }, now + 600)
            .await
            .unwrap();
        let recs = s.records(&d).await.unwrap();
        let org = &recs[1];
        assert_eq!(org.target.as_str(), "Org/Repo");
        assert_eq!(
            (org.status, org.attempts, org.dispatched_at_ms, org.payload_trimmed, org.updated_at_ms, org.created_at_ms),
            (DispatchStatus::Dispatched, 1, Some(now + 500), true, now + 500, now)
        );
        assert_eq!(org.last_error, None);
        assert_eq!(org.meta, meta());
        let zeta = &recs[2];
        assert_eq!(
            (zeta.status, zeta.last_error.as_deref(), zeta.dispatched_at_ms, zeta.payload_trimmed, zeta.updated_at_ms),
            (DispatchStatus::Failed, Some("422: Unprocessable"), None, false, now + 600)
        );
        assert_eq!(recs[0].status, DispatchStatus::Pending);
        assert!(s.records(&delivery()).await.unwrap().is_empty(), "unknown delivery has no records");
    }

    // ============================================================ blob cases

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    /// 1 MB (several DynamoDB chunks) round trips byte for byte; a shorter
    /// overwrite and an empty blob too.
    pub async fn blob_round_trip<B: Backend>() {
        let s = B::blobs().await;
        let key = format!("payload/{}", uuid::Uuid::new_v4());
        let big = pseudo_random(1_000_003, 7);
        s.put(&key, &big).await.expect("put 1 MB");
        let got = s.get(&key).await.expect("get 1 MB");
        assert_eq!(got.len(), big.len());
        assert!(got == big, "1 MB blob came back different");
        let small = pseudo_random(1_234, 9);
        s.put(&key, &small).await.expect("overwrite");
        assert!(s.get(&key).await.unwrap() == small, "overwrite with a shorter blob");
        let empty_key = format!("payload/{}", uuid::Uuid::new_v4());
        s.put(&empty_key, b"").await.expect("put empty");
        assert_eq!(s.get(&empty_key).await.unwrap(), Vec::<u8>::new());
    }

    pub async fn blob_not_found<B: Backend>() {
        let s = B::blobs().await;
        let key = format!("payload/{}", uuid::Uuid::new_v4());
        match s.get(&key).await {
            Err(BlobError::NotFound(k)) => assert_eq!(k, key),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    // ============================================================ job store cases

    pub(super) const T0: i64 = 1_700_000_000_000;

    pub(super) fn job_key(d: &DeliveryId, repo_name: &str, run_attempt: u32, job_name: &str) -> JobKey {
        JobKey {
            delivery_id: d.clone(),
            repo: repo(repo_name),
            run_id: 9_876_543_210,
            run_attempt,
            job_name: job_name.into(),
        }
    }

    /// IN_PROGRESS at `at`, dispatched 30.5 s before.
    pub(super) fn started(key: &JobKey, at: i64) -> JobRecord {
        JobRecord {
            key: key.clone(),
            state: JobState::InProgress,
            level: Level::L2,
            dispatched_at_ms: Some(at - 30_500),
            in_progress_at_ms: Some(at),
            completed_at_ms: None,
            conclusion: None,
            queue_time_s: Some(30.5),
            execution_time_s: None,
            workflow_name: Some("pull".into()),
            url: Some(format!("https://github.com/{}/actions/runs/{}", key.repo, key.run_id)),
            updated_at_ms: at,
        }
    }

    /// `prev` COMPLETED at `at`.
    pub(super) fn finished(prev: &JobRecord, at: i64, conclusion: &str) -> JobRecord {
        JobRecord {
            state: JobState::Completed,
            completed_at_ms: Some(at),
            conclusion: Some(conclusion.into()),
            execution_time_s: Some((at - prev.in_progress_at_ms.unwrap()) as f64 / 1000.0),
            updated_at_ms: at,
            ..prev.clone()
        }
    }

    /// The outbox item of `rec`'s state change, created at `rec.updated_at_ms`.
    fn hud(rec: &JobRecord) -> OutboxItem {
        let at = rec.updated_at_ms;
        OutboxItem {
            id: OutboxItem::id_for(&rec.key, rec.state),
            delivery_id: rec.key.delivery_id.clone(),
            body: serde_json::json!({
                "delivery_id": rec.key.delivery_id,
                "repo": rec.key.repo,
                "run_id": rec.key.run_id,
                "run_attempt": rec.key.run_attempt,
                "job_name": rec.key.job_name,
                "status": rec.state.as_str(),
                "at_ms": at,
                "queue_time": rec.queue_time_s,
            }),
            sync: HudSync::Pending,
            attempts: 0,
            last_error: None,
            created_at_ms: at,
            updated_at_ms: at,
            next_attempt_at_ms: at,
        }
    }

    /// Applies `rec` from `expected`, asserting that the store accepted it.
    async fn apply(s: &impl JobStore, expected: Option<JobState>, rec: &JobRecord) -> OutboxItem {
        let ob = hud(rec);
        assert!(s.transition(expected, rec, &ob).await.expect("transition"), "{expected:?} -> {:?} refused", rec.state);
        ob
    }

    async fn one_outbox(s: &impl JobStore, id: &str) -> OutboxItem {
        let d = DeliveryId::parse(id.split('|').next().unwrap()).unwrap();
        let all = s.outbox(&d).await.expect("outbox");
        let mut it = all.into_iter().filter(|o| o.id == id);
        let o = it.next().unwrap_or_else(|| panic!("no outbox item {id}"));
        assert!(it.next().is_none(), "two outbox items {id}");
        o
    }

    /// A new job: transition(None → IN_PROGRESS) applies; the record and one
    /// pending outbox item are there.
    pub async fn jobs_new_job_in_progress<B: Backend>() {
        let s = B::jobs().await;
        let d = delivery();
        let key = job_key(&d, "pytorch/pytorch", 1, "build");
        assert_eq!(s.get(&key).await.unwrap(), None);
        let rec = started(&key, T0);
        let ob = apply(&*s, None, &rec).await;
        assert_eq!(s.get(&key).await.unwrap(), Some(rec.clone()));
        assert_eq!(s.jobs(&d).await.unwrap(), vec![rec]);
        assert_eq!(s.outbox(&d).await.unwrap(), vec![ob.clone()]);
        assert_eq!(s.pending_outbox(i64::MAX, 10).await.unwrap(), vec![ob]);
    }

    /// IN_PROGRESS again (expected None, the job exists) → false; the
    /// record and the outbox are unchanged.
    pub async fn jobs_repeated_in_progress_is_noop<B: Backend>() {
        let s = B::jobs().await;
        let d = delivery();
        let key = job_key(&d, "pytorch/pytorch", 1, "build");
        let rec = started(&key, T0);
        let ob = apply(&*s, None, &rec).await;
        let again = started(&key, T0 + 5_000);
        assert!(!s.transition(None, &again, &hud(&again)).await.unwrap(), "duplicate IN_PROGRESS applied");
        assert_eq!(s.get(&key).await.unwrap(), Some(rec));
        assert_eq!(s.outbox(&d).await.unwrap(), vec![ob]);
    }

    /// COMPLETED from IN_PROGRESS applies (two outbox items); a repeated
    /// COMPLETED, or any transition expecting an older state, does not.
    pub async fn jobs_completed_after_in_progress<B: Backend>() {
        let s = B::jobs().await;
        let d = delivery();
        let key = job_key(&d, "pytorch/pytorch", 1, "test (default, 1, 5)");
        let rec = started(&key, T0);
        let ob1 = apply(&*s, None, &rec).await;
        let done = finished(&rec, T0 + 600_000, "success");
        let ob2 = apply(&*s, Some(JobState::InProgress), &done).await;
        assert_eq!(s.get(&key).await.unwrap(), Some(done.clone()));
        assert_eq!(s.outbox(&d).await.unwrap(), vec![ob1.clone(), ob2.clone()]);
        // Repeated COMPLETED (another conclusion, later): refused.
        let late = finished(&rec, T0 + 700_000, "failure");
        assert!(!s.transition(Some(JobState::InProgress), &late, &hud(&late)).await.unwrap());
        // IN_PROGRESS after COMPLETED: refused, never backwards.
        let back = started(&key, T0 + 800_000);
        assert!(!s.transition(None, &back, &hud(&back)).await.unwrap());
        assert_eq!(s.get(&key).await.unwrap(), Some(done));
        assert_eq!(s.outbox(&d).await.unwrap(), vec![ob1, ob2]);
    }

    /// A transition expecting a state on a job that does not exist → false;
    /// nothing is written.
    pub async fn jobs_transition_on_absent_job_is_noop<B: Backend>() {
        let s = B::jobs().await;
        let d = delivery();
        let key = job_key(&d, "pytorch/pytorch", 1, "build");
        let done = finished(&started(&key, T0), T0 + 1_000, "success");
        assert!(!s.transition(Some(JobState::InProgress), &done, &hud(&done)).await.unwrap());
        assert!(!s.transition(Some(JobState::Completed), &done, &hud(&done)).await.unwrap());
        assert_eq!(s.get(&key).await.unwrap(), None);
        assert!(s.jobs(&d).await.unwrap().is_empty());
        assert!(s.outbox(&d).await.unwrap().is_empty());
        assert!(s.pending_outbox(i64::MAX, 10).await.unwrap().is_empty());
    }

    /// A re-run (run_attempt + 1) and another job of the same run are keys of
    /// their own; jobs() lists them by sort key.
    pub async fn jobs_rerun_attempt_is_separate_key<B: Backend>() {
        let s = B::jobs().await;
        let d = delivery();
        let first = job_key(&d, "pytorch/pytorch", 1, "build");
        let rec1 = started(&first, T0);
        apply(&*s, None, &rec1).await;
        let done1 = finished(&rec1, T0 + 60_000, "failure");
        apply(&*s, Some(JobState::InProgress), &done1).await;
        let rerun = JobKey { run_attempt: 2, ..first.clone() };
        let rec2 = started(&rerun, T0 + 120_000);
        apply(&*s, None, &rec2).await;
        let other = job_key(&d, "pytorch/pytorch", 1, "lint");
        let rec3 = started(&other, T0 + 1_000);
        apply(&*s, None, &rec3).await;
        assert_eq!(s.get(&first).await.unwrap(), Some(done1.clone()));
        assert_eq!(s.get(&rerun).await.unwrap(), Some(rec2.clone()));
        let mut expected = vec![done1, rec2, rec3];
        expected.sort_by_key(|r| r.key.sort_key());
        assert_eq!(s.jobs(&d).await.unwrap(), expected, "ordered by sort key");
        assert_eq!(s.outbox(&d).await.unwrap().len(), 4);
    }

    /// Concurrent identical transitions: exactly one applies, one outbox
    /// item each, for the new job and for its completion.
    pub async fn jobs_concurrent_transitions_one_winner<B: Backend>() {
        const N: usize = 8;
        let s = Arc::new(B::jobs().await);
        let d = delivery();
        let key = job_key(&d, "pytorch/pytorch", 1, "build");
        let rec = started(&key, T0);
        let done = finished(&rec, T0 + 90_000, "success");
        for (expected, target) in [(None, rec.clone()), (Some(JobState::InProgress), done.clone())] {
            let tasks: Vec<_> = (0..N)
                .map(|_| {
                    let (s, target) = (s.clone(), target.clone());
                    tokio::spawn(
                        async move { s.transition(expected, &target, &hud(&target)).await.expect("transition") },
                    )
                })
                .collect();
            let mut applied = 0;
            for task in tasks {
                applied += usize::from(task.await.unwrap());
            }
            assert_eq!(applied, 1, "{N} concurrent {expected:?} -> {:?}", target.state);
            assert_eq!(s.get(&key).await.unwrap(), Some(target));
        }
        assert_eq!(s.outbox(&d).await.unwrap(), vec![hud(&rec), hud(&done)]);
    }

    /// mark_outbox counts attempts; Sent and Rejected are final: later marks
    /// change nothing. A mark without an error keeps the previous one. An
    /// unknown id is a no-op that creates nothing.
    pub async fn jobs_outbox_sent_and_rejected_are_final<B: Backend>() {
        let s = B::jobs().await;
        let d = delivery();
        let rec = started(&job_key(&d, "pytorch/pytorch", 1, "build"), T0);
        let ob = apply(&*s, None, &rec).await;
        s.mark_outbox(&ob.id, HudSync::Pending, Some("HUD answered 503"), None, T0 + 10).await.unwrap();
        let after_retry = one_outbox(&*s, &ob.id).await;
        assert_eq!(
            after_retry,
            OutboxItem {
                attempts: 1,
                last_error: Some("HUD answered 503".into()),
                updated_at_ms: T0 + 10,
                next_attempt_at_ms: T0 + 10,
                ..ob.clone()
            }
        );
        assert_eq!(s.pending_outbox(i64::MAX, 10).await.unwrap(), vec![after_retry.clone()]);
        s.mark_outbox(&ob.id, HudSync::Sent, None, None, T0 + 20).await.unwrap();
        let sent = one_outbox(&*s, &ob.id).await;
        assert_eq!(sent, OutboxItem { sync: HudSync::Sent, attempts: 2, updated_at_ms: T0 + 20, ..after_retry });
        for (sync, error) in
            [(HudSync::Pending, Some("late 503")), (HudSync::Rejected, Some("422")), (HudSync::Sent, None)]
        {
            s.mark_outbox(&ob.id, sync, error, None, T0 + 30).await.unwrap();
            assert_eq!(one_outbox(&*s, &ob.id).await, sent, "a final item changed by {sync:?}");
        }
        assert!(s.pending_outbox(i64::MAX, 10).await.unwrap().is_empty(), "a sent item is not pending");

        let done = finished(&rec, T0 + 1_000, "success");
        let ob2 = apply(&*s, Some(JobState::InProgress), &done).await;
        s.mark_outbox(&ob2.id, HudSync::Rejected, Some("HUD answered 422: bad run_id"), None, T0 + 1_010)
            .await
            .unwrap();
        let rejected = one_outbox(&*s, &ob2.id).await;
        assert_eq!(
            rejected,
            OutboxItem {
                sync: HudSync::Rejected,
                attempts: 1,
                last_error: Some("HUD answered 422: bad run_id".into()),
                updated_at_ms: T0 + 1_010,
                ..ob2
            }
        );
        s.mark_outbox(&rejected.id, HudSync::Sent, None, None, T0 + 1_020).await.unwrap();
        s.mark_outbox(&rejected.id, HudSync::Pending, Some("x"), None, T0 + 1_030).await.unwrap();
        assert_eq!(one_outbox(&*s, &rejected.id).await, rejected);
        assert!(s.pending_outbox(i64::MAX, 10).await.unwrap().is_empty());

        let other = delivery();
        let unknown = OutboxItem::id_for(&job_key(&other, "org/repo", 1, "build"), JobState::InProgress);
        s.mark_outbox(&unknown, HudSync::Sent, None, None, T0).await.expect("mark an unknown id");
        s.mark_outbox("not-an-outbox-id", HudSync::Pending, Some("x"), None, T0).await.expect("mark a malformed id");
        assert!(s.outbox(&other).await.unwrap().is_empty());
        assert_eq!(s.outbox(&d).await.unwrap(), vec![sent, rejected]);
    }

    /// Check-run outbox (issue 4): the item is upserted with the job's
    /// transition (one atomic write; a refused transition writes nothing),
    /// keeps GitHub's id, attempts and creation time across versions; a sync
    /// result of an older version leaves a newer one pending; sent and
    /// rejected leave the pending list.
    pub async fn jobs_check_run_outbox<B: Backend>() {
        use crcr_core::checks::CheckRunTarget;
        use crcr_core::lifecycle::CheckRunItem;
        let s = B::jobs().await;
        let d = delivery();
        let target = CheckRunTarget {
            upstream: repo("pytorch/pytorch"),
            head_sha: HeadSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap(),
            pr_number: Some(42),
        };
        let rec = started(&job_key(&d, "org/l4", 1, "build"), T0);
        let first = target.item(&rec);
        assert!(s.transition_with_check_run(None, &rec, &hud(&rec), &first).await.unwrap());
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![first.clone()]);
        let mine = |items: Vec<CheckRunItem>| items.into_iter().filter(|c| c.delivery_id == d).collect::<Vec<_>>();
        assert_eq!(mine(s.pending_check_runs(100).await.unwrap()), vec![first.clone()]);

        s.mark_check_run(&first.id, 1, None, HudSync::Pending, Some("GitHub 502"), T0 + 5).await.unwrap();
        s.mark_check_run(&first.id, 1, Some(77), HudSync::Sent, None, T0 + 10).await.unwrap();
        let sent = CheckRunItem {
            check_run_id: Some(77),
            sync: HudSync::Sent,
            attempts: 2,
            last_error: Some("GitHub 502".into()),
            updated_at_ms: T0 + 10,
            ..first.clone()
        };
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![sent.clone()]);
        assert!(mine(s.pending_check_runs(100).await.unwrap()).is_empty());

        // A refused transition (wrong expected state) leaves the item alone.
        let done = finished(&rec, T0 + 1_000, "failure");
        let second = target.item(&done);
        assert!(!s.transition_with_check_run(None, &done, &hud(&done), &second).await.unwrap());
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![sent.clone()]);
        // The completed transition moves it to version 2, pending, same GitHub id.
        assert!(s.transition_with_check_run(Some(JobState::InProgress), &done, &hud(&done), &second).await.unwrap());
        let moved = CheckRunItem {
            request: second.request.clone(),
            version: 2,
            sync: HudSync::Pending,
            updated_at_ms: T0 + 1_000,
            ..sent.clone()
        };
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![moved.clone()]);
        assert_eq!(s.get(&done.key).await.unwrap(), Some(done.clone()), "the job moved in the same write");
        // The answer to version 1 arriving late leaves version 2 pending.
        s.mark_check_run(&first.id, 1, None, HudSync::Sent, None, T0 + 1_010).await.unwrap();
        let still = CheckRunItem { attempts: 3, updated_at_ms: T0 + 1_010, ..moved };
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![still.clone()]);
        assert_eq!(mine(s.pending_check_runs(100).await.unwrap()), vec![still.clone()]);
        s.mark_check_run(&first.id, 2, None, HudSync::Rejected, Some("422 No commit found"), T0 + 1_020).await.unwrap();
        let rejected = CheckRunItem {
            sync: HudSync::Rejected,
            attempts: 4,
            last_error: Some("422 No commit found".into()),
            updated_at_ms: T0 + 1_020,
            ..still
        };
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![rejected]);
        assert!(mine(s.pending_check_runs(100).await.unwrap()).is_empty());
        // Unknown or malformed ids change nothing and are not errors.
        s.mark_check_run("not-an-id", 1, Some(1), HudSync::Sent, None, T0).await.unwrap();
        let other = delivery();
        s.mark_check_run(&CheckRunItem::id_for(&job_key(&other, "o/r", 1, "b")), 1, None, HudSync::Sent, None, T0)
            .await
            .unwrap();
        assert!(s.check_runs(&other).await.unwrap().is_empty());
    }

    /// advance_check_run (issue 4): stores an absent item as given; moves an
    /// existing one only from an in-progress request to a completed one
    /// (version + 1, pending; GitHub's id, attempts, last error and creation
    /// time kept); anything else → false and nothing changes. An item
    /// written by transition_with_check_run advances the same way.
    pub async fn jobs_advance_check_run<B: Backend>() {
        use crcr_core::checks::{CheckRunTarget, CheckStatus};
        use crcr_core::lifecycle::CheckRunItem;
        let s = B::jobs().await;
        let d = delivery();
        let target = CheckRunTarget {
            upstream: repo("pytorch/pytorch"),
            head_sha: HeadSha::parse("89abcdef0123456789abcdef0123456789abcdef").unwrap(),
            pr_number: Some(7),
        };
        let rec = started(&job_key(&d, "org/l3", 1, "build"), T0);
        let first = target.item(&rec);
        assert_eq!(first.request.status, CheckStatus::InProgress);
        assert!(s.advance_check_run(&first).await.unwrap(), "absent: inserted");
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![first.clone()], "stored as given");
        let mine = |items: Vec<CheckRunItem>| items.into_iter().filter(|c| c.delivery_id == d).collect::<Vec<_>>();
        assert_eq!(mine(s.pending_check_runs(100).await.unwrap()), vec![first.clone()]);

        // in_progress again (another request, later): refused.
        let mut again = target.item(&started(&rec.key, T0 + 50));
        again.request.output.title = "another title".into();
        assert!(!s.advance_check_run(&again).await.unwrap(), "in_progress -> in_progress");
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![first.clone()]);

        s.mark_check_run(&first.id, 1, None, HudSync::Pending, Some("GitHub 502"), T0 + 5).await.unwrap();
        s.mark_check_run(&first.id, 1, Some(77), HudSync::Sent, None, T0 + 10).await.unwrap();
        let sent = CheckRunItem {
            check_run_id: Some(77),
            sync: HudSync::Sent,
            attempts: 2,
            last_error: Some("GitHub 502".into()),
            updated_at_ms: T0 + 10,
            ..first.clone()
        };
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![sent.clone()]);

        // in_progress -> completed: version 2, pending, the rest kept.
        let done = finished(&rec, T0 + 1_000, "cancelled");
        let completed = target.item(&done);
        assert_eq!(completed.request.status, CheckStatus::Completed);
        assert!(s.advance_check_run(&completed).await.unwrap(), "in_progress -> completed");
        let moved = CheckRunItem {
            request: completed.request.clone(),
            version: 2,
            sync: HudSync::Pending,
            updated_at_ms: T0 + 1_000,
            ..sent
        };
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![moved.clone()]);
        assert_eq!(mine(s.pending_check_runs(100).await.unwrap()), vec![moved.clone()]);

        // completed -> completed (another conclusion) and completed -> in_progress: refused.
        let other_end = target.item(&finished(&rec, T0 + 2_000, "success"));
        assert!(!s.advance_check_run(&other_end).await.unwrap(), "completed -> completed");
        assert!(!s.advance_check_run(&again).await.unwrap(), "completed -> in_progress");
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![moved.clone()]);

        // An item written with a transition (in progress) advances too; one
        // absent and already completed is stored as given.
        let rec2 = started(&job_key(&d, "org/l3", 1, "test"), T0 + 100);
        let by_transition = target.item(&rec2);
        assert!(s.transition_with_check_run(None, &rec2, &hud(&rec2), &by_transition).await.unwrap());
        let done2 = target.item(&finished(&rec2, T0 + 3_000, "success"));
        assert!(s.advance_check_run(&done2).await.unwrap(), "in_progress (from a transition) -> completed");
        let moved2 =
            CheckRunItem { request: done2.request.clone(), version: 2, updated_at_ms: T0 + 3_000, ..by_transition };
        let rec3 = finished(&started(&job_key(&d, "org/l3", 1, "lint"), T0 + 200), T0 + 4_000, "failure");
        let backfill = CheckRunItem { version: 3, attempts: 1, ..target.item(&rec3) };
        assert!(s.advance_check_run(&backfill).await.unwrap(), "absent, completed: inserted");
        assert!(!s.advance_check_run(&backfill).await.unwrap(), "the same again: completed -> completed");
        assert_eq!(s.check_runs(&d).await.unwrap(), vec![moved, moved2, backfill]);
    }

    /// pending_outbox: only pending items due at the instant, across
    /// deliveries, the earliest due first (a new item is due when created;
    /// a retried one when its backoff ends, so it moves back), ties by
    /// creation then id; `limit` respected; defer_outbox moves an item's
    /// turn without counting an attempt.
    pub async fn jobs_pending_outbox_due_first<B: Backend>() {
        let s = B::jobs().await;
        let (d1, d2, d3) = (delivery(), delivery(), delivery());
        // (delivery, job, created at), written out of creation order.
        let plan = [
            (&d1, "a", T0 + 300),
            (&d2, "b", T0 + 100),
            (&d1, "c", T0 + 500),
            (&d3, "d", T0 + 200),
            (&d2, "e", T0 + 400),
            (&d1, "f", T0 + 200),
        ];
        let mut obs = std::collections::HashMap::new();
        for (d, name, at) in plan {
            let rec = started(&job_key(d, "pytorch/pytorch", 1, name), at);
            // Last changed in the reverse order of creation: the order is by due time.
            let ob = OutboxItem { updated_at_ms: T0 + 10_000 - (at - T0), ..hud(&rec) };
            assert!(s.transition(None, &rec, &ob).await.unwrap());
            obs.insert(name, ob);
        }
        // The oldest failed and backs off until T0 + 20 s: it goes last.
        s.mark_outbox(&obs["b"].id, HudSync::Pending, Some("timeout"), Some(T0 + 20_000), T0 + 900).await.unwrap();
        s.mark_outbox(&obs["a"].id, HudSync::Sent, None, None, T0 + 901).await.unwrap();
        s.mark_outbox(&obs["c"].id, HudSync::Rejected, Some("400"), None, T0 + 902).await.unwrap();
        let retried = OutboxItem {
            attempts: 1,
            last_error: Some("timeout".into()),
            updated_at_ms: T0 + 900,
            next_attempt_at_ms: T0 + 20_000,
            ..obs["b"].clone()
        };
        let (mut tie1, mut tie2) = (obs["d"].clone(), obs["f"].clone());
        if tie2.id < tie1.id {
            std::mem::swap(&mut tie1, &mut tie2);
        }
        let all = vec![tie1.clone(), tie2.clone(), obs["e"].clone(), retried.clone()];
        assert_eq!(s.pending_outbox(i64::MAX, 10).await.unwrap(), all);
        for limit in [4, 3, 2, 1, 0] {
            assert_eq!(s.pending_outbox(i64::MAX, limit).await.unwrap(), all[..limit].to_vec(), "limit {limit}");
        }
        assert_eq!(s.pending_outbox(T0 + 400, 10).await.unwrap(), all[..3].to_vec(), "due by T0 + 400");
        assert_eq!(s.pending_outbox(T0 + 399, 10).await.unwrap(), all[..2].to_vec(), "due by T0 + 399");
        assert_eq!(s.pending_outbox(T0 + 19_999, 10).await.unwrap(), all[..3].to_vec(), "b not due yet");
        assert_eq!(s.pending_outbox(T0 + 20_000, 10).await.unwrap(), all, "b due at its next attempt");
        // Deferred: the next attempt moves, no attempt is counted.
        s.defer_outbox(&tie1.id, T0 + 30_000).await.unwrap();
        let deferred = OutboxItem { next_attempt_at_ms: T0 + 30_000, ..tie1 };
        assert_eq!(
            s.pending_outbox(i64::MAX, 10).await.unwrap(),
            vec![tie2, obs["e"].clone(), retried, deferred.clone()]
        );
        // A final item is not deferred.
        s.defer_outbox(&obs["a"].id, T0).await.unwrap();
        assert_eq!(one_outbox(&*s, &obs["a"].id).await.sync, HudSync::Sent);
    }

    /// Failed parks an item: not pending, final for the sweep, listed by
    /// outbox_in(Failed) with its last answer and counted by the backlog;
    /// requeue_outbox puts it (or a sent or rejected one) back, created and
    /// due now with attempts 0, and refuses a pending or unknown id.
    pub async fn jobs_outbox_failed_and_requeue<B: Backend>() {
        let s = B::jobs().await;
        let (d1, d2) = (delivery(), delivery());
        let a = apply(&*s, None, &started(&job_key(&d1, "org/a", 1, "a"), T0 + 100)).await;
        let b = apply(&*s, None, &started(&job_key(&d2, "org/b", 1, "b"), T0 + 200)).await;
        let c = apply(&*s, None, &started(&job_key(&d2, "org/b", 1, "c"), T0 + 300)).await;
        s.mark_outbox(&b.id, HudSync::Pending, Some("HUD answered 500"), Some(T0 + 5_000), T0 + 250).await.unwrap();
        s.mark_outbox(&b.id, HudSync::Failed, Some("HUD answered 500 again"), None, T0 + 6_000).await.unwrap();
        s.mark_outbox(&a.id, HudSync::Failed, Some("no answer"), None, T0 + 6_001).await.unwrap();
        s.mark_outbox(&c.id, HudSync::Rejected, Some("HUD answered 400"), None, T0 + 6_002).await.unwrap();
        let failed_b = OutboxItem {
            sync: HudSync::Failed,
            attempts: 2,
            last_error: Some("HUD answered 500 again".into()),
            updated_at_ms: T0 + 6_000,
            next_attempt_at_ms: T0 + 5_000,
            ..b.clone()
        };
        let failed_a = OutboxItem {
            sync: HudSync::Failed,
            attempts: 1,
            last_error: Some("no answer".into()),
            updated_at_ms: T0 + 6_001,
            ..a.clone()
        };
        assert_eq!(one_outbox(&*s, &b.id).await, failed_b);
        assert!(s.pending_outbox(i64::MAX, 10).await.unwrap().is_empty());
        assert_eq!(s.outbox_in(HudSync::Failed, 10).await.unwrap(), vec![failed_a.clone(), failed_b.clone()]);
        assert_eq!(s.outbox_in(HudSync::Failed, 1).await.unwrap(), vec![failed_a.clone()]);
        assert_eq!(s.outbox_in(HudSync::Rejected, 10).await.unwrap().len(), 1);
        assert_eq!(
            s.outbox_backlog().await.unwrap(),
            OutboxBacklog { pending: 0, oldest_created_at_ms: None, failed: 2 }
        );
        // Final for the sweep.
        s.mark_outbox(&b.id, HudSync::Sent, None, None, T0 + 7_000).await.unwrap();
        assert_eq!(one_outbox(&*s, &b.id).await, failed_b);
        // Back in the queue, due now, its last answer kept.
        assert!(s.requeue_outbox(&b.id, T0 + 8_000).await.unwrap());
        let requeued = OutboxItem {
            sync: HudSync::Pending,
            attempts: 0,
            created_at_ms: T0 + 8_000,
            updated_at_ms: T0 + 8_000,
            next_attempt_at_ms: T0 + 8_000,
            ..failed_b
        };
        assert_eq!(s.pending_outbox(i64::MAX, 10).await.unwrap(), vec![requeued.clone()]);
        assert!(!s.requeue_outbox(&b.id, T0 + 8_001).await.unwrap(), "already pending");
        assert_eq!(one_outbox(&*s, &b.id).await, requeued);
        assert!(s.requeue_outbox(&c.id, T0 + 8_002).await.unwrap(), "a rejected item too");
        let unknown = OutboxItem::id_for(&job_key(&delivery(), "org/x", 1, "x"), JobState::InProgress);
        assert!(!s.requeue_outbox(&unknown, T0).await.unwrap());
        assert!(!s.requeue_outbox("no-separator", T0).await.unwrap());
        assert_eq!(s.outbox_in(HudSync::Failed, 10).await.unwrap(), vec![failed_a]);
        assert_eq!(
            s.outbox_backlog().await.unwrap(),
            OutboxBacklog { pending: 2, oldest_created_at_ms: Some(T0 + 8_000), failed: 1 }
        );
    }

    /// in_progress_before: IN_PROGRESS jobs last changed strictly before the
    /// instant, oldest first, up to `limit`; completed and recent jobs are not.
    pub async fn jobs_in_progress_before_only_old_in_progress<B: Backend>() {
        let s = B::jobs().await;
        let (d1, d2) = (delivery(), delivery());
        let old = started(&job_key(&d1, "pytorch/pytorch", 1, "old"), T0);
        let older = started(&job_key(&d2, "org/repo", 3, "older"), T0 - 50_000);
        let middle = started(&job_key(&d1, "pytorch/pytorch", 1, "middle"), T0 + 1_000);
        let recent = started(&job_key(&d1, "pytorch/pytorch", 1, "recent"), T0 + 5_000);
        let was_old = started(&job_key(&d2, "org/repo", 3, "done"), T0 - 60_000);
        for rec in [&old, &older, &middle, &recent, &was_old] {
            apply(&*s, None, rec).await;
        }
        apply(&*s, Some(JobState::InProgress), &finished(&was_old, T0 - 40_000, "success")).await;
        assert_eq!(s.in_progress_before(T0 + 3_000, 10).await.unwrap(), vec![older.clone(), old.clone(), middle]);
        assert_eq!(s.in_progress_before(T0 + 1_000, 10).await.unwrap(), vec![older.clone(), old.clone()]);
        assert_eq!(s.in_progress_before(T0 + 60_000, 2).await.unwrap(), vec![older.clone(), old]);
        assert_eq!(s.in_progress_before(T0 - 50_000, 10).await.unwrap(), vec![]);
        assert_eq!(s.in_progress_before(T0 + 60_000, 0).await.unwrap(), vec![]);
        assert_eq!(s.in_progress_before(T0 + 60_000, 10).await.unwrap().len(), 4);
    }

    /// Violations come back per delivery with every field, oldest first.
    pub async fn jobs_violations_round_trip<B: Backend>() {
        let s = B::jobs().await;
        let (d, other) = (delivery(), delivery());
        let v1 = Violation {
            delivery_id: d.clone(),
            repo: repo("PyTorch/PyTorch"),
            reason: "COMPLETED for run 42 attempt 1 job \"build\" without IN_PROGRESS".into(),
            at_ms: T0 + 10,
        };
        let v2 = Violation {
            repo: repo("pytorch/vision"),
            reason: "IN_PROGRESS after COMPLETED — ignored ✓".into(),
            at_ms: T0 + 20,
            ..v1.clone()
        };
        let v3 = Violation { delivery_id: other.clone(), at_ms: T0 + 15, ..v1.clone() };
        for v in [&v1, &v2, &v3] {
            s.record_violation(v).await.expect("record violation");
        }
        let got = s.violations(&d).await.unwrap();
        assert_eq!(got, vec![v1, v2]);
        assert_eq!(got[0].repo.as_str(), "PyTorch/PyTorch", "spelling kept");
        assert_eq!(s.violations(&other).await.unwrap(), vec![v3]);
        assert!(s.violations(&delivery()).await.unwrap().is_empty());
        assert!(s.jobs(&d).await.unwrap().is_empty(), "violations are not jobs");
        assert!(s.outbox(&d).await.unwrap().is_empty(), "violations are not outbox items");
    }

    /// outbox_backlog: the pending items across deliveries and the creation
    /// time of the oldest of them; sent and rejected items leave the
    /// backlog, a retried item stays with its creation time.
    pub async fn jobs_outbox_backlog_counts_pending<B: Backend>() {
        let s = B::jobs().await;
        assert_eq!(s.outbox_backlog().await.unwrap(), OutboxBacklog::default(), "empty store");
        let (d1, d2) = (delivery(), delivery());
        let a = started(&job_key(&d1, "org/a", 1, "a"), T0 + 100);
        let a_started = apply(&*s, None, &a).await;
        let b = apply(&*s, None, &started(&job_key(&d2, "org/b", 1, "b"), T0 + 200)).await;
        let c = apply(&*s, None, &started(&job_key(&d2, "org/b", 1, "c"), T0 + 300)).await;
        apply(&*s, Some(JobState::InProgress), &finished(&a, T0 + 400, "success")).await;
        let backlog = |pending, oldest| OutboxBacklog { pending, oldest_created_at_ms: Some(oldest), failed: 0 };
        assert_eq!(s.outbox_backlog().await.unwrap(), backlog(4, T0 + 100));
        s.mark_outbox(&a_started.id, HudSync::Sent, None, None, T0 + 500).await.unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), backlog(3, T0 + 200));
        s.mark_outbox(&b.id, HudSync::Rejected, Some("422"), None, T0 + 501).await.unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), backlog(2, T0 + 300));
        s.mark_outbox(&c.id, HudSync::Pending, Some("503"), None, T0 + 502).await.unwrap();
        assert_eq!(s.outbox_backlog().await.unwrap(), backlog(2, T0 + 300), "a retried item keeps its place");
        s.mark_outbox(&c.id, HudSync::Failed, Some("503"), None, T0 + 503).await.unwrap();
        assert_eq!(
            s.outbox_backlog().await.unwrap(),
            OutboxBacklog { pending: 1, oldest_created_at_ms: Some(T0 + 400), failed: 1 },
            "a parked item leaves the backlog and is counted as failed"
        );
    }

    /// callback_counts: jobs whose IN_PROGRESS / COMPLETED time is at or
    /// after the instant (timed-out completions apart) and violations
    /// recorded at or after it.
    pub async fn jobs_callback_counts_window<B: Backend>() {
        let s = B::jobs().await;
        let (d1, d2) = (delivery(), delivery());
        let both = |rec: JobRecord, done_at: i64, conclusion: &'static str| {
            let s = &s;
            async move {
                apply(&**s, None, &rec).await;
                apply(&**s, Some(JobState::InProgress), &finished(&rec, done_at, conclusion)).await;
            }
        };
        both(started(&job_key(&d1, "org/a", 1, "old"), T0 - 5_000), T0 - 1_000, "success").await;
        both(started(&job_key(&d1, "org/a", 1, "straddles"), T0 - 2_000), T0 + 1_000, "failure").await;
        apply(&*s, None, &started(&job_key(&d2, "org/b", 1, "running"), T0 + 500)).await;
        both(started(&job_key(&d2, "org/b", 2, "done"), T0 + 600), T0 + 700, "success").await;
        both(started(&job_key(&d2, "org/b", 1, "zombie"), T0 - 10_000), T0 + 800, "timed_out").await;
        for (d, at) in [(&d1, T0 - 1), (&d1, T0 + 5), (&d2, T0 + 9)] {
            let v = Violation {
                delivery_id: d.clone(),
                repo: repo("org/a"),
                reason: "repeated completed".into(),
                at_ms: at,
            };
            s.record_violation(&v).await.unwrap();
        }
        let counts = |in_progress, completed, timed_out, violations| CallbackCounts {
            in_progress,
            completed,
            timed_out,
            violations,
        };
        assert_eq!(s.callback_counts(T0).await.unwrap(), counts(2, 2, 1, 2));
        assert_eq!(s.callback_counts(T0 - 10_000).await.unwrap(), counts(5, 3, 1, 3));
        assert_eq!(s.callback_counts(T0 + 700).await.unwrap(), counts(0, 2, 1, 0));
        assert_eq!(s.callback_counts(T0 + 10_000).await.unwrap(), CallbackCounts::default());
    }

    /// Every JobRecord and OutboxItem field round trips: f64 figures, large
    /// run ids, the repository's spelling, Option fields None and Some, a
    /// nested JSON body.
    pub async fn jobs_records_round_trip<B: Backend>() {
        let s = B::jobs().await;
        let d = delivery();
        let key = JobKey {
            delivery_id: d.clone(),
            repo: repo("PyTorch/PyTorch"),
            run_id: 12_345_678_901_234,
            run_attempt: 3,
            job_name: "linux-jammy-py3.10-gcc11 / test (default, 1, 5, lf.linux.4xlarge) #2".into(),
        };
        let full_started = JobRecord {
            key: key.clone(),
            state: JobState::InProgress,
            level: Level::L4,
            dispatched_at_ms: Some(T0 - 1),
            in_progress_at_ms: Some(T0 + 333),
            completed_at_ms: None,
            conclusion: None,
            queue_time_s: Some(0.334),
            execution_time_s: None,
            workflow_name: Some("trunk / linux-jammy".into()),
            url: Some("https://github.com/PyTorch/PyTorch/actions/runs/12345678901234/job/1?pr=1&x=%20".into()),
            updated_at_ms: T0 + 333,
        };
        let full = JobRecord {
            state: JobState::Completed,
            completed_at_ms: Some(T0 + 3_600_123),
            conclusion: Some("cancelled".into()),
            queue_time_s: Some(1.0 / 3.0),
            execution_time_s: Some(12_345.678_901_234_5),
            updated_at_ms: T0 + 3_600_123,
            ..full_started.clone()
        };
        let bare_key = JobKey { repo: repo("org/nightly"), run_attempt: 1, job_name: "nightly".into(), ..key.clone() };
        let bare = JobRecord {
            key: bare_key.clone(),
            state: JobState::InProgress,
            level: Level::L1,
            dispatched_at_ms: None,
            in_progress_at_ms: None,
            completed_at_ms: None,
            conclusion: None,
            queue_time_s: None,
            execution_time_s: None,
            workflow_name: None,
            url: None,
            updated_at_ms: 0,
        };
        let ob1 = apply(&*s, None, &full_started).await;
        let ob2 = OutboxItem {
            id: OutboxItem::id_for(&key, JobState::Completed),
            delivery_id: d.clone(),
            body: serde_json::json!({
                "event": "completed",
                "figures": {"queue_time": 0.25, "execution_time": 12345.5, "none": null},
                "labels": ["ciflow/trunk", "ünïcödé ✓"],
                "ok": true,
                "n": -7,
            }),
            sync: HudSync::Pending,
            attempts: 2,
            last_error: Some("carried over".into()),
            created_at_ms: T0 + 3_600_123,
            updated_at_ms: T0 + 3_600_200,
            next_attempt_at_ms: T0 + 3_700_000,
        };
        assert!(s.transition(Some(JobState::InProgress), &full, &ob2).await.unwrap());
        let ob3 = apply(&*s, None, &bare).await;
        assert_eq!(s.get(&key).await.unwrap(), Some(full.clone()));
        assert_eq!(s.get(&bare_key).await.unwrap(), Some(bare.clone()));
        let got = s.get(&key).await.unwrap().unwrap();
        assert_eq!(got.key.repo.as_str(), "PyTorch/PyTorch", "spelling kept");
        assert_eq!(got.execution_time_s.map(f64::to_bits), Some(12_345.678_901_234_5f64.to_bits()));
        assert_eq!(got.queue_time_s.map(f64::to_bits), Some((1.0f64 / 3.0).to_bits()));
        let mut expected = vec![full, bare];
        expected.sort_by_key(|r| r.key.sort_key());
        assert_eq!(s.jobs(&d).await.unwrap(), expected);
        let mut outbox = vec![ob1, ob2, ob3];
        outbox.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        assert_eq!(s.outbox(&d).await.unwrap(), outbox);
        let absent = JobKey { run_attempt: 4, ..key };
        assert_eq!(s.get(&absent).await.unwrap(), None);
    }

    // ------------------------------------------------------------ small stores (kv)

    /// A wall-clock start in the middle of a rate-limit minute (10 s in).
    fn kv_clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(wall_ms() / 60_000 * 60_000 + 10_000))
    }

    /// A binding is written once (repository names compare case-insensitively)
    /// and both instances see it.
    pub async fn kv_binding_written_once<B: Backend>() {
        let kv = B::kv_pair(kv_clock(), 100).await;
        let (a, b) = (&kv.0, &kv.1);
        let r = repo(&format!("Org/Repo-{}", uuid::Uuid::new_v4().simple()));
        let lower = repo(&r.as_str().to_ascii_lowercase());
        assert_eq!(IdentityBindings::get(a, &r).await.unwrap(), None);
        assert_eq!(a.put_if_absent(&r, "111").await.unwrap(), "111");
        assert_eq!(b.put_if_absent(&lower, "222").await.unwrap(), "111", "the first binding stays");
        assert_eq!(IdentityBindings::get(b, &lower).await.unwrap().as_deref(), Some("111"));
        assert_eq!(IdentityBindings::get(a, &repo("org/other")).await.unwrap(), None);
    }

    /// First use → First; same body → SameBody; other body → DifferentBody
    /// (on either instance); once the record's expiry has passed it counts
    /// as absent (whether or not TTL deleted it) → First again.
    pub async fn kv_replay_guard<B: Backend>() {
        let clock = kv_clock();
        let kv = B::kv_pair(clock.clone(), 100).await;
        let (a, b) = (&kv.0, &kv.1);
        let jti = format!("https://issuer.example|{}", uuid::Uuid::new_v4());
        let (x, y) = ([1u8; 32], [2u8; 32]);
        let exp = clock.now_ms() / 1000 + 100;
        assert_eq!(a.check_and_record(&jti, &x, exp).await.unwrap(), ReplayVerdict::First);
        assert_eq!(a.check_and_record(&jti, &x, exp).await.unwrap(), ReplayVerdict::SameBody);
        assert_eq!(b.check_and_record(&jti, &x, exp).await.unwrap(), ReplayVerdict::SameBody);
        assert_eq!(b.check_and_record(&jti, &y, exp).await.unwrap(), ReplayVerdict::DifferentBody);
        assert_eq!(a.check_and_record("another|jti", &y, exp).await.unwrap(), ReplayVerdict::First);
        clock.advance(Duration::from_secs(99));
        assert_eq!(a.check_and_record(&jti, &y, exp).await.unwrap(), ReplayVerdict::DifferentBody, "still live");
        clock.advance(Duration::from_secs(2));
        assert_eq!(a.check_and_record(&jti, &y, exp + 200).await.unwrap(), ReplayVerdict::First, "expired");
        assert_eq!(b.check_and_record(&jti, &y, exp + 200).await.unwrap(), ReplayVerdict::SameBody);
        assert_eq!(b.check_and_record(&jti, &x, exp + 200).await.unwrap(), ReplayVerdict::DifferentBody);
    }

    /// Concurrent first uses of one jti (both instances): exactly one First.
    pub async fn kv_replay_concurrent_first_use<B: Backend>() {
        let kv = B::kv_pair(kv_clock(), 100).await;
        let jti = format!("iss|{}", uuid::Uuid::new_v4());
        let exp = wall_ms() / 1000 + 300;
        let calls = (0..8).map(|i| {
            let store: &B::Kv = if i % 2 == 0 { &kv.0 } else { &kv.1 };
            store.check_and_record(&jti, &[7u8; 32], exp)
        });
        let verdicts: Vec<ReplayVerdict> =
            futures::future::join_all(calls).await.into_iter().map(|v| v.expect("check_and_record")).collect();
        let firsts = verdicts.iter().filter(|v| **v == ReplayVerdict::First).count();
        assert_eq!(firsts, 1, "{verdicts:?}");
        assert!(verdicts.iter().all(|v| *v != ReplayVerdict::DifferentBody), "{verdicts:?}");
    }

    /// The limit counts hits of both instances in one window; over it the
    /// answer is the time to the window's end; the next window starts at 0.
    pub async fn kv_rate_limit_shared_and_windowed<B: Backend>() {
        let clock = kv_clock();
        let kv = B::kv_pair(clock.clone(), 3).await;
        let (a, b) = (&kv.0, &kv.1);
        let r = format!("org/rate-{}", uuid::Uuid::new_v4().simple());
        let now = clock.now_ms();
        assert_eq!(a.hit(&r, now).await.unwrap(), None);
        assert_eq!(b.hit(&r, now + 1_000).await.unwrap(), None);
        assert_eq!(a.hit(&r, now + 2_000).await.unwrap(), None);
        assert_eq!(b.hit(&r, now + 5_000).await.unwrap(), Some(Duration::from_secs(45)), "10 s + 5 s into the minute");
        assert_eq!(a.hit(&r, now + 5_000).await.unwrap(), Some(Duration::from_secs(45)));
        assert_eq!(a.hit("org/someone-else", now + 5_000).await.unwrap(), None, "per repository");
        assert_eq!(b.hit(&r, now + 50_000).await.unwrap(), None, "next window");
        assert_eq!(a.hit(&r, now + 50_001).await.unwrap(), None);
    }

    /// State values: absent, put, get (other instance too), overwrite.
    pub async fn kv_state_put_get_overwrite<B: Backend>() {
        let kv = B::kv_pair(kv_clock(), 100).await;
        let (a, b) = (&kv.0, &kv.1);
        let key = format!("redeliver-cursor-{}", uuid::Uuid::new_v4().simple());
        assert_eq!(StateStore::get(a, &key).await.unwrap(), None);
        a.put(&key, "2024-01-01T00:00:00Z").await.unwrap();
        assert_eq!(StateStore::get(b, &key).await.unwrap().as_deref(), Some("2024-01-01T00:00:00Z"));
        b.put(&key, "{\"cursor\": 42}").await.unwrap();
        assert_eq!(StateStore::get(a, &key).await.unwrap().as_deref(), Some("{\"cursor\": 42}"));
        assert_eq!(StateStore::get(a, "absent").await.unwrap(), None);
    }

    /// An expiring value reads back until its time, then as absent (on
    /// both instances, whether or not the store removed it yet); `put`
    /// makes it permanent again.
    pub async fn kv_state_expiring<B: Backend>() {
        let clock = kv_clock();
        let kv = B::kv_pair(clock.clone(), 100).await;
        let (a, b) = (&kv.0, &kv.1);
        let key = format!("check_wanted/{}/gpu", uuid::Uuid::new_v4().simple());
        a.put_expiring(&key, "42", Duration::from_secs(60)).await.unwrap();
        assert_eq!(StateStore::get(b, &key).await.unwrap().as_deref(), Some("42"));
        clock.advance(Duration::from_secs(59));
        assert_eq!(StateStore::get(a, &key).await.unwrap().as_deref(), Some("42"), "still live");
        clock.advance(Duration::from_secs(2));
        assert_eq!(StateStore::get(a, &key).await.unwrap(), None, "expired");
        assert_eq!(StateStore::get(b, &key).await.unwrap(), None);
        b.put(&key, "43").await.unwrap();
        clock.advance(Duration::from_secs(3600));
        assert_eq!(StateStore::get(a, &key).await.unwrap().as_deref(), Some("43"), "put: no expiry");
    }

    /// Conditional writes: written only over what was expected (nothing, an
    /// expired value, or the value read), across instances; a refused
    /// write returns what is stored; of eight writers over the same value,
    /// exactly one wins.
    pub async fn kv_state_put_if<B: Backend>() {
        let clock = kv_clock();
        let kv = B::kv_pair(clock.clone(), 100).await;
        let (a, b) = (&kv.0, &kv.1);
        let key = format!("github_budget/dispatch/{}", uuid::Uuid::new_v4().simple());
        let ttl = Some(Duration::from_secs(60));
        assert_eq!(a.put_if(&key, Some("x"), "1", ttl).await.unwrap(), Err(None), "nothing stored");
        assert_eq!(a.put_if(&key, None, "1", ttl).await.unwrap(), Ok(()));
        assert_eq!(b.put_if(&key, None, "2", ttl).await.unwrap(), Err(Some("1".into())), "1 is stored");
        assert_eq!(b.put_if(&key, Some("0"), "2", ttl).await.unwrap(), Err(Some("1".into())));
        assert_eq!(b.put_if(&key, Some("1"), "2", ttl).await.unwrap(), Ok(()));
        assert_eq!(StateStore::get(a, &key).await.unwrap().as_deref(), Some("2"));
        // Expired: stored no more, whether or not the store removed it yet.
        clock.advance(Duration::from_secs(61));
        assert_eq!(a.put_if(&key, Some("2"), "3", ttl).await.unwrap(), Err(None), "expired");
        assert_eq!(a.put_if(&key, None, "3", ttl).await.unwrap(), Ok(()));
        // Without a time to live: kept for good.
        let lasting = format!("breaker/{}", uuid::Uuid::new_v4().simple());
        assert_eq!(b.put_if(&lasting, None, "open", None).await.unwrap(), Ok(()));
        clock.advance(Duration::from_secs(400 * 24 * 3600));
        assert_eq!(StateStore::get(a, &lasting).await.unwrap().as_deref(), Some("open"), "no expiry");
        assert_eq!(a.put_if(&lasting, Some("open"), "closed", None).await.unwrap(), Ok(()));
        assert_eq!(a.put_if(&key, Some("3"), "4", ttl).await.unwrap(), Err(None), "the other one expired meanwhile");
        assert_eq!(a.put_if(&key, None, "3", ttl).await.unwrap(), Ok(()));
        // Eight writers over the same value, on both instances: one wins.
        let calls = (0..8).map(|i| {
            let store: &B::Kv = if i % 2 == 0 { &kv.0 } else { &kv.1 };
            let (key, value) = (key.clone(), format!("w{i}"));
            async move { store.put_if(&key, Some("3"), &value, ttl).await.expect("put_if") }
        });
        let results = futures::future::join_all(calls).await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
        let stored = StateStore::get(a, &key).await.unwrap().expect("a winner's value");
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(r.as_deref().is_some_and(|v| v.starts_with('w')), "a loser sees a written value: {r:?}");
        }
        assert!(stored.starts_with('w'));
    }

    /// GitHub's dispatch budget kept in the store (issue 15): two relay
    /// instances spending for the same installation at once spend at most
    /// its limit between them, and a hold set by one stops the other.
    pub async fn kv_dispatch_budget_shared<B: Backend>() {
        use crcr_core::budget::{DispatchBudget, DispatchPace, StoredDispatchBudget};
        use crcr_core::ports::InstallationId;
        let clock = kv_clock();
        let kv = B::kv_pair(clock.clone(), 100).await;
        let pace = DispatchPace { per_minute: 5, per_hour: 7, ..DispatchPace::default() };
        let (a, b) = (kv.0.clone(), kv.1.clone());
        let one = StoredDispatchBudget::new(pace, Arc::new(a));
        let two = StoredDispatchBudget::new(pace, Arc::new(b));
        let installation = InstallationId((uuid::Uuid::new_v4().as_u128() >> 80) as u64);
        let now = clock.now_ms();
        let spends = (0..12).map(|i| {
            let budget = if i % 2 == 0 { &one } else { &two };
            async move { budget.spend(installation, now).await.expect("spend") }
        });
        let spent = futures::future::join_all(spends).await.into_iter().filter(Option::is_none).count();
        assert_eq!(spent, 5, "5 a minute between both instances");
        let later = now + 63_000;
        assert_eq!(one.spend(installation, later).await.unwrap(), None);
        assert_eq!(two.spend(installation, later).await.unwrap(), None);
        let wait = one.spend(installation, later).await.unwrap().expect("7 an hour");
        assert!(wait > Duration::from_secs(3000), "{wait:?}");
        let other = InstallationId(installation.0 + 1);
        two.hold(other, now + 30_000).await.unwrap();
        assert_eq!(one.spend(other, now + 10_000).await.unwrap(), Some(Duration::from_secs(20)), "held by two");
    }

    /// Leases: one holder at a time across instances; the holder renews;
    /// release by another holder does nothing; released or expired → free.
    pub async fn kv_lease_one_holder<B: Backend>() {
        let clock = kv_clock();
        let kv = B::kv_pair(clock.clone(), 100).await;
        let (a, b) = (&kv.0, &kv.1);
        let key = format!("sweep/{}", uuid::Uuid::new_v4().simple());
        let ttl = Duration::from_secs(60);
        assert!(a.try_lease(&key, "one", ttl).await.unwrap());
        assert!(!b.try_lease(&key, "two", ttl).await.unwrap(), "held by one");
        assert!(b.try_lease(&key, "one", ttl).await.unwrap(), "the holder renews, from any instance");
        b.release_lease(&key, "two").await.unwrap();
        assert!(!a.try_lease(&key, "two", ttl).await.unwrap(), "not released by someone else");
        a.release_lease(&key, "one").await.unwrap();
        assert!(b.try_lease(&key, "two", ttl).await.unwrap(), "released");
        assert_eq!(StateStore::get(a, &key).await.unwrap(), None, "leases are not state values");
        clock.advance(Duration::from_secs(61));
        assert!(a.try_lease(&key, "three", ttl).await.unwrap(), "expired");
        // Eight at once, on both instances: exactly one gets it.
        let contended = format!("sweep/{}", uuid::Uuid::new_v4().simple());
        let calls = (0..8).map(|i| {
            let store: &B::Kv = if i % 2 == 0 { &kv.0 } else { &kv.1 };
            let (contended, holder) = (contended.clone(), format!("h{i}"));
            async move { store.try_lease(&contended, &holder, ttl).await.expect("try_lease") }
        });
        let won = futures::future::join_all(calls).await.into_iter().filter(|w| *w).count();
        assert_eq!(won, 1);
    }
}

// ================================================================ the suite, per backend

macro_rules! contract_suite {
    ($module:ident, $backend:ty, [$($case:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case::<$backend>().await
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($module:ident, $backend:ty) => {
        contract_suite!(
            $module,
            $backend,
            [
                queue_send_receive_delete,
                queue_visibility_timeout_redelivers,
                queue_change_visibility_zero,
                queue_moves_to_dlq_after_max_receives,
                queue_dead_letter_with_reason,
                queue_postpone_does_not_count_the_receive,
                queue_redrive_moves_back,
                queue_depth_counts,
                queue_rejects_oversized,
                store_claim_new_then_leased,
                store_claim_each_answers_each_target,
                store_hooks_of_one_guid_are_separate_deliveries,
                store_dispatched_is_final,
                store_failed_is_final,
                store_retry_releases_lease,
                store_expired_lease_taken_over,
                store_concurrent_claims_one_winner,
                store_stale_finish_is_noop,
                store_records_round_trip,
                store_dispatched_between,
                dispatch_records_for_commit,
                blob_round_trip,
                blob_not_found,
                jobs_new_job_in_progress,
                jobs_repeated_in_progress_is_noop,
                jobs_completed_after_in_progress,
                jobs_transition_on_absent_job_is_noop,
                jobs_rerun_attempt_is_separate_key,
                jobs_concurrent_transitions_one_winner,
                jobs_outbox_sent_and_rejected_are_final,
                jobs_pending_outbox_due_first,
                jobs_outbox_failed_and_requeue,
                jobs_in_progress_before_only_old_in_progress,
                jobs_violations_round_trip,
                jobs_outbox_backlog_counts_pending,
                jobs_callback_counts_window,
                jobs_records_round_trip,
                jobs_check_run_outbox,
                jobs_advance_check_run,
                kv_binding_written_once,
                kv_replay_guard,
                kv_replay_concurrent_first_use,
                kv_rate_limit_shared_and_windowed,
                kv_state_put_get_overwrite,
                kv_state_expiring,
                kv_state_put_if,
                kv_dispatch_budget_shared,
                kv_lease_one_holder,
            ]
        );
    };
}

all_cases!(sqlite, crate::Sqlite);
all_cases!(aws, crate::Moto);

// ================================================================ DynamoDB only

/// Check-run items written before `request_status` existed (no such
/// attribute): `advance_check_run` reads the status inside `request`, so an
/// in-progress one still moves to completed and a completed one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_advance_check_run_on_items_without_request_status() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use crcr_core::checks::CheckRunTarget;
    use crcr_core::lifecycle::CheckRunItem;
    let cfg = moto_config().await;
    let client = aws_sdk_dynamodb::Client::new(&cfg);
    let table = unique("crcr-jobs");
    moto::relay_table(&cfg, "jobs", &table).await;
    let s = crcr_aws::DynamoJobStore::new(client.clone(), table.clone());
    let d = delivery();
    let target = CheckRunTarget {
        upstream: repo("pytorch/pytorch"),
        head_sha: HeadSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap(),
        pr_number: None,
    };
    let job = |name: &str| cases::started(&cases::job_key(&d, "org/l3", 1, name), cases::T0);
    let (running, done) = (job("running"), cases::finished(&job("done"), cases::T0 + 500, "success"));
    for rec in [&running, &done] {
        assert!(s.advance_check_run(&target.item(rec)).await.unwrap());
        let removed = client
            .update_item()
            .table_name(&table)
            .key("pk", AttributeValue::S(d.to_string()))
            .key("sk", AttributeValue::S(format!("chk#{}", CheckRunItem::id_for(&rec.key))))
            .update_expression("REMOVE request_status")
            .condition_expression("attribute_exists(request_status)")
            .send()
            .await;
        assert!(removed.is_ok(), "the item has no request_status to remove: {removed:?}");
    }
    let before = s.check_runs(&d).await.unwrap();
    let completed = target.item(&cases::finished(&running, cases::T0 + 1_000, "failure"));
    assert!(s.advance_check_run(&completed).await.unwrap(), "old in_progress item -> completed");
    let again = target.item(&cases::finished(&done, cases::T0 + 2_000, "failure"));
    assert!(!s.advance_check_run(&again).await.unwrap(), "old completed item -> completed");
    let after = s.check_runs(&d).await.unwrap();
    let moved =
        CheckRunItem { request: completed.request, version: 2, updated_at_ms: cases::T0 + 1_000, ..before[0].clone() };
    assert_eq!(after, vec![moved, before[1].clone()]);
    let stored = client
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(d.to_string()))
        .key("sk", AttributeValue::S(format!("chk#{}", CheckRunItem::id_for(&running.key))))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(stored.get("request_status"), Some(&AttributeValue::S("completed".into())), "written when moved");
}
