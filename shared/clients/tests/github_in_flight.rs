//! The GitHub client keeps its requests in flight within
//! `GitHubAppConfig::max_in_flight`, against a stand-in that refuses what
//! passes GitHub's concurrency limit (403, "You have exceeded a secondary
//! rate limit").

use std::sync::Arc;
use std::time::Duration;

use crcr_clients::github::GitHubAppClient;
use crcr_core::config::GitHubAppConfig;
use crcr_core::domain::RepoFullName;
use crcr_core::ports::{GitHubApp, GitHubError};
use crcr_standin::{SecondaryLimit, SecondaryLimits, StandIn, StandInOptions};

const TARGETS: usize = 12;

/// A stand-in allowing 4 requests in flight per identity, answering after
/// 100 ms, with the App installed on `org/t0`..`org/t11` (one installation).
async fn stand_in() -> (StandIn, Vec<RepoFullName>) {
    let gh =
        StandIn::start(StandInOptions { latency: Duration::from_millis(100), ..Default::default() }).await.unwrap();
    let repos: Vec<RepoFullName> = (0..TARGETS).map(|i| RepoFullName::parse(&format!("org/t{i}")).unwrap()).collect();
    for r in &repos {
        gh.install(r.as_str());
    }
    (gh, repos)
}

/// Dispatches to every repository at once through `client`; the failures.
async fn dispatch_all(gh: &StandIn, client: GitHubAppClient, repos: &[RepoFullName]) -> Vec<GitHubError> {
    let client = Arc::new(client);
    // Installation lookups and tokens first, one at a time, so only the dispatches run together.
    let mut installations = vec![];
    for r in repos {
        installations.push(client.installation(r).await.unwrap().expect("installed"));
    }
    gh.enforce_secondary_limits(Some(SecondaryLimits {
        concurrent: 4,
        ..SecondaryLimits::scaled(Duration::from_secs(60))
    }));
    let body = crcr_core::client_payload::build_from_text("e", "d-1", "{}").unwrap();
    let calls = repos.iter().zip(installations).map(|(r, i)| {
        let (client, body, repo) = (client.clone(), body.clone(), r.clone());
        tokio::spawn(async move { client.dispatch(&repo, i, &body).await })
    });
    let mut failures = vec![];
    for call in calls.collect::<Vec<_>>() {
        if let Err(e) = call.await.unwrap() {
            failures.push(e);
        }
    }
    failures
}

fn client(gh: &StandIn, max_in_flight: usize) -> GitHubAppClient {
    let cfg =
        GitHubAppConfig { max_in_flight, ..GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url()) };
    GitHubAppClient::new(cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_slot_instead_of_passing_githubs_concurrency_limit() {
    let (gh, repos) = stand_in().await;
    let failures = dispatch_all(&gh, client(&gh, 4), &repos).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(gh.dispatches().len(), TARGETS);
    assert_eq!(gh.secondary_refusals().get(&SecondaryLimit::Concurrency), None);
}

/// The same calls with room for all of them at once: GitHub's limit refuses
/// some (what the cap is for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_cap_the_same_burst_passes_the_limit() {
    let (gh, repos) = stand_in().await;
    let failures = dispatch_all(&gh, client(&gh, TARGETS), &repos).await;
    assert!(!failures.is_empty());
    assert!(failures.iter().all(|e| matches!(e, GitHubError::Transient { .. })), "{failures:?}");
    assert!(gh.secondary_refusals().get(&SecondaryLimit::Concurrency).is_some_and(|n| *n as usize == failures.len()));
}

/// A burst of dispatches to one repository with no token yet mints one
/// token, not one per dispatch: the callers that find none wait for the
/// mint under way (issue 15: a PyTorch burst minted ~300 at once, past
/// GitHub's 900 points a minute for the App, 5 per mint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_one_repository_mints_one_token() {
    let (gh, repos) = stand_in().await;
    let client = Arc::new(client(&gh, 100));
    let repo = repos[0].clone();
    let installation = client.installation(&repo).await.unwrap().expect("installed");
    let body = crcr_core::client_payload::build_from_text("e", "d-1", "{}").unwrap();
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let (client, body, repo) = (client.clone(), body.clone(), repo.clone());
            tokio::spawn(async move { client.dispatch(&repo, installation, &body).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("dispatched");
    }
    let mints = gh.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/access_tokens")).count();
    assert_eq!(mints, 1, "one token for the burst");
    assert_eq!(gh.dispatches().len(), 20);
}
