# EventBridge schedules invoking the reconciler with a task input:
# - sweep: IN_PROGRESS jobs past the timeout -> timed_out, DISPATCHED targets
#   never started -> flagged, pending HUD outbox records -> retried;
# - redeliver: GitHub does not retry failed webhook deliveries; ask it to
#   redeliver those with no successful attempt (the code keeps a cursor in kv).

locals {
  reconciler_schedules = {
    sweep     = var.sweep_schedule
    redeliver = var.redeliver_schedule
  }
}

resource "aws_cloudwatch_event_rule" "reconciler" {
  for_each = local.reconciler_schedules

  name                = "${var.name_prefix}-${each.key}"
  description         = "Invoke ${aws_lambda_function.reconciler.function_name} with {\"task\":\"${each.key}\"}"
  schedule_expression = each.value
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "reconciler" {
  for_each = local.reconciler_schedules

  rule  = aws_cloudwatch_event_rule.reconciler[each.key].name
  arn   = aws_lambda_function.reconciler.arn
  input = jsonencode({ task = each.key })
}

# EventBridge invokes the function through its resource policy, limited to
# the one rule (source_arn) so no other rule or account can use it.
resource "aws_lambda_permission" "reconciler_schedule" {
  for_each = local.reconciler_schedules

  statement_id  = "CrcrSchedule-${each.key}"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.reconciler.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.reconciler[each.key].arn
}
