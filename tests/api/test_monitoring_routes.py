"""GET /v1/monitoring/*: the store comes from the lifespan, never from a request.

Without an analyst DSN the routes answer 503 ``not_configured``; with Postgres down the
service still starts (the pool connects only when a query needs it) and a query
answers 503 ``database_unavailable``. Answers from a live database:
tests/integration/test_feedback_api.py.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from inferwatch.app import create_app
from inferwatch.audit.sink import InMemoryAuditSink
from inferwatch.inference.loading import LoadedModel
from inferwatch.settings import Settings

KEY = "analyst-key-for-tests-0123456789"
PATHS = ("/v1/monitoring/latency", "/v1/monitoring/predictions", "/v1/monitoring/distribution")


def _app(model: LoadedModel, **settings: Any) -> FastAPI:
    return create_app(
        Settings(
            environment="test",
            otlp_enabled=False,
            telemetry_enabled=False,
            analyst_api_key=SecretStr(KEY),
            **settings,
        ),
        model=model,
        audit_sink=InMemoryAuditSink(),
    )


def test_without_an_analyst_dsn_the_routes_answer_not_configured(small_model: LoadedModel) -> None:
    app = _app(small_model)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert app.state.runtime.monitoring is None
        for path in PATHS:
            assert client.get(path).status_code == 401  # the key is checked first
            resp = client.get(path, headers={"X-API-Key": KEY})
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"] == "not_configured"


@pytest.mark.slow  # the query waits the pool's timeout (5 s) for a connection
def test_postgres_down_neither_fails_start_up_nor_a_request(small_model: LoadedModel) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dsn = f"postgresql://inferwatch_analyst:pw@127.0.0.1:{port}/inferwatch"
    app = _app(small_model, analyst_database_url=SecretStr(dsn))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert app.state.runtime.monitoring is not None  # built by the lifespan
        assert client.get("/readyz").status_code == 200
        resp = client.get(PATHS[0], headers={"X-API-Key": KEY})
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"] == "database_unavailable"
