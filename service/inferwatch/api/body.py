"""Reading a JSON request body with a hard size limit.

The limit is enforced twice: on ``Content-Length`` before reading, and while
streaming (a chunked or lying client cannot push more than the limit into memory).
JSON is parsed with orjson; when orjson refuses the text, the stdlib parser gets a
second look so that NaN/Infinity literals reach validation and are reported by
field name, while anything else malformed is a 400.

The body must arrive within ``BODY_TIMEOUT_S`` (a client trickling it slowly is answered
408 and the connection closed); a client that disconnects mid-body is a client error,
never a server one. The request head's own limits: service/inferwatch/http_limits.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import orjson
from starlette.requests import ClientDisconnect, Request

from inferwatch.api.errors import ApiError
from inferwatch.api.validation import Problem

BODY_TIMEOUT_S: Final = 10.0


async def read_json(request: Request, limit: int) -> Any:
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"content-type must be application/json, got {ctype[:64]!r}",
            [Problem("content-type", "must be application/json")],
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(
                400,
                "invalid_body",
                "invalid Content-Length header",
                [Problem("content-length", "must be an integer")],
            ) from None
        if size > limit:
            raise _too_large(limit, size)
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            raw = await _read(request, limit)
    except TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"request body not received within {BODY_TIMEOUT_S:g} s",
            [Problem("body", f"must arrive within {BODY_TIMEOUT_S:g} s")],
            {"Connection": "close"},
        ) from None
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the request") from None
    if not raw:
        raise ApiError(400, "invalid_json", "request body is empty", [Problem("body", "required")])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, digits
        msg = str(exc)[:200]
        raise ApiError(
            400,
            "invalid_json",
            "request body is not valid JSON",
            [Problem("body", f"invalid JSON: {msg}")],
        ) from None


async def _read(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit, total)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, size: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"request body exceeds {limit} bytes",
        [Problem("body", f"must be at most {limit} bytes, got {size} or more")],
        {"Connection": "close"},  # the rest of the body is not read
    )
