# What a deployer needs next: the URLs to configure in the GitHub App and in
# downstream workflows, and the names the crcr CLI works on.

output "ingest_base_url" {
  description = "Public base URL of ingest (no trailing slash)."
  value       = local.ingest_base_url
}

output "webhook_url" {
  description = "Set as the GitHub App's webhook URL."
  value       = "${local.ingest_base_url}/github/webhook"
}

output "callback_url" {
  description = "Where downstream CI posts results (Authorization: Bearer <OIDC token>)."
  value       = "${local.ingest_base_url}/github/callback"
}

output "dispatch_queue_url" {
  description = "URL of the dispatch queue."
  value       = aws_sqs_queue.dispatch.url
}

output "dispatch_dlq_url" {
  description = "URL of the dispatch dead-letter queue."
  value       = aws_sqs_queue.dispatch_dlq.url
}

output "reconcile_queue_url" {
  description = "URL of the reconcile queue."
  value       = aws_sqs_queue.reconcile.url
}

output "reconcile_dlq_url" {
  description = "URL of the reconcile dead-letter queue."
  value       = aws_sqs_queue.reconcile_dlq.url
}

output "table_names" {
  description = "DynamoDB table names by role: dispatches, payloads, jobs, kv."
  value = {
    dispatches = aws_dynamodb_table.dispatches.name
    payloads   = aws_dynamodb_table.payloads.name
    jobs       = aws_dynamodb_table.jobs.name
    kv         = aws_dynamodb_table.kv.name
  }
}

output "function_names" {
  description = "Lambda function names: ingest, dispatcher, reconciler."
  value       = local.function_names
}

output "role_arns" {
  description = "Execution role ARNs, to grant extra permissions from outside the module if needed."
  value = {
    ingest     = aws_iam_role.ingest.arn
    dispatcher = aws_iam_role.dispatcher.arn
    reconciler = aws_iam_role.reconciler.arn
  }
}

# For the on-call CLI (crcr dlq / status / trace against AWS):
#   eval "$(terraform output -json cli_environment | jq -r 'to_entries[] | "export \(.key)=\(.value)"')"
output "cli_environment" {
  description = "CRCR_* settings naming this deployment's queues and tables, for the crcr CLI."
  value = {
    CRCR_DISPATCH_QUEUE_URL  = aws_sqs_queue.dispatch.url
    CRCR_DISPATCH_DLQ_URL    = aws_sqs_queue.dispatch_dlq.url
    CRCR_RECONCILE_QUEUE_URL = aws_sqs_queue.reconcile.url
    CRCR_RECONCILE_DLQ_URL   = aws_sqs_queue.reconcile_dlq.url
    CRCR_DISPATCH_TABLE      = aws_dynamodb_table.dispatches.name
    CRCR_PAYLOAD_TABLE       = aws_dynamodb_table.payloads.name
    CRCR_JOBS_TABLE          = aws_dynamodb_table.jobs.name
    CRCR_KV_TABLE            = aws_dynamodb_table.kv.name
    CRCR_MAX_RECEIVE_COUNT   = tostring(var.max_receive_count)
  }
}
