"""How a request reaches the process's :class:`Runtime`: the only code that reads ``app.state``.

Two functions, one rule. :func:`get_runtime` is what every route that serves a client
uses: the runtime of a process that accepts requests, or the API's 503 ``not_ready``
error (before the lifespan has built it, and once shutdown has begun). Routes take it
as the :data:`RuntimeDep` dependency, or call it directly on the hot path
(``/v1/predict``), where FastAPI's dependency resolution would cost CPU per request.

:func:`find_runtime` is the lookup underneath, and never raises: for the code that must
answer in every state of the process, whatever the readiness: the error handlers (a
rejection is counted if the instruments exist, and nothing fails before they do) and
``GET /metrics`` (the process's own telemetry, served while shutdown begins).

Must never: build, open or start anything (the lifespan does, once per process).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from inferwatch.api.errors import ApiError
from inferwatch.api.runtime import Runtime


def find_runtime(request: Request) -> Runtime | None:
    """The runtime the lifespan built, ready or not; ``None`` before it ran."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    return runtime


# async although it awaits nothing: FastAPI runs a plain ``def`` dependency in its thread
# pool, a thread hop per request for an attribute lookup.
async def get_runtime(request: Request) -> Runtime:
    """The runtime of a process that accepts requests; else :class:`ApiError` 503 ``not_ready``."""
    runtime = find_runtime(request)
    if runtime is None or not runtime.ready:
        raise ApiError(503, "not_ready", "not ready: the service is starting or shutting down")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
