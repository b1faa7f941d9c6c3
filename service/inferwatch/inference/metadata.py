"""Model metadata: what is saved beside a model artifact, and what the API reports.

``reference_profile`` describes the training features for drift analysis:

* numeric (float/int) feature::

    {"kind": "numeric", "edges": [e1 < e2 < ... < ek],      # interior quantile cut points
     "proportions": [p0, ..., pk],                            # share of training rows per bin
     "quantiles": [q0, q1, ..., q100],                       # percentiles 0..100
     "mean": m, "std": s, "min": lo, "max": hi}

  A value v falls in bin ``i = number of edges <= v`` (numpy
  ``searchsorted(edges, v, side="right")``; Postgres ``width_bucket(v, edges)``).
* categorical and bool feature (bools as "true"/"false", as ``features->>'name'``
  renders them in Postgres)::

    {"kind": "categorical", "frequencies": {"grocery": 0.22, ...}}

``calibration`` maps the model's score to a calibrated probability for the quality
estimate (:class:`inferwatch.analysis.estimate.Calibration`, fitted on the holdout)::

    {"method": "isotonic", "scores": [...], "probabilities": [...], "rows": n, "positives": k}

Metadata written before it existed has none: no estimate for that model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from inferwatch.inference.schema import FeatureSchema


class ModelMetadata(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str
    version: str
    estimator: str  # class name of the final estimator
    feature_schema: FeatureSchema
    classes: tuple[int, ...]
    positive_class: int
    decision_threshold: float  # predict positive when probability >= threshold
    metrics: dict[str, float]  # holdout metrics
    trained_at: datetime
    training_seconds: float
    training_rows: int
    seed: int
    artifact: str  # file name of the model artifact beside metadata.json
    artifact_sha256: str  # verified before loading
    artifact_format: str  # "skops"
    reference_profile: dict[str, Any]
    calibration: dict[str, Any] | None = None
