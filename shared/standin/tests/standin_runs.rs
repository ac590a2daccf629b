//! Downstream workflow runs (issue 4) against the GitHub stand-in: the App
//! client's re-run and cancel calls ([`WorkflowRuns`] on
//! [`GitHubAppClient`]) with GitHub's answers (201 / 202, 403 "This workflow
//! is already running", 404, 409 "Cannot cancel a workflow run that is
//! completed.", faults), the stand-in's `actions: write` rule, and
//! "List check runs in a check suite" on the App's suite of one head SHA.
//!
//! Run: `cargo test -p crcr-standin --test standin_runs`

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crcr_clients::github::{GitHubAppClient, GitHubAppConfig};
use crcr_core::domain::RepoFullName;
use crcr_core::ports::GitHubError;
use crcr_core::runs::{RunRequest, WorkflowRuns};
use crcr_standin::{Fault, StandIn, StandInOptions, WorkflowRunState};
use octocrab::jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const DOWN: &str = "org/down";
const UP: &str = "up-org/up";

async fn setup() -> (StandIn, GitHubAppClient, RepoFullName) {
    let gh = StandIn::start(StandInOptions::default()).await.expect("stand-in starts");
    gh.install(DOWN);
    let client = GitHubAppClient::new(GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url())).unwrap();
    (gh, client, RepoFullName::parse(DOWN).unwrap())
}

fn state(status: &str, conclusion: Option<&str>, run_attempt: u32) -> Option<WorkflowRunState> {
    Some(WorkflowRunState { status: status.into(), conclusion: conclusion.map(str::to_owned), run_attempt })
}

/// (kind, run id, status) of the run requests the stand-in recorded on `repo`.
fn requests(gh: &StandIn, repo: &str) -> Vec<(String, u64, u16)> {
    gh.run_requests(repo).into_iter().map(|r| (r.kind, r.run_id, r.status)).collect()
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An App JWT as octocrab makes it.
fn app_jwt(s: &StandIn) -> String {
    let key = EncodingKey::from_rsa_pem(s.private_key_pem().as_bytes()).unwrap();
    let claims = json!({"iss": s.app_id(), "iat": now_s() - 60, "exp": now_s() + 540});
    encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
}

struct Answer {
    status: u16,
    link: Option<String>,
    body: Value,
}

async fn call(s: &StandIn, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Answer {
    let mut req =
        reqwest::Client::new().request(method, format!("{}{path}", s.base_url())).header("user-agent", "crcr-tests");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.expect("stand-in reachable");
    let status = res.status().as_u16();
    let link = res.headers().get("link").map(|v| v.to_str().unwrap().to_owned());
    let body = res.json().await.unwrap_or(Value::Null);
    Answer { status, link, body }
}

/// An installation token of `repo`'s installation, narrowed to `repo` and `permissions`.
async fn mint(s: &StandIn, repo: &str, permissions: Value) -> String {
    let installation = s.install(repo);
    let name = repo.split_once('/').unwrap().1;
    let path = format!("/app/installations/{installation}/access_tokens");
    let body = json!({"repositories": [name], "permissions": permissions});
    let r = call(s, reqwest::Method::POST, &path, Some(&app_jwt(s)), Some(&body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["token"].as_str().unwrap().to_owned()
}

async fn post_run(s: &StandIn, repo: &str, run_id: u64, action: &str, token: Option<&str>) -> Answer {
    call(s, reqwest::Method::POST, &format!("/repos/{repo}/actions/runs/{run_id}/{action}"), token, None).await
}

fn permanent_status(e: GitHubError) -> u16 {
    match e {
        GitHubError::Permanent { status, .. } => status,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn rerun_failed_jobs_of_a_completed_run_is_accepted_then_already_running() {
    let (gh, client, down) = setup().await;
    gh.add_workflow_run(DOWN, 11, "completed", Some("failure"));

    assert_eq!(client.rerun_failed_jobs(&down, 11).await.unwrap(), RunRequest::Accepted);
    assert_eq!(gh.workflow_run(DOWN, 11), state("in_progress", None, 2));

    assert_eq!(client.rerun_failed_jobs(&down, 11).await.unwrap(), RunRequest::AlreadyRunning);
    assert_eq!(gh.workflow_run(DOWN, 11), state("in_progress", None, 2), "a refused re-run changes nothing");
    assert_eq!(requests(&gh, DOWN), vec![("rerun-failed-jobs".into(), 11, 201), ("rerun-failed-jobs".into(), 11, 403)]);
    assert_eq!(gh.run_requests(DOWN)[0].installation_id, gh.install(DOWN));
}

#[tokio::test]
async fn rerun_of_the_whole_run_follows_the_same_rules() {
    let (gh, client, down) = setup().await;
    gh.add_workflow_run(DOWN, 21, "completed", Some("success"));
    gh.add_workflow_run(DOWN, 22, "queued", None);

    assert_eq!(client.rerun(&down, 21).await.unwrap(), RunRequest::Accepted);
    assert_eq!(gh.workflow_run(DOWN, 21), state("in_progress", None, 2));
    assert_eq!(client.rerun(&down, 22).await.unwrap(), RunRequest::AlreadyRunning);
    assert_eq!(gh.workflow_run(DOWN, 22), state("queued", None, 1));
    assert_eq!(requests(&gh, DOWN), vec![("rerun".into(), 21, 201), ("rerun".into(), 22, 403)]);
}

#[tokio::test]
async fn a_run_the_repository_does_not_have_is_a_permanent_404() {
    let (gh, client, down) = setup().await;
    // Run 31 exists, but on another repository of the same installation.
    gh.install("org/other");
    gh.add_workflow_run("org/other", 31, "completed", Some("failure"));

    assert_eq!(permanent_status(client.rerun(&down, 31).await.unwrap_err()), 404);
    assert_eq!(permanent_status(client.rerun_failed_jobs(&down, 32).await.unwrap_err()), 404);
    assert_eq!(permanent_status(client.cancel(&down, 33).await.unwrap_err()), 404);
    assert_eq!(gh.workflow_run("org/other", 31), state("completed", Some("failure"), 1));
    assert_eq!(
        requests(&gh, DOWN),
        vec![("rerun".into(), 31, 404), ("rerun-failed-jobs".into(), 32, 404), ("cancel".into(), 33, 404)]
    );

    // The body is GitHub's.
    let token = mint(&gh, DOWN, json!({"actions": "write"})).await;
    let r = post_run(&gh, DOWN, 31, "rerun", Some(&token)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["message"], "Not Found");
    assert!(r.body["documentation_url"].as_str().unwrap().starts_with("https://docs.github.com/rest/actions/"));
}

#[tokio::test]
async fn cancel_of_a_running_run_is_accepted_then_already_completed() {
    let (gh, client, down) = setup().await;
    gh.add_workflow_run(DOWN, 41, "in_progress", None);

    assert_eq!(client.cancel(&down, 41).await.unwrap(), RunRequest::Accepted);
    assert_eq!(gh.workflow_run(DOWN, 41), state("completed", Some("cancelled"), 1));
    assert_eq!(client.cancel(&down, 41).await.unwrap(), RunRequest::AlreadyCompleted);
    assert_eq!(gh.workflow_run(DOWN, 41), state("completed", Some("cancelled"), 1));

    // A cancelled run can be re-run.
    assert_eq!(client.rerun(&down, 41).await.unwrap(), RunRequest::Accepted);
    assert_eq!(gh.workflow_run(DOWN, 41), state("in_progress", None, 2));
    assert_eq!(
        requests(&gh, DOWN),
        vec![("cancel".into(), 41, 202), ("cancel".into(), 41, 409), ("rerun".into(), 41, 201)]
    );

    let token = mint(&gh, DOWN, json!({"actions": "write"})).await;
    let r = post_run(&gh, DOWN, 41, "rerun", Some(&token)).await;
    assert_eq!((r.status, r.body["message"].as_str()), (403, Some("This workflow is already running")));
    gh.add_workflow_run(DOWN, 42, "completed", Some("success"));
    let r = post_run(&gh, DOWN, 42, "cancel", Some(&token)).await;
    assert_eq!((r.status, r.body["message"].as_str()), (409, Some("Cannot cancel a workflow run that is completed.")));
    let r = post_run(&gh, DOWN, 42, "rerun", Some(&token)).await;
    assert_eq!((r.status, &r.body), (201, &json!({})));
}

#[tokio::test]
async fn only_a_token_with_actions_write_on_the_repository_gets_through() {
    let (gh, _client, _) = setup().await;
    gh.add_workflow_run(DOWN, 51, "completed", Some("failure"));
    gh.install("org/other");

    let checks_write = mint(&gh, DOWN, json!({"checks": "write"})).await;
    let actions_read = mint(&gh, DOWN, json!({"actions": "read"})).await;
    let other_repo = mint(&gh, "org/other", json!({"actions": "write"})).await;
    for (token, action) in [(&checks_write, "rerun"), (&actions_read, "rerun-failed-jobs"), (&actions_read, "cancel")] {
        let r = post_run(&gh, DOWN, 51, action, Some(token)).await;
        assert_eq!((r.status, r.body["message"].as_str()), (403, Some("Resource not accessible by integration")));
    }
    let r = post_run(&gh, DOWN, 51, "rerun", Some(&other_repo)).await;
    assert_eq!((r.status, r.body["message"].as_str()), (403, Some("Resource not accessible by integration")));
    gh.set_private(DOWN, true);
    assert_eq!(post_run(&gh, DOWN, 51, "rerun", Some(&other_repo)).await.status, 404, "private: not found");
    gh.set_private(DOWN, false);
    assert_eq!(post_run(&gh, DOWN, 51, "rerun", None).await.status, 401);
    assert_eq!(post_run(&gh, DOWN, 51, "rerun", Some(&app_jwt(&gh))).await.status, 403);
    assert_eq!(gh.workflow_run(DOWN, 51), state("completed", Some("failure"), 1), "nothing got through");
    assert!(gh.run_requests(DOWN).is_empty(), "refused before the run: not recorded");

    let actions_write = mint(&gh, DOWN, json!({"actions": "write"})).await;
    assert_eq!(post_run(&gh, DOWN, 51, "rerun-failed-jobs", Some(&actions_write)).await.status, 201);
    assert_eq!(gh.workflow_run(DOWN, 51), state("in_progress", None, 2));
    assert_eq!(requests(&gh, DOWN), vec![("rerun-failed-jobs".into(), 51, 201)]);
}

#[tokio::test]
async fn injected_faults_are_answered_first_and_classified() {
    let (gh, client, down) = setup().await;
    gh.add_workflow_run(DOWN, 61, "completed", Some("failure"));
    gh.inject(DOWN, Fault::ServerError(502));
    gh.inject(DOWN, Fault::SecondaryRateLimit { retry_after_s: 2 });
    gh.inject(DOWN, Fault::ServerError(503));

    assert!(client.rerun_failed_jobs(&down, 61).await.unwrap_err().is_transient(), "502");
    assert_eq!(gh.workflow_run(DOWN, 61), state("completed", Some("failure"), 1), "a fault changes nothing");
    assert!(client.cancel(&down, 61).await.unwrap_err().is_transient(), "403 secondary rate limit");
    // Faults come before the run lookup: an unknown run gets the fault.
    assert!(client.rerun(&down, 999).await.unwrap_err().is_transient(), "503");
    assert_eq!(gh.pending_faults(DOWN), 0);

    assert_eq!(client.rerun_failed_jobs(&down, 61).await.unwrap(), RunRequest::Accepted);
    assert_eq!(gh.workflow_run(DOWN, 61), state("in_progress", None, 2));
    // The primary limit (403, x-ratelimit-remaining: 0): the installation's
    // requests wait for its reset, and the next one is not sent.
    gh.inject(DOWN, Fault::PrimaryRateLimitForbidden { reset_in_s: 30 });
    let refused = client.cancel(&down, 61).await.unwrap_err();
    assert!(
        matches!(&refused, GitHubError::Deferred { reason, .. } if reason.starts_with("GitHub refused: 403")),
        "{refused:?}"
    );
    let held = client.cancel(&down, 61).await.unwrap_err();
    assert!(
        matches!(&held, GitHubError::Deferred { reason, retry_after } if reason.starts_with("not sent")
        && *retry_after > Duration::from_secs(25)),
        "{held:?}"
    );
    assert_eq!(
        requests(&gh, DOWN),
        vec![
            ("rerun-failed-jobs".into(), 61, 502),
            ("cancel".into(), 61, 403),
            ("rerun".into(), 999, 503),
            ("rerun-failed-jobs".into(), 61, 201),
            ("cancel".into(), 61, 403),
        ]
    );
}

#[tokio::test]
async fn a_repository_without_the_app_is_a_permanent_404_without_a_call() {
    let (gh, client, _) = setup().await;
    let elsewhere = RepoFullName::parse("nobody/home").unwrap();
    assert_eq!(permanent_status(client.rerun(&elsewhere, 1).await.unwrap_err()), 404);
    assert_eq!(gh.count("POST", "/repos/nobody/home/actions/"), 0);
}

/// Creates a check run on `UP` with a `checks: write` token; returns its JSON.
async fn create_check_run(gh: &StandIn, token: &str, name: &str, sha: &str) -> Value {
    let body = json!({"name": name, "head_sha": sha, "external_id": format!("ext-{name}"), "status": "in_progress",
        "details_url": format!("https://example.test/{name}")});
    let r = call(gh, reqwest::Method::POST, &format!("/repos/{UP}/check-runs"), Some(token), Some(&body)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

async fn list_suite(gh: &StandIn, repo: &str, suite: u64, query: &str, token: &str) -> Answer {
    call(gh, reqwest::Method::GET, &format!("/repos/{repo}/check-suites/{suite}/check-runs{query}"), Some(token), None)
        .await
}

fn ids(page: &Value) -> Vec<u64> {
    page["check_runs"].as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn a_check_suite_lists_the_check_runs_of_its_head_sha_only() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let (sha_a, sha_b) = ("a".repeat(40), "B".repeat(40));
    let write = mint(&gh, UP, json!({"checks": "write"})).await;
    assert_eq!(gh.check_suite_id(UP, &sha_a), None, "no suite before the first check run");
    let x = create_check_run(&gh, &write, "x", &sha_a).await;
    let y = create_check_run(&gh, &write, "y", &sha_a).await;
    let b = create_check_run(&gh, &write, "x", &sha_b).await;

    let suite_a = gh.check_suite_id(UP, &sha_a).unwrap();
    let suite_b = gh.check_suite_id(&UP.to_uppercase(), &sha_b.to_lowercase()).unwrap();
    assert_ne!(suite_a, suite_b);
    assert_eq!((x["check_suite"]["id"].as_u64(), y["check_suite"]["id"].as_u64()), (Some(suite_a), Some(suite_a)));
    assert_eq!(b["check_suite"]["id"].as_u64(), Some(suite_b));
    let recorded: Vec<u64> = gh.check_runs(UP).iter().map(|r| r.check_suite_id).collect();
    assert_eq!(recorded, vec![suite_a, suite_a, suite_b]);

    let read = mint(&gh, UP, json!({"checks": "read"})).await;
    let r = list_suite(&gh, UP, suite_a, "", &read).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["total_count"], 2);
    assert_eq!(ids(&r.body), vec![x["id"].as_u64().unwrap(), y["id"].as_u64().unwrap()]);
    let first = &r.body["check_runs"][0];
    assert_eq!(first["name"], "x");
    assert_eq!(first["head_sha"], sha_a);
    assert_eq!(first["external_id"], "ext-x");
    assert_eq!(first["status"], "in_progress");
    assert_eq!(first["conclusion"], Value::Null);
    assert_eq!(first["details_url"], "https://example.test/x");
    assert_eq!(first["check_suite"]["id"].as_u64(), Some(suite_a));

    let r = list_suite(&gh, UP, suite_b, "", &write).await;
    assert_eq!((r.body["total_count"].as_u64(), ids(&r.body)), (Some(1), vec![b["id"].as_u64().unwrap()]));
    assert_eq!(r.body["check_runs"][0]["head_sha"], sha_b.to_lowercase());

    // A suite of another repository, and ids that are no suite, are not found.
    let other = mint(&gh, "up-org/up2", json!({"checks": "write"})).await;
    let body = json!({"name": "z", "head_sha": sha_a});
    let r = call(&gh, reqwest::Method::POST, "/repos/up-org/up2/check-runs", Some(&other), Some(&body)).await;
    assert_eq!(r.status, 201);
    let suite_up2 = gh.check_suite_id("up-org/up2", &sha_a).unwrap();
    assert_ne!(suite_up2, suite_a, "one suite per repository and SHA");
    let whole = mint(&gh, UP, json!({"checks": "read"})).await;
    assert_eq!(list_suite(&gh, UP, suite_up2, "", &whole).await.status, 404);
    assert_eq!(list_suite(&gh, UP, 12345, "", &whole).await.status, 404);
}

#[tokio::test]
async fn suite_listing_pages_filters_and_needs_checks_read_on_a_private_repository() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let sha = "c".repeat(40);
    let write = mint(&gh, UP, json!({"checks": "write"})).await;
    let first_x = create_check_run(&gh, &write, "x", &sha).await["id"].as_u64().unwrap();
    let y = create_check_run(&gh, &write, "y", &sha).await["id"].as_u64().unwrap();
    let second_x = create_check_run(&gh, &write, "x", &sha).await["id"].as_u64().unwrap();
    let suite = gh.check_suite_id(UP, &sha).unwrap();

    // `filter=latest` (the default) keeps the newest check run of each name.
    let r = list_suite(&gh, UP, suite, "", &write).await;
    assert_eq!((r.body["total_count"].as_u64(), ids(&r.body)), (Some(2), vec![y, second_x]));
    let r = list_suite(&gh, UP, suite, "?filter=all", &write).await;
    assert_eq!(ids(&r.body), vec![first_x, y, second_x]);
    let r = list_suite(&gh, UP, suite, "?filter=all&check_name=x", &write).await;
    assert_eq!(ids(&r.body), vec![first_x, second_x]);

    // Pages.
    let r = list_suite(&gh, UP, suite, "?filter=all&per_page=2", &write).await;
    assert_eq!((r.body["total_count"].as_u64(), ids(&r.body)), (Some(3), vec![first_x, y]));
    let next = r.link.expect("a next page");
    let next = next.trim_start_matches('<').split('>').next().unwrap().to_owned();
    let path = next.strip_prefix(&gh.base_url()).unwrap();
    let r = call(&gh, reqwest::Method::GET, path, Some(&write), None).await;
    assert_eq!((r.body["total_count"].as_u64(), ids(&r.body)), (Some(3), vec![second_x]));
    assert!(r.link.is_none(), "the last page has no next");

    // Public repository: pull access is enough; private: `checks: read` needed.
    let contents = mint(&gh, UP, json!({"contents": "read"})).await;
    assert_eq!(list_suite(&gh, UP, suite, "", &contents).await.status, 200);
    gh.set_private(UP, true);
    let r = list_suite(&gh, UP, suite, "", &contents).await;
    assert_eq!((r.status, r.body["message"].as_str()), (403, Some("Resource not accessible by integration")));
    let read = mint(&gh, UP, json!({"checks": "read"})).await;
    assert_eq!(list_suite(&gh, UP, suite, "", &read).await.status, 200);
    let r = call(&gh, reqwest::Method::GET, &format!("/repos/{UP}/check-suites/{suite}/check-runs"), None, None).await;
    assert_eq!(r.status, 401);
}
