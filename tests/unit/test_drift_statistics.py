"""Pure drift statistics: PSI, Jensen-Shannon, trimmed normalised Wasserstein, verdicts."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from inferwatch.analysis import drift
from inferwatch.analysis.quality import QualityCounts, quality_from_counts
from inferwatch.inference import data
from inferwatch.inference.training import card_fraud_schema, reference_profile


@pytest.fixture(scope="module")
def refs() -> dict[str, drift.FeatureReference]:
    cols, _ = data.generate_arrays(60_000, seed=7)
    return {r.name: r for r in drift.parse_profile(reference_profile(card_fraud_schema(), cols))}


def _eval(ref: drift.FeatureReference, values: Any, **kw: Any) -> drift.FeatureDrift:
    return drift.evaluate_feature(
        ref, drift.histogram_numpy(ref, values), drift.DriftThresholds(**kw)
    )


def test_psi_of_identical_distributions_is_zero_and_matches_the_formula() -> None:
    assert drift.psi_from_proportions([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    r, c = np.array([0.1, 0.4, 0.5]), np.array([0.3, 0.3, 0.4])
    assert drift.psi_from_proportions(r, c) == pytest.approx(float(np.sum((c - r) * np.log(c / r))))


def test_psi_clips_empty_buckets_and_counts_unseen_categories() -> None:
    ref = drift.CategoricalReference("c", {"a": 0.5, "b": 0.5})
    value = drift.psi_from_counts(ref, {"a": 50, "z": 50})  # b vanished, z is new
    eps = drift.PSI_EPSILON
    expected = (0.5 - 0.5) * 0 + (eps - 0.5) * np.log(eps / 0.5) + (0.5 - eps) * np.log(0.5 / eps)
    assert value == pytest.approx(expected)
    assert np.isfinite(value)


def test_jensen_shannon_is_scipy_base_2() -> None:
    ref = {"a": 0.7, "b": 0.2, "c": 0.1}
    counts = {"a": 30, "b": 50, "c": 20}
    expected = jensenshannon([0.7, 0.2, 0.1], [0.3, 0.5, 0.2], base=2)
    assert drift.jensen_shannon(ref, counts) == pytest.approx(float(expected))


def test_trimmed_wasserstein_tracks_scipy_on_a_location_shift() -> None:
    rng = np.random.default_rng(3)
    ref_sample = rng.normal(0, 1, 200_000)
    q = np.quantile(ref_sample, np.linspace(0, 1, 101))
    edges = np.unique(np.quantile(ref_sample, np.linspace(0, 1, 11)[1:-1]))
    props = np.bincount(np.searchsorted(edges, ref_sample, "right"), minlength=len(edges) + 1)
    ref = drift.NumericReference("x", tuple(edges), tuple(props / len(ref_sample)), tuple(q), 1.0)
    for shift in (0.0, 0.2, 0.5):
        window = rng.normal(shift, 1, 20_000)
        h = drift.histogram_numpy(ref, window.tolist())
        ours = drift.wasserstein_trimmed(ref, h.grid, h.grid_sum)
        lo, hi = np.quantile(window, [0.01, 0.99])
        exact = wasserstein_distance(ref_sample, window)
        assert ours == pytest.approx(exact / np.std(np.clip(ref_sample, lo, hi)), abs=0.03)


def test_clean_sample_has_no_drift_and_shifted_sample_flags_the_two(
    refs: dict[str, drift.FeatureReference],
) -> None:
    clean, _ = data.generate_arrays(3_000, seed=100)
    shifted, _ = data.generate_arrays(3_000, seed=101, drift=True)
    assert [n for n, r in refs.items() if _eval(r, clean[n].tolist()).verdict != "ok"] == []
    flagged = {n for n, r in refs.items() if _eval(r, shifted[n].tolist()).verdict == "drift"}
    assert flagged == {"distance_from_home_km", "merchant_category"}


def test_too_few_rows_is_insufficient_data_not_drift(
    refs: dict[str, drift.FeatureReference],
) -> None:
    shifted, _ = data.generate_arrays(100, seed=5, drift=True)
    f = _eval(refs["distance_from_home_km"], shifted["distance_from_home_km"].tolist())
    assert f.verdict == "insufficient data"
    assert not any(s.drift for s in f.statistics)


def test_dataset_verdict_rule() -> None:
    t = drift.DriftThresholds()
    assert t.min_drifted_features(16) == 1
    assert drift.DriftThresholds(dataset_drift_share=0.5).min_drifted_features(16) == 8


def test_quality_from_counts_and_undefined_metrics() -> None:
    q = quality_from_counts(QualityCounts(100, 10, 2, 1, 6, 1, 1.5, 12.0), 0.5)
    assert q.precision == pytest.approx(2 / 3)
    assert q.recall == pytest.approx(2 / 3)
    assert q.label_coverage == pytest.approx(0.1)
    assert q.brier == pytest.approx(0.15)
    assert q.roc_auc == pytest.approx((12.0 - 3 * 4 / 2) / (3 * 7))
    none = quality_from_counts(QualityCounts(5, 0, 0, 0, 0, 0, 0.0, 0.0), 0.5)
    assert (none.precision, none.recall, none.roc_auc, none.brier) == (None, None, None, None)
