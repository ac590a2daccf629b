# CloudWatch alarms. Every alarm notifies var.alarm_sns_topic_arn when it
# fires and when it clears. docs/RUNBOOK.md says what each one means and which
# crcr commands to run.

locals {
  alarm_actions = [var.alarm_sns_topic_arn]

  # Queue names by the name used in alarm names.
  alarm_dlqs = {
    dispatch  = aws_sqs_queue.dispatch_dlq.name
    reconcile = aws_sqs_queue.reconcile_dlq.name
  }
  alarm_queues = {
    dispatch  = aws_sqs_queue.dispatch.name
    reconcile = aws_sqs_queue.reconcile.name
  }
}

# --- SQS -----------------------------------------------------------------------------

# Anything in a DLQ is an event the relay gave up on: someone must look at it
# (crcr dlq list / show / replay).
resource "aws_cloudwatch_metric_alarm" "dlq_visible" {
  for_each = local.alarm_dlqs

  alarm_name          = "${var.name_prefix}-${each.key}-dlq-not-empty"
  alarm_description   = "Messages in the ${each.key} DLQ: run crcr dlq list --queue ${each.key}."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

# The oldest message waiting too long: consumers stuck or failing (GitHub or
# HUD down, throttled function), before messages reach the DLQ.
resource "aws_cloudwatch_metric_alarm" "queue_age" {
  for_each = local.alarm_queues

  alarm_name          = "${var.name_prefix}-${each.key}-queue-age"
  alarm_description   = "Oldest message in the ${each.key} queue older than ${var.queue_age_alarm_threshold_seconds} s."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.queue_age_alarm_threshold_seconds
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

# --- Lambda ----------------------------------------------------------------------------

# Errors = the invocation failed (panic, timeout, unhandled error). Partial
# batch failures reported through ReportBatchItemFailures are not errors.
resource "aws_cloudwatch_metric_alarm" "lambda_errors" {
  for_each = local.function_names

  alarm_name          = "${var.name_prefix}-${each.key}-errors"
  alarm_description   = "The ${each.key} function failed invocations."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = each.value }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

# Throttles: for ingest, GitHub got a 429-like failure (a missed delivery);
# for the consumers, the account's concurrency is exhausted.
resource "aws_cloudwatch_metric_alarm" "lambda_throttles" {
  for_each = local.function_names

  alarm_name          = "${var.name_prefix}-${each.key}-throttles"
  alarm_description   = "The ${each.key} function was throttled."
  namespace           = "AWS/Lambda"
  metric_name         = "Throttles"
  dimensions          = { FunctionName = each.value }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

# --- custom metrics (emitted by the code as CloudWatch EMF) ---------------------------
# Missing data is not breaching: the metrics exist only once the code ran.

# HUD records not yet accepted by HUD, for 15 minutes in a row: HUD is down or
# rejecting, and results are not shown.
resource "aws_cloudwatch_metric_alarm" "hud_outbox_backlog" {
  alarm_name          = "${var.name_prefix}-hud-outbox-backlog"
  alarm_description   = "HUD outbox backlog above ${var.hud_outbox_backlog_threshold} for 15 minutes."
  namespace           = var.metrics_namespace
  metric_name         = "HudOutboxBacklog"
  dimensions          = var.custom_metric_dimensions
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.hud_outbox_backlog_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

# HUD records parked as failed: HUD kept answering 5xx (or nothing) for one
# record past CRCR_HUD_MAX_ATTEMPTS / CRCR_HUD_MAX_AGE_SECS (torchci answers 500
# to a body it cannot read, so a 5xx is not always transient). The other
# records keep flowing; these wait for `crcr hud retry --aws` (RUNBOOK).
resource "aws_cloudwatch_metric_alarm" "hud_outbox_failed" {
  alarm_name          = "${var.name_prefix}-hud-outbox-failed"
  alarm_description   = "HUD records parked as failed (crcr status --aws; crcr hud retry --aws)."
  namespace           = var.metrics_namespace
  metric_name         = "HudOutboxFailed"
  dimensions          = var.custom_metric_dimensions
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.hud_outbox_failed_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

# repository_dispatch was accepted (204) but no callback ever came: the
# downstream workflow is missing, disabled or not on the default branch.
resource "aws_cloudwatch_metric_alarm" "never_started_dispatches" {
  alarm_name          = "${var.name_prefix}-never-started-dispatches"
  alarm_description   = "Dispatches with no callback after the deadline (crcr trace <delivery>)."
  namespace           = var.metrics_namespace
  metric_name         = "NeverStartedDispatches"
  dimensions          = var.custom_metric_dimensions
  statistic           = "Sum"
  period              = 900
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.never_started_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

# A downstream repository's dispatches failed for good so often (App
# uninstalled or suspended, repository archived or gone, no workflow) that
# the relay paused it: its dispatches are recorded paused, not sent, until a
# probe after the cool-down is delivered (crcr target list).
resource "aws_cloudwatch_metric_alarm" "target_breaker_opened" {
  alarm_name          = "${var.name_prefix}-target-breaker-opened"
  alarm_description   = "A downstream target's dispatches are paused after failing for good (RUNBOOK; crcr target list)."
  namespace           = var.metrics_namespace
  metric_name         = "TargetBreakersOpened"
  dimensions          = var.custom_metric_dimensions
  statistic           = "Sum"
  period              = 900
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.target_breaker_opened_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

# Missed-delivery recovery ({"task":"redeliver"}) could not finish a single
# run for an hour: the App's delivery log is read no further (GitHub refuses
# the App's credentials, rate limits, or the log is busier than one run can
# read) and failed deliveries come closer to GitHub's 3-day limit. Each run
# goes on where the last one stopped; the gauge is 1 for a run that did not
# finish, so the minimum over an hour is 1 only when none did.
resource "aws_cloudwatch_metric_alarm" "redeliver_incomplete" {
  alarm_name          = "${var.name_prefix}-redeliver-incomplete"
  alarm_description   = "No missed-delivery recovery run finished for an hour (RUNBOOK: Missed webhook deliveries; crcr redeliver --dry-run)."
  namespace           = var.metrics_namespace
  metric_name         = "RedeliverIncomplete"
  dimensions          = var.custom_metric_dimensions
  statistic           = "Minimum"
  period              = 3600
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.redeliver_incomplete_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}

# The App's GitHub API budget is running out: dispatches will start failing
# with 403/429 until the reset.
resource "aws_cloudwatch_metric_alarm" "github_rate_limit_low" {
  alarm_name          = "${var.name_prefix}-github-rate-limit-low"
  alarm_description   = "GitHub API rate limit remaining below ${var.github_rate_limit_remaining_threshold}."
  namespace           = var.metrics_namespace
  metric_name         = "GitHubRateLimitRemaining"
  dimensions          = var.custom_metric_dimensions
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "LessThanThreshold"
  threshold           = var.github_rate_limit_remaining_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}
