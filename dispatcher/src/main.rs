//! The dispatcher Lambda: SQS event source (with `ReportBatchItemFailures`)
//! → `crcr_aws::wiring::sqs_batch_response` → partial batch response.
//! Wiring only: see `crcr_aws::wiring::dispatcher_init`.

use aws_lambda_events::sqs::SqsEvent;
use crcr_aws::sdk_config;
use crcr_aws::secrets::process_env_with_secrets;
use crcr_aws::wiring::{dispatcher_init, sqs_batch_response};
use crcr_core::config::Env;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    crcr_telemetry::init_emf_from_env();
    let sdk = sdk_config(Env::process().opt("CRCR_AWS_ENDPOINT_URL").as_deref()).await;
    // The webhook secret and the App's private key come from CRCR_SECRETS_ARN
    // (read once, here) when set.
    let env = process_env_with_secrets(&sdk).await?;
    // A broken allowlist fails the init, naming the URL and the entry.
    let (dispatcher, queue) = dispatcher_init(&env, &sdk).await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let (dispatcher, queue) = (dispatcher.clone(), queue.clone());
        async move {
            let response = sqs_batch_response(dispatcher.as_ref(), queue.as_ref(), event.payload).await;
            crcr_telemetry::flush_emf();
            Ok::<_, Error>(response)
        }
    }))
    .await
}
