//! `crcr target list|pause|resume`: the breaker of each downstream target
//! ([`crcr_core::breaker`]), read and set where the relay keeps it (the
//! `kv` table of the SQLite file, or `CRCR_KV_TABLE` on AWS), so a pause
//! holds for every relay process within the breaker's cache time (10 s).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crcr_core::allowlist::Allowlist;
use crcr_core::breaker::{Breakers, TargetBreaker, OPENED_AUTOMATICALLY};
use crcr_core::domain::RepoFullName;
use crcr_core::ports::{StateStore, StoreError, SystemClock};

use super::backend::BackendError;
use super::format_time;
use super::table::Table;

/// The shared state store of the relay at `database` (or on AWS).
pub async fn state_store(
    aws: bool,
    database: &std::path::Path,
    env: &crcr_core::config::Env<'_>,
) -> Result<Arc<dyn StateStore>, BackendError> {
    if aws {
        let table = env.required("CRCR_KV_TABLE")?;
        let sdk = crcr_aws::sdk_config(env.opt("CRCR_AWS_ENDPOINT_URL").as_deref()).await;
        return Ok(Arc::new(crcr_aws::DynamoKv::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            table,
            Arc::new(SystemClock),
        )));
    }
    let db = super::backend::open_database(database)?;
    Ok(Arc::new(crcr_embedded::sqlite::SqliteKv::new(db, Arc::new(SystemClock))))
}

/// The breakers in `state` (settings do not matter to reading and setting them).
pub fn breakers(state: Arc<dyn StateStore>) -> Breakers {
    Breakers::new(state, Default::default(), Arc::new(SystemClock))
}

/// One target's line in `crcr target list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetLine {
    pub repo: RepoFullName,
    /// The allowlist level (`L1`..`L4`), when listed from the allowlist.
    pub level: Option<String>,
    /// `sending`, `open` (paused by the relay, probing after the
    /// cool-down) or `paused` (by on-call, until resumed).
    pub state: String,
    pub breaker: TargetBreaker,
}

impl TargetLine {
    pub fn of(repo: RepoFullName, level: Option<String>, breaker: TargetBreaker) -> TargetLine {
        let state = match &breaker.open {
            None => "sending",
            Some(o) if o.by == OPENED_AUTOMATICALLY => "open",
            Some(_) => "paused",
        };
        TargetLine { repo, level, state: state.into(), breaker }
    }

    pub fn is_paused(&self) -> bool {
        self.breaker.open.is_some()
    }
}

/// Every allowlisted target with its breaker, in allowlist order.
pub async fn list(breakers: &Breakers, allowlist: &Allowlist) -> Result<Vec<TargetLine>, StoreError> {
    let mut lines = vec![];
    for entry in allowlist.entries() {
        let breaker = breakers.get(&entry.repo).await?;
        lines.push(TargetLine::of(entry.repo.clone(), Some(entry.level.to_string()), breaker));
    }
    Ok(lines)
}

/// `crcr target list` as a table.
pub fn render_list(lines: &[TargetLine]) -> String {
    let mut t = Table::new(["TARGET", "LEVEL", "STATE", "FAILURES", "SINCE", "NEXT PROBE", "WHY"]);
    for l in lines {
        let open = l.breaker.open.as_ref();
        let why = match open {
            Some(o) => o.reason.clone(),
            None => l.breaker.last_failure.clone().map(|f| format!("last failure: {f}")).unwrap_or_default(),
        };
        t.row([
            l.repo.to_string(),
            l.level.clone().unwrap_or_default(),
            l.state.clone(),
            l.breaker.failures.to_string(),
            open.map(|o| format_time(o.since_ms)).unwrap_or_default(),
            open.map(|o| o.probe_at_ms.map(format_time).unwrap_or_else(|| "on resume".into())).unwrap_or_default(),
            why,
        ]);
    }
    let paused = lines.iter().filter(|l| l.is_paused()).count();
    format!("{}{paused} of {} targets paused\n", t.render(), lines.len())
}
