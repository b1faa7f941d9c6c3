"""The README's configuration reference lists every setting (one source of truth: Settings)."""

from __future__ import annotations

from pathlib import Path

from inferwatch.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [
        f"INFERWATCH_{name.upper()}"
        for name in Settings.model_fields
        if f"`INFERWATCH_{name.upper()}`" not in readme
    ]
    assert missing == []
