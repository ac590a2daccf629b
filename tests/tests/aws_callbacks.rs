//! Callbacks on the AWS path, on moto, through exactly what the Lambda
//! functions run (`crcr_aws::wiring`): a signed webhook through the
//! ingest function's router → dispatch queue (SQS) → the dispatcher
//! function's batch handler → dispatch records (DynamoDB); then
//! `in_progress` and `completed` callbacks with OIDC tokens of a local
//! issuer through the same router → reconcile queue → the reconciler
//! function's handler (SQS batches, then a scheduled sweep) → job records
//! and HUD outbox (DynamoDB) → a local HUD. Also: a replayed `jti` with
//! another body, the rate limit shared through the kv table, a poison
//! reconcile message, unknown scheduled tasks, and `crcr trace --aws`; and
//! upstream events (`upstream_v1` on the reconcile queue): a device label
//! added after an L3 job failed backfills its upstream check run (found by
//! head SHA through the `by_head_sha` GSI), re-requesting that check run
//! re-runs the downstream run's failed jobs.
//! Needs moto's server (scripts/test starts it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use axum::Router;
use crcr_aws::wiring::{
    dispatcher_function, reconciler_function, sqs_batch_response, ReconcilerEventError, ReconcilerFunction,
};
use crcr_aws::SqsQueue;
use crcr_core::config::{AwsResources, Env};
use crcr_core::domain::DeliveryId;
use crcr_core::lifecycle::{HudSync, JobState};
use crcr_core::message::QueueMessage;
use crcr_core::ports::{
    Clock, DispatchStatus, ManualClock, QueueInspect, QueueReceive, QueueSend, QueueSettle, QueueSide, ReceivedMessage,
    SystemClock,
};
use crcr_core::signature::WebhookSecret;
use crcr_core::upstream::{UpstreamEvent, UpstreamV1};
use crcr_ingest::{ingest_router, ingest_router_on_clock};
use crcr_oncall::trace::TraceStores;
use crcr_standin::issuer::{Hud, Issuer};
use crcr_standin::moto::{self, Resources};
use crcr_standin::{HookDeliverySeed, StandIn, StandInOptions};
use crcr_tests::{fixture, uuid, UPSTREAM};
use serde_json::{json, Value};
use tower::ServiceExt;

const ALLOWLIST: &str = "L1:\n  - org1/one\nL2:\n  - org2/two\nL3:\n  gpu:\n    org3/three: [alice]\n";
const SECRET: &str = "aws-callbacks";
const RATE_PER_MIN: u32 = 3;

/// Everything one test runs against.
struct World {
    gh: StandIn,
    issuer: Issuer,
    hud: Hud,
    res: Resources,
    sdk: aws_config::SdkConfig,
    /// The ingest function's router.
    ingest: Router,
    reconciler: ReconcilerFunction,
    /// Holds the allowlist file; removed on drop.
    dir: std::path::PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The environment the Lambda functions would get (infra/modules/crcr/lambda.tf
/// plus the secret's values), pointing at the stand-ins and moto's resources.
fn lambda_env(gh: &StandIn, issuer: &Issuer, hud: &Hud, res: &Resources, allowlist: &std::path::Path) -> Env<'static> {
    let mut vars: HashMap<String, String> = res.env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    for (k, v) in [
        ("CRCR_UPSTREAM_REPO", UPSTREAM.to_owned()),
        ("CRCR_WEBHOOK_SECRET", SECRET.to_owned()),
        ("CRCR_GITHUB_APP_ID", gh.app_id().to_string()),
        ("CRCR_GITHUB_APP_PRIVATE_KEY", gh.private_key_pem()),
        ("CRCR_GITHUB_API_URL", gh.base_url()),
        ("CRCR_ALLOWLIST_FILE", allowlist.display().to_string()),
        ("CRCR_OIDC_GITHUB_ISSUER", issuer.url.clone()),
        ("CRCR_HUD_URL", hud.url.clone()),
        ("CRCR_HUD_BOT_KEY", "hud-bot-key".to_owned()),
        ("CRCR_CALLBACK_RATE_PER_MIN", RATE_PER_MIN.to_string()),
        ("CRCR_MAX_RECEIVE_COUNT", "3".to_owned()),
    ] {
        vars.insert(k.to_owned(), v);
    }
    Env::new(move |k| vars.get(k).cloned())
}

/// `POST /github/callback` with `Bearer <token>` and `body` through `router`:
/// status, headers and the JSON answer.
async fn call_via(router: &Router, token: &str, body: &[u8]) -> (u16, http::HeaderMap, Value) {
    let req = http::Request::post("/github/callback")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let (status, headers) = (res.status().as_u16(), res.headers().clone());
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn world() -> World {
    let sdk = moto::sdk().await;
    let res = Resources::create(&sdk, 3).await;
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for r in ["org1/one", "org2/two", "org3/three"] {
        gh.install(r);
    }
    let (issuer, hud) = (Issuer::start().await, Hud::start().await);
    let dir = std::env::temp_dir().join(format!("crcr-aws-callbacks-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    let allowlist = dir.join("allowlist.yml");
    std::fs::write(&allowlist, ALLOWLIST).unwrap();
    let env = lambda_env(&gh, &issuer, &hud, &res, &allowlist);
    let ingest = ingest_router(&env, &sdk).expect("ingest function wiring");
    let reconciler = reconciler_function(&env, &sdk).expect("reconciler function wiring");
    World { gh, issuer, hud, res, sdk, ingest, reconciler, dir }
}

impl World {
    fn env(&self) -> Env<'static> {
        lambda_env(&self.gh, &self.issuer, &self.hud, &self.res, &self.dir.join("allowlist.yml"))
    }

    fn reconcile_queue(&self) -> SqsQueue {
        let sqs = aws_sdk_sqs::Client::new(&self.sdk);
        SqsQueue::new(sqs, self.res.reconcile_queue_url.clone(), self.res.reconcile_dlq_url.clone())
    }

    /// A signed push through the ingest router, then the dispatcher function
    /// until the dispatch queue is empty. Returns the delivery id.
    async fn dispatched_push(&self) -> String {
        self.dispatched("push", fixture("push")).await
    }

    /// A signed `event` webhook with `body` through the ingest router; its
    /// delivery id and answer.
    async fn webhook(&self, event: &str, body: Vec<u8>) -> (String, u16, Value) {
        let delivery = uuid();
        let req = http::Request::post("/github/webhook")
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", &delivery)
            .header("X-Hub-Signature-256", WebhookSecret::new(SECRET).sign(&body))
            .body(axum::body::Body::from(body))
            .unwrap();
        let res = self.ingest.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (delivery, status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// [`World::webhook`] (answered 202), then the dispatcher function until
    /// the dispatch queue is empty. Returns the delivery id.
    async fn dispatched(&self, event: &str, body: Vec<u8>) -> String {
        let (delivery, status, answer) = self.webhook(event, body).await;
        assert_eq!(status, 202, "{answer}");
        let (dispatcher, queue) = dispatcher_function(&self.env(), &self.sdk).expect("dispatcher function wiring");
        while let Some((event, batch)) = lambda_event(queue.as_ref()).await {
            let event: SqsEvent = serde_json::from_value(event).unwrap();
            let response = sqs_batch_response(dispatcher.as_ref(), queue.as_ref(), event).await;
            settle(queue.as_ref(), &batch, &serde_json::to_value(response).unwrap()).await;
        }
        delivery
    }

    /// Runs the reconciler function on the reconcile queue until it is empty.
    async fn reconcile(&self) {
        let queue = self.reconcile_queue();
        while let Some((event, batch)) = lambda_event(&queue).await {
            let response = self.reconciler.handle(event).await.expect("SQS batch handled");
            settle(&queue, &batch, &response).await;
        }
    }

    /// `POST /github/callback` through the ingest router.
    async fn call(&self, token: &str, body: &[u8]) -> (u16, http::HeaderMap, Value) {
        call_via(&self.ingest, token, body).await
    }

    async fn reconcile_depth(&self) -> u64 {
        self.reconcile_queue().depth(QueueSide::Source).await.unwrap()
    }

    /// Expects exactly one message on the reconcile queue, an `upstream_v1`;
    /// runs the reconciler function on it (one SQS batch) and returns it.
    async fn reconcile_one_upstream(&self) -> UpstreamV1 {
        let queue = self.reconcile_queue();
        let (event, batch) = lambda_event(&queue).await.expect("a message on the reconcile queue");
        assert_eq!(batch.len(), 1, "{batch:?}");
        let message = match QueueMessage::decode(&batch[0].body) {
            Ok(QueueMessage::UpstreamV1(m)) => m,
            other => panic!("not an upstream_v1 message: {other:?}"),
        };
        let response = self.reconciler.handle(event).await.expect("SQS batch handled");
        settle(&queue, &batch, &response).await;
        assert_eq!(self.reconcile_depth().await, 0);
        message
    }
}

/// Receives up to 10 messages as the event source mapping would and builds
/// the Lambda SQS event for them; `None` when the queue is empty.
async fn lambda_event(queue: &SqsQueue) -> Option<(Value, Vec<ReceivedMessage>)> {
    let batch = queue.receive(QueueSide::Source, 10, Duration::from_secs(30), Duration::from_secs(1)).await.unwrap();
    if batch.is_empty() {
        assert_eq!(queue.depth(QueueSide::Source).await.unwrap(), 0, "messages left in flight");
        return None;
    }
    let records: Vec<Value> = batch
        .iter()
        .map(|m| {
            json!({
                "messageId": m.message_id, "receiptHandle": m.receipt, "body": m.body,
                "attributes": {"ApproximateReceiveCount": m.receive_count.to_string(),
                               "SentTimestamp": m.sent_at_ms.to_string()},
                "messageAttributes": {}, "eventSource": "aws:sqs", "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:test"
            })
        })
        .collect();
    Some((json!({ "Records": records }), batch))
}

/// What Lambda does with a partial batch response: deletes every message
/// not listed in `batchItemFailures` (the listed ones reappear).
async fn settle(queue: &SqsQueue, batch: &[ReceivedMessage], response: &Value) {
    let failed: Vec<&str> = response["batchItemFailures"]
        .as_array()
        .expect("a partial batch response")
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    assert!(failed.is_empty(), "messages failed: {failed:?} ({response})");
    for m in batch.iter().filter(|m| !failed.contains(&m.message_id.as_str())) {
        let _ = queue.delete(QueueSide::Source, &m.receipt).await;
    }
}

fn body(delivery: &str, status: &str, conclusion: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_type": "push", "delivery_id": delivery, "payload": {"ref": "refs/heads/main"},
        "workflow": {"schema_version": "1", "status": status, "conclusion": conclusion, "name": "CI",
            "url": "https://github.com/org2/two/actions/runs/123", "run_id": "123", "run_attempt": "1",
            "job_name": "build", "check_run_id": "456", "started_at": null, "completed_at": null}
    }))
    .unwrap()
}

/// A callback of job `build` of run `run_id` of org3/three for pull-request delivery `delivery`.
fn l3_callback(delivery: &str, run_id: u64, status: &str, conclusion: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_type": "pull_request", "delivery_id": delivery, "payload": {"number": 2},
        "workflow": {"schema_version": "1", "status": status, "conclusion": conclusion, "name": "CI",
            "url": format!("https://github.com/org3/three/actions/runs/{run_id}"), "run_id": run_id.to_string(),
            "run_attempt": "1", "job_name": "build", "check_run_id": "9", "started_at": null, "completed_at": null}
    }))
    .unwrap()
}

fn aws_for_trace(w: &World) -> AwsResources {
    AwsResources {
        dispatch_table: Some(w.res.dispatch_table.clone()),
        jobs_table: Some(w.res.jobs_table.clone()),
        endpoint_url: Some(moto::url()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_through_the_lambda_wiring_reach_hud_and_trace() {
    let w = world().await;
    // GIVEN a push dispatched to every installed allowlisted repository
    let delivery = w.dispatched_push().await;
    let id = DeliveryId::parse(&delivery).unwrap();
    let stores = TraceStores::aws(&aws_for_trace(&w)).await.unwrap();
    let records = stores.dispatches.records(&id).await.unwrap();
    let targets: Vec<_> = records.iter().map(|r| (r.target.key().to_owned(), r.status)).collect();
    assert_eq!(
        targets,
        [
            ("org1/one".to_owned(), DispatchStatus::Dispatched),
            ("org2/two".to_owned(), DispatchStatus::Dispatched),
            ("org3/three".to_owned(), DispatchStatus::Dispatched),
        ]
    );

    // WHEN org2/two's job reports in_progress, then completed, each reconciled from the queue
    let started = body(&delivery, "in_progress", None);
    let started_token = w.issuer.token("org2/two", "22");
    let (s, _, a) = w.call(&started_token, &started).await;
    assert_eq!(s, 202, "{a}");
    w.reconcile().await;
    let done = body(&delivery, "completed", Some("success"));
    let (s, _, a) = w.call(&w.issuer.token("org2/two", "22"), &done).await;
    assert_eq!(s, 202, "{a}");
    w.reconcile().await;

    // THEN the job is completed in DynamoDB and, after a scheduled sweep, HUD has exactly two records
    let jobs = stores.jobs.jobs(&id).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!((jobs[0].state, jobs[0].conclusion.as_deref()), (JobState::Completed, Some("success")));
    assert!(w.hud.received().is_empty(), "HUD is synced by the sweep, not by the callback");
    let report = w.reconciler.handle(json!({"task": "sweep"})).await.expect("sweep");
    assert_eq!(report["report"]["hud"]["sent"], 2, "{report}");
    let got = w.hud.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|(status, key, _)| *status == 200 && key == "hud-bot-key"));
    let (first, second) = (&got[0].2, &got[1].2);
    for r in [first, second] {
        assert_eq!(r["trusted"]["verified_repo"], "org2/two");
        assert_eq!(r["trusted"]["downstream_repo_level"], "L2");
    }
    assert!(first["trusted"]["ci_metrics"]["queue_time"].as_f64().unwrap() >= 0.0, "{first}");
    assert!(first["trusted"]["ci_metrics"]["execution_time"].is_null(), "{first}");
    assert!(second["trusted"]["ci_metrics"]["execution_time"].as_f64().unwrap() >= 0.0, "{second}");
    assert_eq!(second["untrusted"]["callback_payload"], serde_json::from_slice::<Value>(&done).unwrap());
    assert_eq!(jobs[0].queue_time_s, first["trusted"]["ci_metrics"]["queue_time"].as_f64());
    assert_eq!(jobs[0].execution_time_s, second["trusted"]["ci_metrics"]["execution_time"].as_f64());
    let again = w.reconciler.handle(json!({"task": "sweep"})).await.expect("sweep");
    assert_eq!(again["report"]["hud"]["sent"], 0, "sent once: {again}");
    assert_eq!(w.hud.received().len(), 2);

    // AND `crcr trace --aws` shows the chain
    let t = stores.trace(&id).await.unwrap();
    assert_eq!((t.dispatches.len(), t.jobs.len(), t.hud.len()), (3, 1, 2));
    assert!(t.hud.iter().all(|h| h.sync == HudSync::Sent));
    let text = t.render();
    for needle in ["org2/two", "L2", "dispatched", "completed (success)", "queue ", "sent"] {
        assert!(text.contains(needle), "trace lacks {needle:?}:\n{text}");
    }
    let as_json = serde_json::to_value(&t).unwrap();
    assert_eq!(as_json["jobs"][0]["state"], "completed");
    let missing = TraceStores::aws(&AwsResources { jobs_table: None, ..aws_for_trace(&w) }).await.err().unwrap();
    assert!(missing.to_string().contains("CRCR_JOBS_TABLE"), "{missing}");

    // AND a replayed jti with another body is refused and nothing is enqueued
    let (s, _, a) = w.call(&started_token, &done).await;
    assert_eq!((s, a["error"].as_str()), (401, Some("replay")), "{a}");
    assert_eq!(w.reconcile_depth().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_poison_messages_and_scheduled_tasks() {
    let w = world().await;
    let delivery = w.dispatched_push().await;

    // The rate limit: RATE_PER_MIN callbacks of org3/three per minute window
    // (counted in the kv table, before the lifecycle check), then 429. The
    // ingest instances here read a clock pinned 1 s into the next minute
    // (tokens minted now are valid on it), so every call falls in one window.
    let now = SystemClock.now_ms();
    let pinned: Arc<dyn Clock> = Arc::new(ManualClock::new((now / 60_000 + 1) * 60_000 + 1_000));
    let ingest = ingest_router_on_clock(&w.env(), &w.sdk, pinned.clone()).unwrap();
    let completed = body(&delivery, "completed", Some("success")); // without in_progress: 409, but counted
    for _ in 0..RATE_PER_MIN {
        let (s, _, a) = call_via(&ingest, &w.issuer.token("org3/three", "33"), &completed).await;
        assert_eq!(s, 409, "{a}");
    }
    let (s, headers, a) = call_via(&ingest, &w.issuer.token("org3/three", "33"), &completed).await;
    assert_eq!(s, 429, "{a}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 59, "the window's 59 s left");
    // Another instance of the ingest function shares the count (same kv table).
    let other = ingest_router_on_clock(&w.env(), &w.sdk, pinned).unwrap();
    let req = http::Request::post("/github/callback")
        .header("authorization", format!("Bearer {}", w.issuer.token("org3/three", "33")))
        .body(axum::body::Body::from(completed.clone()))
        .unwrap();
    assert_eq!(other.oneshot(req).await.unwrap().status(), 429);
    assert_eq!(w.reconcile_depth().await, 0, "nothing enqueued");

    // A poison message on the reconcile queue ends in its DLQ with the reason.
    let queue = w.reconcile_queue();
    queue.send("{\"kind\": \"not a relay message\"}").await.unwrap();
    w.reconcile().await;
    let dead = queue.receive(QueueSide::DeadLetter, 10, Duration::from_secs(30), Duration::from_secs(1)).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body, "{\"kind\": \"not a relay message\"}");
    let reason = dead[0].dead_letter_reason.as_deref().unwrap_or_default();
    assert!(reason.contains("not JSON with a `type`"), "{reason}");

    // Each function names the variable it misses.
    for (var, who) in [("CRCR_KV_TABLE", "ingest"), ("CRCR_RECONCILE_QUEUE_URL", "ingest")] {
        let full = w.env();
        let e = ingest_router(&Env::new(move |k| if k == var { None } else { full.opt(k) }), &w.sdk).err().unwrap();
        assert!(e.to_string().contains(var) && e.to_string().contains(who), "{e}");
    }
    for var in ["CRCR_RECONCILE_DLQ_URL", "CRCR_JOBS_TABLE", "CRCR_KV_TABLE"] {
        let full = w.env();
        let without = Env::new(move |k| if k == var { None } else { full.opt(k) });
        let e = reconciler_function(&without, &w.sdk).err().unwrap();
        assert!(e.to_string().contains(var) && e.to_string().contains("reconciler"), "{e}");
    }

    // Scheduled tasks: sweep works; redeliver asks GitHub (the stand-in) to
    // redeliver the failed delivery only, and its cursor lands in the kv
    // table; anything else is named.
    assert!(w.reconciler.handle(json!({"task": "sweep"})).await.is_ok());
    let recent = std::time::SystemTime::now() - Duration::from_secs(600);
    w.gh.add_hook_delivery(HookDeliverySeed::new("guid-ok", "push", 202, recent));
    let failed = w.gh.add_hook_delivery(HookDeliverySeed::new("guid-failed", "push", 502, recent));
    let out = w.reconciler.handle(json!({"task": "redeliver"})).await.unwrap();
    assert_eq!(out["report"]["redelivered"], 1, "{out}");
    let asked: Vec<u64> = w.gh.redelivery_requests().iter().map(|r| r.delivery_id).collect();
    assert_eq!(asked, vec![failed]);
    assert!(w.reconciler.state.get("redeliver").await.unwrap().is_some(), "cursor kept in the kv table");
    w.reconciler.handle(json!({"task": "redeliver"})).await.unwrap();
    assert_eq!(w.gh.redelivery_requests().len(), 1, "a second run asks for nothing new");
    let e = w.reconciler.handle(json!({"task": "vacuum"})).await.unwrap_err();
    assert!(e.to_string().contains("\"vacuum\""), "{e}");
    let e = w.reconciler.handle(json!({"detail-type": "Scheduled Event"})).await.unwrap_err();
    assert!(matches!(e, ReconcilerEventError::UnknownEvent(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_after_the_l3_job_failed_backfills_its_check_run_and_a_rerequest_reruns_the_failed_jobs() {
    const RUN: u64 = 555;
    let w = world().await;
    w.gh.install(UPSTREAM);
    // GIVEN a pull request opened without labels, dispatched by the dispatcher function
    let opened = fixture("pull_request.opened");
    let opened_json: Value = serde_json::from_slice(&opened).unwrap();
    assert_eq!(opened_json["pull_request"]["labels"], json!([]));
    let head_sha =
        crcr_core::domain::HeadSha::parse(opened_json["pull_request"]["head"]["sha"].as_str().unwrap()).unwrap();
    let delivery = w.dispatched("pull_request", opened).await;
    let id = DeliveryId::parse(&delivery).unwrap();
    let stores = TraceStores::aws(&aws_for_trace(&w)).await.unwrap();
    let for_commit = stores.dispatches.records_for_commit(&head_sha, 50).await.unwrap();
    let l3: Vec<_> = for_commit.iter().filter(|r| r.target.key() == "org3/three").collect();
    assert_eq!(l3.len(), 1, "found by head SHA (GSI by_head_sha): {for_commit:?}");
    assert_eq!(
        (l3[0].delivery_id.clone(), l3[0].status, l3[0].meta.check_run, l3[0].meta.device.as_deref()),
        (id.clone(), DispatchStatus::Dispatched, false, Some("gpu"))
    );

    // AND its L3 job ran and failed, each callback reconciled from the queue
    for (status, conclusion) in [("in_progress", None), ("completed", Some("failure"))] {
        let (s, _, a) =
            w.call(&w.issuer.token("org3/three", "33"), &l3_callback(&delivery, RUN, status, conclusion)).await;
        assert_eq!(s, 202, "{a}");
        w.reconcile().await;
    }
    let jobs = stores.jobs.jobs(&id).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!((jobs[0].state, jobs[0].conclusion.as_deref()), (JobState::Completed, Some("failure")));
    let swept = w.reconciler.handle(json!({"task": "sweep"})).await.expect("sweep");
    assert!(w.gh.check_runs(UPSTREAM).is_empty(), "no label yet: no check run ({swept})");

    // WHEN the device's label is added (an event only the reconciler acts on)
    let mut labeled: Value = serde_json::from_slice(&fixture("pull_request.labeled")).unwrap();
    labeled["label"]["name"] = json!("ciflow/crcr/gpu");
    labeled["pull_request"]["head"]["sha"] = json!(head_sha);
    labeled["repository"]["full_name"] = json!(UPSTREAM);
    let (labeled_delivery, s, a) = w.webhook("pull_request", serde_json::to_vec(&labeled).unwrap()).await;
    assert_eq!(s, 202, "{a}");
    assert_eq!(w.reconcile_depth().await, 1, "one upstream_v1 message");
    let message = w.reconcile_one_upstream().await;
    assert_eq!(message.delivery_id, DeliveryId::parse(&labeled_delivery).unwrap());
    assert_eq!(
        message.event,
        UpstreamEvent::Labeled { pr_number: 2, head_sha: head_sha.clone(), label: "ciflow/crcr/gpu".into() }
    );
    let swept = w.reconciler.handle(json!({"task": "sweep"})).await.expect("sweep");

    // THEN the upstream has exactly one check run for the job, completed as it ended
    let runs = w.gh.check_runs(UPSTREAM);
    assert_eq!(runs.len(), 1, "{runs:?} ({swept})");
    let run = runs[0].clone();
    assert_eq!(
        (run.name.as_str(), run.head_sha.as_str(), run.status.as_str(), run.conclusion.as_deref()),
        ("crcr/org3/three/CI/build", head_sha.as_str(), "completed", Some("failure"))
    );
    w.reconciler.handle(json!({"task": "sweep"})).await.expect("sweep");
    assert_eq!(w.gh.count("POST", &format!("/repos/{UPSTREAM}/check-runs")), 1, "created once");

    // WHEN its check run is re-requested on the upstream
    w.gh.add_workflow_run("org3/three", RUN, "completed", Some("failure"));
    let mut rerequested: Value = serde_json::from_slice(&fixture("check_run.rerequested")).unwrap();
    rerequested["repository"]["full_name"] = json!(UPSTREAM);
    rerequested["check_run"]["id"] = json!(run.id);
    rerequested["check_run"]["name"] = json!(run.name);
    rerequested["check_run"]["external_id"] = json!(run.external_id);
    rerequested["check_run"]["head_sha"] = json!(run.head_sha);
    let (_, s, a) = w.webhook("check_run", serde_json::to_vec(&rerequested).unwrap()).await;
    assert_eq!(s, 202, "{a}");
    let message = w.reconcile_one_upstream().await;
    assert!(matches!(message.event, UpstreamEvent::CheckRunRerequested { check_run_id, .. } if check_run_id == run.id));

    // THEN the failed jobs of that downstream run are re-run, once
    let calls = w.gh.run_requests("org3/three");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!((calls[0].kind.as_str(), calls[0].run_id, calls[0].status), ("rerun-failed-jobs", RUN, 201));
}
