"""Training is reproducible, artifacts are verified before loading, the profile is well-formed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from inferwatch.inference import data
from inferwatch.inference.encoding import RowEncoder, encode_columns
from inferwatch.inference.loading import ModelLoadError, find_model, load_model
from inferwatch.inference.predictor import Predictor
from inferwatch.inference.training import (
    HGB_PARAMS,
    HOLDOUT_TOLERANCE,
    Estimator,
    card_fraud_schema,
    holdout_metrics,
    train_model,
    training_data,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One OpenMP thread, as the service predicts (`inference_threads`): boosting's fit and
    predict with 2 spin-waiting threads took ~5x as long on a busy 2-core host."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m")
    train_model(out, version="a", estimator="logreg", n_rows=5_000, seed=1)
    return out


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model as `inferwatch serve` trains it: train_model's defaults (~2-3 s)."""
    out = tmp_path_factory.mktemp("bundled")
    meta = train_model(out, version="bundled")
    return out / meta.name / meta.version


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
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    cases: tuple[tuple[Estimator, str], ...] = (
        ("logreg", "LogisticRegression"),
        ("rf", "RandomForestClassifier"),
    )
    for kind, name in cases:
        meta = train_model(tmp_path, version=kind, estimator=kind, n_rows=2_000, seed=1)
        assert meta.estimator == name
        model = load_model(tmp_path / meta.name / meta.version)
        # rf and logreg keep their scaling/one-hot step in front of the classifier
        assert isinstance(model.estimator, Pipeline)
        assert isinstance(model.estimator[0], ColumnTransformer)
        predictor = Predictor(model)
        rows, _ = data.generate_transactions(3, seed=1)
        assert len(predictor.predict(rows)) == 3


def test_bundled_model_takes_the_encoded_matrix_as_it_is(bundled: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = load_model(bundled)
    meta = model.metadata
    # the classifier itself, no Pipeline or ColumnTransformer in front, and no categorical
    # declaration (which would make it one-hot/ordinal-encode every input internally)
    assert type(model.estimator) is HistGradientBoostingClassifier
    assert model.estimator.is_categorical_ is None
    assert model.estimator.n_features_in_ == len(meta.feature_schema.features)
    assert meta.estimator == "HistGradientBoostingClassifier"
    # the metadata's metrics and threshold are those of the artifact that was written
    d = training_data(card_fraud_schema(), meta.training_rows * 5 // 4, meta.seed)
    assert meta.training_rows == len(d.train)
    assert meta.reference_profile["n_rows"] == len(d.train)
    proba = model.estimator.predict_proba(d.x[d.test])[:, 1]
    threshold, metrics = holdout_metrics(d.y[d.test], proba)
    assert threshold == meta.decision_threshold
    assert metrics == {k: v for k, v in meta.metrics.items() if k != "positive_rate"}


def test_bundled_model_keeps_the_holdout_metrics_of_native_categorical_splits(
    bundled: Path,
) -> None:
    """Same rows, split, seed and boosting, categories declared by index as before."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    meta = load_model(bundled).metadata
    schema = meta.feature_schema
    d = training_data(schema, meta.training_rows * 5 // 4, meta.seed)
    index = [k for k, f in enumerate(schema.features) if f.type == "category"]
    native = HistGradientBoostingClassifier(
        **HGB_PARAMS, categorical_features=index, random_state=meta.seed
    )
    native.fit(d.x[d.train], d.y[d.train])
    assert native.is_categorical_ is not None  # the reference really splits on categories
    _, before = holdout_metrics(d.y[d.test], native.predict_proba(d.x[d.test])[:, 1])
    worse = {
        m: (meta.metrics[m], before[m])
        for m, tolerance in HOLDOUT_TOLERANCE.items()
        if meta.metrics[m] < before[m] - tolerance
    }
    assert worse == {}
    assert before["roc_auc"] > 0.85  # a reference that learned something


def test_predictor_batches_equal_single_rows(bundled: Path) -> None:
    """One predict_proba over a batch gives each row exactly what it gets alone."""
    predictor = Predictor(load_model(bundled))
    rows, _ = data.generate_transactions(256, seed=11)
    x = predictor.encoder.encode(rows)
    assert x.shape == (256, len(predictor.metadata.feature_schema.features))
    batched = predictor.predict_matrix(x)
    assert batched == predictor.predict(rows)
    assert batched == [predictor.predict_matrix(x[k : k + 1])[0] for k in range(len(rows))]
    assert {p.label for p in batched} <= set(predictor.classes)
    for size in (1, 64):
        assert predictor.predict_matrix(x[:size]) == batched[:size]
