"""The ``inferwatch`` command line: every part's subcommands are registered."""

from __future__ import annotations

import typer

from inferwatch.cli import app


def test_the_main_command_carries_every_subcommand() -> None:
    click_app = typer.main.get_command(app)
    assert isinstance(click_app, typer.core.TyperGroup)
    assert set(click_app.commands) == {"train", "serve", "db", "drift", "load", "analysis-job"}
    db = click_app.commands["db"]
    assert isinstance(db, typer.core.TyperGroup)
    assert set(db.commands) == {"migrate", "partitions", "roles", "replay"}
