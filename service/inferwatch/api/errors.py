"""Client errors: one JSON shape for every 4xx, and handlers that guarantee it.

``{"error": "<code>", "message": "...", "detail": [{"field": ..., "problem": ...}]}``.
A client can never cause a 500: anything a client sends is either handled or
rejected here; only genuine server faults (a model call that raises, a bug) reach the
catch-all handler: logged, and answered 500 in the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from inferwatch.api.validation import Problem

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A rejected request. ``reason`` is the bounded label of the rejected-requests counter."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        problems: Sequence[Problem] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.problems = list(problems)


def error_response(
    status: int, code: str, message: str, problems: Sequence[Problem] = ()
) -> Response:
    body = {"error": code, "message": message, "detail": [p.as_dict() for p in problems]}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    # here, not at the top: deps imports ApiError from this module
    from inferwatch.api.deps import find_runtime

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        runtime = find_runtime(request)  # None before start-up: nothing to count with yet
        if runtime is not None:
            runtime.count_rejected(exc.reason)
        return error_response(exc.status, exc.reason, exc.message, exc.problems)

    async def request_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        problems = [
            Problem(
                ".".join(str(p) for p in err.get("loc", ())) or "request",
                str(err.get("msg", "invalid")),
            )
            for err in exc.errors()
        ]
        runtime = find_runtime(request)
        if runtime is not None:
            runtime.count_rejected("validation")
        return error_response(422, "validation", "request validation failed", problems)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(exc.status_code, "http_error", str(exc.detail))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled server error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal server error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
