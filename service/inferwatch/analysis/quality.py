"""Model quality on the labeled part of a window: pure arithmetic on counts.

Postgres (``sql/quality.sql``) reduces the labeled rows of a window to confusion
counts at the model's decision threshold, the Brier sum and the Mann-Whitney rank
sum of the positives (average ranks for tied probabilities); this module turns
them into precision, recall, ROC AUC and Brier score. The results equal
scikit-learn's ``precision_score``/``recall_score``/``roc_auc_score``/
``brier_score_loss`` on the same rows (tests check it). An undefined metric (no
predicted positive, one class only) is ``None``, never a made-up 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class QualityCounts:
    rows: int  # predictions in the window
    labeled: int  # of which carry an (effective) outcome
    tp: int
    fp: int
    tn: int
    fn: int
    brier_sum: float  # sum of (probability - label)^2 over labeled rows
    positive_rank_sum: float  # sum of average ranks (1-based, by probability) of positives


@dataclass(frozen=True, slots=True)
class Quality:
    threshold: float
    rows: int
    labeled: int
    label_coverage: float | None
    positives: int
    tp: int
    fp: int
    tn: int
    fn: int
    precision: float | None
    recall: float | None
    roc_auc: float | None
    brier: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quality_from_counts(c: QualityCounts, threshold: float) -> Quality:
    pos = c.tp + c.fn
    neg = c.fp + c.tn
    precision = c.tp / (c.tp + c.fp) if c.tp + c.fp else None
    recall = c.tp / pos if pos else None
    auc = None
    if pos and neg:
        auc = (c.positive_rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)
    return Quality(
        threshold=threshold,
        rows=c.rows,
        labeled=c.labeled,
        label_coverage=c.labeled / c.rows if c.rows else None,
        positives=pos,
        tp=c.tp,
        fp=c.fp,
        tn=c.tn,
        fn=c.fn,
        precision=precision,
        recall=recall,
        roc_auc=auc,
        brier=c.brier_sum / c.labeled if c.labeled else None,
    )
