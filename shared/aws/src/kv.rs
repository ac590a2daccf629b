//! Small shared state on the DynamoDB `kv` table: the OIDC verifier's
//! `repository_id` bindings and `jti` replay guard, the callback rate limit
//! (shared by every Lambda instance), and [`StateStore`] values.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use crcr_core::domain::RepoFullName;
use crcr_core::oidc::{IdentityBindings, ReplayGuard, ReplayVerdict};
use crcr_core::ports::RateLimiter;
use crcr_core::ports::{Clock, StateStore, StoreError};

use super::item::{item, n, number, number_text, s, string_text, unavailable, Attrs, Item};

pub use crcr_core::ports::kv_prefix as prefix;

pub use crcr_core::ports::RATE_WINDOW_TTL_SLACK_SECS;

/// Rounds of a replay check when the stored record vanishes (TTL) between
/// the failed conditional write and the read of it.
const REPLAY_ROUNDS: usize = 3;

/// Attribute names.
pub(crate) mod attr {
    pub const PK: &str = "pk";
    pub const VALUE: &str = "value";
    pub const DIGEST: &str = "digest";
    pub const COUNT: &str = "n";
    pub const EXPIRES_AT: &str = "expires_at";
}

/// Bindings, replay guard, rate limiter and state store on one DynamoDB table.
///
/// Table shape (infra `kv`): partition key `pk` (S); TTL on `expires_at` (N,
/// epoch **seconds**). Items by key prefix ([`prefix`]):
///
/// - `binding#<repo key>`: `value` (S). Written once with
///   `attribute_not_exists(pk)`; never expires.
/// - `jti#<issuer>|<jti>`: `digest` (S, hex), `expires_at` (the token's
///   `exp` + leeway). Written with `attribute_not_exists(pk) OR expires_at <
///   :now`: DynamoDB's TTL deletes expired items lazily (typically within a
///   few days, "Working with Time to Live", DynamoDB developer guide), so an
///   expired record can still be there and must count as absent.
/// - `rate#<repo key>#<window>`: `n` (N), `expires_at` (window end +
///   [`RATE_WINDOW_TTL_SLACK_SECS`]). Counted with `UpdateItem ADD n :one`
///   (atomic), so every Lambda instance counts into the same window.
///   Windows are fixed minutes (`now_ms / 60,000`).
/// - `state#<key>`: `value` (S); never expires.
///
/// "Now" for replay expiry comes from `clock` (seconds, the same clock the
/// verifier judges `exp` with). Every read is strongly consistent.
#[derive(Clone)]
pub struct DynamoKv {
    client: Client,
    table: String,
    clock: Arc<dyn Clock>,
    rate_per_min: u32,
}

impl std::fmt::Debug for DynamoKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoKv").field("table", &self.table).field("rate_per_min", &self.rate_per_min).finish()
    }
}

impl DynamoKv {
    /// `table`: the table name (shape above). The rate limit is
    /// [`crcr_core::config::CallbackConfig`]'s default (100 callbacks per
    /// repository per minute) until [`DynamoKv::with_rate_per_min`].
    pub fn new(client: Client, table: String, clock: Arc<dyn Clock>) -> Self {
        Self { client, table, clock, rate_per_min: 100 }
    }

    /// Callbacks allowed per repository per minute (`CRCR_CALLBACK_RATE_PER_MIN`).
    pub fn with_rate_per_min(mut self, per_minute: u32) -> Self {
        self.rate_per_min = per_minute;
        self
    }

    /// Unconditional `PutItem` of `state#<key>`, with `expires_at` (epoch s) when given.
    async fn put_state(&self, key: &str, value: &str, expires_at: Option<i64>) -> Result<(), StoreError> {
        let mut item = Self::key(format!("{}{key}", prefix::STATE));
        item.insert(attr::VALUE.into(), s(value));
        if let Some(t) = expires_at {
            item.insert(attr::EXPIRES_AT.into(), n(t));
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

    fn key(pk: String) -> Item {
        item([(attr::PK, s(pk))])
    }

    /// `GetItem` with `ConsistentRead`.
    async fn get_item(&self, pk: String) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem", e))?;
        Ok(out.item.filter(|i| !i.is_empty()))
    }

    /// Conditional `PutItem`. `Ok(None)`: written. `Ok(Some(item))`: the
    /// condition failed; `item` is the stored item when DynamoDB returned it
    /// (`ReturnValuesOnConditionCheckFailure`), else a consistent read of it
    /// (`None` inside: gone since).
    async fn put_unless(
        &self,
        item: Item,
        condition: &str,
        values: &[(&str, AttributeValue)],
    ) -> Result<Option<Option<Item>>, StoreError> {
        let Some(pk) = string_text(&item, attr::PK).map(str::to_owned) else {
            return Err(StoreError::unavailable("kv item without a string pk"));
        };
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .expression_attribute_names("#pk", attr::PK)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if condition.contains("#exp") {
            req = req.expression_attribute_names("#exp", attr::EXPIRES_AT);
        }
        if condition.contains("#v") {
            req = req.expression_attribute_names("#v", attr::VALUE);
        }
        for (name, value) in values {
            req = req.expression_attribute_values(*name, value.clone());
        }
        match req.send().await {
            Ok(_) => Ok(None),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(c)) => match c.item.clone() {
                    Some(item) if !item.is_empty() => Ok(Some(Some(item))),
                    _ => Ok(Some(self.get_item(pk).await?)),
                },
                _ => Err(unavailable("PutItem", e)),
            },
        }
    }
}

/// The string attribute `name` of a stored kv item ([`Attrs::s`]: a missing
/// or non-string one is [`StoreError::Corrupt`] naming it).
fn string_attr(item: &Item, name: &str) -> Result<String, StoreError> {
    Attrs::new(item, "kv item").s(name)
}

#[async_trait]
impl IdentityBindings for DynamoKv {
    /// `GetItem` (consistent) of `binding#<repo key>`.
    async fn get(&self, repo: &RepoFullName) -> Result<Option<String>, StoreError> {
        match self.get_item(format!("{}{}", prefix::BINDING, repo.key())).await? {
            Some(item) => string_attr(&item, attr::VALUE).map(Some),
            None => Ok(None),
        }
    }

    /// `PutItem` with `attribute_not_exists(pk)`; when the binding exists,
    /// the stored id (returned with the failed condition, else read back).
    async fn put_if_absent(&self, repo: &RepoFullName, repository_id: &str) -> Result<String, StoreError> {
        let pk = format!("{}{}", prefix::BINDING, repo.key());
        let mut item = Self::key(pk);
        item.insert(attr::VALUE.into(), s(repository_id));
        match self.put_unless(item, "attribute_not_exists(#pk)", &[]).await? {
            None => Ok(repository_id.to_owned()),
            Some(Some(stored)) => string_attr(&stored, attr::VALUE),
            Some(None) => Err(StoreError::unavailable(format!("binding of {repo} exists but cannot be read"))),
        }
    }
}

#[async_trait]
impl ReplayGuard for DynamoKv {
    /// `PutItem` of `jti#<jti>` conditioned on `attribute_not_exists(pk) OR
    /// expires_at < :now` → `First`. On `ConditionalCheckFailed` the stored
    /// digest decides `SameBody` / `DifferentBody`. If the stored record is
    /// gone by the time it is read (TTL), the write is tried again.
    async fn check_and_record(
        &self,
        jti: &str,
        body_digest: &[u8; 32],
        expires_at: i64,
    ) -> Result<ReplayVerdict, StoreError> {
        let digest = hex::encode(body_digest);
        for _ in 0..REPLAY_ROUNDS {
            let now = self.clock.now_ms().div_euclid(1000);
            let mut item = Self::key(format!("{}{jti}", prefix::JTI));
            item.insert(attr::DIGEST.into(), s(&digest));
            item.insert(attr::EXPIRES_AT.into(), n(expires_at));
            let condition = "attribute_not_exists(#pk) OR #exp < :now";
            match self.put_unless(item, condition, &[(":now", n(now))]).await? {
                None => return Ok(ReplayVerdict::First),
                Some(Some(stored)) => {
                    let same = string_attr(&stored, attr::DIGEST)? == digest;
                    return Ok(if same { ReplayVerdict::SameBody } else { ReplayVerdict::DifferentBody });
                }
                Some(None) => continue,
            }
        }
        Err(StoreError::unavailable(format!(
            "replay record of a token id kept appearing and vanishing during {REPLAY_ROUNDS} rounds"
        )))
    }
}

#[async_trait]
impl RateLimiter for DynamoKv {
    /// `UpdateItem` of `rate#<repo>#<window>`: `ADD n :one SET expires_at`,
    /// `ReturnValues UPDATED_NEW`. Over the limit: the time until the window ends.
    async fn hit(&self, repo: &str, now_ms: i64) -> Result<Option<Duration>, StoreError> {
        let window = now_ms.div_euclid(60_000);
        let window_end_ms = (window + 1) * 60_000;
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(format!("{}{}#{window}", prefix::RATE, repo.to_ascii_lowercase()))))
            .update_expression("ADD #n :one SET #exp = :exp")
            .expression_attribute_names("#n", attr::COUNT)
            .expression_attribute_names("#exp", attr::EXPIRES_AT)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":exp", n(window_end_ms / 1000 + RATE_WINDOW_TTL_SLACK_SECS))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| unavailable("UpdateItem (rate window)", e))?;
        let count: u64 = match out.attributes.as_ref().and_then(|a| number_text(a, attr::COUNT)) {
            Some(v) => v.parse().map_err(|_| StoreError::Corrupt(format!("rate counter {v:?} is not a count")))?,
            None => return Err(StoreError::Corrupt("UpdateItem returned no rate counter".into())),
        };
        Ok((count > u64::from(self.rate_per_min)).then(|| Duration::from_millis((window_end_ms - now_ms) as u64)))
    }
}

#[async_trait]
impl StateStore for DynamoKv {
    /// `GetItem` (consistent) of `state#<key>`; an item whose `expires_at`
    /// has passed reads as absent (TTL deletes it within days, not at once).
    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let now = self.clock.now_ms().div_euclid(1000);
        match self.get_item(format!("{}{key}", prefix::STATE)).await? {
            Some(item) => {
                let expired = number::<i64>(&item, attr::EXPIRES_AT).is_some_and(|t| t < now);
                if expired {
                    Ok(None)
                } else {
                    string_attr(&item, attr::VALUE).map(Some)
                }
            }
            None => Ok(None),
        }
    }

    /// Unconditional `PutItem` of `state#<key>` with `expires_at` (the
    /// table's TTL attribute) = now + `ttl`.
    async fn put_expiring(&self, key: &str, value: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = self.clock.now_ms().div_euclid(1000);
        self.put_state(key, value, Some(now + ttl.as_secs() as i64)).await
    }

    /// Unconditional `PutItem` of `state#<key>`.
    async fn put(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.put_state(key, value, None).await
    }

    /// `PutItem` of `state#<key>` with `expires_at` = now + `ttl` (none for `None`),
    /// conditioned on the stored value being `expected` and unexpired, or,
    /// for `None`, on there being no item or an expired one. On a failed
    /// condition the stored value comes back with it
    /// (`ReturnValuesOnConditionCheckFailure`), so no read follows.
    async fn put_if(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<Result<(), Option<String>>, StoreError> {
        let now = self.clock.now_ms().div_euclid(1000);
        let mut item = Self::key(format!("{}{key}", prefix::STATE));
        item.insert(attr::VALUE.into(), s(value));
        if let Some(ttl) = ttl {
            item.insert(attr::EXPIRES_AT.into(), n(now + ttl.as_secs() as i64));
        }
        let failed = match expected {
            None => self.put_unless(item, "attribute_not_exists(#pk) OR #exp < :now", &[(":now", n(now))]).await?,
            Some(expected) => {
                let condition =
                    "attribute_exists(#pk) AND #v = :expected AND (attribute_not_exists(#exp) OR #exp >= :now)";
                self.put_unless(item, condition, &[(":now", n(now)), (":expected", s(expected))]).await?
            }
        };
        match failed {
            None => Ok(Ok(())),
            Some(None) => Ok(Err(None)),
            Some(Some(stored)) => {
                let expired = number::<i64>(&stored, attr::EXPIRES_AT).is_some_and(|t| t < now);
                Ok(Err(if expired { None } else { Some(string_attr(&stored, attr::VALUE)?) }))
            }
        }
    }

    /// `PutItem` of `lease#<key>` (value = holder, `expires_at` = now + ttl,
    /// also the table's TTL attribute) conditioned on `attribute_not_exists(pk)
    /// OR expires_at < :now OR value = :holder`.
    async fn try_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.clock.now_ms().div_euclid(1000);
        let mut item = Self::key(format!("{}{key}", prefix::LEASE));
        item.insert(attr::VALUE.into(), s(holder));
        item.insert(attr::EXPIRES_AT.into(), n(now + ttl.as_secs().max(1) as i64));
        let condition = "attribute_not_exists(#pk) OR #exp < :now OR #v = :holder";
        let taken = self.put_unless(item, condition, &[(":now", n(now)), (":holder", s(holder))]).await?;
        Ok(taken.is_none())
    }

    /// `DeleteItem` of `lease#<key>` conditioned on `value = :holder` (a
    /// failed condition: someone else's lease, left alone).
    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(format!("{}{key}", prefix::LEASE))))
            .condition_expression("#v = :holder")
            .expression_attribute_names("#v", attr::VALUE)
            .expression_attribute_values(":holder", s(holder))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(unavailable("DeleteItem (lease)", e)),
        }
    }
}
