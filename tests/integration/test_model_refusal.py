"""A malformed, tampered or schema-mismatched model artifact at start: `inferwatch serve`
refuses to start (exit status 3) with a message naming the file and the fault, and never
answers a prediction or a readiness check meanwhile (no half-loaded model)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from inferwatch.inference.loading import METADATA_NAME, LoadedModel, ModelLoadError, load_model
from stack.procs import free_ports, poll, spawn, terminate, venv_bin

pytestmark = pytest.mark.integration


def _malformed(d: Path) -> None:  # metadata cut short, as by a failed copy
    text = (d / METADATA_NAME).read_text()
    (d / METADATA_NAME).write_text(text[: len(text) // 2])


def _tampered(d: Path) -> None:  # one byte of the artifact changed after training
    meta = json.loads((d / METADATA_NAME).read_text())
    blob = bytearray((d / meta["artifact"]).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (d / meta["artifact"]).write_bytes(bytes(blob))


def _schema_mismatch(d: Path) -> None:  # metadata of another model: one feature fewer
    meta = json.loads((d / METADATA_NAME).read_text())
    meta["feature_schema"]["features"] = meta["feature_schema"]["features"][:-1]
    (d / METADATA_NAME).write_text(json.dumps(meta))


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "malformed": (_malformed, "not valid model metadata"),
    "tampered": (_tampered, "does not match metadata"),
    "schema-mismatched": (_schema_mismatch, "schema mismatch: the estimator was fitted on"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_model_artifact_refuses_to_start(
    case: str, small_model: LoadedModel, tmp_path: Path
) -> None:
    damage, reason = CASES[case]
    meta = small_model.metadata
    target = tmp_path / "models" / meta.name / meta.version
    shutil.copytree(small_model.path, target)
    damage(target)
    with pytest.raises(ModelLoadError, match=reason):
        load_model(target)

    (port,) = free_ports(1)
    log = tmp_path / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("INFERWATCH_", "OTEL_"))},
        "INFERWATCH_ENVIRONMENT": "test",
        "INFERWATCH_MODEL_DIR": str(tmp_path / "models"),
        "INFERWATCH_TRAIN_IF_MISSING": "false",
        "INFERWATCH_OTLP_ENABLED": "false",
        "INFERWATCH_AUDIT_SPOOL_DIR": str(tmp_path / "spool"),
        "INFERWATCH_WORKERS": "1",
    }
    argv = [str(venv_bin("inferwatch")), "serve", "--port", str(port)]
    proc = spawn(argv, env=env, cwd=tmp_path, log=log)
    answered: list[int] = []

    def exited() -> bool:
        # meanwhile, nothing may be served: every request fails to connect or is refused
        for method, path in (("GET", "/readyz"), ("POST", "/v1/predict")):
            try:
                r = httpx.request(method, f"http://127.0.0.1:{port}{path}", json={}, timeout=1)
                answered.append(r.status_code)
            except httpx.HTTPError:
                pass
        return proc.poll() is not None

    try:
        poll(exited, 120, f"inferwatch serve to refuse a {case} model", log=log)
    finally:
        terminate(proc.pid)
    text = log.read_text()
    assert proc.returncode == 3, text
    assert "refusing to start" in text, text
    assert reason in text, text
    assert str(target) in text
    assert not [s for s in answered if s < 500], answered
