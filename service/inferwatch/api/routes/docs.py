"""GET /docs: the Swagger UI page, served whole by this process, so it works offline.

FastAPI's default page loads Swagger UI from a CDN: blank on a closed network. Here the
JavaScript, CSS and icon come from the pinned ``swagger-ui-bundle-v2`` package (the files
of swagger-ui-dist, byte-identical) through ``/docs/assets/{name}``, and the page names
same-origin URLs only; Swagger UI's online validator badge is off (it would call out).
ReDoc is off (``redoc_url=None`` in the app factory): it would need a second bundle, and
one API browser is enough (docs/decisions.md).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"
# The files the page loads, and nothing else of the distribution (its index.html would
# fetch the public petstore example).
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
DIST = Path(str(swagger_ui_path))

router = APIRouter(include_in_schema=False)


@router.get(DOCS_PATH)
async def docs(request: Request) -> HTMLResponse:
    root = str(request.scope.get("root_path", ""))  # behind a path-prefixing proxy
    assets = f"{root}{ASSETS_PATH}"
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} API",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get(ASSETS_PATH + "/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no docs asset {name!r}")
    # the files change only with the pinned package: a day of caching is safe
    return FileResponse(
        DIST / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
    )
