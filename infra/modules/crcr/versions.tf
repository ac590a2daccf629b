# Provider pins for the crcr module.
#
# aws >= 6.29: `aws_lambda_permission.invoked_via_function_url`, needed since
# October 2025 for a public Lambda Function URL (lambda:InvokeFunction with the
# lambda:InvokedViaFunctionUrl condition, next to lambda:InvokeFunctionUrl).
terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.29, < 7.0"
    }
  }
}
