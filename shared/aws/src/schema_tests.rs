//! The adapters' key attribute and index names against
//! infra/modules/crcr/tables.json, the tables' one schema (dynamodb.tf is
//! checked against it by infra/tests/test_infra.py, the moto tables are
//! created from it by crcr-standin): each table's hash and range keys, its
//! GSIs' names and keys, and its TTL attribute are the names the adapter
//! writes and queries.

use serde_json::Value;

const TABLES_JSON: &str = include_str!("../../../infra/modules/crcr/tables.json");

/// The key attribute, GSI and TTL names one adapter uses.
struct Uses<'a> {
    hash: &'a str,
    range: Option<&'a str>,
    indexes: Vec<(&'a str, &'a str, &'a str)>,
    ttl: &'a str,
}

fn table(resource: &str) -> Value {
    let doc: Value = serde_json::from_str(TABLES_JSON).expect("tables.json is JSON");
    let tables = doc["tables"].as_array().expect("tables.json: tables is an array");
    tables
        .iter()
        .find(|t| t["resource"] == resource)
        .unwrap_or_else(|| panic!("tables.json has no table {resource}"))
        .clone()
}

fn assert_uses(resource: &str, uses: Uses<'_>) {
    let t = table(resource);
    assert_eq!(t["hash_key"]["name"], uses.hash, "{resource}: hash key");
    assert_eq!(t["range_key"]["name"].as_str(), uses.range, "{resource}: range key");
    let mut indexes: Vec<(&str, &str, &str)> = t["global_secondary_indexes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            fn s(v: &Value) -> &str {
                v.as_str().unwrap_or_default()
            }
            (s(&g["name"]), s(&g["hash_key"]["name"]), s(&g["range_key"]["name"]))
        })
        .collect();
    indexes.sort();
    let mut want = uses.indexes;
    want.sort();
    assert_eq!(indexes, want, "{resource}: GSIs (name, hash key, range key)");
    assert_eq!(t["ttl_attribute"], uses.ttl, "{resource}: TTL attribute");
}

#[test]
fn dispatch_store_keys_match_tables_json() {
    use crate::dispatch_item::attr;
    assert_uses(
        "dispatches",
        Uses {
            hash: attr::DELIVERY_ID,
            range: Some(attr::TARGET),
            indexes: vec![
                (crate::DISPATCH_DAY_INDEX, attr::DISPATCH_DAY, attr::DISPATCHED_AT_MS),
                (crate::HEAD_SHA_INDEX, attr::HEAD_SHA, attr::CREATED_AT_MS),
            ],
            ttl: attr::EXPIRES_AT,
        },
    );
}

#[test]
fn blob_store_keys_match_tables_json() {
    use crate::blobs::attr;
    assert_uses("payloads", Uses { hash: attr::KEY, range: Some(attr::CHUNK), indexes: vec![], ttl: attr::EXPIRES_AT });
}

#[test]
fn job_store_keys_match_tables_json() {
    use crate::jobs::attr;
    assert_uses(
        "jobs",
        Uses {
            hash: attr::PK,
            range: Some(attr::SK),
            indexes: vec![(crate::JOBS_BY_STATUS_INDEX, attr::STATUS, attr::UPDATED_AT)],
            ttl: attr::EXPIRES_AT,
        },
    );
}

#[test]
fn kv_keys_match_tables_json() {
    use crate::kv::attr;
    assert_uses("kv", Uses { hash: attr::PK, range: None, indexes: vec![], ttl: attr::EXPIRES_AT });
}
