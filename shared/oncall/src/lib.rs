//! On-call operations, the library behind `crcr dlq`, `crcr status`,
//! `crcr hud retry`, `crcr target` and `crcr allowlist check`: inspect, replay and purge a dead-letter queue,
//! the relay's figures, and the review of a proposed allowlist.
//! Long runs report how far they are through [`progress::Progress`].
//!
//! Everything here works through the ports ([`EventQueue`],
//! [`DispatchStore`], [`BlobStore`]), so the same code runs against SQS +
//! DynamoDB and against the embedded SQLite file; the CLI only wires
//! adapters, parses flags and prints.
//!
//! Reading a DLQ never loses or hides a message for long: messages are
//! received with a short visibility timeout (the "hold") and released with
//! `change_visibility(0)` as soon as the command is done with them, and a
//! command that dies mid-way leaves them to reappear when the hold runs out.
//! Receiving counts as a receive: the DLQ's receive counts grow with every
//! read (harmless, a DLQ has no redrive policy).
//!
//! [`EventQueue`]: crcr_core::ports::EventQueue
//! [`DispatchStore`]: crcr_core::ports::DispatchStore
//! [`BlobStore`]: crcr_core::ports::BlobStore

pub mod allowlist;
pub mod backend;
pub mod dlq;
pub mod hud;
pub mod redeliver;
pub mod status;
pub mod table;
pub mod targets;
pub mod trace;

/// The progress port the long commands report to (defined with the domain
/// code that reports to it).
pub use crcr_core::progress;

use std::time::Duration;

/// Parses a duration written as `90s`, `15m`, `2h`, `3d`, `1h30m` or a bare
/// number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut digits = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return Err(format!("{text:?}: unknown unit {c:?} (use s, m, h, d or w, e.g. 2h or 1h30m)")),
        };
        let n: u64 = digits.parse().map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{text:?}: the last number has no unit (e.g. 2h, 30m)"));
    }
    Ok(Duration::from_secs(total))
}

/// Parses a rate written as `5/s`, `120/m`, `1000/h` or a bare number per
/// second; `0` means no limit (`None`).
pub fn parse_rate(text: &str) -> Result<Option<f64>, String> {
    let t = text.trim();
    let (n, per) = match t.split_once('/') {
        None => (t, 1.0),
        Some((n, unit)) => match unit.trim() {
            "s" | "sec" | "second" => (n, 1.0),
            "m" | "min" | "minute" => (n, 60.0),
            "h" | "hour" => (n, 3600.0),
            other => return Err(format!("{text:?}: unknown rate unit {other:?} (use N/s, N/m or N/h)")),
        },
    };
    let n: f64 = n.trim().parse().map_err(|_| format!("{text:?} is not a rate (e.g. 5/s)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{text:?}: a rate must be a positive number"));
    }
    Ok((n > 0.0).then_some(n / per))
}

/// A short human age: `42s`, `3m12s`, `2h05m`, `3d04h`.
pub fn format_age(ms: i64) -> String {
    if ms < 0 {
        return format!("in {}", format_age(-ms));
    }
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A UTC timestamp (`2024-05-01T12:34:56Z`) for ms since the epoch.
pub use crcr_core::ports::format_time;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("3d").unwrap(), Duration::from_secs(3 * 86_400));
        assert!(parse_duration("2x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("1h30").unwrap_err().contains("no unit"));
        assert!(parse_duration("h").unwrap_err().contains("number must come before"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("5/s").unwrap(), Some(5.0));
        assert_eq!(parse_rate("5").unwrap(), Some(5.0));
        assert_eq!(parse_rate("120/m").unwrap(), Some(2.0));
        assert_eq!(parse_rate("0").unwrap(), None);
        assert!(parse_rate("5/y").is_err());
        assert!(parse_rate("-1/s").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn ages() {
        assert_eq!(format_age(42_000), "42s");
        assert_eq!(format_age(192_000), "3m12s");
        assert_eq!(format_age(2 * 3_600_000 + 5 * 60_000), "2h05m");
        assert_eq!(format_age(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
    }
}
