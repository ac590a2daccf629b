# The three Lambda functions, their log groups, their environment and the SQS
# event source mappings.
#
# All three are Rust binaries built by `cargo lambda build --release
# --output-format zip`: runtime provided.al2023, handler "bootstrap" (the
# binary's name inside the zip; the custom runtime ignores the handler).
#
# Checkov skips shared by the three functions, with their reasons:
# - CKV_AWS_117 (VPC): the functions call only GitHub, HUD and AWS APIs over
#   TLS; a VPC would need a NAT gateway for no private resource to reach.
# - CKV_AWS_116 (function DLQ): that DLQ only catches failed *asynchronous*
#   invocations. Ingest is invoked synchronously (GitHub sees the error and the
#   redeliver task recovers it); SQS-driven work fails over to the queues'
#   own DLQs; scheduled sweeps are retried by the next tick.
# - CKV_AWS_115 (reserved concurrency): reserving concurrency takes it from the
#   account's unreserved pool (and fails on accounts with the default low
#   quota). The consumers are bounded by scaling_config.maximum_concurrency;
#   ingest must not throttle GitHub's deliveries.
# - CKV_AWS_173 (environment encrypted with a CMK): the environment holds only
#   names, URLs and the secret's ARN; secrets are read from Secrets Manager.
# - CKV_AWS_272 (code signing): zips are built and deployed by the same
#   operator from this repository; no signing profile exists for them.

# Log format: every function has logging_config.log_format = "JSON", so Lambda
# sets AWS_LAMBDA_LOG_FORMAT=JSON and the Rust runtime's subscriber
# (lambda_runtime::tracing::init_default_subscriber) writes one JSON object per
# line, with the fields of the enclosing spans (delivery_id, event, repo,
# attempt) under "span"/"spans"; Lambda's own platform lines are JSON too. The
# custom metrics are CloudWatch Embedded Metric Format documents, JSON lines of
# their own on stdout, which CloudWatch Logs turns into metrics in
# var.metrics_namespace.

# --- log groups ----------------------------------------------------------------
# Created before the functions (default /aws/lambda/<name> group) so retention
# applies and the roles need no logs:CreateLogGroup.

resource "aws_cloudwatch_log_group" "ingest" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs encrypts at rest by default; logs carry no secrets (the code redacts them), so no customer managed key.
  name              = "/aws/lambda/${var.name_prefix}-ingest"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_cloudwatch_log_group" "dispatcher" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs encrypts at rest by default; logs carry no secrets (the code redacts them), so no customer managed key.
  name              = "/aws/lambda/${var.name_prefix}-dispatcher"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_cloudwatch_log_group" "reconciler" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs encrypts at rest by default; logs carry no secrets (the code redacts them), so no customer managed key.
  name              = "/aws/lambda/${var.name_prefix}-reconciler"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

# --- environment -----------------------------------------------------------------
# Each function gets only the settings it reads. Secrets are not here: the code
# reads the secret named by CRCR_SECRETS_ARN at start-up and caches it.

locals {
  # GitHub allows 100 concurrent requests ("Rate limits for the REST API" ->
  # "About secondary rate limits"), and each Lambda instance caps only its
  # own: the cap per instance is 100 shared by every instance that can call
  # GitHub at once (the dispatcher's and the reconciler's SQS consumers, plus
  # the scheduled sweep and redeliver invocations of the reconciler).
  github_max_in_flight = tostring(max(1, floor(100 / (var.dispatcher_max_concurrency + var.reconciler_max_concurrency + 2))))

  # Webhooks: verify, enqueue (claim check for big payloads).
  # Callbacks: verify OIDC (jti, repository_id binding, rate limit in kv), check
  # the DISPATCHED record and the job state, enqueue for the reconciler.
  ingest_environment = {
    CRCR_UPSTREAM_REPO       = var.upstream_repo
    CRCR_GITHUB_APP_ID       = var.github_app_id
    CRCR_ALLOWLIST_URL       = var.allowlist_url
    CRCR_DISPATCH_QUEUE_URL  = aws_sqs_queue.dispatch.url
    CRCR_RECONCILE_QUEUE_URL = aws_sqs_queue.reconcile.url
    CRCR_DISPATCH_TABLE      = aws_dynamodb_table.dispatches.name
    CRCR_PAYLOAD_TABLE       = aws_dynamodb_table.payloads.name
    CRCR_JOBS_TABLE          = aws_dynamodb_table.jobs.name
    CRCR_KV_TABLE            = aws_dynamodb_table.kv.name
    CRCR_SECRETS_ARN         = var.secrets_arn
    CRCR_METRICS_NAMESPACE   = var.metrics_namespace
    CRCR_OIDC_AUDIENCE       = var.oidc_audience
    CRCR_PAYLOAD_TTL_SECS    = tostring(local.payload_retention_seconds)
  }

  # Consume dispatch messages, fan out repository_dispatch, record per-target
  # outcomes, dead-letter with a reason after CRCR_MAX_RECEIVE_COUNT receives.
  dispatcher_environment = {
    CRCR_UPSTREAM_REPO      = var.upstream_repo
    CRCR_GITHUB_APP_ID      = var.github_app_id
    CRCR_ALLOWLIST_URL      = var.allowlist_url
    CRCR_DISPATCH_QUEUE_URL = aws_sqs_queue.dispatch.url
    CRCR_DISPATCH_DLQ_URL   = aws_sqs_queue.dispatch_dlq.url
    CRCR_DISPATCH_TABLE     = aws_dynamodb_table.dispatches.name
    CRCR_PAYLOAD_TABLE      = aws_dynamodb_table.payloads.name
    CRCR_JOBS_TABLE         = aws_dynamodb_table.jobs.name
    CRCR_KV_TABLE           = aws_dynamodb_table.kv.name
    CRCR_MAX_RECEIVE_COUNT  = tostring(var.max_receive_count)
    CRCR_SECRETS_ARN        = var.secrets_arn
    CRCR_METRICS_NAMESPACE  = var.metrics_namespace
    # GitHub's 100 concurrent requests, shared by every instance (see above).
    CRCR_GITHUB_MAX_IN_FLIGHT = local.github_max_in_flight
  }

  # Consume callbacks (lifecycle, HUD outbox, check runs), run the sweeps and
  # the redeliver task.
  reconciler_environment = {
    CRCR_UPSTREAM_REPO       = var.upstream_repo
    CRCR_GITHUB_APP_ID       = var.github_app_id
    CRCR_ALLOWLIST_URL       = var.allowlist_url
    CRCR_RECONCILE_QUEUE_URL = aws_sqs_queue.reconcile.url
    CRCR_RECONCILE_DLQ_URL   = aws_sqs_queue.reconcile_dlq.url
    CRCR_DISPATCH_TABLE      = aws_dynamodb_table.dispatches.name
    CRCR_JOBS_TABLE          = aws_dynamodb_table.jobs.name
    CRCR_KV_TABLE            = aws_dynamodb_table.kv.name
    CRCR_MAX_RECEIVE_COUNT   = tostring(var.max_receive_count)
    CRCR_SECRETS_ARN         = var.secrets_arn
    CRCR_METRICS_NAMESPACE   = var.metrics_namespace
    CRCR_HUD_URL             = var.hud_url
    CRCR_HUD_MAX_ATTEMPTS    = tostring(var.hud_max_attempts)
    CRCR_HUD_MAX_AGE_SECS    = tostring(var.hud_max_age_seconds)
    # GitHub's 100 concurrent requests, shared by every instance (see above).
    CRCR_GITHUB_MAX_IN_FLIGHT = local.github_max_in_flight
    # A sweep cannot outlive its invocation: the outbox lease lasts exactly
    # that long, so a sweep killed by the timeout blocks the next one no longer.
    CRCR_OUTBOX_LEASE_SECS = tostring(var.reconciler_timeout)
  }
}

# --- functions -----------------------------------------------------------------

resource "aws_lambda_function" "ingest" {
  #checkov:skip=CKV_AWS_117:No VPC: calls only public HTTPS APIs (see the note at the top of this file).
  #checkov:skip=CKV_AWS_116:Invoked synchronously only; a function DLQ would never receive anything.
  #checkov:skip=CKV_AWS_115:Reserved concurrency would throttle GitHub's webhook deliveries.
  #checkov:skip=CKV_AWS_173:The environment holds no secrets (names, URLs, the secret's ARN).
  #checkov:skip=CKV_AWS_272:No code-signing profile; zips are built and deployed by the operator.
  function_name    = "${var.name_prefix}-ingest"
  role             = aws_iam_role.ingest.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.architecture]
  filename         = var.ingest_zip
  source_code_hash = filebase64sha256(var.ingest_zip)
  timeout          = var.ingest_timeout
  memory_size      = var.ingest_memory_size

  environment {
    # The module's wiring wins over extra_environment.
    variables = merge(lookup(var.extra_environment, "ingest", {}), local.ingest_environment)
  }

  tracing_config {
    mode = "Active"
  }

  # JSON log lines (see "log format" at the top of this file).
  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.ingest.name
  }

  tags       = var.tags
  depends_on = [aws_cloudwatch_log_group.ingest, aws_iam_role_policy.ingest]
}

resource "aws_lambda_function" "dispatcher" {
  #checkov:skip=CKV_AWS_117:No VPC: calls only public HTTPS APIs (see the note at the top of this file).
  #checkov:skip=CKV_AWS_116:SQS-driven; failed messages go to the dispatch DLQ.
  #checkov:skip=CKV_AWS_115:Bounded by the event source mapping's maximum_concurrency instead.
  #checkov:skip=CKV_AWS_173:The environment holds no secrets (names, URLs, the secret's ARN).
  #checkov:skip=CKV_AWS_272:No code-signing profile; zips are built and deployed by the operator.
  function_name    = "${var.name_prefix}-dispatcher"
  role             = aws_iam_role.dispatcher.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.architecture]
  filename         = var.dispatcher_zip
  source_code_hash = filebase64sha256(var.dispatcher_zip)
  timeout          = var.dispatcher_timeout
  memory_size      = var.dispatcher_memory_size

  environment {
    variables = merge(lookup(var.extra_environment, "dispatcher", {}), local.dispatcher_environment)
  }

  tracing_config {
    mode = "Active"
  }

  # JSON log lines (see "log format" at the top of this file).
  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.dispatcher.name
  }

  tags       = var.tags
  depends_on = [aws_cloudwatch_log_group.dispatcher, aws_iam_role_policy.dispatcher]
}

resource "aws_lambda_function" "reconciler" {
  #checkov:skip=CKV_AWS_117:No VPC: calls only public HTTPS APIs (see the note at the top of this file).
  #checkov:skip=CKV_AWS_116:SQS-driven (reconcile DLQ) and scheduled (the next tick retries).
  #checkov:skip=CKV_AWS_115:Bounded by the event source mapping's maximum_concurrency instead.
  #checkov:skip=CKV_AWS_173:The environment holds no secrets (names, URLs, the secret's ARN).
  #checkov:skip=CKV_AWS_272:No code-signing profile; zips are built and deployed by the operator.
  function_name    = "${var.name_prefix}-reconciler"
  role             = aws_iam_role.reconciler.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.architecture]
  filename         = var.reconciler_zip
  source_code_hash = filebase64sha256(var.reconciler_zip)
  timeout          = var.reconciler_timeout
  memory_size      = var.reconciler_memory_size

  environment {
    variables = merge(lookup(var.extra_environment, "reconciler", {}), local.reconciler_environment)
  }

  tracing_config {
    mode = "Active"
  }

  # JSON log lines (see "log format" at the top of this file).
  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.reconciler.name
  }

  tags       = var.tags
  depends_on = [aws_cloudwatch_log_group.reconciler, aws_iam_role_policy.reconciler]
}

# Scheduled (asynchronous) invocations of the reconciler are not retried: a
# sweep or redeliver run that failed is simply repeated by the next tick, and
# two runs must not pile up behind each other.
resource "aws_lambda_function_event_invoke_config" "reconciler" {
  function_name                = aws_lambda_function.reconciler.function_name
  maximum_retry_attempts       = 0
  maximum_event_age_in_seconds = 300
}

# --- SQS event sources -----------------------------------------------------------
# ReportBatchItemFailures: the function answers with the ids of the messages it
# failed, and only those return to the queue. Without it one bad message makes
# the whole batch (already dispatched ones included) come back.

resource "aws_lambda_event_source_mapping" "dispatch" {
  event_source_arn        = aws_sqs_queue.dispatch.arn
  function_name           = aws_lambda_function.dispatcher.arn
  batch_size              = var.dispatcher_batch_size
  function_response_types = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = var.dispatcher_max_concurrency
  }
}

resource "aws_lambda_event_source_mapping" "reconcile" {
  event_source_arn        = aws_sqs_queue.reconcile.arn
  function_name           = aws_lambda_function.reconciler.arn
  batch_size              = var.reconciler_batch_size
  function_response_types = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = var.reconciler_max_concurrency
  }
}
