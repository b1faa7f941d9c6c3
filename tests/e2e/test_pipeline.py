"""End to end through the real pipeline: service -> OTLP -> collector -> Prometheus (+ traces
to Jaeger, + audit rows in Postgres).

The tests of this module share one stack; each one sends the traffic it needs (the
module's first N predictions come from a fixture) and counts against the service process
that served it, so each passes alone (`-k`) and in any order: predictions are counted
exactly, their P99 matches the exact one, their spans and an exemplar's trace id are in
Jaeger, freshness is measured, every metric name the rules use exists, the P99 alert's
expression fires under injected latency and recovers, and a collector outage neither fails
nor slows predictions while metrics resume after it. Measurements go to
run/e2e-results.json (and stdout with -s).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from inferwatch.inference.data import generate_transactions
from inferwatch.telemetry import instruments as names
from stack.launch import Stack
from stack.procs import ROOT, poll
from tests.fixtures.stack import SERVICE_ENV, Jaeger, Prom, span_tags, trace_id_hex

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

N = 600
HIST = names.prometheus_name(names.INFERENCE_DURATION)
SLO = yaml.safe_load((ROOT / "prometheus" / "slo.yml").read_text())
THRESHOLD_S = float(SLO["latency"]["threshold_seconds"])
RESULTS: dict[str, Any] = {}


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "prometheus" / "rules" / "inferwatch.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _alert_expr(name: str) -> str:
    return str(next(r["expr"] for r in _rules() if r.get("alert") == name))


@dataclass
class Traffic:
    """Sends predictions; keeps the prediction ids the current service process served."""

    client: httpx.Client
    rows: list[dict[str, Any]]
    next_row: int = 0  # predictions sent by this module, to any process
    process_ids: list[str] = field(default_factory=list)

    @property
    def served_by_process(self) -> int:
        return len(self.process_ids)

    def send(self, n: int, threads: int = 4) -> list[tuple[dict[str, Any], float]]:
        batch = [self.rows[(self.next_row + i) % len(self.rows)] for i in range(n)]
        self.next_row += n

        def one(features: dict[str, Any]) -> tuple[dict[str, Any], float]:
            t0 = time.perf_counter()
            r = self.client.post("/v1/predict", json={"features": features})
            took = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            return r.json(), took

        with ThreadPoolExecutor(threads) as pool:
            out = list(pool.map(one, batch))
        self.process_ids.extend(resp["prediction_id"] for resp, _ in out)
        return out


@pytest.fixture(scope="module")
def traffic(client: httpx.Client) -> Traffic:
    rows, _ = generate_transactions(2000, seed=7)
    return Traffic(client, rows)


@pytest.fixture(scope="module")
def model_version(client: httpx.Client) -> str:
    version: str = client.get("/v1/model").json()["version"]
    return version


@pytest.fixture(scope="module")
def first_n(traffic: Traffic) -> list[dict[str, Any]]:
    return [resp for resp, _ in traffic.send(N)]


def _current_instance(prom: Prom, mv: str) -> str | None:
    """The instance label of the series most recently written (the current service process)."""
    res = prom.query(f'timestamp({HIST}{{model_version="{mv}"}})')
    if not res:
        return None
    return str(max(res, key=lambda r: float(r["value"][1]))["metric"]["instance"])


def _current_instance_count(prom: Prom, mv: str) -> float | None:
    """histogram count of the current service process's series."""
    inst = _current_instance(prom, mv)
    if inst is None:
        return None
    return prom.scalar(f'sum(histogram_count({HIST}{{model_version="{mv}",instance="{inst}"}}))')


def test_histogram_count_reaches_exactly_n(
    prom: Prom, traffic: Traffic, first_n: list[dict[str, Any]], model_version: str
) -> None:
    assert all(r["model_version"] == model_version for r in first_n)
    served = traffic.served_by_process  # N, unless another test ran first
    poll(
        lambda: _current_instance_count(prom, model_version) == served,
        60,
        f"histogram count == {served}",
    )
    inst = _current_instance(prom, model_version)
    predictions = names.prometheus_name(names.PREDICTIONS)
    preds = f'sum({predictions}{{model_version="{model_version}",instance="{inst}"}})'
    poll(lambda: prom.scalar(preds) == served, 30, f"predictions counter == {served}")


def test_the_sdk_span_processor_counter_reaches_prometheus_and_drops_nothing(
    prom: Prom, first_n: list[dict[str, Any]]
) -> None:
    """The SDK's own span-processor counter (on in the launcher's environment) arrives under
    the name the dashboard, the alert and the runbook query: at least one span per
    prediction handled, none dropped; and the micro-batch metrics arrive too."""
    processed = names.prometheus_name(names.SDK_SPANS_PROCESSED)
    ok = f'sum({processed}{{error_type=""}})'
    poll(lambda: (prom.scalar(ok) or 0) >= N, 60, f"spans processed >= {N}")
    assert prom.scalar(f'sum({processed}{{error_type!=""}})') in (None, 0)
    for name in (
        names.MICROBATCH_SIZE,
        names.MICROBATCH_DURATION,
        names.INFERENCE_QUEUE_DURATION,
        names.MICROBATCH_QUEUE_DEPTH,
    ):
        series = names.prometheus_name(name)

        def present(query: str = f"count({series})") -> bool:
            return (prom.scalar(query) or 0) >= 1

        poll(present, 30, f"{series} in Prometheus")


def test_p99_from_prometheus_within_5_percent_of_exact(
    stack: Stack, prom: Prom, traffic: Traffic, first_n: list[dict[str, Any]], model_version: str
) -> None:
    """Every prediction of the current service process (the first N, unless another test
    ran first): the P99 of their latencies in the audit table vs Prometheus' P99."""
    import psycopg

    ids = list(traffic.process_ids)
    n = len(ids)

    def latencies() -> list[float] | None:
        with psycopg.connect(stack.dsn("postgres")) as conn:
            rows = conn.execute(
                "SELECT latency_s FROM predictions WHERE prediction_id = ANY(%s::uuid[])", (ids,)
            ).fetchall()
        return [float(r[0]) for r in rows] if len(rows) == n else None

    exact_lat = poll(latencies, 60, f"{n} audit rows with the service's measured latency")
    exact = float(np.percentile(exact_lat, 99))
    poll(lambda: _current_instance_count(prom, model_version) == n, 60, "all samples in Prometheus")
    inst = _current_instance(prom, model_version)
    hist = f'{HIST}{{model_version="{model_version}",instance="{inst}"}}'
    got = prom.scalar(f"histogram_quantile(0.99, sum({hist}))")
    assert got is not None
    err = abs(got - exact) / exact
    RESULTS["p99"] = {"exact_s": exact, "prometheus_s": got, "relative_error": err, "n": n}
    print(
        f"\n[e2e] P99 exact {exact * 1e3:.4f} ms, Prometheus {got * 1e3:.4f} ms, "
        f"error {err:.2%} (n={n})"
    )
    assert err <= 0.05


def test_spans_reach_jaeger_with_prediction_attributes(
    jaeger: Jaeger, first_n: list[dict[str, Any]], model_version: str
) -> None:
    """Every prediction's span, looked up in Jaeger by the trace id of its response."""
    want = {r["prediction_id"]: r for r in first_n}
    by_pid: dict[str, dict[str, Any]] = {}

    def found() -> dict[str, dict[str, Any]] | None:
        for pid, resp in want.items():
            if pid in by_pid:
                continue
            for span in jaeger.spans(resp["trace_id"]) or ():
                tags = span_tags(span)
                if str(tags.get(names.ATTR_PREDICTION_ID)) == pid:
                    by_pid[pid] = {**tags, "_trace_id": trace_id_hex(span["traceID"])}
        return by_pid if len(by_pid) == len(want) else None

    spans = poll(found, 60, f"{N} prediction spans in Jaeger", interval_s=1)
    for pid, resp in want.items():
        attrs = spans[pid]
        assert attrs["_trace_id"] == resp["trace_id"]
        assert attrs[names.ATTR_MODEL_VERSION] == model_version
        assert attrs[names.ATTR_MODEL_NAME] == resp["model_name"]
        assert str(attrs[names.ATTR_PREDICTION_CLASS]) == str(resp["prediction"])
        assert float(attrs[names.ATTR_PROBABILITY]) == pytest.approx(resp["probability"])


def test_exemplar_trace_id_is_among_exported_spans(
    jaeger: Jaeger, prom: Prom, first_n: list[dict[str, Any]], model_version: str
) -> None:
    def exemplar_ids() -> set[str] | None:
        data = prom.exemplars(f'{HIST}{{model_version="{model_version}"}}')
        ids = {
            e["labels"]["trace_id"]
            for s in data
            for e in s["exemplars"]
            if "trace_id" in e["labels"]
        }
        return ids or None

    ids = poll(exemplar_ids, 60, "exemplars with trace ids on the latency histogram")
    response_ids = {r["trace_id"] for r in first_n}
    assert ids & response_ids, "exemplar trace ids are not those of our predictions"
    # no exemplar trace id among the exported spans: a timeout here
    poll(lambda: any(jaeger.spans(i) for i in ids), 30, "an exemplar's trace in Jaeger")


def test_freshness_response_to_prometheus(
    prom: Prom, traffic: Traffic, first_n: list[dict[str, Any]], model_version: str
) -> None:
    delays = []
    for _ in range(5):
        before = poll(lambda: _current_instance_count(prom, model_version), 30, "a count")
        traffic.send(1, threads=1)
        t0 = time.monotonic()
        target = before + 1

        def arrived(target: float = target) -> bool:
            return (_current_instance_count(prom, model_version) or 0) >= target

        poll(arrived, 30, "the new prediction in Prometheus", interval_s=0.05)
        delays.append(time.monotonic() - t0)
    RESULTS["freshness_s"] = {
        "median": statistics.median(delays),
        "max": max(delays),
        "samples": delays,
    }
    print(
        f"\n[e2e] freshness (response -> visible in Prometheus): median "
        f"{statistics.median(delays):.2f}s, max {max(delays):.2f}s"
    )
    assert max(delays) < 15


# names (and name regexes) the rules use that exist only once something went wrong
ONLY_ON_FAILURE = re.compile(
    rf"^({names.prometheus_name(names.AUDIT_DROPPED)}|{names.prometheus_name(names.AUDIT_SPOOLED)}"
    r"|otelcol_exporter_(send|enqueue)_failed_.*"
    r"|otelcol_receiver_refused_log_records.*)$"
)


def test_every_metric_name_in_the_rules_exists(
    prom: Prom, client: httpx.Client, first_n: list[dict[str, Any]]
) -> None:
    """The contract: every name a rule uses is emitted by the service or the collector."""
    # the rejected-requests counter exists once a request was rejected (the shedding alert)
    assert client.post("/v1/predict", json={"features": {}}).status_code == 422
    rejected = names.prometheus_name(names.REJECTED_REQUESTS)

    def arrived() -> bool:
        present = prom.metric_names()
        return rejected in present and any(
            n.startswith("otelcol_receiver_refused_") for n in present
        )

    poll(arrived, 60, "collector self-metrics and the rejected-requests counter in Prometheus")
    present = prom.metric_names()
    names_used: set[str] = set()
    patterns_used: set[str] = set()
    for rule in _rules():
        expr = rule["expr"]
        patterns_used |= set(re.findall(r'__name__=~"([^"]+)"', expr))
        plain = re.sub(r'__name__=~"[^"]*"', "", expr)
        names_used |= set(
            re.findall(r"\b((?:inferwatch|http_server|otelcol|target)_[a-z_]+)\b", plain)
        )
    missing = sorted(
        p
        for p in patterns_used
        if not ONLY_ON_FAILURE.match(p) and not any(re.fullmatch(p, n) for n in present)
    )
    for name in sorted(n for n in names_used if not ONLY_ON_FAILURE.match(n)):
        if name.endswith(("_bucket", "_count")) and name.rsplit("_", 1)[0] in present:
            continue  # classic fallback of a native histogram (the no-collector path)
        if name not in present:
            missing.append(name)
    assert missing == [], f"rules use names Prometheus never received: {missing}"


def test_every_rule_evaluates_without_error(prom: Prom, first_n: list[dict[str, Any]]) -> None:
    """Prometheus' own verdict on each loaded rule, against live data (promtool cannot see
    e.g. 'vector cannot contain metrics with the same labelset' from real series)."""

    def rules() -> list[dict[str, Any]] | None:
        r = prom.http.get("/api/v1/rules")
        r.raise_for_status()
        out = [rule for g in r.json()["data"]["groups"] for rule in g["rules"]]
        evaluated = all(rule.get("health") != "unknown" for rule in out)
        return out if out and evaluated else None

    loaded = poll(rules, 90, "every rule evaluated at least once")
    bad = {r["name"]: r.get("lastError") for r in loaded if r.get("health") != "ok"}
    assert bad == {}
    assert {r["name"] for r in loaded} >= {r.get("alert") or r.get("record") for r in _rules()}


def _restart_service(
    stack: Stack, prom: Prom, traffic: Traffic, model_version: str, env: dict[str, str]
) -> None:
    """Restart the service with `env`, and wait until its new series is in Prometheus.

    rate() counts a series' increase from its first sample on: observations made before a
    new process's first export never show in rate() (they are in the first cumulative
    value). So a few predictions are sent and seen first; the test's own come after.
    """
    stack.stop("service")
    stack.options.service_env = {**SERVICE_ENV, **env}
    stack.start_service()
    traffic.process_ids = []
    traffic.send(3, threads=1)
    poll(
        lambda: _current_instance_count(prom, model_version) == 3,
        60,
        "the restarted service's first samples in Prometheus",
    )


def test_injected_latency_makes_the_p99_alert_expression_fire_then_recover(
    stack: Stack, prom: Prom, traffic: Traffic, first_n: list[dict[str, Any]], model_version: str
) -> None:
    expr = _alert_expr("InferwatchInferenceP99High")
    assert prom.query(expr) == [], "P99 alert expression true before any injection"
    slow = 2 * THRESHOLD_S
    _restart_service(
        stack, prom, traffic, model_version, {"INFERWATCH_INJECT_LATENCY_S": str(slow)}
    )
    # 2.5% of every fast prediction so far (the first N: 15) at least, wherever the 5m
    # window starts: the P99 lands among the slow ones
    k = max(15, int(0.025 * traffic.next_row))
    took = [t for _, t in traffic.send(k, threads=4)]
    assert min(took) >= slow
    fired = poll(lambda: prom.query(expr) or None, 90, "P99 alert expression above threshold")
    value = float(fired[0]["value"][1])
    assert value > THRESHOLD_S
    t_fire = time.monotonic()
    # injection off again; enough fast predictions push the slow ones below 1% of the window
    _restart_service(stack, prom, traffic, model_version, {})
    traffic.send(200 * k, threads=4)
    poll(lambda: prom.query(expr) == [], 120, "P99 alert expression back under threshold")
    RESULTS["p99_alert"] = {"fired_value_s": value, "recovered_after_s": time.monotonic() - t_fire}


def test_collector_outage_neither_fails_nor_slows_predictions_and_metrics_resume(
    stack: Stack, prom: Prom, traffic: Traffic, model_version: str
) -> None:
    baseline = [t for _, t in traffic.send(300, threads=1)]
    stack.stop("collector")
    during = [t for _, t in traffic.send(300, threads=1)]  # every one asserted 200 inside
    p50_b, p50_d = statistics.median(baseline), statistics.median(during)
    p99_b = float(np.percentile(baseline, 99))
    p99_d = float(np.percentile(during, 99))
    RESULTS["collector_outage"] = {
        "p50_before_s": p50_b,
        "p50_during_s": p50_d,
        "p99_before_s": p99_b,
        "p99_during_s": p99_d,
    }
    print(
        f"\n[e2e] collector down: p50 {p50_b * 1e3:.2f} -> {p50_d * 1e3:.2f} ms, "
        f"p99 {p99_b * 1e3:.2f} -> {p99_d * 1e3:.2f} ms"
    )
    assert p50_d <= p50_b * 1.5 + 0.001
    assert p99_d <= p99_b * 2 + 0.005
    stack.start_collector()
    served = traffic.served_by_process
    poll(
        lambda: _current_instance_count(prom, model_version) == served,
        90,
        f"metrics resume: the current process's count reaches {served}",
    )


def teardown_module() -> None:
    out = ROOT / "run" / "e2e-results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=2) + "\n")
