//! The GitHub budget repository dispatches spend from, per target
//! installation, so the relay keeps under GitHub's secondary rate limits
//! instead of sending requests to be refused.
//!
//! GitHub's REST docs, "Rate limits for the REST API" → "About secondary
//! rate limits"
//! (<https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits>):
//! "In general, no more than 80 content-generating requests per minute and
//! no more than 500 content-generating requests per hour are allowed", and
//! "no more than 900 points per minute" per endpoint, a POST costing 5. A
//! repository dispatch starts workflow runs: it is read here as content
//! generating (GitHub does not list which requests are), so one target
//! installation takes at most 80 dispatches a minute and 500 an hour (the
//! points allow 180). Each installation is its own identity: the vendors'
//! repositories are in their own organizations, each with its own
//! installation of the App. Past a limit GitHub answers 403 or 429, with
//! `Retry-After` or not ("Exceeding the rate limit"); such an answer holds
//! every sender to that installation until it has passed
//! ([`DispatchBudget::hold`]).
//!
//! The primary limit (5,000 requests an hour per installation, "Primary
//! rate limit for GitHub App installations") is not paced here: 500
//! dispatches an hour keep far below it, and the GitHub client tracks it
//! from GitHub's answers and defers what would pass it
//! ([`crate::rate_limit`]; a deferred dispatch is postponed like a paced one).
//!
//! Two budgets: [`MemoryDispatchBudget`] for one process (`crcr serve`),
//! [`StoredDispatchBudget`] in the shared `kv` store with conditional
//! writes, so every Lambda instance spends from the same one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ports::{InstallationId, StateStore, StoreError};

/// A log of the requests sent within a pace's windows (ms since epoch,
/// oldest first): the sliding windows GitHub counts over.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SendLog(VecDeque<i64>);

impl SendLog {
    /// Forgets what was sent `span_ms` or longer before `now_ms`.
    fn prune(&mut self, now_ms: i64, span_ms: i64) {
        while self.0.front().is_some_and(|at| now_ms - at >= span_ms) {
            self.0.pop_front();
        }
    }

    /// How long from `now_ms` until one more request keeps every
    /// `(span_ms, limit)` window under its limit (`None`: now). A limit of
    /// 0 is read as 1.
    fn wait(&self, now_ms: i64, windows: &[(i64, usize)]) -> Option<Duration> {
        windows
            .iter()
            .filter_map(|&(span, limit)| {
                let within: Vec<i64> = self.0.iter().copied().filter(|at| now_ms - at < span).collect();
                let limit = limit.max(1);
                (within.len() >= limit).then(|| {
                    let freeing = within[within.len() - limit];
                    Duration::from_millis((freeing + span - now_ms).max(1) as u64)
                })
            })
            .max()
    }

    /// Records a request sent at `now_ms` if every `(span_ms, limit)`
    /// window allows one more (a limit of 0 is read as 1), first forgetting what
    /// left the longest of them; else how long until one is allowed.
    pub fn spend(&mut self, now_ms: i64, windows: &[(i64, usize)]) -> Result<(), Duration> {
        self.prune(now_ms, windows.iter().map(|w| w.0).max().unwrap_or(0));
        if let Some(wait) = self.wait(now_ms, windows) {
            return Err(wait);
        }
        self.0.push_back(now_ms);
        Ok(())
    }

    /// Gives back the request spent at `at_ms` that was not sent after all.
    pub fn refund(&mut self, at_ms: i64) {
        if let Some(i) = self.0.iter().rposition(|t| *t == at_ms) {
            self.0.remove(i);
        }
    }
}

/// GitHub's minute and hour as sliding-window spans (ms), each widened by
/// `slack` (a request is counted from when it is spent, GitHub counts it
/// when it arrives), the hour being 60 of `minute` (tests shorten it).
pub fn minute_and_hour_spans(minute: Duration, slack: Duration) -> (i64, i64) {
    let (minute, slack) = (minute.as_millis() as i64, slack.as_millis() as i64);
    (minute + slack, minute * 60 + slack)
}

/// How many repository dispatches one target installation may take
/// (GitHub's content-creation limits, see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchPace {
    /// Dispatches per [`DispatchPace::minute`] (GitHub: 80).
    pub per_minute: usize,
    /// Dispatches per 60 minutes (GitHub: 500).
    pub per_hour: usize,
    /// GitHub's minute (60 s); tests shorten it.
    pub minute: Duration,
    /// Added to each window (default 2 s): a dispatch is counted from when
    /// it is spent, GitHub counts it when it arrives, later by a token mint
    /// and the network.
    pub slack: Duration,
}

impl Default for DispatchPace {
    fn default() -> Self {
        DispatchPace { per_minute: 80, per_hour: 500, minute: Duration::from_secs(60), slack: Duration::from_secs(2) }
    }
}

impl DispatchPace {
    /// The budget for one process: in memory, or [`Unpaced`] for `None`.
    pub fn in_memory(pace: Option<DispatchPace>) -> Arc<dyn DispatchBudget> {
        match pace {
            Some(pace) => Arc::new(MemoryDispatchBudget::new(pace)),
            None => Arc::new(Unpaced),
        }
    }

    /// The budget shared through `state` (every Lambda instance), or
    /// [`Unpaced`] for `None`.
    pub fn stored(pace: Option<DispatchPace>, state: Arc<dyn StateStore>) -> Arc<dyn DispatchBudget> {
        match pace {
            Some(pace) => Arc::new(StoredDispatchBudget::new(pace, state)),
            None => Arc::new(Unpaced),
        }
    }

    /// The windows as `(span ms, limit)`.
    fn windows(&self) -> [(i64, usize); 2] {
        let (minute, hour) = minute_and_hour_spans(self.minute, self.slack);
        [(minute, self.per_minute), (hour, self.per_hour)]
    }

    /// How long a record of an installation's dispatches is worth keeping.
    fn horizon(&self) -> Duration {
        self.minute * 60 + self.slack
    }
}

/// One installation's budget: what it sent, and until when GitHub said to
/// stop (ms since epoch).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationBudget {
    pub sent: SendLog,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until_ms: Option<i64>,
}

impl InstallationBudget {
    /// Spends one dispatch at `now_ms` under `pace`, or says how long until
    /// one is allowed.
    pub fn spend(&mut self, pace: &DispatchPace, now_ms: i64) -> Result<(), Duration> {
        if let Some(until) = self.hold_until_ms.filter(|u| *u > now_ms) {
            return Err(Duration::from_millis((until - now_ms) as u64));
        }
        self.hold_until_ms = None;
        self.sent.spend(now_ms, &pace.windows())
    }

    /// No dispatch before `until_ms` (kept if a later hold is already set).
    pub fn hold(&mut self, until_ms: i64) {
        self.hold_until_ms = Some(self.hold_until_ms.map_or(until_ms, |u| u.max(until_ms)));
    }
}

/// Where the dispatcher spends before each repository dispatch.
#[async_trait]
pub trait DispatchBudget: Send + Sync {
    /// Spends one dispatch to `installation` at `now_ms`: `None` when it
    /// may be sent now, else how long until the budget allows one (nothing
    /// spent).
    async fn spend(&self, installation: InstallationId, now_ms: i64) -> Result<Option<Duration>, StoreError>;
    /// GitHub answered a request of `installation` with a rate limit that
    /// lasts until `until_ms`: no dispatch to it is spent before then.
    async fn hold(&self, installation: InstallationId, until_ms: i64) -> Result<(), StoreError>;
}

/// No budget: every dispatch is sent at once (the load benchmark, which
/// measures the relay, not GitHub's limits; `CRCR_DISPATCH_PACE=off`).
#[derive(Debug, Default)]
pub struct Unpaced;

#[async_trait]
impl DispatchBudget for Unpaced {
    async fn spend(&self, _: InstallationId, _: i64) -> Result<Option<Duration>, StoreError> {
        Ok(None)
    }
    async fn hold(&self, _: InstallationId, _: i64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The budget in process memory: for a relay that is the only sender
/// (`crcr serve`).
#[derive(Debug, Default)]
pub struct MemoryDispatchBudget {
    pace: DispatchPace,
    installations: std::sync::Mutex<HashMap<u64, InstallationBudget>>,
}

impl MemoryDispatchBudget {
    pub fn new(pace: DispatchPace) -> Self {
        MemoryDispatchBudget { pace, installations: Default::default() }
    }
}

#[async_trait]
impl DispatchBudget for MemoryDispatchBudget {
    async fn spend(&self, installation: InstallationId, now_ms: i64) -> Result<Option<Duration>, StoreError> {
        let mut all = self.installations.lock().expect("dispatch budget");
        Ok(all.entry(installation.0).or_default().spend(&self.pace, now_ms).err())
    }
    async fn hold(&self, installation: InstallationId, until_ms: i64) -> Result<(), StoreError> {
        self.installations.lock().expect("dispatch budget").entry(installation.0).or_default().hold(until_ms);
        Ok(())
    }
}

/// The `kv` key of one installation's budget.
pub fn budget_key(installation: InstallationId) -> String {
    format!("github_budget/dispatch/{}", installation.0)
}

/// The budget in the shared `kv` store: one record per installation
/// ([`budget_key`]) changed by conditional writes
/// ([`crate::shared_state::SharedRecords`]), so senders in every process (50
/// Lambda instances) spend from one budget and two of them never spend the
/// same slot. A spend is one conditional write while no other process
/// spends from that installation, two when one did. At most 80 dispatches
/// a minute succeed per installation, so the writes contend little; a spend
/// the pace refuses writes nothing (a refusal made on an older value holds:
/// the log only grows between writes).
pub struct StoredDispatchBudget {
    pace: DispatchPace,
    records: crate::shared_state::SharedRecords<InstallationBudget>,
}

impl StoredDispatchBudget {
    pub fn new(pace: DispatchPace, state: Arc<dyn StateStore>) -> Self {
        StoredDispatchBudget { pace, records: crate::shared_state::SharedRecords::new(state, Some(pace.horizon())) }
    }
}

#[async_trait]
impl DispatchBudget for StoredDispatchBudget {
    async fn spend(&self, installation: InstallationId, now_ms: i64) -> Result<Option<Duration>, StoreError> {
        let pace = self.pace;
        Ok(self.records.update(&budget_key(installation), |b| b.spend(&pace, now_ms)).await?.err())
    }
    async fn hold(&self, installation: InstallationId, until_ms: i64) -> Result<(), StoreError> {
        self.records.change(&budget_key(installation), |b| b.hold(until_ms)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace() -> DispatchPace {
        DispatchPace { per_minute: 3, per_hour: 5, minute: Duration::from_millis(1000), slack: Duration::ZERO }
    }

    #[test]
    fn an_installation_spends_per_minute_and_per_hour() {
        let mut b = InstallationBudget::default();
        for t in [0, 10, 20] {
            assert_eq!(b.spend(&pace(), t), Ok(()));
        }
        // The fourth in the same minute waits until the first leaves it.
        assert_eq!(b.spend(&pace(), 30), Err(Duration::from_millis(970)));
        assert_eq!(b.spend(&pace(), 1000), Ok(()));
        assert_eq!(b.spend(&pace(), 1010), Ok(()));
        // Five within the hour: the sixth waits for the first to age out of it.
        assert_eq!(b.spend(&pace(), 2500), Err(Duration::from_millis(57_500)));
        assert_eq!(b.spend(&pace(), 60_000), Ok(()));
    }

    #[test]
    fn a_hold_stops_spending_until_it_ends() {
        let mut b = InstallationBudget::default();
        b.hold(5_000);
        b.hold(4_000);
        assert_eq!(b.spend(&pace(), 1_000), Err(Duration::from_millis(4_000)));
        assert_eq!(b.spend(&pace(), 5_000), Ok(()));
        assert_eq!(b.hold_until_ms, None);
    }

    #[test]
    fn slack_widens_each_window() {
        let pace = DispatchPace { slack: Duration::from_millis(200), ..pace() };
        let mut b = InstallationBudget::default();
        for t in [0, 1, 2] {
            assert_eq!(b.spend(&pace, t), Ok(()));
        }
        assert_eq!(b.spend(&pace, 1000), Err(Duration::from_millis(200)));
    }

    #[tokio::test]
    async fn senders_sharing_a_stored_budget_never_spend_the_same_slot() {
        let state: Arc<dyn StateStore> = Arc::new(crate::ports::InterleavingStateStore::default());
        let budgets: Vec<_> = (0..4).map(|_| StoredDispatchBudget::new(pace(), state.clone())).collect();
        let spends =
            futures::future::join_all((0..40).map(|i| budgets[i % 4].spend(InstallationId(7), 100 + (i as i64 % 3))))
                .await;
        let spent = spends.into_iter().filter(|r| matches!(r, Ok(None))).count();
        assert_eq!(spent, 3, "3 a minute, however many senders");
        // Another installation has its own budget.
        assert_eq!(budgets[0].spend(InstallationId(8), 100).await.unwrap(), None);
        budgets[1].hold(InstallationId(8), 10_000).await.unwrap();
        assert_eq!(budgets[2].spend(InstallationId(8), 9_000).await.unwrap(), Some(Duration::from_millis(1_000)));
    }
}
