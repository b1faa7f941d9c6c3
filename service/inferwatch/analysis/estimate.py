"""Quality before labels: a confidence-based estimate of precision, recall and ROC AUC.

The method is NannyML's CBPE (confidence-based performance estimation). A model's
scores are mapped to calibrated probabilities by an isotonic regression fitted on
labeled reference data (the training holdout, :func:`fit_calibration`; see
docs/decisions.md, "Quality estimate"). If the calibrated probability ``p`` of a row is
right, the row is a positive with probability ``p``, so over a window of unlabeled rows:

* expected TP = sum of ``p`` over rows predicted positive (score >= threshold),
  expected FP = sum of ``1 - p`` over them, expected FN = sum of ``p`` over the others;
  estimated precision = TP / (TP + FP), recall = TP / (TP + FN);
* expected ROC AUC: the ROC curve of the expected TP and FP counts at every distinct
  calibrated probability, integrated by trapezoids (NannyML's ``estimate_roc_auc``).
  That area is a weighted Mann-Whitney statistic: every pair of rows counts
  ``p_i (1 - p_j)`` when ``i`` ranks above ``j``, half of it when they tie (a row with
  itself included), over ``(sum p)(sum 1 - p)``.

It holds under covariate shift (the inputs move, ``P(label | score)`` does not) and fails
under concept shift, which only labels reveal: the realized metrics stay the authority
once labels arrive. A metric is ``None`` where it is undefined (no predicted positive,
no expected positive or negative), as for realized quality.

Postgres reduces a window to counts per (calibrated probability, predicted class)
(``sql/estimate.sql`` computes the same interpolation as :meth:`Calibration.apply`);
:func:`estimate_from_cells` does the rest, and :func:`estimate_scores` is the same on
rows held in memory.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
from sklearn.isotonic import IsotonicRegression

METHOD: Final = "isotonic"


@dataclass(frozen=True, slots=True)
class Calibration:
    """Score -> calibrated probability: linear between the breakpoints, clipped outside
    (scikit-learn's ``IsotonicRegression(out_of_bounds="clip").predict``)."""

    scores: tuple[float, ...]  # breakpoints, strictly increasing
    probabilities: tuple[float, ...]  # calibrated probability at each, non-decreasing
    rows: int  # labeled reference rows it was fitted on
    positives: int

    def apply(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, dtype=np.float64), self.scores, self.probabilities)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "scores": list(self.scores),
            "probabilities": list(self.probabilities),
            "rows": self.rows,
            "positives": self.positives,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Calibration:
        if doc.get("method") != METHOD:
            raise ValueError(f"unknown calibration method {doc.get('method')!r}")
        scores = tuple(float(v) for v in doc["scores"])
        probabilities = tuple(float(v) for v in doc["probabilities"])
        if not scores or len(scores) != len(probabilities):
            raise ValueError("calibration needs as many probabilities as breakpoints")
        if any(b <= a for a, b in itertools.pairwise(scores)):
            raise ValueError("calibration breakpoints must increase strictly")
        return cls(scores, probabilities, int(doc["rows"]), int(doc["positives"]))


def fit_calibration(scores: np.ndarray, labels: np.ndarray) -> Calibration:
    """Isotonic regression of the labels on the scores (NannyML's default calibrator)."""
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(x) == 0 or len(x) != len(y):
        raise ValueError("calibration needs as many labels as scores, and at least one")
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(x, y)
    return Calibration(
        scores=tuple(float(v) for v in iso.X_thresholds_),
        probabilities=tuple(float(v) for v in iso.y_thresholds_),
        rows=len(x),
        positives=int(y.sum()),
    )


@dataclass(frozen=True, slots=True)
class Estimate:
    """Expected confusion counts and metrics of a window at the decision threshold."""

    threshold: float
    rows: int
    expected_positives: float
    tp: float
    fp: float
    tn: float
    fn: float
    precision: float | None
    recall: float | None
    roc_auc: float | None
    reference_rows: int
    reference_positives: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate_from_cells(
    probability: np.ndarray,
    predicted: np.ndarray,
    count: np.ndarray,
    *,
    threshold: float,
    calibration: Calibration,
) -> Estimate:
    """The estimate from ``count`` rows per (calibrated ``probability``, ``predicted``)."""
    p = np.asarray(probability, dtype=np.float64)
    pred = np.asarray(predicted, dtype=bool)
    n = np.asarray(count, dtype=np.float64)
    pos = n * p  # expected positives per cell
    neg = n - pos
    tp, fp = float(pos[pred].sum()), float(neg[pred].sum())
    fn, tn = float(pos[~pred].sum()), float(neg[~pred].sum())
    total_pos, total_neg = tp + fn, fp + tn
    return Estimate(
        threshold=threshold,
        rows=int(n.sum()),
        expected_positives=total_pos,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        precision=tp / (tp + fp) if tp + fp > 0 else None,
        recall=tp / total_pos if total_pos > 0 else None,
        roc_auc=_expected_auc(p, pos, neg) if total_pos > 0 and total_neg > 0 else None,
        reference_rows=calibration.rows,
        reference_positives=calibration.positives,
    )


def _expected_auc(p: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """Weighted Mann-Whitney over groups of equal calibrated probability."""
    levels, group = np.unique(p, return_inverse=True)
    pos_g = np.bincount(group, weights=pos, minlength=len(levels))
    neg_g = np.bincount(group, weights=neg, minlength=len(levels))
    neg_below = np.cumsum(neg_g) - neg_g
    concordant = float(np.sum(pos_g * (neg_below + 0.5 * neg_g)))
    return concordant / (float(pos_g.sum()) * float(neg_g.sum()))


def estimate_scores(scores: np.ndarray, *, threshold: float, calibration: Calibration) -> Estimate:
    """The estimate of a window given as its rows' scores."""
    s = np.asarray(scores, dtype=np.float64)
    return estimate_from_cells(
        calibration.apply(s),
        s >= threshold,
        np.ones(len(s)),
        threshold=threshold,
        calibration=calibration,
    )
