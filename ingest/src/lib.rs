//! The ingest function's wiring: its router (webhooks and callbacks) on
//! SQS and DynamoDB, from the environment. `src/main.rs` runs it under
//! `lambda_http`; the end-to-end tests drive it directly.

use std::sync::Arc;

use aws_config::SdkConfig;
use axum::Router;
use crcr_aws::wiring::{clients, WiringError};
use crcr_aws::{DynamoBlobStore, DynamoDispatchStore, DynamoJobStore, DynamoKv, SqsQueue};
use crcr_clients::compose::{github_and_allowlist, oidc_verifier};
use crcr_core::config::{AwsResources, Env, RelayConfig};
use crcr_core::ports::{Clock, SystemClock};
use crcr_http::callback_route::CallbackState;
use crcr_http::ingest::IngestState;

/// Who needs a resource, for configuration errors.
const INGEST: &str = "the ingest function";

/// The ingest function's router, from the environment (`env`, secrets
/// already layered in by [`crcr_aws::secrets::process_env_with_secrets`]):
///
/// - `POST /github/webhook` → the dispatch queue (`CRCR_DISPATCH_QUEUE_URL`),
///   payloads over the queue's limit claim-checked in `CRCR_PAYLOAD_TABLE`;
/// - `POST /github/callback` → OIDC ([`crcr_core::config::CallbackConfig`]: issuers, audience),
///   `repository_id` bindings, `jti` replay guard and per-repository rate
///   limit in `CRCR_KV_TABLE` (shared by every instance), the allowlist
///   (`CRCR_ALLOWLIST_URL` / `_FILE`, read with the App's token), request-time
///   lifecycle checks on `CRCR_DISPATCH_TABLE` and `CRCR_JOBS_TABLE`, the
///   upstream commit of a `nightly` / `periodic` callback looked up with the
///   App (cached per instance), then the reconcile queue
///   (`CRCR_RECONCILE_QUEUE_URL`);
/// - `GET /healthz`.
///
/// Errors name the missing or malformed variable.
pub fn ingest_router(env: &Env<'_>, sdk: &SdkConfig) -> Result<Router, WiringError> {
    ingest_router_on_clock(env, sdk, Arc::new(SystemClock))
}

/// [`ingest_router`] reading time from `clock` (token lifetimes, the
/// per-minute callback rate window, `jti` expiry, received-at times): tests
/// pin it instead of waiting for a minute boundary.
pub fn ingest_router_on_clock(env: &Env<'_>, sdk: &SdkConfig, clock: Arc<dyn Clock>) -> Result<Router, WiringError> {
    Ok(ingest_parts(env, sdk, clock)?.0)
}

/// The ingest function as its main starts it: [`ingest_router`], then the
/// allowlist loaded once ([`crcr_core::allowlist::AllowlistProvider::check_at_start`]):
/// a broken allowlist fails the init with [`WiringError::Allowlist`]
/// naming the URL (or file) and the line or entry (Lambda reports a failed
/// init and tries it again on the next invoke: AWS Lambda developer guide,
/// "Understand the Lambda execution environment lifecycle" → "Failures
/// during the Init phase"). GitHub being unavailable does not fail it.
pub async fn ingest_init(env: &Env<'_>, sdk: &SdkConfig) -> Result<Router, WiringError> {
    let (router, allowlist) = ingest_parts(env, sdk, Arc::new(SystemClock))?;
    allowlist.check_at_start().await?;
    Ok(router)
}

/// [`ingest_router`] and the allowlist provider its callback route reads.
fn ingest_parts(
    env: &Env<'_>,
    sdk: &SdkConfig,
    clock: Arc<dyn Clock>,
) -> Result<(Router, Arc<crcr_core::allowlist::AllowlistProvider>), WiringError> {
    let cfg = RelayConfig::from_env(env)?;
    let aws = AwsResources::from_env(env)?;
    let (sqs, dynamo) = clients(sdk);
    // Ingest only sends: it never reads or writes a DLQ.
    let dispatch_queue = SqsQueue::new(sqs.clone(), aws.dispatch_queue_url(INGEST)?, String::new());
    let reconcile_queue = Arc::new(SqsQueue::new(sqs, aws.reconcile_queue_url(INGEST)?, String::new()));
    let webhooks = crcr_http::ingest::router(Arc::new(IngestState {
        secret: cfg.webhook_secret.clone(),
        upstream: cfg.upstream.clone(),
        queue: Arc::new(dispatch_queue),
        blobs: Arc::new(DynamoBlobStore::new(dynamo.clone(), aws.payload_table(INGEST)?).with_ttl(aws.payload_ttl)),
        clock: clock.clone(),
        max_body_bytes: cfg.max_body_bytes,
        reconcile: Some(reconcile_queue.clone()),
    }));
    let kv = Arc::new(
        DynamoKv::new(dynamo.clone(), aws.kv_table(INGEST)?, clock.clone())
            .with_rate_per_min(cfg.callbacks.rate_per_min),
    );
    let (github, allowlist) = github_and_allowlist(&cfg)?;
    let callbacks = crcr_http::callback_route::router(Arc::new(CallbackState {
        verifier: Arc::new(oidc_verifier(&cfg.callbacks, clock.clone(), kv.clone(), kv.clone())?),
        allowlist: allowlist.clone(),
        dispatches: Arc::new(DynamoDispatchStore::new(dynamo.clone(), aws.dispatch_table(INGEST)?)),
        jobs: Arc::new(DynamoJobStore::new(dynamo, aws.jobs_table(INGEST)?)),
        queue: reconcile_queue,
        rate: kv,
        commits: Arc::new(crcr_core::commits::CachedCommitLookup::new(github, clock.clone())),
        upstream: cfg.upstream.clone(),
        clock,
    }));
    Ok((webhooks.merge(callbacks), allowlist))
}
