# Inputs of the crcr module. Every setting with a safety meaning (timeouts,
# receive counts, alarm thresholds) is a variable with a validated default.

# --- naming -----------------------------------------------------------------

variable "name_prefix" {
  description = "Prefix of every resource name (functions, queues, tables, alarms)."
  type        = string
  default     = "crcr"

  validation {
    # Lowercase keeps names valid for every service used (SQS, DynamoDB, Lambda, IAM).
    condition     = can(regex("^[a-z][a-z0-9-]{0,29}$", var.name_prefix))
    error_message = "name_prefix: 1-30 characters, lowercase letters, digits and '-', starting with a letter."
  }
}

variable "tags" {
  description = "Tags added to every taggable resource."
  type        = map(string)
  default     = {}
}

# --- Lambda packages and runtime ----------------------------------------------

variable "ingest_zip" {
  description = "Path of the ingest bootstrap.zip (cargo lambda build --release --output-format zip: target/lambda/ingest/bootstrap.zip)."
  type        = string
}

variable "dispatcher_zip" {
  description = "Path of the dispatcher bootstrap.zip (target/lambda/dispatcher/bootstrap.zip)."
  type        = string
}

variable "reconciler_zip" {
  description = "Path of the reconciler bootstrap.zip (target/lambda/reconciler/bootstrap.zip)."
  type        = string
}

variable "architecture" {
  description = "CPU architecture the zips were built for: x86_64 or arm64."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be \"x86_64\" or \"arm64\"."
  }
}

variable "ingest_timeout" {
  description = "Ingest function timeout in seconds. GitHub waits 10 s for a webhook answer; API Gateway HTTP APIs cap integrations at 30 s."
  type        = number
  default     = 10

  validation {
    condition     = var.ingest_timeout >= 1 && var.ingest_timeout <= 30
    error_message = "ingest_timeout must be between 1 and 30 seconds."
  }
}

variable "dispatcher_timeout" {
  description = "Dispatcher function timeout in seconds (one SQS batch, fan-out with retries inside a bounded budget). The dispatch queue's visibility timeout is 6x this."
  type        = number
  default     = 60

  validation {
    condition     = var.dispatcher_timeout >= 1 && var.dispatcher_timeout <= 900
    error_message = "dispatcher_timeout must be between 1 and 900 seconds."
  }
}

variable "reconciler_timeout" {
  description = "Reconciler function timeout in seconds (one SQS batch, or one sweep / redeliver run). The reconcile queue's visibility timeout is 6x this."
  type        = number
  default     = 120

  validation {
    condition     = var.reconciler_timeout >= 1 && var.reconciler_timeout <= 900
    error_message = "reconciler_timeout must be between 1 and 900 seconds."
  }
}

variable "ingest_memory_size" {
  description = "Ingest memory in MB (CPU scales with it)."
  type        = number
  default     = 256
}

variable "dispatcher_memory_size" {
  description = "Dispatcher memory in MB."
  type        = number
  default     = 256
}

variable "reconciler_memory_size" {
  description = "Reconciler memory in MB."
  type        = number
  default     = 256
}

variable "log_retention_days" {
  description = "Retention of the functions' (and the HTTP API's access) CloudWatch log groups, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "extra_environment" {
  description = "Extra environment variables per function, keyed \"ingest\" / \"dispatcher\" / \"reconciler\" (e.g. CRCR_CALLBACK_RATE_PER_MIN, RUST_LOG). They cannot override the CRCR_* wiring set by this module."
  type        = map(map(string))
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_environment) : contains(["ingest", "dispatcher", "reconciler"], k)])
    error_message = "extra_environment keys must be ingest, dispatcher or reconciler."
  }
}

# --- relay settings read by the code ------------------------------------------

variable "upstream_repo" {
  description = "The upstream repository whose webhooks are relayed (CRCR_UPSTREAM_REPO)."
  type        = string
  default     = "pytorch/pytorch"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.upstream_repo))
    error_message = "upstream_repo must be owner/repo."
  }
}

variable "github_app_id" {
  description = "The GitHub App's numeric ID (CRCR_GITHUB_APP_ID)."
  type        = string

  validation {
    condition     = can(regex("^[0-9]+$", var.github_app_id))
    error_message = "github_app_id must be the App's numeric ID."
  }
}

variable "allowlist_url" {
  description = "GitHub file URL of the allowlist YAML (CRCR_ALLOWLIST_URL), e.g. https://github.com/pytorch/pytorch/blob/main/.github/crcr-allowlist.yml."
  type        = string

  validation {
    condition     = startswith(var.allowlist_url, "https://")
    error_message = "allowlist_url must be an https:// URL."
  }
}

variable "hud_url" {
  description = "Base URL of the HUD API (CRCR_HUD_URL); results go to <hud_url>/crcr/results. https only."
  type        = string

  validation {
    condition     = startswith(var.hud_url, "https://")
    error_message = "hud_url must be an https:// URL."
  }
}

variable "oidc_audience" {
  description = "Audience the callback OIDC tokens must carry (CRCR_OIDC_AUDIENCE)."
  type        = string
  default     = "pytorch-cross-repo-ci-relay"
}

variable "secrets_arn" {
  description = "ARN of the Secrets Manager secret (JSON with keys webhook_secret, github_app_private_key, hud_bot_key), passed as CRCR_SECRETS_ARN. Created outside this module so no secret value ever enters Terraform state."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", var.secrets_arn))
    error_message = "secrets_arn must be a Secrets Manager secret ARN."
  }
}

variable "secrets_kms_key_arn" {
  description = "ARN of the customer managed KMS key encrypting the secret, if any (the functions then get kms:Decrypt on it, via Secrets Manager only). null for the default aws/secretsmanager key."
  type        = string
  default     = null

  validation {
    condition     = var.secrets_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.secrets_kms_key_arn))
    error_message = "secrets_kms_key_arn must be a KMS key ARN or null."
  }
}

# --- ingest endpoint -----------------------------------------------------------

variable "ingest_endpoint" {
  description = "How ingest is reachable: \"function_url\" (Lambda Function URL, no extra cost) or \"http_api\" (API Gateway HTTP API: only the relay's routes, stage throttling, access logs)."
  type        = string
  default     = "function_url"

  validation {
    condition     = contains(["function_url", "http_api"], var.ingest_endpoint)
    error_message = "ingest_endpoint must be \"function_url\" or \"http_api\"."
  }
}

variable "http_api_throttling_burst_limit" {
  description = "HTTP API stage burst limit (ingest_endpoint = http_api)."
  type        = number
  default     = 200
}

variable "http_api_throttling_rate_limit" {
  description = "HTTP API stage steady-state requests per second (ingest_endpoint = http_api)."
  type        = number
  default     = 100
}

# --- queues --------------------------------------------------------------------

variable "max_receive_count" {
  description = "Receives of a queue message before SQS moves it to the DLQ (redrive maxReceiveCount; also CRCR_MAX_RECEIVE_COUNT)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "queue_message_retention_seconds" {
  description = "Retention of the dispatch and reconcile queues. Must stay below the DLQs' 14 days: a standard queue keeps a message's original enqueue time when it moves to the DLQ."
  type        = number
  default     = 345600 # 4 days

  validation {
    condition     = var.queue_message_retention_seconds >= 60 && var.queue_message_retention_seconds < 1209600
    error_message = "queue_message_retention_seconds must be at least 60 and less than 1209600 (the DLQ retention)."
  }
}

variable "dispatcher_batch_size" {
  description = "Messages per dispatcher invocation (SQS event source batch size)."
  type        = number
  default     = 10

  validation {
    # Above 10 SQS requires a batching window, which this module does not set.
    condition     = var.dispatcher_batch_size >= 1 && var.dispatcher_batch_size <= 10
    error_message = "dispatcher_batch_size must be between 1 and 10."
  }
}

variable "reconciler_batch_size" {
  description = "Messages per reconciler invocation (SQS event source batch size)."
  type        = number
  default     = 10

  validation {
    condition     = var.reconciler_batch_size >= 1 && var.reconciler_batch_size <= 10
    error_message = "reconciler_batch_size must be between 1 and 10."
  }
}

variable "dispatcher_max_concurrency" {
  description = "Most concurrent dispatcher invocations the SQS event source starts (scaling_config.maximum_concurrency); bounds the load on GitHub's API."
  type        = number
  default     = 5

  validation {
    condition     = var.dispatcher_max_concurrency >= 2 && var.dispatcher_max_concurrency <= 1000
    error_message = "dispatcher_max_concurrency must be between 2 and 1000 (SQS event source limits)."
  }
}

variable "reconciler_max_concurrency" {
  description = "Most concurrent reconciler invocations the SQS event source starts."
  type        = number
  default     = 2

  validation {
    condition     = var.reconciler_max_concurrency >= 2 && var.reconciler_max_concurrency <= 1000
    error_message = "reconciler_max_concurrency must be between 2 and 1000 (SQS event source limits)."
  }
}

# --- tables --------------------------------------------------------------------

variable "deletion_protection_enabled" {
  description = "DynamoDB deletion protection on every table. Turn off only to tear a test stack down."
  type        = bool
  default     = true
}

# --- schedules -----------------------------------------------------------------

variable "sweep_schedule" {
  description = "EventBridge schedule of the reconciler sweep ({\"task\":\"sweep\"}: zombie jobs, never-started dispatches, HUD outbox retries)."
  type        = string
  default     = "rate(5 minutes)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.sweep_schedule))
    error_message = "sweep_schedule must be a rate(...) or cron(...) expression."
  }
}

variable "redeliver_schedule" {
  description = "EventBridge schedule of missed-delivery recovery ({\"task\":\"redeliver\"}: ask GitHub to redeliver failed webhook deliveries)."
  type        = string
  default     = "rate(15 minutes)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.redeliver_schedule))
    error_message = "redeliver_schedule must be a rate(...) or cron(...) expression."
  }
}

# --- alarms --------------------------------------------------------------------

variable "alarm_sns_topic_arn" {
  description = "SNS topic notified when an alarm fires and when it clears (alarm_actions and ok_actions)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:sns:", var.alarm_sns_topic_arn))
    error_message = "alarm_sns_topic_arn must be an SNS topic ARN."
  }
}

variable "queue_age_alarm_threshold_seconds" {
  description = "Alarm when the oldest message of the dispatch or reconcile queue is older than this (consumers stuck, or GitHub/HUD failing for that long)."
  type        = number
  default     = 900
}

variable "hud_outbox_backlog_threshold" {
  description = "Alarm when the HUD outbox backlog (custom metric HudOutboxBacklog) stays above this for 15 minutes."
  type        = number
  default     = 100
}

variable "hud_outbox_failed_threshold" {
  description = "Alarm when more than this many HUD records are parked as failed (custom metric HudOutboxFailed)."
  type        = number
  default     = 0
}

variable "target_breaker_opened_threshold" {
  description = "TargetBreakersOpened (sum over 15 min) above this fires: the relay paused a downstream target whose dispatches kept failing for good."
  type        = number
  default     = 0
}

variable "redeliver_incomplete_threshold" {
  description = "Alarm when the minimum of RedeliverIncomplete (1: a missed-delivery recovery run could not finish) over an hour is above this; the default 0 fires when no run finished for an hour."
  type        = number
  default     = 0
}

variable "hud_max_attempts" {
  description = "HUD answers 5xx (or nothing) this many times for one record: the record is parked as failed (CRCR_HUD_MAX_ATTEMPTS)."
  type        = number
  default     = 12
}

variable "hud_max_age_seconds" {
  description = "A HUD record still not accepted this long after it was written is parked as failed (CRCR_HUD_MAX_AGE_SECS)."
  type        = number
  default     = 86400
}

variable "never_started_threshold" {
  description = "Alarm when a sweep reports more than this many dispatches never started downstream (custom metric NeverStartedDispatches)."
  type        = number
  default     = 0
}

variable "github_rate_limit_remaining_threshold" {
  description = "Alarm when the GitHub API rate limit remaining (custom metric GitHubRateLimitRemaining) drops below this."
  type        = number
  default     = 500
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the custom metrics the functions emit as Embedded Metric Format."
  type        = string
  default     = "crcr"
}

variable "custom_metric_dimensions" {
  description = "Dimensions of the custom metrics as the code emits them. An alarm matches only the exact dimension set; the default {} matches metrics emitted with an empty dimension set."
  type        = map(string)
  default     = {}
}
