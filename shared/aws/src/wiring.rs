//! Wiring of the Lambda functions: configuration → adapters → the router or
//! handler each function runs. The Lambda mains only call these, and the
//! tests (tests/tests/aws_callbacks.rs) call the same functions, so what is
//! tested is what is deployed.
//!
//! - ingest: `crcr_ingest::ingest_router` (`POST /github/webhook`, `POST /github/callback`, `GET /healthz`),
//!   started by `crcr_ingest::ingest_init` (which also refuses a broken allowlist); it lives in the
//!   ingest crate (`ingest/src/lib.rs`) so that only the ingest function links the HTTP routes;
//! - dispatcher: [`dispatcher_function`], run with [`sqs_batch_response`] (an SQS batch → partial batch response),
//!   started by [`dispatcher_init`] (which also refuses a broken allowlist);
//! - reconciler: [`reconciler_function`] → [`ReconcilerFunction::handle`] (SQS batches
//!   from the reconcile queue and EventBridge scheduled tasks).

use std::sync::Arc;

use aws_config::SdkConfig;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use serde_json::{json, Value};

use super::{DynamoBlobStore, DynamoDispatchStore, DynamoJobStore, DynamoKv, SqsQueue};
use crate::lambda::process_sqs_batch;
use crcr_clients::compose::{github_and_allowlist, hud_from_config, StartupError};
use crcr_core::config::{AwsResources, ConfigError, Env, RelayConfig};
use crcr_core::dispatch::Dispatcher;
use crcr_core::ports::{Clock, QueueSettle, ReceivedMessage, StateStore, StoreError, SystemClock};
use crcr_core::reconcile::{MessageHandler, Reconciler, SweepReport};

/// Who needs a resource, for configuration errors.
const RECONCILER: &str = "the reconciler function";

/// Start-up failures of a Lambda function (each names the setting at fault).
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    GitHub(#[from] crcr_clients::github::GitHubConfigError),
    #[error(transparent)]
    Relay(#[from] StartupError),
    #[error("CRCR_HUD_URL: {0}")]
    Hud(#[from] crcr_core::hud::HudUrlError),
    /// A broken allowlist at init (`crcr_ingest::ingest_init`, [`dispatcher_init`]):
    /// names the file or URL and the line or entry.
    #[error("cannot start with this allowlist (CRCR_ALLOWLIST_URL / CRCR_ALLOWLIST_FILE): {0}")]
    Allowlist(#[from] crcr_core::allowlist::AllowlistError),
}

/// The SDK clients every function builds from one [`SdkConfig`].
pub fn clients(sdk: &SdkConfig) -> (aws_sdk_sqs::Client, aws_sdk_dynamodb::Client) {
    (aws_sdk_sqs::Client::new(sdk), aws_sdk_dynamodb::Client::new(sdk))
}

/// The dispatcher function: the [`Dispatcher`] (GitHub App, allowlist,
/// [`RelayConfig`] settings) on `CRCR_DISPATCH_TABLE` and
/// `CRCR_PAYLOAD_TABLE`, and the dispatch queue (`CRCR_DISPATCH_QUEUE_URL`)
/// with its DLQ (`CRCR_DISPATCH_DLQ_URL`); run it with [`sqs_batch_response`].
pub fn dispatcher_function(env: &Env<'_>, sdk: &SdkConfig) -> Result<(Arc<Dispatcher>, Arc<SqsQueue>), WiringError> {
    const BY: &str = "the dispatcher function";
    let cfg = RelayConfig::from_env(env)?;
    let aws = AwsResources::from_env(env)?;
    let (sqs, dynamo) = clients(sdk);
    let queue = Arc::new(SqsQueue::new(sqs, aws.dispatch_queue_url(BY)?, aws.dlq_url()?));
    let (github, allowlist) = github_and_allowlist(&cfg)?;
    let clock: Arc<dyn crcr_core::ports::Clock> = Arc::new(SystemClock);
    // One budget per target installation for every dispatcher instance.
    let kv: Arc<dyn StateStore> = Arc::new(DynamoKv::new(dynamo.clone(), aws.kv_table(BY)?, clock.clone()));
    let dispatcher = Arc::new(Dispatcher {
        store: Arc::new(DynamoDispatchStore::new(dynamo.clone(), aws.dispatch_table(BY)?)),
        blobs: Arc::new(DynamoBlobStore::new(dynamo.clone(), aws.payload_table(BY)?)),
        github,
        budget: crcr_core::budget::DispatchPace::stored(cfg.dispatcher.pace, kv.clone()),
        breakers: Arc::new(crcr_core::breaker::Breakers::new(kv, cfg.dispatcher.breaker, clock.clone())),
        // The jobs table, when set: a paused L3/L4 dispatch's check run.
        paused_checks: aws.jobs_table.clone().map(|table| crcr_core::dispatch::PausedChecks {
            outbox: Arc::new(DynamoJobStore::new(dynamo.clone(), table)),
            upstream: cfg.upstream.clone(),
        }),
        allowlist,
        clock,
        settings: cfg.dispatcher,
    });
    Ok((dispatcher, queue))
}

/// The dispatcher function as its main starts it: [`dispatcher_function`],
/// then the allowlist loaded once
/// ([`crcr_core::allowlist::AllowlistProvider::check_at_start`]): a broken
/// allowlist fails the init with [`WiringError::Allowlist`] (see
/// `crcr_ingest::ingest_init`). GitHub being unavailable does not fail it.
pub async fn dispatcher_init(env: &Env<'_>, sdk: &SdkConfig) -> Result<(Arc<Dispatcher>, Arc<SqsQueue>), WiringError> {
    let (dispatcher, queue) = dispatcher_function(env, sdk)?;
    dispatcher.allowlist.check_at_start().await?;
    Ok((dispatcher, queue))
}

/// An SQS record as the queue port sees it (`ApproximateReceiveCount` and
/// `SentTimestamp` from the record's attributes; SQS's own redrive carries
/// no dead-letter reason).
pub fn received(m: SqsMessage) -> ReceivedMessage {
    let attr = |k: &str| m.attributes.get(k).and_then(|v| v.parse::<i64>().ok());
    ReceivedMessage {
        receive_count: attr("ApproximateReceiveCount").unwrap_or(1) as u32,
        sent_at_ms: attr("SentTimestamp").unwrap_or(0),
        message_id: m.message_id.clone().unwrap_or_default(),
        receipt: m.receipt_handle.clone().unwrap_or_default(),
        body: m.body.clone().unwrap_or_default(),
        dead_letter_reason: None,
    }
}

/// Handles an SQS event (an event source mapping with
/// `ReportBatchItemFailures`) with `handler` ([`process_sqs_batch`]) and
/// answers the partial batch response: the ids of the messages to receive
/// again. Lambda deletes the others.
pub async fn sqs_batch_response<H: MessageHandler + ?Sized>(
    handler: &H,
    queue: &dyn QueueSettle,
    event: SqsEvent,
) -> SqsBatchResponse {
    let batch = event.records.into_iter().map(received).collect();
    let failed = process_sqs_batch(handler, queue, batch).await;
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}

/// The reconciler function: the [`Reconciler`] on DynamoDB, the reconcile
/// queue on SQS, and the small-state store the scheduled tasks keep their
/// cursors in.
pub struct ReconcilerFunction {
    pub reconciler: Arc<Reconciler>,
    /// The reconcile queue (`CRCR_RECONCILE_QUEUE_URL`) and its DLQ (`CRCR_RECONCILE_DLQ_URL`).
    pub queue: Arc<SqsQueue>,
    /// `CRCR_KV_TABLE` (e.g. the redeliver cursor).
    pub state: Arc<dyn StateStore>,
    /// Missed-delivery recovery (`{"task": "redeliver"}`), its cursor in `state`.
    pub redeliver: crcr_core::redeliver::Redeliverer,
}

/// The reconciler function from the environment: job records in
/// `CRCR_JOBS_TABLE`, DISPATCHED records read from `CRCR_DISPATCH_TABLE`,
/// the reconcile queue and its DLQ, `CRCR_KV_TABLE`, HUD from `CRCR_HUD_URL`
/// and the bot key (no URL: records wait in the outbox), upstream commits
/// looked up with the GitHub App ([`RelayConfig`]).
pub fn reconciler_function(env: &Env<'_>, sdk: &SdkConfig) -> Result<ReconcilerFunction, WiringError> {
    let cfg = RelayConfig::from_env(env)?;
    let aws = AwsResources::from_env(env)?;
    let (sqs, dynamo) = clients(sdk);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let queue = Arc::new(SqsQueue::new(sqs, aws.reconcile_queue_url(RECONCILER)?, aws.reconcile_dlq_url(RECONCILER)?));
    let github = Arc::new(crcr_clients::github::GitHubAppClient::new(cfg.github.clone())?);
    let state: Arc<dyn StateStore> = Arc::new(DynamoKv::new(dynamo.clone(), aws.kv_table(RECONCILER)?, clock.clone()));
    let reconciler = Arc::new(Reconciler {
        dispatches: Arc::new(DynamoDispatchStore::new(dynamo.clone(), aws.dispatch_table(RECONCILER)?)),
        jobs: Arc::new(DynamoJobStore::new(dynamo.clone(), aws.jobs_table(RECONCILER)?)),
        hud: hud_from_config(&cfg.callbacks)?,
        clock: clock.clone(),
        settings: cfg.callbacks.reconciler.clone(),
        upstream: cfg.upstream.clone(),
        commits: Arc::new(crcr_core::commits::CachedCommitLookup::new(github.clone(), clock.clone())),
        checks: Some(github.clone()),
        runs: Some(github.clone()),
        state: state.clone(),
    });
    let redeliver = crcr_core::redeliver::Redeliverer::new(github, state.clone());
    Ok(ReconcilerFunction { reconciler, queue, state, redeliver })
}

/// Why a reconciler invocation failed (Lambda reports it; a scheduled run is
/// repeated by the next tick).
#[derive(Debug, thiserror::Error)]
pub enum ReconcilerEventError {
    #[error(
        "not an SQS batch ({{\"Records\": [...]}}) nor a scheduled task ({{\"task\": \"sweep\"|\"redeliver\"}}): {0}"
    )]
    UnknownEvent(String),
    #[error("unknown scheduled task {0:?} (known: sweep, redeliver)")]
    UnknownTask(String),
    #[error("redeliver task: {0}")]
    Redeliver(#[from] crcr_core::redeliver::RedeliverError),
    #[error("sweep failed: {0}")]
    Sweep(#[from] StoreError),
}

impl ReconcilerFunction {
    /// One invocation. Two event shapes:
    ///
    /// - an SQS batch from the reconcile queue (`{"Records": [...]}`) →
    ///   [`Reconciler`] per message → partial batch response
    ///   (`{"batchItemFailures": [{"itemIdentifier": <message id>}]}`);
    /// - an EventBridge schedule whose target input is `{"task": "sweep"}`
    ///   (timeouts, never-started dispatches, HUD outbox → its figures as
    ///   JSON) or `{"task": "redeliver"}` (ask GitHub to redeliver webhook
    ///   deliveries that failed: [`crcr_core::redeliver`]; its report as JSON)
    ///   (infra/modules/crcr/schedules.tf).
    pub async fn handle(&self, event: Value) -> Result<Value, ReconcilerEventError> {
        match ReconcilerEvent::parse(event)? {
            ReconcilerEvent::Batch(batch) => {
                let response = sqs_batch_response(self.reconciler.as_ref(), self.queue.as_ref(), batch).await;
                Ok(serde_json::to_value(response).expect("a batch response serializes"))
            }
            ReconcilerEvent::Task(ScheduledTask::Sweep) => {
                let report = self.reconciler.sweep().await?;
                log_sweep(&report);
                Ok(json!({"task": "sweep", "report": report}))
            }
            ReconcilerEvent::Task(ScheduledTask::Redeliver) => {
                // Logs its own summary; GitHub errors are in the report (the
                // next tick retries), Err only when the state store failed.
                let report = self.redeliver.run_scheduled().await?;
                Ok(json!({"task": "redeliver", "report": report}))
            }
        }
    }
}

/// What invokes the reconciler function, parsed once at the edge.
#[derive(Debug)]
pub enum ReconcilerEvent {
    /// An SQS batch from the reconcile queue's event source mapping (`{"Records": [...]}`).
    Batch(SqsEvent),
    /// An EventBridge schedule's target input (`{"task": "sweep"|"redeliver"}`,
    /// infra/modules/crcr/schedules.tf).
    Task(ScheduledTask),
}

/// The reconciler's scheduled tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduledTask {
    /// Timeouts, never-started dispatches, the HUD and check-run outboxes.
    Sweep,
    /// Missed-delivery recovery ([`crcr_core::redeliver`]).
    Redeliver,
}

impl ReconcilerEvent {
    /// Reads an invocation's JSON. Errors: [`ReconcilerEventError::UnknownEvent`]
    /// (neither shape; names the top-level keys, or why the batch did not
    /// parse) and [`ReconcilerEventError::UnknownTask`] (names the task).
    pub fn parse(event: Value) -> Result<Self, ReconcilerEventError> {
        if event.get("Records").is_some() {
            return serde_json::from_value(event)
                .map(ReconcilerEvent::Batch)
                .map_err(|e| ReconcilerEventError::UnknownEvent(e.to_string()));
        }
        match event.get("task").and_then(Value::as_str) {
            Some("sweep") => Ok(ReconcilerEvent::Task(ScheduledTask::Sweep)),
            Some("redeliver") => Ok(ReconcilerEvent::Task(ScheduledTask::Redeliver)),
            Some(other) => Err(ReconcilerEventError::UnknownTask(other.to_owned())),
            None => {
                let mut shape: Vec<&str> =
                    event.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
                shape.sort_unstable();
                Err(ReconcilerEventError::UnknownEvent(format!("top-level keys {shape:?}")))
            }
        }
    }
}

/// The sweep's figures in one log line (`metric=sweep`).
fn log_sweep(r: &SweepReport) {
    tracing::info!(
        timed_out = r.timed_out,
        never_started = r.never_started.len(),
        never_started_error = r.never_started_error.as_deref().unwrap_or(""),
        hud_sent = r.hud.sent,
        hud_rejected = r.hud.rejected,
        hud_pending = r.hud.still_pending,
        check_runs_created = r.check_runs.created,
        check_runs_updated = r.check_runs.updated,
        check_runs_rejected = r.check_runs.rejected,
        check_runs_pending = r.check_runs.still_pending,
        check_runs_deferred = r.check_runs.deferred,
        metric = "sweep",
        "sweep"
    );
}
