"""Writes seed inputs for the `webhook` fuzz target from the real fixtures:
each acted-on event, signed (flags bit 0), as JSON (flags bit 1 clear).

    python3 fuzz/seeds/webhook.py fuzz/corpus/webhook
"""
import json
import pathlib
import sys

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "webhooks"
UPSTREAM = "Codertocat/Hello-World"

out = pathlib.Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
for path in sorted(FIXTURES.glob("*.json")):
    event = path.name.split(".")[0]
    body = json.loads(path.read_text())
    if isinstance(body.get("repository"), dict):
        body["repository"]["full_name"] = UPSTREAM
    flags = (len(event) << 2) | 1
    data = bytes([flags]) + event.encode() + json.dumps(body).encode()
    (out / f"seed-{path.stem}").write_bytes(data)
    print(out / f"seed-{path.stem}")
