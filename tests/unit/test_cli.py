"""The ``inferwatch`` command line: every part's subcommands are registered; options
left out come from Settings, options given win."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from opentelemetry.sdk.metrics import MeterProvider
from typer.testing import CliRunner

from inferwatch.analysis import jobs
from inferwatch.analysis.jobs import JobConfig
from inferwatch.audit import migrate as mig
from inferwatch.cli import app
from inferwatch.inference.loading import METADATA_NAME, LoadedModel
from inferwatch.inference.metadata import ModelMetadata
from inferwatch.settings import Settings


def test_the_main_command_carries_every_subcommand() -> None:
    click_app = typer.main.get_command(app)
    assert isinstance(click_app, typer.core.TyperGroup)
    assert set(click_app.commands) == {
        "train",
        "serve",
        "db",
        "drift",
        "load",
        "analysis-job",
        "replay",
    }
    db = click_app.commands["db"]
    assert isinstance(db, typer.core.TyperGroup)
    assert set(db.commands) == {"migrate", "partitions", "roles", "replay", "erase"}


def test_db_options_fall_back_to_settings_and_the_command_line_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def maintain(dsn: str, **kwargs: Any) -> tuple[int, int]:
        calls.append((dsn, kwargs))
        return 0, 0

    def roles(dsn: str, **kwargs: Any) -> None:
        calls.append((dsn, kwargs))

    monkeypatch.setattr(mig, "maintain_partitions", maintain)
    monkeypatch.setattr(mig, "ensure_roles", roles)
    env = {
        "INFERWATCH_MIGRATE_DATABASE_URL": "host=db user=owner",
        "INFERWATCH_AUDIT_PARTITION_DAYS_AHEAD": "3",
        "INFERWATCH_AUDIT_RETENTION_DAYS": "30",
        "INFERWATCH_ADMIN_DATABASE_URL": "host=db user=postgres",
        "INFERWATCH_OWNER_PASSWORD": "o-pw",
        "INFERWATCH_WRITER_PASSWORD": "w-pw",
        "INFERWATCH_ANALYST_PASSWORD": "a-pw",
    }
    runner = CliRunner()
    assert runner.invoke(app, ["db", "partitions"], env=env).exit_code == 0
    args = ["db", "partitions", "--dsn", "host=other", "--days-ahead", "5"]
    assert runner.invoke(app, args, env=env).exit_code == 0
    assert runner.invoke(app, ["db", "roles", "--writer-password", "given"], env=env).exit_code == 0
    assert calls == [
        ("host=db user=owner", {"days_ahead": 3, "retention_days": 30}),
        ("host=other", {"days_ahead": 5, "retention_days": 30}),
        (
            "host=db user=postgres",
            {
                "owner_password": "o-pw",
                "writer_password": "given",
                "analyst_password": "a-pw",
                "replay_password": None,
            },
        ),
    ]


def test_a_command_without_its_database_is_a_usage_error() -> None:
    runner = CliRunner()
    no_dsn = {
        "INFERWATCH_MIGRATE_DATABASE_URL": "",
        "INFERWATCH_ADMIN_DATABASE_URL": "",
        "INFERWATCH_DATABASE_URL": "",
        "INFERWATCH_ANALYST_DATABASE_URL": "",
    }
    for args in (["db", "migrate"], ["db", "partitions"], ["db", "roles"], ["db", "replay"]):
        r = runner.invoke(app, args, env=no_dsn)
        assert r.exit_code == 2, (args, r.output)
        assert "no database: pass --dsn or set INFERWATCH_" in r.output
    r = runner.invoke(app, ["drift", "--model-version", "v", "--since", "-1h"], env=no_dsn)
    assert r.exit_code == 2, r.output
    assert "INFERWATCH_ANALYST_DATABASE_URL" in r.output


def test_the_partition_settings_default_to_the_migration_runners_defaults() -> None:
    fields = Settings.model_fields
    assert fields["audit_partition_days_ahead"].default == mig.DEFAULT_DAYS_AHEAD
    assert fields["audit_retention_days"].default == mig.DEFAULT_RETENTION_DAYS


def test_serve_refuses_a_port_out_of_range() -> None:
    runner = CliRunner()
    for port in ("0", "65536", "http"):
        r = runner.invoke(app, ["serve", "--port", port])
        assert r.exit_code == 2, (port, r.output)
        assert "--port" in r.output


def _two_versions(small_model: LoadedModel, tmp_path: Path) -> Path:
    """A model dir with versions test-1 and test-2 (newest) of the small model's metadata."""
    meta = small_model.metadata
    for version in ("test-1", "test-2"):
        d = tmp_path / meta.name / version
        d.mkdir(parents=True)
        doc = {**json.loads(meta.model_dump_json()), "version": version}
        (d / METADATA_NAME).write_text(json.dumps(doc))
    return tmp_path


def test_the_analysis_job_watches_the_served_version_every_configured_interval(
    small_model: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without options the job resolves the model as `inferwatch serve` does (the newest
    version, or INFERWATCH_MODEL_VERSION) and runs every INFERWATCH_ANALYSIS_INTERVAL; the
    options win. The launcher and compose run it with no option at all."""
    runs: list[tuple[str, str, JobConfig]] = []

    def run_once(dsn: str, meta: ModelMetadata, cfg: JobConfig, gauges: object) -> None:
        runs.append((dsn, meta.version, cfg))

    monkeypatch.setattr(jobs, "run_once", run_once)
    monkeypatch.setattr(jobs, "meter_provider", MeterProvider)  # no OTLP exporter
    env: dict[str, str | None] = {
        "INFERWATCH_MODEL_DIR": str(_two_versions(small_model, tmp_path)),
        "INFERWATCH_MODEL_VERSION": None,  # unset
        "INFERWATCH_ANALYST_DATABASE_URL": "host=db user=analyst",
        "INFERWATCH_ANALYSIS_INTERVAL": "30s",
    }
    runner = CliRunner()
    for args, extra in (
        ([], {}),
        (["--interval", "2m", "--model-version", "test-1"], {}),
        ([], {"INFERWATCH_MODEL_VERSION": "test-1"}),
    ):
        r = runner.invoke(app, ["analysis-job", "--once", *args], env={**env, **extra})
        assert r.exit_code == 0, r.output
    assert [(d, v, c.interval) for d, v, c in runs] == [
        ("host=db user=analyst", "test-2", timedelta(seconds=30)),
        ("host=db user=analyst", "test-1", timedelta(minutes=2)),
        ("host=db user=analyst", "test-1", timedelta(seconds=30)),
    ]
    r = runner.invoke(app, ["analysis-job", "--once", "--interval", "soon"], env=env)
    assert r.exit_code == 2
    assert "not a duration" in r.output
    r = runner.invoke(
        app, ["analysis-job", "--once"], env={**env, "INFERWATCH_MODEL_DIR": str(tmp_path / "no")}
    )
    assert r.exit_code == 2
    assert "no model card-fraud/<newest>" in r.output


def test_the_analysis_interval_setting_is_a_duration() -> None:
    assert Settings().analysis_interval == "5m"
    assert Settings(analysis_interval="30s").analysis_interval == "30s"
    with pytest.raises(ValueError, match="analysis_interval"):
        Settings(analysis_interval="30 seconds")
