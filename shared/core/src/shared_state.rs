//! JSON records in the shared [`StateStore`] that several senders change
//! at once (every worker of `crcr serve`, every Lambda instance): GitHub's
//! dispatch budget per installation ([`crate::budget`]), the breaker per
//! target ([`crate::breaker`]). A change is written with a condition on
//! the value it was made from ([`StateStore::put_if`]), so no sender's
//! change is lost to another's, and each sender remembers the last value
//! it wrote or saw, so a change costs one conditional write while no one
//! else changes the record (two when someone did: the failed write returns
//! what is stored).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ports::{StateStore, StoreError};

/// Rounds of conditional write before a change gives up on a record other
/// senders keep changing.
const ROUNDS: usize = 8;

/// The value of a key as this sender last wrote or read it, and when.
struct Known {
    raw: Option<String>,
    at: Instant,
}

/// Records of type `V` (JSON; absent reads as `V::default()`) under keys of
/// the shared store, each kept for `ttl` after its last write (`None`: for
/// good).
pub struct SharedRecords<V> {
    state: Arc<dyn StateStore>,
    ttl: Option<Duration>,
    known: Mutex<HashMap<String, Known>>,
    _record: PhantomData<fn() -> V>,
}

impl<V: Serialize + DeserializeOwned + Default> SharedRecords<V> {
    pub fn new(state: Arc<dyn StateStore>, ttl: Option<Duration>) -> Self {
        SharedRecords { state, ttl, known: Default::default(), _record: PhantomData }
    }

    fn parse(key: &str, raw: &Option<String>) -> Result<V, StoreError> {
        match raw {
            Some(text) => serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{key}: {e}"))),
            None => Ok(V::default()),
        }
    }

    fn remember(&self, key: &str, raw: Option<String>) {
        self.known.lock().expect("known records").insert(key.to_owned(), Known { raw, at: Instant::now() });
    }

    /// The record: as this sender last knew it when that is younger than
    /// `max_age`, else read from the store.
    pub async fn read(&self, key: &str, max_age: Duration) -> Result<V, StoreError> {
        let known = self
            .known
            .lock()
            .expect("known records")
            .get(key)
            .filter(|k| k.at.elapsed() < max_age)
            .map(|k| k.raw.clone());
        let raw = match known {
            Some(raw) => raw,
            None => {
                let raw = self.state.get(key).await?;
                self.remember(key, raw.clone());
                raw
            }
        };
        Self::parse(key, &raw)
    }

    /// Applies `change` to the record and writes it if the store still
    /// holds what the change was made from; on a record changed meanwhile,
    /// applies it again to what is stored. `change` returning `Err` writes
    /// nothing and is passed back as `Ok(Err(..))`: a decision made on an
    /// old value must be one that newer values would not reverse (the
    /// callers' records only grow between writes, or are set outright).
    pub async fn update<T, E>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut V) -> Result<T, E>,
    ) -> Result<Result<T, E>, StoreError> {
        let known = self.known.lock().expect("known records").get(key).map(|k| k.raw.clone());
        let mut stored = match known {
            Some(raw) => raw,
            None => self.state.get(key).await?,
        };
        for _ in 0..ROUNDS {
            let mut record = Self::parse(key, &stored)?;
            let done = match change(&mut record) {
                Ok(done) => done,
                Err(e) => return Ok(Err(e)),
            };
            let text = serde_json::to_string(&record).expect("a record serializes");
            match self.state.put_if(key, stored.as_deref(), &text, self.ttl).await? {
                Ok(()) => {
                    self.remember(key, Some(text));
                    return Ok(Ok(done));
                }
                Err(current) => stored = current,
            }
        }
        self.remember(key, stored);
        Err(StoreError::unavailable(format!(
            "{key} kept changing under this sender during {ROUNDS} conditional writes"
        )))
    }

    /// [`SharedRecords::update`] with a change that always writes.
    pub async fn change<T>(&self, key: &str, mut change: impl FnMut(&mut V) -> T) -> Result<T, StoreError> {
        let written = self.update(key, |record| Ok::<T, std::convert::Infallible>(change(record))).await?;
        Ok(written.unwrap_or_else(|never| match never {}))
    }
}
