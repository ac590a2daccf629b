"""Wiring checks of the crcr Terraform, without a terraform binary.

Every .tf file under infra/ is parsed with python-hcl2; the module
(infra/modules/crcr) is then checked for the safeties the code relies on:
DLQs, visibility timeouts, partial batch responses, table PITR/TTL/SSE,
alarms, least-privilege IAM. Each check is a plain function raising
AssertionError; the tests at the bottom apply small mutations to a copy of
the module and assert the matching check then fails, so no check can pass
by looking at nothing.

CRCR_INFRA_DIR overrides the infra/ directory under test.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tfmodel import Module, data_refs, load_module, parse_file, resource_refs, statements, unwrap

INFRA = Path(os.environ.get("CRCR_INFRA_DIR", Path(__file__).resolve().parents[1]))
MODULE_DIR = INFRA / "modules" / "crcr"
EXAMPLE_DIR = INFRA / "examples" / "complete"

FUNCTIONS = ("ingest", "dispatcher", "reconciler")

# The tables' schema: infra/modules/crcr/tables.json, the one source the tests
# read (shared/standin/src/moto.rs creates the moto tables from it);
# dynamodb.tf keeps literal HCL and check_table_keys / check_tables_ttl assert
# that it matches the file exactly. Keys starting with "_" are comments.
SCHEMA_FILE = "tables.json"


def load_schema(module_dir: Path) -> dict[str, dict]:
    """tables.json of a module directory: Terraform resource name -> table
    (name_suffix, hash_key, range_key, global_secondary_indexes,
    ttl_attribute), each key a {"name", "type"} dict, validated."""
    import json

    doc = json.loads((module_dir / SCHEMA_FILE).read_text(encoding="utf-8"))
    tables: dict[str, dict] = {}
    for t in doc["tables"]:
        t = {k: v for k, v in t.items() if not k.startswith("_")}
        known = {"resource", "name_suffix", "hash_key", "range_key", "global_secondary_indexes", "ttl_attribute"}
        assert set(t) <= known, f"{SCHEMA_FILE}: unknown keys {sorted(set(t) - known)}"
        name = t["resource"]
        assert name not in tables, f"{SCHEMA_FILE}: table {name} twice"
        keys = [t["hash_key"], t.get("range_key")]
        for g in t.get("global_secondary_indexes") or []:
            g = {k: v for k, v in g.items() if not k.startswith("_")}
            assert set(g) <= {"name", "hash_key", "range_key", "projection_type"}, f"{SCHEMA_FILE}: {name}: GSI {g}"
            keys += [g["hash_key"], g.get("range_key")]
        for k in filter(None, keys):
            assert set(k) == {"name", "type"} and k["type"] in ("S", "N", "B"), f"{SCHEMA_FILE}: {name}: key {k}"
        tables[name] = t
    return tables


def table_attributes(t: dict) -> dict[str, str]:
    """The attribute definitions a table of tables.json needs: every key
    attribute of the table and of its GSIs, once, with its type."""
    keys = [t["hash_key"], t.get("range_key")]
    for g in t.get("global_secondary_indexes") or []:
        keys += [g["hash_key"], g.get("range_key")]
    attrs: dict[str, str] = {}
    for k in filter(None, keys):
        assert attrs.setdefault(k["name"], k["type"]) == k["type"], (
            f"{SCHEMA_FILE}: {t['resource']}: {k['name']} used with two types"
        )
    return attrs


TABLES = load_schema(MODULE_DIR)

# Environment variables the code reads.
ENVIRONMENT = {
    "CRCR_UPSTREAM_REPO",
    "CRCR_GITHUB_APP_ID",
    "CRCR_ALLOWLIST_URL",
    "CRCR_DISPATCH_QUEUE_URL",
    "CRCR_DISPATCH_DLQ_URL",
    "CRCR_RECONCILE_QUEUE_URL",
    "CRCR_RECONCILE_DLQ_URL",
    "CRCR_DISPATCH_TABLE",
    "CRCR_PAYLOAD_TABLE",
    "CRCR_JOBS_TABLE",
    "CRCR_KV_TABLE",
    "CRCR_MAX_RECEIVE_COUNT",
    "CRCR_SECRETS_ARN",
    "CRCR_HUD_URL",
    "CRCR_OIDC_AUDIENCE",
    "CRCR_METRICS_NAMESPACE",
    "CRCR_OUTBOX_LEASE_SECS",
    "CRCR_HUD_MAX_ATTEMPTS",
    "CRCR_HUD_MAX_AGE_SECS",
    "CRCR_PAYLOAD_TTL_SECS",
    "CRCR_GITHUB_MAX_IN_FLIGHT",
}

DLQ_RETENTION_SECONDS = 1209600  # 14 days
CUSTOM_METRICS = {
    # metric -> comparison that fires the alarm
    "HudOutboxBacklog": "GreaterThanThreshold",
    "HudOutboxFailed": "GreaterThanThreshold",
    "NeverStartedDispatches": "GreaterThanThreshold",
    "RedeliverIncomplete": "GreaterThanThreshold",
    "TargetBreakersOpened": "GreaterThanThreshold",
    "GitHubRateLimitRemaining": "LessThanThreshold",
}
# Actions with no resource-level permissions: the only ones allowed on "*".
RESOURCELESS_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


# --- helpers -----------------------------------------------------------------------


def is_var(expr) -> bool:
    inner = unwrap(expr)
    return inner is not None and re.fullmatch(r"\s*var\.\w+\s*", inner) is not None


def refs_of_type(expr, rtype: str) -> set[str]:
    return {name for (t, name, _attr) in resource_refs(expr) if t == rtype}


def one_ref(expr, rtype: str, what: str) -> str:
    names = refs_of_type(expr, rtype)
    assert len(names) == 1, f"{what}: expected one {rtype} reference in {expr!r}, got {sorted(names)}"
    return names.pop()


def redrive(body: dict) -> tuple[str, str] | None:
    """(DLQ resource name, maxReceiveCount expression) of a queue's redrive policy."""
    policy = body.get("redrive_policy")
    if policy is None:
        return None
    target = re.search(r"deadLetterTargetArn\s*=\s*aws_sqs_queue\.(\w+)\.arn", policy)
    count = re.search(r"maxReceiveCount\s*=\s*([^,}]+)", policy)
    assert target and count, f"redrive_policy not understood: {policy!r}"
    return target.group(1), count.group(1).strip()


def queues(m: Module) -> dict[str, dict]:
    q = m.resources_of("aws_sqs_queue")
    assert q, "no aws_sqs_queue in the module"
    return q


def dlq_sources(m: Module) -> dict[str, list[str]]:
    """DLQ name -> names of the queues redriving into it."""
    out: dict[str, list[str]] = {}
    for name, body in queues(m).items():
        r = redrive(body)
        if r:
            out.setdefault(r[0], []).append(name)
    return out


def source_queues(m: Module) -> list[str]:
    dlqs = dlq_sources(m)
    return [q for q in queues(m) if q not in dlqs]


def function(m: Module, name: str) -> dict:
    return m.resource("aws_lambda_function", name)


def function_environment(m: Module, name: str) -> dict:
    env = function(m, name)["environment"][0]["variables"]
    found = re.findall(r"\blocal\.(\w+_environment)\b", env) if isinstance(env, str) else []
    if found:
        assert len(found) == 1, f"{name}: environment from several locals: {found}"
        value = m.local(found[0])
    else:
        value = env
    assert isinstance(value, dict), f"{name}: environment not a map: {value!r}"
    return value


def policy_doc_of_role(m: Module, role: str) -> list[dict]:
    """All statements granted to an IAM role through its inline policies."""
    docs = [
        body
        for body in m.resources_of("aws_iam_role_policy").values()
        if refs_of_type(body["role"], "aws_iam_role") == {role}
    ]
    assert len(docs) == 1, f"role {role}: expected exactly one inline policy, got {len(docs)}"
    doc_names = data_refs(docs[0]["policy"])
    assert len(doc_names) == 1, f"role {role}: policy must come from one aws_iam_policy_document"
    return expand_doc(m, doc_names.pop()[1])


def expand_doc(m: Module, name: str) -> list[dict]:
    doc = m.data_source("aws_iam_policy_document", name)
    out = list(statements(doc))
    for src in doc.get("source_policy_documents", []):
        for dtype, dname in data_refs(src):
            assert dtype == "aws_iam_policy_document"
            out.extend(expand_doc(m, dname))
    return out


def function_role(m: Module, name: str) -> str:
    return one_ref(function(m, name)["role"], "aws_iam_role", f"function {name} role")


def granted(stmts: list[dict], rtype: str) -> dict[str, set[str]]:
    """Resource name -> actions allowed on it (resources of one type)."""
    out: dict[str, set[str]] = {}
    for st in stmts:
        if st.get("effect", "Allow") != "Allow":
            continue
        for res in st.get("resources", []):
            for name in refs_of_type(res, rtype):
                out.setdefault(name, set()).update(st.get("actions", []))
    return out


def consumers(m: Module) -> dict[str, str]:
    """Source queue name -> function consuming it (from the event source mappings)."""
    out = {}
    for esm_name, esm in m.resources_of("aws_lambda_event_source_mapping").items():
        q = one_ref(esm["event_source_arn"], "aws_sqs_queue", f"mapping {esm_name}")
        fn = one_ref(esm["function_name"], "aws_lambda_function", f"mapping {esm_name}")
        assert q not in out, f"queue {q} consumed by two mappings"
        out[q] = fn
    return out


def alarms(m: Module) -> list[dict]:
    out = []
    for name, body in m.resources_of("aws_cloudwatch_metric_alarm").items():
        for key, inst in m.instances(body):
            inst = dict(inst)
            inst["_address"] = f"{name}[{key}]" if key else name
            out.append(inst)
    return out


def find_alarms(m: Module, namespace: str, metric: str) -> list[dict]:
    return [
        a for a in alarms(m) if m.resolve(a.get("namespace")) == namespace and a.get("metric_name") == metric
    ]


# --- checks ----------------------------------------------------------------------------


def check_queues_have_dlqs(m: Module) -> None:
    """Every queue that is not a DLQ redrives into a DLQ, with maxReceiveCount
    var.max_receive_count (default 5); every DLQ serves exactly one queue."""
    qs = queues(m)
    dlqs = dlq_sources(m)
    for name, body in qs.items():
        r = redrive(body)
        if name in dlqs:
            assert r is None, f"DLQ {name} must not itself redrive"
            assert len(dlqs[name]) == 1, f"DLQ {name} serves several queues: {dlqs[name]}"
            continue
        assert r is not None, f"queue {name} has no redrive policy to a DLQ"
        target, count = r
        assert target in qs and target != name, f"queue {name}: DLQ {target} is not another queue"
        assert count == "var.max_receive_count", f"queue {name}: maxReceiveCount {count!r} is not var.max_receive_count"
    for name in qs:
        assert ("dlq" in name) == (name in dlqs), f"queue {name}: name and DLQ role disagree"
    assert m.variable_default("max_receive_count") == 5


def check_dlq_retention(m: Module) -> None:
    dlqs = dlq_sources(m)
    assert dlqs, "no DLQ"
    for dlq, sources in dlqs.items():
        retention = m.resolve_number(queues(m)[dlq]["message_retention_seconds"])
        assert retention == DLQ_RETENTION_SECONDS, f"DLQ {dlq}: retention {retention}, want 14 days"
        for src in sources:
            src_retention = m.resolve_number(queues(m)[src]["message_retention_seconds"])
            # Standard queues keep the original enqueue time when moving a message
            # to the DLQ: the DLQ must keep messages longer than the source.
            assert src_retention < retention, f"queue {src}: retention {src_retention} >= its DLQ's"


def check_dlq_message_size(m: Module) -> None:
    """A DLQ takes bigger messages than its source: the code dead-letters a
    message by copying it with an extra reason attribute."""
    for dlq, sources in dlq_sources(m).items():
        dlq_max = m.resolve_number(queues(m)[dlq]["max_message_size"])
        for src in sources:
            src_max = m.resolve_number(queues(m)[src]["max_message_size"])
            assert dlq_max >= src_max + 1024, f"DLQ {dlq}: max_message_size {dlq_max} leaves no room over {src}'s {src_max}"


def check_queue_encryption(m: Module) -> None:
    for name, body in queues(m).items():
        assert body.get("sqs_managed_sse_enabled") is True or body.get("kms_master_key_id"), (
            f"queue {name} is not encrypted at rest"
        )


def check_queue_tls_policies(m: Module) -> None:
    """Every queue has a queue policy denying requests without TLS."""
    covered = set()
    for pname, pbody in m.resources_of("aws_sqs_queue_policy").items():
        for key, inst in m.instances(pbody):
            queue = one_ref(inst["queue_url"], "aws_sqs_queue", f"queue policy {pname}")
            (dtype, dname), = data_refs(inst["policy"])
            doc = m.data_source(dtype, dname)
            doc_inst = dict(m.instances(doc)).get(key) if "for_each" in doc else doc
            assert doc_inst is not None, f"policy document {dname} has no instance {key}"
            ok = False
            for st in statements(doc_inst):
                conds = st.get("condition", [])
                principals = st.get("principals", [])
                if (
                    st.get("effect") == "Deny"
                    and queue in refs_of_type(st.get("resources", []), "aws_sqs_queue")
                    and any(p.get("identifiers") == ["*"] for p in principals)
                    and any(
                        c.get("test") == "Bool"
                        and c.get("variable") == "aws:SecureTransport"
                        and c.get("values") == ["false"]
                        for c in conds
                    )
                ):
                    ok = True
            assert ok, f"queue {queue}: policy {pname} does not deny non-TLS access"
            covered.add(queue)
    missing = set(queues(m)) - covered
    assert not missing, f"queues without a TLS-only policy: {sorted(missing)}"


def check_event_source_mappings(m: Module) -> None:
    esms = m.resources_of("aws_lambda_event_source_mapping")
    assert esms, "no event source mapping"
    for name, esm in esms.items():
        assert esm.get("function_response_types") == ["ReportBatchItemFailures"], (
            f"mapping {name}: function_response_types must be [\"ReportBatchItemFailures\"]"
        )
        assert is_var(esm.get("batch_size")), f"mapping {name}: batch_size must be a variable"
        scaling = esm.get("scaling_config", [{}])[0]
        assert is_var(scaling.get("maximum_concurrency")), f"mapping {name}: maximum_concurrency must be a variable"
    consumed = consumers(m)
    dlqs = dlq_sources(m)
    for q in consumed:
        assert q not in dlqs, f"DLQ {q} must not be consumed by a function"
    missing = set(source_queues(m)) - set(consumed)
    assert not missing, f"queues nobody consumes: {sorted(missing)}"


def check_visibility_timeouts(m: Module) -> None:
    """AWS guidance: visibility timeout >= 6 x the consuming function's timeout."""
    consumed = consumers(m)
    assert consumed
    for q, fn in consumed.items():
        vt = m.resolve_number(queues(m)[q]["visibility_timeout_seconds"])
        ft = m.resolve_number(function(m, fn)["timeout"])
        assert vt >= 6 * ft, f"queue {q}: visibility timeout {vt} < 6 x {fn} timeout {ft}"
        assert vt <= 43200, f"queue {q}: visibility timeout {vt} above SQS's 12 h"


def check_tables_exist(m: Module) -> None:
    schema = load_schema(m.path)
    tables = m.resources_of("aws_dynamodb_table")
    assert set(tables) == set(schema), f"tables {sorted(tables)} != {sorted(schema)} of {SCHEMA_FILE}"
    for name, body in tables.items():
        want = "${var.name_prefix}-" + schema[name]["name_suffix"]
        assert body["name"] == want, f"table {name}: name {body['name']!r} != {want!r}"
        assert body.get("billing_mode") == "PAY_PER_REQUEST", f"table {name} is not on-demand"
        assert body.get("deletion_protection_enabled") == "${var.deletion_protection_enabled}", (
            f"table {name}: deletion protection must follow var.deletion_protection_enabled"
        )


def check_table_keys(m: Module) -> None:
    """Each table of dynamodb.tf has exactly the keys, attribute definitions
    and GSIs of tables.json."""
    schema = load_schema(m.path)
    tables = m.resources_of("aws_dynamodb_table")
    assert set(tables) == set(schema), f"tables {sorted(tables)} != {sorted(schema)} of {SCHEMA_FILE}"
    for name, t in schema.items():
        body = tables[name]
        attr_list = body.get("attribute", [])
        attrs = {a["name"]: a["type"] for a in attr_list}
        assert len(attrs) == len(attr_list), f"table {name}: an attribute defined twice"
        hash_key, range_key = t["hash_key"], t.get("range_key")
        assert body.get("hash_key") == hash_key["name"], f"table {name}: hash key {body.get('hash_key')!r}"
        assert attrs.get(hash_key["name"]) == hash_key["type"], f"table {name}: {hash_key['name']} type"
        want = {hash_key["name"]}
        if range_key:
            assert body.get("range_key") == range_key["name"], f"table {name}: range key {body.get('range_key')!r}"
            assert attrs.get(range_key["name"]) == range_key["type"], f"table {name}: {range_key['name']} type"
            want.add(range_key["name"])
        else:
            assert "range_key" not in body, f"table {name}: unexpected range key"
        for gsi in body.get("global_secondary_index", []):
            want.update(k for k in (gsi.get("hash_key"), gsi.get("range_key")) if k)
        # DynamoDB rejects attribute definitions that no key uses.
        assert set(attrs) == want, f"table {name}: attributes {sorted(attrs)} != key attributes {sorted(want)}"
        assert attrs == table_attributes(t), f"table {name}: attributes {attrs} != {table_attributes(t)} of {SCHEMA_FILE}"
        # The GSIs: exactly those of tables.json, each with its keys, their types and its projection.
        gsi_list = body.get("global_secondary_index", [])
        gsis = {g["name"]: g for g in gsi_list}
        assert len(gsis) == len(gsi_list), f"table {name}: a GSI defined twice"
        want_gsis = {g["name"]: g for g in t.get("global_secondary_indexes") or []}
        assert set(gsis) == set(want_gsis), f"table {name}: GSIs {sorted(gsis)} != {sorted(want_gsis)} of {SCHEMA_FILE}"
        for index, w in want_gsis.items():
            g = gsis[index]
            keys = (w["hash_key"]["name"], (w.get("range_key") or {}).get("name"))
            assert (g.get("hash_key"), g.get("range_key")) == keys, f"{name}: {index} keys"
            types = (w["hash_key"]["type"], (w.get("range_key") or {}).get("type"))
            assert (attrs.get(keys[0]), attrs.get(keys[1]) if keys[1] else None) == types, f"{name}: {index} key types"
            assert g.get("projection_type") == w["projection_type"], f"{name}: {index} projection"
    # The GSIs the code queries are in the schema and project all attributes.
    for _, table, index in INDEX_QUERIES:
        gsis = {g["name"]: g for g in schema[table].get("global_secondary_indexes") or []}
        assert index in gsis, f"{table}: GSI {index} missing from {SCHEMA_FILE}"
        assert gsis[index]["projection_type"] == "ALL", f"{table}: {index} must project all attributes"


# The GSIs each function queries: (function, table, index).
INDEX_QUERIES = (
    ("reconciler", "jobs", "by_status"),
    ("reconciler", "dispatches", "by_dispatch_day"),
    ("reconciler", "dispatches", "by_head_sha"),
)


# (function, table, action) the code needs beyond reads and writes of items.
TABLE_ACTIONS = (
    # The sweep gives its outbox lease back (DynamoKv::release_lease).
    ("reconciler", "kv", "dynamodb:DeleteItem"),
)


def check_table_actions(m: Module) -> None:
    """Each function may call the table actions its code uses (moto does not
    check IAM, so the Rust tests cannot catch a missing grant)."""
    for fn, table, action in TABLE_ACTIONS:
        arn = "${aws_dynamodb_table." + table + ".arn}"
        stmts = policy_doc_of_role(m, function_role(m, fn))
        allowed = [
            st for st in stmts
            if st.get("effect", "Allow") == "Allow" and arn in st.get("resources", []) and action in st.get("actions", [])
        ]
        assert allowed, f"{fn}: no {action} on {arn}"


def check_index_queries(m: Module) -> None:
    """Each function may Query the GSIs its code reads (a table's ARN does
    not cover its indexes)."""
    for fn, table, index in INDEX_QUERIES:
        arn = "${aws_dynamodb_table." + table + ".arn}/index/" + index
        stmts = policy_doc_of_role(m, function_role(m, fn))
        allowed = [
            st for st in stmts
            if st.get("effect", "Allow") == "Allow" and arn in st.get("resources", [])
            and "dynamodb:Query" in st.get("actions", [])
        ]
        assert allowed, f"{fn}: no dynamodb:Query on {arn}"


def check_tables_pitr(m: Module) -> None:
    for name, body in m.resources_of("aws_dynamodb_table").items():
        pitr = body.get("point_in_time_recovery", [{}])[0]
        assert pitr.get("enabled") is True, f"table {name}: point-in-time recovery not enabled"


def check_tables_ttl(m: Module) -> None:
    """TTL as tables.json says: on its attribute (the code writes
    `expires_at`), or no TTL block for a table without one."""
    schema = load_schema(m.path)
    for name, body in m.resources_of("aws_dynamodb_table").items():
        want = schema[name].get("ttl_attribute") if name in schema else "expires_at"
        if want is None:
            assert "ttl" not in body, f"table {name}: TTL block but no ttl_attribute in {SCHEMA_FILE}"
            continue
        ttl = body.get("ttl", [{}])[0]
        assert ttl.get("attribute_name") == want and ttl.get("enabled") is True, (
            f"table {name}: TTL on {want} not enabled"
        )


def check_tables_sse(m: Module) -> None:
    for name, body in m.resources_of("aws_dynamodb_table").items():
        sse = body.get("server_side_encryption", [{}])[0]
        assert sse.get("enabled") is True, f"table {name}: server-side encryption not enabled"


def check_dlq_alarms(m: Module) -> None:
    found = find_alarms(m, "AWS/SQS", "ApproximateNumberOfMessagesVisible")
    for dlq in dlq_sources(m):
        matching = [a for a in found if refs_of_type(a.get("dimensions"), "aws_sqs_queue") == {dlq}]
        assert matching, f"no ApproximateNumberOfMessagesVisible alarm on DLQ {dlq}"
        for a in matching:
            assert a["comparison_operator"] == "GreaterThanThreshold", a["_address"]
            assert m.resolve_number(a["threshold"]) == 0, f"{a['_address']}: must fire on any message"


def check_queue_age_alarms(m: Module) -> None:
    found = find_alarms(m, "AWS/SQS", "ApproximateAgeOfOldestMessage")
    for q in source_queues(m):
        matching = [a for a in found if refs_of_type(a.get("dimensions"), "aws_sqs_queue") == {q}]
        assert matching, f"no ApproximateAgeOfOldestMessage alarm on queue {q}"
        for a in matching:
            assert a["comparison_operator"] == "GreaterThanThreshold", a["_address"]
            assert is_var(a["threshold"]), f"{a['_address']}: threshold must be a variable"


def check_lambda_alarms(m: Module) -> None:
    for metric in ("Errors", "Throttles"):
        found = find_alarms(m, "AWS/Lambda", metric)
        for fn in m.resources_of("aws_lambda_function"):
            matching = [a for a in found if refs_of_type(a.get("dimensions"), "aws_lambda_function") == {fn}]
            assert matching, f"no Lambda {metric} alarm on function {fn}"


def check_custom_metric_alarms(m: Module) -> None:
    assert m.variable_default("metrics_namespace") == "crcr"
    for metric, comparison in CUSTOM_METRICS.items():
        found = find_alarms(m, "crcr", metric)
        assert found, f"no alarm on custom metric {metric}"
        for a in found:
            assert a["comparison_operator"] == comparison, f"{a['_address']}: {a['comparison_operator']}"
            assert is_var(a["threshold"]), f"{a['_address']}: threshold must be a variable"


def check_alarm_actions(m: Module) -> None:
    all_alarms = alarms(m)
    assert all_alarms
    for a in all_alarms:
        for key in ("alarm_actions", "ok_actions"):
            assert m.resolve(a.get(key)) == ["${var.alarm_sns_topic_arn}"], (
                f"{a['_address']}: {key} must notify var.alarm_sns_topic_arn"
            )


def check_iam_statements(m: Module) -> None:
    """No Allow statement uses a wildcard action; Deny wildcards only for the
    TLS guard; "*" resources only for actions without resource-level permissions."""
    docs = m.data.get("aws_iam_policy_document", {})
    assert docs, "no aws_iam_policy_document"
    for dname, doc in docs.items():
        for st in statements(doc):
            where = f"policy document {dname}, statement {st.get('sid', '?')}"
            assert "not_actions" not in st, f"{where}: not_actions"
            actions = st.get("actions", [])
            assert actions, f"{where}: no actions"
            effect = st.get("effect", "Allow")
            for action in actions:
                wildcard = action == "*" or "*" in action
                if effect == "Allow":
                    assert not wildcard, f"{where}: wildcard action {action!r}"
                else:
                    assert not wildcard or any(
                        c.get("variable") == "aws:SecureTransport" for c in st.get("condition", [])
                    ), f"{where}: wildcard Deny outside the TLS guard"
            if effect == "Allow" and "*" in st.get("resources", []):
                assert set(actions) <= RESOURCELESS_ACTIONS, f"{where}: resource \"*\" for {actions}"
    # Every policy attached anywhere comes from those documents (so the scan
    # above sees every statement), and no managed policy is attached.
    for rtype, attr in (
        ("aws_iam_role_policy", "policy"),
        ("aws_sqs_queue_policy", "policy"),
        ("aws_iam_role", "assume_role_policy"),
    ):
        for name, body in m.resources_of(rtype).items():
            assert data_refs(body[attr]), f"{rtype}.{name}: {attr} must come from an aws_iam_policy_document"
    for rtype in ("aws_iam_role_policy_attachment", "aws_iam_policy_attachment", "aws_iam_policy"):
        assert not m.resources_of(rtype), f"{rtype} used: keep permissions in the per-function documents"


def check_roles_match_usage(m: Module) -> None:
    """Each function has its own role, allowed exactly on the queues and tables
    its environment names (and its own log group)."""
    roles = {fn: function_role(m, fn) for fn in FUNCTIONS}
    assert len(set(roles.values())) == len(FUNCTIONS), f"functions share a role: {roles}"
    consumed = consumers(m)
    for fn in FUNCTIONS:
        stmts = policy_doc_of_role(m, roles[fn])
        env = function_environment(m, fn)
        for rtype in ("aws_sqs_queue", "aws_dynamodb_table"):
            in_env = refs_of_type(env, rtype)
            allowed = granted(stmts, rtype)
            assert set(allowed) == in_env, (
                f"{fn}: IAM grants {rtype} {sorted(allowed)} but the environment names {sorted(in_env)}"
            )
        sqs = granted(stmts, "aws_sqs_queue")
        for q, actions in sqs.items():
            if consumed.get(q) == fn:
                need = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
                assert need <= actions, f"{fn}: consuming {q} needs {sorted(need - actions)}"
            else:
                assert "sqs:ReceiveMessage" not in actions, f"{fn}: receives from {q} it does not consume"
                assert actions == {"sqs:SendMessage"}, f"{fn}: on {q} only SendMessage, got {sorted(actions)}"
        logs = granted(stmts, "aws_cloudwatch_log_group")
        assert set(logs) == {fn}, f"{fn}: writes to log groups {sorted(logs)}"
        secret = [st for st in stmts if "secretsmanager:GetSecretValue" in st.get("actions", [])]
        assert secret and all(st["resources"] == ["${var.secrets_arn}"] for st in secret), (
            f"{fn}: GetSecretValue must be on var.secrets_arn only"
        )


def check_payload_retention(m: Module) -> None:
    """Claim-checked payloads outlive every message naming them (issue 12):
    ingest (which writes them) gets CRCR_PAYLOAD_TTL_SECS derived from the
    DLQ retention, at least that plus the source queues' retention (a message
    `crcr dlq replay` sends back lives that long again) plus a margin."""
    ttl = function_environment(m, "ingest").get("CRCR_PAYLOAD_TTL_SECS")
    assert ttl is not None, "ingest: CRCR_PAYLOAD_TTL_SECS missing (claim-checked payloads would expire after the default)"
    inner = re.fullmatch(r"\$\{tostring\((.*)\)\}", ttl.strip()) if isinstance(ttl, str) else None
    assert inner, f"ingest: CRCR_PAYLOAD_TTL_SECS must be tostring(<number>), got {ttl!r}"
    seconds = m.resolve_number("${%s}" % inner.group(1))
    assert "dlq_retention_seconds" in str(m.local("payload_retention_seconds")), (
        "local.payload_retention_seconds must be derived from local.dlq_retention_seconds (one setting)"
    )
    dlq = m.resolve_number("${local.dlq_retention_seconds}")
    for q in ("dispatch", "reconcile"):
        source = m.resolve_number(queues(m)[q]["message_retention_seconds"])
        assert seconds >= dlq + source + 3600, (
            f"payload TTL {seconds} s < DLQ retention {dlq} s + {q} queue retention {source} s + margin"
        )


def check_environment(m: Module) -> None:
    envs = {fn: function_environment(m, fn) for fn in FUNCTIONS}
    union = set().union(*envs.values())
    assert union == ENVIRONMENT, f"environment keys differ: extra {sorted(union - ENVIRONMENT)}, missing {sorted(ENVIRONMENT - union)}"
    consumed = consumers(m)
    dlqs = dlq_sources(m)
    for fn, env in envs.items():
        for key in ("CRCR_SECRETS_ARN", "CRCR_UPSTREAM_REPO", "CRCR_GITHUB_APP_ID"):
            assert key in env, f"{fn}: {key} missing"
        assert env["CRCR_SECRETS_ARN"] == "${var.secrets_arn}"
        # A DLQ URL only for the function consuming that DLQ's source queue.
        for key, value in env.items():
            for q in refs_of_type(value, "aws_sqs_queue"):
                if q in dlqs:
                    assert all(consumed.get(src) == fn for src in dlqs[q]), f"{fn}: {key} names DLQ {q} it has no business with"
        consumes = fn in consumed.values()
        assert ("CRCR_MAX_RECEIVE_COUNT" in env) == consumes, f"{fn}: CRCR_MAX_RECEIVE_COUNT iff it consumes a queue"
        if consumes:
            assert "var.max_receive_count" in env["CRCR_MAX_RECEIVE_COUNT"]
    hud = [fn for fn, env in envs.items() if "CRCR_HUD_URL" in env]
    assert hud == ["reconciler"], f"CRCR_HUD_URL given to {hud}: only the reconciler talks to HUD"
    oidc = [fn for fn, env in envs.items() if "CRCR_OIDC_AUDIENCE" in env]
    assert oidc == ["ingest"], f"CRCR_OIDC_AUDIENCE given to {oidc}: only ingest verifies callback tokens"
    # The sweep's outbox lease must cover a whole sweep: the reconciler's timeout.
    lease = [fn for fn, env in envs.items() if "CRCR_OUTBOX_LEASE_SECS" in env]
    assert lease == ["reconciler"], f"CRCR_OUTBOX_LEASE_SECS given to {lease}: only the reconciler sweeps"
    assert "var.reconciler_timeout" in envs["reconciler"]["CRCR_OUTBOX_LEASE_SECS"]
    # GitHub's 100 concurrent requests are shared by every instance that
    # calls GitHub: each gets its share of them, from both consumers' concurrency.
    callers = sorted(fn for fn, env in envs.items() if "CRCR_GITHUB_MAX_IN_FLIGHT" in env)
    assert callers == ["dispatcher", "reconciler"], f"CRCR_GITHUB_MAX_IN_FLIGHT given to {callers}"
    share = m.locals["github_max_in_flight"]
    for var in ("var.dispatcher_max_concurrency", "var.reconciler_max_concurrency", "100"):
        assert var in share, f"github_max_in_flight must divide GitHub's 100 by every caller: {share}"
    for fn in callers:
        assert envs[fn]["CRCR_GITHUB_MAX_IN_FLIGHT"] == "${local.github_max_in_flight}", envs[fn]


def check_functions(m: Module) -> None:
    fns = m.resources_of("aws_lambda_function")
    assert set(fns) == set(FUNCTIONS), f"functions {sorted(fns)}"
    arch = m.variables["architecture"]
    assert arch.get("default") in ("x86_64", "arm64")
    cond = " ".join(v["condition"] for v in arch.get("validation", []))
    assert "x86_64" in cond and "arm64" in cond, "architecture validation must name x86_64 and arm64"
    groups = m.resources_of("aws_cloudwatch_log_group")
    for name, fn in fns.items():
        assert fn["function_name"] == "${var.name_prefix}-" + name
        assert fn.get("runtime") == "provided.al2023", f"{name}: runtime"
        assert fn.get("handler") == "bootstrap", f"{name}: handler"
        assert fn.get("architectures") == ["${var.architecture}"], f"{name}: architectures"
        assert fn.get("filename") == "${var.%s_zip}" % name, f"{name}: filename must be var.{name}_zip"
        assert "var.%s_zip" % name in fn.get("source_code_hash", ""), f"{name}: source_code_hash"
        assert is_var(fn.get("timeout")), f"{name}: timeout must be a variable"
        assert fn.get("tracing_config", [{}])[0].get("mode") == "Active", f"{name}: tracing"
        group = groups.get(name)
        assert group is not None, f"{name}: no log group"
        assert group["name"] == "/aws/lambda/${var.name_prefix}-" + name, f"{name}: log group name"
        assert group.get("retention_in_days") == "${var.log_retention_days}", f"{name}: log retention"
        assert "aws_cloudwatch_log_group.%s" % name in " ".join(fn.get("depends_on", [])), (
            f"{name}: must depend on its log group (else Lambda creates one without retention)"
        )


def check_ingest_endpoint(m: Module) -> None:
    var = m.variables["ingest_endpoint"]
    cond = " ".join(v["condition"] for v in var["validation"])
    assert "function_url" in cond and "http_api" in cond, "ingest_endpoint validation must allow both endpoints"
    url = m.resource("aws_lambda_function_url", "ingest")
    assert url["authorization_type"] == "NONE", "Function URL: auth is HMAC/OIDC in code, so NONE"
    assert refs_of_type(url["function_name"], "aws_lambda_function") == {"ingest"}, "Function URL not on ingest"
    perms = m.resources_of("aws_lambda_permission")
    url_perm = [p for p in perms.values() if p.get("action") == "lambda:InvokeFunctionUrl"]
    assert url_perm and url_perm[0].get("function_url_auth_type") == "NONE", "no lambda:InvokeFunctionUrl permission"
    invoke = [p for p in perms.values() if p.get("invoked_via_function_url") is True]
    assert invoke and invoke[0]["action"] == "lambda:InvokeFunction", "no lambda:InvokeFunction via Function URL"
    routes = m.local("ingest_routes")
    assert {"POST /github/webhook", "POST /github/callback"} <= set(routes), f"HTTP API routes {routes}"
    api_perm = [p for p in perms.values() if p.get("principal") == "apigateway.amazonaws.com"]
    assert api_perm and "source_arn" in api_perm[0], "no API Gateway permission limited by source_arn"
    base = m.local("ingest_base_url")
    assert "aws_lambda_function_url.ingest" in base and "aws_apigatewayv2_api.ingest" in base, base
    assert m.outputs["webhook_url"]["value"] == "${local.ingest_base_url}/github/webhook", "webhook_url output"
    assert m.outputs["callback_url"]["value"] == "${local.ingest_base_url}/github/callback", "callback_url output"


def check_schedules(m: Module) -> None:
    want = {"sweep": "rate(5 minutes)", "redeliver": "rate(15 minutes)"}
    rules = {}
    for rname, body in m.resources_of("aws_cloudwatch_event_rule").items():
        for key, inst in m.instances(body):
            rules[key] = (rname, inst)
    assert set(rules) == set(want), f"schedules {sorted(rules)}"
    for key, (rname, inst) in rules.items():
        got = m.resolve(inst["schedule_expression"])
        assert got == want[key], f"schedule {key}: {got!r}, want {want[key]!r}"
    targets = {}
    for tname, body in m.resources_of("aws_cloudwatch_event_target").items():
        for key, inst in m.instances(body):
            task = re.search(r'task\s*=\s*"(\w+)"', inst["input"])
            assert task, f"target {tname}[{key}]: input {inst['input']!r}"
            targets[task.group(1)] = inst
            assert refs_of_type(inst["arn"], "aws_lambda_function") == {"reconciler"}
    assert set(targets) == set(want), f"schedule inputs {sorted(targets)}"
    allowed = set()
    for pname, body in m.resources_of("aws_lambda_permission").items():
        if body.get("principal") != "events.amazonaws.com":
            continue
        for key, inst in m.instances(body):
            assert refs_of_type(inst["function_name"], "aws_lambda_function") == {"reconciler"}
            assert "aws_cloudwatch_event_rule" in inst["source_arn"] and key in inst["source_arn"]
            allowed.add(key)
    assert allowed == set(want), f"lambda permissions for schedules: {sorted(allowed)}"


def check_outputs(m: Module) -> None:
    need = {
        "webhook_url",
        "callback_url",
        "dispatch_queue_url",
        "dispatch_dlq_url",
        "reconcile_queue_url",
        "reconcile_dlq_url",
        "table_names",
        "function_names",
    }
    assert need <= set(m.outputs), f"missing outputs {sorted(need - set(m.outputs))}"


def check_checkov_skips(root: Path) -> int:
    """Every checkov skip names a check and gives a reason."""
    count = 0
    for tf in sorted(root.rglob("*.tf")):
        for n, line in enumerate(tf.read_text(encoding="utf-8").splitlines(), 1):
            if "checkov:skip" not in line:
                continue
            count += 1
            assert re.search(r"#\s*checkov:skip=CKV2?_[A-Z]+_\d+:\S.{14,}", line), (
                f"{tf.relative_to(root)}:{n}: checkov skip without a check id and a reason"
            )
    return count


# --- tests on the real files ---------------------------------------------------------------


ALL_TF = sorted(p for p in INFRA.rglob("*.tf") if ".terraform" not in p.parts)


def test_tf_files_found():
    assert len(ALL_TF) >= 10, f"only {len(ALL_TF)} .tf files under {INFRA}"


@pytest.mark.parametrize("path", ALL_TF, ids=lambda p: str(p.relative_to(INFRA)))
def test_tf_file_parses(path):
    doc = parse_file(path)
    assert doc, f"{path} is empty"


@pytest.fixture(scope="module")
def mod() -> Module:
    return load_module(MODULE_DIR)


CHECKS = [
    check_queues_have_dlqs,
    check_dlq_retention,
    check_payload_retention,
    check_dlq_message_size,
    check_queue_encryption,
    check_queue_tls_policies,
    check_event_source_mappings,
    check_visibility_timeouts,
    check_tables_exist,
    check_table_keys,
    check_index_queries,
    check_table_actions,
    check_tables_pitr,
    check_tables_ttl,
    check_tables_sse,
    check_dlq_alarms,
    check_queue_age_alarms,
    check_lambda_alarms,
    check_custom_metric_alarms,
    check_alarm_actions,
    check_iam_statements,
    check_roles_match_usage,
    check_environment,
    check_functions,
    check_ingest_endpoint,
    check_schedules,
    check_outputs,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_module(mod, check):
    check(mod)


def test_visibility_timeouts_resolve_to_six_times(mod):
    # The concrete numbers behind check_visibility_timeouts with the defaults.
    assert mod.resolve_number(mod.resource("aws_sqs_queue", "dispatch")["visibility_timeout_seconds"]) == 6 * 60
    assert mod.resolve_number(mod.resource("aws_sqs_queue", "reconcile")["visibility_timeout_seconds"]) == 6 * 120


def test_checkov_skips_have_reasons():
    assert check_checkov_skips(INFRA) > 0


def test_versions_pin_aws_provider():
    for d in (MODULE_DIR, EXAMPLE_DIR):
        m = load_module(d)
        pins = [
            p["aws"]
            for t in m.terraform
            for p in t.get("required_providers", [])
            if "aws" in p
        ]
        assert pins, f"{d}: no aws provider pin"
        assert pins[0]["source"] == "hashicorp/aws"
        assert re.search(r"[<~]", pins[0]["version"]), f"{d}: aws provider version has no upper bound"


def test_example_uses_module():
    ex = load_module(EXAMPLE_DIR)
    mod_ = load_module(MODULE_DIR)
    call = ex.module_calls["crcr"]
    assert call["source"] == "../../modules/crcr"
    required = {name for name, v in mod_.variables.items() if "default" not in v}
    missing = required - set(call)
    assert not missing, f"example does not set required variables {sorted(missing)}"
    unknown = set(call) - set(mod_.variables) - {"source", "providers", "depends_on"}
    assert not unknown, f"example sets unknown variables {sorted(unknown)}"
    for fn in FUNCTIONS:
        default = ex.variable_default(f"{fn}_zip")
        assert default == f"../../../target/lambda/{fn}/bootstrap.zip", default
    assert {"webhook_url", "callback_url"} <= set(ex.outputs)


# --- the checks can fail -----------------------------------------------------------------------
# Each mutation edits one file of a copy of the module; the named check must then fail.

MUTATIONS = [
    ("no partial batch response", "lambda.tf",
     'function_response_types = ["ReportBatchItemFailures"]', "function_response_types = []",
     check_event_source_mappings),
    ("batch size hard-coded", "lambda.tf",
     "batch_size              = var.dispatcher_batch_size", "batch_size              = 10",
     check_event_source_mappings),
    ("mapping removed", "lambda.tf",
     'resource "aws_lambda_event_source_mapping" "reconcile"', 'resource "null_resource" "reconcile"',
     check_event_source_mappings),
    ("visibility 5x", "locals.tf",
     "6 * var.dispatcher_timeout", "5 * var.dispatcher_timeout", check_visibility_timeouts),
    ("visibility literal too low", "locals.tf",
     "6 * var.reconciler_timeout", "700", check_visibility_timeouts),
    ("queue without DLQ", "sqs.tf",
     "deadLetterTargetArn = aws_sqs_queue.reconcile_dlq.arn", "deadLetterTargetArn = aws_sqs_queue.dispatch_dlq.arn",
     check_queues_have_dlqs),
    ("new queue without DLQ", "sqs.tf",
     "# Each DLQ accepts", 'resource "aws_sqs_queue" "extra" {\n  name = "x"\n}\n# Each DLQ accepts',
     check_queues_have_dlqs),
    ("max receive count literal", "sqs.tf",
     "maxReceiveCount     = var.max_receive_count", "maxReceiveCount     = 50", check_queues_have_dlqs),
    ("payload TTL only the DLQ's", "locals.tf",
     "local.dlq_retention_seconds + var.queue_message_retention_seconds + 86400", "local.dlq_retention_seconds",
     check_payload_retention),
    ("payload TTL not passed", "lambda.tf",
     "    CRCR_PAYLOAD_TTL_SECS    = tostring(local.payload_retention_seconds)\n", "", check_payload_retention),
    ("DLQ retention 4 days", "locals.tf",
     "dlq_retention_seconds = 1209600", "dlq_retention_seconds = 345600", check_dlq_retention),
    ("DLQ as small as its source", "locals.tf",
     "dlq_max_message_size = 1048576", "dlq_max_message_size = 262144", check_dlq_message_size),
    ("queue unencrypted", "sqs.tf",
     "sqs_managed_sse_enabled   = true # SSE-SQS", "sqs_managed_sse_enabled   = false # SSE-SQS",
     check_queue_encryption),
    ("TLS guard inverted", "sqs.tf", 'values   = ["false"]', 'values   = ["true"]', check_queue_tls_policies),
    ("TLS guard for one queue dropped", "sqs.tf",
     "    reconcile_dlq = aws_sqs_queue.reconcile_dlq\n", "", check_queue_tls_policies),
    ("PITR off", "dynamodb.tf",
     "point_in_time_recovery {\n    enabled = true", "point_in_time_recovery {\n    enabled = false",
     check_tables_pitr),
    ("TTL attribute renamed", "dynamodb.tf", 'attribute_name = "expires_at"', 'attribute_name = "expiry"',
     check_tables_ttl),
    ("SSE off", "dynamodb.tf",
     "server_side_encryption {\n    enabled = true", "server_side_encryption {\n    enabled = false",
     check_tables_sse),
    ("wrong range key type", "dynamodb.tf",
     'name = "chunk"\n    type = "N"', 'name = "chunk"\n    type = "S"', check_table_keys),
    ("GSI removed", "dynamodb.tf", 'name            = "by_status"', 'name            = "by_state"',
     check_table_keys),
    ("by_head_sha GSI renamed", "dynamodb.tf", 'name            = "by_head_sha"', 'name            = "by_commit"',
     check_table_keys),
    ("by_head_sha sorted by update", "dynamodb.tf",
     'hash_key        = "head_sha"\n    range_key       = "created_at_ms"',
     'hash_key        = "head_sha"\n    range_key       = "dispatched_at_ms"', check_table_keys),
    ("GSI projects keys only", "dynamodb.tf", 'projection_type = "ALL"', 'projection_type = "KEYS_ONLY"',
     check_table_keys),
    ("GSI added to the Terraform only", "dynamodb.tf",
     'hash_key                    = "pk"\n  deletion_protection_enabled = var.deletion_protection_enabled\n',
     'hash_key                    = "pk"\n  deletion_protection_enabled = var.deletion_protection_enabled\n\n'
     '  attribute {\n    name = "value"\n    type = "S"\n  }\n\n'
     '  global_secondary_index {\n    name            = "by_value"\n    hash_key        = "value"\n'
     '    projection_type = "ALL"\n  }\n',
     check_table_keys),
    # Drift from the other side: tables.json changes, dynamodb.tf does not.
    ("schema: range key type", "tables.json",
     '"name": "chunk", "type": "N"', '"name": "chunk", "type": "S"', check_table_keys),
    ("schema: range key dropped", "tables.json",
     '"range_key": {"name": "target", "type": "S"}', '"range_key": null', check_table_keys),
    ("schema: hash key renamed", "tables.json",
     '"hash_key": {"name": "delivery_id", "type": "S"}', '"hash_key": {"name": "delivery", "type": "S"}',
     check_table_keys),
    ("schema: GSI renamed", "tables.json", '"name": "by_head_sha"', '"name": "by_commit"', check_table_keys),
    ("schema: GSI range key", "tables.json",
     '"range_key": {"name": "updated_at", "type": "N"}', '"range_key": {"name": "updated_at_ms", "type": "N"}',
     check_table_keys),
    ("schema: GSI projection", "tables.json", '"projection_type": "ALL"', '"projection_type": "KEYS_ONLY"',
     check_table_keys),
    ("schema: GSI dropped", "tables.json",
     '"global_secondary_indexes": [\n        {\n          "name": "by_status",',
     '"global_secondary_indexes": [],\n      "_dropped": [\n        {\n          "name": "by_status",',
     check_table_keys),
    ("schema: table added", "tables.json", '"tables": [',
     '"tables": [\n    {"resource": "extra", "name_suffix": "extra", "hash_key": {"name": "pk", "type": "S"}},',
     check_tables_exist),
    ("schema: table added (keys)", "tables.json", '"tables": [',
     '"tables": [\n    {"resource": "extra", "name_suffix": "extra", "hash_key": {"name": "pk", "type": "S"}},',
     check_table_keys),
    ("schema: name suffix", "tables.json", '"name_suffix": "kv"', '"name_suffix": "state"', check_tables_exist),
    ("schema: TTL attribute", "tables.json", '"ttl_attribute": "expires_at"', '"ttl_attribute": "expiry"',
     check_tables_ttl),
    ("schema: no TTL", "tables.json", '"ttl_attribute": "expires_at"', '"ttl_attribute": null', check_tables_ttl),
    ("by_head_sha Query not granted", "iam.tf",
     '      "${aws_dynamodb_table.dispatches.arn}/index/by_head_sha",\n', "", check_index_queries),
    ("lease release not granted", "iam.tf",
     '"dynamodb:UpdateItem", "dynamodb:DeleteItem"]', '"dynamodb:UpdateItem"]', check_table_actions),
    ("table missing", "dynamodb.tf", 'resource "aws_dynamodb_table" "kv"', 'resource "aws_dynamodb_table" "state"',
     check_tables_exist),
    ("deletion protection fixed", "dynamodb.tf",
     "deletion_protection_enabled = var.deletion_protection_enabled", "deletion_protection_enabled = false",
     check_tables_exist),
    ("wildcard action", "iam.tf", 'actions   = ["sqs:SendMessage"]', 'actions   = ["sqs:*"]',
     check_iam_statements),
    ("star action", "iam.tf", 'actions   = ["dynamodb:PutItem"]', 'actions   = ["*"]', check_iam_statements),
    ("star resource", "iam.tf",
     "resources = [aws_dynamodb_table.payloads.arn]", 'resources = ["*"]', check_iam_statements),
    ("IAM narrower than environment", "iam.tf",
     "resources = [aws_sqs_queue.dispatch.arn, aws_sqs_queue.reconcile.arn]",
     "resources = [aws_sqs_queue.dispatch.arn]", check_roles_match_usage),
    ("IAM wider than environment", "iam.tf",
     "resources = [aws_sqs_queue.dispatch_dlq.arn]",
     "resources = [aws_sqs_queue.dispatch_dlq.arn, aws_sqs_queue.reconcile_dlq.arn]", check_roles_match_usage),
    ("secret wildcard", "iam.tf", "resources = [var.secrets_arn]", 'resources = ["*"]', check_roles_match_usage),
    ("DLQ alarm for one DLQ dropped", "alarms.tf",
     "    reconcile = aws_sqs_queue.reconcile_dlq.name\n", "", check_dlq_alarms),
    ("DLQ alarm threshold", "alarms.tf",
     'comparison_operator = "GreaterThanThreshold"\n  threshold           = 0\n  treat_missing_data  = "notBreaching"\n  alarm_actions       = local.alarm_actions\n  ok_actions          = local.alarm_actions\n  tags                = var.tags\n}\n\n# The oldest',
     'comparison_operator = "GreaterThanThreshold"\n  threshold           = 10\n  treat_missing_data  = "notBreaching"\n  alarm_actions       = local.alarm_actions\n  ok_actions          = local.alarm_actions\n  tags                = var.tags\n}\n\n# The oldest',
     check_dlq_alarms),
    ("queue age alarm dropped", "alarms.tf", '"ApproximateAgeOfOldestMessage"', '"NumberOfMessagesSent"',
     check_queue_age_alarms),
    ("throttles alarm dropped", "alarms.tf", '"Throttles"', '"Invocations"', check_lambda_alarms),
    ("rate limit alarm renamed", "alarms.tf", '"GitHubRateLimitRemaining"', '"GitHubRateLimit"',
     check_custom_metric_alarms),
    ("rate limit alarm direction", "alarms.tf", '"LessThanThreshold"', '"GreaterThanThreshold"',
     check_custom_metric_alarms),
    ("alarm without ok action", "alarms.tf", "ok_actions          = local.alarm_actions", "ok_actions          = []",
     check_alarm_actions),
    ("HUD URL to everyone", "lambda.tf",
     "    CRCR_OIDC_AUDIENCE       = var.oidc_audience\n",
     "    CRCR_OIDC_AUDIENCE       = var.oidc_audience\n    CRCR_HUD_URL             = var.hud_url\n",
     check_environment),
    ("env var dropped", "lambda.tf", "    CRCR_RECONCILE_DLQ_URL   = aws_sqs_queue.reconcile_dlq.url\n", "",
     check_environment),
    ("wrong runtime", "lambda.tf", 'runtime          = "provided.al2023"', 'runtime          = "provided.al2"',
     check_functions),
    ("no log group dependency", "lambda.tf",
     "depends_on = [aws_cloudwatch_log_group.ingest, aws_iam_role_policy.ingest]",
     "depends_on = [aws_iam_role_policy.ingest]", check_functions),
    ("URL with IAM auth", "endpoint.tf",
     'authorization_type = "NONE" # HMAC', 'authorization_type = "AWS_IAM" # HMAC', check_ingest_endpoint),
    ("schedule input wrong", "schedules.tf", "input = jsonencode({ task = each.key })",
     'input = jsonencode({ task = "sweep" })', check_schedules),
    ("sweep rate changed", "variables.tf", 'default     = "rate(5 minutes)"', 'default     = "rate(1 hour)"',
     check_schedules),
]


def mutated(tmp_path: Path, filename: str, old: str, new: str) -> Module:
    copy = tmp_path / "crcr"
    shutil.copytree(MODULE_DIR, copy)
    path = copy / filename
    text = path.read_text(encoding="utf-8")
    assert old in text, f"mutation target not found in {filename}: {old!r} (update the mutation)"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return load_module(copy)


@pytest.mark.parametrize("label,filename,old,new,check", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_check_catches_mutation(tmp_path, label, filename, old, new, check):
    m = mutated(tmp_path, filename, old, new)
    with pytest.raises(AssertionError):
        check(m)


def test_checkov_skip_check_catches_missing_reason(tmp_path):
    (tmp_path / "x.tf").write_text('resource "aws_sqs_queue" "q" {\n  #checkov:skip=CKV_AWS_27\n}\n')
    with pytest.raises(AssertionError):
        check_checkov_skips(tmp_path)
