//! GitHub rate limits that say nothing about when to retry (issue 12, item
//! 1). GitHub docs, "Rate limits for the REST API" → "Exceeding the rate
//! limit": a secondary rate limit is a 403 or 429 whose message says so; with
//! neither `retry-after` nor `x-ratelimit-remaining: 0` the client must wait
//! at least one minute before retrying. The dispatcher must then not retry
//! inside the receive (the wait is longer than its retry budget) but put the
//! message back on the queue for at least that long; after that it is
//! dispatched.
//!
//! The test drives the embedded relay's queue and dispatcher itself (the
//! relay is built, not run), so "a minute later" is the message becoming
//! visible again, not a sleep.

use std::time::Duration;

use crcr_clients::github::GitHubAppConfig;
use crcr_core::allowlist::AllowlistSource;
use crcr_core::config::{EmbeddedConfig, RelayConfig};
use crcr_core::dispatch::{Disposition, MessageOutcome, TargetOutcome};
use crcr_core::domain::RepoFullName;
use crcr_core::ports::{QueueInspect, QueueReceive, QueueSettle, QueueSide, ReceivedMessage};
use crcr_core::signature::WebhookSecret;
use crcr_embedded::EmbeddedRelay;
use crcr_standin::{Fault, StandIn, StandInOptions};
use crcr_tests::{dispatched_to, fixture, test_settings, uuid, UPSTREAM, VISIBILITY_TIMEOUT};
use tower::ServiceExt;

const ALLOWLIST: &str = "L1:\n  - org/limited\n  - org/fine\n  - org/too-many\n";

fn dispatch_statuses(gh: &StandIn, repo: &str) -> Vec<u16> {
    gh.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == format!("/repos/{repo}/dispatches"))
        .map(|r| r.status)
        .collect()
}

async fn receive_one(relay: &EmbeddedRelay) -> Option<ReceivedMessage> {
    let mut got = relay.queue.receive(QueueSide::Source, 1, VISIBILITY_TIMEOUT, Duration::ZERO).await.unwrap();
    got.pop()
}

#[tokio::test]
async fn a_secondary_rate_limit_without_headers_requeues_for_at_least_a_minute_then_dispatches() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for r in ["org/limited", "org/fine", "org/too-many"] {
        gh.install(r);
    }
    gh.inject("org/limited", Fault::SecondaryRateLimitNoHint { status: 403 });
    gh.inject("org/too-many", Fault::SecondaryRateLimitNoHint { status: 429 });
    let dir = std::env::temp_dir().join(format!("crcr-rate-limits-{}", uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("allowlist.yml"), ALLOWLIST).unwrap();
    let cfg = RelayConfig {
        upstream: RepoFullName::parse(UPSTREAM).unwrap(),
        webhook_secret: WebhookSecret::new("s"),
        github: GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url()),
        allowlist: AllowlistSource::File(dir.join("allowlist.yml")),
        allowlist_ttl: Duration::from_secs(300),
        max_body_bytes: crcr_http::ingest::DEFAULT_MAX_BODY_BYTES,
        dispatcher: test_settings(),
        callbacks: Default::default(),
    };
    let emb = EmbeddedConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        database: dir.join("crcr.sqlite"),
        workers: 1,
        visibility_timeout: VISIBILITY_TIMEOUT,
        shutdown_grace: Duration::from_secs(1),
        server: Default::default(),
    };
    let relay = EmbeddedRelay::build(&cfg, &emb).unwrap();

    // A signed push through ingest: one message on the dispatch queue.
    let body = fixture("push");
    let delivery = uuid();
    let req = http::Request::post("/github/webhook")
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", &delivery)
        .header("X-Hub-Signature-256", WebhookSecret::new("s").sign(&body))
        .body(axum::body::Body::from(body))
        .unwrap();
    assert_eq!(relay.router.clone().oneshot(req).await.unwrap().status(), 202);

    // First receive: the limited targets are asked once each, not again
    // within the receive (a minute is longer than the 5 s retry budget).
    let msg = receive_one(&relay).await.expect("the push is on the queue");
    let outcome = relay.dispatcher.handle(relay.queue.as_ref(), &msg).await.unwrap();
    assert_eq!(dispatch_statuses(&gh, "org/limited"), [403]);
    assert_eq!(dispatch_statuses(&gh, "org/too-many"), [429]);
    assert_eq!(dispatched_to(&gh, &delivery), ["org/fine"]);
    let MessageOutcome::Retry { report: Some(report), delay, .. } = &outcome else {
        panic!("expected a retry: {outcome:?}");
    };
    for t in report.targets.iter().filter(|t| t.repo.as_str() != "org/fine") {
        match &t.outcome {
            TargetOutcome::Retry { retry_after_ms: Some(ms), .. } => assert!(*ms >= 60_000, "{}: {ms} ms", t.repo),
            other => panic!("{}: {other:?}", t.repo),
        }
    }
    assert!(delay.is_some_and(|d| d >= Duration::from_secs(60)), "{delay:?}");
    // The message goes back to the queue for at least a minute.
    match relay.dispatcher.disposition(&msg, &outcome) {
        Disposition::Requeue { delay } => assert!(delay >= Duration::from_secs(60), "requeued for {delay:?}"),
        other => panic!("{other:?}"),
    }
    assert!(receive_one(&relay).await.is_none(), "the message came back before its delay");
    let stats = relay.queue.stats(QueueSide::Source).await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 1), "{stats:?}");

    // A minute later (the message visible again, as the queue makes it):
    // dispatched, once each, and nothing sent twice.
    relay.queue.change_visibility(QueueSide::Source, &msg.receipt, Duration::ZERO).await.unwrap();
    let again = receive_one(&relay).await.expect("the message is back");
    assert_eq!(again.receive_count, 2);
    let outcome = relay.dispatcher.handle(relay.queue.as_ref(), &again).await.unwrap();
    assert!(matches!(outcome, MessageOutcome::Done(_)), "{outcome:?}");
    assert_eq!(dispatch_statuses(&gh, "org/limited"), [403, 204]);
    assert_eq!(dispatch_statuses(&gh, "org/too-many"), [429, 204]);
    assert_eq!(dispatched_to(&gh, &delivery), ["org/fine", "org/limited", "org/too-many"]);
    assert_eq!(relay.queue.depth(QueueSide::Source).await.unwrap(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
