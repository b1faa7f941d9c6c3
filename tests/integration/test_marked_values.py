"""Nothing a run exports holds a secret or a feature value the privacy policy drops or hashes.

One run of the real `inferwatch serve` (OTLP on, to an in-memory OTLP receiver; the
analyst key and database; audit records to its disk spool), then `inferwatch db replay`
of that spool into Postgres as the writer. Marked values go in: the analyst key, the
analyst's and the writer's database passwords, the HMAC key, and features the policy
drops (``amount``) or hashes (``merchant_category``, ``distance_from_home_km``), in valid
requests and in a rejected one. Every sink is then searched for each marked value, as
text and, for numbers, as the 8-byte doubles protobuf and COPY carry: the service's log,
the replay's output, every OTLP request (spans and metrics), every spool file, and the
stored prediction and outcome rows. Positive controls prove each search can find: a kept
feature is in the spool and in Postgres, the entity id in the spans, the model in the log.
"""

from __future__ import annotations

import json
import struct
import subprocess
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from inferwatch.inference import data
from inferwatch.inference.loading import LoadedModel
from stack.postgres import AuditDb
from stack.procs import free_ports, venv_bin
from tests.fixtures.otlp import OtlpSink
from tests.fixtures.pg import TEST_PASSWORDS
from tests.fixtures.serve import served_process

pytestmark = pytest.mark.integration

ANALYST_KEY = "marked-analyst-key-7Qm2ZxY9w4"
HMAC_KEY = "marked-hmac-key-Vn3s8Kp1Lq6"
DROPPED_AMOUNT = 4321.98765
HASHED_CATEGORY = "jewelry"
HASHED_DISTANCE = 987.654321
KEPT_UTILIZATION = 0.123456789
REJECTED_VALUE = "marked-rejected-value-Zk41"
POLICY = {
    "amount": "drop",
    "merchant_category": "hash",
    "distance_from_home_km": "hash",
}


def _forms(value: str | float) -> list[bytes]:
    """How a value can appear in a sink: its text, and a float as a little-endian
    (protobuf) and big-endian (COPY binary) double."""
    if isinstance(value, float):
        return [repr(value).encode(), struct.pack("<d", value), struct.pack(">d", value)]
    return [value.encode()]


def _found(value: str | float, blobs: dict[str, bytes]) -> list[str]:
    return [name for name, blob in blobs.items() if any(f in blob for f in _forms(value))]


def test_no_sink_holds_a_marked_value(
    small_model: LoadedModel, audit_db: AuditDb, otlp_sink: OtlpSink, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    spool = tmp_path / "spool"
    env = {
        "INFERWATCH_OTLP_ENABLED": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_sink.base,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "200",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "INFERWATCH_ANALYST_API_KEY": ANALYST_KEY,
        "INFERWATCH_ANALYST_DATABASE_URL": audit_db.analyst_dsn,
        "INFERWATCH_AUDIT_PRIVACY": json.dumps(POLICY),
        "INFERWATCH_AUDIT_HMAC_KEY": HMAC_KEY,
        "INFERWATCH_AUDIT_SPOOL_DIR": str(spool),
    }
    rows, _ = data.generate_transactions(20, seed=21)
    marked = dict(
        rows[0],
        amount=DROPPED_AMOUNT,
        merchant_category=HASHED_CATEGORY,
        distance_from_home_km=HASHED_DISTANCE,
        credit_utilization=KEPT_UTILIZATION,
    )
    model_dir = small_model.path.parent.parent
    args = ["--port", str(port), "--workers", "1"]
    with (
        served_process(model_dir, tmp_path, args, env, url) as served,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        for i, row in enumerate([marked, *rows[1:]]):
            entity = {"type": "account", "id": f"mark-{tag}-{i}"}
            r = client.post("/v1/predict", json={"features": row, "entity": entity})
            assert r.status_code == 200, r.text
        batch = {"instances": [{"features": marked, "entity": {"type": "account", "id": tag}}]}
        assert client.post("/v1/predict/batch", json=batch).status_code == 200
        fb = {"entity": {"type": "account", "id": f"mark-{tag}-0"}, "label": 1}
        assert client.post("/v1/feedback", json=fb).status_code == 202
        bad = dict(marked, amount=REJECTED_VALUE)
        assert client.post("/v1/predict", json={"features": bad}).status_code == 422
        for key in (ANALYST_KEY, ANALYST_KEY + "x"):
            resp = client.get("/v1/monitoring/predictions", headers={"X-API-Key": key})
            assert resp.status_code in (200, 401), resp.text
        log = served.log
    # the process has stopped: spans, metrics and the spool are flushed; read the spool
    # before the replay deletes what it committed
    spool_files = [p for p in spool.rglob("*") if p.is_file()]
    spool_bytes = {
        f"spool:{p.relative_to(spool)}": p.read_bytes() for p in spool_files if p.stat().st_size
    }
    replay = subprocess.run(
        [
            str(venv_bin("inferwatch")),
            *("db", "replay", "--dsn", audit_db.writer_dsn),
            *("--spool-dir", str(spool), "--timeout-s", "60"),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    with psycopg.connect(audit_db.admin_dsn) as conn:
        stored = conn.execute(
            "SELECT string_agg(row_to_json(p)::text, E'\\n') FROM predictions p"
            " WHERE entity_id LIKE %s OR entity_id = %s",
            (f"mark-{tag}-%", tag),
        ).fetchone()
        outcomes = conn.execute(
            "SELECT string_agg(row_to_json(o)::text, E'\\n') FROM outcomes o"
            " WHERE entity_id LIKE %s",
            (f"mark-{tag}-%",),
        ).fetchone()
    assert stored is not None
    assert stored[0], "the replayed predictions are not in Postgres"
    assert outcomes is not None
    assert outcomes[0]
    otlp = {f"otlp:{i}:{r.path}": r.payload() for i, r in enumerate(list(otlp_sink.received))}
    assert any("traces" in k for k in otlp), list(otlp)
    assert any("metrics" in k for k in otlp), list(otlp)
    sinks: dict[str, bytes] = {
        "service log": log.read_bytes(),
        "replay output": replay.stdout + replay.stderr,
        **otlp,
        **spool_bytes,
        "postgres predictions": stored[0].encode(),
        "postgres outcomes": outcomes[0].encode(),
    }
    secrets: dict[str, str | float] = {
        "analyst key": ANALYST_KEY,
        "HMAC key": HMAC_KEY,
        "analyst password": TEST_PASSWORDS["analyst"],
        "writer password": TEST_PASSWORDS["writer"],
        "dropped amount": DROPPED_AMOUNT,
        "hashed category": HASHED_CATEGORY,
        "hashed distance": HASHED_DISTANCE,
        "rejected value": REJECTED_VALUE,
    }
    leaks = {name: _found(value, sinks) for name, value in secrets.items()}
    assert {k: v for k, v in leaks.items() if v} == {}
    # positive controls: each kind of sink is searched for real
    kept = set(_found(KEPT_UTILIZATION, sinks))
    assert "postgres predictions" in kept, kept
    assert any(k.startswith("spool:") for k in kept), (kept, list(spool_bytes))
    assert any(k.startswith("otlp:") and "traces" in k for k in _found(f"mark-{tag}-0", sinks))
    assert "service log" in _found("card-fraud", sinks)
