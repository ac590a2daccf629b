#!/usr/bin/env python3
"""Lambda init time of a crcr function binary: from process start until it
first polls the Runtime API (`GET /2018-06-01/runtime/invocation/next`, the
moment Lambda's Init phase ends: AWS Lambda developer guide, "Using the
Lambda runtime API for custom runtimes" and "Understand the Lambda execution
environment lifecycle").

A local fake Runtime API (this script) records the first poll; the function
runs against moto's server (SQS, DynamoDB, Secrets Manager) with the
environment infra/modules/crcr/lambda.tf gives the ingest function, except
that the allowlist is a local file (so no run waits on github.com).

Usage (moto running, e.g. `.venv/bin/moto_server -H 127.0.0.1 -p 5000`):

    cargo build --release -p crcr-ingest
    .venv/bin/python bench/init/measure_init.py target/release/crcr-ingest --runs 30

Prints the p50 / p90 / min / max init time in ms over the runs. Needs boto3
and cryptography (infra/tests/requirements.txt, in the venv scripts/test makes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEXT = "/2018-06-01/runtime/invocation/next"


class RuntimeApi(ThreadingHTTPServer):
    """The Runtime API's `next` endpoint: notes when it is first asked, then
    holds the request open (as Lambda does between invocations)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.polled = threading.Event()
        self.polled_at = 0.0

    def reset(self) -> None:
        self.polled.clear()
        self.polled_at = 0.0


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.startswith(NEXT):
            server: RuntimeApi = self.server  # type: ignore[assignment]
            if not server.polled.is_set():
                server.polled_at = time.monotonic()
                server.polled.set()
            time.sleep(30)  # no invocation: the function waits, then is killed
        self.send_response(404)
        self.end_headers()

    def log_message(self, *_args) -> None:
        pass


def resources(moto: str) -> dict[str, str]:
    """The ingest function's queues, tables and secret on moto; returns its CRCR_* environment."""
    import boto3
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    kw = dict(endpoint_url=moto, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    run = uuid.uuid4().hex[:10]
    sqs, ddb, sm = boto3.client("sqs", **kw), boto3.client("dynamodb", **kw), boto3.client("secretsmanager", **kw)
    queue = sqs.create_queue(QueueName=f"crcr-init-{run}-dispatch")["QueueUrl"]
    reconcile = sqs.create_queue(QueueName=f"crcr-init-{run}-reconcile")["QueueUrl"]
    tables = {}
    for name, keys in {
        "dispatches": (("delivery_id", "S"), ("target", "S")),
        "payloads": (("key", "S"), ("chunk", "N")),
        "jobs": (("pk", "S"), ("sk", "S")),
        "kv": (("pk", "S"),),
    }.items():
        tables[name] = f"crcr-init-{run}-{name}"
        ddb.create_table(
            TableName=tables[name],
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": k, "KeyType": t} for (k, _), t in zip(keys, ("HASH", "RANGE"))],
            AttributeDefinitions=[{"AttributeName": k, "AttributeType": t} for k, t in keys],
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    value = {"webhook_secret": "init-" + run, "github_app_private_key": key.decode()}
    arn = sm.create_secret(Name=f"crcr/init-{run}", SecretString=json.dumps(value))["ARN"]
    return {
        "CRCR_UPSTREAM_REPO": "pytorch/pytorch",
        "CRCR_GITHUB_APP_ID": "12345",
        "CRCR_DISPATCH_QUEUE_URL": queue,
        "CRCR_RECONCILE_QUEUE_URL": reconcile,
        "CRCR_DISPATCH_TABLE": tables["dispatches"],
        "CRCR_PAYLOAD_TABLE": tables["payloads"],
        "CRCR_JOBS_TABLE": tables["jobs"],
        "CRCR_KV_TABLE": tables["kv"],
        "CRCR_SECRETS_ARN": arn,
        "CRCR_METRICS_NAMESPACE": "crcr",
        "CRCR_OIDC_AUDIENCE": "pytorch-cross-repo-ci-relay",
        "CRCR_PAYLOAD_TTL_SECS": "1728000",
        "CRCR_AWS_ENDPOINT_URL": moto,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary", type=Path)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--moto", default=os.environ.get("CRCR_TEST_MOTO_URL", "http://127.0.0.1:5000"))
    args = ap.parse_args()

    api = RuntimeApi()
    threading.Thread(target=api.serve_forever, daemon=True).start()
    allowlist = Path(tempfile.mkdtemp()) / "allowlist.yml"
    allowlist.write_text((ROOT / "fixtures" / "allowlist" / "pytorch-allowlist.yml").read_text())
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_LAMBDA_FUNCTION_NAME": "crcr-ingest",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{api.server_address[1]}",
        **resources(args.moto),
        "CRCR_ALLOWLIST_FILE": str(allowlist),
    }
    times = []
    for i in range(args.runs):
        api.reset()
        start = time.monotonic()
        proc = subprocess.Popen([str(args.binary)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not api.polled.wait(timeout=30):
            proc.kill()
            err = proc.communicate()[1].decode(errors="replace")
            print(f"run {i}: the function never polled the Runtime API:\n{err}", file=sys.stderr)
            return 1
        times.append((api.polled_at - start) * 1000)
        proc.kill()
        proc.wait()
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    print(
        f"{args.binary}: init (start -> first Runtime API poll) over {len(times)} runs: "
        f"p50 {statistics.median(times):.1f} ms, p90 {p90:.1f} ms, min {times[0]:.1f} ms, max {times[-1]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
