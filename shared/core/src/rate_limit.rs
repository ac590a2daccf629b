//! GitHub's primary rate limit, tracked ahead of time, and the order in
//! which the relay's kinds of requests get what is left of it.
//!
//! GitHub's REST docs, "Rate limits for the REST API"
//! (<https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api>):
//! every identity (the App with its JWT, each installation with its
//! installation tokens) has a primary limit per hour (5,000 for an
//! installation, more on Enterprise Cloud), and every answer says where it
//! stands: `x-ratelimit-limit`, `x-ratelimit-remaining`,
//! `x-ratelimit-reset` (the end of the window, UTC epoch seconds) and
//! `x-ratelimit-resource` (`core` for the REST API) ("Checking the status
//! of your rate limit"). "If the `x-ratelimit-remaining` header is 0, you
//! should not make another request until after the time specified by the
//! `x-ratelimit-reset` header" ("Exceeding the rate limit").
//!
//! [`PrimaryLimits`] keeps, per identity, the last window GitHub reported
//! and takes one off for each request sent after it, so a burst does not
//! overshoot while its answers are on their way. GitHub's count is the
//! shared truth: every process (each Lambda instance, `crcr serve`) reads
//! the same count from its own answers, so no shared store is needed; a
//! process that has not heard from GitHub for a while may send a few
//! requests past what another process spent, which GitHub's answer then
//! corrects.
//!
//! **Priorities.** The relay's requests are of four kinds
//! ([`RequestPriority`]), in this order: dispatches (and what they need:
//! installation lookups, token mints, the allowlist), check-run writes
//! (and commit lookups for callbacks), re-runs and cancels of downstream
//! runs, and the redelivery job. A kind stops spending while the identity
//! has no more than its reserve left ([`RequestPriority::reserve_percent`]
//! of the limit): the redelivery job leaves the App's last half to
//! installation lookups and token mints, re-runs leave a target's last
//! fifth to its dispatches. A request that may not be sent is not sent: the
//! caller gets `GitHubError::Deferred` with the time to the window's reset.
//! Within one process the in-flight slots ([`InFlightGate`]) go to the
//! highest priority waiting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ports::InstallationId;

/// Seconds a window is kept past its `x-ratelimit-reset`: the reset is in
/// whole seconds, and this host's clock may run a little ahead of
/// GitHub's; sending in the reset's second could still be counted in the
/// spent window (and refused).
pub const RESET_SLACK_S: i64 = 1;

/// The kinds of GitHub requests the relay makes, highest priority first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestPriority {
    /// `repository_dispatch`, and the installation lookups, token mints and
    /// allowlist reads dispatches need.
    Dispatch,
    /// Upstream check-run creates and updates, and the commit lookups of
    /// callbacks.
    CheckRun,
    /// Re-runs and cancels of downstream workflow runs.
    Rerun,
    /// The redelivery job (`crcr redeliver`, the scheduled Lambda): the
    /// App's webhook delivery log and redelivery requests.
    Redelivery,
}

impl RequestPriority {
    /// Every kind, highest priority first.
    pub const ALL: [RequestPriority; 4] =
        [RequestPriority::Dispatch, RequestPriority::CheckRun, RequestPriority::Rerun, RequestPriority::Redelivery];

    /// The share of an identity's hourly limit (percent) this kind leaves
    /// to the kinds above it: it is not sent while no more than that is
    /// left. Dispatch 0 (spends to GitHub's own 0), check runs 10, re-runs
    /// 20, the redelivery job 50.
    pub fn reserve_percent(self) -> u64 {
        match self {
            RequestPriority::Dispatch => 0,
            RequestPriority::CheckRun => 10,
            RequestPriority::Rerun => 20,
            RequestPriority::Redelivery => 50,
        }
    }

    /// Label value in metrics and logs: `dispatch`, `check_run`, `rerun`, `redelivery`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestPriority::Dispatch => "dispatch",
            RequestPriority::CheckRun => "check_run",
            RequestPriority::Rerun => "rerun",
            RequestPriority::Redelivery => "redelivery",
        }
    }
}

/// Whose primary limit a request spends: the App (requests with its JWT)
/// or one installation (requests with its installation tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateLimitIdentity {
    App,
    Installation(InstallationId),
}

impl std::fmt::Display for RateLimitIdentity {
    /// `app` or `installation:<id>` (the metric label).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateLimitIdentity::App => f.write_str("app"),
            RateLimitIdentity::Installation(id) => write!(f, "installation:{}", id.0),
        }
    }
}

/// One identity's window, as GitHub last reported it, less what was sent since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitWindow {
    /// `x-ratelimit-limit`: requests per window.
    pub limit: u64,
    /// `x-ratelimit-remaining`, less the requests sent since.
    pub remaining: u64,
    /// `x-ratelimit-reset`: the window's end, UTC epoch seconds.
    pub reset_s: i64,
}

impl RateLimitWindow {
    /// Whether the window still counts at `now_s`: until its reset and
    /// [`RESET_SLACK_S`] past it.
    pub fn is_current(&self, now_s: i64) -> bool {
        now_s < self.reset_s + RESET_SLACK_S
    }
}

/// A request that must not be sent now ([`PrimaryLimits::admit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deferral {
    pub identity: RateLimitIdentity,
    pub priority: RequestPriority,
    /// The window it found.
    pub window: RateLimitWindow,
    /// Until the window resets (at least 1 s).
    pub wait: Duration,
}

impl std::fmt::Display for Deferral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GitHub's primary rate limit of {}: {} of {} left, ",
            self.identity, self.window.remaining, self.window.limit
        )?;
        match self.priority.reserve_percent() {
            0 => f.write_str("none to spend")?,
            p => write!(f, "the last {p}% kept for higher-priority requests than {}", self.priority.as_str())?,
        }
        write!(f, "; not sent before the window resets in {} s", self.wait.as_secs())
    }
}

/// Each identity's primary-limit window, as seen from this process (see
/// the module docs). Times are UTC epoch seconds, passed in.
#[derive(Debug, Default)]
pub struct PrimaryLimits {
    windows: Mutex<HashMap<RateLimitIdentity, RateLimitWindow>>,
}

impl PrimaryLimits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Before sending a `priority` request as `identity` at `now_s`:
    /// `Ok(())`, with the request taken off the window, or the
    /// [`Deferral`] when no more than the priority's reserve is left. An
    /// identity not heard from, or whose window has reset, is admitted
    /// (its answer will tell).
    pub fn admit(&self, identity: RateLimitIdentity, priority: RequestPriority, now_s: i64) -> Result<(), Deferral> {
        let mut windows = self.windows.lock().expect("rate-limit windows");
        let Some(window) = windows.get_mut(&identity).filter(|w| w.is_current(now_s)) else {
            return Ok(());
        };
        let reserve = window.limit.saturating_mul(priority.reserve_percent()).div_ceil(100);
        if window.remaining <= reserve {
            let wait = Duration::from_secs((window.reset_s + RESET_SLACK_S - now_s).max(1) as u64);
            return Err(Deferral { identity, priority, window: *window, wait });
        }
        window.remaining -= 1;
        Ok(())
    }

    /// An answer to a request as `identity` said `limit`, `remaining` and
    /// `reset_s`. Answers of the same window can only lower the count (an
    /// answer that left before others arrives after them); an answer of a
    /// later window replaces it, and so does one of another window with
    /// less left (GitHub saying less is left is believed: the limit may
    /// have been changed, or the window started over on GitHub's side).
    pub fn observe(&self, identity: RateLimitIdentity, limit: u64, remaining: u64, reset_s: i64) {
        let mut windows = self.windows.lock().expect("rate-limit windows");
        let reported = RateLimitWindow { limit, remaining, reset_s };
        match windows.get_mut(&identity) {
            Some(w) if w.reset_s == reset_s => {
                w.limit = limit;
                w.remaining = w.remaining.min(remaining);
            }
            Some(w) if reset_s > w.reset_s || remaining < w.remaining => *w = reported,
            Some(_) => {}
            None => {
                windows.insert(identity, reported);
            }
        }
    }

    /// `identity`'s window at `now_s`, if one is known and not reset.
    pub fn window(&self, identity: RateLimitIdentity, now_s: i64) -> Option<RateLimitWindow> {
        let windows = self.windows.lock().expect("rate-limit windows");
        windows.get(&identity).copied().filter(|w| w.is_current(now_s))
    }

    /// The least `remaining` of any identity's current window at `now_s`
    /// (the `GitHubRateLimitRemaining` gauge: the identity nearest its limit).
    pub fn lowest_remaining(&self, now_s: i64) -> Option<u64> {
        let windows = self.windows.lock().expect("rate-limit windows");
        windows.values().filter(|w| w.is_current(now_s)).map(|w| w.remaining).min()
    }
}

/// Reads GitHub's primary-limit headers from an answer: `(limit,
/// remaining, reset_s)`, or `None` when one is missing or unreadable, or
/// when `x-ratelimit-resource` names another resource than `core` (search,
/// GraphQL, ... have limits of their own).
pub fn read_headers(headers: &http::HeaderMap) -> Option<(u64, u64, i64)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if header("x-ratelimit-resource").is_some_and(|r| r != "core") {
        return None;
    }
    Some((
        header("x-ratelimit-limit")?.parse().ok()?,
        header("x-ratelimit-remaining")?.parse().ok()?,
        header("x-ratelimit-reset")?.parse().ok()?,
    ))
}

/// At most `capacity` requests in flight at once (GitHub's secondary
/// limit: 100 concurrent requests, "About secondary rate limits"), and a
/// freed slot goes to the highest-priority request waiting, in arrival
/// order within a priority. A waiter dropped before its turn takes nothing.
#[derive(Debug)]
pub struct InFlightGate {
    state: Mutex<GateState>,
}

#[derive(Debug)]
struct GateState {
    free: usize,
    waiting: [VecDeque<tokio::sync::oneshot::Sender<()>>; 4],
}

/// A slot of an [`InFlightGate`], given back when dropped.
#[derive(Debug)]
pub struct InFlightSlot {
    gate: Arc<InFlightGate>,
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl InFlightGate {
    /// A gate of `capacity` slots (at least 1).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(GateState { free: capacity.max(1), waiting: Default::default() }) })
    }

    /// Waits for a slot for a `priority` request. Returns it, and whether
    /// the request had to wait.
    pub async fn acquire(self: &Arc<Self>, priority: RequestPriority) -> (InFlightSlot, bool) {
        let rx = {
            let mut state = self.state.lock().expect("in-flight gate");
            if state.free > 0 && state.waiting.iter().all(VecDeque::is_empty) {
                state.free -= 1;
                return (InFlightSlot { gate: self.clone() }, false);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            state.waiting[priority as usize].push_back(tx);
            rx
        };
        let mut waiting = Waiting { rx: Some(rx), gate: self.clone() };
        let turn = waiting.rx.as_mut().expect("not taken yet");
        turn.await.expect("a waiter's sender is only dropped after sending its slot");
        waiting.rx = None;
        (InFlightSlot { gate: self.clone() }, true)
    }

    /// Hands the slot to the first live waiter of the highest priority, or frees it.
    fn release(&self) {
        let mut state = self.state.lock().expect("in-flight gate");
        for queue in state.waiting.iter_mut() {
            while let Some(tx) = queue.pop_front() {
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        state.free += 1;
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.state.lock().expect("in-flight gate").free
    }
}

/// A waiter's end of its turn; dropped before the slot was taken (the
/// request was cancelled), it passes on a slot already sent to it.
struct Waiting {
    /// `None` once the slot was taken.
    rx: Option<tokio::sync::oneshot::Receiver<()>>,
    gate: Arc<InFlightGate>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.gate.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTALLATION: RateLimitIdentity = RateLimitIdentity::Installation(InstallationId(7));

    #[test]
    fn each_priority_stops_at_its_reserve_and_dispatches_spend_to_zero() {
        let limits = PrimaryLimits::new();
        limits.observe(INSTALLATION, 100, 60, 1_000);
        // 60 left: the redelivery job (reserve 50) may send 10.
        let sent = (0..20).take_while(|_| limits.admit(INSTALLATION, RequestPriority::Redelivery, 900).is_ok()).count();
        assert_eq!(sent, 10);
        let deferred = limits.admit(INSTALLATION, RequestPriority::Redelivery, 900).unwrap_err();
        assert_eq!(deferred.wait, Duration::from_secs(101), "until the reset, and its second");
        assert_eq!(deferred.window.remaining, 50);
        assert!(deferred.to_string().contains("installation:7: 50 of 100 left"), "{deferred}");
        // Re-runs down to 20, check runs to 10, dispatches to 0.
        let spend = |p| (0..100).take_while(|_| limits.admit(INSTALLATION, p, 900).is_ok()).count();
        assert_eq!(spend(RequestPriority::Rerun), 30);
        assert_eq!(spend(RequestPriority::CheckRun), 10);
        assert_eq!(spend(RequestPriority::Redelivery), 0);
        assert_eq!(spend(RequestPriority::Dispatch), 10);
        let none = limits.admit(INSTALLATION, RequestPriority::Dispatch, 900).unwrap_err();
        assert!(none.to_string().contains("none to spend"), "{none}");
        // Another identity is not affected.
        assert!(limits.admit(RateLimitIdentity::App, RequestPriority::Redelivery, 900).is_ok());
    }

    #[test]
    fn a_reset_window_admits_again_and_late_answers_do_not_raise_the_count() {
        let limits = PrimaryLimits::new();
        limits.observe(INSTALLATION, 10, 0, 1_000);
        assert_eq!(
            limits.admit(INSTALLATION, RequestPriority::Dispatch, 999).unwrap_err().wait,
            Duration::from_secs(2)
        );
        // The reset's own second still counts as the old window.
        assert!(limits.admit(INSTALLATION, RequestPriority::Dispatch, 1_000).is_err());
        // A late answer of the same window (sent earlier) does not give back what later ones spent.
        limits.observe(INSTALLATION, 10, 5, 1_000);
        assert_eq!(limits.window(INSTALLATION, 999).unwrap().remaining, 0);
        // The window is over: admitted, nothing known.
        assert!(limits.admit(INSTALLATION, RequestPriority::Redelivery, 1_001).is_ok());
        assert_eq!(limits.window(INSTALLATION, 1_001), None);
        // The next window replaces it; an answer of another window with as
        // much or more left changes nothing.
        limits.observe(INSTALLATION, 10, 9, 4_600);
        limits.observe(INSTALLATION, 10, 9, 1_000);
        assert_eq!(limits.window(INSTALLATION, 1_001).unwrap().remaining, 9);
        assert_eq!(limits.lowest_remaining(1_001), Some(9));
        // GitHub saying less is left, in a window ending sooner (its limit
        // was lowered): believed.
        limits.observe(INSTALLATION, 5, 0, 2_000);
        assert_eq!(limits.window(INSTALLATION, 1_001).map(|w| (w.remaining, w.reset_s)), Some((0, 2_000)));
        assert!(limits.admit(INSTALLATION, RequestPriority::Dispatch, 1_001).is_err());
        // A limit no product overflows.
        limits.observe(RateLimitIdentity::App, u64::MAX, 5, 9_000);
        assert!(limits.admit(RateLimitIdentity::App, RequestPriority::Redelivery, 1_001).is_err());
    }

    #[test]
    fn requests_sent_before_the_answers_come_are_counted() {
        let limits = PrimaryLimits::new();
        limits.observe(RateLimitIdentity::App, 5000, 3, 1_000);
        // A burst of 5 after hearing "3 left": 3 go, 2 wait.
        let sent =
            (0..5).filter(|_| limits.admit(RateLimitIdentity::App, RequestPriority::Dispatch, 10).is_ok()).count();
        assert_eq!(sent, 3);
        // Their answers say 2, 1, 0: still 0.
        for left in [2, 1, 0] {
            limits.observe(RateLimitIdentity::App, 5000, left, 1_000);
        }
        assert_eq!(limits.window(RateLimitIdentity::App, 10).unwrap().remaining, 0);
    }

    #[test]
    fn headers_of_another_resource_are_not_read() {
        let mut h = http::HeaderMap::new();
        h.insert("x-ratelimit-limit", "5000".parse().unwrap());
        h.insert("x-ratelimit-remaining", "4990".parse().unwrap());
        h.insert("x-ratelimit-reset", "1700000000".parse().unwrap());
        assert_eq!(read_headers(&h), Some((5000, 4990, 1_700_000_000)));
        h.insert("x-ratelimit-resource", "core".parse().unwrap());
        assert_eq!(read_headers(&h), Some((5000, 4990, 1_700_000_000)));
        h.insert("x-ratelimit-resource", "search".parse().unwrap());
        assert_eq!(read_headers(&h), None);
        h.remove("x-ratelimit-resource");
        h.remove("x-ratelimit-reset");
        assert_eq!(read_headers(&h), None);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_highest_priority_waiting() {
        let gate = InFlightGate::new(1);
        let (first, waited) = gate.acquire(RequestPriority::Redelivery).await;
        assert!(!waited);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Queued lowest first; each holds its slot until it has written its name.
        for p in
            [RequestPriority::Redelivery, RequestPriority::Rerun, RequestPriority::CheckRun, RequestPriority::Dispatch]
        {
            let (mine, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let (_slot, waited) = mine.acquire(p).await;
                assert!(waited);
                order.lock().unwrap().push(p);
            }));
            // Wait until it is queued.
            while gate.state.lock().unwrap().waiting[p as usize].is_empty() {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), RequestPriority::ALL.to_vec());
        assert_eq!(gate.free(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_takes_no_slot() {
        let gate = InFlightGate::new(1);
        let (held, _) = gate.acquire(RequestPriority::Dispatch).await;
        // Queued, then cancelled before its turn.
        let cancelled = tokio::spawn({
            let gate = gate.clone();
            async move {
                gate.acquire(RequestPriority::Dispatch).await;
            }
        });
        while gate.state.lock().unwrap().waiting[0].is_empty() {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        assert!(cancelled.await.unwrap_err().is_cancelled());
        drop(held);
        assert_eq!(gate.free(), 1);
        // Sent its turn, then dropped before taking it: the slot is passed on.
        let (held, _) = gate.acquire(RequestPriority::Dispatch).await;
        let mut late = Box::pin(gate.acquire(RequestPriority::Rerun));
        assert!(futures::poll!(late.as_mut()).is_pending());
        drop(held);
        drop(late);
        assert_eq!(gate.free(), 1);
    }
}
