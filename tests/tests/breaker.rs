//! Issue 15: a breaker per downstream target. A repository whose
//! dispatches fail for good N times in a row (here: archived, GitHub's 403
//! "Repository was archived so is read-only.") is paused: later dispatches
//! are recorded `paused` and not sent, while the other targets go on. After
//! the cool-down one probe goes; delivered, it closes the breaker.
//!
//! The relay runs on a manual clock: "after the cool-down" is the clock
//! moved, not a sleep.

use std::sync::Arc;
use std::time::Duration;

use crcr_core::breaker::BreakerSettings;
use crcr_core::dispatch::DispatcherSettings;
use crcr_core::ports::{DispatchStatus, ManualClock};
use crcr_standin::{StandIn, StandInOptions};
use crcr_tests::{dispatch_statuses, dispatched_to, fixture, test_settings, uuid, Relay, UPSTREAM};

const HEALTHY: &str = "vendor-a/backend";
const ARCHIVED: &str = "vendor-b/backend";

async fn push(relay: &Relay) -> (String, Vec<crcr_core::ports::DispatchRecord>) {
    let delivery = uuid();
    assert_eq!(relay.post("push", &delivery, &fixture("push"), false).await.0, 202);
    let records = relay.settled(&delivery, Duration::from_secs(15)).await;
    (delivery, records)
}

/// A relay on a manual clock dispatching to both targets, whose breakers
/// open after `failures` permanent failures and probe after 60 s.
async fn start(gh: &StandIn, failures: u32) -> (Relay, Arc<ManualClock>) {
    start_with(gh, failures, &format!("L1: [{HEALTHY}, {ARCHIVED}]\n")).await
}

/// [`start`] with `allowlist`.
async fn start_with(gh: &StandIn, failures: u32, allowlist: &str) -> (Relay, Arc<ManualClock>) {
    let settings = DispatcherSettings {
        breaker: BreakerSettings {
            failures_to_open: failures,
            cool_down: Duration::from_secs(60),
            cache_for: Duration::ZERO,
            ..Default::default()
        },
        ..test_settings()
    };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let relay = Relay::start_on_clock(gh, allowlist, settings, None, "s", Default::default(), clock.clone()).await;
    (relay, clock)
}

fn status_of(records: &[crcr_core::ports::DispatchRecord], repo: &str) -> (DispatchStatus, String) {
    let r = records.iter().find(|r| r.target.as_str() == repo).expect("a record per target");
    (r.status, r.last_error.clone().unwrap_or_default())
}

#[tokio::test]
async fn a_target_failing_for_good_is_paused_then_probed_and_closed_after_the_cool_down() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for t in [HEALTHY, ARCHIVED] {
        gh.install(t);
    }
    gh.set_archived(ARCHIVED, true);
    let (relay, clock) = start(&gh, 3).await;

    // Three refusals in a row: each recorded failed; the third opens the breaker.
    for n in 1..=3 {
        let (delivery, records) = push(&relay).await;
        assert_eq!(dispatched_to(&gh, &delivery), [HEALTHY]);
        let (status, error) = status_of(&records, ARCHIVED);
        assert_eq!(status, DispatchStatus::Failed, "push {n}: {error}");
        assert!(error.contains("archived"), "{error}");
    }
    assert_eq!(dispatch_statuses(&gh, ARCHIVED), [403, 403, 403]);

    // Open: the archived repository is no longer asked; the other target is.
    for _ in 0..2 {
        let (delivery, records) = push(&relay).await;
        assert_eq!(dispatched_to(&gh, &delivery), [HEALTHY]);
        let (status, error) = status_of(&records, ARCHIVED);
        assert_eq!(status, DispatchStatus::Paused, "{error}");
        assert!(error.contains("breaker is open") && error.contains("3 dispatches in a row"), "{error}");
        assert!(error.contains("a probe goes at"), "{error}");
        assert_eq!(status_of(&records, HEALTHY).0, DispatchStatus::Dispatched);
    }
    assert_eq!(dispatch_statuses(&gh, ARCHIVED), [403, 403, 403], "sent while paused");

    // The vendor fixes it; after the cool-down the probe is delivered and
    // the breaker closes: dispatches go again.
    gh.set_archived(ARCHIVED, false);
    clock.advance(Duration::from_secs(61));
    for _ in 0..2 {
        let (delivery, records) = push(&relay).await;
        assert_eq!(dispatched_to(&gh, &delivery), [HEALTHY, ARCHIVED]);
        assert_eq!(status_of(&records, ARCHIVED).0, DispatchStatus::Dispatched);
    }
    assert_eq!(dispatch_statuses(&gh, ARCHIVED), [403, 403, 403, 204, 204]);
    relay.stop().await;
}

/// A probe that fails opens the breaker again for twice the cool-down; a
/// suspended installation (GitHub: 403 "This installation has been
/// suspended" on the token) counts as failing for good.
#[tokio::test]
async fn a_failed_probe_keeps_the_target_paused_for_twice_as_long() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for t in [HEALTHY, ARCHIVED] {
        gh.install(t);
    }
    gh.suspend(ARCHIVED);
    let (relay, clock) = start(&gh, 2).await;
    let token_refusals = || {
        gh.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/access_tokens") && r.status == 403)
            .count()
    };
    for _ in 0..2 {
        let (_, records) = push(&relay).await;
        let (status, error) = status_of(&records, ARCHIVED);
        assert_eq!(status, DispatchStatus::Failed);
        assert!(error.contains("suspended"), "{error}");
    }
    assert_eq!(token_refusals(), 2);
    // The probe after 60 s fails: paused again, now for 120 s.
    clock.advance(Duration::from_secs(60));
    let (_, records) = push(&relay).await;
    assert_eq!(status_of(&records, ARCHIVED).0, DispatchStatus::Failed, "the probe");
    assert_eq!(token_refusals(), 3);
    clock.advance(Duration::from_secs(60));
    let (_, records) = push(&relay).await;
    assert_eq!(status_of(&records, ARCHIVED).0, DispatchStatus::Paused, "60 s after a failed probe");
    assert_eq!(token_refusals(), 3);
    gh.unsuspend(ARCHIVED);
    clock.advance(Duration::from_secs(61));
    let (delivery, records) = push(&relay).await;
    assert_eq!(status_of(&records, ARCHIVED).0, DispatchStatus::Dispatched);
    assert_eq!(dispatched_to(&gh, &delivery), [HEALTHY, ARCHIVED]);
    relay.stop().await;
}

/// A paused L4 target's reviewers are told on the pull request: its check
/// run for the commit is completed `neutral`, saying why and when the relay
/// tries again (issue 15), sent by the reconciler's sweep like the others.
#[tokio::test]
async fn a_paused_l4_target_gets_a_neutral_check_run_saying_why() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for t in [HEALTHY, ARCHIVED, UPSTREAM] {
        gh.install(t);
    }
    gh.set_archived(ARCHIVED, true);
    let (relay, _clock) = start_with(&gh, 1, &format!("L1: [{HEALTHY}]\nL4: [{ARCHIVED}]\n")).await;
    let post = |name: &'static str| {
        let relay = &relay;
        async move {
            let delivery = uuid();
            assert_eq!(relay.post("pull_request", &delivery, &fixture(name), false).await.0, 202);
            relay.settled(&delivery, Duration::from_secs(15)).await
        }
    };
    // Refused once: failed, and the breaker opens (threshold 1).
    let records = post("pull_request.opened").await;
    assert_eq!(status_of(&records, ARCHIVED).0, DispatchStatus::Failed);
    // The next event is not sent: paused, with a neutral check run on its commit.
    let records = post("pull_request.synchronize").await;
    assert_eq!(status_of(&records, ARCHIVED).0, DispatchStatus::Paused);
    let sha: serde_json::Value = serde_json::from_slice(&fixture("pull_request.synchronize")).unwrap();
    let sha = sha["pull_request"]["head"]["sha"].as_str().unwrap().to_ascii_lowercase();
    relay.sweeps_pass(2).await;
    let runs = gh.check_runs(UPSTREAM);
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!((run.name.as_str(), run.head_sha.as_str()), ("crcr/vendor-b/backend/crcr/dispatch", sha.as_str()));
    assert_eq!((run.status.as_str(), run.conclusion.as_deref()), ("completed", Some("neutral")));
    let summary = run.output_summary.clone().unwrap_or_default();
    assert!(summary.contains("breaker is open") && summary.contains("a probe goes at"), "{summary}");
    assert_eq!(dispatch_statuses(&gh, ARCHIVED), [403], "nothing sent while paused");
    relay.stop().await;
}

/// A target whose dispatches GitHub takes (204) but whose workflow never
/// calls back (missing, disabled, not listening) is paused too, after
/// `never_started_to_open` such dispatches in a row: the reconciler's sweep
/// counts them once they are past the never-started deadline (1 h).
#[tokio::test]
async fn dispatches_that_never_start_pause_the_target() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for t in [HEALTHY, ARCHIVED] {
        gh.install(t);
    }
    let settings = DispatcherSettings {
        breaker: BreakerSettings { never_started_to_open: 3, cache_for: Duration::ZERO, ..Default::default() },
        ..test_settings()
    };
    let callbacks = crcr_core::config::CallbackConfig {
        reconciler: crcr_core::reconcile::ReconcilerSettings { breaker: settings.breaker, ..Default::default() },
        ..Default::default()
    };
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    // vendor-b is L2: it owes callbacks, and never sends one.
    let allowlist = format!("L1: [{HEALTHY}]\nL2: [{ARCHIVED}]\n");
    let relay = Relay::start_on_clock(&gh, &allowlist, settings, None, "s", callbacks, clock.clone()).await;
    for _ in 0..3 {
        let (_, records) = push(&relay).await;
        assert_eq!(status_of(&records, ARCHIVED).0, DispatchStatus::Dispatched);
        clock.advance(Duration::from_secs(1));
    }
    // Within the hour nothing is owed yet; past it, three never started.
    relay.reconciler.sweep().await.unwrap();
    let (_, records) = push(&relay).await;
    assert_eq!(status_of(&records, ARCHIVED).0, DispatchStatus::Dispatched, "not yet past the deadline");
    clock.advance(Duration::from_secs(3601));
    let report = relay.reconciler.sweep().await.unwrap();
    assert_eq!(report.never_started.len(), 4, "{:?}", report.never_started);
    let (delivery, records) = push(&relay).await;
    let (status, error) = status_of(&records, ARCHIVED);
    assert_eq!(status, DispatchStatus::Paused, "{error}");
    assert!(error.contains("4 dispatches in a row never started"), "{error}");
    assert_eq!(dispatched_to(&gh, &delivery), [HEALTHY]);
    relay.stop().await;
}
