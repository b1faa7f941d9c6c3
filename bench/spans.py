"""bench/spans: CPU per span of OTLP/HTTP span export, ours against the SDK's stock exporter.

    .venv/bin/python -m bench.spans [--requests 512] [--rounds 40]

The spans are real: a small model is trained into a temp dir and ``--requests``
predictions go through ``create_app`` (our HTTP instrumentation, the route's
prediction attributes), driven through ASGI; the finished spans are kept in memory.
That batch (512 = the BatchSpanProcessor's default ``max_export_batch_size``) is then
exported again and again, in alternating order, by

- ``ours``: ``OtlpHttpSpanExporter`` (service/inferwatch/telemetry/otlp_spans.py);
- ``sdk``: ``opentelemetry.exporter.otlp.proto.http.trace_exporter.OTLPSpanExporter``;

both POSTing to a local sink that answers 200 (a thread whose CPU is not counted).
Each export is timed with ``time.thread_time`` on the exporting thread: encode,
serialise, HTTP request and response, as the BatchSpanProcessor's worker pays them.
The encoders alone (``SpanEncoder.encode_request`` and the SDK's
``encode_spans(...).SerializePartialToString()``) are timed the same way. Prints the
median µs per span of each, the ratio and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from bench.cpu import call  # noqa: E402
from bench.overhead import machine, write_bodies  # noqa: E402
from inferwatch.telemetry.otlp_spans import (  # noqa: E402
    OtlpHttpConfig,
    OtlpHttpSpanExporter,
    SpanEncoder,
)
from stack.procs import poll  # noqa: E402


class _Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector answers

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def _record(model_dir: Path, bodies: list[bytes], n: int) -> tuple[ReadableSpan, ...]:
    from inferwatch.app import create_app
    from inferwatch.audit.sink import InMemoryAuditSink
    from inferwatch.inference.loading import load_model
    from inferwatch.settings import Settings

    (path,) = sorted((model_dir / "card-fraud").iterdir())[-1:]
    memory = InMemorySpanExporter()
    app = create_app(
        Settings(environment="test", otlp_enabled=False),
        model=load_model(path),
        audit_sink=InMemoryAuditSink(),
        span_processors=[SimpleSpanProcessor(memory)],
    )
    async with app.router.lifespan_context(app):
        for i in range(n):
            await call(app, bodies[i % len(bodies)])

        def enough() -> tuple[ReadableSpan, ...] | None:
            spans = memory.get_finished_spans()
            return tuple(spans) if len(spans) >= n else None

        # a request's span may end after its response (batched telemetry): wait for all
        spans = await asyncio.to_thread(poll, enough, 30.0, f"{n} finished spans")
    return spans[:n]


def _cpu_us(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.thread_time()
        fn()
        out.append((time.thread_time() - t0) * 1e6)
    return out


def _export(exporter: SpanExporter, spans: Sequence[ReadableSpan]) -> None:
    if exporter.export(spans) != SpanExportResult.SUCCESS:
        raise RuntimeError(f"{type(exporter).__name__} failed to export")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.spans", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=512, help="spans per batch")
    ap.add_argument("--rounds", type=int, default=40, help="timed exports per exporter")
    args = ap.parse_args(argv)

    from inferwatch.inference.training import train_model

    work = Path(tempfile.mkdtemp(prefix="inferwatch-spans-"))
    train_model(work / "models", version="bench-1", n_rows=6_000, seed=3)
    write_bodies(work / "bodies.jsonl", 256)
    bodies = [line.encode() for line in (work / "bodies.jsonl").read_text().splitlines()]
    spans = asyncio.run(_record(work / "models", bodies, args.requests))

    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True, name="bench-sink").start()
    url = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    ours = OtlpHttpSpanExporter(OtlpHttpConfig(endpoint=url))
    sdk = OTLPSpanExporter(endpoint=url)
    encoder = SpanEncoder()
    cases: dict[str, Callable[[], object]] = {
        "encode ours": lambda: encoder.encode_request(spans),
        "encode sdk": lambda: encode_spans(spans).SerializePartialToString(),
        "export ours": lambda: _export(ours, spans),
        "export sdk": lambda: _export(sdk, spans),
    }
    for fn in cases.values():  # warm-up: caches, connections
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(args.rounds):  # alternate, so drift in the host's speed hits both
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            samples[name] += _cpu_us(cases[name], 1)
    with contextlib.suppress(Exception):
        ours.shutdown()
    sdk.shutdown()  # type: ignore[no-untyped-call]  # the SDK's exporter is not annotated
    sink.shutdown()

    n = len(spans)
    per_span = {name: statistics.median(v) / n for name, v in samples.items()}
    kinds = Counter(s.kind.name for s in spans)
    attrs = statistics.median(len(s.attributes or {}) for s in spans)
    info = machine()
    print("bench/spans: CPU per span of OTLP/HTTP span export, batches of real prediction spans")
    print(f"date      {info['date']}")
    print(f"machine   {info['cpu']}; loadavg at start {info['load']}")
    print(f"python    {info['python']}; {info['packages']}")
    print(
        f"batch     {n} spans ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}), "
        f"median {attrs:.0f} attributes per span, {len(encoder.encode_request(spans)):,} bytes "
        f"encoded; {args.rounds} timed rounds, alternating"
    )
    print()
    print(f"{'':<10} {'ours µs/span':>13} {'sdk µs/span':>12} {'sdk/ours':>9} {'saved':>7}")
    for what in ("encode", "export"):
        o, s = per_span[f"{what} ours"], per_span[f"{what} sdk"]
        print(f"{what:<10} {o:>13.2f} {s:>12.2f} {s / o:>9.2f} {1 - o / s:>7.0%}")
    print(
        "\nexport = encode + serialise + HTTP POST to a local sink and its response, on the "
        "exporting thread (time.thread_time), median of the rounds"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
