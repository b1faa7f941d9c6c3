"""Native launcher: the whole inferwatch stack as plain processes on 127.0.0.1.

    python stack/launch.py up [--name NAME] [--no-collector] [--allow-missing-migrate]
    python stack/launch.py status [--name NAME]
    python stack/launch.py down [--name NAME]

`up` starts, in order, Postgres (its own cluster under the run folder, run as the
`postgres` OS user when we are root), the OpenTelemetry Collector, Prometheus and the
service (`inferwatch serve`), and waits for each one's health check within a deadline.
Before the service it creates the database, the roles (`inferwatch db roles`) and the schema
(`inferwatch db migrate`). Everything a run needs lives in `run/<name>/`: logs/, pids/,
state.json (ports and options, so `status`/`down` work from another shell), secrets.json
(random DB passwords made for this run folder, mode 0600; never a fixed default), the
Postgres data, the collector's trace file and Prometheus' data.

The configs are the repository's own files, the same ones docker-compose mounts:
collector/config.yaml (addresses from environment variables), prometheus/prometheus.yml
and prometheus/rules/ (symlinked into run/<name>/prometheus/ beside the target files this
launcher writes). Ports come from stack/ports.env; an environment variable of the same
name overrides one. A port already in use is an error naming the port, never a hang.

The e2e tests import `Stack` and start/stop single components with it. Standard library
plus psycopg (a project dependency) only. This module must never leave a process behind
that `down` cannot find: every pid is written before we wait on anything.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = ROOT / "stack"
CACHE = Path(os.environ.get("INFERWATCH_CACHE", ROOT / ".stack"))
COMPONENTS = ("postgres", "collector", "prometheus", "service")
# Postgres settings for the write-heavy audit database (docs/audit.md, "Server settings"):
# checkpoints spaced out so a sustained load meets no checkpoint / full-page-write storm
# every few seconds (measured: 1M rows through the writer, 2 checkpoints -> 0, +13% rows/s),
# WAL buffers for 2 MB COPY batches, full-page images compressed. Durability untouched
# (fsync, synchronous_commit, full_page_writes stay on). The test/bench cluster
# (tests/fixtures/pg.py) and docker-compose.yml run the same settings (a test checks).
PG_AUDIT_SETTINGS = {
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "wal_buffers": "64MB",
    "wal_compression": "lz4",
}
DB_NAME = "inferwatch"


class LaunchError(RuntimeError):
    """Something the operator must fix; the message says what."""


# --- configuration -------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; '#' comments and blank lines ignored (the subset compose reads too)."""
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise LaunchError(f"{path}: not KEY=VALUE: {raw!r}")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Ports:
    service: int
    postgres: int
    otlp_grpc: int
    otlp_http: int
    otelcol_metrics: int
    otelcol_health: int
    prometheus: int

    ENV_NAMES = {
        "service": "INFERWATCH_PORT",
        "postgres": "POSTGRES_PORT",
        "otlp_grpc": "OTELCOL_OTLP_GRPC_PORT",
        "otlp_http": "OTELCOL_OTLP_HTTP_PORT",
        "otelcol_metrics": "OTELCOL_METRICS_PORT",
        "otelcol_health": "OTELCOL_HEALTH_PORT",
        "prometheus": "PROMETHEUS_PORT",
    }

    @classmethod
    def load(
        cls, path: Path = STACK_DIR / "ports.env", environ: Mapping[str, str] | None = None
    ) -> Ports:
        """stack/ports.env, each value overridable by an environment variable of its name."""
        env = os.environ if environ is None else environ
        file = read_env_file(path)
        values: dict[str, int] = {}
        for attr, name in cls.ENV_NAMES.items():
            raw = env.get(name) or file.get(name)
            if raw is None:
                raise LaunchError(f"{path}: {name} missing")
            values[attr] = int(raw)
        return cls(**values)

    @classmethod
    def free(cls) -> Ports:
        """Distinct free loopback ports (tests, so parallel runs never collide)."""
        socks = []
        try:
            for _ in cls.ENV_NAMES:
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_ports_free(component: str, ports: Mapping[str, int]) -> None:
    busy = {name: p for name, p in ports.items() if port_in_use(p)}
    if busy:
        desc = ", ".join(f"{name}={p}" for name, p in busy.items())
        raise LaunchError(
            f"cannot start {component}: port already in use ({desc}). Stop whatever listens "
            f"there (`ss -ltnp | grep :PORT`) or set another port in stack/ports.env or the "
            f"environment variable of that name."
        )


def find_binary(name: str) -> Path:
    """A binary from stack/install.sh's cache, else from PATH."""
    cached = CACHE / "bin" / name
    if cached.exists():
        return cached
    found = shutil.which(name)
    if found:
        return Path(found)
    raise LaunchError(f"{name} not found in {CACHE / 'bin'} or on PATH: run stack/install.sh")


def find_pg_bin() -> Path:
    env = os.environ.get("INFERWATCH_PG_BIN")
    cands = [Path(env)] if env else sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for c in cands:
        if (c / "initdb").exists():
            return c
    raise LaunchError(
        "Postgres binaries not found under /usr/lib/postgresql/*/bin: run stack/install.sh"
    )


def venv_bin(name: str) -> Path:
    for cand in (ROOT / ".venv" / "bin" / name, Path(sys.executable).parent / name):
        if cand.exists():
            return cand
    found = shutil.which(name)
    if found:
        return Path(found)
    raise LaunchError(f"{name} not found in .venv/bin: install the project (pip install -e .)")


# --- processes -----------------------------------------------------------------------


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback URL)
            return bool(200 <= resp.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def tcp_ok(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as gone (reap it if it is our child)
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_for(
    check: Callable[[], bool],
    deadline_s: float,
    what: str,
    alive: Callable[[], bool],
    log: Path | None = None,
) -> None:
    """Poll `check` until true; fail early when the process died, or at the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if check():
            return
        if not alive():
            raise LaunchError(f"{what} exited during start-up{_log_tail(log)}")
        time.sleep(0.1)
    raise LaunchError(f"{what} not healthy within {deadline_s:.0f}s{_log_tail(log)}")


def _log_tail(log: Path | None, lines: int = 25) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(tail)


def terminate(pid: int, deadline_s: float = 15.0, group: bool = True) -> None:
    """SIGTERM (to the process group we created), then SIGKILL after the deadline."""

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    if not pid_alive(pid):
        return
    send(signal.SIGTERM)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    send(signal.SIGKILL)
    end = time.monotonic() + 5
    while time.monotonic() < end and pid_alive(pid):
        time.sleep(0.05)


# --- the stack -----------------------------------------------------------------------


@dataclass
class Options:
    collector: bool = True  # False: no collector; Prometheus scrapes the service's /metrics
    allow_missing_migrate: bool = False  # tolerate a service without `inferwatch db` (interim)
    service_env: dict[str, str] = field(default_factory=dict)  # extra env for the service


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    endpoint: str
    log: str


def postgres_home(run_dir: Path) -> Path:
    """Where a run folder's Postgres cluster lives.

    As root, Postgres runs as the `postgres` OS user, which cannot enter a checkout under
    a root-only directory (a clone in a 0700 temp dir, as CI makes); so the cluster lives
    under the system temp dir (world-traversable), at a path derived from the run folder
    so that `status`/`down` from another shell find it again. The run folder gets a
    `postgres` symlink to it.
    """
    if os.geteuid() != 0:
        return run_dir / "postgres"
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"inferwatch-pg-{digest}"


class Stack:
    """One native stack in one run folder. Every start_*/stop is usable on its own."""

    def __init__(self, run_dir: Path, ports: Ports, options: Options | None = None) -> None:
        self.run_dir = run_dir.resolve()
        self.ports = ports
        self.options = options or Options()
        self.logs = self.run_dir / "logs"
        self.pids = self.run_dir / "pids"
        self.pg_dir = postgres_home(self.run_dir)
        self.pg_data = self.pg_dir / "data"
        self.prom_dir = self.run_dir / "prometheus"
        self.traces_file = self.run_dir / "collector" / "traces.jsonl"
        self.spool_dir = self.run_dir / "spool"
        self._started: list[str] = []  # what this object started (cleanup on a failed `up`)

    # -- persisted state -------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: Path) -> Stack:
        """A stack whose `up` ran earlier (from its state.json)."""
        state_file = run_dir / "state.json"
        if not state_file.exists():
            raise LaunchError(f"no stack in {run_dir} (no state.json): run `up` first")
        state = json.loads(state_file.read_text())
        return cls(run_dir, Ports(**state["ports"]), Options(**state["options"]))

    def save_state(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"ports": asdict(self.ports), "options": asdict(self.options)}
        (self.run_dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    def secrets(self) -> dict[str, str]:
        """Random passwords for this run folder, made once, readable by us only."""
        path = self.run_dir / "secrets.json"
        if path.exists():
            data: dict[str, str] = json.loads(path.read_text())
            return data
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = {r: secrets.token_urlsafe(24) for r in ("postgres", "owner", "writer", "analyst")}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        return data

    # -- urls and dsns -----------------------------------------------------------------
    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.service}"

    def dsn(self, role: str, db: str = DB_NAME) -> str:
        user = {
            "postgres": "postgres",
            "owner": "inferwatch_owner",
            "writer": "inferwatch_writer",
            "analyst": "inferwatch_analyst",
        }[role]
        pw = self.secrets()[role]
        return f"postgresql://{user}:{pw}@127.0.0.1:{self.ports.postgres}/{db}"

    # -- pid files ---------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        if name == "postgres":
            pm = self.pg_data / "postmaster.pid"
            try:
                return int(pm.read_text().splitlines()[0])
            except (OSError, ValueError, IndexError):
                return None
        try:
            return int(self._pid_file(name).read_text())
        except (OSError, ValueError):
            return None

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        old = self.pid(name)
        if old is not None and pid_alive(old):
            raise LaunchError(f"{name} already runs (pid {old}); `down` first")
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (handed to the child)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        self._pid_file(name).write_text(f"{proc.pid}\n")
        self._started.append(name)
        return proc.pid

    def _wait_healthy(self, name: str, check: Callable[[], bool], deadline_s: float) -> None:
        pid = self.pid(name)
        wait_for(
            check,
            deadline_s,
            name,
            lambda: pid is not None and pid_alive(pid),
            self.logs / f"{name}.log",
        )

    # -- Postgres ----------------------------------------------------------------------
    def _as_postgres(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def _pg(self, *argv: str, timeout: float = 120) -> None:
        cmd = self._as_postgres([str(find_pg_bin() / argv[0]), *argv[1:]])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise LaunchError(
                f"{argv[0]} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
                f"{_log_tail(self.pg_dir / 'postgres.log')}"
            )

    def start_postgres(self, deadline_s: float = 60) -> None:
        check_ports_free("postgres", {"POSTGRES_PORT": self.ports.postgres})
        self.pg_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.pg_dir, "postgres", "postgres")
        self.pg_dir.chmod(0o700)
        link = self.run_dir / "postgres"
        if link != self.pg_dir and not link.is_symlink():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.pg_dir)
        if not (self.pg_data / "PG_VERSION").exists():
            pwfile = self.pg_dir / "pwfile"
            pwfile.write_text(self.secrets()["postgres"] + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, "postgres", "postgres")
            pwfile.chmod(0o600)
            try:
                self._pg(
                    "initdb",
                    "-D",
                    str(self.pg_data),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                )
            finally:
                pwfile.unlink(missing_ok=True)
        # Settings on the command line: the run's port, loopback only, our socket dir,
        # and the audit database's write settings.
        opts = (
            f"-c port={self.ports.postgres} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.pg_dir} "
            + " ".join(f"-c {k}={v}" for k, v in PG_AUDIT_SETTINGS.items())
        )
        self._pg(
            "pg_ctl",
            "-D",
            str(self.pg_data),
            "-l",
            str(self.pg_dir / "postgres.log"),
            "-o",
            opts,
            "-w",
            "-t",
            str(int(deadline_s)),
            "start",
            timeout=deadline_s + 10,
        )
        self._started.append("postgres")
        self.logs.mkdir(parents=True, exist_ok=True)
        link = self.logs / "postgres.log"
        if not link.exists():
            link.symlink_to(self.pg_dir / "postgres.log")

    def stop_postgres(self, deadline_s: float = 30) -> None:
        if not (self.pg_data / "postmaster.pid").exists():
            return
        try:
            self._pg(
                "pg_ctl",
                "-D",
                str(self.pg_data),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(deadline_s)),
                "stop",
                timeout=deadline_s + 10,
            )
        except LaunchError:
            pid = self.pid("postgres")
            if pid is not None:
                terminate(pid, 5, group=False)

    def prepare_database(self) -> None:
        """Create the database, the roles and the schema (idempotent)."""
        import psycopg

        pw = self.secrets()
        with psycopg.connect(self.dsn("postgres", "postgres"), autocommit=True) as conn:
            if (
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
                is None
            ):
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        env = {
            "INFERWATCH_OWNER_PASSWORD": pw["owner"],
            "INFERWATCH_WRITER_PASSWORD": pw["writer"],
            "INFERWATCH_ANALYST_PASSWORD": pw["analyst"],
        }
        cli = str(venv_bin("inferwatch"))
        steps = [
            ("db roles", [cli, "db", "roles", "--dsn", self.dsn("postgres")]),
            ("db migrate", [cli, "db", "migrate", "--dsn", self.dsn("owner")]),
        ]
        for what, argv in steps:
            proc = subprocess.run(
                argv,
                cwd=ROOT,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            with open(self.logs / "db.log", "a") as f:
                f.write(f"$ inferwatch {what}\n{proc.stdout}{proc.stderr}\n")
            if proc.returncode != 0:
                missing = "No such command" in proc.stderr or "No such command" in proc.stdout
                if missing and self.options.allow_missing_migrate:
                    print(
                        f"[launch] WARNING: `inferwatch {what}` does not exist yet; "
                        "continuing because of --allow-missing-migrate",
                        file=sys.stderr,
                    )
                    return
                raise LaunchError(
                    f"inferwatch {what} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
                )

    # -- collector ---------------------------------------------------------------------
    def collector_env(self) -> dict[str, str]:
        p = self.ports
        return {
            "OTELCOL_BIND_HOST": "127.0.0.1",
            "OTELCOL_OTLP_GRPC_PORT": str(p.otlp_grpc),
            "OTELCOL_OTLP_HTTP_PORT": str(p.otlp_http),
            "OTELCOL_METRICS_PORT": str(p.otelcol_metrics),
            "OTELCOL_HEALTH_PORT": str(p.otelcol_health),
            "PROMETHEUS_OTLP_ENDPOINT": f"{self.prometheus_url}/api/v1/otlp",
            "OTELCOL_TRACES_FILE": str(self.traces_file),
        }

    def start_collector(self, deadline_s: float = 30) -> None:
        p = self.ports
        check_ports_free(
            "collector",
            {
                "OTELCOL_OTLP_GRPC_PORT": p.otlp_grpc,
                "OTELCOL_OTLP_HTTP_PORT": p.otlp_http,
                "OTELCOL_METRICS_PORT": p.otelcol_metrics,
                "OTELCOL_HEALTH_PORT": p.otelcol_health,
            },
        )
        self.traces_file.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            str(find_binary("otelcol-inferwatch")),
            f"--config={ROOT / 'collector' / 'config.yaml'}",
        ]
        self._spawn("collector", argv, self.collector_env(), self.run_dir)
        self._wait_healthy(
            "collector", lambda: http_ok(f"http://127.0.0.1:{p.otelcol_health}/"), deadline_s
        )

    # -- Prometheus --------------------------------------------------------------------
    def write_prometheus_targets(self) -> None:
        """The per-run part of prometheus.yml: file_sd target lists (see its header)."""
        targets = self.prom_dir / "targets"
        targets.mkdir(parents=True, exist_ok=True)
        p = self.ports
        lists = {
            "otelcol.json": [f"127.0.0.1:{p.otelcol_metrics}"] if self.options.collector else [],
            "prometheus.json": [f"127.0.0.1:{p.prometheus}"],
            # the no-collector path only: never both paths for the same series
            "inferwatch.json": [] if self.options.collector else [f"127.0.0.1:{p.service}"],
        }
        for fname, hosts in lists.items():
            doc = [{"targets": hosts, "labels": {"stack": "native"}}] if hosts else []
            tmp = targets / (fname + ".tmp")
            tmp.write_text(json.dumps(doc) + "\n")
            tmp.replace(targets / fname)

    def start_prometheus(self, deadline_s: float = 60) -> None:
        check_ports_free("prometheus", {"PROMETHEUS_PORT": self.ports.prometheus})
        self.prom_dir.mkdir(parents=True, exist_ok=True)
        for name, target in (
            ("prometheus.yml", ROOT / "prometheus" / "prometheus.yml"),
            ("rules", ROOT / "prometheus" / "rules"),
        ):
            link = self.prom_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
        self.write_prometheus_targets()
        argv = [
            str(find_binary("prometheus")),
            f"--config.file={self.prom_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.prom_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.ports.prometheus}",
            "--web.enable-otlp-receiver",
            "--enable-feature=exemplar-storage",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=3d",
        ]
        self._spawn("prometheus", argv, {}, self.prom_dir)
        self._wait_healthy(
            "prometheus", lambda: http_ok(f"{self.prometheus_url}/-/ready"), deadline_s
        )

    # -- the service -------------------------------------------------------------------
    def service_env(self) -> dict[str, str]:
        env = {
            "INFERWATCH_HOST": "127.0.0.1",
            "INFERWATCH_PORT": str(self.ports.service),
            "INFERWATCH_DATABASE_URL": self.dsn("writer"),
            "INFERWATCH_AUDIT_SPOOL_DIR": str(self.spool_dir),
            "OTEL_SERVICE_NAME": "inferwatch",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.ports.otlp_http}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            # ms; the same as docker-compose.yml. Prometheus evaluates rules every 5 s
            # (prometheus.yml), so a fresher export buys nothing, and at 1 s the export
            # thread cost ~10 µs per request (bench/cpu).
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            # One row per predict_proba gains nothing from OpenMP threads, and their
            # spin-waits stalled single predictions for up to ~0.8 s on a busy 2-core host
            # (measured: P99 835 ms vs P50 1.5 ms). The caller's own value wins.
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        if not self.options.collector:
            env["INFERWATCH_OTLP_ENABLED"] = "false"
        return {**env, **self.options.service_env}

    def start_service(self, deadline_s: float = 240) -> None:
        check_ports_free("service", {"INFERWATCH_PORT": self.ports.service})
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        argv = [str(venv_bin("inferwatch")), "serve"]
        self._spawn("service", argv, self.service_env(), ROOT)
        # the first start trains the bundled model if none exists: a generous deadline
        self._wait_healthy("service", lambda: http_ok(f"{self.service_url}/readyz"), deadline_s)

    # -- all together ------------------------------------------------------------------
    def up(self) -> None:
        self.save_state()
        try:
            self.start_postgres()
            self.prepare_database()
            if self.options.collector:
                self.start_collector()
            self.start_prometheus()
            self.start_service()
        except BaseException:
            # take down only what this call started, never another run's processes
            for name in reversed(self._started):
                with contextlib.suppress(Exception):
                    self.stop(name)
            raise

    def stop(self, name: str, deadline_s: float = 15) -> None:
        if name == "postgres":
            self.stop_postgres()
            return
        pid = self.pid(name)
        if pid is not None:
            terminate(pid, deadline_s)
        self._pid_file(name).unlink(missing_ok=True)

    def down(self) -> None:
        for name in ("service", "prometheus", "collector", "postgres"):
            self.stop(name)

    def purge(self) -> None:
        """Delete the run folder and the Postgres cluster (after `down`)."""
        shutil.rmtree(self.pg_dir, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def status(self) -> list[ComponentStatus]:
        p = self.ports
        checks: dict[str, tuple[str, Callable[[], bool]]] = {
            "postgres": (f"127.0.0.1:{p.postgres}", lambda: tcp_ok(p.postgres)),
            "collector": (
                f"otlp grpc :{p.otlp_grpc} http :{p.otlp_http}, health "
                f":{p.otelcol_health}, metrics :{p.otelcol_metrics}",
                lambda: http_ok(f"http://127.0.0.1:{p.otelcol_health}/"),
            ),
            "prometheus": (self.prometheus_url, lambda: http_ok(f"{self.prometheus_url}/-/ready")),
            "service": (self.service_url, lambda: http_ok(f"{self.service_url}/readyz")),
        }
        out = []
        for name in COMPONENTS:
            pid = self.pid(name)
            running = pid is not None and pid_alive(pid)
            endpoint, check = checks[name]
            out.append(
                ComponentStatus(
                    name,
                    pid,
                    running,
                    running and check(),
                    endpoint,
                    str(self.logs / f"{name}.log"),
                )
            )
        return out


# --- CLI -----------------------------------------------------------------------------


def _run_dir(name: str) -> Path:
    return ROOT / "run" / name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stack/launch.py", description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["up", "down", "status"])
    ap.add_argument("--name", default="default", help="run folder: run/<name>/")
    ap.add_argument(
        "--no-collector",
        action="store_true",
        help="no collector: the service keeps /metrics, Prometheus scrapes it",
    )
    ap.add_argument(
        "--allow-missing-migrate",
        action="store_true",
        help="interim: continue when `inferwatch db` does not exist yet",
    )
    args = ap.parse_args(argv)
    run_dir = _run_dir(args.name)
    try:
        if args.command == "up":
            stack = Stack(
                run_dir,
                Ports.load(),
                Options(
                    collector=not args.no_collector,
                    allow_missing_migrate=args.allow_missing_migrate,
                ),
            )
            t0 = time.monotonic()
            stack.up()
            print(f"[launch] up in {time.monotonic() - t0:.1f}s; run folder {run_dir}")
            _print_status(stack)
            print(f"[launch] service {stack.service_url}  prometheus {stack.prometheus_url}")
            print(f"[launch] stop with: python stack/launch.py down --name {args.name}")
        elif args.command == "status":
            _print_status(Stack.open(run_dir))
        else:
            Stack.open(run_dir).down()
            print(f"[launch] down ({run_dir})")
    except LaunchError as exc:
        print(f"[launch] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_status(stack: Stack) -> None:
    print(f"{'component':<11} {'pid':>7}  {'state':<9} endpoint")
    for s in stack.status():
        state = "healthy" if s.healthy else ("running" if s.running else "stopped")
        print(f"{s.name:<11} {s.pid or '-':>7}  {state:<9} {s.endpoint}")


if __name__ == "__main__":
    sys.exit(main())
