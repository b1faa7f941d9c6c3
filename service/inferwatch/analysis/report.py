"""The drift and quality report: a rich table, JSON, and PNG plots (matplotlib Agg).

Presentation only: takes a :class:`DriftReport`, a :class:`Quality` and an
:class:`Estimate` and draws them. One PNG per drifted feature (reference vs window
proportions per bin or category) and a summary plot of every feature's statistics
against thresholds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display, ever: this runs in cron jobs and CI

import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table

from inferwatch.analysis.drift import DriftReport, FeatureDrift
from inferwatch.analysis.estimate import Estimate
from inferwatch.analysis.quality import Quality

_STYLE = {"drift": "bold red", "ok": "green", "insufficient data": "yellow"}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def drift_table(report: DriftReport) -> Table:
    title = (
        f"Drift · model {report.model_version} · {report.since} → {report.until} "
        f"· {report.rows} rows"
    )
    table = Table(title=title, title_justify="left")
    for col, justify in (
        ("feature", "left"),
        ("statistic", "left"),
        ("value", "right"),
        ("threshold", "right"),
        ("verdict", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for f in report.features:
        for k, s in enumerate(f.statistics):
            verdict = f.verdict if k == 0 else ("drift" if s.drift else "")
            if k == 0 and f.verdict == "drift" and not s.drift:
                verdict = "drift"
            style = _STYLE.get(verdict, "")
            table.add_row(
                f.feature if k == 0 else "",
                s.statistic,
                _fmt(s.value),
                _fmt(s.threshold, 2),
                f"[{style}]{verdict}[/]" if style else verdict,
                end_section=k == len(f.statistics) - 1,
            )
    return table


def quality_table(q: Quality) -> Table:
    table = Table(title=f"Quality at threshold {q.threshold:g}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows: list[tuple[str, Any]] = [
        ("predictions", q.rows),
        ("labeled", q.labeled),
        ("label coverage", _fmt(q.label_coverage)),
        ("precision", _fmt(q.precision)),
        ("recall", _fmt(q.recall)),
        ("ROC AUC", _fmt(q.roc_auc)),
        ("Brier", _fmt(q.brier)),
        ("TP / FP / TN / FN", f"{q.tp} / {q.fp} / {q.tn} / {q.fn}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def estimate_table(e: Estimate, realized: Quality | None) -> Table:
    """The estimate beside the realized metrics of the window's labeled rows."""
    table = Table(
        title=f"Estimated quality (CBPE) at threshold {e.threshold:g} · {e.rows} predictions "
        f"· calibrated on {e.reference_rows} labeled rows",
        title_justify="left",
    )
    table.add_column("metric")
    table.add_column("estimated", justify="right")
    table.add_column("realized (labeled rows)", justify="right")
    r = realized
    for name, est, real in (
        ("precision", e.precision, r.precision if r else None),
        ("recall", e.recall, r.recall if r else None),
        ("ROC AUC", e.roc_auc, r.roc_auc if r else None),
    ):
        table.add_row(name, _fmt(est), _fmt(real))
    table.add_row(
        "TP / FP / TN / FN",
        f"{e.tp:.0f} / {e.fp:.0f} / {e.tn:.0f} / {e.fn:.0f}",
        f"{r.tp} / {r.fp} / {r.tn} / {r.fn}" if r else "—",
    )
    return table


def print_report(
    console: Console,
    report: DriftReport,
    quality: Quality | None,
    estimate: Estimate | None = None,
) -> None:
    console.print(drift_table(report))
    verdict = "[bold red]DRIFT[/]" if report.dataset_drift else "[green]no drift[/]"
    drifted = ", ".join(report.drifted) or "none"
    console.print(
        f"Dataset: {verdict} — {len(report.drifted)} of {len(report.features)} features drifted "
        f"(needs >= {report.min_drifted_features}): {drifted}"
    )
    if quality is not None:
        console.print(quality_table(quality))
    if estimate is not None:
        console.print(estimate_table(estimate, quality))


def plot_feature(f: FeatureDrift, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(f.buckets) + 2), 4.0))
    x = range(len(f.buckets))
    width = 0.4
    ax.bar([i - width / 2 for i in x], f.reference, width, label="reference (training)")
    ax.bar([i + width / 2 for i in x], f.window, width, label=f"window (n={f.n})")
    ax.set_xticks(list(x))
    ax.set_xticklabels(f.buckets, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("share of rows")
    stats = ", ".join(f"{s.statistic}={_fmt(s.value, 3)}" for s in f.statistics)
    ax.set_title(f"{f.feature}: {f.verdict} ({stats})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_summary(report: DriftReport, path: Path) -> Path:
    names = [f.feature for f in report.features]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(names) + 1.8), sharey=True)
    psi = [f.statistics[0].value or 0.0 for f in report.features]
    second = [f.statistics[1].value or 0.0 for f in report.features]
    ratio = [(f.statistics[1].value or 0.0) / f.statistics[1].threshold for f in report.features]
    colors = ["tab:red" if f.verdict == "drift" else "tab:blue" for f in report.features]
    axes[0].barh(names, psi, color=colors)
    axes[0].axvline(report.thresholds.psi, color="black", linestyle="--", label="threshold")
    axes[0].set_xlabel("PSI")
    axes[0].legend(loc="lower right")
    axes[1].barh(names, ratio, color=colors)
    axes[1].axvline(1.0, color="black", linestyle="--")
    axes[1].set_xlabel("Wasserstein or Jensen-Shannon, / threshold")
    for i, v in enumerate(second):
        axes[1].text(ratio[i], i, f" {v:.3f}", va="center", fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(
        f"Drift of model {report.model_version}, {report.since} → {report.until}: "
        f"{'DRIFT' if report.dataset_drift else 'no drift'}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_plots(report: DriftReport, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [plot_summary(report, out_dir / "summary.png")]
    for f in report.features:
        if f.verdict == "drift":
            paths.append(plot_feature(f, out_dir / f"drift_{f.feature}.png"))
    return paths
