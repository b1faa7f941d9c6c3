"""bench/workers: `inferwatch serve` with 1 and 2 worker processes on the whole native stack.

    .venv/bin/python -m bench.workers [--workers 1,2] [--concurrency 32,128] [--duration 15]
                                      [--warmup 5] [--rounds 2]

The service as shipped (all telemetry exported to the live collector, which feeds Prometheus
and Jaeger; the audit writer on the live Postgres; the analysis job running), all started by
stack/launch.py's ``Stack`` on free ports, with a model trained once into a temp dir
(``inferwatch train --rows 60000``). For each worker count the service is restarted with
``INFERWATCH_WORKERS`` and waited for until every worker is ready; then, per concurrency,
wrk (one thread, bench/wrk_post.lua, the 256 bodies bench/overhead sends, pinned to CPU 0 as
bench/overhead pins it) runs a warm-up and a measured run. Nothing else is pinned: the
workers, Postgres, the collector, Prometheus and Jaeger share both cores with wrk, as they
would on this host. Rounds alternate the order of the worker counts; each cell keeps its
fastest round and shows every round's req/s.

Besides wrk's figures, per cell: the connections each worker holds halfway through the
run (``ss``: which worker the kernel gave each of wrk's keep-alive connections) and each
worker's share of the service's CPU time. Any non-2xx response or socket error fails the
run (exit status 2) after the table. The bench lock (bench/common.py) keeps other benchmarks
out meanwhile. Findings and a recorded run: docs/benchmarks.md ("Worker processes").
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import benchmark_lock  # noqa: E402  (after the path fix above)
from bench.overhead import (  # noqa: E402
    CLK_TCK,
    N_BODIES,
    machine,
    proc_cpu_ticks,
    run_wrk,
    train,
    wait_quiet,
    write_bodies,
    wrk_errors,
)
from stack.launch import Options, Ports, Stack  # noqa: E402
from stack.procs import poll  # noqa: E402


@dataclass
class Cell:
    workers: int
    concurrency: int
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    conns: list[int]  # established connections per worker, halfway through the run
    cpu_share: list[float]  # each worker's share of the service's CPU time in the run
    cpu_us: float  # the whole service's CPU (supervisor + workers) per request
    errors: list[str] = field(default_factory=list)


def child_pids(parent: int) -> list[int]:
    """The worker processes of the supervisor `parent` (not multiprocessing's resource
    tracker, its other child)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return sorted(out)


def worker_pids(stack: Stack, workers: int) -> list[int]:
    service = stack.pid("service")
    assert service is not None
    return [service] if workers == 1 else child_pids(service)


def connections_per_pid(port: int) -> dict[int, int]:
    """Established server-side connections on `port`, by the pid that holds them."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts: dict[int, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


def restart_service(stack: Stack, workers: int) -> None:
    log = stack.logs / "service.log"
    marker = f"all {workers} workers ready"
    seen = log.read_text(errors="replace").count(marker) if log.exists() else 0
    stack.stop("service")
    stack.options.service_env["INFERWATCH_WORKERS"] = str(workers)
    stack.start_service()  # waits for /readyz: one worker ready
    if workers > 1:
        poll(
            lambda: log.read_text(errors="replace").count(marker) > seen,
            180,
            f"{workers} workers ready",
        )


def measure(stack: Stack, bodies: Path, workers: int, c: int, secs: float, rnd: int) -> Cell:
    url = f"{stack.service_url}/v1/predict"
    pids = worker_pids(stack, workers)
    assert len(pids) == workers, pids
    service = stack.pid("service")
    assert service is not None
    everyone = sorted({service, *pids})
    cpu0 = {p: proc_cpu_ticks(p) for p in everyone}
    snapshot: dict[int, int] = {}
    timer = threading.Timer(
        secs / 2, lambda: snapshot.update(connections_per_pid(stack.ports.service))
    )
    timer.start()
    stats, _ = run_wrk(url, bodies, c, secs)
    timer.join()
    spent = {p: proc_cpu_ticks(p) - cpu0[p] for p in everyone}
    worker_ticks = sum(spent[p] for p in pids) or 1
    n = stats["requests"]
    return Cell(
        workers=workers,
        concurrency=c,
        round=rnd,
        rps=n / (stats["duration_us"] / 1e6),
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        requests=n,
        conns=sorted(snapshot.get(p, 0) for p in pids),
        cpu_share=sorted(100 * spent[p] / worker_ticks for p in pids),
        cpu_us=sum(spent.values()) / CLK_TCK * 1e6 / max(n, 1),
        errors=wrk_errors(stats),
    )


def table(cells: list[Cell], workers: list[int], levels: list[int]) -> str:
    head = (
        f"{'workers':>7} {'c':>4} {'req/s':>7} {'P50 ms':>7} {'P99 ms':>8} {'CPU µs/req':>10} "
        f"{'conns per worker':>17} {'CPU % per worker':>17}  rounds req/s"
    )
    out = [head, "-" * len(head)]
    for w in workers:
        for c in levels:
            runs = [x for x in cells if x.workers == w and x.concurrency == c]
            if not runs:
                continue
            best = max(runs, key=lambda x: x.rps)
            conns = "/".join(map(str, best.conns))
            share = "/".join(f"{s:.0f}" for s in best.cpu_share)
            rounds = "/".join(f"{x.rps:,.0f}" for x in sorted(runs, key=lambda x: x.round))
            out.append(
                f"{w:>7} {c:>4} {best.rps:>7,.0f} {best.p50_ms:>7.1f} {best.p99_ms:>8.1f} "
                f"{best.cpu_us:>10,.0f} {conns:>17} {share:>17}  {rounds}"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--concurrency", default="32,128", help="wrk connections")
    ap.add_argument("--duration", type=float, default=15, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=5, help="seconds of warm-up per service")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=60_000, help="training rows")
    ap.add_argument("--quiet-limit", type=float, default=0.3)
    ap.add_argument("--quiet-timeout", type=float, default=120)
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w]
    levels = [int(c) for c in args.concurrency.split(",") if c]
    for tool in ("wrk", "taskset", "ss"):
        if shutil.which(tool) is None:
            print(f"{tool} not found (stack/install.sh installs wrk)", file=sys.stderr)
            return 1
    cells: list[Cell] = []
    notes: list[str] = []
    with benchmark_lock("bench.workers"):
        info = machine()
        work = Path(tempfile.mkdtemp(prefix="inferwatch-workers-"))
        model_dir = work / "models"
        train(model_dir, args.rows)
        bodies = work / "bodies.jsonl"
        write_bodies(bodies, N_BODIES)
        env = {
            "INFERWATCH_MODEL_DIR": str(model_dir),
            "INFERWATCH_TRAIN_IF_MISSING": "false",
            "INFERWATCH_WORKERS": str(workers[0]),
        }
        stack = Stack(work / "stack", Ports.free(), Options(collector=True, service_env=env))
        try:
            stack.up()
            for rnd in range(args.rounds):
                for w in workers if rnd % 2 == 0 else workers[::-1]:
                    restart_service(stack, w)
                    url = f"{stack.service_url}/v1/predict"
                    warm, _ = run_wrk(url, bodies, max(levels), args.warmup)
                    if errs := wrk_errors(warm):
                        raise RuntimeError(f"workers={w} warm-up: {'; '.join(errs)}")
                    for c in levels:
                        own = [p for p in map(stack.pid, stack.components()) if p is not None]
                        own += worker_pids(stack, w)
                        load = wait_quiet(own, args.quiet_limit, args.quiet_timeout)
                        if load >= args.quiet_limit:
                            notes.append(
                                f"workers={w} c={c} round {rnd + 1}: other processes kept "
                                f"{load:.2f} cores busy"
                            )
                        cell = measure(stack, bodies, w, c, args.duration, rnd)
                        cells.append(cell)
                        print(
                            f"[workers] round {rnd + 1} workers={w} c={c}: {cell.rps:,.0f} "
                            f"req/s, P99 {cell.p99_ms:.1f} ms, conns {cell.conns} "
                            f"{'; '.join(cell.errors)}",
                            file=sys.stderr,
                        )
        finally:
            stack.down()
            stack.purge()
            shutil.rmtree(work, ignore_errors=True)
    print("bench/workers: inferwatch serve, 1 vs N worker processes, whole native stack")
    for k, v in info.items():
        print(f"{k:<9} {v}")
    print(
        f"run       wrk -t1 (CPU 0), {args.warmup:g} s warm-up per service, {args.duration:g} s "
        f"per cell, {args.rounds} rounds; everything else floats over both cores\n"
    )
    print(table(cells, workers, levels))
    for note in notes:
        print(f"note: {note}")
    failed = [x for x in cells if x.errors]
    for x in failed:
        print(f"ERROR workers={x.workers} c={x.concurrency}: {'; '.join(x.errors)}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
