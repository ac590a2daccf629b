//! AWS adapters: SQS queue, DynamoDB dispatch store and claim-check blobs.
