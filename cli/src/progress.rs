//! Progress bars of the long on-call commands (`crcr dlq replay` / `purge`,
//! `crcr redeliver`, `crcr hud retry`): the CLI side of the library's
//! [`Progress`] port (`crcr_core::progress`).
//!
//! A command gets its progress object from [`progress_for`] and passes it,
//! as `&mut *progress`, to the library loop:
//!
//! ```ignore
//! let mut progress = crate::progress::progress_for(args.json, "hud retry");
//! let report = library_loop(&opts, &mut *progress).await?;
//! ```
//!
//! On a terminal (stderr) and without `--json` that draws a bar on stderr:
//! label, elapsed time, bar, `done/total`, ETA and the loop's tallies; while
//! the total is not known yet, a spinner with the count. Otherwise (piped,
//! redirected, `--json`) it draws nothing at all, so the output is only the
//! result on stdout. The bar is cleared when the run finishes (or fails), so
//! the result printed after it stands alone.

use std::io::IsTerminal;
use std::time::Duration;

use crcr_core::progress::{NoProgress, Progress};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress object of an on-call command: a bar on stderr labelled
/// `label` (e.g. `"replay"`) when stderr is a terminal and `json` (the
/// command's `--json`) is false; else one that reports nowhere.
pub fn progress_for(json: bool, label: &str) -> Box<dyn Progress> {
    if draws(json, std::io::stderr().is_terminal()) {
        Box::new(Bar::new(label, ProgressDrawTarget::stderr()))
    } else {
        Box::new(NoProgress)
    }
}

/// Whether a bar is drawn: only for people (no `--json`) watching stderr.
fn draws(json: bool, stderr_is_terminal: bool) -> bool {
    !json && stderr_is_terminal
}

/// A [`Progress`] drawn by indicatif.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(label: &str, target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_prefix(label.to_owned());
        Self { bar }
    }
}

/// `replay [00:01:12] [=========>          ] 412/1000 ETA 1m  ok 410, skipped 0, failed 2`
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} [{elapsed_precise}] [{bar:30}] {pos}/{len} ETA {eta}  {msg}")
        .expect("a valid template")
        .progress_chars("=> ")
}

/// `/ redeliver [00:00:03] 3  read 3 page(s), 150 deliveries`
fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {pos}  {msg}")
        .expect("a valid template")
        .tick_chars("|/-\\ ")
}

impl Progress for Bar {
    fn start(&mut self, total: Option<u64>) {
        self.bar.reset();
        self.bar.set_message("");
        match total {
            Some(n) => {
                self.bar.disable_steady_tick();
                self.bar.set_style(bar_style());
                self.bar.set_length(n);
            }
            None => {
                self.bar.set_style(spinner_style());
                self.bar.unset_length();
                self.bar.enable_steady_tick(Duration::from_millis(120));
            }
        }
    }

    fn inc(&mut self, n: u64) {
        self.bar.inc(n);
    }

    fn message(&mut self, text: &str) {
        self.bar.set_message(text.to_owned());
    }

    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Bar {
    /// A run that failed part-way: clear the bar before the error is printed.
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_only_for_people_watching_stderr() {
        assert!(draws(false, true));
        assert!(!draws(true, true), "--json: only the result");
        assert!(!draws(false, false), "piped or redirected: only the result");
        assert!(!draws(true, false));
    }

    #[test]
    fn the_bar_follows_the_phases() {
        let mut b = Bar::new("redeliver", ProgressDrawTarget::hidden());
        let bar = b.bar.clone();
        b.start(None);
        b.inc(1);
        b.inc(1);
        assert_eq!((bar.length(), bar.position()), (None, 2));
        b.start(Some(5));
        b.inc(3);
        b.message("requested 3, skipped 0, errors 0");
        assert_eq!((bar.length(), bar.position()), (Some(5), 3));
        assert_eq!(bar.message(), "requested 3, skipped 0, errors 0");
        b.finish();
        assert!(bar.is_finished());
    }

    #[test]
    fn a_run_that_fails_part_way_clears_its_bar() {
        let b = Bar::new("replay", ProgressDrawTarget::hidden());
        let bar = b.bar.clone();
        drop(b);
        assert!(bar.is_finished());
    }
}
