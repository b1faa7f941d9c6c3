"""The inferwatch dashboards, one module each; ``DASHBOARDS`` is what grafana/generate.py
writes: the JSON file, the code that builds it, and how to read it during an incident."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard as db

from grafana.boards import model_data, pipeline, service_slo


@dataclass(frozen=True)
class Board:
    file: str
    build: Callable[[], db.Dashboard]
    incident: str


DASHBOARDS: Mapping[str, Board] = {
    b.file: b
    for b in (
        Board("service-slo.json", service_slo.build, service_slo.INCIDENT),
        Board("pipeline-health.json", pipeline.build, pipeline.INCIDENT),
        Board("model-data.json", model_data.build, model_data.INCIDENT),
    )
}
