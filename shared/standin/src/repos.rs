//! Repository endpoints (installation token required).
//!
//! - `POST /repos/{owner}/{repo}/dispatches`: token checks, then GitHub's
//!   body validation, then the faults queued for the repository (one per
//!   call), then 204 and a [`RecordedDispatch`].
//! - `GET /repos/{owner}/{repo}/contents/{path}?ref=R`: raw bytes for
//!   `Accept: application/vnd.github.raw` (or `.raw+json`, `.v3.raw`),
//!   otherwise GitHub's JSON with base64 `content`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::server::{gh_error, require_installation, Arrived, Auth, RequestId, NOT_ACCESSIBLE};
use super::state::{self, Shared};
use super::{util, Fault, RecordedBody, RecordedDispatch};

/// GitHub's answer to a write to an archived repository.
pub(crate) const ARCHIVED: &str = "Repository was archived so is read-only.";
const DOC_DISPATCH: &str = "https://docs.github.com/rest/repos/repos#create-a-repository-dispatch-event";
const DOC_CONTENTS: &str = "https://docs.github.com/rest/repos/contents#get-repository-content";
const DOC_COMMIT: &str = "https://docs.github.com/rest/commits/commits#get-a-commit";
const DOC_RATE_LIMITS: &str = "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api";
const DOC_SECONDARY: &str =
    "https://docs.github.com/free-pro-team@latest/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits";

/// GitHub's limits on a dispatch.
pub(crate) const MAX_EVENT_TYPE_CHARS: usize = 100;
pub(crate) const MAX_CLIENT_PAYLOAD_PROPERTIES: usize = 10;
pub(crate) const MAX_CLIENT_PAYLOAD_CHARS: usize = 65_535;

/// GitHub's checks of a dispatch body, in GitHub's order: JSON (400
/// "Problems parsing JSON"), the schema ([`validate_dispatch`], 422), then
/// `client_payload`'s size (422). `Ok(event_type)`, or
/// `Err((status, message))`.
///
/// Reads the body without building its value: a 28 KB payload costs one
/// pass ([`crcr_core::client_payload::github_json_len`]).
pub(crate) fn check_dispatch(body: &[u8]) -> Result<String, (u16, String)> {
    let request: BTreeMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|_| (400, "Problems parsing JSON".to_owned()))?;
    let payload_chars = validate_dispatch(&request).map_err(|message| (422, message))?;
    if payload_chars.is_some_and(|n| n > MAX_CLIENT_PAYLOAD_CHARS) {
        return Err((422, "client_payload is too large.".to_owned()));
    }
    Ok(request.get("event_type").and_then(|raw| serde_json::from_str(raw.get()).ok()).unwrap_or_default())
}

/// GitHub's schema check of a dispatch body (its top-level keys, each
/// value as sent): `Err(message)` for a 422, otherwise the characters of
/// `client_payload` as GitHub counts them ([`crcr_core::client_payload::github_json_len`]), if
/// there is one.
fn validate_dispatch(body: &BTreeMap<String, &RawValue>) -> Result<Option<usize>, String> {
    let mut errors = Vec::new();
    let parse = |raw: &RawValue| serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null);
    let unknown: Vec<&String> = body.keys().filter(|k| *k != "event_type" && *k != "client_payload").collect();
    match unknown.len() {
        0 => {}
        1 => errors.push(format!("\"{}\" is not a permitted key.", unknown[0])),
        _ => {
            let list: Vec<String> = unknown.iter().map(|k| format!("\"{k}\"")).collect();
            errors.push(format!("{} are not permitted keys.", list.join(", ")));
        }
    }
    match body.get("event_type").map(|raw| parse(raw)).as_ref() {
        None => errors.push("\"event_type\" wasn't supplied.".to_owned()),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n > MAX_EVENT_TYPE_CHARS {
                errors.push(format!("Only {MAX_EVENT_TYPE_CHARS} characters are allowed; {n} were supplied."));
            } else if n == 0 {
                errors.push("At least 1 character is required; 0 were supplied.".to_owned());
            }
        }
        Some(other) => {
            errors.push(format!("For 'properties/event_type', {} is not a string.", util::ruby_inspect(other)))
        }
    }
    let mut payload_chars = None;
    if let Some(raw) = body.get("client_payload") {
        let shape =
            crcr_core::client_payload::github_json_len(raw.get()).map_err(|_| "Problems parsing JSON".to_owned())?;
        match shape.properties {
            Some(n) if n > MAX_CLIENT_PAYLOAD_PROPERTIES => errors.push(format!(
                "No more than {MAX_CLIENT_PAYLOAD_PROPERTIES} properties are allowed; {n} were supplied."
            )),
            Some(_) => payload_chars = Some(shape.chars),
            None => errors.push(format!(
                "For 'properties/client_payload', {} is not an object.",
                util::ruby_inspect(&parse(raw))
            )),
        }
    }
    if errors.is_empty() {
        Ok(payload_chars)
    } else {
        Err(format!("Invalid request.\n\n{}", errors.join("\n")))
    }
}

pub(crate) async fn dispatch(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Extension(Arrived(arrived)): Extension<Arrived>,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let repo = format!("{owner}/{name}");
    let moved = shared.world().moved_id(&repo);
    if let Some(id) = moved {
        return super::apps::moved(&shared, 307, &format!("/repositories/{id}/dispatches"));
    }
    let access = match require_installation(&shared, &auth, &repo, DOC_DISPATCH) {
        Ok(access) => access,
        Err(resp) => return resp,
    };
    if access.permission.as_deref() != Some("write") && access.permission.as_deref() != Some("admin") {
        return gh_error(403, NOT_ACCESSIBLE, DOC_DISPATCH);
    }
    // An archived repository is read-only: GitHub answers writes 403
    // "Repository was archived so is read-only." (as gh and hub4j quote it,
    // cli/cli#7176, hub4j/github-api#473; "Archiving repositories").
    if shared.world().archived.contains(&repo.to_ascii_lowercase()) {
        return gh_error(403, ARCHIVED, DOC_DISPATCH);
    }
    let event_type = match check_dispatch(&body) {
        Ok(event_type) => event_type,
        Err((status, message)) => return gh_error(status, &message, DOC_DISPATCH),
    };

    let fault = shared.world().faults.get_mut(&repo.to_ascii_lowercase()).and_then(|q| q.pop_front());
    if let Some(fault) = fault {
        return fault_response(fault, access.installation_id, &request_id).await;
    }

    let at = Instant::now();
    let record = RecordedDispatch {
        repo,
        event_type,
        body: RecordedBody::new(body),
        installation_id: access.installation_id,
        arrived,
        at,
        at_ms: shared.ms_since_start(at),
    };
    shared.world().dispatches.push(record);
    StatusCode::NO_CONTENT.into_response()
}

/// GitHub's answer past a secondary rate limit: `status` (403 or 429) with
/// its message, and `Retry-After` when given (GitHub docs, "Rate limits for
/// the REST API" → "Exceeding the rate limit").
pub(crate) fn secondary_limit(status: u16, request_id: &str, retry_after_s: Option<u64>) -> Response {
    let message = format!(
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. \
         If you reach out to GitHub Support for help, please include the request ID {request_id}."
    );
    let mut resp = gh_error(status, &message, DOC_SECONDARY);
    if let Some(s) = retry_after_s {
        insert(&mut resp, "retry-after", s.to_string());
    }
    resp
}

/// The answer GitHub gives for a fault.
pub(crate) async fn fault_response(fault: Fault, installation_id: u64, request_id: &str) -> Response {
    match fault {
        Fault::ServerError(code) => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = match code.as_u16() {
                503 => "Service Unavailable",
                _ => "Server Error",
            };
            (code, Json(json!({"message": message}))).into_response()
        }
        Fault::SecondaryRateLimit { retry_after_s } => secondary_limit(403, request_id, Some(retry_after_s)),
        Fault::SecondaryRateLimitNoHint { status } => {
            secondary_limit(if status == 429 { 429 } else { 403 }, request_id, None)
        }
        Fault::PrimaryRateLimit { reset_in_s } => primary_limit(429, reset_in_s, installation_id),
        Fault::PrimaryRateLimitForbidden { reset_in_s } => primary_limit(403, reset_in_s, installation_id),
        Fault::Unprocessable => gh_error(422, "Validation Failed", DOC_DISPATCH),
        Fault::Timeout(wait) => {
            tokio::time::sleep(wait).await;
            let message = "We couldn't respond to your request in time. Sorry about that. \
                           Please try resubmitting your request and contact us if the problem persists.";
            (StatusCode::GATEWAY_TIMEOUT, Json(json!({"message": message}))).into_response()
        }
    }
}

fn primary_limit(status: u16, reset_in_s: u64, installation_id: u64) -> Response {
    let who = format!("installation ID {installation_id}");
    primary_limit_answer(status, &who, util::epoch_now() + reset_in_s)
}

/// GitHub's answer to a call past the identity's primary rate limit
/// (GitHub docs, "Rate limits for the REST API" → "Exceeding the rate
/// limit": "If you exceed your primary rate limit, you will receive a 403
/// or 429 response, and the `x-ratelimit-remaining` header will be 0";
/// the messages are GitHub's, as quoted by octokit users: "API rate limit
/// exceeded for installation ID N." / "... for app ID N."), `who` being
/// `installation ID N` or `app ID N`, the window ending at `reset` (Unix s).
fn primary_limit_answer(status: u16, who: &str, reset: u64) -> Response {
    let mut resp = gh_error(status, &format!("API rate limit exceeded for {who}."), DOC_RATE_LIMITS);
    insert(&mut resp, "x-ratelimit-remaining", "0".to_owned());
    insert(&mut resp, "x-ratelimit-reset", reset.to_string());
    resp
}

/// [`primary_limit_answer`] for a call the enforced limit refuses
/// (`StandIn::enforce_primary_limit`), with the window's other headers.
pub(crate) fn primary_limit_exhausted(
    auth: &super::server::Auth,
    app_id: u64,
    limit: u64,
    used: u64,
    reset: u64,
) -> Response {
    let who = match auth {
        super::server::Auth::Installation { installation_id, .. } => format!("installation ID {installation_id}"),
        super::server::Auth::App => format!("app ID {app_id}"),
        _ => "this client".to_owned(),
    };
    let mut resp = primary_limit_answer(403, &who, reset);
    insert(&mut resp, "x-ratelimit-limit", limit.to_string());
    insert(&mut resp, "x-ratelimit-used", used.to_string());
    insert(&mut resp, "x-ratelimit-resource", "core".to_owned());
    resp
}

fn insert(resp: &mut Response, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut().insert(name, v);
    }
}

/// `GET /repos/{owner}/{repo}/commits/{ref}` for a full SHA: 200 with the
/// commit's `sha` when it exists, 422 "No commit found for SHA: <sha>" when
/// it does not (GitHub's answer), 404 without access to the repository.
pub(crate) async fn commit(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Path((owner, name, sha)): Path<(String, String, String)>,
) -> Response {
    let repo = format!("{owner}/{name}");
    let access = match require_installation(&shared, &auth, &repo, DOC_COMMIT) {
        Ok(access) => access,
        Err(resp) => return resp,
    };
    if access.permission.as_deref().and_then(state::level).is_none() {
        return gh_error(403, NOT_ACCESSIBLE, DOC_COMMIT);
    }
    let exists = shared.world().commits.contains(&(repo.to_ascii_lowercase(), sha.to_ascii_lowercase()));
    if !exists {
        return gh_error(422, &format!("No commit found for SHA: {sha}"), DOC_COMMIT);
    }
    let api = &shared.base_url;
    Json(json!({"sha": sha.to_ascii_lowercase(), "url": format!("{api}/repos/{repo}/commits/{sha}"),
        "html_url": format!("https://github.com/{repo}/commit/{sha}")}))
    .into_response()
}

pub(crate) async fn contents(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Path((owner, name, path)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{owner}/{name}");
    let access = match require_installation(&shared, &auth, &repo, DOC_CONTENTS) {
        Ok(access) => access,
        Err(resp) => return resp,
    };
    if access.permission.as_deref().and_then(state::level).is_none() {
        return gh_error(403, NOT_ACCESSIBLE, DOC_CONTENTS);
    }
    let path = state::normalize_path(&path);
    let git_ref = state::normalize_ref(query.get("ref").map(String::as_str));
    let file = {
        let world = shared.world();
        world.files.get(&(repo.to_ascii_lowercase(), path.clone(), git_ref.clone())).cloned()
    };
    let Some(file) = file else {
        return gh_error(404, "Not Found", DOC_CONTENTS);
    };

    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("application/vnd.github.raw") || accept.contains("application/vnd.github.v3.raw") {
        let mut resp = Response::new(Body::from(file));
        insert(&mut resp, "content-type", "text/plain; charset=utf-8".to_owned());
        insert(&mut resp, "x-github-media-type", "github.raw; format=raw".to_owned());
        return resp;
    }

    let api = &shared.base_url;
    let sha = util::git_blob_sha(&file);
    let file_name = path.rsplit('/').next().unwrap_or(&path).to_owned();
    let self_url = format!("{api}/repos/{repo}/contents/{path}?ref={git_ref}");
    let html_url = format!("https://github.com/{repo}/blob/{git_ref}/{path}");
    let git_url = format!("{api}/repos/{repo}/git/blobs/{sha}");
    let body = json!({
        "type": "file",
        "encoding": "base64",
        "size": file.len(),
        "name": file_name,
        "path": path,
        "content": util::base64_wrapped(&file),
        "sha": sha,
        "url": self_url,
        "git_url": git_url,
        "html_url": html_url,
        "download_url": format!("https://raw.githubusercontent.com/{repo}/{git_ref}/{path}"),
        "_links": {"self": self_url, "git": git_url, "html": html_url},
    });
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::check_dispatch;
    use serde_json::{json, Value};

    fn check(v: Value) -> Result<(), String> {
        check_dispatch(v.to_string().as_bytes()).map(drop).map_err(|(status, message)| {
            assert_eq!(status, 422, "{message}");
            message
        })
    }

    #[test]
    fn dispatch_schema_messages() {
        assert_eq!(check(json!({"event_type": "x"})), Ok(()));
        assert_eq!(check(json!({"event_type": "x".repeat(100), "client_payload": {}})), Ok(()));
        assert_eq!(
            check(json!({"event_type": "x".repeat(101)})).unwrap_err(),
            "Invalid request.\n\nOnly 100 characters are allowed; 101 were supplied."
        );
        assert_eq!(check(json!({})).unwrap_err(), "Invalid request.\n\n\"event_type\" wasn't supplied.");
        assert_eq!(
            check(json!({"b": 1, "a": 2})).unwrap_err(),
            "Invalid request.\n\n\"a\", \"b\" are not permitted keys.\n\"event_type\" wasn't supplied."
        );
        let eleven: serde_json::Map<String, Value> = (0..11).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(
            check(json!({"event_type": "x", "client_payload": eleven})).unwrap_err(),
            "Invalid request.\n\nNo more than 10 properties are allowed; 11 were supplied."
        );
        assert_eq!(
            check(json!({"event_type": 5, "client_payload": null})).unwrap_err(),
            "Invalid request.\n\nFor 'properties/event_type', 5 is not a string.\nFor 'properties/client_payload', nil is not an object."
        );
    }
}
