//! The AWS path end to end on moto: the ingest router (as the Lambda serves
//! it, called as a plain tower service) enqueues on SQS; the dispatcher
//! Lambda's batch function (`process_sqs_batch`) consumes it the way an SQS
//! event source mapping with `ReportBatchItemFailures` does; dispatch
//! records live in DynamoDB. Needs moto's server (scripts/test starts it).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
use crcr_shared::allowlist::{Allowlist, AllowlistProvider};
use crcr_shared::aws::{sdk_config, DynamoBlobStore, DynamoDispatchStore, SqsQueue};
use crcr_shared::dispatch::{process_sqs_batch, Dispatcher, DispatcherSettings};
use crcr_shared::domain::{DeliveryId, RepoFullName};
use crcr_shared::github::{GitHubAppClient, GitHubAppConfig};
use crcr_shared::ingest::{router, IngestState};
use crcr_shared::ports::{DispatchStatus, DispatchStore, EventQueue, QueueSide, SystemClock};
use crcr_shared::signature::WebhookSecret;
use crcr_shared::standin::{Fault, StandIn, StandInOptions};
use crcr_tests::{dispatched_to, fixture, uuid, UPSTREAM};
use tower::ServiceExt;

async fn moto() -> aws_config::SdkConfig {
    let url = std::env::var("CRCR_TEST_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    let reachable =
        tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(url.trim_start_matches("http://")))
            .await;
    assert!(
        matches!(reachable, Ok(Ok(_))),
        "moto is not reachable at {url}: run scripts/test, or start `.venv/bin/moto_server -H 127.0.0.1 -p 5000`"
    );
    let cfg = sdk_config(Some(&url)).await;
    // moto accepts any credentials; don't let the default chain wander off to IMDS.
    let creds = aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "crcr-e2e");
    cfg.to_builder().credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(creds)).build()
}

async fn table(db: &aws_sdk_dynamodb::Client, name: &str, hash: &str, range: &str, range_type: ScalarAttributeType) {
    db.create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name(hash).attribute_type(ScalarAttributeType::S).build().unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder().attribute_name(range).attribute_type(range_type).build().unwrap(),
        )
        .key_schema(KeySchemaElement::builder().attribute_name(hash).key_type(KeyType::Hash).build().unwrap())
        .key_schema(KeySchemaElement::builder().attribute_name(range).key_type(KeyType::Range).build().unwrap())
        .send()
        .await
        .expect("create table");
}

#[tokio::test]
async fn webhook_to_sqs_to_lambda_batches_to_github_with_dynamodb_records() {
    let sdk = moto().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let db = aws_sdk_dynamodb::Client::new(&sdk);
    let id = uuid();
    let dlq_url = sqs.create_queue().queue_name(format!("dlq-{id}")).send().await.unwrap().queue_url.unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("q-{id}"))
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"3"}}"#),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let (dispatch_table, payload_table) = (format!("dispatches-{id}"), format!("payloads-{id}"));
    table(&db, &dispatch_table, "delivery_id", "target", ScalarAttributeType::S).await;
    table(&db, &payload_table, "key", "chunk", ScalarAttributeType::N).await;
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
    let dispatcher = Dispatcher {
        store: store.clone(),
        blobs: blobs.clone(),
        github,
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
    }));
    let body = fixture("pull_request.opened");
    let delivery = uuid();
    let req = http::Request::post("/github/webhook")
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", &delivery)
        .header("X-Hub-Signature-256", secret.sign(&body))
        .body(axum::body::Body::from(body))
        .unwrap();
    assert_eq!(app.oneshot(req).await.unwrap().status(), 202);

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
