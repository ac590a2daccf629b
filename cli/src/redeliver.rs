//! `crcr redeliver`: ask GitHub to redeliver the App's webhook deliveries
//! that never got a 2xx answer. Wiring only: flags and `CRCR_GITHUB_*` →
//! `crcr_shared::redeliver` → a table for people or JSON (`--json`) on
//! stdout. Exit codes: 0 done, 1 something failed (listed in the output).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use crcr_shared::config::{github_app_from_env, Env};
use crcr_shared::ops::parse_duration;
use crcr_shared::ports::{Clock, InMemoryStateStore, StateStore, SystemClock};
use crcr_shared::redeliver::{Redeliverer, RunOptions};

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
        let db = crcr_shared::sqlite::Db::open(&args.database)?;
        Arc::new(crcr_shared::sqlite::SqliteKv::new(db, Arc::new(SystemClock)))
    } else {
        eprintln!("note: no database at {}: nothing is remembered between runs", args.database.display());
        Arc::new(InMemoryStateStore::default())
    };
    let redeliverer = Redeliverer::for_app(&app, state)?;
    let report = redeliverer.run(&RunOptions { since: args.since, dry_run: args.dry_run }).await?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.render(SystemClock.now_ms()))?;
    }
    Ok(if report.errors.is_empty() { 0 } else { 1 })
}
