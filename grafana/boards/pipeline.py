"""Pipeline health: the path from a prediction to its metric, span and audit row.

For the SRE when a dashboard goes blank or the audit table lags: is the collector taking,
refusing or failing to send telemetry, is its queue filling, is the audit writer keeping up
(queue, spool, batch latency), and did the service drop its own telemetry before export.

Collector self-metrics are matched as `name(_total)?`: the pinned collector's Prometheus
reader drops the `_total` suffix (`without_units`, and the 0.153 rename), other builds keep
it; grafana's opentelemetry-collector-mixin matches them the same way. Counters that exist
only once something failed (`send_failed`, `enqueue_failed`, audit `dropped`) are written
`... or on() vector(0)`, so a healthy pipeline draws a zero line instead of "No data".
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import timeseries
from grafana_foundation_sdk.models import dashboard as dm

from grafana.boards.common import (
    DATASOURCES,
    DS_VAR,
    PROMETHEUS_UID,
    Panels,
    dashed,
    datasource_variable,
    legend,
    load_slo,
    model_variables,
    panel,
    prom,
    promql,
    sel,
    sel_re,
    thresholds,
)
from inferwatch.telemetry import instruments as names

UID = "inferwatch-pipeline"
TITLE = "inferwatch / Pipeline health"
# How to read the dashboard during an incident (docs/dashboards.md renders it)
INCIDENT = """\
Dashboards blank or alerts silent: follow the data. Telemetry dropped above zero: the
service's own queue overflowed (a CPU-starved process). Collector accepted at zero while
the service serves: the service cannot reach the collector. Refused: the collector's memory
limiter. Sent below accepted, failed lines, a queue filling: the destination (Prometheus or
the trace backend) is down or slow. Analysts miss rows: compare enqueued with written; spooled
above zero means Postgres is away (the spool panels say how much waits and for how long),
replayed shows it catching up; dropped is data loss and pages."""
COLLECTOR = 'job="otelcol"'  # the scrape job of the collector's own metrics (prometheus.yml)
SIGNALS = (("spans", "spans"), ("metric_points", "metric points"))


def _otelcol(name: str, by: str, *, failure_only: bool = False) -> str:
    expr = f"sum by ({by}) (rate({sel_re(f'{name}(_total)?', COLLECTOR)}[$__rate_interval]))"
    return f"{expr} or on() vector(0)" if failure_only else expr


def _audit(name: str, *, failure_only: bool = False) -> str:
    expr = f"sum(rate({sel(prom(name))}[$__rate_interval]))"
    return f"{expr} or on() vector(0)" if failure_only else expr


def build() -> db.Dashboard:
    slo = load_slo()
    spool_age_limit = int(slo["audit"]["spool_oldest_age_minutes"]) * 60
    dash = (
        db.Dashboard(TITLE)
        .uid(UID)
        .description("Collector, audit writer and the service's own telemetry queue.")
        .tags(["inferwatch", "sre", "pipeline"])
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

    panels.row("OpenTelemetry Collector")
    panels.add(
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Collector: accepted and refused, per signal",
            "Spans and metric points the collector's receivers accepted, and refused (its "
            "memory limiter pushing back: senders retry, then drop). Bad: any refused "
            "(alert InferwatchCollectorRefusingData), or accepted falling to zero while the "
            "service serves.",
            "cps",
            *(
                promql(
                    _otelcol(f"otelcol_receiver_{verb}_{signal}", "receiver"),
                    f"{verb} {label} ({{{{receiver}}}})",
                )
                for verb in ("accepted", "refused")
                for signal, label in SIGNALS
            ),
            w=12,
        ),
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Collector: sent and failed, per exporter",
            "Spans and metric points each exporter delivered (Prometheus' OTLP receiver, the "
            "trace backend, the trace file), and those it failed to send or to queue. Bad: "
            "any failed line above zero (alert InferwatchCollectorExportFailing: dashboards "
            "and SLO alerts go blind), or sent well below accepted.",
            "cps",
            *(
                promql(
                    _otelcol(f"otelcol_exporter_sent_{signal}", "exporter"),
                    f"sent {label} ({{{{exporter}}}})",
                )
                for signal, label in SIGNALS
            ),
            *(
                promql(
                    _otelcol(f"otelcol_exporter_{kind}_{signal}", "exporter", failure_only=True),
                    f"{kind.replace('_', ' ')} {label}",
                )
                for kind in ("send_failed", "enqueue_failed")
                for signal, label in SIGNALS
            ),
            w=12,
        ),
    )
    panels.add(
        panel(
            timeseries.Panel()
            .legend(legend("lastNotNull", "max"))
            .min(0)
            .max(1)
            .thresholds(thresholds((None, "green"), (0.5, "orange"), (0.9, "red")))
            .thresholds_style(dashed()),
            "Collector exporter queue fill",
            "Items waiting in each exporter's sending queue, as a share of its capacity "
            "(otelcol_exporter_queue_size / queue_capacity). Bad: climbing towards 100% (the "
            "destination is slow or down; once full, new data is dropped as enqueue_failed).",
            "percentunit",
            promql(
                f"max by (exporter, data_type) (otelcol_exporter_queue_size{{{COLLECTOR}}})\n/\n"
                f"max by (exporter, data_type) (otelcol_exporter_queue_capacity{{{COLLECTOR}}})",
                "{{exporter}} {{data_type}}",
            ),
            w=12,
        ),
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Spans the service dropped before export",
            "Spans the service's batch span processor handled, per outcome and process (the "
            "OpenTelemetry SDK's own otel.sdk.processor.span.processed): exported or handed "
            "on (no error_type) and dropped (error_type, e.g. queue_full: the export thread "
            "fell behind or the collector is away long enough to fill the queue). Bad: any "
            "dropped (alert InferwatchTelemetryDropped: traces go missing).",
            "cps",
            promql(
                "sum by (error_type, instance) (rate("
                f"{sel(prom(names.SDK_SPANS_PROCESSED))}[$__rate_interval]))",
                "{{instance}} {{error_type}}",
            ),
            w=12,
        ),
    )

    panels.row("Audit writer (every prediction to Postgres)")
    panels.add(
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Audit records: enqueued, written, spooled, replayed, dropped",
            "Audit records handed to the writer, stored in Postgres by binary COPY, written "
            "to the disk spool (Postgres away or slow), replayed from the spool, and lost "
            "(the spool unwritable). Bad: written below enqueued for minutes, spooled above "
            "zero (Postgres trouble), any dropped (pages: InferwatchAuditRecordsDropped).",
            "cps",
            promql(_audit(names.AUDIT_ENQUEUED), "enqueued"),
            promql(_audit(names.AUDIT_WRITTEN), "written"),
            promql(_audit(names.AUDIT_SPOOLED, failure_only=True), "spooled"),
            promql(_audit(names.AUDIT_REPLAYED, failure_only=True), "replayed"),
            promql(_audit(names.AUDIT_DROPPED, failure_only=True), "dropped"),
            w=12,
        ),
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Predictions served vs audit records enqueued",
            "Predictions of the selected models per second next to audit records handed to "
            "the writer (all models). With every model selected the two lines coincide. Bad: "
            "a gap (records lost before they reached the writer).",
            "cps",
            promql(f"sum(rate({sel(prom(names.PREDICTIONS))}[$__rate_interval]))", "predictions"),
            promql(_audit(names.AUDIT_ENQUEUED), "audit records enqueued"),
            w=12,
        ),
    )
    panels.add(
        panel(
            timeseries.Panel().legend(legend("lastNotNull", "max")),
            "Audit queue depth",
            "Records waiting in each process's in-memory audit queue. Bad: growing for "
            "minutes (the writer cannot keep up; alert InferwatchAuditWriterStalled when "
            "nothing is written at all).",
            "short",
            promql(f"sum by (instance) ({sel(prom(names.AUDIT_QUEUE_DEPTH))})", "{{instance}}"),
            w=8,
        ),
        panel(
            timeseries.Panel()
            .legend(legend("lastNotNull", "max"))
            .thresholds(thresholds((None, "green"), (spool_age_limit, "red")))
            .thresholds_style(dashed())
            .override_by_query("A", [dm.DynamicConfigValue(id_val="unit", value="short")]),
            "Audit spool: records and oldest age",
            "Records in the disk spool and the age of the oldest (seconds; the dashed line is "
            "the InferwatchAuditSpoolStale limit of prometheus/slo.yml). Bad: records that "
            "keep growing (InferwatchAuditSpoolGrowing) or an age above the line (analysts "
            "miss recent predictions).",
            "s",
            promql(
                f"sum by (instance) ({sel(prom(names.AUDIT_SPOOL_SIZE))})", "records {{instance}}"
            ),
            promql(
                f"max by (instance) ({sel(prom(names.AUDIT_SPOOL_OLDEST_AGE))})",
                "oldest age {{instance}}",
            ),
            w=8,
        ),
        panel(
            timeseries.Panel().legend(legend("mean", "max")),
            "Audit batch write latency P50 / P99",
            "Duration of one batch write (binary COPY of up to the batch size) into "
            "Postgres, from the writer's native histogram. Bad: P99 rising towards the "
            "flush interval (batches queue up), or seconds (Postgres is struggling).",
            "s",
            *(
                promql(
                    f"histogram_quantile({q}, sum(rate({sel(prom(names.AUDIT_BATCH_DURATION))}"
                    "[$__rate_interval])))",
                    f"P{round(q * 100)}",
                )
                for q in (0.5, 0.99)
            ),
            w=8,
        ),
    )
    return dash
