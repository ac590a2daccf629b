//! `crcr redeliver`: ask GitHub to redeliver the App's webhook deliveries
//! that never got a 2xx answer. Wiring only: flags and `CRCR_GITHUB_*` →
//! `crcr_core::redeliver` → a table for people or JSON (`--json`) on
//! stdout, a progress bar on stderr for people (`crate::progress`). Exit codes: 0 done, 1 something failed (listed in the output).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use crcr_core::config::{github_app_from_env, Env};
use crcr_core::ports::{Clock, InMemoryStateStore, StateStore, SystemClock};
use crcr_core::redeliver::RunOptions;
use crcr_oncall::parse_duration;

/// `crcr redeliver [--since 6h] [--dry-run] [--json]`
#[derive(Args, Debug)]
#[command(after_help = "The App is read from CRCR_GITHUB_APP_ID, CRCR_GITHUB_APP_PRIVATE_KEY (or _FILE) and \
    CRCR_GITHUB_API_URL. Where the last run stopped and which GUIDs were already asked for are kept in the \
    `kv` table of --database (key `state#redeliver`), shared with `crcr serve`'s own schedule \
    (CRCR_REDELIVER_INTERVAL_SECS); without that file nothing is remembered between runs.")]
pub struct RedeliverArgs {
    /// Look back this far (90s, 15m, 6h, 2d; at most GitHub's 3 days) instead of from where the last run stopped
    /// [default: from the stored cursor, 6h without one].
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Show what would be redelivered; ask GitHub for nothing and store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// The SQLite file of `crcr serve`, where the cursor is kept (used only if it exists).
    #[arg(long, env = "CRCR_DATABASE", default_value = "crcr.sqlite")]
    pub database: PathBuf,
}

/// Runs one redeliver pass; returns the exit code.
pub async fn run(args: RedeliverArgs, env: &Env<'_>, out: &mut impl Write) -> anyhow::Result<i32> {
    let app = github_app_from_env(env)?;
    let state: Arc<dyn StateStore> = if args.database.exists() {
        let db = crcr_embedded::sqlite::Db::open(&args.database)?;
        Arc::new(crcr_embedded::sqlite::SqliteKv::new(db, Arc::new(SystemClock)))
    } else {
        eprintln!("note: no database at {}: nothing is remembered between runs", args.database.display());
        Arc::new(InMemoryStateStore::default())
    };
    let redeliverer = crcr_clients::compose::redeliverer(&app, state)?;
    let mut progress = crate::progress::progress_for(args.json, "redeliver");
    let report =
        redeliverer.run_with_progress(&RunOptions { since: args.since, dry_run: args.dry_run }, &mut *progress).await?;
    drop(progress);
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", crcr_oncall::redeliver::render(&report, SystemClock.now_ms()))?;
    }
    Ok(if report.errors.is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use crcr_standin::{HookDeliverySeed, StandIn, StandInOptions};

    use super::*;

    /// The App settings of `gh`, signing with `key`.
    fn app_env(gh: &StandIn, key: String) -> Env<'static> {
        let (id, url) = (gh.app_id().to_string(), gh.base_url());
        Env::new(move |k| match k {
            "CRCR_GITHUB_APP_ID" => Some(id.clone()),
            "CRCR_GITHUB_APP_PRIVATE_KEY" => Some(key.clone()),
            "CRCR_GITHUB_API_URL" => Some(url.clone()),
            _ => None,
        })
    }

    fn args(database: PathBuf, json: bool, dry_run: bool) -> RedeliverArgs {
        RedeliverArgs { since: None, dry_run, json, database }
    }

    #[tokio::test]
    async fn prints_a_table_then_json_and_keeps_the_cursor_in_the_database() {
        let gh = StandIn::start(StandInOptions::default()).await.unwrap();
        let ten_min_ago = SystemTime::now() - Duration::from_secs(600);
        gh.add_hook_delivery(HookDeliverySeed::new("guid-1", "pull_request", 502, ten_min_ago).action("opened"));
        let env = app_env(&gh, gh.private_key_pem());
        let dir = std::env::temp_dir().join(format!("crcr-redeliver-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let database = dir.join("crcr.sqlite");
        crcr_embedded::sqlite::Db::open(&database).unwrap();

        let mut out = Vec::new();
        assert_eq!(run(args(database.clone(), false, true), &env, &mut out).await.unwrap(), 0);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("dry run: read 1 page(s), 1 deliveries"), "{text}");
        assert!(text.contains("guid-1") && text.contains("pull_request.opened"), "{text}");
        assert!(text.contains("would request (attempt 1)"), "{text}");
        assert!(gh.redelivery_requests().is_empty());

        let mut out = Vec::new();
        assert_eq!(run(args(database.clone(), false, false), &env, &mut out).await.unwrap(), 0);
        assert!(String::from_utf8(out).unwrap().contains("redelivery requested (attempt 1)"));
        assert_eq!(gh.redelivery_requests().len(), 1);

        // The next run starts from the cursor kept in the database.
        let mut out = Vec::new();
        assert_eq!(run(args(database, true, false), &env, &mut out).await.unwrap(), 0);
        let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(report["from_cursor"], true);
        assert_eq!((report["redelivered"].as_u64(), report["skipped_ok"].as_u64()), (Some(0), Some(1)));
        assert_eq!(gh.redelivery_requests().len(), 1);

        // Without the database nothing is remembered: the same GUID is seen
        // afresh (now delivered, so still nothing to ask for).
        let mut out = Vec::new();
        assert_eq!(run(args(dir.join("missing.sqlite"), true, false), &env, &mut out).await.unwrap(), 0);
        let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(report["from_cursor"], false);
        assert!(!dir.join("missing.sqlite").exists(), "no database file is created");
    }

    #[tokio::test]
    async fn github_refusing_the_app_exits_1_with_the_reason() {
        let gh = StandIn::start(StandInOptions::default()).await.unwrap();
        let other = StandIn::start(StandInOptions::default()).await.unwrap();
        let env = app_env(&gh, other.private_key_pem());
        let mut out = Vec::new();
        let code = run(args(PathBuf::from("/nonexistent/crcr.sqlite"), false, false), &env, &mut out).await.unwrap();
        assert_eq!(code, 1);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("error: listing deliveries (page 1): GitHub refused the App's credentials (401"),
            "{text}"
        );
    }
}
