"""The exception handlers: every error a request meets is answered in the API's one shape.

A client can never cause a 500: anything a client sends is either handled or rejected
with a 4xx (:class:`~inferwatch.api.errors.ApiError`, or FastAPI's own request
validation); only genuine server faults (a model call that raises, a bug) reach the
catch-all handler: logged, and answered 500 in the same shape. Rejections are counted
on the runtime's instruments when it exists (``find_runtime``: never raises).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from inferwatch.api.deps import find_runtime
from inferwatch.api.errors import ApiError, error_response
from inferwatch.api.validation import Problem

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        runtime = find_runtime(request)  # None before start-up: nothing to count with yet
        if runtime is not None:
            runtime.count_rejected(exc.reason)
        return error_response(exc.status, exc.reason, exc.message, exc.problems, exc.headers)

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
        # the exception's headers too: a 405 must name the allowed methods (``Allow``)
        return error_response(exc.status_code, "http_error", str(exc.detail), (), exc.headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled server error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal server error")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
