# The public HTTPS endpoint of ingest: a Lambda Function URL or an API Gateway
# HTTP API (var.ingest_endpoint). Either way authorization is NONE at the edge:
# GitHub webhooks are authenticated by their HMAC signature and callbacks by
# their OIDC token, both checked in the code before anything is trusted.
#
# Size limits to know: a synchronous Lambda invocation takes at most 6 MB of
# request, so webhook payloads above that (GitHub allows 25 MB) are refused at
# the edge with 413 whichever endpoint is used.

locals {
  use_function_url = var.ingest_endpoint == "function_url"
  use_http_api     = var.ingest_endpoint == "http_api"

  # Routes ingest serves (HTTP API only: the Function URL forwards every path
  # and the code answers 404 for unknown ones).
  ingest_routes = ["POST /github/webhook", "POST /github/callback", "GET /healthz"]
}

# --- Lambda Function URL -------------------------------------------------------------

resource "aws_lambda_function_url" "ingest" {
  #checkov:skip=CKV_AWS_258:Auth NONE on purpose: GitHub cannot sign requests with SigV4; webhooks are checked by HMAC and callbacks by OIDC token in code.
  count = local.use_function_url ? 1 : 0

  function_name      = aws_lambda_function.ingest.function_name
  authorization_type = "NONE" # HMAC (webhooks) and OIDC (callbacks) are checked in code
  invoke_mode        = "BUFFERED"
}

# Since October 2025 a public Function URL needs both statements: invoking the
# URL, and invoking the function when the call comes through the URL. The
# provider (>= 6.28) also adds both when it creates the URL, but those are not
# in the state; these are, so the policy is visible here and removed with it.
resource "aws_lambda_permission" "ingest_url" {
  #checkov:skip=CKV_AWS_301:Public on purpose: GitHub and downstream CI call it; requests are authenticated in code (HMAC / OIDC).
  count = local.use_function_url ? 1 : 0

  statement_id           = "CrcrPublicFunctionUrl"
  action                 = "lambda:InvokeFunctionUrl"
  function_name          = aws_lambda_function.ingest.function_name
  principal              = "*"
  function_url_auth_type = "NONE"
}

resource "aws_lambda_permission" "ingest_url_invoke" {
  #checkov:skip=CKV_AWS_301:Public on purpose, and only through the Function URL (invoked_via_function_url).
  count = local.use_function_url ? 1 : 0

  statement_id             = "CrcrPublicFunctionUrlInvoke"
  action                   = "lambda:InvokeFunction"
  function_name            = aws_lambda_function.ingest.function_name
  principal                = "*"
  invoked_via_function_url = true
}

# --- API Gateway HTTP API ------------------------------------------------------------

resource "aws_apigatewayv2_api" "ingest" {
  count = local.use_http_api ? 1 : 0

  name          = "${var.name_prefix}-ingest"
  protocol_type = "HTTP"
  tags          = var.tags
}

resource "aws_apigatewayv2_integration" "ingest" {
  count = local.use_http_api ? 1 : 0

  api_id                 = aws_apigatewayv2_api.ingest[0].id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.ingest.invoke_arn
  payload_format_version = "2.0" # the format lambda_http reads
  timeout_milliseconds   = 30000 # HTTP API maximum; ingest's own timeout is lower
}

resource "aws_apigatewayv2_route" "ingest" {
  #checkov:skip=CKV_AWS_309:No authorizer on purpose: webhooks carry an HMAC signature and callbacks an OIDC token, both verified in code.
  for_each = local.use_http_api ? toset(local.ingest_routes) : toset([])

  api_id             = aws_apigatewayv2_api.ingest[0].id
  route_key          = each.value
  authorization_type = "NONE"
  target             = "integrations/${aws_apigatewayv2_integration.ingest[0].id}"
}

resource "aws_cloudwatch_log_group" "http_api_access" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs encrypts at rest by default; access logs carry no secrets.
  count = local.use_http_api ? 1 : 0

  name              = "/aws/apigateway/${var.name_prefix}-ingest"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

resource "aws_apigatewayv2_stage" "ingest" {
  count = local.use_http_api ? 1 : 0

  api_id      = aws_apigatewayv2_api.ingest[0].id
  name        = "$default" # served at the API's root, so URLs are <api_endpoint>/github/...
  auto_deploy = true

  # Throttle at the edge so a flood never reaches the function.
  default_route_settings {
    throttling_burst_limit = var.http_api_throttling_burst_limit
    throttling_rate_limit  = var.http_api_throttling_rate_limit
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.http_api_access[0].arn
    format = jsonencode({
      requestId      = "$context.requestId"
      ip             = "$context.identity.sourceIp"
      requestTime    = "$context.requestTime"
      routeKey       = "$context.routeKey"
      status         = "$context.status"
      responseLength = "$context.responseLength"
      latency        = "$context.integrationLatency"
      error          = "$context.integrationErrorMessage"
    })
  }

  tags = var.tags
}

resource "aws_lambda_permission" "http_api" {
  count = local.use_http_api ? 1 : 0

  statement_id  = "CrcrHttpApiInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.ingest.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.ingest[0].execution_arn}/*/*"
}
