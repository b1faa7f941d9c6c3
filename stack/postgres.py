"""Postgres management: one implementation for the native stack, the tests and the benchmarks.

`PgCluster` is one cluster in a directory of its own (data/, postgres.log, its socket) on a
loopback port, run from Debian's Postgres binaries; as root, `initdb` and `pg_ctl` run as the
`postgres` OS user (Postgres refuses to run as root). Every cluster runs the audit database's
write settings, `PG_AUDIT_SETTINGS` (docker-compose.yml runs them too; a test checks).
`create_audit_db` makes the database, the owner/writer/analyst/replay roles and the schema with
the same code as `inferwatch db roles` and `inferwatch db migrate`.

The launcher's cluster authenticates every role by password (scram; peer on the socket).
`throwaway_cluster` is the tests' and benchmarks' variant: a fresh temp directory, a free
port, trust for the superuser on loopback. This module never touches a cluster it was not
given a directory for, and never stores a password anywhere but where its caller says.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from stack.procs import LaunchError, free_ports, log_tail, terminate

# Postgres settings for the write-heavy audit database (docs/audit.md, "Server settings"):
# checkpoints spaced out so a sustained load meets no checkpoint / full-page-write storm
# every few seconds (measured through the writer: fewer checkpoints, more rows/s), WAL
# buffers for 2 MB COPY batches, full-page images compressed. Durability untouched (fsync,
# synchronous_commit, full_page_writes stay on). Every cluster this module starts and
# docker-compose.yml run the same settings (a test checks).
PG_AUDIT_SETTINGS = {
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "wal_buffers": "64MB",
    "wal_compression": "lz4",
}
# What a throwaway cluster (tests, benchmarks) runs besides the audit settings: durability
# on as in production, a memory footprint that suits a shared CI machine, a quiet log.
THROWAWAY_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "max_connections": "50",
    "shared_buffers": "256MB",
    "log_min_messages": "warning",
}
DB_NAME = "inferwatch"
# role key -> the Postgres role (the roles inferwatch.audit.migrate.ensure_roles creates)
ROLE_USERS = {
    "postgres": "postgres",
    "owner": "inferwatch_owner",
    "writer": "inferwatch_writer",
    "analyst": "inferwatch_analyst",
    "replay": "inferwatch_replay",
}


def find_pg_bin() -> Path:
    """Debian's Postgres binaries (newest major first), INFERWATCH_PG_BIN, or PATH."""
    env = os.environ.get("INFERWATCH_PG_BIN")
    cands = [Path(env)] if env else sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if not env and (found := shutil.which("initdb")):
        cands.append(Path(found).parent)
    for c in cands:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    raise LaunchError(
        "Postgres binaries not found under /usr/lib/postgresql/*/bin: run stack/install.sh"
    )


def random_passwords() -> dict[str, str]:
    """A fresh random password for each role key of ROLE_USERS."""
    return {role: secrets.token_urlsafe(24) for role in ROLE_USERS}


def cluster_home(run_dir: Path) -> Path:
    """Where a run folder's Postgres cluster lives.

    As root, Postgres runs as the `postgres` OS user, which cannot enter a checkout under
    a root-only directory (a clone in a 0700 temp dir, as CI makes); so the cluster lives
    under the system temp dir (world-traversable), at a path derived from the run folder
    so that `status`/`down` from another shell find it again.
    """
    if os.geteuid() != 0:
        return run_dir / "postgres"
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"inferwatch-pg-{digest}"


def _own_dir(path: Path) -> None:
    """A directory only the server's OS user can enter."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    path.chmod(0o700)


class PgCluster:
    """One cluster under `home`, listening on 127.0.0.1:`port` only.

    `settings` are server settings added to PG_AUDIT_SETTINGS, passed on the server's
    command line at every start. `init`, `start` and `stop` can be called again and again.
    """

    def __init__(
        self,
        home: Path,
        port: int,
        *,
        settings: Mapping[str, str] | None = None,
        locale: str | None = None,
    ) -> None:
        self.home = home
        self.port = port
        self.settings = {**PG_AUDIT_SETTINGS, **(settings or {})}
        self.locale = locale
        self.data_dir = home / "data"
        self.log_file = home / "postgres.log"

    # -- running the binaries ----------------------------------------------------------
    def _run(self, *argv: str, timeout: float = 120) -> None:
        cmd = [str(find_pg_bin() / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise LaunchError(
                f"{argv[0]} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
                f"{log_tail(self.log_file)}"
            )

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self, superuser_password: str | None) -> None:
        """initdb. Every role authenticates with scram over TCP; the superuser with
        `superuser_password`, or, when it is None, with trust on loopback (throwaway
        clusters only: nothing else listens there on their port)."""
        _own_dir(self.home)
        args = ["initdb", "-D", str(self.data_dir), "-U", "postgres", "-E", "UTF8"]
        if self.locale:
            args.append(f"--locale={self.locale}")
        args.append("--auth-host=scram-sha-256")
        if superuser_password is None:
            self._run(*args, "--auth-local=trust")
            hba = self.data_dir / "pg_hba.conf"
            trust = "host all postgres 127.0.0.1/32 trust\n"
            hba.write_text(trust + hba.read_text())  # first match wins
            return
        pwfile = self.home / "pwfile"
        pwfile.write_text(superuser_password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        try:
            self._run(*args, "--auth-local=peer", f"--pwfile={pwfile}")
        finally:
            pwfile.unlink(missing_ok=True)

    def server_options(self) -> str:
        """The settings on the server's command line: the port, loopback only, our socket
        directory, then PG_AUDIT_SETTINGS and this cluster's own."""
        base = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.home),
        }
        return " ".join(f"-c {k}={v}" for k, v in {**base, **self.settings}.items())

    def start(self, deadline_s: float = 60) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            self.server_options(),
            "-w",
            "-t",
            str(int(deadline_s)),
            "start",
            timeout=deadline_s + 10,
        )

    def pid(self) -> int | None:
        """The postmaster's pid, from its pid file (None when it is not running)."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def stop(self, mode: str = "fast", deadline_s: float = 30) -> None:
        """pg_ctl stop; if that fails, SIGTERM then SIGKILL to the postmaster."""
        if not self.running:
            return
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(int(deadline_s)),
                "stop",
                timeout=deadline_s + 10,
            )
        except LaunchError:
            pid = self.pid()
            if pid is not None:
                terminate(pid, 5, group=False)

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.home, ignore_errors=True)

    def dsn(self, dbname: str = "postgres", user: str = "postgres", password: str = "") -> str:
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"


def throwaway_cluster(settings: Mapping[str, str] = THROWAWAY_SETTINGS) -> PgCluster:
    """A started cluster in a fresh temp directory on a free port, trust for the superuser
    on loopback (tests, benchmarks). `destroy()` removes it."""
    home = Path(tempfile.mkdtemp(prefix="inferwatch-pg-"))
    (port,) = free_ports(1)
    cluster = PgCluster(home, port, settings=settings, locale="C.UTF-8")
    try:
        cluster.init(superuser_password=None)
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


@dataclass(frozen=True)
class AuditDb:
    """The audit database in a cluster, and the passwords of its roles (ROLE_USERS keys;
    the superuser's is '' with trust)."""

    cluster: PgCluster
    dbname: str
    passwords: Mapping[str, str]

    def dsn(self, role: str) -> str:
        return self.cluster.dsn(self.dbname, ROLE_USERS[role], self.passwords.get(role, ""))

    @property
    def admin_dsn(self) -> str:
        return self.dsn("postgres")

    @property
    def owner_dsn(self) -> str:
        return self.dsn("owner")

    @property
    def writer_dsn(self) -> str:
        return self.dsn("writer")

    @property
    def analyst_dsn(self) -> str:
        return self.dsn("analyst")

    @property
    def replay_dsn(self) -> str:
        return self.dsn("replay")


def create_audit_db(
    cluster: PgCluster, dbname: str, passwords: Mapping[str, str], log: Path | None = None
) -> AuditDb:
    """Create `dbname` (if missing), the three roles and the schema (idempotent).

    The same calls as `inferwatch db roles` and `inferwatch db migrate`; what they report
    is appended to `log` when given.
    """
    import psycopg

    from inferwatch.audit import migrate

    db = AuditDb(cluster, dbname, passwords)
    admin = cluster.dsn("postgres", "postgres", passwords.get("postgres", ""))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{dbname}"')
    try:
        migrate.ensure_roles(
            db.admin_dsn,
            owner_password=passwords["owner"],
            writer_password=passwords["writer"],
            analyst_password=passwords["analyst"],
            replay_password=passwords.get("replay"),
        )
        res = migrate.migrate(db.owner_dsn)
    except migrate.MigrationError as exc:
        raise LaunchError(f"audit database {dbname}: {exc}") from exc
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        applied = ", ".join(f"{v:04d}" for v in res.applied) or "none"
        with log.open("a") as f:
            f.write(
                f"{dbname}: roles ready: {', '.join(list(ROLE_USERS.values())[1:])}; "
                f"migrations applied: {applied} (already: {len(res.already)}); partitions "
                f"created: {res.partitions_created}, dropped: {res.partitions_dropped}\n"
            )
    return db
