//! The relay's AWS resources on moto's server (an AWS emulator), shaped as
//! infra/modules/crcr creates them (queues with DLQs and redrive, tables
//! with their keys, GSIs and TTL as infra/modules/crcr/tables.json defines
//! them), uniquely named per call so tests run in parallel. For tests: a
//! helper that cannot reach moto panics (a test that needs moto fails, it
//! never skips); setup failures panic with the SDK's error.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

/// moto's URL: `CRCR_TEST_MOTO_URL`, default `http://127.0.0.1:5000`.
pub fn url() -> String {
    std::env::var("CRCR_TEST_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

/// SDK configuration for moto (test credentials, never IMDS). Panics, saying
/// how to start moto, when it does not answer within 3 s.
pub async fn sdk() -> SdkConfig {
    let url = url();
    let host = url.split("://").nth(1).unwrap_or(&url).split('/').next().unwrap_or_default().to_owned();
    let reachable = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(host)).await;
    assert!(
        matches!(reachable, Ok(Ok(_))),
        "moto is not reachable at {url}: run scripts/test, or start `.venv/bin/moto_server -H 127.0.0.1 -p 5000`"
    );
    let cfg = crcr_aws::sdk_config(Some(&url)).await;
    let creds = aws_sdk_sqs::config::Credentials::new("test", "test", None, None, "crcr-standin-moto");
    cfg.to_builder().credentials_provider(aws_sdk_sqs::config::SharedCredentialsProvider::new(creds)).build()
}

/// A source queue and its DLQ (redrive after `max_receive_count` receives);
/// returns (queue URL, DLQ URL).
pub async fn queue_pair(sdk: &SdkConfig, name: &str, max_receive_count: u32) -> (String, String) {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let dlq = sqs.create_queue().queue_name(format!("{name}-dlq")).send().await.expect("create DLQ");
    let dlq_url = dlq.queue_url.expect("DLQ url");
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("DLQ arn");
    let dlq_arn = attrs.attributes.and_then(|mut a| a.remove(&QueueAttributeName::QueueArn)).expect("DLQ arn");
    let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count.to_string()});
    let queue = sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .expect("create queue");
    (queue.queue_url.expect("queue url"), dlq_url)
}

/// infra/modules/crcr/tables.json: the tables' schema, the one source of
/// the tables below (infra/tests/test_infra.py checks that dynamodb.tf
/// matches it).
pub const SCHEMA_JSON: &str = include_str!("../../../infra/modules/crcr/tables.json");

/// A key attribute of [`TableSchema`] or [`IndexSchema`]: name and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySchema {
    pub name: String,
    pub ty: ScalarAttributeType,
}

/// A global secondary index of a [`TableSchema`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSchema {
    pub name: String,
    pub hash: KeySchema,
    pub range: Option<KeySchema>,
    pub projection: ProjectionType,
}

/// One table of tables.json.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    /// The Terraform resource name (`aws_dynamodb_table.<resource>`).
    pub resource: String,
    /// The table is named `<name_prefix>-<name_suffix>`.
    pub name_suffix: String,
    pub hash: KeySchema,
    pub range: Option<KeySchema>,
    pub indexes: Vec<IndexSchema>,
    /// The TTL attribute, if the table has TTL.
    pub ttl: Option<String>,
}

impl TableSchema {
    /// The attribute definitions the table needs: every key attribute of
    /// the table and of its GSIs, once (panics on one name with two types).
    pub fn attributes(&self) -> Vec<&KeySchema> {
        let keys = std::iter::once(&self.hash)
            .chain(&self.range)
            .chain(self.indexes.iter().flat_map(|i| std::iter::once(&i.hash).chain(&i.range)));
        let mut defined: Vec<&KeySchema> = Vec::new();
        for k in keys {
            match defined.iter().find(|d| d.name == k.name) {
                Some(d) => {
                    assert_eq!(d.ty, k.ty, "table {}: key attribute {} used with two types", self.resource, k.name)
                }
                None => defined.push(k),
            }
        }
        defined
    }
}

/// Every table of tables.json, in its order. Panics if the file is not a
/// valid schema.
pub fn schema() -> &'static [TableSchema] {
    static SCHEMA: std::sync::OnceLock<Vec<TableSchema>> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| parse_schema(SCHEMA_JSON).unwrap_or_else(|e| panic!("infra/modules/crcr/tables.json: {e}")))
}

/// The table of tables.json whose Terraform resource is `resource`
/// (`dispatches`, `payloads`, `jobs`, `kv`). Panics if there is none.
pub fn table_schema(resource: &str) -> &'static TableSchema {
    schema()
        .iter()
        .find(|t| t.resource == resource)
        .unwrap_or_else(|| panic!("infra/modules/crcr/tables.json has no table {resource}"))
}

/// Parses a tables.json document. Keys starting with `_` are comments.
pub fn parse_schema(json: &str) -> Result<Vec<TableSchema>, String> {
    use serde_json::Value;
    fn fields<'a>(v: &'a Value, what: &str, known: &[&str]) -> Result<&'a serde_json::Map<String, Value>, String> {
        let obj = v.as_object().ok_or_else(|| format!("{what}: not an object"))?;
        match obj.keys().find(|k| !k.starts_with('_') && !known.contains(&k.as_str())) {
            Some(k) => Err(format!("{what}: unknown key {k:?}")),
            None => Ok(obj),
        }
    }
    fn string(obj: &serde_json::Map<String, Value>, key: &str, what: &str) -> Result<String, String> {
        obj.get(key).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| format!("{what}: {key} is not a string"))
    }
    fn key(v: Option<&Value>, what: &str) -> Result<Option<KeySchema>, String> {
        let v = match v {
            None | Some(Value::Null) => return Ok(None),
            Some(v) => v,
        };
        let obj = fields(v, what, &["name", "type"])?;
        let ty = match string(obj, "type", what)?.as_str() {
            "S" => ScalarAttributeType::S,
            "N" => ScalarAttributeType::N,
            "B" => ScalarAttributeType::B,
            other => return Err(format!("{what}: type {other:?} is not S, N or B")),
        };
        Ok(Some(KeySchema { name: string(obj, "name", what)?, ty }))
    }
    let doc: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let doc = fields(&doc, "document", &["tables"])?;
    let tables = doc.get("tables").and_then(Value::as_array).ok_or("tables is not an array")?;
    let mut out: Vec<TableSchema> = Vec::new();
    for (n, t) in tables.iter().enumerate() {
        let what = format!("table #{n}");
        let known = ["resource", "name_suffix", "hash_key", "range_key", "global_secondary_indexes", "ttl_attribute"];
        let obj = fields(t, &what, &known)?;
        let resource = string(obj, "resource", &what)?;
        let what = format!("table {resource}");
        let mut indexes = Vec::new();
        for g in obj.get("global_secondary_indexes").and_then(Value::as_array).into_iter().flatten() {
            let gobj = fields(g, &what, &["name", "hash_key", "range_key", "projection_type"])?;
            let name = string(gobj, "name", &what)?;
            let what = format!("{what}: GSI {name}");
            let projection = match string(gobj, "projection_type", &what)?.as_str() {
                "ALL" => ProjectionType::All,
                "KEYS_ONLY" => ProjectionType::KeysOnly,
                other => return Err(format!("{what}: projection_type {other:?} is not ALL or KEYS_ONLY")),
            };
            indexes.push(IndexSchema {
                hash: key(gobj.get("hash_key"), &what)?.ok_or_else(|| format!("{what}: no hash_key"))?,
                range: key(gobj.get("range_key"), &what)?,
                name,
                projection,
            });
        }
        let ttl = match obj.get("ttl_attribute") {
            None | Some(Value::Null) => None,
            Some(_) => Some(string(obj, "ttl_attribute", &what)?),
        };
        if out.iter().any(|o| o.resource == resource) {
            return Err(format!("{what}: defined twice"));
        }
        out.push(TableSchema {
            name_suffix: string(obj, "name_suffix", &what)?,
            hash: key(obj.get("hash_key"), &what)?.ok_or_else(|| format!("{what}: no hash_key"))?,
            range: key(obj.get("range_key"), &what)?,
            indexes,
            ttl,
            resource,
        });
    }
    Ok(out)
}

/// A key attribute: name and type.
pub type Attr<'a> = (&'a str, ScalarAttributeType);

/// A global secondary index: name, hash key, range key (projection ALL).
pub type Index<'a> = (&'a str, Attr<'a>, Attr<'a>);

/// A table: hash key, optional range key, optional GSI (name, hash, range;
/// projection ALL), TTL on `expires_at`. See [`table_with_indexes`] for
/// more than one GSI, and [`relay_table`] for the relay's tables as
/// tables.json defines them.
pub async fn table(sdk: &SdkConfig, name: &str, hash: Attr<'_>, range: Option<Attr<'_>>, index: Option<Index<'_>>) {
    table_with_indexes(sdk, name, hash, range, index.as_slice()).await
}

/// The relay's table `resource` (`dispatches`, `payloads`, `jobs`, `kv`: the
/// Terraform resource name) as infra/modules/crcr/tables.json, and so
/// dynamodb.tf, defines it (keys, GSIs, TTL), named `name`.
pub async fn relay_table(sdk: &SdkConfig, resource: &str, name: &str) {
    create_table(sdk, name, table_schema(resource)).await
}

/// The dispatch table as infra/modules/crcr/tables.json defines it: hash
/// key `delivery_id` (S), range key `target` (S), the sparse GSIs
/// [`crcr_aws::DISPATCH_DAY_INDEX`] (`dispatch_day` S + `dispatched_at_ms`
/// N) and [`crcr_aws::HEAD_SHA_INDEX`] (`head_sha` S + `created_at_ms` N),
/// TTL on `expires_at`.
pub async fn dispatch_table(sdk: &SdkConfig, name: &str) {
    relay_table(sdk, "dispatches", name).await
}

/// A table: hash key, optional range key, any number of GSIs (projection
/// ALL), TTL on `expires_at`. Each key attribute is defined once, however
/// many keys use it.
pub async fn table_with_indexes(
    sdk: &SdkConfig,
    name: &str,
    hash: Attr<'_>,
    range: Option<Attr<'_>>,
    indexes: &[Index<'_>],
) {
    let key = |(n, t): &Attr<'_>| KeySchema { name: (*n).to_owned(), ty: t.clone() };
    let schema = TableSchema {
        resource: name.to_owned(),
        name_suffix: name.to_owned(),
        hash: key(&hash),
        range: range.as_ref().map(key),
        indexes: indexes
            .iter()
            .map(|(n, h, r)| IndexSchema {
                name: (*n).to_owned(),
                hash: key(h),
                range: Some(key(r)),
                projection: ProjectionType::All,
            })
            .collect(),
        ttl: Some("expires_at".to_owned()),
    };
    create_table(sdk, name, &schema).await
}

/// Creates table `name` with `schema`'s keys, GSIs and TTL (on demand).
pub async fn create_table(sdk: &SdkConfig, name: &str, schema: &TableSchema) {
    let db = aws_sdk_dynamodb::Client::new(sdk);
    let key = |n: &str, t: KeyType| KeySchemaElement::builder().attribute_name(n).key_type(t).build().unwrap();
    let mut req = db
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(
            schema
                .attributes()
                .into_iter()
                .map(|k| {
                    AttributeDefinition::builder().attribute_name(&k.name).attribute_type(k.ty.clone()).build().unwrap()
                })
                .collect(),
        ))
        .key_schema(key(&schema.hash.name, KeyType::Hash));
    if let Some(r) = &schema.range {
        req = req.key_schema(key(&r.name, KeyType::Range));
    }
    for index in &schema.indexes {
        let mut gsi = GlobalSecondaryIndex::builder()
            .index_name(&index.name)
            .key_schema(key(&index.hash.name, KeyType::Hash))
            .projection(Projection::builder().projection_type(index.projection.clone()).build());
        if let Some(r) = &index.range {
            gsi = gsi.key_schema(key(&r.name, KeyType::Range));
        }
        req = req.global_secondary_indexes(gsi.build().unwrap());
    }
    req.send().await.unwrap_or_else(|e| panic!("create table {name}: {}", DisplayErrorContext(e)));
    if let Some(ttl) = &schema.ttl {
        db.update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder().enabled(true).attribute_name(ttl).build().unwrap(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("enable TTL on {name}: {}", DisplayErrorContext(e)));
    }
}

/// Every queue and table of the relay, uniquely named.
#[derive(Clone, Debug)]
pub struct Resources {
    pub dispatch_queue_url: String,
    pub dispatch_dlq_url: String,
    pub reconcile_queue_url: String,
    pub reconcile_dlq_url: String,
    pub dispatch_table: String,
    pub payload_table: String,
    pub jobs_table: String,
    pub kv_table: String,
}

impl Resources {
    /// Creates them; both queues redrive after `max_receive_count` receives.
    pub async fn create(sdk: &SdkConfig, max_receive_count: u32) -> Resources {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (dispatch_queue_url, dispatch_dlq_url) =
            queue_pair(sdk, &format!("dispatch-{id}"), max_receive_count).await;
        let (reconcile_queue_url, reconcile_dlq_url) =
            queue_pair(sdk, &format!("reconcile-{id}"), max_receive_count).await;
        let r = Resources {
            dispatch_queue_url,
            dispatch_dlq_url,
            reconcile_queue_url,
            reconcile_dlq_url,
            dispatch_table: format!("dispatches-{id}"),
            payload_table: format!("payloads-{id}"),
            jobs_table: format!("jobs-{id}"),
            kv_table: format!("kv-{id}"),
        };
        for (resource, name) in r.tables() {
            relay_table(sdk, resource, name).await;
        }
        r
    }

    /// Each table with its Terraform resource name (its table in
    /// infra/modules/crcr/tables.json).
    pub fn tables(&self) -> [(&'static str, &str); 4] {
        [
            ("dispatches", &self.dispatch_table),
            ("payloads", &self.payload_table),
            ("jobs", &self.jobs_table),
            ("kv", &self.kv_table),
        ]
    }

    /// The `CRCR_*` variables naming them, as infra/modules/crcr/lambda.tf sets them.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CRCR_DISPATCH_QUEUE_URL", self.dispatch_queue_url.clone()),
            ("CRCR_DISPATCH_DLQ_URL", self.dispatch_dlq_url.clone()),
            ("CRCR_RECONCILE_QUEUE_URL", self.reconcile_queue_url.clone()),
            ("CRCR_RECONCILE_DLQ_URL", self.reconcile_dlq_url.clone()),
            ("CRCR_DISPATCH_TABLE", self.dispatch_table.clone()),
            ("CRCR_PAYLOAD_TABLE", self.payload_table.clone()),
            ("CRCR_JOBS_TABLE", self.jobs_table.clone()),
            ("CRCR_KV_TABLE", self.kv_table.clone()),
        ]
    }
}

/// Counts the AWS API calls made through the clients it builds, by
/// operation: the part of `X-Amz-Target` after its dot (`SendMessage`,
/// `UpdateItem`, ...; SQS and DynamoDB both speak the JSON protocol). Each
/// attempt counts, so a retry is a call: what AWS bills and throttles.
#[derive(Debug, Clone, Default)]
pub struct CallCounter(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>);

impl CallCounter {
    /// Calls so far, by operation.
    pub fn counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An SQS client on `sdk` whose calls this counts.
    pub fn sqs(&self, sdk: &SdkConfig) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::from_conf(aws_sdk_sqs::config::Builder::from(sdk).interceptor(self.clone()).build())
    }

    /// A DynamoDB client on `sdk` whose calls this counts.
    pub fn dynamodb(&self, sdk: &SdkConfig) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(sdk).interceptor(self.clone()).build(),
        )
    }
}

impl aws_sdk_sqs::config::Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_sqs::config::RuntimeComponents,
        _: &mut aws_sdk_sqs::config::ConfigBag,
    ) -> Result<(), aws_sdk_sqs::error::BoxError> {
        let target = context.request().headers().get("x-amz-target").unwrap_or("unknown");
        let operation = target.rsplit_once('.').map_or(target, |(_, op)| op).to_owned();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(operation).or_default() += 1;
        Ok(())
    }
}
