"""Soak: the whole native stack under sustained load, checked for leaks and for exactness.

    python -m bench.soak                      # 10 minutes at the default rate
    python -m bench.soak --duration 60 --rate 300 [--keep]
    python -m bench.soak --probe 200,400,600  # first find the rate, then soak at it

With --probe, short runs (--probe-duration, 60 s) at each rate on the same stack come
first; the soak runs at the highest rate whose probe passed every check with a P99 under
PROBE_P99_MS: the rate this machine holds with every component on.

Starts a stack of its own (stack/launch.py: Postgres, Jaeger, the collector, Prometheus,
the service with its default worker count, the analysis job), offers a constant rate of
predictions with vegeta (open loop, keep-alive connections) for the duration, and samples
every SAMPLE_S seconds: the service's resident memory (supervisor and workers), the audit
queue depth and spool size (from Prometheus) and the spool's bytes on disk. Then it checks:

- zero failed requests (every response a 200, no transport error);
- memory, queue and spool flat: the start figures (after WARMUP_S) against the end ones;
- every prediction id the load was given is in Postgres exactly once, and Prometheus'
  prediction count grew by exactly the number of predictions.

Prints the figures and writes them to run/soak-results.json; exits 1 when a check fails.
Takes the benchmark lock (bench/common.py). tests/e2e/test_soak.py runs a 60-second soak
in CI through `soak()`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bench.common import benchmark_lock, descendants, pct
from inferwatch.inference.data import generate_transactions
from inferwatch.telemetry import instruments as names
from stack.launch import Options, Ports, Stack, prom_query
from stack.procs import ROOT, find_binary, poll

# The rate this 2-core machine holds with every component on for 10 minutes
# (docs/reliability.md): 450 req/s passed 30-second probes but not 10 minutes on the
# shared host (one connection reset, P99 2.6 s).
DEFAULT_RATE = 300.0
SAMPLE_S = 10.0
WARMUP_S = 15.0  # the start figures are taken this long into the load
CONNECTIONS = 32
PROBE_P99_MS = 100.0
PREDICTIONS = names.prometheus_name(names.PREDICTIONS)
QUEUE = names.prometheus_name(names.AUDIT_QUEUE_DEPTH)
SPOOL = names.prometheus_name(names.AUDIT_SPOOL_SIZE)


@dataclass
class Sample:
    t: float  # seconds into the load
    rss_mb: float  # the service: supervisor + workers
    queue: float  # audit queue depth, summed over workers
    spool: float  # audit spool records, summed over workers
    spool_bytes: int  # the spool directory's segment files


@dataclass
class Report:
    rate: float
    duration_s: float
    requests: int = 0
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    achieved_rps: float = 0.0
    # latency of each whole minute of the load (by the request's place in the schedule):
    # a soak that holds its checks can still slow down as it goes
    minutes: list[dict[str, float]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    start: Sample | None = None
    end: Sample | None = None
    rows_stored: int = 0
    rows_distinct: int = 0
    counted_in_prometheus: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)
    machine: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())


def rss_mb(root_pid: int) -> float:
    total = 0
    for pid in descendants(root_pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _sum(stack: Stack, metric: str) -> float:
    res = prom_query(stack.prometheus_url, f'sum({metric}{{job="inferwatch"}})')
    return float(res[0]["value"][1]) if res else 0.0


def _spool_bytes(stack: Stack) -> int:
    return sum(p.stat().st_size for p in stack.spool_dir.glob("slot-*/seg-*.log"))


def sample(stack: Stack, t: float) -> Sample:
    pid = stack.pid("service")
    return Sample(
        t=round(t, 1),
        rss_mb=round(rss_mb(pid), 1) if pid else 0.0,
        queue=_sum(stack, QUEUE),
        spool=_sum(stack, SPOOL),
        spool_bytes=_spool_bytes(stack),
    )


def write_targets(url: str, path: Path, n: int = 5_000) -> None:
    rows, _ = generate_transactions(n, seed=21)
    with open(path, "w") as f:
        for row in rows:
            body = json.dumps({"features": row}).encode()
            target = {
                "method": "POST",
                "url": f"{url}/v1/predict",
                "body": base64.b64encode(body).decode(),
                "header": {"Content-Type": ["application/json"]},
            }
            f.write(json.dumps(target) + "\n")


def _count_rows(stack: Stack, ids: list[str]) -> tuple[int, int]:
    with psycopg.connect(stack.dsn("postgres")) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT prediction_id) FROM predictions"
            " WHERE prediction_id = ANY(%s::uuid[])",
            (ids,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def soak(stack: Stack, duration_s: float, rate: float, workdir: Path) -> Report:
    """Load `stack` at `rate` for `duration_s` and check it (see the module doc)."""
    report = Report(rate=rate, duration_s=duration_s, machine=machine())
    targets, results = workdir / "targets.jsonl", workdir / "results.bin"
    write_targets(stack.service_url, targets)
    counted_before = _sum(stack, PREDICTIONS)
    vegeta = str(find_binary("vegeta"))
    argv = [
        vegeta,
        "attack",
        "-format=json",
        f"-targets={targets}",
        f"-rate={rate:g}/s",
        f"-duration={duration_s:g}s",
        f"-connections={CONNECTIONS}",
        f"-max-connections={CONNECTIONS}",
        "-timeout=10s",
        f"-output={results}",
    ]
    stop = threading.Event()

    def sampler() -> None:  # a sample every SAMPLE_S on a fixed schedule
        t0 = time.monotonic()
        n = 0

        def until_next() -> float:
            return max(0.0, n * SAMPLE_S - (time.monotonic() - t0))

        while not stop.wait(until_next()):
            report.samples.append(sample(stack, time.monotonic() - t0))
            n += 1

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    attack = subprocess.run(argv, capture_output=True, timeout=duration_s + 120, check=False)
    stop.set()
    th.join()
    if attack.returncode != 0:
        raise RuntimeError(f"vegeta attack failed: {attack.stderr.decode()[-2000:]}")
    ids, lat, seqs = _read_results(vegeta, results, report)
    report.samples.append(sample(stack, duration_s))
    late = [s for s in report.samples if s.t >= WARMUP_S]
    report.start = late[0] if late else report.samples[0]
    # the end figure: the last sample taken while the load ran
    during = [s for s in report.samples if s.t < duration_s]
    report.end = during[-1] if during else report.samples[-1]
    report.minutes = per_minute(lat, seqs, rate)
    if lat:
        report.p50_ms = pct(lat, 0.50) / 1e6
        report.p99_ms = pct(lat, 0.99) / 1e6
        report.max_ms = max(lat) / 1e6
    report.achieved_rps = report.ok / duration_s

    # exactness: Postgres and Prometheus, once the pipeline has caught up
    def stored() -> tuple[int, int] | None:
        got = _count_rows(stack, ids)
        return got if got == (len(ids), len(ids)) else None

    try:
        poll(stored, 120, f"{len(ids)} prediction ids in Postgres")
    except Exception as exc:  # the figure is reported; the check below fails
        report.errors.append(str(exc).splitlines()[0])
    report.rows_stored, report.rows_distinct = _count_rows(stack, ids)

    def counted() -> float | None:
        v = _sum(stack, PREDICTIONS) - counted_before
        return v if v == len(ids) else None

    try:
        poll(counted, 60, f"Prometheus' count to grow by {len(ids)}")
    except Exception as exc:
        report.errors.append(str(exc).splitlines()[0])
    report.counted_in_prometheus = _sum(stack, PREDICTIONS) - counted_before
    drained = sample(stack, duration_s)
    s, e = report.start, report.end
    report.checks = {
        "zero_failed": report.failed == 0 and report.ok == report.requests > 0,
        "postgres_exactly_once": report.rows_stored == report.rows_distinct == len(ids),
        "prometheus_exact": report.counted_in_prometheus == len(ids),
        # flat: memory within 10% (+ 20 MB of allocator slack) of the start figure; the
        # audit queue under a second of load at both ends; the spool empty at the end and
        # drained after the load
        "rss_flat": e.rss_mb <= s.rss_mb * 1.10 + 20,
        "queue_flat": s.queue <= rate and e.queue <= rate,
        "spool_flat": e.spool == 0 and drained.spool == 0 and drained.spool_bytes == 0,
    }
    return report


def per_minute(lat: list[int], seqs: list[int], rate: float) -> list[dict[str, float]]:
    """p50 and p99 (ms) of each whole minute of the schedule (request `seq` was due at
    seq / rate seconds); latencies in ns."""
    by: dict[int, list[int]] = {}
    for ns, seq in zip(lat, seqs, strict=True):
        by.setdefault(int(seq / rate // 60), []).append(ns)
    out = []
    for minute in sorted(by):
        xs = by[minute]
        if len(xs) < rate * 60 * 0.9:  # a partial last minute says little
            continue
        out.append(
            {
                "minute": minute,
                "requests": len(xs),
                "p50_ms": pct(xs, 0.50) / 1e6,
                "p99_ms": pct(xs, 0.99) / 1e6,
            }
        )
    return out


def _read_results(
    vegeta: str, results: Path, report: Report
) -> tuple[list[str], list[int], list[int]]:
    """(prediction ids, latencies in ns, each latency's schedule position) from vegeta's
    results; counts into `report`."""
    enc = subprocess.Popen(
        [vegeta, "encode", "--to", "json", str(results)], stdout=subprocess.PIPE, text=True
    )
    assert enc.stdout is not None
    ids: list[str] = []
    lat: list[int] = []
    seqs: list[int] = []
    for line in enc.stdout:
        r = json.loads(line)
        report.requests += 1
        lat.append(int(r["latency"]))
        seqs.append(int(r["seq"]))
        if r["code"] == 200 and not r.get("error"):
            report.ok += 1
            ids.append(json.loads(base64.b64decode(r["body"]))["prediction_id"])
        else:
            report.failed += 1
            if len(report.errors) < 5:
                report.errors.append(f"{r['code']} {r.get('error', '')}")
    enc.wait()
    return ids, lat, seqs


def machine() -> str:
    cpus = len(os.sched_getaffinity(0))
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{platform.node()}: {cpus} CPUs ({model}), {platform.release()}"


def print_report(r: Report) -> None:
    assert r.start is not None
    assert r.end is not None
    print(f"[soak] {r.machine}")
    print(
        f"[soak] {r.duration_s:g}s at {r.rate:g} req/s offered: {r.requests} requests, "
        f"{r.ok} ok, {r.failed} failed; achieved {r.achieved_rps:.1f} req/s; latency p50 "
        f"{r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, max {r.max_ms:.1f} ms"
    )
    if r.minutes:
        cells = ", ".join(f"{m['p50_ms']:.1f}/{m['p99_ms']:.1f}" for m in r.minutes)
        print(f"[soak] p50/p99 ms by minute: {cells}")
    print(f"[soak] {'':>14} {'t (s)':>7} {'RSS MB':>8} {'queue':>7} {'spool':>7} {'bytes':>8}")
    for label, s in (("start", r.start), ("end", r.end)):
        print(
            f"[soak] {label:>14} {s.t:>7.0f} {s.rss_mb:>8.1f} {s.queue:>7.0f} {s.spool:>7.0f} "
            f"{s.spool_bytes:>8}"
        )
    print(
        f"[soak] Postgres: {r.rows_stored} rows, {r.rows_distinct} distinct of {r.ok} ids; "
        f"Prometheus counted {r.counted_in_prometheus:.0f}"
    )
    for name, ok in r.checks.items():
        print(f"[soak] check {name}: {'ok' if ok else 'FAILED'}")
    for e in r.errors:
        print(f"[soak] error: {e}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    ap.add_argument("--rate", type=float, default=DEFAULT_RATE, help="offered req/s")
    ap.add_argument("--keep", action="store_true", help="keep the stack's run folder")
    ap.add_argument("--probe", default="", help="rates to probe first, e.g. 200,400,600")
    ap.add_argument("--probe-duration", type=float, default=60.0, help="seconds per probe")
    args = ap.parse_args(argv)
    rate = args.rate
    probes: list[dict[str, Any]] = []
    with benchmark_lock("soak"):
        run_dir = ROOT / "run" / f"soak-{uuid.uuid4().hex[:8]}"
        stack = Stack(run_dir, Ports.free(), Options(collector=True))
        t0 = time.monotonic()
        stack.up()
        print(f"[soak] stack up in {time.monotonic() - t0:.0f}s ({run_dir})")
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for r in [float(x) for x in args.probe.split(",") if x]:
                    pr = soak(stack, args.probe_duration, r, Path(tmp))
                    held = pr.passed and pr.p99_ms < PROBE_P99_MS
                    probes.append(
                        {
                            "rate": r,
                            "held": held,
                            "p99_ms": pr.p99_ms,
                            "failed": pr.failed,
                            "checks": pr.checks,
                        }
                    )
                    print(
                        f"[soak] probe {r:g} req/s for {args.probe_duration:g}s: p99 "
                        f"{pr.p99_ms:.1f} ms, {pr.failed} failed, "
                        f"{'held' if held else 'NOT held'} {pr.checks}"
                    )
                    if not held:
                        break
                    rate = r
                if probes and not probes[0]["held"]:
                    rate = probes[0]["rate"] / 2  # not even the lowest probe held
                report = soak(stack, args.duration, rate, Path(tmp))
        finally:
            stack.down()
            if not args.keep:
                stack.purge()
    print_report(report)
    out = ROOT / "run" / "soak-results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({**asdict(report), "probes": probes}, indent=2) + "\n")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
