"""POST /v1/predict and /v1/predict/batch: validate, predict, record, respond.

A single prediction joins the process's micro-batcher (``inference/batcher.py``): the
model runs in the model thread, never on the event loop, in one call with whatever
other requests are queued. Per request, as if it had been served alone: the prediction
is recorded on its HTTP server span (one span per request: model, version, prediction
id, class, probability, the caller's entity, and the size of the batch it rode in);
its inference duration (queueing + its batch's compute, what it experienced) and its
queueing part are recorded inside that span, so exemplars carry its trace id; its
audit record is handed to the sink, which never blocks. A full queue sheds the request
with 503 ``overloaded`` and ``Retry-After`` (counted as a rejection).

A model call that raises is a server fault, never the client's: the requests of that
batch get the error, their durations are recorded with ``outcome="error"``, no
prediction is counted, no audit record made, and the catch-all handler answers 500 in
the error shape (``inferwatch.api.errors``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import orjson
from fastapi import APIRouter, Request
from opentelemetry import trace
from starlette.responses import Response
from uuid_utils.compat import uuid7

from inferwatch.api.body import read_json
from inferwatch.api.deps import RuntimeDep, get_runtime
from inferwatch.api.errors import ApiError
from inferwatch.api.validation import Problem, ValidInstance, feature_json_schema
from inferwatch.audit.records import PredictionRecord
from inferwatch.inference.batcher import Overloaded, Stopped
from inferwatch.telemetry import instruments as names

router = APIRouter(prefix="/v1", tags=["predict"])
RETRY_AFTER = {"Retry-After": "1"}  # seconds: a queue drains in milliseconds

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed JSON"},
    413: {"description": "Body too large"},
    415: {"description": "Not JSON"},
    422: {"description": "Invalid fields; `detail` names every bad field and why"},
    500: {"description": "Server fault (the model call failed)"},
    503: {
        "description": "Not ready (starting or shutting down), or overloaded: the "
        "micro-batch queue is full; retry after the `Retry-After` seconds"
    },
}


def _ids() -> tuple[str, str]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


@router.post("/predict", responses=_ERRORS, summary="Score one transaction")
async def predict(request: Request) -> Response:
    runtime = await get_runtime(request)  # a plain call: Depends costs CPU per request
    body = await read_json(request, runtime.settings.max_body_bytes)
    inst, problems = runtime.validator.validate(body)
    if inst is None:
        raise ApiError(422, "validation", "invalid prediction request", problems)
    ins = runtime.instruments
    span = trace.get_current_span()
    ctx = span.get_span_context()
    started = perf_counter()
    try:
        served = await runtime.batcher.predict(inst.features, ctx)
    except Overloaded:
        raise ApiError(
            503,
            names.REASON_OVERLOADED,
            "overloaded: too many predictions queued; retry later",
            headers=RETRY_AFTER,
        ) from None
    except Stopped:
        raise ApiError(503, "not_ready", "not ready: the service is shutting down") from None
    except Exception:  # a server fault: 500 from the catch-all handler; no prediction, no row
        ins.inference_duration.record(perf_counter() - started, runtime.error_attrs)
        raise
    result = served.prediction
    if runtime.settings.inject_latency_s:
        await asyncio.sleep(runtime.settings.inject_latency_s)
    latency = perf_counter() - started
    ins.inference_duration.record(latency, runtime.model_attrs)  # inside the server span
    ins.queue_duration.record(served.queued_s, runtime.model_attrs)
    ins.predictions.add(1, runtime.class_attrs[result.label])
    uid = uuid7()
    pid = str(uid)
    if ctx.is_valid:
        trace_id, span_id = format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
    else:
        trace_id = span_id = ""
    meta = runtime.predictor.metadata
    if span.is_recording():
        attrs: dict[str, Any] = {
            names.ATTR_MODEL_NAME: meta.name,
            names.ATTR_MODEL_VERSION: meta.version,
            names.ATTR_PREDICTION_ID: pid,
            names.ATTR_PREDICTION_CLASS: result.label,
            names.ATTR_PROBABILITY: result.probability,
            names.ATTR_BATCH_SIZE: served.batch_size,
        }
        if inst.entity_type is not None:
            attrs[names.ATTR_ENTITY_TYPE] = inst.entity_type
            attrs[names.ATTR_ENTITY_ID] = inst.entity_id
        span.set_attributes(attrs)
    ts = datetime.now(UTC)
    runtime.audit.submit(
        PredictionRecord.from_prediction(
            prediction_id=uid,
            ts=ts,
            model_name=meta.name,
            model_version=meta.version,
            instance=inst,
            label=result.label,
            probability=result.probability,
            latency_s=latency,
            trace_id=trace_id,
            span_id=span_id,
        )
    )
    if runtime.shadow is not None:  # off the request path: queues the row and returns
        runtime.shadow.offer(uid, ts, inst.features)
    return Response(
        orjson.dumps(
            {
                "prediction_id": pid,
                "prediction": result.label,
                "probability": result.probability,
                "model_name": meta.name,
                "model_version": meta.version,
                "trace_id": trace_id,
            }
        ),
        media_type="application/json",
    )


@router.post("/predict/batch", responses=_ERRORS, summary="Score a bounded list of transactions")
async def predict_batch(request: Request, runtime: RuntimeDep) -> Response:
    body = await read_json(request, runtime.settings.max_body_bytes * 16)
    limit = runtime.settings.max_batch_size
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list):
        raise ApiError(
            422,
            "validation",
            "invalid batch request",
            [Problem("instances", "required: a list of prediction requests")],
        )
    extra = [k for k in body if k != "instances"]
    items = body["instances"]
    problems = [Problem(str(k)[:64], "unknown field") for k in extra]
    if not items:
        problems.append(Problem("instances", "must not be empty"))
    if len(items) > limit:
        raise ApiError(
            422,
            "batch_too_large",
            "batch too large",
            [Problem("instances", f"must have at most {limit} items, got {len(items)}")],
        )
    valid: list[ValidInstance] = []
    for i, item in enumerate(items):
        inst, errs = runtime.validator.validate(item, prefix=f"instances[{i}].")
        problems.extend(errs)
        if inst is not None:
            valid.append(inst)
    if problems:
        raise ApiError(422, "validation", "invalid batch request", problems)
    ins = runtime.instruments
    rows = [v.features for v in valid]
    started = perf_counter()
    try:  # in the model thread, between micro-batches: the event loop never runs the model
        results = await runtime.batcher.run(lambda: runtime.predictor.predict(rows))
    except Stopped:
        raise ApiError(503, "not_ready", "not ready: the service is shutting down") from None
    except Exception:  # as in predict()
        ins.batch_inference_duration.record(perf_counter() - started, runtime.error_attrs)
        raise
    if runtime.settings.inject_latency_s:
        await asyncio.sleep(runtime.settings.inject_latency_s)
    latency = perf_counter() - started
    ins.batch_inference_duration.record(latency, runtime.model_attrs)
    counts: dict[int, int] = {}
    for r in results:
        counts[r.label] = counts.get(r.label, 0) + 1
    for label, n in counts.items():
        ins.predictions.add(n, runtime.class_attrs[label])
    trace_id, span_id = _ids()
    meta = runtime.predictor.metadata
    now = datetime.now(UTC)
    out = []
    pids = []
    records = []
    for inst, r in zip(valid, results, strict=True):
        uid = uuid7()
        pid = str(uid)
        pids.append(pid)
        records.append(
            PredictionRecord.from_prediction(
                prediction_id=uid,
                ts=now,
                model_name=meta.name,
                model_version=meta.version,
                instance=inst,
                label=r.label,
                probability=r.probability,
                latency_s=latency,
                trace_id=trace_id,
                span_id=span_id,
            )
        )
        out.append({"prediction_id": pid, "prediction": r.label, "probability": r.probability})
        if runtime.shadow is not None:
            runtime.shadow.offer(uid, now, inst.features)
    runtime.audit.submit_many(records)  # one journal write before the response
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(
            {
                names.ATTR_MODEL_NAME: meta.name,
                names.ATTR_MODEL_VERSION: meta.version,
                names.ATTR_BATCH_SIZE: len(valid),
                names.ATTR_PREDICTION_IDS: pids,
            }
        )
    return Response(
        orjson.dumps(
            {
                "predictions": out,
                "model_name": meta.name,
                "model_version": meta.version,
                "trace_id": trace_id,
            }
        ),
        media_type="application/json",
    )


def openapi_request_bodies(runtime_schema: dict[str, Any], batch_max: int) -> dict[str, Any]:
    """OpenAPI request bodies generated from the model's feature schema."""
    return {
        "/v1/predict": {
            "content": {"application/json": {"schema": runtime_schema}},
            "required": True,
        },
        "/v1/predict/batch": {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["instances"],
                        "additionalProperties": False,
                        "properties": {
                            "instances": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": batch_max,
                                "items": runtime_schema,
                            }
                        },
                    }
                }
            },
            "required": True,
        },
    }


__all__ = ["feature_json_schema", "openapi_request_bodies", "router"]
