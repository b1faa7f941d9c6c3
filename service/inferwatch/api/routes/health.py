"""Liveness, readiness and the Prometheus pull endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from inferwatch.api.deps import find_runtime, get_runtime
from inferwatch.api.errors import ApiError

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process serves HTTP")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: a model is loaded and the service accepts predictions")
async def readyz(request: Request) -> Response:
    try:
        runtime = await get_runtime(request)
    except ApiError:  # a probe's own answer, not a rejected request
        return JSONResponse({"status": "not ready"}, status_code=503)
    meta = runtime.predictor.metadata
    return JSONResponse({"status": "ready", "model_name": meta.name, "model_version": meta.version})


@router.get(
    "/metrics",
    summary="Prometheus text format, from the same meter provider",
    include_in_schema=False,
)
async def metrics(request: Request) -> Response:
    runtime = find_runtime(request)  # served while shutdown begins too
    registry = runtime.telemetry.registry if runtime is not None else None
    if registry is None:
        return JSONResponse(
            {
                "error": "not_found",
                "message": "metrics pull endpoint disabled: metrics are pushed over OTLP "
                "(INFERWATCH_METRICS_ENDPOINT=on serves them here too)",
                "detail": [],
            },
            status_code=404,
        )
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
