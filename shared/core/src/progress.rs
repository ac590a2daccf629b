//! Progress of a long on-call run: a port the library's loops report to,
//! and the CLI draws (issue 11, "long on-call commands show progress").
//!
//! `crcr dlq replay` / `purge`, `crcr redeliver` and `crcr hud retry` can
//! run for minutes at their rate limits. Their loops call a [`Progress`]:
//! [`NoProgress`] where nobody watches (the relay's own schedules, tests,
//! `--json`, output not on a terminal), a bar on stderr in the CLI
//! (`cli/src/progress.rs`, `progress_for`), [`ProgressLog`] in tests.
//!
//! The calls of one run: `start(total)` when a phase begins (again for a
//! next phase: the count starts over), `inc(n)` as steps are done,
//! `message(text)` for the tallies so far, `finish()` once at the end. A run
//! that fails part-way may end without `finish()`: an implementation cleans
//! up when dropped.

/// Where a long run reports how far it is. Steps are whatever the loop
/// counts (messages moved, GUIDs handled, pages read); implementations only
/// count and draw, never fail and never block.
pub trait Progress: Send {
    /// A phase begins with `total` steps, `None` when not known yet (pages
    /// of a log still being read). The count starts at 0.
    fn start(&mut self, total: Option<u64>);
    /// `n` more steps are done.
    fn inc(&mut self, n: u64);
    /// The tallies so far, short (`ok 3, skipped 0, failed 1`). Ignored by
    /// default.
    fn message(&mut self, _text: &str) {}
    /// The run is over.
    fn finish(&mut self);
}

/// Reports nowhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _total: Option<u64>) {}
    fn inc(&mut self, _n: u64) {}
    fn finish(&mut self) {}
}

/// One call made to a [`ProgressLog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressEvent {
    /// [`Progress::start`] with its total.
    Start(Option<u64>),
    /// [`Progress::inc`] with its step count.
    Inc(u64),
    /// [`Progress::message`] with its text.
    Message(String),
    /// [`Progress::finish`].
    Finish,
}

/// Records every call, for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressLog {
    /// Every call, in order.
    pub events: Vec<ProgressEvent>,
}

impl ProgressLog {
    /// The totals of the `start` calls, in order.
    pub fn starts(&self) -> Vec<Option<u64>> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ProgressEvent::Start(t) => Some(*t),
                _ => None,
            })
            .collect()
    }

    /// Steps counted since the last `start` (all of them when none).
    pub fn position(&self) -> u64 {
        let from = self.events.iter().rposition(|e| matches!(e, ProgressEvent::Start(_))).map_or(0, |i| i + 1);
        self.events[from..]
            .iter()
            .map(|e| match e {
                ProgressEvent::Inc(n) => *n,
                _ => 0,
            })
            .sum()
    }

    /// The last message, if any.
    pub fn last_message(&self) -> Option<&str> {
        self.events.iter().rev().find_map(|e| match e {
            ProgressEvent::Message(m) => Some(m.as_str()),
            _ => None,
        })
    }

    /// `finish` was called, once, as the last call.
    pub fn finished_once(&self) -> bool {
        self.events.iter().filter(|e| **e == ProgressEvent::Finish).count() == 1
            && self.events.last() == Some(&ProgressEvent::Finish)
    }
}

impl Progress for ProgressLog {
    fn start(&mut self, total: Option<u64>) {
        self.events.push(ProgressEvent::Start(total));
    }
    fn inc(&mut self, n: u64) {
        self.events.push(ProgressEvent::Inc(n));
    }
    fn message(&mut self, text: &str) {
        self.events.push(ProgressEvent::Message(text.to_owned()));
    }
    fn finish(&mut self) {
        self.events.push(ProgressEvent::Finish);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_counts_per_phase() {
        let mut log = ProgressLog::default();
        let p: &mut dyn Progress = &mut log;
        p.start(None);
        p.inc(1);
        p.inc(1);
        p.start(Some(3));
        p.inc(2);
        p.message("ok 2");
        p.finish();
        assert_eq!(log.starts(), [None, Some(3)]);
        assert_eq!(log.position(), 2);
        assert_eq!(log.last_message(), Some("ok 2"));
        assert!(log.finished_once());
        NoProgress.start(Some(1));
    }
}
