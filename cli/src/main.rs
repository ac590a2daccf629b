//! `crcr`: the relay on one machine (`serve`), a self-contained demo
//! (`demo`), and the on-call commands (`dlq`, `status`, `allowlist`).
//! Wiring only: the behaviour lives in `crcr-core`.

mod demo;
mod ops;
mod progress;
mod redeliver;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crcr_core::config::{EmbeddedConfig, Env, RelayConfig};
use crcr_embedded::EmbeddedRelay;

#[derive(Parser)]
#[command(name = "crcr", version, about = "Cross-repository CI relay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run ingest and the dispatcher in one process on SQLite (settings: CRCR_* environment, see README).
    Serve,
    /// Run the relay against a local GitHub stand-in with real webhook fixtures and print what it did.
    Demo {
        /// Also print the relay's logs.
        #[arg(long)]
        verbose: bool,
    },
    /// Inspect, replay or purge a dead-letter queue (SQLite file, or --aws).
    Dlq(ops::DlqArgs),
    /// Queue and DLQ depths, oldest messages, dispatch outcomes and callbacks of the last hour, HUD outbox backlog,
    /// allowlist version.
    Status(ops::StatusArgs),
    /// The whole chain of one delivery: dispatches, jobs, HUD records, refused callbacks (SQLite file, or --aws).
    Trace {
        delivery_id: String,
        /// The SQLite file of `crcr serve`.
        #[arg(long, env = "CRCR_DATABASE", default_value = "crcr.sqlite")]
        database: std::path::PathBuf,
        /// Read the DynamoDB dispatch and jobs tables instead (usual AWS credential chain).
        #[arg(long)]
        aws: bool,
        /// With --aws: the dispatch table.
        #[arg(long, env = "CRCR_DISPATCH_TABLE")]
        dispatch_table: Option<String>,
        /// With --aws: the jobs table.
        #[arg(long, env = "CRCR_JOBS_TABLE")]
        jobs_table: Option<String>,
        /// With --aws: the kv table, to show dispatches no longer tracked (superseded head, closed PR).
        #[arg(long, env = "CRCR_KV_TABLE")]
        kv_table: Option<String>,
        /// With --aws: an AWS emulator's endpoint (tests); unset on AWS.
        #[arg(long, env = "CRCR_AWS_ENDPOINT_URL")]
        endpoint_url: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// HUD records the relay gave up on: put them back in the outbox (SQLite file, or --aws).
    Hud(ops::HudArgs),
    /// Downstream targets' breakers: list, pause, resume (SQLite file, or --aws with CRCR_KV_TABLE).
    Target(ops::TargetArgs),
    /// Ask GitHub to redeliver the App's webhook deliveries that failed (past 3 days at most).
    Redeliver(redeliver::RedeliverArgs),
    /// Review an allowlist (validate, show, diff against the one in use).
    Allowlist {
        #[command(subcommand)]
        command: ops::AllowlistCommand,
    },
}

/// Logs on stderr: `CRCR_LOG` filter (else `default`), `CRCR_LOG_FORMAT=json` for JSON lines.
fn init_tracing(default: &str) {
    use crcr_telemetry::{init_logs, LogFormat};
    init_logs(default, LogFormat::from_env(), std::io::stderr);
}

/// The process's allocator: jemalloc, configured in `.cargo/config.toml`
/// (background threads return pages unused for 1 s). With glibc's malloc
/// `crcr serve` kept what its busiest moments had allocated: at 500
/// webhooks/s (`relay-load`, bench/), 31 MB in use but 69 MB taken from
/// the system at 135 s (fragmentation across its per-thread arenas). With
/// jemalloc the process holds 54-58 MiB between bursts over 5 minutes; its
/// peaks (72-74 MiB, glibc's 73-76) come with bursts of connections. CPU
/// per webhook 1.77-1.88 ms (glibc 1.87-1.91). mimalloc held more (93 MiB).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            init_tracing("info");
            let env = Env::process();
            let relay = RelayConfig::from_env(&env)?;
            let emb = EmbeddedConfig::from_env(&env)?;
            tracing::info!(config = ?relay, embedded = ?emb, "starting crcr serve");
            let listener = tokio::net::TcpListener::bind(emb.listen)
                .await
                .with_context(|| format!("CRCR_LISTEN {}", emb.listen))?;
            EmbeddedRelay::build(&relay, &emb)?
                .with_redeliver_interval(crcr_core::config::redeliver_interval(&env)?)
                .run(listener, shutdown_signal())
                .await?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Demo { verbose } => {
            init_tracing(if verbose { "info" } else { "off" });
            let ok = demo::run().await?;
            if ok {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        // On-call commands: logs only when CRCR_LOG asks for them.
        Command::Dlq(args) => {
            init_tracing("off");
            exit_with(ops::run_dlq(args, &Env::process(), &mut std::io::stdout().lock()).await)
        }
        Command::Status(args) => {
            init_tracing("off");
            exit_with(ops::run_status(args, &Env::process(), &mut std::io::stdout().lock()).await)
        }
        Command::Hud(args) => {
            init_tracing("off");
            exit_with(ops::run_hud(args, &Env::process(), &mut std::io::stdout().lock()).await)
        }
        Command::Target(args) => {
            init_tracing("off");
            exit_with(ops::run_target(args, &Env::process(), &mut std::io::stdout().lock()).await)
        }
        Command::Trace { delivery_id, database, aws, dispatch_table, jobs_table, kv_table, endpoint_url, json } => {
            init_tracing("off");
            let id = crcr_core::domain::DeliveryId::parse(&delivery_id)?;
            let stores = if aws {
                let res = crcr_core::config::AwsResources {
                    dispatch_table,
                    jobs_table,
                    kv_table,
                    endpoint_url,
                    ..Default::default()
                };
                crcr_oncall::trace::TraceStores::aws(&res).await?
            } else {
                crcr_oncall::trace::TraceStores::sqlite(&database)?
            };
            let t = stores.trace(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print!("{}", t.render());
            }
            Ok(())
        }
        Command::Redeliver(args) => {
            init_tracing("off");
            exit_with(redeliver::run(args, &Env::process(), &mut std::io::stdout().lock()).await)
        }
        Command::Allowlist { command } => {
            init_tracing("off");
            exit_with(ops::run_allowlist(command, &Env::process(), &mut std::io::stdout().lock()).await)
        }
    }
}

/// Ends an on-call command with its exit code (errors: message on stderr, 1).
fn exit_with(code: anyhow::Result<i32>) -> anyhow::Result<()> {
    match code {
        Ok(0) => Ok(()),
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight messages");
}
