"""Native launcher: the whole inferwatch stack as plain processes on 127.0.0.1.

    python stack/launch.py up [--name NAME] [--no-collector] [--analysis-interval 30s]
    python stack/launch.py status [--name NAME]
    python stack/launch.py down [--name NAME]

`up` starts, in order, Postgres (its own cluster, stack/postgres.py), Jaeger (the trace
backend, traces in memory), the OpenTelemetry Collector, Prometheus, the service
(`inferwatch serve`) and the analysis job (`inferwatch analysis-job`: drift and quality
gauges of the served model version, over OTLP to the collector), and waits for each one's
health check within a deadline (the analysis job's: its first gauges in Prometheus). Before
the service it creates the database, the roles and the schema (the code of `inferwatch db
roles` and `inferwatch db migrate`). Everything a run needs lives in `run/<name>/`: logs/,
pids/, state.json (ports and options, so `status`/`down` work from another shell),
secrets.json (random DB passwords made for this run folder, mode 0600; never a fixed
default), the Postgres data and Prometheus' data. Without the collector (`--no-collector`)
neither Jaeger nor the analysis job runs: nothing would carry their data.

The configs are the repository's own files, the same ones docker-compose mounts:
jaeger/config.yaml and collector/config.yaml (addresses from environment variables),
prometheus/prometheus.yml and prometheus/rules/ (symlinked into run/<name>/prometheus/
beside the target files this launcher writes). Ports come from stack/ports.env; an
environment variable of the same name overrides one. A port already in use is an error
naming the port, never a hang.

`Stack` composes stack/procs.py (spawning, waiting, stopping) and stack/postgres.py; the
e2e tests, the test fixtures and the benchmarks start single components with it. Standard
library plus psycopg (a project dependency) only; the schema, the settings' defaults and
the metric names come from the inferwatch package. This module must never leave a process
behind that `down` cannot find: every pid is written before we wait on anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # `python stack/launch.py`: the repo, not stack/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from inferwatch.analysis.jobs import SERVICE_NAME as ANALYSIS_JOB
from inferwatch.settings import DURATION_PATTERN, Settings
from inferwatch.telemetry.instruments import ANALYSIS_LAST_SUCCESS, prometheus_name
from stack.postgres import (
    DB_NAME,
    ROLE_USERS,
    AuditDb,
    PgCluster,
    cluster_home,
    create_audit_db,
    random_passwords,
)
from stack.procs import (
    CACHE,
    ROOT,
    LaunchError,
    check_ports_free,
    find_binary,
    free_ports,
    http_ok,
    pid_alive,
    poll,
    spawn,
    tcp_ok,
    terminate,
    venv_bin,
)

STACK_DIR = ROOT / "stack"
# every component, in start order (`down` stops them in reverse)
COMPONENTS = ("postgres", "jaeger", "collector", "prometheus", "service", "analysis")
# the no-collector path: no OTLP at all, so no trace backend and no analysis gauges
COMPONENTS_NO_COLLECTOR = ("postgres", "prometheus", "service")
__all__ = ["CACHE", "ROOT", "ComponentStatus", "LaunchError", "Options", "Ports", "Stack"]


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
    jaeger_otlp_grpc: int
    jaeger_otlp_http: int
    jaeger_query: int
    jaeger_query_grpc: int

    ENV_NAMES = {
        "service": "INFERWATCH_PORT",
        "postgres": "POSTGRES_PORT",
        "otlp_grpc": "OTELCOL_OTLP_GRPC_PORT",
        "otlp_http": "OTELCOL_OTLP_HTTP_PORT",
        "otelcol_metrics": "OTELCOL_METRICS_PORT",
        "otelcol_health": "OTELCOL_HEALTH_PORT",
        "prometheus": "PROMETHEUS_PORT",
        "jaeger_otlp_grpc": "JAEGER_OTLP_GRPC_PORT",
        "jaeger_otlp_http": "JAEGER_OTLP_HTTP_PORT",
        "jaeger_query": "JAEGER_QUERY_PORT",
        "jaeger_query_grpc": "JAEGER_QUERY_GRPC_PORT",
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
        return cls(*free_ports(len(cls.ENV_NAMES)))


def duration_s(text: str) -> float:
    """Seconds of a duration as the analysis job takes it: 30s, 5m, 1.5h, 7d."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise LaunchError(f"not a duration (30s, 5m, 1.5h, 7d): {text!r}")
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]


def _get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback URL)
            doc: dict[str, Any] = json.load(resp)
            return doc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LaunchError(f"GET {url}: {exc}") from None


def prom_query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector ([] when Prometheus cannot answer)."""
    url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        result: list[dict[str, Any]] = _get_json(url)["data"]["result"]
    except (LaunchError, KeyError):
        return []
    return result


# --- the stack -----------------------------------------------------------------------


def _default_analysis_interval() -> str:
    return Settings().analysis_interval  # INFERWATCH_ANALYSIS_INTERVAL, else the job's default


@dataclass
class Options:
    collector: bool = True  # False: no collector; Prometheus scrapes the service's /metrics
    service_env: dict[str, str] = field(default_factory=dict)  # extra env for the service
    collector_env: dict[str, str] = field(default_factory=dict)  # extra env for the collector
    # time between two analysis runs (a duration: 30s, 5m); the demo uses a short one
    analysis_interval: str = field(default_factory=_default_analysis_interval)
    # a folder of rule files Prometheus loads instead of prometheus/rules/ (tests: the
    # overlay with short `for:` from prometheus/rules/generate.py --overlay)
    rules_dir: str | None = None


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    endpoint: str
    log: str


class Stack:
    """One native stack in one run folder. Every start_*/stop is usable on its own."""

    def __init__(self, run_dir: Path, ports: Ports, options: Options | None = None) -> None:
        self.run_dir = run_dir.resolve()
        self.ports = ports
        self.options = options or Options()
        self.logs = self.run_dir / "logs"
        self.pids = self.run_dir / "pids"
        self.pg = PgCluster(cluster_home(self.run_dir), ports.postgres)
        self.prom_dir = self.run_dir / "prometheus"
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
        known = {f.name for f in fields(Options)}  # a run folder from an older launcher
        options = Options(**{k: v for k, v in state["options"].items() if k in known})
        # ... may lack newer ports too: those of stack/ports.env (its processes never had them)
        saved = {k: v for k, v in state["ports"].items() if k in Ports.ENV_NAMES}
        return cls(run_dir, Ports(**{**asdict(Ports.load()), **saved}), options)

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
        data = random_passwords()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        return data

    def analyst_pgpass(self) -> Path:
        """A pgpass file (mode 0600) with the analyst role's password, for `psql` and other
        libpq clients: PGPASSFILE=<it> psql ... never shows the password."""
        path = self.run_dir / "analyst.pgpass"
        if not path.exists():

            def esc(v: str) -> str:
                return v.replace("\\", "\\\\").replace(":", "\\:")

            fields_ = ("127.0.0.1", str(self.ports.postgres), DB_NAME, ROLE_USERS["analyst"])
            line = ":".join(esc(v) for v in (*fields_, self.secrets()["analyst"]))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(line + "\n")
        return path

    # -- urls and dsns -----------------------------------------------------------------
    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.service}"

    @property
    def jaeger_url(self) -> str:
        """Jaeger's query API (GET /api/traces/{trace id})."""
        return f"http://127.0.0.1:{self.ports.jaeger_query}"

    def components(self) -> tuple[str, ...]:
        """The components this stack runs, in start order."""
        return COMPONENTS if self.options.collector else COMPONENTS_NO_COLLECTOR

    def audit_db(self, db: str = DB_NAME) -> AuditDb:
        return AuditDb(self.pg, db, self.secrets())

    def dsn(self, role: str, db: str = DB_NAME) -> str:
        """A DSN for one of ROLE_USERS' keys (postgres, owner, writer, analyst)."""
        return self.audit_db(db).dsn(role)

    # -- processes ---------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        if name == "postgres":
            return self.pg.pid()
        try:
            return int(self._pid_file(name).read_text())
        except (OSError, ValueError):
            return None

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str], cwd: Path) -> int:
        old = self.pid(name)
        if old is not None and pid_alive(old):
            raise LaunchError(f"{name} already runs (pid {old}); `down` first")
        proc = spawn(
            argv,
            env={**os.environ, **env},
            cwd=cwd,
            log=self.logs / f"{name}.log",
            pid_file=self._pid_file(name),
        )
        self._started.append(name)
        return proc.pid

    def _wait_healthy(self, name: str, check: Callable[[], bool], deadline_s: float) -> None:
        pid = self.pid(name)
        poll(
            check,
            deadline_s,
            f"{name} to become healthy",
            alive=lambda: pid is not None and pid_alive(pid),
            log=self.logs / f"{name}.log",
        )

    # -- Postgres ----------------------------------------------------------------------
    def start_postgres(self, deadline_s: float = 60) -> None:
        check_ports_free("postgres", {"POSTGRES_PORT": self.ports.postgres})
        link = self.run_dir / "postgres"
        if link != self.pg.home and not link.is_symlink():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.pg.home)
        if not self.pg.initialized:
            self.pg.init(superuser_password=self.secrets()["postgres"])
        self.pg.start(deadline_s)
        self._started.append("postgres")
        self.logs.mkdir(parents=True, exist_ok=True)
        link = self.logs / "postgres.log"
        if not link.exists():
            link.symlink_to(self.pg.log_file)

    def prepare_database(self) -> None:
        """Create the database, the roles and the schema (idempotent)."""
        create_audit_db(self.pg, DB_NAME, self.secrets(), log=self.logs / "db.log")

    # -- Jaeger ------------------------------------------------------------------------
    def jaeger_env(self) -> dict[str, str]:
        p = self.ports
        return {
            # loopback only: its query service listens on every interface by default
            "JAEGER_BIND_HOST": "127.0.0.1",
            "JAEGER_OTLP_GRPC_PORT": str(p.jaeger_otlp_grpc),
            "JAEGER_OTLP_HTTP_PORT": str(p.jaeger_otlp_http),
            "JAEGER_QUERY_PORT": str(p.jaeger_query),
            "JAEGER_QUERY_GRPC_PORT": str(p.jaeger_query_grpc),
        }

    def start_jaeger(self, deadline_s: float = 30) -> None:
        env = self.jaeger_env()
        check_ports_free("jaeger", {k: int(v) for k, v in env.items() if k.endswith("_PORT")})
        argv = [str(find_binary("jaeger")), f"--config={ROOT / 'jaeger' / 'config.yaml'}"]
        self._spawn("jaeger", argv, env, self.run_dir)
        # the query API answering is what the pivot needs (it comes up after the receivers)
        self._wait_healthy("jaeger", lambda: http_ok(f"{self.jaeger_url}/api/services"), deadline_s)

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
            # Jaeger's OTLP/gRPC receiver: host:port, no scheme (collector/config.yaml)
            "TRACE_BACKEND_OTLP_ENDPOINT": f"127.0.0.1:{p.jaeger_otlp_grpc}",
            **self.options.collector_env,
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
        rules = (
            Path(self.options.rules_dir)
            if self.options.rules_dir
            else ROOT / "prometheus" / "rules"
        )
        for name, target in (
            ("prometheus.yml", ROOT / "prometheus" / "prometheus.yml"),
            ("rules", rules),
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
            # (prometheus.yml), so a fresher export buys nothing, and a shorter interval
            # costs the export thread measurable CPU per request (bench/cpu).
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            # the SDK's own span-processor counters (spans dropped before export), read by
            # the pipeline dashboard and InferwatchTelemetryDropped; the same in compose
            "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED": "true",
            # One row per predict_proba gains nothing from OpenMP threads, and their
            # spin-waits stalled single predictions on a busy 2-core host (measured: a P99
            # far above the P50). The caller's own value wins.
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

    def served_model(self) -> tuple[str, str]:
        """(name, version) the running service serves (GET /v1/model)."""
        doc = _get_json(f"{self.service_url}/v1/model")
        return str(doc["name"]), str(doc["version"])

    # -- the analysis job --------------------------------------------------------------
    def analysis_env(self) -> dict[str, str]:
        env = {
            "INFERWATCH_ANALYST_DATABASE_URL": self.dsn("analyst"),
            "INFERWATCH_ANALYSIS_INTERVAL": self.options.analysis_interval,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.ports.otlp_http}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        }
        # the model settings the service runs with: the job resolves the served version by
        # the same rule (INFERWATCH_MODEL_VERSION, else the newest under the model dir)
        model = {k: v for k, v in self.service_env().items() if k.startswith("INFERWATCH_MODEL_")}
        return {**env, **model}

    def analysis_last_success(self, model_version: str) -> float | None:
        """Unix time of the analysis job's last completed run of `model_version`, as
        Prometheus has it (None: no such series)."""
        name = prometheus_name(ANALYSIS_LAST_SUCCESS)
        expr = f'max({name}{{job="{ANALYSIS_JOB}", model_version="{model_version}"}})'
        result = prom_query(self.prometheus_url, expr)
        return float(result[0]["value"][1]) if result else None

    def start_analysis(self, deadline_s: float = 90) -> None:
        """`inferwatch analysis-job` (after the service: the model exists, its version is
        known); healthy = its gauges for the served version have reached Prometheus."""
        _, version = self.served_model()
        argv = [str(venv_bin("inferwatch")), "analysis-job"]
        self._spawn("analysis", argv, self.analysis_env(), ROOT)
        self._wait_healthy(
            "analysis", lambda: self.analysis_last_success(version) is not None, deadline_s
        )

    # -- all together ------------------------------------------------------------------
    def up(self) -> None:
        self.save_state()
        try:
            self.start_postgres()
            self.prepare_database()
            self.analyst_pgpass()
            if self.options.collector:
                self.start_jaeger()
                self.start_collector()
            self.start_prometheus()
            self.start_service()
            if self.options.collector:
                self.start_analysis()
        except BaseException:
            # take down only what this call started, never another run's processes
            for name in reversed(self._started):
                with contextlib.suppress(Exception):
                    self.stop(name)
            raise

    def stop(self, name: str, deadline_s: float = 15) -> None:
        if name == "postgres":
            self.pg.stop()
            return
        pid = self.pid(name)
        if pid is not None:
            terminate(pid, deadline_s)
        self._pid_file(name).unlink(missing_ok=True)

    def down(self) -> None:
        # every component, whatever the options say: a pid file left behind is still stopped
        for name in reversed(COMPONENTS):
            self.stop(name)

    def purge(self) -> None:
        """Delete the run folder and the Postgres cluster (after `down`)."""
        shutil.rmtree(self.pg.home, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def analysis_fresh(self) -> bool:
        """The job's last completed run reached Prometheus within two intervals (+30 s)."""
        name = prometheus_name(ANALYSIS_LAST_SUCCESS)
        limit = 2 * duration_s(self.options.analysis_interval) + 30
        expr = f'time() - max({name}{{job="{ANALYSIS_JOB}"}}) < {limit:g}'
        return bool(prom_query(self.prometheus_url, expr))

    def status(self) -> list[ComponentStatus]:
        p = self.ports
        checks: dict[str, tuple[str, Callable[[], bool]]] = {
            "postgres": (f"127.0.0.1:{p.postgres}", lambda: tcp_ok(p.postgres)),
            "jaeger": (
                f"otlp grpc :{p.jaeger_otlp_grpc} http :{p.jaeger_otlp_http}, query API "
                f"{self.jaeger_url}/api/traces/<trace id>, grpc :{p.jaeger_query_grpc}",
                lambda: http_ok(f"{self.jaeger_url}/api/services"),
            ),
            "collector": (
                f"otlp grpc :{p.otlp_grpc} http :{p.otlp_http}, health "
                f":{p.otelcol_health}, metrics :{p.otelcol_metrics}",
                lambda: http_ok(f"http://127.0.0.1:{p.otelcol_health}/"),
            ),
            "prometheus": (self.prometheus_url, lambda: http_ok(f"{self.prometheus_url}/-/ready")),
            "service": (self.service_url, lambda: http_ok(f"{self.service_url}/readyz")),
            "analysis": (
                f"every {self.options.analysis_interval}; gauges job={ANALYSIS_JOB} in Prometheus",
                self.analysis_fresh,
            ),
        }
        out = []
        for name in self.components():
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
        help="no collector: the service keeps /metrics, Prometheus scrapes it (and neither "
        "Jaeger nor the analysis job runs)",
    )
    ap.add_argument(
        "--analysis-interval",
        default=None,
        help="time between analysis runs, e.g. 30s (default: INFERWATCH_ANALYSIS_INTERVAL, "
        "else the job's default)",
    )
    args = ap.parse_args(argv)
    run_dir = _run_dir(args.name)
    try:
        if args.command == "up":
            options = Options(collector=not args.no_collector)
            if args.analysis_interval is not None:
                duration_s(args.analysis_interval)  # refused here, not in the job's log
                options.analysis_interval = args.analysis_interval
            stack = Stack(run_dir, Ports.load(), options)
            t0 = time.monotonic()
            stack.up()
            print(f"[launch] up in {time.monotonic() - t0:.1f}s; run folder {run_dir}")
            _print_status(stack)
            print(f"[launch] service {stack.service_url}  prometheus {stack.prometheus_url}")
            if stack.options.collector:
                print(f"[launch] jaeger API {stack.jaeger_url}/api/traces/<trace id>")
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
