"""Training is reproducible, artifacts are verified before loading, the profile is well-formed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inferwatch.inference import data
from inferwatch.inference.encoding import RowEncoder, encode_columns
from inferwatch.inference.loading import ModelLoadError, find_model, load_model
from inferwatch.inference.predictor import Predictor
from inferwatch.inference.training import card_fraud_schema, train_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m")
    train_model(out, version="a", estimator="logreg", n_rows=5_000, seed=1)
    return out


def test_generator_is_seeded_and_realistic() -> None:
    a, ya = data.generate_arrays(50_000, seed=4)
    b, yb = data.generate_arrays(50_000, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.array_equal(ya, yb)
    assert 0.005 < ya.mean() < 0.03  # a realistic fraud rate
    # the signal is real: fraud is far more common among foreign, card-not-present rows
    risky = a["is_foreign"] & ~a["card_present"]
    assert ya[risky].mean() > 3 * ya[~risky].mean()
    schema = card_fraud_schema()
    rows, _ = data.generate_transactions(200, seed=9)
    for spec in schema.features:
        for row in rows:
            v = row[spec.name]
            if spec.type == "category":
                assert v in (spec.categories or ())
            elif spec.type == "bool":
                assert isinstance(v, bool)
            else:
                assert spec.minimum is not None
                assert spec.maximum is not None
                assert spec.minimum <= v <= spec.maximum


def test_drift_moves_exactly_two_features() -> None:
    base, _ = data.generate_arrays(40_000, seed=5)
    moved, _ = data.generate_arrays(40_000, seed=5, drift=True)
    changed = {k for k in base if not np.array_equal(base[k], moved[k])}
    assert changed == {"distance_from_home_km", "merchant_category"}


def test_training_writes_verifiable_artifact_and_metadata(trained: Path) -> None:
    path = find_model(trained, "card-fraud", None)
    assert path is not None
    assert path.name == "a"
    model = load_model(path)
    meta = model.metadata
    assert meta.artifact_format == "skops"
    assert len(meta.artifact_sha256) == 64
    assert meta.metrics["roc_auc"] > 0.75
    assert 0 < meta.decision_threshold < 1
    prof = meta.reference_profile["features"]
    assert set(prof) == set(meta.feature_schema.names)
    amount = prof["amount"]
    assert amount["kind"] == "numeric"
    assert len(amount["proportions"]) == len(amount["edges"]) + 1
    assert abs(sum(amount["proportions"]) - 1) < 1e-9
    assert len(amount["quantiles"]) == 101
    assert prof["card_present"]["kind"] == "categorical"
    assert set(prof["card_present"]["frequencies"]) == {"true", "false"}
    assert abs(sum(prof["merchant_category"]["frequencies"].values()) - 1) < 1e-9


def test_same_seed_same_model(tmp_path: Path) -> None:
    m1 = train_model(tmp_path, version="x", estimator="logreg", n_rows=3_000, seed=2)
    m2 = train_model(tmp_path, version="y", estimator="logreg", n_rows=3_000, seed=2)
    assert m1.metrics == m2.metrics


def test_tampered_artifact_is_refused(trained: Path, tmp_path: Path) -> None:
    import shutil

    src = trained / "card-fraud" / "a"
    dst = tmp_path / "card-fraud" / "a"
    shutil.copytree(src, dst)
    blob = bytearray((dst / "model.skops").read_bytes())
    blob[-10] ^= 0xFF
    (dst / "model.skops").write_bytes(bytes(blob))
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load_model(dst)


def test_untrusted_types_are_refused_even_with_matching_hash(tmp_path: Path) -> None:
    import hashlib

    import skops.io as sio

    from inferwatch.inference.training import ARTIFACT_NAME

    meta = train_model(tmp_path, version="b", estimator="logreg", n_rows=2_000, seed=3)
    target = tmp_path / meta.name / meta.version
    # an attacker who can rewrite both files still cannot make us load foreign types
    sio.dump({"payload": Path("/etc/passwd")}, target / ARTIFACT_NAME)
    doc = json.loads((target / "metadata.json").read_text())
    doc["artifact_sha256"] = hashlib.sha256((target / ARTIFACT_NAME).read_bytes()).hexdigest()
    (target / "metadata.json").write_text(json.dumps(doc))
    with pytest.raises(ModelLoadError, match="refusing to load types"):
        load_model(target)


def test_row_encoder_matches_column_encoder() -> None:
    schema = card_fraud_schema()
    cols, _ = data.generate_arrays(50, seed=8)
    rows, _ = data.generate_transactions(50, seed=8)
    assert np.array_equal(RowEncoder(schema).encode(rows), encode_columns(schema, cols))


def test_predictor_applies_the_decision_threshold(trained: Path) -> None:
    model = load_model(trained / "card-fraud" / "a")
    predictor = Predictor(model)
    rows, _ = data.generate_transactions(300, seed=10)
    preds = predictor.predict(rows)
    proba = model.estimator.predict_proba(RowEncoder(model.metadata.feature_schema).encode(rows))
    t = model.metadata.decision_threshold
    assert [p.probability for p in preds] == proba[:, 1].tolist()
    assert [p.label for p in preds] == [int(p >= t) for p in proba[:, 1]]


def test_any_sklearn_classifier_with_predict_proba_serves(tmp_path: Path) -> None:
    for kind in ("rf",):
        meta = train_model(tmp_path, version=kind, estimator=kind, n_rows=2_000, seed=1)
        predictor = Predictor(load_model(tmp_path / meta.name / meta.version))
        rows, _ = data.generate_transactions(3, seed=1)
        assert len(predictor.predict(rows)) == 3
