"""Validation of prediction requests against the model's feature schema.

Pure: parsed JSON in, a validated instance or a list of problems out. Every problem
names its field (a dotted path) and what is wrong; all problems of a request are
reported at once. Nothing here raises on any input a client can send.

Decisions (docs/decisions.md, "Request parsing by hand"):
* numbers must be finite and inside the schema's [minimum, maximum];
* an ``int`` feature takes a JSON integer, or a float with an integral value (3.0);
* a ``bool`` feature takes only ``true``/``false``; numbers never pass as bools and
  bools never pass as numbers;
* strings (categories, entity fields, request id) are limited in length and must not
  contain NUL characters or lone surrogates (Postgres text cannot store them);
* unknown keys are errors, at the top level and among the features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from inferwatch.inference.schema import FeatureSchema, FeatureSpec

ENTITY_TYPE_MAX: Final = 64
TOP_LEVEL_KEYS: Final = frozenset({"features", "entity", "request_id"})
ENTITY_KEYS: Final = frozenset({"type", "id"})


# a string without NUL (Postgres text cannot hold one), as a JSON Schema / query pattern
NO_NUL_PATTERN: Final = "^[^\\u0000]*$"


def string_json_schema(max_len: int) -> dict[str, Any]:
    """What :func:`string_problem` accepts, as JSON Schema: non-empty, bounded, no NUL."""
    return {"type": "string", "minLength": 1, "maxLength": max_len, "pattern": NO_NUL_PATTERN}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """SCHEMA or null: an optional field sent as null counts as absent."""
    return {"anyOf": [schema, {"type": "null"}]}


def entity_json_schema(max_string_length: int) -> dict[str, Any]:
    """What :func:`validate_entity` accepts, as JSON Schema."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "id"],
        "properties": {
            "type": string_json_schema(ENTITY_TYPE_MAX),
            "id": string_json_schema(max_string_length),
        },
    }


@dataclass(frozen=True, slots=True)
class Problem:
    field: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "problem": self.problem}


@dataclass(frozen=True, slots=True)
class ValidInstance:
    features: dict[str, Any]  # schema order, normalised types (int/float/bool/str)
    entity_type: str | None
    entity_id: str | None
    request_id: str | None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def string_problem(value: Any, max_len: int) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {_type_name(value)}"
    if not value:
        return "must not be empty"
    if len(value) > max_len:
        return f"must be at most {max_len} characters, got {len(value)}"
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def validate_entity(
    entity: Any, prefix: str, max_string_length: int
) -> tuple[list[Problem], tuple[str, str] | None]:
    """The caller's ``{"type", "id"}`` entity: its problems, or the (type, id) pair."""
    if not isinstance(entity, dict):
        return [Problem(f"{prefix}entity", f"must be an object, got {_type_name(entity)}")], None
    problems = [
        Problem(f"{prefix}entity.{_key(key)}", "unknown field")
        for key in entity
        if key not in ENTITY_KEYS
    ]
    for key, limit in (("type", ENTITY_TYPE_MAX), ("id", max_string_length)):
        msg = string_problem(entity[key], limit) if key in entity else "required"
        if msg:
            problems.append(Problem(f"{prefix}entity.{key}", msg))
    if problems:
        return problems, None
    return [], (entity["type"], entity["id"])


class InstanceValidator:
    """Validates one instance; built once per model (precomputed specs)."""

    def __init__(self, schema: FeatureSchema, max_string_length: int) -> None:
        self.specs: tuple[FeatureSpec, ...] = schema.features
        self.names = frozenset(schema.names)
        self.max_string_length = max_string_length
        self._cats = {
            f.name: frozenset(f.categories or ()) for f in schema.features if f.type == "category"
        }

    def _feature(self, spec: FeatureSpec, value: Any) -> tuple[Any, str | None]:
        """The normalised value, or what is wrong with it (the caller names the field)."""
        kind = spec.type
        if kind == "bool":
            if isinstance(value, bool):
                return value, None
            return None, f"must be a boolean, got {_type_name(value)}"
        if kind == "category":
            msg = string_problem(value, self.max_string_length)
            if msg:
                return None, msg
            if value not in self._cats[spec.name]:
                allowed = ", ".join(sorted(self._cats[spec.name]))
                return None, f"unknown category {value!r}; allowed: {allowed}"
            return value, None
        # numeric
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"must be a number, got {_type_name(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return None, "must be a finite number (NaN and Infinity are refused)"
        if kind == "int" and isinstance(value, float):
            if not value.is_integer():
                return None, f"must be an integer, got {value!r}"
            value = int(value)
        # range first: a huge JSON integer compares exactly but cannot become a float
        lo, hi = spec.minimum, spec.maximum
        if lo is not None and value < lo:
            return None, f"must be >= {lo:g}, got {_short(value)}"
        if hi is not None and value > hi:
            return None, f"must be <= {hi:g}, got {_short(value)}"
        if kind == "float":
            value = float(value)
        elif isinstance(value, int) and (lo is None or hi is None) and abs(value) > 2**53:
            return None, "must be an integer within +-2^53"
        return value, None

    def validate(self, obj: Any, prefix: str = "") -> tuple[ValidInstance | None, list[Problem]]:
        problems: list[Problem] = []
        if not isinstance(obj, dict):
            return None, [Problem(prefix or "body", f"must be an object, got {_type_name(obj)}")]
        for key in obj:
            if key not in TOP_LEVEL_KEYS:
                problems.append(Problem(f"{prefix}{_key(key)}", "unknown field"))
        features = obj.get("features")
        clean: dict[str, Any] = {}
        if not isinstance(features, dict):
            problems.append(
                Problem(
                    f"{prefix}features",
                    "required"
                    if features is None
                    else f"must be an object, got {_type_name(features)}",
                )
            )
        else:
            for key in features:
                if key not in self.names:
                    problems.append(Problem(f"{prefix}features.{_key(key)}", "unknown feature"))
            for spec in self.specs:
                name = spec.name
                if name not in features:
                    problems.append(Problem(f"{prefix}features.{name}", "required"))
                    continue
                value, problem = self._feature(spec, features[name])
                if problem is None:
                    clean[name] = value
                else:
                    problems.append(Problem(f"{prefix}features.{name}", problem))
        entity_type = entity_id = request_id = None
        if obj.get("entity") is not None:
            entity_problems, pair = validate_entity(obj["entity"], prefix, self.max_string_length)
            problems.extend(entity_problems)
            if pair is not None:
                entity_type, entity_id = pair
        if "request_id" in obj and obj["request_id"] is not None:
            msg = string_problem(obj["request_id"], self.max_string_length)
            if msg:
                problems.append(Problem(f"{prefix}request_id", msg))
            else:
                request_id = obj["request_id"]
        if problems:
            return None, problems
        return ValidInstance(clean, entity_type, entity_id, request_id), []


def _key(key: Any) -> str:
    text = str(key)
    if not text.strip():
        return repr(text)  # an empty or blank key still gets a visible name
    return text if len(text) <= 64 else text[:61] + "..."


def _short(value: float) -> str:
    if isinstance(value, int) and abs(value) >= 10**20:
        return f"an integer of {value.bit_length()} bits"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 32 else text[:29] + "..."


def feature_json_schema(schema: FeatureSchema, max_string_length: int) -> dict[str, Any]:
    """JSON Schema of one instance, for the OpenAPI document."""
    props: dict[str, Any] = {}
    for f in schema.features:
        if f.type == "bool":
            props[f.name] = {"type": "boolean"}
        elif f.type == "category":
            props[f.name] = {"type": "string", "enum": list(f.categories or ())}
        else:
            p: dict[str, Any] = {"type": "integer" if f.type == "int" else "number"}
            if f.minimum is not None:
                p["minimum"] = f.minimum
            if f.maximum is not None:
                p["maximum"] = f.maximum
            props[f.name] = p
        if f.description:
            props[f.name]["description"] = f.description
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["features"],
        "properties": {
            "features": {
                "type": "object",
                "additionalProperties": False,
                "required": list(schema.names),
                "properties": props,
            },
            "entity": nullable(entity_json_schema(max_string_length))
            | {
                "description": "The caller's entity (e.g. transaction or account id), "
                "kept in the audit row for outcome joins."
            },
            "request_id": nullable(string_json_schema(max_string_length)),
        },
        "example": {
            "features": schema.example(),
            "entity": {"type": "transaction", "id": "txn-0001"},
        },
    }
