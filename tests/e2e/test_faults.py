"""The fault matrix (issue #14 item 2) on one native stack, each fault under load.

Every case asserts: no failed prediction (a client retries a refused or reset connection,
never a status), no lost or duplicated audit row (every prediction id the client was given
is in Postgres exactly once, the SIGKILL cases included: the audit journal holds what the
killed processes had in memory), telemetry resumes (Prometheus' prediction counter
grows again after the fault), and the matching alert fires, read from Prometheus' alerts
API. Prometheus loads the TEST OVERLAY of the rules (`prometheus/rules/generate.py
--overlay`: every `for:` 5 s, short alert windows), never edited shipped rules. A killed
worker's span metrics expire in the collector (OTELCOL_SPANMETRICS_EXPIRATION, 15 s here).

Faults last FAULT_S seconds (INFERWATCH_FAULT_SECONDS; 15 under CI=true, else 60): each
test prints its configured duration and figures (-s), and writes them to
run/faults-results.json for docs/reliability.md. Cases covered elsewhere: the audit queue
full (tests/integration/test_audit_spool_latency.py), a bad model artifact
(tests/integration/test_model_refusal.py), a table lock at the writer
(tests/integration/test_audit_slow_db.py), orphaned spool slots
(tests/integration/test_audit_orphans.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from bench.common import descendants
from inferwatch.audit.spool import JOURNAL_PREFIX
from inferwatch.inference.data import generate_transactions
from inferwatch.telemetry import instruments as names
from stack.launch import Options, Stack
from stack.procs import ROOT, pid_alive, poll
from tests.fixtures.stack import ANALYSIS_INTERVAL, SERVICE_ENV, Prom, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

CI = os.environ.get("CI") == "true"
FAULT_S = float(os.environ.get("INFERWATCH_FAULT_SECONDS", "15" if CI else "60"))
RATE = 40.0  # offered predictions per second during every case
PREDICTIONS = names.prometheus_name(names.PREDICTIONS)
DROPPED = names.prometheus_name(names.AUDIT_DROPPED)
SPAN_CALLS = "traces_span_metrics_calls_total"  # the collector's span_metrics connector
SPAN_EXPIRATION_S = 15  # the fault stack's OTELCOL_SPANMETRICS_EXPIRATION
RESULTS: dict[str, Any] = {}
DROP_LOG = re.compile(r"audit record ([0-9a-f-]{36}) dropped")
JOURNAL_REPLAY_LOG = re.compile(rf"replayed (\d+) records from {JOURNAL_PREFIX}")


# --- load ----------------------------------------------------------------------------


@dataclass
class Load:
    """RATE predictions per second from a few threads, until stopped. A refused or reset
    connection is retried (what a client behind a load balancer does); any HTTP status but
    200 is a failed prediction."""

    url: str
    rows: list[dict[str, Any]]
    rate: float = RATE
    threads: int = 4
    ok: list[tuple[str, float]] = field(default_factory=list)  # (prediction id, answered at)
    failed: list[str] = field(default_factory=list)
    retried: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, k: int) -> None:
        period = self.threads / self.rate
        nxt = time.monotonic()
        i = k
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                body = {"features": self.rows[i % len(self.rows)]}
                i += self.threads
                while not self._stop.is_set():
                    try:
                        r = client.post("/v1/predict", json=body)
                    except httpx.TransportError:
                        with self._lock:
                            self.retried += 1
                        self._stop.wait(0.05)
                        continue
                    with self._lock:
                        if r.status_code == 200:
                            self.ok.append((r.json()["prediction_id"], time.time()))
                        else:
                            self.failed.append(f"{r.status_code} {r.text[:200]}")
                    break
                nxt += period
                self._stop.wait(max(0.0, nxt - time.monotonic()))

    def start(self) -> Load:
        for k in range(self.threads):
            t = threading.Thread(target=self._run, args=(k,), daemon=True)
            t.start()
            self._workers.append(t)
        poll(lambda: len(self.ok) >= 20 or None, 60, "the load's first 20 predictions")
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(60)

    def ids(self) -> list[str]:
        with self._lock:
            return [i for i, _ in self.ok]


@contextlib.contextmanager
def load(stack: Stack, rows: list[dict[str, Any]]) -> Iterator[Load]:
    ld = Load(stack.service_url, rows).start()
    try:
        yield ld
    finally:
        ld.stop()


# --- the stack -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    rules = ROOT / "run" / f"faults-rules-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [sys.executable, str(ROOT / "prometheus" / "rules" / "generate.py"), "--overlay", rules],
        check=True,
        capture_output=True,
    )
    options = Options(
        collector=True,
        # two workers: one of them is killed while the other lives
        service_env={**SERVICE_ENV, "INFERWATCH_WORKERS": "2"},
        # short, so that the dead worker's span metrics expire within the case
        collector_env={"OTELCOL_SPANMETRICS_EXPIRATION": f"{SPAN_EXPIRATION_S}s"},
        analysis_interval=ANALYSIS_INTERVAL,
        rules_dir=str(rules),
    )
    try:
        with running_stack(request, "faults", options) as st:
            yield st
    finally:
        import shutil

        shutil.rmtree(rules, ignore_errors=True)


@pytest.fixture(scope="module")
def prom(fault_stack: Stack) -> Prom:
    return Prom(fault_stack.prometheus_url)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    data, _ = generate_transactions(2000, seed=11)
    return data


# --- checks --------------------------------------------------------------------------


def _firing(prom: Prom, alert: str, since: float) -> dict[str, Any] | None:
    """A firing instance of `alert` that became active after `since` (Unix time)."""
    r = prom.http.get("/api/v1/alerts")
    r.raise_for_status()
    for a in r.json()["data"]["alerts"]:
        if a["labels"].get("alertname") != alert or a["state"] != "firing":
            continue
        active = datetime.fromisoformat(a["activeAt"].replace("Z", "+00:00")).timestamp()
        if active >= since - 1:
            return dict(a)
    return None


def wait_alert(prom: Prom, alert: str, since: float, deadline_s: float = 120) -> float:
    """Seconds from `since` until `alert` fires (in the alerts API)."""
    poll(lambda: _firing(prom, alert, since), deadline_s, f"{alert} to fire", interval_s=0.5)
    return time.time() - since


def wait_resolved(prom: Prom, alert: str, deadline_s: float = 120) -> None:
    def clear() -> bool:
        r = prom.http.get("/api/v1/alerts")
        r.raise_for_status()
        return not any(a["labels"].get("alertname") == alert for a in r.json()["data"]["alerts"])

    poll(clear, deadline_s, f"{alert} to resolve", interval_s=0.5)


def hold(t0: float, seconds: float = FAULT_S) -> None:
    """Keep a fault on until `seconds` after `t0` (the fault's configured duration)."""
    poll(lambda: time.time() - t0 >= seconds, seconds + 5, "the fault's duration", interval_s=0.2)


def counted(prom: Prom) -> float:
    return prom.scalar(f'sum({PREDICTIONS}{{job="inferwatch"}})') or 0.0


def telemetry_resumes(prom: Prom, deadline_s: float = 90) -> float:
    """Seconds from now (the fault just ended, the load running) until Prometheus holds a
    prediction count sampled after now that is higher than any sampled before."""
    t0 = time.time()
    before = counted(prom)
    newest = f'{PREDICTIONS}{{job="inferwatch"}}'

    def resumed() -> bool:
        fresh = prom.query(f"{newest} and timestamp({newest}) > {t0:.3f}")
        return sum(float(r["value"][1]) for r in fresh) > 0 and counted(prom) != before

    poll(resumed, deadline_s, "prediction counts sampled after the fault", interval_s=0.5)
    return time.time() - t0


def stored(stack: Stack, ids: list[str]) -> tuple[int, int, set[str]]:
    """(rows, distinct ids, ids missing) of `ids` in the audit table."""
    with psycopg.connect(stack.dsn("postgres")) as conn:
        found = conn.execute(
            "SELECT prediction_id::text FROM predictions WHERE prediction_id = ANY(%s::uuid[])",
            (ids,),
        ).fetchall()
    got = [r[0] for r in found]
    return len(got), len(set(got)), set(ids) - set(got)


def all_stored(stack: Stack, ld: Load, deadline_s: float = 120) -> None:
    ids = ld.ids()
    poll(
        lambda: stored(stack, ids)[:2] == (len(ids), len(ids)),
        deadline_s,
        f"all {len(ids)} prediction ids in Postgres exactly once",
    )


def record(case: str, **figures: Any) -> None:
    figures = {"fault_s": FAULT_S, **figures}
    RESULTS[case] = figures
    print(f"\n[faults] {case}: " + " ".join(f"{k}={v}" for k, v in figures.items()))


def no_failures(ld: Load) -> None:
    assert ld.failed == [], ld.failed[:5]


# --- the cases -----------------------------------------------------------------------


def test_postgres_stopped_then_restarted(
    fault_stack: Stack, prom: Prom, rows: list[dict[str, Any]]
) -> None:
    wait_resolved(prom, "InferwatchAuditSpoolGrowing")  # from an earlier case
    with load(fault_stack, rows) as ld:
        t0 = time.time()
        fault_stack.pg.stop("fast")
        fired = wait_alert(prom, "InferwatchAuditSpoolGrowing", t0, FAULT_S + 60)
        hold(t0)
        fault_stack.pg.start()
        resumed = telemetry_resumes(prom)
    no_failures(ld)
    all_stored(fault_stack, ld)
    record(
        "postgres_stopped",
        requests=len(ld.ok),
        failed=0,
        alert_s=round(fired, 1),
        telemetry_resumed_s=round(resumed, 1),
        stored_once=len(ld.ok),
    )


def test_collector_killed_then_restarted(
    fault_stack: Stack, prom: Prom, rows: list[dict[str, Any]]
) -> None:
    wait_resolved(prom, "InferwatchNoData")  # from an earlier case
    with load(fault_stack, rows) as ld:
        pid = fault_stack.pid("collector")
        assert pid is not None
        t0 = time.time()
        os.killpg(pid, signal.SIGKILL)
        poll(lambda: not pid_alive(pid), 10, "the collector gone")
        fired = wait_alert(prom, "InferwatchNoData", t0, FAULT_S + 60)
        hold(t0)
        fault_stack.start_collector()
        resumed = telemetry_resumes(prom)
    no_failures(ld)
    all_stored(fault_stack, ld)
    record(
        "collector_killed",
        requests=len(ld.ok),
        failed=0,
        alert_s=round(fired, 1),
        telemetry_resumed_s=round(resumed, 1),
        stored_once=len(ld.ok),
    )


def test_postgres_slow_table_locked(
    fault_stack: Stack, prom: Prom, rows: list[dict[str, Any]]
) -> None:
    wait_resolved(prom, "InferwatchAuditSpoolGrowing")  # from an earlier case
    with load(fault_stack, rows) as ld:
        locker = psycopg.connect(fault_stack.dsn("postgres"))
        try:
            t0 = time.time()
            locker.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
            fired = wait_alert(prom, "InferwatchAuditSpoolGrowing", t0, FAULT_S + 60)
            hold(t0)
        finally:
            locker.rollback()
            locker.close()
        resumed = telemetry_resumes(prom)
    no_failures(ld)
    all_stored(fault_stack, ld)
    record(
        "postgres_slow",
        requests=len(ld.ok),
        failed=0,
        alert_s=round(fired, 1),
        telemetry_resumed_s=round(resumed, 1),
        stored_once=len(ld.ok),
    )


def test_collector_unreachable_when_the_service_starts(
    fault_stack: Stack, prom: Prom, rows: list[dict[str, Any]]
) -> None:
    wait_resolved(prom, "InferwatchNoData")  # from an earlier case
    t0 = time.time()
    fault_stack.stop("collector")
    fault_stack.stop("service")
    fault_stack.start_service()  # ready without its telemetry endpoint
    with load(fault_stack, rows) as ld:
        fired = wait_alert(prom, "InferwatchNoData", t0, FAULT_S + 60)
        hold(t0)
        fault_stack.start_collector()
        resumed = telemetry_resumes(prom)
    no_failures(ld)
    all_stored(fault_stack, ld)
    record(
        "collector_unreachable_at_start",
        requests=len(ld.ok),
        failed=0,
        alert_s=round(fired, 1),
        telemetry_resumed_s=round(resumed, 1),
        stored_once=len(ld.ok),
    )


def test_prometheus_restarted(fault_stack: Stack, prom: Prom, rows: list[dict[str, Any]]) -> None:
    with load(fault_stack, rows) as ld:
        before = counted(prom)
        t0 = time.time()
        fault_stack.stop("prometheus")
        hold(t0, min(FAULT_S, 20))  # down; the collector's retries hold its exports
        fault_stack.start_prometheus()
        restart_s = time.time() - t0
        resumed = telemetry_resumes(prom)
        # its rules (the overlay) are back and evaluated: the alerts API answers again
        groups = prom.http.get("/api/v1/rules").json()["data"]["groups"]
        assert {g["name"] for g in groups} >= {"inferwatch.alerts", "inferwatch-analysis"}
        assert counted(prom) > before  # the series kept their history (same TSDB)
    no_failures(ld)
    all_stored(fault_stack, ld)
    record(
        "prometheus_restarted",
        requests=len(ld.ok),
        failed=0,
        down_s=round(restart_s, 1),
        telemetry_resumed_s=round(resumed, 1),
        stored_once=len(ld.ok),
    )


def test_trace_backend_down(fault_stack: Stack, prom: Prom, rows: list[dict[str, Any]]) -> None:
    with load(fault_stack, rows) as ld:
        t0 = time.time()
        fault_stack.stop("jaeger")
        # the collector retries spans for its max_elapsed_time (collector/config.yaml) before
        # it counts them failed: the alert comes after that, whatever FAULT_S is
        fired = wait_alert(prom, "InferwatchCollectorExportFailing", t0, FAULT_S + 150)
        hold(t0)
        fault_stack.start_jaeger()
        resumed = telemetry_resumes(prom)
        # new traces reach Jaeger again
        probe = httpx.post(f"{fault_stack.service_url}/v1/predict", json={"features": rows[0]})
        trace_id = probe.json()["trace_id"]
        poll(
            lambda: httpx.get(f"{fault_stack.jaeger_url}/api/traces/{trace_id}").status_code == 200,
            60,
            "a new trace in Jaeger",
        )
    no_failures(ld)
    all_stored(fault_stack, ld)
    record(
        "trace_backend_down",
        requests=len(ld.ok),
        failed=0,
        alert_s=round(fired, 1),
        telemetry_resumed_s=round(resumed, 1),
        stored_once=len(ld.ok),
    )


def _restart_service(stack: Stack, env: dict[str, str]) -> None:
    stack.stop("service")
    stack.options.service_env = env
    stack.start_service()


def test_spool_disk_full(fault_stack: Stack, prom: Prom, rows: list[dict[str, Any]]) -> None:
    """Postgres down and the spool on a 256 KiB tmpfs: the spool fills, drops are counted
    and logged with their ids, the page alert fires, predictions still succeed."""
    if os.geteuid() != 0:
        pytest.fail("mounting the spool's tmpfs needs root")
    mnt = fault_stack.run_dir / "spool-tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    original = dict(fault_stack.options.service_env)
    log = fault_stack.logs / "service.log"
    log_start = log.stat().st_size
    try:
        _restart_service(fault_stack, {**original, "INFERWATCH_AUDIT_SPOOL_DIR": str(mnt)})
        with load(fault_stack, rows) as ld:
            t0 = time.time()
            dropped_before = prom.scalar(f"sum({DROPPED})") or 0.0
            fault_stack.pg.stop("fast")
            fired = wait_alert(prom, "InferwatchAuditRecordsDropped", t0, FAULT_S + 90)
            hold(t0)
            fault_stack.pg.start()
            resumed = telemetry_resumes(prom)
        no_failures(ld)
        ids = ld.ids()
        poll(lambda: not list(mnt.glob("slot-*/seg-*.log")), 120, "the tmpfs spool replayed")
        with open(log, "rb") as f:
            f.seek(log_start)
            logged = set(DROP_LOG.findall(f.read().decode(errors="replace")))
        assert logged, "nothing was dropped: the tmpfs never filled"

        def only_drops_missing() -> set[str] | None:
            rows_, distinct, missing = stored(fault_stack, ids)
            assert rows_ == distinct, "an audit row stored twice"
            return missing if missing <= logged else None

        missing = poll(only_drops_missing, 60, "every id but the logged drops in Postgres")
        # a drop logged for a record whose request the client saw answered: all of them
        assert missing == logged & set(ids)

        def drops_counted() -> float | None:
            d = (prom.scalar(f"sum({DROPPED})") or 0.0) - dropped_before
            return d if d >= len(logged) else None

        drops = poll(drops_counted, 60, "every logged drop counted in Prometheus")
        assert drops == len(logged)
    finally:
        if not fault_stack.pg.running:
            fault_stack.pg.start()
        _restart_service(fault_stack, original)
        subprocess.run(["umount", str(mnt)], check=False)
    record(
        "spool_disk_full",
        requests=len(ld.ok),
        failed=0,
        alert_s=round(fired, 1),
        dropped=len(logged),
        dropped_answered=len(missing),
        dropped_counted=int(drops),
        telemetry_resumed_s=round(resumed, 1),
    )


def _every_id_stored_once(stack: Stack, ld: Load) -> int:
    """A SIGKILLed process held records in its writer's memory (the queue, batches in
    flight); each was in its journal before the client got its answer, so the slot's next
    owner or an adopter stores every one: nothing lost, nothing twice. The ids' count."""
    ids = ld.ids()

    def settled() -> bool:
        rows_, distinct, missing = stored(stack, ids)
        assert rows_ == distinct, "an audit row stored twice"
        return not missing

    poll(settled, 120, "every answered id in Postgres")
    return len(ids)


def test_service_sigkilled_mid_load_and_restarted(
    fault_stack: Stack, prom: Prom, rows: list[dict[str, Any]]
) -> None:
    wait_resolved(prom, "InferwatchNoData")  # from an earlier case
    log = fault_stack.logs / "service.log"
    log_start = log.stat().st_size
    with load(fault_stack, rows) as ld:
        pid = fault_stack.pid("service")
        assert pid is not None
        t_kill = time.time()
        os.killpg(pid, signal.SIGKILL)
        poll(lambda: not pid_alive(pid), 10, "the service gone")
        fired = wait_alert(prom, "InferwatchNoData", t_kill, FAULT_S + 60)
        hold(t_kill)
        fault_stack.start_service()
        resumed = telemetry_resumes(prom)
    no_failures(ld)
    stored_once = _every_id_stored_once(fault_stack, ld)
    with open(log, "rb") as f:
        f.seek(log_start)
        # the dead workers' journals, replayed by the restarted ones (records already
        # committed included: the replay skips those)
        journaled = sum(map(int, JOURNAL_REPLAY_LOG.findall(f.read().decode(errors="replace"))))
    assert journaled > 0, "no journal replayed: the kill found nothing in memory to test"
    record(
        "service_sigkill",
        requests=len(ld.ok),
        failed=0,
        retried=ld.retried,
        alert_s=round(fired, 1),
        telemetry_resumed_s=round(resumed, 1),
        journal_records_replayed=journaled,
        stored_once=stored_once,
        lost=0,
    )


def _workers(stack: Stack) -> list[int]:
    pid = stack.pid("service")
    assert pid is not None
    out = []
    for p in descendants(pid)[1:]:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes():
                out.append(p)
    return out


def span_metric_instances(prom: Prom, within_s: float = 10.0) -> set[str]:
    """Service processes (``instance``: service.instance.id) whose span metrics the
    collector exported in the last WITHIN_S seconds (it exports every 5 s)."""
    series = f'{SPAN_CALLS}{{job="inferwatch"}}'
    fresh = prom.query(f"count by (instance) (timestamp({series}) > time() - {within_s})")
    return {r["metric"]["instance"] for r in fresh}


def _of_process(instance: str, pid: int) -> bool:
    """Whether service.instance.id INSTANCE is process PID's (telemetry/setup.py names
    each process <host>-<pid>-<random>)."""
    return instance.startswith(f"{socket.gethostname()}-{pid}-")


def _serving_worker(prom: Prom, workers: list[int]) -> int | None:
    """A worker whose span metrics the collector exports, if any."""
    fresh = span_metric_instances(prom)
    return next((w for w in workers if any(_of_process(i, w) for i in fresh)), None)


def test_a_worker_killed_while_the_other_lives(
    fault_stack: Stack, prom: Prom, rows: list[dict[str, Any]]
) -> None:
    """Postgres down so that the worker's records sit in its spool slot; the worker is
    SIGKILLed; once Postgres is back its slot is replayed by a live worker (adoption) or
    by its replacement, never by `inferwatch db replay`."""
    wait_resolved(prom, "InferwatchAuditSpoolGrowing")  # from an earlier case
    log = fault_stack.logs / "service.log"
    log_start = log.stat().st_size
    with load(fault_stack, rows) as ld:
        workers = _workers(fault_stack)
        assert len(workers) == 2, workers
        # kill a worker that serves the load (the kept-alive connections may all sit on
        # one): its span metrics are in Prometheus, its records in its spool slot
        victim = poll(
            lambda: _serving_worker(prom, workers), 60, "span metrics of a serving worker"
        )
        t_pg = time.time()
        fault_stack.pg.stop("fast")
        fired = wait_alert(prom, "InferwatchAuditSpoolGrowing", t_pg, FAULT_S + 60)
        os.kill(victim, signal.SIGKILL)  # its slot holds what it spooled meanwhile
        t_kill = time.time()
        poll(lambda: not pid_alive(victim), 10, "the worker gone")
        t0 = time.time()
        fault_stack.pg.start()
        resumed = telemetry_resumes(prom)
        spool = fault_stack.spool_dir
        poll(lambda: not list(spool.glob("slot-*/seg-*.log")), 60, "spool empty")
        recovered_s = time.time() - t0
        # the collector stops exporting the dead worker's span metrics once they expire,
        # while a live worker's go on

        def dead_expired() -> bool:
            fresh = span_metric_instances(prom)
            return bool(fresh) and not any(_of_process(i, victim) for i in fresh)

        poll(dead_expired, SPAN_EXPIRATION_S + 60, "the dead worker's span metrics expired")
        expired_s = time.time() - t_kill
    no_failures(ld)
    stored_once = _every_id_stored_once(fault_stack, ld)
    with open(log, "rb") as f:
        f.seek(log_start)
        text = f.read().decode(errors="replace")
    adopted = "adopted slot-" in text
    record(
        "worker_killed",
        requests=len(ld.ok),
        failed=0,
        alert_s=round(fired, 1),
        replayed_by="adoption" if adopted else "replacement",
        telemetry_resumed_s=round(resumed, 1),
        stored_once=stored_once,
        lost=0,
        recovery_s=round(recovered_s, 1),
        span_metrics_expired_s=round(expired_s, 1),
    )


def teardown_module() -> None:
    out = ROOT / "run" / "faults-results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=2) + "\n")
