//! Check-run endpoints (installation token required):
//!
//! - `POST /repos/{owner}/{repo}/check-runs` (`checks: write`): 201 with the
//!   check run's `id` and `check_suite.id` (the App's suite of the head SHA,
//!   created with its first check run);
//! - `PATCH /repos/{owner}/{repo}/check-runs/{id}` (`checks: write`): 200
//!   (404 for an id not of that repository);
//! - `GET /repos/{owner}/{repo}/check-suites/{check_suite_id}/check-runs`
//!   ("List check runs in a check suite": `checks: read` on a private
//!   repository, pull access on a public one): 200 `{"total_count",
//!   "check_runs"}`, 404 for a suite not of that repository.
//!
//! Create and update validate the body as GitHub does ("Create a check run"
//! / "Update a check run", 422 with GitHub's messages): `name` required
//! (create) and at most [`crcr_core::checks::MAX_NAME_CHARS`] characters,
//! `head_sha` required (create) and a full 40-hex SHA ("No commit found for
//! SHA"), `status` and `conclusion` among GitHub's values, `conclusion`
//! required when `status` is `completed` (and a `conclusion` alone completes
//! the run), `stale` refused (only GitHub sets it), `output.title` /
//! `output.summary` required in an `output`, `summary` / `text` at most
//! 65,535 bytes. Then the faults queued for the repository
//! ([`super::StandIn::inject`]) are answered, one per call, before the
//! change is recorded. The listing takes no faults.

use std::sync::Arc;

use axum::body::Bytes;
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::repos::fault_response;
use super::server::{gh_error, require_installation, Auth, RequestId, NOT_ACCESSIBLE};
use super::state::Shared;
use super::{util, RecordedCheckRun};
use crcr_core::checks::{MAX_NAME_CHARS, MAX_OUTPUT_BYTES};

const DOC_CREATE: &str = "https://docs.github.com/rest/checks/runs#create-a-check-run";
const DOC_UPDATE: &str = "https://docs.github.com/rest/checks/runs#update-a-check-run";
const DOC_LIST_IN_SUITE: &str = "https://docs.github.com/rest/checks/runs#list-check-runs-in-a-check-suite";

/// GitHub's paging of lists: 30 per page unless `per_page` (at most 100) says otherwise.
const DEFAULT_PER_PAGE: usize = 30;
const MAX_PER_PAGE: usize = 100;

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
        Auth::Installation { token, .. } => shared.world().token_level(token, "checks").is_some_and(|l| l >= 2),
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

/// A check run as GitHub shows it (the fields the relay reads, and a few more).
fn check_run_json(shared: &Shared, run: &RecordedCheckRun) -> Value {
    let url = format!("{}/repos/{}/check-runs/{}", shared.base_url, run.repo, run.id);
    json!({"id": run.id, "head_sha": run.head_sha, "name": run.name, "status": run.status,
        "conclusion": run.conclusion, "external_id": run.external_id, "details_url": run.details_url, "url": url,
        "html_url": format!("https://github.com/{}/runs/{}", run.repo, run.id),
        "started_at": run.started_at, "completed_at": run.completed_at,
        "output": {"title": run.output_title, "summary": run.output_summary},
        "check_suite": {"id": run.check_suite_id},
        "app": {"id": shared.app_id, "slug": "crcr-stand-in"}})
}

fn answer(status: StatusCode, shared: &Shared, run: &RecordedCheckRun) -> Response {
    (status, Json(check_run_json(shared, run))).into_response()
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
    let head_sha = text(&request, "head_sha").unwrap_or_default().to_ascii_lowercase();
    let check_suite_id = world.check_suite_for(&repo, &head_sha);
    let mut run = RecordedCheckRun {
        id,
        repo,
        installation_id,
        name: String::new(),
        head_sha,
        status: "queued".into(),
        conclusion: None,
        details_url: None,
        external_id: None,
        started_at: None,
        completed_at: None,
        output_title: None,
        output_summary: None,
        updates: 0,
        check_suite_id,
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

/// The check runs of a suite that `GET .../check-suites/{id}/check-runs`
/// lists, in creation order: those with `check_name` and `status` when
/// given; with `filter=latest` (GitHub's default) only the most recent
/// check run of each name, with `filter=all` every one.
fn in_suite<'a>(
    runs: impl Iterator<Item = &'a RecordedCheckRun>,
    check_name: Option<&str>,
    status: Option<&str>,
    all: bool,
) -> Vec<&'a RecordedCheckRun> {
    let matching: Vec<&RecordedCheckRun> = runs
        .filter(|r| check_name.is_none_or(|n| r.name == n))
        .filter(|r| status.is_none_or(|s| r.status == s))
        .collect();
    if all {
        return matching;
    }
    let mut newest: HashMap<&str, u64> = HashMap::new();
    for r in &matching {
        let id = newest.entry(r.name.as_str()).or_insert(r.id);
        *id = (*id).max(r.id);
    }
    matching.into_iter().filter(|r| newest.get(r.name.as_str()) == Some(&r.id)).collect()
}

/// `GET /repos/{owner}/{repo}/check-suites/{check_suite_id}/check-runs`
/// ("List check runs in a check suite"): a token that reaches the
/// repository, with `checks: read` (or `write`) when the repository is
/// private (GitHub: "checks:read permission on a private repository or
/// pull access to a public repository"; the stand-in still wants a token
/// on a public one); 404 for a suite not of that repository. Query:
/// `check_name`, `status`, `filter` (`latest`, the default, or `all`),
/// `per_page` (30 by default, at most 100) and `page`; `total_count`
/// counts every match, `check_runs` holds the page, and a `Link` header
/// with `rel="next"` points at the next page when there is one.
pub(crate) async fn list_in_suite(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Path((owner, name, suite)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let repo = format!("{owner}/{name}");
    if let Err(resp) = require_installation(&shared, &auth, &repo, DOC_LIST_IN_SUITE) {
        return resp;
    }
    let world = shared.world();
    if world.private.contains(&repo.to_ascii_lowercase()) {
        let can_read = match &auth {
            Auth::Installation { token, .. } => world.token_level(token, "checks").is_some_and(|l| l >= 1),
            _ => false,
        };
        if !can_read {
            drop(world);
            return gh_error(403, NOT_ACCESSIBLE, DOC_LIST_IN_SUITE);
        }
    }
    let suite_of_repo = suite
        .parse::<u64>()
        .ok()
        .filter(|id| world.check_suites.iter().any(|((r, _), s)| s == id && r.eq_ignore_ascii_case(&repo)));
    let Some(suite) = suite_of_repo else {
        drop(world);
        return gh_error(404, "Not Found", DOC_LIST_IN_SUITE);
    };
    let runs = world.check_runs.iter().filter(|r| r.check_suite_id == suite && r.repo.eq_ignore_ascii_case(&repo));
    let all = query.get("filter").is_some_and(|f| f == "all");
    let listed =
        in_suite(runs, query.get("check_name").map(String::as_str), query.get("status").map(String::as_str), all);
    let per_page = query
        .get("per_page")
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(DEFAULT_PER_PAGE, |n| n.clamp(1, MAX_PER_PAGE));
    let page = query.get("page").and_then(|n| n.parse::<usize>().ok()).unwrap_or(1).max(1);
    let total = listed.len();
    let items: Vec<Value> =
        listed.iter().skip((page - 1) * per_page).take(per_page).map(|r| check_run_json(&shared, r)).collect();
    drop(world);
    let mut resp = Json(json!({"total_count": total, "check_runs": items})).into_response();
    if page * per_page < total {
        let mut next: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| *k != "page" && *k != "per_page")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        next.sort();
        next.push(("per_page".into(), per_page.to_string()));
        next.push(("page".into(), (page + 1).to_string()));
        let q = form_urlencoded::Serializer::new(String::new()).extend_pairs(next).finish();
        let link = format!("<{}/repos/{repo}/check-suites/{suite}/check-runs?{q}>; rel=\"next\"", shared.base_url);
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert("link", v);
        }
    }
    resp
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

    fn run(id: u64, name: &str, status: &str) -> RecordedCheckRun {
        RecordedCheckRun {
            id,
            repo: "o/r".into(),
            installation_id: 1,
            name: name.into(),
            head_sha: "a".repeat(40),
            status: status.into(),
            conclusion: None,
            details_url: None,
            external_id: None,
            started_at: None,
            completed_at: None,
            output_title: None,
            output_summary: None,
            updates: 0,
            check_suite_id: 7,
        }
    }

    #[test]
    fn suite_listing_keeps_the_latest_run_of_each_name_unless_all() {
        let runs = [run(1, "a", "completed"), run(2, "b", "in_progress"), run(3, "a", "queued")];
        let ids = |v: Vec<&RecordedCheckRun>| v.iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(in_suite(runs.iter(), None, None, false)), vec![2, 3]);
        assert_eq!(ids(in_suite(runs.iter(), None, None, true)), vec![1, 2, 3]);
        assert_eq!(ids(in_suite(runs.iter(), Some("a"), None, true)), vec![1, 3]);
        // The stand-in filters before keeping the latest: the newest completed `a` is run 1.
        assert_eq!(ids(in_suite(runs.iter(), None, Some("completed"), false)), vec![1]);
        assert!(in_suite(runs.iter(), Some("c"), None, true).is_empty());
    }
}
