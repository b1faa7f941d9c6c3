"""The same 256 transactions in each server's own request format.

inferwatch and the bare app take the transaction as the service's API has it (features
by name, plus the caller's entity): bench/overhead's ``write_bodies`` writes those 256
bodies, and every other format is derived from its lines. The peers take the model's
input row, encoded by
inferwatch's own ``RowEncoder`` (what the service does to a validated payload before
``predict_proba``), in the form each peer's documentation gives for a tensor:

- BentoML: the API's parameter by name, a batch of one row: ``{"rows": [[...]]}``;
- MLServer: the V2 inference protocol, one FP64 input of shape [1, n_features], asking
  mlserver-sklearn for the ``predict_proba`` output.

`rows_of` reads every format back to the model's rows, so a test can check that all of
them carry the same 256 rows in the same order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from inferwatch.inference.encoding import RowEncoder
from inferwatch.inference.schema import FeatureSchema

MLSERVER_INPUT = "input-0"
BENTO_PARAM = "rows"  # the parameter of bench/peers/bento_service.py's predict


def _dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


def bento_body(row: Sequence[float]) -> str:
    return _dumps({BENTO_PARAM: [list(row)]})


def mlserver_body(row: Sequence[float]) -> str:
    return _dumps(
        {
            "inputs": [
                {
                    "name": MLSERVER_INPUT,
                    "shape": [1, len(row)],
                    "datatype": "FP64",
                    "data": list(row),
                }
            ],
            "outputs": [{"name": "predict_proba"}],
        }
    )


FORMATS = ("service", "bentoml", "mlserver")


def bodies(fmt: str, schema: FeatureSchema, service_lines: list[str]) -> list[str]:
    """One request body of `fmt` per body of the service's format, in order."""
    if fmt == "service":
        return list(service_lines)
    matrix = RowEncoder(schema).encode([json.loads(line)["features"] for line in service_lines])
    rows = [[float(x) for x in r] for r in matrix]
    if fmt == "bentoml":
        return [bento_body(r) for r in rows]
    if fmt == "mlserver":
        return [mlserver_body(r) for r in rows]
    raise ValueError(f"unknown request format {fmt!r} (one of {FORMATS})")


def rows_of(fmt: str, schema: FeatureSchema, lines: list[str]) -> np.ndarray:
    """The model input rows that request bodies of `fmt` carry (one row per body)."""
    docs = [json.loads(line) for line in lines]
    if fmt == "service":
        return RowEncoder(schema).encode([d["features"] for d in docs])
    if fmt == "bentoml":
        return np.array([r for d in docs for r in d[BENTO_PARAM]], dtype=np.float64)
    if fmt == "mlserver":
        out = []
        for d in docs:
            (inp,) = d["inputs"]
            if inp["datatype"] != "FP64" or inp["name"] != MLSERVER_INPUT:
                raise ValueError(f"not this benchmark's MLServer input: {inp}")
            out.append(np.asarray(inp["data"], dtype=np.float64).reshape(inp["shape"]))
        return np.concatenate(out)
    raise ValueError(f"unknown request format {fmt!r} (one of {FORMATS})")


def positive_probability(fmt: str, answer: Any) -> float:
    """The positive-class probability in one server's answer to a one-row request."""
    if fmt == "service":
        return float(answer["probability"])
    if fmt == "bentoml":
        (p,) = answer
        return float(p)
    if fmt == "mlserver":
        (out,) = answer["outputs"]
        if out["name"] != "predict_proba" or out["shape"] != [1, 2]:
            raise ValueError(f"unexpected MLServer output {out}")
        return float(out["data"][1])
    raise ValueError(f"unknown request format {fmt!r} (one of {FORMATS})")
