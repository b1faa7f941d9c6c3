"""The pure parts of the drift profiles: bucket arithmetic, runs of buckets, the privacy
filter and the profile levels (the SQL is tested in tests/integration/test_drift_profiles.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from inferwatch.analysis import drift, profiles

H = timedelta(hours=1)
T = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize("width", [timedelta(minutes=1), timedelta(minutes=15), H, profiles.DAY])
def test_widths_that_divide_a_day_are_accepted(width: timedelta) -> None:
    assert profiles.check_width(width) == width


@pytest.mark.parametrize(
    "width",
    [timedelta(seconds=30), timedelta(minutes=7), timedelta(seconds=90.5), 2 * profiles.DAY],
)
def test_other_widths_are_refused(width: timedelta) -> None:
    with pytest.raises(ValueError, match="dividing a day"):
        profiles.check_width(width)


def test_floor_and_ceil_align_on_the_utc_bucket_grid() -> None:
    t = T + timedelta(minutes=17)
    assert profiles.floor_bucket(t, H) == T
    assert profiles.ceil_bucket(t, H) == T + H
    assert profiles.ceil_bucket(T, H) == profiles.floor_bucket(T, H) == T
    assert profiles.floor_bucket(t, profiles.DAY) == datetime(2026, 11, 20, tzinfo=UTC)


def test_runs_are_contiguous_and_bounded() -> None:
    buckets = [T, T + H, T + 2 * H, T + 5 * H, T + 6 * H]
    assert profiles.runs(buckets, H, 24) == [(T, T + 3 * H), (T + 5 * H, T + 7 * H)]
    assert profiles.runs(buckets[:3], H, 2) == [(T, T + 2 * H), (T + 2 * H, T + 3 * H)]
    assert profiles.runs([], H, 24) == []


def test_privacy_keeps_only_features_stored_as_sent() -> None:
    refs = [
        drift.CategoricalReference("a", {"x": 1.0}),
        drift.CategoricalReference("b", {"x": 1.0}),
        drift.CategoricalReference("c", {"x": 1.0}),
    ]
    names = [r.name for r in profiles.privacy_kept(refs, {"a": "drop", "b": "hash"})]
    assert names == ["c"]
    allow = profiles.privacy_kept(refs, {"*": "drop", "b": "keep"})
    assert [r.name for r in allow] == ["b"]


def test_hours_are_read_below_days_and_a_day_width_alone() -> None:
    hourly = profiles.Key("m", "v", H)
    assert [k.width for k in hourly.levels()] == [profiles.DAY, H]
    assert [k.width for k in profiles.Key("m", "v", profiles.DAY).levels()] == [profiles.DAY]


def test_spec_carries_edges_and_grid_of_numeric_features_only() -> None:
    num = drift.NumericReference("n", (1.0, 2.0), (0.3, 0.4, 0.3), (0.0, 1.0, 1.0, 3.0), 1.0)
    cat = drift.CategoricalReference("c", {"x": 1.0})
    assert profiles.spec([num, cat]) == {
        "features": [
            {"name": "n", "kind": "numeric", "edges": [1.0, 2.0], "grid": [0.0, 1.0, 3.0]},
            {"name": "c", "kind": "categorical"},
        ]
    }
