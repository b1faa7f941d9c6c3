"""One declaration per metric: instruments.METRICS holds each metric's unit and kind, every
instrument the service, the audit writer and the analysis job create matches it, and
prometheus_name() derives from it the names rules, dashboards and tests use.

The derived names are checked against a live Prometheus by
tests/integration/test_analysis_metric_names.py and tests/e2e/test_pipeline.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.metrics import NoOpMeter

from inferwatch.analysis.jobs import AnalysisGauges
from inferwatch.audit.writer import PostgresAuditWriter
from inferwatch.inference.shadow import shadow_counter
from inferwatch.telemetry import instruments as names
from inferwatch.telemetry.instruments import METRICS, MetricSpec, prometheus_name


class RecordingMeter(NoOpMeter):
    """A meter that remembers the name, unit and kind of every instrument created on it."""

    def __init__(self) -> None:
        super().__init__("test")
        self.created: dict[str, MetricSpec] = {}

    def _note(self, name: str, unit: str, kind: names.Kind) -> None:
        assert name not in self.created, f"{name} created twice"
        self.created[name] = MetricSpec(unit, kind)

    def create_counter(self, name: str, unit: str = "", description: str = "") -> Any:
        self._note(name, unit, "counter")
        return super().create_counter(name, unit, description)

    def create_up_down_counter(self, name: str, unit: str = "", description: str = "") -> Any:
        self._note(name, unit, "updowncounter")
        return super().create_up_down_counter(name, unit, description)

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> Any:
        self._note(name, unit, "histogram")
        return super().create_histogram(name, unit, description)

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> Any:
        self._note(name, unit, "gauge")
        return super().create_gauge(name, unit, description)

    def create_observable_counter(
        self, name: str, callbacks: Any = None, unit: str = "", description: str = ""
    ) -> Any:
        self._note(name, unit, "counter")
        return super().create_observable_counter(name, callbacks, unit, description)

    def create_observable_up_down_counter(
        self, name: str, callbacks: Any = None, unit: str = "", description: str = ""
    ) -> Any:
        self._note(name, unit, "updowncounter")
        return super().create_observable_up_down_counter(name, callbacks, unit, description)

    def create_observable_gauge(
        self, name: str, callbacks: Any = None, unit: str = "", description: str = ""
    ) -> Any:
        self._note(name, unit, "gauge")
        return super().create_observable_gauge(name, callbacks, unit, description)


def _service(meter: RecordingMeter, tmp_path: Path) -> None:
    names.ServiceInstruments.create(meter)


def _audit_writer(meter: RecordingMeter, tmp_path: Path) -> None:
    PostgresAuditWriter(dsn=None, spool_dir=tmp_path / "spool", meter=meter)


def _batcher(meter: RecordingMeter, tmp_path: Path) -> None:
    names.observe_queue_depth(meter, lambda: 0, {})


def _analysis_job(meter: RecordingMeter, tmp_path: Path) -> None:
    AnalysisGauges(meter)


def _shadow(meter: RecordingMeter, tmp_path: Path) -> None:
    shadow_counter(meter)


CREATORS: dict[str, Callable[[RecordingMeter, Path], None]] = {
    "service": _service,
    "audit writer": _audit_writer,
    "micro-batcher": _batcher,
    "analysis job": _analysis_job,
    "shadow scorer": _shadow,
}


@pytest.mark.parametrize("creator", CREATORS.values(), ids=CREATORS.keys())
def test_every_instrument_is_created_as_declared(
    creator: Callable[[RecordingMeter, Path], None], tmp_path: Path
) -> None:
    meter = RecordingMeter()
    creator(meter, tmp_path)
    assert meter.created, "nothing created"
    assert {n: METRICS.get(n) for n in meter.created} == meter.created


def test_every_declared_metric_is_created(tmp_path: Path) -> None:
    created: set[str] = set()
    for creator in CREATORS.values():
        meter = RecordingMeter()
        creator(meter, tmp_path)
        created |= meter.created.keys()
    # the HTTP histogram is created by the app's wiring (tests/api/test_declared_metrics.py),
    # the span processor's counter by the SDK (tests/e2e/test_pipeline.py finds it)
    assert set(METRICS) - created == {names.HTTP_SERVER_DURATION, names.SDK_SPANS_PROCESSED}


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        # the OTLP translator's own examples (prometheus/otlptranslator)
        (
            "http.server.request.duration",
            MetricSpec("s", "histogram"),
            "http_server_request_duration_seconds",
        ),
        ("requests.count", MetricSpec("1", "counter"), "requests_count_total"),
        ("memory.usage", MetricSpec("By", "gauge"), "memory_usage_bytes"),
        # a unit already in the name, an annotation, "total"/"ratio" moved to the end
        ("job.seconds", MetricSpec("s", "gauge"), "job_seconds"),
        ("queue.depth", MetricSpec("{record}", "gauge"), "queue_depth"),
        ("total.sent", MetricSpec("{item}", "counter"), "sent_total"),
        ("hit.ratio.now", MetricSpec("1", "gauge"), "hit_now_ratio"),
        ("odd..name_x", MetricSpec("", "updowncounter"), "odd_name_x"),
    ],
)
def test_prometheus_name_follows_the_otlp_translation(
    name: str, spec: MetricSpec, expected: str
) -> None:
    assert prometheus_name(name, spec) == expected


def test_a_unit_without_a_known_spelling_is_refused() -> None:
    with pytest.raises(ValueError, match="no Prometheus spelling"):
        prometheus_name("flow.rate", MetricSpec("m3/s", "gauge"))


def test_every_metric_name_is_declared_once_and_distinct() -> None:
    constants = [
        value
        for key, value in vars(names).items()
        if key.isupper()
        and isinstance(value, str)
        and not key.startswith(("ATTR_", "SCOPE_", "REASON_"))
    ]
    assert len(set(constants)) == len(constants), "two constants name the same metric"
    assert set(constants) == set(METRICS)
    derived = [prometheus_name(n) for n in METRICS]
    assert len(set(derived)) == len(derived)
