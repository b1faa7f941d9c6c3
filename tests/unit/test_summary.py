"""stack/summary.py's text: what it says when values are missing, and what it never prints.

The live values are tested end to end (tests/e2e/test_demo.py); here the pure `render`."""

from __future__ import annotations

from pathlib import Path

from stack.summary import Alert, FeatureDrift, Summary, render


def _summary(**kw: object) -> Summary:
    s = Summary(Path("/repo/run/demo"), "card-fraud", "v1", psql="PGPASSFILE=/p psql -h h")
    s.urls = {"service": "http://s/docs", "jaeger API": "http://j/api/traces/<trace id>"}
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_missing_values_read_as_such_not_as_zero_or_nan() -> None:
    text = render(_summary(features=[FeatureDrift("amount", "insufficient data")]))
    assert "predictions/s    n/a" in text
    assert "inference P99    n/a (no predictions in 5 min)" in text
    assert "dataset n/a" in text
    assert "  amount                     insufficient data" in text
    assert "PSI" not in text
    assert "label coverage n/a   precision n/a   recall n/a" in text
    assert "nan" not in text.lower()
    assert "Notes" not in text


def test_alerts_name_what_differs_from_the_served_model() -> None:
    alerts = [
        Alert("Drift", "pending", "ticket", {"feature": "amount", "model_version": "v1"}, "12:00Z"),
        Alert("Old", "firing", "page", {"model_version": "v0"}, "11:00Z"),
    ]
    text = render(_summary(alerts=alerts, p99_s=0.0123))
    assert "  pending   Drift  feature=amount  (severity ticket, since 12:00Z)" in text
    assert "  firing    Old  model_version=v0  (severity page, since 11:00Z)" in text
    assert "inference P99    12.30 ms" in text


def test_the_pivot_lines_need_a_hex_trace_id() -> None:
    """The id comes from a Prometheus label and lands inside a shell command: hex only."""
    good = render(_summary(exemplar_trace_id="0af7651916cd43dd8448eb211c80319c"))
    assert "its trace  http://j/api/traces/0af7651916cd43dd8448eb211c80319c" in good
    assert "WHERE trace_id = '0af7651916cd43dd8448eb211c80319c'\"" in good
    bad = render(_summary(exemplar_trace_id="x'; DROP TABLE predictions; --"))
    assert "DROP" not in bad
    assert "its row" not in bad
