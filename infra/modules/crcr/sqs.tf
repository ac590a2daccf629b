# SQS: the dispatch queue (ingest -> dispatcher) and the reconcile queue
# (ingest callbacks -> reconciler), each with its dead-letter queue.
#
# Messages the code gives up on are moved to the DLQ by the code itself (with
# a reason attribute); messages whose consumer keeps failing or timing out are
# moved by SQS after var.max_receive_count receives (redrive policy).

resource "aws_sqs_queue" "dispatch_dlq" {
  name                      = "${var.name_prefix}-dispatch-dlq"
  message_retention_seconds = local.dlq_retention_seconds
  max_message_size          = local.dlq_max_message_size
  sqs_managed_sse_enabled   = true # SSE-SQS: encrypted at rest, no key to manage
  tags                      = var.tags
}

resource "aws_sqs_queue" "dispatch" {
  name                       = "${var.name_prefix}-dispatch"
  visibility_timeout_seconds = local.dispatch_visibility_timeout
  message_retention_seconds  = var.queue_message_retention_seconds
  max_message_size           = local.queue_max_message_size
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dispatch_dlq.arn
    maxReceiveCount     = var.max_receive_count
  })

  tags = var.tags
}

resource "aws_sqs_queue" "reconcile_dlq" {
  name                      = "${var.name_prefix}-reconcile-dlq"
  message_retention_seconds = local.dlq_retention_seconds
  max_message_size          = local.dlq_max_message_size
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

resource "aws_sqs_queue" "reconcile" {
  name                       = "${var.name_prefix}-reconcile"
  visibility_timeout_seconds = local.reconcile_visibility_timeout
  message_retention_seconds  = var.queue_message_retention_seconds
  max_message_size           = local.queue_max_message_size
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.reconcile_dlq.arn
    maxReceiveCount     = var.max_receive_count
  })

  tags = var.tags
}

# Each DLQ accepts redrives only from its own source queue. Separate resources:
# putting this on the DLQ itself would make the two queues refer to each other.
resource "aws_sqs_queue_redrive_allow_policy" "dispatch_dlq" {
  queue_url = aws_sqs_queue.dispatch_dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.dispatch.arn]
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "reconcile_dlq" {
  queue_url = aws_sqs_queue.reconcile_dlq.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.reconcile.arn]
  })
}

# Queue policies: deny any request not made over TLS, on all four queues.
# Access itself is granted by the functions' IAM roles; these policies only
# take away.
locals {
  tls_only_queues = {
    dispatch      = aws_sqs_queue.dispatch
    dispatch_dlq  = aws_sqs_queue.dispatch_dlq
    reconcile     = aws_sqs_queue.reconcile
    reconcile_dlq = aws_sqs_queue.reconcile_dlq
  }
}

data "aws_iam_policy_document" "queue_tls_only" {
  for_each = local.tls_only_queues

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["sqs:*"] # a Deny: wildcards here only widen what is refused

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    resources = [each.value.arn]

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "tls_only" {
  for_each = local.tls_only_queues

  queue_url = each.value.id
  policy    = data.aws_iam_policy_document.queue_tls_only[each.key].json
}
