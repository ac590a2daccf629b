//! GitHub's secondary rate limits, enforced when a test asks for them
//! ([`crate::StandIn::enforce_secondary_limits`]).
//!
//! The rules are GitHub's REST docs, "Rate limits for the REST API" →
//! "About secondary rate limits"
//! (<https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits>):
//!
//! - "No more than 100 concurrent requests are allowed";
//! - "No more than 900 points per minute are allowed for REST API
//!   endpoints", points counted per endpoint ("too many requests to a
//!   single endpoint per minute"): "most REST API GET, HEAD, and OPTIONS
//!   requests" cost 1 point, "most REST API POST, PATCH, PUT, or DELETE
//!   requests" 5;
//! - "In general, no more than 80 content-generating requests per minute and
//!   no more than 500 content-generating requests per hour are allowed";
//! - past a limit, "you will receive a 403 or 429 response and an error
//!   message that indicates that you exceeded a secondary rate limit. If the
//!   `retry-after` response header is present, you should not retry your
//!   request until after that many seconds has elapsed" ("Exceeding the rate
//!   limit"); GitHub does not always send it.
//!
//! Each limit is counted per identity (the App's JWT, one installation, or
//! an anonymous client), as GitHub limits each user or installation. Counts
//! are over a sliding window; the "minute" is [`SecondaryLimits::window`]
//! (60 s for GitHub's numbers, shorter in tests: the time scale).
//!
//! What GitHub does not publish, read here as: an endpoint is the method and
//! the path with its owner, repository, numbers and file path taken out
//! (`POST /repos/:owner/:repo/dispatches`); the content-generating requests
//! are the POSTs that create something a person would see: a repository
//! dispatch (it starts workflow runs), a check run, a re-run.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The limits to enforce ([`SecondaryLimits::github`]: GitHub's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondaryLimits {
    /// Requests of one identity in flight at once (GitHub: 100).
    pub concurrent: usize,
    /// Points per endpoint and identity per window (GitHub: 900 per minute).
    pub points_per_window: u64,
    /// Content-generating requests per identity per window (GitHub: 80 per minute).
    pub content_per_window: u64,
    /// Content-generating requests per identity per 60 windows (GitHub: 500 per hour).
    pub content_per_60_windows: u64,
    /// GitHub's minute (60 s); a test scales time by setting it shorter.
    pub window: Duration,
    /// Whether a refusal carries `Retry-After` (whole seconds until the
    /// limit frees a slot, at least 1); without it the client must wait
    /// "at least one minute".
    pub retry_after: bool,
}

impl SecondaryLimits {
    /// GitHub's numbers, over real minutes, with `Retry-After`.
    pub fn github() -> Self {
        SecondaryLimits {
            concurrent: 100,
            points_per_window: 900,
            content_per_window: 80,
            content_per_60_windows: 500,
            window: Duration::from_secs(60),
            retry_after: true,
        }
    }

    /// GitHub's numbers with a `window`-long minute (and a 60-window hour).
    pub fn scaled(window: Duration) -> Self {
        SecondaryLimits { window, ..Self::github() }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecondaryLimit {
    Concurrency,
    Points,
    ContentPerMinute,
    ContentPerHour,
}

/// A request's cost under the limits.
pub(crate) struct Cost {
    pub endpoint: String,
    pub points: u64,
    pub creates_content: bool,
}

impl Cost {
    pub(crate) fn of(method: &str, path: &str) -> Cost {
        let mutation = matches!(method, "POST" | "PATCH" | "PUT" | "DELETE");
        let endpoint = format!("{method} {}", endpoint_path(path));
        let creates_content = method == "POST"
            && (endpoint.ends_with("/dispatches")
                || endpoint.ends_with("/check-runs")
                || endpoint.ends_with("/rerun")
                || endpoint.ends_with("/rerun-failed-jobs"));
        Cost { endpoint, points: if mutation { 5 } else { 1 }, creates_content }
    }
}

/// `path` with what names one resource taken out: the owner and repository
/// of `/repos/{owner}/{repo}/...`, numeric segments, and a file path after
/// `/contents/`.
fn endpoint_path(path: &str) -> String {
    let mut out = Vec::new();
    let mut segments = path.trim_matches('/').split('/');
    let mut index = 0;
    while let Some(segment) = segments.next() {
        let repos = out.first() == Some(&"repos".to_owned());
        let piece = if repos && (index == 1 || index == 2) {
            [":owner", ":repo"][index - 1].to_owned()
        } else if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            ":id".to_owned()
        } else {
            segment.to_owned()
        };
        let contents = repos && piece == "contents";
        out.push(piece);
        index += 1;
        if contents {
            if segments.next().is_some() {
                out.push(":path".to_owned());
            }
            break;
        }
    }
    format!("/{}", out.join("/"))
}

/// What the limits have counted.
#[derive(Default)]
pub(crate) struct SecondaryState {
    pub limits: Option<SecondaryLimits>,
    /// identity -> requests in flight
    in_flight: HashMap<String, usize>,
    /// (identity, endpoint) -> (arrival, points) within the last window
    points: HashMap<(String, String), VecDeque<(Instant, u64)>>,
    /// identity -> arrivals of content-generating requests within the last 60 windows
    content: HashMap<String, VecDeque<Instant>>,
    /// Refusals so far, by limit.
    pub refused: HashMap<SecondaryLimit, u64>,
}

impl SecondaryState {
    /// Admits a request arriving `now` (counting it in flight until
    /// [`SecondaryState::finish`]), or names the limit it passes and how
    /// long until that limit frees a slot.
    pub(crate) fn admit(
        &mut self,
        identity: &str,
        cost: &Cost,
        now: Instant,
    ) -> Result<bool, (SecondaryLimit, Duration)> {
        let Some(limits) = self.limits.clone() else { return Ok(false) };
        let refuse = |this: &mut Self, limit, wait| {
            *this.refused.entry(limit).or_default() += 1;
            Err((limit, wait))
        };
        let in_flight = self.in_flight.get(identity).copied().unwrap_or(0);
        if in_flight >= limits.concurrent {
            return refuse(self, SecondaryLimit::Concurrency, Duration::from_secs(1));
        }
        let window = limits.window;
        let points = self.points.entry((identity.to_owned(), cost.endpoint.clone())).or_default();
        while points.front().is_some_and(|(at, _)| now.duration_since(*at) >= window) {
            points.pop_front();
        }
        let used: u64 = points.iter().map(|(_, p)| p).sum();
        if used + cost.points > limits.points_per_window {
            let wait = points.front().map_or(window, |(at, _)| window.saturating_sub(now.duration_since(*at)));
            return refuse(self, SecondaryLimit::Points, wait);
        }
        if cost.creates_content {
            let hour = window * 60;
            let content = self.content.entry(identity.to_owned()).or_default();
            while content.front().is_some_and(|at| now.duration_since(*at) >= hour) {
                content.pop_front();
            }
            let last_window = content.iter().filter(|at| now.duration_since(**at) < window).count() as u64;
            if content.len() as u64 >= limits.content_per_60_windows {
                let wait = content.front().map_or(hour, |at| hour.saturating_sub(now.duration_since(*at)));
                return refuse(self, SecondaryLimit::ContentPerHour, wait);
            }
            if last_window >= limits.content_per_window {
                let oldest = content.iter().find(|at| now.duration_since(**at) < window);
                let wait = oldest.map_or(window, |at| window.saturating_sub(now.duration_since(*at)));
                return refuse(self, SecondaryLimit::ContentPerMinute, wait);
            }
            content.push_back(now);
        }
        self.points
            .get_mut(&(identity.to_owned(), cost.endpoint.clone()))
            .expect("made above")
            .push_back((now, cost.points));
        *self.in_flight.entry(identity.to_owned()).or_default() += 1;
        Ok(true)
    }

    /// A request [`SecondaryState::admit`] counted in flight has been answered.
    pub(crate) fn finish(&mut self, identity: &str) {
        if let Some(n) = self.in_flight.get_mut(identity) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_leave_out_what_names_one_resource() {
        assert_eq!(endpoint_path("/repos/Org/Repo/dispatches"), "/repos/:owner/:repo/dispatches");
        assert_eq!(endpoint_path("/repos/o/r/check-runs/123"), "/repos/:owner/:repo/check-runs/:id");
        assert_eq!(endpoint_path("/repos/o/r/contents/a/b.yml"), "/repos/:owner/:repo/contents/:path");
        assert_eq!(endpoint_path("/app/installations/42/access_tokens"), "/app/installations/:id/access_tokens");
        assert_eq!(endpoint_path("/repos/o/r/actions/runs/7/rerun"), "/repos/:owner/:repo/actions/runs/:id/rerun");
        let c = Cost::of("POST", "/repos/o/r/dispatches");
        assert_eq!((c.points, c.creates_content), (5, true));
        let c = Cost::of("PATCH", "/repos/o/r/check-runs/9");
        assert_eq!((c.points, c.creates_content), (5, false));
        let c = Cost::of("GET", "/repos/o/r/installation");
        assert_eq!((c.points, c.creates_content), (1, false));
    }
}
