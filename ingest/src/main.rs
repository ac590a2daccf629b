//! The ingest Lambda: the shared axum router under `lambda_http` (Function
//! URL or API Gateway; `lambda_http` decodes base64 bodies): webhooks
//! enqueued on the dispatch queue (SQS, DynamoDB claim checks) and OIDC
//! callbacks enqueued on the reconcile queue. Wiring only: see
//! `crcr_ingest::ingest_init` (`src/lib.rs`) (a broken allowlist fails the init).

use crcr_aws::sdk_config;
use crcr_aws::secrets::process_env_with_secrets;
use crcr_core::config::Env;
use crcr_ingest::ingest_init;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    crcr_telemetry::init_emf_from_env();
    let sdk = sdk_config(Env::process().opt("CRCR_AWS_ENDPOINT_URL").as_deref()).await;
    // The webhook secret and the App's private key come from CRCR_SECRETS_ARN
    // (read once, here) when set.
    let env = process_env_with_secrets(&sdk).await?;
    lambda_http::run(crcr_http::metrics::flush_emf_after_each_request(ingest_init(&env, &sdk).await?)).await
}
