//! Commit existence with a cache: a `nightly` / `periodic` callback names an
//! upstream commit SHA instead of a delivery, and the reconciler checks that
//! the commit exists on the upstream repository before recording the job.
//!
//! Answers are cached per (repository, SHA): "found" for 1 h (a commit does
//! not disappear), "not found" for 5 min (a push may be on its way). GitHub
//! errors are not cached: the caller decides (the reconciler accepts the
//! callback and logs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::RepoFullName;
use crate::ports::{Clock, CommitLookup, GitHubError};

/// How long a "commit exists" answer is reused.
pub const FOUND_TTL: Duration = Duration::from_secs(3600);
/// How long a "no such commit" answer is reused.
pub const NOT_FOUND_TTL: Duration = Duration::from_secs(300);
/// Entries kept before expired ones are purged.
const PURGE_AT: usize = 10_000;

/// A [`CommitLookup`] that caches the answers of another one.
pub struct CachedCommitLookup {
    inner: Arc<dyn CommitLookup>,
    clock: Arc<dyn Clock>,
    /// (repo key, lower-case SHA) → (exists, valid until, ms since epoch)
    cache: Mutex<HashMap<(String, String), (bool, i64)>>,
}

impl CachedCommitLookup {
    pub fn new(inner: Arc<dyn CommitLookup>, clock: Arc<dyn Clock>) -> Self {
        Self { inner, clock, cache: Mutex::new(HashMap::new()) }
    }
}

#[async_trait]
impl CommitLookup for CachedCommitLookup {
    async fn commit_exists(&self, repo: &RepoFullName, sha: &str) -> Result<bool, GitHubError> {
        let key = (repo.key().to_owned(), sha.to_ascii_lowercase());
        let now = self.clock.now_ms();
        if let Some((exists, until)) = self.cache.lock().expect("commit cache").get(&key) {
            if now < *until {
                return Ok(*exists);
            }
        }
        let exists = self.inner.commit_exists(repo, sha).await?;
        let ttl = if exists { FOUND_TTL } else { NOT_FOUND_TTL };
        let mut cache = self.cache.lock().expect("commit cache");
        if cache.len() >= PURGE_AT {
            cache.retain(|_, (_, until)| now < *until);
        }
        cache.insert(key, (exists, now + ttl.as_millis() as i64));
        Ok(exists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::ManualClock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers from a script and counts the calls.
    struct Scripted {
        answers: Mutex<Vec<Result<bool, GitHubError>>>,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl CommitLookup for Scripted {
        async fn commit_exists(&self, _: &RepoFullName, _: &str) -> Result<bool, GitHubError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.answers.lock().unwrap().remove(0)
        }
    }

    #[tokio::test]
    async fn found_is_cached_for_an_hour_not_found_for_five_minutes_errors_not_at_all() {
        let transient = || GitHubError::Transient { reason: "502".into(), retry_after: None };
        let inner = Arc::new(Scripted {
            answers: Mutex::new(vec![Err(transient()), Ok(false), Ok(true), Ok(true)]),
            calls: AtomicUsize::new(0),
        });
        let clock = Arc::new(ManualClock::new(1_000_000));
        let c = CachedCommitLookup::new(inner.clone(), clock.clone());
        let repo = RepoFullName::parse("pytorch/pytorch").unwrap();
        let sha = "A".repeat(40);
        assert!(c.commit_exists(&repo, &sha).await.is_err());
        assert!(!c.commit_exists(&repo, &sha).await.unwrap());
        clock.advance(Duration::from_secs(299));
        assert!(!c.commit_exists(&repo, &sha.to_ascii_lowercase()).await.unwrap(), "cached 'not found'");
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        clock.advance(Duration::from_secs(2));
        assert!(c.commit_exists(&repo, &sha).await.unwrap());
        clock.advance(Duration::from_secs(3599));
        assert!(c.commit_exists(&repo, &sha).await.unwrap());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 3, "'found' reused within the hour");
        clock.advance(Duration::from_secs(2));
        assert!(c.commit_exists(&repo, &sha).await.unwrap());
        assert_eq!(inner.calls.load(Ordering::SeqCst), 4);
    }
}
