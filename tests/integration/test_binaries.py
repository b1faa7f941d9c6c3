"""The real binaries stack/install.sh builds.

- the collector built by ocb has every component collector/config.yaml uses, reports the
  pinned version, and accepts the config;
- the manifest pins one collector release for every component (providers v1.(N-94).0);
- prometheus and promtool report the pinned version (Prometheus 3);
- jaeger reports the pinned version, was built from the pinned module (jaeger/go.mod), has
  every component jaeger/config.yaml uses and accepts it;
- the native ports are distinct (Jaeger's and the collector's defaults collide), and the
  collector config's port defaults are stack/ports.env's.

docker-compose.yml (its images are the same pins): tests/integration/test_compose.py.

Binaries come from ${INFERWATCH_CACHE:-.stack}/bin. Missing: a skip locally, a failure
under CI=true (run stack/install.sh first).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack.launch import read_env_file
from stack.procs import ROOT
from tests.fixtures.components import installed_binary

VERSIONS = read_env_file(ROOT / "stack" / "versions.env")
PORTS = read_env_file(ROOT / "stack" / "ports.env")
COLLECTOR_CONFIG = ROOT / "collector" / "config.yaml"
JAEGER_CONFIG = ROOT / "jaeger" / "config.yaml"
COMPONENT_KINDS = ("receivers", "processors", "exporters", "connectors", "extensions")


def run(*argv: str | Path) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"{argv} failed: {proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def component_types(config: dict[str, Any]) -> dict[str, set[str]]:
    """Component types a collector config uses ('otlp_http/prometheus' -> 'otlp_http')."""
    return {
        kind: {name.split("/")[0] for name in (config.get(kind) or {})} for kind in COMPONENT_KINDS
    }


def built_components(binary_path: Path) -> tuple[dict[str, set[str]], dict[str, Any]]:
    """What a collector-based binary was built with (`components`), and its buildinfo."""
    out = yaml.safe_load(run(binary_path, "components"))
    built = {kind: {c["name"] for c in out.get(kind) or []} for kind in COMPONENT_KINDS}
    return built, out["buildinfo"]


@pytest.mark.integration
def test_collector_has_every_component_the_config_uses() -> None:
    built, buildinfo = built_components(installed_binary("otelcol-inferwatch"))
    # what this project relies on, by name (the names changed recently: assert them)
    assert {"otlp"} <= built["receivers"]
    assert {"memory_limiter", "batch"} <= built["processors"]
    assert {"otlp_http", "otlp_grpc", "debug"} <= built["exporters"]
    assert {"span_metrics"} <= built["connectors"]
    assert {"health_check"} <= built["extensions"]
    used = component_types(yaml.safe_load(COLLECTOR_CONFIG.read_text()))
    for kind, names in used.items():
        assert names <= built[kind], f"config.yaml uses {kind} {names - built[kind]}"
    assert buildinfo["version"] == VERSIONS["OTELCOL_VERSION"]


@pytest.mark.integration
def test_collector_accepts_its_config() -> None:
    """The one config of both stacks (no overlay), with the launcher's and compose's values."""
    otelcol = installed_binary("otelcol-inferwatch")
    run(otelcol, "validate", f"--config={COLLECTOR_CONFIG}")


def test_collector_sends_traces_to_jaeger_only() -> None:
    """One trace path, natively as in compose: the trace backend (no file of spans)."""
    cfg = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    traces = cfg["service"]["pipelines"]["traces"]["exporters"]
    assert "otlp_grpc/jaeger" in traces
    assert not any(e.split("/")[0] == "file" for e in traces)
    endpoint = cfg["exporters"]["otlp_grpc/jaeger"]["endpoint"]
    assert endpoint.startswith("${env:TRACE_BACKEND_OTLP_ENDPOINT:-"), endpoint


def test_collector_port_defaults_are_the_ports_env_ones() -> None:
    """`${env:NAME:-default}` in collector/config.yaml: a port variable's default is its
    value in stack/ports.env; the trace backend's default is Jaeger's OTLP/gRPC port."""
    text = COLLECTOR_CONFIG.read_text()
    defaults = dict(re.findall(r"\$\{env:(\w+_PORT):-(\d+)\}", text))
    assert defaults, "no port variables in collector/config.yaml"
    assert {k: PORTS[k] for k in defaults} == defaults
    backend = re.search(r"\$\{env:TRACE_BACKEND_OTLP_ENDPOINT:-[\w.]+:(\d+)\}", text)
    assert backend is not None
    assert backend.group(1) == PORTS["JAEGER_OTLP_GRPC_PORT"]


def test_native_ports_are_distinct() -> None:
    """Jaeger's own defaults are the collector's (4317/4318): stack/ports.env keeps them apart."""
    values = [v for k, v in PORTS.items() if k.endswith("_PORT")]
    assert len(values) == len(set(values)), PORTS


def test_manifest_pins_one_release() -> None:
    manifest = yaml.safe_load((ROOT / "collector" / "builder-config.yaml").read_text())
    version, providers = VERSIONS["OTELCOL_VERSION"], VERSIONS["OTELCOL_PROVIDERS_VERSION"]
    assert manifest["dist"]["version"] == version
    minor = int(version.split(".")[1])
    assert providers == f"1.{minor - 94}.0", "providers pair with components as v1.(N-94).0"
    for kind in ("receivers", "processors", "exporters", "connectors", "extensions"):
        for entry in manifest[kind]:
            assert entry["gomod"].endswith(f" v{version}"), entry
    for entry in manifest["providers"]:
        assert entry["gomod"].endswith(f" v{providers}"), entry


@pytest.mark.integration
@pytest.mark.parametrize("name", ["prometheus", "promtool"])
def test_prometheus_is_the_pinned_release(name: str) -> None:
    out = run(installed_binary(name), "--version")
    want = VERSIONS["PROMETHEUS_VERSION"]
    assert re.search(rf"^{name}, version {re.escape(want)} ", out, re.M), out
    assert want.startswith("3."), "the project runs Prometheus 3 (OTLP receiver, native histograms)"
    assert VERSIONS["PROMETHEUS_MODULE_VERSION"] == "0.3{:02d}.{}".format(
        *map(int, want.split(".")[1:3])
    ), "Prometheus v3.X.Y is Go module v0.3XX.Y"


@pytest.mark.integration
def test_jaeger_is_the_pinned_release() -> None:
    jaeger = installed_binary("jaeger")
    want = VERSIONS["JAEGER_VERSION"]
    assert run(jaeger, "--version").splitlines()[0] == f"jaeger version v{want}"
    _, buildinfo = built_components(jaeger)
    assert buildinfo["version"] == f"v{want}"


def test_jaeger_module_is_pinned() -> None:
    """jaeger/go.mod (with go.sum) pins the module stack/install.sh builds."""
    major, minor, patch = map(int, VERSIONS["JAEGER_VERSION"].split("."))
    module = VERSIONS["JAEGER_MODULE_VERSION"]
    assert major == 2
    assert module == f"1.{minor + 63}.{patch}", "Jaeger v2.X.Y is Go module v1.(X+63).Y"
    gomod = (ROOT / "jaeger" / "go.mod").read_text()
    assert re.search(rf"^\tgithub\.com/jaegertracing/jaeger v{re.escape(module)}\b", gomod, re.M)
    assert re.search(r"^tool github\.com/jaegertracing/jaeger/cmd/jaeger$", gomod, re.M)
    # Jaeger's own go.mod has this line; without it the build takes a sarama it cannot use
    assert "replace github.com/Shopify/sarama => github.com/Shopify/sarama v1.33.0" in gomod
    gosum = (ROOT / "jaeger" / "go.sum").read_text()
    assert f"github.com/jaegertracing/jaeger v{module} h1:" in gosum


@pytest.mark.integration
def test_jaeger_has_every_component_its_config_uses_and_accepts_it() -> None:
    jaeger = installed_binary("jaeger")
    built, _ = built_components(jaeger)
    cfg = yaml.safe_load(JAEGER_CONFIG.read_text())
    for kind, names in component_types(cfg).items():
        assert names <= built[kind], f"jaeger/config.yaml uses {kind} {names - built[kind]}"
    assert cfg["service"]["telemetry"]["metrics"]["level"] == "none"  # 8888 is the collector's
    run(jaeger, "validate", f"--config={JAEGER_CONFIG}")
