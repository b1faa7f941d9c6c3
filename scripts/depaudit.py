"""Audit every pin of requirements.lock for known vulnerabilities (run by scripts/audit).

Sources, first that answers:

1. pip-audit (pinned in pyproject's dev extra) against PyPI's per-release JSON API, which
   carries the PyPA advisory database for every release, else against OSV's query API.
2. PyPI's project JSON (`/pypi/<name>/json`). Its `vulnerabilities` are those of the
   project's LATEST release only, so it audits exactly the pins that are that release. A pin
   behind it is listed as not audited: the data says nothing about older releases (the
   latest release's advisories are shown beside such a pin, as a hint, not as a finding).

Exit status: 0 every pin audited, no untriaged finding; 1 an untriaged finding (with
pip-audit, --strict: also a pin it could not audit); 3 no finding but some pins not audited,
or no service answered (scripts/test prints that as a warning: nothing is claimed audited
that was not).

    python scripts/depaudit.py                          # what scripts/audit runs
    python scripts/depaudit.py --source pypi-latest     # PyPI's project JSON only
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org"
OSV_QUERY = "https://api.osv.dev/v1/query"

# Findings triaged as not affecting this project: advisory id (or alias) -> package. The
# ONE list, used by both sources; each id has a row under "Triaged findings" in
# docs/reliability.md saying why it does not apply.
TRIAGED: dict[str, str] = {}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str


@dataclass(frozen=True)
class Advisory:
    """One vulnerability, its records under several ids merged (PYSEC-, GHSA-, CVE-)."""

    ids: tuple[str, ...]  # the record's own id first
    fixed_in: tuple[str, ...]
    text: str

    def describe(self) -> str:
        fixed = ", ".join(self.fixed_in) or "no fixed release listed"
        return f"{' / '.join(self.ids)} (fixed in: {fixed}): {self.text}"


@dataclass
class Report:
    audited: list[Pin] = field(default_factory=list)
    findings: list[tuple[Pin, Advisory]] = field(default_factory=list)
    ignored: list[tuple[Pin, Advisory]] = field(default_factory=list)
    # pin -> why it was not audited (and what the latest release's data hints)
    not_audited: list[tuple[Pin, str]] = field(default_factory=list)


def read_pins(lock: Path) -> list[Pin]:
    """`name==version` of every requirement line of a pip-compile style lock."""
    pins = []
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip(" \\").strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise SystemExit(f"[audit] {lock}: not a requirement: {line!r} ({exc})") from exc
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise SystemExit(f"[audit] {lock}: not pinned exactly: {line!r}")
        pins.append(Pin(canonicalize_name(req.name), specs[0].version))
    return pins


def merge_advisories(records: Iterable[dict[str, Any]]) -> list[Advisory]:
    """PyPI lists one vulnerability once per database (PYSEC-x aliasing GHSA-y and back):
    records sharing any id or alias are one advisory. Withdrawn records are dropped."""
    groups: list[tuple[set[str], list[dict[str, Any]]]] = []
    for rec in records:
        if rec.get("withdrawn"):
            continue
        names = {str(rec["id"]), *(str(a) for a in rec.get("aliases") or ())}
        joined = [g for g in groups if g[0] & names]
        merged_names, merged_recs = set(names), [rec]
        for g in joined:
            groups.remove(g)
            merged_names |= g[0]
            merged_recs = g[1] + merged_recs
        groups.append((merged_names, merged_recs))
    out = []
    for names, recs in groups:
        own = [str(r["id"]) for r in recs]
        ids = tuple(dict.fromkeys([*own, *sorted(names - set(own))]))
        fixed = sorted({str(v) for r in recs for v in r.get("fixed_in") or ()})
        text = next((str(r[k]) for r in recs for k in ("summary", "details") if r.get(k)), "")
        out.append(Advisory(ids, tuple(fixed), " ".join(text.split())[:160]))
    return out


def fetch_project(client: httpx.Client, index: str, name: str) -> dict[str, Any] | str:
    """The project JSON, or why there is none (one retry on a network error or a 5xx)."""
    url = f"{index}/pypi/{name}/json"
    why = ""
    for _attempt in range(2):
        try:
            resp = client.get(url)
        except httpx.HTTPError as exc:
            why = f"no answer from {url}: {type(exc).__name__}"
            continue
        if resp.status_code == 200:
            try:
                data: dict[str, Any] = resp.json()
                str(data["info"]["version"])
                list(data["vulnerabilities"])
            except (ValueError, KeyError, TypeError) as exc:
                return f"unreadable answer from {url}: {type(exc).__name__}"
            return data
        why = f"HTTP {resp.status_code} from {url}"
        if resp.status_code < 500 and resp.status_code != 429:
            break
    return why


def audit_latest(
    pins: Sequence[Pin], index: str, timeout: float, ignored: set[str], workers: int = 16
) -> Report:
    report = Report()
    with (
        httpx.Client(timeout=timeout, follow_redirects=True) as client,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        answers = list(pool.map(lambda p: fetch_project(client, index, p.name), pins))
    for pin, answer in zip(pins, answers, strict=True):
        if isinstance(answer, str):
            report.not_audited.append((pin, answer))
            continue
        latest = str(answer["info"]["version"])
        advisories = merge_advisories(answer["vulnerabilities"])
        try:
            at_latest = Version(pin.version) == Version(latest)
        except InvalidVersion:
            at_latest = pin.version == latest
        if not at_latest:
            why = f"pinned {pin.version}, latest release {latest}"
            unfixed = [a for a in advisories if not a.fixed_in]
            if advisories:
                why += (
                    f"; the latest release has {len(advisories)} advisories"
                    f" ({len(unfixed)} without a fixed release), whether they affect"
                    f" {pin.version} is not in the data: "
                    + "; ".join(a.describe() for a in advisories)
                )
            report.not_audited.append((pin, why))
            continue
        report.audited.append(pin)
        for adv in advisories:
            bucket = report.ignored if ignored & set(adv.ids) else report.findings
            bucket.append((pin, adv))
    return report


def print_report(report: Report, total: int, seconds: float, ignored: set[str]) -> int:
    n_audited, n_not = len(report.audited), len(report.not_audited)
    behind = sum(1 for _, why in report.not_audited if why.startswith("pinned "))
    print(
        f"[audit] PyPI project JSON (advisories of each project's latest release): audited "
        f"{n_audited} of {total} pins, {len(report.findings)} findings "
        f"({len(report.ignored)} triaged, ignored); not audited {n_not} "
        f"({behind} not the latest release, {n_not - behind} without an answer); "
        f"{seconds:.1f} s"
    )
    for pin, adv in report.findings:
        print(f"[audit]   FINDING {pin.name}=={pin.version}: {adv.describe()}")
    for pin, adv in report.ignored:
        print(f"[audit]   triaged {pin.name}=={pin.version}: {adv.describe()}")
    for pin, why in sorted(report.not_audited, key=lambda x: x[0].name):
        print(f"[audit]   NOT AUDITED {pin.name}=={pin.version}: {why}")
    seen = {i for _, adv in report.findings + report.ignored for i in adv.ids}
    if stale := sorted(ignored - seen):
        print(f"[audit]   triaged ids no audited pin reports now: {', '.join(stale)}")
    if report.findings:
        return 1
    return 3 if report.not_audited else 0


def probe(method: str, url: str, timeout: float, body: dict[str, Any] | None = None) -> str:
    """'' when the URL answers 200, else what it answered."""
    try:
        resp = httpx.request(method, url, json=body, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"no answer ({type(exc).__name__})"
    return "" if resp.status_code == 200 else f"HTTP {resp.status_code}"


def pip_audit(lock: Path, service: str, osv_url: str, timeout: float, ignored: set[str]) -> int:
    args = [str(ROOT / ".venv/bin/pip-audit"), "--requirement", str(lock), "--disable-pip"]
    args += ["--no-deps", "--strict", "--progress-spinner", "off"]
    args += ["--aliases", "on", "--desc", "on"]  # every id of a finding, for its triage
    args += ["--timeout", str(max(1, round(timeout)))]  # whole seconds
    args += ["--vulnerability-service", service, "--osv-url", osv_url]
    for vuln in sorted(ignored):
        args += ["--ignore-vuln", vuln]
    print(f"[audit] pip-audit, vulnerability service {service}: every pin of {lock.name}")
    sys.stdout.flush()
    return subprocess.run(args, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    parser.add_argument(
        "--source",
        choices=("auto", "pypi", "osv", "pypi-latest"),
        default="auto",
        help="pypi, osv: pip-audit with that service; pypi-latest: PyPI's project JSON; "
        "auto: the first of those three that answers",
    )
    parser.add_argument("--index", default=PYPI, help="PyPI's base URL for pypi-latest")
    parser.add_argument("--osv-url", default=OSV_QUERY, help="OSV's query API for osv")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument(
        "--ignore", action="append", default=[], help="an advisory id to ignore besides TRIAGED"
    )
    args = parser.parse_args(argv)
    ignored = set(TRIAGED) | set(args.ignore)
    pins = read_pins(args.lock)

    # pip-audit's services answer per release: probe each with a pin of the lock
    sample = next((p for p in pins if p.name == "pip-audit"), pins[0])
    per_release = f"{PYPI}/pypi/{sample.name}/{sample.version}/json"
    query = {"package": {"name": sample.name, "ecosystem": "PyPI"}, "version": sample.version}
    unanswered = []
    for service, method, url, body in (
        ("pypi", "GET", per_release, None),
        ("osv", "POST", args.osv_url, query),
    ):
        if args.source not in ("auto", service):
            continue
        why = probe(method, url, args.timeout, body)
        if not why:
            return pip_audit(args.lock, service, args.osv_url, args.timeout, ignored)
        unanswered.append(f"{url}: {why}")
    if unanswered:
        print(f"[audit] pip-audit's services do not answer: {'; '.join(unanswered)}")
    if args.source in ("pypi", "osv"):
        return 3

    start = time.monotonic()
    report = audit_latest(pins, args.index.rstrip("/"), args.timeout, ignored)
    return print_report(report, len(pins), time.monotonic() - start, ignored)


if __name__ == "__main__":
    sys.exit(main())
