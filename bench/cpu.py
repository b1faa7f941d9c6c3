"""bench/cpu: CPU per request of each telemetry configuration, interleaved in one process.

    .venv/bin/python -m bench.cpu [--requests 4000] [--block 50]

Why beside bench/overhead: on a shared 2-core host, req/s from separate server runs
drift by 10-20% between rounds. Here every app lives in the SAME process and serves the
same requests in alternating blocks of ``--block``, so drift in the host's speed hits
every app alike. Each app is driven through its ASGI interface (no HTTP server: what is
measured is what the app adds), pinned with the process to one CPU. An app's cost is
the main thread's CPU during its own blocks plus the CPU of the background threads it
started (span and metric export, audit writer), from /proc per thread.

Apps (one trained model, the same 256 generated transactions in turn):
- ``bare``: bench/overhead.py's bare app (parse JSON, encode the row, predict_proba);
- ``iw-telemetry-off``: inferwatch with telemetry off (validation, ids, audit spool);
- ``iw-no-http``: our metrics, no HTTP server span;
- ``iw`` (as shipped): our HTTP instrumentation, spans and metrics exported over OTLP;
- ``iw-sdk-encoder``: as shipped, but spans exported by the SDK's stock OTLP/HTTP exporter;
- ``iw-metrics-endpoint-on``: as shipped plus the /metrics pull reader (two readers).

Every OTLP export goes over HTTP to a local sink that answers 200 (a thread of its own
process, not counted). Audit records go to a disk spool in a temp dir (no database).
Prints CPU µs per request, the difference to bare and the ratio bare/app, i.e. the
throughput ratio a CPU-bound server would see if HTTP parsing cost nothing; the line
after the table adds bench/overhead's measured HTTP-server cost to both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


CLK_TCK = os.sysconf("SC_CLK_TCK")

APPS: dict[str, dict[str, str]] = {
    "bare": {},
    "iw-telemetry-off": {"INFERWATCH_TELEMETRY_ENABLED": "false"},
    "iw-no-http": {"INFERWATCH_HTTP_INSTRUMENTATION": "none"},
    "iw": {},
    "iw-sdk-encoder": {"BENCH_SDK_ENCODER": "1"},
    "iw-metrics-endpoint-on": {"INFERWATCH_METRICS_ENDPOINT": "on"},
}


class _Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class App:
    name: str
    asgi: Any
    threads: set[int] = field(default_factory=set)
    main_cpu_s: float = 0.0
    bg_cpu_s: float = 0.0


def thread_cpu_s(tid: int) -> float:
    try:
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def scope_for(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"user-agent", b"bench"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def call(app: Any, body: bytes) -> None:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope_for(body), receive, send)
    if status != [200]:
        raise RuntimeError(f"request failed: {status}")


@contextlib.contextmanager
def app_env(name: str, env: dict[str, str], spool: Path) -> Iterator[None]:
    """`env` applied while one app is built and its lifespan starts (where the SDK reads
    its ``OTEL_*`` variables), and only then."""
    saved = dict(os.environ)
    os.environ.update(env)
    os.environ["INFERWATCH_AUDIT_SPOOL_DIR"] = str(spool / name)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def build(name: str) -> Any:
    """Build one app (under `app_env`)."""
    if name == "bare":
        from bench.overhead import create_bare

        return create_bare()
    from inferwatch.app import create_app

    if APPS[name].get("BENCH_SDK_ENCODER"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        return create_app(span_processors=[BatchSpanProcessor(OTLPSpanExporter())])
    return create_app()


async def run(
    names: list[str], spool: Path, bodies: list[bytes], requests: int, block: int
) -> tuple[list[App], int]:
    apps: list[App] = []
    async with contextlib.AsyncExitStack() as stack:
        for name in names:  # built and started one by one: each app's threads are its own
            before = {t.native_id for t in threading.enumerate()}
            with app_env(name, APPS[name], spool):
                app = App(name, build(name))
                await stack.enter_async_context(app.asgi.router.lifespan_context(app.asgi))
            await asyncio.sleep(0.05)
            app.threads = {t.native_id for t in threading.enumerate() if t.native_id} - before
            apps.append(app)
        for i in range(300):  # warm-up: caches, first exports
            for app in apps:
                await call(app.asgi, bodies[i % len(bodies)])
        await asyncio.sleep(1.5)
        bg0 = {app.name: sum(thread_cpu_s(t) for t in app.threads) for app in apps}
        clock: Callable[[], float] = time.thread_time
        n_blocks = requests // block
        for b in range(n_blocks):
            k = b % len(apps)
            for app in apps[k:] + apps[:k]:  # rotate the order every block
                t0 = clock()
                for i in range(block):
                    await call(app.asgi, bodies[(b * block + i) % len(bodies)])
                app.main_cpu_s += clock() - t0
            await asyncio.sleep(0)
        await asyncio.sleep(1.5)  # the last exports
        for app in apps:
            app.bg_cpu_s = sum(thread_cpu_s(t) for t in app.threads) - bg0[app.name]
    return apps, n_blocks * block


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000, help="requests per app")
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--apps", default=",".join(APPS))
    ap.add_argument("--cpu", default="1", help="the CPU to pin this process to")
    ap.add_argument(
        "--http-server-us",
        type=float,
        default=200.0,
        help="CPU per request of uvicorn + httptools + the event loop, the same for every app "
        "(bench/overhead's bare CPU µs/req minus this bare's: ~130-220 on this host)",
    )
    args = ap.parse_args(argv)
    from bench.common import acquire_benchmark_lock

    acquire_benchmark_lock("bench.cpu")  # held until this process exits
    os.sched_setaffinity(0, {int(args.cpu)})

    work = Path(tempfile.mkdtemp(prefix="inferwatch-cpu-"))
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True, name="bench-sink").start()
    model_dir = work / "models"
    subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "inferwatch"),
            "train",
            "--model-dir",
            str(model_dir),
            "--rows",
            "60000",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    (model_path,) = sorted((model_dir / "card-fraud").iterdir())[-1:]
    os.environ.update(
        {
            "BENCH_MODEL_PATH": str(model_path),
            "INFERWATCH_MODEL_DIR": str(model_dir),
            "INFERWATCH_TRAIN_IF_MISSING": "false",
            "OMP_NUM_THREADS": "1",
            # the launcher's OTLP settings (stack/launch.py Stack.service_env)
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": "5000",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
        }
    )
    from bench.overhead import machine, write_bodies

    bodies_path = work / "bodies.jsonl"
    write_bodies(bodies_path, 256)
    bodies = [line.encode() for line in bodies_path.read_text().splitlines()]
    names = [n for n in args.apps.split(",") if n]
    apps, n = asyncio.run(run(names, work / "spool", bodies, args.requests, args.block))
    sink.shutdown()

    info = machine()
    print("bench/cpu: CPU per request, every app in one process, interleaved blocks")
    print(f"date      {info['date']}")
    print(f"machine   {info['cpu']}; loadavg at start {info['load']}")
    print(f"python    {info['python']}; {info['packages']}")
    print(
        f"load      {n} requests per app through ASGI (no HTTP server), blocks of "
        f"{args.block} in rotating order, process pinned to CPU {args.cpu}; OTLP/HTTP to a "
        "local sink; audit to a disk spool"
    )
    print()
    print(f"{'app':<24} {'main µs':>8} {'threads µs':>10} {'total µs':>9} {'+µs':>7} {'ratio':>6}")
    base = None
    for app in apps:
        main_us = app.main_cpu_s / n * 1e6
        bg_us = app.bg_cpu_s / n * 1e6
        total = main_us + bg_us
        base = base if base is not None else total
        print(
            f"{app.name:<24} {main_us:>8.0f} {bg_us:>10.0f} {total:>9.0f} "
            f"{total - base:>+7.0f} {base / total:>6.3f}"
        )
    if "bare" in names and "iw" in names:
        bare = next(a for a in apps if a.name == "bare")
        iw = next(a for a in apps if a.name == "iw")
        b = bare.main_cpu_s / n * 1e6 + args.http_server_us
        i = (iw.main_cpu_s + iw.bg_cpu_s) / n * 1e6 + args.http_server_us
        print()
        print(
            f"with the HTTP server's ~{args.http_server_us:.0f} µs per request on both sides: "
            f"iw / bare throughput, CPU-bound = {b / i:.3f} (target >= 0.85)"
        )
    print(
        "\nmain µs = the request thread's CPU in the app's own blocks; threads µs = the "
        "app's background threads (export, audit); ratio = bare total / app total"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
