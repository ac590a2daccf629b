//! `POST /github/callback`: downstream CI reports a job's state with an OIDC
//! token (`Authorization: Bearer <JWT>`). Answers:
//! - 401 bad token (signature, algorithm, issuer, audience, time, replayed `jti`);
//! - 403 identity not allowed (unmapped Buildkite pipeline or a required
//!   Buildkite claim not met, a GitHub repository re-created under another
//!   `repository_id`), or a GitHub Actions token of a run that may not
//!   report (`event_name` other than `repository_dispatch`, or `schedule` /
//!   `workflow_dispatch` for `nightly` / `periodic`; `ref` other than the
//!   repository's default branch: [`crcr_core::oidc::GitHubRunPolicy`]), naming the claim;
//! - 200 `{"ok": true, "status": "ignored", "reason": "..."}` for a valid
//!   token of a repository that is not in the allowlist or is L1: nothing is
//!   enqueued (metric `CallbacksIgnored`). The Python relay answers these so
//!   (`_verify_access` / `handle` in pytorch/test-infra
//!   `aws/lambda/cross_repo_ci_relay/callback/callback_handler.py`) and the
//!   callback action fails the downstream step on a 4xx, so a repository
//!   whose level changes keeps green CI;
//! - 429 over the per-repository rate limit (default 100/min), with `Retry-After`;
//! - 400 a body that breaks the schema (the error names the field);
//! - 409 a lifecycle violation knowable now (never dispatched there, repeated
//!   `in_progress`, `completed` without `in_progress`, repeated `completed`);
//! - 422 `{"error": "unknown_commit", ...}` a `nightly` / `periodic` callback
//!   naming a commit SHA the upstream repository does not have (looked up
//!   through [`CallbackState::commits`], cached; when GitHub cannot answer
//!   within [`COMMIT_CHECK_TIMEOUT`] the callback is accepted and the
//!   reconciler checks again);
//! - 202 durably enqueued for the reconciler; 503 when the queue or store is
//!   down, or with `Retry-After` (seconds) while the issuer's keys cannot be
//!   fetched (the relay fetches them again on the first callback after it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use serde_json::value::RawValue;

use crcr_core::allowlist::AllowlistProvider;
use crcr_core::callback;
use crcr_core::domain::{Level, RepoFullName};
use crcr_core::lifecycle::JobStore;
use crcr_core::message::{CallbackV1, QueueMessage};
use crcr_core::oidc::{bearer_token, body_digest, OidcVerifier};
use crcr_core::ports::{Clock, CommitLookup, DispatchStore, QueueSend, StoreError};

/// Callback bodies are small (a client_payload is at most 65,535 characters).
pub const MAX_CALLBACK_BYTES: usize = 1024 * 1024;

/// How long the request-time commit check of a `nightly` / `periodic`
/// callback may take; past it the callback is accepted (202) as when GitHub
/// answers with an error, and the reconciler checks again. The callback
/// action gives the whole request 10 s (`MAX_TIME`, curl `--max-time`, in
/// pytorch/test-infra `.github/actions/cross-repo-ci-relay-callback/report_callback.py`).
pub const COMMIT_CHECK_TIMEOUT: Duration = Duration::from_secs(4);

pub use crcr_core::ports::RateLimiter;

/// Fixed one-minute windows in this process: right for `crcr serve` (one
/// process); Lambda instances need a shared counter.
pub struct InMemoryRateLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<String, (i64, u32)>>,
}

impl InMemoryRateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute, windows: Mutex::new(HashMap::new()) }
    }
}

#[async_trait]
impl RateLimiter for InMemoryRateLimiter {
    async fn hit(&self, repo: &str, now_ms: i64) -> Result<Option<Duration>, StoreError> {
        let window = now_ms / 60_000;
        let mut w = self.windows.lock().expect("rate limiter lock");
        w.retain(|_, (win, _)| *win >= window);
        let e = w.entry(repo.to_owned()).or_insert((window, 0));
        e.1 += 1;
        Ok((e.1 > self.per_minute).then(|| Duration::from_millis((60_000 - now_ms % 60_000) as u64)))
    }
}

/// What the callback route needs.
pub struct CallbackState {
    pub verifier: Arc<OidcVerifier>,
    pub allowlist: Arc<AllowlistProvider>,
    pub dispatches: Arc<dyn DispatchStore>,
    pub jobs: Arc<dyn JobStore>,
    /// The reconcile queue.
    pub queue: Arc<dyn QueueSend>,
    pub rate: Arc<dyn RateLimiter>,
    pub clock: Arc<dyn Clock>,
    /// Commit existence for `nightly` / `periodic` callbacks, cached
    /// ([`crcr_core::commits::CachedCommitLookup`]; share it with the reconciler).
    pub commits: Arc<dyn CommitLookup>,
    /// The upstream repository (`CRCR_UPSTREAM_REPO`) those commits must be on.
    pub upstream: RepoFullName,
}

/// `POST /github/callback`.
pub fn router(state: Arc<CallbackState>) -> Router {
    Router::new()
        .route("/github/callback", post(callback))
        // The callback action's default `callback-url` ends in a slash (its
        // report_callback.py strips it; a workflow that curls it may not).
        .route("/github/callback/", post(callback))
        .layer(DefaultBodyLimit::max(MAX_CALLBACK_BYTES))
        .with_state(state)
}

fn answer(status: StatusCode, error: &str, reason: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": error, "reason": reason.to_string()}))).into_response()
}

async fn callback(State(st): State<Arc<CallbackState>>, headers: HeaderMap, body: Bytes) -> Response {
    let reject = |status: StatusCode, code: &'static str, reason: String| {
        tracing::warn!(%reason, code, metric = "callback_rejections", "callback refused");
        ::metrics::counter!(crcr_core::metrics::CALLBACK_REJECTIONS, "reason" => code).increment(1);
        answer(status, code, reason)
    };
    let token = match bearer_token(headers.get(http::header::AUTHORIZATION)) {
        Ok(t) => t,
        Err(e) => return reject(e.status(), e.code(), e.to_string()),
    };
    let identity = match st.verifier.verify(token, &body_digest(&body)).await {
        Ok(i) => i,
        Err(e) => {
            let mut res = reject(e.status(), e.code(), e.to_string());
            if let Some(wait) = e.retry_after() {
                res.headers_mut().insert("retry-after", wait.as_secs().max(1).into());
            }
            return res;
        }
    };
    let repo = identity.repo.clone();
    let allowlist = match st.allowlist.current().await {
        Ok(a) => a,
        Err(e) => return reject(StatusCode::SERVICE_UNAVAILABLE, "allowlist_unavailable", e.to_string()),
    };
    // Ignored, not refused: the Python relay's `_verify_access` / `handle`
    // (callback/callback_handler.py) answer 200 {"ok": true, "status": "ignored"}.
    let ignore = |code: &'static str, reason: String| {
        tracing::info!(%repo, %reason, code, metric = "callbacks_ignored", "callback ignored");
        ::metrics::counter!(crcr_core::metrics::CALLBACKS_IGNORED, "reason" => code).increment(1);
        (StatusCode::OK, Json(json!({"ok": true, "status": "ignored", "reason": reason}))).into_response()
    };
    let level = match allowlist.get(&repo) {
        None => return ignore("not_allowlisted", format!("{repo} is not in the allowlist")),
        Some(e) if e.level < Level::L2 => {
            return ignore("level", format!("{repo} is {}: results are taken from L2 and higher", e.level))
        }
        Some(e) => e.level,
    };
    match st.rate.hit(repo.key(), st.clock.now_ms()).await {
        Ok(None) => {}
        Ok(Some(wait)) => {
            let mut res = reject(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{repo} is over its callback rate limit"),
            );
            res.headers_mut().insert("retry-after", wait.as_secs().max(1).into());
            return res;
        }
        Err(e) => return reject(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
    }
    let cb = match callback::parse(&body) {
        Ok((cb, _)) => cb,
        Err(e) => return reject(StatusCode::BAD_REQUEST, "bad_body", e.to_string()),
    };
    if let Err(e) = st.verifier.check_run(&identity, cb.kind == callback::CallbackKind::Scheduled) {
        return reject(e.status(), e.code(), e.to_string());
    }
    match callback::precheck(&cb, &repo, st.dispatches.as_ref(), st.jobs.as_ref()).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return reject(StatusCode::CONFLICT, "lifecycle", reason),
        Err(e) => return reject(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
    }
    if cb.kind == callback::CallbackKind::Scheduled {
        let sha = cb.delivery_id.as_str();
        match tokio::time::timeout(COMMIT_CHECK_TIMEOUT, st.commits.commit_exists(&st.upstream, sha)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                return reject(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_commit",
                    format!("commit {sha} does not exist on {}", st.upstream),
                )
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, %sha, "could not check the commit on GitHub; accepting the callback")
            }
            Err(_) => tracing::warn!(%sha, timeout_s = COMMIT_CHECK_TIMEOUT.as_secs(),
                "GitHub did not answer the commit check in time; accepting the callback"),
        }
    }
    let raw = match std::str::from_utf8(&body).ok().and_then(|s| RawValue::from_string(s.to_owned()).ok()) {
        Some(r) => r,
        None => return reject(StatusCode::BAD_REQUEST, "bad_body", "body is not UTF-8 JSON".into()),
    };
    let message = QueueMessage::CallbackV1(CallbackV1 {
        received_at_ms: st.clock.now_ms(),
        repo: repo.clone(),
        level,
        issuer: identity.issuer.as_str().to_owned(),
        body: raw,
    });
    match st.queue.send(&message.encode()).await {
        Ok(message_id) => {
            tracing::info!(delivery_id = %cb.delivery_id, %repo, status = cb.status.as_str(), run_id = cb.run_id,
                job = %cb.job_name, metric = "callbacks", outcome = "accepted", "callback accepted");
            ::metrics::counter!(crcr_core::metrics::CALLBACKS_ACCEPTED, "status" => cb.status.as_str()).increment(1);
            (StatusCode::ACCEPTED, Json(json!({"delivery_id": cb.delivery_id, "message_id": message_id})))
                .into_response()
        }
        Err(e) => reject(StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", e.to_string()),
    }
}
