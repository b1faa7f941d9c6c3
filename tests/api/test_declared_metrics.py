"""Every metric the app emits while serving is declared in instruments.METRICS with the unit
and kind it is emitted with (the HTTP duration histogram included, which the app's wiring
creates), so the Prometheus names prometheus_name() derives are the ones Prometheus gets."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics.export import (
    ExponentialHistogram,
    Gauge,
    Histogram,
    Sum,
)

from inferwatch.telemetry import instruments as names
from inferwatch.telemetry.instruments import METRICS


def _kind(data: Any) -> names.Kind:
    if isinstance(data, Histogram | ExponentialHistogram):
        return "histogram"
    if isinstance(data, Sum):
        return "counter" if data.is_monotonic else "updowncounter"
    assert isinstance(data, Gauge), data
    return "gauge"


def test_every_emitted_metric_is_declared_with_its_unit_and_kind(
    harness: Any, valid_features: dict[str, Any]
) -> None:
    assert harness.client.post("/v1/predict", json={"features": valid_features}).status_code == 200
    batch = {"instances": [{"features": valid_features}] * 2}
    assert harness.client.post("/v1/predict/batch", json=batch).status_code == 200
    assert harness.client.post("/v1/predict", json={"features": {}}).status_code == 422
    data = harness.metrics.get_metrics_data()
    assert data is not None
    emitted = {
        m.name: names.MetricSpec(m.unit or "", _kind(m.data))
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert {
        names.HTTP_SERVER_DURATION,
        names.INFERENCE_DURATION,
        names.BATCH_INFERENCE_DURATION,
        names.PREDICTIONS,
        names.REJECTED_REQUESTS,
        names.INFERENCE_QUEUE_DURATION,
        names.MICROBATCH_SIZE,
        names.MICROBATCH_DURATION,
        names.MICROBATCH_QUEUE_DEPTH,
    } <= emitted.keys()
    assert {n: METRICS.get(n) for n in emitted} == emitted
