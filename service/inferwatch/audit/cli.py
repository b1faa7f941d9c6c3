"""``inferwatch db ...``: roles, migrations, partitions, spool replay, erasure.

Run by an operator or a deploy step, never by the service itself (the service
connects as ``inferwatch_writer``, which cannot run DDL). Typical order:

    inferwatch db roles --dsn "host=... dbname=inferwatch user=postgres"   # once, as an admin
    inferwatch db migrate --dsn "host=... dbname=inferwatch user=inferwatch_owner"  # every deploy
    inferwatch db partitions --dsn ...                                      # daily (cron)
    inferwatch db erase --entity-type T --entity-id ID --dsn ...            # an erasure request

An option left out takes its value from :class:`inferwatch.settings.Settings` (the
``INFERWATCH_*`` variable its help names); an option given on the command line wins.
Passwords come from options or settings and are never defaulted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import SecretStr

from inferwatch.audit import migrate as mig
from inferwatch.settings import Settings

db_app = typer.Typer(
    help="Audit database: roles, schema migrations, partitions, spool replay.",
    no_args_is_help=True,
)

DsnOpt = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        help="libpq DSN/URL of the owner (or an admin who may SET ROLE inferwatch_owner) "
        "(default: INFERWATCH_MIGRATE_DATABASE_URL)",
        show_default=False,
    ),
]
AheadOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="daily partitions made ahead (default: INFERWATCH_AUDIT_PARTITION_DAYS_AHEAD)",
        show_default=False,
    ),
]
RetentionOpt = Annotated[
    int | None,
    typer.Option(
        help="drop daily partitions older than this many days (0: keep all) "
        "(default: INFERWATCH_AUDIT_RETENTION_DAYS)",
        show_default=False,
    ),
]


def _fail(msg: str) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _dsn(given: str | None, setting: SecretStr | None, env: str) -> str:
    """The --dsn given, else the setting; neither: a usage error (exit 2)."""
    dsn = given or (setting.get_secret_value() if setting is not None else "")
    if not dsn:
        _fail(f"no database: pass --dsn or set {env}")
    return dsn


def _password(given: str | None, setting: SecretStr | None) -> str:
    if given is not None:
        return given
    return setting.get_secret_value() if setting is not None else ""  # "" is refused


def _partitioning(settings: Settings, ahead: int | None, retention: int | None) -> dict[str, int]:
    return {
        "days_ahead": settings.audit_partition_days_ahead if ahead is None else ahead,
        "retention_days": settings.audit_retention_days if retention is None else retention,
    }


@db_app.command()
def migrate(
    dsn: DsnOpt = None,
    days_ahead: AheadOpt = None,
    retention_days: RetentionOpt = None,
) -> None:
    """Apply pending schema migrations (idempotent), then maintain partitions."""
    settings = Settings()
    try:
        res = mig.migrate(
            _dsn(dsn, settings.migrate_database_url, "INFERWATCH_MIGRATE_DATABASE_URL"),
            **_partitioning(settings, days_ahead, retention_days),
        )
    except mig.MigrationError as exc:
        _fail(str(exc))
    applied = ", ".join(f"{v:04d}" for v in res.applied) or "none"
    typer.echo(
        f"migrations applied: {applied} (already: {len(res.already)}); "
        f"partitions created: {res.partitions_created}, dropped: {res.partitions_dropped}"
    )


@db_app.command()
def partitions(
    dsn: DsnOpt = None,
    days_ahead: AheadOpt = None,
    retention_days: RetentionOpt = None,
) -> None:
    """Create daily partitions ahead and drop those past retention (run daily)."""
    settings = Settings()
    made, dropped = mig.maintain_partitions(
        _dsn(dsn, settings.migrate_database_url, "INFERWATCH_MIGRATE_DATABASE_URL"),
        **_partitioning(settings, days_ahead, retention_days),
    )
    typer.echo(f"partitions created: {made}, dropped: {dropped}")


def _password_opt(env: str) -> Any:
    return typer.Option(help=f"default: {env}", show_default=False)


@db_app.command()
def roles(
    dsn: Annotated[
        str | None,
        typer.Option(
            "--dsn",
            help="DSN of a role with CREATEROLE that owns the database or is superuser "
            "(default: INFERWATCH_ADMIN_DATABASE_URL)",
            show_default=False,
        ),
    ] = None,
    owner_password: Annotated[str | None, _password_opt("INFERWATCH_OWNER_PASSWORD")] = None,
    writer_password: Annotated[str | None, _password_opt("INFERWATCH_WRITER_PASSWORD")] = None,
    analyst_password: Annotated[str | None, _password_opt("INFERWATCH_ANALYST_PASSWORD")] = None,
    replay_password: Annotated[
        str | None,
        typer.Option(
            help="default: INFERWATCH_REPLAY_PASSWORD; unset: the replay role cannot log in",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create the owner, writer and analyst roles (passwords required, never defaulted)."""
    settings = Settings()
    try:
        mig.ensure_roles(
            _dsn(dsn, settings.admin_database_url, "INFERWATCH_ADMIN_DATABASE_URL"),
            owner_password=_password(owner_password, settings.owner_password),
            writer_password=_password(writer_password, settings.writer_password),
            analyst_password=_password(analyst_password, settings.analyst_password),
            replay_password=replay_password
            if replay_password is not None
            else (
                settings.replay_password.get_secret_value() if settings.replay_password else None
            ),
        )
    except mig.MigrationError as exc:
        _fail(str(exc))
    typer.echo(
        f"roles ready: {mig.OWNER_ROLE}, {mig.WRITER_ROLE}, {mig.ANALYST_ROLE}, {mig.REPLAY_ROLE}"
    )


@db_app.command()
def replay(
    dsn: Annotated[
        str | None,
        typer.Option("--dsn", help="default: INFERWATCH_DATABASE_URL", show_default=False),
    ] = None,
    spool_dir: Annotated[
        Path | None,
        typer.Option(help="default: INFERWATCH_AUDIT_SPOOL_DIR", show_default=False),
    ] = None,
    timeout_s: Annotated[float, typer.Option(help="give up after this long")] = 600.0,
) -> None:
    """Replay one free spool slot (e.g. left by a worker that no longer runs) and exit."""
    from opentelemetry.sdk.metrics import MeterProvider

    from inferwatch.audit.writer import PostgresAuditWriter

    settings = Settings()
    w = PostgresAuditWriter(
        dsn=_dsn(dsn, settings.database_url, "INFERWATCH_DATABASE_URL"),
        spool_dir=settings.audit_spool_dir if spool_dir is None else spool_dir,
        meter=MeterProvider().get_meter("cli"),
    )
    w.start()
    pending = w.spool.pending_records
    ok = w.wait_idle(timeout_s)
    left = w.spool.pending_records
    w.close(10.0)
    typer.echo(f"spool {w.spool.slot}: {pending} records found, {left} left")
    if not ok:
        raise typer.Exit(1)


@db_app.command()
def erase(
    entity_type: Annotated[str, typer.Option(help="the entity's type, as sent in requests")],
    entity_id: Annotated[str, typer.Option(help="the entity's id, as sent in requests")],
    dsn: DsnOpt = None,
) -> None:
    """Right to erasure: delete every prediction, outcome and replay of one entity."""
    from inferwatch.audit.erase import erase_entity
    from inferwatch.workers import configure_logging

    configure_logging("info")
    settings = Settings()
    try:
        res = erase_entity(
            _dsn(dsn, settings.migrate_database_url, "INFERWATCH_MIGRATE_DATABASE_URL"),
            entity_type,
            entity_id,
        )
    except mig.MigrationError as exc:
        _fail(str(exc))
    replays = "no replays table" if res.replays is None else f"{res.replays} replays"
    typer.echo(f"erased: {res.predictions} predictions, {res.outcomes} outcomes, {replays}")
