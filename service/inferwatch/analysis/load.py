"""A traffic generator for demos and tests: ``inferwatch load``.

Sends realistic transactions (``inferwatch.inference.data``, the training generator)
to ``/v1/predict`` at a fixed rate, switches to the shifted distribution
(``drift=True``: distance from home and merchant mix) after ``drift_after`` seconds,
and posts the generator's ground-truth labels for a fraction of the predictions to
``/v1/feedback`` after a delay (in batches), so that labels arrive late, as they do.

Bounded: a rate and a duration with hard caps, so at most ``rate * duration``
predictions; and loopback only (it refuses any other host), so it cannot be
pointed at someone else's service by mistake.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import numpy as np

from inferwatch.inference import data

MAX_RATE: Final = 2_000.0
MAX_DURATION_S: Final = 3_600.0
MAX_CONCURRENCY: Final = 64
LABEL_BATCH: Final = 100
_CHUNK: Final = 512


class LoadError(ValueError):
    pass


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if not host:
        raise LoadError(f"no host in {url!r}")
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise LoadError(f"cannot resolve {host!r}: {exc}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_loopback:
            raise LoadError(f"{host!r} resolves to {addr}, not loopback: refused")


@dataclass(frozen=True, slots=True)
class LoadConfig:
    url: str = "http://127.0.0.1:8000"
    rate: float = 50.0  # predictions per second
    duration_s: float = 60.0
    drift_after_s: float | None = None
    label_fraction: float = 0.0
    label_delay_s: float = 2.0
    seed: int = 1
    timeout_s: float = 5.0
    concurrency: int = 1  # requests in flight

    def validate(self) -> None:
        if not 0 < self.rate <= MAX_RATE:
            raise LoadError(f"rate must be in (0, {MAX_RATE:g}]")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise LoadError(f"duration must be in (0, {MAX_DURATION_S:g}] seconds")
        if not 0.0 <= self.label_fraction <= 1.0:
            raise LoadError("label fraction must be in [0, 1]")
        if self.label_delay_s < 0 or self.label_delay_s > 600:
            raise LoadError("label delay must be in [0, 600] seconds")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise LoadError(f"concurrency must be in [1, {MAX_CONCURRENCY}]")
        if self.drift_after_s is not None and self.drift_after_s < 0:
            raise LoadError("drift-after must be >= 0")

    @property
    def total(self) -> int:
        return max(1, int(self.rate * self.duration_s))


@dataclass
class LoadSummary:
    sent: int = 0
    ok: int = 0
    drifted: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    labels_posted: int = 0
    label_errors: int = 0
    positives: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies_s) if self.latencies_s else np.zeros(1)
        return {
            "sent": self.sent,
            "ok": self.ok,
            "errors": dict(self.errors),
            "drifted": self.drifted,
            "labels_posted": self.labels_posted,
            "label_errors": self.label_errors,
            "positives_sent": self.positives,
            "elapsed_s": round(self.elapsed_s, 3),
            "achieved_rate": round(self.sent / self.elapsed_s, 1) if self.elapsed_s else 0.0,
            "client_p50_ms": round(float(np.quantile(lat, 0.5)) * 1e3, 3),
            "client_p99_ms": round(float(np.quantile(lat, 0.99)) * 1e3, 3),
        }


class _Stream:
    """Transactions in chunks from the seeded generator, clean or shifted."""

    def __init__(self, seed: int, drift: bool) -> None:
        self._seed = seed
        self._drift = drift
        self._buf: deque[tuple[dict[str, Any], int]] = deque()
        self._chunk = 0

    def next(self) -> tuple[dict[str, Any], int]:
        if not self._buf:
            rows, labels = data.generate_transactions(
                _CHUNK, seed=self._seed * 100_003 + self._chunk, drift=self._drift
            )
            self._chunk += 1
            self._buf.extend(zip(rows, (int(v) for v in labels), strict=True))
        return self._buf.popleft()


def run_load(
    cfg: LoadConfig,
    *,
    client: httpx.Client | None = None,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    check_host: bool = True,
) -> LoadSummary:
    """Paced open-loop load: request i is due at ``i / rate``; with ``concurrency`` > 1
    up to that many requests are in flight (at most twice that many scheduled), so a
    slow service lowers the achieved rate (reported) instead of piling up requests."""
    cfg.validate()
    if check_host:
        check_loopback(cfg.url)
    own = client is None
    http = client or httpx.Client(
        base_url=cfg.url,
        timeout=cfg.timeout_s,
        limits=httpx.Limits(max_connections=cfg.concurrency),
    )
    rng = np.random.default_rng(cfg.seed)
    clean, shifted = _Stream(cfg.seed, False), _Stream(cfg.seed + 1, True)
    pending: deque[tuple[float, str, int]] = deque()  # (due, prediction_id, label)
    summary = LoadSummary()
    lock = threading.Lock()
    slots = threading.BoundedSemaphore(2 * cfg.concurrency)
    run_tag = f"load-{cfg.seed}-{int(time.time())}"
    labeled = rng.random(cfg.total) < cfg.label_fraction

    def send(i: int, body: dict[str, Any], drifting: bool, label: int) -> None:
        t0 = clock()
        try:
            r = http.post("/v1/predict", json=body)
            pid = str(r.json()["prediction_id"]) if r.status_code == 200 else ""
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            with lock:
                summary.errors[type(exc).__name__] += 1
                summary.sent += 1
            return
        finally:
            slots.release()
        with lock:
            summary.sent += 1
            summary.latencies_s.append(clock() - t0)
            if r.status_code != 200:
                summary.errors[str(r.status_code)] += 1
                return
            summary.ok += 1
            summary.drifted += drifting
            summary.positives += label
            if labeled[i]:
                pending.append((clock() + cfg.label_delay_s, pid, label))

    pool = ThreadPoolExecutor(cfg.concurrency) if cfg.concurrency > 1 else None
    start = clock()
    deadline = start + cfg.duration_s
    try:
        for i in range(cfg.total):
            due = start + i / cfg.rate
            now = clock()
            if now > deadline:
                break
            if due > now:
                sleep(due - now)
            # by the clock, not the schedule: a lagging run still switches on time
            drifting = cfg.drift_after_s is not None and clock() - start >= cfg.drift_after_s
            row, label = (shifted if drifting else clean).next()
            body = {"features": row, "entity": {"type": "transaction", "id": f"{run_tag}-{i}"}}
            slots.acquire()
            if pool is None:
                send(i, body, drifting, label)
            else:
                pool.submit(send, i, body, drifting, label)
            _post_labels(http, pending, lock, clock(), summary)
            on_progress(summary.sent, cfg.total)
        if pool is not None:
            pool.shutdown(wait=True)
            pool = None
        on_progress(summary.sent, cfg.total)
        # the labels still owed: wait for their delay (bounded by it), then post
        while pending:
            wait = pending[0][0] - clock()
            if wait > 0:
                sleep(min(wait, cfg.label_delay_s))
            _post_labels(http, pending, lock, clock(), summary)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        summary.elapsed_s = clock() - start
        if own:
            http.close()
    return summary


def _post_labels(
    http: httpx.Client,
    pending: deque[tuple[float, str, int]],
    lock: threading.Lock,
    now: float,
    summary: LoadSummary,
) -> None:
    while True:
        batch: list[dict[str, Any]] = []
        with lock:
            while pending and len(batch) < LABEL_BATCH and pending[0][0] <= now:
                _, pid, label = pending.popleft()
                batch.append({"prediction_id": pid, "label": label})
        if not batch:
            return
        try:
            r = http.post("/v1/feedback", json={"outcomes": batch})
            ok = r.status_code == 202
        except httpx.HTTPError:
            ok = False
        with lock:
            if ok:
                summary.labels_posted += len(batch)
            else:
                summary.label_errors += len(batch)
