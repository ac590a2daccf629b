//! A renamed (or transferred) downstream repository still named by its old
//! name in the allowlist (issue 12, item 12). GitHub answers the
//! installation lookup of the old name with 301 to
//! `/repositories/{id}/installation`, and a `POST` to the old name with 307
//! (GitHub docs, "Best practices for using the REST API" → "Follow
//! redirects"; developer changelog "Preview repository redirects"). The
//! relay follows the move once, dispatches to the new name, once, and tells
//! on-call: a warning naming both names and the `AllowlistRenamedRepos`
//! counter (no repository label).
//!
//! One test in this binary: the metrics recorder and the log subscriber are
//! per process.

use std::time::Duration;

use crcr_core::ports::DispatchStatus;
use crcr_standin::{StandIn, StandInOptions};
use crcr_telemetry::{init_logs, LogFormat};
use crcr_tests::*;

const ALLOWLIST: &str = "L1:\n  - org/old-name\n  - org/steady\n  - org/later\n";

/// `AllowlistRenamedRepos` from `GET /metrics`: its series (each line
/// without the value) and the total.
async fn renamed_metric(relay: &Relay) -> (Vec<String>, f64) {
    let text = reqwest::get(format!("{}/metrics", relay.url)).await.unwrap().text().await.unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("AllowlistRenamedRepos")).collect();
    let series = lines.iter().map(|l| l.rsplit_once(' ').unwrap().0.to_owned()).collect();
    let total = lines.iter().map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()).sum();
    (series, total)
}

fn calls(gh: &StandIn, method: &str, path: &str) -> Vec<u16> {
    gh.requests().into_iter().filter(|r| r.method == method && r.path == path).map(|r| r.status).collect()
}

const MOVED: &str =
    "allowlisted repository was renamed or transferred: dispatching to its new name; update the allowlist";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_target_gets_its_dispatch_at_the_new_name_once_and_on_call_is_told() {
    let logs = LogLines::default();
    assert!(init_logs("info", LogFormat::Json, logs.clone()), "the only subscriber of this process");
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for r in ["org/old-name", "org/steady", "org/later"] {
        gh.install(r);
    }
    let id = gh.rename("org/old-name", "org/new-name");
    let relay = Relay::start(&gh, ALLOWLIST, test_settings(), None, "s").await;

    // Renamed before the first delivery: the installation lookup is redirected.
    let first = uuid();
    assert_eq!(relay.post("push", &first, &fixture("push"), false).await.0, 202);
    let records = relay.settled(&first, Duration::from_secs(20)).await;
    assert_eq!(dispatched_to(&gh, &first), ["org/later", "org/new-name", "org/steady"]);
    assert_eq!(calls(&gh, "GET", "/repos/org/old-name/installation"), [301]);
    assert_eq!(calls(&gh, "GET", &format!("/repositories/{id}/installation")), [200]);
    assert!(calls(&gh, "POST", "/repos/org/old-name/dispatches").is_empty(), "nothing sent to the old name");
    assert_eq!(calls(&gh, "POST", "/repos/org/new-name/dispatches"), [204]);
    // Recorded under the allowlisted name (the allowlist's entry), dispatched.
    let old = records.iter().find(|r| r.target.as_str() == "org/old-name").expect("a record for the allowlisted name");
    assert_eq!(old.status, DispatchStatus::Dispatched);
    let told = logs.with_message(MOVED);
    assert_eq!(told.len(), 1, "one warning: {told:?}");
    assert_eq!(told[0]["level"], "WARN");
    assert_eq!(told[0]["allowlisted"], "org/old-name");
    assert_eq!(told[0]["now"], "org/new-name");
    assert_eq!(renamed_metric(&relay).await, (vec!["AllowlistRenamedRepos".to_owned()], 1.0));

    // Renamed after its installation was looked up (and cached): the
    // dispatch to the old name is answered 307; the relay looks it up again
    // (301, followed) and sends once to the new name.
    gh.rename("org/later", "org/later-name");
    let second = uuid();
    assert_eq!(relay.post("push", &second, &fixture("push"), false).await.0, 202);
    relay.settled(&second, Duration::from_secs(20)).await;
    assert_eq!(dispatched_to(&gh, &second), ["org/later-name", "org/new-name", "org/steady"]);
    assert_eq!(calls(&gh, "POST", "/repos/org/later/dispatches"), [204, 307]);
    assert_eq!(calls(&gh, "POST", "/repos/org/later-name/dispatches"), [204]);
    // The first rename is remembered: no second redirect for it.
    assert_eq!(calls(&gh, "GET", "/repos/org/old-name/installation"), [301]);
    let told = logs.with_message(MOVED);
    assert_eq!(told.len(), 2, "{told:?}");
    assert_eq!((told[1]["allowlisted"].as_str(), told[1]["now"].as_str()), (Some("org/later"), Some("org/later-name")));
    assert_eq!(renamed_metric(&relay).await, (vec!["AllowlistRenamedRepos".to_owned()], 2.0));
    assert_eq!(gh.dispatches().len(), 6, "one dispatch per target and delivery");
    relay.stop().await;
}

/// Only a redirect on GitHub's own API host is followed (the App's JWT
/// never goes elsewhere): a `Location` on another host is refused, naming it.
#[tokio::test]
async fn a_redirect_to_another_host_is_not_followed() {
    use crcr_core::ports::{GitHubApp, GitHubError};
    let key_source = StandIn::start(StandInOptions::default()).await.unwrap();
    let app = axum::Router::new().route(
        "/repos/{owner}/{repo}/installation",
        axum::routing::get(|| async {
            (
                http::StatusCode::MOVED_PERMANENTLY,
                [(http::header::LOCATION, "https://elsewhere.example/repositories/7/installation")],
                "{\"message\":\"Moved Permanently\"}",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cfg = crcr_clients::github::GitHubAppConfig::new(key_source.app_id(), key_source.private_key_pem(), url);
    let client = crcr_clients::github::GitHubAppClient::new(cfg).unwrap();
    let repo = crcr_core::domain::RepoFullName::parse("org/old-name").unwrap();
    match client.installation(&repo).await {
        Err(GitHubError::Permanent { status: 301, reason }) => {
            assert!(reason.contains("not following a redirect to https://elsewhere.example/"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}
