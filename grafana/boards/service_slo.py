"""Service & SLO: traffic, errors, inference latency, the SLOs' budgets and burn, alerts.

For the SRE on call: is the service answering, how fast, and how much of the month's error
budget is left. Latency quantiles, SLIs, burn rates and budgets are the recording rules of
prometheus/rules/inferwatch.yml (what the alerts evaluate), so a panel and the alert it
explains never disagree; objective and window are read from their series, never typed here.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, stat, statetimeline, timeseries
from grafana_foundation_sdk.builders import heatmap as hb
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm

from grafana.boards.common import (
    DATASOURCES,
    DS_VAR,
    MN,
    PROMETHEUS_UID,
    Panels,
    dashed,
    datasource_variable,
    last_value,
    legend,
    load_slo,
    model_variables,
    panel,
    prom,
    promql,
    sel,
    sel_re,
    special_map,
    thresholds,
    value_map,
)
from inferwatch.telemetry import instruments as names

UID = "inferwatch-service-slo"
TITLE = "inferwatch / Service & SLO"
# How to read the dashboard during an incident (docs/dashboards.md renders it)
INCIDENT = """\
Paged for latency or burn: read the burn-rate panels first (which windows are above their
line says whether this is a spike or a slow leak, and how long the budget lasts), then the
P99 panel (one model version or all? a new version?), then the heatmap: a second band of
slow predictions is a subset of inputs; click an exemplar in it for the trace, whose span
carries the prediction id (its audit row has the features). Paged for errors: the error
ratio panel says 5xx (ours) or 4xx (the callers'); the rejected-requests panel says why
input is refused. Budget remaining and its history say how much room the month has left,
and whether that number rests on enough history to trust."""

JOB = 'job="inferwatch"'  # prometheus/slo.yml service_job: the service's series, both paths
PREDICT_ROUTES = 'http_route=~"/v1/predict.*"'
HTTP = prom(names.HTTP_SERVER_DURATION)
LATENCY = prom(names.INFERENCE_DURATION)
OK = 'outcome="ok"'  # successful model calls: what the latency SLO measures
BURN_UNIT = "suffix:\N{MULTIPLICATION SIGN}"  # a burn rate is a multiple of the budget pace


def _http_ratio(status: str) -> str:
    """Share of prediction requests answered with `status` (a regex), 0 when there were none."""
    part = sel(HTTP, JOB, PREDICT_ROUTES, f'http_response_status_code=~"{status}"')
    whole = sel(HTTP, JOB, PREDICT_ROUTES)
    return (
        f"(sum(histogram_count(rate({part}[$__rate_interval]))) or vector(0))\n"
        f"/\nsum(histogram_count(rate({whole}[$__rate_interval])))"
    )


def _burn(prefix: str, scope: tuple[str, ...]) -> str:
    """Every window's burn rate of one SLO, the window as label `window`."""
    matchers = [f'{m}=~"${m}"' for m in scope]
    series = sel_re(f"{prefix}:rate.+", *matchers)
    return f'label_replace({series}, "window", "$1", "__name__", "{prefix}:rate(.+)")'


def build() -> db.Dashboard:
    slo = load_slo()
    p99_limit = float(slo["latency"]["threshold_seconds"])
    factors = sorted({float(r["factor"]) for r in slo["burn_rates"]})
    dash = (
        db.Dashboard(TITLE)
        .uid(UID)
        .description("Traffic, errors, inference latency, SLO budgets and burn, alerts.")
        .tags(["inferwatch", "sre"])
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            datasource_variable(DS_VAR, DATASOURCES[PROMETHEUS_UID], PROMETHEUS_UID, "Prometheus")
        )
    )
    for v in model_variables():
        dash.with_variable(v)
    panels = Panels(dash)

    panels.row("Traffic and errors")
    panels.add(
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Prediction requests per second",
            "Requests to the prediction routes, by route and HTTP status (the service's HTTP "
            "server histogram, all model versions). Bad: a drop to zero while clients still "
            "send (the service or its telemetry is down: see the InferwatchNoData alert), or "
            "a 4xx/5xx series growing.",
            "reqps",
            promql(
                "sum by (http_route, http_response_status_code) (histogram_count(rate("
                f"{sel(HTTP, JOB, PREDICT_ROUTES)}[$__rate_interval])))",
                "{{http_route}} {{http_response_status_code}}",
            ),
            w=8,
        ),
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Predictions per second by model version",
            "Predictions served (a batch request counts each instance) per model version. Bad: "
            "a version serving that should not (a rollout gone wrong) or a sudden drop.",
            "cps",
            promql(
                f"sum by (model_name, model_version) (rate({sel(prom(names.PREDICTIONS))}"
                "[$__rate_interval]))",
                "{{model_name}} {{model_version}}",
            ),
            w=8,
        ),
        panel(
            timeseries.Panel().legend(legend("mean", "max")).min(0),
            "Error ratio of prediction requests",
            "Share of prediction requests answered 5xx (server errors: what the 99.9% "
            "availability SLO counts) and 4xx (input the service refused). Bad: any 5xx "
            "(its budget is 0.1%; the burn-rate panels say how fast it goes); 4xx growing "
            "means clients send what the model's schema refuses.",
            "percentunit",
            promql(_http_ratio("5.."), "5xx (server errors)"),
            promql(_http_ratio("4.."), "4xx (refused input)"),
            w=8,
        ),
    )
    panels.add(
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Requests rejected before inference, by reason",
            "Requests refused before the model ran (validation, body too large, not JSON, "
            "not ready, overloaded: shed with 503 when the micro-batch queue is full), by "
            "reason. Bad: `not_ready` outside a deploy, any `overloaded` (pages: "
            "InferwatchLoadShedding), or validation rejections jumping (a client changed "
            "its payload).",
            "reqps",
            promql(
                f"sum by (reason) (rate({sel(prom(names.REJECTED_REQUESTS))}[$__rate_interval]))",
                "{{reason}}",
            ),
            w=8,
        ),
    )

    panels.row("Inference latency")
    panels.add(
        panel(
            timeseries.Panel()
            .legend(legend("mean", "max", "lastNotNull"))
            .thresholds(thresholds((None, "green"), (p99_limit, "red")))
            .thresholds_style(dashed()),
            "Inference latency P50 / P95 / P99 by model version",
            "Inference time per prediction (waiting for its micro-batch plus that batch's "
            "predict_proba: what the request experienced), quantiles over 5 minutes per model "
            "version (recording rules inferwatch:inference_latency:p*_5m, from the native "
            "histogram). The dashed line is the P99 alert threshold of prometheus/slo.yml. "
            "Bad: P99 above the line for 5 minutes pages (InferwatchInferenceP99High); a "
            "new version slower than the old one.",
            "s",
            *(
                promql(
                    sel(f"inferwatch:inference_latency:p{q}_5m"),
                    f"P{q} {{{{model_name}}}} {{{{model_version}}}}",
                )
                for q in (50, 95, 99)
            ),
            w=12,
        ),
        panel(
            heatmap.Panel()
            .calculate(False)
            .color(
                hb.HeatmapColorOptions()
                .mode(hm.HeatmapColorMode.SCHEME)
                .scheme("Oranges")
                .steps(64)
                .exponent(0.5)
            )
            .y_axis(hb.YAxisConfig().unit("s").decimals(4))
            .exemplars_color("rgba(80,220,255,0.9)")
            .cell_gap(0)
            .show_legend(),
            "Inference latency distribution (exemplars link to traces)",
            "The native histogram of inference durations (micro-batch wait plus "
            "predict_proba, successful calls) over time: "
            "each column is the latency distribution of one step. The dots are exemplars: "
            "a prediction's measured latency and trace id; click one for its trace in "
            "Jaeger, whose span carries the prediction id that finds its audit row. Bad: mass "
            "moving up, or a second band of slow predictions.",
            "s",
            promql(
                f"sum(rate({sel(LATENCY, JOB, OK)}[$__rate_interval]))",
                "latency",
                exemplar=True,
            ),
            w=12,
        ),
    )

    panels.row("Micro-batching")
    panels.add(
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Micro-batch size by model version",
            "Requests served per predict_proba call (median and P99 over the step): "
            "concurrent requests share one call. Bad: stuck at INFERWATCH_MICROBATCH_MAX_SIZE "
            "(the model is saturated: queue wait climbs next, then shedding); 1 under heavy "
            "load (batching off or broken).",
            "none",
            *(
                promql(
                    f"histogram_quantile({q}, sum by (model_name, model_version) "
                    f"(rate({sel(prom(names.MICROBATCH_SIZE))}[$__rate_interval])))",
                    f"{label} {{{{model_version}}}}",
                )
                for q, label in ((0.5, "median"), (0.99, "P99"))
            ),
            w=8,
        ),
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Queue wait vs batch compute, P99",
            "The two parts of a prediction's inference time: how long it waited in the "
            "micro-batch queue, and how long its batch's predict_proba took (P99 per model "
            "version). Bad: the wait growing while compute stays flat (more load than the "
            "model thread serves: add workers); compute growing (a slower model version).",
            "s",
            promql(
                "histogram_quantile(0.99, sum by (model_name, model_version) (rate("
                f"{sel(prom(names.INFERENCE_QUEUE_DURATION))}[$__rate_interval])))",
                "queue wait {{model_version}}",
            ),
            promql(
                "histogram_quantile(0.99, sum by (model_name, model_version) (rate("
                f"{sel(prom(names.MICROBATCH_DURATION), OK)}[$__rate_interval])))",
                "batch compute {{model_version}}",
            ),
            w=8,
        ),
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Micro-batch queue depth",
            "Predictions waiting for the model thread, per process, at each metric export. "
            "Bad: near INFERWATCH_MICROBATCH_MAX_QUEUE (1024 by default): beyond it requests "
            "are shed with 503 (rejected reason `overloaded`, alert InferwatchLoadShedding).",
            "none",
            promql(
                f"max by (instance) ({sel(prom(names.MICROBATCH_QUEUE_DEPTH))})",
                "{{instance}}",
            ),
            w=8,
        ),
    )

    panels.row("SLOs (30-day window)")
    panels.add(
        panel(
            stat.Panel()
            .reduce_options(last_value())
            .graph_mode(cm.BigValueGraphMode.NONE)
            .color_mode(cm.BigValueColorMode.NONE)
            .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
            .override_by_query("B", [dm.DynamicConfigValue(id_val="unit", value="dtdurations")]),
            "Objectives and window",
            "Each SLO's objective and the window it holds over, as Prometheus records them "
            "from prometheus/slo.yml (latency: share of predictions under the threshold; "
            "errors: share of prediction requests without a 5xx). Bad: not what the team "
            "agreed; change prometheus/slo.yml and regenerate the rules.",
            "percentunit",
            promql("inferwatch:slo_objective:ratio", "objective {{slo}}"),
            promql("inferwatch:slo_window:seconds", "window"),
            h=6,
            w=6,
        ),
        panel(
            stat.Panel()
            .reduce_options(last_value())
            .graph_mode(cm.BigValueGraphMode.AREA)
            .color_mode(cm.BigValueColorMode.BACKGROUND)
            .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
            .min(0)
            .max(1)
            .thresholds(thresholds((None, "red"), (0.25, "orange"), (0.5, "green")))
            .mappings([special_map(dm.SpecialValueMatch.NA_N, "no traffic in window", "text")])
            .no_value("not evaluated yet"),
            "Error budget remaining",
            "Share of each SLO's error budget left over the window: 1 - (bad share / "
            "(1 - objective)), clamped to [0, 1] (rules inferwatch:*_budget_remaining:ratio). "
            "Computed over the history Prometheus holds, which the next panel shows. Bad: "
            "below 50% before mid-window; 0% means the budget is spent (the burn-rate panels "
            "say by how much).",
            "percentunit",
            promql(
                sel("inferwatch:inference_latency_budget_remaining:ratio"),
                "latency {{model_name}}",
            ),
            promql(sel("inferwatch:http_errors_budget_remaining:ratio"), "errors (5xx)"),
            h=6,
            w=9,
        ),
        panel(
            stat.Panel()
            .reduce_options(last_value())
            .graph_mode(cm.BigValueGraphMode.NONE)
            .color_mode(cm.BigValueColorMode.BACKGROUND)
            .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
            .min(0)
            .max(1)
            .thresholds(thresholds((None, "orange"), (1, "green")))
            .no_value("no history yet"),
            "History behind the budget",
            "Share of the SLO window for which Prometheus holds the SLI (rules "
            "inferwatch:*_window_history:ratio). Below 100% the budget describes only this "
            "much of the window: too little history, not a verdict on the month. Bad: "
            "shrinking (Prometheus lost data, or its retention is shorter than the window).",
            "percentunit",
            promql(
                sel("inferwatch:inference_latency_window_history:ratio"), "latency {{model_name}}"
            ),
            promql(sel("inferwatch:http_errors_window_history:ratio"), "errors (5xx)"),
            h=6,
            w=9,
        ),
    )
    burn_lines = thresholds(
        (None, "green"),
        *((f, c) for f, c in zip(factors, ("yellow", "orange", "red", "dark-red"), strict=False)),
    )
    panels.add(
        panel(
            timeseries.Panel()
            .legend(legend("lastNotNull", "max"))
            .thresholds(burn_lines)
            .thresholds_style(dashed()),
            "Latency SLO burn rate per window",
            "How fast the latency SLO's budget is spent, per window (1 = exactly the budget "
            "over the SLO window; rules inferwatch:inference_latency_burn:rate<window>). "
            "Dashed lines: the burn factors of the multi-window alerts in prometheus/slo.yml. "
            "Bad: a long and a short window both above a line (that pages or tickets: "
            "InferwatchLatencyBudgetBurn).",
            BURN_UNIT,
            promql(_burn("inferwatch:inference_latency_burn", MN), "{{window}} {{model_name}}"),
            w=12,
        ),
        panel(
            timeseries.Panel()
            .legend(legend("lastNotNull", "max"))
            .thresholds(burn_lines)
            .thresholds_style(dashed()),
            "Error SLO burn rate per window",
            "How fast the availability SLO's budget (5xx of prediction requests) is spent, "
            "per window (rules inferwatch:http_errors_burn:rate<window>). Dashed lines: the "
            "alert burn factors. Bad: a long and a short window both above a line "
            "(InferwatchErrorBudgetBurn).",
            BURN_UNIT,
            promql(_burn("inferwatch:http_errors_burn", ()), "{{window}}"),
            w=12,
        ),
    )

    panels.row("Alerts")
    alerts = 'alertname=~"Inferwatch.+"'
    panels.add(
        panel(
            statetimeline.Panel()
            .show_value(cm.VisibilityMode.NEVER)
            .merge_values(True)
            .mappings([value_map({"1": ("pending", "orange"), "2": ("firing", "red")})]),
            "inferwatch alerts firing or pending",
            "Every inferwatch alert that was pending (its condition true, waiting out its "
            "`for`) or firing, over time, from Prometheus' ALERTS series; each has a section "
            "in docs/runbook.md. Bad: anything red; orange that keeps coming back.",
            "none",
            promql(
                f'max by (alertname, severity) (ALERTS{{alertstate="firing", {alerts}}}) * 2\n'
                f'or max by (alertname, severity) (ALERTS{{alertstate="pending", {alerts}}})',
                "{{alertname}} ({{severity}})",
            ),
            h=8,
            w=24,
        ),
    )
    return dash
