"""One typed settings object for the service, read from ``INFERWATCH_*`` env vars.

Built in the app factory (``create_app``) or the CLI, never at import time; the CLI's
options fall back to these fields, and nothing else reads ``INFERWATCH_*``.
``OTEL_*`` variables (exporter endpoint, protocol, export interval, ...) are left to
the OpenTelemetry SDK, which reads them itself (README.md, "Configuration reference").

Secrets have no default that works in production: the database DSN and the analyst
API key are unset by default, and ``environment=production`` refuses the
development placeholders. Every secret (a ``SecretStr`` field) can instead come from a
file: ``INFERWATCH_<NAME>_FILE=/run/secrets/...`` (the container-secrets convention); the
file's text, without its trailing newline, is the value. Setting both is refused.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEV_PLACEHOLDER_SECRETS = frozenset({"changeme", "dev", "inferwatch", "password", "secret"})
# a duration as the analysis job's options take it: 30s, 5m, 1.5h, 7d
DURATION_PATTERN = r"^\d+(\.\d+)?[smhd]$"


class HttpInstrumentation(StrEnum):
    """Which HTTP server instrumentation runs (exactly one; see docs/decisions.md)."""

    INFERWATCH = "inferwatch"
    OTEL_CONTRIB = "otel-contrib"
    NONE = "none"


ENV_PREFIX = "INFERWATCH_"
FILE_SUFFIX = "_FILE"


def _is_secret(field: FieldInfo) -> bool:
    return SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))


class SecretFilesSource(PydanticBaseSettingsSource):
    """``INFERWATCH_<NAME>_FILE``: the secret ``<name>`` read from that file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        var = f"{ENV_PREFIX}{field_name.upper()}{FILE_SUFFIX}"
        path = os.environ.get(var)
        if not path or not _is_secret(field):
            return None, field_name, False
        if os.environ.get(f"{ENV_PREFIX}{field_name.upper()}") is not None:
            raise ValueError(f"both {ENV_PREFIX}{field_name.upper()} and {var} are set")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{var}: cannot read {path}: {exc.strerror}") from None
        return text.removesuffix("\n").removesuffix("\r"), field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                out[key] = value
        return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # arguments, then INFERWATCH_* variables, then INFERWATCH_*_FILE secret files
        return (
            init_settings,
            env_settings,
            SecretFilesSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    # --- serving -----------------------------------------------------------------
    environment: Literal["development", "test", "staging", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # worker processes of `inferwatch serve` (its --workers wins): a number, or "auto" for
    # one per usable CPU. The default is measured (docs/decisions.md, "Worker processes");
    # while GET /metrics is served (OTLP off) the default is 1 and more are refused.
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 2
    model_dir: Path = Path("models")
    model_name: str = "card-fraud"
    model_version: str | None = None  # None: the newest version in model_dir
    train_if_missing: bool = True  # embedded default: train the bundled model if none exists
    # How long an idle keep-alive connection stays open. It must outlast the idle timeout
    # of every client and proxy in front (nginx 75 s, AWS ALB 60 s, GCP's LB 600 s): the
    # side that closes an idle connection races the other side's next request on it, and
    # a client does not retry a POST that met the close (uvicorn's own default, 5 s, lost
    # one request in ~170,000 to that race in the soak; docs/reliability.md).
    http_keepalive_s: int = Field(75, ge=1, le=3600)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_batch_size: int = Field(256, ge=1, le=10_000)
    max_string_length: int = Field(128, ge=1, le=4096)
    # BLAS/OpenMP threads for inference, per process. 1 by default: a request is one
    # row, and extra threads only fight the server (and other workers) for the cores.
    inference_threads: int = Field(1, ge=1, le=64)
    # Adaptive micro-batching of /v1/predict (service/inferwatch/inference/batcher.py):
    # concurrent requests share one predict_proba call of at most max_size rows; the
    # consumer waits up to max_wait_ms for a batch to fill only while there is
    # concurrency (never for a request that arrives alone); more than max_queue waiting
    # requests are shed with 503 + Retry-After. Off: every request is a batch of one.
    # Defaults measured on the reference machine (docs/benchmarks.md, bench.overhead):
    # waiting 1 ms for a batch to fill measured no better than not waiting (the event
    # loop, not the model, is the bottleneck once batched), so no wait by default.
    microbatch_enabled: bool = True
    microbatch_max_size: int = Field(64, ge=1, le=4096)
    microbatch_max_wait_ms: float = Field(0.0, ge=0, le=100)
    microbatch_max_queue: int = Field(1024, ge=1)

    # --- telemetry ---------------------------------------------------------------
    telemetry_enabled: bool = True
    otlp_enabled: bool = True  # export over OTLP (endpoint etc. from OTEL_* vars)
    http_instrumentation: HttpInstrumentation = HttpInstrumentation.INFERWATCH
    # GET /metrics (Prometheus pull) from the same meter provider. "auto": only while
    # OTLP export is off, the no-collector path; with a collector the series arrive by
    # OTLP, nothing scrapes /metrics (prometheus/prometheus.yml), and a second reader
    # would double the cost of every measurement (docs/decisions.md).
    metrics_endpoint: Literal["auto", "on", "off"] = "auto"
    histogram_aggregation: Literal["exponential", "explicit"] = "exponential"
    exponential_max_scale: int = Field(20, ge=-10, le=20)
    exponential_max_size: int = Field(160, ge=2)
    telemetry_shutdown_timeout_s: float = Field(3.0, ge=0)
    # test-only latency injection; refused unless environment is development or test
    inject_latency_s: float = Field(0.0, ge=0, le=5)

    # --- audit -------------------------------------------------------------------
    database_url: SecretStr | None = None  # None: audit records go to the disk spool only
    audit_spool_dir: Path = Path("var/spool")
    audit_queue_size: int = Field(50_000, ge=1)
    audit_batch_size: int = Field(2_000, ge=1)
    audit_flush_interval_s: float = Field(0.5, gt=0)
    # every record on disk (page cache) before its response: a killed process loses none
    # (inferwatch.audit.journal); off, a SIGKILL loses up to a flush interval of records
    audit_journal: bool = True
    audit_shutdown_timeout_s: float = Field(10.0, ge=0)
    # per-feature privacy policy: feature -> keep | drop | hash
    audit_privacy: dict[str, Literal["keep", "drop", "hash"]] = Field(default_factory=dict)
    audit_hmac_key: SecretStr | None = None  # required when any feature is "hash"

    # --- audit database maintenance (`inferwatch db ...`, never the service) --------
    migrate_database_url: SecretStr | None = None  # owner DSN: `db migrate`, `db partitions`
    admin_database_url: SecretStr | None = None  # a CREATEROLE DSN: `db roles`
    # role passwords for `db roles`; unset or empty: refused
    owner_password: SecretStr | None = None
    writer_password: SecretStr | None = None
    analyst_password: SecretStr | None = None
    # the replay role's (`inferwatch replay`); unset: the role exists but cannot log in
    replay_password: SecretStr | None = None
    # the defaults of inferwatch.audit.migrate (a unit test keeps them equal)
    audit_partition_days_ahead: int = Field(7, ge=0)
    audit_retention_days: int = 90  # 0: keep every partition

    # --- analysts ----------------------------------------------------------------
    analyst_api_key: SecretStr | None = None  # None: monitoring endpoints answer 401
    analyst_database_url: SecretStr | None = None  # analyst-role DSN (monitoring, drift)
    # time between two runs of `inferwatch analysis-job` (drift + quality gauges); its
    # --interval overrides. The native demo and compose's demo set a short one.
    analysis_interval: str = Field("5m", pattern=DURATION_PATTERN)
    # drift profiles (docs/drift.md, "Profiles"): the bucket width (whole seconds, a minute
    # to a day, dividing a day) and how far back the analysis job's roll-up profiles buckets
    drift_profile_width: str = Field("1h", pattern=DURATION_PATTERN)
    drift_profile_horizon: str = Field("31d", pattern=DURATION_PATTERN)

    # `inferwatch replay`: the replay role's DSN (reads the audit log, writes `replays`)
    replay_database_url: SecretStr | None = None

    # --- shadow scoring (service/inferwatch/inference/shadow.py) --------------------
    # a candidate model directory (metadata.json + artifact) scored beside the served
    # model on shadow_fraction of live predictions, off the request path, into `replays`
    shadow_model_dir: Path | None = None
    shadow_fraction: float = Field(1.0, ge=0, le=1)
    # shadow rows waiting for the shadow model; beyond it they are dropped and counted
    shadow_max_queue: int = Field(4096, ge=1)
    shadow_max_batch_size: int = Field(256, ge=1, le=4096)

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.environment not in ("development", "test"):
            if self.inject_latency_s:
                raise ValueError(
                    "inject_latency_s is a test-only switch; refused in " + self.environment
                )
            if self.http_instrumentation == HttpInstrumentation.NONE:
                # no server span, no HTTP duration: the error-budget alerts go silent
                raise ValueError(
                    "http_instrumentation=none is a benchmark switch; refused in "
                    + self.environment
                )
        if any(p == "hash" for p in self.audit_privacy.values()) and self.audit_hmac_key is None:
            raise ValueError("audit_privacy uses 'hash' but INFERWATCH_AUDIT_HMAC_KEY is unset")
        if self.environment == "production":
            for name in ("analyst_api_key", "audit_hmac_key"):
                value = getattr(self, name)
                if value is not None and (
                    value.get_secret_value().lower() in DEV_PLACEHOLDER_SECRETS
                    or len(value.get_secret_value()) < 16
                ):
                    raise ValueError(f"{name} is a placeholder or too short for production")
            for dsn_name in ("database_url", "analyst_database_url", "replay_database_url"):
                dsn_value: SecretStr | None = getattr(self, dsn_name)
                if dsn_value is None:
                    continue
                dsn = dsn_value.get_secret_value()
                if any(f":{p}@" in dsn for p in DEV_PLACEHOLDER_SECRETS):
                    raise ValueError(f"{dsn_name} uses a development password in production")
        return self
