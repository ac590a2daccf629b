//! Upstream check runs (issue 4): the GitHub App client's check-run calls
//! against the GitHub stand-in, which keeps GitHub's rules (token narrowed
//! to `checks: write`, body validation, faults).

use crcr_shared::checks::{check_run_for, CheckRuns};
use crcr_shared::domain::{DeliveryId, Level, RepoFullName};
use crcr_shared::github::{GitHubAppClient, GitHubAppConfig};
use crcr_shared::lifecycle::{JobKey, JobRecord, JobState};
use crcr_shared::ports::GitHubError;
use crcr_shared::standin::{AuthKind, Fault, StandIn, StandInOptions};
use crcr_tests::UPSTREAM;

fn job(state: JobState, conclusion: Option<&str>) -> JobRecord {
    JobRecord {
        key: JobKey {
            delivery_id: DeliveryId::parse("d-1").unwrap(),
            repo: RepoFullName::parse("org4/four").unwrap(),
            run_id: 123,
            run_attempt: 1,
            job_name: "build".into(),
        },
        state,
        level: Level::L4,
        dispatched_at_ms: Some(1_700_000_000_000),
        in_progress_at_ms: Some(1_700_000_001_000),
        completed_at_ms: conclusion.map(|_| 1_700_000_002_000),
        conclusion: conclusion.map(str::to_owned),
        queue_time_s: Some(1.0),
        execution_time_s: conclusion.map(|_| 1.0),
        workflow_name: Some("CI".into()),
        url: Some("https://github.com/org4/four/actions/runs/123".into()),
        updated_at_ms: 0,
    }
}

async fn setup() -> (StandIn, GitHubAppClient, RepoFullName) {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    gh.install(UPSTREAM);
    let client = GitHubAppClient::new(GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url())).unwrap();
    (gh, client, RepoFullName::parse(UPSTREAM).unwrap())
}

#[tokio::test]
async fn client_creates_then_updates_a_check_run_with_a_checks_write_token() {
    let (gh, client, upstream) = setup().await;
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let id = client
        .create_check_run(&upstream, &check_run_for(&job(JobState::InProgress, None), sha, Some(7)))
        .await
        .unwrap();
    let runs = gh.check_runs(UPSTREAM);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, id);
    assert_eq!(runs[0].name, "crcr/org4/four/CI/build");
    assert_eq!(runs[0].head_sha, sha);
    assert_eq!(runs[0].status, "in_progress");
    assert_eq!(runs[0].external_id.as_deref(), Some("123:7"));
    assert_eq!(runs[0].details_url.as_deref(), Some("https://github.com/org4/four/actions/runs/123"));

    client
        .update_check_run(&upstream, id, &check_run_for(&job(JobState::Completed, Some("success")), sha, Some(7)))
        .await
        .unwrap();
    let runs = gh.check_runs(UPSTREAM);
    assert_eq!(runs.len(), 1, "updated in place");
    assert_eq!((runs[0].status.as_str(), runs[0].conclusion.as_deref()), ("completed", Some("success")));
    assert_eq!(runs[0].updates, 1);

    // The calls used an installation token (minted narrowed to checks: write).
    let calls: Vec<_> = gh.requests().into_iter().filter(|r| r.path.contains("/check-runs")).collect();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|r| r.auth == AuthKind::InstallationToken), "{calls:?}");
}

#[tokio::test]
async fn client_classifies_githubs_refusals() {
    let (gh, client, upstream) = setup().await;
    let good = check_run_for(&job(JobState::InProgress, None), &"a".repeat(40), None);

    // 422: a head SHA that is not a commit; permanent, with GitHub's message.
    let mut bad = good.clone();
    bad.head_sha = "not-a-sha".into();
    match client.create_check_run(&upstream, &bad).await {
        Err(GitHubError::Permanent { status: 422, reason }) => {
            assert!(reason.contains("No commit found for SHA"), "{reason}")
        }
        other => panic!("expected a 422, got {other:?}"),
    }
    // 502: transient, nothing recorded; the next call succeeds.
    gh.inject(UPSTREAM, Fault::ServerError(502));
    assert!(client.create_check_run(&upstream, &good).await.unwrap_err().is_transient());
    assert!(gh.check_runs(UPSTREAM).is_empty());
    client.create_check_run(&upstream, &good).await.unwrap();
    assert_eq!(gh.check_runs(UPSTREAM).len(), 1);
    // Unknown check run id: 404, permanent.
    match client.update_check_run(&upstream, 42, &good).await {
        Err(GitHubError::Permanent { status: 404, .. }) => {}
        other => panic!("expected a 404, got {other:?}"),
    }
    // Not installed on the repository: permanent 404 before any check-run call.
    let other = RepoFullName::parse("someone/else").unwrap();
    assert!(matches!(client.create_check_run(&other, &good).await, Err(GitHubError::Permanent { status: 404, .. })));
}

#[tokio::test]
async fn standin_refuses_tokens_without_checks_write() {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    let installation = gh.install(UPSTREAM);
    let app = octocrab::Octocrab::builder()
        .base_uri(gh.base_url())
        .unwrap()
        .app(
            gh.app_id().into(),
            octocrab::jsonwebtoken::EncodingKey::from_rsa_pem(gh.private_key_pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let token_with = |perm: &'static str| {
        let app = app.clone();
        async move {
            let body = serde_json::json!({"permissions": {"checks": perm}});
            let v: serde_json::Value =
                app.post(format!("/app/installations/{installation}/access_tokens"), Some(&body)).await.unwrap();
            v["token"].as_str().unwrap().to_owned()
        }
    };
    let body = serde_json::json!({"name": "crcr/x", "head_sha": "b".repeat(40), "status": "in_progress"});
    let url = format!("{}/repos/{UPSTREAM}/check-runs", gh.base_url());
    let read = token_with("read").await;
    let res = http.post(&url).bearer_auth(&read).json(&body).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 403);
    let write = token_with("write").await;
    let res = http.post(&url).bearer_auth(&write).json(&body).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let created: serde_json::Value = res.json().await.unwrap();
    assert_eq!(created["status"], "in_progress");
    // completed without a conclusion: 422 with GitHub's message.
    let patch = format!("{url}/{}", created["id"]);
    let res =
        http.patch(&patch).bearer_auth(&write).json(&serde_json::json!({"status": "completed"})).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 422);
    let answer: serde_json::Value = res.json().await.unwrap();
    assert!(answer["message"].as_str().unwrap().contains("\"conclusion\" wasn't supplied."), "{answer}");
    // A conclusion alone completes the run.
    let res = http
        .patch(&patch)
        .bearer_auth(&write)
        .json(&serde_json::json!({"conclusion": "failure"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let runs = gh.check_runs(UPSTREAM);
    assert_eq!((runs[0].status.as_str(), runs[0].conclusion.as_deref()), ("completed", Some("failure")));
}
