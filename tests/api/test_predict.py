"""One request, observed: the span, the histogram sample, the exemplar, the audit record."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import (
    ExponentialHistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.trace import SpanKind

from inferwatch.app import create_app
from inferwatch.audit.sink import InMemoryAuditSink
from inferwatch.inference.loading import LoadedModel
from inferwatch.settings import Settings
from inferwatch.telemetry import instruments as names
from tests.fixtures.api import Harness, attributes_of, make_harness, points


def test_one_prediction_is_one_span_one_sample_one_exemplar_one_audit_row(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    body = {
        "features": valid_features,
        "entity": {"type": "transaction", "id": "txn-42"},
        "request_id": "req-1",
    }
    resp = harness.client.post("/v1/predict", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    meta = harness.model.metadata
    assert out["model_name"] == meta.name
    assert out["model_version"] == meta.version
    assert out["prediction"] in meta.classes
    assert 0.0 <= out["probability"] <= 1.0
    assert len(out["trace_id"]) == 32

    spans = harness.spans.server()
    assert len(spans) == 1, [s.name for s in spans]
    span = spans[0]
    assert span.kind == SpanKind.SERVER
    assert span.name == "POST /v1/predict"
    assert format(span.context.trace_id, "032x") == out["trace_id"]
    attrs = dict(span.attributes or {})
    assert attrs[names.ATTR_MODEL_NAME] == meta.name
    assert attrs[names.ATTR_MODEL_VERSION] == meta.version
    assert attrs[names.ATTR_PREDICTION_ID] == out["prediction_id"]
    assert attrs[names.ATTR_PREDICTION_CLASS] == out["prediction"]
    assert attrs[names.ATTR_PROBABILITY] == out["probability"]
    assert attrs[names.ATTR_ENTITY_TYPE] == "transaction"
    assert attrs[names.ATTR_ENTITY_ID] == "txn-42"
    assert attrs["http.route"] == "/v1/predict"
    assert attrs["http.response.status_code"] == 200

    data = harness.metrics.get_metrics_data()
    (hist,) = points(data, names.INFERENCE_DURATION)
    assert isinstance(hist, ExponentialHistogramDataPoint)
    assert hist.count == 1
    assert attributes_of(hist) == {
        names.ATTR_MODEL_NAME: meta.name,
        names.ATTR_MODEL_VERSION: meta.version,
        names.ATTR_OUTCOME: "ok",
    }
    assert 0 < hist.sum < 5
    assert [format(e.trace_id, "032x") for e in hist.exemplars] == [out["trace_id"]]
    (count,) = points(data, names.PREDICTIONS)
    assert isinstance(count, NumberDataPoint)
    assert count.value == 1
    assert attributes_of(count)[names.ATTR_PREDICTION_CLASS] == str(out["prediction"])
    (http,) = points(data, names.HTTP_SERVER_DURATION)
    assert http.count == 1
    assert dict(http.attributes)["http.route"] == "/v1/predict"

    (record,) = harness.audit.predictions
    assert str(record.prediction_id) == out["prediction_id"]
    assert record.features == valid_features
    assert record.trace_id == out["trace_id"]
    assert record.span_id == format(span.context.span_id, "016x")
    assert (record.entity_type, record.entity_id, record.request_id) == (
        "transaction",
        "txn-42",
        "req-1",
    )
    assert record.latency_s == hist.sum


def test_metric_attributes_never_carry_ids_or_feature_values(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    for i in range(5):
        body = {"features": valid_features, "entity": {"type": "account", "id": f"acct-{i}"}}
        assert harness.client.post("/v1/predict", json=body).status_code == 200
    allowed = {
        names.ATTR_MODEL_NAME,
        names.ATTR_MODEL_VERSION,
        names.ATTR_PREDICTION_CLASS,
        names.ATTR_OUTCOME,
        names.ATTR_REJECT_REASON,
        "http.route",
        "http.request.method",
        "http.response.status_code",
        "url.scheme",
        "network.protocol.version",
        "error.type",
    }
    data = harness.metrics.get_metrics_data()
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    assert set(p.attributes or {}) <= allowed, (m.name, p.attributes)


def test_prediction_ids_are_unique_and_time_ordered(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    ids = [
        harness.client.post("/v1/predict", json={"features": valid_features}).json()[
            "prediction_id"
        ]
        for _ in range(20)
    ]
    assert len(set(ids)) == 20
    assert ids == sorted(ids)


def test_batch_predicts_each_instance_in_one_span(harness: Harness) -> None:
    from inferwatch.inference.data import generate_transactions

    rows, _ = generate_transactions(5, seed=5)
    resp = harness.client.post(
        "/v1/predict/batch", json={"instances": [{"features": r} for r in rows]}
    )
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert len(preds) == 5
    (span,) = harness.spans.server()
    assert span.attributes is not None
    assert span.attributes[names.ATTR_BATCH_SIZE] == 5
    assert list(attributes_of(span)[names.ATTR_PREDICTION_IDS]) == [
        p["prediction_id"] for p in preds
    ]
    assert [str(r.prediction_id) for r in harness.audit.predictions] == [
        p["prediction_id"] for p in preds
    ]
    data = harness.metrics.get_metrics_data()
    assert sum(p.value for p in points(data, names.PREDICTIONS)) == 5
    # the single-prediction latency histogram only holds single predictions
    assert points(data, names.INFERENCE_DURATION) == []
    (batch_hist,) = points(data, names.BATCH_INFERENCE_DURATION)
    assert batch_hist.count == 1


def test_single_and_batch_agree(harness: Harness, valid_features: dict[str, Any]) -> None:
    single = harness.client.post("/v1/predict", json={"features": valid_features}).json()
    batch = harness.client.post(
        "/v1/predict/batch", json={"instances": [{"features": valid_features}]}
    ).json()
    assert batch["predictions"][0]["probability"] == single["probability"]
    assert batch["predictions"][0]["prediction"] == single["prediction"]


def test_model_health_ready_and_openapi(harness: Harness) -> None:
    meta = harness.model.metadata
    info = harness.client.get("/v1/model").json()
    assert info["name"] == meta.name
    assert info["version"] == meta.version
    assert [f["name"] for f in info["feature_schema"]] == list(meta.feature_schema.names)
    assert info["metrics"]["roc_auc"] == meta.metrics["roc_auc"]
    assert harness.client.get("/healthz").json() == {"status": "ok"}
    ready = harness.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_version"] == meta.version
    doc = harness.client.get("/openapi.json").json()
    body = doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    props = body["schema"]["properties"]["features"]["properties"]
    assert set(props) == set(meta.feature_schema.names)
    assert props["merchant_category"]["enum"][0] == "grocery"
    harness.client.get("/metrics")
    # probes and scrapes make no spans; API calls make one each
    assert sorted(s.name for s in harness.spans.server()) == [
        "GET /openapi.json",
        "GET /v1/model",
    ]


def test_readyz_is_503_after_shutdown_begins(harness: Harness) -> None:
    runtime = harness.client.app.state.runtime  # type: ignore[attr-defined]
    runtime.ready = False
    assert harness.client.get("/readyz").status_code == 503
    resp = harness.client.post("/v1/predict", json={})
    assert resp.status_code == 503
    assert resp.json()["error"] == "not_ready"


def test_shutdown_closes_the_audit_sink(small_model: Any) -> None:
    gen = make_harness(small_model)
    h = next(gen)
    assert h.audit.started
    assert not h.audit.closed
    with pytest.raises(StopIteration):
        next(gen)
    assert h.audit.closed


def test_every_client_route_is_503_not_ready_once_shutdown_begins(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    harness.client.app.state.runtime.ready = False  # type: ignore[attr-defined]
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/v1/model", None),
        ("POST", "/v1/predict/batch", {"instances": [{"features": valid_features}]}),
        ("POST", "/v1/feedback", {"prediction_id": str(uuid.uuid4()), "label": 1}),
        ("GET", "/v1/monitoring/latency", None),
    ]
    for method, path, body in requests:
        resp = harness.client.request(method, path, json=body)
        assert resp.status_code == 503, (path, resp.text)
        assert resp.json()["error"] == "not_ready", path
    assert harness.audit.records == []
    # the error handlers still count them
    data = harness.metrics.get_metrics_data()
    (rejected,) = points(data, names.REJECTED_REQUESTS)
    assert dict(rejected.attributes) == {names.ATTR_REJECT_REASON: "not_ready"}
    assert rejected.value == len(requests)


def test_before_start_up_routes_answer_503_and_the_handlers_do_not_fail(
    small_model: LoadedModel,
) -> None:
    app = create_app(
        Settings(environment="test", otlp_enabled=False),
        model=small_model,
        audit_sink=InMemoryAuditSink(),
    )
    client = TestClient(app)  # no `with`: the lifespan never runs; server errors raise here
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/feedback"):
        resp = client.post(path, content=b"{", headers={"content-type": "application/json"})
        assert resp.status_code == 503, (path, resp.text)
        assert resp.json()["error"] == "not_ready"
    assert client.get("/v1/model").status_code == 503
    assert client.get("/readyz").json() == {"status": "not ready"}
    assert client.get("/readyz").status_code == 503
    assert client.get("/metrics").status_code == 404
    with TestClient(app) as started:
        assert started.get("/readyz").status_code == 200
        app.state.runtime.ready = False
        assert started.get("/readyz").json() == {"status": "not ready"}
        assert started.post("/v1/predict", json={}).status_code == 503
        # /metrics serves the process's own telemetry while shutdown begins
        lines = started.get("/metrics").text.splitlines()
        (rejected,) = [n for n in lines if n.startswith("inferwatch_requests_rejected_total{")]
        assert 'reason="not_ready"' in rejected
        assert rejected.endswith(" 1.0")


class RaisingEstimator:
    """A fitted classifier's classes, and a predict_proba that fails: a server fault."""

    def __init__(self, fitted: Any) -> None:
        self.classes_ = fitted.classes_

    def predict_proba(self, x: Any) -> Any:
        raise RuntimeError("the model failed")


def test_a_failing_model_call_is_a_500_recorded_with_outcome_error(
    small_model: LoadedModel, valid_features: dict[str, Any]
) -> None:
    failing = LoadedModel(
        small_model.metadata, RaisingEstimator(small_model.estimator), small_model.path
    )
    reader = InMemoryMetricReader()
    audit = InMemoryAuditSink()
    app = create_app(
        Settings(environment="test", otlp_enabled=False),
        model=failing,
        audit_sink=audit,
        metric_readers=[reader],
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        one = client.post("/v1/predict", json={"features": valid_features})
        batch = client.post(
            "/v1/predict/batch", json={"instances": [{"features": valid_features}] * 3}
        )
        data = reader.get_metrics_data()
    for resp in (one, batch):
        assert resp.status_code == 500, resp.text
        assert resp.json() == {
            "error": "internal",
            "message": "internal server error",
            "detail": [],
        }
    meta = small_model.metadata
    error_attrs = {
        names.ATTR_MODEL_NAME: meta.name,
        names.ATTR_MODEL_VERSION: meta.version,
        names.ATTR_OUTCOME: "error",
    }
    for metric in (names.INFERENCE_DURATION, names.BATCH_INFERENCE_DURATION):
        (hist,) = points(data, metric)
        assert attributes_of(hist) == error_attrs, metric
        assert hist.count == 1
    assert points(data, names.PREDICTIONS) == []
    assert points(data, names.REJECTED_REQUESTS) == []  # a server fault, not a rejection
    assert audit.records == []


def test_exemplars_only_on_the_inference_histogram(
    harness: Harness, valid_features: dict[str, Any]
) -> None:
    """The heatmap's exemplars link to traces; no other series samples them (each costs
    request-path CPU and no panel shows them)."""
    resp = harness.client.post("/v1/predict", json={"features": valid_features})
    assert resp.status_code == 200
    data = harness.metrics.get_metrics_data()
    (inference,) = points(data, names.INFERENCE_DURATION)
    assert [format(e.trace_id, "032x") for e in inference.exemplars] == [resp.json()["trace_id"]]
    for name in (
        names.HTTP_SERVER_DURATION,
        names.INFERENCE_QUEUE_DURATION,
        names.MICROBATCH_SIZE,
        names.MICROBATCH_DURATION,
        names.PREDICTIONS,
    ):
        (point,) = points(data, name)
        assert point.exemplars == [], name
