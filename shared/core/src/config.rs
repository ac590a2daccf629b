//! Configuration from `CRCR_*` environment variables, loaded once and
//! validated at start-up: a missing or malformed setting stops start-up with
//! an error naming it. `Debug` never prints a secret.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `CRCR_LISTEN` | `127.0.0.1:8080` | `crcr serve` address |
//! | `CRCR_DATABASE` | `crcr.sqlite` | SQLite file (queue, store, blobs) |
//! | `CRCR_UPSTREAM_REPO` | `pytorch/pytorch` | the only repository whose events are acted on |
//! | `CRCR_WEBHOOK_SECRET` / `_FILE` | required (or `CRCR_WEBHOOK_SECRETS`) | webhook secret (HMAC key) |
//! | `CRCR_WEBHOOK_SECRETS` | unset | during a rotation: the current and the next webhook secret, comma-separated ([`webhook_secret_from_env`]) |
//! | `CRCR_GITHUB_APP_ID` | required | GitHub App id |
//! | `CRCR_GITHUB_APP_PRIVATE_KEY` / `_FILE` | required | App private key, PEM |
//! | `CRCR_GITHUB_API_URL` | `https://api.github.com` | GitHub REST base URL |
//! | `CRCR_GITHUB_MAX_IN_FLIGHT` | `100` | requests to GitHub in flight at once per process (GitHub's secondary limit: 100 concurrent) |
//! | `CRCR_GITHUB_H2C` | `false` | `true`: HTTP/2 without TLS (prior knowledge) to a plain-http loopback `CRCR_GITHUB_API_URL` (a stand-in or proxy that speaks it); over https, HTTP/2 is negotiated by ALPN whatever this says |
//! | `CRCR_ALLOWLIST_URL` or `CRCR_ALLOWLIST_FILE` | one required | `https://github.com/<o>/<r>/blob/<ref>/<path>` or a local path |
//! | `CRCR_ALLOWLIST_TTL_SECS` | `300` | allowlist cache lifetime |
//! | `CRCR_MAX_BODY_BYTES` | `26214400` | webhook body limit (GitHub caps at 25 MB) |
//! | `CRCR_MAX_RECEIVE_COUNT` | `5` | receives before a message goes to the DLQ |
//! | `CRCR_DISPATCH_CONCURRENCY` | `64` | targets dispatched at once per message |
//! | `CRCR_RETRY_BUDGET_SECS` | `20` | time one target may retry (or wait for GitHub's budget) within one receive |
//! | `CRCR_DISPATCH_PACE` | `github` | `github`: dispatches per target installation kept to GitHub's content limits (below); `off`: unpaced (benchmarks) |
//! | `CRCR_DISPATCHES_PER_MINUTE` | `80` | dispatches per target installation per minute (GitHub: 80 content-generating requests a minute) |
//! | `CRCR_DISPATCHES_PER_HOUR` | `500` | dispatches per target installation per hour (GitHub: 500 content-generating requests an hour) |
//! | `CRCR_BREAKER_FAILURES` | `5` | permanent dispatch failures in a row that pause a target (0: never) |
//! | `CRCR_BREAKER_NEVER_STARTED` | `10` | dispatches in a row that GitHub took but whose target never called back that pause it (the reconciler's sweep; 0: never) |
//! | `CRCR_BREAKER_COOL_DOWN_SECS` | `1800` | how long a paused target waits before a probe dispatch (doubling per failed probe, up to 6 h) |
//! | `CRCR_REQUEUE_DELAY_SECS` | `5` | first delay before a failed message is retried (doubles) |
//! | `CRCR_WORKERS` | `64` | messages processed at once by `crcr serve`: each is in flight for GitHub's latency and more, so they bound the rate at workers / latency (bench/relay-load, 10 targets at 50 ms: 32 workers cap it near 530 webhooks/s, and at 500/s a backlog built up within 5 minutes; 64 keep it at 16 ms p99 lag with 61 MiB peak RSS) |
//! | `CRCR_VISIBILITY_TIMEOUT_SECS` | `60` | embedded queue visibility timeout |
//! | `CRCR_REDELIVER_INTERVAL_SECS` | `600` | how often `crcr serve` asks GitHub for missed deliveries (0: never) |
//!
//! On AWS also: `CRCR_DISPATCH_QUEUE_URL`, `CRCR_DISPATCH_DLQ_URL`,
//! `CRCR_DISPATCH_TABLE`, `CRCR_PAYLOAD_TABLE`, `CRCR_RECONCILE_QUEUE_URL`,
//! `CRCR_RECONCILE_DLQ_URL`, `CRCR_JOBS_TABLE`, `CRCR_KV_TABLE` (which
//! function needs which: [`AwsResources`]), and `CRCR_AWS_ENDPOINT_URL` (an
//! AWS emulator, for tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::allowlist::AllowlistSource;
use crate::dispatch::DispatcherSettings;
use crate::domain::RepoFullName;
use crate::signature::WebhookSecret;

/// A setting that stopped start-up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("configuration {key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), problem: problem.into() }
}

/// A variable lookup: its value, `None` when unset.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// Reads variables through `get` (the process environment in production).
pub struct Env<'a> {
    get: Lookup<'a>,
}

impl<'a> Env<'a> {
    pub fn new(get: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self { get: Box::new(get) }
    }
    pub fn process() -> Env<'static> {
        Env::new(|k| std::env::var(k).ok())
    }
    pub fn opt(&self, key: &str) -> Option<String> {
        (self.get)(key).filter(|v| !v.trim().is_empty())
    }
    pub fn required(&self, key: &str) -> Result<String, ConfigError> {
        self.opt(key).ok_or_else(|| err(key, "is required but not set"))
    }
    pub fn parsed<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.opt(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e| err(key, format!("{v:?} is not valid: {e}"))),
        }
    }
    /// `KEY` or the contents of the file named by `KEY_FILE` (exactly one).
    pub fn secret(&self, key: &str) -> Result<SecretString, ConfigError> {
        let file_key = format!("{key}_FILE");
        match (self.opt(key), self.opt(&file_key)) {
            (Some(_), Some(_)) => Err(err(key, format!("set either {key} or {file_key}, not both"))),
            (Some(v), None) => Ok(SecretString::from(v)),
            (None, Some(path)) => std::fs::read_to_string(&path)
                .map(|s| SecretString::from(s.trim_end().to_owned()))
                .map_err(|e| err(&file_key, format!("cannot read {path}: {e}"))),
            (None, None) => Err(err(key, format!("is required (or {file_key})"))),
        }
    }
}

/// Most webhook secrets accepted at once: the current one and the next.
pub const MAX_WEBHOOK_SECRETS: usize = 2;

/// The webhook secrets: `CRCR_WEBHOOK_SECRETS` (a rotation: the secrets
/// accepted, comma-separated, at most [`MAX_WEBHOOK_SECRETS`], each trimmed,
/// none empty or repeated; index 0 is the first) or else
/// `CRCR_WEBHOOK_SECRET` / `CRCR_WEBHOOK_SECRET_FILE` (one). Setting the list
/// and the single form together is an error, so a forgotten old variable
/// never widens what is accepted. GitHub has one webhook secret per App
/// ("Validating webhook deliveries"; "Update a webhook configuration for an
/// app", <https://docs.github.com/en/rest/apps/webhooks#update-a-webhook-configuration-for-an-app>), so
/// two are only ever needed while it is being changed (docs/RUNBOOK.md
/// "Rotating the webhook secret"). Errors name the variable, never a value.
pub fn webhook_secret_from_env(env: &Env<'_>) -> Result<WebhookSecret, ConfigError> {
    const LIST: &str = "CRCR_WEBHOOK_SECRETS";
    let Some(list) = env.opt(LIST) else {
        return Ok(WebhookSecret::new(env.secret("CRCR_WEBHOOK_SECRET")?.expose_secret()));
    };
    for single in ["CRCR_WEBHOOK_SECRET", "CRCR_WEBHOOK_SECRET_FILE"] {
        if env.opt(single).is_some() {
            return Err(err(LIST, format!("set either {LIST} or {single}, not both")));
        }
    }
    let secrets: Vec<&str> = list.split(',').map(str::trim).collect();
    if let Some(i) = secrets.iter().position(|s| s.is_empty()) {
        return Err(err(LIST, format!("entry {} of {} is empty", i + 1, secrets.len())));
    }
    if secrets.len() > MAX_WEBHOOK_SECRETS {
        return Err(err(
            LIST,
            format!("lists {} secrets; at most {MAX_WEBHOOK_SECRETS} (the current and the next)", secrets.len()),
        ));
    }
    if secrets.len() == 2 && secrets[0] == secrets[1] {
        return Err(err(LIST, "lists the same secret twice"));
    }
    let secrets = secrets.into_iter().map(|s| SecretString::from(s.to_owned())).collect();
    WebhookSecret::any_of(secrets).ok_or_else(|| err(LIST, "lists no secret"))
}

/// What ingest alone needs (the ingest Lambda reads only these).
#[derive(Debug)]
pub struct IngestConfig {
    pub upstream: RepoFullName,
    pub webhook_secret: WebhookSecret,
    pub max_body_bytes: usize,
}

impl IngestConfig {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let upstream_raw = env.opt("CRCR_UPSTREAM_REPO").unwrap_or_else(|| "pytorch/pytorch".into());
        let upstream = RepoFullName::parse(&upstream_raw).map_err(|e| err("CRCR_UPSTREAM_REPO", e.to_string()))?;
        let webhook_secret = webhook_secret_from_env(env)?;
        let max_body_bytes = env.parsed("CRCR_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?;
        Ok(Self { upstream, webhook_secret, max_body_bytes })
    }
}

/// Callbacks, the reconciler and HUD sync.
pub struct CallbackConfig {
    pub oidc: crate::oidc::OidcConfig,
    /// HUD API base URL and bot key; `None`: records wait in the outbox.
    pub hud: Option<(String, SecretString)>,
    pub rate_per_min: u32,
    pub reconciler: crate::reconcile::ReconcilerSettings,
    /// How often the sweep (timeouts + HUD sync) runs in `crcr serve`.
    pub sweep_interval: Duration,
}

impl std::fmt::Debug for CallbackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackConfig")
            .field("oidc", &self.oidc)
            .field("hud_url", &self.hud.as_ref().map(|h| &h.0))
            .field("rate_per_min", &self.rate_per_min)
            .field("reconciler", &self.reconciler)
            .finish()
    }
}

impl Default for CallbackConfig {
    fn default() -> Self {
        Self {
            oidc: Default::default(),
            hud: None,
            rate_per_min: 100,
            reconciler: Default::default(),
            sweep_interval: Duration::from_secs(2),
        }
    }
}

impl CallbackConfig {
    /// `CRCR_OIDC_AUDIENCE`, `CRCR_OIDC_GITHUB_ISSUER` / `_JWKS_URL`,
    /// `CRCR_OIDC_BUILDKITE_ISSUER` / `_JWKS_URL`, `CRCR_BUILDKITE_PIPELINES_FILE`
    /// (PyTorch's `ci_providers.yml`, YAML: `providers.buildkite.repo_map` of
    /// `<org id>/<pipeline id>` → `owner/repo` or `{repo, required_claims:
    /// {claim: [allowed values]}}`; the legacy `buildkite:` section and crcr's
    /// earlier flat JSON map are read too: [`crate::oidc::buildkite`]),
    /// `CRCR_HUD_URL`, `CRCR_HUD_BOT_KEY` / `_FILE`, `CRCR_CALLBACK_RATE_PER_MIN`,
    /// `CRCR_JOB_TIMEOUT_SECS`, `CRCR_NEVER_STARTED_SECS`, `CRCR_SWEEP_INTERVAL_SECS`,
    /// `CRCR_CANCEL_ON_CLOSE` (`true` / `false`), `CRCR_OUTBOX_LEASE_SECS`,
    /// `CRCR_HUD_BACKOFF_SECS`, `CRCR_HUD_MAX_BACKOFF_SECS`,
    /// `CRCR_HUD_MAX_ATTEMPTS`, `CRCR_HUD_MAX_AGE_SECS`;
    /// `CRCR_OIDC_GITHUB_ISSUERS` (more GitHub Actions issuers, comma-separated,
    /// e.g. an enterprise's `https://token.actions.githubusercontent.com/<slug>`;
    /// JWKS at `<issuer>/.well-known/jwks`), and which runs may report
    /// ([`crate::oidc::GitHubRunPolicy`]): `CRCR_CALLBACK_EVENTS` (default
    /// `repository_dispatch`), `CRCR_CALLBACK_SCHEDULED_EVENTS` (default
    /// `repository_dispatch,schedule,workflow_dispatch`),
    /// `CRCR_CALLBACK_DEFAULT_BRANCH` (default `main`), `CRCR_CALLBACK_BRANCHES`
    /// (`owner/repo=branch,...`).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        use crate::oidc::TrustAnchor;
        let d = Self::default();
        let mut oidc = d.oidc.clone();
        if let Some(a) = env.opt("CRCR_OIDC_AUDIENCE") {
            oidc.audience = a;
        }
        let anchor = |issuer_key: &str, jwks_key: &str, default: Option<TrustAnchor>| -> Option<TrustAnchor> {
            let mut a = match env.opt(issuer_key) {
                Some(i) => TrustAnchor::new(i),
                None => default?,
            };
            if let Some(j) = env.opt(jwks_key) {
                a.jwks_url = j;
            }
            Some(a)
        };
        oidc.github_actions = anchor("CRCR_OIDC_GITHUB_ISSUER", "CRCR_OIDC_GITHUB_JWKS_URL", oidc.github_actions);
        oidc.buildkite = anchor("CRCR_OIDC_BUILDKITE_ISSUER", "CRCR_OIDC_BUILDKITE_JWKS_URL", oidc.buildkite);
        if let Some(list) = env.opt("CRCR_OIDC_GITHUB_ISSUERS") {
            oidc.github_enterprise_issuers =
                list.split(',').map(str::trim).filter(|i| !i.is_empty()).map(TrustAnchor::new).collect();
        }
        oidc.github_runs = github_run_policy(env, oidc.github_runs)?;
        if let Some(path) = env.opt("CRCR_BUILDKITE_PIPELINES_FILE") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err("CRCR_BUILDKITE_PIPELINES_FILE", format!("cannot read {path}: {e}")))?;
            oidc.buildkite_pipelines = crate::oidc::parse_buildkite_pipelines(&text)
                .map_err(|e| err("CRCR_BUILDKITE_PIPELINES_FILE", format!("{path}: {e}")))?;
        }
        let hud = match env.opt("CRCR_HUD_URL") {
            None => None,
            Some(url) => {
                crate::hud::check_url(&url).map_err(|e| err("CRCR_HUD_URL", e.to_string()))?;
                Some((url, env.secret("CRCR_HUD_BOT_KEY")?))
            }
        };
        let rate_per_min = env.parsed("CRCR_CALLBACK_RATE_PER_MIN", d.rate_per_min)?;
        if rate_per_min == 0 {
            return Err(err("CRCR_CALLBACK_RATE_PER_MIN", "must be at least 1"));
        }
        let reconciler = crate::reconcile::ReconcilerSettings {
            job_timeout: Duration::from_secs(env.parsed("CRCR_JOB_TIMEOUT_SECS", d.reconciler.job_timeout.as_secs())?),
            max_receive_count: env.parsed("CRCR_MAX_RECEIVE_COUNT", d.reconciler.max_receive_count)?,
            never_started_after: Duration::from_secs(
                env.parsed("CRCR_NEVER_STARTED_SECS", d.reconciler.never_started_after.as_secs())?,
            ),
            cancel_on_close: env.parsed("CRCR_CANCEL_ON_CLOSE", d.reconciler.cancel_on_close)?,
            outbox_lease: Duration::from_secs(
                env.parsed("CRCR_OUTBOX_LEASE_SECS", d.reconciler.outbox_lease.as_secs())?.max(1),
            ),
            hud_retry: hud_retry_policy(env, d.reconciler.hud_retry)?,
            breaker: breaker_settings(env)?,
            ..d.reconciler
        };
        let sweep_interval = seconds(env, "CRCR_SWEEP_INTERVAL_SECS", d.sweep_interval.as_secs_f64())?;
        if sweep_interval.is_zero() {
            return Err(err("CRCR_SWEEP_INTERVAL_SECS", "must be more than 0"));
        }
        Ok(Self { oidc, hud, rate_per_min, reconciler, sweep_interval })
    }
}

/// `CRCR_CALLBACK_EVENTS`, `CRCR_CALLBACK_SCHEDULED_EVENTS` (comma-separated
/// `event_name`s, at least one), `CRCR_CALLBACK_DEFAULT_BRANCH` (a branch
/// name or a full ref) and `CRCR_CALLBACK_BRANCHES` (`owner/repo=branch,...`)
/// over `d` ([`crate::oidc::GitHubRunPolicy`]).
fn github_run_policy(
    env: &Env<'_>,
    d: crate::oidc::GitHubRunPolicy,
) -> Result<crate::oidc::GitHubRunPolicy, ConfigError> {
    use crate::oidc::GitHubRunPolicy;
    let events = |key: &str, default: std::collections::BTreeSet<String>| match env.opt(key) {
        None => Ok(default),
        Some(v) => {
            let set: std::collections::BTreeSet<String> =
                v.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect();
            if set.is_empty() {
                return Err(err(key, "must name at least one event"));
            }
            Ok(set)
        }
    };
    let branch = |key: &str, b: &str| {
        if b.is_empty() || b.contains(char::is_whitespace) {
            Err(err(key, format!("{b:?} is not a branch name")))
        } else {
            Ok(GitHubRunPolicy::full_ref(b))
        }
    };
    let default_branch = match env.opt("CRCR_CALLBACK_DEFAULT_BRANCH") {
        None => d.default_branch,
        Some(b) => branch("CRCR_CALLBACK_DEFAULT_BRANCH", b.trim())?,
    };
    let mut branches = d.branches;
    if let Some(map) = env.opt("CRCR_CALLBACK_BRANCHES") {
        for entry in map.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let key = "CRCR_CALLBACK_BRANCHES";
            let (repo, b) =
                entry.split_once('=').ok_or_else(|| err(key, format!("entry {entry:?} is not owner/repo=branch")))?;
            let repo = RepoFullName::parse(repo.trim()).map_err(|e| err(key, format!("entry {entry:?}: {e}")))?;
            let b = branch(key, b.trim())?;
            if branches.insert(repo.as_str().to_ascii_lowercase(), b).is_some() {
                return Err(err(key, format!("{repo} is listed twice")));
            }
        }
    }
    Ok(GitHubRunPolicy {
        events: events("CRCR_CALLBACK_EVENTS", d.events)?,
        scheduled_events: events("CRCR_CALLBACK_SCHEDULED_EVENTS", d.scheduled_events)?,
        default_branch,
        branches,
    })
}

/// `CRCR_HEADER_READ_TIMEOUT_SECS`, `CRCR_REQUEST_TIMEOUT_SECS`,
/// `CRCR_MAX_CONNECTIONS` over [`ServerLimits::default`];
/// each more than 0.
fn server_limits(env: &Env<'_>) -> Result<ServerLimits, ConfigError> {
    let d = ServerLimits::default();
    let positive = |key: &str, v: Duration| if v.is_zero() { Err(err(key, "must be more than 0")) } else { Ok(v) };
    let max_connections = env.parsed("CRCR_MAX_CONNECTIONS", d.max_connections)?;
    if max_connections == 0 {
        return Err(err("CRCR_MAX_CONNECTIONS", "must be at least 1"));
    }
    Ok(ServerLimits {
        header_read_timeout: positive(
            "CRCR_HEADER_READ_TIMEOUT_SECS",
            seconds(env, "CRCR_HEADER_READ_TIMEOUT_SECS", d.header_read_timeout.as_secs_f64())?,
        )?,
        request_timeout: positive(
            "CRCR_REQUEST_TIMEOUT_SECS",
            seconds(env, "CRCR_REQUEST_TIMEOUT_SECS", d.request_timeout.as_secs_f64())?,
        )?,
        max_connections,
    })
}

/// `key` as a number of seconds (fractions allowed, e.g. `0.2`); negative,
/// NaN or too large is an error naming it.
fn seconds(env: &Env<'_>, key: &str, default: f64) -> Result<Duration, ConfigError> {
    let v: f64 = env.parsed(key, default)?;
    Duration::try_from_secs_f64(v).map_err(|e| err(key, format!("{v} is not a valid number of seconds: {e}")))
}

/// `CRCR_HUD_BACKOFF_SECS`, `CRCR_HUD_MAX_BACKOFF_SECS`,
/// `CRCR_HUD_MAX_ATTEMPTS` and `CRCR_HUD_MAX_AGE_SECS` over `d`
/// ([`crate::hud::HudRetryPolicy`]); each at least 1.
fn hud_retry_policy(env: &Env<'_>, d: crate::hud::HudRetryPolicy) -> Result<crate::hud::HudRetryPolicy, ConfigError> {
    let secs = |key: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        match env.parsed(key, default.as_secs())? {
            0 => Err(err(key, "must be at least 1")),
            s => Ok(Duration::from_secs(s)),
        }
    };
    let max_attempts = env.parsed("CRCR_HUD_MAX_ATTEMPTS", d.max_attempts)?;
    if max_attempts == 0 {
        return Err(err("CRCR_HUD_MAX_ATTEMPTS", "must be at least 1"));
    }
    Ok(crate::hud::HudRetryPolicy {
        first_backoff: secs("CRCR_HUD_BACKOFF_SECS", d.first_backoff)?,
        max_backoff: secs("CRCR_HUD_MAX_BACKOFF_SECS", d.max_backoff)?,
        max_attempts,
        max_age: secs("CRCR_HUD_MAX_AGE_SECS", d.max_age)?,
    })
}

/// The GitHub App settings alone (`crcr redeliver` needs no more):
/// `CRCR_GITHUB_APP_ID`, `CRCR_GITHUB_APP_PRIVATE_KEY` / `_FILE` (PEM),
/// `CRCR_GITHUB_API_URL` (default `https://api.github.com`; https, plain
/// http only for loopback).
pub fn github_app_from_env(env: &Env<'_>) -> Result<GitHubAppConfig, ConfigError> {
    let app_id: u64 = env
        .required("CRCR_GITHUB_APP_ID")?
        .trim()
        .parse()
        .map_err(|_| err("CRCR_GITHUB_APP_ID", "must be a positive integer"))?;
    let key = env.secret("CRCR_GITHUB_APP_PRIVATE_KEY")?;
    if !key.expose_secret().contains("-----BEGIN") {
        return Err(err("CRCR_GITHUB_APP_PRIVATE_KEY", "is not a PEM key (no -----BEGIN line)"));
    }
    let api_url = env.opt("CRCR_GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into());
    if !(api_url.starts_with("https://")
        || api_url.starts_with("http://127.0.0.1")
        || api_url.starts_with("http://localhost"))
    {
        return Err(err("CRCR_GITHUB_API_URL", "must be https (plain http only for loopback)"));
    }
    let max_in_flight = env.parsed("CRCR_GITHUB_MAX_IN_FLIGHT", GITHUB_MAX_IN_FLIGHT)?;
    if max_in_flight == 0 {
        return Err(err("CRCR_GITHUB_MAX_IN_FLIGHT", "must be at least 1"));
    }
    let h2c = env.parsed("CRCR_GITHUB_H2C", false)?;
    if h2c && !api_url.starts_with("http://") {
        return Err(err(
            "CRCR_GITHUB_H2C",
            "applies to a plain-http (loopback) CRCR_GITHUB_API_URL only; over https HTTP/2 is negotiated",
        ));
    }
    Ok(GitHubAppConfig { max_in_flight, h2c, ..GitHubAppConfig::new(app_id, key.expose_secret().to_owned(), api_url) })
}

/// Settings every runtime (Lambda or `crcr serve`) shares.
pub struct RelayConfig {
    pub upstream: RepoFullName,
    pub webhook_secret: WebhookSecret,
    pub github: GitHubAppConfig,
    pub allowlist: AllowlistSource,
    pub allowlist_ttl: Duration,
    pub max_body_bytes: usize,
    pub dispatcher: DispatcherSettings,
    pub callbacks: CallbackConfig,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("upstream", &self.upstream)
            .field("webhook_secret", &self.webhook_secret)
            .field("github", &self.github)
            .field("allowlist", &self.allowlist)
            .field("dispatcher", &self.dispatcher)
            .field("callbacks", &self.callbacks)
            .finish()
    }
}

impl RelayConfig {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let upstream_raw = env.opt("CRCR_UPSTREAM_REPO").unwrap_or_else(|| "pytorch/pytorch".into());
        let upstream = RepoFullName::parse(&upstream_raw).map_err(|e| err("CRCR_UPSTREAM_REPO", e.to_string()))?;
        let webhook_secret = webhook_secret_from_env(env)?;
        let github = github_app_from_env(env)?;
        let allowlist = match (env.opt("CRCR_ALLOWLIST_URL"), env.opt("CRCR_ALLOWLIST_FILE")) {
            (Some(_), Some(_)) => {
                return Err(err("CRCR_ALLOWLIST_URL", "set either it or CRCR_ALLOWLIST_FILE, not both"))
            }
            (Some(url), None) => {
                AllowlistSource::from_url(&url).map_err(|e| err("CRCR_ALLOWLIST_URL", e.to_string()))?
            }
            (None, Some(path)) => AllowlistSource::File(PathBuf::from(path)),
            (None, None) => return Err(err("CRCR_ALLOWLIST_URL", "is required (or CRCR_ALLOWLIST_FILE)")),
        };
        let d = DispatcherSettings::default();
        let dispatcher = DispatcherSettings {
            concurrency: env.parsed("CRCR_DISPATCH_CONCURRENCY", d.concurrency)?,
            max_receive_count: env.parsed("CRCR_MAX_RECEIVE_COUNT", d.max_receive_count)?,
            retry_budget: Duration::from_secs(env.parsed("CRCR_RETRY_BUDGET_SECS", d.retry_budget.as_secs())?),
            requeue_base_delay: Duration::from_secs_f64(
                env.parsed("CRCR_REQUEUE_DELAY_SECS", d.requeue_base_delay.as_secs_f64())?,
            ),
            pace: dispatch_pace(env)?,
            breaker: breaker_settings(env)?,
            ..d
        };
        if dispatcher.concurrency == 0 {
            return Err(err("CRCR_DISPATCH_CONCURRENCY", "must be at least 1"));
        }
        if dispatcher.max_receive_count == 0 {
            return Err(err("CRCR_MAX_RECEIVE_COUNT", "must be at least 1"));
        }
        Ok(Self {
            upstream,
            webhook_secret,
            github,
            allowlist,
            allowlist_ttl: Duration::from_secs(env.parsed("CRCR_ALLOWLIST_TTL_SECS", 300)?),
            max_body_bytes: env.parsed("CRCR_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?,
            dispatcher,
            callbacks: CallbackConfig::from_env(env)?,
        })
    }
}

/// `crcr serve` settings (embedded default).
#[derive(Debug)]
pub struct EmbeddedConfig {
    pub listen: SocketAddr,
    pub database: PathBuf,
    pub workers: usize,
    pub visibility_timeout: Duration,
    /// After SIGTERM / Ctrl-C: how long in-flight work may go on before the
    /// process stops anyway (`CRCR_SHUTDOWN_GRACE_SECS`, default 3 s; what is
    /// left is taken up at the next start: messages reappear after their
    /// visibility timeout, HUD and check-run records stay pending).
    pub shutdown_grace: Duration,
    /// HTTP limits against slow or idle clients (`crcr_embedded::server`):
    /// `CRCR_HEADER_READ_TIMEOUT_SECS` (10), `CRCR_REQUEST_TIMEOUT_SECS`
    /// (30), `CRCR_MAX_CONNECTIONS` (512).
    pub server: ServerLimits,
}

impl EmbeddedConfig {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let workers = env.parsed("CRCR_WORKERS", 64usize)?;
        if workers == 0 {
            return Err(err("CRCR_WORKERS", "must be at least 1"));
        }
        Ok(Self {
            listen: env.parsed("CRCR_LISTEN", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            database: PathBuf::from(env.opt("CRCR_DATABASE").unwrap_or_else(|| "crcr.sqlite".into())),
            workers,
            visibility_timeout: Duration::from_secs(env.parsed("CRCR_VISIBILITY_TIMEOUT_SECS", 60)?),
            shutdown_grace: seconds(env, "CRCR_SHUTDOWN_GRACE_SECS", 3.0)?,
            server: server_limits(env)?,
        })
    }
}

/// `CRCR_REDELIVER_INTERVAL_SECS` (seconds, default 600, 0 disables): how
/// often `crcr serve` asks GitHub to redeliver the webhook deliveries that
/// failed (`crate::redeliver`; the scheduled Lambda has its own schedule).
pub fn redeliver_interval(env: &Env<'_>) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(env.parsed("CRCR_REDELIVER_INTERVAL_SECS", 600)?))
}

/// `CRCR_BREAKER_FAILURES`, `CRCR_BREAKER_NEVER_STARTED` and
/// `CRCR_BREAKER_COOL_DOWN_SECS` ([`crate::breaker::BreakerSettings`]):
/// the dispatcher opens breakers on failures, the reconciler's sweep on
/// never-started dispatches.
fn breaker_settings(env: &Env<'_>) -> Result<crate::breaker::BreakerSettings, ConfigError> {
    let d = crate::breaker::BreakerSettings::default();
    Ok(crate::breaker::BreakerSettings {
        failures_to_open: env.parsed("CRCR_BREAKER_FAILURES", d.failures_to_open)?,
        never_started_to_open: env.parsed("CRCR_BREAKER_NEVER_STARTED", d.never_started_to_open)?,
        cool_down: Duration::from_secs(env.parsed("CRCR_BREAKER_COOL_DOWN_SECS", d.cool_down.as_secs())?.max(1)),
        ..d
    })
}

/// `CRCR_DISPATCH_PACE` (`github`, the default, or `off`) with
/// `CRCR_DISPATCHES_PER_MINUTE` and `CRCR_DISPATCHES_PER_HOUR`
/// ([`crate::budget::DispatchPace`]).
fn dispatch_pace(env: &Env<'_>) -> Result<Option<crate::budget::DispatchPace>, ConfigError> {
    let d = crate::budget::DispatchPace::default();
    match env.opt("CRCR_DISPATCH_PACE").as_deref().map(str::trim) {
        None | Some("github") => {}
        Some("off") => return Ok(None),
        Some(other) => return Err(err("CRCR_DISPATCH_PACE", format!("must be `github` or `off`, not {other:?}"))),
    }
    let pace = crate::budget::DispatchPace {
        per_minute: env.parsed("CRCR_DISPATCHES_PER_MINUTE", d.per_minute)?,
        per_hour: env.parsed("CRCR_DISPATCHES_PER_HOUR", d.per_hour)?,
        ..d
    };
    if pace.per_minute == 0 {
        return Err(err("CRCR_DISPATCHES_PER_MINUTE", "must be at least 1 (CRCR_DISPATCH_PACE=off for no pace)"));
    }
    if pace.per_hour == 0 {
        return Err(err("CRCR_DISPATCHES_PER_HOUR", "must be at least 1 (CRCR_DISPATCH_PACE=off for no pace)"));
    }
    Ok(Some(pace))
}

/// AWS resources (Lambda runtimes, on-call commands with `--aws`), named by
/// the variables infra/modules/crcr/lambda.tf sets. Each function reads
/// only what it uses, so every resource is optional here and the accessor
/// of each (e.g. [`AwsResources::jobs_table`]) fails, naming the variable
/// and who needs it, when it is not set:
///
/// | variable | ingest | dispatcher | reconciler |
/// |---|---|---|---|
/// | `CRCR_DISPATCH_QUEUE_URL` | yes | yes | |
/// | `CRCR_DISPATCH_DLQ_URL` | | yes | |
/// | `CRCR_DISPATCH_TABLE` | yes | yes | yes |
/// | `CRCR_PAYLOAD_TABLE` | yes | yes | |
/// | `CRCR_RECONCILE_QUEUE_URL` | yes | | yes |
/// | `CRCR_RECONCILE_DLQ_URL` | | | yes |
/// | `CRCR_JOBS_TABLE` | yes | | yes |
/// | `CRCR_KV_TABLE` | yes | | yes |
///
/// | `CRCR_PAYLOAD_TTL_SECS` | yes | | |
///
/// `CRCR_AWS_ENDPOINT_URL`: an AWS emulator (tests); unset on AWS.
#[derive(Debug, Clone)]
pub struct AwsResources {
    pub dispatch_queue_url: Option<String>,
    pub dispatch_dlq_url: Option<String>,
    pub dispatch_table: Option<String>,
    pub payload_table: Option<String>,
    pub reconcile_queue_url: Option<String>,
    pub reconcile_dlq_url: Option<String>,
    pub jobs_table: Option<String>,
    pub kv_table: Option<String>,
    pub endpoint_url: Option<String>,
    /// `CRCR_PAYLOAD_TTL_SECS`: how long claim-checked payloads live
    /// (default [`BLOB_TTL_SECS`]; infra: the DLQ retention +
    /// the source queue's + 1 day).
    pub payload_ttl: Duration,
}

impl Default for AwsResources {
    /// Nothing named; payloads live [`BLOB_TTL_SECS`].
    fn default() -> Self {
        Self {
            dispatch_queue_url: None,
            dispatch_dlq_url: None,
            dispatch_table: None,
            payload_table: None,
            reconcile_queue_url: None,
            reconcile_dlq_url: None,
            jobs_table: None,
            kv_table: None,
            endpoint_url: None,
            payload_ttl: Duration::from_secs(BLOB_TTL_SECS as u64),
        }
    }
}

impl AwsResources {
    /// Reads the variables above; a missing one is reported by its accessor,
    /// for the function that needs it; a malformed `CRCR_PAYLOAD_TTL_SECS`
    /// fails here.
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            dispatch_queue_url: env.opt("CRCR_DISPATCH_QUEUE_URL"),
            dispatch_dlq_url: env.opt("CRCR_DISPATCH_DLQ_URL"),
            dispatch_table: env.opt("CRCR_DISPATCH_TABLE"),
            payload_table: env.opt("CRCR_PAYLOAD_TABLE"),
            reconcile_queue_url: env.opt("CRCR_RECONCILE_QUEUE_URL"),
            reconcile_dlq_url: env.opt("CRCR_RECONCILE_DLQ_URL"),
            jobs_table: env.opt("CRCR_JOBS_TABLE"),
            kv_table: env.opt("CRCR_KV_TABLE"),
            endpoint_url: env.opt("CRCR_AWS_ENDPOINT_URL"),
            payload_ttl: match env.parsed("CRCR_PAYLOAD_TTL_SECS", BLOB_TTL_SECS as u64)? {
                0 => return Err(err("CRCR_PAYLOAD_TTL_SECS", "must be at least 1")),
                s => Duration::from_secs(s),
            },
        })
    }

    fn need(value: &Option<String>, key: &str, by: &str) -> Result<String, ConfigError> {
        value.clone().ok_or_else(|| err(key, format!("is required by {by}")))
    }

    /// `CRCR_DISPATCH_QUEUE_URL`; `by` names the function or command (for the error).
    pub fn dispatch_queue_url(&self, by: &str) -> Result<String, ConfigError> {
        Self::need(&self.dispatch_queue_url, "CRCR_DISPATCH_QUEUE_URL", by)
    }
    /// `CRCR_DISPATCH_DLQ_URL` (the dispatcher dead-letters with a reason).
    pub fn dlq_url(&self) -> Result<String, ConfigError> {
        Self::need(&self.dispatch_dlq_url, "CRCR_DISPATCH_DLQ_URL", "the dispatcher")
    }
    /// `CRCR_DISPATCH_TABLE`.
    pub fn dispatch_table(&self, by: &str) -> Result<String, ConfigError> {
        Self::need(&self.dispatch_table, "CRCR_DISPATCH_TABLE", by)
    }
    /// `CRCR_PAYLOAD_TABLE` (claim-checked webhook payloads).
    pub fn payload_table(&self, by: &str) -> Result<String, ConfigError> {
        Self::need(&self.payload_table, "CRCR_PAYLOAD_TABLE", by)
    }
    /// `CRCR_RECONCILE_QUEUE_URL` (accepted callbacks).
    pub fn reconcile_queue_url(&self, by: &str) -> Result<String, ConfigError> {
        Self::need(&self.reconcile_queue_url, "CRCR_RECONCILE_QUEUE_URL", by)
    }
    /// `CRCR_RECONCILE_DLQ_URL` (the reconciler dead-letters with a reason).
    pub fn reconcile_dlq_url(&self, by: &str) -> Result<String, ConfigError> {
        Self::need(&self.reconcile_dlq_url, "CRCR_RECONCILE_DLQ_URL", by)
    }
    /// `CRCR_JOBS_TABLE` (job lifecycle, HUD outbox, violations).
    pub fn jobs_table(&self, by: &str) -> Result<String, ConfigError> {
        Self::need(&self.jobs_table, "CRCR_JOBS_TABLE", by)
    }
    /// `CRCR_KV_TABLE` (identity bindings, used `jti`s, rate windows, small state).
    pub fn kv_table(&self, by: &str) -> Result<String, ConfigError> {
        Self::need(&self.kv_table, "CRCR_KV_TABLE", by)
    }
}

/// HTTP limits of `crcr serve` against slow or idle clients
/// (`crcr_embedded::server::serve`), with their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// `CRCR_HEADER_READ_TIMEOUT_SECS`, default 10 s.
    pub header_read_timeout: Duration,
    /// `CRCR_REQUEST_TIMEOUT_SECS`, default 30 s.
    pub request_timeout: Duration,
    /// `CRCR_MAX_CONNECTIONS`, default 512.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// Default lifetime of a blob (seconds), written to `expires_at` for the
/// table's TTL: 19 days = the DLQs' retention (14 days, SQS's maximum) + the
/// source queues' default retention (4 days: a message `crcr dlq replay`
/// sends back lives that long again before it can dead-letter once more) +
/// 1 day of margin, so a claim-checked message replayed late from the DLQ
/// still finds its payload. On AWS the Terraform passes its own sum as
/// `CRCR_PAYLOAD_TTL_SECS` (`local.payload_retention_seconds`, derived from
/// `local.dlq_retention_seconds`).
pub const BLOB_TTL_SECS: i64 = (14 + 4 + 1) * 24 * 3600;

/// GitHub caps webhook payloads at 25 MB ("Webhook events and payloads"):
/// the default of `CRCR_MAX_BODY_BYTES`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// Settings of the GitHub App client (`crcr_clients::github::GitHubAppClient`).
#[derive(Clone)]
pub struct GitHubAppConfig {
    pub app_id: u64,
    /// PEM of the App's RSA private key (PKCS#1 or PKCS#8).
    pub private_key_pem: SecretString,
    /// e.g. `https://api.github.com` (no trailing slash needed).
    pub api_url: String,
    /// How long an installation lookup is reused (found / not found).
    pub installation_ttl: Duration,
    pub not_installed_ttl: Duration,
    /// Per request: the whole exchange (connection if needed, the answer
    /// and its body) must be done within this (GitHub itself gives up
    /// after 10 s: REST docs, "Troubleshooting the REST API" → "Timeouts").
    pub timeout: Duration,
    /// Requests to GitHub in flight at once from this process, at most
    /// (`CRCR_GITHUB_MAX_IN_FLIGHT`, default [`GITHUB_MAX_IN_FLIGHT`]);
    /// more wait for a slot.
    pub max_in_flight: usize,
    /// HTTP/2 without TLS to a plain-http `api_url` (`CRCR_GITHUB_H2C`,
    /// prior knowledge, RFC 9113 §3.3); over https ALPN negotiates it.
    pub h2c: bool,
}

/// GitHub's secondary rate limit on concurrency: "No more than 100
/// concurrent requests are allowed" (REST docs, "Rate limits for the REST
/// API" → "About secondary rate limits"), per user or App installation.
/// One process never has more in flight, whatever its workers and
/// per-message target concurrency multiply to (32 × 64 by default).
pub const GITHUB_MAX_IN_FLIGHT: usize = 100;

impl std::fmt::Debug for GitHubAppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubAppConfig")
            .field("app_id", &self.app_id)
            .field("private_key_pem", &"<redacted>")
            .field("api_url", &self.api_url)
            .field("max_in_flight", &self.max_in_flight)
            .field("h2c", &self.h2c)
            .finish()
    }
}

impl GitHubAppConfig {
    pub fn new(app_id: u64, private_key_pem: String, api_url: String) -> Self {
        Self {
            app_id,
            private_key_pem: SecretString::from(private_key_pem),
            api_url,
            installation_ttl: Duration::from_secs(600),
            not_installed_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            max_in_flight: GITHUB_MAX_IN_FLIGHT,
            h2c: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<RelayConfig, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RelayConfig::from_env(&Env::new(move |k| map.get(k).cloned()))
    }

    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----";
    const BASE: &[(&str, &str)] = &[
        ("CRCR_WEBHOOK_SECRET", "hunter2"),
        ("CRCR_GITHUB_APP_ID", "42"),
        ("CRCR_GITHUB_APP_PRIVATE_KEY", KEY),
        ("CRCR_ALLOWLIST_FILE", "allowlist.yml"),
    ];

    fn check_err(extra: &[(&str, &str)], drop: &str, key: &str, problem: &str) {
        let vars: Vec<_> = BASE.iter().filter(|(k, _)| *k != drop).chain(extra).copied().collect();
        let e = load(&vars).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.problem.contains(problem), "{e}");
    }

    #[test]
    fn defaults_and_redaction() {
        let c = load(BASE).unwrap();
        assert_eq!(c.upstream.as_str(), "pytorch/pytorch");
        assert_eq!(c.github.api_url, "https://api.github.com");
        assert!(!c.github.h2c);
        let loopback = [("CRCR_GITHUB_API_URL", "http://127.0.0.1:8080"), ("CRCR_GITHUB_H2C", "true")];
        assert!(load(&BASE.iter().chain(&loopback).copied().collect::<Vec<_>>()).unwrap().github.h2c);
        assert_eq!(c.dispatcher.max_receive_count, 5);
        assert_eq!(c.dispatcher.pace, Some(crate::budget::DispatchPace::default()), "GitHub's limits by default");
        let c = load(&[BASE, &[("CRCR_DISPATCH_PACE", "off")]].concat()).unwrap();
        assert_eq!(c.dispatcher.pace, None);
        let c =
            load(&[BASE, &[("CRCR_BREAKER_FAILURES", "0"), ("CRCR_BREAKER_COOL_DOWN_SECS", "60")]].concat()).unwrap();
        assert_eq!((c.dispatcher.breaker.failures_to_open, c.dispatcher.breaker.cool_down.as_secs()), (0, 60));
        let c = load(&[BASE, &[("CRCR_DISPATCHES_PER_MINUTE", "40"), ("CRCR_DISPATCHES_PER_HOUR", "5000")]].concat())
            .unwrap();
        let pace = c.dispatcher.pace.unwrap();
        assert_eq!((pace.per_minute, pace.per_hour), (40, 5000));
        let c = load(BASE).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("abc"), "{dbg}");
    }

    /// A rotation: `CRCR_WEBHOOK_SECRETS` lists the current and the next
    /// secret (either verifies, in order); a bad list stops start-up naming
    /// the variable and never quoting a secret.
    #[test]
    fn webhook_secrets_list_for_a_rotation() {
        let body = b"{}";
        let c = load(&[BASE, &[("CRCR_WEBHOOK_SECRETS", " hunter2 , hunter3 ")]].concat()[1..]).unwrap();
        let secret = c.webhook_secret;
        assert_eq!(secret.len(), 2);
        for (i, s) in ["hunter2", "hunter3"].into_iter().enumerate() {
            assert_eq!(secret.verify_index(Some(WebhookSecret::new(s).sign(body).as_bytes()), body), Ok(i));
        }
        fn list(v: &str) -> [(&'static str, &str); 1] {
            [("CRCR_WEBHOOK_SECRETS", v)]
        }
        for (value, problem) in [
            ("hunter2,", "entry 2 of 2 is empty"),
            (",hunter2", "entry 1 of 2 is empty"),
            ("a,b,c", "lists 3 secrets; at most 2 (the current and the next)"),
            ("hunter2, hunter2", "lists the same secret twice"),
        ] {
            check_err(&list(value), "CRCR_WEBHOOK_SECRET", "CRCR_WEBHOOK_SECRETS", problem);
            let e = load(&[&BASE[1..], &list(value)[..]].concat()).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        check_err(
            &list("a,b"),
            "",
            "CRCR_WEBHOOK_SECRETS",
            "set either CRCR_WEBHOOK_SECRETS or CRCR_WEBHOOK_SECRET, not both",
        );
        // Neither form: the single one is named, as before.
        check_err(&[], "CRCR_WEBHOOK_SECRET", "CRCR_WEBHOOK_SECRET", "is required");
        let ingest = IngestConfig::from_env(&Env::new(|k| (k == "CRCR_WEBHOOK_SECRETS").then(|| "x,y".to_owned())));
        assert_eq!(ingest.unwrap().webhook_secret.len(), 2);
    }

    #[test]
    fn aws_resources_name_the_missing_variable_and_who_needs_it() {
        let env = Env::new(|k| (k == "CRCR_JOBS_TABLE").then(|| "jobs".to_owned()));
        let r = AwsResources::from_env(&env).unwrap();
        assert_eq!(r.jobs_table("the reconciler function").unwrap(), "jobs");
        let e = r.kv_table("the ingest function").unwrap_err();
        assert_eq!((e.key.as_str(), e.problem.as_str()), ("CRCR_KV_TABLE", "is required by the ingest function"));
        assert_eq!(r.reconcile_dlq_url("x").unwrap_err().key, "CRCR_RECONCILE_DLQ_URL");
        assert_eq!(r.dlq_url().unwrap_err().key, "CRCR_DISPATCH_DLQ_URL");
    }

    #[test]
    fn buildkite_pipelines_file_is_pytorchs_ci_providers_yml() {
        let real = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/ci_providers.yml");
        let c = load(&[BASE, &[("CRCR_BUILDKITE_PIPELINES_FILE", real)]].concat()).unwrap();
        let p = &c.callbacks.oidc.buildkite_pipelines
            ["018b5ec5-c236-4037-ba08-d8a5d29bcdae/018cdabc-d930-49f6-9085-634c4cb582ed"];
        assert_eq!((p.repo.as_str(), &p.required_claims["build_branch"]), ("vllm-project/vllm", &vec!["main".into()]));
        let bad = std::env::temp_dir().join(format!("crcr-bk-{}.yml", std::process::id()));
        std::fs::write(
            &bad,
            "providers:\n  buildkite:\n    repo_map:\n      org/pipe: {repo: a/b, required_claim: {x: y}}\n",
        )
        .unwrap();
        let bad_path = bad.to_str().unwrap().to_owned();
        check_err(&[("CRCR_BUILDKITE_PIPELINES_FILE", &bad_path)], "", "CRCR_BUILDKITE_PIPELINES_FILE", "\"org/pipe\"");
        std::fs::remove_file(bad).unwrap();
    }

    #[test]
    fn callback_run_rules_and_enterprise_issuers_are_read_and_checked() {
        let c = load(BASE).unwrap().callbacks.oidc;
        assert_eq!(c.github_runs, crate::oidc::GitHubRunPolicy::default());
        assert!(c.github_enterprise_issuers.is_empty());
        let c = load(
            &[
                BASE,
                &[
                    ("CRCR_CALLBACK_EVENTS", "repository_dispatch, workflow_run"),
                    ("CRCR_CALLBACK_SCHEDULED_EVENTS", "schedule"),
                    ("CRCR_CALLBACK_DEFAULT_BRANCH", "trunk"),
                    ("CRCR_CALLBACK_BRANCHES", "Org/A=dev,org/b=refs/heads/release"),
                    (
                        "CRCR_OIDC_GITHUB_ISSUERS",
                        "https://token.actions.githubusercontent.com/acme,https://token.actions.githubusercontent.com/b",
                    ),
                ],
            ]
            .concat(),
        )
        .unwrap()
        .callbacks
        .oidc;
        let r = &c.github_runs;
        assert_eq!(r.events.iter().map(String::as_str).collect::<Vec<_>>(), ["repository_dispatch", "workflow_run"]);
        assert_eq!(r.scheduled_events.len(), 1);
        assert_eq!(r.default_branch, "refs/heads/trunk");
        assert_eq!(
            (r.branches["org/a"].as_str(), r.branches["org/b"].as_str()),
            ("refs/heads/dev", "refs/heads/release")
        );
        assert_eq!(
            c.github_enterprise_issuers[1].jwks_url,
            "https://token.actions.githubusercontent.com/b/.well-known/jwks"
        );
        check_err(&[("CRCR_CALLBACK_EVENTS", " , ")], "", "CRCR_CALLBACK_EVENTS", "at least one");
        check_err(&[("CRCR_CALLBACK_BRANCHES", "org/a")], "", "CRCR_CALLBACK_BRANCHES", "owner/repo=branch");
        check_err(&[("CRCR_CALLBACK_BRANCHES", "org/a=x,ORG/A=y")], "", "CRCR_CALLBACK_BRANCHES", "twice");
        check_err(&[("CRCR_CALLBACK_BRANCHES", "nope=x")], "", "CRCR_CALLBACK_BRANCHES", "\"nope=x\"");
    }

    #[test]
    fn bad_settings_are_named() {
        check_err(&[], "CRCR_WEBHOOK_SECRET", "CRCR_WEBHOOK_SECRET", "required");
        check_err(&[], "CRCR_GITHUB_APP_ID", "CRCR_GITHUB_APP_ID", "required");
        check_err(&[("CRCR_GITHUB_APP_ID", "x")], "CRCR_GITHUB_APP_ID", "CRCR_GITHUB_APP_ID", "positive integer");
        check_err(
            &[("CRCR_GITHUB_APP_PRIVATE_KEY", "nope")],
            "CRCR_GITHUB_APP_PRIVATE_KEY",
            "CRCR_GITHUB_APP_PRIVATE_KEY",
            "PEM",
        );
        check_err(&[], "CRCR_ALLOWLIST_FILE", "CRCR_ALLOWLIST_URL", "required");
        check_err(
            &[("CRCR_ALLOWLIST_URL", "https://example.com/x")],
            "CRCR_ALLOWLIST_FILE",
            "CRCR_ALLOWLIST_URL",
            "not https://github.com",
        );
        check_err(&[("CRCR_UPSTREAM_REPO", "pytorch")], "", "CRCR_UPSTREAM_REPO", "owner/repo");
        check_err(&[("CRCR_MAX_RECEIVE_COUNT", "0")], "", "CRCR_MAX_RECEIVE_COUNT", "at least 1");
        check_err(&[("CRCR_DISPATCH_PACE", "fast")], "", "CRCR_DISPATCH_PACE", "`github` or `off`");
        check_err(&[("CRCR_DISPATCHES_PER_MINUTE", "0")], "", "CRCR_DISPATCHES_PER_MINUTE", "at least 1");
        check_err(&[("CRCR_DISPATCHES_PER_HOUR", "-1")], "", "CRCR_DISPATCHES_PER_HOUR", "");
        check_err(&[("CRCR_GITHUB_API_URL", "http://evil.example")], "", "CRCR_GITHUB_API_URL", "https");
        check_err(&[("CRCR_GITHUB_H2C", "true")], "", "CRCR_GITHUB_H2C", "plain-http (loopback)");
        check_err(&[("CRCR_GITHUB_H2C", "yes")], "", "CRCR_GITHUB_H2C", "not valid");
        check_err(
            &[("CRCR_WEBHOOK_SECRET_FILE", "/nonexistent")],
            "CRCR_WEBHOOK_SECRET",
            "CRCR_WEBHOOK_SECRET_FILE",
            "cannot read",
        );
    }
}
