//! [`BlobStore`] on DynamoDB: claim-check payloads split into chunk items.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::Client;
use futures::stream::{self, TryStreamExt};

use crcr_core::ports::{BlobError, BlobStore};

use super::item::{binary, item, n, number, s, take_binary};
use super::now_epoch_secs;

/// Bytes of payload per chunk item: 300,000. DynamoDB caps an item at
/// 400 KB (attribute names and values together), so a chunk leaves room
/// for the key and the other attributes.
pub const BLOB_CHUNK_BYTES: usize = 300_000;

pub use crcr_core::config::BLOB_TTL_SECS;

/// Chunk writes in flight at once for one `put`.
const PUT_CONCURRENCY: usize = 4;

/// The table's key and TTL attribute names (infra/modules/crcr/tables.json,
/// checked by `schema_tests`).
pub(crate) mod attr {
    pub const KEY: &str = "key";
    pub const CHUNK: &str = "chunk";
    pub const EXPIRES_AT: &str = "expires_at";
}

/// Claim-check blobs in one DynamoDB table.
///
/// Table shape: partition key `key` (S), sort key `chunk` (N, 0-based); TTL
/// enabled on `expires_at`. Chunk `i` holds bytes
/// `[i * BLOB_CHUNK_BYTES, (i + 1) * BLOB_CHUNK_BYTES)` in `data` (B; absent
/// for an empty blob); chunk 0 also holds `chunks` (N, the number of chunks,
/// at least 1). Every item has `expires_at` (N, epoch **seconds**, wall
/// clock + the store's TTL, [`BLOB_TTL_SECS`] by default).
///
/// `put` writes chunk 0 last, so a `get` never sees a blob whose chunk count
/// promises chunks not yet written (a crashed `put` of a new key leaves no
/// chunk 0 and reads as not found).
#[derive(Clone, Debug)]
pub struct DynamoBlobStore {
    client: Client,
    table: String,
    /// Seconds a blob lives ([`BLOB_TTL_SECS`] unless set with [`DynamoBlobStore::with_ttl`]).
    ttl_secs: i64,
}

impl DynamoBlobStore {
    /// `table`: the table name (shape above).
    pub fn new(client: Client, table: String) -> Self {
        Self { client, table, ttl_secs: BLOB_TTL_SECS }
    }

    /// Blobs written from now on live `ttl` (whole seconds, at least 1 s).
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.ttl_secs = ttl.as_secs().max(1) as i64;
        self
    }

    async fn put_chunk(&self, key: &str, index: usize, data: &[u8], chunks: Option<usize>) -> Result<(), BlobError> {
        let mut item = item([
            (attr::KEY, s(key)),
            (attr::CHUNK, n(index)),
            (attr::EXPIRES_AT, n(now_epoch_secs() + self.ttl_secs)),
        ]);
        if !data.is_empty() {
            item.insert("data".to_owned(), binary(data));
        }
        if let Some(c) = chunks {
            item.insert("chunks".to_owned(), n(c));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| unavailable("PutItem", e))?;
        Ok(())
    }
}

/// A DynamoDB failure as a blob error: the SDK's whole error context in the
/// message (for logs), the SDK error as its source.
fn unavailable<E: std::error::Error + Send + Sync + 'static>(what: &str, e: E) -> BlobError {
    BlobError::Unavailable { what: format!("DynamoDB {what}: {}", DisplayErrorContext(&e)), source: Some(Box::new(e)) }
}

#[async_trait]
impl BlobStore for DynamoBlobStore {
    /// One `PutItem` per [`BLOB_CHUNK_BYTES`] chunk (up to 4 at once), chunk 0
    /// last. Overwriting with a shorter blob leaves the old tail chunks until
    /// their TTL; `get` ignores them.
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let chunks: Vec<&[u8]> =
            if bytes.is_empty() { vec![&[][..]] } else { bytes.chunks(BLOB_CHUNK_BYTES).collect() };
        let count = chunks.len();
        stream::iter(chunks.iter().enumerate().skip(1).map(Ok))
            .try_for_each_concurrent(PUT_CONCURRENCY, |(i, data)| self.put_chunk(key, i, data, None))
            .await?;
        self.put_chunk(key, 0, chunks[0], Some(count)).await
    }

    /// `Query` on `key` with `ConsistentRead`, all pages; checks that chunks
    /// `0..chunks` are all there and concatenates them. No chunk 0 →
    /// [`BlobError::NotFound`]; a missing chunk → [`BlobError::Unavailable`].
    async fn get(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        let mut parts: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut count: Option<usize> = None;
        let mut items = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#k = :k")
            .expression_attribute_names("#k", attr::KEY)
            .expression_attribute_values(":k", s(key))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        while let Some(mut item) = items.try_next().await.map_err(|e| unavailable("Query", e))? {
            let index = number::<usize>(&item, attr::CHUNK)
                .ok_or_else(|| BlobError::unavailable(format!("blob {key:?}: chunk item without a valid `chunk`")))?;
            if index == 0 {
                count = number::<usize>(&item, "chunks");
                if count.is_none() {
                    return Err(BlobError::unavailable(format!("blob {key:?}: chunk 0 has no valid `chunks`")));
                }
            }
            let data = take_binary(&mut item, "data")
                .map_err(|_| BlobError::unavailable(format!("blob {key:?}: chunk {index} `data` is not binary")))?
                .unwrap_or_default();
            parts.insert(index, data);
        }
        let Some(count) = count else {
            return Err(BlobError::NotFound(key.to_owned()));
        };
        let mut out = Vec::with_capacity(count * BLOB_CHUNK_BYTES);
        for i in 0..count {
            let part = parts
                .remove(&i)
                .ok_or_else(|| BlobError::unavailable(format!("blob {key:?}: chunk {i} of {count} is missing")))?;
            out.extend_from_slice(&part);
        }
        Ok(out)
    }
}
