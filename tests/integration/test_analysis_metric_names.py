"""The analysis job's gauges reach a real Prometheus under the names our alert rules use.

Starts the pinned Prometheus (``${INFERWATCH_CACHE:-.stack}/bin/prometheus``, from
stack/install.sh) with its OTLP receiver and the same translation strategy as
prometheus/prometheus.yml, pushes one export of the job's gauges over OTLP/HTTP, and
checks every metric name of prometheus/rules/analysis.yml exists. Missing binary: a
skip, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from inferwatch.analysis import jobs
from inferwatch.analysis.drift import DriftReport, DriftThresholds, FeatureDrift, StatisticResult
from inferwatch.analysis.quality import Quality
from inferwatch.analysis.runner import AnalysisResult
from inferwatch.inference.metadata import ModelMetadata
from inferwatch.inference.training import card_fraud_schema
from inferwatch.telemetry import instruments as names
from tests.fixtures.components import component_missing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("INFERWATCH_CACHE", ROOT / ".stack"))
RULES = ROOT / "prometheus" / "rules" / "analysis.yml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = CACHE / "bin" / "prometheus"
    if not binary.exists():
        component_missing(f"{binary} missing (run stack/install.sh)")
    work = tmp_path_factory.mktemp("prom")
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 5s}\n"
        "otlp: {translation_strategy: UnderscoreEscapingWithSuffixes}\n"
    )
    port = _free_port()
    proc = subprocess.Popen(
        [str(binary), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work}",
         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-otlp-receiver"],
        stdout=subprocess.DEVNULL, stderr=(work / "log").open("w"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("prometheus did not become ready: " + (work / "log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _result() -> tuple[ModelMetadata, AnalysisResult]:
    meta = ModelMetadata(
        name="card-fraud", version="v-names", estimator="X", feature_schema=card_fraud_schema(),
        classes=(0, 1), positive_class=1, decision_threshold=0.5, metrics={},
        trained_at=datetime.now(UTC), training_seconds=0.0, training_rows=1, seed=1,
        artifact="model.skops", artifact_sha256="0" * 64, artifact_format="skops",
        reference_profile={},
    )  # fmt: skip
    stats = (
        StatisticResult("psi", 0.3, 0.2, True),
        StatisticResult("wasserstein", 0.2, 0.15, True),
    )
    feature = FeatureDrift("distance_from_home_km", "numeric", 5000, 0, stats, "drift")
    report = DriftReport("v-names", "a", "b", 5000, (feature,), ("distance_from_home_km",), True,
                         1, DriftThresholds())  # fmt: skip
    quality = Quality(0.5, 5000, 1000, 0.2, 30, 20, 10, 960, 10, 0.66, 0.66, 0.9, 0.02)
    return meta, AnalysisResult(report, quality)


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
        for n in (names.DRIFT_PSI, names.DRIFT_STATISTIC, names.DRIFT_DATASET)
    }
    deadline = time.monotonic() + 20
    present: set[str] = set()
    while time.monotonic() < deadline:
        present = set(httpx.get(f"{prometheus}/api/v1/label/__name__/values").json()["data"])
        if used <= present:
            break
        time.sleep(0.5)
    assert sorted(used - present) == [], f"present: {sorted(present)}"
    q = httpx.get(f"{prometheus}/api/v1/query",
                  params={"query": names.prometheus_name(names.DRIFT_DETECTED)}).json()  # fmt: skip
    labels = q["data"]["result"][0]["metric"]
    assert labels["model_name"] == "card-fraud"
    assert labels["model_version"] == "v-names"
    assert labels["feature"] == "distance_from_home_km"
    assert labels["job"] == jobs.SERVICE_NAME
