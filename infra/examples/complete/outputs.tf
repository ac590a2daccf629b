# The module's outputs, passed through.

output "webhook_url" {
  description = "GitHub App webhook URL."
  value       = module.crcr.webhook_url
}

output "callback_url" {
  description = "Downstream callback URL."
  value       = module.crcr.callback_url
}

output "dispatch_queue_url" {
  description = "Dispatch queue URL."
  value       = module.crcr.dispatch_queue_url
}

output "dispatch_dlq_url" {
  description = "Dispatch DLQ URL."
  value       = module.crcr.dispatch_dlq_url
}

output "reconcile_queue_url" {
  description = "Reconcile queue URL."
  value       = module.crcr.reconcile_queue_url
}

output "reconcile_dlq_url" {
  description = "Reconcile DLQ URL."
  value       = module.crcr.reconcile_dlq_url
}

output "table_names" {
  description = "DynamoDB table names."
  value       = module.crcr.table_names
}

output "function_names" {
  description = "Lambda function names."
  value       = module.crcr.function_names
}

output "alarm_sns_topic_arn" {
  description = "Topic the alarms notify."
  value       = coalesce(var.alarm_sns_topic_arn, one(aws_sns_topic.alarms[*].arn))
}

output "cli_environment" {
  description = "CRCR_* settings for the crcr CLI."
  value       = module.crcr.cli_environment
}
