//! The dispatcher Lambda: SQS event source (with `ReportBatchItemFailures`)
//! → `crcr_shared::dispatch::process_sqs_batch` → partial batch response.
//! Wiring only.

use std::sync::Arc;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use crcr_shared::aws::{sdk_config, DynamoBlobStore, DynamoDispatchStore, SqsQueue};
use crcr_shared::config::{AwsResources, Env, RelayConfig};
use crcr_shared::dispatch::{process_sqs_batch, Dispatcher};
use crcr_shared::embedded::github_and_allowlist;
use crcr_shared::ports::{ReceivedMessage, SystemClock};
use crcr_shared::secrets::process_env_with_secrets;
use lambda_runtime::{service_fn, Error, LambdaEvent};

/// SQS record → received message (`ApproximateReceiveCount`, `SentTimestamp` attributes).
fn received(m: aws_lambda_events::sqs::SqsMessage) -> ReceivedMessage {
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

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let sdk = sdk_config(Env::process().opt("CRCR_AWS_ENDPOINT_URL").as_deref()).await;
    // The webhook secret and the App's private key come from CRCR_SECRETS_ARN
    // (read once, here) when set.
    let env = process_env_with_secrets(&sdk).await?;
    let cfg = RelayConfig::from_env(&env)?;
    let aws = AwsResources::from_env(&env)?;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let queue = Arc::new(SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), aws.dispatch_queue_url.clone(), aws.dlq_url()?));
    let (github, allowlist) = github_and_allowlist(&cfg)?;
    let dispatcher = Arc::new(Dispatcher {
        store: Arc::new(DynamoDispatchStore::new(dynamo.clone(), aws.dispatch_table)),
        blobs: Arc::new(DynamoBlobStore::new(dynamo, aws.payload_table)),
        github,
        allowlist,
        clock: Arc::new(SystemClock),
        settings: cfg.dispatcher,
    });
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (dispatcher, queue) = (dispatcher.clone(), queue.clone());
        async move {
            let batch = event.payload.records.into_iter().map(received).collect();
            let failed = process_sqs_batch(&dispatcher, queue.as_ref(), batch).await;
            let mut response = SqsBatchResponse::default();
            response.batch_item_failures = failed
                .into_iter()
                .map(|id| {
                    let mut f = BatchItemFailure::default();
                    f.item_identifier = id;
                    f
                })
                .collect();
            Ok::<_, Error>(response)
        }
    }))
    .await
}
