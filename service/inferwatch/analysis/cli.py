"""``inferwatch drift`` and ``inferwatch load``: typer commands the main CLI registers.

``drift`` exit codes: 0 done (no drift, or drift without ``--fail-on-drift``),
1 drift found with ``--fail-on-drift``, 2 usage or database error. With ``--json``
stdout carries only the JSON document; tables and progress go to stderr.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from inferwatch.analysis import report as rpt
from inferwatch.analysis.drift import DriftThresholds
from inferwatch.analysis.load import LoadConfig, LoadError, run_load
from inferwatch.analysis.profiles import WindowSources, check_width
from inferwatch.analysis.runner import analyse, parse_when
from inferwatch.inference.loading import find_model, load_metadata
from inferwatch.inference.metadata import ModelMetadata
from inferwatch.settings import Settings

_D = DriftThresholds()
_DSN_HELP = "Analyst DSN (default: INFERWATCH_ANALYST_DATABASE_URL)"


def _analyst_dsn(given: str | None, err: Console) -> str:
    """--dsn, else ``Settings.analyst_database_url``; neither: exit 2."""
    if given:
        return given
    setting = Settings().analyst_database_url
    if not setting:
        err.print("[red]no database: pass --dsn or set INFERWATCH_ANALYST_DATABASE_URL[/]")
        raise typer.Exit(2)
    return setting.get_secret_value()


def _metadata(model_dir: Path, name: str, version: str, path: Path | None) -> ModelMetadata:
    if path is not None:
        return load_metadata(path if path.is_dir() else path.parent)
    found = find_model(model_dir, name, version)
    if found is None:
        raise typer.BadParameter(
            f"no metadata for {name}/{version} under {model_dir}; pass --model-dir or --metadata",
            param_hint="--model-version",
        )
    return load_metadata(found)


def drift(
    model_version: Annotated[str, typer.Option(help="Model version to analyse")],
    since: Annotated[str, typer.Option(help="Window start: ISO 8601, 'now', or -30m/-2h/-7d")],
    until: Annotated[str, typer.Option(help="Window end (exclusive)")] = "now",
    dsn: Annotated[str | None, typer.Option(help=_DSN_HELP, show_default=False)] = None,
    model_name: Annotated[str, typer.Option()] = "card-fraud",
    model_dir: Annotated[Path, typer.Option(help="Where models/<name>/<version>/ live")] = Path(
        "models"
    ),
    metadata: Annotated[
        Path | None, typer.Option(help="A metadata.json (or its folder) instead of --model-dir")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    out_dir: Annotated[Path, typer.Option(help="Where the PNG plots go")] = Path("drift-report"),
    plots: Annotated[bool, typer.Option(help="Write PNG plots")] = True,
    fail_on_drift: Annotated[bool, typer.Option(help="Exit 1 when the dataset drifts")] = False,
    psi_threshold: Annotated[float, typer.Option()] = _D.psi,
    wasserstein_threshold: Annotated[float, typer.Option()] = _D.wasserstein,
    js_threshold: Annotated[float, typer.Option()] = _D.jensen_shannon,
    min_rows: Annotated[int, typer.Option(help="Fewer values: 'insufficient data'")] = (
        _D.min_rows
    ),
    drift_share: Annotated[
        float, typer.Option(help="Share of features that must drift for dataset drift (0: one)")
    ] = _D.dataset_drift_share,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Feature to leave out (repeatable)")
    ] = None,
    profiles: Annotated[
        bool,
        typer.Option(
            help="Sum the drift profiles of whole buckets (else scan every row; same result)"
        ),
    ] = True,
) -> None:
    """Drift (PSI + Wasserstein / Jensen-Shannon per feature) and quality of one window."""
    err = Console(stderr=True)
    out = err if json_out else Console()
    dsn = _analyst_dsn(dsn, err)
    settings = Settings()
    try:
        lo, hi = parse_when(since), parse_when(until)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if lo >= hi:
        raise typer.BadParameter("--since must be before --until")
    meta = _metadata(model_dir, model_name, model_version, metadata)
    thresholds = DriftThresholds(
        psi=psi_threshold,
        wasserstein=wasserstein_threshold,
        jensen_shannon=js_threshold,
        min_rows=min_rows,
        dataset_drift_share=drift_share,
    )
    steps = [
        "drift histograms (profiles + scan)",
        "quality on labeled rows (SQL)",
        "quality estimate (SQL)",
        "statistics and verdicts",
    ]
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task("connecting", total=len(steps))
            done = {"n": -1}

            def step(name: str) -> None:
                done["n"] += 1
                progress.update(task, completed=done["n"], description=name)

            result = analyse(
                dsn,
                meta,
                model_version=model_version,
                since=lo,
                until=hi,
                thresholds=thresholds,
                exclude=exclude or (),
                step=step,
                privacy=settings.audit_privacy,
                profile_width=_duration(settings.drift_profile_width),
                use_profiles=profiles,
            )
            progress.update(task, completed=len(steps))
    except psycopg.Error as exc:
        err.print(f"[red]database error: {type(exc).__name__}: {str(exc).strip()[:300]}[/]")
        raise typer.Exit(2) from None
    rpt.print_report(out, result.drift, result.quality, result.estimate)
    if result.sources is not None:
        err.print(_sources_line(result.sources))
    paths = rpt.write_plots(result.drift, out_dir) if plots else []
    for p in paths:
        err.print(f"wrote {p}")
    if json_out:
        doc = {
            "drift": result.drift.to_dict(),
            "quality": result.quality.to_dict(),
            "estimate": result.estimate.to_dict() if result.estimate else None,
            "plots": [str(p) for p in paths],
            "sources": result.sources.to_dict() if result.sources else None,
        }
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    if fail_on_drift and result.drift.dataset_drift:
        raise typer.Exit(1)


def _duration(text: str) -> timedelta:
    now = parse_when("now")
    return now - parse_when("-" + text, now)


def _sources_line(sources: WindowSources) -> str:
    merged = " + ".join(f"{n} of {w}" for w, n in sources.profiled.items()) or "none"
    scanned = ", ".join(f"[{a.isoformat()}, {b.isoformat()})" for a, b in sources.scanned)
    return f"counts: drift profiles {merged} + a scan of {scanned or 'nothing'}"


def load(
    rate: Annotated[float, typer.Option(help="Predictions per second (<= 2000)")] = 50.0,
    duration: Annotated[float, typer.Option(help="Seconds to run (<= 3600)")] = 60.0,
    drift_after: Annotated[
        float | None, typer.Option(help="Switch to the shifted distribution after T seconds")
    ] = None,
    label_fraction: Annotated[float, typer.Option(help="Share of predictions labeled")] = 0.0,
    label_delay: Annotated[float, typer.Option(help="Seconds before a label is posted")] = 2.0,
    url: Annotated[str, typer.Option(help="The service (loopback only)")] = "http://127.0.0.1:8000",
    seed: Annotated[int, typer.Option()] = 1,
    concurrency: Annotated[int, typer.Option(help="Requests in flight (<= 64)")] = 4,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
) -> None:
    """Send realistic transactions to /v1/predict (and labels to /v1/feedback)."""
    cfg = LoadConfig(
        url=url,
        rate=rate,
        duration_s=duration,
        drift_after_s=drift_after,
        label_fraction=label_fraction,
        label_delay_s=label_delay,
        seed=seed,
        concurrency=concurrency,
    )
    err = Console(stderr=True)
    columns = (
        SpinnerColumn(),
        TextColumn("load"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task("load", total=cfg.total)
            summary = run_load(
                cfg, on_progress=lambda done, total: progress.update(task, completed=done)
            )
    except LoadError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    doc = summary.as_dict()
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        out = Console()
        for k, v in doc.items():
            out.print(f"{k:>16}: {v}")
    if summary.ok == 0:
        raise typer.Exit(1)


def _served_metadata(
    settings: Settings, model_dir: Path | None, model_name: str | None, version: str | None
) -> tuple[ModelMetadata, str]:
    """The model ``inferwatch serve`` would serve with these settings (an explicit version,
    else ``INFERWATCH_MODEL_VERSION``, else the newest under the model dir) and its version."""
    directory = model_dir or settings.model_dir
    name = model_name or settings.model_name
    found = find_model(directory, name, version or settings.model_version)
    if found is None:
        raise typer.BadParameter(
            f"no model {name}/{version or settings.model_version or '<newest>'} under "
            f"{directory}: start the service first (it trains the bundled model) or pass "
            "--model-dir / --model-version",
            param_hint="--model-version",
        )
    meta = load_metadata(found)
    return meta, meta.version


def analysis_job(
    model_version: Annotated[
        str | None,
        typer.Option(
            help="Model version to watch (default: the one `inferwatch serve` serves: "
            "INFERWATCH_MODEL_VERSION, else the newest under the model dir)",
            show_default=False,
        ),
    ] = None,
    dsn: Annotated[str | None, typer.Option(help=_DSN_HELP, show_default=False)] = None,
    model_name: Annotated[
        str | None, typer.Option(help="default: INFERWATCH_MODEL_NAME", show_default=False)
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="default: INFERWATCH_MODEL_DIR", show_default=False)
    ] = None,
    metadata: Annotated[Path | None, typer.Option()] = None,
    window: Annotated[str, typer.Option(help="Drift window, e.g. 1h")] = "1h",
    quality_window: Annotated[str, typer.Option(help="Quality window (labels come late)")] = "7d",
    interval: Annotated[
        str | None,
        typer.Option(
            help="Time between runs, e.g. 30s, 5m (default: INFERWATCH_ANALYSIS_INTERVAL)",
            show_default=False,
        ),
    ] = None,
    once: Annotated[bool, typer.Option(help="Run once, export, exit")] = False,
    exclude: Annotated[list[str] | None, typer.Option(help="Feature to leave out")] = None,
) -> None:
    """Periodic drift + quality, exported as OTel gauges over OTLP (OTEL_* env)."""
    import logging
    import signal
    import threading

    from inferwatch.analysis.jobs import (
        AnalysisGauges,
        JobConfig,
        meter_provider,
        run_forever,
        run_once,
    )

    settings = Settings()
    dsn = _analyst_dsn(dsn, Console(stderr=True))
    if metadata is not None:
        if model_version is None:
            raise typer.BadParameter("--metadata needs --model-version")
        meta = load_metadata(metadata if metadata.is_dir() else metadata.parent)
    else:
        meta, model_version = _served_metadata(settings, model_dir, model_name, model_version)
    every = interval or settings.analysis_interval
    now = parse_when("now")
    try:
        cfg = JobConfig(
            model_version=model_version,
            drift_window=now - parse_when("-" + window, now),
            quality_window=now - parse_when("-" + quality_window, now),
            interval=now - parse_when("-" + every, now),
            exclude=tuple(exclude or ()),
            profile_width=check_width(_duration(settings.drift_profile_width)),
            profile_horizon=_duration(settings.drift_profile_horizon),
            privacy=dict(settings.audit_privacy),
        )
    except ValueError as exc:
        raise typer.BadParameter(f"not a duration (30s, 5m, 1h, 7d): {exc}") from None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger(__name__).info(
        "watching %s %s every %s (drift window %s, quality window %s)",
        meta.name,
        model_version,
        every,
        window,
        quality_window,
    )
    provider = meter_provider()
    gauges = AnalysisGauges(provider.get_meter("inferwatch.analysis"))
    try:
        if once:
            run_once(dsn, meta, cfg, gauges)
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        run_forever(dsn, meta, cfg, gauges, stop)
    finally:
        provider.shutdown(timeout_millis=5_000)


def replay(
    candidate: Annotated[
        Path, typer.Option(help="The candidate's model directory (metadata.json + artifact)")
    ],
    since: Annotated[str, typer.Option(help="Window start: ISO 8601, 'now', or -30m/-2h/-7d")],
    until: Annotated[str, typer.Option(help="Window end (exclusive)")] = "now",
    model_version: Annotated[
        str | None,
        typer.Option(help="Replay only predictions of this served version (default: all)"),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(help="Served model name (default: the candidate's)", show_default=False),
    ] = None,
    dsn: Annotated[
        str | None,
        typer.Option(help="Replay-role DSN (default: INFERWATCH_REPLAY_DATABASE_URL)"),
    ] = None,
    replay_id: Annotated[
        str | None,
        typer.Option(help="Name of this run (default: replay-<name>-<version>-<time>-<hex>)"),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000)] = 2_000,
    privacy: Annotated[
        str | None,
        typer.Option(
            help="The audit privacy policy the rows were logged under, as JSON (default: "
            "INFERWATCH_AUDIT_PRIVACY); names why a payload is not replayable",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    out_dir: Annotated[Path, typer.Option(help="Where the PNG goes")] = Path("replay-report"),
    plots: Annotated[bool, typer.Option(help="Write the PNG")] = True,
) -> None:
    """Replay a candidate model on logged traffic: agreement, score shift, quality, PNG."""
    from inferwatch.analysis import replay_report
    from inferwatch.analysis.replay import ReplayError, run_replay
    from inferwatch.inference.loading import ModelLoadError, load_model
    from inferwatch.inference.predictor import Predictor

    err = Console(stderr=True)
    out = err if json_out else Console()
    settings = Settings()
    if not dsn:
        if not settings.replay_database_url:
            err.print("[red]no database: pass --dsn or set INFERWATCH_REPLAY_DATABASE_URL[/]")
            raise typer.Exit(2)
        dsn = settings.replay_database_url.get_secret_value()
    try:
        lo, hi = parse_when(since), parse_when(until)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if lo >= hi:
        raise typer.BadParameter("--since must be before --until")
    rules: dict[str, str] = dict(settings.audit_privacy)
    if privacy is not None:
        try:
            rules = {str(k): str(v) for k, v in json.loads(privacy).items()}
        except (ValueError, AttributeError) as exc:
            raise typer.BadParameter(f"not a JSON object: {exc}", param_hint="--privacy") from None
    try:
        predictor = Predictor(load_model(candidate))
    except (OSError, ValueError, ModelLoadError) as exc:
        raise typer.BadParameter(f"{candidate}: {exc}", param_hint="--candidate") from None
    columns = (
        SpinnerColumn(),
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task("replay", total=None)
            report = run_replay(
                dsn,
                predictor,
                since=lo,
                until=hi,
                model_name=model_name or predictor.metadata.name,
                model_version=model_version,
                replay_id=replay_id,
                privacy_rules=rules,
                batch_size=batch_size,
                on_total=lambda n: progress.update(task, total=n),
                on_progress=lambda n: progress.update(task, completed=n),
            )
    except ReplayError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    except psycopg.Error as exc:
        err.print(f"[red]database error: {type(exc).__name__}: {str(exc).strip()[:300]}[/]")
        raise typer.Exit(2) from None
    replay_report.print_report(out, report)
    png = replay_report.plot(report, out_dir / f"{report.replay_id}.png") if plots else None
    if png is not None:
        err.print(f"wrote {png}")
    if json_out:
        doc = {**report.to_dict(), "plot": str(png) if png else None}
        sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def register(app: typer.Typer) -> None:
    """Add ``drift``, ``load``, ``analysis-job`` and ``replay`` to the main ``inferwatch`` app."""
    app.command("drift")(drift)
    app.command("load")(load)
    app.command("analysis-job")(analysis_job)
    app.command("replay")(replay)
