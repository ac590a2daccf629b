//! GitHub App adapter on octocrab: installation lookup (cached), installation
//! tokens narrowed to one repository (cached in memory until `expires_at`
//! minus a margin, never persisted or logged), `repository_dispatch`, and
//! file contents. octocrab is built without its `retry` feature, so it never
//! re-sends by itself: [`classify`] is the single
//! place that decides transient vs permanent, and the dispatcher's backoff
//! the single retry loop.
//!
//! Rules used (GitHub REST docs): installation tokens last 1 h
//! ("Create an installation access token for an app"); rate limits answer
//! 403/429 with `Retry-After`, or `x-ratelimit-remaining: 0` and
//! `x-ratelimit-reset` in epoch seconds, and without either the client
//! waits at least a minute, longer while it goes on ("Rate limits for the
//! REST API" → "Exceeding the rate limit": [`SecondaryLimitBackoff`]); a
//! renamed or transferred repository answers with a redirect, followed once
//! on the API's own host ("Best practices for using the REST API" → "Follow
//! redirects": [`GitHubAppClient`]'s `follow_move`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use octocrab::Octocrab;
use secrecy::SecretString;
use serde_json::{json, Value};

pub use crcr_core::config::GitHubAppConfig;
use crcr_core::domain::RepoFullName;
use crcr_core::ports::{GitHubApp, GitHubError, InstallationId};
use crcr_core::rate_limit::{InFlightGate, PrimaryLimits, RateLimitIdentity, RequestPriority};
use octocrab::service::middleware::base_uri::BaseUriLayer;
use octocrab::service::middleware::extra_headers::ExtraHeadersLayer;

use crate::transport::{ConnectionSpread, TransportConfig};

/// The wait after a rate-limit answer that gives no `retry-after` nor
/// `x-ratelimit-remaining: 0` + `x-ratelimit-reset` (GitHub docs, "Rate
/// limits for the REST API" → "Exceeding the rate limit",
/// <https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#exceeding-the-rate-limit>:
/// "Otherwise, wait for at least one minute before retrying").
pub const SECONDARY_LIMIT_FIRST_WAIT: Duration = Duration::from_secs(60);
/// The longest wait [`SecondaryLimitBackoff`] doubles up to.
pub const SECONDARY_LIMIT_MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// `error` and its sources, `: `-separated, each said once: octocrab's own
/// text ("client error (Connect)") does not say whether the address refused
/// the connection or its certificate was not trusted; its sources do.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}

/// The `User-Agent` of every request: the App's software and version.
pub const USER_AGENT: &str = concat!("crcr/", env!("CARGO_PKG_VERSION"));

/// A token is used until this long before GitHub's `expires_at`.
pub const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Building the client failed (bad key, URL, or TLS roots).
#[derive(Debug, thiserror::Error)]
pub enum GitHubConfigError {
    #[error("GitHub App private key is not an RSA PEM key: {0}")]
    BadKey(String),
    #[error("GitHub API URL {url:?} is not usable: {error}")]
    BadUrl { url: String, error: String },
    /// The root certificates (the system's, or `SSL_CERT_FILE` /
    /// `SSL_CERT_DIR`) could not be loaded.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
}

struct CachedToken {
    client: Octocrab,
    /// Use until this instant (GitHub's expiry minus the margin).
    use_until: Instant,
}

/// The GitHub App, as seen by the relay.
pub struct GitHubAppClient {
    app: Octocrab,
    cfg: GitHubAppConfig,
    installations: Mutex<HashMap<String, (Option<InstallationId>, Instant)>>,
    /// Key: `<repo key>|<permission>`.
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// One mint at a time per token key: callers that find no token while
    /// one is being minted wait for it instead of minting their own (a
    /// burst of 300 dispatches would otherwise mint up to 300 tokens at
    /// once, past GitHub's 900 points a minute for the App: 5 per mint).
    minting: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    /// Each identity's primary-limit window, from GitHub's answers: a
    /// request is not sent when its priority may not spend what is left.
    primary: PrimaryLimits,
    /// Waits after rate limits answered without a hint, doubling while they go on.
    secondary: Mutex<SecondaryLimitBackoff>,
    /// Repositories GitHub answered as moved (renamed or transferred), by
    /// the key of the name asked for: where they are now.
    moved: Mutex<HashMap<String, RepoFullName>>,
    /// One slot per request in flight ([`GitHubAppConfig::max_in_flight`]),
    /// freed slots going to the highest priority waiting.
    in_flight: std::sync::Arc<InFlightGate>,
}

/// Who sends a request and for what: the identity whose primary limit it
/// spends, and its priority ([`crcr_core::rate_limit`]).
#[derive(Clone, Copy, Debug)]
struct Call {
    identity: RateLimitIdentity,
    priority: RequestPriority,
}

impl Call {
    /// With the App's JWT.
    fn app(priority: RequestPriority) -> Self {
        Call { identity: RateLimitIdentity::App, priority }
    }

    /// With an installation token of `installation`.
    fn installation(installation: InstallationId, priority: RequestPriority) -> Self {
        Call { identity: RateLimitIdentity::Installation(installation), priority }
    }
}

/// How long to wait after a rate-limit answer without `retry-after` or
/// `x-ratelimit-reset` ([`is_headerless_rate_limit`]). GitHub docs, "Rate
/// limits for the REST API" → "Exceeding the rate limit": wait at least
/// one minute; "If your request continues to fail due to a secondary rate
/// limit, wait for an exponentially increasing amount of time between
/// retries". So: [`SECONDARY_LIMIT_FIRST_WAIT`] for the first one; one
/// answered after that wait was over, while the limit still goes on (within
/// another wait of its end), doubles it, up to [`SECONDARY_LIMIT_MAX_WAIT`];
/// answers to requests made during a wait (other requests in flight at the
/// time) get the current wait, not a doubled one; a success after the wait
/// (or a quiet spell as long as the wait) starts over at one minute.
#[derive(Debug, Default, Clone)]
pub struct SecondaryLimitBackoff {
    /// 0: not limited; n: the current wait is the first one doubled n - 1 times.
    level: u32,
    /// End of the current wait.
    until: Option<Instant>,
}

impl SecondaryLimitBackoff {
    fn wait_at(level: u32) -> Duration {
        SECONDARY_LIMIT_FIRST_WAIT.saturating_mul(1 << level.saturating_sub(1).min(16)).min(SECONDARY_LIMIT_MAX_WAIT)
    }

    /// A headerless rate-limit answer arrived at `now`: the wait before retrying.
    pub fn limited(&mut self, now: Instant) -> Duration {
        let current = Self::wait_at(self.level);
        self.level = match self.until {
            // Another request answered during the wait: same episode, same wait.
            Some(until) if self.level > 0 && now < until => self.level,
            // Still limited after waiting: wait twice as long.
            Some(until) if self.level > 0 && now < until + current => self.level + 1,
            _ => 1,
        };
        let wait = Self::wait_at(self.level);
        self.until = Some(self.until.map_or(now + wait, |u| u.max(now + wait)));
        wait
    }

    /// A 2xx answer arrived at `now`: after the wait, the limit is over.
    pub fn succeeded(&mut self, now: Instant) {
        if self.until.is_none_or(|until| now >= until) {
            *self = Self::default();
        }
    }
}

impl GitHubAppClient {
    pub fn new(cfg: GitHubAppConfig) -> Result<Self, GitHubConfigError> {
        use secrecy::ExposeSecret;
        let key = octocrab::jsonwebtoken::EncodingKey::from_rsa_pem(cfg.private_key_pem.expose_secret().as_bytes())
            .map_err(|e| GitHubConfigError::BadKey(e.to_string()))?;
        let bad_url = |e: String| GitHubConfigError::BadUrl { url: cfg.api_url.clone(), error: e };
        let base_uri: http::Uri = cfg.api_url.parse().map_err(|e: http::uri::InvalidUri| bad_url(e.to_string()))?;
        if base_uri.scheme().is_none() || base_uri.authority().is_none() {
            return Err(bad_url("not an absolute URL".into()));
        }
        let transport = ConnectionSpread::new(&TransportConfig {
            connect_timeout: Duration::from_secs(5),
            max_in_flight: cfg.max_in_flight,
            h2c: cfg.h2c,
        })?;
        // What octocrab's default client adds, over our transport: the
        // base URL and a User-Agent ("All API requests must include a valid
        // User-Agent header", REST docs, "Getting started with the REST
        // API" → "User agent"); the App's JWT is octocrab's (`AuthState::App`).
        let user_agent = (http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT));
        let app = octocrab::OctocrabBuilder::new_empty()
            .with_service(transport)
            .with_layer(&ExtraHeadersLayer::new(std::sync::Arc::new(vec![user_agent])))
            .with_layer(&BaseUriLayer::new(base_uri))
            .with_auth(octocrab::AuthState::App(octocrab::auth::AppAuth { app_id: cfg.app_id.into(), key }))
            .build()
            .unwrap_or_else(|never| match never {});
        Ok(Self {
            app,
            installations: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            minting: Mutex::new(HashMap::new()),
            primary: PrimaryLimits::new(),
            secondary: Mutex::new(SecondaryLimitBackoff::default()),
            moved: Mutex::new(HashMap::new()),
            in_flight: InFlightGate::new(cfg.max_in_flight),
            cfg,
        })
    }

    /// The primary-limit window of `identity` as this client sees it now
    /// (GitHub's last answer less what was sent since), if one is known.
    pub fn rate_limit_window(&self, identity: RateLimitIdentity) -> Option<crcr_core::rate_limit::RateLimitWindow> {
        self.primary.window(identity, chrono::Utc::now().timestamp())
    }

    /// An octocrab client authorised with a token narrowed to `repo` and
    /// `permission` (e.g. `("contents", "write")`), minted if needed.
    async fn token_client(
        &self,
        repo: &RepoFullName,
        installation: InstallationId,
        permission: (&str, &str),
        priority: RequestPriority,
    ) -> Result<Octocrab, GitHubError> {
        let key = format!("{}|{}:{}", repo.key(), permission.0, permission.1);
        let cached = || {
            self.tokens
                .lock()
                .expect("token cache")
                .get(&key)
                .filter(|t| Instant::now() < t.use_until)
                .map(|t| t.client.clone())
        };
        if let Some(client) = cached() {
            return Ok(client);
        }
        let gate = self.minting.lock().expect("token mints").entry(key.clone()).or_default().clone();
        let _turn = gate.lock().await;
        // Minted by the caller we waited for?
        if let Some(client) = cached() {
            return Ok(client);
        }
        let body = json!({"repositories": [repo.name()], "permissions": {permission.0: permission.1}});
        let uri = format!("/app/installations/{}/access_tokens", installation.0);
        let (status, headers, bytes) = self.send(Call::app(priority), || self.app._post(uri, Some(&body))).await?;
        if !status.is_success() {
            return Err(self.classify(status, &headers, &bytes));
        }
        let token: octocrab::models::InstallationToken = serde_json::from_slice(&bytes).map_err(|e| {
            GitHubError::Transient { reason: format!("unreadable token answer: {e}"), retry_after: None }
        })?;
        let lifetime = token
            .expires_at
            .as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| (t.timestamp_millis() - chrono::Utc::now().timestamp_millis()).max(0) as u64)
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(3600));
        let client = self
            .app
            .user_access_token(SecretString::from(token.token))
            .map_err(|e| GitHubError::Transient { reason: e.to_string(), retry_after: None })?;
        let use_until = Instant::now() + lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN);
        self.tokens.lock().expect("token cache").insert(key, CachedToken { client: client.clone(), use_until });
        Ok(client)
    }

    /// Where `repo` is now: the name GitHub's redirect led to when it was
    /// renamed or transferred ([`Self::follow_move`]), else `repo`.
    fn current_name(&self, repo: &RepoFullName) -> RepoFullName {
        self.moved.lock().expect("moved repositories").get(repo.key()).cloned().unwrap_or_else(|| repo.clone())
    }

    /// Follows, once, the redirect GitHub answered to the installation
    /// lookup of `repo`: a renamed or transferred repository answers 301
    /// with `Location: <api>/repositories/<id>/installation` (GitHub docs,
    /// "Best practices for using the REST API" → "Follow redirects":
    /// "Receiving an HTTP redirection is not an error, and you should follow
    /// the redirect", https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api#follow-redirects;
    /// GitHub developer changelog, "Preview repository redirects",
    /// 2015-04-17: a repository's location changes when it or its owner is
    /// renamed or it is transferred, and requests to the old location get a
    /// 301 or a 307 depending on the request). Only a `Location` on the API
    /// URL's own scheme and host is followed, and only one redirect. The
    /// new name comes from a token minted for the repository's id
    /// (`repository_ids`, whose answer lists the repositories with their
    /// `full_name`: "Create an installation access token for an app");
    /// later calls for `repo` use it ([`Self::current_name`]). On-call is
    /// told: a warning naming both names and
    /// [`crcr_core::metrics::ALLOWLIST_RENAMED_REPOS`]. Returns the answer to
    /// the redirected request (2xx with the installation, 404, ...).
    async fn follow_move(
        &self,
        repo: &RepoFullName,
        status: StatusCode,
        headers: &HeaderMap,
        priority: RequestPriority,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GitHubError> {
        let refuse = |why: String| GitHubError::Permanent {
            status: status.as_u16(),
            reason: format!("{} for {repo}: {why}", status.as_u16()),
        };
        let location = headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| refuse("redirect without a Location".into()))?;
        let target: http::Uri = location.parse().map_err(|_| refuse(format!("Location {location:?} is not a URL")))?;
        let api: http::Uri = self.cfg.api_url.parse().map_err(|_| refuse("API URL unusable".into()))?;
        if target.authority().is_some() && (target.scheme() != api.scheme() || target.authority() != api.authority()) {
            return Err(refuse(format!("not following a redirect to {location} (not {})", self.cfg.api_url)));
        }
        let repo_id = target
            .path()
            .split('/')
            .skip_while(|s| *s != "repositories")
            .nth(1)
            .and_then(|id| id.parse::<u64>().ok())
            .ok_or_else(|| refuse(format!("Location {location} names no repository id")))?;
        // The path only: octocrab puts the App's JWT only on requests
        // without a host (or to api.github.com); the host was checked above.
        let path = target.path_and_query().map_or(target.path(), |p| p.as_str()).to_owned();
        let (status, headers, bytes) = self.send(Call::app(priority), || self.app._get(path)).await?;
        if status.is_redirection() {
            return Err(refuse(format!(
                "{location} redirected again ({}); only one redirect is followed",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Ok((status, headers, bytes));
        }
        let installation = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| v.get("id")?.as_u64());
        let Some(installation) = installation else {
            return Ok((status, headers, bytes));
        };
        // The repository's name now: a token for its id lists it.
        let body = json!({"repository_ids": [repo_id], "permissions": {"metadata": "read"}});
        let uri = format!("/app/installations/{installation}/access_tokens");
        let (s, h, b) = self.send(Call::app(priority), || self.app._post(uri, Some(&body))).await?;
        if !s.is_success() {
            return Err(self.classify(s, &h, &b));
        }
        let name = serde_json::from_slice::<Value>(&b)
            .ok()
            .and_then(|v| v.pointer("/repositories/0/full_name")?.as_str().map(str::to_owned))
            .and_then(|n| RepoFullName::parse(&n).ok())
            .ok_or_else(|| GitHubError::Transient {
                reason: format!("{repo} moved to repository {repo_id}, whose name GitHub did not give"),
                retry_after: None,
            })?;
        tracing::warn!(allowlisted = %repo, now = %name, repository_id = repo_id, metric = "allowlist_renamed_repos",
            "allowlisted repository was renamed or transferred: dispatching to its new name; update the allowlist");
        ::metrics::counter!(crcr_core::metrics::ALLOWLIST_RENAMED_REPOS).increment(1);
        self.moved.lock().expect("moved repositories").insert(repo.key().to_owned(), name);
        Ok((status, headers, bytes))
    }

    fn forget_token(&self, repo: &RepoFullName) {
        let prefix = format!("{}|", repo.key());
        self.tokens.lock().expect("token cache").retain(|k, _| !k.starts_with(&prefix));
    }

    /// Sends the request `request` makes, as `call`: not at all when the
    /// identity's primary limit has no more for its priority
    /// ([`GitHubError::Deferred`], counted in
    /// [`crcr_core::metrics::GITHUB_REQUESTS_DEFERRED`]), else once a slot
    /// of [`GitHubAppConfig::max_in_flight`] is free (the highest priority
    /// waiting first), reading its answer fully (the slot is held until
    /// then) and GitHub's `x-ratelimit-*` headers; transport errors are
    /// transient.
    async fn send<F>(
        &self,
        call: Call,
        request: impl FnOnce() -> F,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GitHubError>
    where
        F: std::future::Future<
            Output = octocrab::Result<http::Response<http_body_util::combinators::BoxBody<Bytes, octocrab::Error>>>,
        >,
    {
        let priority = call.priority.as_str();
        let (_slot, waited) = self.in_flight.acquire(call.priority).await;
        if waited {
            ::metrics::counter!(crcr_core::metrics::GITHUB_IN_FLIGHT_WAITS, "priority" => priority).increment(1);
        }
        // Admitted once the slot is ours: what was sent meanwhile is counted.
        if let Err(deferral) = self.primary.admit(call.identity, call.priority, chrono::Utc::now().timestamp()) {
            ::metrics::counter!(crcr_core::metrics::GITHUB_REQUESTS_DEFERRED, "priority" => priority).increment(1);
            tracing::info!(identity = %call.identity, priority, wait_s = deferral.wait.as_secs(),
                metric = "github_requests_deferred", "{deferral}");
            return Err(GitHubError::Deferred { reason: format!("not sent: {deferral}"), retry_after: deferral.wait });
        }
        // The whole exchange within the timeout: over HTTP/2 a connection
        // busy with other streams never times out reading, however long one
        // answer takes.
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let timed_out = || GitHubError::Transient {
            reason: format!("GitHub did not answer within {} s", self.cfg.timeout.as_secs_f64()),
            retry_after: None,
        };
        let res = tokio::time::timeout_at(deadline, request()).await.map_err(|_| timed_out())?.map_err(|e| {
            GitHubError::Transient { reason: format!("GitHub unreachable: {}", causes(&e)), retry_after: None }
        })?;
        let (parts, body) = res.into_parts();
        if let Some((limit, remaining, reset_s)) = crcr_core::rate_limit::read_headers(&parts.headers) {
            self.primary.observe(call.identity, limit, remaining, reset_s);
            let now_s = chrono::Utc::now().timestamp();
            if let Some(window) = self.primary.window(call.identity, now_s) {
                ::metrics::gauge!(crcr_core::metrics::GITHUB_RATE_LIMIT_LEFT, "identity" => call.identity.to_string())
                    .set(window.remaining as f64);
            }
            if let Some(lowest) = self.primary.lowest_remaining(now_s) {
                ::metrics::gauge!(crcr_core::metrics::GITHUB_RATE_LIMIT_REMAINING).set(lowest as f64);
            }
        }
        let bytes = tokio::time::timeout_at(deadline, body.collect())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| GitHubError::Transient {
                reason: format!("GitHub answer cut short: {}", causes(&e)),
                retry_after: None,
            })?
            .to_bytes();
        if parts.status.is_success() {
            self.secondary.lock().expect("secondary limit state").succeeded(Instant::now());
        }
        Ok((parts.status, parts.headers, bytes))
    }

    /// [`classify`], with the wait after a rate limit GitHub gave no hint
    /// for taken from [`SecondaryLimitBackoff`] (one minute, doubling while
    /// it goes on). Every non-2xx answer of this client is classified here,
    /// once.
    fn classify(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GitHubError {
        match classify(status, headers, body) {
            GitHubError::Transient { reason, retry_after: Some(_) }
                if is_headerless_rate_limit(status, headers, body) =>
            {
                let wait = self.secondary.lock().expect("secondary limit state").limited(Instant::now());
                tracing::warn!(status = status.as_u16(), %reason, wait_s = wait.as_secs(), metric = "github_secondary_rate_limit",
                    "GitHub rate limit without retry-after or x-ratelimit-reset: not retrying before the wait is over");
                GitHubError::Transient { reason, retry_after: Some(wait) }
            }
            other => other,
        }
    }
}

/// The `message` of a GitHub error answer (or the start of the body).
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// A rate-limit answer that says nothing about when to retry: 403 or 429
/// whose message says it is a rate limit ("You have exceeded a secondary
/// rate limit", "API rate limit exceeded"), or any 429, with neither
/// `retry-after` nor `x-ratelimit-remaining: 0` (GitHub docs, "Rate limits
/// for the REST API" → "Exceeding the rate limit": "you will receive a 403
/// or 429 response and an error message that indicates that you exceeded a
/// secondary rate limit"). [`classify`] makes it wait
/// [`SECONDARY_LIMIT_FIRST_WAIT`].
pub fn is_headerless_rate_limit(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN && error_message(body).to_ascii_lowercase().contains("rate limit"));
    limited
        && header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_none()
        && header("x-ratelimit-remaining") != Some("0")
}

/// Classifies a non-2xx GitHub answer, once, for every caller:
/// - 5xx → transient;
/// - 403/429 with `Retry-After` → transient, retry after that many seconds;
/// - 403/429 with `x-ratelimit-remaining: 0` → [`GitHubError::Deferred`] until `x-ratelimit-reset` (the primary limit);
/// - 429, or 403 whose message mentions a rate limit (GitHub's "You have
///   exceeded a secondary rate limit"), without those headers → transient,
///   retry after [`SECONDARY_LIMIT_FIRST_WAIT`] at the earliest (GitHub
///   docs, "Rate limits for the REST API" → "Exceeding the rate limit":
///   "Otherwise, wait for at least one minute before retrying"; the client
///   doubles it while the limit goes on: [`SecondaryLimitBackoff`]);
/// - 401 (token revoked or expired early) → transient (a new token is minted);
/// - anything else (404 not installed / not found, 422, other 4xx) → permanent.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> GitHubError {
    let message = error_message(body);
    let reason = format!("{} {}", status.as_u16(), message);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if status.is_server_error() {
        return GitHubError::Transient { reason, retry_after: None };
    }
    if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
        if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
            return GitHubError::Transient { reason, retry_after: Some(Duration::from_secs(secs)) };
        }
        if header("x-ratelimit-remaining") == Some("0") {
            let wait = header("x-ratelimit-reset")
                .and_then(|v| v.parse::<i64>().ok())
                .map(|reset| (reset - chrono::Utc::now().timestamp()).max(1) as u64)
                .unwrap_or(60);
            // The primary limit: spent until the reset, whoever spent it.
            return GitHubError::Deferred {
                reason: format!("GitHub refused: {reason} (primary rate limit spent until its reset)"),
                retry_after: Duration::from_secs(wait),
            };
        }
        if is_headerless_rate_limit(status, headers, body) {
            return GitHubError::Transient { reason, retry_after: Some(SECONDARY_LIMIT_FIRST_WAIT) };
        }
    }
    if status == StatusCode::UNAUTHORIZED {
        return GitHubError::Transient { reason, retry_after: None };
    }
    GitHubError::Permanent { status: status.as_u16(), reason }
}

impl GitHubAppClient {
    /// The installation of the App on `repo` (cached), looked up with the
    /// App's JWT for a `priority` request; `None` when GitHub answers 404.
    async fn installation_for(
        &self,
        repo: &RepoFullName,
        priority: RequestPriority,
    ) -> Result<Option<InstallationId>, GitHubError> {
        if let Some((found, at)) = self.installations.lock().expect("installation cache").get(repo.key()) {
            let ttl = if found.is_some() { self.cfg.installation_ttl } else { self.cfg.not_installed_ttl };
            if at.elapsed() < ttl {
                return Ok(*found);
            }
        }
        let uri = format!("/repos/{}/{}/installation", repo.owner(), repo.name());
        let (mut status, mut headers, mut bytes) = self.send(Call::app(priority), || self.app._get(uri)).await?;
        if status.is_redirection() {
            // Renamed or transferred: follow GitHub's redirect once.
            (status, headers, bytes) = self.follow_move(repo, status, &headers, priority).await?;
        } else {
            // Answered under this name: it is (again) where it says.
            self.moved.lock().expect("moved repositories").remove(repo.key());
        }
        let found = match status {
            s if s.is_success() => {
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| GitHubError::Transient {
                    reason: format!("unreadable installation answer: {e}"),
                    retry_after: None,
                })?;
                let id = v.get("id").and_then(Value::as_u64).ok_or_else(|| GitHubError::Transient {
                    reason: "installation answer has no id".into(),
                    retry_after: None,
                })?;
                Some(InstallationId(id))
            }
            StatusCode::NOT_FOUND => None,
            _ => return Err(self.classify(status, &headers, &bytes)),
        };
        self.installations.lock().expect("installation cache").insert(repo.key().to_owned(), (found, Instant::now()));
        Ok(found)
    }
}

/// `POST uri` with `json` as the body, sent as it is: octocrab's `_post`
/// would serialize it again and keep two copies per request (a 24 KB
/// payload to ten targets, for every message in flight). The request gets
/// octocrab's own headers (its API version) from `build_request`.
async fn post_json(
    client: &Octocrab,
    uri: String,
    json: Bytes,
) -> octocrab::Result<http::Response<http_body_util::combinators::BoxBody<Bytes, octocrab::Error>>> {
    let (mut parts, _) = client.build_request::<()>(http::Request::post(uri), None)?.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    client.execute(http::Request::from_parts(parts, octocrab::OctoBody::from(json))).await
}

#[async_trait]
impl GitHubApp for GitHubAppClient {
    async fn installation(&self, repo: &RepoFullName) -> Result<Option<InstallationId>, GitHubError> {
        self.installation_for(repo, RequestPriority::Dispatch).await
    }

    async fn dispatch(
        &self,
        repo: &RepoFullName,
        installation: InstallationId,
        body: &crcr_core::client_payload::DispatchBody,
    ) -> Result<(), GitHubError> {
        let mut target = self.current_name(repo);
        let dispatch = RequestPriority::Dispatch;
        let client = self.token_client(&target, installation, ("contents", "write"), dispatch).await?;
        let uri = format!("/repos/{}/{}/dispatches", target.owner(), target.name());
        let (mut status, mut headers, mut bytes) =
            self.send(Call::installation(installation, dispatch), || post_json(&client, uri, body.bytes())).await?;
        if status.is_redirection() {
            // Moved since its installation was looked up (GitHub answers a
            // POST to a moved repository with 307): look it up again, which
            // follows the move, and send once more to where it is now.
            self.installations.lock().expect("installation cache").remove(repo.key());
            let installation = self.installation_for(repo, dispatch).await?.ok_or_else(|| GitHubError::Permanent {
                status: 404,
                reason: format!("{repo} moved and the App is not installed where it is now"),
            })?;
            let now = self.current_name(repo);
            if now == target {
                return Err(GitHubError::Permanent {
                    status: status.as_u16(),
                    reason: format!("{} redirect for {repo}, which GitHub does not say moved", status.as_u16()),
                });
            }
            target = now;
            let client = self.token_client(&target, installation, ("contents", "write"), dispatch).await?;
            let uri = format!("/repos/{}/{}/dispatches", target.owner(), target.name());
            (status, headers, bytes) =
                self.send(Call::installation(installation, dispatch), || post_json(&client, uri, body.bytes())).await?;
            if status.is_redirection() {
                return Err(GitHubError::Permanent {
                    status: status.as_u16(),
                    reason: format!("{repo} redirected again after following its move to {target}"),
                });
            }
        }
        if status.is_success() {
            return Ok(());
        }
        if status == StatusCode::UNAUTHORIZED {
            self.forget_token(&target);
        }
        if status == StatusCode::NOT_FOUND {
            // The App may have been removed from the repository: look it up again next time.
            self.installations.lock().expect("installation cache").remove(repo.key());
        }
        Err(self.classify(status, &headers, &bytes))
    }

    async fn file_contents(&self, repo: &RepoFullName, path: &str, git_ref: &str) -> Result<Vec<u8>, GitHubError> {
        // The allowlist: dispatches need it.
        let (client, call) = self.repo_client(repo, ("contents", "read"), RequestPriority::Dispatch).await?;
        let uri = format!("/repos/{}/{}/contents/{}?ref={}", repo.owner(), repo.name(), path, git_ref);
        let mut accept = HeaderMap::new();
        accept.insert(http::header::ACCEPT, http::HeaderValue::from_static("application/vnd.github.raw"));
        let (status, headers, bytes) = self.send(call, || client._get_with_headers(uri, Some(accept))).await?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(self.classify(status, &headers, &bytes))
        }
    }
}

/// The App's webhook delivery log, with the App JWT (`crcr redeliver`).
#[async_trait]
impl crcr_core::redeliver::HookDeliveries for GitHubAppClient {
    async fn list_page(
        &self,
        per_page: u8,
        cursor: Option<&str>,
    ) -> Result<crcr_core::redeliver::DeliveryPage, crcr_core::redeliver::HookError> {
        let uri = crate::hook_deliveries::list_uri(per_page, cursor);
        let (status, headers, bytes) = self.send(Call::app(RequestPriority::Redelivery), || self.app._get(uri)).await?;
        if !status.is_success() {
            return Err(crate::hook_deliveries::hook_error(status, &headers, &bytes));
        }
        crate::hook_deliveries::parse_page(&headers, &bytes)
    }

    async fn redeliver(&self, delivery_id: u64) -> Result<(), crcr_core::redeliver::HookError> {
        let uri = format!("/app/hook/deliveries/{delivery_id}/attempts");
        let (status, headers, bytes) =
            self.send(Call::app(RequestPriority::Redelivery), || self.app._post(uri, None::<&()>)).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(crate::hook_deliveries::hook_error(status, &headers, &bytes))
        }
    }
}

#[async_trait]
impl crcr_core::ports::CommitLookup for GitHubAppClient {
    /// With an installation token of `repo` narrowed to `contents: read`
    /// (the App must be installed on the upstream repository).
    async fn commit_exists(&self, repo: &RepoFullName, sha: &str) -> Result<bool, GitHubError> {
        // A callback's commit: its check runs and HUD records wait on it.
        let (client, call) = self.repo_client(repo, ("contents", "read"), RequestPriority::CheckRun).await?;
        let uri = format!("/repos/{}/{}/commits/{}", repo.owner(), repo.name(), sha);
        let (status, headers, bytes) = self.send(call, || client._get(uri)).await?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY => Ok(false),
            _ => Err(self.classify(status, &headers, &bytes)),
        }
    }
}

/// Upstream check runs (issue 4), with an installation token of the
/// upstream repository narrowed to `checks: write`.
#[async_trait]
impl crcr_core::checks::CheckRuns for GitHubAppClient {
    async fn create_check_run(
        &self,
        repo: &RepoFullName,
        run: &crcr_core::checks::CheckRunRequest,
    ) -> Result<u64, GitHubError> {
        let (client, call) = self.checks_client(repo).await?;
        let uri = format!("/repos/{}/{}/check-runs", repo.owner(), repo.name());
        let (status, headers, bytes) = self.send(call, || client._post(uri, Some(run))).await?;
        if !status.is_success() {
            return Err(self.repo_call_error(repo, status, &headers, &bytes));
        }
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("id")?.as_u64())
            .ok_or_else(|| GitHubError::Transient { reason: "check run answer has no id".into(), retry_after: None })
    }

    async fn update_check_run(
        &self,
        repo: &RepoFullName,
        id: u64,
        run: &crcr_core::checks::CheckRunRequest,
    ) -> Result<(), GitHubError> {
        let (client, call) = self.checks_client(repo).await?;
        let uri = format!("/repos/{}/{}/check-runs/{id}", repo.owner(), repo.name());
        // "Update a check run" takes no `head_sha`: a check run stays on its commit.
        let mut body =
            serde_json::to_value(run).map_err(|e| GitHubError::Permanent { status: 0, reason: e.to_string() })?;
        if let Some(fields) = body.as_object_mut() {
            fields.remove("head_sha");
        }
        let (status, headers, bytes) = self.send(call, || client._patch(uri, Some(&body))).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.repo_call_error(repo, status, &headers, &bytes))
        }
    }
}

impl GitHubAppClient {
    /// A client with a token of `repo` narrowed to `checks: write`, for check-run writes.
    async fn checks_client(&self, repo: &RepoFullName) -> Result<(Octocrab, Call), GitHubError> {
        self.repo_client(repo, ("checks", "write"), RequestPriority::CheckRun).await
    }

    /// A client with a token of `repo` narrowed to `permission`, the
    /// installation looked up (cached), and the [`Call`] of a `priority`
    /// request with it; 404 permanent when the App is not installed there.
    async fn repo_client(
        &self,
        repo: &RepoFullName,
        permission: (&str, &str),
        priority: RequestPriority,
    ) -> Result<(Octocrab, Call), GitHubError> {
        let installation = self.installation_for(repo, priority).await?.ok_or_else(|| GitHubError::Permanent {
            status: 404,
            reason: format!("the App is not installed on {repo}"),
        })?;
        let client = self.token_client(repo, installation, permission, priority).await?;
        Ok((client, Call::installation(installation, priority)))
    }

    /// [`Self::classify`], forgetting the token on 401 and the installation on 404.
    fn repo_call_error(
        &self,
        repo: &RepoFullName,
        status: StatusCode,
        headers: &HeaderMap,
        bytes: &[u8],
    ) -> GitHubError {
        if status == StatusCode::UNAUTHORIZED {
            self.forget_token(repo);
        }
        if status == StatusCode::NOT_FOUND {
            self.installations.lock().expect("installation cache").remove(repo.key());
        }
        self.classify(status, headers, bytes)
    }
}

/// Downstream workflow runs (issue 4), with an installation token of the
/// downstream repository narrowed to `actions: write` (GitHub REST
/// "Workflow runs": re-run 201, cancel 202).
#[async_trait]
impl crcr_core::runs::WorkflowRuns for GitHubAppClient {
    async fn rerun_failed_jobs(
        &self,
        repo: &RepoFullName,
        run_id: u64,
    ) -> Result<crcr_core::runs::RunRequest, GitHubError> {
        self.run_request(repo, run_id, "rerun-failed-jobs").await
    }

    async fn rerun(&self, repo: &RepoFullName, run_id: u64) -> Result<crcr_core::runs::RunRequest, GitHubError> {
        self.run_request(repo, run_id, "rerun").await
    }

    async fn cancel(&self, repo: &RepoFullName, run_id: u64) -> Result<crcr_core::runs::RunRequest, GitHubError> {
        self.run_request(repo, run_id, "cancel").await
    }
}

impl GitHubAppClient {
    /// `POST /repos/{o}/{r}/actions/runs/{run_id}/{action}` (`rerun`,
    /// `rerun-failed-jobs` or `cancel`), answered by [`run_answer`].
    async fn run_request(
        &self,
        repo: &RepoFullName,
        run_id: u64,
        action: &str,
    ) -> Result<crcr_core::runs::RunRequest, GitHubError> {
        let (client, call) = self.repo_client(repo, ("actions", "write"), RequestPriority::Rerun).await?;
        let uri = format!("/repos/{}/{}/actions/runs/{run_id}/{action}", repo.owner(), repo.name());
        let (status, headers, bytes) = self.send(call, || client._post(uri, None::<&()>)).await?;
        run_answer(status, &headers, &bytes, action == "cancel").map_err(|_| {
            // Forget the token on 401 and the installation on 404.
            self.repo_call_error(repo, status, &headers, &bytes)
        })
    }
}

/// What a re-run (`cancel` false) or cancel (`cancel` true) answer means:
/// 2xx → [`Accepted`](crcr_core::runs::RunRequest::Accepted); a 403 that
/// [`classify`] does not read as a rate limit and whose message says
/// "already running" (GitHub: "This workflow is already running") →
/// [`AlreadyRunning`](crcr_core::runs::RunRequest::AlreadyRunning); 409 on a
/// cancel ("Cannot cancel a workflow run that is completed.") →
/// [`AlreadyCompleted`](crcr_core::runs::RunRequest::AlreadyCompleted);
/// anything else → [`classify`].
fn run_answer(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    cancel: bool,
) -> Result<crcr_core::runs::RunRequest, GitHubError> {
    use crcr_core::runs::RunRequest;
    if status.is_success() {
        return Ok(RunRequest::Accepted);
    }
    if cancel && status == StatusCode::CONFLICT {
        return Ok(RunRequest::AlreadyCompleted);
    }
    let error = classify(status, headers, body);
    if status == StatusCode::FORBIDDEN && !error.is_transient() {
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_ascii_lowercase))
            .unwrap_or_default();
        if message.contains("already running") {
            return Ok(RunRequest::AlreadyRunning);
        }
    }
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, headers: &[(&str, &str)], body: &str, transient: bool, retry_after: Option<u64>) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let e = classify(StatusCode::from_u16(status).unwrap(), &h, body.as_bytes());
        assert_eq!(e.is_transient(), transient, "{status} {headers:?} {body} -> {e:?}");
        if transient {
            assert_eq!(e.retry_after().map(|d| d.as_secs()), retry_after, "{status} {headers:?}");
        }
        assert!(e.to_string().contains(&status.to_string()), "{e}");
    }

    #[test]
    fn classification_table() {
        let reset = (chrono::Utc::now().timestamp() + 30).to_string();
        check(502, &[], "bad gateway", true, None);
        check(500, &[], r#"{"message":"Server Error"}"#, true, None);
        check(403, &[("Retry-After", "2")], r#"{"message":"You have exceeded a secondary rate limit"}"#, true, Some(2));
        check(429, &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &reset)], "{}", true, Some(30));
        check(403, &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1")], "{}", true, Some(1));
        // The primary limit: the work waits for the reset, not counted as a failure.
        let mut spent = HeaderMap::new();
        spent.insert("x-ratelimit-remaining", "0".parse().unwrap());
        spent.insert("x-ratelimit-reset", reset.parse().unwrap());
        let e =
            classify(StatusCode::FORBIDDEN, &spent, br#"{"message":"API rate limit exceeded for installation ID 1."}"#);
        assert!(
            matches!(&e, GitHubError::Deferred { reason, .. } if reason.starts_with("GitHub refused: 403")),
            "{e:?}"
        );
        // No hint: at least one minute (GitHub docs, "Exceeding the rate limit").
        check(429, &[], "{}", true, Some(60));
        check(403, &[], r#"{"message":"API rate limit exceeded for installation"}"#, true, Some(60));
        let secondary = r#"{"message":"You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}"#;
        check(403, &[("x-ratelimit-remaining", "4999")], secondary, true, Some(60));
        check(429, &[("x-ratelimit-remaining", "12")], secondary, true, Some(60));
        check(401, &[], r#"{"message":"Bad credentials"}"#, true, None);
        check(403, &[], r#"{"message":"Resource not accessible by integration"}"#, false, None);
        check(404, &[], r#"{"message":"Not Found"}"#, false, None);
        check(422, &[], r#"{"message":"Invalid request"}"#, false, None);
    }

    /// GitHub docs, "Rate limits for the REST API" → "Exceeding the rate
    /// limit": at least one minute, then exponentially longer while the
    /// secondary limit goes on.
    #[test]
    fn headerless_secondary_limits_wait_a_minute_then_double_while_they_go_on() {
        let t0 = Instant::now();
        let s = |n: u64| Duration::from_secs(n);
        let mut b = SecondaryLimitBackoff::default();
        assert_eq!(b.limited(t0), s(60));
        // Other requests answered during the wait: the same wait, not doubled.
        assert_eq!(b.limited(t0 + s(5)), s(60));
        // Retried after the wait and still limited: 2, 4, 8 min, then 15 min at most.
        assert_eq!(b.limited(t0 + s(66)), s(120));
        assert_eq!(b.limited(t0 + s(190)), s(240));
        assert_eq!(b.limited(t0 + s(440)), s(480));
        assert_eq!(b.limited(t0 + s(930)), s(900));
        assert_eq!(b.limited(t0 + s(1840)), s(900));
        // A success during the wait does not end it; one after it does.
        b.succeeded(t0 + s(1900));
        assert_eq!(b.limited(t0 + s(1901)), s(900));
        b.succeeded(t0 + s(2900));
        assert_eq!(b.limited(t0 + s(2901)), s(60));
        // A limit long after the last one (no success between) starts over too.
        assert_eq!(b.limited(t0 + s(9000)), s(60));
    }

    #[test]
    fn run_answers() {
        use crcr_core::runs::RunRequest;
        let answer = |status: u16, headers: &[(&str, &str)], body: &str, cancel: bool| {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            run_answer(StatusCode::from_u16(status).unwrap(), &h, body.as_bytes(), cancel)
        };
        let running = r#"{"message":"This workflow is already running"}"#;
        let completed = r#"{"message":"Cannot cancel a workflow run that is completed."}"#;
        assert_eq!(answer(201, &[], "{}", false).unwrap(), RunRequest::Accepted);
        assert_eq!(answer(202, &[], "{}", true).unwrap(), RunRequest::Accepted);
        assert_eq!(answer(403, &[], running, false).unwrap(), RunRequest::AlreadyRunning);
        assert_eq!(answer(409, &[], completed, true).unwrap(), RunRequest::AlreadyCompleted);
        // A 409 on a re-run is not "already completed".
        assert!(matches!(answer(409, &[], completed, false), Err(GitHubError::Permanent { status: 409, .. })));
        // A rate limit stays a rate limit, whatever the message says.
        assert!(answer(403, &[("Retry-After", "5")], running, false).unwrap_err().is_transient());
        assert!(answer(403, &[("x-ratelimit-remaining", "0")], running, false).unwrap_err().is_transient());
        assert!(answer(403, &[], r#"{"message":"API rate limit exceeded"}"#, false).unwrap_err().is_transient());
        let denied = r#"{"message":"Resource not accessible by integration"}"#;
        assert!(matches!(answer(403, &[], denied, false), Err(GitHubError::Permanent { status: 403, .. })));
        assert!(matches!(answer(404, &[], r#"{"message":"Not Found"}"#, true), Err(GitHubError::Permanent { .. })));
        assert!(answer(502, &[], "bad gateway", true).unwrap_err().is_transient());
    }
}
