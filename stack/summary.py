"""What the running native stack saw, printed when the demo's traffic ends (scripts/run).

    python stack/summary.py [--name NAME] [--traffic-ended UNIX_TIME] [--no-wait]

Everything comes from the live stack, never from the traffic generator's own counts:
request rate and inference P50/P99 (Prometheus' recording rules), the alerts firing or
pending (Prometheus' alerts API), the drift verdict per feature and label coverage,
precision and recall (the analysis job's gauges in Prometheus), a ready-to-paste `psql`
command for the read-only analyst role (its password stays in a pgpass file of mode 0600 in
the run folder: never printed), the slowest recent prediction's trace id as a pivot
(Jaeger API and audit row), and where each part runs.

First it waits, within deadlines, until the numbers describe the traffic that just ended:
an analysis run that completed after the traffic (the job runs every
`--analysis-interval`), then one evaluation of every rule group after those gauges arrived
(the analysis alerts are evaluated every minute). What it could not wait for is said in
the output, never hidden.

Gathering is I/O against the stack's HTTP APIs (`gather`); `render` is pure text.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # `python stack/summary.py`: the repo, not stack/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import httpx

from inferwatch.analysis.jobs import SERVICE_NAME as ANALYSIS_JOB
from inferwatch.telemetry import instruments as names
from stack.launch import STACK_DIR, Stack, duration_s, read_env_file
from stack.postgres import DB_NAME, ROLE_USERS, find_pg_bin
from stack.procs import ROOT, LaunchError, PollTimeout, poll

# an analysis run counts as "after the traffic" when it completed this long after its end:
# the audit writer's flush (INFERWATCH_AUDIT_FLUSH_INTERVAL_S, 0.5 s) and the run itself
SETTLE_S = 2.0
TRACE_ID = re.compile(r"[0-9a-f]{32}")
HIST = names.prometheus_name(names.INFERENCE_DURATION)


@dataclass(frozen=True)
class Alert:
    name: str
    state: str  # firing | pending
    severity: str
    labels: Mapping[str, str]  # those that say which (feature, model version, ...)
    active_at: str


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    verdict: str  # drift | ok | insufficient data
    psi: float | None = None
    statistic: str | None = None  # wasserstein | jensen_shannon
    value: float | None = None


@dataclass
class Summary:
    run_dir: Path
    model_name: str
    model_version: str
    predictions_per_s: float | None = None
    requests_per_s: float | None = None
    error_ratio: float | None = None
    p50_s: float | None = None
    p99_s: float | None = None
    alerts: list[Alert] = field(default_factory=list)
    analysis_at: float | None = None  # unix time of the analysis run shown
    window_rows: float | None = None
    dataset_drift: bool | None = None
    features: list[FeatureDrift] = field(default_factory=list)
    label_coverage: float | None = None
    precision: float | None = None
    recall: float | None = None
    roc_auc: float | None = None
    psql: str = ""
    exemplar_trace_id: str | None = None
    urls: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- gathering (I/O) -----------------------------------------------------------------


class _Prom:
    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    def vector(self, expr: str) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/query", params={"query": expr})
        r.raise_for_status()
        result: list[dict[str, Any]] = r.json()["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The first sample's value; None when empty or NaN (a rate over no traffic)."""
        res = self.vector(expr)
        if not res:
            return None
        v = float(res[0]["value"][1])
        return None if math.isnan(v) else v

    def alerts(self) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/alerts")
        r.raise_for_status()
        alerts: list[dict[str, Any]] = r.json()["data"]["alerts"]
        return alerts

    def rule_groups(self) -> list[dict[str, Any]]:
        r = self.http.get("/api/v1/rules")
        r.raise_for_status()
        groups: list[dict[str, Any]] = r.json()["data"]["groups"]
        return groups

    def exemplars(self, expr: str, since_s: float) -> list[dict[str, Any]]:
        now = time.time()
        r = self.http.get(
            "/api/v1/query_exemplars", params={"query": expr, "start": now - since_s, "end": now}
        )
        r.raise_for_status()
        data: list[dict[str, Any]] = r.json()["data"]
        return data


def _rfc3339(text: str) -> float:
    """Prometheus' timestamps (nanosecond fractions, Z) as unix time."""
    main, _, frac = text.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(main).replace(tzinfo=UTC).timestamp()
    return stamp + (float("0." + frac) if frac else 0.0)


def _sel(**labels: str) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def psql_command(stack: Stack) -> str:
    """`psql` as the analyst role; the password is in a pgpass file (mode 0600), not here."""
    psql = shutil.which("psql") or str(find_pg_bin() / "psql")
    return (
        f"PGPASSFILE={stack.analyst_pgpass()} {psql} -h 127.0.0.1 -p {stack.ports.postgres} "
        f"-U {ROLE_USERS['analyst']} -d {DB_NAME}"
    )


def wait_until_current(
    stack: Stack, prom: _Prom, model_version: str, traffic_end: float, out: Summary
) -> None:
    """An analysis run completed after the traffic, then every rule group evaluated after
    its gauges arrived; what times out is noted in `out`."""
    interval = duration_s(stack.options.analysis_interval)
    after = traffic_end + SETTLE_S
    try:
        poll(
            lambda: (stack.analysis_last_success(model_version) or 0) >= after,
            interval + 60,
            "an analysis run after the traffic",
            interval_s=1,
        )
    except PollTimeout:
        out.notes.append(
            f"no analysis run completed within {interval + 60:g}s after the traffic: drift "
            "and quality below are from an earlier run (see run/<name>/logs/analysis.log)"
        )
        return
    seen = time.time()
    groups = prom.rule_groups()
    deadline = max((float(g.get("interval", 60)) for g in groups), default=60) + 30

    def evaluated() -> bool:
        return all(_rfc3339(g["lastEvaluation"]) >= seen for g in prom.rule_groups())

    try:
        poll(evaluated, deadline, "every rule group evaluated after the analysis", interval_s=1)
    except PollTimeout:
        out.notes.append("not every alert rule was evaluated after the last analysis run yet")


def gather(stack: Stack, traffic_end: float | None, wait: bool = True) -> Summary:
    """Read everything the summary shows from the live stack."""
    model = httpx.get(f"{stack.service_url}/v1/model", timeout=10).json()
    version = str(model["version"])
    out = Summary(stack.run_dir, str(model["name"]), version)
    prom = _Prom(stack.prometheus_url)
    if wait and stack.options.collector:
        wait_until_current(stack, prom, version, traffic_end or time.time(), out)

    mv = _sel(model_version=version)
    out.predictions_per_s = prom.value(f"sum(inferwatch:predictions:rate5m{mv})")
    out.requests_per_s = prom.value("sum(inferwatch:http_requests:rate5m)")
    out.error_ratio = prom.value("inferwatch:http_errors:ratio_rate5m")
    out.p50_s = prom.value(f"max(inferwatch:inference_latency:p50_5m{mv})")
    out.p99_s = prom.value(f"max(inferwatch:inference_latency:p99_5m{mv})")

    for a in prom.alerts():
        if a["state"] not in ("firing", "pending"):
            continue
        labels = dict(a["labels"])
        name, severity = labels.pop("alertname"), labels.pop("severity", "")
        since = _when(_rfc3339(a["activeAt"])) if a.get("activeAt") else "?"
        out.alerts.append(Alert(name, a["state"], severity, labels, since))
    out.alerts.sort(key=lambda x: (x.state != "firing", x.name, sorted(x.labels.items())))

    if stack.options.collector:
        _analysis(prom, out, [str(f["name"]) for f in model["feature_schema"]])
        out.exemplar_trace_id = _slowest_exemplar(prom, version)
    out.psql = psql_command(stack)
    grafana = os.environ.get("GRAFANA_PORT") or read_env_file(STACK_DIR / "ports.env").get(
        "GRAFANA_PORT", "3000"
    )
    out.urls = {
        "service": f"{stack.service_url}/docs",
        "prometheus": f"{stack.prometheus_url}/api/v1/alerts (HTTP API; /api/v1/query?query=...)",
    }
    if stack.options.collector:
        out.urls["jaeger API"] = f"{stack.jaeger_url}/api/traces/<trace id>"
    out.urls["grafana"] = (
        f"http://127.0.0.1:{grafana} (when started with docker compose: "
        "docker compose --env-file stack/versions.env --env-file stack/ports.env up)"
    )
    out.urls["logs"] = f"{_rel(stack.run_dir / 'logs')}/"
    return out


def _analysis(prom: _Prom, out: Summary, features: Sequence[str]) -> None:
    """The analysis job's gauges of the served version, from its newest instance."""
    last = prom.vector(
        f"{names.prometheus_name(names.ANALYSIS_LAST_SUCCESS)}"
        + _sel(job=ANALYSIS_JOB, model_version=out.model_version)
    )
    if not last:
        out.notes.append("no analysis job gauges in Prometheus: is the analysis job running?")
        return
    newest = max(last, key=lambda r: float(r["value"][1]))
    out.analysis_at = float(newest["value"][1])
    sel = _sel(
        job=ANALYSIS_JOB, model_version=out.model_version, instance=newest["metric"]["instance"]
    )

    def gauge(name: str) -> float | None:
        return prom.value(f"{names.prometheus_name(name)}{sel}")

    def by_feature(name: str) -> dict[str, dict[str, Any]]:
        return {
            r["metric"]["feature"]: r for r in prom.vector(f"{names.prometheus_name(name)}{sel}")
        }

    out.window_rows = gauge(names.ANALYSIS_ROWS)
    dataset = gauge(names.DRIFT_DATASET)
    out.dataset_drift = None if dataset is None else dataset == 1
    detected, psi = by_feature(names.DRIFT_DETECTED), by_feature(names.DRIFT_PSI)
    second = by_feature(names.DRIFT_STATISTIC)
    for f in features:
        if f not in detected:  # the job exports no verdict for too few rows
            out.features.append(FeatureDrift(f, "insufficient data"))
            continue
        st = second.get(f)
        out.features.append(
            FeatureDrift(
                f,
                "drift" if float(detected[f]["value"][1]) == 1 else "ok",
                float(psi[f]["value"][1]) if f in psi else None,
                st["metric"].get(names.ATTR_STATISTIC) if st else None,
                float(st["value"][1]) if st else None,
            )
        )
    out.features.sort(key=lambda d: ({"drift": 0, "ok": 1}.get(d.verdict, 2), -(d.psi or 0)))
    out.label_coverage = gauge(names.QUALITY_LABEL_COVERAGE)
    out.precision = gauge(names.QUALITY_PRECISION)
    out.recall = gauge(names.QUALITY_RECALL)
    out.roc_auc = gauge(names.QUALITY_ROC_AUC)


def _slowest_exemplar(prom: _Prom, version: str) -> str | None:
    """The trace id of the slowest exemplar of the last 15 minutes (the pivot's start)."""
    data = prom.exemplars(f"{HIST}{_sel(model_version=version)}", 900)
    best: tuple[float, str] | None = None
    for series in data:
        for e in series["exemplars"]:
            tid = e["labels"].get("trace_id")
            if tid and (best is None or float(e["value"]) > best[0]):
                best = (float(e["value"]), tid)
    return best[1] if best else None


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# --- rendering (pure) ------------------------------------------------------------------


def _num(v: float | None, fmt: str = "{:.2f}", none: str = "n/a") -> str:
    return none if v is None else fmt.format(v)


def _ms(v: float | None) -> str:
    return _num(None if v is None else v * 1e3, "{:.2f} ms", "n/a (no predictions in 5 min)")


def _when(ts: float | None) -> str:
    return "never" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%SZ")


def render(s: Summary) -> str:
    lines = [
        f"== inferwatch: what the stack saw (model {s.model_name} {s.model_version}, "
        f"run folder {_rel(s.run_dir)}) ==",
        "",
        "Traffic (recording rules over the last 5 minutes)",
        f"  predictions/s    {_num(s.predictions_per_s):<10} inferwatch:predictions:rate5m",
        f"  HTTP requests/s  {_num(s.requests_per_s):<10} inferwatch:http_requests:rate5m",
        f"  5xx ratio        {_num(s.error_ratio, '{:.2%}'):<10} "
        "inferwatch:http_errors:ratio_rate5m",
        f"  inference P50    {_ms(s.p50_s):<10} inferwatch:inference_latency:p50_5m",
        f"  inference P99    {_ms(s.p99_s):<10} inferwatch:inference_latency:p99_5m",
        "",
        "Alerts firing or pending (Prometheus)",
    ]
    if not s.alerts:
        lines.append("  none")
    served = {"model_name": s.model_name, "model_version": s.model_version}
    for a in s.alerts:
        # the served model's labels go without saying; anything else is shown
        which = [f"{k}={v}" for k, v in sorted(a.labels.items()) if served.get(k) != v]
        parts = [f"{a.state:<8}", a.name, *which]
        lines.append(f"  {'  '.join(parts)}  (severity {a.severity or '-'}, since {a.active_at})")
    lines += [
        "",
        f"Drift per feature (analysis job, run at {_when(s.analysis_at)}, "
        f"{_num(s.window_rows, '{:.0f}')} predictions in its window): dataset "
        + {True: "DRIFT", False: "no drift", None: "n/a"}[s.dataset_drift],
    ]
    if not s.features:
        lines.append("  no verdicts (no analysis job gauges)")
    for f in s.features:
        second = f"{f.statistic} {_num(f.value, '{:.3f}')}" if f.statistic else ""
        psi = f"PSI {_num(f.psi, '{:.3f}')}" if f.verdict != "insufficient data" else ""
        lines.append(f"  {f.feature:<26} {f.verdict:<17} {psi:<11} {second}".rstrip())
    lines += [
        "",
        "Quality on labeled predictions (analysis job)",
        f"  label coverage {_num(s.label_coverage, '{:.1%}')}   precision "
        f"{_num(s.precision, '{:.3f}')}   recall {_num(s.recall, '{:.3f}')}   ROC AUC "
        f"{_num(s.roc_auc, '{:.3f}')}",
        "",
        "Audit table: psql as the read-only analyst role (password in the pgpass file, mode 0600)",
        f"  {s.psql}",
    ]
    tid = s.exemplar_trace_id
    if tid and TRACE_ID.fullmatch(tid):  # hex only: safe inside the quotes below
        jaeger = s.urls.get("jaeger API", "").replace("<trace id>", tid)
        sql = (
            "SELECT prediction_id, ts, prediction, probability, latency_s "  # noqa: S608 (printed, hex id)
            f"FROM predictions WHERE trace_id = '{tid}'"
        )
        lines += [
            "",
            "Pivot: the slowest recent prediction (an exemplar of the latency histogram)",
            f"  its trace  {jaeger}",
            f'  its row    {s.psql} -c "{sql}"',
        ]
    lines += ["", "Where everything runs"]
    lines += [f"  {k:<11} {v}" for k, v in s.urls.items()]
    if s.notes:
        lines += ["", "Notes"] + [f"  - {n}" for n in s.notes]
    return "\n".join(lines) + "\n"


# --- CLI -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="stack/summary.py", description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="default", help="run folder: run/<name>/")
    ap.add_argument(
        "--traffic-ended",
        type=float,
        default=None,
        help="unix time the traffic ended (default: now)",
    )
    ap.add_argument(
        "--no-wait",
        action="store_true",
        help="print at once, without waiting for an analysis run and rule evaluation",
    )
    args = ap.parse_args(argv)
    try:
        stack = Stack.open(ROOT / "run" / args.name)
        if not args.no_wait and stack.options.collector:
            print(
                "[summary] waiting for the analysis job's run over the traffic and the alert "
                f"rules' next evaluation (analysis every {stack.options.analysis_interval}, "
                "alert rules every minute) ...",
                file=sys.stderr,
                flush=True,
            )
        summary = gather(stack, args.traffic_ended, wait=not args.no_wait)
    except (LaunchError, httpx.HTTPError) as exc:
        print(f"[summary] ERROR: the stack does not answer: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
