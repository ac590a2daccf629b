//! The moto tables of `crcr_standin::moto` against
//! infra/modules/crcr/tables.json, the tables' one schema (dynamodb.tf is
//! checked against it by infra/tests/test_infra.py): each table the helpers
//! create on moto's server has exactly the keys, attribute definitions,
//! GSIs and TTL of the file, as DescribeTable / DescribeTimeToLive report
//! them. The file is read here with serde_json on its own, not with the
//! helpers' parser.
//!
//! Run: `cargo nextest run -p crcr-standin --test schema` (needs moto:
//! `CRCR_TEST_MOTO_URL`, default http://127.0.0.1:5000).

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_dynamodb::types::TimeToLiveStatus;
use crcr_standin::moto;
use serde_json::Value;

const TABLES_JSON: &str = include_str!("../../../infra/modules/crcr/tables.json");

/// A table as DescribeTable reports it, or as tables.json says it should be.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    /// (attribute, HASH | RANGE), in key order.
    keys: Vec<(String, String)>,
    /// attribute -> S | N | B.
    attributes: BTreeMap<String, String>,
    /// index -> (its keys, projection type).
    indexes: BTreeMap<String, (Vec<(String, String)>, String)>,
    /// The TTL attribute, if TTL is enabled.
    ttl: Option<String>,
}

fn tables() -> Vec<Value> {
    let doc: Value = serde_json::from_str(TABLES_JSON).expect("tables.json is JSON");
    doc["tables"].as_array().expect("tables.json: tables is an array").clone()
}

fn resource(t: &Value) -> &str {
    t["resource"].as_str().expect("resource")
}

fn expected(t: &Value) -> Shape {
    let mut attributes = BTreeMap::new();
    let mut keys_of = |obj: &Value| -> Vec<(String, String)> {
        let mut keys = Vec::new();
        for (field, kind) in [("hash_key", "HASH"), ("range_key", "RANGE")] {
            let k = &obj[field];
            if k.is_null() {
                continue;
            }
            let name = k["name"].as_str().expect("key name").to_owned();
            let ty = k["type"].as_str().expect("key type").to_owned();
            if let Some(prev) = attributes.insert(name.clone(), ty.clone()) {
                assert_eq!(prev, ty, "{}: {name} with two types", resource(t));
            }
            keys.push((name, kind.to_owned()));
        }
        keys
    };
    let keys = keys_of(t);
    let mut indexes = BTreeMap::new();
    for g in t["global_secondary_indexes"].as_array().into_iter().flatten() {
        let projection = g["projection_type"].as_str().expect("projection_type").to_owned();
        indexes.insert(g["name"].as_str().expect("GSI name").to_owned(), (keys_of(g), projection));
    }
    Shape { keys, attributes, indexes, ttl: t["ttl_attribute"].as_str().map(str::to_owned) }
}

async fn described(sdk: &aws_config::SdkConfig, name: &str) -> Shape {
    let db = aws_sdk_dynamodb::Client::new(sdk);
    let table = db.describe_table().table_name(name).send().await.expect("DescribeTable").table.expect("table");
    let keys_of = |ks: &[aws_sdk_dynamodb::types::KeySchemaElement]| -> Vec<(String, String)> {
        ks.iter().map(|k| (k.attribute_name().to_owned(), k.key_type().as_str().to_owned())).collect()
    };
    let attributes = table
        .attribute_definitions()
        .iter()
        .map(|a| (a.attribute_name().to_owned(), a.attribute_type().as_str().to_owned()))
        .collect::<BTreeMap<_, _>>();
    assert_eq!(attributes.len(), table.attribute_definitions().len(), "{name}: an attribute defined twice");
    let indexes = table
        .global_secondary_indexes()
        .iter()
        .map(|g| {
            let projection = g.projection().and_then(|p| p.projection_type()).map(|p| p.as_str().to_owned());
            (g.index_name().expect("index name").to_owned(), (keys_of(g.key_schema()), projection.unwrap_or_default()))
        })
        .collect::<BTreeMap<_, _>>();
    assert_eq!(indexes.len(), table.global_secondary_indexes().len(), "{name}: a GSI twice");
    let ttl = db.describe_time_to_live().table_name(name).send().await.expect("DescribeTimeToLive");
    let ttl = ttl
        .time_to_live_description()
        .filter(|d| d.time_to_live_status() == Some(&TimeToLiveStatus::Enabled))
        .and_then(|d| d.attribute_name())
        .map(str::to_owned);
    Shape { keys: keys_of(table.key_schema()), attributes, indexes, ttl }
}

#[tokio::test]
async fn every_relay_table_on_moto_is_as_tables_json_defines_it() {
    let sdk = moto::sdk().await;
    let res = moto::Resources::create(&sdk, 3).await;
    let created: BTreeMap<&str, &str> = res.tables().into_iter().collect();
    let tables = tables();
    let in_schema: BTreeSet<&str> = tables.iter().map(resource).collect();
    assert_eq!(created.keys().copied().collect::<BTreeSet<_>>(), in_schema, "Resources' tables != tables.json's");
    for t in &tables {
        let name = created[resource(t)];
        assert_eq!(described(&sdk, name).await, expected(t), "table {} ({name})", resource(t));
    }
}

#[tokio::test]
async fn relay_table_and_dispatch_table_follow_tables_json() {
    let sdk = moto::sdk().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    for t in tables() {
        let name = format!("schema-{}-{id}", resource(&t));
        moto::relay_table(&sdk, resource(&t), &name).await;
        assert_eq!(described(&sdk, &name).await, expected(&t), "relay_table {}", resource(&t));
    }
    let dispatches = tables().into_iter().find(|t| resource(t) == "dispatches").expect("dispatches in tables.json");
    let name = format!("schema-dispatch-table-{id}");
    moto::dispatch_table(&sdk, &name).await;
    assert_eq!(described(&sdk, &name).await, expected(&dispatches));
}

#[test]
fn the_helpers_parse_tables_json_as_serde_json_reads_it() {
    let tables = tables();
    let parsed = moto::schema();
    assert_eq!(
        parsed.iter().map(|t| t.resource.as_str()).collect::<Vec<_>>(),
        tables.iter().map(resource).collect::<Vec<_>>()
    );
    for (t, p) in tables.iter().zip(parsed) {
        assert_eq!(p.name_suffix, t["name_suffix"].as_str().expect("name_suffix"));
        let want = expected(t);
        let attributes =
            p.attributes().iter().map(|k| (k.name.clone(), k.ty.as_str().to_owned())).collect::<BTreeMap<_, _>>();
        assert_eq!(attributes, want.attributes, "{}", p.resource);
        assert_eq!(
            p.indexes.iter().map(|i| i.name.clone()).collect::<BTreeSet<_>>(),
            want.indexes.keys().cloned().collect()
        );
        assert_eq!(p.ttl, want.ttl, "{}", p.resource);
    }
}

#[test]
fn the_index_names_the_adapters_query_are_in_tables_json() {
    let tables = tables();
    let indexes_of = |table: &str| -> BTreeSet<String> {
        let t = tables.iter().find(|t| resource(t) == table).unwrap_or_else(|| panic!("{table} in tables.json"));
        expected(t).indexes.into_keys().collect()
    };
    for (table, index) in [
        ("dispatches", crcr_aws::DISPATCH_DAY_INDEX),
        ("dispatches", crcr_aws::HEAD_SHA_INDEX),
        ("jobs", crcr_aws::JOBS_BY_STATUS_INDEX),
    ] {
        assert!(indexes_of(table).contains(index), "{table}: GSI {index} (crcr-aws) missing from tables.json");
    }
}

#[test]
fn the_schema_parser_ignores_comments_and_rejects_unknown_keys() {
    let ok = r#"{"_comment": "x", "tables": [{"_note": "y", "resource": "t", "name_suffix": "t",
        "hash_key": {"name": "pk", "type": "S"}, "range_key": null, "global_secondary_indexes": [],
        "ttl_attribute": null}]}"#;
    let parsed = moto::parse_schema(ok).expect("valid schema");
    assert_eq!(parsed.len(), 1);
    assert_eq!(parsed[0].ttl, None);
    assert!(parsed[0].range.is_none());
    let unknown = ok.replace("\"_note\"", "\"note\"");
    assert!(moto::parse_schema(&unknown).is_err());
    let bad_type = ok.replace("\"type\": \"S\"", "\"type\": \"X\"");
    assert!(moto::parse_schema(&bad_type).is_err());
    let twice = ok.replace(
        "}]}",
        "}, {\"resource\": \"t\", \"name_suffix\": \"t\", \"hash_key\": {\"name\": \"pk\", \"type\": \"S\"}}]}",
    );
    assert!(moto::parse_schema(&twice).is_err());
}
