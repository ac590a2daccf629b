# Provider pins for the crcr module.
#
# aws >= 6.28: `aws_lambda_permission.invoked_via_function_url` (a public
# Lambda Function URL needs lambda:InvokeFunction with the
# lambda:InvokedViaFunctionUrl condition since October 2025) and SQS
# max_message_size up to 1 MiB. < 7.0: the next major may rename arguments
# (e.g. the GSI hash_key/range_key in dynamodb.tf).
terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.28, < 7.0"
    }
  }
}
