//! On-call commands: `crcr dlq list|show|replay|purge`, `crcr status`, `crcr hud retry`,
//! `crcr target list|pause|resume`, `crcr allowlist check`. Wiring only: flags → `crcr_oncall` → text
//! (tables for people) or JSON (`--json`, for scripts) on stdout; errors on
//! stderr, and a progress bar there for people (`crate::progress`). Exit codes: 0 done, 1 failed (or partly failed), 2
//! refused (purge without `--yes`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use crcr_core::allowlist::{Allowlist, AllowlistSource};
use crcr_core::config::Env;
use crcr_core::domain::RepoFullName;
use crcr_core::ports::{Clock, SystemClock};
use crcr_oncall::allowlist::{diff, render_check, AllowlistSummary, CheckReport};
use crcr_oncall::backend::{self, OpsPorts, QueueName};
use crcr_oncall::dlq::{self, Dlq, DlqFilter, ReplayOptions, ScanOptions};
use crcr_oncall::hud::{self as hud_ops, HudRetryFilter};
use crcr_oncall::status::{self, AllowlistStatus, StatusOptions};
use crcr_oncall::{parse_duration, parse_rate};
use serde::Serialize;

use crate::progress::progress_for;

/// Exit code of a command that was refused (purge without `--yes`).
pub const EXIT_REFUSED: i32 = 2;

// ---------------------------------------------------------------- arguments

/// Where the relay's queues and records are.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// The SQLite file of `crcr serve`.
    #[arg(long, global = true, env = "CRCR_DATABASE", default_value = "crcr.sqlite")]
    pub database: PathBuf,
    /// Work on AWS instead: SQS and DynamoDB named by CRCR_DISPATCH_QUEUE_URL, CRCR_DISPATCH_DLQ_URL
    /// (or CRCR_RECONCILE_QUEUE_URL, CRCR_RECONCILE_DLQ_URL), CRCR_DISPATCH_TABLE, CRCR_PAYLOAD_TABLE and
    /// CRCR_AWS_ENDPOINT_URL, with the usual AWS credential chain.
    #[arg(long, global = true)]
    pub aws: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueArg {
    Dispatch,
    Reconcile,
}

impl From<QueueArg> for QueueName {
    fn from(q: QueueArg) -> Self {
        match q {
            QueueArg::Dispatch => QueueName::Dispatch,
            QueueArg::Reconcile => QueueName::Reconcile,
        }
    }
}

/// `crcr dlq ...`
#[derive(Args, Debug)]
pub struct DlqArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Which queue's dead-letter queue.
    #[arg(long, global = true, value_enum, default_value = "dispatch")]
    pub queue: QueueArg,
    /// Read at most this many DLQ messages.
    #[arg(long, global = true, default_value_t = 1000)]
    pub max_scan: usize,
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// One row per DLQ message: ids, event, PR or ref, age, receives, failure class and reason, targets still
    /// pending. Reads the DLQ with a short hold and releases every message: nothing is lost or left hidden.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// One message in full (decoded body, claim-checked payload) with its attempt history.
    Show {
        /// A DLQ message id or a delivery id (X-GitHub-Delivery).
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Move matching messages back to the source queue, one by one (send the copy, then delete the original).
    /// Targets already dispatched are not dispatched again.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show what would move; move nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many moves: N/s, N/m or N/h (0 = no limit).
        #[arg(long, default_value = "10/s", value_parser = parse_rate_arg)]
        rate: Rate,
        #[arg(long)]
        json: bool,
    },
    /// Delete matching messages judged unrecoverable. Without --yes, only lists what it would delete.
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Really delete.
        #[arg(long)]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Which messages (all when none given).
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Event, or event.action (pull_request, pull_request.opened, push).
    #[arg(long)]
    pub event: Option<String>,
    /// A target repository (owner/repo) of the delivery.
    #[arg(long, value_parser = parse_repo)]
    pub repo: Option<RepoFullName>,
    /// Only events accepted within this long (90s, 15m, 2h, 3d, 1h30m).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Text in the failure reason (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// A message id or delivery id (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// At most this many messages (oldest first).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// Moves per second; `None`: no limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate(pub Option<f64>);

fn parse_rate_arg(s: &str) -> Result<Rate, String> {
    parse_rate(s).map(Rate)
}

fn parse_repo(s: &str) -> Result<RepoFullName, String> {
    RepoFullName::parse(s).map_err(|e| e.to_string())
}

impl From<&FilterArgs> for DlqFilter {
    fn from(f: &FilterArgs) -> Self {
        DlqFilter {
            event: f.event.clone(),
            repo: f.repo.clone(),
            since: f.since,
            reason: f.reason.clone(),
            ids: f.ids.clone(),
            limit: f.limit,
        }
    }
}

/// `crcr status`
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Dispatch outcomes and callbacks over this window.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub window: std::time::Duration,
    /// Never read the DLQs (on SQS the age of their oldest message is then unknown).
    #[arg(long)]
    pub no_peek: bool,
    #[arg(long)]
    pub json: bool,
}

/// `crcr hud ...`
#[derive(Args, Debug)]
pub struct HudArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(subcommand)]
    pub command: HudCommand,
}

#[derive(Subcommand, Debug)]
pub enum HudCommand {
    /// Put HUD records parked as failed (HUD kept answering 5xx or nothing past CRCR_HUD_MAX_ATTEMPTS /
    /// CRCR_HUD_MAX_AGE_SECS) back in the outbox: the relay's next sweeps send them, in each job's lifecycle order.
    /// The jobs table is CRCR_JOBS_TABLE with --aws.
    Retry {
        /// Only this delivery's records (X-GitHub-Delivery, or the commit SHA of a nightly/periodic job).
        #[arg(long)]
        delivery: Option<String>,
        /// Only records of this downstream repository (owner/repo).
        #[arg(long, value_parser = parse_repo)]
        repo: Option<RepoFullName>,
        /// Only records written within this long (90s, 15m, 2h, 3d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<std::time::Duration>,
        /// Rejected records (HUD answered 4xx) too.
        #[arg(long)]
        rejected: bool,
        /// Read at most this many parked records (of each state).
        #[arg(long, default_value_t = 10_000)]
        max_scan: usize,
        /// Show what would be put back; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

/// `crcr target ...`
#[derive(Args, Debug)]
pub struct TargetArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(subcommand)]
    pub command: TargetCommand,
}

#[derive(Subcommand, Debug)]
pub enum TargetCommand {
    /// Every allowlisted target (CRCR_ALLOWLIST_FILE or CRCR_ALLOWLIST_URL) with its breaker: sending, open (paused
    /// by the relay after failing for good, probing after the cool-down) or paused (by on-call).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop dispatching to a target until `crcr target resume` (its dispatches are recorded paused). Every relay
    /// process stops within 10 s.
    Pause {
        #[arg(value_parser = parse_repo)]
        repo: RepoFullName,
        /// Why (shown by `crcr target list` and in the paused dispatch records).
        #[arg(long)]
        reason: String,
        /// Who (default: $USER).
        #[arg(long, env = "USER", default_value = "on-call")]
        by: String,
        #[arg(long)]
        json: bool,
    },
    /// Dispatch to a target again now: its breaker closed, its failures forgotten.
    Resume {
        #[arg(value_parser = parse_repo)]
        repo: RepoFullName,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AllowlistCommand {
    /// Validate an allowlist; print its levels, devices and oncalls, and the changes against the one in use.
    Check {
        /// A file, a `https://github.com/<owner>/<repo>/blob/<ref>/<path>` URL, or another https URL.
        source: String,
        /// Compare against this one instead of the allowlist in use (CRCR_ALLOWLIST_FILE or CRCR_ALLOWLIST_URL).
        #[arg(long)]
        against: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

// ---------------------------------------------------------------- running

async fn open(b: &BackendArgs, queue: QueueName, env: &Env<'_>) -> anyhow::Result<OpsPorts> {
    Ok(if b.aws {
        backend::aws(env, queue).await?
    } else {
        let max_receive_count = env.parsed("CRCR_MAX_RECEIVE_COUNT", 5u32)?;
        backend::sqlite(&b.database, queue, max_receive_count)?
    })
}

fn json_out(out: &mut dyn Write, v: &impl Serialize) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Runs `crcr dlq ...`; returns the exit code.
pub async fn run_dlq(args: DlqArgs, env: &Env<'_>, out: &mut dyn Write) -> anyhow::Result<i32> {
    let ports = open(&args.backend, args.queue.into(), env).await?;
    let clock = SystemClock;
    let d = Dlq { queue: &*ports.queue, store: &*ports.store, blobs: Some(&*ports.blobs), clock: &clock };
    let scan = ScanOptions { max_messages: args.max_scan, ..ScanOptions::peek() };
    let work = ScanOptions { max_messages: args.max_scan, ..ScanOptions::work() };
    match args.command {
        DlqCommand::List { filter, json } => {
            let l = d.list(&(&filter).into(), &scan).await.with_context(|| ports.description.clone())?;
            if json {
                json_out(out, &l)?;
            } else {
                write!(out, "{}", dlq::render_listing(&l))?;
            }
            Ok(0)
        }
        DlqCommand::Show { id, json } => {
            let r = d.show(&id, &scan).await.with_context(|| ports.description.clone())?;
            if json {
                json_out(out, &r)?;
            } else {
                write!(out, "{}", dlq::render_show(&r, clock.now_ms()))?;
            }
            Ok(if r.messages.is_empty() { 1 } else { 0 })
        }
        DlqCommand::Replay { filter, dry_run, rate, json } => {
            let opts = ReplayOptions { dry_run, rate_per_sec: rate.0 };
            let mut progress = progress_for(json, "replay");
            let r = d
                .replay(&(&filter).into(), &work, &opts, &mut *progress)
                .await
                .with_context(|| ports.description.clone())?;
            if json {
                json_out(out, &r)?;
            } else {
                write!(out, "{}", dlq::render_move_report(&r, "moved"))?;
            }
            Ok(if r.failed.is_empty() && r.skipped.is_empty() { 0 } else { 1 })
        }
        DlqCommand::Purge { filter, yes, json } => {
            let opts = ReplayOptions { dry_run: !yes, rate_per_sec: None };
            let mut progress = progress_for(json, "purge");
            let r = d
                .purge(&(&filter).into(), &work, &opts, &mut *progress)
                .await
                .with_context(|| ports.description.clone())?;
            if json {
                json_out(out, &r)?;
            } else {
                write!(out, "{}", dlq::render_move_report(&r, "removed"))?;
            }
            if !yes {
                eprintln!(
                    "refusing to purge without --yes: nothing was removed ({} message(s) listed above would be)",
                    r.done.len()
                );
                return Ok(EXIT_REFUSED);
            }
            Ok(if r.failed.is_empty() && r.skipped.is_empty() { 0 } else { 1 })
        }
    }
}

/// Runs `crcr status`; returns the exit code (1 when a section could not be read).
pub async fn run_status(args: StatusArgs, env: &Env<'_>, out: &mut dyn Write) -> anyhow::Result<i32> {
    let dispatch = open(&args.backend, QueueName::Dispatch, env).await?;
    // The reconcile queue too: always in the SQLite file; on AWS when its URLs are set.
    let reconcile = match open(&args.backend, QueueName::Reconcile, env).await {
        Ok(p) => Some(p),
        Err(_) if args.backend.aws => None,
        Err(e) => return Err(e),
    };
    let mut queues: Vec<(&str, &dyn crcr_core::ports::EventQueue)> =
        vec![(QueueName::Dispatch.as_str(), &*dispatch.queue)];
    if let Some(r) = &reconcile {
        queues.push((QueueName::Reconcile.as_str(), &*r.queue));
    }
    let opts = StatusOptions { window: args.window, peek_dlq: !args.no_peek };
    let jobs = status::job_store(args.backend.aws, &args.backend.database, env).await?;
    let mut report = status::status(&queues, &*dispatch.store, jobs.as_deref(), &SystemClock, &opts).await;
    report.allowlist = match in_use_source(env) {
        None => None,
        Some(source) => {
            let read_at_ms = SystemClock.now_ms();
            Some(match load_allowlist(&source, env).await {
                Ok(list) => {
                    report.paused_targets = paused_targets(&args.backend, &list, env).await;
                    AllowlistStatus { source, read_at_ms, summary: Some(AllowlistSummary::of(&list)), error: None }
                }
                Err(e) => AllowlistStatus { source, read_at_ms, summary: None, error: Some(format!("{e:#}")) },
            })
        }
    };
    if args.json {
        json_out(out, &report)?;
    } else {
        write!(out, "{}", status::render_status(&report))?;
    }
    Ok(if report.has_errors() { 1 } else { 0 })
}

/// Runs `crcr target ...`; returns the exit code (1 when `list` has no
/// allowlist to list).
pub async fn run_target(args: TargetArgs, env: &Env<'_>, out: &mut dyn Write) -> anyhow::Result<i32> {
    use crcr_oncall::targets::{self, TargetLine};
    let state = targets::state_store(args.backend.aws, &args.backend.database, env).await?;
    let breakers = targets::breakers(state);
    match args.command {
        TargetCommand::List { json } => {
            let Some(source) = in_use_source(env) else {
                bail!("no allowlist to list: set CRCR_ALLOWLIST_FILE or CRCR_ALLOWLIST_URL");
            };
            let allowlist = load_allowlist(&source, env).await?;
            let lines = targets::list(&breakers, &allowlist).await?;
            if json {
                json_out(out, &lines)?;
            } else {
                write!(out, "{}", targets::render_list(&lines))?;
            }
        }
        TargetCommand::Pause { repo, reason, by, json } => {
            let breaker = breakers.pause(&repo, &by, &reason).await?;
            let line = TargetLine::of(repo, None, breaker);
            if json {
                json_out(out, &line)?;
            } else {
                writeln!(out, "{}: paused by {by} until `crcr target resume {}`", line.repo, line.repo)?;
            }
        }
        TargetCommand::Resume { repo, json } => {
            let was = breakers.resume(&repo).await?;
            let line = TargetLine::of(repo, None, was);
            if json {
                json_out(out, &line)?;
            } else {
                writeln!(out, "{}: sending again (was {})", line.repo, line.state)?;
            }
        }
    }
    Ok(0)
}

/// The allowlisted targets whose breaker is open or paused, for `crcr
/// status` (`None` on AWS without `CRCR_KV_TABLE`).
async fn paused_targets(backend: &BackendArgs, list: &Allowlist, env: &Env<'_>) -> Option<status::PausedTargets> {
    use crcr_oncall::targets;
    if backend.aws && env.opt("CRCR_KV_TABLE").is_none() {
        return None;
    }
    let read = async {
        let state = targets::state_store(backend.aws, &backend.database, env).await?;
        anyhow::Ok(targets::list(&targets::breakers(state), list).await?)
    };
    Some(match read.await {
        Ok(lines) => {
            status::PausedTargets { targets: lines.into_iter().filter(|l| l.is_paused()).collect(), error: None }
        }
        Err(e) => status::PausedTargets { targets: vec![], error: Some(format!("{e:#}")) },
    })
}

/// Runs `crcr allowlist ...`; returns the exit code (1 when the allowlist is not valid).
/// `crcr hud retry`: exit 0 (also when nothing matched), 1 when the job
/// store cannot be opened or read.
pub async fn run_hud(args: HudArgs, env: &Env<'_>, out: &mut dyn Write) -> anyhow::Result<i32> {
    let HudCommand::Retry { delivery, repo, since, rejected, max_scan, dry_run, json } = args.command;
    let jobs = status::job_store(args.backend.aws, &args.backend.database, env)
        .await?
        .context("--aws needs CRCR_JOBS_TABLE (the jobs table)")?;
    let now = SystemClock.now_ms();
    let filter = HudRetryFilter {
        delivery: delivery
            .map(|d| crcr_core::domain::DeliveryId::parse(&d))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--delivery: {e}"))?,
        repo,
        created_since_ms: since.map(|s| now - s.as_millis() as i64),
        include_rejected: rejected,
    };
    let mut progress = progress_for(json, "hud retry");
    let report = hud_ops::retry(&*jobs, &filter, max_scan, dry_run, now, &mut *progress).await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", hud_ops::render(&report))?;
    }
    Ok(0)
}

pub async fn run_allowlist(cmd: AllowlistCommand, env: &Env<'_>, out: &mut dyn Write) -> anyhow::Result<i32> {
    let AllowlistCommand::Check { source, against, json } = cmd;
    let proposed = match load_allowlist(&source, env).await {
        Ok(l) => l,
        Err(e) => {
            if json {
                json_out(out, &serde_json::json!({ "source": source, "valid": false, "error": format!("{e:#}") }))?;
            } else {
                writeln!(out, "{source}: NOT VALID: {e:#}")?;
            }
            return Ok(1);
        }
    };
    let against = against.or_else(|| in_use_source(env));
    let (diff, against_error) = match &against {
        None => (None, None),
        Some(a) => match load_allowlist(a, env).await {
            Ok(current) => (Some(diff(&current, &proposed)), None),
            Err(e) => (None, Some(format!("the allowlist in use ({a}) cannot be read: {e:#}"))),
        },
    };
    let report = CheckReport {
        source: source.clone(),
        summary: AllowlistSummary::of(&proposed),
        against: against.filter(|_| diff.is_some()),
        diff,
        against_error,
    };
    if json {
        json_out(out, &report)?;
    } else {
        write!(out, "{}", render_check(&report))?;
    }
    Ok(0)
}

// ---------------------------------------------------------------- allowlists

/// The allowlist the relay is configured with (`CRCR_ALLOWLIST_FILE` or `CRCR_ALLOWLIST_URL`).
fn in_use_source(env: &Env<'_>) -> Option<String> {
    env.opt("CRCR_ALLOWLIST_FILE").or_else(|| env.opt("CRCR_ALLOWLIST_URL"))
}

/// Reads and validates an allowlist from a file, a GitHub file URL (through
/// the App when CRCR_GITHUB_APP_ID and its key are set, else anonymously
/// from raw.githubusercontent.com, which serves public repositories) or
/// another https URL.
async fn load_allowlist(source: &str, env: &Env<'_>) -> anyhow::Result<Allowlist> {
    let text = if source.starts_with("https://") || source.starts_with("http://") {
        fetch(source, env).await?
    } else {
        std::fs::read_to_string(source).with_context(|| format!("cannot read {source}"))?
    };
    Ok(Allowlist::parse(&text)?)
}

async fn fetch(url: &str, env: &Env<'_>) -> anyhow::Result<String> {
    if let Ok(AllowlistSource::GitHub { repo, git_ref, path }) = AllowlistSource::from_url(url) {
        if let Some(text) = crcr_oncall::allowlist::fetch_with_app(env, url).await? {
            return Ok(text);
        }
        let raw = format!("https://raw.githubusercontent.com/{}/{}/{git_ref}/{path}", repo.owner(), repo.name());
        return get(&raw).await;
    }
    get(url).await
}

async fn get(url: &str) -> anyhow::Result<String> {
    let res = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(20))
        .user_agent("crcr-allowlist-check")
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !res.status().is_success() {
        bail!("GET {url}: {}", res.status());
    }
    Ok(res.text().await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use crcr_core::ports::{QueueReceive, QueueSend, QueueSettle};

    #[derive(Parser, Debug)]
    struct T {
        #[command(subcommand)]
        c: C,
    }
    #[derive(Subcommand, Debug)]
    enum C {
        Dlq(DlqArgs),
        Status(StatusArgs),
        Allowlist {
            #[command(subcommand)]
            command: AllowlistCommand,
        },
    }

    fn env(vars: &[(&str, String)]) -> Env<'static> {
        let map: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        Env::new(move |k| map.get(k).cloned())
    }

    /// Runs `crcr <args>` (the on-call subcommands) and returns (exit code, stdout).
    async fn run(args: &[&str], env: &Env<'_>) -> anyhow::Result<(i32, String)> {
        let t = T::try_parse_from(std::iter::once("crcr").chain(args.iter().copied()))?;
        let mut out = Vec::new();
        let code = match t.c {
            C::Dlq(a) => run_dlq(a, env, &mut out).await?,
            C::Status(a) => run_status(a, env, &mut out).await?,
            C::Allowlist { command } => run_allowlist(command, env, &mut out).await?,
        };
        Ok((code, String::from_utf8(out)?))
    }

    /// A database file with one dead-lettered push and one message waiting on the source queue.
    async fn database() -> (PathBuf, String) {
        use crcr_core::ports::QueueSide;
        let path = std::env::temp_dir().join(format!("crcr-cli-ops-{}.sqlite", uuid::Uuid::new_v4().simple()));
        let q = crcr_embedded::sqlite::SqliteQueue::new(crcr_embedded::sqlite::Db::open(&path).unwrap(), "dispatch", 5);
        let delivery = uuid::Uuid::new_v4().to_string();
        let body = format!(
            r#"{{"type":"dispatch_v1","delivery_id":"{delivery}","event":"push","action":null,"received_at_ms":{},"payload":{{"inline":{{"ref":"refs/heads/main"}}}}}}"#,
            SystemClock.now_ms()
        );
        q.send(&body).await.unwrap();
        let m = q
            .receive(QueueSide::Source, 1, std::time::Duration::from_secs(30), std::time::Duration::ZERO)
            .await
            .unwrap();
        q.dead_letter(&m[0], "still failing after 5 receives: org/a: 503 Service Unavailable").await.unwrap();
        q.send(r#"{"type":"dispatch_v1"}"#).await.unwrap();
        (path, delivery)
    }

    #[tokio::test]
    async fn dlq_commands_on_a_database_file() {
        let (path, delivery) = database().await;
        let db = path.to_str().unwrap().to_owned();
        let e = env(&[]);
        let d = ["--database", db.as_str()];
        let run = |args: &[&str]| {
            let args: Vec<String> = args.iter().copied().chain(d).map(str::to_owned).collect();
            let e = &e;
            async move { run(&args.iter().map(String::as_str).collect::<Vec<_>>(), e).await }
        };

        let (code, text) = run(&["dlq", "list"]).await.unwrap();
        assert_eq!(code, 0);
        assert!(text.contains(&delivery) && text.contains("refs/heads/main") && text.contains("org/a: 503"), "{text}");
        let (_, json) = run(&["dlq", "list", "--json", "--event", "push"]).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["messages"][0]["delivery_id"], delivery.as_str());
        assert_eq!(v["messages"][0]["failure_class"], "retries_exhausted");
        let (_, none) = run(&["dlq", "list", "--json", "--event", "pull_request"]).await.unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&none).unwrap()["matched"], 0);

        let (code, text) = run(&["dlq", "show", &delivery]).await.unwrap();
        assert_eq!(code, 0);
        assert!(text.contains("attempt history") && text.contains("\"ref\": \"refs/heads/main\""), "{text}");
        assert_eq!(run(&["dlq", "show", "no-such-message"]).await.unwrap().0, 1);

        let (code, text) = run(&["status", "--json"]).await.unwrap();
        assert_eq!(code, 0, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["queues"][0]["source"]["depth"], 1);
        assert_eq!(v["queues"][0]["dead_letter"]["depth"], 1);
        assert_eq!(v["queues"][1]["name"], "reconcile");
        assert_eq!(v["queues"][1]["source"]["depth"], 0);
        assert_eq!(v["dispatches"]["counts"]["dispatched"], 0);
        assert_eq!(v["callbacks"]["counts"]["in_progress"], 0);
        assert_eq!(v["hud_outbox"]["pending"], 0);
        assert_eq!(v["hud_outbox"]["oldest_created_at_ms"], serde_json::Value::Null);

        let (code, text) = run(&["dlq", "purge"]).await.unwrap();
        assert_eq!(code, EXIT_REFUSED, "purge without --yes refuses");
        assert!(text.contains("would be removed") && text.contains(&delivery), "{text}");
        let (code, text) = run(&["dlq", "replay", "--dry-run"]).await.unwrap();
        assert_eq!(code, 0);
        assert!(text.contains("dry run: 1 would be moved, nothing changed"), "{text}");
        let (code, text) = run(&["dlq", "purge", "--yes", "--id", &delivery]).await.unwrap();
        assert_eq!(code, 0);
        assert!(text.contains("removed:") && text.contains("1 removed, 0 skipped, 0 failed"), "{text}");
        let (_, json) = run(&["dlq", "list", "--json"]).await.unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&json).unwrap()["scanned"], 0);

        let missing = format!("{db}.nope");
        let err = super::tests::run(&["dlq", "list", "--database", &missing], &e).await.unwrap_err();
        assert!(err.to_string().contains("no database at"), "{err}");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{db}{suffix}"));
        }
    }

    #[tokio::test]
    async fn allowlist_check_against_a_file() {
        let dir = std::env::temp_dir().join(format!("crcr-cli-allowlist-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old, new, bad) = (dir.join("old.yml"), dir.join("new.yml"), dir.join("bad.yml"));
        std::fs::write(&old, "L1:\n  - org/a\n  - org/b\n").unwrap();
        std::fs::write(&new, "L1:\n  - org/a\nL3:\n  gpu:\n    org/c: [alice]\n").unwrap();
        std::fs::write(&bad, "L1: [org/a, org/a]\n").unwrap();
        let e = env(&[("CRCR_ALLOWLIST_FILE", old.display().to_string())]);
        let (code, text) = run(&["allowlist", "check", new.to_str().unwrap()], &e).await.unwrap();
        assert_eq!(code, 0);
        assert!(text.contains("valid") && text.contains("gpu: org/c") && text.contains("@alice"), "{text}");
        assert!(
            text.contains("  + org/c (L3, device gpu, oncalls @alice)") && text.contains("  - org/b (was L1)"),
            "{text}"
        );
        let (code, text) = run(&["allowlist", "check", bad.to_str().unwrap()], &e).await.unwrap();
        assert_eq!(code, 1);
        assert!(text.contains("NOT VALID") && text.contains("twice"), "{text}");
        let (_, json) =
            run(&["allowlist", "check", new.to_str().unwrap(), "--against", new.to_str().unwrap(), "--json"], &e)
                .await
                .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["diff"]["unchanged"], 2);
        assert_eq!(v["summary"]["levels"]["L3"], 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn flags_parse() {
        let t = T::try_parse_from([
            "crcr",
            "dlq",
            "replay",
            "--event",
            "pull_request.opened",
            "--repo",
            "Org/Repo",
            "--since",
            "2h",
            "--rate",
            "5/s",
            "--limit",
            "3",
            "--dry-run",
            "--database",
            "x.sqlite",
        ])
        .unwrap();
        let C::Dlq(d) = t.c else { panic!() };
        assert_eq!(d.backend.database, PathBuf::from("x.sqlite"));
        assert_eq!(d.queue, QueueArg::Dispatch);
        let DlqCommand::Replay { filter, dry_run, rate, .. } = d.command else { panic!() };
        assert!(dry_run);
        assert_eq!(rate, Rate(Some(5.0)));
        assert_eq!(filter.since, Some(std::time::Duration::from_secs(7200)));
        assert_eq!(filter.repo.unwrap().key(), "org/repo");
        assert!(T::try_parse_from(["crcr", "dlq", "list", "--since", "2 hours"]).is_err());
        assert!(T::try_parse_from(["crcr", "dlq", "list", "--repo", "nope"]).is_err());
        assert!(T::try_parse_from(["crcr", "dlq", "list", "--queue", "other"]).is_err());
        let t = T::try_parse_from(["crcr", "dlq", "--aws", "purge", "--yes", "--queue", "reconcile"]).unwrap();
        let C::Dlq(d) = t.c else { panic!() };
        assert!(d.backend.aws);
        assert_eq!(d.queue, QueueArg::Reconcile);
        let t = T::try_parse_from(["crcr", "status", "--json", "--window", "30m"]).unwrap();
        let C::Status(s) = t.c else { panic!() };
        assert_eq!(s.window, std::time::Duration::from_secs(1800));
    }
}
