"""GET /v1/model: what is being served (name, version, schema, holdout metrics)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from inferwatch.api.deps import RuntimeDep

router = APIRouter(prefix="/v1", tags=["model"])


@router.get("/model", summary="The served model: name, version, schema, metrics")
async def model_info(runtime: RuntimeDep) -> dict[str, Any]:
    meta = runtime.predictor.metadata
    return {
        "name": meta.name,
        "version": meta.version,
        "estimator": meta.estimator,
        "classes": list(meta.classes),
        "positive_class": meta.positive_class,
        "decision_threshold": meta.decision_threshold,
        "feature_schema": meta.feature_schema.model_dump(mode="json")["features"],
        "metrics": meta.metrics,
        "trained_at": meta.trained_at.isoformat(),
        "training_seconds": meta.training_seconds,
        "training_rows": meta.training_rows,
        "artifact_sha256": meta.artifact_sha256,
    }
