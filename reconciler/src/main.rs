//! The reconciler Lambda: SQS batches from the reconcile queue (partial
//! batch response, `ReportBatchItemFailures`) and EventBridge scheduled
//! tasks (`{"task": "sweep"}`, `{"task": "redeliver"}`). Wiring only: see
//! `crcr_aws::wiring::{reconciler_function, ReconcilerFunction::handle}`.

use std::sync::Arc;

use crcr_aws::sdk_config;
use crcr_aws::secrets::process_env_with_secrets;
use crcr_aws::wiring::reconciler_function;
use crcr_core::config::Env;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    crcr_telemetry::init_emf_from_env();
    let sdk = sdk_config(Env::process().opt("CRCR_AWS_ENDPOINT_URL").as_deref()).await;
    // The HUD bot key and the App's private key come from CRCR_SECRETS_ARN
    // (read once, here): a missing secret or permission fails the cold start
    // instead of the first HUD call.
    let env = process_env_with_secrets(&sdk).await?;
    let function = Arc::new(reconciler_function(&env, &sdk)?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let function = function.clone();
        async move {
            let out = function.handle(event.payload).await;
            crcr_telemetry::flush_emf();
            Ok::<_, Error>(out?)
        }
    }))
    .await
}
