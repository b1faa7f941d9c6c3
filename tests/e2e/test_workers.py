"""End to end with two worker processes (`INFERWATCH_WORKERS=2`): the whole native stack,
N predictions over fresh and keep-alive connections, and every one of them counted exactly
once, whichever worker served it:

- Prometheus: the predictions counter and the inference histogram's sample count, summed
  over the workers' series, are exactly N; the series carry two `instance` values (each
  worker's `service.instance.id`), each with some of the N;
- Postgres: exactly N audit rows, one per prediction id the responses returned.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from inferwatch.inference.data import generate_transactions
from inferwatch.telemetry import instruments as names
from stack.launch import Options, Stack
from stack.procs import poll
from tests.fixtures.stack import ANALYSIS_INTERVAL, Prom, running_stack

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

N = 200
PREDICTIONS = names.prometheus_name(names.PREDICTIONS)
HIST = names.prometheus_name(names.INFERENCE_DURATION)


@pytest.fixture(scope="module")
def two_workers(request: pytest.FixtureRequest) -> Iterator[Stack]:
    options = Options(
        collector=True,
        service_env={"INFERWATCH_ENVIRONMENT": "test", "INFERWATCH_WORKERS": "2"},
        analysis_interval=ANALYSIS_INTERVAL,
    )
    with running_stack(request, "e2e-workers", options) as st:
        yield st


def send(url: str, n: int) -> list[str]:
    """N predictions: half on a fresh connection each, half over four keep-alive
    connections used by four threads at once; the prediction ids returned."""
    rows, _ = generate_transactions(n, seed=5)
    half = n // 2

    def fresh(features: dict[str, object]) -> str:
        r = httpx.post(f"{url}/v1/predict", json={"features": features}, timeout=60)
        assert r.status_code == 200, r.text
        return str(r.json()["prediction_id"])

    def keep_alive(chunk: list[dict[str, object]]) -> list[str]:
        out = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for features in chunk:
                r = client.post("/v1/predict", json={"features": features})
                assert r.status_code == 200, r.text
                out.append(str(r.json()["prediction_id"]))
        return out

    ids = [fresh(f) for f in rows[:half]]
    chunks = [rows[half + i :: 4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        for chunk_ids in pool.map(keep_alive, chunks):
            ids.extend(chunk_ids)
    return ids


def test_two_workers_count_every_prediction_exactly_once(two_workers: Stack) -> None:
    prom = Prom(two_workers.prometheus_url)
    ids = send(two_workers.service_url, N)
    assert len(set(ids)) == N

    def total(expr: str) -> float | None:
        value = prom.scalar(expr)
        return value if value is not None and value >= N else None

    # >= N first, then == N: a count that overshoots fails here, not at the deadline
    assert poll(lambda: total(f"sum({PREDICTIONS})"), 60, f"{N} predictions counted") == N
    samples = f"sum(histogram_count({HIST}))"
    assert poll(lambda: total(samples), 60, f"{N} histogram samples") == N

    per_worker = {
        r["metric"]["instance"]: float(r["value"][1])
        for r in prom.query(f"sum by (instance) ({PREDICTIONS})")
    }
    assert len(per_worker) == 2, per_worker  # each worker's service.instance.id
    assert all(v > 0 for v in per_worker.values()), per_worker
    assert sum(per_worker.values()) == N

    def audit_rows() -> tuple[int, int] | None:
        with psycopg.connect(two_workers.dsn("analyst")) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT prediction_id) FROM predictions"
            ).fetchone()
        assert row is not None
        return (int(row[0]), int(row[1])) if row[0] >= N else None

    assert poll(audit_rows, 60, f"{N} audit rows") == (N, N)
    with psycopg.connect(two_workers.dsn("analyst")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM predictions WHERE prediction_id = ANY(%s::uuid[])", (ids,)
        ).fetchone()
    assert row == (N,)
