"""bench.cbpe: the quality estimate against NannyML's CBPE and the realized quality.

    .venv/bin/python -m bench.cbpe [--rows 50000] [--seeds 101,102,103]

The bundled model (train_model's defaults, as `inferwatch serve` trains it) scores
windows of the generator's traffic, clean and shifted (``drift=True``: covariate shift
only), every row labeled. Per window, side by side:

* realized precision, recall and ROC AUC (scikit-learn, on the labels);
* ours: analysis/estimate.py with the calibration in the model's metadata (fitted on
  the holdout), in memory (the Postgres path gives the same to 1e-9:
  tests/integration/test_analysis_estimate.py);
* NannyML's CBPE, fitted on the same holdout scores and labels, one chunk per window,
  in its own virtualenv under ``${INFERWATCH_CACHE}/peers/nannyml`` (bench/peers/envs.py
  pins it), run by bench/cbpe_nannyml.py.

Then the mean and largest error of each estimate against the realized value, the
largest difference between the two estimates, the time each takes, and the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from bench.audit import machine
from bench.common import benchmark_lock
from bench.peers import envs
from bench.peers.run import code_version
from inferwatch.analysis.estimate import Calibration, Estimate, estimate_scores, fit_calibration
from inferwatch.inference import data
from inferwatch.inference.encoding import encode_columns
from inferwatch.inference.loading import load_model
from inferwatch.inference.training import train_model, training_data

METRICS = ("precision", "recall", "roc_auc")
TRAIN_ROWS = 120_000  # train_model's default: the bundled model
RUNNER = Path(__file__).resolve().parent / "cbpe_nannyml.py"


@dataclass(frozen=True)
class Row:
    name: str
    rows: int
    positives: int
    realized: dict[str, float]
    ours: dict[str, float]
    nannyml: dict[str, float]


def realized(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    pred = scores >= threshold
    return {
        "precision": float(precision_score(labels, pred, zero_division=0)),
        "recall": float(recall_score(labels, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(labels, scores)),
    }


def as_metrics(e: Estimate) -> dict[str, float]:
    return {m: float("nan") if getattr(e, m) is None else float(getattr(e, m)) for m in METRICS}


def table(rows: list[Row]) -> str:
    head = f"{'window':<16} {'rows':>7} {'pos':>5}"
    for m in ("precision", "recall", "ROC AUC"):
        head += f" | {m + ': real':>15} {'ours':>6} {'NannyML':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r.name:<16} {r.rows:>7} {r.positives:>5}"
        for m in METRICS:
            line += f" | {r.realized[m]:>15.4f} {r.ours[m]:>6.4f} {r.nannyml[m]:>7.4f}"
        lines.append(line)
    return "\n".join(lines)


def _num(v: float) -> str:
    return f"{v:.4f}" if v >= 1e-4 or v == 0 else f"{v:.1e}"


def errors(rows: list[Row]) -> str:
    out = ["", f"{'error (abs)':<20}" + "".join(f"{m:>26}" for m in METRICS)]
    pairs = (
        ("ours - realized", "ours", "realized"),
        ("NannyML - realized", "nannyml", "realized"),
        ("ours - NannyML", "ours", "nannyml"),
    )
    for label, a, b in pairs:
        cells = ""
        for m in METRICS:
            d = np.array([abs(getattr(r, a)[m] - getattr(r, b)[m]) for r in rows])
            cells += f"{f'mean {_num(d.mean())} max {_num(d.max())}':>26}"
        out.append(f"{label:<20}{cells}")
    return "\n".join(out)


@dataclass(frozen=True)
class Result:
    rows: list[Row]
    nannyml: dict[str, Any]  # bench/cbpe_nannyml.py's document
    ours_s: list[float]  # seconds of our estimate per window
    estimator: str
    threshold: float
    calibration: Calibration


def run(work: Path, nannyml_bin: Path, n_rows: int, seeds: list[int]) -> Result:
    meta = train_model(work / "models", version="bench-cbpe", n_rows=TRAIN_ROWS)
    model = load_model(work / "models" / meta.name / meta.version)
    assert meta.calibration is not None
    calibration = Calibration.from_dict(meta.calibration)
    threshold = meta.decision_threshold
    # the holdout the calibration was fitted on, rebuilt from the same seed and split:
    # NannyML gets exactly the reference we calibrated on
    d = training_data(meta.feature_schema, TRAIN_ROWS, meta.seed)
    ref_scores = model.estimator.predict_proba(d.x[d.test])[:, 1]
    assert fit_calibration(ref_scores, d.y[d.test]) == calibration
    windows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for seed in seeds:
        for drift in (False, True):
            cols, labels = data.generate_arrays(n_rows, seed, drift=drift)
            x = encode_columns(meta.feature_schema, cols)
            name = f"{'shifted' if drift else 'clean'} {seed}"
            windows[name] = (model.estimator.predict_proba(x)[:, 1], labels)
    names = list(windows)
    npz = work / "cbpe.npz"
    arrays: dict[str, Any] = {
        "reference_scores": ref_scores,
        "reference_labels": d.y[d.test],
        "threshold": np.float64(threshold),
        **{f"window_{k:03d}": windows[n][0] for k, n in enumerate(names)},
    }
    np.savez(npz, **arrays)
    out = work / "nannyml.json"
    subprocess.run(
        [str(nannyml_bin / "python"), "-W", "ignore", str(RUNNER), str(npz), str(out)],
        check=True,
        timeout=1800,
    )
    theirs = json.loads(out.read_text())
    rows: list[Row] = []
    ours_s: list[float] = []
    for k, n in enumerate(names):
        scores, labels = windows[n]
        started = time.perf_counter()
        e = estimate_scores(scores, threshold=threshold, calibration=calibration)
        ours_s.append(time.perf_counter() - started)
        w = theirs["windows"][k]
        assert w["window"] == f"window_{k:03d}"
        rows.append(
            Row(
                n,
                len(labels),
                int(labels.sum()),
                realized(labels, scores, threshold),
                as_metrics(e),
                {m: float(w[m]) for m in METRICS},
            )
        )
    return Result(rows, theirs, ours_s, meta.estimator, threshold, calibration)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=50_000, help="rows per window")
    ap.add_argument("--seeds", default="101,102,103", help="one clean + one shifted per seed")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # installing measures nothing: before the lock, so no benchmark waits for pip
        nannyml_bin = envs.ensure(envs.PEER_ENVS["nannyml"], work / "install-nannyml.log")
        with benchmark_lock("bench.cbpe"):
            commit = code_version()
            r = run(work, nannyml_bin, args.rows, seeds)
    cal = r.calibration
    print(
        f"bench.cbpe: bundled model {r.estimator}, threshold {r.threshold:g}, calibration on "
        f"{cal.rows} holdout rows ({cal.positives} positives, {len(cal.scores)} isotonic "
        f"breakpoints); NannyML {r.nannyml['nannyml']} (pandas {r.nannyml['pandas']}), "
        f"calibrated: {r.nannyml['calibrated']}"
    )
    print(table(r.rows))
    print(errors(r.rows))
    their_s = [float(w["seconds"]) for w in r.nannyml["windows"]]
    print(
        f"\ntime per {args.rows}-row window: ours {1e3 * float(np.mean(r.ours_s)):.1f} ms, "
        f"NannyML {1e3 * float(np.mean(their_s)):.1f} ms "
        f"(its fit {1e3 * float(r.nannyml['fit_seconds']):.0f} ms)"
    )
    print(f"commit {commit}; {machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
