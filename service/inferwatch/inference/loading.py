"""The only place that reads model files.

A model directory holds ``metadata.json`` and the artifact it names. Loading never
unpickles anything: the artifact is in skops format, its SHA-256 must equal the one
recorded at training time, and skops may only instantiate types from an allowlist
(scikit-learn and numpy internals). A mismatch raises :class:`ModelLoadError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skops.io as sio

from inferwatch.inference.metadata import ModelMetadata

METADATA_NAME = "metadata.json"
# skops refuses every type it does not know to be safe; these are the extra ones a
# scikit-learn pipeline of ours needs, all from sklearn / numpy / the stdlib.
_TRUSTED_PREFIXES = ("sklearn.", "numpy.")
_TRUSTED_EXACT = frozenset({"functools.partial", "builtins.slice"})


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class LoadedModel:
    metadata: ModelMetadata
    estimator: Any  # any fitted scikit-learn classifier with predict_proba
    path: Path


def load_metadata(model_path: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((model_path / METADATA_NAME).read_text())


def find_model(model_dir: Path, name: str, version: str | None) -> Path | None:
    """The directory of ``name``/``version``, or of the newest version when None."""
    base = model_dir / name
    if version is not None:
        path = base / version
        return path if (path / METADATA_NAME).is_file() else None
    if not base.is_dir():
        return None
    versions = sorted(p for p in base.iterdir() if (p / METADATA_NAME).is_file())
    return versions[-1] if versions else None


def load_model(model_path: Path) -> LoadedModel:
    meta = load_metadata(model_path)
    artifact = model_path / meta.artifact
    blob = artifact.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != meta.artifact_sha256:
        raise ModelLoadError(
            f"{artifact}: SHA-256 {digest} does not match metadata {meta.artifact_sha256}"
        )
    if meta.artifact_format != "skops":
        raise ModelLoadError(f"{artifact}: unsupported artifact format {meta.artifact_format!r}")
    untrusted = sio.get_untrusted_types(data=blob)
    refused = [t for t in untrusted if not (t.startswith(_TRUSTED_PREFIXES) or t in _TRUSTED_EXACT)]
    if refused:
        raise ModelLoadError(f"{artifact}: refusing to load types {refused}")
    estimator = sio.loads(blob, trusted=untrusted)
    if not hasattr(estimator, "predict_proba"):
        raise ModelLoadError(f"{artifact}: estimator has no predict_proba")
    return LoadedModel(metadata=meta, estimator=estimator, path=model_path)
