# Inputs of the example deployment. The zip paths default to where
# `cargo lambda build --release --output-format zip` (run at the repository
# root) leaves them, relative to this directory.

variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "us-east-1"
}

variable "name_prefix" {
  description = "Prefix of every resource name."
  type        = string
  default     = "crcr"
}

variable "ingest_zip" {
  description = "Path of the ingest zip."
  type        = string
  default     = "../../../target/lambda/ingest/bootstrap.zip"
}

variable "dispatcher_zip" {
  description = "Path of the dispatcher zip."
  type        = string
  default     = "../../../target/lambda/dispatcher/bootstrap.zip"
}

variable "reconciler_zip" {
  description = "Path of the reconciler zip."
  type        = string
  default     = "../../../target/lambda/reconciler/bootstrap.zip"
}

variable "architecture" {
  description = "x86_64 or arm64, as the zips were built."
  type        = string
  default     = "x86_64"
}

variable "ingest_endpoint" {
  description = "function_url or http_api."
  type        = string
  default     = "function_url"
}

variable "upstream_repo" {
  description = "Upstream repository."
  type        = string
  default     = "pytorch/pytorch"
}

variable "github_app_id" {
  description = "The GitHub App's numeric ID."
  type        = string
}

variable "allowlist_url" {
  description = "GitHub file URL of the allowlist."
  type        = string
}

variable "hud_url" {
  description = "HUD API base URL (https)."
  type        = string
}

variable "secrets_arn" {
  description = "Secrets Manager secret ARN (JSON: webhook_secret, github_app_private_key, hud_bot_key)."
  type        = string
}

variable "alarm_sns_topic_arn" {
  description = "Existing SNS topic for alarms; null creates one (subscribe to it after apply)."
  type        = string
  default     = null
}

variable "deletion_protection_enabled" {
  description = "DynamoDB deletion protection."
  type        = bool
  default     = true
}
