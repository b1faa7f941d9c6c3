"""Turn validated feature payloads into the model's numeric input matrix.

Pure. Column order is the schema order; a category becomes its index in the
schema's category list, a bool 0/1, numbers stay as float64. Training and serving
use this one module, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from inferwatch.inference.schema import FeatureSchema


class RowEncoder:
    """Precomputes per-feature converters once per model; O(features) per row."""

    def __init__(self, schema: FeatureSchema) -> None:
        self.names = schema.names
        self._codes: dict[str, dict[str, int]] = {
            f.name: {c: i for i, c in enumerate(f.categories or ())}
            for f in schema.features
            if f.type == "category"
        }

    def _row(self, payload: Mapping[str, Any]) -> list[float]:
        codes = self._codes
        out: list[float] = []
        for name in self.names:
            value = payload[name]
            mapping = codes.get(name)
            out.append(float(mapping[value]) if mapping is not None else float(value))
        return out

    def encode(self, payloads: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return np.array([self._row(p) for p in payloads], dtype=np.float64)


def encode_columns(schema: FeatureSchema, cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """Vectorised encoding of column arrays (training, batch tools)."""
    out = []
    for f in schema.features:
        col = np.asarray(cols[f.name])
        if f.type == "category":
            codes = {c: i for i, c in enumerate(f.categories or ())}
            out.append(np.array([codes[v] for v in col], dtype=np.float64))
        else:
            out.append(col.astype(np.float64))
    return np.column_stack(out)
