//! The GitHub client tracks each identity's primary rate limit from
//! GitHub's `x-ratelimit-*` answers and stops sending before it is spent,
//! lower priorities first (`crcr_core::rate_limit`), against a stand-in that
//! enforces the primary limit as GitHub does (403 "API rate limit exceeded
//! for installation ID N." with `x-ratelimit-remaining: 0`).

use std::time::Duration;

use crcr_clients::github::GitHubAppClient;
use crcr_core::checks::{CheckOutput, CheckRunRequest, CheckRuns, CheckStatus};
use crcr_core::config::GitHubAppConfig;
use crcr_core::domain::{HeadSha, RepoFullName};
use crcr_core::ports::{GitHubApp, GitHubError, InstallationId};
use crcr_core::rate_limit::RateLimitIdentity;
use crcr_core::redeliver::{HookDeliveries, HookError};
use crcr_standin::{AuthKind, StandIn, StandInOptions};

/// A stand-in enforcing a primary limit of `limit` calls per identity and
/// `window`, with the App installed on `org/t0`..`org/t11` (one installation).
async fn stand_in(limit: u64, window: Duration) -> (StandIn, Vec<RepoFullName>) {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let repos: Vec<RepoFullName> = (0..12).map(|i| RepoFullName::parse(&format!("org/t{i}")).unwrap()).collect();
    for r in &repos {
        gh.install(r.as_str());
    }
    gh.set_rate_limit(limit);
    gh.enforce_primary_limit(true, window);
    (gh, repos)
}

fn client(gh: &StandIn) -> GitHubAppClient {
    GitHubAppClient::new(GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url())).unwrap()
}

fn body() -> crcr_core::client_payload::DispatchBody {
    crcr_core::client_payload::build_from_text("e", "d-1", "{}").unwrap()
}

/// Looks up `repo`'s installation and dispatches to it.
async fn dispatch(client: &GitHubAppClient, repo: &RepoFullName) -> Result<InstallationId, GitHubError> {
    let installation = client.installation(repo).await?.expect("installed");
    client.dispatch(repo, installation, &body()).await.map(|()| installation)
}

fn check_run(n: usize) -> CheckRunRequest {
    CheckRunRequest {
        name: format!("crcr/org/t1/ci/job{n}"),
        head_sha: HeadSha::parse(&"a".repeat(40)).unwrap(),
        details_url: None,
        external_id: format!("{n}"),
        status: CheckStatus::InProgress,
        conclusion: None,
        started_at: None,
        completed_at: None,
        output: CheckOutput { title: "queued".into(), summary: "queued".into() },
    }
}

fn calls_as(gh: &StandIn, auth: AuthKind) -> usize {
    gh.requests().iter().filter(|r| r.auth == auth).count()
}

/// The redelivery job (which reads the App's delivery log with the App's
/// JWT) stops with half of the App's limit left; dispatches (installation
/// lookups and token mints with the same JWT) spend the rest, to GitHub's
/// 0 and not past it.
#[tokio::test]
async fn the_redelivery_job_leaves_the_apps_last_half_to_dispatches() {
    let (gh, repos) = stand_in(40, Duration::from_secs(3600)).await;
    let client = client(&gh);
    let mut pages = 0;
    let deferred = loop {
        match client.list_page(10, None).await {
            Ok(_) => pages += 1,
            Err(e) => break e,
        }
        assert!(pages <= 40, "the redelivery job never stopped");
    };
    assert_eq!(pages, 20, "pages read while more than half of the App's 40 calls were left");
    let HookError::Transient { reason, retry_after: Some(wait) } = &deferred else {
        panic!("not a deferral: {deferred:?}")
    };
    assert!(reason.contains("app: 20 of 40 left") && reason.contains("redelivery"), "{reason}");
    // Until the reset, and its second (crcr_core::rate_limit::RESET_SLACK_S).
    assert!(*wait > Duration::from_secs(3500) && *wait <= Duration::from_secs(3601), "{wait:?}");
    // Dispatches go on: each new repository costs the App a lookup and a mint.
    let mut sent = 0;
    let refused = loop {
        match dispatch(&client, &repos[sent]).await {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(sent, 10, "20 App calls left: 10 lookups and 10 mints");
    assert!(matches!(refused, GitHubError::Deferred { .. }), "{refused:?}");
    assert_eq!(calls_as(&gh, AuthKind::AppJwt), 40, "the App spent its limit exactly");
    assert!(gh.primary_refusals().is_empty(), "GitHub refused {:?}", gh.primary_refusals());
    assert_eq!(client.rate_limit_window(RateLimitIdentity::App).map(|w| w.remaining), Some(0));
}

/// Check-run writes stop with a tenth of the installation's limit left;
/// dispatches with the same installation spend it.
#[tokio::test]
async fn check_runs_leave_the_installations_last_tenth_to_dispatches() {
    let (gh, repos) = stand_in(40, Duration::from_secs(3600)).await;
    let client = client(&gh);
    let installation = dispatch(&client, &repos[0]).await.unwrap();
    let mut created = 0;
    let deferred = loop {
        match client.create_check_run(&repos[1], &check_run(created)).await {
            Ok(_) => created += 1,
            Err(e) => break e,
        }
        assert!(created <= 40, "check runs never stopped");
    };
    assert!(matches!(&deferred, GitHubError::Deferred { reason, .. } if reason.contains("check_run")), "{deferred:?}");
    assert_eq!(created, 35, "39 left after the first dispatch, 4 kept");
    let mut dispatched = 1;
    while client.dispatch(&repos[0], installation, &body()).await.is_ok() {
        dispatched += 1;
    }
    assert_eq!(dispatched, 5);
    assert_eq!(calls_as(&gh, AuthKind::InstallationToken), 40);
    assert!(gh.primary_refusals().is_empty(), "GitHub refused {:?}", gh.primary_refusals());
}

/// Without the tracking GitHub refuses: the stand-in's limit is real.
#[tokio::test]
async fn the_stand_in_refuses_a_call_past_the_limit_as_github_does() {
    let (gh, repos) = stand_in(3, Duration::from_secs(3600)).await;
    let client = client(&gh);
    let installation = dispatch(&client, &repos[0]).await.unwrap();
    // A second client knows nothing of the first one's spending.
    let other = self::client(&gh);
    for _ in 0..2 {
        client.dispatch(&repos[0], installation, &body()).await.unwrap();
    }
    let refused = other.dispatch(&repos[0], installation, &body()).await.unwrap_err();
    // GitHub's refusal waits for the reset like a deferral (not a failure).
    let GitHubError::Deferred { reason, retry_after } = &refused else { panic!("{refused:?}") };
    assert!(reason.starts_with("GitHub refused: 403 API rate limit exceeded for installation ID"), "{reason}");
    assert!(*retry_after > Duration::from_secs(3500), "{retry_after:?}");
    let refusals = gh.primary_refusals();
    assert_eq!(refusals.get(&format!("installation:{}", installation.0)), Some(&1), "{refusals:?}");
    // The first client goes by what GitHub answered the other: nothing left.
    let err = client.dispatch(&repos[0], installation, &body()).await.unwrap_err();
    assert!(matches!(err, GitHubError::Deferred { .. }), "{err:?}");
}

/// A spent identity sends again once GitHub's window has reset.
#[tokio::test]
async fn a_spent_identity_sends_again_after_the_reset() {
    let (gh, repos) = stand_in(3, Duration::from_secs(2)).await;
    let client = client(&gh);
    let installation = dispatch(&client, &repos[0]).await.unwrap();
    for _ in 0..2 {
        client.dispatch(&repos[0], installation, &body()).await.unwrap();
    }
    let GitHubError::Deferred { retry_after, .. } =
        client.dispatch(&repos[0], installation, &body()).await.unwrap_err()
    else {
        panic!("not deferred")
    };
    assert!(retry_after <= Duration::from_secs(3), "the reset and its second: {retry_after:?}");
    // Waiting for the event the deferral names: the window's reset.
    tokio::time::sleep(retry_after).await;
    client.dispatch(&repos[0], installation, &body()).await.expect("sent in the new window");
    assert_eq!(gh.dispatches().len(), 4);
    assert!(gh.primary_refusals().is_empty(), "GitHub refused {:?}", gh.primary_refusals());
}
