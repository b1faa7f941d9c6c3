"""Schema migrations, roles and partition maintenance for the audit database.

A deliberately small runner (see docs/audit.md for why not a migration tool):
numbered ``migrations/NNNN_name.sql`` files, applied in order inside ONE
transaction that first takes an advisory lock, recorded in ``schema_migrations``
with their SHA-256. Running it again is a no-op, so it is safe on every start and
from several processes at once; an applied file whose checksum changed is refused.

Objects are owned by ``inferwatch_owner``: when the DSN's user is another role
(e.g. a superuser) the runner ``SET ROLE``s to the owner first.
``ensure_roles`` (needs CREATEROLE) creates the owner, writer, analyst and replay roles;
passwords come from the caller and an empty one is refused.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Final

import psycopg
from psycopg import sql

OWNER_ROLE: Final = "inferwatch_owner"
WRITER_ROLE: Final = "inferwatch_writer"
ANALYST_ROLE: Final = "inferwatch_analyst"
# `inferwatch replay`: reads the audit log, appends to `replays` only (migration 0005)
REPLAY_ROLE: Final = "inferwatch_replay"
MIGRATION_LOCK_KEY: Final = 0x1F_A0D1_7001  # pg_advisory_xact_lock key of the runner
DEFAULT_DAYS_AHEAD: Final = 7
DEFAULT_RETENTION_DAYS: Final = 90

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The migration files shipped in ``service/inferwatch/audit/migrations``, in order."""
    out: list[Migration] = []
    for entry in resources.files("inferwatch.audit").joinpath("migrations").iterdir():
        m = _NAME_RE.match(entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    out.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in out]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions: {versions}")
    return out


@dataclass(frozen=True, slots=True)
class MigrateResult:
    applied: list[int]
    already: list[int]
    partitions_created: int
    partitions_dropped: int


def migrate(
    dsn: str,
    *,
    days_ahead: int = DEFAULT_DAYS_AHEAD,
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> MigrateResult:
    """Apply pending migrations, then create partitions ahead and drop expired ones."""
    migrations = load_migrations()
    with psycopg.connect(dsn) as conn:
        become_owner(conn)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            int(v): str(c)
            for v, c in conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
        }
        applied: list[int] = []
        for mig in migrations:
            if mig.version in done:
                if done[mig.version] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} was changed after it was "
                        "applied; add a new migration instead"
                    )
                continue
            conn.execute(mig.sql.encode())  # bytes: no placeholder parsing
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (mig.version, mig.name, mig.checksum),
            )
            applied.append(mig.version)
        conn.commit()
        made, dropped = _maintain(conn, days_ahead, retention_days)
    return MigrateResult(applied, sorted(done), made, dropped)


def maintain_partitions(
    dsn: str,
    *,
    days_ahead: int = DEFAULT_DAYS_AHEAD,
    retention_days: int = DEFAULT_RETENTION_DAYS,
) -> tuple[int, int]:
    """Create daily partitions ``days_ahead`` ahead and drop those past retention."""
    with psycopg.connect(dsn) as conn:
        become_owner(conn)
        return _maintain(conn, days_ahead, retention_days)


def _maintain(conn: psycopg.Connection[object], days_ahead: int, retention: int) -> tuple[int, int]:
    row = conn.execute("SELECT inferwatch_ensure_partitions(%s)", (days_ahead,)).fetchone()
    made = int(row[0]) if row else 0  # type: ignore[index]
    row = conn.execute("SELECT inferwatch_drop_partitions(%s)", (retention,)).fetchone()
    dropped = int(row[0]) if row else 0  # type: ignore[index]
    conn.commit()
    return made, dropped


def become_owner(conn: psycopg.Connection[object]) -> None:
    row = conn.execute(
        "SELECT current_user = %s, EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)"
        " AND pg_has_role(current_user, %s, 'MEMBER')",
        (OWNER_ROLE, OWNER_ROLE, OWNER_ROLE),
    ).fetchone()
    assert row is not None
    is_owner, can_become = bool(row[0]), bool(row[1])  # type: ignore[index]
    if is_owner:
        return
    if not can_become:
        raise MigrationError(
            f"connect as {OWNER_ROLE} (or a member of it); create the roles first with "
            "`inferwatch db roles`"
        )
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(OWNER_ROLE)))


def ensure_roles(
    admin_dsn: str,
    *,
    owner_password: str,
    writer_password: str,
    analyst_password: str,
    replay_password: str | None = None,
) -> None:
    """Create (or update the passwords of) the roles; make the owner own the DB.

    Needs a role with CREATEROLE that owns the database or is a superuser. The replay
    role always exists (migration 0005 grants to it) but can log in only once it has a
    password: without ``replay_password`` it is created NOLOGIN, or left as it is.
    """
    if replay_password is not None and not replay_password.strip():
        raise MigrationError(f"refusing an empty password for {REPLAY_ROLE}")
    passwords = {
        OWNER_ROLE: owner_password,
        WRITER_ROLE: writer_password,
        ANALYST_ROLE: analyst_password,
    }
    for role, pw in passwords.items():
        if not pw or not pw.strip():
            raise MigrationError(f"refusing an empty password for {role}")
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for role, pw in passwords.items():
            ident = sql.Identifier(role)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(
                    verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
                ).format(ident, sql.Literal(pw))
            )
        db = conn.execute("SELECT current_database()").fetchone()
        assert db is not None
        dbi = sql.Identifier(str(db[0]))
        owner, writer, analyst = (sql.Identifier(r) for r in passwords)
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(dbi, owner))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(dbi))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}").format(dbi, writer, analyst))
        # the writer's staging tables are TEMP tables
        conn.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(dbi, writer))
        conn.execute(sql.SQL("ALTER ROLE {} SET statement_timeout = '60s'").format(writer))
        _ensure_replay_role(conn, dbi, replay_password)


def _ensure_replay_role(
    conn: psycopg.Connection[object], dbi: sql.Identifier, password: str | None
) -> None:
    ident = sql.Identifier(REPLAY_ROLE)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (REPLAY_ROLE,)).fetchone()
    flags = "NOSUPERUSER NOCREATEDB NOCREATEROLE"
    if password is not None:
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN " + flags + " PASSWORD {}").format(
                ident, sql.Literal(password)
            )
        )
    elif not exists:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN " + flags).format(ident))
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(dbi, ident))
