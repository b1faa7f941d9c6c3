"""POST /v1/feedback: ground-truth labels for served predictions (one or a batch).

An outcome names its prediction by ``prediction_id`` or by the ``entity`` (type +
id) the caller gave at prediction time. The route validates and hands an
:class:`OutcomeRecord` to the same non-blocking, lossless audit writer as the
predictions; it never reads the database. So:

* a label may arrive before its prediction row is flushed, or days later: outcomes
  are joined at query time (view ``prediction_outcomes``), never at write time;
* every receipt is kept: an outcome is stamped ``received_at`` here, once, and is
  unique per key + label + received_at (migration 0003), so the writer's retries and
  the spool's replays store it once while a later receipt is a new row, whatever its
  label (a flip 0 -> 1 -> 0 keeps all three);
* a different label later is a *correction*, not a conflict: the latest received
  wins in the views, earlier ones stay as history (docs/analysts.md says why we do
  not answer 409: that needs a synchronous read the writer role cannot do, and a
  prediction that is not flushed yet would be a false "unknown");
* one batch shares one ``received_at``, so two different labels for the same key in
  one batch have no "latest": that batch is refused (422 naming both items).

Every client error is a 4xx in the service's error shape; the batch is all or
nothing (all problems reported at once).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from inferwatch.api.body import read_json
from inferwatch.api.deps import RuntimeDep
from inferwatch.api.errors import ApiError
from inferwatch.api.validation import (
    Problem,
    entity_json_schema,
    nullable,
    string_problem,
    validate_entity,
)
from inferwatch.audit.records import OutcomeRecord

router = APIRouter(prefix="/v1", tags=["feedback"])

OUTCOME_KEYS: Final = frozenset({"prediction_id", "entity", "label", "observed_at"})
MAX_CLOCK_SKEW: Final = timedelta(minutes=5)  # observed_at may not lie further in the future

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed JSON"},
    413: {"description": "Body too large"},
    415: {"description": "Not JSON"},
    422: {"description": "Invalid outcome(s); `detail` names every bad field and why"},
    503: {"description": "Not ready: starting or shutting down"},
}


def validate_outcome(
    obj: Any,
    *,
    classes: Sequence[int],
    max_string_length: int,
    now: datetime,
    prefix: str = "",
) -> tuple[OutcomeRecord | None, list[Problem]]:
    """One outcome object -> a record stamped ``received_at = now``, or its problems. Pure."""
    if not isinstance(obj, dict):
        return None, [Problem(prefix or "body", "must be an object")]
    problems = [
        Problem(f"{prefix}{str(k)[:64]}", "unknown field") for k in obj if k not in OUTCOME_KEYS
    ]
    label = obj.get("label")
    if "label" not in obj:
        problems.append(Problem(f"{prefix}label", "required"))
    elif isinstance(label, bool) or not isinstance(label, int | float):
        problems.append(Problem(f"{prefix}label", "must be an integer class label"))
    elif isinstance(label, float) and not label.is_integer():
        problems.append(Problem(f"{prefix}label", f"must be an integer, got {label!r}"))
    elif int(label) not in classes:
        allowed = ", ".join(str(c) for c in classes)
        problems.append(Problem(f"{prefix}label", f"must be one of the model's classes: {allowed}"))
    has_pid = obj.get("prediction_id") is not None
    has_entity = obj.get("entity") is not None
    pid: uuid.UUID | None = None
    etype = eid = None
    if has_pid == has_entity:
        problems.append(
            Problem(f"{prefix}prediction_id", "give exactly one of prediction_id or entity")
        )
    elif has_pid:
        raw = obj["prediction_id"]
        msg = string_problem(raw, 64)
        if msg is None:
            try:
                pid = uuid.UUID(raw)
            except ValueError:
                msg = "must be a UUID"
        if msg:
            problems.append(Problem(f"{prefix}prediction_id", msg))
    else:
        entity_problems, pair = validate_entity(obj["entity"], prefix, max_string_length)
        problems.extend(entity_problems)
        if pair is not None:
            etype, eid = pair
    observed_at: datetime | None = None
    if obj.get("observed_at") is not None:
        raw = obj["observed_at"]
        msg = string_problem(raw, 64)
        if msg is None:
            try:
                observed_at = datetime.fromisoformat(raw)
            except ValueError:
                msg = "must be an ISO 8601 timestamp with a timezone"
        if msg is None and observed_at is not None:
            if observed_at.tzinfo is None:
                msg = "must carry a timezone (e.g. 2026-11-20T10:00:00Z)"
            elif observed_at - now > MAX_CLOCK_SKEW:
                msg = "must not lie in the future"
        if msg:
            problems.append(Problem(f"{prefix}observed_at", msg))
            observed_at = None
    if problems:
        return None, problems
    assert isinstance(label, int | float)
    return (
        OutcomeRecord(
            label=int(label),
            ts=now,
            prediction_id=pid,
            entity_type=None if pid else etype,
            entity_id=None if pid else eid,
            observed_at=observed_at.astimezone(UTC) if observed_at else None,
        ),
        [],
    )


def _conflicting_labels(records: Sequence[OutcomeRecord]) -> list[Problem]:
    """Items of one batch that give the same key two different labels (one received_at)."""
    first: dict[tuple[object, ...], tuple[int, int]] = {}
    problems: list[Problem] = []
    for i, rec in enumerate(records):
        key = (rec.prediction_id, rec.entity_type, rec.entity_id)
        seen = first.setdefault(key, (i, rec.label))
        if seen[1] != rec.label:
            problems.append(
                Problem(
                    f"outcomes[{i}].label",
                    f"conflicts with outcomes[{seen[0]}].label ({seen[1]}) for the same "
                    "prediction in one batch; send a correction in a later request",
                )
            )
    return problems


def outcome_json_schema(max_string_length: int, classes: Sequence[int]) -> dict[str, Any]:
    """What :func:`validate_outcome` accepts, as JSON Schema (``observed_at`` may also not
    lie more than MAX_CLOCK_SKEW in the future, which JSON Schema cannot say)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["label"],
        "properties": {
            "prediction_id": nullable({"type": "string", "format": "uuid"}),
            "entity": nullable(entity_json_schema(max_string_length)),
            "label": {"type": "integer", "enum": list(classes), "description": "A class"},
            "observed_at": nullable({"type": "string", "format": "date-time"})
            | {"description": "When the outcome happened; not in the future"},
        },
        # exactly one of the two keys, and it not null
        "oneOf": [
            {"required": ["prediction_id"], "properties": {"prediction_id": {"type": "string"}}},
            {"required": ["entity"], "properties": {"entity": {"type": "object"}}},
        ],
        "description": "Exactly one of prediction_id or entity.",
    }


def openapi_request_body(
    max_string_length: int, classes: Sequence[int], batch_max: int
) -> dict[str, Any]:
    """The request body in the OpenAPI document, from the settings and the model's classes."""
    one = outcome_json_schema(max_string_length, classes)
    many = {
        "type": "object",
        "required": ["outcomes"],
        "additionalProperties": False,
        "properties": {
            "outcomes": {"type": "array", "minItems": 1, "maxItems": batch_max, "items": one}
        },
    }
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"oneOf": [one, many]},
                "example": {"prediction_id": "01a20509-e480-72c0-810a-9c0bb09566e3", "label": 1},
            }
        },
    }


@router.post(
    "/feedback",
    status_code=202,
    responses=_ERRORS,
    # the request body: openapi_request_body, installed by the app with the runtime's values
    summary="Report the true label of predictions (one outcome, or {'outcomes': [...]})",
)
async def feedback(request: Request, runtime: RuntimeDep) -> Response:
    settings = runtime.settings
    max_len, max_batch = settings.max_string_length, settings.max_batch_size
    classes = runtime.predictor.metadata.classes
    body = await read_json(request, settings.max_body_bytes * 4)
    now = datetime.now(UTC)
    batch = isinstance(body, dict) and "outcomes" in body
    if batch:
        items = body["outcomes"]
        problems = [Problem(str(k)[:64], "unknown field") for k in body if k != "outcomes"]
        if not isinstance(items, list) or not items:
            raise ApiError(
                422,
                "validation",
                "invalid feedback batch",
                [Problem("outcomes", "must be a non-empty list of outcomes")],
            )
        if len(items) > max_batch:
            raise ApiError(
                422,
                "batch_too_large",
                "batch too large",
                [Problem("outcomes", f"must have at most {max_batch} items, got {len(items)}")],
            )
    else:
        items, problems = [body], []
    records: list[OutcomeRecord] = []
    for i, item in enumerate(items):
        rec, errs = validate_outcome(
            item,
            classes=classes,
            max_string_length=max_len,
            now=now,
            prefix=f"outcomes[{i}]." if batch else "",
        )
        problems.extend(errs)
        if rec is not None:
            records.append(rec)
    if batch and not problems:
        problems = _conflicting_labels(records)
    if problems:
        raise ApiError(422, "validation", "invalid feedback", problems)
    runtime.audit.submit_many(records)  # journaled before the 202
    return Response(
        orjson.dumps({"accepted": len(records), "received_at": now.isoformat()}),
        status_code=202,
        media_type="application/json",
    )
