"""The configs docs/scaling.md proposes exist and are accepted by the real binaries.

- collector/agent.yaml and collector/gateway.yaml: the built collector's `validate`
  (strict: an unknown key or a bad routing key fails), with the components they need in
  the build (load_balancing, tail_sampling, span_metrics);
- the layout's invariants: span metrics are computed in the agent, from every span, and
  no sampling happens before them; spans leave the agent routed by trace id; the gateway
  tail-samples;
- prometheus/remote-write.yml: `promtool check config` (with the shipped rules).

Binaries come from ${INFERWATCH_CACHE:-.stack}/bin; missing: a skip locally, a failure
under CI=true.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack.procs import ROOT
from tests.fixtures.components import installed_binary

AGENT = ROOT / "collector" / "agent.yaml"
GATEWAY = ROOT / "collector" / "gateway.yaml"
REMOTE_WRITE = ROOT / "prometheus" / "remote-write.yml"
SAMPLERS = {"tail_sampling", "probabilistic_sampler"}


def _run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _config(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def _kind(component: str) -> str:
    return component.split("/")[0]


@pytest.mark.integration
@pytest.mark.parametrize("config", [AGENT, GATEWAY], ids=["agent", "gateway"])
def test_the_built_collector_validates_the_scaling_configs(config: Path) -> None:
    proc = _run(installed_binary("otelcol-inferwatch"), "validate", f"--config={config}")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.integration
def test_validate_is_strict(tmp_path: Path) -> None:
    """A typo in a component's key is refused: the passing validation above means
    something."""
    broken = tmp_path / "gateway.yaml"
    broken.write_text(GATEWAY.read_text().replace("decision_wait:", "decision_wiat:"))
    proc = _run(installed_binary("otelcol-inferwatch"), "validate", f"--config={broken}")
    assert proc.returncode != 0
    assert "decision_wiat" in proc.stdout + proc.stderr


def test_span_metrics_are_computed_before_any_sampling_and_spans_route_by_trace_id() -> None:
    agent, gateway = _config(AGENT), _config(GATEWAY)
    traces = agent["service"]["pipelines"]["traces"]
    assert "span_metrics" in traces["exporters"]
    assert not SAMPLERS & {_kind(p) for p in traces["processors"]}
    assert "span_metrics" in agent["service"]["pipelines"]["metrics"]["receivers"]
    balancers = [e for e in traces["exporters"] if _kind(e) == "load_balancing"]
    assert len(balancers) == 1
    assert agent["exporters"][balancers[0]]["routing_key"] == "traceID"
    gateway_traces = gateway["service"]["pipelines"]["traces"]
    assert "tail_sampling" in gateway_traces["processors"]
    assert "span_metrics" not in gateway.get("connectors", {})
    # the agent's RED metrics are the single-machine collector's, dimension for dimension
    single = _config(ROOT / "collector" / "config.yaml")
    assert agent["connectors"]["span_metrics"] == single["connectors"]["span_metrics"]


@pytest.mark.integration
def test_promtool_checks_the_remote_write_config() -> None:
    proc = _run(
        installed_binary("promtool"),
        "check",
        "config",
        REMOTE_WRITE,
        env={"CLUSTER": "inferwatch", "REPLICA": "a"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "is valid prometheus config file syntax" in out
    config = _config(REMOTE_WRITE)
    (target,) = config["remote_write"]
    assert target["send_native_histograms"] is True
    assert "password" not in target["basic_auth"]  # from a file, never the repo
    assert set(config["global"]["external_labels"]) == {"cluster", "__replica__"}
