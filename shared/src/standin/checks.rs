//! Check-run endpoints (installation token with `checks: write` required):
//!
//! - `POST /repos/{owner}/{repo}/check-runs`: 201 with the check run's `id`;
//! - `PATCH /repos/{owner}/{repo}/check-runs/{id}`: 200 (404 for an id not
//!   of that repository).
//!
//! Both validate the body as GitHub does ("Create a check run" / "Update a
//! check run", 422 with GitHub's messages): `name` required (create) and at
//! most [`crate::checks::MAX_NAME_CHARS`] characters, `head_sha` required
//! (create) and a full 40-hex SHA ("No commit found for SHA"), `status`
//! and `conclusion` among GitHub's values, `conclusion` required when
//! `status` is `completed` (and a `conclusion` alone completes the run),
//! `stale` refused (only GitHub sets it), `output.title` / `output.summary`
//! required in an `output`, `summary` / `text` at most 65,535 bytes. Then
//! the faults queued for the repository ([`super::StandIn::inject`]) are
//! answered, one per call, before the change is recorded.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::repos::fault_response;
use super::server::{gh_error, require_installation, Auth, RequestId, NOT_ACCESSIBLE};
use super::state::{self, Shared};
use super::{util, RecordedCheckRun};
use crate::checks::{MAX_NAME_CHARS, MAX_OUTPUT_BYTES};

const DOC_CREATE: &str = "https://docs.github.com/rest/checks/runs#create-a-check-run";
const DOC_UPDATE: &str = "https://docs.github.com/rest/checks/runs#update-a-check-run";

/// `status` values GitHub knows (`waiting`, `requested`, `pending`: GitHub Actions only).
const STATUSES: &[&str] = &["queued", "in_progress", "completed", "waiting", "requested", "pending"];
/// `conclusion` values GitHub knows.
const CONCLUSIONS: &[&str] =
    &["action_required", "cancelled", "failure", "neutral", "success", "skipped", "stale", "timed_out"];

fn member_error(field: &str, v: &Value, allowed: &[&str]) -> String {
    let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    format!("For 'properties/{field}', {} is not a member of [{}].", util::ruby_inspect(v), list.join(", "))
}

/// GitHub's validation of a create (`create`) or update body: `Err((status,
/// message))`.
pub(crate) fn validate(body: &Map<String, Value>, create: bool) -> Result<(), String> {
    let mut errors = Vec::new();
    match body.get("name") {
        None if create => errors.push("\"name\" wasn't supplied.".to_owned()),
        None => {}
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n > MAX_NAME_CHARS {
                errors.push(format!("Only {MAX_NAME_CHARS} characters are allowed; {n} were supplied."));
            } else if n == 0 {
                errors.push("At least 1 character is required; 0 were supplied.".to_owned());
            }
        }
        Some(other) => errors.push(format!("For 'properties/name', {} is not a string.", util::ruby_inspect(other))),
    }
    if create && !body.contains_key("head_sha") {
        errors.push("\"head_sha\" wasn't supplied.".to_owned());
    }
    let status = body.get("status");
    if let Some(s) = status {
        if !s.as_str().is_some_and(|s| STATUSES.contains(&s)) {
            errors.push(member_error("status", s, STATUSES));
        }
    }
    let conclusion = body.get("conclusion").filter(|c| !c.is_null());
    if let Some(c) = conclusion {
        if !c.as_str().is_some_and(|c| CONCLUSIONS.contains(&c)) {
            errors.push(member_error("conclusion", c, CONCLUSIONS));
        }
    }
    if status.and_then(Value::as_str) == Some("completed") && conclusion.is_none() {
        errors.push("\"conclusion\" wasn't supplied.".to_owned());
    }
    match body.get("output") {
        None => {}
        Some(Value::Object(out)) => {
            for field in ["title", "summary"] {
                if !out.contains_key(field) {
                    errors.push(format!("\"{field}\" wasn't supplied."));
                }
            }
            for field in ["summary", "text"] {
                if let Some(v) = out.get(field) {
                    match v.as_str() {
                        Some(s) if s.len() > MAX_OUTPUT_BYTES => errors.push(format!(
                            "Only {MAX_OUTPUT_BYTES} characters are allowed; {} were supplied.",
                            s.len()
                        )),
                        Some(_) => {}
                        None => {
                            errors.push(format!("For 'properties/{field}', {} is not a string.", util::ruby_inspect(v)))
                        }
                    }
                }
            }
        }
        Some(other) => errors.push(format!("For 'properties/output', {} is not an object.", util::ruby_inspect(other))),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("Invalid request.\n\n{}", errors.join("\n")))
    }
}

/// The checks a body passes after the schema: a 40-hex `head_sha`, no `stale`.
fn validate_values(body: &Map<String, Value>) -> Result<(), String> {
    if let Some(sha) = body.get("head_sha") {
        let s = sha.as_str().unwrap_or_default();
        if s.len() != 40 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "No commit found for SHA: {}",
                sha.as_str().map_or_else(|| sha.to_string(), str::to_owned)
            ));
        }
    }
    if body.get("conclusion").and_then(Value::as_str) == Some("stale") {
        return Err("Invalid request.\n\nYou cannot change a check run conclusion to stale, only GitHub can set this."
            .to_owned());
    }
    Ok(())
}

/// Token, body and faults, in GitHub's order; `Ok((body, installation id))`.
#[allow(clippy::result_large_err)] // an axum Response, answered at once
async fn admit(
    shared: &Shared,
    auth: &Auth,
    request_id: &str,
    repo: &str,
    body: &Bytes,
    create: bool,
) -> Result<(Map<String, Value>, u64), Response> {
    let doc = if create { DOC_CREATE } else { DOC_UPDATE };
    let access = require_installation(shared, auth, repo, doc)?;
    let can_write = match auth {
        Auth::Installation { token, .. } => shared
            .world()
            .tokens
            .get(token)
            .and_then(|t| t.permissions.get("checks"))
            .and_then(|p| state::level(p))
            .is_some_and(|l| l >= 2),
        _ => false,
    };
    if !can_write {
        return Err(gh_error(403, NOT_ACCESSIBLE, doc));
    }
    let request = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        _ => return Err(gh_error(400, "Problems parsing JSON", doc)),
    };
    if let Err(message) = validate(&request, create).and_then(|()| validate_values(&request)) {
        return Err(gh_error(422, &message, doc));
    }
    let fault = shared.world().faults.get_mut(&repo.to_ascii_lowercase()).and_then(|q| q.pop_front());
    if let Some(fault) = fault {
        return Err(fault_response(fault, access.installation_id, request_id).await);
    }
    Ok((request, access.installation_id))
}

fn text(body: &Map<String, Value>, field: &str) -> Option<String> {
    body.get(field).and_then(Value::as_str).map(str::to_owned)
}

/// Applies a body's fields to a recorded check run (a conclusion completes it).
fn apply(run: &mut RecordedCheckRun, body: &Map<String, Value>) {
    if let Some(v) = text(body, "name") {
        run.name = v;
    }
    if let Some(v) = text(body, "details_url") {
        run.details_url = Some(v);
    }
    if let Some(v) = text(body, "external_id") {
        run.external_id = Some(v);
    }
    if let Some(v) = text(body, "status") {
        run.status = v;
    }
    if let Some(v) = text(body, "conclusion") {
        run.conclusion = Some(v);
        run.status = "completed".into();
    }
    if let Some(v) = text(body, "started_at") {
        run.started_at = Some(v);
    }
    if let Some(v) = text(body, "completed_at") {
        run.completed_at = Some(v);
    }
    if let Some(out) = body.get("output").and_then(Value::as_object) {
        run.output_title = out.get("title").and_then(Value::as_str).map(str::to_owned);
        run.output_summary = out.get("summary").and_then(Value::as_str).map(str::to_owned);
    }
}

fn answer(status: StatusCode, shared: &Shared, run: &RecordedCheckRun) -> Response {
    let url = format!("{}/repos/{}/check-runs/{}", shared.base_url, run.repo, run.id);
    let body = json!({"id": run.id, "head_sha": run.head_sha, "name": run.name, "status": run.status,
        "conclusion": run.conclusion, "external_id": run.external_id, "details_url": run.details_url, "url": url,
        "started_at": run.started_at, "completed_at": run.completed_at,
        "output": {"title": run.output_title, "summary": run.output_summary}});
    (status, Json(body)).into_response()
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path((owner, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let repo = format!("{owner}/{name}");
    let (request, installation_id) = match admit(&shared, &auth, &request_id, &repo, &body, true).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let mut world = shared.world();
    let id = 1_000_000 + world.check_runs.len() as u64;
    let mut run = RecordedCheckRun {
        id,
        repo,
        installation_id,
        name: String::new(),
        head_sha: text(&request, "head_sha").unwrap_or_default().to_ascii_lowercase(),
        status: "queued".into(),
        conclusion: None,
        details_url: None,
        external_id: None,
        started_at: None,
        completed_at: None,
        output_title: None,
        output_summary: None,
        updates: 0,
    };
    apply(&mut run, &request);
    world.check_runs.push(run.clone());
    drop(world);
    answer(StatusCode::CREATED, &shared, &run)
}

pub(crate) async fn update(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path((owner, name, id)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let repo = format!("{owner}/{name}");
    let (request, _) = match admit(&shared, &auth, &request_id, &repo, &body, false).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let mut world = shared.world();
    let found = id
        .parse::<u64>()
        .ok()
        .and_then(|id| world.check_runs.iter_mut().find(|r| r.id == id && r.repo.eq_ignore_ascii_case(&repo)));
    let Some(run) = found else {
        drop(world);
        return gh_error(404, "Not Found", DOC_UPDATE);
    };
    apply(run, &request);
    run.updates += 1;
    let run = run.clone();
    drop(world);
    answer(StatusCode::OK, &shared, &run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: Value, create: bool) -> Result<(), String> {
        let map = body.as_object().unwrap().clone();
        validate(&map, create).and_then(|()| validate_values(&map))
    }

    #[test]
    fn githubs_rules() {
        let sha = "a".repeat(40);
        let ok = json!({"name": "n", "head_sha": sha, "status": "in_progress",
            "output": {"title": "t", "summary": "s"}});
        assert_eq!(check(ok, true), Ok(()));
        assert!(check(json!({"head_sha": sha}), true).unwrap_err().contains("\"name\" wasn't supplied."));
        assert_eq!(check(json!({"status": "completed", "conclusion": "success"}), false), Ok(()));
        let long = check(json!({"name": "x".repeat(256), "head_sha": sha}), true).unwrap_err();
        assert!(long.contains("Only 255 characters are allowed; 256 were supplied."), "{long}");
        assert!(check(json!({"name": "n", "head_sha": "abc"}), true)
            .unwrap_err()
            .contains("No commit found for SHA: abc"));
        let status = check(json!({"name": "n", "head_sha": sha, "status": "done"}), true).unwrap_err();
        assert!(status.contains("For 'properties/status', \"done\" is not a member of"), "{status}");
        let concl = check(json!({"name": "n", "head_sha": sha, "conclusion": "passed"}), true).unwrap_err();
        assert!(concl.contains("For 'properties/conclusion', \"passed\" is not a member of"), "{concl}");
        let missing = check(json!({"name": "n", "head_sha": sha, "status": "completed"}), true).unwrap_err();
        assert!(missing.contains("\"conclusion\" wasn't supplied."), "{missing}");
        assert!(check(json!({"conclusion": "stale"}), false).unwrap_err().contains("only GitHub can set this"));
        let big = check(json!({"output": {"title": "t", "summary": "é".repeat(40_000)}}), false).unwrap_err();
        assert!(big.contains("Only 65535 characters are allowed; 80000 were supplied."), "{big}");
        assert!(check(json!({"output": {"summary": "s"}}), false).unwrap_err().contains("\"title\" wasn't supplied."));
    }
}
