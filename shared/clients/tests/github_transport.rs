//! The GitHub client's HTTP stack (`crcr_clients::transport`) against the
//! stand-in, which answers HTTP/1.1 and HTTP/2 with prior knowledge on one
//! port and records each request's version and client port (one port per
//! connection): over HTTP/2 requests share a connection a hundred at a time,
//! over HTTP/1.1 each request in flight holds one; every request names its
//! User-Agent (GitHub refuses those that do not); and an answer that takes
//! longer than the timeout fails even while its connection is busy with
//! others; an unreachable GitHub is reported with its cause.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crcr_clients::github::GitHubAppClient;
use crcr_core::config::GitHubAppConfig;
use crcr_core::domain::RepoFullName;
use crcr_core::ports::{GitHubApp, GitHubError, InstallationId};
use crcr_standin::{Fault, StandIn, StandInOptions};

const REPO: &str = "org/backend";

async fn stand_in() -> (StandIn, RepoFullName) {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    gh.install(REPO);
    (gh, RepoFullName::parse(REPO).unwrap())
}

fn client(gh: &StandIn, max_in_flight: usize, h2c: bool, timeout: Duration) -> Arc<GitHubAppClient> {
    let cfg = GitHubAppConfig {
        max_in_flight,
        h2c,
        timeout,
        ..GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url())
    };
    Arc::new(GitHubAppClient::new(cfg).unwrap())
}

/// The installation looked up and the token minted (one request at a time),
/// so what follows is dispatches only.
async fn warm(client: &GitHubAppClient, repo: &RepoFullName) -> InstallationId {
    let installation = client.installation(repo).await.unwrap().expect("installed");
    let body = crcr_core::client_payload::build_from_text("warm", "d-0", "{}").unwrap();
    client.dispatch(repo, installation, &body).await.expect("warm-up dispatch");
    installation
}

/// What the stand-in saw of a burst.
struct Seen {
    /// Client ports (one per connection).
    connections: HashSet<u16>,
    versions: HashSet<http::Version>,
    /// The most requests the stand-in had in hand at once.
    peak_in_flight: usize,
}

/// `n` dispatches to `repo` at once, all answered; what the stand-in saw of them.
async fn burst(gh: &StandIn, client: &Arc<GitHubAppClient>, repo: &RepoFullName, n: usize) -> Seen {
    let installation = warm(client, repo).await;
    let before = gh.requests().len();
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let (client, repo) = (client.clone(), repo.clone());
            let body = crcr_core::client_payload::build_from_text("e", &format!("d-{i}"), "{}").unwrap();
            tokio::spawn(async move { client.dispatch(&repo, installation, &body).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("dispatched");
    }
    let requests = gh.requests()[before..].to_vec();
    assert_eq!(requests.len(), n);
    let mut edges: Vec<(Instant, i32)> = requests.iter().flat_map(|r| [(r.at, 1), (r.at + r.duration, -1)]).collect();
    // At one instant, ends before starts: touching is not overlapping.
    edges.sort_by_key(|&(at, step)| (at, step));
    let mut now = 0i32;
    let peak_in_flight = edges.iter().map(|(_, step)| {
        now += step;
        now
    });
    let peak_in_flight = peak_in_flight.max().unwrap_or(0) as usize;
    Seen {
        connections: requests.iter().map(|r| r.peer_port).collect(),
        versions: requests.iter().map(|r| r.http_version).collect(),
        peak_in_flight,
    }
}

/// 250 requests at once (the stand-in answers after 500 ms) over HTTP/2:
/// three connections at most (100 streams each), and more than one once
/// more than 100 were in flight: not one per request, nor all on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_requests_share_a_connection_a_hundred_at_a_time() {
    let (gh, repo) = stand_in().await;
    let client = client(&gh, 250, true, Duration::from_secs(10));
    gh.set_latency(Duration::from_millis(500));
    let seen = burst(&gh, &client, &repo, 250).await;
    assert_eq!(seen.versions, HashSet::from([http::Version::HTTP_2]));
    assert!(seen.peak_in_flight > 100, "the burst overlapped too little to tell: {}", seen.peak_in_flight);
    let n = seen.connections.len();
    assert!((2..=3).contains(&n), "{n} connections for {} requests in flight at most", seen.peak_in_flight);
}

/// The same burst over HTTP/1.1 (no h2c): a connection per request in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http1_each_request_in_flight_holds_a_connection() {
    let (gh, repo) = stand_in().await;
    let client = client(&gh, 250, false, Duration::from_secs(10));
    gh.set_latency(Duration::from_millis(500));
    let seen = burst(&gh, &client, &repo, 250).await;
    assert_eq!(seen.versions, HashSet::from([http::Version::HTTP_11]));
    assert!(seen.peak_in_flight > 100, "the burst overlapped too little to tell: {}", seen.peak_in_flight);
    assert!(
        seen.connections.len() >= seen.peak_in_flight,
        "{} connections for {} requests in flight at once",
        seen.connections.len(),
        seen.peak_in_flight
    );
}

/// GitHub refuses a request without a User-Agent (403, the stand-in as
/// GitHub); the client's requests, the App's JWT ones and the installation
/// token's, all carry one and are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_carries_a_user_agent_github_accepts() {
    let (gh, repo) = stand_in().await;
    let client = client(&gh, 100, true, Duration::from_secs(10));
    warm(&client, &repo).await;
    let requests = gh.requests();
    assert_eq!(requests.len(), 3, "lookup, mint, dispatch: {requests:?}");
    assert!(requests.iter().all(|r| r.status < 300), "{requests:?}");
    let refused =
        reqwest::Client::new().get(format!("{}/repos/{REPO}/installation", gh.base_url())).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("User-Agent"));
}

/// One answer takes 5 s while others keep its HTTP/2 connection busy (no
/// read on it ever waits as long as the timeout): that request fails at the
/// timeout, as a transient error naming it, and the others go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_timeout_fails_while_its_connection_is_busy() {
    let (gh, repo) = stand_in().await;
    let busy = RepoFullName::parse("org/busy").unwrap();
    gh.install(busy.as_str());
    let timeout = Duration::from_millis(800);
    let client = client(&gh, 100, true, timeout);
    let installation = warm(&client, &repo).await;
    let busy_installation = warm(&client, &busy).await;
    gh.inject(REPO, Fault::Timeout(Duration::from_secs(5)));
    let slow = {
        let (client, repo) = (client.clone(), repo.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let body = crcr_core::client_payload::build_from_text("e", "slow", "{}").unwrap();
            (client.dispatch(&repo, installation, &body).await, started.elapsed())
        })
    };
    let mut others = 0;
    while !slow.is_finished() {
        let body = crcr_core::client_payload::build_from_text("e", &format!("busy-{others}"), "{}").unwrap();
        client.dispatch(&busy, busy_installation, &body).await.expect("the connection's other requests go on");
        others += 1;
    }
    let (answer, took) = slow.await.unwrap();
    match answer {
        Err(GitHubError::Transient { reason, .. }) => assert!(reason.contains("did not answer within"), "{reason}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(took < Duration::from_secs(4), "failed after {took:?}");
    assert!(others > 1, "the connection was busy meanwhile ({others} other requests)");
    let ports: HashSet<u16> = gh.requests().iter().map(|r| r.peer_port).collect();
    assert_eq!(ports.len(), 1, "one connection throughout: {ports:?}");
}

/// Unreachable GitHub: the reason says why (hyper-util's "tcp connect
/// error" and the OS's refusal), not only octocrab's "client error (Connect)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_github_is_reported_with_its_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let cfg = GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), format!("http://{closed}"));
    let client = GitHubAppClient::new(cfg).unwrap();
    match client.installation(&RepoFullName::parse(REPO).unwrap()).await {
        Err(GitHubError::Transient { reason, .. }) => {
            assert!(reason.starts_with("GitHub unreachable: "), "{reason}");
            assert!(reason.contains("tcp connect error"), "{reason}");
        }
        other => panic!("expected GitHub unreachable, got {other:?}"),
    }
}
