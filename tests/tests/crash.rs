//! A dispatcher killed mid-batch and restarted on the same database loses
//! nothing and duplicates nothing: targets that got a 204 are not sent
//! again, the target whose call was in flight is taken over once its lease
//! expires, and the targets not yet reached are dispatched.

use std::time::Duration;

use crcr_core::dispatch::DispatcherSettings;
use crcr_core::ports::DispatchStatus;
use crcr_standin::{Fault, StandIn, StandInOptions};
use crcr_tests::*;

const ALLOWLIST: &str = "L1:\n  - org1/one\n  - org1/two\nL2:\n  - org2/three\n  - org2/not-installed\nL3:\n  gpu:\n    org3/four: [alice]\n";

#[test]
fn a_dispatcher_killed_mid_batch_and_restarted_loses_nothing_and_duplicates_nothing() {
    // The stand-in lives on its own runtime: it outlives the relay "process".
    let github_rt = tokio::runtime::Runtime::new().unwrap();
    let gh = github_rt.block_on(async {
        let gh = StandIn::start(StandInOptions::default()).await.unwrap();
        for r in ["org1/one", "org1/two", "org2/three", "org3/four"] {
            gh.install(r);
        }
        gh
    });
    // GIVEN targets dispatched one at a time, and org2/three's call hanging
    gh.inject("org2/three", Fault::Timeout(Duration::from_secs(30)));
    let settings = DispatcherSettings { concurrency: 1, lease: Duration::from_secs(2), ..test_settings() };
    let dir = std::env::temp_dir().join(format!("crcr-crash-{}", uuid()));
    let delivery = uuid();

    // WHEN the relay process dies while org2/three's call is in flight
    let first = tokio::runtime::Runtime::new().unwrap();
    let relay = first.block_on(async {
        let relay = Relay::start(&gh, ALLOWLIST, settings.clone(), Some(dir.clone()), "s").await;
        assert_eq!(relay.post("push", &delivery, &fixture("push"), false).await.0, 202);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while dispatched_to(&gh, &delivery).len() < 2 {
            assert!(std::time::Instant::now() < deadline, "first two targets never dispatched");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        relay
    });
    first.shutdown_background(); // every task dropped where it stood: no graceful stop
    drop(relay);
    assert_eq!(dispatched_to(&gh, &delivery), ["org1/one", "org1/two"]);

    // THEN a new process on the same database finishes the job exactly once per target
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let relay = Relay::start(&gh, ALLOWLIST, settings, Some(dir.clone()), "s").await;
        let records = relay.settled(&delivery, VISIBILITY_TIMEOUT + Duration::from_secs(15)).await;
        assert_eq!(dispatched_to(&gh, &delivery), ["org1/one", "org1/two", "org2/three", "org3/four"]);
        let attempts: Vec<_> = records.iter().map(|r| (r.target.key().to_owned(), r.status, r.attempts)).collect();
        assert_eq!(
            attempts,
            [
                ("org1/one".to_owned(), DispatchStatus::Dispatched, 1),
                ("org1/two".to_owned(), DispatchStatus::Dispatched, 1),
                ("org2/three".to_owned(), DispatchStatus::Dispatched, 2),
                ("org3/four".to_owned(), DispatchStatus::Dispatched, 1),
            ]
        );
        relay.stop().await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}
