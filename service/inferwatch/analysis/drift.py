"""Drift statistics: a window of served features against the training profile.

Pure: histograms in (counted by Postgres, see ``sql/drift_histograms.sql``), numbers
and verdicts out. Nothing here reads the audit table or holds raw rows; the work
that scales with the table happens in SQL, and what reaches Python is a few
hundred counts per feature.

Per feature, two statistics (defaults and why: docs/drift.md):

* PSI against the reference bins saved with the model (every feature). Empty bins
  are clipped to ``PSI_EPSILON`` on both sides, as is usual, so PSI stays finite.
  The report computes it with :func:`psi_from_counts` from the window's counts
  (profiles + scan, ``profiles.py``); the raw scan (``sql/drift_histograms.sql``)
  computes the same number in SQL, which tests compare.
* numeric: a *trimmed, normalised Wasserstein-1 distance*
  ``∫_{t}^{1-t} |Q_ref(u) - Q_win(u)| du / scale``, both quantile functions
  piecewise-linear on the grid of the reference's percentiles (101 points), the
  window's from its counts per grid cell. ``scale`` is the standard deviation of
  the trimmed reference. Trimming (t = 1%) keeps one extreme training value from
  dominating heavy-tailed features such as amounts.
* categorical / bool: Jensen-Shannon distance (base 2, in [0, 1]), by scipy.

A feature drifts when either statistic reaches its threshold (and the window has at
least ``min_rows`` values of it); the dataset drifts when at least
``max(1, ceil(dataset_drift_share * n_features))`` features drift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import numpy as np
from scipy.spatial.distance import jensenshannon

PSI_EPSILON: Final = 1e-4
TRIM: Final = 0.01
_U_POINTS: Final = 4001  # integration grid on [TRIM, 1 - TRIM]

Kind = Literal["numeric", "categorical"]
Verdict = Literal["drift", "ok", "insufficient data"]


@dataclass(frozen=True, slots=True)
class DriftThresholds:
    psi: float = 0.2
    wasserstein: float = 0.15
    jensen_shannon: float = 0.1
    min_rows: int = 1_000
    dataset_drift_share: float = 0.0  # 0: one drifted feature makes the dataset drift

    def min_drifted_features(self, n_features: int) -> int:
        return max(1, math.ceil(self.dataset_drift_share * n_features))


# --- the reference ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NumericReference:
    name: str
    edges: tuple[float, ...]  # PSI bin edges; bin i = number of edges <= v
    proportions: tuple[float, ...]  # len(edges) + 1
    quantiles: tuple[float, ...]  # percentiles 0..100
    std: float

    @property
    def grid(self) -> tuple[float, ...]:
        """The distinct reference percentiles: the cells of the Wasserstein histogram."""
        return tuple(float(g) for g in np.unique(np.asarray(self.quantiles, dtype=np.float64)))

    def grid_cdf(self) -> np.ndarray:
        """Reference P(X < g) at each grid point, from the percentiles (first k with q_k = g)."""
        q = np.asarray(self.quantiles, dtype=np.float64)
        grid = np.asarray(self.grid)
        first = np.searchsorted(q, grid, side="left").astype(np.float64)
        last = np.searchsorted(q, grid, side="right") - 1
        # an atom (a value repeated over several percentiles, e.g. a count of 0) starts
        # somewhere in ((first-1)/100, first/100]: take the middle of that interval
        atom = (last > first) & (first > 0)
        first[atom] -= 0.5
        return np.asarray(first / (len(q) - 1), dtype=np.float64)


@dataclass(frozen=True, slots=True)
class CategoricalReference:
    name: str
    frequencies: Mapping[str, float]


FeatureReference = NumericReference | CategoricalReference


def parse_profile(profile: Mapping[str, Any]) -> list[FeatureReference]:
    """The ``reference_profile`` of :class:`ModelMetadata`, as typed references."""
    feats = profile.get("features", profile)
    out: list[FeatureReference] = []
    for name, spec in feats.items():
        if spec["kind"] == "numeric":
            out.append(
                NumericReference(
                    name=name,
                    edges=tuple(float(e) for e in spec["edges"]),
                    proportions=tuple(float(p) for p in spec["proportions"]),
                    quantiles=tuple(float(q) for q in spec["quantiles"]),
                    std=float(spec.get("std", 0.0)),
                )
            )
        else:
            out.append(
                CategoricalReference(
                    name=name,
                    frequencies={str(k): float(v) for k, v in spec["frequencies"].items()},
                )
            )
    return out


# --- what Postgres counted -------------------------------------------------------


@dataclass(slots=True)
class FeatureHistogram:
    """Counts of one feature in the window (missing values counted apart)."""

    name: str
    bins: dict[str, int] = field(default_factory=dict)  # PSI bin index (as text) or category
    grid: dict[int, int] = field(default_factory=dict)  # grid cell -> count (numeric)
    grid_sum: dict[int, float] = field(default_factory=dict)  # grid cell -> sum of values
    missing: int = 0
    psi_sql: float | None = None

    @property
    def n(self) -> int:
        return sum(self.bins.values())


# --- statistics ------------------------------------------------------------------


def psi_from_proportions(
    ref: Sequence[float] | np.ndarray, cur: Sequence[float] | np.ndarray, eps: float = PSI_EPSILON
) -> float:
    r = np.maximum(np.asarray(ref, dtype=np.float64), eps)
    c = np.maximum(np.asarray(cur, dtype=np.float64), eps)
    return float(np.sum((c - r) * np.log(c / r)))


def aligned(
    ref: Mapping[str, float], counts: Mapping[str, int]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Reference proportions and window proportions over the union of buckets."""
    keys = sorted(set(ref) | set(counts))
    total = sum(counts.values())
    r = np.array([ref.get(k, 0.0) for k in keys], dtype=np.float64)
    c = np.array([counts.get(k, 0) / total if total else 0.0 for k in keys], dtype=np.float64)
    return keys, r, c


def reference_buckets(ref: FeatureReference) -> dict[str, float]:
    if isinstance(ref, NumericReference):
        return {str(i): p for i, p in enumerate(ref.proportions)}
    return dict(ref.frequencies)


def psi_from_counts(ref: FeatureReference, counts: Mapping[str, int]) -> float:
    _, r, c = aligned(reference_buckets(ref), counts)
    return psi_from_proportions(r, c)


def psi_numpy(ref: NumericReference, values: np.ndarray) -> float:
    """PSI of raw values (the check on the SQL result): bins by ``searchsorted`` right."""
    idx = np.searchsorted(np.asarray(ref.edges), values, side="right")
    counts = np.bincount(idx, minlength=len(ref.edges) + 1)
    return psi_from_counts(ref, {str(i): int(n) for i, n in enumerate(counts) if n})


def jensen_shannon(ref: Mapping[str, float], counts: Mapping[str, int]) -> float:
    _, r, c = aligned(ref, counts)
    if r.sum() == 0 or c.sum() == 0:
        return 1.0
    return float(jensenshannon(r, c, base=2))


def _quantile_function(knots_x: np.ndarray, knots_f: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse of a piecewise-linear CDF through (x, F) knots (F non-decreasing)."""
    f = np.maximum.accumulate(knots_f)
    # where F is flat the inverse jumps: keep the first knot of each F level
    keep = np.concatenate(([True], np.diff(f) > 0))
    return np.asarray(np.interp(u, f[keep], knots_x[keep]), dtype=np.float64)


def window_knots(
    ref: NumericReference, grid: Mapping[int, int], grid_sum: Mapping[int, float]
) -> tuple[np.ndarray, np.ndarray]:
    """The window's CDF knots on the reference grid, with its tails outside the grid.

    Cell ``j`` (Postgres ``width_bucket(v, grid)``) holds ``grid[j-1] <= v < grid[j]``;
    cell 0 the values below the reference minimum, the last cell those at or above
    its maximum. Tails are spread uniformly so that their mean is the window's.
    """
    g = np.asarray(ref.grid, dtype=np.float64)
    m = len(g)
    counts = np.array([grid.get(j, 0) for j in range(m + 1)], dtype=np.float64)
    n = counts.sum()
    cdf_at = np.cumsum(counts)[:m] / n  # P(v < g_j)
    lo, hi = g[0], g[-1]
    if counts[0]:
        lo = min(g[0], 2 * grid_sum.get(0, 0.0) / counts[0] - g[0])
    if counts[m]:
        hi = max(g[-1], 2 * grid_sum.get(m, 0.0) / counts[m] - g[-1])
    x = np.concatenate(([lo], g, [hi]))
    f = np.concatenate(([0.0], cdf_at, [1.0]))
    return x, f


def wasserstein_trimmed(
    ref: NumericReference, grid: Mapping[int, int], grid_sum: Mapping[int, float]
) -> float:
    """Trimmed W1 between reference and window, divided by the trimmed reference's std."""
    g = np.asarray(ref.grid, dtype=np.float64)
    ref_x = np.concatenate((g, [g[-1]]))
    ref_f = np.concatenate((ref.grid_cdf(), [1.0]))
    win_x, win_f = window_knots(ref, grid, grid_sum)
    u = np.linspace(TRIM, 1 - TRIM, _U_POINTS)
    q_ref = _quantile_function(ref_x, ref_f, u)
    q_win = _quantile_function(win_x, win_f, u)
    w1 = float(np.trapezoid(np.abs(q_ref - q_win), u))
    scale = float(np.std(q_ref))
    if scale <= 0:
        scale = ref.std if ref.std > 0 else 1.0
    return w1 / scale


# --- verdicts --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatisticResult:
    statistic: str  # "psi" | "wasserstein" | "jensen_shannon"
    value: float | None
    threshold: float
    drift: bool


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    feature: str
    kind: Kind
    n: int
    missing: int
    statistics: tuple[StatisticResult, ...]
    verdict: Verdict
    # for plots: bucket labels, reference and window proportions
    buckets: tuple[str, ...] = ()
    reference: tuple[float, ...] = ()
    window: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class DriftReport:
    model_version: str
    since: str
    until: str
    rows: int
    features: tuple[FeatureDrift, ...]
    drifted: tuple[str, ...]
    dataset_drift: bool
    min_drifted_features: int
    thresholds: DriftThresholds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_feature(
    ref: FeatureReference, hist: FeatureHistogram, thresholds: DriftThresholds
) -> FeatureDrift:
    n = hist.n
    enough = n >= thresholds.min_rows
    psi_value = (
        hist.psi_sql
        if hist.psi_sql is not None
        else (psi_from_counts(ref, hist.bins) if n else None)
    )
    keys, r, c = aligned(reference_buckets(ref), hist.bins)
    if isinstance(ref, NumericReference):
        keys = sorted(keys, key=int)
        _, r, c = _ordered(reference_buckets(ref), hist.bins, keys)
        second_name, second_thr = "wasserstein", thresholds.wasserstein
        second = wasserstein_trimmed(ref, hist.grid, hist.grid_sum) if n else None
        kind: Kind = "numeric"
        labels = tuple(_bin_label(ref.edges, int(k)) for k in keys)
    else:
        second_name, second_thr = "jensen_shannon", thresholds.jensen_shannon
        second = jensen_shannon(ref.frequencies, hist.bins) if n else None
        kind = "categorical"
        labels = tuple(keys)
    stats = (
        StatisticResult(
            "psi",
            psi_value,
            thresholds.psi,
            enough and psi_value is not None and psi_value >= thresholds.psi,
        ),
        StatisticResult(
            second_name, second, second_thr, enough and second is not None and second >= second_thr
        ),
    )
    verdict: Verdict = (
        "insufficient data" if not enough else ("drift" if any(s.drift for s in stats) else "ok")
    )
    return FeatureDrift(
        feature=ref.name,
        kind=kind,
        n=n,
        missing=hist.missing,
        statistics=stats,
        verdict=verdict,
        buckets=labels,
        reference=tuple(float(x) for x in r),
        window=tuple(float(x) for x in c),
    )


def evaluate(
    refs: Sequence[FeatureReference],
    hists: Mapping[str, FeatureHistogram],
    thresholds: DriftThresholds,
    *,
    model_version: str,
    since: str,
    until: str,
    rows: int,
    exclude: Sequence[str] = (),
) -> DriftReport:
    results = tuple(
        evaluate_feature(r, hists.get(r.name) or FeatureHistogram(r.name), thresholds)
        for r in refs
        if r.name not in exclude
    )
    drifted = tuple(f.feature for f in results if f.verdict == "drift")
    need = thresholds.min_drifted_features(len(results))
    return DriftReport(
        model_version=model_version,
        since=since,
        until=until,
        rows=rows,
        features=results,
        drifted=drifted,
        dataset_drift=len(drifted) >= need,
        min_drifted_features=need,
        thresholds=thresholds,
    )


def _ordered(
    ref: Mapping[str, float], counts: Mapping[str, int], keys: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    total = sum(counts.values())
    r = np.array([ref.get(k, 0.0) for k in keys], dtype=np.float64)
    c = np.array([counts.get(k, 0) / total if total else 0.0 for k in keys], dtype=np.float64)
    return list(keys), r, c


def _bin_label(edges: Sequence[float], i: int) -> str:
    if not edges:
        return "all"
    if i == 0:
        return f"< {edges[0]:.4g}"
    if i >= len(edges):
        return f">= {edges[-1]:.4g}"
    return f"[{edges[i - 1]:.4g}, {edges[i]:.4g})"


def histogram_numpy(ref: FeatureReference, values: Sequence[Any]) -> FeatureHistogram:
    """What ``drift_histograms.sql`` counts, computed in numpy (tests, small samples).

    Numeric values: PSI bin ``searchsorted(edges, v, "right")`` = ``width_bucket``;
    categorical values as Postgres renders them (bools as "true"/"false").
    """
    hist = FeatureHistogram(ref.name)
    if isinstance(ref, NumericReference):
        x = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        hist.missing = int(np.isnan(x).sum())
        x = x[~np.isnan(x)]
        bins = np.searchsorted(np.asarray(ref.edges), x, side="right")
        for b, n in zip(*np.unique(bins, return_counts=True), strict=True):
            hist.bins[str(int(b))] = int(n)
        cells = np.searchsorted(np.asarray(ref.grid), x, side="right")
        for cell in np.unique(cells):
            sel = cells == cell
            hist.grid[int(cell)] = int(sel.sum())
            hist.grid_sum[int(cell)] = float(x[sel].sum())
        return hist
    for v in values:
        if v is None:
            hist.missing += 1
            continue
        key = ("true" if v else "false") if isinstance(v, bool) else str(v)
        hist.bins[key] = hist.bins.get(key, 0) + 1
    return hist
