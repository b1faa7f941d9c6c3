"""The analysis job's gauges reach a real Prometheus under the names our alert rules use.

Starts the pinned Prometheus (``${INFERWATCH_CACHE:-.stack}/bin/prometheus``, from
stack/install.sh) as the launcher does (stack/launch.py: prometheus/prometheus.yml, its
OTLP receiver), pushes one export of the job's gauges over OTLP/HTTP, and checks every
metric name of prometheus/rules/analysis.yml exists. Missing binary: a skip, except in
CI (CI=true), where it fails.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from inferwatch.analysis import jobs
from inferwatch.analysis.drift import DriftReport, DriftThresholds, FeatureDrift, StatisticResult
from inferwatch.analysis.estimate import Estimate
from inferwatch.analysis.quality import Quality
from inferwatch.analysis.runner import AnalysisResult
from inferwatch.inference.metadata import ModelMetadata
from inferwatch.telemetry import instruments as names
from stack.launch import Options, Ports, Stack
from stack.procs import ROOT, PollTimeout, poll
from tests.fixtures.audit import model_metadata
from tests.fixtures.components import installed_binary

pytestmark = pytest.mark.integration

RULES = ROOT / "prometheus" / "rules" / "analysis.yml"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    installed_binary("prometheus")
    stack = Stack(tmp_path_factory.mktemp("stack"), Ports.free(), Options(collector=False))
    try:
        stack.start_prometheus()
        yield stack.prometheus_url
    finally:
        stack.stop("prometheus")


def _result() -> tuple[ModelMetadata, AnalysisResult]:
    meta = model_metadata("v-names")
    stats = (
        StatisticResult("psi", 0.3, 0.2, True),
        StatisticResult("wasserstein", 0.2, 0.15, True),
    )
    feature = FeatureDrift("distance_from_home_km", "numeric", 5000, 0, stats, "drift")
    report = DriftReport(
        "v-names",
        "a",
        "b",
        5000,
        (feature,),
        ("distance_from_home_km",),
        True,
        1,
        DriftThresholds(),
    )
    quality = Quality(0.5, 5000, 1000, 0.2, 30, 20, 10, 960, 10, 0.66, 0.66, 0.9, 0.02)
    estimate = Estimate(0.5, 5000, 40.0, 25.0, 12.0, 4948.0, 15.0, 0.68, 0.62, 0.91, 24000, 360)
    return meta, AnalysisResult(report, quality, estimate=estimate)


def test_rule_metric_names_exist_in_prometheus(prometheus: str) -> None:
    exporter = OTLPMetricExporter(endpoint=f"{prometheus}/api/v1/otlp/v1/metrics")
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = jobs.meter_provider([reader])
    gauges = jobs.AnalysisGauges(provider.get_meter("test"))
    meta, result = _result()
    gauges.update(meta, "v-names", result)
    assert provider.force_flush(10_000)
    provider.shutdown()
    doc = yaml.safe_load(RULES.read_text())
    used = {
        n
        for g in doc["groups"]
        for r in g["rules"]
        for n in re.findall(r"\b(inferwatch_[a-z_]+)\b", r["expr"])
    }
    used |= {
        names.prometheus_name(n)
        for n in (
            names.DRIFT_PSI,
            names.DRIFT_STATISTIC,
            names.DRIFT_DATASET,
            # the model dashboard's estimate panel (grafana/boards/model_data.py)
            names.QUALITY_ESTIMATED_PRECISION,
            names.QUALITY_ESTIMATED_RECALL,
            names.QUALITY_ESTIMATED_ROC_AUC,
        )
    }
    present: set[str] = set()

    def complete() -> bool:
        present.clear()
        present.update(httpx.get(f"{prometheus}/api/v1/label/__name__/values").json()["data"])
        return used <= present

    with contextlib.suppress(PollTimeout):
        poll(complete, 20, "every name the rules use", interval_s=0.5)
    assert sorted(used - present) == [], f"present: {sorted(present)}"
    q = httpx.get(
        f"{prometheus}/api/v1/query", params={"query": names.prometheus_name(names.DRIFT_DETECTED)}
    ).json()
    labels = q["data"]["result"][0]["metric"]
    assert labels["model_name"] == "card-fraud"
    assert labels["model_version"] == "v-names"
    assert labels["feature"] == "distance_from_home_km"
    assert labels["job"] == jobs.SERVICE_NAME
