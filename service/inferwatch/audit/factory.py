"""The one place settings become an audit sink (called by ``create_app``).

``build_audit_sink(settings, meter)`` returns a :class:`PostgresAuditWriter`:
with ``database_url`` set it writes to Postgres (spooling when it cannot); without
one it runs in spool-only mode (records are kept on disk and replayed by the first
process that has a database). The lifespan calls ``start()`` and, on shutdown,
``close(settings.audit_shutdown_timeout_s)``.
"""

from __future__ import annotations

from opentelemetry.metrics import Meter

from inferwatch.audit.privacy import PrivacyPolicy
from inferwatch.audit.sink import AuditSink
from inferwatch.audit.writer import PostgresAuditWriter
from inferwatch.settings import Settings


def build_privacy_policy(settings: Settings) -> PrivacyPolicy:
    key = settings.audit_hmac_key.get_secret_value().encode() if settings.audit_hmac_key else None
    return PrivacyPolicy(settings.audit_privacy, key)


def build_audit_sink(settings: Settings, meter: Meter) -> AuditSink:
    dsn = settings.database_url.get_secret_value() if settings.database_url else None
    return PostgresAuditWriter(
        dsn=dsn,
        spool_dir=settings.audit_spool_dir,
        meter=meter,
        policy=build_privacy_policy(settings),
        queue_size=settings.audit_queue_size,
        batch_size=settings.audit_batch_size,
        flush_interval_s=settings.audit_flush_interval_s,
        journal=settings.audit_journal,
    )
