//! The AWS path end to end on moto: the ingest router (as the Lambda serves
//! it, called as a plain tower service) enqueues on SQS; the dispatcher
//! Lambda's batch function (`process_sqs_batch`) consumes it the way an SQS
//! event source mapping with `ReportBatchItemFailures` does; dispatch
//! records live in DynamoDB. Needs moto's server (scripts/test starts it).

use std::sync::Arc;
use std::time::Duration;

use crcr_aws::lambda::process_sqs_batch;
use crcr_aws::{DynamoBlobStore, DynamoDispatchStore, DynamoKv, SqsQueue};
use crcr_clients::github::{GitHubAppClient, GitHubAppConfig};
use crcr_core::allowlist::{Allowlist, AllowlistProvider};
use crcr_core::breaker::Breakers;
use crcr_core::budget::{DispatchPace, StoredDispatchBudget};
use crcr_core::dispatch::{Dispatcher, DispatcherSettings};
use crcr_core::domain::{DeliveryId, RepoFullName};
use crcr_core::ports::{
    DispatchStatus, DispatchStore, QueueInspect, QueueReceive, QueueSettle, QueueSide, SystemClock,
};
use crcr_core::signature::WebhookSecret;
use crcr_http::ingest::{router, IngestState};
use crcr_standin::moto;
use crcr_standin::{Fault, StandIn, StandInOptions};
use crcr_tests::{assert_dispatches_paced, dispatched_to, fixture, uuid, UPSTREAM};
use tower::ServiceExt;

/// Posts fixture `name` (a `pull_request` event) signed with `secret` to the
/// ingest router, expects 202, and returns its delivery id.
async fn post_pull_request(app: axum::Router, secret: &WebhookSecret, name: &str) -> String {
    let body = fixture(name);
    let delivery = uuid();
    let req = http::Request::post("/github/webhook")
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", &delivery)
        .header("X-Hub-Signature-256", secret.sign(&body))
        .body(axum::body::Body::from(body))
        .unwrap();
    assert_eq!(app.oneshot(req).await.unwrap().status(), 202);
    delivery
}

#[tokio::test]
async fn webhook_to_sqs_to_lambda_batches_to_github_with_dynamodb_records() {
    let sdk = moto::sdk().await;
    let res = moto::Resources::create(&sdk, 3).await;
    let (sqs, db) = (aws_sdk_sqs::Client::new(&sdk), aws_sdk_dynamodb::Client::new(&sdk));
    let (queue_url, dlq_url) = (res.dispatch_queue_url.clone(), res.dispatch_dlq_url.clone());
    let (dispatch_table, payload_table) = (res.dispatch_table.clone(), res.payload_table.clone());
    let queue = Arc::new(SqsQueue::new(sqs.clone(), queue_url.clone(), dlq_url.clone()));
    let store = Arc::new(DynamoDispatchStore::new(db.clone(), dispatch_table));
    let blobs = Arc::new(DynamoBlobStore::new(db.clone(), payload_table));

    // GIVEN a GitHub where org/flaky fails twice then works, and org/down is down for good
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for r in ["org/ok", "org/flaky", "org/down"] {
        gh.install(r);
    }
    gh.inject("org/flaky", Fault::ServerError(502));
    gh.inject("org/flaky", Fault::ServerError(502));
    for _ in 0..10 {
        gh.inject("org/down", Fault::ServerError(503));
    }
    let allowlist = Allowlist::parse("L1: [org/ok, org/flaky]\nL2: [org/down, org/not-installed]").unwrap();
    let github =
        Arc::new(GitHubAppClient::new(GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url())).unwrap());
    let kv: Arc<dyn crcr_core::ports::StateStore> =
        Arc::new(DynamoKv::new(db.clone(), res.kv_table.clone(), Arc::new(SystemClock)));
    let dispatcher = Dispatcher {
        store: store.clone(),
        blobs: blobs.clone(),
        github,
        budget: DispatchPace::stored(Some(DispatchPace::default()), kv.clone()),
        breakers: Arc::new(Breakers::new(kv, Default::default(), Arc::new(SystemClock))),
        paused_checks: None,
        allowlist: Arc::new(AllowlistProvider::fixed(allowlist)),
        clock: Arc::new(SystemClock),
        settings: DispatcherSettings {
            max_calls: 3,
            max_receive_count: 3,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            requeue_base_delay: Duration::from_millis(10),
            ..Default::default()
        },
    };

    // WHEN a signed pull_request.opened arrives at the ingest router
    let secret = WebhookSecret::new("aws-path");
    let app = router(Arc::new(IngestState {
        secret: secret.clone(),
        upstream: RepoFullName::parse(UPSTREAM).unwrap(),
        queue: queue.clone(),
        blobs,
        clock: Arc::new(SystemClock),
        max_body_bytes: 6 * 1024 * 1024,
        reconcile: None,
    }));
    let delivery = post_pull_request(app, &secret, "pull_request.opened").await;

    // AND the event source mapping delivers batches until the queue is empty
    // (successes deleted by Lambda, failures reappear after their visibility delay)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let batch = queue.receive(QueueSide::Source, 10, Duration::from_secs(2), Duration::from_secs(1)).await.unwrap();
        if batch.is_empty() && queue.depth(QueueSide::Source).await.unwrap() == 0 {
            break;
        }
        let failed = process_sqs_batch(&dispatcher, queue.as_ref(), batch.clone()).await;
        for m in batch.iter().filter(|m| !failed.contains(&m.message_id)) {
            let _ = queue.delete(QueueSide::Source, &m.receipt).await; // what Lambda does for successes
        }
        assert!(std::time::Instant::now() < deadline, "queue never drained");
    }

    // THEN org/ok and org/flaky got exactly one dispatch each; org/down's message is on the DLQ with its reason
    assert_eq!(dispatched_to(&gh, &delivery), ["org/flaky", "org/ok"]);
    let records = store.records(&DeliveryId::parse(&delivery).unwrap()).await.unwrap();
    let by: Vec<_> = records.iter().map(|r| (r.target.key().to_owned(), r.status, r.attempts)).collect();
    assert_eq!(
        by,
        [
            ("org/down".to_owned(), DispatchStatus::Pending, 3),
            ("org/flaky".to_owned(), DispatchStatus::Dispatched, 1),
            ("org/ok".to_owned(), DispatchStatus::Dispatched, 1),
        ]
    );
    let dead = queue.receive(QueueSide::DeadLetter, 10, Duration::from_secs(30), Duration::from_secs(1)).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let reason = dead[0].dead_letter_reason.as_deref().unwrap_or_default();
    assert!(reason.contains("after 3 receives") && reason.contains("org/down: 503"), "{reason}");
    assert!(dead[0].body.contains(&delivery));
}

/// AWS calls per webhook at their minimum (issue 14), counted on moto: a
/// `pull_request.synchronize` to 10 targets costs ingest 2 SQS calls (the
/// fan-out and the reconciler's part, sent at once) and the dispatcher, per
/// target, one conditional DynamoDB write to claim it (the idempotency
/// key), one to spend from GitHub's budget of its installation (issue 15,
/// shared by every instance; read once per instance first) and one to
/// record GitHub's answer; the target's breaker is read at most every 10 s
/// per instance and, while the target is healthy, never written: no blob,
/// no SQS call from the handler (Lambda's event source mapping receives
/// the batch and deletes what the handler did not report as failed).
#[tokio::test]
async fn a_synchronize_to_ten_targets_costs_two_sqs_calls_at_ingest_and_three_dynamodb_writes_per_target() {
    let sdk = moto::sdk().await;
    let res = moto::Resources::create(&sdk, 3).await;
    let (ingest_calls, dispatcher_calls) = (moto::CallCounter::default(), moto::CallCounter::default());
    let ingest_queue =
        Arc::new(SqsQueue::new(ingest_calls.sqs(&sdk), res.dispatch_queue_url.clone(), res.dispatch_dlq_url.clone()));
    let reconcile_queue =
        Arc::new(SqsQueue::new(ingest_calls.sqs(&sdk), res.reconcile_queue_url.clone(), res.reconcile_dlq_url.clone()));
    // What the event source mapping does (receive, delete) is not the handler's.
    let lambda_service =
        SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), res.dispatch_queue_url.clone(), res.dispatch_dlq_url.clone());
    let handler_queue =
        SqsQueue::new(dispatcher_calls.sqs(&sdk), res.dispatch_queue_url.clone(), res.dispatch_dlq_url.clone());
    let store = Arc::new(DynamoDispatchStore::new(dispatcher_calls.dynamodb(&sdk), res.dispatch_table.clone()));
    let blobs = Arc::new(DynamoBlobStore::new(dispatcher_calls.dynamodb(&sdk), res.payload_table.clone()));

    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let targets: Vec<String> = (0..10).map(|i| format!("vendor{i}/backend")).collect();
    for t in &targets {
        gh.install(t);
    }
    let allowlist = Allowlist::parse(&format!("L1: [{}]", targets.join(", "))).unwrap();
    let kv: Arc<dyn crcr_core::ports::StateStore> =
        Arc::new(DynamoKv::new(dispatcher_calls.dynamodb(&sdk), res.kv_table.clone(), Arc::new(SystemClock)));
    let dispatcher = Dispatcher {
        store,
        blobs: blobs.clone(),
        github: Arc::new(
            GitHubAppClient::new(GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url())).unwrap(),
        ),
        budget: Arc::new(StoredDispatchBudget::new(DispatchPace::default(), kv.clone())),
        breakers: Arc::new(Breakers::new(kv, Default::default(), Arc::new(SystemClock))),
        paused_checks: None,
        allowlist: Arc::new(AllowlistProvider::fixed(allowlist)),
        clock: Arc::new(SystemClock),
        settings: DispatcherSettings::default(),
    };
    let secret = WebhookSecret::new("aws-calls");
    let app = router(Arc::new(IngestState {
        secret: secret.clone(),
        upstream: RepoFullName::parse(UPSTREAM).unwrap(),
        queue: ingest_queue,
        blobs,
        clock: Arc::new(SystemClock),
        max_body_bytes: 6 * 1024 * 1024,
        reconcile: Some(reconcile_queue),
    }));
    for round in 1..=2 {
        let delivery = post_pull_request(app.clone(), &secret, "pull_request.synchronize").await;
        assert_eq!(ingest_calls.counts(), [("SendMessage".to_owned(), 2 * round)].into());

        let batch = lambda_service
            .receive(QueueSide::Source, 10, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(batch.len(), 1);
        let failed = process_sqs_batch(&dispatcher, &handler_queue, batch).await;
        assert!(failed.is_empty(), "{failed:?}");
        let mut sent = dispatched_to(&gh, &delivery);
        sent.sort();
        assert_eq!(sent, targets);
        // Claims and budget spends are conditional puts, outcomes
        // conditional updates; each installation's budget is read once by
        // this instance, then known from its own writes; each target's
        // breaker is read once (both webhooks within its 10 s).
        assert_eq!(
            dispatcher_calls.counts(),
            [("GetItem".to_owned(), 20), ("PutItem".to_owned(), 20 * round), ("UpdateItem".to_owned(), 10 * round)]
                .into(),
            "after webhook {round}"
        );
    }
}

/// Issue 15, through the Lambda wiring on moto: three dispatcher instances
/// (three Lambda instances, each with its own GitHub client and its own
/// view of the budget) take a burst of 8 webhooks to 3 target
/// installations from SQS at once, spending from one budget per
/// installation in the DynamoDB `kv` table. GitHub's content limit (scaled:
/// 4 per 2-second window per installation) refuses none of their dispatches, what
/// waits is postponed with SQS `DelaySeconds` (not failed), and every
/// dispatch arrives once.
#[tokio::test]
async fn lambda_instances_sharing_the_dynamodb_budget_keep_to_githubs_content_limit() {
    // Two-second windows, one second of slack: a scaled minute still long
    // against the jitter between spending and arriving on a loaded machine.
    let window = Duration::from_secs(2);
    let sdk = moto::sdk().await;
    let res = moto::Resources::create(&sdk, 5).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let db = aws_sdk_dynamodb::Client::new(&sdk);
    let queue = Arc::new(SqsQueue::new(sqs.clone(), res.dispatch_queue_url.clone(), res.dispatch_dlq_url.clone()));
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let targets = ["vendor-a/backend", "vendor-b/backend", "vendor-c/backend"];
    for t in targets {
        gh.install(t);
    }
    gh.enforce_secondary_limits(Some(crcr_standin::SecondaryLimits {
        content_per_window: 4,
        ..crcr_standin::SecondaryLimits::scaled(window)
    }));
    let pace = DispatchPace { per_minute: 4, minute: window, slack: Duration::from_secs(1), ..Default::default() };
    let allowlist = Allowlist::parse(&format!("L1: [{}]", targets.join(", "))).unwrap();
    let instances: Vec<Dispatcher> = (0..3)
        .map(|_| {
            let kv: Arc<dyn crcr_core::ports::StateStore> =
                Arc::new(DynamoKv::new(db.clone(), res.kv_table.clone(), Arc::new(SystemClock)));
            Dispatcher {
                store: Arc::new(DynamoDispatchStore::new(db.clone(), res.dispatch_table.clone())),
                blobs: Arc::new(DynamoBlobStore::new(db.clone(), res.payload_table.clone())),
                github: Arc::new(
                    GitHubAppClient::new(GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url()))
                        .unwrap(),
                ),
                budget: Arc::new(StoredDispatchBudget::new(pace, kv.clone())),
                breakers: Arc::new(Breakers::new(kv, Default::default(), Arc::new(SystemClock))),
                paused_checks: None,
                allowlist: Arc::new(AllowlistProvider::fixed(allowlist.clone())),
                clock: Arc::new(SystemClock),
                settings: DispatcherSettings {
                    pace: Some(pace),
                    retry_budget: Duration::from_secs(2),
                    ..Default::default()
                },
            }
        })
        .collect();
    let secret = WebhookSecret::new("aws-budget");
    let app = router(Arc::new(IngestState {
        secret: secret.clone(),
        upstream: RepoFullName::parse(UPSTREAM).unwrap(),
        queue: queue.clone(),
        blobs: Arc::new(DynamoBlobStore::new(db.clone(), res.payload_table.clone())),
        clock: Arc::new(SystemClock),
        max_body_bytes: 6 * 1024 * 1024,
        reconcile: None,
    }));
    let mut deliveries = vec![];
    for _ in 0..8 {
        deliveries.push(post_pull_request(app.clone(), &secret, "pull_request.synchronize").await);
    }

    // Each instance polls the queue as its event source mapping would,
    // until every delivery reached every target.
    let all_sent = || deliveries.iter().all(|d| dispatched_to(&gh, d) == targets);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !all_sent() {
        assert!(std::time::Instant::now() < deadline, "not every dispatch arrived within 60 s");
        let polls = instances.iter().map(|d| {
            let queue = queue.clone();
            async move {
                let batch =
                    queue.receive(QueueSide::Source, 4, Duration::from_secs(30), Duration::from_secs(1)).await.unwrap();
                process_sqs_batch(d, queue.as_ref(), batch).await
            }
        });
        let failed: Vec<String> = futures::future::join_all(polls).await.into_iter().flatten().collect();
        if !failed.is_empty() {
            let store = DynamoDispatchStore::new(db.clone(), res.dispatch_table.clone());
            let mut why = vec![];
            for d in &deliveries {
                for r in store.records(&DeliveryId::parse(d).unwrap()).await.unwrap() {
                    why.push(format!("{} {:?} {:?}", r.target, r.status, r.last_error));
                }
            }
            panic!(
                "waiting for the budget is not a failure: {failed:?}; refusals {:?}; records {why:#?}",
                gh.secondary_refusals()
            );
        }
    }
    assert!(gh.secondary_refusals().is_empty(), "{:?}", gh.secondary_refusals());
    for t in targets {
        assert_dispatches_paced(&gh, t, 8, 4, window);
    }
    let dead = queue.stats(QueueSide::DeadLetter).await.unwrap();
    assert_eq!(dead.visible + dead.in_flight + dead.delayed, 0, "nothing dead-lettered");
}
