"""Everything a request needs, built once per process in the lifespan.

The predictor and its micro-batcher, the validator, the instruments with their
attribute sets precomputed (no per-request allocation of instruments or attribute
dicts), the audit sink, the analysts' monitoring store, and the readiness flag.
Routes reach it only through :mod:`inferwatch.api.deps`. Nothing here is built or
opened per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.util.types import Attributes

from inferwatch.analysis.monitoring import MonitoringStore
from inferwatch.api.validation import InstanceValidator
from inferwatch.audit.sink import AuditSink
from inferwatch.inference.batcher import MicroBatcher
from inferwatch.inference.predictor import Predictor
from inferwatch.inference.shadow import ShadowScorer
from inferwatch.settings import Settings
from inferwatch.telemetry import instruments as names
from inferwatch.telemetry.instruments import ServiceInstruments
from inferwatch.telemetry.setup import Telemetry


@dataclass
class Runtime:
    settings: Settings
    predictor: Predictor
    validator: InstanceValidator
    telemetry: Telemetry
    instruments: ServiceInstruments
    audit: AuditSink
    batcher: MicroBatcher  # every model call goes through it: never on the event loop
    # the analyst-role queries of /v1/monitoring/*; None without INFERWATCH_ANALYST_DATABASE_URL
    monitoring: MonitoringStore | None = None
    # the candidate scoring live traffic off the request path; None without a shadow model
    shadow: ShadowScorer | None = None
    ready: bool = True
    model_attrs: Attributes = field(init=False)  # outcome "ok"
    error_attrs: Attributes = field(init=False)  # outcome "error": the model call raised
    class_attrs: dict[int, Attributes] = field(init=False)
    _reject_attrs: dict[str, Attributes] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        meta = self.predictor.metadata
        base: dict[str, Any] = {
            names.ATTR_MODEL_NAME: meta.name,
            names.ATTR_MODEL_VERSION: meta.version,
        }
        self.model_attrs = {**base, names.ATTR_OUTCOME: "ok"}
        self.error_attrs = {**base, names.ATTR_OUTCOME: "error"}
        self.class_attrs = {
            c: {**base, names.ATTR_PREDICTION_CLASS: str(c)} for c in self.predictor.classes
        }

    def count_rejected(self, reason: str) -> None:
        attrs = self._reject_attrs.get(reason)
        if attrs is None:
            attrs = self._reject_attrs[reason] = {names.ATTR_REJECT_REASON: reason}
        self.instruments.rejected.add(1, attrs)
