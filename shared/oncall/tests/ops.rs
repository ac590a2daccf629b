//! On-call operations (`crcr_oncall`): DLQ list / show / replay / purge
//! with filters and dry runs, replay idempotency through the real
//! dispatcher, and `status` figures. Every case runs against the SQLite
//! adapters (the embedded default) and against SQS + DynamoDB on moto's
//! server.
//!
//! Run: `cargo test -p crcr-oncall --test ops`. The moto half needs moto's
//! server on `CRCR_TEST_MOTO_URL` (default `http://127.0.0.1:5000`; see
//! `scripts/test`): a test that cannot reach it fails, it never skips.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use crcr_core::allowlist::{Allowlist, AllowlistProvider};
use crcr_core::dispatch::{Dispatcher, DispatcherSettings};
use crcr_core::domain::{DeliveryId, Level, RepoFullName};
use crcr_core::lifecycle::{CallbackCounts, HudSync, JobKey, JobRecord, JobState, JobStore, OutboxItem, Violation};
use crcr_core::message::{payload_blob_key, DispatchV1, PayloadRef, QueueMessage};
use crcr_core::ports::{
    AttemptOutcome, BlobStore, Claim, DispatchCounts, DispatchMeta, DispatchStatus, DispatchStore, EventQueue,
    GitHubApp, GitHubError, InstallationId, QueueError, QueueInspect, QueueReceive, QueueSend, QueueSettle, QueueSide,
    QueueStats, ReceivedMessage, SystemClock,
};
use crcr_core::progress::{NoProgress, ProgressEvent, ProgressLog};
use crcr_oncall::dlq::{Dlq, DlqFilter, FailureClass, ReplayOptions, ScanOptions};
use crcr_oncall::status::{status, StatusOptions};
use serde_json::value::RawValue;

// ================================================================ backends

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Moto,
}

/// Adapters of one backend sharing one database (SQLite) or one set of
/// queues and tables (moto), fresh for each test.
struct World {
    queue: Arc<dyn EventQueue>,
    jobs: Arc<dyn JobStore>,
    store: Arc<dyn DispatchStore>,
    blobs: Arc<dyn BlobStore>,
    _tmp: Option<TempDb>,
}

impl World {
    fn dlq(&self) -> Dlq<'_> {
        Dlq { queue: &*self.queue, store: &*self.store, blobs: Some(&*self.blobs), clock: &SystemClock }
    }
}

/// A database file in the temp dir, removed (with its WAL files) on drop.
struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A queue pair whose source moves a message to the DLQ after `redrive` receives.
async fn world(kind: Kind, redrive: u32) -> World {
    match kind {
        Kind::Sqlite => {
            let tmp = TempDb(std::env::temp_dir().join(format!("crcr-ops-{}.db", uuid::Uuid::new_v4().simple())));
            let db = crcr_embedded::sqlite::Db::open(&tmp.0).expect("open SQLite");
            World {
                queue: Arc::new(crcr_embedded::sqlite::SqliteQueue::new(db.clone(), "dispatch", redrive)),
                store: Arc::new(crcr_embedded::sqlite::SqliteDispatchStore::new(db.clone())),
                jobs: Arc::new(crcr_embedded::sqlite::SqliteJobStore::new(db.clone())),
                blobs: Arc::new(crcr_embedded::sqlite::SqliteBlobStore::new(db)),
                _tmp: Some(tmp),
            }
        }
        Kind::Moto => {
            let cfg = crcr_standin::moto::sdk().await;
            let res = crcr_standin::moto::Resources::create(&cfg, redrive).await;
            let (sqs, dynamo) = (aws_sdk_sqs::Client::new(&cfg), aws_sdk_dynamodb::Client::new(&cfg));
            World {
                queue: Arc::new(crcr_aws::SqsQueue::new(sqs, res.dispatch_queue_url, res.dispatch_dlq_url)),
                store: Arc::new(crcr_aws::DynamoDispatchStore::new(dynamo.clone(), res.dispatch_table)),
                jobs: Arc::new(crcr_aws::DynamoJobStore::new(dynamo.clone(), res.jobs_table)),
                blobs: Arc::new(crcr_aws::DynamoBlobStore::new(dynamo, res.payload_table)),
                _tmp: None,
            }
        }
    }
}

// ================================================================ helpers

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn delivery() -> DeliveryId {
    DeliveryId::parse(&uuid::Uuid::new_v4().to_string()).unwrap()
}

fn repo(s: &str) -> RepoFullName {
    RepoFullName::parse(s).unwrap()
}

fn dispatch_body(
    d: &DeliveryId,
    event: &str,
    action: Option<&str>,
    received_at_ms: i64,
    payload: PayloadRef,
) -> String {
    QueueMessage::DispatchV1(DispatchV1 {
        delivery_id: d.clone(),
        hook_id: None,
        event: event.into(),
        action: action.map(str::to_owned),
        received_at_ms,
        payload,
    })
    .encode()
}

fn inline(v: serde_json::Value) -> PayloadRef {
    PayloadRef::Inline(RawValue::from_string(v.to_string()).unwrap())
}

fn pr_payload(n: u64) -> serde_json::Value {
    serde_json::json!({"action": "opened", "number": n, "pull_request": {"number": n, "head": {"sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821"}}})
}

fn push_payload() -> serde_json::Value {
    serde_json::json!({"ref": "refs/heads/main", "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246"})
}

/// Puts `body` on the DLQ the way the dispatcher does: received from the
/// source queue, then `dead_letter` with `reason`.
async fn dead_letter(q: &dyn EventQueue, body: &str, reason: &str) {
    q.send(body).await.expect("send");
    let got = q.receive(QueueSide::Source, 1, Duration::from_secs(30), Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1, "source queue should hold exactly the message just sent");
    q.dead_letter(&got[0], reason).await.expect("dead_letter");
}

/// Puts `body` on the DLQ through the queue's redrive policy (no reason):
/// received `redrive` times and never deleted. Needs a queue with redrive 1.
async fn redrive_to_dlq(q: &dyn EventQueue, body: &str) {
    let before = q.depth(QueueSide::DeadLetter).await.unwrap();
    q.send(body).await.expect("send");
    let got = q.receive(QueueSide::Source, 1, Duration::from_secs(30), Duration::from_secs(1)).await.unwrap();
    assert_eq!(got.len(), 1);
    q.change_visibility(QueueSide::Source, &got[0].receipt, Duration::ZERO).await.unwrap();
    let again = q.receive(QueueSide::Source, 1, Duration::from_secs(30), Duration::from_secs(1)).await.unwrap();
    assert!(again.is_empty(), "the receive after maxReceiveCount moves the message instead: {again:?}");
    assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), before + 1, "redrive policy did not move it");
}

fn meta(event: &str, action: Option<&str>, pr: Option<u64>) -> DispatchMeta {
    DispatchMeta {
        event: event.into(),
        action: action.map(str::to_owned),
        head_sha: None,
        pr_number: pr,
        level: Level::L1,
        check_run: false,
        device: None,
        received_at_ms: None,
        hook_id: None,
    }
}

/// One attempt on (d, target) ending with `outcome`, at `at_ms`.
async fn attempt(
    s: &dyn DispatchStore,
    d: &DeliveryId,
    target: &str,
    m: &DispatchMeta,
    at_ms: i64,
    outcome: AttemptOutcome,
) {
    let claim = s.claim(d, &repo(target), m, at_ms, Duration::from_secs(60)).await.unwrap();
    let Claim::Acquired { attempt } = claim else { panic!("{claim:?}") };
    s.finish(d, &repo(target), attempt, &outcome, at_ms).await.unwrap();
}

async fn stats(q: &dyn EventQueue, side: QueueSide) -> QueueStats {
    q.stats(side).await.expect("stats")
}

/// Every message on `side`, received and then released (bodies).
async fn bodies(q: &dyn EventQueue, side: QueueSide) -> Vec<String> {
    let mut out = Vec::new();
    let mut receipts = Vec::new();
    loop {
        let got = q.receive(side, 10, Duration::from_secs(30), Duration::from_secs(1)).await.unwrap();
        if got.is_empty() {
            break;
        }
        for m in got {
            out.push(m.body);
            receipts.push(m.receipt);
        }
    }
    for r in receipts {
        q.change_visibility(side, &r, Duration::ZERO).await.unwrap();
    }
    out.sort();
    out
}

fn no_progress() -> NoProgress {
    NoProgress
}

fn ids(l: &[crcr_oncall::dlq::DlqMessage]) -> Vec<String> {
    l.iter()
        .map(|m| m.delivery_id.as_ref().map_or_else(|| format!("msg:{}", m.message_id), |d| d.to_string()))
        .collect()
}

/// Four DLQ messages covering every way onto it (see `cases::list_*`).
struct Dead {
    /// pull_request.opened, 10 min old, retries exhausted on org/c; org/a dispatched.
    d1: DeliveryId,
    /// push, 3 h old, claim-checked payload, retries exhausted on org/b (installation lookup: no record).
    d2: DeliveryId,
    /// Undecodable body, dead-lettered with the decode error.
    m3_body: String,
    /// push, 1 min old, moved by the redrive policy (no reason).
    d4: DeliveryId,
}

/// Fills a queue with redrive 1 with the four [`Dead`] messages.
async fn four_dead(w: &World) -> Dead {
    let now = wall_ms();
    let (d1, d2, d4) = (delivery(), delivery(), delivery());
    let pr = meta("pull_request", Some("opened"), Some(42));
    attempt(&*w.store, &d1, "org/a", &pr, now, AttemptOutcome::Dispatched { payload_trimmed: false }).await;
    attempt(&*w.store, &d1, "org/c", &pr, now, AttemptOutcome::Retry { reason: "503".into() }).await;
    attempt(&*w.store, &d1, "org/c", &pr, now + 1, AttemptOutcome::Retry { reason: "503 Service Unavailable".into() })
        .await;
    let b1 = dispatch_body(&d1, "pull_request", Some("opened"), now - 600_000, inline(pr_payload(42)));
    dead_letter(&*w.queue, &b1, "still failing after 5 receives: org/c: 503 Service Unavailable").await;

    let key = payload_blob_key(&d2, None);
    let big = push_payload().to_string();
    w.blobs.put(&key, big.as_bytes()).await.unwrap();
    let b2 = dispatch_body(&d2, "push", None, now - 3 * 3_600_000, PayloadRef::Stored { key, bytes: big.len() });
    dead_letter(&*w.queue, &b2, "still failing after 3 receives: org/b: installation lookup: 502 Bad Gateway").await;

    let m3_body = "this is not a queue message".to_owned();
    let decode_error = QueueMessage::decode(&m3_body).unwrap_err().to_string();
    dead_letter(&*w.queue, &m3_body, &decode_error).await;

    let b4 = dispatch_body(&d4, "push", None, now - 60_000, inline(push_payload()));
    redrive_to_dlq(&*w.queue, &b4).await;
    Dead { d1, d2, m3_body, d4 }
}

/// A GitHub whose `repository_dispatch` fails with 503 for the repositories
/// in `down` (an outage), and records every call.
#[derive(Default)]
struct FakeGitHub {
    down: Mutex<HashSet<String>>,
    /// (target key, delivery id, accepted)
    calls: Mutex<Vec<(String, String, bool)>>,
}

impl FakeGitHub {
    fn outage(&self, repos: &[&str]) {
        *self.down.lock().unwrap() = repos.iter().map(|r| r.to_ascii_lowercase()).collect();
    }
    /// Targets that accepted `d`, sorted, with repeats.
    fn dispatched(&self, d: &DeliveryId) -> Vec<String> {
        let mut v: Vec<String> = self
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, del, ok)| *ok && del == d.as_str())
            .map(|(t, _, _)| t.clone())
            .collect();
        v.sort();
        v
    }
    fn calls_to(&self, target: &str) -> usize {
        self.calls.lock().unwrap().iter().filter(|(t, _, _)| t == target).count()
    }
}

#[async_trait]
impl GitHubApp for FakeGitHub {
    async fn installation(&self, _repo: &RepoFullName) -> Result<Option<InstallationId>, GitHubError> {
        Ok(Some(InstallationId(1)))
    }
    async fn dispatch(
        &self,
        repo: &RepoFullName,
        _installation: InstallationId,
        body: &crcr_core::client_payload::DispatchBody,
    ) -> Result<(), GitHubError> {
        let body = body.value();
        let delivery = body["client_payload"]["delivery_id"].as_str().unwrap_or_default().to_owned();
        let down = self.down.lock().unwrap().contains(repo.key());
        self.calls.lock().unwrap().push((repo.key().to_owned(), delivery, !down));
        if down {
            Err(GitHubError::Transient { reason: "503 Service Unavailable".into(), retry_after: None })
        } else {
            Ok(())
        }
    }
    async fn file_contents(&self, _: &RepoFullName, _: &str, _: &str) -> Result<Vec<u8>, GitHubError> {
        Err(GitHubError::Permanent { status: 404, reason: "Not Found".into() })
    }
}

const ALLOWLIST: &str = "L1:\n  - org/a\n  - org/b\nL2:\n  - org/c\nL3:\n  gpu:\n    org/d: [alice]\n";

/// The real dispatcher on `w`'s adapters and `gh`: one call per target per
/// receive, dead-letters with its reason on the 2nd receive, retries at once.
fn dispatcher(w: &World, gh: Arc<FakeGitHub>) -> Dispatcher {
    Dispatcher {
        store: w.store.clone(),
        blobs: w.blobs.clone(),
        github: gh,
        budget: Arc::new(crcr_core::budget::Unpaced),
        breakers: Arc::new(crcr_core::breaker::Breakers::new(
            Arc::new(crcr_core::ports::InMemoryStateStore::default()),
            Default::default(),
            Arc::new(SystemClock),
        )),
        paused_checks: None,
        allowlist: Arc::new(AllowlistProvider::fixed(Allowlist::parse(ALLOWLIST).unwrap())),
        clock: Arc::new(SystemClock),
        settings: DispatcherSettings {
            max_calls: 1,
            max_receive_count: 2,
            requeue_base_delay: Duration::ZERO,
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            retry_budget: Duration::from_secs(2),
            ..DispatcherSettings::default()
        },
    }
}

/// Processes the source queue until it is empty, as the workers would.
async fn drain(d: &Dispatcher, q: &dyn EventQueue) {
    for _ in 0..50 {
        let batch = q.receive(QueueSide::Source, 10, Duration::from_secs(30), Duration::from_secs(1)).await.unwrap();
        if batch.is_empty() {
            return;
        }
        for m in batch {
            d.handle(q, &m).await.expect("settle message");
        }
    }
    panic!("source queue never drained");
}

/// A webhook during an outage of org/c and org/d: org/a and org/b get it,
/// the message ends on the DLQ after two receives.
async fn outage_to_dlq(w: &World, gh: &Arc<FakeGitHub>, d: &Dispatcher) -> DeliveryId {
    let del = delivery();
    gh.outage(&["org/c", "org/d"]);
    w.queue
        .send(&dispatch_body(&del, "pull_request", Some("synchronize"), wall_ms(), inline(pr_payload(7))))
        .await
        .unwrap();
    drain(d, &*w.queue).await;
    assert_eq!(gh.dispatched(&del), ["org/a", "org/b"]);
    assert_eq!(stats(&*w.queue, QueueSide::DeadLetter).await.visible, 1, "dead-lettered after two receives");
    del
}

/// An [`EventQueue`] whose deletes from the DLQ fail while `fail_deletes`
/// is set (a crash or an error between the copy and the delete).
struct FlakyDeletes {
    inner: Arc<dyn EventQueue>,
    fail_deletes: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl QueueSend for FlakyDeletes {
    fn max_message_bytes(&self) -> usize {
        self.inner.max_message_bytes()
    }
    async fn send(&self, body: &str) -> Result<String, QueueError> {
        self.inner.send(body).await
    }
}

#[async_trait]
impl QueueReceive for FlakyDeletes {
    async fn receive(
        &self,
        side: QueueSide,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.inner.receive(side, max, visibility, wait).await
    }
}

#[async_trait]
impl QueueSettle for FlakyDeletes {
    async fn delete(&self, side: QueueSide, receipt: &str) -> Result<(), QueueError> {
        if side == QueueSide::DeadLetter && self.fail_deletes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(QueueError::unavailable("injected: connection reset"));
        }
        self.inner.delete(side, receipt).await
    }
    async fn change_visibility(&self, side: QueueSide, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        self.inner.change_visibility(side, receipt, delay).await
    }
    async fn dead_letter(&self, msg: &ReceivedMessage, reason: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(msg, reason).await
    }
    async fn postpone(&self, msg: &ReceivedMessage, delay: Duration) -> Result<(), QueueError> {
        self.inner.postpone(msg, delay).await
    }
}

#[async_trait]
impl QueueInspect for FlakyDeletes {
    async fn depth(&self, side: QueueSide) -> Result<u64, QueueError> {
        self.inner.depth(side).await
    }
    async fn stats(&self, side: QueueSide) -> Result<QueueStats, QueueError> {
        self.inner.stats(side).await
    }
}

// ================================================================ cases

mod cases {
    use super::*;

    /// `list` describes every message (ids, event, PR or ref, age, class,
    /// reason, pending targets), and leaves all of them visible.
    pub async fn list_describes_and_releases_everything(kind: Kind) {
        let w = world(kind, 1).await;
        let dead = four_dead(&w).await;
        let l = w.dlq().list(&DlqFilter::default(), &ScanOptions::peek()).await.unwrap();
        assert_eq!((l.scanned, l.matched, l.scan_truncated), (4, 4, false));
        assert!(l.release_failures.is_empty(), "{:?}", l.release_failures);
        // Nothing lost, nothing hidden: all four visible again at once.
        let st = stats(&*w.queue, QueueSide::DeadLetter).await;
        assert_eq!((st.visible, st.in_flight), (4, 0), "{st:?}");
        // Oldest event first: d2 (3 h), d1 (10 min), d4 (1 min), m3 (put on the DLQ just now).
        assert_eq!(ids(&l.messages)[..3], [dead.d2.to_string(), dead.d1.to_string(), dead.d4.to_string()]);
        let by = |d: &DeliveryId| l.messages.iter().find(|m| m.delivery_id.as_ref() == Some(d)).unwrap();
        let m1 = by(&dead.d1);
        assert_eq!(
            (m1.event.as_deref(), m1.action.as_deref(), m1.pr_number),
            (Some("pull_request"), Some("opened"), Some(42))
        );
        assert_eq!(m1.failure_class, FailureClass::RetriesExhausted);
        assert_eq!(m1.reason.as_deref(), Some("still failing after 5 receives: org/c: 503 Service Unavailable"));
        assert_eq!(m1.pending().map(|t| t.target.to_string()).collect::<Vec<_>>(), ["org/c"]);
        assert_eq!(m1.count(DispatchStatus::Dispatched), 1);
        assert_eq!(m1.pending().next().unwrap().attempts, 2);
        assert!((590_000..700_000).contains(&m1.age_ms), "age {} ms", m1.age_ms);
        assert!(m1.receive_count >= 1);
        let m2 = by(&dead.d2);
        assert_eq!(m2.git_ref.as_deref(), Some("refs/heads/main"), "ref read from the claim-checked payload");
        assert!(m2.payload_key.is_some());
        assert!(m2.targets.is_empty());
        let m4 = by(&dead.d4);
        assert_eq!(m4.failure_class, FailureClass::RedrivePolicy);
        assert_eq!(m4.reason, None);
        assert!(m4.reason_text().contains("redrive policy"));
        let m3 = l.messages.iter().find(|m| m.delivery_id.is_none()).unwrap();
        assert_eq!(m3.failure_class, FailureClass::Undecodable);
        assert!(m3.decode_error.as_deref().unwrap().contains("not JSON"), "{m3:?}");
        let text = crcr_oncall::dlq::render_listing(&l);
        assert!(text.contains("PR #42") && text.contains("refs/heads/main") && text.contains("org/c"), "{text}");
        assert!(text.contains("4 listed, 4 matching, 4 on the DLQ read"), "{text}");
        // A second look sees the same four.
        let again = w.dlq().list(&DlqFilter::default(), &ScanOptions::peek()).await.unwrap();
        assert_eq!(again.scanned, 4);
        let _ = dead.m3_body;
    }

    /// Every filter, and the limit.
    pub async fn list_filters(kind: Kind) {
        let w = world(kind, 1).await;
        let dead = four_dead(&w).await;
        let (d1, d2, d4) = (dead.d1.to_string(), dead.d2.to_string(), dead.d4.to_string());
        let list = |f: DlqFilter| {
            let w = &w;
            async move { w.dlq().list(&f, &ScanOptions::peek()).await.unwrap() }
        };
        let event = |e: &str| DlqFilter { event: Some(e.into()), ..Default::default() };
        assert_eq!(ids(&list(event("pull_request")).await.messages), [d1.as_str()]);
        assert_eq!(ids(&list(event("pull_request.opened")).await.messages), [d1.as_str()]);
        assert!(list(event("pull_request.closed")).await.messages.is_empty());
        assert_eq!(ids(&list(event("push")).await.messages), [d2.clone(), d4.clone()]);
        let by_repo = |r: &str| DlqFilter { repo: Some(repo(r)), ..Default::default() };
        assert_eq!(ids(&list(by_repo("ORG/C")).await.messages), [d1.as_str()], "pending target");
        assert_eq!(ids(&list(by_repo("org/a")).await.messages), [d1.as_str()], "dispatched target");
        assert_eq!(ids(&list(by_repo("org/b")).await.messages), [d2.as_str()], "named in the reason only");
        assert!(list(by_repo("org/z")).await.messages.is_empty());
        let recent = list(DlqFilter { since: Some(Duration::from_secs(2 * 3600)), ..Default::default() }).await;
        assert_eq!(recent.matched, 3);
        assert!(!ids(&recent.messages).contains(&d2), "3 h old");
        let undecodable = list(DlqFilter { reason: Some("NOT json".into()), ..Default::default() }).await;
        assert_eq!(undecodable.messages.len(), 1);
        assert_eq!(undecodable.messages[0].failure_class, FailureClass::Undecodable);
        let m3_id = undecodable.messages[0].message_id.clone();
        assert_eq!(
            ids(&list(DlqFilter { reason: Some("502".into()), ..Default::default() }).await.messages),
            [d2.as_str()]
        );
        assert_eq!(ids(&list(DlqFilter { ids: vec![d4.clone()], ..Default::default() }).await.messages), [d4.as_str()]);
        let by_msg_id = list(DlqFilter { ids: vec![m3_id.clone()], ..Default::default() }).await;
        assert_eq!(by_msg_id.messages.len(), 1);
        assert_eq!(by_msg_id.messages[0].message_id, m3_id);
        let limited = list(DlqFilter { limit: Some(2), ..Default::default() }).await;
        assert_eq!((limited.matched, limited.messages.len()), (4, 2));
        assert_eq!(ids(&limited.messages), [d2, d1], "the oldest two");
        let both =
            list(DlqFilter { event: Some("push".into()), since: Some(Duration::from_secs(600)), ..Default::default() })
                .await;
        assert_eq!(ids(&both.messages), [d4]);
        assert_eq!(stats(&*w.queue, QueueSide::DeadLetter).await.visible, 4, "filters hide nothing");
    }

    /// `show` by delivery id and by message id: the whole message, the
    /// claim-checked payload, the attempt history; unknown ids find nothing.
    pub async fn show_finds_by_either_id_with_history(kind: Kind) {
        let w = world(kind, 1).await;
        let dead = four_dead(&w).await;
        let s = w.dlq().show(dead.d1.as_str(), &ScanOptions::peek()).await.unwrap();
        assert_eq!(s.messages.len(), 1);
        let m = &s.messages[0];
        assert_eq!(m.body["type"], "dispatch_v1");
        assert_eq!(m.body["payload"]["inline"]["number"], 42);
        let history: Vec<_> = m.records.iter().map(|r| (r.target.to_string(), r.status, r.attempts)).collect();
        assert_eq!(
            history,
            [("org/a".into(), DispatchStatus::Dispatched, 1), ("org/c".into(), DispatchStatus::Pending, 2)]
        );
        assert_eq!(m.records[1].last_error.as_deref(), Some("503 Service Unavailable"));
        let text = crcr_oncall::dlq::render_show(&s, wall_ms());
        assert!(text.contains("attempt history") && text.contains("503 Service Unavailable"), "{text}");

        let by_id = w.dlq().show(&m.summary.message_id, &ScanOptions::peek()).await.unwrap();
        assert_eq!(by_id.messages.len(), 1);
        assert_eq!(by_id.messages[0].summary.delivery_id.as_ref(), Some(&dead.d1));

        let stored = w.dlq().show(dead.d2.as_str(), &ScanOptions::peek()).await.unwrap();
        assert_eq!(stored.messages[0].stored_payload.as_ref().unwrap()["ref"], "refs/heads/main");

        let l = w
            .dlq()
            .list(&DlqFilter { reason: Some("not json".into()), ..Default::default() }, &ScanOptions::peek())
            .await
            .unwrap();
        let raw = w.dlq().show(&l.messages[0].message_id, &ScanOptions::peek()).await.unwrap();
        assert_eq!(raw.messages[0].body, serde_json::Value::String(dead.m3_body.clone()));

        assert!(w.dlq().show("no-such-id", &ScanOptions::peek()).await.unwrap().messages.is_empty());
        // A delivery that is not on the DLQ: its records instead.
        let other = delivery();
        attempt(
            &*w.store,
            &other,
            "org/a",
            &meta("push", None, None),
            wall_ms(),
            AttemptOutcome::Dispatched { payload_trimmed: false },
        )
        .await;
        let gone = w.dlq().show(other.as_str(), &ScanOptions::peek()).await.unwrap();
        assert!(gone.messages.is_empty());
        assert_eq!(gone.records_only.len(), 1);
        assert_eq!(stats(&*w.queue, QueueSide::DeadLetter).await.visible, 4, "show hides nothing");
    }

    /// Dry run moves nothing; a filtered replay moves exactly the matching
    /// messages (bodies unchanged) and leaves the rest on the DLQ, visible.
    pub async fn replay_dry_run_and_filtered(kind: Kind) {
        let w = world(kind, 1).await;
        let dead = four_dead(&w).await;
        let before = bodies(&*w.queue, QueueSide::DeadLetter).await;
        let push = DlqFilter { event: Some("push".into()), ..Default::default() };
        let dry = ReplayOptions { dry_run: true, rate_per_sec: None };
        let mut log = ProgressLog::default();
        let r = w.dlq().replay(&push, &ScanOptions::work(), &dry, &mut log).await.unwrap();
        assert!(r.dry_run);
        assert_eq!(log, ProgressLog::default(), "a dry run is over at once: no progress");
        assert_eq!((r.selected, r.done.len(), r.scanned), (2, 2, 4));
        assert_eq!(w.queue.depth(QueueSide::Source).await.unwrap(), 0, "dry run sends nothing");
        assert_eq!(
            stats(&*w.queue, QueueSide::DeadLetter).await.visible,
            4,
            "dry run: all four still there and visible"
        );

        let mut log = ProgressLog::default();
        let started = std::time::Instant::now();
        let opts = ReplayOptions { dry_run: false, rate_per_sec: Some(20.0) };
        let r = w.dlq().replay(&push, &ScanOptions::work(), &opts, &mut log).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50), "2 moves at 20/s take at least 50 ms");
        assert_eq!((r.done.len(), r.skipped.len(), r.failed.len()), (2, 0, 0), "{r:?}");
        assert_eq!(ids_of(&r.done), [dead.d2.to_string(), dead.d4.to_string()]);
        assert!(r.done.iter().all(|m| m.new_message_id.is_some()));
        // The two selected of four read, one step each, with the tallies.
        let ok = |n: u32| ProgressEvent::Message(format!("ok {n}, skipped 0, failed 0"));
        use ProgressEvent::{Finish, Inc, Start};
        assert_eq!(log.events, [Start(Some(2)), Inc(1), ok(1), Inc(1), ok(2), Finish]);
        let on_source = bodies(&*w.queue, QueueSide::Source).await;
        let left = bodies(&*w.queue, QueueSide::DeadLetter).await;
        assert_eq!(on_source.len(), 2);
        assert!(on_source.iter().all(|b| b.contains(dead.d2.as_str()) || b.contains(dead.d4.as_str())));
        let mut union: Vec<String> = on_source.into_iter().chain(left.clone()).collect();
        union.sort();
        assert_eq!(union, before, "bodies moved unchanged; nothing lost, nothing duplicated");
        assert_eq!(left.len(), 2);
        assert!(left.iter().any(|b| b.contains(dead.d1.as_str())) && left.contains(&dead.m3_body));
        let text = crcr_oncall::dlq::render_move_report(&r, "moved");
        assert!(text.contains("2 moved, 0 skipped, 0 failed (2 selected of 4 read)"), "{text}");
    }

    fn ids_of(v: &[crcr_oncall::dlq::Moved]) -> Vec<String> {
        v.iter().map(|m| m.delivery_id.as_ref().unwrap().to_string()).collect()
    }

    /// Purge: a dry run removes nothing; a filtered purge removes exactly the
    /// matching messages.
    pub async fn purge_dry_run_and_filtered(kind: Kind) {
        let w = world(kind, 1).await;
        let dead = four_dead(&w).await;
        let bad = DlqFilter { reason: Some("not json".into()), ..Default::default() };
        let dry = ReplayOptions { dry_run: true, rate_per_sec: None };
        let r = w.dlq().purge(&bad, &ScanOptions::work(), &dry, &mut no_progress()).await.unwrap();
        assert_eq!((r.selected, r.done.len()), (1, 1));
        assert_eq!(stats(&*w.queue, QueueSide::DeadLetter).await.visible, 4);
        let mut log = ProgressLog::default();
        let r = w.dlq().purge(&bad, &ScanOptions::work(), &ReplayOptions::default(), &mut log).await.unwrap();
        assert_eq!((r.done.len(), r.failed.len()), (1, 0));
        assert_eq!((log.starts(), log.position()), (vec![Some(1)], 1));
        assert!(log.finished_once() && log.last_message() == Some("ok 1, skipped 0, failed 0"), "{log:?}");
        let left = bodies(&*w.queue, QueueSide::DeadLetter).await;
        assert_eq!(left.len(), 3);
        assert!(!left.contains(&dead.m3_body));
        // By delivery id, with a limit of one of the two pushes (the older).
        let push = DlqFilter { event: Some("push".into()), limit: Some(1), ..Default::default() };
        let r =
            w.dlq().purge(&push, &ScanOptions::work(), &ReplayOptions::default(), &mut no_progress()).await.unwrap();
        assert_eq!(ids_of(&r.done), [dead.d2.to_string()]);
        let left = bodies(&*w.queue, QueueSide::DeadLetter).await;
        assert_eq!(left.len(), 2);
        assert!(left.iter().any(|b| b.contains(dead.d1.as_str())) && left.iter().any(|b| b.contains(dead.d4.as_str())));
        assert_eq!(stats(&*w.queue, QueueSide::Source).await.visible, 0, "purge sends nothing anywhere");
    }

    /// A message dead-lettered during a GitHub outage, replayed once GitHub
    /// is back: only the targets not yet dispatched get it, once.
    pub async fn replay_after_outage_dispatches_only_the_rest(kind: Kind) {
        let w = world(kind, 5).await;
        let gh = Arc::new(FakeGitHub::default());
        let d = dispatcher(&w, gh.clone());
        let del = outage_to_dlq(&w, &gh, &d).await;
        let l = w.dlq().list(&DlqFilter::default(), &ScanOptions::peek()).await.unwrap();
        assert_eq!(l.messages.len(), 1);
        let m = &l.messages[0];
        assert_eq!(m.failure_class, FailureClass::RetriesExhausted);
        assert!(m.reason.as_deref().unwrap().contains("org/c: 503"), "{m:?}");
        assert_eq!(m.pending().map(|t| t.target.to_string()).collect::<Vec<_>>(), ["org/c", "org/d"]);

        gh.outage(&[]);
        let r = w
            .dlq()
            .replay(&DlqFilter::default(), &ScanOptions::work(), &ReplayOptions::default(), &mut no_progress())
            .await
            .unwrap();
        assert_eq!(r.done.len(), 1);
        assert_eq!(r.done[0].pending_targets, [repo("org/c"), repo("org/d")]);
        assert_eq!(stats(&*w.queue, QueueSide::DeadLetter).await.visible, 0);
        drain(&d, &*w.queue).await;
        assert_eq!(gh.dispatched(&del), ["org/a", "org/b", "org/c", "org/d"], "each target exactly once");
        assert_eq!((gh.calls_to("org/a"), gh.calls_to("org/b")), (1, 1), "dispatched targets never called again");
        let records = w.store.records(&del).await.unwrap();
        assert!(records.iter().all(|r| r.status == DispatchStatus::Dispatched), "{records:?}");
        assert_eq!(depths(&*w.queue).await, (0, 0));
    }

    /// The copy reached the source queue but the delete from the DLQ failed
    /// (a crash in between): the message is on both queues. Replaying again
    /// and processing every copy dispatches nothing twice and loses nothing.
    pub async fn crash_between_send_and_delete_duplicates_nothing(kind: Kind) {
        let w = world(kind, 5).await;
        let gh = Arc::new(FakeGitHub::default());
        let d = dispatcher(&w, gh.clone());
        let del = outage_to_dlq(&w, &gh, &d).await;
        gh.outage(&[]);
        let flaky = FlakyDeletes { inner: w.queue.clone(), fail_deletes: true.into() };
        let dlq = Dlq { queue: &flaky, store: &*w.store, blobs: Some(&*w.blobs), clock: &SystemClock };
        let r = dlq
            .replay(&DlqFilter::default(), &ScanOptions::work(), &ReplayOptions::default(), &mut no_progress())
            .await
            .unwrap();
        assert_eq!((r.done.len(), r.failed.len()), (0, 1), "{r:?}");
        assert!(r.failed[0].copied, "{r:?}");
        assert!(r.failed[0].error.contains("delete from the DLQ failed"), "{r:?}");
        assert_eq!(depths(&*w.queue).await, (1, 1), "on both queues: nothing lost");
        // The original was released: visible on the DLQ for a second replay (or a purge).
        wait_visible(&*w.queue, QueueSide::DeadLetter, 1).await;
        let r = w
            .dlq()
            .replay(&DlqFilter::default(), &ScanOptions::work(), &ReplayOptions::default(), &mut no_progress())
            .await
            .unwrap();
        assert_eq!(r.done.len(), 1);
        assert_eq!(depths(&*w.queue).await, (2, 0), "two copies on the source queue");
        drain(&d, &*w.queue).await;
        assert_eq!(gh.dispatched(&del), ["org/a", "org/b", "org/c", "org/d"], "each target exactly once");
        assert_eq!(gh.calls.lock().unwrap().iter().filter(|(_, _, ok)| *ok).count(), 4);
        assert_eq!(depths(&*w.queue).await, (0, 0));
    }

    async fn depths(q: &dyn EventQueue) -> (u64, u64) {
        (q.depth(QueueSide::Source).await.unwrap(), q.depth(QueueSide::DeadLetter).await.unwrap())
    }

    async fn wait_visible(q: &dyn EventQueue, side: QueueSide, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stats(q, side).await.visible < n {
            assert!(std::time::Instant::now() < deadline, "message never became visible again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `status` figures match what is on the queues and in the store.
    pub async fn status_matches_queue_contents(kind: Kind) {
        let w = world(kind, 5).await;
        let now = wall_ms();
        for i in 0..3 {
            w.queue.send(&format!("{{\"type\":\"x\",\"i\":{i}}}")).await.unwrap();
        }
        let taken =
            w.queue.receive(QueueSide::Source, 1, Duration::from_secs(120), Duration::from_secs(1)).await.unwrap();
        assert_eq!(taken.len(), 1);
        dead_letter(&*w.queue, "{\"type\":\"x\",\"dead\":1}", "still failing after 5 receives: org/a: 503").await;
        dead_letter(&*w.queue, "{\"type\":\"x\",\"dead\":2}", "still failing after 5 receives: org/b: 503").await;
        let (d1, d2, old) = (delivery(), delivery(), delivery());
        let m = meta("push", None, None);
        attempt(&*w.store, &d1, "org/a", &m, now, AttemptOutcome::Dispatched { payload_trimmed: false }).await;
        attempt(&*w.store, &d1, "org/b", &m, now, AttemptOutcome::Dispatched { payload_trimmed: true }).await;
        attempt(&*w.store, &d1, "org/c", &m, now, AttemptOutcome::Failed { reason: "404".into() }).await;
        attempt(&*w.store, &d2, "org/a", &m, now, AttemptOutcome::Retry { reason: "503".into() }).await;
        let claim = w.store.claim(&d2, &repo("org/b"), &m, now, Duration::from_secs(300)).await.unwrap();
        assert!(matches!(claim, Claim::Acquired { .. }));
        attempt(
            &*w.store,
            &old,
            "org/a",
            &m,
            now - 2 * 3_600_000,
            AttemptOutcome::Dispatched { payload_trimmed: false },
        )
        .await;

        let running_delivery = seed_jobs(&*w.jobs, now).await;

        let r = status(&[("dispatch", &*w.queue)], &*w.store, Some(&*w.jobs), &SystemClock, &StatusOptions::default())
            .await;
        assert!(!r.has_errors(), "{r:?}");
        let q = &r.queues[0];
        assert_eq!((q.source.depth, q.source.visible, q.source.in_flight), (3, 2, 1), "{q:?}");
        assert_eq!((q.dead_letter.depth, q.dead_letter.visible, q.dead_letter.in_flight), (2, 2, 0), "{q:?}");
        let dlq_age = q.dead_letter.oldest_age_ms.expect("oldest DLQ message age");
        assert!((0..60_000).contains(&dlq_age), "{q:?}");
        match kind {
            Kind::Sqlite => {
                assert_eq!(q.source.oldest_from.as_deref(), Some("queue"));
                assert!(q.source.oldest_sent_at_ms.unwrap() >= now - 5_000);
                assert_eq!(q.dead_letter.oldest_from.as_deref(), Some("queue"));
            }
            Kind::Moto => {
                assert_eq!(q.source.oldest_sent_at_ms, None, "SQS has no such attribute; CloudWatch has");
                assert_eq!(q.dead_letter.oldest_from.as_deref(), Some("peek"));
            }
        }
        assert_eq!(
            r.dispatches.counts,
            Some(DispatchCounts { dispatched: 2, failed: 1, paused: 0, pending: 2, in_progress: 1 })
        );
        let wide = StatusOptions { window: Duration::from_secs(3 * 3600), ..Default::default() };
        let r3 = status(&[("dispatch", &*w.queue)], &*w.store, Some(&*w.jobs), &SystemClock, &wide).await;
        assert_eq!(r3.dispatches.counts.as_ref().unwrap().dispatched, 3, "the 2 h old record is inside a 3 h window");
        let callbacks = |in_progress, completed, timed_out, violations| CallbackCounts {
            in_progress,
            completed,
            timed_out,
            violations,
        };
        assert_eq!(r.callbacks.as_ref().unwrap().counts, Some(callbacks(2, 1, 1, 1)), "{r:?}");
        assert_eq!(r3.callbacks.as_ref().unwrap().counts, Some(callbacks(3, 2, 1, 2)), "{r3:?}");
        let hud = r.hud_outbox.as_ref().unwrap();
        assert_eq!((hud.pending, hud.oldest_created_at_ms, &hud.error), (3, Some(now - 60_000), &None), "{hud:?}");
        let age = hud.oldest_age_ms.unwrap();
        assert!((60_000..120_000).contains(&age), "{hud:?}");
        let checks = r.check_runs.as_ref().unwrap();
        assert_eq!((checks.pending, checks.more, checks.oldest_created_at_ms), (0, false, None), "{checks:?}");
        // One check run waiting for GitHub (a label added after the job ran).
        let target = crcr_core::checks::CheckRunTarget {
            upstream: repo("pytorch/pytorch"),
            head_sha: crcr_core::domain::HeadSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap(),
            pr_number: Some(1),
        };
        let running =
            w.jobs.jobs(&running_delivery).await.unwrap().into_iter().find(|j| j.key.job_name == "running").unwrap();
        assert!(w.jobs.advance_check_run(&target.item(&running)).await.unwrap());
        let r2 = status(&[("dispatch", &*w.queue)], &*w.store, Some(&*w.jobs), &SystemClock, &StatusOptions::default())
            .await;
        let checks = r2.check_runs.as_ref().unwrap();
        assert_eq!((checks.pending, checks.oldest_created_at_ms), (1, Some(running.updated_at_ms)), "{checks:?}");
        assert!(crcr_oncall::status::render_status(&r2).contains("check runs: 1 pending for GitHub, oldest"));
        let without_jobs = status(&[("dispatch", &*w.queue)], &*w.store, None, &SystemClock, &wide).await;
        assert_eq!((without_jobs.callbacks, without_jobs.hud_outbox, without_jobs.check_runs), (None, None, None));
        assert_eq!(stats(&*w.queue, QueueSide::DeadLetter).await.visible, 2, "status released its DLQ peek");
        let text = crcr_oncall::status::render_status(&r);
        assert!(text.contains("dispatched 2  failed 1  paused 0  pending 2 (in progress 1, waiting 1)"), "{text}");
        assert!(text.contains("in_progress 2  completed 1  timed out 1  lifecycle violations 1"), "{text}");
        assert!(text.contains("HUD outbox: 3 pending, oldest 1m0"), "{text}");
    }

    /// Jobs as the reconciler leaves them, relative to `now` (ms): in the
    /// last hour 2 IN_PROGRESS and 1 COMPLETED callbacks applied, 1 job
    /// timed out, 1 violation; 3 HUD records pending (oldest 60 s old).
    /// Between 1 h and 3 h ago: 1 more job started and completed, 1 more
    /// violation.
    /// Returns the delivery of the job still running.
    async fn seed_jobs(jobs: &dyn JobStore, now: i64) -> DeliveryId {
        let (d1, d2) = (delivery(), delivery());
        let running = job(jobs, &d1, "running", now - 60_000, None).await;
        let done = job(jobs, &d1, "done", now - 120_000, Some((now - 30_000, "success"))).await;
        let zombie = job(jobs, &d2, "zombie", now - 7 * 3_600_000, Some((now - 10_000, "timed_out"))).await;
        let old = job(jobs, &d2, "old", now - 150 * 60_000, Some((now - 120 * 60_000, "failure"))).await;
        assert_eq!(running.len() + done.len() + zombie.len() + old.len(), 7);
        jobs.mark_outbox(&done[0], HudSync::Sent, None, None, now).await.unwrap();
        jobs.mark_outbox(&zombie[0], HudSync::Rejected, Some("422"), None, now).await.unwrap();
        for id in &old {
            jobs.mark_outbox(id, HudSync::Sent, None, None, now).await.unwrap();
        }
        for at in [now - 5_000, now - 2 * 3_600_000 + 60_000] {
            let v = Violation {
                delivery_id: d2.clone(),
                repo: repo("org/a"),
                reason: "repeated completed".into(),
                at_ms: at,
            };
            jobs.record_violation(&v).await.unwrap();
        }
        d1
    }

    /// Applies IN_PROGRESS at `started` and, when given, COMPLETED at
    /// `done.0` with conclusion `done.1`, each with its HUD outbox item;
    /// returns the outbox ids.
    async fn job(
        jobs: &dyn JobStore,
        d: &DeliveryId,
        name: &str,
        started: i64,
        done: Option<(i64, &str)>,
    ) -> Vec<String> {
        let key =
            JobKey { delivery_id: d.clone(), repo: repo("org/a"), run_id: 7, run_attempt: 1, job_name: name.into() };
        let mut rec = JobRecord {
            key,
            state: JobState::InProgress,
            level: Level::L2,
            dispatched_at_ms: Some(started - 1_000),
            in_progress_at_ms: Some(started),
            completed_at_ms: None,
            conclusion: None,
            queue_time_s: Some(1.0),
            execution_time_s: None,
            workflow_name: None,
            url: None,
            updated_at_ms: started,
        };
        let outbox = |rec: &JobRecord| OutboxItem {
            id: OutboxItem::id_for(&rec.key, rec.state),
            delivery_id: d.clone(),
            body: serde_json::json!({"job": name}),
            sync: HudSync::Pending,
            attempts: 0,
            last_error: None,
            created_at_ms: rec.updated_at_ms,
            updated_at_ms: rec.updated_at_ms,
            next_attempt_at_ms: rec.updated_at_ms,
        };
        let first = outbox(&rec);
        assert!(jobs.transition(None, &rec, &first).await.unwrap());
        let mut ids = vec![first.id];
        if let Some((at, conclusion)) = done {
            rec.state = JobState::Completed;
            rec.completed_at_ms = Some(at);
            rec.conclusion = Some(conclusion.into());
            rec.updated_at_ms = at;
            let second = outbox(&rec);
            assert!(jobs.transition(Some(JobState::InProgress), &rec, &second).await.unwrap());
            ids.push(second.id);
        }
        ids
    }
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::Kind::Sqlite).await
                }
            )*
        }
        mod moto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::Kind::Moto).await
                }
            )*
        }
    };
}

both!(
    list_describes_and_releases_everything,
    list_filters,
    show_finds_by_either_id_with_history,
    replay_dry_run_and_filtered,
    purge_dry_run_and_filtered,
    replay_after_outage_dispatches_only_the_rest,
    crash_between_send_and_delete_duplicates_nothing,
    status_matches_queue_contents,
);
