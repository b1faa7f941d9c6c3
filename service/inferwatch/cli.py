"""The ``inferwatch`` command line: train, serve, and the subcommands of the other parts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

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


def parse_workers(text: str) -> int | Literal["auto"]:
    """--workers: a number of processes (1-64), or ``auto`` (one per usable CPU)."""
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise typer.BadParameter(f"a number or auto, not {text!r}") from None
    if not 1 <= n <= 64:
        raise typer.BadParameter(f"between 1 and 64, not {n}")
    return n


def worker_count(settings: Settings, option: str | None) -> int:
    """How many worker processes `serve` runs: --workers, else INFERWATCH_WORKERS, else the
    default; one while GET /metrics is served (OTLP export off), which a request for more
    is refused with: Prometheus would scrape whichever worker the connection reached, a
    different process's counters each time."""
    from inferwatch.telemetry.setup import pull_endpoint_enabled
    from inferwatch.workers import resolve_workers

    explicit = option is not None or "workers" in settings.model_fields_set
    n = resolve_workers(settings.workers if option is None else parse_workers(option))
    if n > 1 and pull_endpoint_enabled(settings):
        if explicit:
            raise typer.BadParameter(
                f"{n} workers need OTLP export: GET /metrics (INFERWATCH_OTLP_ENABLED=false or "
                "INFERWATCH_METRICS_ENDPOINT=on) answers from one worker's meters, whichever "
                "a scrape reaches",
                param_hint="--workers",
            )
        return 1
    return n


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
    workers: Annotated[
        str | None,
        typer.Option(
            help="worker processes: a number, or auto for one per CPU "
            "(overrides INFERWATCH_WORKERS)",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve the model over HTTP (settings from INFERWATCH_* env vars; options win)."""
    from inferwatch.workers import ServeSpec, configure_logging
    from inferwatch.workers import serve as serve_workers

    settings = Settings()
    n_workers = worker_count(settings, workers)
    configure_logging(log_level)
    ensure_model(settings)
    # only the listener reads host and port: each worker's app builds its own Settings
    spec = ServeSpec(
        log_level=log_level,
        timeout_keep_alive=settings.http_keepalive_s,
        # a stop waits for the HTTP drain, the audit flush and the telemetry flush
        stop_timeout_s=ServeSpec.timeout_graceful_shutdown
        + settings.audit_shutdown_timeout_s
        + settings.telemetry_shutdown_timeout_s
        + 5,
    )
    status = serve_workers(
        spec,
        settings.host if host is None else host,
        settings.port if port is None else port,
        n_workers,
    )
    if status:
        raise typer.Exit(status)


# subcommands owned by the audit and analysis packages
app.add_typer(db_app, name="db")
analysis_cli.register(app)


def main() -> None:
    app()
