//! The HTTP side of the stand-in: the router, the layer every request goes
//! through (authentication, latency, rate-limit and request-id headers,
//! recording), GitHub-shaped error bodies and the authorization rules the
//! handlers share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::serve::ListenerExt as _;
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::jwt::{self, Rejection};
use super::state::Shared;
use super::{apps, checks, hooks, repos, runs, util, AuthKind, RecordedRequest};

pub(crate) const DOC_REST: &str = "https://docs.github.com/rest";

/// Starts serving `listener`; the server stops when the returned sender
/// says `true` or is dropped.
pub(crate) fn spawn(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (stop, mut stopped) = watch::channel(false);
    let app = router(shared);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "GitHub stand-in server ended with an error");
        }
    });
    (stop, task)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/repos/{owner}/{repo}/installation", get(apps::repo_installation))
        .route("/repositories/{id}/installation", get(apps::repo_installation_by_id))
        .route("/app/installations/{id}/access_tokens", post(apps::create_token))
        .route("/app/hook/deliveries", get(hooks::list))
        .route("/app/hook/deliveries/{delivery_id}/attempts", post(hooks::redeliver))
        .route("/repos/{owner}/{repo}/dispatches", post(repos::dispatch))
        .route("/repos/{owner}/{repo}/contents/{*path}", get(repos::contents))
        .route("/repos/{owner}/{repo}/commits/{sha}", get(repos::commit))
        .route("/repos/{owner}/{repo}/check-runs", post(checks::create))
        .route("/repos/{owner}/{repo}/check-runs/{id}", patch(checks::update))
        .route("/repos/{owner}/{repo}/check-suites/{check_suite_id}/check-runs", get(checks::list_in_suite))
        .route("/repos/{owner}/{repo}/actions/runs/{run_id}/{action}", post(runs::request))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), around))
        .with_state(shared)
}

pub(crate) async fn not_found() -> Response {
    gh_error(404, "Not Found", DOC_REST)
}

/// A GitHub error body: `{"message", "documentation_url", "status"}`.
pub(crate) fn gh_error(status: u16, message: &str, documentation_url: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"message": message, "documentation_url": documentation_url, "status": status.to_string()});
    (code, Json(body)).into_response()
}

/// How the request authenticated, resolved once by the layer and handed to
/// the handlers as a request extension.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    None,
    App,
    Installation {
        token: String,
        installation_id: u64,
    },
    /// Looked like a JWT; refused with this answer.
    BadJwt(Rejection),
    /// An unknown or expired token, or an unknown scheme.
    BadToken,
}

impl Auth {
    fn kind(&self) -> AuthKind {
        match self {
            Auth::None => AuthKind::None,
            Auth::App => AuthKind::AppJwt,
            Auth::Installation { .. } => AuthKind::InstallationToken,
            Auth::BadJwt(_) | Auth::BadToken => AuthKind::Invalid,
        }
    }
}

/// The request id chosen by the layer (error messages quote it).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub String);

/// When the request reached the stand-in, before its latency.
#[derive(Clone, Copy)]
pub(crate) struct Arrived(pub Instant);

fn resolve_auth(shared: &Shared, headers: &HeaderMap, now: Instant) -> Auth {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Auth::None;
    };
    let Ok(value) = value.to_str() else {
        return Auth::BadToken;
    };
    let (scheme, credential) = value.trim().split_once(' ').unwrap_or((value, ""));
    let credential = credential.trim();
    if !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")) || credential.is_empty() {
        return Auth::BadToken;
    }
    if jwt::looks_like_jwt(credential) {
        let now_s = util::epoch_now() as i64;
        return match jwt::check_app_jwt(credential, &shared.key, shared.app_id, &shared.client_id, now_s) {
            Ok(()) => Auth::App,
            Err(rejection) => Auth::BadJwt(rejection),
        };
    }
    match shared.world().live_token(credential, now) {
        Some(t) => Auth::Installation { token: credential.to_owned(), installation_id: t.installation_id },
        None => Auth::BadToken,
    }
}

/// The rule for endpoints that need an App JWT (`/app/...`, installation lookups).
#[allow(clippy::result_large_err)] // an axum Response, answered at once
pub(crate) fn require_app(auth: &Auth) -> Result<(), Response> {
    match auth {
        Auth::App => Ok(()),
        Auth::BadJwt(r) => Err(gh_error(r.status, r.message, DOC_REST)),
        // GitHub tries to read any other credential as a JWT here.
        Auth::Installation { .. } | Auth::BadToken => Err(gh_error(401, jwt::DECODE_FAILED, DOC_REST)),
        Auth::None => Err(gh_error(401, "Requires authentication", DOC_REST)),
    }
}

/// What a repository endpoint may do with the request's credential.
pub(crate) struct RepoAccess {
    pub installation_id: u64,
    pub permission: Option<String>,
}

/// The rule for repository endpoints: a live installation token that
/// reaches `repo`. Answers 401 without usable credentials, 404 for a
/// repository that does not exist or is private and out of reach, 403
/// "Resource not accessible by integration" for a public one out of reach.
#[allow(clippy::result_large_err)] // an axum Response, answered at once
pub(crate) fn require_installation(
    shared: &Shared,
    auth: &Auth,
    repo: &str,
    doc: &str,
) -> Result<RepoAccess, Response> {
    let token = match auth {
        Auth::Installation { token, .. } => token,
        Auth::None => return Err(gh_error(401, "Requires authentication", doc)),
        Auth::BadToken => return Err(gh_error(401, "Bad credentials", DOC_REST)),
        Auth::BadJwt(r) => return Err(gh_error(r.status, r.message, DOC_REST)),
        Auth::App => return Err(gh_error(403, NOT_ACCESSIBLE, doc)),
    };
    let world = shared.world();
    let lower = repo.to_ascii_lowercase();
    let exists = world.known.contains(&lower);
    let private = world.private.contains(&lower);
    // The token was live when the request arrived; it may have expired since (latency).
    let Some(t) = world.tokens.get(token) else {
        return Err(gh_error(401, "Bad credentials", DOC_REST));
    };
    // Tokens minted before a suspension stop working with it.
    if world.installation(t.installation_id).is_some_and(|i| i.suspended_at.is_some()) {
        return Err(gh_error(403, super::apps::SUSPENDED, doc));
    }
    if !world.token_covers(t, repo) {
        return Err(if !exists || private {
            gh_error(404, "Not Found", doc)
        } else {
            gh_error(403, NOT_ACCESSIBLE, doc)
        });
    }
    Ok(RepoAccess { installation_id: t.installation_id, permission: t.permissions.get("contents").cloned() })
}

pub(crate) const NOT_ACCESSIBLE: &str = "Resource not accessible by integration";

/// `owner/repo` of a `/repos/{owner}/{repo}/...` path.
fn repo_of_path(path: &str) -> Option<String> {
    let mut parts = path.strip_prefix("/repos/")?.split('/');
    let owner = parts.next().filter(|s| !s.is_empty())?;
    let name = parts.next().filter(|s| !s.is_empty())?;
    Some(format!("{owner}/{name}"))
}

/// The connection a request came on.
#[derive(Clone, Copy)]
struct Peer {
    /// The client's TCP port.
    port: u16,
    /// HTTP/1.1, or HTTP/2 (cleartext, prior knowledge: axum's server
    /// answers both on one port).
    version: axum::http::Version,
}

/// A request counted in flight by the secondary limits.
struct InFlight {
    shared: Arc<Shared>,
    identity: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.world().secondary.finish(&self.identity);
    }
}

/// Every request passes here: resolve the credential, wait the configured
/// latency, run the handler, add GitHub's headers, record.
async fn around(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let arrived = Instant::now();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let peer = Peer {
        port: req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(0, |c| c.0.port()),
        version: req.version(),
    };
    let auth = resolve_auth(&shared, req.headers(), arrived);
    // REST docs, "Getting started with the REST API" → "User agent": "All
    // API requests must include a valid User-Agent header. Requests with no
    // User-Agent header will be rejected." Their example sends an empty one
    // (`curl -IH 'User-Agent: ' https://api.github.com/meta`) and gets 403,
    // `Content-Type: text/html`, "Request forbidden by administrative rules.
    // Please make sure your request has a User-Agent header".
    if req.headers().get(header::USER_AGENT).is_none_or(|ua| ua.as_bytes().iter().all(u8::is_ascii_whitespace)) {
        let text = "Request forbidden by administrative rules. Please make sure your request has a User-Agent \
                    header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). \
                    Check https://developer.github.com for other possible causes.\n";
        let resp = (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/html")], text).into_response();
        let request_id = shared.world().next_request_id();
        return record(&shared, resp, method, path, query, &auth, arrived, peer, request_id);
    }
    let identity = match &auth {
        Auth::App => "app".to_owned(),
        Auth::Installation { installation_id, .. } => format!("installation:{installation_id}"),
        _ => format!("anonymous:{}", peer.port),
    };
    let cost = super::secondary::Cost::of(&method, &path);
    let (latency, request_id, admitted, retry_after, primary) = {
        let mut world = shared.world();
        let request_id = world.next_request_id();
        // GitHub's primary limit first: a refused call spends nothing else;
        // an admitted one counts from its arrival (as concurrent calls
        // are checked against it).
        let now_s = util::epoch_now();
        if let Some((limit, used, reset)) = world.primary_exhausted(&identity, now_s) {
            let mut resp = super::repos::primary_limit_exhausted(&auth, shared.app_id, limit, used, reset);
            if let Ok(v) = HeaderValue::from_str(&request_id) {
                resp.headers_mut().insert("x-github-request-id", v);
            }
            drop(world);
            return record(&shared, resp, method, path, query, &auth, arrived, peer, request_id);
        }
        let primary = world.count_call(&identity, now_s);
        let admitted = world.secondary.admit(&identity, &cost, arrived);
        let retry_after = world.secondary.limits.as_ref().is_some_and(|l| l.retry_after);
        (world.latency, request_id, admitted, retry_after, primary)
    };
    let mut resp = match admitted {
        Err((_, wait)) => {
            let retry_after_s =
                retry_after.then(|| wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).map(|s| s.max(1));
            super::repos::secondary_limit(403, &request_id, retry_after_s)
        }
        Ok(counted) => {
            // Counted in flight until answered, or dropped with the connection.
            let _in_flight = counted.then(|| InFlight { shared: shared.clone(), identity: identity.clone() });
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            req.extensions_mut().insert(auth.clone());
            req.extensions_mut().insert(RequestId(request_id.clone()));
            req.extensions_mut().insert(Arrived(arrived));
            next.run(req).await
        }
    };

    let (limit, remaining, used, reset) = primary;
    let headers = resp.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if !headers.contains_key(name) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    };
    set("x-ratelimit-limit", limit.to_string());
    set("x-ratelimit-remaining", remaining.to_string());
    set("x-ratelimit-used", used.to_string());
    set("x-ratelimit-reset", reset.to_string());
    set("x-ratelimit-resource", "core".to_owned());
    set("x-github-request-id", request_id.clone());
    set("x-github-media-type", "github.v3; format=json".to_owned());
    set("server", "github.com".to_owned());

    record(&shared, resp, method, path, query, &auth, arrived, peer, request_id)
}

/// Records an answered request (`StandIn::requests`) and returns its answer.
#[allow(clippy::too_many_arguments)]
fn record(
    shared: &Shared,
    resp: Response,
    method: String,
    path: String,
    query: Option<String>,
    auth: &Auth,
    arrived: Instant,
    peer: Peer,
    request_id: String,
) -> Response {
    let installation_id = match auth {
        Auth::Installation { installation_id, .. } => Some(*installation_id),
        _ => None,
    };
    let record = RecordedRequest {
        method,
        repo: repo_of_path(&path),
        path,
        query,
        status: resp.status().as_u16(),
        auth: auth.kind(),
        installation_id,
        at: arrived,
        at_ms: shared.ms_since_start(arrived),
        duration: arrived.elapsed(),
        peer_port: peer.port,
        http_version: peer.version,
        request_id,
    };
    shared.world().requests.push(record);
    resp
}

#[cfg(test)]
mod tests {
    use super::repo_of_path;

    #[test]
    fn repo_is_read_from_repository_paths_only() {
        assert_eq!(repo_of_path("/repos/Org/Repo/dispatches").as_deref(), Some("Org/Repo"));
        assert_eq!(repo_of_path("/repos/o/r").as_deref(), Some("o/r"));
        assert_eq!(repo_of_path("/repos/o"), None);
        assert_eq!(repo_of_path("/app/installations/1/access_tokens"), None);
    }
}
