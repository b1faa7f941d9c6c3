"""The BentoML peer: the bundled model behind a BentoML 1.4 service with adaptive batching.

Runs in its own virtualenv (bench/peers/envs.py installs it), started by bench/peers as

    bentoml serve bento_service:CardFraud --working-dir bench/peers --port P

with ``BENCH_PEER_MODEL`` (the model exported with joblib) and the batching limits in
``BENCH_PEER_MAX_BATCH_SIZE`` / ``BENCH_PEER_MAX_LATENCY_MS``. A request is
``{"rows": [[f1, f2, ...]]}`` (one encoded row, a batch of one along dimension 0); the
answer is the positive-class probability of each row, ``[p]``.
"""

from __future__ import annotations

import os

import bentoml
import joblib
import numpy as np


# one worker process (the server has one core); no access log line per request (inferwatch
# writes none either); everything else as BentoML ships it (its request metrics stay on)
@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class CardFraud:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_PEER_MODEL"])

    @bentoml.api(  # type: ignore[untyped-decorator]  # (untyped outside its own venv)
        batchable=True,
        batch_dim=0,
        max_batch_size=int(os.environ["BENCH_PEER_MAX_BATCH_SIZE"]),
        max_latency_ms=int(os.environ["BENCH_PEER_MAX_LATENCY_MS"]),
    )
    def predict(self, rows: np.ndarray) -> np.ndarray:
        proba: np.ndarray = self.model.predict_proba(rows)[:, 1]
        return proba
