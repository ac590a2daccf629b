//! Upstream check runs (issue 4): the GitHub App client's check-run calls
//! against the GitHub stand-in, which keeps GitHub's rules (token narrowed
//! to `checks: write`, body validation, faults); and end to end through a
//! relay on the embedded default (local OIDC issuer, local HUD): an L4 job's
//! callbacks drive one check run on the upstream head SHA from in progress
//! to its conclusion, an L3 job without its label gets none, a GitHub 5xx
//! on create is retried by the sweep and creates exactly one check run.

use std::time::Duration;

use crcr_core::config::CallbackConfig;
use crcr_core::lifecycle::{CheckRunOutbox, HudSync};
use crcr_core::ports::{Clock, DispatchStore, QueueInspect};
use crcr_embedded::sqlite::SqliteJobStore;
use crcr_tests::issuer::{Hud, Issuer};
use crcr_tests::{callback_config, fixture, post_callback, test_settings, uuid, wait_for, Relay};
use serde_json::{json, Value};

use crcr_clients::github::{GitHubAppClient, GitHubAppConfig};
use crcr_core::checks::{check_run_for, CheckRuns};
use crcr_core::domain::{DeliveryId, HeadSha, Level, RepoFullName};
use crcr_core::lifecycle::{JobKey, JobRecord, JobState};
use crcr_core::ports::GitHubError;
use crcr_standin::{AuthKind, Fault, StandIn, StandInOptions};
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
    let sha = HeadSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap();
    let id = client
        .create_check_run(&upstream, &check_run_for(&job(JobState::InProgress, None), &sha, Some(7)))
        .await
        .unwrap();
    let runs = gh.check_runs(UPSTREAM);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, id);
    assert_eq!(runs[0].name, "crcr/org4/four/CI/build");
    assert_eq!(sha.as_str(), runs[0].head_sha);
    assert_eq!(runs[0].status, "in_progress");
    assert_eq!(runs[0].external_id.as_deref(), Some("123:7"));
    assert_eq!(runs[0].details_url.as_deref(), Some("https://github.com/org4/four/actions/runs/123"));

    client
        .update_check_run(&upstream, id, &check_run_for(&job(JobState::Completed, Some("success")), &sha, Some(7)))
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
    let good = check_run_for(&job(JobState::InProgress, None), &HeadSha::parse(&"a".repeat(40)).unwrap(), None);

    // 422: a name over GitHub's 255 characters; permanent, with GitHub's
    // message. (A head SHA that is not one cannot be built: `HeadSha`.)
    let mut bad = good.clone();
    bad.name = "x".repeat(256);
    match client.create_check_run(&upstream, &bad).await {
        Err(GitHubError::Permanent { status: 422, reason }) => {
            assert!(reason.contains("Only 255 characters are allowed"), "{reason}")
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
    let http = reqwest::Client::builder().user_agent("crcr-tests").build().unwrap();
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

const ALLOWLIST: &str = "L2:\n  - org2/two\nL3:\n  gpu:\n    org3/three: [alice]\nL4:\n  - org4/four: \"bob\"\n";

struct World {
    gh: StandIn,
    issuer: Issuer,
    hud: Hud,
    relay: Relay,
    delivery: String,
    head_sha: String,
}

/// A relay that dispatched the `pull_request.opened` fixture (with `labels`
/// as the PR's labels) to the allowlist's repositories.
async fn world(labels: &[&str]) -> World {
    world_with(labels, Duration::from_secs(6 * 3600)).await
}

/// [`world`] with the reconciler's job timeout.
async fn world_with(labels: &[&str], job_timeout: Duration) -> World {
    world_cfg(labels, |c| c.reconciler.job_timeout = job_timeout).await
}

/// [`world`] with callback / reconciler settings changed by `tweak`.
async fn world_cfg(labels: &[&str], tweak: impl FnOnce(&mut CallbackConfig)) -> World {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for r in ["org2/two", "org3/three", "org4/four", UPSTREAM] {
        gh.install(r);
    }
    let issuer = Issuer::start().await;
    let hud = Hud::start().await;
    let mut callbacks = callback_config(&issuer, &hud);
    tweak(&mut callbacks);
    let relay = Relay::start_with(&gh, ALLOWLIST, test_settings(), None, "s", callbacks).await;
    let mut event: Value = serde_json::from_slice(&fixture("pull_request.opened")).unwrap();
    event["pull_request"]["labels"] = labels.iter().map(|l| json!({"name": l, "color": "fff"})).collect();
    let head_sha = event["pull_request"]["head"]["sha"].as_str().unwrap().to_owned();
    let delivery = uuid();
    let (status, answer) = relay.post("pull_request", &delivery, &serde_json::to_vec(&event).unwrap(), false).await;
    assert_eq!(status, 202, "{answer}");
    relay.settled(&delivery, Duration::from_secs(20)).await;
    World { gh, issuer, hud, relay, delivery, head_sha }
}

fn callback(w: &World, repo: &str, status: &str, conclusion: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_type": "pull_request", "delivery_id": w.delivery, "payload": {"number": 2},
        "workflow": {"schema_version": "1", "status": status, "conclusion": conclusion, "name": "CI",
            "url": format!("https://github.com/{repo}/actions/runs/555"), "run_id": "555", "run_attempt": "1",
            "job_name": "build", "check_run_id": "9", "started_at": null, "completed_at": null}
    }))
    .unwrap()
}

async fn call(w: &World, repo: &str, repo_id: &str, body: &[u8]) -> u16 {
    post_callback(&w.relay, &w.issuer.token(repo, repo_id), body).await.0
}

/// Waits until the delivery's first check-run item is in `sync` (the relay
/// records GitHub's answer just after the stand-in does).
async fn wait_item(jobs: &SqliteJobStore, id: &crcr_core::domain::DeliveryId, sync: HudSync) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while jobs.check_runs(id).await.unwrap().first().is_none_or(|c| c.sync != sync) {
        assert!(std::time::Instant::now() < deadline, "the check-run item never reached {sync:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn l4_job_drives_one_check_run_from_in_progress_to_its_conclusion() {
    let w = world(&[]).await;
    assert_eq!(call(&w, "org4/four", "44", &callback(&w, "org4/four", "in_progress", None)).await, 202);
    wait_for("the in-progress check run", || w.gh.check_runs(UPSTREAM).len() == 1).await;
    let run = &w.gh.check_runs(UPSTREAM)[0];
    assert_eq!(run.name, "crcr/org4/four/CI/build");
    assert_eq!(run.head_sha, w.head_sha);
    assert_eq!(run.status, "in_progress");
    assert_eq!(run.external_id.as_deref(), Some("555:2"));
    assert_eq!(run.details_url.as_deref(), Some("https://github.com/org4/four/actions/runs/555"));

    assert_eq!(call(&w, "org4/four", "44", &callback(&w, "org4/four", "completed", Some("failure"))).await, 202);
    wait_for("the completed check run", || w.gh.check_runs(UPSTREAM)[0].status == "completed").await;
    let jobs = SqliteJobStore::new(w.relay.db());
    let id = crcr_core::domain::DeliveryId::parse(&w.delivery).unwrap();
    wait_item(&jobs, &id, HudSync::Sent).await;
    let runs = w.gh.check_runs(UPSTREAM);
    assert_eq!(runs.len(), 1, "the same check run, updated: {runs:?}");
    assert_eq!(runs[0].conclusion.as_deref(), Some("failure"));
    assert_eq!(runs[0].updates, 1);
    let items = jobs.check_runs(&id).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!((items[0].sync, items[0].check_run_id, items[0].version), (HudSync::Sent, Some(runs[0].id), 2));
    w.relay.stop().await;
}

#[tokio::test]
async fn l3_job_without_its_label_gets_no_check_run() {
    let w = world(&["ciflow/crcr/npu", "ciflow/trunk"]).await;
    assert_eq!(call(&w, "org3/three", "33", &callback(&w, "org3/three", "in_progress", None)).await, 202);
    // As a real job: `completed` follows a recorded `in_progress`.
    reconciled(&w).await;
    assert_eq!(call(&w, "org3/three", "33", &callback(&w, "org3/three", "completed", Some("success"))).await, 202);
    let jobs = SqliteJobStore::new(w.relay.db());
    let id = crcr_core::domain::DeliveryId::parse(&w.delivery).unwrap();
    wait_for("both HUD records", || w.hud.received().len() == 2).await;
    let report = w.relay.reconciler.sweep().await.unwrap();
    assert_eq!(report.check_runs, Default::default());
    assert!(jobs.check_runs(&id).await.unwrap().is_empty());
    assert!(w.gh.check_runs(UPSTREAM).is_empty());
    assert_eq!(w.gh.count("POST", &format!("/repos/{UPSTREAM}/check-runs")), 0);
    w.relay.stop().await;
}

#[tokio::test]
async fn a_github_5xx_on_create_is_retried_and_creates_exactly_one_check_run() {
    let w = world(&[]).await;
    w.gh.inject(UPSTREAM, Fault::ServerError(502));
    w.gh.inject(UPSTREAM, Fault::ServerError(503));
    assert_eq!(call(&w, "org4/four", "44", &callback(&w, "org4/four", "in_progress", None)).await, 202);
    wait_for("the check run after two 5xx", || w.gh.check_runs(UPSTREAM).len() == 1).await;
    assert_eq!(w.gh.pending_faults(UPSTREAM), 0);
    let posts: Vec<u16> =
        w.gh.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/check-runs"))
            .map(|r| r.status)
            .collect();
    assert_eq!(posts, vec![502, 503, 201]);
    // Once the relay recorded GitHub's id, more sweeps send nothing more.
    let jobs = SqliteJobStore::new(w.relay.db());
    let id = crcr_core::domain::DeliveryId::parse(&w.delivery).unwrap();
    wait_item(&jobs, &id, HudSync::Sent).await;
    for _ in 0..3 {
        w.relay.reconciler.sweep().await.unwrap();
    }
    assert_eq!(w.gh.check_runs(UPSTREAM).len(), 1);
    assert_eq!(w.gh.count("POST", &format!("/repos/{UPSTREAM}/check-runs")), 3);
    let item = &jobs.check_runs(&id).await.unwrap()[0];
    assert_eq!((item.sync, item.attempts), (HudSync::Sent, 3));
    assert!(item.last_error.as_deref().is_some_and(|e| e.contains("503")), "{item:?}");
    w.relay.stop().await;
}

#[tokio::test]
async fn a_timed_out_job_completes_its_check_run_as_timed_out() {
    let w = world_with(&[], Duration::from_secs(1)).await;
    assert_eq!(call(&w, "org4/four", "44", &callback(&w, "org4/four", "in_progress", None)).await, 202);
    wait_for("the in-progress check run", || w.gh.check_runs(UPSTREAM).len() == 1).await;
    // No completed callback: the sweep closes the job and its check run.
    wait_for("the timed-out check run", || w.gh.check_runs(UPSTREAM)[0].status == "completed").await;
    let runs = w.gh.check_runs(UPSTREAM);
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].conclusion.as_deref(), Some("timed_out"));
    assert_eq!(runs[0].external_id.as_deref(), Some("555:2"), "the external id is kept");
    w.relay.stop().await;
}

#[tokio::test]
async fn a_check_run_github_refuses_is_rejected_with_its_answer_and_hud_still_gets_the_job() {
    let w = world(&[]).await;
    w.gh.inject(UPSTREAM, Fault::Unprocessable);
    assert_eq!(call(&w, "org4/four", "44", &callback(&w, "org4/four", "in_progress", None)).await, 202);
    wait_for("the HUD record", || w.hud.received().len() == 1).await;
    let jobs = SqliteJobStore::new(w.relay.db());
    let id = crcr_core::domain::DeliveryId::parse(&w.delivery).unwrap();
    wait_item(&jobs, &id, HudSync::Rejected).await;
    assert!(w.gh.check_runs(UPSTREAM).is_empty());
    let t = crcr_oncall::trace::trace(&id, w.relay.store.as_ref(), &jobs).await.unwrap();
    let text = t.render();
    assert!(text.contains("upstream check runs:"), "{text}");
    assert!(text.contains("rejected  crcr/org4/four/CI/build"), "{text}");
    assert!(text.contains("422 Validation Failed"), "{text}");
    assert_eq!(t.check_runs.len(), 1);
    w.relay.stop().await;
}

#[tokio::test]
async fn l3_job_gets_a_check_run_when_its_label_was_on_the_pr_at_dispatch() {
    for label in ["ciflow/crcr/gpu", "ciflow/oot/gpu"] {
        let w = world(&["ciflow/trunk", label]).await;
        let records = w.relay.store.records(&crcr_core::domain::DeliveryId::parse(&w.delivery).unwrap()).await.unwrap();
        let wanted: Vec<(&str, bool)> = records.iter().map(|r| (r.target.as_str(), r.meta.check_run)).collect();
        assert_eq!(wanted, vec![("org2/two", false), ("org3/three", true), ("org4/four", true)], "{label}");
        assert_eq!(call(&w, "org3/three", "33", &callback(&w, "org3/three", "in_progress", None)).await, 202);
        wait_for("the L3 check run", || w.gh.check_runs(UPSTREAM).len() == 1).await;
        let run = &w.gh.check_runs(UPSTREAM)[0];
        assert_eq!((run.name.as_str(), run.head_sha.as_str()), ("crcr/org3/three/CI/build", w.head_sha.as_str()));
        w.relay.stop().await;
    }
}

// ------------------------------------------------------------ issue 4: labels, re-runs, closed / superseded

/// A callback of job `job` of run `run_id` of `repo` for `delivery`.
fn job_callback(delivery: &str, repo: &str, run_id: u64, job: &str, status: &str, conclusion: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_type": "pull_request", "delivery_id": delivery, "payload": {"number": 2},
        "workflow": {"schema_version": "1", "status": status, "conclusion": conclusion, "name": "CI",
            "url": format!("https://github.com/{repo}/actions/runs/{run_id}"), "run_id": run_id.to_string(),
            "run_attempt": "1", "job_name": job, "check_run_id": "9", "started_at": null, "completed_at": null}
    }))
    .unwrap()
}

/// Posts a signed upstream webhook built from fixture `name`, changed by `edit`; returns its delivery id.
async fn post_event(w: &World, event: &str, name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_slice(&fixture(name)).unwrap();
    v["repository"]["full_name"] = json!(UPSTREAM);
    edit(&mut v);
    let delivery = uuid();
    let (status, answer) = w.relay.post(event, &delivery, &serde_json::to_vec(&v).unwrap(), false).await;
    assert_eq!(status, 202, "{event} {name}: {answer}");
    delivery
}

async fn label(w: &World, sha: &str, label: &str) {
    post_event(w, "pull_request", "pull_request.labeled", |v| {
        v["label"]["name"] = json!(label);
        v["pull_request"]["head"]["sha"] = json!(sha);
    })
    .await;
}

/// Waits until the reconcile queue is empty (every upstream event and callback applied).
async fn reconciled(w: &World) {
    use crcr_core::ports::QueueSide;
    let q = crcr_embedded::sqlite::SqliteQueue::new(w.relay.db(), "reconcile", 5);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while q.depth(QueueSide::Source).await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "the reconcile queue never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 0, "nothing dead-lettered");
}

fn runs_named(w: &World, name: &str) -> Vec<crcr_standin::RecordedCheckRun> {
    w.gh.check_runs(UPSTREAM).into_iter().filter(|r| r.name == name).collect()
}

#[tokio::test]
async fn label_added_while_the_l3_job_runs_backfills_its_check_run() {
    let w = world(&[]).await;
    let d = w.delivery.clone();
    assert_eq!(
        call(&w, "org3/three", "33", &job_callback(&d, "org3/three", 555, "build", "in_progress", None)).await,
        202
    );
    reconciled(&w).await;
    assert!(w.gh.check_runs(UPSTREAM).is_empty(), "no label yet: no check run");
    label(&w, &w.head_sha, "ciflow/crcr/GPU").await;
    wait_for("the backfilled check run", || runs_named(&w, "crcr/org3/three/CI/build").len() == 1).await;
    assert_eq!(runs_named(&w, "crcr/org3/three/CI/build")[0].status, "in_progress");
    assert_eq!(
        call(&w, "org3/three", "33", &job_callback(&d, "org3/three", 555, "build", "completed", Some("success"))).await,
        202
    );
    wait_for("the completed check run", || runs_named(&w, "crcr/org3/three/CI/build")[0].status == "completed").await;
    let runs = runs_named(&w, "crcr/org3/three/CI/build");
    assert_eq!((runs.len(), runs[0].conclusion.as_deref()), (1, Some("success")));
    // Another device's label and an unrelated label change nothing.
    label(&w, &w.head_sha, "ciflow/crcr/npu").await;
    label(&w, &w.head_sha, "bug").await;
    reconciled(&w).await;
    assert_eq!(w.gh.check_runs(UPSTREAM).len(), 1);
    w.relay.stop().await;
}

#[tokio::test]
async fn label_added_after_the_l3_job_finished_creates_its_final_check_run() {
    let w = world(&[]).await;
    let d = w.delivery.clone();
    for (status, conclusion) in [("in_progress", None), ("completed", Some("failure"))] {
        assert_eq!(
            call(&w, "org3/three", "33", &job_callback(&d, "org3/three", 555, "build", status, conclusion)).await,
            202
        );
        // As a real job: `completed` follows a recorded `in_progress`.
        reconciled(&w).await;
    }
    assert!(w.gh.check_runs(UPSTREAM).is_empty());
    label(&w, &w.head_sha, "ciflow/oot/gpu").await;
    wait_for("the backfilled check run", || w.gh.check_runs(UPSTREAM).len() == 1).await;
    let run = &w.gh.check_runs(UPSTREAM)[0];
    assert_eq!((run.status.as_str(), run.conclusion.as_deref()), ("completed", Some("failure")));
    assert_eq!(run.head_sha, w.head_sha);
    // The same label again (a redelivery): still one check run.
    label(&w, &w.head_sha, "ciflow/oot/gpu").await;
    reconciled(&w).await;
    w.relay.reconciler.sweep().await.unwrap();
    assert_eq!(w.gh.count("POST", &format!("/repos/{UPSTREAM}/check-runs")), 1);
    w.relay.stop().await;
}

#[tokio::test]
async fn reopen_with_stale_labels_keeps_the_commits_check_run_wish() {
    let w = world(&[]).await;
    label(&w, &w.head_sha, "ciflow/crcr/gpu").await;
    reconciled(&w).await;
    // Reopened: the payload's labels are stale (no label), as a downstream echo would be.
    let mut event: Value = serde_json::from_slice(&fixture("pull_request.reopened")).unwrap();
    event["pull_request"]["labels"] = json!([]);
    event["pull_request"]["head"]["sha"] = json!(w.head_sha);
    let reopened = uuid();
    let (status, answer) = w.relay.post("pull_request", &reopened, &serde_json::to_vec(&event).unwrap(), false).await;
    assert_eq!(status, 202, "{answer}");
    let records = w.relay.settled(&reopened, Duration::from_secs(20)).await;
    let l3 = records.iter().find(|r| r.target.as_str() == "org3/three").unwrap();
    assert!(!l3.meta.check_run, "the reopened payload carried no label");
    assert_eq!(l3.meta.device.as_deref(), Some("gpu"));
    assert_eq!(
        call(&w, "org3/three", "33", &job_callback(&reopened, "org3/three", 556, "build", "in_progress", None)).await,
        202
    );
    wait_for("the L3 check run of the reopened dispatch", || w.gh.check_runs(UPSTREAM).len() == 1).await;
    assert_eq!(w.gh.check_runs(UPSTREAM)[0].external_id.as_deref(), Some("556:2"));
    w.relay.stop().await;
}

/// An L4 job of run `run_id` completed with `conclusion`, its check run synced.
async fn finished_l4_job(w: &World, run_id: u64, job: &str, conclusion: &str) {
    for (status, c) in [("in_progress", None), ("completed", Some(conclusion))] {
        assert_eq!(
            call(w, "org4/four", "44", &job_callback(&w.delivery, "org4/four", run_id, job, status, c)).await,
            202
        );
        // As a real job: `completed` follows a recorded `in_progress`.
        reconciled(w).await;
    }
    let name = format!("crcr/org4/four/CI/{job}");
    wait_for("the completed check run", || runs_named(w, &name).first().is_some_and(|r| r.status == "completed")).await;
}

/// `check_run.rerequested` of the relay's check run `run`. The real payload
/// has an empty `pull_requests` (as for a fork PR): found by head SHA.
async fn rerequest(w: &World, run: &crcr_standin::RecordedCheckRun) {
    post_event(w, "check_run", "check_run.rerequested", |v| {
        assert_eq!(v["check_run"]["pull_requests"], json!([]));
        v["check_run"]["id"] = json!(run.id);
        v["check_run"]["name"] = json!(run.name);
        v["check_run"]["external_id"] = json!(run.external_id);
        v["check_run"]["head_sha"] = json!(run.head_sha);
    })
    .await;
}

#[tokio::test]
async fn check_run_rerequested_reruns_the_failed_jobs_and_already_running_is_not_an_error() {
    let w = world(&[]).await;
    w.gh.add_workflow_run("org4/four", 555, "completed", Some("failure"));
    finished_l4_job(&w, 555, "build", "failure").await;
    let run = runs_named(&w, "crcr/org4/four/CI/build").remove(0);
    rerequest(&w, &run).await;
    wait_for("the re-run", || !w.gh.run_requests("org4/four").is_empty()).await;
    reconciled(&w).await;
    let calls = w.gh.run_requests("org4/four");
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].kind.as_str(), calls[0].run_id, calls[0].status), ("rerun-failed-jobs", 555, 201));
    // Asked again while the re-run runs: GitHub's 403 "already running" is not an error.
    rerequest(&w, &run).await;
    wait_for("the second request", || w.gh.run_requests("org4/four").len() == 2).await;
    reconciled(&w).await;
    assert_eq!(w.gh.run_requests("org4/four")[1].status, 403);
    // A check run that is not crcr's, or an unknown run: nothing asked.
    post_event(&w, "check_run", "check_run.rerequested", |v| v["check_run"]["head_sha"] = json!(w.head_sha)).await;
    let other = "999:2".to_owned();
    post_event(&w, "check_run", "check_run.rerequested", |v| {
        v["check_run"]["name"] = json!("crcr/org4/four/CI/build");
        v["check_run"]["external_id"] = json!(other);
        v["check_run"]["head_sha"] = json!(w.head_sha);
    })
    .await;
    // Run 555 named on another target (org3/three has no job of it), with
    // an id the relay does not know: nothing asked.
    post_event(&w, "check_run", "check_run.rerequested", |v| {
        v["check_run"]["id"] = json!(987_654);
        v["check_run"]["name"] = json!("crcr/org3/three/CI/build");
        v["check_run"]["external_id"] = json!("555:2");
        v["check_run"]["head_sha"] = json!(w.head_sha);
    })
    .await;
    reconciled(&w).await;
    assert_eq!(w.gh.run_requests("org4/four").len(), 2);
    // The relay's own record of the check run (GitHub's id) wins over a
    // changed external_id.
    let id = run.id;
    post_event(&w, "check_run", "check_run.rerequested", |v| {
        v["check_run"]["id"] = json!(id);
        v["check_run"]["name"] = json!("crcr/org4/four/CI/build");
        v["check_run"]["external_id"] = json!("not-a-run");
        v["check_run"]["head_sha"] = json!(w.head_sha);
    })
    .await;
    wait_for("the request found by check run id", || w.gh.run_requests("org4/four").len() == 3).await;
    assert_eq!(w.gh.run_requests("org4/four")[2].run_id, 555);
    w.relay.stop().await;
}

#[tokio::test]
async fn a_rate_limited_rerun_waits_at_least_a_minute_before_it_is_tried_again() {
    use crcr_core::ports::QueueSide;
    let w = world(&[]).await;
    w.gh.add_workflow_run("org4/four", 555, "completed", Some("failure"));
    finished_l4_job(&w, 555, "build", "failure").await;
    let run = runs_named(&w, "crcr/org4/four/CI/build").remove(0);
    w.gh.inject("org4/four", Fault::SecondaryRateLimit { retry_after_s: 1 });
    rerequest(&w, &run).await;
    wait_for("the rate-limited request", || !w.gh.run_requests("org4/four").is_empty()).await;
    assert_eq!(w.gh.run_requests("org4/four")[0].status, 403);
    // Not dropped, not dead-lettered: waiting on the queue, hidden for at
    // least a minute (not the 2 s a store hiccup would wait). Seen through a
    // queue whose clock reads 55 s from now: the message is still hidden then.
    let now = crcr_core::ports::SystemClock.now_ms();
    let later = std::sync::Arc::new(crcr_core::ports::ManualClock::new(now + 55_000));
    let q = crcr_embedded::sqlite::SqliteQueue::new(w.relay.db(), "reconcile", 5).with_clock(later);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let source = loop {
        let source = q.stats(QueueSide::Source).await.unwrap();
        if source.in_flight == 1 {
            break source;
        }
        assert!(std::time::Instant::now() < deadline, "the message was never hidden for a minute: {source:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((source.visible, source.in_flight), (0, 1), "{source:?}");
    assert_eq!(q.depth(QueueSide::DeadLetter).await.unwrap(), 0);
    assert_eq!(w.gh.run_requests("org4/four").len(), 1);
    w.relay.stop().await;
}

#[tokio::test]
async fn check_suite_rerequested_reruns_each_distinct_run_once() {
    let w = world(&["ciflow/crcr/gpu"]).await;
    w.gh.add_workflow_run("org4/four", 555, "completed", Some("failure"));
    w.gh.add_workflow_run("org3/three", 777, "completed", Some("success"));
    w.gh.add_workflow_run("org2/two", 222, "completed", Some("failure"));
    // Two jobs of one L4 run, one L3 job (label at dispatch), one L2 job (no check run).
    finished_l4_job(&w, 555, "build", "failure").await;
    finished_l4_job(&w, 555, "test", "success").await;
    let d = w.delivery.clone();
    for (status, c) in [("in_progress", None), ("completed", Some("success"))] {
        assert_eq!(call(&w, "org3/three", "33", &job_callback(&d, "org3/three", 777, "lint", status, c)).await, 202);
        assert_eq!(call(&w, "org2/two", "22", &job_callback(&d, "org2/two", 222, "build", status, c)).await, 202);
        // As a real job: `completed` follows a recorded `in_progress`.
        reconciled(&w).await;
    }
    let sha = w.head_sha.clone();
    let suite =
        post_event(&w, "check_suite", "check_suite.rerequested", |v| v["check_suite"]["head_sha"] = json!(sha)).await;
    wait_for("both re-runs", || w.gh.run_requests("org4/four").len() + w.gh.run_requests("org3/three").len() == 2)
        .await;
    reconciled(&w).await;
    // The same delivery again (a redelivery): no run is asked twice.
    let mut v: Value = serde_json::from_slice(&fixture("check_suite.rerequested")).unwrap();
    v["check_suite"]["head_sha"] = json!(w.head_sha);
    let (status, _) = w.relay.post("check_suite", &suite, &serde_json::to_vec(&v).unwrap(), false).await;
    assert_eq!(status, 202);
    reconciled(&w).await;
    let four = w.gh.run_requests("org4/four");
    let three = w.gh.run_requests("org3/three");
    assert_eq!(four.iter().map(|c| (c.kind.as_str(), c.run_id)).collect::<Vec<_>>(), vec![("rerun", 555)]);
    assert_eq!(three.iter().map(|c| (c.kind.as_str(), c.run_id)).collect::<Vec<_>>(), vec![("rerun", 777)]);
    assert!(w.gh.run_requests("org2/two").is_empty(), "L2 runs are never re-run");
    w.relay.stop().await;
}

#[tokio::test]
async fn a_check_run_update_github_failed_is_driven_to_the_jobs_final_state() {
    let w = world(&[]).await;
    let d = w.delivery.clone();
    assert_eq!(
        call(&w, "org4/four", "44", &job_callback(&d, "org4/four", 555, "build", "in_progress", None)).await,
        202
    );
    wait_for("the in-progress check run", || w.gh.check_runs(UPSTREAM).len() == 1).await;
    let jobs = SqliteJobStore::new(w.relay.db());
    let id = DeliveryId::parse(&d).unwrap();
    wait_item(&jobs, &id, HudSync::Sent).await;
    // GitHub fails the update three times: the check run is left in progress on GitHub for a while.
    for code in [502, 503, 500] {
        w.gh.inject(UPSTREAM, Fault::ServerError(code));
    }
    assert_eq!(
        call(&w, "org4/four", "44", &job_callback(&d, "org4/four", 555, "build", "completed", Some("success"))).await,
        202
    );
    wait_for("the completed check run", || w.gh.check_runs(UPSTREAM)[0].status == "completed").await;
    let runs = w.gh.check_runs(UPSTREAM);
    assert_eq!((runs.len(), runs[0].conclusion.as_deref()), (1, Some("success")));
    let patches: Vec<u16> = w.gh.requests().into_iter().filter(|r| r.method == "PATCH").map(|r| r.status).collect();
    assert_eq!(patches, vec![502, 503, 500, 200]);
    w.relay.stop().await;
}

async fn closed_world(cancel: bool) -> World {
    let w = world_cfg(&[], |c| {
        c.reconciler.cancel_on_close = cancel;
        c.reconciler.never_started_after = Duration::from_millis(1);
    })
    .await;
    w.gh.add_workflow_run("org4/four", 555, "in_progress", None);
    let d = w.delivery.clone();
    assert_eq!(
        call(&w, "org4/four", "44", &job_callback(&d, "org4/four", 555, "build", "in_progress", None)).await,
        202
    );
    wait_for("the in-progress check run", || w.gh.check_runs(UPSTREAM).len() == 1).await;
    let sha = w.head_sha.clone();
    post_event(&w, "pull_request", "pull_request.closed", |v| v["pull_request"]["head"]["sha"] = json!(sha)).await;
    wait_for("the closed check run", || w.gh.check_runs(UPSTREAM)[0].status == "completed").await;
    reconciled(&w).await;
    w
}

#[tokio::test]
async fn closed_pr_stops_tracking_and_cancels_only_when_asked() {
    for cancel in [false, true] {
        let w = closed_world(cancel).await;
        let run = &w.gh.check_runs(UPSTREAM)[0];
        assert_eq!(run.conclusion.as_deref(), Some("cancelled"), "cancel={cancel}");
        let cancels = w.gh.run_requests("org4/four");
        if cancel {
            assert_eq!(
                cancels.iter().map(|c| (c.kind.as_str(), c.run_id, c.status)).collect::<Vec<_>>(),
                vec![("cancel", 555, 202)]
            );
        } else {
            assert!(cancels.is_empty(), "{cancels:?}");
        }
        // Nothing is owed any more: the opened dispatch is untracked, the
        // closed one's silent targets (post-merge work only) are not "never started".
        let report = w.relay.reconciler.sweep().await.unwrap();
        assert!(report.never_started.is_empty(), "{:?}", report.never_started);
        // The downstream job's later result reaches HUD, not the closed check run.
        let d = w.delivery.clone();
        assert_eq!(
            call(&w, "org4/four", "44", &job_callback(&d, "org4/four", 555, "build", "completed", Some("success")))
                .await,
            202
        );
        wait_for("both HUD records", || w.hud.received().len() == 2).await;
        w.relay.reconciler.sweep().await.unwrap();
        let runs = w.gh.check_runs(UPSTREAM);
        assert_eq!((runs.len(), runs[0].conclusion.as_deref()), (1, Some("cancelled")));
        w.relay.stop().await;
    }
}

#[tokio::test]
async fn synchronize_supersedes_the_old_heads_jobs() {
    let w = world_cfg(&[], |c| c.reconciler.never_started_after = Duration::from_millis(1)).await;
    let d = w.delivery.clone();
    assert_eq!(
        call(&w, "org4/four", "44", &job_callback(&d, "org4/four", 555, "build", "in_progress", None)).await,
        202
    );
    wait_for("the in-progress check run", || w.gh.check_runs(UPSTREAM).len() == 1).await;
    // Before: the silent L2 and L3 targets of this head are never started.
    let silent = |r: &crcr_core::reconcile::SweepReport| -> Vec<String> {
        r.never_started.iter().filter(|n| n.delivery_id.as_str() == d).map(|n| n.target.to_string()).collect()
    };
    assert_eq!(silent(&w.relay.reconciler.sweep().await.unwrap()), vec!["org2/two", "org3/three"]);
    let old = w.head_sha.clone();
    let new_sha = "1111111111111111111111111111111111111111";
    post_event(&w, "pull_request", "pull_request.synchronize", |v| {
        v["before"] = json!(old);
        v["after"] = json!(new_sha);
        v["pull_request"]["head"]["sha"] = json!(new_sha);
    })
    .await;
    wait_for("the superseded check run", || w.gh.check_runs(UPSTREAM)[0].status == "completed").await;
    let run = &w.gh.check_runs(UPSTREAM)[0];
    assert_eq!((run.head_sha.as_str(), run.conclusion.as_deref()), (old.as_str(), Some("cancelled")));
    let text = run.output_summary.clone().unwrap_or_default();
    assert!(text.contains(&format!("superseded by {new_sha}")), "{text}");
    // After: the old head's silent targets are not waited for any more.
    assert!(silent(&w.relay.reconciler.sweep().await.unwrap()).is_empty());
    // `crcr trace` says so, per target.
    let stores = crcr_oncall::trace::TraceStores::sqlite(&w.relay.dir.join("crcr.sqlite")).unwrap();
    let t = stores.trace(&DeliveryId::parse(&d).unwrap()).await.unwrap();
    assert!(t.silent_targets.is_empty(), "{:?}", t.silent_targets);
    assert_eq!(t.not_tracked.len(), 3, "{:?}", t.not_tracked);
    let text = t.render();
    assert!(text.contains(&format!("not tracked any more: superseded by {new_sha} (pull request #2)")), "{text}");
    // A late result of the old head reaches HUD, not the superseded check run.
    assert_eq!(
        call(&w, "org4/four", "44", &job_callback(&d, "org4/four", 555, "build", "completed", Some("success"))).await,
        202
    );
    wait_for("both HUD records", || w.hud.received().len() == 2).await;
    w.relay.reconciler.sweep().await.unwrap();
    assert_eq!(w.gh.check_runs(UPSTREAM)[0].conclusion.as_deref(), Some("cancelled"));
    w.relay.stop().await;
}

/// Issue 15: check runs are created no faster than GitHub's content
/// limits allow (here scaled: 3 per 2-second window), so GitHub refuses none; the
/// rest wait in the outbox for later sweeps.
#[tokio::test]
async fn check_run_creates_keep_to_githubs_content_limit_and_the_rest_wait() {
    // Two-second windows, one second of slack: long against the jitter
    // between spending and arriving on a loaded machine.
    let window = Duration::from_secs(2);
    let pace = crcr_core::checks::CheckRunPace {
        creates_per_minute: 3,
        minute: window,
        slack: Duration::from_secs(1),
        ..Default::default()
    };
    let w = world_cfg(&[], |c| c.reconciler.check_run_pace = pace).await;
    w.gh.enforce_secondary_limits(Some(crcr_standin::SecondaryLimits {
        content_per_window: 3,
        ..crcr_standin::SecondaryLimits::scaled(window)
    }));
    let d = w.delivery.clone();
    for job in 0..8 {
        let body = job_callback(&d, "org4/four", 555, &format!("job{job}"), "in_progress", None);
        assert_eq!(call(&w, "org4/four", "44", &body).await, 202);
    }
    reconciled(&w).await;
    // An update waits for no create: job0's completion goes while creates are still paced.
    let job0 = |w: &World| w.gh.check_runs(UPSTREAM).into_iter().find(|r| r.name.ends_with("/job0"));
    wait_for("job0's check run", || job0(&w).is_some()).await;
    let done = job_callback(&d, "org4/four", 555, "job0", "completed", Some("success"));
    assert_eq!(call(&w, "org4/four", "44", &done).await, 202);
    wait_for("job0's check run completed", || job0(&w).is_some_and(|r| r.status == "completed")).await;
    assert_eq!(job0(&w).unwrap().updates, 1);
    assert!(w.gh.check_runs(UPSTREAM).len() < 8, "the update waited for every create");
    wait_for("eight check runs", || w.gh.check_runs(UPSTREAM).len() == 8).await;
    assert!(w.gh.secondary_refusals().is_empty(), "{:?}", w.gh.secondary_refusals());
    let mut creates: Vec<u64> =
        w.gh.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/check-runs"))
            .map(|r| r.at_ms)
            .collect();
    creates.sort();
    assert_eq!(creates.len(), 8, "one create each");
    for (i, at) in creates.iter().enumerate().skip(3) {
        assert!(at - creates[i - 3] >= 2000, "four creates within a window: {creates:?}");
    }
    w.relay.stop().await;
}

/// Issue 15: re-runs leave a target installation's last fifth of its
/// primary limit (here 12 calls per 3-second window: 3 kept) to
/// dispatches: past that a `rerequested`'s re-run is not sent, and its
/// upstream event is postponed until the reset (not counted towards the
/// DLQ, not retried a minute later), then sent. GitHub refuses none. (The
/// limit is lowered from 5,000 after the App's set-up calls: 12 leaves the
/// App room for the re-runs' token.)
#[tokio::test]
async fn a_rerun_past_the_targets_reserve_waits_for_the_reset_without_counting_a_receive() {
    let w = world(&[]).await;
    w.gh.add_workflow_run("org4/four", 555, "completed", Some("failure"));
    finished_l4_job(&w, 555, "build", "failure").await;
    let run = runs_named(&w, "crcr/org4/four/CI/build").remove(0);
    w.gh.set_rate_limit(12);
    w.gh.enforce_primary_limit(true, Duration::from_secs(3));
    for n in 1..=12 {
        rerequest(&w, &run).await;
        wait_for("the re-run request", || w.gh.run_requests("org4/four").len() == n).await;
    }
    // Within reconciled's 15 s: the postponed event came back after the
    // reset, not after the minute a counted retry waits at least.
    reconciled(&w).await;
    assert!(w.gh.primary_refusals().is_empty(), "GitHub refused {:?}", w.gh.primary_refusals());
    let at: Vec<u64> = w.gh.run_requests("org4/four").iter().map(|r| r.at_ms).collect();
    assert!(at.windows(2).any(|p| p[1] - p[0] >= 1000), "one waited for the reset: {at:?}");
    w.relay.stop().await;
}

/// Issue 15: check-run writes leave the upstream installation's last tenth
/// of its primary limit (here 10 calls per 3-second window) to dispatches:
/// 9 creates go in a window, the rest wait in the outbox for the reset, and
/// GitHub refuses none. A write that was not sent gives back what it spent
/// of the check-run pace: after 12 creates the pace holds 12.
#[tokio::test]
async fn check_run_writes_keep_the_upstream_installations_reserve_and_go_on_after_the_reset() {
    let w = world(&[]).await;
    w.gh.set_rate_limit(10);
    w.gh.enforce_primary_limit(true, Duration::from_secs(3));
    let d = w.delivery.clone();
    for job in 0..12 {
        let body = job_callback(&d, "org4/four", 555, &format!("job{job}"), "in_progress", None);
        assert_eq!(call(&w, "org4/four", "44", &body).await, 202);
    }
    reconciled(&w).await;
    wait_for("twelve check runs", || w.gh.check_runs(UPSTREAM).len() == 12).await;
    assert!(w.gh.primary_refusals().is_empty(), "GitHub refused {:?}", w.gh.primary_refusals());
    let upstream =
        w.gh.requests()
            .iter()
            .filter_map(|r| (r.repo.as_deref() == Some(UPSTREAM)).then_some(r.installation_id))
            .flatten()
            .next();
    let upstream = upstream.expect("calls with the upstream installation's token");
    let mut creates: Vec<u64> =
        w.gh.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/check-runs") && r.installation_id == Some(upstream))
            .map(|r| r.at_ms)
            .collect();
    creates.sort();
    assert_eq!(creates.len(), 12, "one create each");
    assert!(creates[11] - creates[0] >= 1000, "the last ones waited for a reset: {creates:?}");
    use crcr_core::ports::StateStore;
    let kv = crcr_embedded::sqlite::SqliteKv::new(w.relay.db(), std::sync::Arc::new(crcr_core::ports::SystemClock));
    let pace: Value =
        serde_json::from_str(&kv.get(crcr_core::checks::CHECK_RUN_PACE_KEY).await.unwrap().unwrap()).unwrap();
    assert_eq!(pace["creates"].as_array().map(Vec::len), Some(12), "deferred writes gave their pace back: {pace}");
    w.relay.stop().await;
}

/// Takes the outbox lease as another sweep would (another Lambda
/// instance), then has org4/four's job `build` report `in_progress` and
/// waits until it is reconciled. Returns the lease's store, key and holder.
async fn in_progress_while_another_sweep_holds_the_outbox(
    w: &World,
) -> (crcr_embedded::sqlite::SqliteKv, &'static str, &'static str) {
    use crcr_core::ports::StateStore;
    let kv = crcr_embedded::sqlite::SqliteKv::new(w.relay.db(), std::sync::Arc::new(crcr_core::ports::SystemClock));
    let (key, other) = (crcr_core::reconcile::OUTBOX_LEASE_KEY, "another-sweep");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !kv.try_lease(key, other, Duration::from_secs(600)).await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "the relay's sweeper never released the lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = w.delivery.clone();
    assert_eq!(
        call(w, "org4/four", "44", &job_callback(&d, "org4/four", 555, "build", "in_progress", None)).await,
        202
    );
    reconciled(w).await;
    (kv, key, other)
}

/// Issue 15 ("coalesced check-run writes"): a check run's states queued
/// while its outbox waits reach GitHub as one write of the newest; an
/// `in_progress` already superseded by `completed` is never sent.
#[tokio::test]
async fn states_queued_while_the_outbox_waits_reach_github_as_one_write_of_the_newest() {
    use crcr_core::ports::StateStore;
    let w = world(&[]).await;
    // The outbox waits: another sweep holds its lease.
    let (kv, key, other) = in_progress_while_another_sweep_holds_the_outbox(&w).await;
    let d = w.delivery.clone();
    let done = job_callback(&d, "org4/four", 555, "build", "completed", Some("success"));
    assert_eq!(call(&w, "org4/four", "44", &done).await, 202);
    reconciled(&w).await;
    let jobs = SqliteJobStore::new(w.relay.db());
    let id = crcr_core::domain::DeliveryId::parse(&w.delivery).unwrap();
    let items = jobs.check_runs(&id).await.unwrap();
    assert_eq!((items.len(), items[0].version, items[0].sync), (1, 2, HudSync::Pending), "{items:?}");
    kv.release_lease(key, other).await.unwrap();
    wait_item(&jobs, &id, HudSync::Sent).await;
    let runs = w.gh.check_runs(UPSTREAM);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].status.as_str(), runs[0].conclusion.as_deref()), ("completed", Some("success")));
    assert_eq!(runs[0].updates, 0, "created completed, never sent in progress");
    let writes = w.gh.requests().iter().filter(|r| r.path.contains("/check-runs") && r.method != "GET").count();
    assert_eq!(writes, 1, "one write to GitHub for two states");
    w.relay.stop().await;
}

#[tokio::test]
async fn one_sweep_at_a_time_sends_the_outboxes() {
    use crcr_core::ports::StateStore;
    let w = world(&[]).await;
    // Another sweep (another Lambda instance) holds the outbox lease.
    let (kv, key, other) = in_progress_while_another_sweep_holds_the_outbox(&w).await;
    let report = w.relay.reconciler.sweep().await.unwrap();
    assert!(report.outboxes_skipped, "{report:?}");
    w.relay.sweeps_pass(3).await;
    assert!(w.gh.check_runs(UPSTREAM).is_empty(), "nothing sent while another sweep holds the lease");
    assert!(w.hud.received().is_empty());
    kv.release_lease(key, other).await.unwrap();
    wait_for("the check run", || w.gh.check_runs(UPSTREAM).len() == 1).await;
    wait_for("the HUD record", || w.hud.received().len() == 1).await;
    w.relay.stop().await;
}

#[tokio::test]
async fn a_redelivered_close_does_not_untrack_the_reopened_pr() {
    let w = world(&[]).await;
    let sha = w.head_sha.clone();
    let closed =
        post_event(&w, "pull_request", "pull_request.closed", |v| v["pull_request"]["head"]["sha"] = json!(sha)).await;
    reconciled(&w).await;
    // Reopened at the same head: its dispatch is tracked, its L4 job gets a check run.
    let mut event: Value = serde_json::from_slice(&fixture("pull_request.reopened")).unwrap();
    event["pull_request"]["head"]["sha"] = json!(w.head_sha);
    let reopened = uuid();
    let (status, _) = w.relay.post("pull_request", &reopened, &serde_json::to_vec(&event).unwrap(), false).await;
    assert_eq!(status, 202);
    w.relay.settled(&reopened, Duration::from_secs(20)).await;
    assert_eq!(
        call(&w, "org4/four", "44", &job_callback(&reopened, "org4/four", 556, "build", "in_progress", None)).await,
        202
    );
    wait_for("the reopened PR's check run", || w.gh.check_runs(UPSTREAM).len() == 1).await;
    // GitHub redelivers the old `closed` (same delivery id): it changes nothing.
    let mut v: Value = serde_json::from_slice(&fixture("pull_request.closed")).unwrap();
    v["repository"]["full_name"] = json!(UPSTREAM);
    v["pull_request"]["head"]["sha"] = json!(w.head_sha);
    let (status, _) = w.relay.post("pull_request", &closed, &serde_json::to_vec(&v).unwrap(), false).await;
    assert_eq!(status, 202);
    reconciled(&w).await;
    w.relay.reconciler.sweep().await.unwrap();
    let run = &w.gh.check_runs(UPSTREAM)[0];
    assert_eq!((run.status.as_str(), run.conclusion.as_deref()), ("in_progress", None), "{run:?}");
    w.relay.stop().await;
}
