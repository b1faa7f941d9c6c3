"""Hostile input against a real `inferwatch serve` process with its real audit database.

- every endpoint of the service's own OpenAPI document fuzzed by schemathesis (all its
  checks: no 5xx, responses and status codes as documented, no hang);
- bodies oversized, deeply nested, of the wrong content type, or trickled in slowly, and
  request heads trickled or endless: a clear 4xx or a closed connection, within a bounded
  time, with the process's memory bounded and other clients served meanwhile;
- SQL-significant strings in every stored string field, stored verbatim.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from inferwatch.api.body import BODY_TIMEOUT_S
from inferwatch.http_limits import HEAD_TIMEOUT_S, MAX_HEAD_BYTES
from inferwatch.inference import data
from inferwatch.inference.loading import LoadedModel
from stack.postgres import AuditDb
from stack.procs import free_ports, poll, venv_bin
from tests.fixtures.audit import make_prediction, running_writer
from tests.fixtures.serve import Served, served_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "analyst-key-for-hostile-tests-0123"
# quotes, comment and statement separators, COPY's text-format markers (\N, \.), format
# placeholders, dollar quoting, backslashes, control characters, non-ASCII
SQL_STRINGS = [
    "'; DROP TABLE predictions; --",
    "Robert'); DROP TABLE outcomes;--",
    "1' OR '1'='1",
    '" OR ""="',
    "\\N",
    "\\.",
    "NULL",
    "%s %(x)s {0} $1",
    "$$; SELECT pg_sleep(10); $$",
    "a\\b\\\\c",
    "tab\there\nnewline\r",
    "/* comment */ -- ;",
    "ünïcødé ✓ 😀",
    "E'\\x41'",
]


@dataclass
class Service:
    served: Served
    db: AuditDb
    folder: Path

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def service(
    small_model: LoadedModel, audit_db: AuditDb, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("hostile")
    (port,) = free_ports(1)
    env = {
        "INFERWATCH_DATABASE_URL": audit_db.writer_dsn,
        "INFERWATCH_ANALYST_DATABASE_URL": audit_db.analyst_dsn,
        "INFERWATCH_ANALYST_API_KEY": KEY,
        "INFERWATCH_AUDIT_FLUSH_INTERVAL_S": "0.05",
    }
    url = f"http://127.0.0.1:{port}"
    model_dir = small_model.path.parent.parent
    with served_process(model_dir, folder, ["--port", str(port)], env, url) as served:
        yield Service(served, audit_db, folder)
    log = (folder / "serve.log").read_text()
    assert "unhandled server error" not in log, log[-3000:]


def _raw(port: int, payload: bytes, read_timeout: float = 15.0) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes; (what it answered, seconds taken)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(read_timeout)
        # closed on us mid-send: what it answered, if anything, is still read
        with contextlib.suppress(OSError):
            s.sendall(payload)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return out, time.monotonic() - t0


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


# --- schemathesis -------------------------------------------------------------------


def test_schemathesis_finds_nothing_on_any_endpoint(service: Service) -> None:
    """Schemathesis' checks on every operation of /openapi.json, examples bounded so that
    it takes seconds; a fixed seed makes a CI failure reproducible."""
    report = service.folder / "schemathesis.xml"
    argv = [
        str(venv_bin("schemathesis")),
        "run",
        f"{service.url}/openapi.json",
        "--checks",
        "all",
        # Schema-valid requests the service refuses on rules JSON Schema cannot state (a
        # window of at most 31 days, an observed_at not in the future, a cursor issued by
        # a previous page) are correct 422s, not findings; every other check runs.
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "25",
        "--seed",
        "20261201",
        "--header",
        f"X-API-Key: {KEY}",
        "--request-timeout",
        "10",
        "--max-response-time",
        "5",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    proc = subprocess.run(  # in the test's folder: schemathesis keeps its state in the cwd
        argv, capture_output=True, text=True, timeout=300, check=False, cwd=service.folder
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    # every operation of the document was tested
    doc = httpx.get(f"{service.url}/openapi.json").json()
    operations = sum(len(ops) for ops in doc["paths"].values())
    assert f"Tested: {operations}" in proc.stdout, proc.stdout[-3000:]
    assert httpx.get(f"{service.url}/readyz").status_code == 200


# --- bodies and heads -------------------------------------------------------------


def test_oversized_bodies_are_refused_without_being_read(service: Service) -> None:
    rss0 = service.served.rss_bytes()
    # declared: refused on the header, before a byte of the body is read
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    answer, took = _raw(service.port, head + b"{" * 1000)
    assert _status(answer) == 413, answer[:300]
    assert b'"body_too_large"' in answer
    assert took < 5
    # chunked, no length, 64 MiB pushed as fast as possible: 413 and the connection closed
    # once the limit is passed; the rest is never buffered
    chunk = b"[" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(1024))
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    answer, took = _raw(service.port, head + body)
    assert _status(answer) == 413, answer[:300]
    assert took < 10
    grown = service.served.rss_bytes() - rss0
    assert grown < 32 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/predict/batch", "/v1/feedback"])
def test_deeply_nested_json_is_a_clear_4xx(service: Service, path: str) -> None:
    depth = 30_000  # within the size limit, far beyond any parser's recursion limit
    for body in (
        b"[" * depth + b"]" * depth,
        b'{"a":' * depth + b"1" + b"}" * depth,
        json.dumps({"features": {"amount": "X"}}).replace('"X"', "[" * 5000 + "]" * 5000),
    ):
        t0 = time.monotonic()
        resp = httpx.post(
            f"{service.url}{path}",
            content=body,
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert resp.status_code in (400, 413, 422), resp.text[:300]
        assert resp.json()["detail"], resp.text[:300]
        assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/octet-stream",
    ],
)
def test_wrong_content_type_is_415(service: Service, ctype: str) -> None:
    rows, _ = data.generate_transactions(1, seed=1)
    for path in ("/v1/predict", "/v1/feedback"):
        resp = httpx.post(
            f"{service.url}{path}",
            content=json.dumps({"features": rows[0]}),
            headers={"content-type": ctype},
        )
        assert resp.status_code == 415, resp.text
        assert resp.json()["error"] == "unsupported_media_type"


def _trickle(port: int, head: bytes, body: bytes, out: dict[str, Any], key: str) -> None:
    """Send HEAD at once (if any), then BODY one byte every 0.2 s until the server
    closes; record what it answered and when."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(1)
        s.sendall(head)
        answer = b""
        for i in range(len(body)):
            try:
                s.sendall(body[i : i + 1])
                answer += s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                with contextlib.suppress(OSError):
                    while chunk := s.recv(4096):
                        answer += chunk
                break
            if time.monotonic() - t0 > 60:
                break
    out[key] = (answer, time.monotonic() - t0)


def test_slow_clients_are_cut_off_and_others_still_served(service: Service) -> None:
    """Slowloris: 40 connections trickling their heads and 10 trickling their bodies.
    Each is answered 408 (or closed) within its deadline; meanwhile predictions succeed."""
    results: dict[str, Any] = {}
    post = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n"
    )
    threads = [
        threading.Thread(
            target=_trickle,
            args=(service.port, b"", b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 400, results),
            kwargs={"key": f"head-{i}"},
        )
        for i in range(40)
    ] + [
        threading.Thread(
            target=_trickle,
            args=(service.port, post, b'{"features": ' + b" " * 4000, results),
            kwargs={"key": f"body-{i}"},
        )
        for i in range(10)
    ]
    for t in threads:
        t.start()
    rows, _ = data.generate_transactions(20, seed=4)
    latencies: list[float] = []
    with httpx.Client(base_url=service.url, timeout=5) as client:
        while any(t.is_alive() for t in threads):  # while the slow clients hold on
            t0 = time.monotonic()
            row = rows[len(latencies) % len(rows)]
            assert client.post("/v1/predict", json={"features": row}).status_code == 200
            latencies.append(time.monotonic() - t0)
    for t in threads:
        t.join(90)
    assert len(results) == 50
    for key, (answer, took) in results.items():
        deadline = HEAD_TIMEOUT_S if key.startswith("head") else BODY_TIMEOUT_S
        assert took < deadline + 5, (key, took)
        assert took > deadline - 1, (key, took)  # cut off by the deadline, not by accident
        assert _status(answer) == 408, (key, answer[:200])
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.5, latencies  # others served as usual
    assert latencies[-1] < 5, latencies


def test_an_endless_request_head_is_431_and_memory_stays_bounded(service: Service) -> None:
    rss0 = service.served.rss_bytes()
    line = b"X-Junk: " + b"a" * 8000 + b"\r\n"
    answer, took = _raw(service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + line * 4000)
    assert _status(answer) == 431, answer[:200]
    assert took < 10
    assert len(line) * 4000 > 400 * MAX_HEAD_BYTES  # far more than the cap was sent
    grown = service.served.rss_bytes() - rss0
    assert grown < 16 * 2**20, f"RSS grew {grown / 2**20:.1f} MiB"
    assert httpx.get(f"{service.url}/healthz").status_code == 200


# --- SQL-significant strings ------------------------------------------------------------


def test_sql_significant_strings_are_stored_verbatim(service: Service) -> None:
    """Through the API: entity type and id, request id (predictions) and the feedback
    entity (outcomes); each read back from Postgres exactly as sent."""
    rows, _ = data.generate_transactions(len(SQL_STRINGS), seed=8)
    tag = uuid.uuid4().hex[:6]
    sent = []
    with httpx.Client(base_url=service.url, timeout=10) as client:
        for i, (s, row) in enumerate(zip(SQL_STRINGS, rows, strict=True)):
            entity = {"type": f"{s[:50]}{tag}", "id": f"{s}{tag}"}
            r = client.post(
                "/v1/predict",
                json={"features": row, "entity": entity, "request_id": f"{tag}{i}{s}"},
            )
            assert r.status_code == 200, r.text
            fb = client.post("/v1/feedback", json={"entity": entity, "label": 1})
            assert fb.status_code == 202, fb.text
            sent.append((r.json()["prediction_id"], entity, f"{tag}{i}{s}"))
        # a categorical value is one of the model's categories: any other string is refused
        bad = dict(rows[0], merchant_category=SQL_STRINGS[0])
        r = client.post("/v1/predict", json={"features": bad})
        assert r.status_code == 422
        assert r.json()["detail"][0]["field"] == "features.merchant_category"

    def stored() -> list[Any] | None:
        with psycopg.connect(service.db.admin_dsn) as conn:
            got = conn.execute(
                "SELECT prediction_id::text, entity_type, entity_id, request_id FROM predictions"
                " WHERE prediction_id = ANY(%s::uuid[])",
                ([p for p, _, _ in sent],),
            ).fetchall()
            outcomes = conn.execute(
                "SELECT entity_type, entity_id FROM outcomes WHERE entity_id LIKE %s",
                (f"%{tag}",),
            ).fetchall()
        return [got, outcomes] if len(got) == len(sent) and len(outcomes) == len(sent) else None

    got, outcomes = poll(stored, 30, "the rows of the SQL-string requests in Postgres")
    by_id = {g[0]: g[1:] for g in got}
    for pid, entity, request_id in sent:
        assert by_id[pid] == (entity["type"], entity["id"], request_id)
    assert sorted(outcomes) == sorted((e["type"], e["id"]) for _, e, _ in sent)
    with psycopg.connect(service.db.admin_dsn) as conn:  # and both tables are still there
        conn.execute("SELECT 1 FROM predictions, outcomes LIMIT 1")


def test_sql_significant_feature_and_model_strings_are_stored_verbatim(
    audit_db: AuditDb, tmp_path: Path
) -> None:
    """The writer itself (binary COPY, the spool's replay path alike): string features,
    model name and version as well."""
    records = [
        make_prediction(
            i,
            model_version=s[:60],
            entity_id=s,
            request_id=s,
            features={"mcc": s, "note": {"nested": s}, "amount": 1.5},
        )
        for i, s in enumerate(SQL_STRINGS)
    ]
    with running_writer(audit_db.writer_dsn, tmp_path / "spool") as w:
        for rec in records:
            w.submit(rec)
        assert w.wait_idle(20.0)
    with psycopg.connect(audit_db.admin_dsn) as conn:
        got = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT prediction_id, model_version, entity_id, request_id, features"
                " FROM predictions WHERE prediction_id = ANY(%s)",
                ([r.prediction_id for r in records],),
            )
        }
    for rec, s in zip(records, SQL_STRINGS, strict=True):
        assert got[rec.prediction_id] == (
            s[:60],
            s,
            s,
            {"mcc": s, "note": {"nested": s}, "amount": 1.5},
        )


def test_a_nan_probability_in_the_table_is_no_500(service: Service) -> None:
    """A NaN probability is stored as served (tests/integration/test_audit_writer.py); the
    monitoring histogram counts it in its class and in no bin, rather than failing."""
    with psycopg.connect(service.db.admin_dsn) as conn:
        conn.execute(
            "INSERT INTO predictions (prediction_id, ts, model_name, model_version, features,"
            " prediction, probability, latency_s, trace_id, span_id)"
            " VALUES (%s, now(), 'card-fraud', 'nan-test', '{}', 1, 'NaN', 0.001, '', '')",
            (uuid.uuid4(),),
        )
    resp = httpx.get(
        f"{service.url}/v1/monitoring/distribution",
        params={"model_version": "nan-test"},
        headers={"X-API-Key": KEY},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == 1
    assert sum(b["count"] for b in body["probability_histogram"]) == 0
