"""docker-compose.yml, checked without a container engine (none runs on these machines).

1. The Compose Specification's own loader: stack/compose-check (compose-go, what `docker
   compose` validates and interpolates with) loads the file as `docker compose --env-file
   stack/versions.env --env-file stack/ports.env` would, with the required secrets set:
   schema (unknown keys), interpolation (`${VAR:?}`), consistency (depends_on, volumes);
   and it fails on a broken file: a missing required variable, an unknown key, a
   dependency on no service.
2. Our checks, on the model that loader resolved: every image is an exact release pinned in
   stack/versions.env; every mounted host path exists in the repository (read-only); every
   variable is defined in the env files or required; published ports come from
   stack/ports.env; every `service_healthy` dependency has a healthcheck and every service
   waited on is waited on the way it needs; URLs inside name compose services; shell
   commands parse; Grafana gets every variable its provisioning reads and its datasources
   point at compose services.

compose-check comes from ${INFERWATCH_CACHE:-.stack}/bin (stack/install.sh compose-check);
missing: a skip locally, a failure under CI=true.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from inferwatch.cli import app as inferwatch_cli
from stack.launch import read_env_file
from stack.postgres import PG_AUDIT_SETTINGS, find_pg_bin
from stack.procs import ROOT
from tests.fixtures.components import installed_binary

pytestmark = pytest.mark.integration

COMPOSE = ROOT / "docker-compose.yml"
ENV_FILES = (ROOT / "stack" / "versions.env", ROOT / "stack" / "ports.env")
VERSIONS = read_env_file(ENV_FILES[0])
PORTS = read_env_file(ENV_FILES[1])
# The secrets compose requires and never defaults (README's quick start names them).
SECRETS = {
    "POSTGRES_PASSWORD",
    "INFERWATCH_OWNER_PASSWORD",
    "INFERWATCH_WRITER_PASSWORD",
    "INFERWATCH_ANALYST_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
}
PYTHON_SERVICES = ("python-env", "db-init", "inferwatch", "analysis-job")
# Run to completion before their dependents start.
ONE_SHOT = {"python-env", "db-init"}
# Long-running services without a healthcheck, and why (dependents wait for the start only).
NO_HEALTHCHECK = {"otelcol": "the image has no shell and no HTTP client to run a check"}
# The native stack's config files: compose mounts these very files.
SHARED_CONFIGS = (
    "collector/config.yaml",
    "prometheus/prometheus.yml",
    "prometheus/rules",
    "jaeger/config.yaml",
    "grafana/provisioning",
    "grafana/dashboards",
)


def expected_images() -> dict[str, str]:
    v = VERSIONS
    python = f"python:{v['PYTHON_VERSION']}-slim-bookworm"
    return {
        "postgres": f"postgres:{v['POSTGRES_VERSION']}-bookworm",
        "otelcol": f"otel/opentelemetry-collector-contrib:{v['OTELCOL_VERSION']}",
        "prometheus": f"prom/prometheus:v{v['PROMETHEUS_VERSION']}",
        "jaeger": f"jaegertracing/jaeger:{v['JAEGER_VERSION']}",
        "grafana": f"grafana/grafana:{v['GRAFANA_VERSION']}",
        **dict.fromkeys(PYTHON_SERVICES, python),
    }


def compose_check(
    env: dict[str, str], compose: Path = COMPOSE, env_files: tuple[Path, ...] = ENV_FILES
) -> subprocess.CompletedProcess[str]:
    binary = installed_binary("compose-check", "compose-check")
    argv = [str(binary), "--project-directory", str(ROOT)]
    for f in env_files:
        argv += ["--env-file", str(f)]
    # only the given environment: a developer's exported variables must not leak in
    return subprocess.run(
        [*argv, str(compose)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def secrets_env() -> dict[str, str]:
    return {name: f"test-{name.lower()}" for name in SECRETS}


@pytest.fixture(scope="module")
def loaded() -> dict[str, Any]:
    proc = compose_check(secrets_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", f"loader warnings: {proc.stderr}"
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


@pytest.fixture(scope="module")
def services(loaded: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs: dict[str, dict[str, Any]] = loaded["project"]["services"]
    return svcs


# --- 1. the specification's loader -------------------------------------------------------


def test_the_compose_loader_accepts_the_file(loaded: dict[str, Any]) -> None:
    assert loaded["project"]["name"] == "inferwatch"
    assert set(loaded["project"]["services"]) == set(expected_images())


def _mutate(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    doc = yaml.safe_load(COMPOSE.read_text())
    change(doc)
    out = tmp_path / "docker-compose.yml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def test_the_loader_fails_without_a_required_secret() -> None:
    env = secrets_env()
    del env["GRAFANA_ADMIN_PASSWORD"]
    proc = compose_check(env)
    assert proc.returncode == 1
    assert "required variable GRAFANA_ADMIN_PASSWORD is missing a value" in proc.stderr


def test_the_loader_fails_without_a_pinned_version(tmp_path: Path) -> None:
    versions = tmp_path / "versions.env"
    text = ENV_FILES[0].read_text()
    versions.write_text(re.sub(r"(?m)^JAEGER_VERSION=.*\n", "", text))
    proc = compose_check(secrets_env(), env_files=(versions, ENV_FILES[1]))
    assert proc.returncode == 1
    assert "required variable JAEGER_VERSION is missing a value" in proc.stderr


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            lambda d: d["services"]["grafana"].update(restart_policy="always"),
            "services.grafana.restart_policy false schema",
        ),
        (
            lambda d: d["services"]["inferwatch"]["depends_on"].update(
                nosuch={"condition": "service_started"}
            ),
            'depends on undefined service "nosuch"',
        ),
    ],
    ids=["unknown-key", "unknown-dependency"],
)
def test_the_loader_fails_on_a_broken_file(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], error: str
) -> None:
    proc = compose_check(secrets_env(), compose=_mutate(tmp_path, change))
    assert proc.returncode == 1
    assert error in proc.stderr
    assert compose_check(secrets_env(), compose=_mutate(tmp_path, lambda d: None)).returncode == 0


# --- 2. our checks on the resolved model -----------------------------------------------


def test_every_image_is_an_exact_release_from_versions_env(
    services: dict[str, dict[str, Any]],
) -> None:
    assert {name: svc["image"] for name, svc in services.items()} == expected_images()
    for name, svc in services.items():
        _, _, tag = svc["image"].rpartition(":")
        assert tag not in ("", "latest"), f"{name}: unpinned image {svc['image']}"
    # exact releases: x.y.z, and Postgres' own x.y (one number less since Postgres 10)
    for var in ("OTELCOL_VERSION", "PROMETHEUS_VERSION", "JAEGER_VERSION", "GRAFANA_VERSION"):
        assert re.fullmatch(r"\d+\.\d+\.\d+", VERSIONS[var]), f"{var}={VERSIONS[var]}"
    assert re.fullmatch(r"3\.11\.\d+", VERSIONS["PYTHON_VERSION"]), "the lock is for 3.11"
    assert re.fullmatch(r"\d+\.\d+", VERSIONS["POSTGRES_VERSION"])
    assert VERSIONS["GRAFANA_VERSION"].startswith("12."), "dashboards are Grafana 12 types"


def test_the_native_postgres_is_the_compose_major() -> None:
    out = subprocess.run(
        [str(find_pg_bin() / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    native = re.search(r"\(PostgreSQL\) (\d+)\.", out)
    assert native is not None, out
    assert native.group(1) == VERSIONS["POSTGRES_VERSION"].split(".")[0]


def test_every_mount_exists_in_the_repository_read_only(
    loaded: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    named = set(loaded["project"].get("volumes") or {})
    bound: set[Path] = set()
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            if vol["type"] == "volume":
                assert vol["source"] in named, f"{name}: undeclared volume {vol['source']}"
                continue
            assert vol["type"] == "bind", f"{name}: {vol}"
            source = Path(vol["source"])
            assert source.is_relative_to(ROOT), f"{name} mounts {source}, outside the repository"
            assert source.exists(), f"{name} mounts {source}, which does not exist"
            assert vol.get("read_only") is True, f"{name} mounts {source} writable"
            bound.add(source)
    for cfg in SHARED_CONFIGS:
        assert ROOT / cfg in bound, f"compose does not mount {cfg}"


def test_every_variable_is_defined_in_the_env_files_or_required(loaded: dict[str, Any]) -> None:
    variables: dict[str, dict[str, Any]] = loaded["variables"]
    defined = VERSIONS.keys() | PORTS.keys()
    for name, var in variables.items():
        assert name in defined or var["required"], f"${{{name}}}: not defined, not required"
        # one source of truth: a value from the env files is never restated as a default
        assert var["default"] == "", f"${{{name}}} has a default here: {var['default']}"
    assert {n for n in variables if n not in defined} == SECRETS
    readme = (ROOT / "README.md").read_text()
    assert [s for s in sorted(SECRETS) if s not in readme] == [], "README names every secret"
    for port, path in (("INFERWATCH_PORT", "/docs"), ("GRAFANA_PORT", "")):
        assert f"http://127.0.0.1:{PORTS[port]}{path}" in readme, f"README's URL for {port}"


def test_published_ports_are_loopback_and_from_ports_env(
    services: dict[str, dict[str, Any]],
) -> None:
    published = []
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            assert port["host_ip"] == "127.0.0.1", f"{name} publishes beyond loopback: {port}"
            published.append(port["published"])
    assert sorted(published) == sorted(set(published)), "a host port published twice"
    assert set(published) <= set(PORTS.values())
    wanted = {"INFERWATCH_PORT", "POSTGRES_PORT", "PROMETHEUS_PORT", "JAEGER_QUERY_PORT"}
    assert {PORTS[v] for v in wanted | {"GRAFANA_PORT"}} <= set(published)


def _depends(svc: dict[str, Any]) -> dict[str, str]:
    return {dep: d["condition"] for dep, d in (svc.get("depends_on") or {}).items()}


def test_depends_on_waits_the_way_each_dependency_needs(
    services: dict[str, dict[str, Any]],
) -> None:
    def healthchecked(name: str) -> bool:
        hc: dict[str, Any] = services[name].get("healthcheck") or {}
        return not hc.get("disable") and bool(hc.get("test"))

    for name, svc in services.items():
        for dep, condition in _depends(svc).items():
            edge = f"{name} -> {dep} ({condition})"
            if dep in ONE_SHOT:
                assert condition == "service_completed_successfully", edge
            elif dep in NO_HEALTHCHECK:
                assert condition == "service_started", edge
                assert not healthchecked(dep), f"{dep} has a healthcheck now: wait for it"
            else:  # a long-running service others need: ready, not just started
                assert condition == "service_healthy", edge
                assert healthchecked(dep), f"{edge}: {dep} has no healthcheck"
    for name in ONE_SHOT:
        assert not services[name].get("ports"), f"one-shot {name} publishes ports"
        assert not healthchecked(name), f"one-shot {name} has a healthcheck"
    # the services a user or another component reaches have a healthcheck
    for name in ("postgres", "prometheus", "jaeger", "grafana", "inferwatch"):
        assert healthchecked(name), f"{name} has no healthcheck"
    # the order that makes the stack work
    assert _depends(services["db-init"]) == {
        "postgres": "service_healthy",
        "python-env": "service_completed_successfully",
    }
    assert _depends(services["inferwatch"])["db-init"] == "service_completed_successfully"
    assert _depends(services["analysis-job"])["inferwatch"] == "service_healthy"
    assert set(_depends(services["grafana"])) == {"prometheus", "jaeger", "db-init"}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_urls_inside_the_network_name_compose_services(
    services: dict[str, dict[str, Any]],
) -> None:
    url = re.compile(r"(?:https?|postgresql)://(?:[^@/\s]*@)?([A-Za-z][\w.-]*):(\d+)")
    seen = set()
    for name, svc in services.items():
        for text in _strings([svc.get("environment"), svc.get("command")]):
            for host, _ in url.findall(text):
                assert host in services or host == "localhost", f"{name}: {host} in {text}"
                seen.add(host)
    assert {"postgres", "otelcol", "prometheus", "inferwatch"} <= seen


def test_shell_commands_parse(services: dict[str, dict[str, Any]]) -> None:
    scripts = {
        name: svc["command"][-1]
        for name, svc in services.items()
        if (svc.get("command") or [None])[0] == "sh"
    }
    assert set(scripts) == {"python-env", "db-init", "analysis-job"}
    for name, script in scripts.items():
        proc = subprocess.run(
            ["sh", "-n", "-c", script], capture_output=True, text=True, timeout=10, check=False
        )
        assert proc.returncode == 0, f"{name}: {proc.stderr}"


def _config_default(path: Path, var: str) -> str:
    """The default of `${env:VAR:-default}` in a collector-style config."""
    m = re.search(rf"\$\{{env:{var}:-([^}}]+)\}}", path.read_text())
    assert m is not None, f"{path.name} reads no {var}"
    return m.group(1)


def test_jaeger_ports_are_the_ones_its_config_listens_on(
    services: dict[str, dict[str, Any]],
) -> None:
    """jaeger/config.yaml's defaults are compose's: the collector sends OTLP/gRPC to its
    receiver, the query API is what is published and health-checked."""
    cfg = ROOT / "jaeger" / "config.yaml"
    otlp_grpc = _config_default(cfg, "JAEGER_OTLP_GRPC_PORT")
    query = int(_config_default(cfg, "JAEGER_QUERY_PORT"))
    trace_backend = services["otelcol"]["environment"]["TRACE_BACKEND_OTLP_ENDPOINT"]
    assert trace_backend == f"jaeger:{otlp_grpc}"
    collector = (ROOT / "collector" / "config.yaml").read_text()
    assert "${env:TRACE_BACKEND_OTLP_ENDPOINT" in collector
    jaeger = services["jaeger"]
    assert [p["target"] for p in jaeger["ports"]] == [query]
    assert f"127.0.0.1:{query}/api/services" in " ".join(jaeger["healthcheck"]["test"])
    assert jaeger["command"] == ["--config", "/etc/jaeger/config.yaml"]
    assert {v["target"] for v in jaeger["volumes"]} == {"/etc/jaeger/config.yaml"}


@pytest.mark.parametrize(
    ("service", "binary", "config"),
    [
        ("otelcol", "otelcol-inferwatch", "collector/config.yaml"),
        ("jaeger", "jaeger", "jaeger/config.yaml"),
    ],
)
def test_configs_validate_with_compose_environment(
    services: dict[str, dict[str, Any]], service: str, binary: str, config: str
) -> None:
    """The natively built binary accepts the shared config with the environment compose
    gives the container (its own checks: components, endpoints, types)."""
    path = installed_binary(binary)
    env = {k: str(v) for k, v in services[service]["environment"].items()}
    proc = subprocess.run(
        [str(path), "validate", f"--config={ROOT / config}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _inferwatch_calls(services: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Every `inferwatch ...` invocation in the services' commands, as argv."""
    calls = []
    for svc in services.values():
        cmd = svc.get("command") or []
        scripts = [cmd[-1]] if cmd[:1] == ["sh"] else [shlex.join(cmd)]
        for script in scripts:
            lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            argv: list[str] = []
            for token in [*lexer, ";"]:
                if token not in (";", "&&", "||", "|", "(", ")"):
                    argv.append(token)
                    continue
                starts = [i for i, a in enumerate(argv) if a.endswith("/bin/inferwatch")]
                calls += [argv[i + 1 :] for i in starts]
                argv = []
    return calls


def test_inferwatch_commands_exist_with_their_options(
    services: dict[str, dict[str, Any]],
) -> None:
    """What compose runs is what the CLI takes: subcommands and option names."""
    root = typer.main.get_command(inferwatch_cli)
    seen = set()
    for argv in _inferwatch_calls(services):
        cmd = root
        words = list(argv)
        while isinstance(cmd, typer.core.TyperGroup) and words and words[0] in cmd.commands:
            cmd = cmd.commands[words.pop(0)]
        assert not isinstance(cmd, typer.core.TyperGroup), f"inferwatch {argv}: no such command"
        known = {o for p in cmd.params for o in p.opts}
        used = {w for w in words if w.startswith("--")}
        assert used <= known, f"inferwatch {' '.join(argv)}: unknown {used - known}"
        seen.add(cmd.name)
    assert seen == {"roles", "migrate", "serve", "analysis-job"}


def test_the_service_takes_its_address_from_the_command_line(
    services: dict[str, dict[str, Any]],
) -> None:
    svc = services["inferwatch"]
    everywhere = "0.0.0.0"  # noqa: S104 (inside the container; published on loopback only)
    argv = ["/venv/bin/inferwatch", "serve", "--host", everywhere, "--port", "8000"]
    assert svc["command"] == argv
    assert [p["target"] for p in svc["ports"]] == [8000]
    assert "8000/readyz" in " ".join(svc["healthcheck"]["test"])


def test_grafana_is_locked_down(services: dict[str, dict[str, Any]]) -> None:
    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == secrets_env()["GRAFANA_ADMIN_PASSWORD"]


# Grafana expands $VAR, ${VAR} and $__env{VAR} in provisioning values ($__name: its macros)
GRAFANA_ENV_REF = re.compile(r"\$(?:__env\{(\w+)\}|\{(\w+)\}|(?!__)([A-Za-z_]\w*))")


def test_grafana_gets_what_its_provisioning_reads(services: dict[str, dict[str, Any]]) -> None:
    """Every variable grafana/provisioning/ expands is set in the grafana service, and every
    datasource URL names a compose service and a port it listens on."""
    prov = ROOT / "grafana" / "provisioning"
    files = sorted(p for p in prov.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert files, f"no provisioning files under {prov}"
    docs = [yaml.safe_load(f.read_text()) or {} for f in files]
    env = services["grafana"]["environment"]
    refs = {
        next(g for g in m.groups() if g)
        for value in _strings(docs)  # values only: comments are not expanded
        for m in GRAFANA_ENV_REF.finditer(value)
    }
    assert {r for r in refs if not env.get(r)} == set()
    assert "INFERWATCH_ANALYST_PASSWORD" in refs
    urls = [ds["url"] for doc in docs for ds in doc.get("datasources") or [] if ds.get("url")]
    assert len(urls) >= 3, urls
    for u in urls:
        m = re.fullmatch(r"(?:https?://)?([\w-]+):(\d+)/?", u)
        assert m is not None, u
        host, port = m.group(1), int(m.group(2))
        assert host in services, f"datasource {u}: no service {host}"
        targets = {p["target"] for p in services[host].get("ports") or []}
        assert port in targets, f"datasource {u}: {host} listens on {targets}"


# --- moved here from the binaries / Postgres settings tests --------------------------------


def test_compose_postgres_runs_the_audit_settings(services: dict[str, dict[str, Any]]) -> None:
    argv = [str(a) for a in services["postgres"]["command"]]
    assert argv[0] == "postgres"
    assert argv[1::2] == ["-c"] * len(PG_AUDIT_SETTINGS)
    assert dict(a.split("=", 1) for a in argv[2::2]) == PG_AUDIT_SETTINGS


def test_compose_targets_match_container_ports(services: dict[str, dict[str, Any]]) -> None:
    """prometheus/targets-compose/ names the services and ports compose runs."""
    cfg = yaml.safe_load((ROOT / "collector" / "config.yaml").read_text())
    metrics_port = re.search(r":-(\d+)\}", str(cfg["service"]["telemetry"]["metrics"]))
    assert metrics_port is not None
    targets = yaml.safe_load((ROOT / "prometheus" / "targets-compose" / "otelcol.json").read_text())
    assert targets[0]["targets"] == [f"otelcol:{metrics_port.group(1)}"]
    assert "otelcol" in services
