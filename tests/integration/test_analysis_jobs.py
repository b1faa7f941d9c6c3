"""The periodic analysis job exports drift and quality gauges from the real audit table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from inferwatch.analysis.estimate import Calibration
from inferwatch.analysis.jobs import (
    AnalysisGauges,
    JobConfig,
    meter_provider,
    run_once,
)
from inferwatch.inference import data
from inferwatch.inference.metadata import ModelMetadata
from inferwatch.inference.training import card_fraud_schema, reference_profile
from inferwatch.telemetry import instruments as names
from inferwatch.telemetry.instruments import DRIFT_DATASET, DRIFT_STATISTIC
from stack.postgres import AuditDb
from tests.fixtures.audit import insert_predictions, model_metadata

pytestmark = pytest.mark.integration


def _metadata() -> ModelMetadata:
    cols, _ = data.generate_arrays(40_000, seed=11)
    return model_metadata("v-job", reference_profile(card_fraud_schema(), cols))


def _points(reader: InMemoryMetricReader) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    out: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    data_ = reader.get_metrics_data()
    assert data_ is not None
    for rm in data_.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    out.setdefault(m.name, []).append((p.value, dict(p.attributes or {})))  # type: ignore[union-attr]
    return out


def test_job_exports_drift_and_quality_gauges(audit_db: AuditDb) -> None:
    rows, labels = data.generate_transactions(1_500, seed=77, drift=True)
    rng = np.random.default_rng(1)
    probs = np.clip(0.5 * labels + rng.beta(1, 8, len(labels)), 0, 1)
    start = datetime.now(UTC) - timedelta(minutes=30)
    ids = insert_predictions(
        audit_db.writer_dsn,
        rows,
        model_version="v-job",
        start=start,
        probabilities=probs.tolist(),
    )
    with psycopg.connect(audit_db.writer_dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO outcomes (prediction_id, label, received_at) VALUES (%s, %s, now())",
            [(ids[i], int(labels[i])) for i in range(0, len(ids), 3)],
        )
    reader = InMemoryMetricReader()
    provider = meter_provider([reader])
    gauges = AnalysisGauges(provider.get_meter("test"))
    result = run_once(audit_db.analyst_dsn, _metadata(), JobConfig(model_version="v-job"), gauges)
    points = _points(reader)
    detected = {a["feature"]: v for v, a in points[names.DRIFT_DETECTED]}
    assert {f for f, v in detected.items() if v == 1.0} == {
        "distance_from_home_km",
        "merchant_category",
    }
    assert len(points[names.DRIFT_PSI]) == 16
    assert {a["statistic"] for _, a in points[DRIFT_STATISTIC]} == {"wasserstein", "jensen_shannon"}
    assert points[DRIFT_DATASET][0][0] == 1.0
    ((coverage, attrs),) = points[names.QUALITY_LABEL_COVERAGE]
    assert attrs == {"model.name": "card-fraud", "model.version": "v-job"}
    assert coverage == pytest.approx(500 / 1_500)
    ((precision, _),) = points[names.QUALITY_PRECISION]
    assert precision == result.quality.precision
    provider.shutdown()


def test_job_exports_the_quality_estimate_of_its_window(audit_db: AuditDb) -> None:
    rows, _ = data.generate_transactions(600, seed=78)
    probs = np.random.default_rng(2).beta(1, 6, len(rows))
    start = datetime.now(UTC) - timedelta(minutes=20)
    insert_predictions(
        audit_db.writer_dsn, rows, model_version="v-est", start=start, probabilities=probs.tolist()
    )
    # identity calibration: the expected counts are sums of the scores themselves
    identity = Calibration(scores=(0.0, 1.0), probabilities=(0.0, 1.0), rows=2, positives=1)
    calibrated = _metadata().model_copy(update={"calibration": identity.to_dict()})
    pred = probs >= calibrated.decision_threshold
    for meta, exported in ((calibrated, True), (_metadata(), False)):
        reader = InMemoryMetricReader()
        provider = meter_provider([reader])
        gauges = AnalysisGauges(provider.get_meter("test"))
        run_once(audit_db.analyst_dsn, meta, JobConfig(model_version="v-est"), gauges)
        points = _points(reader)
        provider.shutdown()
        if not exported:  # metadata without a calibration: no estimate, the rest as before
            assert names.QUALITY_ESTIMATED_PRECISION not in points
            assert points[names.ANALYSIS_ROWS][0][0] == 600
            continue
        ((precision, attrs),) = points[names.QUALITY_ESTIMATED_PRECISION]
        assert attrs == {"model.name": "card-fraud", "model.version": "v-est"}
        assert precision == pytest.approx(probs[pred].mean())
        ((recall, _),) = points[names.QUALITY_ESTIMATED_RECALL]
        assert recall == pytest.approx(probs[pred].sum() / probs.sum())
        ((auc, _),) = points[names.QUALITY_ESTIMATED_ROC_AUC]
        assert 0.5 < auc < 1.0
