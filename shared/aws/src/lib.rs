//! AWS adapters: SQS queue ([`SqsQueue`]), DynamoDB dispatch store
//! ([`DynamoDispatchStore`]) and DynamoDB claim-check blobs
//! ([`DynamoBlobStore`]).
//!
//! The resources themselves (queues, tables, TTL settings, redrive policy)
//! are created by the infrastructure code, not here; each adapter documents
//! the shape it expects. The same contract suite (`shared/core/tests/contract.rs`)
//! runs against these adapters on moto's server and against the SQLite twins.

mod blobs;
mod dispatch_item;
mod dynamo;
pub(crate) mod item;
mod jobs;
mod kv;
pub mod lambda;
#[cfg(test)]
mod schema_tests;
pub mod secrets;
mod sqs;
pub mod wiring;

pub use blobs::{DynamoBlobStore, BLOB_CHUNK_BYTES, BLOB_TTL_SECS};
pub use dynamo::{dispatch_day, DynamoDispatchStore, DISPATCH_DAY_INDEX, DISPATCH_TTL_SECS, HEAD_SHA_INDEX};
pub use jobs::{DynamoJobStore, JOBS_BY_STATUS_INDEX, JOB_TTL_SECS};
pub use kv::{prefix as kv_prefix, DynamoKv, RATE_WINDOW_TTL_SLACK_SECS};
pub use sqs::{SqsQueue, DEAD_LETTER_REASON_ATTR, DEAD_LETTER_REASON_MAX_CHARS, SQS_MAX_MESSAGE_BYTES};

use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Region used against a local endpoint (moto) when none is configured.
pub const LOCAL_DEFAULT_REGION: &str = "us-east-1";

/// Loads the shared AWS SDK configuration.
///
/// Without `endpoint_url` (on AWS, e.g. in Lambda) this is the SDK's usual
/// chain: region and credentials from the environment, profile files, web
/// identity, ECS or IMDS.
///
/// With `endpoint_url` (a local emulator such as moto, e.g.
/// `http://127.0.0.1:5000`) every client built from the config talks to that
/// endpoint; the region comes from `AWS_REGION` / `AWS_DEFAULT_REGION` or the
/// profile file, else [`LOCAL_DEFAULT_REGION`] (IMDS is not asked: a local
/// emulator has no instance metadata). Credentials still come from the usual
/// chain (moto accepts any, e.g. `AWS_ACCESS_KEY_ID=test`).
pub async fn sdk_config(endpoint_url: Option<&str>) -> SdkConfig {
    let loader = aws_config::defaults(BehaviorVersion::latest());
    match endpoint_url {
        None => loader.load().await,
        Some(url) => {
            let region =
                RegionProviderChain::first_try(aws_config::environment::EnvironmentVariableRegionProvider::new())
                    .or_else(aws_config::profile::region::ProfileFileRegionProvider::new())
                    .or_else(Region::new(LOCAL_DEFAULT_REGION));
            loader.endpoint_url(url).region(region).load().await
        }
    }
}

/// Current wall-clock time in seconds since the Unix epoch (for TTL attributes).
fn now_epoch_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
