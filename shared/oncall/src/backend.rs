//! The adapters an on-call command works on: the embedded SQLite file, or
//! SQS + DynamoDB named by the same `CRCR_*` variables the Lambda functions
//! read (credentials from the usual AWS chain).

use std::path::Path;

use crcr_core::config::{AwsResources, ConfigError, Env};
use crcr_core::ports::{BlobStore, DispatchStore, EventQueue};

/// Which queue pair a DLQ command reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueName {
    /// Webhooks to fan out (`CRCR_DISPATCH_QUEUE_URL`, `CRCR_DISPATCH_DLQ_URL`).
    Dispatch,
    /// Accepted callbacks for the reconciler (`CRCR_RECONCILE_QUEUE_URL`, `CRCR_RECONCILE_DLQ_URL`).
    Reconcile,
}

impl QueueName {
    /// The name of the queue in the SQLite file and in `crcr status`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueName::Dispatch => "dispatch",
            QueueName::Reconcile => "reconcile",
        }
    }
}

/// Adapters for one command.
pub struct OpsPorts {
    pub queue: Box<dyn EventQueue>,
    pub store: Box<dyn DispatchStore>,
    pub blobs: Box<dyn BlobStore>,
    /// Where they point, for messages (`sqlite:crcr.sqlite`, `aws:<queue url>`).
    pub description: String,
}

/// Errors opening the adapters.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no database at {0} (give --database PATH or set CRCR_DATABASE)")]
    NoDatabase(String),
    #[error("database {path}: {error}")]
    Database { path: String, error: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The SQLite file of `crcr serve` at `path`, which must exist: a command
/// pointed at the wrong path does not create an empty database and report
/// it empty.
pub fn open_database(path: &Path) -> Result<crcr_embedded::sqlite::Db, BackendError> {
    if !path.is_file() {
        return Err(BackendError::NoDatabase(path.display().to_string()));
    }
    crcr_embedded::sqlite::Db::open(path)
        .map_err(|e| BackendError::Database { path: path.display().to_string(), error: e.to_string() })
}

/// The adapters on the SQLite file at `path`, which must exist (a command
/// pointed at the wrong path should not create an empty database and
/// report an empty queue). `max_receive_count` as `CRCR_MAX_RECEIVE_COUNT`:
/// only receives from the source queue use it, which these commands never do.
pub fn sqlite(path: &Path, queue: QueueName, max_receive_count: u32) -> Result<OpsPorts, BackendError> {
    let db = open_database(path)?;
    Ok(OpsPorts {
        queue: Box::new(crcr_embedded::sqlite::SqliteQueue::new(db.clone(), queue.as_str(), max_receive_count)),
        store: Box::new(crcr_embedded::sqlite::SqliteDispatchStore::new(db.clone())),
        blobs: Box::new(crcr_embedded::sqlite::SqliteBlobStore::new(db)),
        description: format!("sqlite:{} ({} queue)", path.display(), queue.as_str()),
    })
}

/// The adapters on AWS: `CRCR_DISPATCH_QUEUE_URL` + `CRCR_DISPATCH_DLQ_URL`
/// (or `CRCR_RECONCILE_QUEUE_URL` + `CRCR_RECONCILE_DLQ_URL`),
/// `CRCR_DISPATCH_TABLE`, `CRCR_PAYLOAD_TABLE`, and `CRCR_AWS_ENDPOINT_URL`
/// for an emulator.
pub async fn aws(env: &Env<'_>, queue: QueueName) -> Result<OpsPorts, BackendError> {
    const BY: &str = "the on-call commands with --aws";
    let res = AwsResources::from_env(env)?;
    let (queue_url, dlq_url) = match queue {
        QueueName::Dispatch => (res.dispatch_queue_url(BY)?, res.dlq_url()?),
        QueueName::Reconcile => (env.required("CRCR_RECONCILE_QUEUE_URL")?, env.required("CRCR_RECONCILE_DLQ_URL")?),
    };
    let sdk = crcr_aws::sdk_config(res.endpoint_url.as_deref()).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    Ok(OpsPorts {
        description: format!("aws:{queue_url}"),
        queue: Box::new(crcr_aws::SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), queue_url, dlq_url)),
        store: Box::new(crcr_aws::DynamoDispatchStore::new(dynamo.clone(), res.dispatch_table(BY)?)),
        blobs: Box::new(crcr_aws::DynamoBlobStore::new(dynamo, res.payload_table(BY)?)),
    })
}
