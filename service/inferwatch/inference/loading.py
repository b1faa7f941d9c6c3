"""The only place that reads model files.

A model directory holds ``metadata.json`` and the artifact it names. Loading never
unpickles anything: the artifact is in skops format, its SHA-256 must equal the one
recorded at training time, and skops may only instantiate types from an allowlist
(scikit-learn and numpy internals). The estimator must then agree with the metadata's
schema (feature count, classes) and answer one probe prediction (the schema's example row)
with finite probabilities: a model is served whole or not at all. Any of this failing,
including metadata that is not valid JSON or not the expected document, raises
:class:`ModelLoadError` with a message naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skops.io as sio
from pydantic import ValidationError

from inferwatch.inference.encoding import RowEncoder
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
    path = model_path / METADATA_NAME
    try:
        return ModelMetadata.model_validate_json(path.read_text())
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(document)"
        raise ModelLoadError(
            f"{path}: not valid model metadata ({exc.error_count()} error(s); first at "
            f"{where}: {first['msg']})"
        ) from exc


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
    try:
        blob = artifact.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{artifact}: cannot read the artifact: {exc}") from exc
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
    try:
        estimator = sio.loads(blob, trusted=untrusted)
    except Exception as exc:  # skops raises what its parser meets: refuse, never half-load
        raise ModelLoadError(f"{artifact}: not a loadable skops artifact: {exc}") from exc
    if not hasattr(estimator, "predict_proba"):
        raise ModelLoadError(f"{artifact}: estimator has no predict_proba")
    check_agrees(estimator, meta, artifact)
    return LoadedModel(metadata=meta, estimator=estimator, path=model_path)


def check_agrees(estimator: Any, meta: ModelMetadata, artifact: Path) -> None:
    """The estimator takes the metadata schema's columns, has its classes, and predicts."""
    n_schema = len(meta.feature_schema.names)
    n_fitted = getattr(estimator, "n_features_in_", None)
    if n_fitted is not None and int(n_fitted) != n_schema:
        raise ModelLoadError(
            f"{artifact}: schema mismatch: the estimator was fitted on {int(n_fitted)} "
            f"features, the metadata's feature schema has {n_schema}"
        )
    classes = tuple(int(c) for c in getattr(estimator, "classes_", ()))
    if classes != tuple(meta.classes) or meta.positive_class not in classes:
        raise ModelLoadError(
            f"{artifact}: schema mismatch: the estimator's classes {list(classes)} differ from "
            f"the metadata's {list(meta.classes)} (positive class {meta.positive_class})"
        )
    try:
        x = RowEncoder(meta.feature_schema).encode([meta.feature_schema.example()])
        proba = estimator.predict_proba(x)
        row = [float(p) for p in proba[0]]
    except Exception as exc:
        raise ModelLoadError(
            f"{artifact}: the probe prediction on the schema's example row failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if len(row) != len(classes) or not all(math.isfinite(p) and 0 <= p <= 1 for p in row):
        raise ModelLoadError(
            f"{artifact}: the probe prediction returned {row}: not one probability per class"
        )
