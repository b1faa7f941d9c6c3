"""The Grafana dashboards and provisioning, statically: generated from code without drift,
clean under the linter (whose every rule is shown to fail on a broken panel), equal to
themselves after a round trip through grafana-foundation-sdk, and consistent with the
provisioned datasources. What Grafana would send (variables, $__rate_interval, Postgres
macros) is checked here against Grafana's own rules; the end-to-end test runs it.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from grafana import lint
from grafana.boards import DASHBOARDS, common
from inferwatch.telemetry import instruments as names
from stack.postgres import DB_NAME, ROLE_USERS
from stack.procs import ROOT

GRAFANA = ROOT / "grafana"
BOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
PROVISIONING = GRAFANA / "provisioning"


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def provisioned() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((PROVISIONING / "datasources" / "inferwatch.yaml").read_text())
    return {d["uid"]: d for d in doc["datasources"]}


# --- generated, linted, round-tripped ----------------------------------------------------
def test_generated_dashboards_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in BOARD_FILES} == set(DASHBOARDS)


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.name)
def test_dashboard_passes_the_linter(path: Path) -> None:
    assert [str(p) for p in lint.lint(load(path))] == []


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.name)
def test_dashboard_round_trips_through_the_sdk(path: Path) -> None:
    assert lint.roundtrip(path.read_text()) == path.read_text()


def test_a_field_the_sdk_does_not_model_fails_the_round_trip() -> None:
    data = load(BOARD_FILES[0])
    data["panels"][1]["hideTimeOverride"] = True  # a known field: survives
    kept = json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert lint.roundtrip(kept) == kept
    data["panels"][1]["unitt"] = "s"  # a typo: not in the SDK's Panel, so dropped
    broken = json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert lint.roundtrip(broken) != broken


@pytest.mark.parametrize("path", BOARD_FILES, ids=lambda p: p.name)
def test_dashboard_has_the_datasource_and_model_variables(path: Path) -> None:
    board = load(path)
    by_name = {v["name"]: v for v in lint.variables(board)}
    assert by_name[common.DS_VAR]["type"] == "datasource"
    for name in (common.MODEL_NAME, common.MODEL_VERSION):
        v = by_name[name]
        assert (v["type"], v["refresh"], v["multi"], v["allValue"]) == ("query", 2, True, ".*")
    assert all(p.get("type") != "row" for p in lint.panels(board))
    assert len(list(lint.panels(board))) >= 8


def test_every_panel_query_kind_is_exercised() -> None:
    """The three dashboards together query Prometheus and Postgres, and link to Jaeger."""
    panels = [p for f in BOARD_FILES for p in lint.panels(load(f))]
    assert any(lint.prometheus_targets(p) for p in panels)
    assert any(lint.sql_targets(p) for p in panels)
    assert any(common.JAEGER_UID in lint.link_datasources(p) for p in panels)
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert heatmaps
    assert all(t["exemplar"] for p in heatmaps for t in p["targets"])


# --- provisioning ------------------------------------------------------------------------
def test_provisioned_datasources_are_the_uids_the_dashboards_use() -> None:
    ds = provisioned()
    assert {uid: d["type"] for uid, d in ds.items()} == dict(common.DATASOURCES)
    used: set[str] = set()
    for f in BOARD_FILES:
        board = load(f)
        used |= {
            str(v["current"]["value"]) for v in lint.variables(board) if v["type"] == "datasource"
        }
        for p in lint.panels(board):
            used |= lint.link_datasources(p)
            uid = str(p["datasource"]["uid"])
            if not uid.startswith("$"):
                used.add(uid)
    assert used == set(ds)


def test_prometheus_datasource_links_exemplars_to_the_trace_datasource() -> None:
    prom = provisioned()[common.PROMETHEUS_UID]
    assert prom["jsonData"]["exemplarTraceIdDestinations"] == [
        {"name": common.EXEMPLAR_TRACE_LABEL, "datasourceUid": common.JAEGER_UID}
    ]
    scrape = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    assert prom["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]
    assert prom["url"] == "http://prometheus:9090"
    assert provisioned()[common.JAEGER_UID]["url"] == "http://jaeger:16686"


def test_postgres_datasource_is_the_read_only_analyst_with_the_password_from_the_env() -> None:
    pg = provisioned()[common.POSTGRES_UID]
    assert pg["user"] == ROLE_USERS["analyst"]
    assert pg["url"] == "postgres:5432"
    assert pg["jsonData"]["database"] == DB_NAME
    # Grafana 12 ignores the old top-level fields
    assert "database" not in pg
    assert "password" not in pg
    assert pg["secureJsonData"] == {"password": "${INFERWATCH_ANALYST_PASSWORD}"}


def test_dashboard_provider_reads_the_folder_compose_mounts() -> None:
    doc = yaml.safe_load((PROVISIONING / "dashboards" / "inferwatch.yaml").read_text())
    (provider,) = doc["providers"]
    assert doc["apiVersion"] == 1
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_nothing_under_grafana_needs_an_import_wizard() -> None:
    for path in GRAFANA.rglob("*"):
        if path.suffix in (".json", ".yaml"):
            text = path.read_text()
            assert "__inputs" not in text, path
            assert "${DS_" not in text, path


# --- the scope table the model-filter rule relies on -----------------------------------------
def test_every_metric_and_recording_rule_has_a_model_scope() -> None:
    unknown = sorted(n for n in lint.known_series() if common.model_labels(n) is None)
    assert unknown == []
    assert common.model_labels(common.prom(names.PREDICTIONS)) == common.MV
    assert common.model_labels(common.prom(names.AUDIT_WRITTEN)) == ()
    assert common.model_labels("inferwatch:inference_latency_burn:rate1h") == common.MN


# --- the linter: each rule fails on a broken panel -------------------------------------------
def _panel(board: dict[str, Any], title: str) -> dict[str, Any]:
    return next(p for p in lint.panels(board) if p["title"] == title)


def _service() -> dict[str, Any]:
    return copy.deepcopy(load(GRAFANA / "dashboards" / "service-slo.json"))


def _model() -> dict[str, Any]:
    return copy.deepcopy(load(GRAFANA / "dashboards" / "model-data.json"))


PER_VERSION = "Predictions per second by model version"
REJECTED = "Requests rejected before inference, by reason"


def _set_expr(title: str, expr: str) -> Callable[[dict[str, Any]], None]:
    def mutate(board: dict[str, Any]) -> None:
        _panel(board, title)["targets"][0]["expr"] = expr

    return mutate


def _del_variable(name: str) -> Callable[[dict[str, Any]], None]:
    def mutate(board: dict[str, Any]) -> None:
        board["templating"]["list"] = [v for v in lint.variables(board) if v["name"] != name]

    return mutate


def _refresh_on_load(board: dict[str, Any]) -> None:
    next(v for v in lint.variables(board) if v["name"] == common.MODEL_VERSION)["refresh"] = 1


def _no_description(board: dict[str, Any]) -> None:
    _panel(board, PER_VERSION)["description"] = ""


def _no_bad(board: dict[str, Any]) -> None:
    _panel(board, PER_VERSION)["description"] = "Predictions per second."


def _no_unit(board: dict[str, Any]) -> None:
    del _panel(board, PER_VERSION)["fieldConfig"]["defaults"]["unit"]


def _no_title(board: dict[str, Any]) -> None:
    _panel(board, PER_VERSION)["title"] = ""


def _hardcoded_uid(board: dict[str, Any]) -> None:
    _panel(board, PER_VERSION)["datasource"] = {"type": "prometheus", "uid": "my-prometheus"}


def _inputs(board: dict[str, Any]) -> None:
    board["__inputs"] = [{"name": "DS_PROMETHEUS", "type": "datasource"}]


def _duplicate_id(board: dict[str, Any]) -> None:
    _panel(board, REJECTED)["id"] = _panel(board, PER_VERSION)["id"]


def _no_time_filter(board: dict[str, Any]) -> None:
    target = _panel(board, "Predictions per hour (audit table)")["targets"][0]
    target["rawSql"] = target["rawSql"].replace("$__timeFilter(ts)", "true")


def _link_to_unknown(board: dict[str, Any]) -> None:
    panel = _panel(board, "Latest predictions (trace id links to the trace)")
    link = panel["fieldConfig"]["overrides"][0]["properties"][0]["value"][0]
    link["url"] = link["url"].replace(common.JAEGER_UID, "tempo")


P = common.prom(names.PREDICTIONS)
MV = 'model_name=~"$model_name", model_version=~"$model_version"'
CASES: list[tuple[str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None], str]] = [
    (
        "datasource-variable",
        _service,
        _del_variable(common.DS_VAR),
        "without a datasource variable",
    ),
    ("template-refresh", _service, _refresh_on_load, "refresh 1, not 2"),
    ("panel-title", _service, _no_title, "no title"),
    ("panel-description", _service, _no_description, "no description"),
    ("panel-description", _service, _no_bad, "'Bad:'"),
    ("panel-units", _service, _no_unit, "no unit"),
    ("panel-datasource", _service, _hardcoded_uid, "'my-prometheus' is not provisioned"),
    ("panel-datasource", _service, _inputs, "__inputs"),
    ("panel-datasource", _model, _link_to_unknown, "'tempo', not provisioned"),
    ("panel-ids", _service, _duplicate_id, "used twice"),
    (
        "promql-parse",
        _service,
        _set_expr(PER_VERSION, f"sum(rate({P}{{{MV}}}[$__rate_interval])"),
        "does not parse",
    ),
    (
        "rate-interval",
        _service,
        _set_expr(PER_VERSION, f"sum(rate({P}{{{MV}}}[5m]))"),
        "not [$__rate_interval]",
    ),
    (
        "rate-interval",
        _service,
        _set_expr(PER_VERSION, f"sum(rate({P}{{{MV}}}[$__interval]))"),
        "not [$__rate_interval]",
    ),
    ("counter-rate", _service, _set_expr(PER_VERSION, f"sum({P}{{{MV}}})"), f"counter {P} outside"),
    (
        "counter-rate",
        _service,
        _set_expr(REJECTED, 'sum({__name__=~"otelcol_receiver_refused_spans(_total)?"})'),
        "outside rate()",
    ),
    (
        "model-filter",
        _service,
        _set_expr(PER_VERSION, f'sum(rate({P}{{model_name=~"$model_name"}}[$__rate_interval]))'),
        'not filtered by model_version=~"$model_version"',
    ),
    (
        "model-filter",
        _service,
        _set_expr(
            PER_VERSION,
            'label_replace({__name__=~"inferwatch:inference_latency_burn:rate.+"}, '
            '"w", "$1", "__name__", "(.*)")',
        ),
        'not filtered by model_name=~"$model_name"',
    ),
    (
        "model-filter",
        _service,
        _set_expr(PER_VERSION, "inferwatch:no_such_rule:ratio"),
        "no known inferwatch series",
    ),
    ("sql-time-filter", _model, _no_time_filter, "no $__timeFilter(ts)"),
]


@pytest.mark.parametrize(
    ("rule", "board", "mutate", "message"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_linter_rule_fails_on_a_broken_panel(
    rule: str,
    board: Callable[[], dict[str, Any]],
    mutate: Callable[[dict[str, Any]], None],
    message: str,
) -> None:
    b = board()
    assert lint.lint(b) == []
    mutate(b)
    problems = lint.lint(b)
    assert any(p.rule == rule and message in p.message for p in problems), [
        str(p) for p in problems
    ]


def test_datasource_variable_must_default_to_a_provisioned_datasource() -> None:
    b = _service()
    next(v for v in lint.variables(b) if v["type"] == "datasource")["current"]["value"] = "nope"
    assert [p.rule for p in lint.lint(b)] == ["datasource-variable"]


# --- what Grafana sends ----------------------------------------------------------------------
def test_promql_interpolation_follows_grafanas_prometheus_datasource() -> None:
    expr = 'rate(m{a=~"$model_version", b=~"${model_name}"}[$__rate_interval]) $1'
    got = lint.interpolate_promql(
        expr,
        {"model_version": ["v1.2"], "model_name": ["x", "y"]},
        interval=timedelta(seconds=15),
        rate_interval=timedelta(seconds=20),
        range_=timedelta(hours=1),
    )
    # special regex characters escaped inside the PromQL string, several values as (x|y),
    # $__rate_interval as a duration, an unknown `$1` untouched
    assert got == 'rate(m{a=~"v1\\\\.2", b=~"(x|y)"}[20s]) $1'
    all_ = lint.interpolate_promql(
        '{a=~"$model_name"}',
        {"model_name": [".*"]},
        interval=timedelta(1),
        rate_interval=timedelta(1),
        range_=timedelta(1),
    )
    assert all_ == '{a=~".*"}'


def test_rate_interval_is_grafanas() -> None:
    scrape = timedelta(seconds=5)
    assert lint.rate_interval(timedelta(seconds=2), scrape) == timedelta(seconds=20)
    assert lint.rate_interval(timedelta(minutes=1), scrape) == timedelta(seconds=65)


def test_sql_interpolation_expands_grafanas_postgres_macros() -> None:
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    end = datetime(2026, 12, 1, 11, 30, 0, 500000, tzinfo=UTC)
    sql = (
        "SELECT $__timeGroupAlias(ts, $__interval), $__timeGroup(ts, '1h') FROM t "
        "WHERE $__timeFilter(ts) AND v ~ '^(${model_version:regex})$' AND w IN ($model_name) "
        "AND a > $__timeFrom() AND a < $__timeTo()"
    )
    got = lint.interpolate_sql(
        sql,
        {"model_version": ["v1.2/x"], "model_name": ["a'b"]},
        start=start,
        end=end,
        interval=timedelta(minutes=1),
    )
    assert got == (
        'SELECT floor(extract(epoch from ts)/60)*60 AS "time", '
        "floor(extract(epoch from ts)/3600)*3600 FROM t "
        "WHERE ts BETWEEN '2026-12-01T10:00:00Z' AND '2026-12-01T11:30:00.5Z' "
        "AND v ~ '^(v1\\.2\\/x)$' AND w IN ('a''b') "
        "AND a > '2026-12-01T10:00:00Z' AND a < '2026-12-01T11:30:00.5Z'"
    )
    with pytest.raises(ValueError, match="unknown macro"):
        lint.interpolate_sql(
            "SELECT $__timeFiltr(ts)", {}, start=start, end=end, interval=timedelta(1)
        )


def test_sql_query_type_round_trips() -> None:
    q = common.Sql("SELECT 1", "table").build()
    q.ref_id = "B"
    q.datasource = common.PG_DS
    data = json.loads(lint.encode(q))
    assert data == {
        "datasource": {"type": common.POSTGRES_TYPE, "uid": "${postgres}"},
        "editorMode": "code",
        "format": "table",
        "rawQuery": True,
        "rawSql": "SELECT 1",
        "refId": "B",
    }
    assert json.loads(lint.encode(common.SqlQuery.from_json(data))) == data
