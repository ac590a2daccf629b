# A complete deployment of the relay: the crcr module plus an SNS topic for
# its alarms when none is given.

resource "aws_sns_topic" "alarms" {
  #checkov:skip=CKV_AWS_26:CloudWatch alarms cannot publish to a topic encrypted with the AWS managed aws/sns key; alarm messages carry no secrets. Pass alarm_sns_topic_arn to use a topic encrypted with your own CMK.
  count = var.alarm_sns_topic_arn == null ? 1 : 0

  name = "${var.name_prefix}-alarms"
}

module "crcr" {
  source = "../../modules/crcr"

  name_prefix    = var.name_prefix
  architecture   = var.architecture
  ingest_zip     = var.ingest_zip
  dispatcher_zip = var.dispatcher_zip
  reconciler_zip = var.reconciler_zip

  ingest_endpoint = var.ingest_endpoint
  upstream_repo   = var.upstream_repo
  github_app_id   = var.github_app_id
  allowlist_url   = var.allowlist_url
  hud_url         = var.hud_url
  secrets_arn     = var.secrets_arn

  alarm_sns_topic_arn         = coalesce(var.alarm_sns_topic_arn, one(aws_sns_topic.alarms[*].arn))
  deletion_protection_enabled = var.deletion_protection_enabled
}
