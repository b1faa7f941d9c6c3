"""What every inferwatch dashboard shares: datasources, variables, selectors, panel helpers and
the Postgres query type.

The datasource UIDs are defined here, once; grafana/provisioning/datasources/inferwatch.yaml
gives the datasources those UIDs (a test checks they agree). Metric names of the service come
from ``inferwatch.telemetry.instruments`` (``prometheus_name``), never spelled here; recording
rule names are those of prometheus/rules/generate.py (the metric-name contract test checks
each against the generated rule files and the live stack).

``sel()`` writes every selector: it adds the model-name and model-version filters a series
carries (``model_labels``), so no panel forgets them; the linter checks it anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar
from urllib.parse import quote

import yaml
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from inferwatch.telemetry import instruments as names
from inferwatch.telemetry.instruments import prometheus_name

ROOT = Path(__file__).resolve().parents[2]


def load_slo() -> dict[str, Any]:
    """prometheus/slo.yml: thresholds drawn on panels come from it, as the rules' do."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "prometheus" / "slo.yml").read_text())
    return data


# --- datasources: the ONE place their UIDs are set --------------------------------------
PROMETHEUS_UID = "inferwatch-prometheus"
POSTGRES_UID = "inferwatch-postgres"
JAEGER_UID = "inferwatch-jaeger"
PROMETHEUS_TYPE = "prometheus"
POSTGRES_TYPE = "grafana-postgresql-datasource"
JAEGER_TYPE = "jaeger"
DATASOURCES: Mapping[str, str] = {  # uid -> plugin type
    PROMETHEUS_UID: PROMETHEUS_TYPE,
    POSTGRES_UID: POSTGRES_TYPE,
    JAEGER_UID: JAEGER_TYPE,
}
# the exemplar label Prometheus' OTLP receiver gives the trace id (e2e-checked)
EXEMPLAR_TRACE_LABEL = "trace_id"

# --- template variables ----------------------------------------------------------------
DS_VAR = "datasource"  # the Prometheus datasource of a dashboard
PG_VAR = "postgres"  # the Postgres datasource (analyst panels)
MODEL_NAME = "model_name"  # variable names equal the label names they filter
MODEL_VERSION = "model_version"
ALL = ".*"  # the custom "All" value: a regex that matches every value, also an absent label
PROM_DS = cm.DataSourceRef(type_val=PROMETHEUS_TYPE, uid=f"${{{DS_VAR}}}")
PG_DS = cm.DataSourceRef(type_val=POSTGRES_TYPE, uid=f"${{{PG_VAR}}}")


def prom(name: str) -> str:
    """The Prometheus name of one of the service's metrics (instruments.METRICS)."""
    return prometheus_name(name)


# --- which model labels each series carries ------------------------------------------------
MV: tuple[str, ...] = (MODEL_NAME, MODEL_VERSION)
MN: tuple[str, ...] = (MODEL_NAME,)
_PER_MODEL = (
    names.INFERENCE_DURATION,
    names.INFERENCE_QUEUE_DURATION,
    names.MICROBATCH_SIZE,
    names.MICROBATCH_DURATION,
    names.MICROBATCH_QUEUE_DEPTH,
    names.BATCH_INFERENCE_DURATION,
    names.PREDICTIONS,
    names.DRIFT_PSI,
    names.DRIFT_STATISTIC,
    names.DRIFT_DETECTED,
    names.DRIFT_DATASET,
    names.QUALITY_PRECISION,
    names.QUALITY_RECALL,
    names.QUALITY_ROC_AUC,
    names.QUALITY_LABEL_COVERAGE,
    names.ANALYSIS_ROWS,
    names.ANALYSIS_LAST_SUCCESS,
    names.QUALITY_ESTIMATED_PRECISION,
    names.QUALITY_ESTIMATED_RECALL,
    names.QUALITY_ESTIMATED_ROC_AUC,
)
# every metric of the service: per model (name and version) or per process only (HTTP,
# audit writer, telemetry queue, rejected requests carry no model label)
SERIES_MODEL_LABELS: Mapping[str, tuple[str, ...]] = {
    prom(n): (MV if n in _PER_MODEL else ()) for n in names.METRICS
}
# recording rules of prometheus/rules/inferwatch.yml, by name pattern (every rule matches one)
RULE_MODEL_LABELS: Sequence[tuple[re.Pattern[str], tuple[str, ...]]] = (
    (re.compile(r"inferwatch:(predictions:rate5m|inference_latency:p\d+_5m)"), MV),
    (
        re.compile(r"inferwatch:inference_latency_(sli|burn|budget_remaining|window_history):.+"),
        MN,
    ),
    (re.compile(r"inferwatch:http_(errors|requests|errors_burn)[_:].+"), ()),
    (re.compile(r"inferwatch:slo_(objective|window):.+"), ()),
)


def model_labels(name: str) -> tuple[str, ...] | None:
    """The model labels series `name` carries; None for a name not in the tables above."""
    if name in SERIES_MODEL_LABELS:
        return SERIES_MODEL_LABELS[name]
    for pattern, labels in RULE_MODEL_LABELS:
        if pattern.fullmatch(name):
            return labels
    return None


def is_inferwatch(name: str) -> bool:
    return name.startswith(("inferwatch_", "inferwatch:")) or name in SERIES_MODEL_LABELS


def sel(name: str, *matchers: str) -> str:
    """A selector of series `name` filtered by the model variables it carries, plus `matchers`."""
    scope = model_labels(name) if is_inferwatch(name) else ()
    if scope is None:
        raise ValueError(f"{name}: not in SERIES_MODEL_LABELS / RULE_MODEL_LABELS")
    all_matchers = [*map(_var_matcher, scope), *matchers]
    return name + _braces(all_matchers) if all_matchers else name


def sel_re(pattern: str, *matchers: str) -> str:
    """A selector by name regex, e.g. the collector's `otelcol_x(_total)?` (its self-metrics
    lost `_total` at 0.153; grafana's opentelemetry-collector-mixin matches them the same way)."""
    return _braces([f'__name__=~"{pattern}"', *matchers])


def _var_matcher(label: str) -> str:
    """`label=~"$label"`: the variable of the same name, as a regex (multi-value, "All")."""
    return f'{label}=~"${label}"'


def _braces(matchers: Sequence[str]) -> str:
    return "{" + ", ".join(matchers) + "}"


# --- queries ---------------------------------------------------------------------------
def promql(
    expr: str,
    legend: str = "__auto",
    *,
    exemplar: bool = False,
    fmt: pm.PromQueryFormat = pm.PromQueryFormat.TIME_SERIES,
) -> pb.Dataquery:
    return (
        pb.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .editor_mode(pm.QueryEditorMode.CODE)
        .format(fmt)
        .range()
        .exemplar(exemplar)
    )


class SqlQuery(cogvariants.Dataquery):
    """A query of Grafana's Postgres datasource (grafana-postgresql-datasource), code mode.

    grafana-foundation-sdk ships no builder for it; this follows the SDK's own dataquery
    types: a model with to_json/from_json, and ``variant_config`` for decoding dashboards.
    """

    def __init__(
        self,
        ref_id: str = "",
        raw_sql: str = "",
        format_val: str = "time_series",
        datasource: cm.DataSourceRef | None = None,
    ) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.format_val = format_val
        self.datasource = datasource

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "editorMode": "code",
            "format": self.format_val,
            "rawQuery": True,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        ds = data.get("datasource")
        return cls(
            ref_id=str(data.get("refId", "")),
            raw_sql=str(data.get("rawSql", "")),
            format_val=str(data.get("format", "time_series")),
            datasource=cm.DataSourceRef.from_json(ds) if isinstance(ds, dict) else None,
        )


def variant_config() -> cogruntime.DataqueryConfig:
    return cogruntime.DataqueryConfig(identifier=POSTGRES_TYPE, from_json_hook=SqlQuery.from_json)


class Sql(cogbuilder.Builder[SqlQuery]):
    """Builder of a ``SqlQuery``: `time_series` (columns time, metric, value) or `table`."""

    def __init__(self, raw_sql: str, fmt: str = "time_series") -> None:
        self._internal = SqlQuery(raw_sql=raw_sql.strip(), format_val=fmt)

    def build(self) -> SqlQuery:
        return self._internal


# --- variables -------------------------------------------------------------------------
def datasource_variable(name: str, plugin: str, uid: str, label: str) -> db.DatasourceVariable:
    """A datasource picker defaulting to the provisioned datasource `uid`."""
    return (
        db.DatasourceVariable(name)
        .label(label)
        .type(plugin)
        .current(dm.VariableOption(text=uid, value=uid, selected=True))
    )


def label_variable(name: str, metric: str, *filters: str) -> db.QueryVariable:
    """A multi-value variable of the values of label `name` on series `metric`, refreshed on
    every time-range change (refresh 2), "All" being the regex `.*`."""
    match = metric + _braces(filters) if filters else metric
    query = f"label_values({match}, {name})"
    return (
        db.QueryVariable(name)
        .label(name.replace("_", " "))
        .datasource(PROM_DS)
        .query(query)
        .definition(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(ALL)
        .current(dm.VariableOption(text="All", value="$__all", selected=True))
    )


def model_variables() -> list[db.QueryVariable]:
    """Model name and version, from the predictions counter (every served model has one)."""
    predictions = prom(names.PREDICTIONS)
    return [
        label_variable(MODEL_NAME, predictions),
        label_variable(MODEL_VERSION, predictions, _var_matcher(MODEL_NAME)),
    ]


# --- panels ----------------------------------------------------------------------------
class Panels:
    """Numbers panels in the order they are added (Grafana wants unique ids)."""

    def __init__(self, dashboard: db.Dashboard) -> None:
        self.dashboard = dashboard
        self._next = 1

    def row(self, title: str) -> Self:
        self.dashboard.with_row(db.Row(title).id(self._take()))
        return self

    def add(self, *panels: Any) -> Self:
        for p in panels:
            self.dashboard.with_panel(p.id(self._take()))
        return self

    def _take(self) -> int:
        n, self._next = self._next, self._next + 1
        return n


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    """Absolute thresholds: (None, base colour), then (value, colour) upwards."""
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def legend(*calcs: str) -> cb.VizLegendOptions:
    return (
        cb.VizLegendOptions()
        .display_mode(cm.LegendDisplayMode.TABLE if calcs else cm.LegendDisplayMode.LIST)
        .placement(cm.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(list(calcs))
    )


def value_map(mapping: Mapping[str, tuple[str, str]]) -> dm.ValueMap:
    """Values to (text, colour)."""
    return dm.ValueMap(
        options={
            k: dm.ValueMappingResult(text=t, color=c, index=i)
            for i, (k, (t, c)) in enumerate(mapping.items())
        }
    )


def special_map(match: dm.SpecialValueMatch, text: str, color: str) -> dm.SpecialValueMap:
    return dm.SpecialValueMap(
        options=dm.DashboardSpecialValueMapOptions(
            match=match, result=dm.ValueMappingResult(text=text, color=color)
        )
    )


def field_links(
    field: str, links: Iterable[Mapping[str, object]]
) -> db.DashboardFieldConfigSourceOverrides:
    """Data links on one field (a table column) of a panel."""
    return (
        db.DashboardFieldConfigSourceOverrides()
        .matcher(dm.MatcherConfig(id_val="byName", options=field))
        .properties([dm.DynamicConfigValue(id_val="links", value=list(links))])
    )


def field_unit(field: str, unit: str) -> db.DashboardFieldConfigSourceOverrides:
    return (
        db.DashboardFieldConfigSourceOverrides()
        .matcher(dm.MatcherConfig(id_val="byName", options=field))
        .properties([dm.DynamicConfigValue(id_val="unit", value=unit)])
    )


def explore_link(
    title: str, uid: str, plugin: str, query: Mapping[str, object]
) -> dict[str, object]:
    """A data link that opens Explore on datasource `uid` with `query`, over the panel's time
    range; `${__value.raw}` (the clicked cell) and `${__from}`/`${__to}` stay for Grafana to
    fill in, the rest of the pane state is URL-encoded JSON."""
    pane = {
        "datasource": uid,
        "queries": [{"refId": "A", "datasource": {"type": plugin, "uid": uid}, **query}],
        "range": {"from": "${__from}", "to": "${__to}"},
    }
    encoded = quote(json.dumps({"trace": pane}, separators=(",", ":")), safe="")
    for var in ("${__value.raw}", "${__from}", "${__to}"):
        encoded = encoded.replace(quote(var, safe=""), var)
    return {"title": title, "url": f"/explore?schemaVersion=1&orgId=1&panes={encoded}"}


def trace_link() -> dict[str, object]:
    """The trace of the clicked trace id, from the Jaeger datasource (its trace-id query)."""
    return explore_link(
        "Open the trace in Jaeger", JAEGER_UID, JAEGER_TYPE, {"query": "${__value.raw}"}
    )


P = TypeVar("P", bound="_PanelBuilder")


class _PanelBuilder(Protocol):
    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def datasource(self, datasource: cm.DataSourceRef) -> Self: ...
    def height(self, h: int) -> Self: ...
    def span(self, w: int) -> Self: ...
    def with_target(self, target: cogbuilder.Builder[cogvariants.Dataquery]) -> Self: ...


def panel(
    builder: P,
    title: str,
    description: str,
    unit: str,
    *targets: pb.Dataquery | Sql,
    ds: cm.DataSourceRef = PROM_DS,
    h: int = 8,
    w: int = 12,
) -> P:
    """A panel with what every panel needs (the linter checks): a title, a description that
    says what it shows and what bad looks like, a unit, a datasource and its queries, whose
    refIds are A, B, C... in order."""
    p = builder.title(title).description(description).unit(unit).datasource(ds).height(h).span(w)
    for i, target in enumerate(targets):
        ref = chr(ord("A") + i)
        if isinstance(target, Sql):
            target.build().ref_id = ref
            target.build().datasource = ds
        else:
            target.ref_id(ref)
        p = p.with_target(target)
    return p


def last_value() -> cb.ReduceDataOptions:
    """Stat panels: the last non-null value of each series."""
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def dashed() -> cb.GraphThresholdsStyleConfig:
    """Thresholds drawn as dashed lines on a time series."""
    return cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)


def stacked() -> cb.StackingConfig:
    """Series stacked on each other (shares that add up to 1)."""
    return cb.StackingConfig().mode(cm.StackingMode.NORMAL)
