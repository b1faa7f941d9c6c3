"""bench.soak's latency by minute: each request counts in the minute it was scheduled in."""

from __future__ import annotations

from bench.soak import per_minute


def test_each_whole_minute_gets_its_own_percentiles_and_a_partial_one_none() -> None:
    rate = 10.0  # 600 requests a minute
    seqs = list(range(1500))  # two whole minutes and half of a third
    # minute 0: 1..600 ms in shuffled schedule order; minute 1: everything 50 ms
    lat = [((i * 7) % 600 + 1) * 1_000_000 if i < 600 else 50_000_000 for i in seqs]
    minutes = per_minute(lat, seqs, rate)
    assert [m["minute"] for m in minutes] == [0, 1]
    assert [m["requests"] for m in minutes] == [600, 600]
    assert minutes[0]["p50_ms"] == 301.0
    assert minutes[0]["p99_ms"] == 595.0
    assert (minutes[1]["p50_ms"], minutes[1]["p99_ms"]) == (50.0, 50.0)
