"""Model & data: what the model predicts, whether its inputs drifted, how right it was, and the
audit rows behind it.

For the ML engineer and the analyst: class mix and predicted probabilities per model version,
drift per feature and the dataset verdict (the gauges of `inferwatch analysis-job`), realized
precision / recall once labels arrive (estimated before they do), and panels on the audit
table (as the read-only analyst role) down to single predictions, each linked to its trace.

SQL panels filter by `$__timeFilter(ts)` on the partitioned, BRIN-indexed `predictions.ts`
(directly or through the `prediction_outcomes` view, whose rows keep the prediction's ts), and
by the model variables as regexes (`${var:regex}`: Grafana escapes the chosen values, and "All"
is `.*`).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import statetimeline, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from grafana.boards.common import (
    DATASOURCES,
    DS_VAR,
    PG_DS,
    PG_VAR,
    POSTGRES_UID,
    PROMETHEUS_UID,
    Panels,
    Sql,
    dashed,
    datasource_variable,
    field_links,
    field_unit,
    legend,
    load_slo,
    model_variables,
    panel,
    prom,
    promql,
    sel,
    stacked,
    thresholds,
    trace_link,
    value_map,
)
from inferwatch.analysis.drift import DriftThresholds
from inferwatch.telemetry import instruments as names

UID = "inferwatch-model-data"
TITLE = "inferwatch / Model & data"
# How to read the dashboard during an incident (docs/dashboards.md renders it)
INCIDENT = """\
A drift ticket or a quality alert: the verdict timeline says which features drifted and
since when; PSI and the second statistic say by how much (a single feature far above its
line, or many slightly). The class mix and the probability quantiles say whether the model's
output moved with them. Realized precision and recall say whether it got worse, but only as
far as labels cover (label coverage panels; recent hours are always thin); for those hours
the estimated quality says what to expect, as long as only the inputs moved. For single
cases, the latest-predictions table lists the audit rows; a trace id opens the request's
trace. An analysis age above its line means the job is not running: the gauges are stale."""
VERDICT = value_map({"0": ("no drift", "green"), "1": ("drift", "red")})


def _gauge(name: str, *by: str) -> str:
    """An analysis-job gauge per model version (and `by`): the latest run's value."""
    return f"max by ({', '.join(['model_name', 'model_version', *by])}) ({sel(prom(name))})"


def build() -> db.Dashboard:
    slo = load_slo()
    analysis = slo["analysis"]
    drift = DriftThresholds()
    dash = (
        db.Dashboard(TITLE)
        .uid(UID)
        .description("Predictions, drift, realized quality and the audit rows behind them.")
        .tags(["inferwatch", "ml", "analysts"])
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(
            datasource_variable(DS_VAR, DATASOURCES[PROMETHEUS_UID], PROMETHEUS_UID, "Prometheus")
        )
        .with_variable(
            datasource_variable(PG_VAR, DATASOURCES[POSTGRES_UID], POSTGRES_UID, "Audit database")
        )
    )
    for v in model_variables():
        dash.with_variable(v)
    panels = Panels(dash)
    predictions = sel(prom(names.PREDICTIONS))

    panels.row("Predictions")
    panels.add(
        panel(
            timeseries.Panel()
            .legend(legend("mean", "lastNotNull"))
            .min(0)
            .max(1)
            .stacking(stacked()),
            "Class mix by model version",
            "Share of each predicted class among a model version's predictions (from the "
            "predictions counter). Bad: a shift without a known cause (the inputs drifted, or "
            "a new version predicts differently); the positive share far from the training "
            "base rate.",
            "percentunit",
            promql(
                "sum by (model_version, prediction_class) (rate("
                f"{predictions}[$__rate_interval]))\n/ ignoring (prediction_class) group_left\n"
                f"sum by (model_version) (rate({predictions}[$__rate_interval]))",
                "{{model_version}} class {{prediction_class}}",
            ),
            w=12,
        ),
        panel(
            timeseries.Panel().legend(legend("mean", "lastNotNull")).min(0).max(1),
            "Predicted probability P50 / P90 / P99 by model version (audit table)",
            "Quantiles of the positive-class probability the model returned, per interval "
            "and model version, from the audit table. Bad: the distribution moving (drift, or "
            "a new version calibrated differently); everything piling up near 0 or 1.",
            "percentunit",
            Sql(
                """
SELECT $__timeGroupAlias(ts, $__interval),
       model_version || ' p' || q.pct AS metric,
       percentile_cont(q.p) WITHIN GROUP (ORDER BY probability) AS value
FROM predictions
CROSS JOIN (VALUES (50, 0.5), (90, 0.9), (99, 0.99)) AS q (pct, p)
WHERE $__timeFilter(ts)
  AND model_name ~ '^(${model_name:regex})$'
  AND model_version ~ '^(${model_version:regex})$'
GROUP BY 1, 2, q.p
ORDER BY 1
"""
            ),
            ds=PG_DS,
            w=12,
        ),
    )
    panels.add(
        panel(
            timeseries.Panel()
            .legend(legend("sum", "max"))
            .draw_style(cm.GraphDrawStyle.BARS)
            .fill_opacity(60),
            "Predictions per hour (audit table)",
            "Rows in the audit table per hour and model version: what analysts can query. "
            "Bad: fewer rows than predictions served (the Pipeline health dashboard's audit "
            "writer panels say where they are), or an hour missing.",
            "short",
            Sql(
                """
SELECT $__timeGroupAlias(ts, 1h),
       model_version AS metric,
       count(*) AS value
FROM predictions
WHERE $__timeFilter(ts)
  AND model_name ~ '^(${model_name:regex})$'
  AND model_version ~ '^(${model_version:regex})$'
GROUP BY 1, 2
ORDER BY 1
"""
            ),
            ds=PG_DS,
            w=12,
        ),
        panel(
            timeseries.Panel()
            .legend(legend("mean", "lastNotNull"))
            .min(0)
            .max(1)
            .draw_style(cm.GraphDrawStyle.BARS)
            .fill_opacity(60),
            "Label coverage per hour (audit table)",
            "Share of each hour's predictions that have an outcome (ground truth by "
            "prediction id or by entity; the prediction_outcomes view). Labels arrive late, "
            "so recent hours fill up over time. Bad: an old hour still uncovered (the "
            "feedback feed stopped); quality numbers rest on few labels.",
            "percentunit",
            Sql(
                """
SELECT $__timeGroupAlias(ts, 1h),
       model_version AS metric,
       count(label)::float8 / count(*) AS value
FROM prediction_outcomes
WHERE $__timeFilter(ts)
  AND model_name ~ '^(${model_name:regex})$'
  AND model_version ~ '^(${model_version:regex})$'
GROUP BY 1, 2
ORDER BY 1
"""
            ),
            ds=PG_DS,
            w=12,
        ),
    )
    panels.add(
        panel(
            table.Panel()
            .cell_height(cm.TableCellHeight.SM)
            .overrides(
                [
                    field_links("trace_id", [trace_link()]),
                    field_unit("probability", "percentunit"),
                    field_unit("latency_s", "s"),
                    field_unit("time", "dateTimeAsIso"),
                ]
            ),
            "Latest predictions (trace id links to the trace)",
            "The newest audit rows of the time range: prediction id, version, entity, class, "
            "probability, model latency, outcome label if one arrived, and the trace id; "
            "click it to open the request's trace in Jaeger. Bad: rows missing for recent "
            "requests (see Pipeline health), labels that contradict predictions in bulk.",
            "short",
            Sql(
                """
SELECT ts AS "time",
       prediction_id,
       model_version,
       entity_type,
       entity_id,
       prediction,
       probability,
       latency_s,
       label,
       trace_id
FROM prediction_outcomes
WHERE $__timeFilter(ts)
  AND model_name ~ '^(${model_name:regex})$'
  AND model_version ~ '^(${model_version:regex})$'
ORDER BY ts DESC
LIMIT 200
""",
                "table",
            ),
            ds=PG_DS,
            h=10,
            w=24,
        ),
    )

    panels.row("Drift (analysis job, against the training profile)")
    panels.add(
        panel(
            timeseries.Panel()
            .legend(legend("lastNotNull", "max"))
            .thresholds(thresholds((None, "green"), (drift.psi, "red")))
            .thresholds_style(dashed()),
            "PSI per feature",
            "Population stability index of each feature's latest window against the training "
            "profile, per analysis run (counted from the hourly drift profiles plus a scan of "
            "the hours not profiled yet). The dashed line is the job's PSI threshold "
            "(docs/drift.md). Bad: a feature above the line run after run.",
            "none",
            promql(_gauge(names.DRIFT_PSI, "feature"), "{{model_version}} {{feature}}"),
            w=12,
        ),
        panel(
            timeseries.Panel().legend(legend("lastNotNull", "max")),
            "Wasserstein / Jensen-Shannon per feature",
            "The second statistic of each feature: Wasserstein distance in reference standard "
            f"deviations (numeric features, drift above {drift.wasserstein:g}) or "
            f"Jensen-Shannon distance (categorical, drift above {drift.jensen_shannon:g}). "
            "Bad: a feature rising past its threshold, mostly together with its PSI.",
            "none",
            promql(
                _gauge(names.DRIFT_STATISTIC, "feature", "statistic"),
                "{{model_version}} {{feature}} ({{statistic}})",
            ),
            w=12,
        ),
    )
    panels.add(
        panel(
            statetimeline.Panel()
            .show_value(cm.VisibilityMode.NEVER)
            .merge_values(True)
            .mappings([VERDICT]),
            "Drift verdict: dataset and per feature",
            "The analysis job's verdict per run: the dataset (drift when at least one feature "
            "drifts, by default) and each feature. Bad: red that persists; a feature drifting "
            "for an hour raises InferwatchFeatureDriftSustained.",
            "none",
            promql(_gauge(names.DRIFT_DATASET), "{{model_version}} dataset"),
            promql(_gauge(names.DRIFT_DETECTED, "feature"), "{{model_version}} {{feature}}"),
            w=16,
        ),
        panel(
            timeseries.Panel()
            .legend(legend("lastNotNull"))
            .override_by_query("B", [dm.DynamicConfigValue(id_val="unit", value="s")])
            .thresholds(
                thresholds((None, "green"), (int(analysis["stale_after_minutes"]) * 60, "red"))
            )
            .thresholds_style(dashed()),
            "Analysis job: rows analysed and age of the last run",
            "Predictions in the latest drift window, and seconds since the job last completed "
            "a run (the dashed line is the InferwatchAnalysisStale limit). Bad: age above "
            "the line (drift and quality alerts are blind), or fewer rows than the job's "
            f"minimum ({drift.min_rows}): its verdicts become 'insufficient data'.",
            "short",
            promql(_gauge(names.ANALYSIS_ROWS), "rows {{model_version}}"),
            promql(
                f"time() - {_gauge(names.ANALYSIS_LAST_SUCCESS)}",
                "age {{model_version}}",
            ),
            w=8,
        ),
    )

    panels.row("Realized quality (labeled predictions)")
    panels.add(
        panel(
            timeseries.Panel()
            .legend(legend("lastNotNull", "min"))
            .min(0)
            .max(1)
            .thresholds(
                thresholds(
                    (None, "red"),
                    (float(analysis["precision_floor"]), "orange"),
                    (float(analysis["recall_floor"]), "green"),
                )
            )
            .thresholds_style(dashed()),
            "Realized precision, recall and ROC AUC",
            "Quality on the predictions of the quality window that have a label. Dashed "
            "lines: the precision and recall floors of prometheus/slo.yml. Bad: precision or "
            "recall under its floor for 2 hours with enough labels (tickets "
            "InferwatchPrecisionBelowFloor / InferwatchRecallBelowFloor).",
            "percentunit",
            promql(_gauge(names.QUALITY_PRECISION), "precision {{model_version}}"),
            promql(_gauge(names.QUALITY_RECALL), "recall {{model_version}}"),
            promql(_gauge(names.QUALITY_ROC_AUC), "ROC AUC {{model_version}}"),
            w=12,
        ),
        panel(
            timeseries.Panel()
            .legend(legend("lastNotNull", "min"))
            .min(0)
            .max(1)
            .thresholds(thresholds((None, "red"), (float(analysis["min_label_coverage"]), "green")))
            .thresholds_style(dashed()),
            "Label coverage (analysis job)",
            "Share of the quality window's predictions with an outcome. Below the dashed line "
            "(prometheus/slo.yml min_label_coverage) the quality alerts do not judge. Bad: "
            "falling (labels stopped arriving): precision and recall then describe fewer "
            "and fewer predictions.",
            "percentunit",
            promql(_gauge(names.QUALITY_LABEL_COVERAGE), "{{model_version}}"),
            w=12,
        ),
    )

    panels.row("Estimated quality (drift window, before labels)")
    panels.add(
        panel(
            timeseries.Panel()
            .legend(legend("lastNotNull", "min"))
            .min(0)
            .max(1)
            .thresholds(
                thresholds(
                    (None, "red"),
                    (float(analysis["precision_floor"]), "orange"),
                    (float(analysis["recall_floor"]), "green"),
                )
            )
            .thresholds_style(dashed()),
            "Estimated precision, recall and ROC AUC (CBPE)",
            "The analysis job's estimate for every prediction of the drift window, labeled "
            "or not: the model's scores calibrated on its labeled holdout, then expected "
            "TP/FP/FN (docs/drift.md, estimated quality). Right under covariate shift, blind "
            "to concept shift: the realized panel above has the last word once labels come. "
            "Bad: an estimate under a dashed floor (the same floors as realized quality) "
            "hours before the labels can show it; or estimate and realized far apart over "
            "the same days (the relation of score to fraud changed).",
            "percentunit",
            promql(_gauge(names.QUALITY_ESTIMATED_PRECISION), "precision {{model_version}}"),
            promql(_gauge(names.QUALITY_ESTIMATED_RECALL), "recall {{model_version}}"),
            promql(_gauge(names.QUALITY_ESTIMATED_ROC_AUC), "ROC AUC {{model_version}}"),
            w=24,
        ),
    )
    return dash
