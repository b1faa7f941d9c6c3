"""The feature schema: names, types and allowed values of a model's input.

Pure. The schema is saved in the model metadata at training time and drives request
validation (``inferwatch.api.validation``), the reference profile and the audit payload.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FeatureType = Literal["float", "int", "bool", "category"]


class FeatureSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: FeatureType
    description: str = ""
    minimum: float | None = None  # inclusive; numeric types only
    maximum: float | None = None  # inclusive; numeric types only
    categories: tuple[str, ...] | None = None  # category type only


class FeatureSchema(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    features: tuple[FeatureSpec, ...] = Field(min_length=1)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def by_name(self) -> dict[str, FeatureSpec]:
        return {f.name: f for f in self.features}

    def example(self) -> dict[str, Any]:
        """A valid payload (midpoints / first category), for docs and smoke tests."""
        out: dict[str, Any] = {}
        for f in self.features:
            if f.type == "category":
                assert f.categories
                out[f.name] = f.categories[0]
            elif f.type == "bool":
                out[f.name] = False
            else:
                lo = f.minimum if f.minimum is not None else 0.0
                hi = f.maximum if f.maximum is not None else lo + 1.0
                mid = lo + (hi - lo) / 100.0
                out[f.name] = int(mid) if f.type == "int" else round(mid, 3)
        return out
