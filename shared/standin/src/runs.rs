//! Workflow-run endpoints (installation token with `actions: write`
//! required), on the runs put with [`super::StandIn::add_workflow_run`]:
//!
//! - `POST /repos/{owner}/{repo}/actions/runs/{run_id}/rerun` and
//!   `.../rerun-failed-jobs` ("Re-run a workflow", "Re-run failed jobs from a
//!   workflow run"): 201 `{}` for a completed run, which goes back to
//!   `in_progress` (no conclusion) with `run_attempt + 1`; 403 "This
//!   workflow is already running" for a run not completed;
//! - `POST /repos/{owner}/{repo}/actions/runs/{run_id}/cancel` ("Cancel a
//!   workflow run"): 202 `{}` for a run not completed, which becomes
//!   `completed` / `cancelled`; 409 "Cannot cancel a workflow run that is
//!   completed." for a completed one.
//!
//! In GitHub's order: the token (401 without a live one, 404 / 403 for a
//! repository out of its reach, see [`require_installation`]), then
//! `actions: write` (403 "Resource not accessible by integration"), then
//! the faults queued for the repository ([`super::StandIn::inject`]), one
//! per call, then 404 "Not Found" for a run id the repository does not
//! have. Every call past the token checks is recorded
//! ([`super::StandIn::run_requests`]) with the status it was answered.
//!
//! Not modelled: GitHub's refusal to re-run a run older than 30 days, and
//! `rerun-failed-jobs` on a run without failed jobs (both 403 on GitHub).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::repos::fault_response;
use super::server::{gh_error, require_installation, Auth, RequestId, NOT_ACCESSIBLE};
use super::state::Shared;
use super::RecordedRunRequest;

const DOC_RERUN: &str = "https://docs.github.com/rest/actions/workflow-runs#re-run-a-workflow";
const DOC_RERUN_FAILED: &str =
    "https://docs.github.com/rest/actions/workflow-runs#re-run-failed-jobs-from-a-workflow-run";
const DOC_CANCEL: &str = "https://docs.github.com/rest/actions/workflow-runs#cancel-a-workflow-run";

/// GitHub's workflow run statuses (`GET .../actions/runs?status=`, run side).
pub(crate) const RUN_STATUSES: &[&str] = &["queued", "in_progress", "completed", "waiting", "requested", "pending"];

/// GitHub's answer to a re-run of a run that is not completed (403).
pub(crate) const ALREADY_RUNNING: &str = "This workflow is already running";
/// GitHub's answer to a cancel of a completed run (409).
pub(crate) const CANNOT_CANCEL_COMPLETED: &str = "Cannot cancel a workflow run that is completed.";

/// What is asked of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rerun,
    RerunFailedJobs,
    Cancel,
}

impl Kind {
    /// The kind named by the last path segment.
    fn parse(segment: &str) -> Option<Self> {
        [Kind::Rerun, Kind::RerunFailedJobs, Kind::Cancel].into_iter().find(|k| k.as_str() == segment)
    }

    /// The last path segment, as recorded.
    fn as_str(self) -> &'static str {
        match self {
            Kind::Rerun => "rerun",
            Kind::RerunFailedJobs => "rerun-failed-jobs",
            Kind::Cancel => "cancel",
        }
    }

    fn doc(self) -> &'static str {
        match self {
            Kind::Rerun => DOC_RERUN,
            Kind::RerunFailedJobs => DOC_RERUN_FAILED,
            Kind::Cancel => DOC_CANCEL,
        }
    }
}

/// `POST /repos/{owner}/{repo}/actions/runs/{run_id}/{rerun | rerun-failed-jobs | cancel}`;
/// any other last segment is a path GitHub does not have (404).
pub(crate) async fn request(
    State(shared): State<Arc<Shared>>,
    Extension(auth): Extension<Auth>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    Path((owner, name, run_id, action)): Path<(String, String, String, String)>,
) -> Response {
    let Some(kind) = Kind::parse(&action) else {
        return super::server::not_found().await;
    };
    handle(&shared, &auth, &request_id, format!("{owner}/{name}"), &run_id, kind).await
}

/// Token checks, faults, then the run's state change; records the call
/// once it is past the token checks.
async fn handle(shared: &Shared, auth: &Auth, request_id: &str, repo: String, run_id: &str, kind: Kind) -> Response {
    let doc = kind.doc();
    let access = match require_installation(shared, auth, &repo, doc) {
        Ok(access) => access,
        Err(resp) => return resp,
    };
    let can_write = match auth {
        Auth::Installation { token, .. } => shared.world().token_level(token, "actions").is_some_and(|l| l >= 2),
        _ => false,
    };
    if !can_write {
        return gh_error(403, NOT_ACCESSIBLE, doc);
    }
    // A run id that is not a number matches no route on GitHub: 404, not recorded.
    let Ok(run_id) = run_id.parse::<u64>() else {
        return gh_error(404, "Not Found", doc);
    };
    let fault = shared.world().faults.get_mut(&repo.to_ascii_lowercase()).and_then(|q| q.pop_front());
    let resp = match fault {
        Some(fault) => fault_response(fault, access.installation_id, request_id).await,
        None => transition(shared, &repo, run_id, kind),
    };
    let at = Instant::now();
    let record = RecordedRunRequest {
        repo,
        kind: kind.as_str().to_owned(),
        run_id,
        status: resp.status().as_u16(),
        installation_id: access.installation_id,
        at,
        at_ms: shared.ms_since_start(at),
    };
    shared.world().run_requests.push(record);
    resp
}

/// The run's state change and GitHub's answer for it.
fn transition(shared: &Shared, repo: &str, run_id: u64, kind: Kind) -> Response {
    let doc = kind.doc();
    let mut world = shared.world();
    let Some(run) = world.workflow_runs.get_mut(&(repo.to_ascii_lowercase(), run_id)) else {
        drop(world);
        return gh_error(404, "Not Found", doc);
    };
    let completed = run.status == "completed";
    match kind {
        Kind::Rerun | Kind::RerunFailedJobs if !completed => {
            drop(world);
            gh_error(403, ALREADY_RUNNING, doc)
        }
        Kind::Rerun | Kind::RerunFailedJobs => {
            run.status = "in_progress".into();
            run.conclusion = None;
            run.run_attempt += 1;
            drop(world);
            (StatusCode::CREATED, Json(json!({}))).into_response()
        }
        Kind::Cancel if completed => {
            drop(world);
            gh_error(409, CANNOT_CANCEL_COMPLETED, doc)
        }
        Kind::Cancel => {
            run.status = "completed".into();
            run.conclusion = Some("cancelled".into());
            drop(world);
            (StatusCode::ACCEPTED, Json(json!({}))).into_response()
        }
    }
}
