"""The soak in CI: bench/soak.py's `soak()` for SOAK_S seconds against the module's native
stack (every component on). The 10-minute soak is `python -m bench.soak` (its figures in
docs/reliability.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.soak import print_report, soak
from stack.launch import Stack

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

SOAK_S = float(os.environ.get("INFERWATCH_SOAK_SECONDS", "60"))
# below bench.soak's DEFAULT_RATE: CI hosts are slower and busier than the bench's
CI_RATE = 150.0


def test_soak_holds_flat_and_exact(stack: Stack, tmp_path: Path) -> None:
    report = soak(stack, SOAK_S, CI_RATE, tmp_path)
    print()
    print_report(report)
    assert report.failed == 0, report.errors
    assert report.ok == report.requests > 0.95 * CI_RATE * SOAK_S
    assert report.rows_stored == report.rows_distinct == report.ok
    assert report.counted_in_prometheus == report.ok
    assert report.checks == dict.fromkeys(report.checks, True), report.checks
