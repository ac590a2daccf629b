//! Callbacks end to end through the relay on the embedded default: a local
//! OIDC issuer (real RSA key, JWKS), the GitHub stand-in, and a local HUD.
//! Downstream jobs report in_progress then completed; HUD receives both
//! records with the relay's own timings; forged, unauthorised, duplicate,
//! out-of-order and malformed callbacks change nothing; HUD outages lose
//! nothing and send nothing twice; stale jobs time out.

use std::sync::Arc;
use std::time::Duration;

use crcr_core::domain::{DeliveryId, Level};
use crcr_core::lifecycle::{HudOutbox, HudSync, JobLifecycle, JobState};
use crcr_core::ports::{Clock, ManualClock, SystemClock};
use crcr_core::reconcile::ReconcilerSettings;
use crcr_embedded::sqlite::SqliteJobStore;
use crcr_standin::{StandIn, StandInOptions};
use crcr_tests::issuer::{Hud, Issuer};
use crcr_tests::*;
use serde_json::{json, Value};

const ALLOWLIST: &str = "L1:\n  - org1/one\nL2:\n  - org2/two\nL3:\n  gpu:\n    org3/three: [alice]\n";

struct World {
    gh: StandIn,
    issuer: Issuer,
    hud: Hud,
    relay: Relay,
    delivery: String,
    /// The relay's clock when the test moves time itself ([`world_on_clock`]).
    clock: Option<Arc<ManualClock>>,
}

async fn world(job_timeout: Duration) -> World {
    world_with(ReconcilerSettings { job_timeout, ..Default::default() }, true).await
}

/// A world with these reconciler settings; `upstream_installed`: whether the
/// App is installed on the upstream repository (commit checks need it).
async fn world_with(reconciler: ReconcilerSettings, upstream_installed: bool) -> World {
    world_configured(reconciler, upstream_installed, |_, _| {}).await
}

/// [`world_with`], with `configure` applied to the callback settings (given
/// the issuer) before the relay starts.
async fn world_configured(
    reconciler: ReconcilerSettings,
    upstream_installed: bool,
    configure: impl FnOnce(&mut crcr_core::config::CallbackConfig, &Issuer),
) -> World {
    world_on(reconciler, upstream_installed, configure, None).await
}

/// [`world_with`] on a manual clock that starts at the wall clock's now
/// (tokens the issuer mints are valid on it) and moves only when the test
/// says so.
async fn world_on_clock(reconciler: ReconcilerSettings) -> World {
    let now = SystemClock.now_ms();
    world_on(reconciler, true, |_, _| {}, Some(Arc::new(ManualClock::new(now)))).await
}

async fn world_on(
    reconciler: ReconcilerSettings,
    upstream_installed: bool,
    configure: impl FnOnce(&mut crcr_core::config::CallbackConfig, &Issuer),
    clock: Option<Arc<ManualClock>>,
) -> World {
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    for r in ["org1/one", "org2/two", "org3/three"] {
        gh.install(r);
    }
    if upstream_installed {
        gh.install(UPSTREAM);
    }
    let issuer = Issuer::start().await;
    let hud = Hud::start().await;
    let mut callbacks = callback_config(&issuer, &hud);
    // The tests' short HUD backoff (`callback_config`) stays.
    callbacks.reconciler = ReconcilerSettings { hud_retry: callbacks.reconciler.hud_retry, ..reconciler };
    configure(&mut callbacks, &issuer);
    let relay_clock: Arc<dyn Clock> = match &clock {
        Some(c) => c.clone(),
        None => Arc::new(SystemClock),
    };
    let relay = Relay::start_on_clock(&gh, ALLOWLIST, test_settings(), None, "s", callbacks, relay_clock).await;
    let delivery = uuid();
    assert_eq!(relay.post("push", &delivery, &fixture("push"), false).await.0, 202);
    relay.settled(&delivery, Duration::from_secs(20)).await;
    World { gh, issuer, hud, relay, delivery, clock }
}

fn body(delivery: &str, status: &str, conclusion: Option<&str>, attempt: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_type": "push", "delivery_id": delivery, "payload": {"ref": "refs/heads/main"},
        "workflow": {"schema_version": "1", "status": status, "conclusion": conclusion, "name": "CI",
            "url": "https://github.com/org2/two/actions/runs/123", "run_id": "123", "run_attempt": attempt.to_string(),
            "job_name": "build", "check_run_id": "456", "started_at": null, "completed_at": null}
    }))
    .unwrap()
}

async fn call(w: &World, token: &str, body: &[u8]) -> (u16, Value) {
    post_callback(&w.relay, token, body).await
}

fn jobs(w: &World) -> SqliteJobStore {
    SqliteJobStore::new(w.relay.db())
}

/// The value of one Prometheus series (`name{label="value"}`) at the relay's
/// `GET /metrics`; 0 when absent. The recorder is per process: tests that
/// share one (`cargo test`) add up, so callers check at least.
async fn counter(relay: &Relay, series: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", relay.url)).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test]
async fn in_progress_then_completed_reaches_hud_with_trusted_figures() {
    let w = world(Duration::from_secs(6 * 3600)).await;
    let started = body(&w.delivery, "in_progress", None, 1);
    let (s, a) = call(&w, &w.issuer.token("org2/two", "22"), &started).await;
    assert_eq!(s, 202, "{a}");
    wait_for("the in_progress HUD record", || w.hud.received().len() == 1).await;
    let done = body(&w.delivery, "completed", Some("success"), 1);
    // At the callback action's default URL, which ends in a slash.
    let res = reqwest::Client::new()
        .post(format!("{}/github/callback/", w.relay.url))
        .bearer_auth(w.issuer.token("org2/two", "22"))
        .header("content-type", "application/json")
        .body(done.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202, "POST /github/callback/");
    wait_for("the completed HUD record", || w.hud.received().len() == 2).await;
    let got = w.hud.received();
    assert!(got.iter().all(|(_, key, _)| key == "hud-bot-key"));
    // torchci's handler took both, and its row ends completed.
    assert!(got.iter().all(|(status, _, _)| *status == 200), "{got:?}");
    let rows = w.hud.rows();
    let row = rows.values().next().expect("one HUD row");
    assert_eq!(
        (rows.len(), row["status"].as_str(), row["conclusion"].as_str()),
        (1, Some("completed"), Some("success"))
    );
    let (first, second) = (&got[0].2, &got[1].2);
    assert_eq!(first["trusted"]["verified_repo"], "org2/two");
    assert_eq!(first["trusted"]["downstream_repo_level"], "L2");
    assert!(first["trusted"]["ci_metrics"]["queue_time"].as_f64().unwrap() >= 0.0);
    assert!(first["trusted"]["ci_metrics"]["execution_time"].is_null());
    assert!(second["trusted"]["ci_metrics"]["execution_time"].as_f64().unwrap() >= 0.0);
    let sent: Value = serde_json::from_slice(&done).unwrap();
    assert_eq!(second["untrusted"]["callback_payload"], sent);
    // Job record: completed with both figures; outbox all sent.
    let id = DeliveryId::parse(&w.delivery).unwrap();
    let job = &jobs(&w).jobs(&id).await.unwrap()[0];
    assert_eq!((job.state, job.conclusion.as_deref()), (JobState::Completed, Some("success")));
    assert!(jobs(&w).outbox(&id).await.unwrap().iter().all(|o| o.sync == HudSync::Sent));
    // crcr trace shows the whole chain.
    let t = crcr_oncall::trace::trace(&id, w.relay.store.as_ref(), &jobs(&w)).await.unwrap();
    assert_eq!((t.dispatches.len(), t.jobs.len(), t.hud.len()), (3, 1, 2));
    let text = t.render();
    for needle in ["org2/two", "L2", "dispatched", "completed (success)", "queue ", "sent"] {
        assert!(text.contains(needle), "trace lacks {needle:?}:\n{text}");
    }

    // Duplicates and out-of-order: 409 at request time, nothing changes, HUD gets nothing more.
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &started).await.0, 409);
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &done).await.0, 409);
    // A re-run starts its own lifecycle: completed without in_progress is refused, in_progress accepted.
    assert_eq!(
        call(&w, &w.issuer.token("org2/two", "22"), &body(&w.delivery, "completed", Some("failure"), 2)).await.0,
        409
    );
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &body(&w.delivery, "in_progress", None, 2)).await.0, 202);
    wait_for("the re-run's HUD record", || w.hud.received().len() == 3).await;
    w.relay.stop().await;
}

#[tokio::test]
async fn refused_callbacks_change_nothing() {
    let w = world(Duration::from_secs(6 * 3600)).await;
    let started = body(&w.delivery, "in_progress", None, 1);
    let other = Issuer::start().await; // a key the relay does not trust, same claims
    let forged = other.token("org2/two", "22").replace(&other.url, &w.issuer.url);
    let cases: Vec<(&str, String, Vec<u8>, u16)> = vec![
        ("no token", String::new(), started.clone(), 401),
        ("garbage token", "not.a.jwt".into(), started.clone(), 401),
        ("token from another issuer", other.token("org2/two", "22"), started.clone(), 401),
        ("forged signature", forged, started.clone(), 401),
        ("L1 repository", w.issuer.token("org1/one", "11"), started.clone(), 200),
        ("repository not in the allowlist", w.issuer.token("evil/repo", "66"), started.clone(), 200),
        ("never dispatched", w.issuer.token("org2/two", "22"), body(&uuid(), "in_progress", None, 1), 409),
        ("bad body", w.issuer.token("org2/two", "22"), b"{\"event_type\": \"push\"}".to_vec(), 400),
        (
            "completed without in_progress",
            w.issuer.token("org3/three", "33"),
            body(&w.delivery, "completed", Some("success"), 1),
            409,
        ),
    ];
    for (what, token, b, want) in cases {
        let (s, a) = call(&w, &token, &b).await;
        assert_eq!(s, want, "{what}: {a}");
        if want == 400 {
            assert!(a["reason"].as_str().unwrap().contains("delivery_id"), "{what}: {a}");
        }
        // L1 and unlisted repositories: ignored with 200 so the downstream CI
        // step stays green, as the Python relay answers (callback_handler.py).
        if want == 200 {
            assert_eq!((&a["ok"], &a["status"]), (&json!(true), &json!("ignored")), "{what}: {a}");
            assert!(a["reason"].as_str().unwrap().contains(if what.starts_with("L1") { "L1" } else { "allowlist" }));
        }
    }
    for reason in ["level", "not_allowlisted"] {
        let series = format!("CallbacksIgnored{{reason=\"{reason}\"}}");
        assert!(counter(&w.relay, &series).await >= 1.0, "{series}");
    }
    // HUD keys its rows by workflow.name and check_run_id and refuses a record
    // without check_run_id (torchci lib/crcr/crcrUtils.ts): 400 naming the field.
    for field in ["check_run_id", "name"] {
        let mut b: Value = serde_json::from_slice(&started).unwrap();
        b["workflow"].as_object_mut().unwrap().remove(field);
        let (s, a) = call(&w, &w.issuer.token("org2/two", "22"), &serde_json::to_vec(&b).unwrap()).await;
        assert_eq!(s, 400, "without workflow.{field}: {a}");
        assert!(a["reason"].as_str().unwrap().contains(&format!("workflow.{field}")), "{a}");
    }
    // The same repository name with another repository_id (re-created repo): refused once bound.
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &started).await.0, 202);
    assert_eq!(
        call(&w, &w.issuer.token("org2/two", "999"), &body(&w.delivery, "completed", Some("success"), 1)).await.0,
        403
    );
    w.relay.sweeps_pass(3).await;
    let id = DeliveryId::parse(&w.delivery).unwrap();
    assert_eq!(jobs(&w).jobs(&id).await.unwrap().len(), 1);
    assert_eq!(w.hud.received().len(), 1);
    let _ = w.gh;
    w.relay.stop().await;
}

#[tokio::test]
async fn hud_outage_loses_nothing_and_sends_nothing_twice_and_4xx_is_kept_as_rejected() {
    let w = world(Duration::from_secs(6 * 3600)).await;
    // GIVEN HUD down for the next 7 calls (each sync pass tries 3 times)
    w.hud.answer(&[503, 502, 503, 500, 503, 503, 504]);
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &body(&w.delivery, "in_progress", None, 1)).await.0, 202);
    wait_for("HUD to take the record after its outage", || w.hud.received().iter().any(|r| r.0 == 200)).await;
    w.relay.sweeps_pass(3).await;
    let got = w.hud.received();
    assert_eq!(got.iter().filter(|r| r.0 == 200).count(), 1, "sent exactly once after the 2xx");
    assert_eq!(got.len(), 8);
    // A 4xx: kept as rejected with HUD's answer, not retried.
    w.hud.answer(&[422]);
    assert_eq!(call(&w, &w.issuer.token("org3/three", "33"), &body(&w.delivery, "in_progress", None, 1)).await.0, 202);
    wait_for("the 422", || w.hud.received().len() == 9).await;
    w.relay.sweeps_pass(3).await;
    assert_eq!(w.hud.received().len(), 9, "a rejected record is not resent");
    let outbox = jobs(&w).outbox(&DeliveryId::parse(&w.delivery).unwrap()).await.unwrap();
    let rejected: Vec<_> = outbox.iter().filter(|o| o.sync == HudSync::Rejected).collect();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].last_error.as_deref().unwrap().contains("422"), "{:?}", rejected[0]);
    w.relay.stop().await;
}

#[tokio::test]
async fn a_job_left_in_progress_past_the_timeout_is_closed_as_timed_out() {
    let w = world(Duration::from_secs(1)).await;
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &body(&w.delivery, "in_progress", None, 1)).await.0, 202);
    wait_for("the timed_out HUD record", || w.hud.received().len() == 2).await;
    let id = DeliveryId::parse(&w.delivery).unwrap();
    let job = &jobs(&w).jobs(&id).await.unwrap()[0];
    assert_eq!((job.state, job.conclusion.as_deref()), (JobState::Completed, Some("timed_out")));
    assert!(job.execution_time_s.unwrap() >= 1.0);
    // What HUD stores for any finished job: the last accepted body, completed
    // as timed_out (torchci's handler took it: 200, and its row is closed).
    let (status, _, record) = &w.hud.received()[1];
    assert_eq!(*status, 200, "torchci's handler refused the timed_out record: {record}");
    let (first, last) =
        (&w.hud.received()[0].2["untrusted"]["callback_payload"], &record["untrusted"]["callback_payload"]);
    let wf = &last["workflow"];
    assert_eq!((wf["status"].as_str(), wf["conclusion"].as_str()), (Some("completed"), Some("timed_out")));
    assert!(wf["completed_at"].as_str().is_some_and(|t| t.ends_with('Z') && t.len() == 20), "{wf}");
    for field in ["job_name", "check_run_id", "name", "run_id", "url", "started_at"] {
        assert_eq!(wf[field], first["workflow"][field], "workflow.{field} kept from the in_progress body");
    }
    assert_eq!(last["payload"], first["payload"]);
    let rows = w.hud.rows();
    let row = rows.values().next().expect("one HUD row");
    assert_eq!((row["status"].as_str(), row["conclusion"].as_str()), (Some("completed"), Some("timed_out")));
    // A late completed callback for it is a violation and changes nothing.
    assert_eq!(
        call(&w, &w.issuer.token("org2/two", "22"), &body(&w.delivery, "completed", Some("success"), 1)).await.0,
        409
    );
    w.relay.stop().await;
}

/// An L2+ target GitHub accepted the dispatch for but that never called back
/// within the deadline is reported "never started"; one that called back,
/// and an L1 target (no callbacks expected), are not.
#[tokio::test]
async fn a_dispatch_with_no_callback_is_reported_never_started() {
    let settings = ReconcilerSettings { never_started_after: Duration::from_secs(1), ..Default::default() };
    let w = world_on_clock(settings).await;
    let started = body(&w.delivery, "in_progress", None, 1);
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &started).await.0, 202);
    wait_for("the in_progress HUD record", || w.hud.received().len() == 1).await;
    assert_eq!(w.relay.reconciler.never_started().await.unwrap(), vec![], "not yet past the deadline");
    w.clock.as_ref().expect("a manual clock").advance(Duration::from_millis(1100));
    let late = w.relay.reconciler.never_started().await.unwrap();
    let got: Vec<(String, &str, Level)> =
        late.iter().map(|n| (n.delivery_id.to_string(), n.target.as_str(), n.level)).collect();
    assert_eq!(got, vec![(w.delivery.clone(), "org3/three", Level::L3)]);
    let report = w.relay.reconciler.sweep().await.unwrap();
    assert_eq!(report.never_started, late);
    assert_eq!(report.never_started_error, None);
    // crcr trace shows the silent target.
    let id = DeliveryId::parse(&w.delivery).unwrap();
    let t = crcr_oncall::trace::trace(&id, w.relay.store.as_ref(), &jobs(&w)).await.unwrap();
    let silent: Vec<&str> = t.silent_targets.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(silent, vec!["org3/three"]);
    assert!(t.render().contains("no callback yet"), "{}", t.render());
}

/// `nightly` callbacks name an upstream commit: a known SHA is recorded and
/// reaches HUD; an unknown one is refused at request time (422 naming the
/// SHA), nothing is enqueued and HUD gets nothing; when GitHub cannot answer
/// (App not installed upstream) the callback is accepted.
#[tokio::test]
async fn nightly_callbacks_are_checked_against_upstream_commits() {
    let nightly = |sha: &str| {
        serde_json::to_vec(&json!({
            "event_type": "nightly", "delivery_id": sha, "payload": {},
            "workflow": {"schema_version": 1, "status": "completed", "conclusion": "success", "name": "nightly",
                "url": "https://github.com/org2/two/actions/runs/9", "run_id": 9, "run_attempt": 1, "job_name": "test",
                "check_run_id": "9-1"}
        }))
        .unwrap()
    };
    let (known, unknown) = ("a".repeat(40), "b".repeat(40));
    let w = world_with(ReconcilerSettings::default(), true).await;
    w.gh.put_commit(UPSTREAM, &known);
    let (s, a) = call(&w, &w.issuer.token("org2/two", "22"), &nightly(&unknown)).await;
    assert_eq!(s, 422, "{a}");
    assert_eq!(a["error"], "unknown_commit");
    assert_eq!(a["reason"], format!("commit {unknown} does not exist on {UPSTREAM}"));
    assert!(counter(&w.relay, r#"CallbackRejections{reason="unknown_commit"}"#).await >= 1.0);
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &nightly(&known)).await.0, 202);
    wait_for("the known commit's HUD record", || w.hud.received().len() == 1).await;
    let got = w.hud.received();
    assert_eq!(got[0].2["untrusted"]["callback_payload"]["delivery_id"], known.as_str());
    let (known_id, unknown_id) = (DeliveryId::parse(&known).unwrap(), DeliveryId::parse(&unknown).unwrap());
    assert_eq!(jobs(&w).jobs(&known_id).await.unwrap()[0].state, JobState::Completed);
    // Refused before the queue: no violation, no job (the reconciler's own
    // check stays for callbacks accepted while GitHub could not answer).
    assert!(jobs(&w).violations(&unknown_id).await.unwrap().is_empty());
    assert_eq!(jobs(&w).jobs(&unknown_id).await.unwrap(), vec![]);
    // One lookup per SHA: the reconciler reuses the route's cached answer.
    assert_eq!(w.gh.count("GET", &format!("/repos/{UPSTREAM}/commits/")), 2);

    // GitHub cannot answer: accepted and recorded.
    let w = world_with(ReconcilerSettings::default(), false).await;
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &nightly(&unknown)).await.0, 202);
    wait_for("the HUD record despite GitHub", || w.hud.received().len() == 1).await;
    assert_eq!(jobs(&w).jobs(&unknown_id).await.unwrap()[0].state, JobState::Completed);
}

/// A Buildkite pipeline of PyTorch's real `ci_providers.yml`
/// (fixtures/ci_providers.yml, read through `CRCR_BUILDKITE_PIPELINES_FILE`)
/// reports for the repository it maps to when its token says `build_branch`
/// main; the same pipeline building another branch (a fork PR) and an
/// unmapped pipeline are refused 403.
#[tokio::test]
async fn a_buildkite_pipeline_of_pytorchs_ci_providers_file_reports_for_its_repository() {
    const ORG: &str = "018b5ec5-c236-4037-ba08-d8a5d29bcdae";
    const PIPELINE: &str = "018cdabc-d930-49f6-9085-634c4cb582ed";
    let gh = StandIn::start(StandInOptions::default()).await.unwrap();
    gh.install("vllm-project/vllm");
    let (issuer, buildkite, hud) = (Issuer::start().await, Issuer::start().await, Hud::start().await);
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/ci_providers.yml");
    let env = crcr_core::config::Env::new(|k| (k == "CRCR_BUILDKITE_PIPELINES_FILE").then(|| file.to_owned()));
    let mut callbacks = callback_config(&issuer, &hud);
    callbacks.oidc.buildkite = Some(crcr_core::oidc::TrustAnchor::new(buildkite.url.clone()));
    callbacks.oidc.buildkite_pipelines =
        crcr_core::config::CallbackConfig::from_env(&env).unwrap().oidc.buildkite_pipelines;
    let relay = Relay::start_with(&gh, "L2:\n  - vllm-project/vllm\n", test_settings(), None, "s", callbacks).await;
    let delivery = uuid();
    assert_eq!(relay.post("push", &delivery, &fixture("push"), false).await.0, 202);
    relay.settled(&delivery, Duration::from_secs(20)).await;
    let started = body(&delivery, "in_progress", None, 1);

    let (s, a) =
        post_callback(&relay, &buildkite.buildkite_token(ORG, PIPELINE, "contributor:fix-typo"), &started).await;
    assert_eq!(s, 403, "{a}");
    assert!(a["reason"].as_str().unwrap().contains("build_branch"), "{a}");
    let other_pipeline = "018cdabc-0000-0000-0000-000000000000";
    let (s, a) = post_callback(&relay, &buildkite.buildkite_token(ORG, other_pipeline, "main"), &started).await;
    assert_eq!(s, 403, "{a}");
    assert!(a["reason"].as_str().unwrap().contains(other_pipeline), "{a}");

    let (s, a) = post_callback(&relay, &buildkite.buildkite_token(ORG, PIPELINE, "main"), &started).await;
    assert_eq!(s, 202, "{a}");
    wait_for("the Buildkite job's HUD record", || hud.received().len() == 1).await;
    assert_eq!(hud.received()[0].2["trusted"]["verified_repo"], "vllm-project/vllm");
    relay.stop().await;
}

/// The callback settings read from these environment variables (over the
/// defaults), for the settings under test.
fn from_env(vars: &[(&str, &str)]) -> crcr_core::config::CallbackConfig {
    let vars: std::collections::HashMap<String, String> =
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    crcr_core::config::CallbackConfig::from_env(&crcr_core::config::Env::new(move |k| vars.get(k).cloned()))
        .expect("valid settings")
}

/// Refused with `status` and a reason containing `needle`.
async fn refused(w: &World, token: &str, body: &[u8], status: u16, needle: &str) {
    let (s, a) = call(w, token, body).await;
    assert_eq!(s, status, "{a}");
    let reason = a["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(needle), "reason {reason:?} lacks {needle:?}");
}

/// `stale` is a conclusion only GitHub sets (REST "Create a check run": "You
/// cannot change a check run conclusion to stale, only GitHub can set
/// this"): a callback reporting it is refused 400 naming
/// `workflow.conclusion` and nothing is stored — the job stays in progress,
/// so the genuine `completed` that follows is taken and is HUD's last word.
#[tokio::test]
async fn a_stale_conclusion_is_refused_and_nothing_is_stored() {
    let w = world(Duration::from_secs(6 * 3600)).await;
    let token = || w.issuer.token("org2/two", "22");
    assert_eq!(call(&w, &token(), &body(&w.delivery, "in_progress", None, 1)).await.0, 202);
    wait_for("the in_progress HUD record", || w.hud.received().len() == 1).await;
    refused(&w, &token(), &body(&w.delivery, "completed", Some("stale"), 1), 400, "workflow.conclusion").await;
    let id = DeliveryId::parse(&w.delivery).unwrap();
    assert_eq!(jobs(&w).jobs(&id).await.unwrap()[0].state, JobState::InProgress);
    assert_eq!(call(&w, &token(), &body(&w.delivery, "completed", Some("success"), 1)).await.0, 202);
    wait_for("the completed HUD record", || w.hud.received().len() == 2).await;
    let job = &jobs(&w).jobs(&id).await.unwrap()[0];
    assert_eq!((job.state, job.conclusion.as_deref()), (JobState::Completed, Some("success")));
    assert!(jobs(&w).violations(&id).await.unwrap().is_empty(), "the refused callback was not recorded");
    w.relay.stop().await;
}

/// A token minted by a `pull_request` run of an allowlisted repository (a
/// branch anyone with write access controls) is not a result for a PyTorch
/// event: 403 naming `event_name`, nothing stored (the genuine
/// `repository_dispatch` run's `in_progress` that follows is the first).
#[tokio::test]
async fn a_pull_request_run_may_not_report_results() {
    let w = world(Duration::from_secs(6 * 3600)).await;
    let started = body(&w.delivery, "in_progress", None, 1);
    let pr = w.issuer.run_token("org2/two", "22", "pull_request", "refs/pull/7/merge");
    refused(&w, &pr, &started, 403, r#"event_name "pull_request" is not one of repository_dispatch"#).await;
    let target = w.issuer.run_token("org2/two", "22", "pull_request_target", "refs/heads/main");
    refused(&w, &target, &started, 403, r#"event_name "pull_request_target""#).await;
    let push = w.issuer.run_token("org2/two", "22", "push", "refs/heads/main");
    refused(&w, &push, &started, 403, r#"event_name "push""#).await;
    assert!(counter(&w.relay, r#"CallbackRejections{reason="run_not_allowed"}"#).await >= 3.0);
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &started).await.0, 202, "nothing was stored before");
    wait_for("the genuine in_progress HUD record", || w.hud.received().len() == 1).await;
    w.relay.stop().await;
}

/// `repository_dispatch` only runs workflows on the default branch (GitHub
/// "Events that trigger workflows"), so a `repository_dispatch` token whose
/// `ref` is another branch did not come from the relay's dispatch: 403
/// naming `ref`.
#[tokio::test]
async fn a_repository_dispatch_token_of_another_ref_is_refused() {
    let w = world(Duration::from_secs(6 * 3600)).await;
    let started = body(&w.delivery, "in_progress", None, 1);
    let feature = w.issuer.run_token("org2/two", "22", "repository_dispatch", "refs/heads/feature");
    refused(&w, &feature, &started, 403, r#"ref "refs/heads/feature" is not refs/heads/main"#).await;
    let tag = w.issuer.run_token("org2/two", "22", "repository_dispatch", "refs/tags/v1");
    refused(&w, &tag, &started, 403, r#"ref "refs/tags/v1""#).await;
    assert_eq!(call(&w, &w.issuer.token("org2/two", "22"), &started).await.0, 202);
    w.relay.stop().await;
}

/// `schedule` and `workflow_dispatch` runs report only scheduled results
/// (`event_type` nightly/periodic), and only from the default branch.
#[tokio::test]
async fn a_schedule_run_reports_only_nightly_and_periodic_results() {
    let w = world(Duration::from_secs(6 * 3600)).await;
    let sha = "c".repeat(40);
    w.gh.put_commit(UPSTREAM, &sha);
    let scheduled = |event_type: &str, run_id: u64| {
        serde_json::to_vec(&json!({
            "event_type": event_type, "delivery_id": sha, "payload": {},
            "workflow": {"schema_version": 1, "status": "completed", "conclusion": "success", "name": "nightly",
                "url": "https://github.com/org2/two/actions/runs/9", "run_id": run_id, "run_attempt": 1,
                "job_name": "test", "check_run_id": format!("{run_id}-1")}
        }))
        .unwrap()
    };
    let schedule = || w.issuer.run_token("org2/two", "22", "schedule", "refs/heads/main");
    refused(
        &w,
        &schedule(),
        &body(&w.delivery, "in_progress", None, 1),
        403,
        r#"event_name "schedule" is not one of repository_dispatch (accepted for dispatched-event callbacks)"#,
    )
    .await;
    let manual_elsewhere = w.issuer.run_token("org2/two", "22", "workflow_dispatch", "refs/heads/experiment");
    refused(&w, &manual_elsewhere, &scheduled("nightly", 10), 403, r#"ref "refs/heads/experiment""#).await;
    assert_eq!(call(&w, &schedule(), &scheduled("nightly", 11)).await.0, 202);
    let manual = w.issuer.run_token("org2/two", "22", "workflow_dispatch", "refs/heads/main");
    assert_eq!(call(&w, &manual, &scheduled("periodic", 12)).await.0, 202);
    wait_for("both scheduled HUD records", || w.hud.received().len() == 2).await;
    w.relay.stop().await;
}

/// `CRCR_CALLBACK_BRANCHES` names a repository's default branch when it is
/// not `CRCR_CALLBACK_DEFAULT_BRANCH` (`main`): its runs must be on it, the
/// other repositories' on the default.
#[tokio::test]
async fn the_configured_branch_map_is_honoured() {
    let settings = from_env(&[("CRCR_CALLBACK_BRANCHES", "Org2/Two=trunk, org9/nine=refs/heads/dev")]);
    let w =
        world_configured(ReconcilerSettings::default(), true, |c, _| c.oidc.github_runs = settings.oidc.github_runs)
            .await;
    let started = body(&w.delivery, "in_progress", None, 1);
    let on = |repo: &str, id: &str, r: &str| w.issuer.run_token(repo, id, "repository_dispatch", r);
    refused(&w, &on("org2/two", "22", "refs/heads/main"), &started, 403, "is not refs/heads/trunk").await;
    assert_eq!(call(&w, &on("org2/two", "22", "refs/heads/trunk"), &started).await.0, 202);
    refused(&w, &on("org3/three", "33", "refs/heads/trunk"), &started, 403, "is not refs/heads/main").await;
    assert_eq!(call(&w, &on("org3/three", "33", "refs/heads/main"), &started).await.0, 202);
    wait_for("both HUD records", || w.hud.received().len() == 2).await;
    w.relay.stop().await;
}

/// An enterprise with a customised OIDC issuer
/// (`https://token.actions.githubusercontent.com/<enterprise slug>`) listed in
/// `CRCR_OIDC_GITHUB_ISSUERS` reports like the public issuer's repositories;
/// an enterprise issuer that is not listed is refused 401.
#[tokio::test]
async fn an_enterprise_issuer_listed_in_the_settings_is_trusted() {
    let enterprise = Issuer::start_at("/acme-enterprise").await;
    let unlisted = Issuer::start_at("/other-enterprise").await;
    let settings = from_env(&[("CRCR_OIDC_GITHUB_ISSUERS", &format!(" {} ,", enterprise.url))]);
    let w = world_configured(ReconcilerSettings::default(), true, |c, _| {
        c.oidc.github_enterprise_issuers = settings.oidc.github_enterprise_issuers
    })
    .await;
    let started = body(&w.delivery, "in_progress", None, 1);
    refused(&w, &unlisted.token("org2/two", "22"), &started, 401, "not a trusted issuer").await;
    assert_eq!(call(&w, &enterprise.token("org2/two", "22"), &started).await.0, 202);
    assert_eq!(call(&w, &w.issuer.token("org3/three", "33"), &started).await.0, 202);
    wait_for("both HUD records", || w.hud.received().len() == 2).await;
    assert_eq!((enterprise.jwks_requests(), unlisted.jwks_requests()), (1, 0));
    w.relay.stop().await;
}

/// While the issuer's JWKS answers 503, callbacks get 503 with
/// `Retry-After` (seconds); once it is back, a callback after that many
/// seconds is verified (not a minute later).
#[tokio::test]
async fn a_jwks_outage_answers_503_with_retry_after_and_recovers_within_seconds() {
    let w =
        world_on_clock(ReconcilerSettings { job_timeout: Duration::from_secs(6 * 3600), ..Default::default() }).await;
    let started = body(&w.delivery, "in_progress", None, 1);
    let send = || async {
        reqwest::Client::new()
            .post(format!("{}/github/callback", w.relay.url))
            .bearer_auth(w.issuer.token("org2/two", "22"))
            .header("content-type", "application/json")
            .body(started.clone())
            .send()
            .await
            .unwrap()
    };
    w.issuer.set_outage(true);
    let res = send().await;
    assert_eq!(res.status().as_u16(), 503);
    let retry_after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 1, "first failure: 1 s back-off");
    assert_eq!(w.issuer.jwks_requests(), 1);
    w.issuer.set_outage(false);
    let clock = w.clock.as_ref().expect("a manual clock");
    let res = send().await;
    assert_eq!(res.status().as_u16(), 503, "still backing off before the Retry-After has passed");
    assert_eq!(w.issuer.jwks_requests(), 1, "no fetch while backing off");
    clock.advance(Duration::from_secs(retry_after));
    let res = send().await;
    assert_eq!(res.status().as_u16(), 202, "verified once the Retry-After has passed");
    assert_eq!(w.issuer.jwks_requests(), 2, "one fetch in the outage, one after it");
    wait_for("the HUD record", || w.hud.received().len() == 1).await;
    w.relay.stop().await;
}
