//! GitHub rate limits that say nothing about when to retry (issue 12, item
//! 1). GitHub docs, "Rate limits for the REST API" → "Exceeding the rate
//! limit": a secondary rate limit is a 403 or 429 whose message says so; with
//! neither `retry-after` nor `x-ratelimit-remaining: 0` the client must wait
//! at least one minute before retrying. The dispatcher must then not retry
//! inside the receive (the wait is longer than its retry budget) but put the
//! message back on the queue for at least that long; after that it is
//! dispatched. Until then nothing more is sent to that installation (the
//! limit is per identity, issue 15): another webhook's dispatches to it wait
//! in the dispatch budget, and its message is postponed without the receive
//! counting towards the DLQ.
//!
//! The test drives the embedded relay's queue and dispatcher itself (the
//! relay is built, not run) on a manual clock, so "a minute later" is the
//! clock moved, not a sleep.

use std::sync::Arc;
use std::time::Duration;

use crcr_clients::github::GitHubAppConfig;
use crcr_core::allowlist::AllowlistSource;
use crcr_core::budget::DispatchPace;
use crcr_core::config::{EmbeddedConfig, RelayConfig};
use crcr_core::dispatch::{DispatcherSettings, Disposition, MessageOutcome, TargetOutcome};
use crcr_core::domain::RepoFullName;
use crcr_core::ports::{ManualClock, QueueInspect, QueueReceive, QueueSide, ReceivedMessage};
use crcr_core::signature::WebhookSecret;
use crcr_embedded::EmbeddedRelay;
use crcr_standin::{Fault, StandIn, StandInOptions};
use crcr_tests::{
    assert_dispatches_paced, dispatch_statuses, dispatched_to, fixture, test_settings, uuid, wait_for, Relay, UPSTREAM,
    VISIBILITY_TIMEOUT,
};
use tower::ServiceExt;

// Three owners: three installations, each with its own limits.
const ALLOWLIST: &str = "L1:\n  - limited/backend\n  - fine/backend\n  - too-many/backend\n";

async fn receive_one(relay: &EmbeddedRelay) -> Option<ReceivedMessage> {
    let mut got = relay.queue.receive(QueueSide::Source, 1, VISIBILITY_TIMEOUT, Duration::ZERO).await.unwrap();
    got.pop()
}

fn signed_push(delivery: &str) -> http::Request<axum::body::Body> {
    let body = fixture("push");
    http::Request::post("/github/webhook")
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", WebhookSecret::new("s").sign(&body))
        .body(axum::body::Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn a_secondary_rate_limit_without_headers_requeues_for_at_least_a_minute_then_dispatches() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for r in ["limited/backend", "fine/backend", "too-many/backend"] {
        gh.install(r);
    }
    gh.inject("limited/backend", Fault::SecondaryRateLimitNoHint { status: 403 });
    gh.inject("too-many/backend", Fault::SecondaryRateLimitNoHint { status: 429 });
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
    // Queue visibility and the dispatch budget read this clock: "a minute
    // later" is the clock moved, not a sleep.
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let relay = EmbeddedRelay::build_with_clock(&cfg, &emb, clock.clone()).unwrap();

    // A signed push through ingest: one message on the dispatch queue.
    let delivery = uuid();
    assert_eq!(relay.router.clone().oneshot(signed_push(&delivery)).await.unwrap().status(), 202);

    // First receive: the limited targets are asked once each, not again
    // within the receive (a minute is longer than the 5 s retry budget).
    let msg = receive_one(&relay).await.expect("the push is on the queue");
    let outcome = relay.dispatcher.handle(relay.queue.as_ref(), &msg).await.unwrap();
    assert_eq!(dispatch_statuses(&gh, "limited/backend"), [403]);
    assert_eq!(dispatch_statuses(&gh, "too-many/backend"), [429]);
    assert_eq!(dispatched_to(&gh, &delivery), ["fine/backend"]);
    let MessageOutcome::Retry { report: Some(report), delay, .. } = &outcome else {
        panic!("expected a retry: {outcome:?}");
    };
    for t in report.targets.iter().filter(|t| t.repo.as_str() != "fine/backend") {
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

    // Meanwhile another push: the limited installations get nothing (the
    // limit holds every request of theirs), the other one its dispatch;
    // the message is postponed, its receive not counted.
    let second = uuid();
    assert_eq!(relay.router.clone().oneshot(signed_push(&second)).await.unwrap().status(), 202);
    let msg2 = receive_one(&relay).await.expect("the second push is on the queue");
    let outcome2 = relay.dispatcher.handle(relay.queue.as_ref(), &msg2).await.unwrap();
    assert_eq!(dispatch_statuses(&gh, "limited/backend"), [403], "sent during GitHub's limit");
    assert_eq!(dispatch_statuses(&gh, "too-many/backend"), [429], "sent during GitHub's limit");
    assert_eq!(dispatched_to(&gh, &second), ["fine/backend"]);
    let MessageOutcome::Postpone { report, delay } = &outcome2 else {
        panic!("expected a postponement: {outcome2:?}");
    };
    assert!(*delay >= Duration::from_secs(59), "{delay:?}");
    let paced: Vec<_> = report
        .targets
        .iter()
        .filter(|t| matches!(t.outcome, TargetOutcome::Paced { .. }))
        .map(|t| t.repo.as_str())
        .collect();
    assert_eq!(paced, ["limited/backend", "too-many/backend"]);
    assert!(receive_one(&relay).await.is_none(), "a message came back before its delay");
    let stats = relay.queue.stats(QueueSide::Source).await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 2), "{stats:?}");

    // A minute later (the clock moved; the queue makes both visible):
    // dispatched, once each, and nothing sent twice. The postponed message
    // comes back as on its first receive.
    clock.advance(Duration::from_secs(61));
    let mut counts = vec![];
    while let Some(again) = receive_one(&relay).await {
        counts.push(again.receive_count);
        let outcome = relay.dispatcher.handle(relay.queue.as_ref(), &again).await.unwrap();
        assert!(matches!(outcome, MessageOutcome::Done(_)), "{outcome:?}");
    }
    counts.sort();
    assert_eq!(counts, [1, 2], "receive counts of the postponed and the requeued message");
    assert_eq!(dispatch_statuses(&gh, "limited/backend"), [403, 204, 204]);
    assert_eq!(dispatch_statuses(&gh, "too-many/backend"), [429, 204, 204]);
    let all = ["fine/backend", "limited/backend", "too-many/backend"];
    assert_eq!(dispatched_to(&gh, &delivery), all);
    assert_eq!(dispatched_to(&gh, &second), all);
    assert_eq!(relay.queue.depth(QueueSide::Source).await.unwrap(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 15: dispatches to one installation are paced to GitHub's
/// content-creation limit (here scaled: 4 per 2-second window per installation,
/// GitHub's 80 a minute) before they are sent, so a burst of webhooks gets
/// no secondary-limit refusal: what the budget does not allow yet waits in
/// the receive, or its message is postponed, and every dispatch arrives.
/// Unpaced, the same burst is refused.
#[tokio::test]
async fn a_burst_of_dispatches_keeps_to_githubs_content_limit_per_installation() {
    // Two-second windows, one second of slack: a scaled minute still long
    // against the jitter between spending and arriving on a loaded machine.
    let window = Duration::from_secs(2);
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let targets = ["vendor-a/backend", "vendor-b/backend"];
    for t in targets {
        gh.install(t);
    }
    gh.enforce_secondary_limits(Some(crcr_standin::SecondaryLimits {
        content_per_window: 4,
        ..crcr_standin::SecondaryLimits::scaled(window)
    }));
    let allowlist = format!("L1: [{}]\n", targets.join(", "));
    let pace = DispatchPace { per_minute: 4, minute: window, slack: Duration::from_secs(1), ..Default::default() };
    let paced = DispatcherSettings { pace: Some(pace), ..test_settings() };
    let relay = Relay::start(&gh, &allowlist, paced, None, "s").await;
    let deliveries: Vec<String> = (0..8).map(|_| uuid()).collect();
    for d in &deliveries {
        assert_eq!(relay.post("push", d, &fixture("push"), false).await.0, 202);
    }
    for d in &deliveries {
        wait_for("every dispatch of the burst", || dispatched_to(&gh, d) == targets).await;
    }
    assert!(gh.secondary_refusals().is_empty(), "{:?}", gh.secondary_refusals());
    for t in targets {
        assert_dispatches_paced(&gh, t, 8, 4, window);
    }
    relay.stop().await;

    // The same burst unpaced: GitHub refuses some.
    let unpaced = Relay::start(&gh, &allowlist, DispatcherSettings { pace: None, ..test_settings() }, None, "s").await;
    for _ in 0..12 {
        assert_eq!(unpaced.post("push", &uuid(), &fixture("push"), false).await.0, 202);
    }
    wait_for("a refusal", || !gh.secondary_refusals().is_empty()).await;
    unpaced.stop().await;
}

/// Issue 15: GitHub's primary limit per installation (here 5 calls per
/// 3-second window) is tracked from GitHub's `x-ratelimit-*` answers, so a
/// burst of dispatches stops at the installation's 0 instead of being
/// refused ("API rate limit exceeded for installation ID N."): what is left
/// is postponed until the window resets (the wait is longer than the retry
/// budget; the receive does not count towards the DLQ) and then sent.
///
/// The relay learns a window from GitHub's answers: an identity it has not
/// heard from yet is not limited ahead of time (`PrimaryLimits::admit`),
/// and GitHub's own refusal of what overshot is a deferral too. So the
/// first delivery goes alone and its answers give the window; the burst
/// follows. (Sent together, the burst went out before any answer when the
/// dispatcher received the eight deliveries at once: 3 refusals on a busy
/// clean-clone CI run.)
#[tokio::test]
async fn a_burst_stops_at_the_installations_primary_limit_and_goes_on_after_the_reset() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let targets = ["vendor-a/backend", "vendor-b/backend"];
    for t in targets {
        gh.install(t);
    }
    gh.set_rate_limit(5);
    gh.enforce_primary_limit(true, Duration::from_secs(3));
    let allowlist = format!("L1: [{}]\n", targets.join(", "));
    let settings = DispatcherSettings { retry_budget: Duration::from_millis(500), ..test_settings() };
    let relay = Relay::start(&gh, &allowlist, settings, None, "s").await;
    let deliveries: Vec<String> = (0..8).map(|_| uuid()).collect();
    assert_eq!(relay.post("push", &deliveries[0], &fixture("push"), false).await.0, 202);
    wait_for("the first delivery's dispatches", || dispatched_to(&gh, &deliveries[0]) == targets).await;
    // ... and their answers read (the records are written after them).
    let first = relay.settled(&deliveries[0], Duration::from_secs(15)).await;
    assert!(first.len() == targets.len() && first.iter().all(|r| r.dispatched_at_ms.is_some()), "{first:?}");
    for d in &deliveries[1..] {
        assert_eq!(relay.post("push", d, &fixture("push"), false).await.0, 202);
    }
    for d in &deliveries {
        wait_for("every dispatch of the burst", || dispatched_to(&gh, d) == targets).await;
    }
    assert!(gh.primary_refusals().is_empty(), "GitHub refused {:?}", gh.primary_refusals());
    for t in targets {
        assert_eq!(dispatch_statuses(&gh, t), [204; 8], "{t}: each sent once");
    }
    // Some waited for a reset: sent on a later attempt.
    let mut later = 0;
    for d in &deliveries {
        let records = crcr_core::ports::DispatchStore::records(
            relay.store.as_ref(),
            &crcr_core::domain::DeliveryId::parse(d).unwrap(),
        )
        .await
        .unwrap();
        later += records.iter().map(|r| r.attempts as usize - 1).sum::<usize>();
    }
    assert!(later >= 6, "8 dispatches per installation, 5 per window: {later} later attempts");
    assert_eq!(relay.queue.depth(QueueSide::DeadLetter).await.unwrap(), 0);
    relay.stop().await;
}
