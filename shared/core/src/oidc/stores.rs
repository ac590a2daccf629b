//! The verifier's two small stores: GitHub repository → `repository_id`
//! bindings and the `jti` replay guard. In-memory implementations here;
//! SQLite / DynamoDB ones implement the same traits (and must be shared by
//! every instance of the relay, or a binding or a used `jti` seen by one
//! instance is unknown to the next).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::domain::RepoFullName;
use crate::ports::{Clock, StoreError};

/// GitHub repository name → immutable `repository_id`, written once.
#[async_trait]
pub trait IdentityBindings: Send + Sync {
    /// The id bound to `repo` (compared by [`RepoFullName::key`]), if any.
    async fn get(&self, repo: &RepoFullName) -> Result<Option<String>, StoreError>;
    /// Binds `repo` to `repository_id` unless it is bound already (a
    /// conditional write), and returns the id bound after the call: the
    /// existing one when there was one.
    async fn put_if_absent(&self, repo: &RepoFullName, repository_id: &str) -> Result<String, StoreError>;
}

/// [`IdentityBindings`] in process memory.
#[derive(Debug, Default)]
pub struct InMemoryIdentityBindings {
    map: Mutex<HashMap<String, String>>,
}

#[async_trait]
impl IdentityBindings for InMemoryIdentityBindings {
    async fn get(&self, repo: &RepoFullName) -> Result<Option<String>, StoreError> {
        Ok(self.map.lock().expect("identity bindings").get(repo.key()).cloned())
    }
    async fn put_if_absent(&self, repo: &RepoFullName, repository_id: &str) -> Result<String, StoreError> {
        let mut map = self.map.lock().expect("identity bindings");
        Ok(map.entry(repo.key().to_owned()).or_insert_with(|| repository_id.to_owned()).clone())
    }
}

/// Answer of [`ReplayGuard::check_and_record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// First use of this token id: recorded.
    First,
    /// Seen before with the same body: an idempotent retry.
    SameBody,
    /// Seen before with another body: a replay.
    DifferentBody,
}

/// Remembers which request body each token id (`jti`) was used for, until
/// the token can no longer be accepted.
#[async_trait]
pub trait ReplayGuard: Send + Sync {
    /// Records `jti` (the verifier passes `<issuer>|<jti>`) with
    /// `body_digest` (SHA-256 of the body) unless it is recorded and not yet
    /// expired; `expires_at` is in seconds since the Unix epoch (the token's
    /// `exp` plus the leeway). An expired record counts as absent.
    async fn check_and_record(
        &self,
        jti: &str,
        body_digest: &[u8; 32],
        expires_at: i64,
    ) -> Result<ReplayVerdict, StoreError>;
}

/// [`ReplayGuard`] in process memory; expired records are purged as new
/// ones arrive.
pub struct InMemoryReplayGuard {
    clock: Arc<dyn Clock>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    map: HashMap<String, ([u8; 32], i64)>,
    inserts_since_purge: usize,
}

impl InMemoryReplayGuard {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, seen: Mutex::new(Seen::default()) }
    }
    /// Records held (expired ones not yet purged included).
    pub fn len(&self) -> usize {
        self.seen.lock().expect("replay guard").map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl ReplayGuard for InMemoryReplayGuard {
    async fn check_and_record(
        &self,
        jti: &str,
        body_digest: &[u8; 32],
        expires_at: i64,
    ) -> Result<ReplayVerdict, StoreError> {
        let now = self.clock.now_ms().div_euclid(1000);
        let mut seen = self.seen.lock().expect("replay guard");
        if let Some((digest, until)) = seen.map.get(jti) {
            if now < *until {
                return Ok(if digest == body_digest { ReplayVerdict::SameBody } else { ReplayVerdict::DifferentBody });
            }
        }
        seen.inserts_since_purge += 1;
        if seen.inserts_since_purge >= 1024 {
            seen.map.retain(|_, (_, until)| now < *until);
            seen.inserts_since_purge = 0;
        }
        seen.map.insert(jti.to_owned(), (*body_digest, expires_at));
        Ok(ReplayVerdict::First)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::ManualClock;

    #[tokio::test]
    async fn replay_guard_keeps_ids_until_expiry() {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let g = InMemoryReplayGuard::new(clock.clone());
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(g.check_and_record("j", &a, 1_100).await.unwrap(), ReplayVerdict::First);
        assert_eq!(g.check_and_record("j", &a, 1_100).await.unwrap(), ReplayVerdict::SameBody);
        assert_eq!(g.check_and_record("j", &b, 1_100).await.unwrap(), ReplayVerdict::DifferentBody);
        clock.advance(std::time::Duration::from_secs(100));
        assert_eq!(g.check_and_record("j", &b, 1_200).await.unwrap(), ReplayVerdict::First);
    }

    #[tokio::test]
    async fn bindings_are_written_once() {
        let b = InMemoryIdentityBindings::default();
        let r = RepoFullName::parse("Org/Repo").unwrap();
        assert_eq!(b.get(&r).await.unwrap(), None);
        assert_eq!(b.put_if_absent(&r, "1").await.unwrap(), "1");
        assert_eq!(b.put_if_absent(&RepoFullName::parse("org/repo").unwrap(), "2").await.unwrap(), "1");
        assert_eq!(b.get(&r).await.unwrap().as_deref(), Some("1"));
    }
}
