//! Sustained-load benchmark of the embedded default (issue 14): for each
//! rate, a fresh `crcr serve` (the release binary, a child process) on a
//! fresh database, the GitHub stand-in (in this process) answering after a
//! fixed latency, and an open-loop generator sending signed
//! `pull_request.synchronize` deliveries (the real 24.7 KB fixture) at that
//! rate whatever the relay answers. Per rate it prints:
//!
//! - the 202's p50/p99 (ms, from sending the request to its answer; the
//!   generator runs on a thread and runtime of its own, so an answer that
//!   has arrived is read at once, not after the stand-in's work);
//! - dispatch lag p50/p99/max (ms, from sending a webhook to each of its
//!   dispatches reaching GitHub, before GitHub's latency);
//! - drain time (s, from the last webhook sent to the last dispatch);
//! - relay CPU per webhook (ms, user + system of the `crcr serve` process),
//!   and this process's (the stand-in's and the generator's: what else
//!   competes for the machine);
//! - peak RSS (MiB, the process's VmHWM) and peak WAL (MiB, the
//!   `-wal` file's size sampled every 20 ms);
//! - lost and duplicated dispatches;
//! - GitHub requests and new TCP connections per webhook (connections the
//!   stand-in had not seen during the warm-up delivery);
//! - under the row, the share of the relay's 202s it answered within 5 ms
//!   and 10 ms by its own clock (its `IngestLatency` histogram, read off
//!   `GET /metrics` before and after sending).
//!
//! ```text
//! bench/relay-load --rates 100,200,500 --seconds 60 --targets 10 --latency-ms 50
//! ```
//!
//! (`bench/relay-load` builds `crcr` and this binary in release mode, then
//! runs it with the arguments given.) The relay, the stand-in and the
//! generator share the machine, as they would on a developer's laptop; the
//! relay reads its other settings from the environment (`CRCR_WORKERS`, ...),
//! except `CRCR_DISPATCH_PACE`, `off` unless set, and
//! `CRCR_GITHUB_MAX_IN_FLIGHT`, unless set twice what the rate keeps in
//! flight on average (rate × targets × latency; at least GitHub's 100):
//! this measures the relay, and the stand-in enforces no GitHub limit here;
//! and `CRCR_GITHUB_H2C`, `true` unless set: the relay speaks HTTP/2 to the
//! stand-in (plain http, so by prior knowledge), as it does to api.github.com
//! (negotiated by ALPN), a connection per 100 requests in flight. The
//! relay's memory grows with the requests in flight (each holds its
//! dispatch's state and, over HTTP/1.1, a connection of its own, some 33 KB):
//! sized so, as an operator would size it for the load, not left at 4096
//! (over HTTP/1.1 the pool then kept about 600 connections at 500/s, some 20 MB).
//! It exits non-zero when a rate lost or duplicated a dispatch.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crcr_core::signature::WebhookSecret;
use crcr_standin::{StandIn, StandInOptions};

struct Args {
    rates: Vec<u64>,
    seconds: u64,
    targets: usize,
    latency_ms: u64,
    /// How long to wait for the backlog after the last webhook, at most (s).
    drain_timeout_s: u64,
    crcr: PathBuf,
}

const USAGE: &str = "relay-load [--rates 100,200,500] [--seconds 60] [--targets 10] [--latency-ms 50] \
                     [--drain-timeout-s 300] [--crcr target/release/crcr]";

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        rates: vec![100, 200, 500],
        seconds: 60,
        targets: 10,
        latency_ms: 50,
        drain_timeout_s: 300,
        crcr: "target/release/crcr".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: {USAGE}");
        std::process::exit(0);
    }
    for pair in argv.chunks(2) {
        let (flag, v) = (pair[0].as_str(), pair.get(1).map(String::as_str).unwrap_or_default());
        let number = |what: &str| v.parse::<u64>().map_err(|_| anyhow::anyhow!("{what} wants a number, got {v:?}"));
        match flag {
            "--rates" => {
                a.rates = v
                    .split(',')
                    .map(|r| r.trim().parse::<u64>().ok().filter(|r| *r > 0))
                    .collect::<Option<_>>()
                    .ok_or_else(|| {
                    anyhow::anyhow!("--rates wants positive numbers separated by commas, got {v:?}")
                })?
            }
            "--seconds" => a.seconds = number("--seconds")?,
            "--targets" => a.targets = number("--targets")? as usize,
            "--latency-ms" => a.latency_ms = number("--latency-ms")?,
            "--drain-timeout-s" => a.drain_timeout_s = number("--drain-timeout-s")?,
            "--crcr" => a.crcr = v.into(),
            _ => anyhow::bail!("unknown argument {flag:?}; usage: {USAGE}"),
        }
    }
    anyhow::ensure!(a.seconds > 0 && a.targets > 0, "--seconds and --targets must be at least 1; usage: {USAGE}");
    Ok(a)
}

/// The relay's `CRCR_GITHUB_H2C`: this process's, else `true` (HTTP/2).
fn github_h2c() -> String {
    std::env::var("CRCR_GITHUB_H2C").unwrap_or_else(|_| "true".into())
}

/// `CRCR_GITHUB_MAX_IN_FLIGHT` for `rate` webhooks/s of `targets`
/// dispatches each, GitHub answering in `latency_ms`: twice the requests
/// in flight on average, and at least GitHub's 100.
fn max_in_flight(rate: u64, targets: usize, latency_ms: u64) -> u64 {
    (2 * rate * targets as u64 * latency_ms / 1000).max(100)
}

/// Figures of one rate.
#[derive(Debug, Default)]
struct Report {
    rate: u64,
    sent: usize,
    accepted: usize,
    send_s: f64,
    ack_ms: [f64; 3],
    lag_ms: [f64; 3],
    drain_s: f64,
    cpu_ms_per_webhook: f64,
    /// CPU of this process (the stand-in and the generator) per webhook, ms.
    harness_cpu_ms_per_webhook: f64,
    peak_rss_mib: f64,
    peak_wal_mib: f64,
    lost: usize,
    duplicated: usize,
    requests_per_webhook: f64,
    new_connections_per_webhook: f64,
    /// Of the deliveries the relay enqueued while sending, the share it
    /// answered within 5 ms and within 10 ms by its own clock
    /// ([`IngestLatency`]).
    relay_ingest_within: [f64; 2],
}

/// The relay's `IngestLatency` histogram of enqueued deliveries, from its
/// `GET /metrics` (Prometheus text: cumulative `_bucket` counts per upper
/// bound `le`, in seconds): its own time from the ingest handler having a
/// request, body read, to its answer; not the network, the generator, nor
/// the relay's wait to read the request.
struct IngestLatency(Vec<(f64, u64)>);

impl IngestLatency {
    /// The counts observed after `before` was read.
    fn since(&self, before: &IngestLatency) -> IngestLatency {
        IngestLatency(self.0.iter().map(|&(le, n)| (le, n.saturating_sub(before.count_within(le)))).collect())
    }
    fn count_within(&self, seconds: f64) -> u64 {
        self.0.iter().find(|(le, _)| *le == seconds).map_or(0, |(_, n)| *n)
    }
    /// The share (0..=1) answered within `seconds`, a bucket bound; NaN
    /// when none was observed.
    fn share_within(&self, seconds: f64) -> f64 {
        self.count_within(seconds) as f64 / self.count_within(f64::INFINITY) as f64
    }
}

async fn ingest_latency(http: &reqwest::Client, base: &str) -> anyhow::Result<IngestLatency> {
    let text = http.get(format!("{base}/metrics")).send().await?.error_for_status()?.text().await?;
    Ok(parse_ingest_latency(&text))
}

fn parse_ingest_latency(text: &str) -> IngestLatency {
    IngestLatency(
        text.lines()
            .filter_map(|line| {
                let labels = line.strip_prefix("IngestLatency_bucket{")?;
                if !labels.contains(r#"outcome="enqueued""#) {
                    return None;
                }
                let le = labels.split(r#"le=""#).nth(1)?.split('"').next()?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, line.rsplit(' ').next()?.parse().ok()?))
            })
            .collect(),
    )
}

fn percentiles(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    [at(0.5), at(0.99), at(1.0)]
}

/// `VmHWM` (peak resident set) of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of `pid` so far, in ms (`/proc/<pid>/stat` fields
/// 14 and 15, in clock ticks of 10 ms: `getconf CLK_TCK` is 100 on Linux).
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; fields after it follow ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // After ')': field 3 is index 0, so utime (14) is 11 and stime (15) is 12.
    (tick(11) + tick(12)) * 10
}

/// The fixture's head commit (`pull_request.head.sha` and `after`).
const FIXTURE_HEAD_SHA: &[u8] = b"ec26c3e57ca3a959ca5aad62de7213c562f8c821";

/// `body` with every occurrence of the fixture's head SHA replaced by one
/// made of `delivery_id`'s hex digits (a UUID has 32; padded to 40).
fn with_head_sha(body: &[u8], delivery_id: &str) -> Vec<u8> {
    let hex: Vec<u8> =
        delivery_id.bytes().filter(u8::is_ascii_hexdigit).chain(std::iter::repeat(b'0')).take(40).collect();
    let mut out = body.to_vec();
    for at in memchr::memmem::find_iter(body, FIXTURE_HEAD_SHA) {
        out[at..at + FIXTURE_HEAD_SHA.len()].copy_from_slice(&hex);
    }
    out
}

/// The delivery id of a dispatch body, found by its text: the relay writes
/// `{"event_type":E,"client_payload":{"delivery_id":"…",…` (the
/// `client_payload` module), so the first `"delivery_id":"` is it. Reading
/// the 24 KB body as JSON cost the harness a tenth of its CPU, taken from
/// the relay it measures. `""` (counted lost) if it is not there.
fn sent_delivery_id(body: &[u8]) -> String {
    const FIELD: &[u8] = br#""delivery_id":""#;
    memchr::memmem::find(body, FIELD)
        .map(|at| &body[at + FIELD.len()..])
        .and_then(|rest| Some(&rest[..memchr::memchr(b'"', rest)?]))
        .map_or_else(String::new, |id| String::from_utf8_lossy(id).into_owned())
}

/// Kills the relay when dropped, so an error on the way does not leave it running.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the stand-in saw, read off it in slices while the load runs.
#[derive(Default)]
struct Seen {
    /// (delivery id, repository) → arrival times of its dispatches.
    dispatches: HashMap<(String, String), Vec<Instant>>,
    dispatch_count: usize,
    requests: usize,
    ports: HashSet<u16>,
    new_ports: usize,
}

impl Seen {
    fn take(&mut self, gh: &StandIn) {
        let (requests, dispatches) = gh.take_records();
        self.requests += requests.len();
        for r in requests {
            if self.ports.insert(r.peer_port) {
                self.new_ports += 1;
            }
        }
        for d in dispatches {
            let id = sent_delivery_id(d.body.raw());
            self.dispatches.entry((id, d.repo)).or_default().push(d.arrived);
            self.dispatch_count += 1;
        }
    }
}

/// Per delivery id: when sent, the 202's latency (ms) and the status (0: no answer).
type Acks = Arc<Mutex<HashMap<String, (Instant, f64, u16)>>>;

/// A signed `pull_request.synchronize` delivery to the relay.
struct Webhook {
    http: reqwest::Client,
    url: String,
    signer: WebhookSecret,
    body: bytes::Bytes,
}

impl Webhook {
    /// Posts delivery `id`: a push of a new head commit, as real
    /// `synchronize` events are (the fixture's head SHA replaced by one of
    /// its own, signed anew).
    fn post(&self, id: String) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
        let body = with_head_sha(&self.body, &id);
        self.http
            .post(&self.url)
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", id)
            .header("x-github-hook-id", "1")
            .header("x-hub-signature-256", self.signer.sign(&body))
            .header("content-type", "application/json")
            .body(body)
            .send()
    }
}

/// Sends `total` deliveries at `rate`/s, open loop (each at its tick,
/// whatever the relay answers), recording each answer in `acks`; returns
/// the seconds sending took.
async fn send_open_loop(webhook: Webhook, rate: u64, total: usize, acks: Acks) -> f64 {
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for _ in 0..total {
        tick.tick().await;
        let id = uuid::Uuid::new_v4().to_string();
        let (request, acks) = (webhook.post(id.clone()), acks.clone());
        in_flight.spawn(async move {
            let t0 = Instant::now();
            let status = request.await.map_or(0, |r| r.status().as_u16());
            acks.lock().unwrap().insert(id, (t0, t0.elapsed().as_secs_f64() * 1e3, status));
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
    started.elapsed().as_secs_f64()
}

async fn run_rate(a: &Args, rate: u64, body: &bytes::Bytes) -> anyhow::Result<Report> {
    let gh =
        StandIn::start(StandInOptions { latency: Duration::from_millis(a.latency_ms), ..Default::default() }).await?;
    gh.set_rate_limit(u64::MAX / 2);
    let dir = std::env::temp_dir().join(format!("crcr-relay-load-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let result = run_rate_in(a, rate, body, &gh, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    gh.shutdown().await;
    result
}

async fn run_rate_in(a: &Args, rate: u64, body: &bytes::Bytes, gh: &StandIn, dir: &Path) -> anyhow::Result<Report> {
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
    let database = dir.join("crcr.sqlite");
    let secret = uuid::Uuid::new_v4().to_string();
    let relay = Relay(
        Command::new(&a.crcr)
            .arg("serve")
            .env("CRCR_LISTEN", format!("127.0.0.1:{port}"))
            .env("CRCR_DATABASE", &database)
            .env("CRCR_UPSTREAM_REPO", "Codertocat/Hello-World")
            .env("CRCR_WEBHOOK_SECRET", &secret)
            .env("CRCR_GITHUB_APP_ID", gh.app_id().to_string())
            .env("CRCR_GITHUB_APP_PRIVATE_KEY_FILE", dir.join("app.pem"))
            .env("CRCR_GITHUB_API_URL", gh.base_url())
            .env("CRCR_ALLOWLIST_FILE", dir.join("allowlist.yml"))
            .env("CRCR_LOG", std::env::var("CRCR_LOG").unwrap_or_else(|_| "warn".into()))
            // The relay's throughput, not GitHub's limits: the stand-in
            // enforces none here, and 5,000 dispatches/s at 50 ms need 250
            // in flight (the default cap is GitHub's 100).
            .env(
                "CRCR_GITHUB_MAX_IN_FLIGHT",
                std::env::var("CRCR_GITHUB_MAX_IN_FLIGHT")
                    .unwrap_or_else(|_| max_in_flight(rate, a.targets, a.latency_ms).to_string()),
            )
            // HTTP/2, as api.github.com negotiates by ALPN (the stand-in
            // is plain http: prior knowledge). `CRCR_GITHUB_H2C=false`
            // measures HTTP/1.1, a connection per request in flight.
            .env("CRCR_GITHUB_H2C", github_h2c())
            // GitHub's content limits would allow 80 dispatches a minute
            // per installation, and the targets here share one.
            .env("CRCR_DISPATCH_PACE", std::env::var("CRCR_DISPATCH_PACE").unwrap_or_else(|_| "off".into()))
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("cannot start {} (build it: cargo build --release -p crcr): {e}", a.crcr.display())
            })?,
    );
    let pid = relay.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}/github/webhook");
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
    let ready = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(10), "crcr serve did not start on {base}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let webhook = Webhook { http: http.clone(), url, signer: WebhookSecret::new(secret), body: body.clone() };

    // Warm-up: installation lookups and token minting happen here, and the
    // connections opened now are not counted as new.
    let warm = webhook.post(uuid::Uuid::new_v4().to_string()).await?;
    anyhow::ensure!(warm.status() == 202, "the warm-up delivery was answered {}", warm.status());
    let mut seen = Seen::default();
    let ready = Instant::now();
    while seen.dispatch_count < a.targets {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(30), "the warm-up delivery was not dispatched in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
        seen.take(gh);
    }
    seen = Seen { ports: std::mem::take(&mut seen.ports), ..Seen::default() };

    // Samplers: the WAL's size, and the stand-in's records in slices.
    let stop = Arc::new(AtomicBool::new(false));
    let peak_wal = Arc::new(AtomicU64::new(0));
    let wal_path = PathBuf::from(format!("{}-wal", database.display()));
    let sampler = {
        let (stop, peak_wal) = (stop.clone(), peak_wal.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::metadata(&wal_path) {
                    peak_wal.fetch_max(m.len(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let ingest_before = ingest_latency(&http, &base).await?;
    let cpu_before = cpu_ms(pid);
    let harness_before = cpu_ms(std::process::id());
    let total = (rate * a.seconds) as usize;
    let acks: Acks = Arc::new(Mutex::new(HashMap::with_capacity(total)));
    // The generator runs on a thread and runtime of its own, as GitHub's
    // webhook sender is not the GitHub API's server: on the stand-in's
    // runtime, a 202 that had arrived waited to be read behind the
    // stand-in's 5,000 dispatches/s, and that wait counted as the relay's.
    let sending = {
        // A client of its own: its connections are driven by this runtime.
        let http = reqwest::Client::builder().pool_max_idle_per_host(1024).build()?;
        let (webhook, acks) = (Webhook { http, ..webhook }, acks.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new()
            .name("relay-load-generator".into())
            .spawn(move || runtime.block_on(send_open_loop(webhook, rate, total, acks)))?
    };
    while !sending.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen.take(gh);
    }
    let send_s = sending.join().map_err(|_| anyhow::anyhow!("the webhook generator panicked"))?;
    let sent_done = Instant::now();
    let ingest = ingest_latency(&http, &base).await?.since(&ingest_before);
    let accepted = acks.lock().unwrap().values().filter(|a| a.2 == 202).count();
    let expected = accepted * a.targets;
    let deadline = Instant::now() + Duration::from_secs(a.drain_timeout_s);
    while seen.dispatch_count < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen.take(gh);
    }
    let cpu_after = cpu_ms(pid);
    let harness_after = cpu_ms(std::process::id());
    let peak_rss = peak_rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    drop(relay);

    let acks = acks.lock().unwrap();
    let mut lags = Vec::with_capacity(seen.dispatch_count);
    let mut last_dispatch = sent_done;
    let mut delivered = 0;
    let mut duplicated = 0;
    for ((id, _), arrivals) in &seen.dispatches {
        if arrivals.len() > 1 {
            duplicated += arrivals.len() - 1;
        }
        let Some((sent, _, status)) = acks.get(id) else { continue };
        if *status == 202 {
            delivered += 1;
        }
        for at in arrivals {
            lags.push(at.saturating_duration_since(*sent).as_secs_f64() * 1e3);
            last_dispatch = last_dispatch.max(*at);
        }
    }
    Ok(Report {
        rate,
        sent: total,
        accepted,
        send_s,
        ack_ms: percentiles(acks.values().map(|a| a.1).collect()),
        lag_ms: percentiles(lags),
        drain_s: last_dispatch.saturating_duration_since(sent_done).as_secs_f64(),
        cpu_ms_per_webhook: cpu_after.saturating_sub(cpu_before) as f64 / total as f64,
        harness_cpu_ms_per_webhook: harness_after.saturating_sub(harness_before) as f64 / total as f64,
        peak_rss_mib: peak_rss as f64 / 1024.0,
        peak_wal_mib: peak_wal.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0),
        lost: expected.saturating_sub(delivered),
        duplicated,
        requests_per_webhook: seen.requests as f64 / total as f64,
        new_connections_per_webhook: seen.new_ports as f64 / total as f64,
        relay_ingest_within: [5e-3, 10e-3].map(|s| ingest.share_within(s)),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/webhooks/pull_request.synchronize.json");
    let body = bytes::Bytes::from(std::fs::read(fixture).map_err(|e| anyhow::anyhow!("{fixture}: {e}"))?);
    println!(
        "relay-load: {} s per rate, {} target(s), GitHub latency {} ms, {} B pull_request.synchronize, \
         GitHub requests in flight at most {}, over HTTP/{}",
        a.seconds,
        a.targets,
        a.latency_ms,
        body.len(),
        std::env::var("CRCR_GITHUB_MAX_IN_FLIGHT")
            .unwrap_or_else(|_| "2 x rate x targets x latency (at least 100)".into()),
        if github_h2c().trim() == "true" { "2" } else { "1.1" }
    );
    println!(
        "| rate/s | sent (achieved/s) | 202 p50 / p99 ms | lag p50 / p99 / max ms | drain s | CPU ms/webhook (relay / \
         harness) | peak RSS MiB | peak WAL MiB | lost / dup | GitHub req/webhook | new conn/webhook |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut bad = Vec::new();
    for &rate in &a.rates {
        let r = run_rate(&a, rate, &body).await?;
        println!(
            "| {} | {} ({:.0}) | {:.2} / {:.2} | {:.0} / {:.0} / {:.0} | {:.1} | {:.2} / {:.2} | {:.1} | {:.1} | {} / {} | \
             {:.2} | {:.4} |",
            r.rate,
            r.sent,
            r.sent as f64 / r.send_s,
            r.ack_ms[0],
            r.ack_ms[1],
            r.lag_ms[0],
            r.lag_ms[1],
            r.lag_ms[2],
            r.drain_s,
            r.cpu_ms_per_webhook,
            r.harness_cpu_ms_per_webhook,
            r.peak_rss_mib,
            r.peak_wal_mib,
            r.lost,
            r.duplicated,
            r.requests_per_webhook,
            r.new_connections_per_webhook
        );
        println!(
            "  ({rate}/s: the relay's own IngestLatency: {:.2}% of its 202s within 5 ms, {:.2}% within 10 ms)",
            r.relay_ingest_within[0] * 100.0,
            r.relay_ingest_within[1] * 100.0
        );
        if r.accepted < r.sent {
            println!("  ({rate}/s: {} of {} webhooks were not answered 202)", r.sent - r.accepted, r.sent);
        }
        if r.lost > 0 || r.duplicated > 0 {
            bad.push(rate);
        }
    }
    anyhow::ensure!(bad.is_empty(), "lost or duplicated dispatches at {bad:?}/s");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The delivery id is read off the body the relay sends (built by its
    /// own `client_payload` module), and a body without one reads `""`.
    #[test]
    fn a_dispatch_body_gives_its_delivery_id() {
        let payload = r#"{"x":"\"delivery_id\":\"not this one\""}"#;
        let body = crcr_core::client_payload::build_from_text("pull_request", "d-7f3a", payload).unwrap();
        assert_eq!(sent_delivery_id(body.json().as_bytes()), "d-7f3a");
        assert_eq!(sent_delivery_id(br#"{"event_type":"push","client_payload":{}}"#), "");
    }

    /// The relay's histogram is read per bucket bound, for enqueued
    /// deliveries only, and counted from a first reading.
    #[test]
    fn the_relays_ingest_latency_is_read_off_its_metrics() {
        let before = parse_ingest_latency(
            "IngestLatency_bucket{outcome=\"enqueued\",le=\"0.005\"} 10\n\
             IngestLatency_bucket{outcome=\"enqueued\",le=\"0.01\"} 10\n\
             IngestLatency_bucket{outcome=\"enqueued\",le=\"+Inf\"} 10\n",
        );
        let after = parse_ingest_latency(
            "# TYPE IngestLatency histogram\n\
             IngestLatency_bucket{outcome=\"ignored\",le=\"0.005\"} 7\n\
             IngestLatency_bucket{outcome=\"enqueued\",le=\"0.005\"} 100\n\
             IngestLatency_bucket{outcome=\"enqueued\",le=\"0.01\"} 109\n\
             IngestLatency_bucket{outcome=\"enqueued\",le=\"+Inf\"} 110\n\
             IngestLatency_count{outcome=\"enqueued\"} 110\n",
        )
        .since(&before);
        assert_eq!(after.share_within(5e-3), 0.9);
        assert_eq!(after.share_within(10e-3), 0.99);
    }

    /// Every occurrence of the fixture's head SHA becomes the delivery's.
    #[test]
    fn each_webhook_gets_its_own_head_sha() {
        let body = [b"{\"after\":\"".as_slice(), FIXTURE_HEAD_SHA, b"\",\"sha\":\"", FIXTURE_HEAD_SHA, b"\"}"].concat();
        let out = with_head_sha(&body, "0f0e-1d");
        let expected = "0f0e1d0000000000000000000000000000000000";
        assert_eq!(String::from_utf8(out).unwrap(), format!(r#"{{"after":"{expected}","sha":"{expected}"}}"#));
    }
}
