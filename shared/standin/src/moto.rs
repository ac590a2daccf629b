//! The relay's AWS resources on moto's server (an AWS emulator), shaped as
//! infra/modules/crcr creates them (queues with DLQs and redrive, tables
//! with their keys, GSIs and TTL), uniquely named per call so tests run in
//! parallel. For tests: a helper that cannot reach moto panics (a test that
//! needs moto fails, it never skips); setup failures panic with the SDK's
//! error.

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

/// A key attribute: name and type.
pub type Attr<'a> = (&'a str, ScalarAttributeType);

/// A global secondary index: name, hash key, range key (projection ALL).
pub type Index<'a> = (&'a str, Attr<'a>, Attr<'a>);

/// A table: hash key, optional range key, optional GSI (name, hash, range;
/// projection ALL), TTL on `expires_at`. See [`table_with_indexes`] for
/// more than one GSI.
pub async fn table(sdk: &SdkConfig, name: &str, hash: Attr<'_>, range: Option<Attr<'_>>, index: Option<Index<'_>>) {
    table_with_indexes(sdk, name, hash, range, index.as_slice()).await
}

/// The dispatch table as infra/modules/crcr/dynamodb.tf creates it: hash
/// key `delivery_id` (S), range key `target` (S), the sparse GSIs
/// [`crcr_aws::DISPATCH_DAY_INDEX`] (`dispatch_day` S + `dispatched_at_ms`
/// N) and [`crcr_aws::HEAD_SHA_INDEX`] (`head_sha` S + `created_at_ms` N),
/// TTL on `expires_at`.
pub async fn dispatch_table(sdk: &SdkConfig, name: &str) {
    use ScalarAttributeType::{N, S};
    let indexes = [
        (crcr_aws::DISPATCH_DAY_INDEX, ("dispatch_day", S), ("dispatched_at_ms", N)),
        (crcr_aws::HEAD_SHA_INDEX, ("head_sha", S), ("created_at_ms", N)),
    ];
    table_with_indexes(sdk, name, ("delivery_id", S), Some(("target", S)), &indexes).await
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
    let db = aws_sdk_dynamodb::Client::new(sdk);
    let key = |n: &str, t: KeyType| KeySchemaElement::builder().attribute_name(n).key_type(t).build().unwrap();
    let mut defined: Vec<&Attr<'_>> = Vec::new();
    for attr in std::iter::once(&hash).chain(&range).chain(indexes.iter().flat_map(|(_, h, r)| [h, r])) {
        match defined.iter().find(|d| d.0 == attr.0) {
            Some(d) => assert_eq!(d.1, attr.1, "table {name}: key attribute {} used with two types", attr.0),
            None => defined.push(attr),
        }
    }
    let mut req = db
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(
            defined
                .iter()
                .map(|(n, t)| {
                    AttributeDefinition::builder().attribute_name(*n).attribute_type(t.clone()).build().unwrap()
                })
                .collect(),
        ))
        .key_schema(key(hash.0, KeyType::Hash));
    if let Some(r) = &range {
        req = req.key_schema(key(r.0, KeyType::Range));
    }
    for (index, ih, ir) in indexes {
        req = req.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(*index)
                .key_schema(key(ih.0, KeyType::Hash))
                .key_schema(key(ir.0, KeyType::Range))
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()
                .unwrap(),
        );
    }
    req.send().await.unwrap_or_else(|e| panic!("create table {name}: {}", DisplayErrorContext(e)));
    db.update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder().enabled(true).attribute_name("expires_at").build().unwrap(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("enable TTL on {name}: {}", DisplayErrorContext(e)));
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
        use ScalarAttributeType::{N, S};
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
        dispatch_table(sdk, &r.dispatch_table).await;
        table(sdk, &r.payload_table, ("key", S), Some(("chunk", N)), None).await;
        let status_index = (crcr_aws::JOBS_BY_STATUS_INDEX, ("status", S), ("updated_at", N));
        table(sdk, &r.jobs_table, ("pk", S), Some(("sk", S)), Some(status_index)).await;
        table(sdk, &r.kv_table, ("pk", S), None, None).await;
        r
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
