//! The ingest Lambda: the shared axum router under `lambda_http` (Function
//! URL or API Gateway; `lambda_http` decodes base64 bodies), enqueueing on
//! SQS with DynamoDB claim-check storage. Wiring only.

use std::sync::Arc;

use crcr_shared::aws::{sdk_config, DynamoBlobStore, SqsQueue};
use crcr_shared::config::{AwsResources, Env, IngestConfig};
use crcr_shared::ingest::{router, IngestState};
use crcr_shared::ports::SystemClock;
use crcr_shared::secrets::process_env_with_secrets;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let sdk = sdk_config(Env::process().opt("CRCR_AWS_ENDPOINT_URL").as_deref()).await;
    // The webhook secret comes from CRCR_SECRETS_ARN (read once, here) when set.
    let env = process_env_with_secrets(&sdk).await?;
    let cfg = IngestConfig::from_env(&env)?;
    let aws = AwsResources::from_env(&env)?;
    let queue =
        SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), aws.dispatch_queue_url, aws.dispatch_dlq_url.unwrap_or_default());
    // (ingest only sends: it never reads or writes the DLQ)
    let blobs = DynamoBlobStore::new(aws_sdk_dynamodb::Client::new(&sdk), aws.payload_table);
    let app = router(Arc::new(IngestState {
        secret: cfg.webhook_secret,
        upstream: cfg.upstream,
        queue: Arc::new(queue),
        blobs: Arc::new(blobs),
        clock: Arc::new(SystemClock),
        max_body_bytes: cfg.max_body_bytes,
    }));
    lambda_http::run(app).await
}
