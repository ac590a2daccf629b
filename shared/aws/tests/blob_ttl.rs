//! Claim-checked payloads outlive the messages that name them (issue 12):
//! the DynamoDB blob store writes `expires_at` = now + its TTL on every
//! chunk, `CRCR_PAYLOAD_TTL_SECS` sets that TTL (infra derives it from the
//! DLQ retention), and the default covers the DLQ retention plus a replay.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;
use crcr_aws::{DynamoBlobStore, BLOB_CHUNK_BYTES, BLOB_TTL_SECS};
use crcr_core::config::{AwsResources, Env};
use crcr_core::ports::BlobStore;
use crcr_standin::moto;

/// An environment holding exactly `pairs`.
fn env_of(pairs: &'static [(&'static str, &'static str)]) -> Env<'static> {
    Env::new(move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()))
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn every_chunk_expires_after_the_configured_ttl() {
    let sdk = moto::sdk().await;
    let table = format!("crcr-blobs-{}", uuid::Uuid::new_v4().simple());
    moto::relay_table(&sdk, "payloads", &table).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let env = env_of(&[("CRCR_PAYLOAD_TTL_SECS", "1728000")]);
    let ttl = AwsResources::from_env(&env).unwrap().payload_ttl;
    assert_eq!(ttl, Duration::from_secs(1_728_000));
    let blobs = DynamoBlobStore::new(client.clone(), table.clone()).with_ttl(ttl);
    let payload = vec![7u8; BLOB_CHUNK_BYTES + 10];
    let before = now_s();
    blobs.put("claim-1", &payload).await.unwrap();
    let after = now_s();
    let items = client.scan().table_name(&table).send().await.unwrap().items.unwrap_or_default();
    assert_eq!(items.len(), 2, "two chunks");
    for item in items {
        let Some(AttributeValue::N(at)) = item.get("expires_at") else { panic!("no expires_at on {item:?}") };
        let at: i64 = at.parse().unwrap();
        assert!((before + 1_728_000..=after + 1_728_000).contains(&at), "expires_at {at}");
    }
    assert_eq!(blobs.get("claim-1").await.unwrap(), payload);
}

#[test]
fn the_default_covers_the_dlq_retention_and_a_replay() {
    let dlq = 14 * 24 * 3600; // SQS's maximum retention, the DLQs' (infra locals.tf)
    let source = 4 * 24 * 3600; // the source queues' default retention (infra variables.tf)
    assert!(BLOB_TTL_SECS >= dlq + source, "{BLOB_TTL_SECS}");
    assert_eq!(AwsResources::default().payload_ttl, Duration::from_secs(BLOB_TTL_SECS as u64));
    let unset = AwsResources::from_env(&env_of(&[])).unwrap();
    assert_eq!(unset.payload_ttl, Duration::from_secs(BLOB_TTL_SECS as u64));
    let zero = AwsResources::from_env(&env_of(&[("CRCR_PAYLOAD_TTL_SECS", "0")])).unwrap_err();
    assert!(zero.to_string().contains("CRCR_PAYLOAD_TTL_SECS"), "{zero}");
    let bad = AwsResources::from_env(&env_of(&[("CRCR_PAYLOAD_TTL_SECS", "19d")])).unwrap_err();
    assert!(bad.to_string().contains("CRCR_PAYLOAD_TTL_SECS"), "{bad}");
}
