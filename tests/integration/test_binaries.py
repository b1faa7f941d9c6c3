"""The real binaries stack/install.sh builds.

- the collector built by ocb has every component collector/config.yaml (and the compose
  overlay) uses, reports the pinned version, and accepts both configs;
- the manifest pins one collector release for every component (providers v1.(N-94).0);
- prometheus and promtool report the pinned version (Prometheus 3).

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
from stack.procs import CACHE, ROOT
from tests.fixtures.components import component_missing

VERSIONS = read_env_file(ROOT / "stack" / "versions.env")
COLLECTOR_CONFIGS = [
    ROOT / "collector" / "config.yaml",
    ROOT / "collector" / "compose-overlay.yaml",
]


def binary(name: str) -> Path:
    path = CACHE / "bin" / name
    if not path.exists():
        component_missing(f"{path} missing: run stack/install.sh")
    return path


def run(*argv: str | Path) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"{argv} failed: {proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def component_types(config: dict[str, Any]) -> dict[str, set[str]]:
    """Component types a collector config uses ('otlp_http/prometheus' -> 'otlp_http')."""
    return {
        kind: {name.split("/")[0] for name in (config.get(kind) or {})}
        for kind in ("receivers", "processors", "exporters", "connectors", "extensions")
    }


@pytest.mark.integration
def test_collector_has_every_component_the_configs_use() -> None:
    out = yaml.safe_load(run(binary("otelcol-inferwatch"), "components"))
    built = {
        kind: {c["name"] for c in out.get(kind) or []}
        for kind in ("receivers", "processors", "exporters", "connectors", "extensions")
    }
    # what this project relies on, by name (the names changed recently: assert them)
    assert {"otlp"} <= built["receivers"]
    assert {"memory_limiter", "batch"} <= built["processors"]
    assert {"otlp_http", "otlp_grpc", "file", "debug"} <= built["exporters"]
    assert {"span_metrics"} <= built["connectors"]
    assert {"health_check"} <= built["extensions"]
    for path in COLLECTOR_CONFIGS:
        used = component_types(yaml.safe_load(path.read_text()))
        for kind, names in used.items():
            assert names <= built[kind], f"{path.name} uses {kind} {names - built[kind]}"
    assert out["buildinfo"]["version"] == VERSIONS["OTELCOL_VERSION"]


@pytest.mark.integration
def test_collector_accepts_native_and_compose_configs() -> None:
    otelcol = binary("otelcol-inferwatch")
    run(otelcol, "validate", f"--config={COLLECTOR_CONFIGS[0]}")
    run(otelcol, "validate", f"--config={COLLECTOR_CONFIGS[0]}", f"--config={COLLECTOR_CONFIGS[1]}")


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
    out = run(binary(name), "--version")
    want = VERSIONS["PROMETHEUS_VERSION"]
    assert re.search(rf"^{name}, version {re.escape(want)} ", out, re.M), out
    assert want.startswith("3."), "the project runs Prometheus 3 (OTLP receiver, native histograms)"
    assert VERSIONS["PROMETHEUS_MODULE_VERSION"] == "0.3{:02d}.{}".format(
        *map(int, want.split(".")[1:3])
    ), "Prometheus v3.X.Y is Go module v0.3XX.Y"
