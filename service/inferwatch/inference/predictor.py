"""Prediction: the only work on the hot path. Pure apart from the model call.

For a binary classifier the prediction is the positive class when its probability
reaches the model's decision threshold (chosen on the holdout at training time) and
``probability`` is the positive-class probability. For more classes the prediction
is the most probable class and ``probability`` its probability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferwatch.inference.encoding import RowEncoder
from inferwatch.inference.loading import LoadedModel


@dataclass(frozen=True, slots=True)
class Prediction:
    label: int
    probability: float


class Predictor:
    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.metadata = model.metadata
        self.encoder = RowEncoder(model.metadata.feature_schema)
        self._estimator = model.estimator
        classes = [int(c) for c in model.estimator.classes_]
        self.classes = tuple(classes)
        self._binary = len(classes) == 2
        self._pos_index = classes.index(model.metadata.positive_class) if self._binary else -1
        self._neg_label = classes[1 - self._pos_index] if self._binary else -1
        self._threshold = model.metadata.decision_threshold

    def predict(self, payloads: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        return self.predict_matrix(self.encoder.encode(payloads))

    def predict_matrix(self, x: np.ndarray) -> list[Prediction]:
        """Predictions for rows already encoded by ``self.encoder`` (n_rows x n_features).

        One ``predict_proba`` for all rows; a row's result does not depend on the others
        in ``x`` (tests/unit/test_model.py checks batches against single rows).
        """
        proba: np.ndarray = self._estimator.predict_proba(x)
        if self._binary:
            pos = self.metadata.positive_class
            return [
                Prediction(pos if p >= self._threshold else self._neg_label, p)
                for p in proba[:, self._pos_index].tolist()
            ]
        best = proba.argmax(axis=1)
        return [Prediction(self.classes[int(i)], float(proba[k, i])) for k, i in enumerate(best)]
