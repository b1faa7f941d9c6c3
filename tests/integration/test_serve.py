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
import select
import socket
import time
from pathlib import Path

import pytest

from inferwatch.inference.loading import LoadedModel
from stack.procs import free_ports, tcp_ok
from tests.fixtures.serve import read_response, render, serving

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


def _get_healthz(sock: socket.socket) -> bytes:
    """One keep-alive GET /healthz on SOCK, read to the end of its body; the response's
    status line."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    head, _ = read_response(sock)
    return head.split(b"\r\n", 1)[0]


def _idle_until_closed(sock: socket.socket, limit_s: float) -> float | None:
    """Wait up to LIMIT_S, sending nothing, for the server to close SOCK; the seconds it
    took, or None if it stayed open."""
    start = time.monotonic()
    readable, _, _ = select.select([sock], [], [], limit_s)
    if not readable:
        return None
    assert sock.recv(4096) == b"", "unexpected bytes on an idle connection"
    return time.monotonic() - start


@pytest.mark.slow  # waits out idle timeouts on the wall clock
def test_idle_keep_alive_connections_outlive_the_clients_idle_timeout(
    small_model: LoadedModel, tmp_path: Path
) -> None:
    """The server must not close an idle connection that a client may be reusing at that
    moment (a POST that meets the close fails: EOF or reset; docs/reliability.md, soak).
    By default an idle connection outlives uvicorn's own default of 5 s; with
    INFERWATCH_HTTP_KEEPALIVE_S it is closed after that many seconds."""
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    args = ["--workers", "1", "--port", str(port)]
    address = ("127.0.0.1", port)
    with (
        serving(model_dir(small_model), tmp_path, args, {}, url),
        socket.create_connection(address) as sock,
    ):
        assert _get_healthz(sock) == b"HTTP/1.1 200 OK"
        assert _idle_until_closed(sock, 7.0) is None  # uvicorn's default closes at 5 s
        assert _get_healthz(sock) == b"HTTP/1.1 200 OK"  # the same connection
    env = {"INFERWATCH_HTTP_KEEPALIVE_S": "2"}
    with (
        serving(model_dir(small_model), tmp_path, args, env, url),
        socket.create_connection(address) as sock,
    ):
        assert _get_healthz(sock) == b"HTTP/1.1 200 OK"
        closed_after = _idle_until_closed(sock, 30.0)
        assert closed_after is not None
        assert 1.5 <= closed_after <= 10.0


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
