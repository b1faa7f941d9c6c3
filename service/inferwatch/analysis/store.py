"""The I/O edge of the analysis: run the SQL in ``sql/`` and hand back plain data.

Connects with the analyst role (SELECT only). Every query filters one model
version and a half-open time window ``[since, until)`` on the partition key, so
Postgres prunes partitions and the BRIN index on ``ts`` bounds the scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from inferwatch.analysis.drift import (
    FeatureHistogram,
    FeatureReference,
    NumericReference,
    reference_buckets,
)
from inferwatch.analysis.estimate import Calibration
from inferwatch.analysis.quality import QualityCounts


def _float_array(values: Sequence[float]) -> sql.Composable:
    return sql.SQL("{}::float8[]").format(
        sql.Literal("{" + ",".join(repr(float(v)) for v in values) + "}")
    )


def spec_values(refs: Sequence[FeatureReference]) -> sql.Composable:
    """``(name, kind, edges, grid)`` rows as SQL literals (quoted by psycopg)."""
    rows = []
    for r in refs:
        if isinstance(r, NumericReference):
            kind, edges, grid = "numeric", _float_array(r.edges), _float_array(r.grid)
        else:
            kind, edges, grid = "categorical", sql.SQL("NULL::float8[]"), sql.SQL("NULL::float8[]")
        rows.append(
            sql.SQL("({}, {}, {}, {})").format(sql.Literal(r.name), sql.Literal(kind), edges, grid)
        )
    return sql.SQL(", ").join(rows)


def reference_rows(refs: Sequence[FeatureReference]) -> list[dict[str, Any]]:
    return [
        {"name": r.name, "bucket": bucket, "p": p}
        for r in refs
        for bucket, p in reference_buckets(r).items()
    ]


@cache
def load_sql(name: str) -> str:
    return resources.files("inferwatch.analysis").joinpath("sql", name).read_text("utf-8")


Conn = psycopg.Connection[Any]


def drift_histograms(
    conn: Conn,
    refs: Sequence[FeatureReference],
    *,
    model_name: str,
    model_version: str,
    since: datetime,
    until: datetime,
) -> tuple[dict[str, FeatureHistogram], int]:
    """Histograms (with PSI computed in SQL) per feature, and the window's row count."""
    params = {
        "reference": Jsonb(reference_rows(refs)),
        "model_name": model_name,
        "model_version": model_version,
        "since": since,
        "until": until,
    }
    query = sql.SQL(load_sql("drift_histograms.sql")).format(spec=spec_values(refs))
    hists: dict[str, FeatureHistogram] = {r.name: FeatureHistogram(r.name) for r in refs}
    with conn.transaction(), conn.cursor() as cur:
        # a few hundred groups, but the planner cannot know it: hash, never sort the cells
        cur.execute("SET LOCAL enable_sort = off")
        cur.execute("SET LOCAL work_mem = '64MB'")
        # the cost estimate (jsonb_each guessed at 100 rows) triggers JIT, whose compile
        # time exceeded its gain at every window size measured (docs/drift.md)
        cur.execute("SET LOCAL jit = off")
        cur.execute(query, params)
        for name, bucket, gcell, n, total, psi in cur.fetchall():
            h = hists[name]
            n = int(n)
            if psi is not None:
                h.psi_sql = float(psi)
            if bucket is None:
                h.missing += n
                continue
            h.bins[bucket] = h.bins.get(bucket, 0) + n
            if gcell is not None:
                h.grid[int(gcell)] = h.grid.get(int(gcell), 0) + n
                h.grid_sum[int(gcell)] = h.grid_sum.get(int(gcell), 0.0) + float(total or 0.0)
    rows = max((h.n + h.missing for h in hists.values()), default=0)
    return hists, rows


def quality_counts(
    conn: Conn,
    *,
    model_name: str,
    model_version: str,
    since: datetime,
    until: datetime,
    threshold: float,
) -> QualityCounts:
    params = {
        "model_name": model_name,
        "model_version": model_version,
        "since": since,
        "until": until,
        "threshold": threshold,
    }
    row = conn.execute(load_sql("quality.sql").encode(), params).fetchone()
    assert row is not None
    rows, labeled, tp, fp, tn, fn, brier, rank_sum = row
    return QualityCounts(
        rows=int(rows),
        labeled=int(labeled),
        tp=int(tp),
        fp=int(fp),
        tn=int(tn),
        fn=int(fn),
        brier_sum=float(brier),
        positive_rank_sum=float(rank_sum),
    )


def estimate_cells(
    conn: Conn,
    calibration: Calibration,
    *,
    model_name: str,
    model_version: str,
    since: datetime,
    until: datetime,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the window per (calibrated probability, predicted class): the arrays
    :func:`inferwatch.analysis.estimate.estimate_from_cells` takes."""
    params = {
        "model_name": model_name,
        "model_version": model_version,
        "since": since,
        "until": until,
        "threshold": threshold,
        "xs": list(calibration.scores),
        "ys": list(calibration.probabilities),
    }
    rows = conn.execute(load_sql("estimate.sql").encode(), params).fetchall()
    p = np.array([float(r[0]) for r in rows], dtype=np.float64)
    predicted = np.array([bool(r[1]) for r in rows], dtype=bool)
    n = np.array([int(r[2]) for r in rows], dtype=np.int64)
    return p, predicted, n
