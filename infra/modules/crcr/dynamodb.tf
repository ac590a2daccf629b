# The tables' schema (names, keys and their types, GSIs, TTL) is also in
# tables.json, next to this file: the source the tests read. The HCL below stays
# literal (infra/tests/tfmodel.py, the static model the tests use, cannot
# resolve jsondecode() or dynamic blocks), and infra/tests/test_infra.py checks
# that it matches tables.json exactly: change both together. The moto tables of
# the Rust tests (shared/standin/src/moto.rs) and of the package smoke test
# (infra/tests/test_package.py) are created from tables.json.
#
# DynamoDB tables the code uses. All of them:
# - on demand (PAY_PER_REQUEST): traffic follows PyTorch's PR activity, bursty
#   and low on average, so no capacity to plan or autoscale;
# - point-in-time recovery: the dispatch and job records are the relay's memory
#   of what it already sent (idempotency) and the HUD outbox;
# - TTL on `expires_at` (epoch seconds, written by the code) so old records
#   expire without a cleanup job;
# - server-side encryption with KMS (the AWS managed aws/dynamodb key);
# - deletion protection as a variable (on by default).

# Per-(delivery, target) dispatch records: pending / dispatched / failed,
# attempts, last error. The DISPATCHED state the callbacks read.
# GSI by_dispatch_day: sparse (only dispatched records carry dispatch_day, the
# UTC day of dispatched_at_ms); the reconciler's never-started sweep queries a
# day or two of it instead of scanning the table.
# GSI by_head_sha: sparse (only records of an event with a commit carry
# head_sha), sorted by created_at_ms; labeled / synchronize / closed /
# rerequested events find the relay's records of an upstream commit with one
# query instead of a scan.
resource "aws_dynamodb_table" "dispatches" {
  #checkov:skip=CKV_AWS_119:Encrypted with the AWS managed aws/dynamodb KMS key; a customer managed key adds cost and key-policy upkeep for no extra control here.
  name                        = "${var.name_prefix}-dispatches"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "delivery_id"
  range_key                   = "target"
  deletion_protection_enabled = var.deletion_protection_enabled

  attribute {
    name = "delivery_id"
    type = "S"
  }

  attribute {
    name = "target"
    type = "S"
  }

  attribute {
    name = "dispatch_day"
    type = "S"
  }

  attribute {
    name = "dispatched_at_ms"
    type = "N"
  }

  attribute {
    name = "head_sha"
    type = "S"
  }

  attribute {
    name = "created_at_ms"
    type = "N"
  }

  global_secondary_index {
    name            = "by_dispatch_day"
    hash_key        = "dispatch_day"
    range_key       = "dispatched_at_ms"
    projection_type = "ALL"
  }

  global_secondary_index {
    name            = "by_head_sha"
    hash_key        = "head_sha"
    range_key       = "created_at_ms"
    projection_type = "ALL"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  tags = var.tags
}

# Claim-check storage: webhook payloads too large for one SQS message, split
# into chunks (item size limit 400 KB) under one key.
resource "aws_dynamodb_table" "payloads" {
  #checkov:skip=CKV_AWS_119:Encrypted with the AWS managed aws/dynamodb KMS key; a customer managed key adds cost and key-policy upkeep for no extra control here.
  name                        = "${var.name_prefix}-payloads"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "key"
  range_key                   = "chunk"
  deletion_protection_enabled = var.deletion_protection_enabled

  attribute {
    name = "key"
    type = "S"
  }

  attribute {
    name = "chunk"
    type = "N"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  tags = var.tags
}

# Run lifecycle (DISPATCHED -> IN_PROGRESS -> COMPLETED) and the HUD outbox.
# GSI by_status lets the reconciler's sweeps find zombie jobs, never-started
# dispatches and pending HUD records by status and age without a scan.
resource "aws_dynamodb_table" "jobs" {
  #checkov:skip=CKV_AWS_119:Encrypted with the AWS managed aws/dynamodb KMS key; a customer managed key adds cost and key-policy upkeep for no extra control here.
  name                        = "${var.name_prefix}-jobs"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  range_key                   = "sk"
  deletion_protection_enabled = var.deletion_protection_enabled

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  attribute {
    name = "status"
    type = "S"
  }

  attribute {
    name = "updated_at"
    type = "N"
  }

  # hash_key/range_key: supported by every 6.x provider (newer 6.x releases
  # also accept key_schema blocks and mark these deprecated).
  global_secondary_index {
    name            = "by_status"
    hash_key        = "status"
    range_key       = "updated_at"
    projection_type = "ALL"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  tags = var.tags
}

# Small state: callback rate-limit counters, OIDC jti replay guard,
# repository_id bindings, the redeliver cursor.
resource "aws_dynamodb_table" "kv" {
  #checkov:skip=CKV_AWS_119:Encrypted with the AWS managed aws/dynamodb KMS key; a customer managed key adds cost and key-policy upkeep for no extra control here.
  name                        = "${var.name_prefix}-kv"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  deletion_protection_enabled = var.deletion_protection_enabled

  attribute {
    name = "pk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  tags = var.tags
}
