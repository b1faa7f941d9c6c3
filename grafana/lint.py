"""A linter for inferwatch's dashboard JSON, and what Grafana would send to each datasource.

Grafana's dashboard-linter cannot be built here (its go.mod has a replace directive, its
dependencies are AGPL), so the rules that matter are reimplemented, on the JSON that Grafana
loads (not on the code that makes it):

- ``datasource-variable``: a datasource variable per datasource type the panels query, each
  defaulting to a provisioned datasource of that type;
- ``panel-datasource``: every panel and target uses such a variable or a provisioned UID (data
  links included), never ``__inputs`` or ``${DS_...}`` (file provisioning cannot resolve them);
- ``template-refresh``: query variables refresh on time-range change (``refresh: 2``);
- ``panel-title``, ``panel-description`` (saying what "Bad:" looks like), ``panel-units``;
- ``promql-parse``: every PromQL target parses (promql-parser) once Grafana's variables are
  replaced by values;
- ``rate-interval``: ``rate``/``irate``/``increase`` take ``$__rate_interval``;
- ``counter-rate``: counters (``_total``, or a ``(_total)?`` name regex) only inside those;
- ``model-filter``: a selector of an inferwatch series filters every model label the series
  carries (``model_name``, ``model_version``) by the variable of that name;
- ``sql-time-filter``: every SQL target filters ``$__timeFilter(ts)``;
- ``panel-ids``: panel ids are unique.

``interpolate_promql`` and ``interpolate_sql`` do what Grafana does before a query leaves it
(template variables in the datasource's format, ``$__rate_interval``, the Postgres macros), so
tests can run the very queries against Prometheus and Postgres. Pure functions; no I/O
except ``known_series`` (reads the generated rule files) and ``roundtrip``.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import promql_parser as pp
import yaml

from grafana.boards import common
from inferwatch.telemetry import instruments as names

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = ROOT / "prometheus" / "rules"
RATE_FUNCTIONS = frozenset({"rate", "irate", "increase"})
# durations that stand in for Grafana's interval variables while linting: no panel writes
# them, so a range equal to one of them came from that variable
LINT_RATE_INTERVAL = timedelta(seconds=4321)
LINT_INTERVAL = timedelta(seconds=4322)
LINT_RANGE = timedelta(seconds=4323)
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]")


@dataclass(frozen=True)
class Problem:
    dashboard: str
    panel: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel}: [{self.rule}] {self.message}"


# --- what Grafana sends ---------------------------------------------------------------------
def prom_duration(d: timedelta) -> str:
    return str(pp.display_duration(d))


def rate_interval(interval: timedelta, scrape_interval: timedelta) -> timedelta:
    """Grafana's $__rate_interval: max(4 x scrape interval, $__interval + scrape interval)."""
    return max(4 * scrape_interval, interval + scrape_interval)


def _regex_escape_prometheus(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape: a value inside a PromQL `=~"..."` string."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m[0], value)


def _regex_escape(value: str) -> str:
    """Grafana's escapeStringForRegex (the `:regex` format)."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m[0], value)


def _substitute(
    text: str,
    builtins: Mapping[str, str],
    variables: Mapping[str, Sequence[str]],
    fmt: Callable[[Sequence[str], str | None], str],
) -> str:
    """Replace `$name`, `${name}`, `${name:format}` and `[[name]]` as Grafana's template
    service does: builtins verbatim, variables through `fmt`; anything else (`$1` in a
    label_replace) is left alone."""

    def sub(m: re.Match[str]) -> str:
        name = m[1] or m[2] or m[4]
        spec = m[3] or m[5]
        if name in builtins:
            return builtins[name]
        if name in variables:
            return fmt(variables[name], spec)
        return m[0]

    return _VARIABLE.sub(sub, text)


def interpolate_promql(
    expr: str,
    variables: Mapping[str, Sequence[str]],
    *,
    interval: timedelta,
    rate_interval: timedelta,
    range_: timedelta,
) -> str:
    """`expr` as Grafana's Prometheus datasource sends it. `variables` maps each multi-value
    variable to the values chosen (`[".*"]` is "All": its custom value goes in unescaped)."""

    def fmt(values: Sequence[str], spec: str | None) -> str:
        if list(values) == [common.ALL]:
            return common.ALL
        escaped = [_regex_escape_prometheus(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    builtins = {
        "__rate_interval": prom_duration(rate_interval),
        "__interval": prom_duration(interval),
        "__range": prom_duration(range_),
    }
    return _substitute(expr, builtins, variables, fmt)


def _rfc3339(t: datetime) -> str:
    """Go's time.RFC3339Nano in UTC (trailing zeros of the fraction dropped)."""
    s = t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return s + "Z"


def _seconds_go(d: timedelta) -> str:
    """A float of seconds as Go's %v prints it (60 -> "60", 0.5 -> "0.5")."""
    s = d.total_seconds()
    return str(int(s)) if s.is_integer() else repr(s)


def _macro(name: str, args: list[str], start: datetime, end: datetime) -> str:
    """One macro of Grafana's Postgres datasource (pkg/tsdb/grafana-postgresql-datasource)."""
    col = args[0] if args and args[0] else None
    needs_column = ("__time", "__timeEpoch", "__timeFilter", "__timeGroup", "__timeGroupAlias")
    if name in needs_column and col is None:
        raise ValueError(f"macro ${name} needs a column")
    if name == "__time":
        return f'{col} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {col}) as "time"'
    if name == "__timeFilter":
        return f"{col} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
    if name == "__timeFrom":
        return f"'{_rfc3339(start)}'"
    if name == "__timeTo":
        return f"'{_rfc3339(end)}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        if len(args) not in (2, 3):
            raise ValueError(f"macro ${name} needs a column and an interval")
        step = _seconds_go(pp.parse_duration(args[1].strip("'")))
        group = f"floor(extract(epoch from {col})/{step})*{step}"
        return group + (' AS "time"' if name == "__timeGroupAlias" else "")
    raise ValueError(f"unknown macro ${name}")


def interpolate_sql(
    sql: str,
    variables: Mapping[str, Sequence[str]],
    *,
    start: datetime,
    end: datetime,
    interval: timedelta,
) -> str:
    """`sql` as Grafana's Postgres datasource runs it: the frontend replaces template
    variables (`${var:regex}` escaped for a regex, "All" as its custom value), then the
    backend expands the macros (`$__timeFilter(ts)` ...)."""

    def fmt(values: Sequence[str], spec: str | None) -> str:
        if list(values) == [common.ALL]:
            return common.ALL
        if spec == "regex":
            escaped = [_regex_escape(v) for v in values]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        if spec is not None:
            raise ValueError(f"variable format {spec!r} not implemented here")
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)

    text = _substitute(sql, {"__interval": prom_duration(interval)}, variables, fmt)

    def macro(m: re.Match[str]) -> str:
        return _macro(m[1], [a.strip() for a in m[2].split(",")], start, end)

    return re.sub(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)", macro, text)


# --- walking dashboards ----------------------------------------------------------------------
def load_board(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows' nested panels included, rows themselves not)."""
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            yield from p.get("panels", [])
        else:
            yield p


def datasource_type(ref: Mapping[str, Any] | None) -> str:
    return str((ref or {}).get("type", ""))


def prometheus_targets(panel: Mapping[str, Any]) -> list[dict[str, Any]]:
    if datasource_type(panel.get("datasource")) != common.PROMETHEUS_TYPE:
        return []
    return [t for t in panel.get("targets", []) if "expr" in t]


def sql_targets(panel: Mapping[str, Any]) -> list[dict[str, Any]]:
    if datasource_type(panel.get("datasource")) != common.POSTGRES_TYPE:
        return []
    return [t for t in panel.get("targets", []) if "rawSql" in t]


def variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard.get("templating", {}).get("list", []))


def link_datasources(panel: Mapping[str, Any]) -> set[str]:
    """Datasource UIDs named by the panel's data links (Explore URLs' pane state)."""
    links: list[Mapping[str, Any]] = list(
        panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
    )
    for o in panel.get("fieldConfig", {}).get("overrides", []):
        for prop in o.get("properties", []):
            if prop.get("id") == "links":
                links += prop.get("value", [])
    uids: set[str] = set()
    for link in links:
        for panes in parse_qs(urlsplit(str(link.get("url", ""))).query).get("panes", []):
            for pane in json.loads(panes).values():
                uids.add(str(pane["datasource"]))
                uids |= {str(q["datasource"]["uid"]) for q in pane.get("queries", [])}
    return uids


def known_series() -> set[str]:
    """The service's metric names and every recording rule of prometheus/rules/."""
    out = {common.prom(n) for n in names.METRICS}
    for f in sorted(RULE_FILES.glob("*.yml")):
        for group in yaml.safe_load(f.read_text())["groups"]:
            out |= {r["record"] for r in group["rules"] if "record" in r}
    return out


# --- PromQL checks ---------------------------------------------------------------------------
def _children(node: Any) -> list[Any]:
    if isinstance(node, pp.Call):
        return [a for a in node.args if isinstance(a, pp.Expr)]
    if isinstance(node, pp.AggregateExpr):
        return [c for c in (node.expr, node.param) if isinstance(c, pp.Expr)]
    if isinstance(node, pp.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, pp.ParenExpr | pp.UnaryExpr | pp.SubqueryExpr):
        return [node.expr]
    if isinstance(node, pp.MatrixSelector):
        return [node.vector_selector]
    return []


def walk(node: Any, parents: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Every node of a parsed PromQL expression, with its ancestors."""
    yield node, parents
    for child in _children(node):
        yield from walk(child, (*parents, node))


def _name_matcher(vs: pp.VectorSelector) -> pp.Matcher | None:
    for m in vs.matchers.matchers:
        if m.name == "__name__":
            return m
    return None


def _is_counter(vs: pp.VectorSelector) -> bool:
    if vs.name:
        return vs.name.endswith("_total")
    m = _name_matcher(vs)
    return m is not None and m.value.endswith(("_total", "(_total)?"))


def selected_names(vs: pp.VectorSelector, known: Collection[str]) -> tuple[set[str], str]:
    """The known series a selector can select, and how it names them (for messages)."""
    if vs.name:
        return {vs.name}, vs.name
    m = _name_matcher(vs)
    if m is None:
        return set(), "(no name)"
    if m.op == pp.MatchOp.Re:
        return {n for n in known if re.fullmatch(m.value, n)}, f'__name__=~"{m.value}"'
    return {m.value}, m.value


def lint_promql(
    expr: str, known: Collection[str], sentinels: Mapping[str, str]
) -> list[tuple[str, str]]:
    """(rule, message) for one PromQL target (`sentinels`: the value each model variable was
    replaced by)."""
    text = interpolate_promql(
        expr,
        {k: [v] for k, v in sentinels.items()},
        interval=LINT_INTERVAL,
        rate_interval=LINT_RATE_INTERVAL,
        range_=LINT_RANGE,
    )
    try:
        tree = pp.parse(text)
    except Exception as exc:  # promql-parser raises a plain ValueError-like error
        return [("promql-parse", f"does not parse: {exc}: {text}")]
    out: list[tuple[str, str]] = []
    for node, parents in walk(tree):
        if isinstance(node, pp.Call) and node.func.name in RATE_FUNCTIONS:
            for arg in node.args:
                if isinstance(arg, pp.MatrixSelector) and arg.range != LINT_RATE_INTERVAL:
                    out.append(
                        (
                            "rate-interval",
                            f"{node.func.name}() over [{prom_duration(arg.range)}], not "
                            "[$__rate_interval]",
                        )
                    )
        if not isinstance(node, pp.VectorSelector):
            continue
        selected, label = selected_names(node, known)
        inside_rate = (
            len(parents) >= 2
            and isinstance(parents[-1], pp.MatrixSelector)
            and isinstance(parents[-2], pp.Call)
            and parents[-2].func.name in RATE_FUNCTIONS
        )
        if _is_counter(node) and not inside_rate:
            out.append(("counter-rate", f"counter {label} outside rate()/irate()/increase()"))
        inferwatch = label.startswith(("inferwatch", '__name__=~"inferwatch'))
        if not inferwatch and not any(common.is_inferwatch(n) for n in selected):
            continue
        scopes = {common.model_labels(n) for n in selected}
        if not selected or None in scopes:
            out.append(("model-filter", f"{label}: no known inferwatch series (scope unknown)"))
            continue
        if len(scopes) > 1:
            out.append(("model-filter", f"{label} selects series with different model labels"))
            continue
        (scope,) = scopes
        have = {(m.name, m.value) for m in node.matchers.matchers if m.op == pp.MatchOp.Re}
        for lbl in scope or ():
            if (lbl, sentinels[lbl]) not in have:
                out.append(("model-filter", f'{label} not filtered by {lbl}=~"${lbl}"'))
    return out


# --- the linter --------------------------------------------------------------------------------
def lint(
    dashboard: Mapping[str, Any],
    *,
    known: Collection[str] | None = None,
    datasources: Mapping[str, str] = common.DATASOURCES,
) -> list[Problem]:
    """Every problem of one dashboard (its JSON, as Grafana loads it)."""
    known = known_series() if known is None else known
    title = str(dashboard.get("title", "?"))
    problems: list[Problem] = []

    def bad(panel: str, rule: str, message: str) -> None:
        problems.append(Problem(title, panel, rule, message))

    text = json.dumps(dashboard)
    if "__inputs" in dashboard or "${DS_" in text:
        bad("-", "panel-datasource", "__inputs / ${DS_...}: file provisioning cannot resolve them")

    ds_vars = {v["name"]: v for v in variables(dashboard) if v.get("type") == "datasource"}
    for name, v in ds_vars.items():
        uid = (v.get("current") or {}).get("value")
        if datasources.get(str(uid)) != v.get("query"):
            bad(
                "-",
                "datasource-variable",
                f"${name} defaults to {uid!r}, no provisioned {v.get('query')}",
            )
    for v in variables(dashboard):
        if v.get("type") == "query" and v.get("refresh") != 2:
            bad(
                "-",
                "template-refresh",
                f"${v['name']}: refresh {v.get('refresh')}, not 2 (time range change)",
            )

    sentinels = {common.MODEL_NAME: "lint_model_name", common.MODEL_VERSION: "lint_model_version"}
    seen_ids: set[int] = set()
    all_panels = [p for p in dashboard.get("panels", []) if p.get("type") == "row"] + list(
        panels(dashboard)
    )
    for p in all_panels:
        if p.get("id") in seen_ids:
            bad(str(p.get("title")), "panel-ids", f"id {p.get('id')} used twice")
        seen_ids.add(p.get("id", -1))
    used_types: set[str] = set()
    for p in panels(dashboard):
        name = str(p.get("title") or f"panel {p.get('id')}")
        if not str(p.get("title", "")).strip():
            bad(name, "panel-title", "no title")
        description = str(p.get("description", ""))
        if not description.strip():
            bad(name, "panel-description", "no description")
        elif "Bad:" not in description:
            bad(name, "panel-description", "the description does not say what 'Bad:' looks like")
        if not str(p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")).strip():
            bad(name, "panel-units", "no unit")
        refs = [p.get("datasource")] + [
            t["datasource"] for t in p.get("targets", []) if "datasource" in t
        ]
        for ref in refs:
            used_types.add(datasource_type(ref))
            uid = str((ref or {}).get("uid", ""))
            var = re.fullmatch(r"\$\{?(\w+)\}?", uid)
            if var:
                ds_var = ds_vars.get(var[1])
                if ds_var is None or ds_var.get("query") != datasource_type(ref):
                    bad(
                        name,
                        "panel-datasource",
                        f"{uid} is no {datasource_type(ref)} datasource variable",
                    )
            elif datasources.get(uid) != datasource_type(ref):
                bad(name, "panel-datasource", f"datasource {uid!r} is not provisioned")
        for uid in link_datasources(p):
            if uid not in datasources:
                bad(name, "panel-datasource", f"data link to datasource {uid!r}, not provisioned")
        if not p.get("targets"):
            bad(name, "panel-datasource", "no query")
        for t in prometheus_targets(p):
            for rule, message in lint_promql(str(t["expr"]), known, sentinels):
                bad(name, rule, f"{t.get('refId')}: {message}")
        for t in sql_targets(p):
            if "$__timeFilter(ts)" not in str(t["rawSql"]):
                bad(name, "sql-time-filter", f"{t.get('refId')}: no $__timeFilter(ts)")
    for plugin in used_types - {""}:
        if not any(v.get("query") == plugin for v in ds_vars.values()):
            bad(
                "-",
                "datasource-variable",
                f"panels query {plugin} without a datasource variable for it",
            )
    return problems


# --- the SDK's view ------------------------------------------------------------------------
def encode(obj: object) -> str:
    """The dashboards' serialisation: the SDK's encoder, keys sorted, two-space indent."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return str(JSONEncoder(sort_keys=True, indent=2).encode(obj)) + "\n"


def roundtrip(text: str) -> str:
    """A dashboard JSON decoded into the SDK's types and encoded again (equal when the JSON
    is what the SDK models: no field it does not know, none of the wrong type)."""
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog import runtime as cogruntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # v1 dashboards, on purpose
        from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()
    cogruntime.register_dataquery_variant(common.variant_config())
    return encode(Dashboard.from_json(json.loads(text)))
