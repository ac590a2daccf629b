//! Downstream workflow runs the relay may act on (issue 4): re-run them when
//! a check run or check suite is re-requested on the upstream pull request,
//! and cancel them when the pull request closes (a setting, default off).
//!
//! GitHub REST "Workflow runs":
//! - `POST /repos/{o}/{r}/actions/runs/{run_id}/rerun-failed-jobs` (201):
//!   re-runs the failed jobs of a run (a `check_run.rerequested`);
//! - `POST /repos/{o}/{r}/actions/runs/{run_id}/rerun` (201): re-runs the
//!   whole run (a `check_suite.rerequested`);
//! - `POST /repos/{o}/{r}/actions/runs/{run_id}/cancel` (202).
//!
//! Each with an installation token of the downstream repository narrowed to
//! that repository and `actions: write`.

use async_trait::async_trait;
use serde::Serialize;

use crate::domain::RepoFullName;
use crate::ports::GitHubError;

/// What GitHub made of a re-run or cancel request that it did not refuse
/// as an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunRequest {
    /// 201 (re-run) / 202 (cancel): GitHub took it.
    Accepted,
    /// 403 "This workflow is already running": a re-run of a run still in
    /// progress. Not an error (CONTRACTS.md "Upstream check runs").
    AlreadyRunning,
    /// 409 "Cannot cancel a workflow run that is completed.": nothing to
    /// cancel. Not an error.
    AlreadyCompleted,
}

/// Re-runs and cancels downstream workflow runs. Errors are classified once
/// (`crcr_clients::github::classify`): transient (5xx, rate limits) or permanent
/// (404 run or installation unknown, other 4xx).
#[async_trait]
pub trait WorkflowRuns: Send + Sync {
    /// `POST /repos/{o}/{r}/actions/runs/{run_id}/rerun-failed-jobs`.
    async fn rerun_failed_jobs(&self, repo: &RepoFullName, run_id: u64) -> Result<RunRequest, GitHubError>;
    /// `POST /repos/{o}/{r}/actions/runs/{run_id}/rerun`.
    async fn rerun(&self, repo: &RepoFullName, run_id: u64) -> Result<RunRequest, GitHubError>;
    /// `POST /repos/{o}/{r}/actions/runs/{run_id}/cancel`.
    async fn cancel(&self, repo: &RepoFullName, run_id: u64) -> Result<RunRequest, GitHubError>;
}
