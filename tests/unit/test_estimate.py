"""The quality estimate's arithmetic (analysis/estimate.py): cases worked by hand, the
identities it must satisfy, and the realized metrics of synthetic windows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import auc, precision_score, recall_score, roc_auc_score

from inferwatch.analysis.estimate import (
    Calibration,
    estimate_from_cells,
    estimate_scores,
    fit_calibration,
)

IDENTITY = Calibration(scores=(0.0, 1.0), probabilities=(0.0, 1.0), rows=2, positives=1)


def test_hand_computed_window() -> None:
    # calibrated = score; predicted positive: 0.9 and 0.6
    e = estimate_scores(np.array([0.9, 0.6, 0.2, 0.1]), threshold=0.5, calibration=IDENTITY)
    assert (e.tp, e.fp, e.fn, e.tn) == pytest.approx((1.5, 0.5, 0.3, 1.7))
    assert e.precision == pytest.approx(0.75)
    assert e.recall == pytest.approx(1.5 / 1.8)
    # pairs (i above j) weighted p_i (1 - p_j), ties (each row with itself) half:
    # 0.1*(0.45) + 0.2*(0.9 + 0.4) + 0.6*(1.7 + 0.2) + 0.9*(2.1 + 0.05) = 3.38,
    # over (sum p)(sum 1 - p) = 1.8 * 2.2
    assert e.roc_auc == pytest.approx(3.38 / 3.96)
    assert e.rows == 4
    assert e.expected_positives == pytest.approx(1.8)


def test_cells_and_rows_give_the_same_estimate() -> None:
    rng = np.random.default_rng(3)
    p = rng.choice([0.05, 0.2, 0.5, 0.8], size=1_000)
    pred = rng.random(1_000) < 0.3
    by_row = estimate_from_cells(p, pred, np.ones(1_000), threshold=0.5, calibration=IDENTITY)
    keys, counts = np.unique(np.vstack([p, pred]), axis=1, return_counts=True)
    by_cell = estimate_from_cells(
        keys[0], keys[1].astype(bool), counts, threshold=0.5, calibration=IDENTITY
    )
    assert by_cell.to_dict() == pytest.approx(by_row.to_dict())


def test_expected_auc_is_nannymls_trapezoid_and_a_weighted_roc_auc() -> None:
    rng = np.random.default_rng(5)
    p = np.round(rng.beta(0.5, 3.0, size=500), 2)  # rounded: many ties
    e = estimate_scores(p, threshold=0.5, calibration=IDENTITY)
    # every row once as a positive of weight p and once as a negative of weight 1 - p
    weighted = roc_auc_score(
        np.r_[np.ones(500), np.zeros(500)], np.r_[p, p], sample_weight=np.r_[p, 1 - p]
    )
    # NannyML's estimate_roc_auc: expected TP/FP at each distinct threshold, trapezoids
    levels = np.unique(p)
    tpr = [np.sum(p[p >= t]) / p.sum() for t in levels[::-1]]
    fpr = [np.sum(1 - p[p >= t]) / (1 - p).sum() for t in levels[::-1]]
    trapezoid = auc(np.r_[0.0, fpr], np.r_[0.0, tpr])
    assert e.roc_auc == pytest.approx(weighted, abs=1e-12)
    assert e.roc_auc == pytest.approx(trapezoid, abs=1e-12)


def test_calibration_is_scikit_learns_isotonic_regression() -> None:
    rng = np.random.default_rng(7)
    s = rng.random(5_000)
    y = (rng.random(5_000) < s**2).astype(int)
    cal = fit_calibration(s, y)
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(s, y)
    probe = np.r_[-1.0, 0.0, rng.random(1_000), 1.0, 2.0]
    np.testing.assert_array_equal(cal.apply(probe), iso.predict(probe))
    assert (cal.rows, cal.positives) == (5_000, int(y.sum()))
    assert Calibration.from_dict(cal.to_dict()) == cal


@pytest.mark.parametrize(
    "doc",
    [
        {"method": "platt", "scores": [0.0], "probabilities": [0.0], "rows": 1, "positives": 0},
        {"method": "isotonic", "scores": [], "probabilities": [], "rows": 1, "positives": 0},
        {
            "method": "isotonic",
            "scores": [0.1, 0.1],
            "probabilities": [0, 1],
            "rows": 2,
            "positives": 1,
        },
        {
            "method": "isotonic",
            "scores": [0.1, 0.2],
            "probabilities": [0],
            "rows": 2,
            "positives": 1,
        },
    ],
)
def test_malformed_calibration_is_refused(doc: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="calibration"):
        Calibration.from_dict(doc)


def test_undefined_metrics_are_none() -> None:
    none_predicted = estimate_scores(np.array([0.1, 0.3]), threshold=0.5, calibration=IDENTITY)
    assert none_predicted.precision is None
    assert none_predicted.recall == 0.0
    never = Calibration(scores=(0.0, 1.0), probabilities=(0.0, 0.0), rows=10, positives=0)
    no_positive = estimate_scores(np.array([0.2, 0.9]), threshold=0.5, calibration=never)
    assert (no_positive.recall, no_positive.roc_auc) == (None, None)
    assert no_positive.precision == 0.0
    empty = estimate_scores(np.array([]), threshold=0.5, calibration=IDENTITY)
    assert (empty.rows, empty.precision, empty.recall, empty.roc_auc) == (0, None, None, None)


def _window(n: int, seed: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores ~ Beta(a, b), labels with P(1 | score) = score^2: scores that are NOT
    probabilities (they overstate the risk), so the estimate needs the calibration."""
    rng = np.random.default_rng(seed)
    s = rng.beta(a, b, size=n)
    return s, (rng.random(n) < s**2).astype(int)


def test_estimate_follows_realized_quality_under_covariate_shift() -> None:
    # Reference: scores spread evenly. Window: shifted to high scores (covariate shift:
    # P(label | score) unchanged). 200,000 rows each: the realized metrics' sampling error
    # is ~0.002 (binomial, ~100k positives), the calibration's about as small, so the
    # estimate must land within 0.01 of the realized value.
    ref_s, ref_y = _window(200_000, 1, 1.0, 1.0)
    cal = fit_calibration(ref_s, ref_y)
    tol = 0.01
    for a, b in ((1.0, 1.0), (5.0, 2.0), (2.0, 5.0)):
        s, y = _window(200_000, 2, a, b)
        pred = s >= 0.6
        realized = (
            float(precision_score(y, pred)),
            float(recall_score(y, pred)),
            float(roc_auc_score(y, s)),
        )
        e = estimate_scores(s, threshold=0.6, calibration=cal)
        assert (e.precision, e.recall, e.roc_auc) == pytest.approx(realized, abs=tol), (a, b)
        # without calibration (the raw score as a probability) the estimate is far off:
        # what makes the test able to fail
        raw = estimate_scores(s, threshold=0.6, calibration=IDENTITY)
        assert abs((raw.precision or 0.0) - realized[0]) > 3 * tol
