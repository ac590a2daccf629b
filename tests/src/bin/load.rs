//! Load script for `crcr serve` (the release binary, as a child process)
//! against the GitHub stand-in in this process. Sends signed
//! `pull_request.synchronize` deliveries at a fixed rate (open loop), then
//! reports ingest ack latency percentiles, lost / duplicated dispatches,
//! GitHub calls per target per delivery, fan-out completion after the ack,
//! and the relay's peak RSS (VmHWM).
//!
//! ```text
//! cargo build --release -p crcr -p crcr-tests
//! target/release/load --rate 200 --seconds 30 --targets 1
//! target/release/load --rate 5 --seconds 20 --targets 50 --latency-ms 50
//! ```

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crcr_core::signature::WebhookSecret;
use crcr_standin::{StandIn, StandInOptions};

struct Args {
    rate: u64,
    seconds: u64,
    targets: usize,
    latency_ms: u64,
    crcr: String,
}

fn args() -> Args {
    let mut a = Args { rate: 200, seconds: 30, targets: 1, latency_ms: 0, crcr: "target/release/crcr".into() };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds N"),
            "--targets" => a.targets = v.parse().expect("--targets N"),
            "--latency-ms" => a.latency_ms = v.parse().expect("--latency-ms N"),
            "--crcr" => a.crcr = v,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn peak_rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let gh =
        StandIn::start(StandInOptions { latency: Duration::from_millis(a.latency_ms), ..Default::default() }).await?;
    gh.set_rate_limit(100_000_000);
    let dir = std::env::temp_dir().join(format!("crcr-load-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let repos: Vec<String> = (0..a.targets).map(|i| format!("vendor{i}/backend")).collect();
    for r in &repos {
        gh.install(r);
    }
    let allowlist = format!("L1:\n{}", repos.iter().map(|r| format!("  - {r}\n")).collect::<String>());
    std::fs::write(dir.join("allowlist.yml"), allowlist)?;
    std::fs::write(dir.join("app.pem"), gh.private_key_pem())?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let secret = uuid::Uuid::new_v4().to_string();
    let mut child = Command::new(&a.crcr)
        .arg("serve")
        .env("CRCR_LISTEN", format!("127.0.0.1:{port}"))
        .env("CRCR_DATABASE", dir.join("crcr.sqlite"))
        .env("CRCR_UPSTREAM_REPO", "Codertocat/Hello-World")
        .env("CRCR_WEBHOOK_SECRET", &secret)
        .env("CRCR_GITHUB_APP_ID", gh.app_id().to_string())
        .env("CRCR_GITHUB_APP_PRIVATE_KEY_FILE", dir.join("app.pem"))
        .env("CRCR_GITHUB_API_URL", gh.base_url())
        .env("CRCR_ALLOWLIST_FILE", dir.join("allowlist.yml"))
        .env("CRCR_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {} (build it: cargo build --release -p crcr): {e}", a.crcr))?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let ready = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(10), "crcr serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = bytes::Bytes::from(std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/webhooks/pull_request.synchronize.json"
    ))?);
    let signer = WebhookSecret::new(secret);
    let signature = signer.sign(&body);

    // Warm-up delivery: installation lookups and token minting happen here.
    let warm = uuid::Uuid::new_v4().to_string();
    let res = http
        .post(format!("{base}/github/webhook"))
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", &warm)
        .header("x-hub-signature-256", &signature)
        .body(body.clone())
        .send()
        .await?;
    anyhow::ensure!(res.status() == 202, "warm-up answered {}", res.status());
    while gh.dispatches().len() < a.targets {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls_before = gh.requests().len();
    let dispatches_before = gh.dispatches().len();

    let total = a.rate * a.seconds;
    // (delivery id, when sent, latency in s, status)
    type Acks = Arc<Mutex<Vec<(String, Instant, f64, u16)>>>;
    let acks: Acks = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / a.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut peak = 0;
    for i in 0..total {
        tick.tick().await;
        let (http, url, body, signature, acks) =
            (http.clone(), format!("{base}/github/webhook"), body.clone(), signature.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let id = uuid::Uuid::new_v4().to_string();
            let t0 = Instant::now();
            let status = match http
                .post(url)
                .header("x-github-event", "pull_request")
                .header("x-github-delivery", &id)
                .header("x-hub-signature-256", signature)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            acks.lock().unwrap().push((id, Instant::now(), ms, status));
        }));
        if i % 50 == 0 {
            peak = peak.max(peak_rss_kib(&child));
        }
    }
    for t in tasks {
        t.await?;
    }
    let sent_for = started.elapsed();
    let expected = total as usize * a.targets;
    let wait = Instant::now();
    while gh.dispatches().len() - dispatches_before < expected && wait.elapsed() < Duration::from_secs(120) {
        peak = peak.max(peak_rss_kib(&child));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_for = started.elapsed();
    peak = peak.max(peak_rss_kib(&child));

    let acks = acks.lock().unwrap().clone();
    let accepted = acks.iter().filter(|a| a.3 == 202).count();
    let mut lat: Vec<f64> = acks.iter().map(|a| a.2).collect();
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let dispatches = gh.dispatches()[dispatches_before..].to_vec();
    let mut per: HashMap<(String, String), usize> = HashMap::new();
    let mut last: HashMap<String, Instant> = HashMap::new();
    for d in &dispatches {
        let id = d.body["client_payload"]["delivery_id"].as_str().unwrap_or_default().to_owned();
        *per.entry((id.clone(), d.repo.clone())).or_default() += 1;
        let e = last.entry(id).or_insert(d.at);
        *e = (*e).max(d.at);
    }
    let duplicates = per.values().filter(|n| **n > 1).count();
    let complete = acks
        .iter()
        .filter(|a| a.3 == 202)
        .filter(|(id, ..)| repos.iter().all(|r| per.contains_key(&(id.clone(), r.clone()))))
        .count();
    let mut fanout: Vec<f64> = acks
        .iter()
        .filter_map(|(id, acked, ..)| last.get(id).map(|t| t.saturating_duration_since(*acked).as_secs_f64() * 1e3))
        .collect();
    fanout.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let calls = gh.requests().len() - calls_before;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "load: {} deliveries at {}/s for {} s, {} target(s), GitHub latency {} ms",
        total, a.rate, a.seconds, a.targets, a.latency_ms
    );
    println!(
        "  sent in {:.1} s (achieved {:.0}/s); all dispatched after {:.1} s",
        sent_for.as_secs_f64(),
        total as f64 / sent_for.as_secs_f64(),
        drained_for.as_secs_f64()
    );
    println!(
        "  ingest ack ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    println!("  accepted (202): {accepted}/{total}; fully dispatched: {complete}/{total}; lost: {}; duplicate dispatches: {duplicates}", accepted - complete);
    println!(
        "  GitHub calls per target per delivery (after warm-up): {:.3}",
        calls as f64 / (total as f64 * a.targets as f64)
    );
    println!(
        "  fan-out complete after ack, ms: p50 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&fanout, 0.5),
        percentile(&fanout, 0.99),
        percentile(&fanout, 1.0)
    );
    println!("  crcr serve peak RSS (VmHWM): {:.1} MiB", peak as f64 / 1024.0);
    anyhow::ensure!(accepted == complete && duplicates == 0, "lost or duplicated dispatches");
    Ok(())
}
