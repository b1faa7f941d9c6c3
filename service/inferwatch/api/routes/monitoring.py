"""GET /v1/monitoring/{latency,predictions,distribution,drift}: read-only views of the audit table.

They expose feature payloads, so each requires the analyst API key in ``X-API-Key``
(compared in constant time). No key configured, a missing key or a wrong one: 401,
the same answer for all three so that a caller learns nothing about the setup.
Queries run as the analyst role (``INFERWATCH_ANALYST_DATABASE_URL``) through the
runtime's :class:`inferwatch.analysis.monitoring.MonitoringStore`, built by the lifespan;
without that DSN: 503 ``not_configured``.
"""

from __future__ import annotations

import hmac
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

import psycopg
from fastapi import APIRouter, Depends, Query, Request
from psycopg_pool import PoolTimeout

from inferwatch.analysis.drift import DriftThresholds
from inferwatch.analysis.monitoring import MAX_WINDOW, Cursor, MonitoringStore
from inferwatch.analysis.profiles import check_width
from inferwatch.analysis.runner import parse_when
from inferwatch.api.deps import RuntimeDep
from inferwatch.api.errors import ApiError
from inferwatch.api.validation import NO_NUL_PATTERN, Problem

router = APIRouter(prefix="/v1/monitoring", tags=["monitoring"])

RECENT_LOOKBACK: Final = timedelta(days=7)

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong X-API-Key"},
    422: {"description": "Invalid query parameters"},
    503: {"description": "Analyst database not configured or unreachable"},
}


# async: FastAPI would run a plain ``def`` dependency in its thread pool
async def require_analyst_key(request: Request, runtime: RuntimeDep) -> None:
    expected = runtime.settings.analyst_api_key
    given = request.headers.get("x-api-key")
    ok = (
        expected is not None
        and given is not None
        and hmac.compare_digest(given.encode(), expected.get_secret_value().encode())
    )
    if not ok:
        raise ApiError(401, "unauthorized", "a valid X-API-Key header is required")


async def monitoring_store(runtime: RuntimeDep) -> MonitoringStore:
    if runtime.monitoring is None:
        raise ApiError(503, "not_configured", "INFERWATCH_ANALYST_DATABASE_URL is not set")
    return runtime.monitoring


Store = Annotated[MonitoringStore, Depends(monitoring_store)]
Authorized = Depends(require_analyst_key)

# RFC 3339 date-time, the OpenAPI "date-time" format: a number is not a time here (a bare
# datetime parameter would read one as a Unix timestamp, which the document does not say)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
Instant = Annotated[str | None, Query(max_length=64, json_schema_extra={"format": "date-time"})]


def _filter(max_length: int) -> Any:
    return Query(max_length=max_length, pattern=NO_NUL_PATTERN)


# a shared audit database holds every model's rows: the served model's by default
async def _model_name(
    runtime: RuntimeDep,
    model_name: Annotated[
        str | None,
        Query(
            max_length=128,
            pattern=NO_NUL_PATTERN,
            description="the model whose rows are read; default: the model this service serves",
        ),
    ] = None,
) -> str:
    return runtime.predictor.metadata.name if model_name is None else model_name


ModelName = Annotated[str, Depends(_model_name)]


def _instant(name: str, raw: str | None) -> datetime | None:
    if raw is None:
        return None
    if not _RFC3339.fullmatch(raw):
        problem = Problem(name, "must be an RFC 3339 date-time with a timezone")
        raise ApiError(422, "validation", "invalid window", [problem])
    return datetime.fromisoformat(raw.upper())


def _window(
    since: datetime | None, until: datetime | None, default: timedelta
) -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    until = until or now
    since = since or until - default
    problems = []
    for name, value in (("since", since), ("until", until)):
        if value.tzinfo is None:
            problems.append(Problem(name, "must carry a timezone"))
    if not problems and since >= until:
        problems.append(Problem("since", "must be before until"))
    if not problems and until - since > MAX_WINDOW:
        problems.append(Problem("since", f"window must be at most {MAX_WINDOW.days} days"))
    if problems:
        raise ApiError(422, "validation", "invalid window", problems)
    return since, until


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise ApiError(
            503, "database_unavailable", f"analyst database unavailable: {type(exc).__name__}"
        ) from None


@router.get(
    "/latency",
    dependencies=[Authorized],
    responses=_ERRORS,
    summary="Exact inference latency P50/P95/P99 over a window",
)
def latency(
    store: Store,
    model_name: ModelName,
    since: Instant = None,
    until: Instant = None,
    model_version: Annotated[str | None, _filter(128)] = None,
) -> dict[str, Any]:
    lo, hi = _window(_instant("since", since), _instant("until", until), timedelta(hours=1))
    out: dict[str, Any] = _run(store.latency, lo, hi, model_name, model_version)
    return {
        "since": lo.isoformat(),
        "until": hi.isoformat(),
        "model_name": model_name,
        "model_version": model_version,
        **out,
    }


@router.get(
    "/predictions",
    dependencies=[Authorized],
    responses=_ERRORS,
    summary="Recent predictions, newest first, keyset-paginated (last 7 days)",
)
def predictions(
    store: Store,
    model_name: ModelName,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, _filter(128)] = None,
    model_version: Annotated[str | None, _filter(128)] = None,
    entity_type: Annotated[str | None, _filter(64)] = None,
    entity_id: Annotated[str | None, _filter(256)] = None,
) -> dict[str, Any]:
    pos = None
    if cursor is not None:
        try:
            pos = Cursor.decode(cursor)
        except ValueError:
            problem = Problem("cursor", "must be a next_cursor from a previous page")
            raise ApiError(422, "validation", "invalid cursor", [problem]) from None
    rows, nxt = _run(
        store.recent,
        limit=limit,
        cursor=pos,
        model_name=model_name,
        model_version=model_version,
        entity_type=entity_type,
        entity_id=entity_id,
        lookback=RECENT_LOOKBACK,
        now=datetime.now(UTC),
    )
    return {"predictions": rows, "next_cursor": nxt.encode() if nxt else None}


@router.get(
    "/distribution",
    dependencies=[Authorized],
    responses=_ERRORS,
    summary="Class mix and probability histogram over the last hour",
)
def distribution(
    store: Store,
    model_name: ModelName,
    model_version: Annotated[str | None, _filter(128)] = None,
    bins: Annotated[int, Query(ge=2, le=100)] = 10,
) -> dict[str, Any]:
    lo, hi = _window(None, None, timedelta(hours=1))
    out: dict[str, Any] = _run(store.distribution, lo, hi, model_name, model_version, bins)
    return {
        "since": lo.isoformat(),
        "until": hi.isoformat(),
        "model_name": model_name,
        "model_version": model_version,
        **out,
    }


@router.get(
    "/drift",
    dependencies=[Authorized],
    responses=_ERRORS,
    summary="Drift of the served model version over a window (up to 31 days), from profiles",
)
def drift(
    store: Store,
    runtime: RuntimeDep,
    since: Instant = None,
    until: Instant = None,
) -> dict[str, Any]:
    lo, hi = _window(_instant("since", since), _instant("until", until), timedelta(hours=1))
    settings = runtime.settings
    now = parse_when("now")
    width = check_width(now - parse_when("-" + settings.drift_profile_width, now))
    out: dict[str, Any] = _run(
        store.drift,
        runtime.predictor.metadata,
        lo,
        hi,
        privacy=dict(settings.audit_privacy),
        width=width,
        thresholds=DriftThresholds(),
    )
    return out
