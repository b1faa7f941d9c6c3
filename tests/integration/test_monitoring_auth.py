"""GET /v1/monitoring/*: no analyst key, no data; the key is compared in constant time.

Every monitoring route the app serves (read from its OpenAPI document, so a new one is covered the
day it is added) is asked with no key, a wrong key, a wrong key of the right length, the
right key with a suffix, in another case, and with a key while none is configured; each
answer is the same 401 body, with none of the stored data in it. The right key gets the
data: the refusals are not an empty database.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inferwatch.inference import data
from inferwatch.inference.loading import LoadedModel
from stack.postgres import AuditDb
from tests.fixtures.api import postgres_app

pytestmark = pytest.mark.integration

KEY = "analyst-key-for-tests-0123456789"
WRONG = [
    None,
    "",
    "wrong",
    "x" * len(KEY),
    KEY[:-1] + ("0" if KEY[-1] != "0" else "1"),
    KEY + "0",
    KEY.upper(),
    " " + KEY,
]


@pytest.fixture
def served(
    small_model: LoadedModel, audit_db: AuditDb, tmp_path: Path
) -> Iterator[tuple[TestClient, str]]:
    """A client of an app with the key set, and an entity id stored through it."""
    with postgres_app(small_model, audit_db, tmp_path / "spool", KEY) as (client, writer):
        marker = f"secret-entity-{uuid.uuid4().hex}"
        rows, _ = data.generate_transactions(3, seed=5)
        for row in rows:
            body = {"features": row, "entity": {"type": "acct", "id": marker}}
            assert client.post("/v1/predict", json=body).status_code == 200
        assert writer.wait_idle(20.0)
        yield client, marker


def monitoring_paths(client: TestClient) -> list[str]:
    doc = client.get("/openapi.json").json()
    paths = [p for p, ops in doc["paths"].items() if p.startswith("/v1/monitoring/")]
    assert all(set(doc["paths"][p]) == {"get"} for p in paths), paths
    assert len(paths) >= 3, paths
    return paths


def _get(client: TestClient, path: str, key: str | None, **params: Any) -> Any:
    headers = {} if key is None else {"X-API-Key": key}
    return client.get(path, headers=headers, params=params)


def test_every_monitoring_route_refuses_without_the_right_key_and_leaks_nothing(
    served: tuple[TestClient, str],
) -> None:
    client, marker = served
    for path in monitoring_paths(client):
        bodies = set()
        for key in WRONG:
            # also with parameters that would be invalid: the key is checked first, so a
            # caller without it learns nothing about the parameters either
            for params in ({}, {"limit": 0, "bins": 1, "since": "x"}):
                resp = _get(client, path, key, **params)
                assert resp.status_code == 401, (path, key, params, resp.text)
                assert marker not in resp.text
                bodies.add(resp.text)
        assert len(bodies) == 1, bodies  # one answer, whatever was wrong
        assert _get(client, path, KEY).status_code == 200, path
    # the data is there for the right key
    resp = _get(client, "/v1/monitoring/predictions", KEY, entity_type="acct", entity_id=marker)
    assert resp.status_code == 200
    assert marker in resp.text
    assert len(resp.json()["predictions"]) == 3


def test_no_key_configured_refuses_every_key(
    small_model: LoadedModel, audit_db: AuditDb, tmp_path: Path
) -> None:
    with postgres_app(small_model, audit_db, tmp_path / "spool", None) as (client, _):
        for path in monitoring_paths(client):
            for key in [*WRONG, KEY]:
                assert _get(client, path, key).status_code == 401, (path, key)


def test_the_key_is_compared_in_constant_time(
    served: tuple[TestClient, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = served
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for path in monitoring_paths(client):
        calls.clear()
        assert _get(client, path, "wrong-key").status_code == 401
        assert calls == [(b"wrong-key", KEY.encode())], path
        calls.clear()
        assert _get(client, path, KEY).status_code == 200
        assert calls == [(KEY.encode(), KEY.encode())], path
