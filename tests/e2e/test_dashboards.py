"""Every dashboard panel returns data from the real stack (no Grafana runs here, so each query
is sent as Grafana would send it: variables set to real values, `$__rate_interval` computed
from the provisioned scrape interval, the Postgres macros expanded).

The module's stack (tests/fixtures/stack.py) gets what an hour of production would give a
panel: prediction traffic with labels and a distribution shift (`inferwatch load`'s
generator), requests the service refuses, a Postgres outage (audit records spooled, then
replayed), and one run of the analysis job as the analyst role (drift and quality gauges;
the drift alert goes pending). Then, per panel query: PromQL targets return at least one
series from `query_range`, the latency heatmap's query returns exemplars whose trace ids are
audit rows, SQL targets return rows as the analyst, variable queries return the model, and
every metric name a panel uses is a recording rule or a series the stack emits, with the
model labels the linter assumed.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import promql_parser as pp
import psycopg
import pytest
import yaml

from grafana import lint
from grafana.boards import common
from inferwatch.analysis.drift import DriftThresholds
from inferwatch.analysis.load import LoadConfig, run_load
from inferwatch.inference.data import generate_transactions
from inferwatch.telemetry import instruments as names
from stack.launch import Stack
from stack.procs import ROOT, poll, venv_bin
from tests.fixtures.stack import Prom

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

BOARDS = {
    p.name: lint.load_board(p) for p in sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
}
SCRAPE = timedelta(
    seconds=pp.parse_duration(
        yaml.safe_load(
            (ROOT / "grafana" / "provisioning" / "datasources" / "inferwatch.yaml").read_text()
        )["datasources"][0]["jsonData"]["timeInterval"]
    ).total_seconds()
)
STEP = timedelta(seconds=15)  # $__interval of a 1-hour panel ~240 points wide, as Grafana picks
# counters that exist only once something failed: no run of a healthy stack makes them, so
# their panels query them `... or on() vector(0)` (checked below)
FAILURE_ONLY = re.compile(
    rf"^({common.prom(names.AUDIT_DROPPED)}|otelcol_exporter_(send|enqueue)_failed_\w+)$"
)


def _targets(kind: str) -> Iterator[Any]:
    for board, data in BOARDS.items():
        for panel in lint.panels(data):
            targets = lint.prometheus_targets(panel) if kind == "prom" else lint.sql_targets(panel)
            for t in targets:
                yield pytest.param(panel, t, id=f"{board}:{panel['id']}:{t['refId']}")


@dataclass(frozen=True)
class Live:
    """What the traffic fixture produced: the model and the time range to query."""

    model_name: str
    model_version: str
    start: datetime

    @property
    def variables(self) -> dict[str, list[str]]:
        return {common.MODEL_NAME: [self.model_name], common.MODEL_VERSION: [self.model_version]}


def _present(prom: Prom, expr: str) -> bool:
    return bool(prom.query(expr))


def _present_check(prom: Prom, expr: str) -> Callable[[], bool]:
    return lambda: _present(prom, expr)


@pytest.fixture(scope="module")
def live(stack: Stack, prom: Prom, client: httpx.Client) -> Live:
    start = datetime.now(UTC)
    model = client.get("/v1/model").json()
    # predictions with labels, the last two thirds from the shifted distribution: enough
    # rows for the analysis job's minimum per feature (DriftThresholds.min_rows, 1000)
    load = run_load(
        LoadConfig(
            url=stack.service_url,
            rate=150,
            duration_s=12,
            drift_after_s=4,
            label_fraction=0.3,
            label_delay_s=0.5,
            concurrency=4,
        )
    )
    # every request answered; the generator may send fewer than rate x duration on a busy
    # 2-core host, but never fewer than the drift verdicts need
    assert load.ok == load.sent >= DriftThresholds().min_rows, load.as_dict()
    # input the service refuses (the rejected counter, the 4xx ratio)
    for _ in range(5):
        assert client.post("/v1/predict", json={"features": {"no_such": 1}}).status_code == 422
    # Postgres away: the audit writer spools, then replays once it is back
    rows = iter(generate_transactions(200, seed=1234)[0])
    spooled = common.prom(names.AUDIT_SPOOLED)

    def predict_then_spooled() -> bool:
        r = client.post("/v1/predict", json={"features": next(rows)})
        assert r.status_code == 200, r.text  # Postgres away never fails a prediction
        return _present(prom, f"{spooled} > 0")

    stack.stop("postgres")
    poll(predict_then_spooled, 120, "audit records spooled while Postgres is down", interval_s=1)
    stack.start_postgres()
    replayed = common.prom(names.AUDIT_REPLAYED)
    poll(_present_check(prom, f"{replayed} > 0"), 120, "spooled audit records replayed")
    # the analysis job, once, as the analyst, exporting to the stack's collector
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stack.ports.otlp_http}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    job = subprocess.run(
        [
            str(venv_bin("inferwatch")),
            "analysis-job",
            "--once",
            "--model-name",
            model["name"],
            "--model-version",
            model["version"],
            "--dsn",
            stack.dsn("analyst"),
            "--quality-window",
            "1d",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    mv = f'model_version="{model["version"]}"'
    for expr, what in (
        (f"{common.prom(names.DRIFT_DATASET)}{{{mv}}} == 1", "the dataset drift verdict"),
        ('ALERTS{alertname="InferwatchFeatureDriftSustained"}', "the drift alert pending"),
        ("inferwatch:inference_latency_budget_remaining:ratio", "the SLO-window rules"),
        ("inferwatch:http_errors_window_history:ratio", "the SLO-window history"),
    ):
        poll(_present_check(prom, expr), 150, what)
    return Live(model["name"], model["version"], start)


def _range(live: Live) -> tuple[float, float]:
    """From a minute before the traffic to now, with now itself an evaluation step:
    query_range evaluates at start + k * step <= end, so a series that appeared within
    the last step (an alert the fixture just saw go pending) is seen only at `end`."""
    end = time.time()
    step = STEP.total_seconds()
    steps = math.ceil((end - (live.start.timestamp() - 60)) / step)
    return end - steps * step, end


def _promql(expr: str, live: Live) -> str:
    start, end = _range(live)
    return lint.interpolate_promql(
        expr,
        live.variables,
        interval=STEP,
        rate_interval=lint.rate_interval(STEP, SCRAPE),
        range_=timedelta(seconds=end - start),
    )


@pytest.mark.parametrize(("panel", "target"), list(_targets("prom")))
def test_promql_target_returns_series(
    prom: Prom, live: Live, panel: dict[str, Any], target: dict[str, Any]
) -> None:
    start, end = _range(live)
    query = _promql(str(target["expr"]), live)
    r = prom.http.get(
        "/api/v1/query_range",
        params={"query": query, "start": start, "end": end, "step": STEP.total_seconds()},
    )
    assert r.status_code == 200, r.text
    series = r.json()["data"]["result"]
    print(f"\n[dashboards] {panel['title']} {target['refId']}: {len(series)} series")
    assert series, f"no series for {query}"


@pytest.mark.parametrize(("panel", "target"), list(_targets("sql")))
def test_sql_target_returns_rows_as_the_analyst(
    stack: Stack, live: Live, panel: dict[str, Any], target: dict[str, Any]
) -> None:
    sql = lint.interpolate_sql(
        str(target["rawSql"]),
        live.variables,
        start=live.start - timedelta(hours=1),
        end=datetime.now(UTC) + timedelta(minutes=1),
        interval=STEP,
    )
    with psycopg.connect(stack.dsn("analyst")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("inferwatch_analyst",)
        rows = conn.execute(sql.encode()).fetchall()
    print(f"\n[dashboards] {panel['title']} {target['refId']}: {len(rows)} rows")
    assert rows, f"no rows for {sql}"
    if target["format"] == "time_series":
        assert all(r[0] is not None and r[-1] is not None for r in rows)


def test_latency_heatmap_returns_exemplars_whose_traces_are_audit_rows(
    stack: Stack, prom: Prom, live: Live
) -> None:
    (heatmap,) = [p for b in BOARDS.values() for p in lint.panels(b) if p["type"] == "heatmap"]
    (target,) = heatmap["targets"]
    assert target["exemplar"] is True
    start, end = _range(live)
    r = prom.http.get(
        "/api/v1/query_exemplars",
        params={"query": _promql(str(target["expr"]), live), "start": start, "end": end},
    )
    r.raise_for_status()
    ids = {
        e["labels"][common.EXEMPLAR_TRACE_LABEL]
        for s in r.json()["data"]
        for e in s["exemplars"]
        if common.EXEMPLAR_TRACE_LABEL in e["labels"]
    }
    assert ids, "no exemplar carries the trace id label the Prometheus datasource links by"
    with psycopg.connect(stack.dsn("analyst")) as conn:
        found = conn.execute(
            "SELECT count(DISTINCT trace_id) FROM predictions WHERE trace_id = ANY(%s)",
            (sorted(ids),),
        ).fetchone()
    print(f"\n[dashboards] heatmap exemplars: {len(ids)} trace ids, {found} in the audit table")
    assert found is not None
    assert found[0] > 0


def test_variable_queries_return_the_served_model(prom: Prom, live: Live) -> None:
    for board, data in BOARDS.items():
        for v in lint.variables(data):
            if v["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", str(v["query"]))
            assert m, f"{board}: ${v['name']} is not a label_values() query"
            match = _promql(m[1], live)
            r = prom.http.get(f"/api/v1/label/{m[2]}/values", params={"match[]": match})
            r.raise_for_status()
            want = live.variables[v["name"]][0]
            assert want in r.json()["data"], f"{board}: ${v['name']} misses {want}"


def _names_used() -> dict[str, set[str]]:
    """Every metric name (or `__name__` regex) a panel query selects -> the queries."""
    out: dict[str, set[str]] = {}
    sentinels = {common.MODEL_NAME: "x", common.MODEL_VERSION: "x"}
    for data in BOARDS.values():
        for panel in lint.panels(data):
            for t in lint.prometheus_targets(panel):
                expr = str(t["expr"])
                tree = pp.parse(
                    lint.interpolate_promql(
                        expr,
                        {k: [v] for k, v in sentinels.items()},
                        interval=STEP,
                        rate_interval=STEP,
                        range_=STEP,
                    )
                )
                for node, _ in lint.walk(tree):
                    if isinstance(node, pp.VectorSelector):
                        _, label = lint.selected_names(node, ())
                        out.setdefault(label, set()).add(expr)
    return out


def test_every_metric_a_panel_names_is_a_rule_or_a_live_series(prom: Prom, live: Live) -> None:
    """The contract every peer's dashboards broke after a rename: each name a panel uses is
    a recording rule of prometheus/rules/ or a series the running stack emits (a `__name__`
    regex: at least one), failure-only counters aside (queried with a zero fallback)."""
    present = prom.metric_names()
    rules = lint.known_series() - {common.prom(n) for n in names.METRICS}
    missing, unguarded, failure_only = [], [], []
    used = _names_used()
    for label, queries in sorted(used.items()):
        regex = re.fullmatch(r'__name__=~"(.+)"', label)
        matched = {n for n in present if re.fullmatch(regex[1], n)} if regex else {label} & present
        if matched:
            continue
        if not regex and label in rules:
            missing.append(f"{label}: a recording rule Prometheus has not recorded")
            continue
        pattern = regex[1] if regex else label
        if FAILURE_ONLY.match(pattern.replace("(_total)?", "")):
            failure_only.append(label)
            unguarded += [q for q in queries if "or on() vector(0)" not in q]
            continue
        missing.append(label)
    print(f"\n[dashboards] {len(used)} names used; absent until a failure: {failure_only}")
    assert missing == []
    assert unguarded == []


def test_model_labels_the_linter_assumes_are_the_live_ones(prom: Prom, live: Live) -> None:
    """The model-filter rule demands a filter per model label a series carries
    (common.model_labels); the live series say which they carry."""
    model = {common.MODEL_NAME, common.MODEL_VERSION}
    checked = []
    for label in _names_used():
        regex = re.fullmatch(r'__name__=~"(.+)"', label)
        if not (regex[1] if regex else label).startswith("inferwatch"):
            continue
        match = f"{{{label}}}" if regex else label
        r = prom.http.get("/api/v1/series", params={"match[]": match})
        r.raise_for_status()
        for s in r.json()["data"]:
            carried = model & set(s)
            assert carried == set(common.model_labels(s["__name__"]) or ()), s
            checked.append(s["__name__"])
    print(f"\n[dashboards] model labels checked on {len(set(checked))} series names")
    assert checked
