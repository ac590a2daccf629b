# Root module pins. Configure a backend (S3 + locking) before a shared deploy;
# local state is fine for a trial.
terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.28, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project   = "crcr"
      ManagedBy = "terraform"
    }
  }
}
