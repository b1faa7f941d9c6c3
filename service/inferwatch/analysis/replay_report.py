"""The replay report: rich tables and one PNG (matplotlib Agg), from a ``ReplayReport``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display, ever

import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.table import Table

from inferwatch.analysis.quality import Quality
from inferwatch.analysis.replay import SCORE_BINS, ReplayReport


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _quantiles(q: list[float] | None) -> str:
    return "—" if q is None else " / ".join(f"{v:.4f}" for v in q)


def summary_table(r: ReplayReport) -> Table:
    t = Table(title=f"Replay {r.replay_id}", title_justify="left")
    t.add_column("")
    t.add_column("value", justify="right")
    rows: list[tuple[str, Any]] = [
        ("candidate", f"{r.candidate_name} {r.candidate_version}"),
        ("served", f"{r.model_name} {', '.join(r.served_versions) or '—'}"),
        ("window", f"{r.since:%Y-%m-%d %H:%M:%S} .. {r.until:%Y-%m-%d %H:%M:%S} UTC"),
        ("logged predictions", r.logged),
        ("replayed", r.replayed),
        ("not replayable", r.not_replayable),
        ("agreement", f"{_fmt(r.agreement)} ({r.agree} of {r.replayed})"),
        ("served -> candidate class", ", ".join(f"{k}: {v}" for k, v in r.transitions.items())),
        ("seconds", f"{r.seconds:.1f}"),
    ]
    for name, value in rows:
        t.add_row(name, str(value))
    return t


def shift_table(r: ReplayReport) -> Table:
    s = r.shift
    t = Table(title="Score distribution (probability)", title_justify="left")
    t.add_column("")
    t.add_column("served", justify="right")
    t.add_column("candidate", justify="right")
    t.add_row("mean", _fmt(s.served_mean), _fmt(s.candidate_mean))
    t.add_row(
        "p50 / p90 / p99", _quantiles(s.served_p50_p90_p99), _quantiles(s.candidate_p50_p90_p99)
    )
    t.add_row("mean shift (candidate - served)", "", _fmt(s.mean_delta))
    t.add_row(
        "mean | max absolute change", "", f"{_fmt(s.mean_abs_delta)} | {_fmt(s.max_abs_delta)}"
    )
    t.add_row(f"PSI ({SCORE_BINS} bins of [0, 1])", "", _fmt(s.psi))
    return t


def quality_table(served: Quality | None, candidate: Quality | None) -> Table:
    t = Table(title="Quality on the replayed rows with an outcome", title_justify="left")
    t.add_column("metric")
    t.add_column("served", justify="right")
    t.add_column("candidate", justify="right")

    def row(name: str, get: Any) -> None:
        t.add_row(name, *(get(q) if q is not None else "—" for q in (served, candidate)))

    row("threshold", lambda q: "as served" if math.isnan(q.threshold) else f"{q.threshold:g}")
    row("labeled", lambda q: str(q.labeled))
    row("precision", lambda q: _fmt(q.precision))
    row("recall", lambda q: _fmt(q.recall))
    row("ROC AUC", lambda q: _fmt(q.roc_auc))
    row("Brier", lambda q: _fmt(q.brier))
    row("TP / FP / TN / FN", lambda q: f"{q.tp} / {q.fp} / {q.tn} / {q.fn}")
    return t


def not_replayable_table(r: ReplayReport) -> Table:
    t = Table(title="Not replayable (never imputed), by feature", title_justify="left")
    t.add_column("feature")
    t.add_column("reason")
    t.add_column("rows", justify="right")
    for feature, reasons in sorted(r.not_replayable_by_feature.items()):
        for reason, n in sorted(reasons.items()):
            t.add_row(feature, reason, str(n))
    return t


def print_report(console: Console, r: ReplayReport) -> None:
    console.print(summary_table(r))
    if r.not_replayable:
        console.print(not_replayable_table(r))
    if r.replayed:
        console.print(shift_table(r))
    if r.served_quality is not None or r.candidate_quality is not None:
        console.print(quality_table(r.served_quality, r.candidate_quality))


def plot(r: ReplayReport, path: Path) -> Path:
    """Score histograms, served vs candidate scores, and quality side by side."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / SCORE_BINS
    ax = axes[0]
    ax.bar(centers - width / 4, r.shift.served_histogram, width / 2, label="served")
    ax.bar(centers + width / 4, r.shift.candidate_histogram, width / 2, label="candidate")
    ax.set_yscale("symlog")
    ax.set_xlabel("probability")
    ax.set_ylabel("predictions")
    ax.set_title(f"Score distribution (PSI {_fmt(r.shift.psi, 3)})")
    ax.legend()
    ax = axes[1]
    joint = np.asarray(r.shift.joint_histogram or np.zeros((SCORE_BINS, SCORE_BINS)), dtype=float)
    ax.imshow(
        np.log1p(joint.T), origin="lower", extent=(0, 1, 0, 1), cmap="viridis", aspect="equal"
    )
    ax.plot([0, 1], [0, 1], color="white", linewidth=0.8, linestyle="--")
    ax.set_xlabel("served probability")
    ax.set_ylabel("candidate probability")
    ax.set_title(f"Per prediction (agreement {_fmt(r.agreement, 3)})")
    ax = axes[2]
    metrics = ("precision", "recall", "roc_auc", "brier")
    x = np.arange(len(metrics))
    for k, (name, q) in enumerate(
        (("served", r.served_quality), ("candidate", r.candidate_quality))
    ):
        values = [float(getattr(q, m) or 0.0) if q is not None else 0.0 for m in metrics]
        ax.bar(x + (k - 0.5) * 0.4, values, 0.4, label=name)
    ax.set_xticks(x, ["precision", "recall", "ROC AUC", "Brier"])
    ax.set_ylim(0, 1)
    labeled = r.candidate_quality.labeled if r.candidate_quality is not None else 0
    ax.set_title(f"Quality on {labeled} labeled rows")
    ax.legend()
    fig.suptitle(
        f"{r.candidate_name} {r.candidate_version} replayed on {r.replayed} predictions "
        f"({r.not_replayable} not replayable)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
