"""End to end: ``inferwatch load`` traffic through the app into Postgres, then ``inferwatch drift``.

The load generator drives the real app (in-process transport) with the real audit
writer; the drift command reads the window back as the analyst role.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from opentelemetry.metrics import NoOpMeterProvider
from typer.testing import CliRunner

from inferwatch.analysis import cli
from inferwatch.analysis.load import LoadConfig, LoadError, check_loopback, run_load
from inferwatch.app import create_app
from inferwatch.audit.writer import PostgresAuditWriter
from inferwatch.inference.loading import LoadedModel, load_model
from inferwatch.inference.training import train_model
from inferwatch.settings import Settings
from stack.postgres import AuditDb
from stack.procs import poll

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out: Path = tmp_path_factory.mktemp("models")
    meta = train_model(out, version="cli-1", estimator="logreg", n_rows=40_000, seed=5)
    return out / meta.name / meta.version


@pytest.fixture(scope="module")
def stream(
    audit_db: AuditDb, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """1200 clean predictions, then 1200 shifted ones, half of them labeled."""
    model: LoadedModel = load_model(model_dir)
    writer = PostgresAuditWriter(
        dsn=audit_db.writer_dsn,
        spool_dir=tmp_path_factory.mktemp("spool"),
        meter=NoOpMeterProvider().get_meter("test"),
        flush_interval_s=0.05,
    )
    settings = Settings(environment="test", otlp_enabled=False, telemetry_enabled=False)
    app = create_app(settings, model=model, audit_sink=writer)
    marks: dict[str, Any] = {}
    with TestClient(app) as client:
        marks["t0"] = datetime.now(UTC)
        clean = run_load(
            LoadConfig(rate=2_000, duration_s=0.6, label_fraction=0.5, label_delay_s=0.0, seed=3),
            client=client,
            check_host=False,
            clock=(c := VirtualClock()),
            sleep=c.sleep,
        )
        clean_end = datetime.now(UTC)  # no clean row is stamped later than this

        def after_clean() -> datetime | None:
            now = datetime.now(UTC)
            return now if now > clean_end else None

        marks["t1"] = poll(after_clean, 5, "a timestamp later than every clean row")
        shifted = run_load(
            LoadConfig(
                rate=2_000,
                duration_s=0.6,
                drift_after_s=0.0,
                label_fraction=0.5,
                label_delay_s=0.0,
                seed=4,
            ),
            client=client,
            check_host=False,
            clock=(c := VirtualClock()),
            sleep=c.sleep,
        )
        marks["t2"] = datetime.now(UTC)
        assert writer.wait_idle(30.0)
    marks["clean"], marks["shifted"] = clean, shifted
    return marks


class VirtualClock:
    """Time that only moves when the generator sleeps: the run is paced, not slowed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _app() -> typer.Typer:
    app = typer.Typer()
    cli.register(app)
    return app


def _drift(
    db: AuditDb, model_dir: Path, since: datetime, until: datetime, out: Path, *extra: str
) -> Any:
    args = [
        "drift",
        "--model-version",
        "cli-1",
        "--since",
        since.isoformat(),
        "--until",
        until.isoformat(),
        "--dsn",
        db.analyst_dsn,
        "--metadata",
        str(model_dir),
        "--out-dir",
        str(out),
        *extra,
    ]
    return CliRunner().invoke(_app(), args)


def test_load_summary_counts(stream: dict[str, Any]) -> None:
    clean, shifted = stream["clean"], stream["shifted"]
    assert clean.sent == clean.ok == 1_200
    assert clean.drifted == 0
    assert shifted.ok == shifted.drifted == 1_200
    assert 400 < clean.labels_posted < 800
    assert clean.label_errors == 0


def test_drift_cli_clean_window(
    audit_db: AuditDb, model_dir: Path, stream: dict[str, Any], tmp_path: Path
) -> None:
    r = _drift(
        audit_db, model_dir, stream["t0"], stream["t1"], tmp_path, "--json", "--fail-on-drift"
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["drift"]["rows"] == 1_200
    assert doc["drift"]["drifted"] == []
    assert doc["quality"]["labeled"] == stream["clean"].labels_posted
    assert [Path(p).name for p in doc["plots"]] == ["summary.png"]


def test_drift_cli_shifted_window(
    audit_db: AuditDb, model_dir: Path, stream: dict[str, Any], tmp_path: Path
) -> None:
    r = _drift(audit_db, model_dir, stream["t1"], stream["t2"], tmp_path, "--fail-on-drift")
    assert r.exit_code == 1, r.output
    assert "DRIFT" in r.stdout
    assert "Estimated quality (CBPE)" in r.stdout
    r = _drift(audit_db, model_dir, stream["t1"], stream["t2"], tmp_path, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert sorted(doc["drift"]["drifted"]) == ["distance_from_home_km", "merchant_category"]
    assert doc["drift"]["dataset_drift"] is True
    assert doc["quality"]["labeled"] == stream["shifted"].labels_posted
    # the estimate covers every prediction of the window, labeled or not
    assert doc["estimate"]["rows"] == 1_200
    assert 0.0 < doc["estimate"]["roc_auc"] <= 1.0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "drift_distance_from_home_km.png",
        "drift_merchant_category.png",
        "summary.png",
    ]


def test_drift_cli_usage_errors(audit_db: AuditDb, model_dir: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    r = _drift(audit_db, model_dir, now, now, tmp_path)
    assert r.exit_code == 2
    args = ["drift", "--model-version", "cli-1", "--since", "-1h", "--metadata", str(model_dir)]
    r = CliRunner().invoke(_app(), args, env={"INFERWATCH_ANALYST_DATABASE_URL": ""})
    assert r.exit_code == 2


def test_load_refuses_non_loopback_and_bad_bounds() -> None:
    with pytest.raises(LoadError):
        check_loopback("http://192.0.2.1:8000")
    check_loopback("http://127.0.0.1:8000")
    check_loopback("http://localhost:8000")
    with pytest.raises(LoadError):
        run_load(LoadConfig(rate=10_000), check_host=False, client=httpx.Client())
    with pytest.raises(LoadError):
        run_load(LoadConfig(duration_s=10_000), check_host=False, client=httpx.Client())


def test_load_with_concurrency_against_a_mock_service() -> None:
    import threading
    import uuid

    seen: list[str] = []
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/predict":
            with lock:
                seen.append(json.loads(request.content)["entity"]["id"])
            return httpx.Response(200, json={"prediction_id": str(uuid.uuid4())})
        if request.url.path == "/v1/feedback":
            n = len(json.loads(request.content)["outcomes"])
            return httpx.Response(202, json={"accepted": n})
        return httpx.Response(404)

    client = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://127.0.0.1:1")
    cfg = LoadConfig(
        rate=2_000,
        duration_s=0.5,
        drift_after_s=0.25,
        label_fraction=0.25,
        label_delay_s=0.0,
        concurrency=8,
    )
    clock = VirtualClock()
    summary = run_load(cfg, client=client, check_host=False, clock=clock, sleep=clock.sleep)
    assert summary.sent == summary.ok == 1_000
    assert len(set(seen)) == 1_000
    assert 450 <= summary.drifted <= 550
    assert 180 <= summary.labels_posted <= 320
    assert summary.label_errors == 0
