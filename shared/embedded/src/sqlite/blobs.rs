//! Claim-check blobs in the `blobs` table.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::{Db, DbError};
use crcr_core::ports::{BlobError, BlobStore, Clock, SystemClock};

/// [`BlobStore`] on SQLite.
#[derive(Clone)]
pub struct SqliteBlobStore {
    db: Db,
    /// Stamps each blob's creation time (for its expiry).
    clock: Arc<dyn Clock>,
}

impl SqliteBlobStore {
    pub fn new(db: Db) -> Self {
        Self { db, clock: Arc::new(SystemClock) }
    }

    /// The same store on `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

#[async_trait]
impl BlobStore for SqliteBlobStore {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let (key, bytes, now) = (key.to_owned(), bytes.to_vec(), self.clock.now_ms());
        self.db
            .write(move |conn| {
                conn.execute(
                    "INSERT OR REPLACE INTO blobs (key, data, created_at_ms) VALUES (?1, ?2, ?3)",
                    params![key, bytes, now],
                )
                .map(|_| ())
                .map_err(BlobError::sqlite)
            })
            .await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let key = key.to_owned();
        self.db
            .read(move |conn| {
                conn.query_row("SELECT data FROM blobs WHERE key = ?1", [&key], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
                    .map_err(BlobError::sqlite)?
                    .ok_or(BlobError::NotFound(key))
            })
            .await
    }
}
