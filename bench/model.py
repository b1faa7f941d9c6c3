"""bench/model: the bundled model's ``predict_proba`` per call, and its holdout metrics.

    .venv/bin/python -m bench.model [--rows 120000] [--seed 7] [--seeds 1,2,3,4,5]

Three fits of the same boosting (``HGB_PARAMS``) on ``train_model``'s data (same rows,
split and seed), differing only in how the encoded matrix reaches the trees:

- ``before``: ``Pipeline([HistGradientBoostingClassifier(categorical_features=<schema
  mask>)])``, the bundled model until the encoded matrix went in as it is;
- ``categorical-index``: the same classifier, categories declared by column index, no
  Pipeline (what declaring categorical features costs by itself);
- ``shipped``: ``build_estimator("hgb")``, what ``inferwatch train`` builds now: the
  encoded matrix as it is, a category's schema index an ordered number to the trees.

Timing: the process pinned to one CPU (``--cpu``), one OpenMP/BLAS thread as the service
runs (``inference_threads``); the variants alternate within each of ``--rounds`` rounds;
a cell is the fastest round's mean per call (other load only ever adds), wall and thread
CPU time, for batches of 1, 64 and 256 holdout rows. ``in _preprocess_X``: the share of
a one-row call spent under the estimator's input conversion (cProfile, 500 calls).

Metrics: ``holdout_metrics`` (the threshold is each model's best F1 on the holdout) on the
bundled seed; the bootstrap standard error of ``before``'s metrics on that holdout; then,
per seed of ``--seeds``, ``shipped`` minus ``before`` and the mean over all seeds, to set
against ``HOLDOUT_TOLERANCE``.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from bench.common import benchmark_lock
from bench.drift import machine
from inferwatch.inference.schema import FeatureSchema
from inferwatch.inference.training import (
    HGB_PARAMS,
    HOLDOUT_TOLERANCE,
    TrainingData,
    build_estimator,
    card_fraud_schema,
    final_estimator,
    holdout_metrics,
    training_data,
)

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 64, 256)
CALLS = {1: 300, 64: 120, 256: 60}  # per cell and round: ~0.2-0.5 s each
METRICS = ("roc_auc", "average_precision", "precision", "recall", "f1")


def variants(schema: FeatureSchema, seed: int) -> dict[str, Any]:
    mask = [f.type == "category" for f in schema.features]
    index = [k for k, is_cat in enumerate(mask) if is_cat]
    return {
        "before": Pipeline(
            [
                (
                    "classifier",
                    HistGradientBoostingClassifier(
                        **HGB_PARAMS, categorical_features=mask, random_state=seed
                    ),
                )
            ]
        ),
        "categorical-index": HistGradientBoostingClassifier(
            **HGB_PARAMS, categorical_features=index, random_state=seed
        ),
        "shipped": build_estimator("hgb", schema, seed),
    }


def fit_all(
    schema: FeatureSchema, d: TrainingData, seed: int, names: tuple[str, ...]
) -> dict[str, tuple[Any, float, dict[str, float], float]]:
    """name -> (model, threshold, holdout metrics, fit seconds)."""
    out = {}
    for name, model in variants(schema, seed).items():
        if name not in names:
            continue
        started = time.perf_counter()
        model.fit(d.x[d.train], d.y[d.train])
        fit_s = time.perf_counter() - started
        threshold, metrics = holdout_metrics(d.y[d.test], model.predict_proba(d.x[d.test])[:, 1])
        out[name] = (model, threshold, metrics, fit_s)
    return out


def time_calls(model: Any, x: np.ndarray, calls: int) -> tuple[float, float]:
    """(wall µs, thread CPU µs) per call."""
    predict = model.predict_proba
    w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(calls):
        predict(x)
    return (time.perf_counter_ns() - w0) / calls / 1e3, (time.thread_time_ns() - c0) / calls / 1e3


def conversion_share(model: Any, row: np.ndarray) -> float:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(500):
        model.predict_proba(row)
    prof.disable()
    profile = pstats.Stats(prof).get_stats_profile()  # profiled: the 500 calls only
    inner = profile.func_profiles.get("_preprocess_X")
    return inner.cumtime / profile.total_tt if inner else 0.0


def bootstrap_se(
    y: np.ndarray, proba: np.ndarray, threshold: float, n: int, seed: int
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"roc_auc": [], "average_precision": [], "f1": []}
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        yy, pp = y[idx], proba[idx]
        pred = pp >= threshold
        tp = float(np.sum(pred & (yy == 1)))
        draws["roc_auc"].append(float(roc_auc_score(yy, pp)))
        draws["average_precision"].append(float(average_precision_score(yy, pp)))
        draws["f1"].append(2 * tp / float(np.sum(pred) + np.sum(yy == 1)))
    return {k: float(np.std(v, ddof=1)) for k, v in draws.items()}


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (
        " (+ changes)" if git("status", "--short") else ""
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=120_000, help="train_model's default")
    ap.add_argument("--seed", type=int, default=7, help="train_model's default")
    ap.add_argument("--seeds", default="1,2,3,4,5", help="more data seeds for the metrics")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1)
    args = ap.parse_args()

    os.sched_setaffinity(0, {args.cpu})
    threadpool_limits(limits=1)
    print("bench/model: the bundled model's predict_proba, variants interleaved in one process")
    print(f"date      {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; commit {commit()}")
    print(f"machine   {machine()}; loadavg {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        f"python    {platform.python_version()}; scikit-learn {sklearn.__version__}, "
        f"numpy {np.__version__}; pinned to CPU {args.cpu}, 1 thread"
    )
    schema = card_fraud_schema()
    d = training_data(schema, args.rows, args.seed)
    names = ("before", "categorical-index", "shipped")
    fitted = fit_all(schema, d, args.seed, names)
    print(f"data      {args.rows} rows, seed {args.seed}, holdout {len(d.test)} rows")

    xs = {b: np.ascontiguousarray(d.x[d.test[:b]]) for b in BATCHES}
    for name in names:  # warm-up
        for b in BATCHES:
            time_calls(fitted[name][0], xs[b], 20)
    cells: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            for b in BATCHES:
                cells.setdefault((name, b), []).append(time_calls(fitted[name][0], xs[b], CALLS[b]))

    print()
    print(
        f"{'variant':<18} {'trees':>5} {'fit s':>6}  "
        + "  ".join(f"{f'{b} row' + ('s' if b > 1 else ''):>22}" for b in BATCHES)
        + f"  {'in _preprocess_X':>16}"
    )
    print(
        f"{'':<18} {'':>5} {'':>6}  "
        + "  ".join(f"{'µs/call wall, cpu':>17} {'/row':>4}" for _ in BATCHES)
    )
    for name in names:
        model, _, _, fit_s = fitted[name]
        parts = []
        for b in BATCHES:
            wall = min(w for w, _ in cells[(name, b)])
            cpu = min(c for _, c in cells[(name, b)])
            parts.append(f"{wall:>8.0f} {cpu:>8.0f} {cpu / b:>4.1f}")
        share = conversion_share(model, xs[1])
        print(
            f"{name:<18} {final_estimator(model).n_iter_:>5} {fit_s:>6.1f}  "
            + "  ".join(f"{p:>22}" for p in parts)
            + f"  {share:>15.0%}"
        )
    before_cpu = min(c for _, c in cells[("before", 1)])
    after_cpu = min(c for _, c in cells[("shipped", 1)])
    print(f"one row, shipped / before (CPU): {after_cpu / before_cpu:.2f}")

    print()
    print(f"holdout metrics, seed {args.seed} (threshold: best F1 on the holdout)")
    print(f"{'variant':<18} {'threshold':>9} " + " ".join(f"{m:>17}" for m in METRICS))
    for name in names:
        _, threshold, metrics, _ = fitted[name]
        print(f"{name:<18} {threshold:>9.2f} " + " ".join(f"{metrics[m]:>17.4f}" for m in METRICS))
    model, threshold, _, _ = fitted["before"]
    proba = model.predict_proba(d.x[d.test])[:, 1]
    se = bootstrap_se(d.y[d.test], proba, threshold, args.bootstrap, args.seed)
    print(
        f"before, bootstrap SE over {args.bootstrap} resamples of the holdout "
        f"({int(d.y[d.test].sum())} positives): " + ", ".join(f"{k} {v:.4f}" for k, v in se.items())
    )

    print()
    compared = ("roc_auc", "average_precision", "f1")
    print("shipped minus before, per data seed")
    print(f"{'seed':>6} " + " ".join(f"{m:>17}" for m in compared))
    diffs: list[dict[str, float]] = []
    seeds = [args.seed] + [int(s) for s in args.seeds.split(",") if s]
    for seed in seeds:
        if seed == args.seed:
            pair = fitted
        else:
            pair = fit_all(
                schema, training_data(schema, args.rows, seed), seed, ("before", "shipped")
            )
        diff = {m: pair["shipped"][2][m] - pair["before"][2][m] for m in compared}
        diffs.append(diff)
        print(f"{seed:>6} " + " ".join(f"{diff[m]:>+17.4f}" for m in compared))
    mean = {m: statistics.fmean(x[m] for x in diffs) for m in compared}
    print(f"{'mean':>6} " + " ".join(f"{mean[m]:>+17.4f}" for m in compared))
    print(
        f"{'floor':>6} " + " ".join(f"{-HOLDOUT_TOLERANCE[m]:>+17.4f}" for m in compared),
        "(HOLDOUT_TOLERANCE)",
    )


if __name__ == "__main__":
    with benchmark_lock("bench.model"):
        main()
