//! A breaker per downstream target: a repository whose dispatches keep
//! failing for good (the App uninstalled or suspended, the repository gone
//! or archived, no workflow listening: GitHub's 404, 410, 403, 422) stops
//! being sent to, instead of costing a GitHub request and a failed record
//! per PyTorch event, and on-call is told.
//!
//! - Closed (normal): every dispatch goes. [`BreakerSettings::failures_to_open`]
//!   permanent failures in a row open it; one delivered dispatch resets the
//!   count. So do [`BreakerSettings::never_started_to_open`] dispatches in a
//!   row that GitHub took but that never started (no callback by the
//!   never-started deadline: the workflow is missing, disabled or not
//!   listening), counted by the reconciler's sweep over the dispatches
//!   since the breaker last closed ([`Breakers::never_started`]).
//! - Open: dispatches are not sent; their records say `paused` with the
//!   reason ([`crate::ports::DispatchStatus::Paused`]). After the cool-down
//!   one sender takes the probe ([`Admission::Probe`]): its dispatch goes;
//!   delivered closes the breaker, refused opens it again for twice the
//!   cool-down (up to [`BreakerSettings::max_cool_down`]).
//! - Paused by on-call (`crcr target pause`): open with no probe until
//!   `crcr target resume`.
//!
//! Each target's breaker is one record in the shared state store
//! ([`breaker_key`], no expiry), so every process (each Lambda instance)
//! sees the same breaker; a sender reuses what it read for
//! [`BreakerSettings::cache_for`], so a healthy target costs no store call
//! per dispatch: a delivered dispatch writes only when there were failures
//! to forget.
//!
//! Reported: log lines `metric=target_breaker_opened` (error) and
//! `target_breaker_closed`, the counter
//! [`crate::metrics::TARGET_BREAKERS_OPENED`] (alarm in `infra/`), and
//! `crcr target list` / `crcr status`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::RepoFullName;
use crate::ports::{Clock, StateStore, StoreError};
use crate::shared_state::SharedRecords;

/// When breakers open and how long they stay open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Permanent failures in a row that open a target's breaker (default
    /// 5; 0 turns breakers off).
    pub failures_to_open: u32,
    /// Dispatches in a row GitHub took (204) whose target never called
    /// back ([`crate::reconcile::NeverStarted`]) that open its breaker
    /// (default 10; 0: never for this reason). Counted by the reconciler's
    /// sweep over dispatches since the breaker last closed.
    pub never_started_to_open: u32,
    /// How long an opened breaker waits before its probe (default 30 min).
    pub cool_down: Duration,
    /// The longest wait, doubling from `cool_down` per failed probe (default 6 h).
    pub max_cool_down: Duration,
    /// How long one probe has the target to itself (default 2 min): another
    /// sender probes after that if the first never reported.
    pub probe_lease: Duration,
    /// How long a sender reuses a breaker it read (default 10 s): a breaker
    /// opened elsewhere stops this sender within that.
    pub cache_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures_to_open: 5,
            never_started_to_open: 10,
            cool_down: Duration::from_secs(30 * 60),
            max_cool_down: Duration::from_secs(6 * 3600),
            probe_lease: Duration::from_secs(120),
            cache_for: Duration::from_secs(10),
        }
    }
}

/// Who opened a breaker when it was not the relay itself.
pub const OPENED_AUTOMATICALLY: &str = "auto";

/// One target's breaker as stored (JSON).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetBreaker {
    /// Permanent failures in a row since the last delivered dispatch.
    #[serde(default)]
    pub failures: u32,
    /// The last permanent failure's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Set while the breaker is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenBreaker>,
    /// When it last closed (a delivered probe, or on-call's resume), ms
    /// since epoch: never-started dispatches before it no longer count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at_ms: Option<i64>,
}

/// An open breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenBreaker {
    /// When it opened (ms since epoch).
    pub since_ms: i64,
    /// Why: the failures that opened it, or on-call's reason.
    pub reason: String,
    /// [`OPENED_AUTOMATICALLY`], or the on-call engineer who paused it.
    pub by: String,
    /// When the next probe may go (ms since epoch); `None`: paused by
    /// on-call until resumed.
    pub probe_at_ms: Option<i64>,
    /// Probes that failed since it opened.
    #[serde(default)]
    pub failed_probes: u32,
    /// A probe is out until then (ms since epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probing_until_ms: Option<i64>,
}

/// What a sender may do with its next dispatch to a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Send it.
    Send,
    /// Send it as the probe of an open breaker (this sender only).
    Probe,
    /// Do not send it: record it paused with `reason`. `probe_at_ms`: when
    /// a probe will go (`None`: not before on-call resumes the target).
    Paused { reason: String, probe_at_ms: Option<i64> },
}

/// A change of a breaker's state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Closed,
}

/// The `kv` key of a target's breaker.
pub fn breaker_key(repo: &RepoFullName) -> String {
    format!("breaker/{}", repo.key())
}

/// Every target's breaker, in the shared state store.
pub struct Breakers {
    records: SharedRecords<TargetBreaker>,
    settings: BreakerSettings,
    clock: Arc<dyn Clock>,
}

impl Breakers {
    pub fn new(state: Arc<dyn StateStore>, settings: BreakerSettings, clock: Arc<dyn Clock>) -> Self {
        Breakers { records: SharedRecords::new(state, None), settings, clock }
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    fn enabled(&self) -> bool {
        self.settings.failures_to_open > 0
    }

    /// The wait before the probe after `failed_probes` failed ones.
    fn cool_down(&self, failed_probes: u32) -> Duration {
        self.settings.cool_down.saturating_mul(1 << failed_probes.min(16)).min(self.settings.max_cool_down)
    }

    /// `repo`'s breaker as stored now (not a cached copy).
    pub async fn get(&self, repo: &RepoFullName) -> Result<TargetBreaker, StoreError> {
        self.records.read(&breaker_key(repo), Duration::ZERO).await
    }

    /// Whether the next dispatch to `repo` may go. An open breaker whose
    /// cool-down is over gives one sender the probe (a conditional write),
    /// the others wait.
    pub async fn admit(&self, repo: &RepoFullName) -> Result<Admission, StoreError> {
        if !self.enabled() {
            return Ok(Admission::Send);
        }
        let key = breaker_key(repo);
        let breaker = self.records.read(&key, self.settings.cache_for).await?;
        let now = self.clock.now_ms();
        let state = if breaker.open.is_some() { 1.0 } else { 0.0 };
        ::metrics::gauge!(crate::metrics::TARGET_BREAKER_OPEN, "target" => repo.as_str().to_owned()).set(state);
        let Some(open) = breaker.open else {
            return Ok(Admission::Send);
        };
        let probe_due = |o: &OpenBreaker| {
            o.probe_at_ms.is_some_and(|at| now >= at) && o.probing_until_ms.is_none_or(|until| now >= until)
        };
        if !probe_due(&open) {
            return Ok(Admission::Paused { reason: open.reason, probe_at_ms: open.probe_at_ms });
        }
        let lease = self.settings.probe_lease.as_millis() as i64;
        let taken = self
            .records
            .update(&key, |b| match &mut b.open {
                Some(o) if probe_due(o) => {
                    o.probing_until_ms = Some(now + lease);
                    Ok(())
                }
                Some(o) => Err(Admission::Paused { reason: o.reason.clone(), probe_at_ms: o.probe_at_ms }),
                None => Err(Admission::Send),
            })
            .await?;
        Ok(match taken {
            Ok(()) => {
                tracing::info!(target_repo = %repo, "target breaker open: sending a probe dispatch");
                Admission::Probe
            }
            Err(other) => other,
        })
    }

    /// A dispatch to `repo` got GitHub's 204: its failures are forgotten and
    /// an open breaker closes. Writes only when there is something to
    /// forget.
    pub async fn delivered(&self, repo: &RepoFullName) -> Result<Option<Transition>, StoreError> {
        if !self.enabled() {
            return Ok(None);
        }
        let key = breaker_key(repo);
        let known = self.records.read(&key, self.settings.cache_for).await?;
        if known.failures == 0 && known.open.is_none() {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let closed = self
            .records
            .change(&key, |b| {
                let was_open = b.open.take().is_some();
                b.failures = 0;
                b.last_failure = None;
                if was_open {
                    b.closed_at_ms = Some(now);
                }
                was_open
            })
            .await?;
        if !closed {
            return Ok(None);
        }
        tracing::info!(target_repo = %repo, metric = "target_breaker_closed", "target breaker closed: dispatching again");
        Ok(Some(Transition::Closed))
    }

    /// A dispatch to `repo` failed for good with `reason`: counted; the
    /// [`BreakerSettings::failures_to_open`]th in a row opens the breaker,
    /// and a failed probe opens it again for twice as long.
    pub async fn refused(&self, repo: &RepoFullName, reason: &str) -> Result<Option<Transition>, StoreError> {
        if !self.enabled() {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let threshold = self.settings.failures_to_open;
        let opened = self
            .records
            .change(&breaker_key(repo), |b| {
                b.failures = b.failures.saturating_add(1);
                b.last_failure = Some(reason.to_owned());
                match &mut b.open {
                    Some(o) => {
                        if o.probing_until_ms.take().is_some() && o.probe_at_ms.is_some() {
                            o.failed_probes += 1;
                            o.probe_at_ms = Some(now + self.cool_down(o.failed_probes).as_millis() as i64);
                        }
                        None
                    }
                    None if b.failures >= threshold => {
                        let why = format!("{} dispatches in a row failed for good; the last: {reason}", b.failures);
                        Some(self.open_now(b, now, why))
                    }
                    None => None,
                }
            })
            .await?;
        Ok(opened.map(|why| self.announce_opened(repo, &why)))
    }

    /// Opens `breaker` at `now` for `reason`, its probe after the first
    /// cool-down; returns the reason.
    fn open_now(&self, breaker: &mut TargetBreaker, now: i64, reason: String) -> String {
        breaker.open = Some(OpenBreaker {
            since_ms: now,
            reason: reason.clone(),
            by: OPENED_AUTOMATICALLY.into(),
            probe_at_ms: Some(now + self.cool_down(0).as_millis() as i64),
            failed_probes: 0,
            probing_until_ms: None,
        });
        reason
    }

    /// Tells on-call that the relay opened `repo`'s breaker (the error log
    /// line `metric=target_breaker_opened`, [`crate::metrics::TARGET_BREAKERS_OPENED`]).
    fn announce_opened(&self, repo: &RepoFullName, reason: &str) -> Transition {
        tracing::error!(target_repo = %repo, %reason, probe_in_s = self.settings.cool_down.as_secs(),
            metric = "target_breaker_opened",
            "target breaker opened: dispatches to this repository are paused until a probe succeeds \
             (crcr target list; crcr target resume to send again now)");
        ::metrics::counter!(crate::metrics::TARGET_BREAKERS_OPENED).increment(1);
        Transition::Opened
    }

    /// On-call pauses `repo` (`crcr target pause`): nothing is sent to it,
    /// and no probe goes, until [`Breakers::resume`].
    pub async fn pause(&self, repo: &RepoFullName, by: &str, reason: &str) -> Result<TargetBreaker, StoreError> {
        let now = self.clock.now_ms();
        self.records
            .change(&breaker_key(repo), |b| {
                b.open = Some(OpenBreaker {
                    since_ms: now,
                    reason: format!("paused by {by}: {reason}"),
                    by: by.to_owned(),
                    probe_at_ms: None,
                    failed_probes: 0,
                    probing_until_ms: None,
                });
                b.clone()
            })
            .await
    }

    /// On-call resumes `repo` (`crcr target resume`): closed, failures
    /// forgotten. Returns the breaker as it was.
    pub async fn resume(&self, repo: &RepoFullName) -> Result<TargetBreaker, StoreError> {
        let now = self.clock.now_ms();
        self.records
            .change(&breaker_key(repo), |b| {
                let was = std::mem::take(b);
                b.closed_at_ms = Some(now);
                was
            })
            .await
    }

    /// The reconciler found `repo`'s newest `in_a_row` dispatches since its
    /// breaker last closed all never started (GitHub took them; no
    /// callback came within `after`): at
    /// [`BreakerSettings::never_started_to_open`] or more, a closed breaker
    /// opens (its workflow is missing, disabled or not listening, and
    /// every dispatch only starts nothing).
    pub async fn never_started(
        &self,
        repo: &RepoFullName,
        in_a_row: u32,
        after: Duration,
    ) -> Result<Option<Transition>, StoreError> {
        let threshold = self.settings.never_started_to_open;
        if !self.enabled() || threshold == 0 || in_a_row < threshold {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let why = format!(
            "{in_a_row} dispatches in a row never started: GitHub took them but no callback came within {} s \
             (workflow missing, disabled, or not listening to repository_dispatch)",
            after.as_secs()
        );
        let opened = self
            .records
            .change(&breaker_key(repo), |b| b.open.is_none().then(|| self.open_now(b, now, why.clone())))
            .await?;
        Ok(opened.map(|why| self.announce_opened(repo, &why)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{InMemoryStateStore, ManualClock};

    fn repo() -> RepoFullName {
        RepoFullName::parse("vendor/backend").unwrap()
    }

    fn breakers(state: Arc<dyn StateStore>, clock: Arc<ManualClock>) -> Breakers {
        let settings = BreakerSettings {
            failures_to_open: 3,
            never_started_to_open: 10,
            cool_down: Duration::from_secs(60),
            max_cool_down: Duration::from_secs(150),
            probe_lease: Duration::from_secs(10),
            cache_for: Duration::ZERO,
        };
        Breakers::new(state, settings, clock)
    }

    #[tokio::test]
    async fn opens_after_failures_in_a_row_probes_after_the_cool_down_and_closes_on_delivery() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let state: Arc<dyn StateStore> = Arc::new(InMemoryStateStore::default());
        let (a, b) = (breakers(state.clone(), clock.clone()), breakers(state, clock.clone()));
        let r = repo();
        assert_eq!(a.refused(&r, "404 Not Found").await.unwrap(), None);
        assert_eq!(a.refused(&r, "404 Not Found").await.unwrap(), None);
        // A delivery between resets the count.
        assert_eq!(b.delivered(&r).await.unwrap(), None);
        assert_eq!(a.get(&r).await.unwrap().failures, 0);
        for _ in 0..2 {
            assert_eq!(b.refused(&r, "422 Unprocessable").await.unwrap(), None);
        }
        assert_eq!(a.admit(&r).await.unwrap(), Admission::Send);
        assert_eq!(a.refused(&r, "422 Unprocessable").await.unwrap(), Some(Transition::Opened));
        // Open for every sender.
        let Admission::Paused { reason, probe_at_ms } = b.admit(&r).await.unwrap() else { panic!("not paused") };
        assert!(reason.contains("3 dispatches in a row") && reason.contains("422"), "{reason}");
        assert_eq!(probe_at_ms, Some(1_060_000));
        // After the cool-down: one probe, the other sender still waits.
        clock.advance(Duration::from_secs(60));
        assert_eq!(b.admit(&r).await.unwrap(), Admission::Probe);
        assert!(matches!(a.admit(&r).await.unwrap(), Admission::Paused { .. }));
        // The probe fails: open again for twice as long.
        assert_eq!(b.refused(&r, "422 Unprocessable").await.unwrap(), None);
        let Admission::Paused { probe_at_ms, .. } = a.admit(&r).await.unwrap() else { panic!("not paused") };
        assert_eq!(probe_at_ms, Some(1_060_000 + 120_000));
        // A probe that never reports: another sender probes after its lease.
        clock.advance(Duration::from_secs(120));
        assert_eq!(a.admit(&r).await.unwrap(), Admission::Probe);
        clock.advance(Duration::from_secs(10));
        assert_eq!(b.admit(&r).await.unwrap(), Admission::Probe);
        // It is delivered: closed, for everyone.
        assert_eq!(b.delivered(&r).await.unwrap(), Some(Transition::Closed));
        assert_eq!(a.admit(&r).await.unwrap(), Admission::Send);
        let closed = TargetBreaker { closed_at_ms: Some(clock.now_ms()), ..TargetBreaker::default() };
        assert_eq!(a.get(&r).await.unwrap(), closed);
    }

    #[tokio::test]
    async fn a_failed_probe_doubles_the_wait_up_to_the_longest() {
        let clock = Arc::new(ManualClock::new(0));
        let a = breakers(Arc::new(InMemoryStateStore::default()), clock.clone());
        let r = repo();
        for _ in 0..3 {
            a.refused(&r, "410 Gone").await.unwrap();
        }
        let mut waits = vec![];
        for _ in 0..3 {
            let at = a.get(&r).await.unwrap().open.unwrap().probe_at_ms.unwrap();
            waits.push(at - clock.now_ms());
            clock.advance(Duration::from_millis((at - clock.now_ms()) as u64));
            assert_eq!(a.admit(&r).await.unwrap(), Admission::Probe);
            a.refused(&r, "410 Gone").await.unwrap();
        }
        assert_eq!(waits, [60_000, 120_000, 150_000]);
    }

    #[tokio::test]
    async fn on_call_pauses_with_no_probe_until_resumed() {
        let clock = Arc::new(ManualClock::new(0));
        let a = breakers(Arc::new(InMemoryStateStore::default()), clock.clone());
        let r = repo();
        a.pause(&r, "alice", "vendor asked: migrating CI").await.unwrap();
        clock.advance(Duration::from_secs(24 * 3600));
        assert_eq!(
            a.admit(&r).await.unwrap(),
            Admission::Paused { reason: "paused by alice: vendor asked: migrating CI".into(), probe_at_ms: None }
        );
        let was = a.resume(&r).await.unwrap();
        assert_eq!(was.open.unwrap().by, "alice");
        assert_eq!(a.admit(&r).await.unwrap(), Admission::Send);
    }

    #[tokio::test]
    async fn never_started_dispatches_in_a_row_open_a_closed_breaker() {
        let clock = Arc::new(ManualClock::new(5_000));
        let a = breakers(Arc::new(InMemoryStateStore::default()), clock.clone());
        let settings = BreakerSettings { never_started_to_open: 4, ..*a.settings() };
        let a = Breakers::new(Arc::new(InMemoryStateStore::default()), settings, clock.clone());
        let (r, hour) = (repo(), Duration::from_secs(3600));
        assert_eq!(a.never_started(&r, 3, hour).await.unwrap(), None, "3 < 4");
        assert_eq!(a.never_started(&r, 4, hour).await.unwrap(), Some(Transition::Opened));
        let Admission::Paused { reason, .. } = a.admit(&r).await.unwrap() else { panic!("not paused") };
        assert!(reason.contains("4 dispatches in a row never started") && reason.contains("3600 s"), "{reason}");
        assert_eq!(a.never_started(&r, 9, hour).await.unwrap(), None, "already open");
        clock.advance(Duration::from_secs(60));
        assert_eq!(a.admit(&r).await.unwrap(), Admission::Probe);
        assert_eq!(a.delivered(&r).await.unwrap(), Some(Transition::Closed));
        assert_eq!(a.get(&r).await.unwrap().closed_at_ms, Some(65_000), "later counts start here");
        let off = Breakers::new(
            Arc::new(InMemoryStateStore::default()),
            BreakerSettings { never_started_to_open: 0, ..settings },
            clock,
        );
        assert_eq!(off.never_started(&r, 100, hour).await.unwrap(), None, "0: never for this reason");
    }

    #[tokio::test]
    async fn a_healthy_target_costs_no_write() {
        let store = Arc::new(crate::ports::InterleavingStateStore::default());
        let a = breakers(store.clone(), Arc::new(ManualClock::new(0)));
        for _ in 0..10 {
            assert_eq!(a.admit(&repo()).await.unwrap(), Admission::Send);
            assert_eq!(a.delivered(&repo()).await.unwrap(), None);
        }
        assert_eq!(store.conditional_writes.load(std::sync::atomic::Ordering::SeqCst), 0);
        a.refused(&repo(), "404").await.unwrap();
        a.delivered(&repo()).await.unwrap();
        assert_eq!(
            store.conditional_writes.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "a failure, then forgetting it"
        );
    }
}
