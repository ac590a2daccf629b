//! PyTorch at its peak against GitHub's secondary limits (issue 15): a
//! ghstack push of `--prs` pull requests at once, then a steady stream of
//! `synchronize`s, to `--targets` downstream repositories (each in its own
//! organization, so its own installation), `--l4` of them level 4 with
//! `--jobs` jobs per dispatch calling back `in_progress` then `completed`.
//! The GitHub stand-in enforces GitHub's secondary limits (concurrency,
//! points per endpoint, 80 content-generating requests a minute and 500 an
//! hour per identity) and its primary limit (5,000 requests an hour per
//! identity) on a time scale: `--minute-ms` is GitHub's minute (60000:
//! real time). The relay paces dispatches and check runs on the same scale.
//!
//! Prints: webhooks, dispatches, callbacks, check runs created and updated,
//! HUD records, the stand-in's secondary- and primary-limit refusals (the
//! goal: 0), the most requests one identity made (against its 5,000 an
//! hour), and
//! the time from the first webhook until every dispatch was delivered and
//! every check run and HUD record was sent (drain), in scaled minutes too.
//!
//! `bench/pytorch-peak --seconds 10 --sync-per-s 0.2 --minute-ms 6000`
//! (GitHub's limits at a tenth of the time). It exits non-zero when
//! anything was refused or did not drain within `--timeout-s`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use crcr_core::allowlist::AllowlistSource;
use crcr_core::config::{CallbackConfig, EmbeddedConfig, RelayConfig};
use crcr_core::domain::RepoFullName;
use crcr_core::signature::WebhookSecret;
use crcr_standin::hud::Hud;
use crcr_standin::issuer::Issuer;
use crcr_standin::{SecondaryLimits, StandIn, StandInOptions};
use serde_json::{json, Value};

const UPSTREAM: &str = "Codertocat/Hello-World";

struct Args {
    prs: usize,
    targets: usize,
    l4: usize,
    jobs: usize,
    sync_per_s: f64,
    seconds: u64,
    minute_ms: u64,
    latency_ms: u64,
    timeout_s: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        prs: 30,
        targets: 10,
        l4: 3,
        jobs: 5,
        sync_per_s: 0.5,
        seconds: 30,
        minute_ms: 6000,
        latency_ms: 50,
        timeout_s: 900,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let n = || value.parse::<u64>().with_context(|| format!("{flag} {value:?}"));
        match flag.as_str() {
            "--prs" => a.prs = n()? as usize,
            "--targets" => a.targets = n()? as usize,
            "--l4" => a.l4 = n()? as usize,
            "--jobs" => a.jobs = n()? as usize,
            "--sync-per-s" => a.sync_per_s = value.parse().with_context(|| format!("{flag} {value:?}"))?,
            "--seconds" => a.seconds = n()?,
            "--minute-ms" => a.minute_ms = n()?.max(100),
            "--latency-ms" => a.latency_ms = n()?,
            "--timeout-s" => a.timeout_s = n()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if a.l4 > a.targets {
        bail!("--l4 {} is more than --targets {}", a.l4, a.targets);
    }
    Ok(a)
}

fn fixture(name: &str) -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/webhooks").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("webhook fixture")).expect("fixture is JSON")
}

/// A pull request event from fixture `name` for PR `number` at head `sha`.
fn pr_event(name: &str, number: u64, sha: &str) -> Vec<u8> {
    let mut v = fixture(name);
    v["number"] = json!(number);
    v["pull_request"]["number"] = json!(number);
    v["pull_request"]["head"]["sha"] = json!(sha);
    v["repository"]["full_name"] = json!(UPSTREAM);
    serde_json::to_vec(&v).expect("serializes")
}

fn sha(n: u64) -> String {
    format!("{n:040x}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    let minute = Duration::from_millis(a.minute_ms);
    // GitHub's 2 s of slack, scaled.
    let slack = Duration::from_millis((a.minute_ms / 30).max(20));
    let gh =
        StandIn::start(StandInOptions { latency: Duration::from_millis(a.latency_ms), ..Default::default() }).await?;
    gh.install(UPSTREAM);
    let targets: Vec<String> = (0..a.targets).map(|i| format!("vendor{i}/pytorch-ci")).collect();
    for t in &targets {
        gh.install(t);
    }
    gh.enforce_secondary_limits(Some(SecondaryLimits::scaled(minute)));
    // GitHub's hour, scaled (whole seconds: the reset is in epoch seconds).
    gh.enforce_primary_limit(true, minute * 60);
    let (issuer, hud) = (Issuer::start().await, Hud::start().await);

    let dir = std::env::temp_dir().join(format!("crcr-peak-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let (l4, l1) = targets.split_at(a.l4);
    std::fs::write(dir.join("allowlist.yml"), format!("L1: [{}]\nL4: [{}]\n", l1.join(", "), l4.join(", ")))?;
    let mut callbacks = CallbackConfig::default();
    callbacks.oidc.github_actions = Some(crcr_core::oidc::TrustAnchor::new(issuer.url.clone()));
    callbacks.oidc.buildkite = None;
    callbacks.hud = Some((hud.url.clone(), "hud-bot-key".to_owned().into()));
    callbacks.sweep_interval = Duration::from_millis(200);
    callbacks.rate_per_min = 100_000;
    callbacks.reconciler.check_run_pace = crcr_core::checks::CheckRunPace { minute, slack, ..Default::default() };
    let secret = WebhookSecret::new("peak");
    let cfg = RelayConfig {
        upstream: RepoFullName::parse(UPSTREAM)?,
        webhook_secret: secret.clone(),
        github: crcr_core::config::GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url()),
        allowlist: AllowlistSource::File(dir.join("allowlist.yml")),
        allowlist_ttl: Duration::from_secs(300),
        max_body_bytes: 25 * 1024 * 1024,
        dispatcher: crcr_core::dispatch::DispatcherSettings {
            pace: Some(crcr_core::budget::DispatchPace { minute, slack, ..Default::default() }),
            ..Default::default()
        },
        callbacks,
    };
    let emb = EmbeddedConfig {
        listen: "127.0.0.1:0".parse()?,
        database: dir.join("crcr.sqlite"),
        workers: 32,
        visibility_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(5),
        server: Default::default(),
    };
    let relay = crcr_embedded::EmbeddedRelay::build(&cfg, &emb)?;
    let db = crcr_embedded::sqlite::Db::open(&emb.database)?;
    let listener = tokio::net::TcpListener::bind(emb.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(relay.run(listener, async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();

    let post = |event: &'static str, body: Vec<u8>| {
        let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
        async move {
            let res = http
                .post(format!("{url}/github/webhook"))
                .header("content-type", "application/json")
                .header("X-GitHub-Event", event)
                .header("X-GitHub-Delivery", uuid::Uuid::new_v4().to_string())
                .header("X-Hub-Signature-256", secret.sign(&body))
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(res.status() == 202, "ingest answered {}", res.status());
            anyhow::Ok(())
        }
    };

    // Downstream CI: every dispatch to an L4 target runs `jobs` jobs that
    // call back in_progress, then completed.
    let l4_set: HashSet<String> = l4.iter().map(|t| t.to_ascii_lowercase()).collect();
    let callbacks_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let downstream = {
        let (gh, http, url, callbacks_sent) = (gh.clone(), http.clone(), url.clone(), callbacks_sent.clone());
        let jobs = a.jobs;
        tokio::spawn(async move {
            let mut seen = 0usize;
            let mut run_id = 1000u64;
            loop {
                let all = gh.dispatches();
                for d in all.iter().skip(seen) {
                    let repo = d.repo.to_ascii_lowercase();
                    if !l4_set.contains(&repo) {
                        continue;
                    }
                    run_id += 1;
                    let delivery = d.body["client_payload"]["delivery_id"].as_str().unwrap_or_default().to_owned();
                    let number = d.body["client_payload"]["payload"]["number"].clone();
                    // vendor<i>/...: repository id 7000 + i, the same for every token.
                    let index: String = repo.chars().skip(6).take_while(char::is_ascii_digit).collect();
                    let repo_id = format!("70{index:0>2}");
                    for (status, conclusion) in [("in_progress", None), ("completed", Some("success"))] {
                        for job in 0..jobs {
                            // A token per call, as the downstream action mints one per request.
                            let token = issuer.token(&repo, &repo_id);
                            let body = json!({
                                "event_type": "pull_request", "delivery_id": delivery, "payload": {"number": number},
                                "workflow": {"schema_version": "1", "status": status, "conclusion": conclusion,
                                    "name": "CI", "url": format!("https://github.com/{repo}/actions/runs/{run_id}"),
                                    "run_id": run_id.to_string(), "run_attempt": "1", "job_name": format!("job{job}"),
                                    "check_run_id": "9", "started_at": null, "completed_at": null}
                            });
                            let res = http
                                .post(format!("{url}/github/callback"))
                                .header("authorization", format!("Bearer {token}"))
                                .header("content-type", "application/json")
                                .body(body.to_string())
                                .send()
                                .await;
                            match res {
                                Ok(r) if r.status() == 202 => {
                                    callbacks_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                                Ok(r) => eprintln!(
                                    "callback answered {}: {}",
                                    r.status(),
                                    r.text().await.unwrap_or_default()
                                ),
                                Err(e) => eprintln!("callback failed: {e}"),
                            }
                        }
                    }
                }
                seen = all.len();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The burst, then the stream.
    let started = Instant::now();
    let mut webhooks = 0u64;
    let mut heads = 0u64;
    for pr in 0..a.prs as u64 {
        heads += 1;
        post("pull_request", pr_event("pull_request.opened", 1000 + pr, &sha(heads))).await?;
        webhooks += 1;
    }
    let stream_every = Duration::from_secs_f64(1.0 / a.sync_per_s.max(0.001));
    let stream_end = Instant::now() + Duration::from_secs(a.seconds);
    let mut pr = 0u64;
    while Instant::now() < stream_end {
        tokio::time::sleep(stream_every).await;
        heads += 1;
        post("pull_request", pr_event("pull_request.synchronize", 1000 + pr % a.prs as u64, &sha(heads))).await?;
        webhooks += 1;
        pr += 1;
    }

    // Drained: every dispatch delivered, no check run or HUD record pending.
    let want_dispatches = webhooks as usize * a.targets;
    let deadline = started + Duration::from_secs(a.timeout_s);
    let jobs = crcr_embedded::sqlite::SqliteJobStore::new(db);
    use crcr_core::lifecycle::{CheckRunOutbox, HudOutbox};
    let drained = loop {
        let dispatched = gh.dispatches().len();
        let checks_pending = jobs.pending_check_runs(1).await?.len();
        let hud_pending = jobs.outbox_backlog().await?.pending;
        if dispatched >= want_dispatches
            && checks_pending == 0
            && hud_pending == 0
            && started.elapsed() > Duration::from_secs(a.seconds)
        {
            // The last callbacks may still be on their way: settle once more.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if jobs.pending_check_runs(1).await?.is_empty() {
                break Some(started.elapsed());
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    downstream.abort();
    let _ = stop_tx.send(());
    let _ = served.await;
    let _ = std::fs::remove_dir_all(&dir);

    let runs = gh.check_runs(UPSTREAM);
    let refusals = gh.secondary_refusals();
    let primary = gh.primary_refusals();
    let mut by_identity = std::collections::HashMap::<Option<u64>, u64>::new();
    for r in gh.requests() {
        *by_identity.entry(r.installation_id).or_default() += 1;
    }
    let busiest = by_identity.values().max().copied().unwrap_or(0);
    let refused: u64 = refusals.values().sum::<u64>() + primary.values().sum::<u64>();
    println!("pytorch-peak: GitHub minute = {} ms, {} targets ({} L4 x {} jobs), {} PRs at once + {} synchronize/s for {} s, GitHub latency {} ms",
        a.minute_ms, a.targets, a.l4, a.jobs, a.prs, a.sync_per_s, a.seconds, a.latency_ms);
    println!("| webhooks | dispatches | callbacks (202) | check runs created / updates | HUD records | secondary refusals | primary refusals | most requests by one identity | drain s (GitHub minutes) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let drain = drained.map_or("not drained".to_owned(), |d| {
        format!("{:.1} ({:.2})", d.as_secs_f64(), d.as_secs_f64() * 1000.0 / a.minute_ms as f64)
    });
    println!(
        "| {webhooks} | {} / {want_dispatches} | {} | {} / {} | {} | {} {refusals:?} | {} {primary:?} | {busiest} | {drain} |",
        gh.dispatches().len(),
        callbacks_sent.load(std::sync::atomic::Ordering::Relaxed),
        runs.len(),
        runs.iter().map(|r| r.updates as u64).sum::<u64>(),
        hud.received().len(),
        refusals.values().sum::<u64>(),
        primary.values().sum::<u64>(),
    );
    if refused > 0 {
        // Which requests GitHub refused, by method and path shape.
        let mut by_endpoint: std::collections::BTreeMap<String, u64> = Default::default();
        for r in gh.requests().iter().filter(|r| r.status == 403 || r.status == 429) {
            let shape: String = r
                .path
                .split('/')
                .map(|p| if p.chars().all(|c| c.is_ascii_hexdigit()) && !p.is_empty() { ":id" } else { p })
                .collect::<Vec<_>>()
                .join("/");
            *by_endpoint.entry(format!("{} {shape}", r.method)).or_default() += 1;
        }
        println!("refused: {by_endpoint:?}");
    }
    if refused > 0 || drained.is_none() {
        std::process::exit(1);
    }
    Ok(())
}
