//! Helpers for the end-to-end tests: a relay on the embedded default (SQLite
//! in a temp dir) in this process, a GitHub stand-in, signed deliveries of
//! the real fixtures, and waiting until a delivery is settled.

pub mod issuer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crcr_clients::github::GitHubAppConfig;
use crcr_core::allowlist::{Allowlist, AllowlistSource};
use crcr_core::config::{EmbeddedConfig, RelayConfig};
use crcr_core::dispatch::DispatcherSettings;
use crcr_core::domain::{DeliveryId, RepoFullName};
use crcr_core::ports::{Clock, DispatchRecord, DispatchStatus, DispatchStore, QueueInspect, QueueSide, SystemClock};
use crcr_core::signature::WebhookSecret;
use crcr_embedded::sqlite::{Db, SqliteDispatchStore, SqliteQueue};
use crcr_embedded::EmbeddedRelay;
use crcr_standin::StandIn;
use serde_json::Value;

/// The fixtures' repository, used as the upstream.
pub const UPSTREAM: &str = "Codertocat/Hello-World";
pub const PYTORCH_ALLOWLIST: &str = include_str!("../../fixtures/allowlist/pytorch-allowlist.yml");

/// A webhook fixture's exact bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/webhooks").join(format!("{name}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A relay on SQLite serving ingest on a loopback port, with its workers.
pub struct Relay {
    pub url: String,
    pub secret: WebhookSecret,
    pub dir: PathBuf,
    pub store: Arc<SqliteDispatchStore>,
    pub queue: Arc<SqliteQueue>,
    /// The relay's reconciler (to run a sweep step on demand).
    pub reconciler: Arc<crcr_core::reconcile::Reconciler>,
    pub allowlist: Allowlist,
    /// Background sweeps finished so far ([`Relay::sweeps_pass`]).
    sweeps: tokio::sync::watch::Receiver<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Whether `dir` was made for this relay (and goes with it) rather than
    /// given by the test (which may start another relay on it).
    owns_dir: bool,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The embedded queue's visibility timeout in these tests (longer than
/// `test_settings().retry_budget`, as the relay requires).
pub const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(8);

/// Settings fast enough for tests; the relay's real defaults otherwise.
pub fn test_settings() -> DispatcherSettings {
    DispatcherSettings {
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        requeue_base_delay: Duration::from_millis(200),
        retry_budget: Duration::from_secs(5),
        ..Default::default()
    }
}

impl Relay {
    /// Starts a relay in `dir` (created if needed; reuse it to restart on
    /// the same database) talking to `gh`.
    pub async fn start(
        gh: &StandIn,
        allowlist: &str,
        settings: DispatcherSettings,
        dir: Option<PathBuf>,
        secret: &str,
    ) -> Relay {
        Self::start_with(gh, allowlist, settings, dir, secret, Default::default()).await
    }

    /// [`Relay::start`] with callback / reconciler / HUD settings.
    pub async fn start_with(
        gh: &StandIn,
        allowlist: &str,
        settings: DispatcherSettings,
        dir: Option<PathBuf>,
        secret: &str,
        callbacks: crcr_core::config::CallbackConfig,
    ) -> Relay {
        Self::start_on_clock(gh, allowlist, settings, dir, secret, callbacks, Arc::new(SystemClock)).await
    }

    /// [`Relay::start_with`] on `clock` (e.g. a [`crcr_core::ports::ManualClock`]
    /// the test moves instead of sleeping).
    pub async fn start_on_clock(
        gh: &StandIn,
        allowlist: &str,
        settings: DispatcherSettings,
        dir: Option<PathBuf>,
        secret: &str,
        callbacks: crcr_core::config::CallbackConfig,
        clock: Arc<dyn Clock>,
    ) -> Relay {
        let owns_dir = dir.is_none();
        let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("crcr-e2e-{}", uuid())));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let allowlist_path = dir.join("allowlist.yml");
        std::fs::write(&allowlist_path, allowlist).expect("write allowlist");
        let secret = WebhookSecret::new(secret);
        let cfg = RelayConfig {
            upstream: RepoFullName::parse(UPSTREAM).unwrap(),
            webhook_secret: secret.clone(),
            github: GitHubAppConfig::new(gh.app_id(), gh.private_key_pem(), gh.base_url()),
            allowlist: AllowlistSource::File(allowlist_path),
            allowlist_ttl: Duration::from_secs(300),
            max_body_bytes: crcr_http::ingest::DEFAULT_MAX_BODY_BYTES,
            dispatcher: settings,
            callbacks,
        };
        let emb = EmbeddedConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: dir.join("crcr.sqlite"),
            workers: 8,
            visibility_timeout: VISIBILITY_TIMEOUT,
            shutdown_grace: Duration::from_secs(10),
            server: Default::default(),
        };
        let relay = EmbeddedRelay::build_with_clock(&cfg, &emb, clock).expect("relay builds");
        let sweeps = relay.sweeps();
        let (store, queue, reconciler) = (relay.store.clone(), relay.queue.clone(), relay.reconciler.clone());
        let listener = tokio::net::TcpListener::bind(emb.listen).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            relay
                .run(listener, async move {
                    let _ = rx.await;
                })
                .await
                .expect("relay runs");
        });
        Relay {
            url,
            secret,
            dir,
            store,
            queue,
            reconciler,
            allowlist: Allowlist::parse(allowlist).unwrap(),
            sweeps,
            stop: Some(tx),
            task: Some(task),
            owns_dir,
        }
    }

    /// Opens the relay's database on the side (e.g. to read a DLQ).
    pub fn db(&self) -> Db {
        Db::open(&self.dir.join("crcr.sqlite")).unwrap()
    }

    /// Posts `body` as GitHub would, signed with the relay's secret (or
    /// another one when `forge`). Returns status and JSON answer.
    pub async fn post(&self, event: &str, delivery: &str, body: &[u8], forge: bool) -> (u16, Value) {
        self.post_from_hook(event, delivery, None, body, forge).await
    }

    /// [`Relay::post`] from the webhook `hook` (`X-GitHub-Hook-ID`; `None`:
    /// no such header).
    pub async fn post_from_hook(
        &self,
        event: &str,
        delivery: &str,
        hook: Option<&str>,
        body: &[u8],
        forge: bool,
    ) -> (u16, Value) {
        let signature = if forge { WebhookSecret::new("forged").sign(body) } else { self.secret.sign(body) };
        let mut req = reqwest::Client::new().post(format!("{}/github/webhook", self.url));
        if let Some(hook) = hook {
            req = req.header("X-GitHub-Hook-ID", hook);
        }
        let res = req
            .header("content-type", "application/json")
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", signature)
            .body(body.to_vec())
            .send()
            .await
            .expect("relay reachable");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Waits (up to `within`) until the queue is empty and no record of
    /// `delivery` is pending; returns its records.
    pub async fn settled(&self, delivery: &str, within: Duration) -> Vec<DispatchRecord> {
        let id = DeliveryId::parse(delivery).unwrap();
        let deadline = Instant::now() + within;
        loop {
            let records = self.store.records(&id).await.unwrap();
            let depth = self.queue.depth(QueueSide::Source).await.unwrap();
            if depth == 0 && records.iter().all(|r| r.status != DispatchStatus::Pending) {
                return records;
            }
            assert!(Instant::now() < deadline, "delivery {delivery} not settled: depth {depth}, records {records:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the background sweeper has finished `n` more sweeps
    /// than when called (15 s at most, then the test fails). With `n` ≥ 2 at
    /// least one whole sweep ran after the call: whatever a sweep would
    /// have sent by then has been sent.
    pub async fn sweeps_pass(&self, n: u64) {
        let mut sweeps = self.sweeps.clone();
        let target = *sweeps.borrow_and_update() + n;
        tokio::time::timeout(Duration::from_secs(15), sweeps.wait_for(|done| *done >= target))
            .await
            .unwrap_or_else(|_| panic!("the sweeper did not finish {n} more sweeps within 15 s"))
            .expect("the relay stopped");
    }

    /// Stops ingest and workers gracefully.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// GitHub's answers to the dispatches the stand-in received for `repo`, in
/// order.
pub fn dispatch_statuses(gh: &StandIn, repo: &str) -> Vec<u16> {
    gh.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == format!("/repos/{repo}/dispatches"))
        .map(|r| r.status)
        .collect()
}

/// Asserts that `repo` got `count` dispatches, never more than `limit`
/// within `window` of each other by their arrival at the stand-in.
pub fn assert_dispatches_paced(gh: &StandIn, repo: &str, count: usize, limit: usize, window: Duration) {
    let mut sent: Vec<u64> = gh
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == format!("/repos/{repo}/dispatches"))
        .map(|r| r.at_ms)
        .collect();
    sent.sort();
    assert_eq!(sent.len(), count, "{repo}: one dispatch each");
    for (i, at) in sent.iter().enumerate().skip(limit) {
        assert!(
            at - sent[i - limit] >= window.as_millis() as u64,
            "{repo}: {} dispatches within {window:?}: {sent:?}",
            limit + 1
        );
    }
}

pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Dispatches the stand-in accepted for `delivery`, by target (lower-cased).
pub fn dispatched_to(gh: &StandIn, delivery: &str) -> Vec<String> {
    let mut v: Vec<String> = gh
        .dispatches()
        .into_iter()
        .filter(|d| d.body["client_payload"]["delivery_id"] == delivery)
        .map(|d| d.repo.to_ascii_lowercase())
        .collect();
    v.sort();
    v
}

/// Callback settings for an end-to-end relay: tokens of `issuer` (the GitHub
/// Actions trust anchor; no Buildkite), results to `hud` with the bot key
/// `hud-bot-key`, a sweep every 200 ms; reconciler defaults but the HUD
/// backoff ([`test_hud_retry`]).
pub fn callback_config(issuer: &issuer::Issuer, hud: &issuer::Hud) -> crcr_core::config::CallbackConfig {
    let mut c = crcr_core::config::CallbackConfig::default();
    c.oidc.github_actions = Some(crcr_core::oidc::TrustAnchor::new(issuer.url.clone()));
    c.oidc.buildkite = None;
    c.hud = Some((hud.url.clone(), "hud-bot-key".to_owned().into()));
    c.sweep_interval = Duration::from_millis(200);
    c.reconciler.hud_retry = test_hud_retry();
    c
}

/// HUD backoff on the tests' time scale: 100 ms after the first failure,
/// doubling to at most 400 ms (production: 30 s to 30 min); the same limits.
pub fn test_hud_retry() -> crcr_core::hud::HudRetryPolicy {
    crcr_core::hud::HudRetryPolicy {
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        ..Default::default()
    }
}

/// `POST <relay>/github/callback` with `Bearer <token>` and `body`: the status
/// and the JSON answer (`Null` when not JSON).
pub async fn post_callback(relay: &Relay, token: &str, body: &[u8]) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/github/callback", relay.url))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .expect("relay reachable");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Waits up to 15 s for `f` to hold; panics naming `what` otherwise.
pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A log writer that keeps every line in memory (for `tracing_subscriber`'s
/// JSON format): tests read back what the relay logged.
#[derive(Clone, Default)]
pub struct LogLines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogLines {
    type Writer = LogLines;
    fn make_writer(&'a self) -> LogLines {
        self.clone()
    }
}

impl LogLines {
    /// Everything written, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    /// Every line, each of which must be JSON.
    pub fn json(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
            .collect()
    }
    /// The JSON lines whose message is `message`.
    pub fn with_message(&self, message: &str) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}
