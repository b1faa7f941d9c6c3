"""The ``inferwatch`` command line: train, serve, and the subcommands of the other parts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from inferwatch.analysis import cli as analysis_cli
from inferwatch.audit.cli import db_app
from inferwatch.settings import Settings

app = typer.Typer(
    help="inferwatch: an ML inference service, observable by construction.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def train(
    model_dir: Annotated[Path, typer.Option(help="where model versions are written")] = Path(
        "models"
    ),
    name: Annotated[str, typer.Option()] = "card-fraud",
    version: Annotated[str | None, typer.Option(help="default: a UTC timestamp")] = None,
    estimator: Annotated[str, typer.Option(help="hgb | logreg | rf")] = "hgb",
    rows: Annotated[int, typer.Option(help="generated transactions")] = 120_000,
    seed: Annotated[int, typer.Option()] = 7,
) -> None:
    """Train the card-fraud model on generated transactions and write a versioned artifact."""
    from inferwatch.inference.training import train_model

    if estimator not in ("hgb", "logreg", "rf"):
        raise typer.BadParameter("estimator must be hgb, logreg or rf")
    meta = train_model(
        model_dir,
        name=name,
        version=version,
        estimator=estimator,  # type: ignore[arg-type]
        n_rows=rows,
        seed=seed,
    )
    typer.echo(
        f"trained {meta.name} {meta.version} ({meta.estimator}) in "
        f"{meta.training_seconds:.1f}s: "
        + ", ".join(f"{k}={v:.4f}" for k, v in meta.metrics.items())
    )


def ensure_model(settings: Settings) -> None:
    """The embedded default: train the bundled model once if none exists."""
    from inferwatch.inference.loading import find_model
    from inferwatch.inference.training import train_model

    if find_model(settings.model_dir, settings.model_name, settings.model_version) is None:
        if not settings.train_if_missing:
            raise typer.BadParameter(f"no model under {settings.model_dir}")
        typer.echo(f"no model under {settings.model_dir}: training the bundled model ...")
        train_model(settings.model_dir, name=settings.model_name, version=settings.model_version)


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(help="bind address (overrides INFERWATCH_HOST)", show_default=False),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="port (overrides INFERWATCH_PORT)", show_default=False),
    ] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve the model over HTTP (settings from INFERWATCH_* env vars; options win)."""
    import uvicorn

    settings = Settings()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ensure_model(settings)
    uvicorn.run(
        "inferwatch.asgi:create",
        factory=True,
        # only the listener reads these: each worker's app builds its own Settings
        host=settings.host if host is None else host,
        port=settings.port if port is None else port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


# subcommands owned by the audit and analysis packages
app.add_typer(db_app, name="db")
analysis_cli.register(app)


def main() -> None:
    app()
