//! Local GitHub stand-in for `crcr demo` and the end-to-end tests.
//!
//! An axum server on `127.0.0.1:0` that keeps GitHub's real rules instead of
//! answering 200 to everything:
//!
//! - HTTP/1.1, or HTTP/2 with prior knowledge, on one port (api.github.com
//!   negotiates `h2` by ALPN); each request's version and client port are
//!   recorded ([`RecordedRequest`]);
//! - a request without a `User-Agent` (or an empty one) gets GitHub's 403
//!   ("Request forbidden by administrative rules"), whatever its route;
//! - App JWTs are checked with the public half of an RSA key generated at
//!   start (RS256, `iss`, `iat`/`exp` rules, GitHub's 401 messages);
//! - `GET /repos/{owner}/{repo}/installation` answers per repository (404
//!   when the App is not installed there; 301 to
//!   `/repositories/{id}/installation` for a repository renamed with
//!   [`StandIn::rename`], and a `POST .../dispatches` to it 307);
//! - `POST /app/installations/{id}/access_tokens` mints `ghs_` tokens that
//!   expire, optionally narrowed to repositories and permissions (422 when
//!   asking for more than the installation has);
//! - `POST /repos/{owner}/{repo}/dispatches` checks the token (live, covers
//!   the repository, `contents: write`) and the body with GitHub's limits
//!   (`event_type` 1..=100 characters, `client_payload` an object of at most
//!   10 properties and at most 65,535 characters of JSON), then answers with
//!   the faults queued for that repository, one per call, before a 204;
//! - `GET /repos/{owner}/{repo}/contents/{path}` serves files put with
//!   [`StandIn::put_file`], raw or as GitHub's JSON;
//! - `GET /app/hook/deliveries` and `POST /app/hook/deliveries/{id}/attempts`:
//!   the App's webhook delivery log and redelivery, with GitHub's paging and
//!   3-day window ([`StandIn::add_hook_delivery`], [`StandIn::redelivery_requests`]);
//! - `POST /repos/{owner}/{repo}/check-runs` and `PATCH .../check-runs/{id}`
//!   with GitHub's validation and `checks: write` ([`StandIn::check_runs`]);
//!   each check run lands in the App's check suite of its head SHA
//!   ([`StandIn::check_suite_id`]), listed by
//!   `GET /repos/{owner}/{repo}/check-suites/{id}/check-runs`;
//! - `POST /repos/{owner}/{repo}/actions/runs/{run_id}/rerun`,
//!   `.../rerun-failed-jobs` and `.../cancel` with `actions: write`, on the
//!   workflow runs put with [`StandIn::add_workflow_run`]
//!   ([`StandIn::run_requests`]).
//!
//! With [`StandIn::enforce_secondary_limits`] it also keeps GitHub's
//! secondary rate limits (concurrency, points per endpoint, content
//! creation per minute and hour; a time scale for tests), answering 403
//! with GitHub's message, with or without `Retry-After` (`secondary.rs`
//! cites the docs each rule comes from).
//!
//! Every answer carries `x-ratelimit-*` and `x-github-request-id` headers;
//! every request is recorded ([`StandIn::requests`]) with the client's port,
//! so connection reuse can be measured. The server stops when the last
//! clone of the [`StandIn`] is dropped, or on [`StandIn::shutdown`].

mod apps;
mod checks;
mod hooks;
pub mod hud;
pub mod issuer;
mod jwt;
pub mod moto;
mod repos;
mod runs;
mod secondary;
mod server;
mod state;
mod util;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use hooks::{HookDeliveryEntry, HookDeliverySeed, RedeliveryRequest, HOOK_RETENTION};
pub use secondary::{SecondaryLimit, SecondaryLimits};
use state::Shared;

/// How to start a [`StandIn`].
#[derive(Debug, Clone)]
pub struct StandInOptions {
    /// The App's ID (`iss` of its JWTs).
    pub app_id: u64,
    /// Lifetime of minted installation tokens (GitHub: 1 hour).
    pub token_ttl: Duration,
    /// Delay added before answering every request.
    pub latency: Duration,
}

impl Default for StandInOptions {
    fn default() -> Self {
        StandInOptions { app_id: 424_242, token_ttl: Duration::from_secs(3600), latency: Duration::ZERO }
    }
}

/// A failure to answer a dispatch with instead of success (see [`StandIn::inject`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// That status (500, 502, 503, ...) with a JSON message.
    ServerError(u16),
    /// 403 with `Retry-After` and "You have exceeded a secondary rate limit...".
    SecondaryRateLimit { retry_after_s: u64 },
    /// `status` (403 or 429) with "You have exceeded a secondary rate
    /// limit..." and neither `Retry-After` nor `x-ratelimit-remaining: 0`
    /// (the usual `x-ratelimit-*` of the call), which GitHub also answers:
    /// the client must then wait at least one minute (GitHub docs, "Rate
    /// limits for the REST API" → "Exceeding the rate limit").
    SecondaryRateLimitNoHint { status: u16 },
    /// 429 with `x-ratelimit-remaining: 0` and `x-ratelimit-reset` = now + `reset_in_s`.
    PrimaryRateLimit { reset_in_s: u64 },
    /// The same primary rate limit answered as 403, which GitHub also does.
    PrimaryRateLimitForbidden { reset_in_s: u64 },
    /// 422 "Validation Failed".
    Unprocessable,
    /// Sleeps that long, then 504 "We couldn't respond to your request in time...".
    Timeout(Duration),
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthKind {
    /// No `Authorization` header.
    None,
    /// A valid App JWT.
    AppJwt,
    /// A live installation token.
    InstallationToken,
    /// Anything else: a refused JWT, an unknown or expired token, another scheme.
    Invalid,
}

/// One request the stand-in answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    pub auth: AuthKind,
    /// The installation of the token used, if an installation token was used.
    pub installation_id: Option<u64>,
    /// `owner/repo` for `/repos/{owner}/{repo}/...` paths, as written in the path.
    pub repo: Option<String>,
    /// When the request arrived.
    pub at: Instant,
    /// `at` in milliseconds since the stand-in started.
    pub at_ms: u64,
    /// Time from arrival to the answer (latency and faults included).
    pub duration: Duration,
    /// The client's TCP port: one port per connection, so equal ports mean a reused connection.
    pub peer_port: u16,
    /// `HTTP/1.1`, or `HTTP/2.0` (a client speaking HTTP/2 with prior knowledge).
    pub http_version: http::Version,
    pub request_id: String,
}

/// One accepted (204) `repository_dispatch`.
#[derive(Debug, Clone)]
pub struct RecordedDispatch {
    /// `owner/repo` as written in the path.
    pub repo: String,
    pub event_type: String,
    /// The request body as sent (`event_type`, `client_payload`).
    pub body: RecordedBody,
    /// The installation of the token used.
    pub installation_id: u64,
    /// When the request reached the stand-in (before [`StandInOptions::latency`]).
    pub arrived: Instant,
    /// When it was accepted (after the latency).
    pub at: Instant,
    pub at_ms: u64,
}

/// A request body as it arrived, read as JSON when first looked at (a
/// load run records thousands of 28 KB bodies a second and reads one field
/// of each). Derefs to the [`serde_json::Value`] (`Null` if the text is not
/// JSON, which the stand-in never records).
#[derive(Clone)]
pub struct RecordedBody {
    raw: bytes::Bytes,
    value: std::sync::OnceLock<serde_json::Value>,
}

impl RecordedBody {
    pub(crate) fn new(raw: bytes::Bytes) -> Self {
        Self { raw, value: std::sync::OnceLock::new() }
    }

    /// The bytes as sent.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The body as JSON.
    pub fn value(&self) -> &serde_json::Value {
        self.value.get_or_init(|| serde_json::from_slice(&self.raw).unwrap_or_default())
    }
}

impl std::ops::Deref for RecordedBody {
    type Target = serde_json::Value;
    fn deref(&self) -> &serde_json::Value {
        self.value()
    }
}

impl std::fmt::Debug for RecordedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value().fmt(f)
    }
}

impl PartialEq<serde_json::Value> for RecordedBody {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.value() == other
    }
}

/// A check run as the stand-in holds it after its create and updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCheckRun {
    pub id: u64,
    /// `owner/repo` as written in the create path.
    pub repo: String,
    /// The installation of the token that created it.
    pub installation_id: u64,
    pub name: String,
    /// Lower-case 40-hex SHA.
    pub head_sha: String,
    /// `queued` (GitHub's default), `in_progress`, `completed`, ...
    pub status: String,
    pub conclusion: Option<String>,
    pub details_url: Option<String>,
    pub external_id: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub output_title: Option<String>,
    pub output_summary: Option<String>,
    /// Accepted `PATCH`es so far.
    pub updates: u32,
    /// The check suite GitHub put it in: a check run created by the App
    /// joins the App's check suite of its head SHA, created with the first
    /// one ("Create a check run"; one suite per App, repository and SHA).
    /// See [`StandIn::check_suite_id`].
    pub check_suite_id: u64,
}

/// A workflow run as the stand-in holds it (what
/// `GET /repos/{o}/{r}/actions/runs/{run_id}` would show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowRunState {
    /// `queued`, `in_progress`, `completed`, ... (GitHub's run statuses).
    pub status: String,
    /// Set when `status` is `completed` (`success`, `failure`, `cancelled`, ...).
    pub conclusion: Option<String>,
    /// 1 for the first attempt; each accepted re-run adds one.
    pub run_attempt: u32,
}

/// One re-run or cancel request on a workflow run that passed the token
/// checks (a live installation token covering the repository, with
/// `actions: write`), whatever it was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRunRequest {
    /// `owner/repo` as written in the path.
    pub repo: String,
    /// `rerun`, `rerun-failed-jobs` or `cancel` (the last path segment).
    pub kind: String,
    pub run_id: u64,
    /// The HTTP status answered (201, 202, 403, 404, 409, or an injected fault's).
    pub status: u16,
    /// The installation of the token used.
    pub installation_id: u64,
    pub at: Instant,
    pub at_ms: u64,
}

/// A running stand-in. Clones share one server.
#[derive(Clone)]
pub struct StandIn {
    shared: Arc<Shared>,
    server: Arc<Server>,
}

/// Owns the stop signal: dropping the last handle drops the sender, which
/// stops the server.
struct Server {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    addr: SocketAddr,
}

impl StandIn {
    /// Generates the App key, binds `127.0.0.1:0` and starts serving on a tokio task.
    pub async fn start(opts: StandInOptions) -> anyhow::Result<StandIn> {
        let key = tokio::task::spawn_blocking(jwt::AppKey::generate).await??;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(opts.app_id, key, format!("http://{addr}"), opts.token_ttl, opts.latency));
        let (stop, task) = server::spawn(listener, shared.clone());
        Ok(StandIn { shared, server: Arc::new(Server { stop, task: Mutex::new(Some(task)), addr }) })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn app_id(&self) -> u64 {
        self.shared.app_id
    }

    /// The App's client ID, which GitHub also accepts as a JWT's `iss`.
    pub fn client_id(&self) -> String {
        self.shared.client_id.clone()
    }

    /// The App's private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn private_key_pem(&self) -> String {
        self.shared.key.private_pem().to_owned()
    }

    /// Installs the App on `owner/repo`: one installation per owner, the
    /// repository added to it. Returns the installation id.
    pub fn install(&self, repo: &str) -> u64 {
        self.shared.world().install(repo)
    }

    /// Renames (or transfers, within the same installation) `old` to `new`:
    /// same repository id and installation; requests naming `old` are
    /// redirected as GitHub does (`GET .../installation` 301 to
    /// `/repositories/{id}/installation`, which answers like the new name;
    /// `POST .../dispatches` 307). Returns the repository's id; panics when
    /// `old` is not installed (a test bug).
    pub fn rename(&self, old: &str, new: &str) -> u64 {
        self.shared.world().rename(old, new).unwrap_or_else(|| panic!("{old} is not installed"))
    }

    /// Suspends the installation `repo` is in (its owner or the App's owner
    /// did): no token is minted for it, and its tokens are refused, 403
    /// "This installation has been suspended".
    pub fn suspend(&self, repo: &str) {
        self.shared.world().suspend(repo, true)
    }

    /// Lifts [`StandIn::suspend`].
    pub fn unsuspend(&self, repo: &str) {
        self.shared.world().suspend(repo, false)
    }

    /// Archives `repo` (`archived = false`: unarchives it): dispatches to
    /// it are refused 403 "Repository was archived so is read-only.".
    pub fn set_archived(&self, repo: &str, archived: bool) {
        let lower = repo.to_ascii_lowercase();
        let mut world = self.shared.world();
        if archived {
            world.archived.insert(lower);
        } else {
            world.archived.remove(&lower);
        }
    }

    /// Removes `owner/repo` from its installation; tokens stop reaching it.
    pub fn uninstall(&self, repo: &str) {
        self.shared.world().uninstall(repo)
    }

    /// Answers for `repo` as for a private repository (404 where a public
    /// one gets 403) or a public one (the default).
    pub fn set_private(&self, repo: &str, private: bool) {
        let mut world = self.shared.world();
        let lower = repo.to_ascii_lowercase();
        world.known.insert(lower.clone());
        if private {
            world.private.insert(lower);
        } else {
            world.private.remove(&lower);
        }
    }

    /// Stores a file served by the contents endpoint. `git_ref` may be a
    /// branch, tag or SHA (`refs/heads/` is dropped); requests without `ref`
    /// read branch `main`.
    pub fn put_file(&self, repo: &str, path: &str, git_ref: &str, contents: &[u8]) {
        let mut world = self.shared.world();
        let lower = repo.to_ascii_lowercase();
        world.known.insert(lower.clone());
        let key = (lower, state::normalize_path(path), state::normalize_ref(Some(git_ref)));
        world.files.insert(key, contents.to_vec());
    }

    /// Makes commit `sha` exist on `repo` (`GET /repos/{o}/{r}/commits/{sha}`).
    pub fn put_commit(&self, repo: &str, sha: &str) {
        let mut world = self.shared.world();
        let lower = repo.to_ascii_lowercase();
        world.known.insert(lower.clone());
        world.commits.insert((lower, sha.to_ascii_lowercase()));
    }

    /// Queues a fault for `repo` (case-insensitive): each valid dispatch to
    /// it (and each valid check-run create or update, workflow-run re-run or
    /// cancel on it) takes the oldest queued fault and answers with it;
    /// success comes only when the queue is empty.
    pub fn inject(&self, repo: &str, fault: Fault) {
        self.shared.world().faults.entry(repo.to_ascii_lowercase()).or_default().push_back(fault);
    }

    /// Faults still queued for `repo`.
    pub fn pending_faults(&self, repo: &str) -> usize {
        self.shared.world().faults.get(&repo.to_ascii_lowercase()).map_or(0, |q| q.len())
    }

    /// Delay added before answering every request from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.world().latency = latency;
    }

    /// The `x-ratelimit-limit` per identity and window (default 5000;
    /// reported, and enforced after [`Self::enforce_primary_limit`]).
    pub fn set_rate_limit(&self, limit: u64) {
        self.shared.world().rate_limit = limit;
    }

    /// GitHub's primary rate limit, enforced from now on (or not): a call
    /// by an identity (the App's JWT, or one installation's tokens) that
    /// has made [`Self::set_rate_limit`] calls in the current window is
    /// answered 403 "API rate limit exceeded for installation ID N." (or
    /// "for app ID N.") with `x-ratelimit-remaining: 0` and the window's
    /// `x-ratelimit-reset`, and not counted. `window` is the window's
    /// length (GitHub: an hour; whole seconds, at least 1, as the reset is
    /// in epoch seconds), for tests on a time scale.
    pub fn enforce_primary_limit(&self, enforce: bool, window: Duration) {
        let mut world = self.shared.world();
        world.enforce_primary = enforce;
        world.rate_window_s = window.as_secs().max(1);
    }

    /// Calls refused by the primary limit so far, by identity (`app`,
    /// `installation:<id>`).
    pub fn primary_refusals(&self) -> std::collections::HashMap<String, u64> {
        self.shared.world().primary_refused.clone()
    }

    /// Enforces GitHub's secondary rate limits from now on (`None`: stops;
    /// see [`SecondaryLimits`]): a request past one is answered 403 with
    /// GitHub's message, and `Retry-After` if [`SecondaryLimits::retry_after`].
    pub fn enforce_secondary_limits(&self, limits: Option<SecondaryLimits>) {
        self.shared.world().secondary.limits = limits;
    }

    /// Requests refused by each secondary limit so far.
    pub fn secondary_refusals(&self) -> std::collections::HashMap<SecondaryLimit, u64> {
        self.shared.world().secondary.refused.clone()
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.world().requests.clone()
    }

    /// Every accepted dispatch so far, oldest first.
    pub fn dispatches(&self) -> Vec<RecordedDispatch> {
        self.shared.world().dispatches.clone()
    }

    /// The check runs created on `repo` (case-insensitive), oldest first,
    /// as their last accepted update left them.
    pub fn check_runs(&self, repo: &str) -> Vec<RecordedCheckRun> {
        self.shared.world().check_runs.iter().filter(|r| r.repo.eq_ignore_ascii_case(repo)).cloned().collect()
    }

    /// The id of the App's check suite on `repo` (case-insensitive) for
    /// commit `head_sha` (any case): the suite every check run the App
    /// creates on that commit joins. `None` before the first check run on
    /// that commit. Ids are stable for the stand-in's life.
    pub fn check_suite_id(&self, repo: &str, head_sha: &str) -> Option<u64> {
        let key = (repo.to_ascii_lowercase(), head_sha.to_ascii_lowercase());
        self.shared.world().check_suites.get(&key).copied()
    }

    /// Puts workflow run `run_id` on `repo` (replacing one with that id),
    /// at attempt 1. `status` is one of GitHub's run statuses: `queued`,
    /// `in_progress`, `completed`, `waiting`, `requested` or `pending`
    /// (panics otherwise, to catch typos in tests); `conclusion` goes with
    /// `completed` (`success`, `failure`, `cancelled`, ...).
    pub fn add_workflow_run(&self, repo: &str, run_id: u64, status: &str, conclusion: Option<&str>) {
        assert!(runs::RUN_STATUSES.contains(&status), "not a GitHub workflow run status: {status:?}");
        let mut world = self.shared.world();
        let lower = repo.to_ascii_lowercase();
        world.known.insert(lower.clone());
        let run =
            WorkflowRunState { status: status.to_owned(), conclusion: conclusion.map(str::to_owned), run_attempt: 1 };
        world.workflow_runs.insert((lower, run_id), run);
    }

    /// Workflow run `run_id` of `repo` (case-insensitive) as re-runs and
    /// cancels left it, or `None` when it was never put.
    pub fn workflow_run(&self, repo: &str, run_id: u64) -> Option<WorkflowRunState> {
        self.shared.world().workflow_runs.get(&(repo.to_ascii_lowercase(), run_id)).cloned()
    }

    /// The re-run and cancel requests on `repo` (case-insensitive) that
    /// passed the token checks, oldest first, with what they were answered.
    pub fn run_requests(&self, repo: &str) -> Vec<RecordedRunRequest> {
        self.shared.world().run_requests.iter().filter(|r| r.repo.eq_ignore_ascii_case(repo)).cloned().collect()
    }

    /// Requests with `method` (any case) whose path starts with `path_prefix`.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.shared
            .world()
            .requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.starts_with(path_prefix))
            .count()
    }

    /// Moves out the requests and dispatches recorded so far, oldest first,
    /// leaving none: a long load run reads them in slices instead of copying
    /// every one on each look (each dispatch holds its whole body).
    pub fn take_records(&self) -> (Vec<RecordedRequest>, Vec<RecordedDispatch>) {
        let mut world = self.shared.world();
        (std::mem::take(&mut world.requests), std::mem::take(&mut world.dispatches))
    }

    /// Forgets recorded requests, dispatches and run requests
    /// (installations, tokens, files, faults, check runs and workflow runs
    /// stay). For long runs, so the records stay small.
    pub fn clear_records(&self) {
        let mut world = self.shared.world();
        world.requests.clear();
        world.dispatches.clear();
        world.run_requests.clear();
    }

    /// Stops the server and waits (at most 5 s) for it to finish.
    /// Requests still in flight are answered first.
    pub async fn shutdown(&self) {
        let _ = self.server.stop.send(true);
        let task = self.server.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn")
            .field("base_url", &self.shared.base_url)
            .field("app_id", &self.shared.app_id)
            .finish_non_exhaustive()
    }
}
