"""``inferwatch db ...``: roles, migrations, partition maintenance, spool replay.

Run by an operator or a deploy step, never by the service itself (the service
connects as ``inferwatch_writer``, which cannot run DDL). Typical order:

    inferwatch db roles --dsn "host=... dbname=inferwatch user=postgres"   # once, as an admin
    inferwatch db migrate --dsn "host=... dbname=inferwatch user=inferwatch_owner"  # every deploy
    inferwatch db partitions --dsn ...                                      # daily (cron)

Passwords come from options or env vars and are never defaulted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferwatch.audit import migrate as mig

db_app = typer.Typer(
    help="Audit database: roles, schema migrations, partitions, spool replay.",
    no_args_is_help=True,
)

DsnOpt = Annotated[
    str,
    typer.Option(
        "--dsn",
        envvar="INFERWATCH_MIGRATE_DATABASE_URL",
        help="libpq DSN/URL of the owner (or an admin who may SET ROLE inferwatch_owner).",
        show_envvar=True,
    ),
]
AheadOpt = Annotated[
    int,
    typer.Option(
        envvar="INFERWATCH_AUDIT_PARTITION_DAYS_AHEAD", min=0, help="daily partitions made ahead"
    ),
]
RetentionOpt = Annotated[
    int,
    typer.Option(
        envvar="INFERWATCH_AUDIT_RETENTION_DAYS",
        help="drop daily partitions older than this many days (0: keep all)",
    ),
]


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


@db_app.command()
def migrate(
    dsn: DsnOpt,
    days_ahead: AheadOpt = mig.DEFAULT_DAYS_AHEAD,
    retention_days: RetentionOpt = mig.DEFAULT_RETENTION_DAYS,
) -> None:
    """Apply pending schema migrations (idempotent), then maintain partitions."""
    try:
        res = mig.migrate(dsn, days_ahead=days_ahead, retention_days=retention_days)
    except mig.MigrationError as exc:
        _fail(str(exc))
        return
    applied = ", ".join(f"{v:04d}" for v in res.applied) or "none"
    typer.echo(
        f"migrations applied: {applied} (already: {len(res.already)}); "
        f"partitions created: {res.partitions_created}, dropped: {res.partitions_dropped}"
    )


@db_app.command()
def partitions(
    dsn: DsnOpt,
    days_ahead: AheadOpt = mig.DEFAULT_DAYS_AHEAD,
    retention_days: RetentionOpt = mig.DEFAULT_RETENTION_DAYS,
) -> None:
    """Create daily partitions ahead and drop those past retention (run daily)."""
    made, dropped = mig.maintain_partitions(
        dsn, days_ahead=days_ahead, retention_days=retention_days
    )
    typer.echo(f"partitions created: {made}, dropped: {dropped}")


@db_app.command()
def roles(
    dsn: Annotated[
        str,
        typer.Option(
            "--dsn",
            envvar="INFERWATCH_ADMIN_DATABASE_URL",
            show_envvar=True,
            help="DSN of a role with CREATEROLE that owns the database or is superuser.",
        ),
    ],
    owner_password: Annotated[
        str, typer.Option(envvar="INFERWATCH_OWNER_PASSWORD", show_envvar=True, prompt=False)
    ] = "",
    writer_password: Annotated[
        str, typer.Option(envvar="INFERWATCH_WRITER_PASSWORD", show_envvar=True)
    ] = "",
    analyst_password: Annotated[
        str, typer.Option(envvar="INFERWATCH_ANALYST_PASSWORD", show_envvar=True)
    ] = "",
) -> None:
    """Create the owner, writer and analyst roles (passwords required, never defaulted)."""
    try:
        mig.ensure_roles(
            dsn,
            owner_password=owner_password,
            writer_password=writer_password,
            analyst_password=analyst_password,
        )
    except mig.MigrationError as exc:
        _fail(str(exc))
        return
    typer.echo(f"roles ready: {mig.OWNER_ROLE}, {mig.WRITER_ROLE}, {mig.ANALYST_ROLE}")


@db_app.command()
def replay(
    dsn: Annotated[
        str,
        typer.Option("--dsn", envvar="INFERWATCH_DATABASE_URL", show_envvar=True),
    ],
    spool_dir: Annotated[
        Path, typer.Option(envvar="INFERWATCH_AUDIT_SPOOL_DIR", show_envvar=True)
    ] = Path("var/spool"),
    timeout_s: Annotated[float, typer.Option(help="give up after this long")] = 600.0,
) -> None:
    """Replay one free spool slot (e.g. left by a worker that no longer runs) and exit."""
    from opentelemetry.sdk.metrics import MeterProvider

    from inferwatch.audit.writer import PostgresAuditWriter

    w = PostgresAuditWriter(dsn=dsn, spool_dir=spool_dir, meter=MeterProvider().get_meter("cli"))
    w.start()
    pending = w.spool.pending_records
    ok = w.wait_idle(timeout_s)
    left = w.spool.pending_records
    w.close(10.0)
    typer.echo(f"spool {w.spool.slot}: {pending} records found, {left} left")
    if not ok:
        raise typer.Exit(1)
