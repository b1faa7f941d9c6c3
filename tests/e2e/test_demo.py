"""The stack as one product, after the demo's traffic on the native stack.

The module's stack (Postgres, Jaeger, collector, Prometheus, service, analysis job) gets
what scripts/run sends: `inferwatch load` with 30% of the predictions labeled and the
distribution shifted after half the time. Then:

- the pivot metric -> trace -> audit row: an exemplar's trace id from Prometheus
  (`/api/v1/query_exemplars` on the inference histogram), that trace from Jaeger
  (`GET /api/traces/{id}`), the prediction id on its span, and that row of the audit table,
  read as the analyst role, with the same trace and span ids (the ids walked are printed);
- the drift phase makes the shipped drift alert (prometheus/rules/analysis.yml, its `for:`
  untouched) pending or firing, for the shifted features only;
- stack/summary.py, run as scripts/run runs it, prints every section with values from the
  live stack, commands that work when pasted, and no password.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import time
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from inferwatch.analysis.load import LoadConfig, LoadSummary, run_load
from inferwatch.telemetry import instruments as names
from stack.launch import STACK_DIR, Stack, read_env_file
from stack.postgres import DB_NAME, ROLE_USERS
from stack.procs import ROOT, poll
from tests.fixtures.stack import Jaeger, Prom, span_tags, trace_id_hex

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

HIST = names.prometheus_name(names.INFERENCE_DURATION)
# 2000 predictions, the second half shifted: the drift window holds more than the job's
# min_rows (1000) of each feature, as the demo's 20/s for 300 s does
RATE, DURATION_S = 100.0, 20.0
# what the load generator shifts (inferwatch.inference.data, drift=True)
SHIFTED = {"distance_from_home_km", "merchant_category"}


def _drift_alert_name() -> str:
    """The shipped alert on the analysis job's per-feature drift gauge."""
    doc = yaml.safe_load((ROOT / "prometheus" / "rules" / "analysis.yml").read_text())
    gauge = names.prometheus_name(names.DRIFT_DETECTED)
    (name,) = [r["alert"] for g in doc["groups"] for r in g["rules"] if gauge in r.get("expr", "")]
    return str(name)


@pytest.fixture(scope="module")
def demo(stack: Stack) -> tuple[LoadSummary, float]:
    """The demo's traffic; returns its summary and the time it ended."""
    cfg = LoadConfig(
        url=stack.service_url,
        rate=RATE,
        duration_s=DURATION_S,
        drift_after_s=DURATION_S / 2,
        label_fraction=0.3,
        concurrency=4,
    )
    summary = run_load(cfg)
    # every request answered; on a busy host the generator may lag its schedule (it then
    # sends fewer, and switches to the shifted rows by the clock, not by count)
    assert summary.ok == summary.sent >= int(RATE * DURATION_S) // 2, summary.as_dict()
    assert 0.4 <= summary.drifted / summary.sent <= 0.6, summary.as_dict()
    return summary, time.time()


@pytest.fixture(scope="module")
def model_version(client: httpx.Client) -> str:
    version: str = client.get("/v1/model").json()["version"]
    return version


def test_pivot_from_an_exemplar_to_its_trace_to_its_audit_row(
    stack: Stack, prom: Prom, jaeger: Jaeger, demo: tuple[LoadSummary, float], model_version: str
) -> None:
    def newest_exemplar() -> dict[str, Any] | None:
        data = prom.exemplars(f'{HIST}{{model_version="{model_version}"}}')
        found = [e for s in data for e in s["exemplars"] if "trace_id" in e["labels"]]
        return max(found, key=lambda e: float(e["timestamp"])) if found else None

    exemplar = poll(newest_exemplar, 60, "an exemplar with a trace id on the inference histogram")
    trace_id = exemplar["labels"]["trace_id"]

    spans = poll(lambda: jaeger.spans(trace_id), 30, f"trace {trace_id} in Jaeger", interval_s=0.5)
    (span,) = [s for s in spans if names.ATTR_PREDICTION_ID in span_tags(s)]
    prediction_id = str(span_tags(span)[names.ATTR_PREDICTION_ID])
    span_id = span["spanID"].rjust(16, "0")
    assert trace_id_hex(span["traceID"]) == trace_id
    assert span_id == exemplar["labels"]["span_id"]

    def audit_row() -> tuple[str, str, str] | None:
        with psycopg.connect(stack.dsn("analyst")) as conn:
            row = conn.execute(
                "SELECT prediction_id::text, trace_id, span_id FROM predictions"
                " WHERE prediction_id = %s",
                (prediction_id,),
            ).fetchone()
        return (str(row[0]), str(row[1]), str(row[2])) if row else None

    row = poll(audit_row, 30, f"audit row {prediction_id}")
    assert row == (prediction_id, trace_id, span_id)
    print(
        f"\n[e2e] pivot: Prometheus exemplar on {HIST} trace_id={trace_id} span_id="
        f"{exemplar['labels']['span_id']} (value {float(exemplar['value']) * 1e3:.3f} ms)"
        f"\n[e2e]   -> Jaeger GET /api/traces/{trace_id}: span {span_id} "
        f"'{span['operationName']}' {names.ATTR_PREDICTION_ID}={prediction_id}"
        f"\n[e2e]   -> audit row (as {ROLE_USERS['analyst']}): prediction_id={row[0]} "
        f"trace_id={row[1]} span_id={row[2]}"
    )


def test_the_demo_drift_phase_makes_the_drift_alert_pending(
    prom: Prom, demo: tuple[LoadSummary, float], model_version: str
) -> None:
    alert = _drift_alert_name()

    def drift_alerts() -> dict[str, str] | None:
        r = prom.http.get("/api/v1/alerts")
        r.raise_for_status()
        states = {
            a["labels"]["feature"]: a["state"]
            for a in r.json()["data"]["alerts"]
            if a["labels"]["alertname"] == alert
            and a["labels"].get("model_version") == model_version
            and a["state"] in ("pending", "firing")
        }
        return states if set(states) >= SHIFTED else None

    # the job runs every few seconds here; the analysis rule group is evaluated every minute
    states = poll(drift_alerts, 180, f"{alert} pending for {sorted(SHIFTED)}", interval_s=2)
    print(f"\n[e2e] {alert}: {states}")
    assert set(states) == SHIFTED


def test_the_summary_shows_the_live_stack_and_no_password(
    stack: Stack, demo: tuple[LoadSummary, float], model_version: str
) -> None:
    load, ended = demo
    argv = [sys.executable, "stack/summary.py", "--name", stack.run_dir.name]
    proc = subprocess.run(
        [*argv, "--traffic-ended", str(ended)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout
    print("\n" + out)
    assert proc.returncode == 0, proc.stderr
    secrets = json.loads((stack.run_dir / "secrets.json").read_text())
    for role, password in secrets.items():
        assert password not in out + proc.stderr, f"the {role} password is in the summary"
    assert "Notes" not in out, "the summary could not wait for current data"

    def value(label: str, unit: str = "") -> float:
        m = re.search(rf"^  {re.escape(label)}\s+(\d+\.\d+){re.escape(unit)}", out, re.M)
        assert m, f"no value for {label!r}"
        return float(m.group(1))

    # traffic, from the recording rules
    assert value("predictions/s") > 0
    assert value("HTTP requests/s") >= value("predictions/s")
    p50, p99 = value("inference P50", " ms"), value("inference P99", " ms")
    assert 0 < p50 <= p99
    # alerts: the drift alert, pending (its `for:` is 1h)
    alert = _drift_alert_name()
    listed = re.findall(rf"^  (pending|firing)\s+{alert}\s+feature=(\w+)", out, re.M)
    assert {f for _, f in listed} == SHIFTED
    # drift: one verdict per feature of the served model, from the job's gauges
    model = httpx.get(f"{stack.service_url}/v1/model", timeout=10).json()
    features = {f["name"] for f in model["feature_schema"]}
    verdicts = dict(re.findall(r"^  (\w+)\s+(drift|ok)\s+PSI \d+\.\d{3}\s+\w+ \d", out, re.M))
    assert set(verdicts) == features
    assert {f for f, v in verdicts.items() if v == "drift"} == SHIFTED
    assert "predictions in its window): dataset DRIFT" in out
    # quality: ~30% labeled
    m = re.search(r"label coverage (\d+\.\d)%\s+precision (\d\.\d{3})\s+recall (\d\.\d{3})", out)
    assert m, "no quality line with values"
    assert 20 < float(m.group(1)) < 40
    # the psql command works as printed, as the read-only analyst role
    m = re.search(
        r"^  (PGPASSFILE=(\S+) \S*psql -h 127\.0\.0\.1 -p (\d+) -U (\w+) -d (\w+))$", out, re.M
    )
    assert m, "no psql command"
    command, pgpass = m.group(1), m.group(2)
    assert (int(m.group(3)), m.group(4), m.group(5)) == (
        stack.ports.postgres,
        ROLE_USERS["analyst"],
        DB_NAME,
    )
    assert stat.S_IMODE((ROOT / pgpass).stat().st_mode) == 0o600

    def shell(cmd: str) -> str:
        p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout

    count_sql = "SELECT count(*) FROM predictions"
    count = shell(f"{command} -tAc '{count_sql}'")
    assert int(count) >= load.ok  # every answered prediction, as the analyst sees it
    # the pivot lines: the trace in Jaeger and its audit row, by pasting them
    trace_url = re.search(r"^  its trace\s+(\S+)$", out, re.M)
    row_cmd = re.search(r"^  its row\s+(.+)$", out, re.M)
    assert trace_url
    assert row_cmd
    assert httpx.get(trace_url.group(1), timeout=10).json()["data"][0]["spans"]
    assert shell(row_cmd.group(1)).rstrip().endswith("(1 row)")
    # where everything runs
    ports = read_env_file(STACK_DIR / "ports.env")
    assert f"{stack.service_url}/docs" in out
    assert httpx.get(f"{stack.service_url}/docs", timeout=10).status_code == 200
    assert stack.prometheus_url in out
    assert f"{stack.jaeger_url}/api/traces/<trace id>" in out
    assert f"http://127.0.0.1:{ports['GRAFANA_PORT']} (when started with docker compose" in out
