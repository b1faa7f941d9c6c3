"""The inferwatch dashboards, one module each; ``DASHBOARDS`` is what grafana/generate.py
writes (file name -> builder)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from grafana_foundation_sdk.builders import dashboard as db

from grafana.boards import model_data, pipeline, service_slo

DASHBOARDS: Mapping[str, Callable[[], db.Dashboard]] = {
    "service-slo.json": service_slo.build,
    "pipeline-health.json": pipeline.build,
    "model-data.json": model_data.build,
}
