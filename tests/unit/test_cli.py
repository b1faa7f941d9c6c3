"""The ``inferwatch`` command line: every part's subcommands are registered; options
left out come from Settings, options given win."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from inferwatch.audit import migrate as mig
from inferwatch.cli import app
from inferwatch.settings import Settings


def test_the_main_command_carries_every_subcommand() -> None:
    click_app = typer.main.get_command(app)
    assert isinstance(click_app, typer.core.TyperGroup)
    assert set(click_app.commands) == {"train", "serve", "db", "drift", "load", "analysis-job"}
    db = click_app.commands["db"]
    assert isinstance(db, typer.core.TyperGroup)
    assert set(db.commands) == {"migrate", "partitions", "roles", "replay"}


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
            {"owner_password": "o-pw", "writer_password": "given", "analyst_password": "a-pw"},
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
