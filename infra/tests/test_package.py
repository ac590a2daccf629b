"""Checks of the Lambda packages built by scripts/package-lambdas.

1. Each `target/lambda/<function>/bootstrap.zip` holds exactly one regular,
   executable file named `bootstrap`: an ELF executable for the expected
   architecture whose required GLIBC symbol versions (`objdump -T`) are all
   at most the glibc of the `provided.al2023` runtime, and which needs no
   shared library beyond glibc's own and libgcc_s.

   The `provided.al2023` runtime is Amazon Linux 2023
   (https://docs.aws.amazon.com/lambda/latest/dg/runtimes-provided.html),
   whose glibc is 2.34, a core toolchain package kept for the release's
   life (https://docs.aws.amazon.com/linux/al2023/ug/core-glibc.html;
   https://docs.aws.amazon.com/linux/al2023/ug/glibc-gcc-and-binutils.html:
   AL2 2.26 -> AL2023 2.34; the package list has glibc-2.34-*.amzn2023).

2. An end-to-end smoke test of the packaged ingest function (the zip's
   `bootstrap`, run as Lambda runs it) under `cargo lambda watch`'s Lambda
   emulator (runtime API, invoke API, Function URLs), on moto's SQS, DynamoDB
   and Secrets Manager: a real webhook fixture, signed with HMAC-SHA256 by the secret
   stored in Secrets Manager (CRCR_SECRETS_ARN), is sent as a Function URL
   event with a base64-encoded body (`cargo lambda invoke`) and through the
   emulated Function URL path; each gets 202 and exactly one message on the
   queue. A forged signature gets 401 and nothing is enqueued.

Both need what scripts/test sets up (the zips, moto, the venv's
cargo-lambda), so they run only with CRCR_PACKAGE_TESTS=1 (scripts/test's
packaging step sets it) and are skipped otherwise (e.g. in .ci/infra-check,
which runs every test of this directory). With CRCR_PACKAGE_TESTS=1 a missing
zip, tool or server fails; the only skip is the smoke test of zips built for
arm64 (CRCR_LAMBDA_ARCH=arm64), which cannot run on an x86_64 machine.

Environment: CRCR_LAMBDA_DIR (default <target dir>/lambda), CRCR_LAMBDA_ARCH
(x86_64 | arm64, default x86_64), CRCR_TEST_MOTO_URL (default
http://127.0.0.1:5000), CRCR_CARGO_LAMBDA (default: cargo-lambda from
${CRCR_VENV:-.venv}).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ("ingest", "dispatcher", "reconciler")

# glibc of Amazon Linux 2023, the base of the provided.al2023 runtime.
AL2023_GLIBC = (2, 34)

# Shared libraries present on the provided.al2023 base image (glibc's own
# libraries and libgcc_s). Anything else (libssl, libsqlite3, ...) would have
# to be bundled, so it must not be needed.
ALLOWED_NEEDED = {
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libutil.so.1",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}

# ELF e_machine of each Lambda architecture.
ELF_MACHINE = {"x86_64": 62, "arm64": 183}

ENABLED = os.environ.get("CRCR_PACKAGE_TESTS") == "1"
pytestmark = pytest.mark.skipif(
    not ENABLED, reason="packaging checks run from scripts/test (CRCR_PACKAGE_TESTS=1, after scripts/package-lambdas)"
)


# --- 1. the zips ------------------------------------------------------------


def target_dir() -> Path:
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"])
    return ROOT / "target"


def lambda_dir() -> Path:
    return Path(os.environ.get("CRCR_LAMBDA_DIR", target_dir() / "lambda"))


def glibc_versions(objdump_t: str) -> set[tuple[int, ...]]:
    """Every GLIBC_x.y[.z] version named in `objdump -T` output."""
    return {tuple(int(p) for p in m.group(1).split(".")) for m in re.finditer(r"\bGLIBC_(\d+(?:\.\d+)+)\b", objdump_t)}


def needed_libraries(objdump_p: str) -> set[str]:
    return set(re.findall(r"^\s*NEEDED\s+(\S+)\s*$", objdump_p, re.MULTILINE))


def check_glibc(objdump_t: str, limit: tuple[int, int] = AL2023_GLIBC) -> tuple[int, ...]:
    """The highest GLIBC version required; AssertionError when over `limit`."""
    versions = glibc_versions(objdump_t)
    assert versions, "no GLIBC symbol versions: not a glibc-linked binary, or objdump failed"
    highest = max(versions)
    assert highest[:2] <= limit, (
        f"requires GLIBC_{'.'.join(map(str, highest))}, above AL2023's glibc {limit[0]}.{limit[1]}; "
        f"symbols: {sorted(symbols_above(objdump_t, limit))}"
    )
    return highest


def symbols_above(objdump_t: str, limit: tuple[int, int]) -> set[str]:
    out = set()
    for line in objdump_t.splitlines():
        m = re.search(r"\(?GLIBC_(\d+(?:\.\d+)+)\)?\s+(\S+)\s*$", line)
        if m and tuple(int(p) for p in m.group(1).split("."))[:2] > limit:
            out.add(f"{m.group(2)}@GLIBC_{m.group(1)}")
    return out


def objdump(*args: str) -> str:
    exe = shutil.which("objdump")
    assert exe, "objdump not found (binutils)"
    return subprocess.run([exe, *args], check=True, capture_output=True, text=True).stdout


def test_glibc_check_can_fail():
    """The checker itself: a binary needing a newer glibc is refused."""
    ok = "0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.34) __libc_start_main\n"
    new = "0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.38) __isoc23_strtol\n"
    assert check_glibc(ok) == (2, 34)
    with pytest.raises(AssertionError, match=r"GLIBC_2\.38.*__isoc23_strtol@GLIBC_2\.38"):
        check_glibc(ok + new)
    with pytest.raises(AssertionError, match="no GLIBC"):
        check_glibc("")
    assert glibc_versions("(GLIBC_2.2.5) memcpy\n(GLIBC_2.29) pow") == {(2, 2, 5), (2, 29)}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_zip_holds_an_executable_bootstrap_for_al2023(function, tmp_path):
    arch = os.environ.get("CRCR_LAMBDA_ARCH", "x86_64")
    zpath = lambda_dir() / function / "bootstrap.zip"
    assert zpath.is_file(), f"{zpath} is missing: run scripts/package-lambdas first"
    with zipfile.ZipFile(zpath) as z:
        assert z.testzip() is None, f"{zpath}: corrupt member"
        names = z.namelist()
        assert names == ["bootstrap"], f"{zpath} must hold exactly `bootstrap` at its root, holds {names}"
        info = z.getinfo("bootstrap")
        mode = info.external_attr >> 16
        assert info.create_system == 3, f"{zpath}: made on system {info.create_system}, so Lambda ignores its Unix mode"
        assert stat.S_ISREG(mode), f"{zpath}: bootstrap is not a regular file (mode {mode:o})"
        assert mode & 0o111 == 0o111, f"{zpath}: bootstrap is not executable by all (mode {stat.filemode(mode)})"
        binary = tmp_path / "bootstrap"
        binary.write_bytes(z.read(info))

    head = binary.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", "bootstrap is not an ELF file"
    assert head[4] == 2 and head[5] == 1, "bootstrap is not a 64-bit little-endian ELF"
    e_type = int.from_bytes(head[16:18], "little")
    e_machine = int.from_bytes(head[18:20], "little")
    assert e_type in (2, 3), f"bootstrap is not an executable (e_type {e_type})"
    assert e_machine == ELF_MACHINE[arch], f"bootstrap is for machine {e_machine}, not {arch} ({ELF_MACHINE[arch]})"

    highest = check_glibc(objdump("-T", str(binary)))
    needed = needed_libraries(objdump("-p", str(binary)))
    assert needed <= ALLOWED_NEEDED, f"needs libraries absent from provided.al2023: {sorted(needed - ALLOWED_NEEDED)}"
    size = zpath.stat().st_size
    print(
        f"{function}: {zpath.relative_to(ROOT) if zpath.is_relative_to(ROOT) else zpath} "
        f"{size / 1e6:.2f} MB zipped, {binary.stat().st_size / 1e6:.2f} MB unzipped, "
        f"max GLIBC_{'.'.join(map(str, highest))} (AL2023: {AL2023_GLIBC[0]}.{AL2023_GLIBC[1]}), needs {sorted(needed)}"
    )


# --- 2. ingest under `cargo lambda watch` ------------------------------------

FIXTURE = ROOT / "fixtures" / "webhooks" / "pull_request.opened.json"
UPSTREAM = "Codertocat/Hello-World"  # the fixture's repository


def moto_url() -> str:
    return os.environ.get("CRCR_TEST_MOTO_URL", "http://127.0.0.1:5000")


def cargo_lambda() -> list[str]:
    if os.environ.get("CRCR_CARGO_LAMBDA"):
        return [os.environ["CRCR_CARGO_LAMBDA"], "lambda"]
    venv = Path(os.environ.get("CRCR_VENV", ROOT / ".venv"))
    if not venv.is_absolute():
        venv = ROOT / venv
    exe = venv / "bin" / "cargo-lambda"
    assert exe.is_file(), f"{exe} is missing: scripts/package-lambdas installs cargo-lambda into the venv"
    return [str(exe), "lambda"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def function_url_event(body: bytes, headers: dict[str, str]) -> dict:
    """A Lambda Function URL event (payload format 2.0) with a base64 body."""
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/github/webhook",
        "rawQueryString": "",
        "headers": {k.lower(): v for k, v in headers.items()},
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "crcrsmoketest",
            "domainName": "crcrsmoketest.lambda-url.us-east-1.on.aws",
            "domainPrefix": "crcrsmoketest",
            "http": {
                "method": "POST",
                "path": "/github/webhook",
                "protocol": "HTTP/1.1",
                "sourceIp": "140.82.115.1",
                "userAgent": "GitHub-Hookshot/smoke",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }


def webhook_headers(body: bytes, signature: str, delivery: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/smoke",
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-ID": "1",
        "X-Hub-Signature-256": signature,
    }


SCHEMA = ROOT / "infra" / "modules" / "crcr" / "tables.json"


def schema_tables() -> list[dict]:
    """The tables of infra/modules/crcr/tables.json (the schema dynamodb.tf
    is checked against by test_infra.py)."""
    return json.loads(SCHEMA.read_text(encoding="utf-8"))["tables"]


def create_table_request(table: dict, table_name: str) -> dict:
    """DynamoDB CreateTable parameters of one table of tables.json: its keys,
    GSIs and the attribute definitions of all their keys, on demand."""

    def key_schema(obj: dict) -> list[dict]:
        keys = [(obj["hash_key"], "HASH"), (obj.get("range_key"), "RANGE")]
        return [{"AttributeName": k["name"], "KeyType": kt} for k, kt in keys if k]

    attrs: dict[str, str] = {}
    for obj in [table, *(table.get("global_secondary_indexes") or [])]:
        for k in filter(None, (obj["hash_key"], obj.get("range_key"))):
            attrs.setdefault(k["name"], k["type"])
    req = {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": key_schema(table),
        "AttributeDefinitions": [{"AttributeName": n, "AttributeType": t} for n, t in attrs.items()],
    }
    gsis = table.get("global_secondary_indexes") or []
    if gsis:
        req["GlobalSecondaryIndexes"] = [
            {"IndexName": g["name"], "KeySchema": key_schema(g), "Projection": {"ProjectionType": g["projection_type"]}}
            for g in gsis
        ]
    return req


def test_create_table_request_follows_the_schema():
    """The smoke test's tables have the keys and GSIs of tables.json."""
    reqs = {t["resource"]: create_table_request(t, t["resource"]) for t in schema_tables()}
    assert set(reqs) == {"dispatches", "payloads", "jobs", "kv"}
    assert reqs["dispatches"]["KeySchema"] == [
        {"AttributeName": "delivery_id", "KeyType": "HASH"},
        {"AttributeName": "target", "KeyType": "RANGE"},
    ]
    assert reqs["kv"]["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert "GlobalSecondaryIndexes" not in reqs["kv"]
    assert {g["IndexName"] for g in reqs["dispatches"]["GlobalSecondaryIndexes"]} == {"by_dispatch_day", "by_head_sha"}
    assert {a["AttributeName"]: a["AttributeType"] for a in reqs["jobs"]["AttributeDefinitions"]} == {
        "pk": "S", "sk": "S", "status": "S", "updated_at": "N",
    }  # fmt: skip


@pytest.fixture(scope="module")
def aws():
    """moto's SQS, DynamoDB and Secrets Manager, with a queue, the two tables
    ingest names, and the relay's secret."""
    import boto3

    kw = dict(
        endpoint_url=moto_url(),
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
    )
    try:
        urllib.request.urlopen(moto_url() + "/moto-api/", timeout=3).close()
    except OSError as e:
        pytest.fail(f"moto is not reachable at {moto_url()} ({e}); scripts/test starts it")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    run = uuid.uuid4().hex[:10]
    sqs, ddb, sm = boto3.client("sqs", **kw), boto3.client("dynamodb", **kw), boto3.client("secretsmanager", **kw)
    queue = sqs.create_queue(QueueName=f"crcr-smoke-{run}-dispatch")["QueueUrl"]
    reconcile_queue = sqs.create_queue(QueueName=f"crcr-smoke-{run}-reconcile")["QueueUrl"]
    tables = {}
    for table in schema_tables():
        name = table["resource"]
        tables[name] = f"crcr-smoke-{run}-{table['name_suffix']}"
        ddb.create_table(**create_table_request(table, tables[name]))
        if table.get("ttl_attribute"):
            ddb.update_time_to_live(
                TableName=tables[name],
                TimeToLiveSpecification={"Enabled": True, "AttributeName": table["ttl_attribute"]},
            )
    secret = f"smoke-{uuid.uuid4().hex}".encode()
    # The secret as the Terraform's operator fills it: the webhook secret and
    # the App's private key (ingest verifies callbacks' repositories with the App).
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    value = {"webhook_secret": secret.decode(), "github_app_private_key": key.decode()}
    arn = sm.create_secret(Name=f"crcr/smoke-{run}", SecretString=json.dumps(value))["ARN"]
    return {
        "sqs": sqs, "queue": queue, "reconcile_queue": reconcile_queue, "tables": tables,
        "secret": secret, "secret_arn": arn, "kw": kw,
    }  # fmt: skip


def smoke_environment(aws) -> dict[str, str]:
    """The ingest function's CRCR_* environment as infra/modules/crcr/lambda.tf
    sets it, with moto's resources."""
    return {
        "CRCR_UPSTREAM_REPO": UPSTREAM,
        "CRCR_GITHUB_APP_ID": "12345",
        "CRCR_ALLOWLIST_URL": "https://github.com/pytorch/pytorch/blob/main/.github/crcr-allowlist.yml",
        "CRCR_DISPATCH_QUEUE_URL": aws["queue"],
        "CRCR_RECONCILE_QUEUE_URL": aws["reconcile_queue"],
        "CRCR_DISPATCH_TABLE": aws["tables"]["dispatches"],
        "CRCR_PAYLOAD_TABLE": aws["tables"]["payloads"],
        "CRCR_JOBS_TABLE": aws["tables"]["jobs"],
        "CRCR_KV_TABLE": aws["tables"]["kv"],
        "CRCR_SECRETS_ARN": aws["secret_arn"],
        "CRCR_METRICS_NAMESPACE": "crcr",
        "CRCR_OIDC_AUDIENCE": "pytorch-cross-repo-ci-relay",
        "CRCR_PAYLOAD_TTL_SECS": "1728000",
    }


def test_ingest_environment_matches_the_terraform():
    """The smoke test runs the ingest zip with the variables the Terraform
    gives the function: no more, no fewer."""
    text = (ROOT / "infra" / "modules" / "crcr" / "lambda.tf").read_text()
    block = re.search(r"ingest_environment = \{(.*?)\n  \}", text, re.S)
    assert block, "ingest_environment not found in lambda.tf"
    terraform = set(re.findall(r"^\s*(CRCR_[A-Z_]+)\s*=", block.group(1), re.M))
    fake = {"queue": "", "reconcile_queue": "", "tables": {t: "" for t in ("dispatches", "payloads", "jobs", "kv")}, "secret_arn": ""}
    assert set(smoke_environment(fake)) == terraform


@pytest.fixture(scope="module")
def watch(aws, tmp_path_factory):
    """The packaged ingest function (the `bootstrap` from its zip, as Lambda
    runs it) under `cargo lambda watch`'s Lambda runtime emulator, configured
    as the Terraform does: the webhook secret only in Secrets Manager."""
    if os.environ.get("CRCR_LAMBDA_ARCH", "x86_64") != "x86_64" or os.uname().machine != "x86_64":
        pytest.skip("the smoke test runs the x86_64 zip on an x86_64 machine")
    work = tmp_path_factory.mktemp("watch")
    zpath = lambda_dir() / "ingest" / "bootstrap.zip"
    assert zpath.is_file(), f"{zpath} is missing: run scripts/package-lambdas first"
    with zipfile.ZipFile(zpath) as z:
        z.extract("bootstrap", work)
    bootstrap = work / "bootstrap"
    bootstrap.chmod(0o755)

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRCR_", "AWS_LAMBDA_", "RUST_LOG"))}
    env.update(
        AWS_ACCESS_KEY_ID=aws["kw"]["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=aws["kw"]["aws_secret_access_key"],
        AWS_REGION=aws["kw"]["region_name"],
    )
    # The emulator: Lambda's runtime API, the invoke API and Function URLs on one port.
    watch_log = work / "watch.log"
    with open(watch_log, "wb") as out:
        emulator = subprocess.Popen(
            [*cargo_lambda(), "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1", "--invoke-port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    procs = [emulator]
    try:
        wait_listening(port, emulator, watch_log)
        function_env = dict(
            env,
            # what Lambda sets for a function (the emulator's runtime API under /.rt/<function>)
            AWS_LAMBDA_RUNTIME_API=f"http://127.0.0.1:{port}/.rt/ingest",
            AWS_LAMBDA_FUNCTION_NAME="ingest",
            AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
            AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
            # what the Terraform sets (infra/modules/crcr/lambda.tf, ingest_environment;
            # test_ingest_environment_matches_the_terraform checks the names), pointed
            # at moto; GitHub at a closed loopback port: webhooks never call it
            CRCR_AWS_ENDPOINT_URL=moto_url(),
            CRCR_GITHUB_API_URL="http://127.0.0.1:9",
            **smoke_environment(aws),
            RUST_LOG="info",
        )
        function_log = work / "ingest.log"
        with open(function_log, "wb") as out:
            function = subprocess.Popen(
                [str(bootstrap)], cwd=work, env=function_env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        procs.append(function)
        time.sleep(1)
        assert function.poll() is None, f"the ingest bootstrap exited ({function.returncode}):\n{function_log.read_text()[-4000:]}"
        yield {"port": port, "env": env, "logs": (watch_log, function_log), "function": function}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, 15)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, 9)
                    p.wait()
        print(f"logs: {watch_log} {work / 'ingest.log'}")


def wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"cargo lambda watch exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"cargo lambda watch not listening after {timeout} s:\n{log.read_text()[-4000:]}"
            time.sleep(0.2)


def logs(watch) -> str:
    return "\n".join(f"--- {p.name}:\n{p.read_text()[-3000:]}" for p in watch["logs"])


def queued(aws) -> list[dict]:
    """Drains the queue: the bodies of every message on it."""
    bodies = []
    for _ in range(5):
        r = aws["sqs"].receive_message(QueueUrl=aws["queue"], MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60)
        for m in r.get("Messages", []):
            bodies.append(json.loads(m["Body"]))
            aws["sqs"].delete_message(QueueUrl=aws["queue"], ReceiptHandle=m["ReceiptHandle"])
        if not r.get("Messages"):
            break
    return bodies


def invoke(watch, event: dict, tmp_path: Path) -> dict:
    """`cargo lambda invoke ingest` with the event: the function's response."""
    data = tmp_path / f"event-{uuid.uuid4().hex}.json"
    data.write_text(json.dumps(event))
    r = subprocess.run(
        [*cargo_lambda(), "invoke", "ingest", "--invoke-address", "127.0.0.1", "--invoke-port", str(watch["port"]),
         "--data-file", str(data), "--output-format", "json"],
        cwd=ROOT, env=watch["env"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, f"cargo lambda invoke failed:\n{r.stderr}\n{logs(watch)}"
    response = json.loads(r.stdout)
    assert "statusCode" in response, response
    return response


def post_function_url(watch, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST through the emulator's Function URL path (/lambda-url/<function>/...)."""
    url = f"http://127.0.0.1:{watch['port']}/lambda-url/ingest/github/webhook"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def response_body(response: dict) -> bytes:
    body = response.get("body") or ""
    return base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()


def test_ingest_under_cargo_lambda_watch_base64_function_url_event(aws, watch, tmp_path):
    body = FIXTURE.read_bytes()
    assert queued(aws) == []

    forged = invoke(watch, function_url_event(body, webhook_headers(body, sign(b"not-the-secret", body), str(uuid.uuid4()))), tmp_path)
    assert forged["statusCode"] == 401, forged
    assert queued(aws) == [], "a forged delivery was enqueued"

    delivery = str(uuid.uuid4())
    accepted = invoke(watch, function_url_event(body, webhook_headers(body, sign(aws["secret"], body), delivery)), tmp_path)
    assert accepted["statusCode"] == 202, accepted
    answer = json.loads(response_body(accepted))
    assert answer["delivery_id"] == delivery, answer
    messages = queued(aws)
    assert len(messages) == 1, messages
    (m,) = messages
    assert (m["type"], m["delivery_id"], m["event"], m["action"]) == ("dispatch_v1", delivery, "pull_request", "opened"), m
    assert m["payload"]["inline"] == json.loads(body), "the queued payload is not the delivery's body"


def test_ingest_under_cargo_lambda_watch_function_url_path(aws, watch):
    body = FIXTURE.read_bytes()
    assert queued(aws) == []

    status, answer = post_function_url(watch, body, webhook_headers(body, "sha256=" + "0" * 64, str(uuid.uuid4())))
    assert status == 401, (status, answer)
    assert queued(aws) == [], "a forged delivery was enqueued"

    delivery = str(uuid.uuid4())
    status, answer = post_function_url(watch, body, webhook_headers(body, sign(aws["secret"], body), delivery))
    assert status == 202, (status, answer)
    assert json.loads(answer)["delivery_id"] == delivery
    messages = queued(aws)
    assert [m["delivery_id"] for m in messages] == [delivery], messages


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", *sys.argv[1:]]))
