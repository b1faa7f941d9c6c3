"""Shadow scoring: a candidate scores live predictions off the request path.

The shadow's estimator is gated (``GatedEstimator``, tests/fixtures/api.py): with its gate
shut the shadow model thread is stuck inside ``predict_proba``, so a response that still
arrives shows the request never waits for the shadow, and the shadow queue's fill is
decided by the test, not by timing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from inferwatch.app import create_app
from inferwatch.audit.records import PredictionRecord, ReplayRecord
from inferwatch.audit.sink import InMemoryAuditSink
from inferwatch.inference.data import generate_transactions
from inferwatch.inference.loading import LoadedModel
from inferwatch.inference.predictor import Predictor
from inferwatch.inference.schema import FeatureSchema, FeatureSpec
from inferwatch.inference.shadow import ShadowConfigError, check_compatible
from inferwatch.settings import Settings
from inferwatch.telemetry import instruments as names
from stack.procs import poll
from tests.fixtures.api import GatedEstimator, attributes_of, points


class ShadowApp:
    def __init__(self, served: LoadedModel, shadow: LoadedModel, **settings: Any) -> None:
        self.audit = InMemoryAuditSink()
        self.reader = InMemoryMetricReader()
        self.app = create_app(
            Settings(environment="test", otlp_enabled=False, **settings),
            model=served,
            audit_sink=self.audit,
            metric_readers=[self.reader],
            shadow_model=shadow,
        )

    def replays(self) -> list[ReplayRecord]:
        return [r for r in self.audit.records if isinstance(r, ReplayRecord)]

    def counted(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in points(self.reader.get_metrics_data(), names.SHADOW_PREDICTIONS):
            out[str(attributes_of(p)[names.ATTR_OUTCOME])] = int(p.value)
        return out


def _candidate(model: LoadedModel, version: str, estimator: Any = None) -> LoadedModel:
    meta = model.metadata.model_copy(update={"version": version})
    return LoadedModel(meta, estimator or model.estimator, model.path)


@pytest.fixture
def rows() -> list[dict[str, Any]]:
    return generate_transactions(12, seed=17)[0]


def test_shadow_rows_carry_the_live_prediction_ids(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    shadow = _candidate(small_model, "cand-1")
    s = ShadowApp(small_model, shadow)
    served_ids: list[str] = []
    with TestClient(s.app) as client:
        for features in rows[:8]:
            resp = client.post("/v1/predict", json={"features": features})
            assert resp.status_code == 200
            served_ids.append(resp.json()["prediction_id"])
        batch = {"instances": [{"features": f} for f in rows[8:]]}
        resp = client.post("/v1/predict/batch", json=batch)
        assert resp.status_code == 200
        served_ids += [p["prediction_id"] for p in resp.json()["predictions"]]
        poll(lambda: len(s.replays()) == len(rows), 10, "a shadow row per prediction")
        assert s.counted() == {"scored": len(rows)}
    live = {r.prediction_id: r for r in s.audit.records if isinstance(r, PredictionRecord)}
    shadows = {r.prediction_id: r for r in s.replays()}
    assert set(shadows) == set(live) == {UUID(i) for i in served_ids}
    expected = Predictor(shadow).predict(rows)
    for features, pid, want in zip(rows, served_ids, expected, strict=True):
        r = shadows[UUID(pid)]
        assert r.replay_id == "shadow-card-fraud-cand-1"
        assert (r.mode, r.model_name, r.model_version) == ("shadow", "card-fraud", "cand-1")
        assert r.ts == live[r.prediction_id].ts  # the live row's ts: joins prune partitions
        assert (r.prediction, r.probability) == (want.label, want.probability)
        assert live[r.prediction_id].features == features
        assert r.ts <= r.scored_at <= datetime.now(UTC)


def test_a_fraction_of_traffic_is_shadowed(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    s = ShadowApp(small_model, _candidate(small_model, "cand-2"), shadow_fraction=0.25)
    with TestClient(s.app) as client:
        ids = [
            client.post("/v1/predict", json={"features": f}).json()["prediction_id"]
            for f in rows[:8]
        ]
        poll(lambda: len(s.replays()) == 2, 10, "two shadow rows")
    # deterministic: every fourth prediction
    assert [str(r.prediction_id) for r in s.replays()] == [ids[3], ids[7]]


def test_a_stuck_shadow_never_slows_a_response_and_a_full_queue_drops_counted(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    gated = GatedEstimator(small_model.estimator)
    s = ShadowApp(small_model, _candidate(small_model, "slow", gated), shadow_max_queue=2)
    with TestClient(s.app) as client:
        try:
            first = client.post("/v1/predict", json={"features": rows[0]})
            assert first.status_code == 200
            poll(lambda: len(gated.calls) == 1, 10, "the shadow model stuck on row 1")
            # the shadow thread is stuck: every response still comes back, at once
            for features in rows[1:]:
                assert client.post("/v1/predict", json={"features": features}).status_code == 200
            assert s.app.state.runtime.shadow.depth == 2
            assert s.counted() == {"dropped": len(rows) - 3}
            assert s.replays() == []
        finally:
            gated.gate.set()
        poll(lambda: len(s.replays()) == 3, 10, "the three rows the shadow kept")
    assert s.counted() == {"dropped": len(rows) - 3, "scored": 3}


def test_a_failing_shadow_never_fails_a_response(
    small_model: LoadedModel, rows: list[dict[str, Any]]
) -> None:
    gated = GatedEstimator(small_model.estimator, fail_on=1)
    gated.gate.set()
    s = ShadowApp(small_model, _candidate(small_model, "broken", gated))
    with TestClient(s.app, raise_server_exceptions=False) as client:
        first = client.post("/v1/predict", json={"features": rows[0]})
        assert first.status_code == 200
        poll(lambda: s.counted().get("failed") == 1, 10, "the failed shadow row counted")
        assert client.post("/v1/predict", json={"features": rows[1]}).status_code == 200
        poll(lambda: s.counted().get("scored") == 1, 10, "the next row scored")
    assert [str(r.prediction_id) for r in s.replays()] == [second_id(s)]


def second_id(s: ShadowApp) -> str:
    live = [r for r in s.audit.records if isinstance(r, PredictionRecord)]
    return str(live[1].prediction_id)


def test_a_candidate_that_cannot_score_live_payloads_is_refused(
    small_model: LoadedModel,
) -> None:
    served = small_model.metadata.feature_schema
    check_compatible(served, served)
    mc = next(f for f in served.features if f.type == "category")
    kept = [
        f.model_copy(update={"categories": f.categories[:1]}) if f is mc and f.categories else f
        for f in served.features
    ]
    narrower = FeatureSchema(features=(*kept, FeatureSpec(name="new_signal", type="float")))
    with pytest.raises(ShadowConfigError) as info:
        check_compatible(served, narrower)
    assert "new_signal: not in the served model's payloads" in str(info.value)
    assert f"{mc.name}: categories" in str(info.value)
