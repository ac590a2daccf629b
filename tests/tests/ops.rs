//! On-call operations end to end on the embedded default: signed real
//! fixtures → ingest → SQLite queue → dispatcher → GitHub stand-in, with a
//! GitHub outage that sends a delivery to the DLQ; then the DLQ is read and
//! replayed the way `crcr dlq ... --database <file>` does it: through its own
//! connection to the running relay's database file.

use std::time::{Duration, Instant};

use crcr_core::dispatch::DispatcherSettings;
use crcr_core::ports::{DispatchStatus, QueueSide, SystemClock};
use crcr_core::progress::NoProgress;
use crcr_oncall::backend::{self, OpsPorts, QueueName};
use crcr_oncall::dlq::{Dlq, DlqFilter, FailureClass, ReplayOptions, ScanOptions};
use crcr_standin::{Fault, StandIn, StandInOptions};
use crcr_tests::*;

const ALLOWLIST: &str = "L1:\n  - org1/one\n  - org1/two\nL2:\n  - org2/three\nL3:\n  gpu:\n    org3/four: [alice]\n";

/// Two calls per receive, dead-lettered on the second receive.
fn settings() -> DispatcherSettings {
    DispatcherSettings { max_calls: 2, max_receive_count: 2, ..test_settings() }
}

async fn standin() -> StandIn {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for r in ["org1/one", "org1/two", "org2/three", "org3/four"] {
        gh.install(r);
    }
    gh
}

/// What `crcr dlq --database <relay's file>` opens: a second connection.
fn cli_ports(relay: &Relay) -> OpsPorts {
    backend::sqlite(&relay.dir.join("crcr.sqlite"), QueueName::Dispatch, 2).expect("open the relay's database")
}

fn dlq(p: &OpsPorts) -> Dlq<'_> {
    Dlq { queue: &*p.queue, store: &*p.store, blobs: Some(&*p.blobs), clock: &SystemClock }
}

fn dispatch_calls(gh: &StandIn, repo: &str) -> usize {
    gh.count("POST", &format!("/repos/{repo}/dispatches"))
}

/// Posts a push during an outage of org3/four (every call of both receives
/// fails) and waits until the delivery is on the DLQ.
async fn dead_lettered_push(relay: &Relay, gh: &StandIn, p: &OpsPorts) -> String {
    for _ in 0..4 {
        gh.inject("org3/four", Fault::ServerError(503));
    }
    let before = p.queue.depth(QueueSide::DeadLetter).await.unwrap();
    let delivery = uuid();
    assert_eq!(relay.post("push", &delivery, &fixture("push"), false).await.0, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.queue.depth(QueueSide::DeadLetter).await.unwrap() == before {
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gh.pending_faults("org3/four"), 0, "the outage is over once the message is on the DLQ");
    assert_eq!(dispatched_to(gh, &delivery), ["org1/one", "org1/two", "org2/three"]);
    delivery
}

#[tokio::test]
async fn a_delivery_dead_lettered_by_an_outage_is_replayed_to_the_undispatched_targets_only() {
    let gh = standin().await;
    let relay = Relay::start(&gh, ALLOWLIST, settings(), None, "s").await;
    let p = cli_ports(&relay);
    let delivery = dead_lettered_push(&relay, &gh, &p).await;

    // list: what failed and why, and what is still owed
    let l = dlq(&p).list(&DlqFilter::default(), &ScanOptions::peek()).await.unwrap();
    assert_eq!(l.messages.len(), 1);
    let m = &l.messages[0];
    assert_eq!(m.delivery_id.as_ref().unwrap().as_str(), delivery);
    assert_eq!(m.event.as_deref(), Some("push"));
    assert_eq!(m.git_ref.as_deref(), Some("refs/tags/simple-tag"));
    assert_eq!(m.failure_class, FailureClass::RetriesExhausted);
    assert!(m.reason.as_deref().unwrap().contains("org3/four: 503"), "{m:?}");
    assert_eq!(m.pending().map(|t| t.target.to_string()).collect::<Vec<_>>(), ["org3/four"]);
    assert_eq!(m.count(DispatchStatus::Dispatched), 3);

    // replay: only org3/four gets it, once
    let calls_before: Vec<usize> =
        ["org1/one", "org1/two", "org2/three"].iter().map(|r| dispatch_calls(&gh, r)).collect();
    let r = dlq(&p)
        .replay(
            &DlqFilter { event: Some("push".into()), ..Default::default() },
            &ScanOptions::work(),
            &ReplayOptions::default(),
            &mut NoProgress,
        )
        .await
        .unwrap();
    assert_eq!((r.done.len(), r.failed.len(), r.skipped.len()), (1, 0, 0), "{r:?}");
    let records = relay.settled(&delivery, Duration::from_secs(20)).await;
    assert!(records.iter().all(|r| r.status == DispatchStatus::Dispatched), "{records:?}");
    assert_eq!(dispatched_to(&gh, &delivery), ["org1/one", "org1/two", "org2/three", "org3/four"]);
    let calls_after: Vec<usize> =
        ["org1/one", "org1/two", "org2/three"].iter().map(|r| dispatch_calls(&gh, r)).collect();
    assert_eq!(calls_after, calls_before, "targets already dispatched were not called again");
    assert_eq!(p.queue.depth(QueueSide::DeadLetter).await.unwrap(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn a_replay_that_died_between_send_and_delete_dispatches_nothing_twice() {
    let gh = standin().await;
    let relay = Relay::start(&gh, ALLOWLIST, settings(), None, "s").await;
    let p = cli_ports(&relay);
    let delivery = dead_lettered_push(&relay, &gh, &p).await;

    // A replay process that died after its send and before its delete: the
    // copy is on the source queue, the original still on the DLQ.
    let held =
        p.queue.receive(QueueSide::DeadLetter, 10, Duration::from_secs(5), Duration::from_secs(1)).await.unwrap();
    assert_eq!(held.len(), 1);
    p.queue.send(&held[0].body).await.unwrap();
    drop(held); // the process is gone: its hold simply runs out
    let records = relay.settled(&delivery, Duration::from_secs(20)).await;
    assert!(records.iter().all(|r| r.status == DispatchStatus::Dispatched), "{records:?}");
    assert_eq!(dispatched_to(&gh, &delivery), ["org1/one", "org1/two", "org2/three", "org3/four"]);
    let requests_after_copy = gh.requests().len();

    // The operator runs the replay again once the hold ran out: the original
    // moves too, and processing it sends nothing.
    let deadline = Instant::now() + Duration::from_secs(90);
    let r = loop {
        let r = dlq(&p)
            .replay(&DlqFilter::default(), &ScanOptions::work(), &ReplayOptions::default(), &mut NoProgress)
            .await
            .unwrap();
        if !r.done.is_empty() {
            break r;
        }
        assert!(Instant::now() < deadline, "the original never reappeared on the DLQ");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert_eq!(r.done.len(), 1);
    assert_eq!(r.done[0].pending_targets.len(), 0, "nothing left to send");
    // Settled: the dispatch queue is empty (in flight included), so nothing
    // is left that could dispatch again.
    relay.settled(&delivery, Duration::from_secs(20)).await;
    assert_eq!(dispatched_to(&gh, &delivery), ["org1/one", "org1/two", "org2/three", "org3/four"], "each exactly once");
    let new_calls: Vec<String> =
        gh.requests()[requests_after_copy..].iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert!(new_calls.is_empty(), "the duplicate made GitHub calls: {new_calls:?}");
    assert_eq!(p.queue.depth(QueueSide::DeadLetter).await.unwrap(), 0);
    assert_eq!(p.queue.depth(QueueSide::Source).await.unwrap(), 0);
    relay.stop().await;
}
