"""bench/peers: inferwatch against the servers its users would pick instead.

    .venv/bin/python -m bench.peers [--duration 20] [--warmup 5] [--concurrency 1,32,128]
                                    [--rounds 2] [--variants bare,bentoml,mlserver,inferwatch]
                                    [--iw-env KEY=VALUE ...]

One model, trained once (`inferwatch train --rows 60000` into a temp dir) and loaded with
inferwatch's loader; the peers get that same estimator object, exported with joblib, in
virtualenvs of their own with the same scikit-learn/numpy/scipy as inferwatch
(bench/peers/envs.py pins every version and installs them into the cache). Variants:

- ``bare``: bench/overhead's bare FastAPI app, one ``predict_proba`` per request (uvicorn,
  uvloop, httptools, as `inferwatch serve` runs);
- ``bentoml``: BentoML 1.4 (bench/peers/bento_service.py), adaptive batching;
- ``mlserver``: MLServer 1.7 with mlserver-sklearn, adaptive batching, default workers;
- ``inferwatch``: `inferwatch serve` with its defaults, every span and metric exported to
  the live collector (which forwards to Prometheus and Jaeger) and every prediction
  audited into the live Postgres; the stack started through stack/launch.py's ``Stack``.

Same load for all: wrk (one thread, bench/wrk_post.lua) cycles through the same 256
generated transactions, each in the server's own request format (bench/peers/payloads.py),
at each concurrency: ``--warmup`` seconds, then ``--duration`` seconds measured. Before
any load, every server's answers to the first payloads must equal the model's own
``predict_proba`` (the same model object, really). ``--rounds`` (2) runs all variants
again in reverse order (interleaved, so drift in the host's speed hits all alike); the
table shows the mean over rounds and each round's req/s.

Placement (2 cores): each server is started under ``taskset`` on CPU 1, so its whole
process tree (BentoML's supervisor and worker, MLServer's main and worker processes)
inherits that CPU; the run reads every descendant's Cpus_allowed_list from /proc,
prints it and fails if any process or thread may run elsewhere. wrk, Postgres, the
collector, Prometheus and Jaeger run on CPU 0. CPU per request is the server tree's
utime + stime (/proc/<pid>/stat of every descendant) over the cell, divided by the
requests wrk counted. The whole run holds the host's benchmark lock (bench/common.py).
Findings and a recorded run: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    CLK_TCK,
    benchmark_lock,
    cpus_allowed,
    descendants,
    pin_tree,
    process_name,
    thread_cpus_allowed,
    tree_cpu_ticks,
)
from bench.overhead import (
    CLIENT_CPU,
    SERVER_CPU,
    collector_accepted_spans,
    core_busy_ticks,
    machine,
    run_wrk,
    train,
    wait_quiet,
    write_bodies,
)
from bench.peers import envs, payloads
from stack.launch import Options, Ports, Stack
from stack.procs import ROOT, free_ports, http_ok, pid_alive, poll, spawn, terminate

N_BODIES = 256
MODEL_NAME = "card-fraud"
# The peers' batching: at most 64 rows per predict_proba (the batch size past which this
# model's cost per row stops falling much: ~23 µs/row at 64, 8 µs at 256). MLServer waits
# up to max_batch_time for a batch to fill; BentoML's dispatcher chooses its own wait and
# answers 503 to a request it predicts cannot be served within max_latency_ms, so that is
# set far above any latency measured here (no shedding unless truly overloaded).
MAX_BATCH_SIZE = 64
MLSERVER_MAX_BATCH_TIME_S = 0.001
BENTO_MAX_LATENCY_MS = 1000


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    kind: str  # bare | bentoml | mlserver | inferwatch
    env: dict[str, str] = field(default_factory=dict)  # extra environment of the server
    settings: dict[str, Any] = field(default_factory=dict)  # MLServer settings.json extras
    factory: str = "create_bare"  # the bare kinds: the app factory in bench/overhead.py

    @property
    def fmt(self) -> str:
        """The request format (payloads.FORMATS)."""
        return {"bentoml": "bentoml", "mlserver": "mlserver"}.get(self.kind, "service")


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("bare", "bare FastAPI app, one predict_proba per request", "bare"),
        Variant(
            "bare-batched",
            "the bare app with inferwatch's micro-batcher, no telemetry, no audit",
            "bare",
            factory="create_bare_batched",
        ),
        Variant(
            "bentoml",
            f"BentoML, adaptive batching (max_batch_size {MAX_BATCH_SIZE}, "
            f"max_latency_ms {BENTO_MAX_LATENCY_MS}), 1 worker",
            "bentoml",
        ),
        Variant(
            "mlserver",
            f"MLServer + mlserver-sklearn, adaptive batching (max_batch_size "
            f"{MAX_BATCH_SIZE}, max_batch_time {MLSERVER_MAX_BATCH_TIME_S:g} s), "
            "parallel_workers default (1)",
            "mlserver",
        ),
        Variant(
            "inferwatch",
            "inferwatch serve (defaults but one worker: one core, as every peer runs one), "
            "telemetry to the live collector, audit to the live Postgres",
            "inferwatch",
            env={"INFERWATCH_WORKERS": "1"},
        ),
        # not in the default run: a variant of a peer or of inferwatch is one line here
        Variant(
            "mlserver-inline",
            "as mlserver, parallel_workers 0 (inference in the server process)",
            "mlserver",
            settings={"parallel_workers": 0},
        ),
        Variant(
            "iw-telemetry-off",
            "inferwatch serve, one worker, telemetry off, audit to the live Postgres",
            "inferwatch",
            env={"INFERWATCH_TELEMETRY_ENABLED": "false", "INFERWATCH_WORKERS": "1"},
        ),
    )
}
DEFAULT_VARIANTS = ("bare", "bare-batched", "bentoml", "mlserver", "inferwatch")


@dataclass
class Cell:
    variant: str
    round: int
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    cpu_us: float  # server tree CPU per request
    other_pct: float  # CPU 1 busy time not the server tree's, % of the cell
    spans_per_req: float | None = None


@dataclass
class Context:
    work: Path
    model_dir: Path
    model_path: Path  # inferwatch's model version folder
    joblib_path: Path  # the same estimator for the peers
    bodies: dict[str, Path]  # request format -> file of bodies
    expected: list[float]  # the model's positive-class probability per body
    peer_bins: dict[str, Path]
    stack: Stack | None
    iw_env: dict[str, str]


def clean_env() -> dict[str, str]:
    """Our environment without any inferwatch, OpenTelemetry or peer settings."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INFERWATCH_", "OTEL_", "FASTAPI_OTEL", "BENTOML_", "MLSERVER_"))
    }


class Server:
    """One server under test: started under taskset on SERVER_CPU, in its own session."""

    def __init__(self, variant: Variant, ctx: Context, rnd: int) -> None:
        self.variant = variant
        self.port, extra_port_1, extra_port_2 = free_ports(3)
        self.log = ctx.work / f"{variant.name}-round{rnd + 1}.log"
        env = clean_env()
        env["OMP_NUM_THREADS"] = "1"  # one row per call: as the launcher sets for inferwatch
        cwd = ROOT
        base = f"http://127.0.0.1:{self.port}"
        if variant.kind == "bare":
            argv = [sys.executable, "-m", "bench.overhead", "serve", "--port", str(self.port)]
            argv += ["--factory", f"bench.overhead:{variant.factory}"]
            env["BENCH_MODEL_PATH"] = str(ctx.model_path)
            self.ready_url, self.url = f"{base}/healthz", f"{base}/v1/predict"
        elif variant.kind == "bentoml":
            argv = [str(ctx.peer_bins["bentoml"] / "bentoml"), "serve", "bento_service:CardFraud"]
            argv += ["--working-dir", str(Path(__file__).parent), "--host", "127.0.0.1"]
            argv += ["--port", str(self.port)]
            env.update(
                {
                    "BENTOML_HOME": str(ctx.work / "bentoml"),
                    "BENTOML_DO_NOT_TRACK": "True",
                    "BENCH_PEER_MODEL": str(ctx.joblib_path),
                    "BENCH_PEER_MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
                    "BENCH_PEER_MAX_LATENCY_MS": str(BENTO_MAX_LATENCY_MS),
                }
            )
            cwd = ctx.work
            self.ready_url, self.url = f"{base}/readyz", f"{base}/predict"
        elif variant.kind == "mlserver":
            folder = ctx.work / f"mlserver-{variant.name}"
            write_mlserver_config(folder, self.port, extra_port_1, extra_port_2, ctx, variant)
            argv = [str(ctx.peer_bins["mlserver"] / "mlserver"), "start", str(folder)]
            cwd = folder
            model = f"{base}/v2/models/{MODEL_NAME}"
            self.ready_url, self.url = f"{model}/ready", f"{model}/infer"
        else:
            stack = ctx.stack
            if stack is None:
                raise RuntimeError("inferwatch variants need the stack")
            argv = [str(ROOT / ".venv" / "bin" / "inferwatch"), "serve"]
            env.update(stack.service_env())  # the launcher's settings: live collector + DB
            env.update(
                {
                    "INFERWATCH_PORT": str(self.port),
                    "INFERWATCH_MODEL_DIR": str(ctx.model_dir),
                    "INFERWATCH_TRAIN_IF_MISSING": "false",
                    "INFERWATCH_AUDIT_SPOOL_DIR": str(ctx.work / f"spool-{variant.name}"),
                }
            )
            env.update(ctx.iw_env)
            self.ready_url, self.url = f"{base}/readyz", f"{base}/v1/predict"
        env.update(variant.env)
        self.proc = spawn(["taskset", "-c", SERVER_CPU, *argv], env=env, cwd=cwd, log=self.log)
        self.pid = self.proc.pid  # taskset execs the server: the same pid
        try:
            poll(
                lambda: http_ok(self.ready_url, timeout=2),
                240,
                f"{variant.name} to become ready",
                alive=lambda: pid_alive(self.pid),
                log=self.log,
                interval_s=0.25,
            )
        except BaseException:
            self.stop()  # what it started so far, never left running
            raise

    def check_answers(self, bodies: list[str], expected: list[float]) -> None:
        """The first payloads' answers equal the model's own probabilities."""
        for body, want in zip(bodies, expected, strict=True):
            req = urllib.request.Request(  # noqa: S310 (loopback)
                self.url, data=body.encode(), headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                answer = json.loads(resp.read())
            got = payloads.positive_probability(self.variant.fmt, answer)
            if abs(got - want) > 1e-9:
                raise RuntimeError(
                    f"{self.variant.name}: probability {got!r}, the model says {want!r} "
                    f"(answer {answer})"
                )

    def placement(self) -> list[tuple[int, str, str]]:
        """(pid, command, CPUs allowed) of every process of the tree; raises when any
        process or thread may run outside SERVER_CPU."""
        rows = []
        for pid in descendants(self.pid):
            with contextlib.suppress(OSError):  # exited meanwhile
                allowed = cpus_allowed(pid)
                threads = thread_cpus_allowed(pid)
                rows.append((pid, process_name(pid), allowed))
                if allowed != SERVER_CPU or threads - {SERVER_CPU}:
                    raise RuntimeError(
                        f"{self.variant.name}: pid {pid} ({process_name(pid)}) may run on "
                        f"CPUs {allowed} (threads: {sorted(threads)}), not {SERVER_CPU} alone"
                    )
        return rows

    def stop(self) -> None:
        terminate(self.pid, 20)  # the whole process group spawn created
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def write_mlserver_config(
    folder: Path, http_port: int, grpc_port: int, metrics_port: int, ctx: Context, v: Variant
) -> None:
    """settings.json (the server) in `folder`, model-settings.json in its model's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "debug": False,
        **v.settings,
    }
    model = {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "max_batch_size": MAX_BATCH_SIZE,
        "max_batch_time": MLSERVER_MAX_BATCH_TIME_S,
        "parameters": {"uri": str(ctx.joblib_path), "version": ctx.model_path.name},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / MODEL_NAME).mkdir(exist_ok=True)  # MLServer expects the model's own folder
    (folder / MODEL_NAME / "model-settings.json").write_text(json.dumps(model, indent=2) + "\n")


def measure(server: Server, ctx: Context, rnd: int, concurrency: int, seconds: float) -> Cell:
    stack = ctx.stack if server.variant.kind == "inferwatch" else None
    if stack is not None:
        time.sleep(1.5)  # the warm-up's spans reach the collector first (export every 0.5 s)
    spans0 = collector_accepted_spans(stack)
    pids = descendants(server.pid)
    t0, core0 = tree_cpu_ticks(pids), core_busy_ticks(SERVER_CPU)
    stats, _ = run_wrk(server.url, ctx.bodies[server.variant.fmt], concurrency, seconds)
    t1, core1 = tree_cpu_ticks(descendants(server.pid)), core_busy_ticks(SERVER_CPU)
    ticks = sum(t - t0.get(pid, 0) for pid, t in t1.items())
    n = stats["requests"]
    secs = stats["duration_us"] / 1e6
    spans = None
    if stack is not None and spans0 is not None:
        time.sleep(1.5)  # the cell's last spans are exported and counted
        spans1 = collector_accepted_spans(stack)
        spans = (spans1 - spans0) / n if spans1 is not None and n else None
    return Cell(
        variant=server.variant.name,
        round=rnd,
        concurrency=concurrency,
        rps=n / secs,
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        requests=n,
        non_2xx=max(stats["non_2xx"], stats["non_2xx_text"]),
        socket_errors=sum(stats[k] for k in ("connect", "read", "write", "timeout")),
        cpu_us=ticks / CLK_TCK * 1e6 / max(n, 1),
        other_pct=100 * max(0, (core1 - core0) - ticks) / CLK_TCK / secs,
        spans_per_req=spans,
    )


def audit_rows(stack: Stack) -> int:
    import psycopg

    with psycopg.connect(stack.dsn("postgres"), connect_timeout=10) as conn:
        row = conn.execute("SELECT count(*) FROM predictions").fetchone()
    return int(row[0]) if row else 0


def settled_audit_rows(stack: Stack) -> int:
    """The audit table's row count once the writer has flushed (two equal reads 1 s apart)."""
    last = [-1]

    def steady() -> int | None:
        n = audit_rows(stack)
        done = n == last[0]
        last[0] = n
        return n if done else None

    return poll(steady, 120, "the audit writer to flush", interval_s=1.0)


# --- setup -------------------------------------------------------------------------------


def prepare(work: Path, rows: int, kinds: set[str], iw_env: dict[str, str]) -> Context:
    import joblib
    import numpy as np

    from inferwatch.inference.encoding import RowEncoder
    from inferwatch.inference.loading import load_model

    peer_bins = {}
    for kind in sorted(kinds & set(envs.PEER_ENVS)):
        peer_bins[kind] = envs.ensure(envs.PEER_ENVS[kind], work / f"install-{kind}.log")
    model_dir = work / "models"
    model_path = train(model_dir, rows)
    loaded = load_model(model_path)
    joblib_path = work / "model.joblib"
    joblib.dump(loaded.estimator, joblib_path)
    service_file = work / "bodies-service.jsonl"
    write_bodies(service_file, N_BODIES)
    lines = service_file.read_text().splitlines()
    schema = loaded.metadata.feature_schema
    files = {"service": service_file}
    for fmt in ("bentoml", "mlserver"):
        files[fmt] = work / f"bodies-{fmt}.jsonl"
        files[fmt].write_text("\n".join(payloads.bodies(fmt, schema, lines)) + "\n")
    matrix = RowEncoder(schema).encode([json.loads(line)["features"] for line in lines])
    expected = [float(p) for p in np.asarray(loaded.estimator.predict_proba(matrix))[:, 1]]
    stack = None
    if "inferwatch" in kinds:
        stack = Stack(work / "stack", Ports.free(), Options(collector=True))
        stack.start_postgres()
        stack.prepare_database()
        stack.start_prometheus()
        stack.start_jaeger()
        stack.start_collector()
        for name in ("postgres", "prometheus", "jaeger", "collector"):
            pid = stack.pid(name)
            if pid is not None:  # the whole tree: Postgres' backends fork from the postmaster
                pin_tree(pid, {int(CLIENT_CPU)})
    return Context(
        work, model_dir, model_path, joblib_path, files, expected, peer_bins, stack, iw_env
    )


def stack_pids(stack: Stack | None) -> list[int]:
    if stack is None:
        return []
    pids = [stack.pid(n) for n in ("postgres", "prometheus", "jaeger", "collector")]
    return [d for p in pids if p is not None for d in descendants(p)]


# --- output ------------------------------------------------------------------------------


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def summarize(cells: list[Cell]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (variant, concurrency): means over rounds, each round's req/s, error totals."""
    groups: dict[tuple[str, int], list[Cell]] = defaultdict(list)
    for c in cells:
        groups[(c.variant, c.concurrency)].append(c)
    out = {}
    for key, cs in groups.items():
        spans = [c.spans_per_req for c in cs if c.spans_per_req is not None]
        out[key] = {
            "rps": mean([c.rps for c in cs]),
            "rounds": [c.rps for c in sorted(cs, key=lambda c: c.round)],
            "p50": mean([c.p50_ms for c in cs]),
            "p99": mean([c.p99_ms for c in cs]),
            "non_2xx": sum(c.non_2xx for c in cs),
            "socket": sum(c.socket_errors for c in cs),
            "requests": sum(c.requests for c in cs),
            "cpu_us": mean([c.cpu_us for c in cs]),
            "other": mean([c.other_pct for c in cs]),
            "spans": mean(spans) if spans else None,
        }
    return out


def fmt_table(cells: list[Cell], levels: list[int], order: list[str]) -> str:
    s = summarize(cells)
    head = (
        f"{'variant':<17} {'conc':>4} {'req/s':>7} {'rounds req/s':>13} {'P50 ms':>8} "
        f"{'P99 ms':>8} {'non-2xx':>7} {'sock err':>8} {'CPU µs/req':>10} {'cpu1 other':>10} "
        f"{'req/s ÷ iw':>10} {'P99 ÷ iw':>8} {'spans/req':>9}"
    )
    out = [head, "-" * len(head)]
    for c in levels:
        iw = s.get(("inferwatch", c))
        for name in order:
            r = s.get((name, c))
            if r is None:
                continue
            runs = "/".join(f"{x:.0f}" for x in r["rounds"])
            ratio = f"{r['rps'] / iw['rps']:10.2f}" if iw else f"{'-':>10}"
            p99r = f"{r['p99'] / iw['p99']:8.2f}" if iw else f"{'-':>8}"
            spans = f"{r['spans']:9.2f}" if r["spans"] is not None else f"{'-':>9}"
            out.append(
                f"{name:<17} {c:>4} {r['rps']:>7,.0f} {runs:>13} {r['p50']:>8.2f} "
                f"{r['p99']:>8.2f} {r['non_2xx']:>7} {r['socket']:>8} {r['cpu_us']:>10,.0f} "
                f"{r['other']:>9.1f}% "
                f"{ratio} {p99r} {spans}"
            )
        out.append("")
    return "\n".join(out).rstrip()


def targets(cells: list[Cell]) -> list[str]:
    """issue #12's targets, from the means (those whose variants ran)."""
    s = summarize(cells)
    lines = []
    iw = s.get(("inferwatch", 128))
    for peer, factor in (("mlserver", 2.0), ("bentoml", 3.0)):
        r = s.get((peer, 128))
        if iw and r:
            ratio = iw["rps"] / r["rps"]
            ok = ratio >= factor and iw["p99"] <= r["p99"]
            lines.append(
                f"target c=128: inferwatch >= {factor:g}x {peer}'s req/s with a P99 no worse: "
                f"{ratio:.2f}x, P99 {iw['p99']:.1f} vs {r['p99']:.1f} ms "
                f"{'MET' if ok else 'NOT MET'}"
            )
    batched = s.get(("bare-batched", 128))
    if iw and batched:
        ratio = iw["rps"] / batched["rps"]
        lines.append(
            f"target c=128: inferwatch >= 0.5x bare-batched's req/s: {ratio:.2f}x "
            f"{'MET' if ratio >= 0.5 else 'NOT MET'}"
        )
    iw1, bare1 = s.get(("inferwatch", 1)), s.get(("bare", 1))
    if iw1 and bare1:
        added = iw1["p50"] - bare1["p50"]
        lines.append(
            f"target c=1: inferwatch P50 within 0.3 ms of bare: {added:+.3f} ms "
            f"{'MET' if added <= 0.3 else 'NOT MET'}"
        )
    return lines


def peer_versions(ctx: Context) -> list[str]:
    lines = []
    for kind, bin_dir in sorted(ctx.peer_bins.items()):
        have = envs.installed(bin_dir)
        peer = envs.PEER_ENVS[kind]
        pinned = ", ".join(envs.requirements(peer))
        names = {r.split("==")[0] for r in envs.requirements(peer)}
        extra = ", ".join(f"{n} {have[n]}" for n in envs.REPORTED if n in have and n not in names)
        lines.append(f"{kind:<9} {pinned}; with {extra}; {peer.why}")
    return lines


def code_version() -> str:
    """The commit the run measures (taken at its start), marked when files differ from it."""

    def git(*argv: str) -> str:
        out = subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30
        )
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    return (
        f"{commit} + local changes"
        if git("status", "--porcelain", "--untracked-files=no")
        else commit
    )


# --- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(prog="python -m bench.peers", description=doc.splitlines()[0])
    ap.add_argument("--duration", type=float, default=20, help="seconds measured per cell")
    ap.add_argument("--warmup", type=float, default=5, help="seconds of load before each cell")
    ap.add_argument("--concurrency", default="1,32,128")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order")
    ap.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS), help=f"of: {', '.join(VARIANTS)}"
    )
    ap.add_argument(
        "--iw-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the inferwatch variants (repeatable)",
    )
    ap.add_argument("--rows", type=int, default=60_000, help="training rows")
    ap.add_argument("--quiet-limit", type=float, default=0.15)
    ap.add_argument("--quiet-timeout", type=float, default=240)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args(argv)

    levels = [int(c) for c in args.concurrency.split(",") if c]
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    chosen = [VARIANTS[n] for n in names]
    iw_env = dict(kv.split("=", 1) for kv in args.iw_env)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (stack/install.sh installs wrk)", file=sys.stderr)
            return 1

    with benchmark_lock("bench.peers"):
        return run(args, levels, chosen, iw_env)


def run(
    args: argparse.Namespace, levels: list[int], chosen: list[Variant], iw_env: dict[str, str]
) -> int:
    info = machine()
    commit = code_version()
    work = Path(tempfile.mkdtemp(prefix="inferwatch-peers-"))
    cells: list[Cell] = []
    notes: list[str] = []
    trees: dict[str, list[tuple[int, str, str]]] = {}
    ctx: Context | None = None
    t_start = time.monotonic()
    try:
        ctx = prepare(work, args.rows, {v.kind for v in chosen}, iw_env)
        schedule = [
            (rnd, v)
            for rnd in range(args.rounds)
            for v in (chosen if rnd % 2 == 0 else chosen[::-1])
        ]
        for rnd, variant in schedule:
            # the stack's own processes (Postgres' backends come and go) are not "others"
            load = wait_quiet(stack_pids(ctx.stack), args.quiet_limit, args.quiet_timeout)
            if load >= args.quiet_limit:
                notes.append(
                    f"{variant.name} (round {rnd + 1}): started while other processes kept "
                    f"{load:.2f} cores busy"
                )
            rows_before = (
                settled_audit_rows(ctx.stack) if variant.kind == "inferwatch" and ctx.stack else 0
            )
            server = Server(variant, ctx, rnd)
            try:
                lines = ctx.bodies[variant.fmt].read_text().splitlines()
                server.check_answers(lines[:8], ctx.expected[:8])
                ok_2xx = 8
                for c in levels:
                    warm, _ = run_wrk(server.url, ctx.bodies[variant.fmt], c, args.warmup)
                    ok_2xx += warm["requests"] - max(warm["non_2xx"], warm["non_2xx_text"])
                    if variant.name not in trees:
                        trees[variant.name] = server.placement()
                    else:
                        server.placement()  # every round, every start: still pinned
                    cell = measure(server, ctx, rnd, c, args.duration)
                    ok_2xx += cell.requests - cell.non_2xx
                    cells.append(cell)
                    print(
                        f"[peers] round {rnd + 1} {variant.name:<16} c={c:<3} {cell.rps:8,.0f} "
                        f"req/s  P50 {cell.p50_ms:.2f} ms  P99 {cell.p99_ms:.2f} ms  errors "
                        f"{cell.non_2xx + cell.socket_errors}  {cell.cpu_us:,.0f} µs CPU/req",
                        file=sys.stderr,
                    )
            finally:
                server.stop()
            if variant.kind == "inferwatch" and ctx.stack is not None:
                rows = settled_audit_rows(ctx.stack) - rows_before
                notes.append(
                    f"{variant.name} (round {rnd + 1}): {rows:,} audit rows in Postgres for "
                    f"{ok_2xx:,} 2xx answers wrk counted (it leaves out answers in flight "
                    "when a run ends)"
                )
    finally:
        if ctx is not None and ctx.stack is not None:
            for name in ("collector", "jaeger", "prometheus", "postgres"):
                with contextlib.suppress(Exception):
                    ctx.stack.stop(name)
            ctx.stack.purge()
        if args.keep:
            print(f"[peers] kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - t_start

    print("bench/peers: inferwatch vs the servers its users would pick instead")
    print(f"date      {info['date']}; commit {commit}")
    print(f"machine   {info['cpu']}; loadavg at start {info['load']}")
    print(f"python    {info['python']}; inferwatch env: {info['packages']}")
    for line in peer_versions(ctx) if ctx else []:
        print(f"peer      {line}")
    print(f"tools     {info['wrk']}; {info['collector']}")
    print(
        f"model     card-fraud (inferwatch train --rows {args.rows}), one estimator: skops for "
        "inferwatch and bare, the same object via joblib for the peers; every server's "
        "first 8 answers checked equal to its predict_proba"
    )
    print(
        f"load      wrk -t1, {N_BODIES} generated transactions in turn in each server's "
        f"format; per cell {args.warmup:g} s warm-up then {args.duration:g} s measured; "
        f"{args.rounds} round(s), alternating order; means over rounds"
    )
    print(
        f"placement each server's whole process tree on CPU {SERVER_CPU} (taskset, checked "
        f"in /proc); wrk, Postgres, collector, Prometheus, Jaeger on CPU {CLIENT_CPU}"
    )
    print()
    for v in chosen:
        extra = ", ".join(
            f"{k}={val}"
            for k, val in {**v.env, **(iw_env if v.kind == "inferwatch" else {})}.items()
        )
        print(f"  {v.name:<17} {v.what}{f' [{extra}]' if extra else ''}")
    print()
    for name, tree in trees.items():
        procs = "; ".join(f"{pid} {cmd} [CPUs {cpus}]" for pid, cmd, cpus in tree)
        print(f"  tree {name}: {len(tree)} process(es): {procs}")
    print()
    print(fmt_table(cells, levels, [v.name for v in chosen]))
    print()
    print(
        "non-2xx, sock err = answers other than 2xx and wrk's socket errors (connect, read, "
        "write, timeout), summed over rounds; CPU µs/req = the server "
        "tree's CPU time / requests; cpu1 other = CPU 1 time used by other processes; "
        "req/s ÷ iw and P99 ÷ iw = this variant's over inferwatch's; spans/req = spans the "
        "collector accepted per request"
    )
    for line in targets(cells):
        print(line)
    for note in notes:
        print(f"note: {note}")
    print(f"\ntotal {elapsed:.0f} s")
    return 0
