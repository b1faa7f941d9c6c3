"""Client errors: the one JSON shape of every error response, and the exception routes raise.

``{"error": "<code>", "message": "...", "detail": [{"field": ..., "problem": ...}]}``.
Routes raise :class:`ApiError`; ``api/handlers.py`` turns it (and every other exception)
into this shape. Must never import the runtime or the handlers: everything in ``api/``
imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson
from starlette.responses import Response

from inferwatch.api.validation import Problem


class ApiError(Exception):
    """A rejected request. ``reason`` is the bounded label of the rejected-requests counter."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        problems: Sequence[Problem] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.problems = list(problems)
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    problems: Sequence[Problem] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = {"error": code, "message": message, "detail": [p.as_dict() for p in problems]}
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type="application/json"
    )
