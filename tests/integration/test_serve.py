"""`inferwatch serve` as a real process: its address options, and its /docs page in a browser.

- ``--host``/``--port`` override INFERWATCH_HOST/INFERWATCH_PORT (as uvicorn, `fastapi
  run`, `bentoml serve` and `mlserver start` take them): the service answers on the given
  address and nothing listens on the environment's.
- /docs renders in headless Chromium, with no network beyond loopback: Swagger UI runs
  from the service's own assets, shows the predict operation, and every request the page
  made went to the service itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferwatch.inference.loading import LoadedModel
from stack.procs import free_ports, tcp_ok
from tests.fixtures.serve import render, serving

pytestmark = pytest.mark.integration

# an operation block Swagger UI renders: its method (class) and, inside it, its path
OPERATION = re.compile(r'class="opblock opblock-(\w+)"[^>]*>.*?data-path="([^"]+)"', re.S)


def model_dir(model: LoadedModel) -> Path:
    return model.path.parent.parent  # <dir>/<name>/<version>


def test_host_and_port_options_override_the_environment(
    small_model: LoadedModel, tmp_path: Path
) -> None:
    env_port, port = free_ports(2)
    env = {"INFERWATCH_HOST": "127.0.0.2", "INFERWATCH_PORT": str(env_port)}
    args = ["--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with serving(model_dir(small_model), tmp_path, args, env, url):
        assert not tcp_ok(env_port, "127.0.0.1")
        assert not tcp_ok(env_port, "127.0.0.2")
        assert not tcp_ok(port, "127.0.0.2")  # bound to the option's host only
    # and without the options, the environment decides
    with serving(model_dir(small_model), tmp_path, [], env, f"http://127.0.0.2:{env_port}"):
        assert not tcp_ok(env_port, "127.0.0.1")


def test_docs_page_renders_offline_in_chromium(
    small_model: LoadedModel, tmp_path: Path, chromium: Path
) -> None:
    (port,) = free_ports(1)
    origin = f"http://127.0.0.1:{port}"
    with serving(model_dir(small_model), tmp_path, ["--port", str(port)], {}, origin):
        page = render(chromium, f"{origin}/docs", tmp_path)
    # Swagger UI ran: the operations are in the DOM, predict among them, as a POST
    ops = set(OPERATION.findall(page.dom))
    assert ("post", "/v1/predict") in ops, page.dom[:2000]
    assert ("post", "/v1/predict/batch") in ops
    # every request the page made went to the service; the assets and the spec among them
    by_page = [url for initiator, url in page.requests if initiator == origin]
    assert by_page, page.requests
    assert [u for u in by_page if not u.startswith(origin + "/")] == []
    wanted = {
        f"{origin}/openapi.json",
        f"{origin}/docs/assets/swagger-ui-bundle.js",
        f"{origin}/docs/assets/swagger-ui.css",
    }
    assert wanted <= set(by_page)
