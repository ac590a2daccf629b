//! The HUD outbox against the HUD stand-in that keeps torchci's rules
//! (`crcr_standin::hud`), on SQLite and on DynamoDB (moto), with an
//! injected clock: one record HUD keeps refusing costs one request per
//! backoff step and never delays the others; a job's records reach HUD in
//! lifecycle order after an outage; parked records go back with a requeue.

use std::sync::Arc;
use std::time::Duration;

use crcr_clients::hud::HudClient;
use crcr_core::domain::{DeliveryId, Level, RepoFullName};
use crcr_core::hud::{sync_outbox, HudRetryPolicy};
use crcr_core::lifecycle::{HudSync, JobKey, JobRecord, JobState, JobStore, OutboxItem};
use crcr_core::ports::{Clock, ManualClock};
use crcr_standin::hud::{Hud, DEFAULT_BOT_KEY};
use serde_json::{json, Value};

const T0: i64 = 1_780_000_000_000;

/// A fresh job store: a temp SQLite file, or a new table on moto.
async fn store(backend: &str) -> (Arc<dyn JobStore>, Option<tempfile_path::Guard>) {
    match backend {
        "sqlite" => {
            let guard = tempfile_path::Guard::new();
            let db = crcr_embedded::sqlite::Db::open(&guard.0).expect("open SQLite");
            (Arc::new(crcr_embedded::sqlite::SqliteJobStore::new(db)), Some(guard))
        }
        _ => {
            let sdk = crcr_standin::moto::sdk().await;
            let table = format!("crcr-hud-{}", uuid::Uuid::new_v4().simple());
            crcr_standin::moto::relay_table(&sdk, "jobs", &table).await;
            (Arc::new(crcr_aws::DynamoJobStore::new(aws_sdk_dynamodb::Client::new(&sdk), table)), None)
        }
    }
}

mod tempfile_path {
    /// A database path in the temp dir, removed (with its WAL files) on drop.
    pub struct Guard(pub std::path::PathBuf);
    impl Guard {
        pub fn new() -> Self {
            Self(std::env::temp_dir().join(format!("crcr-hud-{}.db", uuid::Uuid::new_v4().simple())))
        }
    }
    impl Drop for Guard {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
            }
        }
    }
}

fn key(delivery: &DeliveryId, job: &str) -> JobKey {
    JobKey {
        delivery_id: delivery.clone(),
        repo: RepoFullName::parse("Ascend/pytorch").unwrap(),
        run_id: 4242,
        run_attempt: 1,
        job_name: job.to_owned(),
    }
}

/// A callback body as pytorch/test-infra's callback action sends it
/// (`report_callback.py`).
fn action_body(k: &JobKey, status: &str, conclusion: Option<&str>) -> Value {
    json!({
        "event_type": "pull_request", "delivery_id": k.delivery_id.as_str(),
        "payload": {"action": "opened", "number": 7, "pull_request": {"number": 7, "head": {"sha": "ab".repeat(20)}}},
        "workflow": {"schema_version": "1", "status": status, "conclusion": conclusion, "name": "PyTorch CI",
            "url": "https://github.com/Ascend/pytorch/actions/runs/4242", "run_id": "4242", "run_attempt": "1",
            "job_name": k.job_name, "check_run_id": "99",
            "started_at": (status == "in_progress").then_some("2026-12-03T10:00:00Z"),
            "completed_at": (status == "completed").then_some("2026-12-03T10:30:00Z")}
    })
}

fn job(k: &JobKey, state: JobState, at: i64) -> JobRecord {
    JobRecord {
        key: k.clone(),
        state,
        level: Level::L2,
        dispatched_at_ms: Some(T0 - 1_000),
        in_progress_at_ms: Some(at),
        completed_at_ms: (state == JobState::Completed).then_some(at + 1),
        conclusion: (state == JobState::Completed).then(|| "success".to_owned()),
        queue_time_s: Some(1.0),
        execution_time_s: None,
        workflow_name: Some("PyTorch CI".into()),
        url: None,
        updated_at_ms: at,
    }
}

/// Writes the job's transition to `state` with the HUD record `callback`
/// (under `untrusted.callback_payload`, as `callback::hud_body` does).
async fn write(jobs: &dyn JobStore, k: &JobKey, state: JobState, callback: Value, at: i64) -> OutboxItem {
    let rec = job(k, state, at);
    let body = crcr_core::callback::hud_body(&rec, &callback);
    let item = OutboxItem::pending(k, state, body, at);
    let expected = (state == JobState::Completed).then_some(JobState::InProgress);
    assert!(jobs.transition(expected, &rec, &item).await.unwrap(), "transition to {state:?}");
    item
}

/// What crcr 0.1 wrote for a timed-out job (a relay note, no `workflow`):
/// torchci's handler answers 500 to it, forever.
fn legacy_timed_out(k: &JobKey) -> Value {
    json!({"relay_note": format!("no completed callback for {}; closed as timed_out", k.job_name)})
}

struct World {
    jobs: Arc<dyn JobStore>,
    hud: Hud,
    client: HudClient,
    clock: Arc<ManualClock>,
    _guard: Option<tempfile_path::Guard>,
}

async fn world(backend: &str) -> World {
    let (jobs, guard) = store(backend).await;
    let hud = Hud::start().await;
    let client = HudClient::new(&hud.url, DEFAULT_BOT_KEY.to_owned().into()).unwrap();
    World { jobs, hud, client, clock: Arc::new(ManualClock::new(T0)), _guard: guard }
}

impl World {
    /// One sweep's HUD pass at the clock's time.
    async fn pass(&self, policy: &HudRetryPolicy, batch: usize) -> crcr_core::hud::SyncReport {
        sync_outbox(self.jobs.as_ref(), &self.client, self.clock.as_ref(), policy, batch).await.unwrap()
    }
    /// HUD requests whose body is that of `item`.
    fn requests_for(&self, item: &OutboxItem) -> Vec<u16> {
        self.hud.received().into_iter().filter(|(_, _, b)| *b == item.body).map(|(s, _, _)| s).collect()
    }
}

/// One record HUD answers 500 to (torchci cannot read it) costs one request
/// per backoff step: over 10 minutes of sweeps every 5 s, 5 requests (at
/// 0, 30, 90, 210 and 450 s), then it is parked as failed with HUD's answer
/// after `max_attempts`, and no sweep sends it again.
async fn refused_record_backs_off_then_parks(backend: &str) {
    let w = world(backend).await;
    let d = DeliveryId::parse("7d1f0a52-0000-4000-8000-000000000001").unwrap();
    let k = key(&d, "build");
    write(w.jobs.as_ref(), &k, JobState::InProgress, action_body(&k, "in_progress", None), T0).await;
    let bad = write(w.jobs.as_ref(), &k, JobState::Completed, legacy_timed_out(&k), T0 + 1).await;
    let policy = HudRetryPolicy { max_attempts: 7, ..Default::default() };
    let step = Duration::from_secs(5);
    while w.clock.now_ms() < T0 + 600_000 {
        w.pass(&policy, 100).await;
        w.clock.advance(step);
    }
    let seen = w.requests_for(&bad);
    assert_eq!(seen, vec![500; 5], "requests for the refused record in 10 minutes");
    let item = w.jobs.outbox(&d).await.unwrap().into_iter().find(|o| o.id == bad.id).unwrap();
    assert_eq!((item.sync, item.attempts), (HudSync::Pending, 5));
    assert!(item.last_error.as_deref().is_some_and(|e| e.contains("500")), "{:?}", item.last_error);
    // Backoff 480 s, then 960 s: attempts 6 and 7, then parked (sweeps every minute from here).
    while w.clock.now_ms() < T0 + 3 * 3_600_000 {
        w.pass(&policy, 100).await;
        w.clock.advance(Duration::from_secs(60));
    }
    assert_eq!(w.requests_for(&bad).len(), 7, "no request after it was parked");
    let item = w.jobs.outbox(&d).await.unwrap().into_iter().find(|o| o.id == bad.id).unwrap();
    assert_eq!((item.sync, item.attempts), (HudSync::Failed, 7));
    assert!(item.last_error.unwrap().contains("Internal error writing to DynamoDB"), "HUD's own answer kept");
    assert_eq!(w.jobs.outbox_backlog().await.unwrap().failed, 1);
    assert_eq!(w.jobs.outbox_in(HudSync::Failed, 10).await.unwrap().len(), 1);
}

/// 100 records HUD refuses are pending; a normal job's two records written
/// after them reach HUD within two sweeps, in order, and HUD's row ends
/// completed. The refused ones cost one request each per backoff step.
async fn normal_records_pass_refused_ones(backend: &str) {
    let w = world(backend).await;
    for i in 0..100 {
        let d = DeliveryId::parse(&format!("0bad0000-0000-4000-8000-{i:012}")).unwrap();
        let k = key(&d, "zombie");
        let item = write(w.jobs.as_ref(), &k, JobState::InProgress, legacy_timed_out(&k), T0 + i).await;
        w.jobs.mark_outbox(&item.id, HudSync::Sent, None, None, T0 + i).await.unwrap();
        write(w.jobs.as_ref(), &k, JobState::Completed, legacy_timed_out(&k), T0 + 100 + i).await;
    }
    let policy = HudRetryPolicy::default();
    w.clock.advance(Duration::from_secs(1));
    let first = w.pass(&policy, 100).await;
    assert_eq!((first.sent, first.still_pending), (0, 100), "HUD refuses all 100 (500 each)");
    w.clock.advance(Duration::from_secs(2));
    let d = DeliveryId::parse("600d0000-0000-4000-8000-000000000001").unwrap();
    let k = key(&d, "test (default, 1, 1)");
    let now = w.clock.now_ms();
    write(w.jobs.as_ref(), &k, JobState::InProgress, action_body(&k, "in_progress", None), now).await;
    write(w.jobs.as_ref(), &k, JobState::Completed, action_body(&k, "completed", Some("success")), now + 1).await;
    w.clock.advance(Duration::from_millis(1));
    let mut sweeps = 0;
    let row_key = format!("Ascend/pytorch/{}/PyTorch CI/{}/99", d.as_str(), k.job_name);
    while w.hud.rows().get(&row_key).and_then(|r| r.get("status")).and_then(Value::as_str) != Some("completed") {
        sweeps += 1;
        assert!(sweeps <= 2, "the normal job's records took more than two sweeps");
        w.pass(&policy, 100).await;
        w.clock.advance(Duration::from_secs(2));
    }
    eprintln!("{backend}: a normal job's two records reached HUD in {sweeps} sweep(s) behind 100 refused records");
    let row = &w.hud.rows()[&row_key];
    assert_eq!(row["conclusion"], "success");
    assert_eq!(row["queue_time"], 1.0);
    let refused = w.hud.received().iter().filter(|(s, _, _)| *s == 500).count();
    assert_eq!(refused, 100, "no refused record was tried twice within its backoff");
}

/// HUD is down while a job goes in_progress and then completed; once HUD is
/// back, `in_progress` reaches it before `completed` and its row ends
/// `completed` with the conclusion. While `in_progress` backs off, the due
/// `completed` record waits (deferred, no attempt counted).
async fn outage_keeps_lifecycle_order(backend: &str) {
    let w = world(backend).await;
    let d = DeliveryId::parse("0a7a0000-0000-4000-8000-000000000001").unwrap();
    let k = key(&d, "build");
    let started = write(w.jobs.as_ref(), &k, JobState::InProgress, action_body(&k, "in_progress", None), T0).await;
    let policy = HudRetryPolicy::default();
    w.hud.set_outage(Some(503));
    w.pass(&policy, 100).await; // in_progress fails: next attempt at +30 s
    w.clock.advance(Duration::from_secs(5));
    let done = write(
        w.jobs.as_ref(),
        &k,
        JobState::Completed,
        action_body(&k, "completed", Some("failure")),
        w.clock.now_ms(),
    )
    .await;
    w.hud.set_outage(None); // HUD is back before in_progress is due again
    w.clock.advance(Duration::from_secs(1));
    let r = w.pass(&policy, 100).await;
    assert_eq!((r.sent, r.waiting), (0, 1), "completed waits for in_progress");
    assert!(w.requests_for(&done).is_empty(), "completed not sent before in_progress");
    let waiting = w.jobs.outbox(&d).await.unwrap().into_iter().find(|o| o.id == done.id).unwrap();
    assert_eq!(waiting.attempts, 0, "waiting is not an attempt");
    while w.requests_for(&done).is_empty() {
        assert!(w.clock.now_ms() < T0 + 120_000, "completed never sent");
        w.clock.advance(Duration::from_secs(2));
        w.pass(&policy, 100).await;
    }
    let order: Vec<Value> = w.hud.received().into_iter().filter(|(s, _, _)| *s == 200).map(|(_, _, b)| b).collect();
    assert_eq!(order, vec![started.body, done.body], "HUD took in_progress, then completed");
    let rows = w.hud.rows();
    let row = rows.values().next().unwrap();
    assert_eq!((row["status"].as_str(), row["conclusion"].as_str()), (Some("completed"), Some("failure")));
}

/// `crcr hud retry`'s library: a job's `in_progress` record parked as
/// failed while its `completed` record reached HUD is put back together
/// with the `completed` one, and the next passes send them in order, so
/// HUD's row ends `completed`. A dry run changes nothing; the filter by
/// repository and by delivery holds.
async fn retry_puts_parked_records_back_in_order(backend: &str) {
    use crcr_core::progress::NoProgress;
    use crcr_oncall::hud::{retry, HudRetryFilter};
    let w = world(backend).await;
    let d = DeliveryId::parse("0e7e0000-0000-4000-8000-000000000001").unwrap();
    let k = key(&d, "build");
    let started = write(w.jobs.as_ref(), &k, JobState::InProgress, action_body(&k, "in_progress", None), T0).await;
    let done =
        write(w.jobs.as_ref(), &k, JobState::Completed, action_body(&k, "completed", Some("success")), T0 + 1).await;
    let policy = HudRetryPolicy { max_attempts: 1, ..Default::default() };
    w.hud.answer(&[502]);
    w.clock.advance(Duration::from_secs(1));
    let r = w.pass(&policy, 100).await;
    assert_eq!((r.parked, r.sent), (1, 1), "in_progress parked at once, completed then sent");
    let rows = w.hud.rows();
    assert_eq!(rows.values().next().unwrap()["status"], "completed");

    let other = HudRetryFilter { repo: Some(RepoFullName::parse("org/other").unwrap()), ..Default::default() };
    let none = retry(w.jobs.as_ref(), &other, 100, false, w.clock.now_ms(), &mut NoProgress).await.unwrap();
    assert_eq!((none.matched, none.requeued), (0, 0));
    let dry =
        retry(w.jobs.as_ref(), &HudRetryFilter::default(), 100, true, w.clock.now_ms(), &mut NoProgress).await.unwrap();
    assert_eq!((dry.matched, dry.requeued), (1, 2), "the dry run names both records");
    assert_eq!(w.jobs.outbox_backlog().await.unwrap().failed, 1, "a dry run changes nothing");

    let filter = HudRetryFilter {
        delivery: Some(d.clone()),
        repo: Some(RepoFullName::parse("ascend/PyTorch").unwrap()),
        ..Default::default()
    };
    let report = retry(w.jobs.as_ref(), &filter, 100, false, w.clock.now_ms(), &mut NoProgress).await.unwrap();
    assert_eq!((report.matched, report.requeued, report.skipped), (1, 2, 0));
    assert_eq!(report.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec![&started.id, &done.id]);
    let before = w.hud.received().len();
    for _ in 0..3 {
        w.clock.advance(Duration::from_secs(2));
        w.pass(&policy, 100).await;
    }
    let sent: Vec<Value> =
        w.hud.received()[before..].iter().filter(|(s, _, _)| *s == 200).map(|(_, _, b)| b.clone()).collect();
    assert_eq!(sent, vec![started.body, done.body], "in_progress again, then completed again");
    let rows = w.hud.rows();
    assert_eq!(rows.values().next().unwrap()["status"], "completed");
    assert_eq!(w.jobs.outbox_backlog().await.unwrap(), Default::default());
}

/// A job's `in_progress` record requeued alone while HUD already has its
/// `completed` one (a `crcr hud retry` that stopped half-way): once the
/// older record is sent, the newer one goes again, so HUD's row ends
/// `completed`.
async fn an_older_record_sent_late_sends_the_newer_one_again(backend: &str) {
    let w = world(backend).await;
    let d = DeliveryId::parse("0f1d0000-0000-4000-8000-000000000001").unwrap();
    let k = key(&d, "build");
    let started = write(w.jobs.as_ref(), &k, JobState::InProgress, action_body(&k, "in_progress", None), T0).await;
    let done =
        write(w.jobs.as_ref(), &k, JobState::Completed, action_body(&k, "completed", Some("failure")), T0 + 1).await;
    let policy = HudRetryPolicy::default();
    w.clock.advance(Duration::from_secs(1));
    assert_eq!(w.pass(&policy, 100).await.sent, 2);
    assert!(w.jobs.requeue_outbox(&started.id, w.clock.now_ms()).await.unwrap());
    let mut passes = 0;
    loop {
        w.clock.advance(Duration::from_secs(2));
        w.pass(&policy, 100).await;
        passes += 1;
        if w.jobs.outbox_backlog().await.unwrap().pending == 0 {
            break;
        }
        assert!(passes < 5, "the records never settled");
    }
    let order: Vec<Value> = w.hud.received().into_iter().map(|(_, _, b)| b).collect();
    assert_eq!(order, vec![started.body.clone(), done.body.clone(), started.body, done.body]);
    let rows = w.hud.rows();
    assert_eq!(rows.values().next().unwrap()["status"], "completed");
}

/// HUD refusing the relay itself (401: a wrong or rotated bot key) is not
/// the record's fault: it stays pending, counted, instead of rejected.
async fn a_refused_bot_key_keeps_records_pending(backend: &str) {
    let w = world(backend).await;
    let d = DeliveryId::parse("0b070000-0000-4000-8000-000000000001").unwrap();
    let k = key(&d, "build");
    let item = write(w.jobs.as_ref(), &k, JobState::InProgress, action_body(&k, "in_progress", None), T0).await;
    let wrong = HudClient::new(&w.hud.url, "an-old-key".to_owned().into()).unwrap();
    let r = sync_outbox(w.jobs.as_ref(), &wrong, w.clock.as_ref(), &HudRetryPolicy::default(), 100).await.unwrap();
    assert_eq!((r.rejected, r.still_pending), (0, 1));
    assert_eq!(w.requests_for(&item), vec![401]);
    let now = w.jobs.outbox(&d).await.unwrap().remove(0);
    assert_eq!((now.sync, now.attempts), (HudSync::Pending, 1));
    assert!(now.last_error.unwrap().contains("401"));
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $case() { super::$case("sqlite").await })*
        }
        mod aws {
            $(#[tokio::test] async fn $case() { super::$case("aws").await })*
        }
    };
}

both!(
    refused_record_backs_off_then_parks,
    normal_records_pass_refused_ones,
    outage_keeps_lifecycle_order,
    retry_puts_parked_records_back_in_order,
    an_older_record_sent_late_sends_the_newer_one_again,
    a_refused_bot_key_keeps_records_pending,
);
