//! End to end on the embedded default: signed real fixtures → ingest →
//! SQLite queue → dispatcher → GitHub stand-in (which enforces GitHub's
//! rules), asserting what GitHub received and what the store recorded.

use std::time::Duration;

use crcr_core::dispatch::DispatcherSettings;
use crcr_core::ports::{DispatchStatus, DispatchStore, QueueInspect, QueueReceive, QueueSide};
use crcr_embedded::sqlite::SqliteQueue;
use crcr_standin::{Fault, StandIn, StandInOptions};
use crcr_tests::*;
use serde_json::Value;

const SMALL_ALLOWLIST: &str = "L1:\n  - org1/one\n  - org1/two\nL2:\n  - Org2/Three\n  - org2/not-installed\nL3:\n  gpu:\n    org3/four: [alice]\n";
const INSTALLED: &[&str] = &["org1/one", "org1/two", "org2/three", "org3/four"];

async fn standin() -> StandIn {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for r in INSTALLED {
        gh.install(r);
    }
    gh
}

fn dispatch_calls(gh: &StandIn, repo: &str) -> Vec<(u16, u64)> {
    gh.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.eq_ignore_ascii_case(&format!("/repos/{repo}/dispatches")))
        .map(|r| (r.status, r.at_ms))
        .collect()
}

#[tokio::test]
async fn dispatches_exactly_to_allowlisted_and_installed_repos_with_the_payload() {
    // GIVEN PyTorch's real allowlist with the App installed on two of its repositories
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    gh.install("pytorch/crcr-test");
    gh.install("vllm-project/vllm");
    gh.install("someone/else"); // installed but not allowlisted: never a target
    let relay = Relay::start(&gh, PYTORCH_ALLOWLIST, test_settings(), None, "s3cret").await;
    let body = fixture("pull_request.opened");
    let delivery = uuid();
    // WHEN GitHub delivers pull_request.opened
    let (status, answer) = relay.post("pull_request", &delivery, &body, false).await;
    // THEN 202 with the delivery id, and exactly the allowlisted ∩ installed repos got it once
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["delivery_id"], delivery.as_str());
    let records = relay.settled(&delivery, Duration::from_secs(20)).await;
    assert_eq!(dispatched_to(&gh, &delivery), ["pytorch/crcr-test", "vllm-project/vllm"]);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.status == DispatchStatus::Dispatched && r.attempts == 1));
    let l3 = records.iter().find(|r| r.target.as_str() == "pytorch/crcr-test").unwrap();
    assert_eq!(l3.meta.level, crcr_core::domain::Level::L3);
    assert_eq!(l3.meta.pr_number, Some(2));
    assert_eq!(l3.meta.head_sha.as_ref().map(|s| s.as_str()), Some("ec26c3e57ca3a959ca5aad62de7213c562f8c821"));
    let sent = gh.dispatches().into_iter().find(|d| d.repo == "vllm-project/vllm").unwrap();
    assert_eq!(sent.body["event_type"], "pull_request");
    assert_eq!(sent.body["client_payload"]["event_type"], "pull_request");
    assert_eq!(sent.body["client_payload"]["delivery_id"], delivery.as_str());
    let upstream: Value = serde_json::from_slice(&body).unwrap();
    assert!(sent.body["client_payload"]["payload"] == upstream, "payload differs from the webhook's");
    assert!(sent.body["client_payload"].get("payload_trimmed").is_none());
    relay.stop().await;
}

#[tokio::test]
async fn a_target_failing_three_times_with_502_gets_exactly_one_dispatch() {
    let gh = standin().await;
    for _ in 0..3 {
        gh.inject("org1/two", Fault::ServerError(502));
    }
    let relay = Relay::start(&gh, SMALL_ALLOWLIST, test_settings(), None, "s").await;
    let delivery = uuid();
    assert_eq!(relay.post("push", &delivery, &fixture("push"), false).await.0, 202);
    let records = relay.settled(&delivery, Duration::from_secs(20)).await;
    assert_eq!(dispatched_to(&gh, &delivery), ["org1/one", "org1/two", "org2/three", "org3/four"]);
    let calls: Vec<u16> = dispatch_calls(&gh, "org1/two").into_iter().map(|c| c.0).collect();
    assert_eq!(calls, [502, 502, 502, 204]);
    assert!(records.iter().all(|r| r.status == DispatchStatus::Dispatched));
    relay.stop().await;
}

#[tokio::test]
async fn retry_after_and_rate_limit_reset_are_waited_out() {
    let gh = standin().await;
    gh.inject("org1/one", Fault::SecondaryRateLimit { retry_after_s: 2 });
    gh.inject("org2/three", Fault::PrimaryRateLimit { reset_in_s: 1 });
    let relay = Relay::start(&gh, SMALL_ALLOWLIST, test_settings(), None, "s").await;
    let delivery = uuid();
    assert_eq!(relay.post("push", &delivery, &fixture("push"), false).await.0, 202);
    relay.settled(&delivery, Duration::from_secs(20)).await;
    let one = dispatch_calls(&gh, "org1/one");
    assert_eq!(one.iter().map(|c| c.0).collect::<Vec<_>>(), [403, 204]);
    assert!(one[1].1 - one[0].1 >= 2000, "Retry-After: 2 honoured, waited {} ms", one[1].1 - one[0].1);
    let three = dispatch_calls(&gh, "org2/three");
    assert_eq!(three.iter().map(|c| c.0).collect::<Vec<_>>(), [429, 204]);
    assert!(three[1].1 - three[0].1 >= 900, "x-ratelimit-reset honoured, waited {} ms", three[1].1 - three[0].1);
    assert_eq!(dispatched_to(&gh, &delivery).len(), 4);
    relay.stop().await;
}

#[tokio::test]
async fn a_redelivery_sends_nothing_new_and_steady_state_makes_one_call_per_target() {
    let gh = standin().await;
    let relay = Relay::start(&gh, SMALL_ALLOWLIST, test_settings(), None, "s").await;
    let first = uuid();
    let body = fixture("pull_request.synchronize");
    assert_eq!(relay.post("pull_request", &first, &body, false).await.0, 202);
    relay.settled(&first, Duration::from_secs(20)).await;
    let calls_after_first = gh.requests().len();
    // Same X-GitHub-Delivery again (GitHub's "Redeliver"): accepted, nothing sent.
    assert_eq!(relay.post("pull_request", &first, &body, false).await.0, 202);
    relay.settled(&first, Duration::from_secs(20)).await;
    assert_eq!(dispatched_to(&gh, &first).len(), 4);
    let new_calls: Vec<_> =
        gh.requests()[calls_after_first..].iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert!(new_calls.is_empty(), "redelivery made GitHub calls: {new_calls:?}");
    // A new delivery: installations and tokens are cached, so one call per target.
    let second = uuid();
    assert_eq!(relay.post("pull_request", &second, &body, false).await.0, 202);
    relay.settled(&second, Duration::from_secs(20)).await;
    let second_calls: Vec<_> =
        gh.requests()[calls_after_first..].iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(second_calls.len(), 4, "{second_calls:?}");
    assert!(second_calls.iter().all(|c| c.ends_with("/dispatches")), "{second_calls:?}");
    relay.stop().await;
}

#[tokio::test]
async fn a_message_that_always_fails_ends_in_the_dlq_with_its_reason() {
    let gh = standin().await;
    for _ in 0..20 {
        gh.inject("org3/four", Fault::ServerError(503));
    }
    let settings = DispatcherSettings { max_calls: 2, max_receive_count: 3, ..test_settings() };
    let relay = Relay::start(&gh, SMALL_ALLOWLIST, settings, None, "s").await;
    let delivery = uuid();
    assert_eq!(relay.post("push", &delivery, &fixture("push"), false).await.0, 202);
    let dlq = SqliteQueue::new(relay.db(), "dispatch", 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dlq.depth(QueueSide::DeadLetter).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let records = relay.store.records(&crcr_core::domain::DeliveryId::parse(&delivery).unwrap()).await.unwrap();
    let dead = dlq.receive(QueueSide::DeadLetter, 10, Duration::from_secs(30), Duration::ZERO).await.unwrap();
    assert_eq!(dead.len(), 1);
    let reason = dead[0].dead_letter_reason.as_deref().unwrap();
    assert!(reason.contains("after 3 receives") && reason.contains("org3/four: 503"), "{reason}");
    assert!(dead[0].body.contains(&delivery));
    // Three receives x two calls; the other targets were dispatched once, on the first receive.
    assert_eq!(dispatch_calls(&gh, "org3/four").len(), 6);
    assert_eq!(dispatched_to(&gh, &delivery), ["org1/one", "org1/two", "org2/three"]);
    // The stuck target stays pending (a replay can take it) with its last error and attempt count.
    let four = records.iter().find(|r| r.target.key() == "org3/four").unwrap();
    assert_eq!((four.status, four.attempts), (DispatchStatus::Pending, 3));
    assert_eq!(four.last_error.as_deref(), Some("503 Service Unavailable"));
    assert_eq!(relay.queue.depth(QueueSide::Source).await.unwrap(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn forged_signature_is_refused_and_nothing_is_enqueued() {
    let gh = standin().await;
    let relay = Relay::start(&gh, SMALL_ALLOWLIST, test_settings(), None, "s").await;
    let delivery = uuid();
    let (status, answer) = relay.post("pull_request", &delivery, &fixture("pull_request.opened"), true).await;
    assert_eq!(status, 401, "{answer}");
    // Nothing enqueued, so nothing can be dispatched later.
    assert_eq!(relay.queue.depth(QueueSide::Source).await.unwrap(), 0);
    assert!(gh.requests().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn an_event_too_large_for_one_message_is_claim_checked_and_trimmed() {
    let gh = standin().await;
    let relay = Relay::start(&gh, SMALL_ALLOWLIST, test_settings(), None, "s").await;
    let mut payload: Value = serde_json::from_slice(&fixture("pull_request.synchronize")).unwrap();
    payload["pull_request"]["body"] = Value::String("x".repeat(400_000)); // > SQS's 256 KiB
    let body = serde_json::to_vec(&payload).unwrap();
    let delivery = uuid();
    assert_eq!(relay.post("pull_request", &delivery, &body, false).await.0, 202);
    let records = relay.settled(&delivery, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r.status == DispatchStatus::Dispatched && r.payload_trimmed));
    for d in gh.dispatches() {
        assert_eq!(d.body["client_payload"]["payload_trimmed"], true);
        assert_eq!(
            d.body["client_payload"]["payload"]["pull_request"]["head"]["sha"],
            payload["pull_request"]["head"]["sha"]
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn ignored_events_answer_200_and_dispatch_nothing() {
    let gh = standin().await;
    let relay = Relay::start(&gh, SMALL_ALLOWLIST, test_settings(), None, "s").await;
    for (event, name) in [
        ("ping", "ping"),
        ("pull_request", "pull_request.unlabeled"),
        ("check_run", "check_run.completed"),
        ("installation", "installation.created"),
    ] {
        let (status, answer) = relay.post(event, &uuid(), &fixture(name), false).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert!(answer["ignored"].is_string(), "{name}: {answer}");
    }
    let (status, _) = relay.post("pull_request", "not a guid!", &fixture("pull_request.opened"), false).await;
    assert_eq!(status, 400);
    // `labeled` is the reconciler's (check runs), never fanned out.
    let (status, answer) = relay.post("pull_request", &uuid(), &fixture("pull_request.labeled"), false).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(relay.queue.depth(QueueSide::Source).await.unwrap(), 0);
    assert!(gh.dispatches().is_empty());
    relay.stop().await;
}

/// GitHub docs "Webhook events and payloads" → `push`: deleting a tag or a
/// branch sends `push` with `deleted: true` and `after` all zeros. That is
/// not a build: 200 ignored, nothing queued, dispatched or recorded; a
/// creation (`created: true`, `before` all zeros: the real fixture) is.
#[tokio::test]
async fn a_push_deleting_a_ref_is_ignored_and_a_push_creating_one_is_dispatched() {
    let gh = standin().await;
    let relay = Relay::start(&gh, SMALL_ALLOWLIST, test_settings(), None, "s").await;
    let created = fixture("push");
    let mut deletion: Value = serde_json::from_slice(&created).unwrap();
    deletion["created"] = false.into();
    deletion["deleted"] = true.into();
    deletion["before"] = deletion["after"].clone();
    deletion["after"] = "0000000000000000000000000000000000000000".into();
    deletion["head_commit"] = Value::Null;
    deletion["commits"] = Value::Array(vec![]);
    let deleted = uuid();
    let (status, answer) = relay.post("push", &deleted, &serde_json::to_vec(&deletion).unwrap(), false).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ignored"], "push deleted refs/tags/simple-tag: no commit to build");
    // Answered without queueing: nothing can reach GitHub later.
    assert_eq!(relay.queue.depth(QueueSide::Source).await.unwrap(), 0);
    let creation = uuid();
    assert_eq!(relay.post("push", &creation, &created, false).await.0, 202);
    let records = relay.settled(&creation, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 4);
    assert_eq!(dispatched_to(&gh, &creation), ["org1/one", "org1/two", "org2/three", "org3/four"]);
    assert!(dispatched_to(&gh, &deleted).is_empty());
    assert_eq!(gh.dispatches().len(), 4);
    assert!(relay.store.records(&crcr_core::domain::DeliveryId::parse(&deleted).unwrap()).await.unwrap().is_empty());
    let zero = relay
        .store
        .records_for_commit(&crcr_core::domain::HeadSha::parse("0000000000000000000000000000000000000000").unwrap(), 10)
        .await
        .unwrap();
    assert!(zero.is_empty(), "records under the zero SHA: {zero:?}");
    relay.stop().await;
}

/// GitHub gives every webhook subscribed to an event the same
/// `X-GitHub-Delivery` GUID (REST "Webhook deliveries": `guid` is "shared
/// with all deliveries for all webhooks that subscribe to this event") and a
/// redelivery keeps hook and GUID: a delivery is (X-GitHub-Hook-ID, GUID).
/// Two hooks' deliveries of one event are both dispatched (downstream sees
/// the GUID as `delivery_id` in both); redelivering either sends nothing.
#[tokio::test]
async fn two_hooks_with_one_guid_are_both_dispatched_and_a_redelivery_of_either_is_not() {
    let gh = standin().await;
    let relay = Relay::start(&gh, SMALL_ALLOWLIST, test_settings(), None, "s").await;
    let guid = uuid();
    let body = fixture("pull_request.synchronize");
    for hook in ["292430182", "7"] {
        let (status, answer) = relay.post_from_hook("pull_request", &guid, Some(hook), &body, false).await;
        assert_eq!(status, 202, "hook {hook}: {answer}");
        relay.settled(&guid, Duration::from_secs(20)).await;
    }
    let targets = ["org1/one", "org1/two", "org2/three", "org3/four"];
    let twice: Vec<_> = targets.iter().flat_map(|t| [t.to_string(), t.to_string()]).collect();
    assert_eq!(dispatched_to(&gh, &guid), twice);
    let records = relay.settled(&guid, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 8);
    assert!(records.iter().all(|r| r.status == DispatchStatus::Dispatched), "{records:?}");
    let hooks: Vec<_> = records.iter().map(|r| r.meta.hook_id).collect();
    assert_eq!(hooks.iter().filter(|h| **h == Some(7)).count(), 4);
    assert_eq!(hooks.iter().filter(|h| **h == Some(292_430_182)).count(), 4);
    // Redelivering either: accepted, nothing new reaches GitHub.
    let calls = gh.requests().len();
    for hook in ["7", "292430182"] {
        assert_eq!(relay.post_from_hook("pull_request", &guid, Some(hook), &body, false).await.0, 202);
        relay.settled(&guid, Duration::from_secs(20)).await;
    }
    let new_calls: Vec<_> = gh.requests()[calls..].iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert!(new_calls.is_empty(), "a redelivery made GitHub calls: {new_calls:?}");
    assert_eq!(relay.store.records(&crcr_core::domain::DeliveryId::parse(&guid).unwrap()).await.unwrap().len(), 8);
    // A hook id that is not a number: refused, naming the header.
    let (status, answer) = relay.post_from_hook("pull_request", &uuid(), Some("abc"), &body, false).await;
    assert_eq!((status, answer["error"].as_str()), (400, Some("missing or invalid header x-github-hook-id")));
    relay.stop().await;
}

#[tokio::test]
async fn allowlist_is_read_from_github_and_the_last_good_one_is_kept_when_a_reload_fails() {
    use crcr_clients::github::{GitHubAppClient, GitHubAppConfig};
    use crcr_core::allowlist::{AllowlistProvider, AllowlistSource};
    use std::sync::Arc;
    let gh = standin().await;
    gh.install("pytorch/pytorch");
    gh.put_file("pytorch/pytorch", ".github/allowlist.yml", "main", PYTORCH_ALLOWLIST.as_bytes());
    let client =
        Arc::new(GitHubAppClient::new(GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url())).unwrap());
    let source =
        AllowlistSource::from_url("https://github.com/pytorch/pytorch/blob/main/.github/allowlist.yml").unwrap();
    let provider = AllowlistProvider::new(source, Duration::ZERO, Some(client));
    let first = provider.current().await.unwrap();
    assert_eq!(first.entries().len(), 10);
    // A broken edit lands upstream: the relay keeps serving the last good allowlist.
    gh.put_file("pytorch/pytorch", ".github/allowlist.yml", "main", b"L1: [org/a, org/a]\n");
    let second = provider.current().await.unwrap();
    assert_eq!(second.version(), first.version());
    assert_eq!(provider.refresh_failures(), 1);
    let reads: Vec<_> = gh
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/repos/pytorch/pytorch/contents/"))
        .map(|r| (r.status, r.auth))
        .collect();
    assert_eq!(reads.len(), 2);
    assert!(reads.iter().all(|(s, a)| *s == 200 && *a == crcr_standin::AuthKind::InstallationToken), "{reads:?}");
}
