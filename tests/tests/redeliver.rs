//! End to end: a webhook GitHub failed to deliver to a `crcr serve` relay
//! reaches it after missed-delivery recovery. The stand-in really POSTs the
//! redelivered payload to the relay's webhook URL, signed with the App's
//! secret and keeping the GUID, as GitHub does.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crcr_clients::github::GitHubAppConfig;
use crcr_core::ports::{DispatchStatus, SystemClock};
use crcr_core::redeliver::RunOptions;
use crcr_embedded::sqlite::SqliteKv;
use crcr_standin::{HookDeliverySeed, StandIn, StandInOptions};
use crcr_tests::*;

#[tokio::test]
async fn a_delivery_github_failed_to_deliver_is_dispatched_once_after_redelivery() {
    // GIVEN a relay with PyTorch's allowlist, the App installed on two of its repositories
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    gh.install("pytorch/crcr-test");
    gh.install("vllm-project/vllm");
    let relay = Relay::start(&gh, PYTORCH_ALLOWLIST, test_settings(), None, "s3cret").await;
    gh.set_app_webhook(&format!("{}/github/webhook", relay.url), "s3cret");
    // ... and GitHub's log: pull_request.opened never reached it (nothing
    // answered), a push did (202)
    let missed = uuid();
    let body = fixture("pull_request.opened");
    let twenty_min_ago = SystemTime::now() - Duration::from_secs(20 * 60);
    gh.add_hook_delivery(
        HookDeliverySeed::new(&missed, "pull_request", 0, twenty_min_ago).action("opened").payload(&body),
    );
    let delivered = uuid();
    gh.add_hook_delivery(HookDeliverySeed::new(&delivered, "push", 202, twenty_min_ago).payload(&fixture("push")));
    assert!(dispatched_to(&gh, &missed).is_empty());

    // WHEN recovery runs on the relay's own state (its SQLite `kv` table, as `crcr serve` does)
    let state = Arc::new(SqliteKv::new(relay.db(), Arc::new(SystemClock)));
    let app = GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url());
    let redeliverer = crcr_clients::compose::redeliverer(&app, state).unwrap();
    let report = redeliverer.run(&RunOptions::default()).await.unwrap();
    assert_eq!((report.redelivered, report.failed, report.errors.len()), (1, 1, 0), "{report:#?}");

    // THEN GitHub redelivers it, the relay accepts it (202) and dispatches it to both targets
    let deadline = Instant::now() + Duration::from_secs(20);
    let redelivery = loop {
        if let Some(e) = gh.hook_deliveries().into_iter().find(|e| e.guid == missed && e.redelivery) {
            break e;
        }
        assert!(Instant::now() < deadline, "GitHub never redelivered {missed}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(redelivery.status_code, 202, "the relay accepted the signed redelivery");
    let records = relay.settled(&missed, Duration::from_secs(20)).await;
    assert_eq!(dispatched_to(&gh, &missed), ["pytorch/crcr-test", "vllm-project/vllm"]);
    assert!(records.iter().all(|r| r.status == DispatchStatus::Dispatched), "{records:?}");
    assert!(dispatched_to(&gh, &delivered).is_empty(), "the delivered push was not redelivered");

    // AND a second run asks for nothing: the GUID now has a 2xx attempt
    let again = redeliverer.run(&RunOptions::default()).await.unwrap();
    assert_eq!((again.redelivered, again.skipped_ok), (0, 1), "{again:#?}");
    let asked: Vec<Option<String>> = gh.redelivery_requests().into_iter().map(|r| r.guid).collect();
    assert_eq!(asked, [Some(missed.clone())]);
    assert_eq!(dispatched_to(&gh, &missed).len(), 2, "dispatched once per target");
    relay.stop().await;
}
