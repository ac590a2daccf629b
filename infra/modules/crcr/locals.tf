# Derived values shared by several files.

data "aws_region" "current" {}

locals {
  # AWS guidance for SQS event sources: the queue's visibility timeout should be
  # at least 6x the consuming function's timeout, so a message is not handed to
  # a second invocation while the first one (with retries of throttled
  # invocations) may still be working on it.
  dispatch_visibility_timeout  = 6 * var.dispatcher_timeout
  reconcile_visibility_timeout = 6 * var.reconciler_timeout

  # 14 days, SQS's maximum (MessageRetentionPeriod, 60..1209600 s: Amazon SQS
  # API Reference, "SetQueueAttributes"): the longest window an on-call
  # engineer has to inspect and replay dead letters (crcr dlq list / replay).
  dlq_retention_seconds = 1209600

  # Claim-checked payloads (the payloads table, TTL on expires_at) must outlive
  # every message that names them: a message dead-letters at the latest
  # dlq_retention_seconds after it was first sent (a standard queue keeps the
  # original enqueue time: "For standard queues, the expiration of a message is
  # always based on its original enqueue timestamp", Amazon SQS Developer
  # Guide, "Setting-up dead-letter queue retention in Amazon SQS"), and one
  # `crcr dlq replay` sends back lives
  # queue_message_retention_seconds more; plus a day of margin. Passed to
  # ingest, which writes them, as CRCR_PAYLOAD_TTL_SECS.
  payload_retention_seconds = local.dlq_retention_seconds + var.queue_message_retention_seconds + 86400

  # The code refuses bodies above 256 KiB (larger webhook payloads go through
  # the claim check in the payloads table); the queue enforces it as well.
  queue_max_message_size = 262144

  # DLQs take SQS's maximum (1 MiB): the code copies a failed message there
  # with an extra reason attribute (up to ~1 KB), which must not push a
  # message that was just under 256 KiB over the DLQ's limit.
  dlq_max_message_size = 1048576

  function_names = {
    ingest     = aws_lambda_function.ingest.function_name
    dispatcher = aws_lambda_function.dispatcher.function_name
    reconciler = aws_lambda_function.reconciler.function_name
  }

  # The public base URL of ingest, without a trailing slash.
  ingest_base_url = (
    var.ingest_endpoint == "function_url"
    ? trimsuffix(aws_lambda_function_url.ingest[0].function_url, "/")
    : aws_apigatewayv2_api.ingest[0].api_endpoint
  )
}
