"""NannyML's CBPE on bench/cbpe.py's data, run inside NannyML's own virtualenv.

    <nannyml env>/bin/python bench/cbpe_nannyml.py IN.npz OUT.json

IN holds the reference scores and labels, the decision threshold and the windows'
scores (``window_<k>``); OUT gets, per window, NannyML's estimated precision, recall and
ROC AUC (one chunk: the whole window), whether NannyML chose to calibrate, and the
seconds its fit and estimates took. Standard library, numpy, pandas and nannyml only.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import Any

import numpy as np

# this runs in NannyML's virtualenv; inferwatch's has neither package (so: Any)
nml: Any = importlib.import_module("nannyml")
pd: Any = importlib.import_module("pandas")

METRICS = ("precision", "recall", "roc_auc")


def frame(scores: np.ndarray, threshold: float, labels: np.ndarray | None = None) -> Any:
    df = pd.DataFrame({"score": scores, "pred": (scores >= threshold).astype(int)})
    if labels is not None:
        df["label"] = labels.astype(int)
    return df


def main(argv: list[str]) -> int:
    src, dst = argv
    z = np.load(src)
    threshold = float(z["threshold"])
    started = time.perf_counter()
    cbpe = nml.CBPE(
        y_pred_proba="score",
        y_pred="pred",
        y_true="label",
        problem_type="classification_binary",
        metrics=list(METRICS),
        chunk_number=1,
    )
    cbpe.fit(frame(z["reference_scores"], threshold, z["reference_labels"]))
    fit_s = time.perf_counter() - started
    windows = []
    for key in sorted(k for k in z.files if k.startswith("window_")):
        started = time.perf_counter()
        df = cbpe.estimate(frame(z[key], threshold)).filter(period="analysis").to_df()
        values = {m: float(df[(m, "value")].iloc[0]) for m in METRICS}
        windows.append({"window": key, **values, "seconds": time.perf_counter() - started})
    doc = {
        "nannyml": nml.__version__,
        "pandas": pd.__version__,
        "calibrated": bool(cbpe.needs_calibration),
        "fit_seconds": fit_s,
        "windows": windows,
    }
    with open(dst, "w") as out:
        json.dump(doc, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
