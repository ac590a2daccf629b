//! Small shared state on SQLite (table `kv`): the OIDC verifier's
//! `repository_id` bindings and `jti` replay guard, the callback rate limit,
//! and [`StateStore`] values, so `crcr serve` keeps them across restarts.
//! Same keys and rules as the DynamoDB twin (`crcr_aws::DynamoKv`, crate `crcr-aws`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::{unavailable, Db};
use crcr_core::domain::RepoFullName;
use crcr_core::oidc::{IdentityBindings, ReplayGuard, ReplayVerdict};
use crcr_core::ports::kv_prefix as prefix;
use crcr_core::ports::RateLimiter;
use crcr_core::ports::{Clock, StateStore, StoreError};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,                -- binding#<repo> | jti#<issuer|jti> | rate#<repo>#<window> | state#<key>
    value TEXT NOT NULL,                 -- repository_id | hex body digest | count | state value
    expires_at INTEGER                   -- epoch seconds; NULL = never
);
CREATE INDEX IF NOT EXISTS kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;
"#;

/// Bindings, replay guard, rate limiter and state store in the `kv` table.
///
/// Each call is one write of the writer thread (`Db::write`), so two callers never both see a
/// `jti` as new or both write a binding. Expired rows (`expires_at` before
/// now, in seconds by `clock`) count as absent and are deleted by the next
/// write that expires things (`jti#`, `rate#`).
#[derive(Clone)]
pub struct SqliteKv {
    db: Db,
    clock: Arc<dyn Clock>,
    rate_per_min: u32,
}

impl SqliteKv {
    /// The rate limit is 100 callbacks per repository per minute (the
    /// `CRCR_CALLBACK_RATE_PER_MIN` default) until [`SqliteKv::with_rate_per_min`].
    pub fn new(db: Db, clock: Arc<dyn Clock>) -> Self {
        Self { db, clock, rate_per_min: 100 }
    }

    /// Callbacks allowed per repository per minute.
    pub fn with_rate_per_min(mut self, per_minute: u32) -> Self {
        self.rate_per_min = per_minute;
        self
    }

    /// Runs `f` in one write (the writer thread's transaction, see
    /// [`Db::write`]) after deleting rows expired before `now_s`; kept when
    /// it returns `Ok`.
    async fn write<T: Send + 'static>(
        &self,
        now_s: i64,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.db
            .write(move |tx| {
                tx.prepare_cached("DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at < ?1")
                    .and_then(|mut expire| expire.execute([now_s]))
                    .map_err(unavailable)?;
                f(tx).map_err(unavailable)
            })
            .await
    }

    async fn read(&self, key: String) -> Result<Option<String>, StoreError> {
        self.db
            .read(move |conn| {
                conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
                    .optional()
                    .map_err(unavailable)
            })
            .await
    }

    /// `state#<key>` = `value`, expiring at `expires_at` (epoch s) when given.
    async fn put_state(&self, key: &str, value: &str, expires_at: Option<i64>) -> Result<(), StoreError> {
        let (key, value) = (format!("{}{key}", prefix::STATE), value.to_owned());
        self.write(self.now_s(), move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3)",
                params![key, value, expires_at],
            )
            .map(|_| ())
        })
        .await
    }

    fn now_s(&self) -> i64 {
        self.clock.now_ms().div_euclid(1000)
    }
}

#[async_trait]
impl IdentityBindings for SqliteKv {
    async fn get(&self, repo: &RepoFullName) -> Result<Option<String>, StoreError> {
        self.read(format!("{}{}", prefix::BINDING, repo.key())).await
    }

    async fn put_if_absent(&self, repo: &RepoFullName, repository_id: &str) -> Result<String, StoreError> {
        let (key, repository_id) = (format!("{}{}", prefix::BINDING, repo.key()), repository_id.to_owned());
        self.write(self.now_s(), move |tx| {
            tx.execute("INSERT OR IGNORE INTO kv (key, value) VALUES (?1, ?2)", params![key, repository_id])?;
            tx.query_row("SELECT value FROM kv WHERE key = ?1", [&key], |r| r.get(0))
        })
        .await
    }
}

#[async_trait]
impl ReplayGuard for SqliteKv {
    async fn check_and_record(
        &self,
        jti: &str,
        body_digest: &[u8; 32],
        expires_at: i64,
    ) -> Result<ReplayVerdict, StoreError> {
        let key = format!("{}{jti}", prefix::JTI);
        let digest = hex::encode(body_digest);
        // Expired rows are gone once `write` starts: a row still there is live.
        self.write(self.now_s(), move |tx| {
            let stored: Option<String> =
                tx.query_row("SELECT value FROM kv WHERE key = ?1", [&key], |r| r.get(0)).optional()?;
            Ok(match stored {
                Some(d) if d == digest => ReplayVerdict::SameBody,
                Some(_) => ReplayVerdict::DifferentBody,
                None => {
                    tx.execute(
                        "INSERT INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3)",
                        params![key, digest, expires_at],
                    )?;
                    ReplayVerdict::First
                }
            })
        })
        .await
    }
}

#[async_trait]
impl RateLimiter for SqliteKv {
    async fn hit(&self, repo: &str, now_ms: i64) -> Result<Option<Duration>, StoreError> {
        let window = now_ms.div_euclid(60_000);
        let window_end_ms = (window + 1) * 60_000;
        let key = format!("{}{}#{window}", prefix::RATE, repo.to_ascii_lowercase());
        let expires_at = window_end_ms / 1000 + crcr_core::ports::RATE_WINDOW_TTL_SLACK_SECS;
        let count: i64 = self
            .write(now_ms.div_euclid(1000), move |tx| {
                tx.execute(
                    "INSERT INTO kv (key, value, expires_at) VALUES (?1, '1', ?2)
                     ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                    params![key, expires_at],
                )?;
                tx.query_row("SELECT CAST(value AS INTEGER) FROM kv WHERE key = ?1", [&key], |r| r.get(0))
            })
            .await?;
        Ok((count > i64::from(self.rate_per_min)).then(|| Duration::from_millis((window_end_ms - now_ms) as u64)))
    }
}

#[async_trait]
impl StateStore for SqliteKv {
    /// Not expired (`expires_at` NULL or not yet past).
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let (key, now) = (format!("{}{key}", prefix::STATE), self.now_s());
        self.db
            .read(move |conn| {
                conn.query_row(
                    "SELECT value FROM kv WHERE key = ?1 AND (expires_at IS NULL OR expires_at >= ?2)",
                    params![key, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(unavailable)
            })
            .await
    }

    async fn put_expiring(&self, key: &str, value: &str, ttl: std::time::Duration) -> Result<(), StoreError> {
        self.put_state(key, value, Some(self.now_s() + ttl.as_secs() as i64)).await
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.put_state(key, value, None).await
    }

    /// In one immediate transaction (which first deletes expired rows, so a
    /// row still there is live): compare, then replace.
    async fn put_if(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<Result<(), Option<String>>, StoreError> {
        let (key, value, expected) = (format!("{}{key}", prefix::STATE), value.to_owned(), expected.map(str::to_owned));
        let now = self.now_s();
        let expires_at = ttl.map(|ttl| now + ttl.as_secs() as i64);
        self.write(now, move |tx| {
            let stored: Option<String> =
                tx.query_row("SELECT value FROM kv WHERE key = ?1", [&key], |r| r.get(0)).optional()?;
            if stored != expected {
                return Ok(Err(stored));
            }
            tx.execute(
                "INSERT OR REPLACE INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3)",
                params![key, value, expires_at],
            )?;
            Ok(Ok(()))
        })
        .await
    }

    /// In one immediate transaction (which first deletes expired rows):
    /// insert `lease#<key>` = holder, or renew it when `holder` has it.
    async fn try_lease(&self, key: &str, holder: &str, ttl: std::time::Duration) -> Result<bool, StoreError> {
        let key = format!("{}{key}", prefix::LEASE);
        let now = self.now_s();
        let until = now + ttl.as_secs().max(1) as i64;
        let holder = holder.to_owned();
        self.write(now, move |tx| {
            tx.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at WHERE kv.value = excluded.value",
                params![key, holder, until],
            )
            .map(|changed| changed == 1)
        })
        .await
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let key = format!("{}{key}", prefix::LEASE);
        let holder = holder.to_owned();
        self.write(self.now_s(), move |tx| {
            tx.execute("DELETE FROM kv WHERE key = ?1 AND value = ?2", params![key, holder]).map(|_| ())
        })
        .await
    }
}
