"""/docs is Swagger UI served whole by the service: the page names same-origin URLs only,
its assets are the pinned package's files, and nothing else of the distribution is served.
(The page rendered in a real browser, offline: tests/integration/test_serve.py.)"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib.metadata import version

from inferwatch.api.routes.docs import ASSETS, DIST
from tests.fixtures.api import Harness


class UrlCollector(HTMLParser):
    """Every URL an element of the page loads or links to (src, href), and inline URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.script = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]

    def handle_data(self, data: str) -> None:
        self.script += data


def test_docs_page_names_same_origin_urls_only(harness: Harness) -> None:
    r = harness.client.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = UrlCollector()
    page.feed(r.text)
    assert sorted(page.urls) == [
        "/docs/assets/favicon-32x32.png",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
    ]
    assert "url: '/openapi.json'" in page.script
    # no absolute URL anywhere in the page (a CDN, the online validator, ...)
    assert re.findall(r"(?:https?:)?//[\w.-]+", r.text) == []
    assert '"validatorUrl": null' in page.script


def test_docs_assets_are_the_packaged_files(harness: Harness) -> None:
    for name, media_type in ASSETS.items():
        r = harness.client.get(f"/docs/assets/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"] == media_type
        assert r.content == (DIST / name).read_bytes()
    # the package's version is the Swagger UI version it ships
    assert DIST.name == f"swagger-ui-{version('swagger-ui-bundle-v2')}"


def test_only_the_page_assets_are_served(harness: Harness) -> None:
    for name in ("index.html", "swagger-initializer.js", "..%2F__init__.py", "nosuch.js"):
        r = harness.client.get(f"/docs/assets/{name}")
        assert r.status_code == 404, name
        assert r.json()["error"] == "http_error"


def test_redoc_is_off_and_the_spec_is_served(harness: Harness) -> None:
    assert harness.client.get("/redoc").status_code == 404
    spec = harness.client.get("/openapi.json").json()
    assert "/v1/predict" in spec["paths"]
    assert not {"/docs", "/docs/assets/{name}"} & set(spec["paths"])
