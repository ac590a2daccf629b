# One execution role per function, each allowed only the actions it uses on
# the resources it uses. No wildcard actions; the only "*" resources are the
# X-Ray actions, which support no resource-level permissions.

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

# Statements every function needs: the secret (read at start-up), its KMS key
# when it has a customer managed one, and X-Ray (tracing mode Active).
data "aws_iam_policy_document" "common" {
  statement {
    sid       = "ReadRelaySecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.secrets_arn]
  }

  dynamic "statement" {
    for_each = var.secrets_kms_key_arn == null ? [] : [var.secrets_kms_key_arn]
    content {
      sid       = "DecryptRelaySecret"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      # Only when Secrets Manager decrypts on the function's behalf.
      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${data.aws_region.current.region}.amazonaws.com"]
      }
    }
  }

  statement {
    sid       = "XRayTraces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"] # X-Ray has no resource-level permissions
  }
}

# --- ingest ------------------------------------------------------------------------

resource "aws_iam_role" "ingest" {
  name               = "${var.name_prefix}-ingest"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "ingest" {
  source_policy_documents = [data.aws_iam_policy_document.common.json]

  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.ingest.arn}:*"]
  }

  statement {
    sid       = "Enqueue"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dispatch.arn, aws_sqs_queue.reconcile.arn]
  }

  statement {
    sid       = "StoreLargePayloads"
    actions   = ["dynamodb:PutItem"]
    resources = [aws_dynamodb_table.payloads.arn]
  }

  statement {
    sid       = "ReadDispatchAndJobState"
    actions   = ["dynamodb:GetItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.dispatches.arn, aws_dynamodb_table.jobs.arn]
  }

  statement {
    sid       = "CallbackGuards"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.kv.arn]
  }
}

resource "aws_iam_role_policy" "ingest" {
  name   = "${var.name_prefix}-ingest"
  role   = aws_iam_role.ingest.id
  policy = data.aws_iam_policy_document.ingest.json
}

# --- dispatcher --------------------------------------------------------------------

resource "aws_iam_role" "dispatcher" {
  name               = "${var.name_prefix}-dispatcher"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "dispatcher" {
  source_policy_documents = [data.aws_iam_policy_document.common.json]

  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.dispatcher.arn}:*"]
  }

  # What the SQS event source needs, plus ChangeMessageVisibility to hold a
  # message back until a GitHub rate limit resets.
  statement {
    sid = "ConsumeDispatchQueue"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:GetQueueAttributes",
      "sqs:ChangeMessageVisibility",
    ]
    resources = [aws_sqs_queue.dispatch.arn]
  }

  # The code dead-letters permanent failures itself, with a reason attribute.
  statement {
    sid       = "DeadLetterWithReason"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dispatch_dlq.arn]
  }

  statement {
    sid       = "DispatchRecords"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.dispatches.arn]
  }

  statement {
    sid       = "ReadLargePayloads"
    actions   = ["dynamodb:Query"]
    resources = [aws_dynamodb_table.payloads.arn]
  }

  # Check-run-wanted records (set at dispatch and by `labeled`), re-run lookups.
  statement {
    sid       = "JobRecords"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.jobs.arn]
  }

  statement {
    sid       = "SmallState"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]
    resources = [aws_dynamodb_table.kv.arn]
  }
}

resource "aws_iam_role_policy" "dispatcher" {
  name   = "${var.name_prefix}-dispatcher"
  role   = aws_iam_role.dispatcher.id
  policy = data.aws_iam_policy_document.dispatcher.json
}

# --- reconciler --------------------------------------------------------------------

resource "aws_iam_role" "reconciler" {
  name               = "${var.name_prefix}-reconciler"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "reconciler" {
  source_policy_documents = [data.aws_iam_policy_document.common.json]

  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.reconciler.arn}:*"]
  }

  statement {
    sid = "ConsumeReconcileQueue"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:GetQueueAttributes",
      "sqs:ChangeMessageVisibility",
    ]
    resources = [aws_sqs_queue.reconcile.arn]
  }

  statement {
    sid       = "DeadLetterWithReason"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.reconcile_dlq.arn]
  }

  # Lifecycle transitions (conditional writes), HUD outbox, sweeps by status.
  statement {
    sid       = "JobRecords"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.jobs.arn, "${aws_dynamodb_table.jobs.arn}/index/by_status"]
  }

  # DISPATCHED records: read for figures; the never-started sweep queries
  # the by_dispatch_day index; labeled / synchronize / closed / rerequested
  # events find a commit's records in the by_head_sha index.
  statement {
    sid     = "DispatchRecords"
    actions = ["dynamodb:GetItem", "dynamodb:Query"]
    resources = [
      aws_dynamodb_table.dispatches.arn,
      "${aws_dynamodb_table.dispatches.arn}/index/by_dispatch_day",
      "${aws_dynamodb_table.dispatches.arn}/index/by_head_sha",
    ]
  }

  # Redeliver cursor, per-commit check-run records; the sweep's outbox lease
  # (taken with a conditional PutItem, given back with a conditional DeleteItem).
  statement {
    sid       = "SmallState"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.kv.arn]
  }
}

resource "aws_iam_role_policy" "reconciler" {
  name   = "${var.name_prefix}-reconciler"
  role   = aws_iam_role.reconciler.id
  policy = data.aws_iam_policy_document.reconciler.json
}
