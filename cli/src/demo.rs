//! `crcr demo`: the relay on the embedded default against a local GitHub
//! stand-in, fed real webhook fixtures (octokit/webhooks, MIT) signed with a
//! generated secret, with PyTorch's real allowlist where the App is installed
//! on half the repositories. Prints what happened per delivery, then checks
//! it against what the stand-in received and what the store recorded; exits
//! non-zero if they disagree.
//!
//! Then the downstream side: simulated CI jobs of two dispatched L2/L3
//! repositories call back (`in_progress`, then `completed`) with OIDC tokens
//! from a local issuer (real RSA key, JWKS endpoint); an L1 repository's
//! callback is ignored (200) and refused ones (a repeated `completed`, a
//! forged token) change nothing; a local HUD receives the records; an L2
//! target that never calls back is reported "never started"; `crcr trace`
//! shows the chain.
//!
//! Last, upstream check runs (issue 4): the L3 repository's label is added
//! after its job finished, so its check run is backfilled with the job's
//! conclusion; a "Re-run" on that check run re-runs the downstream run's
//! failed jobs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use crcr_clients::github::GitHubAppConfig;
use crcr_core::allowlist::{Allowlist, AllowlistSource};
use crcr_core::config::CallbackConfig;
use crcr_core::config::{EmbeddedConfig, RelayConfig};
use crcr_core::dispatch::DispatcherSettings;
use crcr_core::domain::{DeliveryId, RepoFullName};
use crcr_core::lifecycle::JobStore;
use crcr_core::oidc::TrustAnchor;
use crcr_core::ports::{DispatchStatus, DispatchStore, QueueInspect, QueueSide};
use crcr_core::reconcile::{Reconciler, ReconcilerSettings};
use crcr_core::signature::WebhookSecret;
use crcr_embedded::sqlite::SqliteDispatchStore;
use crcr_embedded::EmbeddedRelay;
use crcr_standin::issuer::{Hud, Issuer};
use crcr_standin::{Fault, StandIn, StandInOptions};
use serde_json::{json, Value};

const ALLOWLIST: &str = include_str!("../../fixtures/allowlist/pytorch-allowlist.yml");
const UPSTREAM: &str = "Codertocat/Hello-World";
/// Repositories of the allowlist where the demo installs the App.
const INSTALLED: &[&str] = &[
    "pytorch/crcr-test",
    "Ascend/pytorch",
    "vllm-project/vllm",
    "google-pytorch/torch_tpu",
    "riseproject-dev/pytorch-ci",
];

struct Delivery {
    label: &'static str,
    event: &'static str,
    id: String,
    body: Vec<u8>,
    forged: bool,
    /// Expected to be dispatched (202 and targets).
    dispatched: bool,
    redelivery: bool,
    /// Acted on by the reconciler only (202, no dispatch): `labeled`.
    reconciler_only: bool,
}

fn fixture(name: &str) -> &'static str {
    match name {
        "pull_request.opened" => include_str!("../../fixtures/webhooks/pull_request.opened.json"),
        "pull_request.synchronize" => {
            include_str!("../../fixtures/webhooks/pull_request.synchronize.json")
        }
        "pull_request.reopened" => {
            include_str!("../../fixtures/webhooks/pull_request.reopened.json")
        }
        "pull_request.closed" => include_str!("../../fixtures/webhooks/pull_request.closed.json"),
        "pull_request.labeled" => include_str!("../../fixtures/webhooks/pull_request.labeled.json"),
        "push" => include_str!("../../fixtures/webhooks/push.json"),
        "check_run.rerequested" => include_str!("../../fixtures/webhooks/check_run.rerequested.json"),
        "ping" => include_str!("../../fixtures/webhooks/ping.json"),
        _ => unreachable!("unknown fixture {name}"),
    }
}

fn deliveries() -> Vec<Delivery> {
    let d = |label, event, fixture_name: &str, dispatched| Delivery {
        label,
        event,
        id: uuid::Uuid::new_v4().to_string(),
        body: fixture(fixture_name).as_bytes().to_vec(),
        forged: false,
        dispatched,
        redelivery: false,
        reconciler_only: false,
    };
    let mut big: Value = serde_json::from_str(fixture("pull_request.synchronize")).expect("fixture is JSON");
    // A long PR description, as real PyTorch PRs have: pushes client_payload past 65,535 characters.
    big["pull_request"]["body"] = Value::String("A long description. ".repeat(4_000));
    let mut list = vec![
        d("pull_request.opened", "pull_request", "pull_request.opened", true),
        d("pull_request.synchronize", "pull_request", "pull_request.synchronize", true),
        Delivery {
            body: serde_json::to_vec(&big).expect("JSON"),
            ..d("pull_request.synchronize (80 KB body)", "pull_request", "pull_request.synchronize", true)
        },
        d("push", "push", "push", true),
        d("pull_request.closed", "pull_request", "pull_request.closed", true),
        d("pull_request.reopened", "pull_request", "pull_request.reopened", true),
        Delivery { reconciler_only: true, ..d("pull_request.labeled", "pull_request", "pull_request.labeled", false) },
        d("ping", "ping", "ping", false),
    ];
    let first = &list[0];
    let redelivery = Delivery {
        label: "redelivery of the first",
        redelivery: true,
        dispatched: false,
        id: first.id.clone(),
        ..d("", "pull_request", "pull_request.opened", false)
    };
    let forged =
        Delivery { label: "forged signature", forged: true, ..d("", "pull_request", "pull_request.opened", false) };
    list.push(redelivery);
    list.push(forged);
    list
}

/// Runs the demo; `Ok(false)` when what the relay did differs from what was printed/expected.
pub async fn run() -> anyhow::Result<bool> {
    let started = Instant::now();
    let gh = StandIn::start(StandInOptions::default()).await.context("starting the GitHub stand-in")?;
    for repo in INSTALLED {
        gh.install(repo);
    }
    // And on the upstream repository, where it creates check runs.
    gh.install(UPSTREAM);
    // Faults GitHub really produces: two 502s, then success; a secondary rate limit.
    gh.inject("vllm-project/vllm", Fault::ServerError(502));
    gh.inject("vllm-project/vllm", Fault::ServerError(502));
    gh.inject("google-pytorch/torch_tpu", Fault::SecondaryRateLimit { retry_after_s: 1 });
    let issuer = Issuer::start().await;
    // HUD keeps torchci's rules, its bot key among them.
    let hud_key = uuid::Uuid::new_v4().to_string();
    let hud = Hud::start_with_key(&hud_key).await;

    let dir = std::env::temp_dir().join(format!("crcr-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let allowlist_path = dir.join("allowlist.yml");
    std::fs::write(&allowlist_path, ALLOWLIST)?;
    let allowlist = Allowlist::parse(ALLOWLIST)?;
    let secret = WebhookSecret::new(uuid::Uuid::new_v4().to_string());
    let cfg = RelayConfig {
        upstream: RepoFullName::parse(UPSTREAM)?,
        webhook_secret: secret.clone(),
        github: GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url()),
        allowlist: AllowlistSource::File(allowlist_path),
        allowlist_ttl: Duration::from_secs(300),
        max_body_bytes: crcr_http::ingest::DEFAULT_MAX_BODY_BYTES,
        dispatcher: DispatcherSettings { requeue_base_delay: Duration::from_millis(500), ..Default::default() },
        callbacks: demo_callbacks(&issuer, &hud, &hud_key),
    };
    let emb = EmbeddedConfig {
        listen: "127.0.0.1:0".parse()?,
        database: dir.join("crcr.sqlite"),
        workers: 8,
        visibility_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(10),
        server: Default::default(),
    };
    let relay = EmbeddedRelay::build(&cfg, &emb)?;
    let store: Arc<SqliteDispatchStore> = relay.store.clone();
    let queue = relay.queue.clone();
    let (jobs, reconciler) = (relay.jobs.clone(), relay.reconciler.clone());
    let listener = tokio::net::TcpListener::bind(emb.listen).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(relay.run(listener, async move {
        let _ = stop_rx.await;
    }));

    let installed: BTreeSet<RepoFullName> = INSTALLED.iter().map(|r| RepoFullName::parse(r).expect("repo")).collect();
    println!("crcr demo: relay on SQLite at {}", emb.database.display());
    println!("           ingest http://{addr}/github/webhook, GitHub stand-in {}", gh.base_url());
    println!(
        "allowlist:  PyTorch's ({} repositories, L1-L3); App installed on {} of them; upstream {UPSTREAM}",
        allowlist.entries().len(),
        installed.len()
    );
    println!("faults:     vllm-project/vllm answers 502 twice; google-pytorch/torch_tpu answers 403 secondary rate limit (Retry-After: 1)\n");

    let http = reqwest::Client::new();
    let url = format!("http://{addr}/github/webhook");
    let mut problems: Vec<String> = Vec::new();
    let deliveries = deliveries();
    // The downstream jobs answer the reopened PR's dispatch: `closed` ended
    // tracking of that head's earlier dispatches.
    let tracked_delivery = deliveries[5].id.clone();
    for d in deliveries {
        let signature =
            if d.forged { WebhookSecret::new("not-the-secret").sign(&d.body) } else { secret.sign(&d.body) };
        let before = gh.dispatches().len();
        let t0 = Instant::now();
        let res = http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-github-event", d.event)
            .header("x-github-delivery", &d.id)
            .header("x-hub-signature-256", signature)
            .body(d.body.clone())
            .send()
            .await?;
        let ack = t0.elapsed();
        let status = res.status().as_u16();
        let answer: Value = res.json().await.unwrap_or(Value::Null);
        let delivery = DeliveryId::parse(&d.id)?;
        let expected_status = match (d.forged, d.dispatched || d.redelivery || d.reconciler_only, d.event) {
            (true, _, _) => 401,
            (false, true, _) => 202,
            _ => 200,
        };
        println!(
            "{:<40} {} {:>4} ack {:>6.1} ms  delivery {}",
            d.label,
            status,
            "",
            ack.as_secs_f64() * 1e3,
            &d.id[..8]
        );
        if status != expected_status {
            problems.push(format!("{}: answered {status}, expected {expected_status} ({answer})", d.label));
        }
        if let Some(why) = answer.get("ignored").and_then(Value::as_str) {
            println!("    ignored: {why}");
        }
        // Wait until the queue is empty and every target of this delivery is settled.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let records = store.records(&delivery).await?;
            let settled = records.iter().all(|r| r.status != DispatchStatus::Pending);
            if queue.depth(QueueSide::Source).await? == 0 && settled {
                break;
            }
            if Instant::now() > deadline {
                bail!("{}: not settled after 30 s", d.label);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let new: Vec<_> = gh.dispatches()[before..].to_vec();
        let records = store.records(&delivery).await?;
        if d.dispatched {
            let mut last = t0;
            for entry in allowlist.entries() {
                let record = records.iter().find(|r| r.target == entry.repo);
                let sent: Vec<_> =
                    new.iter().filter(|x| RepoFullName::parse(&x.repo).ok().as_ref() == Some(&entry.repo)).collect();
                let calls: Vec<u16> = gh
                    .requests()
                    .iter()
                    .filter(|r| r.at >= t0 && r.method == "POST" && r.path.ends_with("/dispatches"))
                    .filter(|r| {
                        r.repo.as_deref().and_then(|x| RepoFullName::parse(x).ok()).as_ref() == Some(&entry.repo)
                    })
                    .map(|r| r.status)
                    .collect();
                let line = match (record, sent.as_slice()) {
                    (Some(r), [one]) if r.status == DispatchStatus::Dispatched => {
                        last = last.max(one.at);
                        let trimmed = one.body["client_payload"]["payload_trimmed"] == Value::Bool(true);
                        if trimmed != r.payload_trimmed {
                            problems.push(format!("{}: {} trimmed flag differs", d.label, entry.repo));
                        }
                        format!(
                            "dispatched  (calls: {}){}",
                            calls.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
                            if trimmed { ", payload trimmed" } else { "" }
                        )
                    }
                    (Some(r), []) if r.status == DispatchStatus::Failed => {
                        format!("failed: {}", r.last_error.as_deref().unwrap_or("?"))
                    }
                    (None, []) if !installed.contains(&entry.repo) => {
                        "not installed (App not installed; nothing sent)".to_owned()
                    }
                    (rec, sent) => {
                        problems.push(format!(
                            "{}: {} record {:?} but {} dispatches sent",
                            d.label,
                            entry.repo,
                            rec.map(|r| r.status),
                            sent.len()
                        ));
                        "MISMATCH".to_owned()
                    }
                };
                println!("    {:<34} {}  {line}", entry.repo.as_str(), entry.level);
            }
            println!(
                "    all targets settled {:.1} ms after the ack\n",
                (last.saturating_duration_since(t0).saturating_sub(ack)).as_secs_f64() * 1e3
            );
        } else {
            if !new.is_empty() {
                problems.push(format!("{}: {} dispatches sent, expected none", d.label, new.len()));
            }
            if d.redelivery {
                println!("    same delivery id: {} new dispatches (targets already dispatched)", new.len());
            } else if d.reconciler_only {
                println!("    for the reconciler (labels; label {:?} asks for no check runs)", "bug");
            } else if d.forged {
                println!("    refused: {}", answer.get("error").and_then(Value::as_str).unwrap_or(""));
            }
            if d.forged && !records.is_empty() {
                problems.push("forged delivery left records".into());
            }
            println!();
        }
    }
    let downstream = Downstream { http: &http, url: format!("http://{addr}/github/callback"), issuer: &issuer };
    downstream_ci(&downstream, &tracked_delivery, &hud, jobs.as_ref(), store.as_ref(), &reconciler, &mut problems)
        .await?;
    let upstream_events = UpstreamEvents { http: &http, url: &url, secret: &secret, gh: &gh };
    check_runs_scenario(&upstream_events, &mut problems).await?;
    let _ = stop_tx.send(());
    server.await??;

    let total = gh.dispatches().len();
    println!(
        "{} dispatches sent in {:.2} s; GitHub calls: {} installation lookups, {} tokens minted, {} dispatch calls",
        total,
        started.elapsed().as_secs_f64(),
        gh.count("GET", "/repos/"),
        gh.count("POST", "/app/installations/"),
        gh.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/dispatches")).count(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    if problems.is_empty() {
        println!("check: what is printed above is what the stand-in received and the store recorded.");
        Ok(true)
    } else {
        println!("check FAILED:");
        for p in problems {
            println!("  - {p}");
        }
        Ok(false)
    }
}

/// Callbacks trust the local issuer; HUD is the local one; the sweep runs
/// every 200 ms; a dispatch with no callback after 2 s counts as "never
/// started" (1 h in production).
fn demo_callbacks(issuer: &Issuer, hud: &Hud, hud_key: &str) -> CallbackConfig {
    let mut c = CallbackConfig::default();
    c.oidc.github_actions = Some(TrustAnchor::new(issuer.url.clone()));
    c.oidc.buildkite = None;
    c.hud = Some((hud.url.clone(), hud_key.to_owned().into()));
    c.sweep_interval = Duration::from_millis(200);
    c.reconciler = ReconcilerSettings { never_started_after: Duration::from_secs(2), ..Default::default() };
    c
}

/// The downstream CI's side of the demo: where it calls back and with which tokens.
struct Downstream<'a> {
    http: &'a reqwest::Client,
    url: String,
    issuer: &'a Issuer,
}

/// Repository ids the local issuer puts in its tokens (GitHub's are immutable numbers).
fn repository_id(repo: &str) -> String {
    (repo.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) % 1_000_000_000).to_string()
}

impl Downstream<'_> {
    /// One callback as the PyTorch callback action sends it (CONTRACTS.md
    /// "Callback input"); `token`: `None` → a valid one for `repo`.
    async fn call(&self, repo: &str, token: Option<String>, body: &Value) -> anyhow::Result<(u16, Value)> {
        let token = token.unwrap_or_else(|| self.issuer.token(repo, &repository_id(repo)));
        let res = self.http.post(&self.url).bearer_auth(token).json(body).send().await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }
}

fn callback_body(delivery: &str, repo: &str, status: &str, conclusion: Option<&str>) -> Value {
    json!({
        "event_type": "pull_request", "delivery_id": delivery,
        "payload": {"action": "opened", "pull_request": {"number": 2}},
        "workflow": {"schema_version": "1", "status": status, "conclusion": conclusion, "name": "PyTorch CI",
            "url": format!("https://github.com/{repo}/actions/runs/4242"), "run_id": "4242", "run_attempt": "1",
            "job_name": "test (default, 1, 1)", "check_run_id": "4242-1", "started_at": null, "completed_at": null}
    })
}

/// Two downstream jobs report in and finish; refused callbacks change
/// nothing; HUD gets one record per state change; a silent L2 target is
/// reported never started; the trace of the delivery closes the demo.
async fn downstream_ci(
    ds: &Downstream<'_>,
    delivery: &str,
    hud: &Hud,
    jobs: &dyn JobStore,
    store: &dyn DispatchStore,
    reconciler: &Reconciler,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    const JOBS: &[&str] = &["Ascend/pytorch", "pytorch/crcr-test"];
    println!("downstream CI: jobs of {} call back for delivery {}", JOBS.join(" and "), &delivery[..8]);
    let mut expect = |what: &str, got: (u16, Value), want: u16| {
        println!(
            "    {what:<50} {}{}",
            got.0,
            got.1.get("reason").and_then(Value::as_str).map(|e| format!("  {e}")).unwrap_or_default()
        );
        if got.0 != want {
            problems.push(format!("callback {what}: answered {}, expected {want} ({})", got.0, got.1));
        }
    };
    for repo in JOBS {
        let got = ds.call(repo, None, &callback_body(delivery, repo, "in_progress", None)).await?;
        expect(&format!("{repo}: in_progress"), got, 202);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (repo, conclusion) in JOBS.iter().zip(["success", "failure"]) {
        let got = ds.call(repo, None, &callback_body(delivery, repo, "completed", Some(conclusion))).await?;
        expect(&format!("{repo}: completed ({conclusion})"), got, 202);
    }
    let l1 = "google-pytorch/torch_tpu";
    let got = ds.call(l1, None, &callback_body(delivery, l1, "in_progress", None)).await?;
    // Ignored with 200, as the Python relay answers an L1 repository (callback_handler.py).
    expect(&format!("{l1} (L1): in_progress"), got, 200);
    let repeated = callback_body(delivery, JOBS[0], "completed", Some("success"));
    expect(&format!("{}: completed again", JOBS[0]), ds.call(JOBS[0], None, &repeated).await?, 409);
    // A valid token with one character of its RS256 signature changed.
    let mut forged: Vec<char> = ds.issuer.token(JOBS[0], &repository_id(JOBS[0])).chars().collect();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == 'A' { 'B' } else { 'A' };
    let forged = Some(forged.into_iter().collect());
    expect("forged token (signature altered)", ds.call(JOBS[0], forged, &repeated).await?, 401);

    let deadline = Instant::now() + Duration::from_secs(20);
    while hud.received().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the sweep run once more: nothing further may arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = hud.received();
    println!("HUD received {} records:", received.len());
    for (_, _, body) in &received {
        let t = &body["trusted"];
        let w = &body["untrusted"]["callback_payload"]["workflow"];
        println!(
            "    {:<20} {:<3} {:<11} {:<8} queue_time {:>6} s  execution_time {:>6} s",
            t["verified_repo"].as_str().unwrap_or("?"),
            t["downstream_repo_level"].as_str().unwrap_or("?"),
            w["status"].as_str().unwrap_or("?"),
            w["conclusion"].as_str().unwrap_or("-"),
            t["ci_metrics"]["queue_time"].as_f64().map(|v| format!("{v:.3}")).unwrap_or_else(|| "null".into()),
            t["ci_metrics"]["execution_time"].as_f64().map(|v| format!("{v:.3}")).unwrap_or_else(|| "null".into()),
        );
    }
    let per_repo = |repo: &str| received.iter().filter(|(_, _, b)| b["trusted"]["verified_repo"] == repo).count();
    if received.len() != 4 || JOBS.iter().any(|r| per_repo(r) != 2) {
        problems.push(format!("HUD received {} records, expected 2 per job", received.len()));
    }
    for (_, _, b) in &received {
        let completed = b["untrusted"]["callback_payload"]["workflow"]["status"] == "completed";
        let m = &b["trusted"]["ci_metrics"];
        let ok = m["queue_time"].as_f64().is_some_and(|q| q >= 0.0)
            && if completed {
                m["execution_time"].as_f64().is_some_and(|e| e >= 0.3)
            } else {
                m["execution_time"].is_null()
            };
        if !ok {
            problems.push(format!("HUD record with wrong figures: {b}"));
        }
    }
    // HUD keeps torchci's rules: one row per job, ending in its last state.
    let rows = hud.rows();
    println!("HUD rows (torchci's handler, one per job):");
    for (key, row) in &rows {
        println!(
            "    {key:<75} {} {}",
            row.get("status").and_then(Value::as_str).unwrap_or("?"),
            row.get("conclusion").and_then(Value::as_str).unwrap_or("-")
        );
    }
    let refused = received.iter().filter(|(status, _, _)| *status != 200).count();
    if rows.len() != JOBS.len() || refused > 0 || rows.values().any(|r| r.get("status") != Some(&json!("completed"))) {
        problems.push(format!(
            "HUD rows: {} (expected {} completed), {refused} record(s) refused",
            rows.len(),
            JOBS.len()
        ));
    }

    // The other dispatched L2+ targets never called back.
    tokio::time::sleep(reconciler.settings.never_started_after).await;
    let id = DeliveryId::parse(delivery)?;
    let never: Vec<_> =
        reconciler.never_started().await?.into_iter().filter(|n| n.delivery_id == id).map(|n| n.target).collect();
    println!(
        "never started (dispatched, no callback after {} s): {}",
        reconciler.settings.never_started_after.as_secs(),
        never.iter().map(RepoFullName::as_str).collect::<Vec<_>>().join(", ")
    );
    let expected: Vec<RepoFullName> = store
        .records(&id)
        .await?
        .into_iter()
        .filter(|r| r.status == DispatchStatus::Dispatched && r.meta.level >= crcr_core::domain::Level::L2)
        .map(|r| r.target)
        .filter(|t| !JOBS.iter().any(|j| RepoFullName::parse(j).ok().as_ref() == Some(t)))
        .collect();
    if never != expected || never.is_empty() {
        problems.push(format!("never started: {never:?}, expected {expected:?}"));
    }
    println!("\n$ crcr trace {delivery}");
    print!("{}", crcr_oncall::trace::trace(&id, store, jobs).await?.render());
    println!();
    Ok(())
}

/// Where the demo posts upstream webhooks (signed like GitHub).
struct UpstreamEvents<'a> {
    http: &'a reqwest::Client,
    url: &'a str,
    secret: &'a WebhookSecret,
    gh: &'a StandIn,
}

impl UpstreamEvents<'_> {
    async fn post(&self, event: &str, body: &Value) -> anyhow::Result<u16> {
        let body = serde_json::to_vec(body)?;
        let res = self
            .http
            .post(self.url)
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
            .header("x-hub-signature-256", self.secret.sign(&body))
            .body(body)
            .send()
            .await?;
        Ok(res.status().as_u16())
    }

    async fn wait(&self, what: &str, mut done: impl FnMut(&StandIn) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self.gh) {
            if Instant::now() > deadline {
                bail!("{what}: not seen on the GitHub stand-in after 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// The L3 repository `pytorch/crcr-test` (device `crcr-test`) finished its
/// job without the label on the PR, so no check run; `ciflow/crcr/crcr-test`
/// is added afterwards and the check run appears with the job's
/// conclusion; "Re-run" on it re-runs the downstream run's failed jobs.
async fn check_runs_scenario(ev: &UpstreamEvents<'_>, problems: &mut Vec<String>) -> anyhow::Result<()> {
    const L3: &str = "pytorch/crcr-test";
    println!("upstream check runs: {L3} (L3, device crcr-test) finished without its label on the PR");
    let before = ev.gh.check_runs(UPSTREAM).len();
    if before != 0 {
        problems.push(format!("{before} check runs before the label, expected none (L3 without its label)"));
    }
    let mut labeled: Value = serde_json::from_str(fixture("pull_request.labeled"))?;
    labeled["label"]["name"] = json!("ciflow/crcr/crcr-test");
    let status = ev.post("pull_request", &labeled).await?;
    println!("    pull_request.labeled ciflow/crcr/crcr-test          {status}");
    ev.wait("the backfilled check run", |gh| gh.check_runs(UPSTREAM).len() == 1).await?;
    let run = ev.gh.check_runs(UPSTREAM).remove(0);
    println!(
        "    check run on {UPSTREAM}@{}: {:?} {} {} (external_id {})",
        &run.head_sha[..8],
        run.name,
        run.status,
        run.conclusion.as_deref().unwrap_or("-"),
        run.external_id.as_deref().unwrap_or("-")
    );
    if (run.status.as_str(), run.conclusion.as_deref()) != ("completed", Some("failure")) {
        problems
            .push(format!("backfilled check run is {} {:?}, expected completed failure", run.status, run.conclusion));
    }
    // "Re-run" on the PR page: GitHub sends check_run.rerequested (its
    // `pull_requests` is empty, as for a fork PR: found by head SHA).
    ev.gh.add_workflow_run(L3, 4242, "completed", Some("failure"));
    let mut rerequested: Value = serde_json::from_str(fixture("check_run.rerequested"))?;
    rerequested["repository"]["full_name"] = json!(UPSTREAM);
    rerequested["check_run"]["id"] = json!(run.id);
    rerequested["check_run"]["name"] = json!(run.name);
    rerequested["check_run"]["external_id"] = json!(run.external_id);
    rerequested["check_run"]["head_sha"] = json!(run.head_sha);
    let status = ev.post("check_run", &rerequested).await?;
    println!("    check_run.rerequested                               {status}");
    ev.wait("the re-run request", |gh| !gh.run_requests(L3).is_empty()).await?;
    for r in ev.gh.run_requests(L3) {
        println!("    GitHub received: POST /repos/{L3}/actions/runs/{}/{} -> {}", r.run_id, r.kind, r.status);
    }
    let asked: Vec<(String, u64, u16)> =
        ev.gh.run_requests(L3).into_iter().map(|r| (r.kind, r.run_id, r.status)).collect();
    if asked != vec![("rerun-failed-jobs".to_owned(), 4242, 201)] {
        problems.push(format!("re-run requests {asked:?}, expected rerun-failed-jobs of run 4242 once"));
    }
    println!();
    Ok(())
}
