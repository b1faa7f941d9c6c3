"""Right to erasure: delete every audit row of one entity (``inferwatch db erase``).

One transaction as ``inferwatch_owner`` (the writer may only INSERT, the analyst only
SELECT): the entity's predictions, every outcome keyed by one of their ids or by the
entity itself, and, when the ``replays`` table exists, the replayed/shadow scores of
those predictions. Either all of it is gone or nothing is. The counts are returned and
logged (the erasure request is the operator's record; the erased values are not logged).

Records still in a service's disk spool are not in the database yet: drain the spool
first (``inferwatch db replay``), or run the erasure again after it (docs/audit.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from inferwatch.audit.migrate import become_owner

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Erasure:
    predictions: int
    outcomes: int
    replays: int | None  # None: no replays table in this database


def erase_entity(dsn: str, entity_type: str, entity_id: str) -> Erasure:
    """Delete the entity's predictions, outcomes and replays; the counts deleted."""
    with psycopg.connect(dsn) as conn:
        become_owner(conn)
        with conn.transaction():
            ids = [
                row[0]
                for row in conn.execute(
                    "DELETE FROM predictions WHERE entity_id = %s AND entity_type = %s"
                    " RETURNING prediction_id",
                    (entity_id, entity_type),
                )
            ]
            outcomes = conn.execute(
                "DELETE FROM outcomes WHERE prediction_id = ANY(%s)"
                " OR (entity_type = %s AND entity_id = %s)",
                (ids, entity_type, entity_id),
            ).rowcount
            replays = None
            has_replays = conn.execute("SELECT to_regclass('public.replays') IS NOT NULL")
            if (row := has_replays.fetchone()) is not None and row[0]:
                replays = conn.execute(
                    "DELETE FROM replays WHERE prediction_id = ANY(%s)", (ids,)
                ).rowcount
    result = Erasure(len(ids), outcomes, replays)
    log.warning(
        "erasure of entity type=%r: %d predictions, %d outcomes, %s replays deleted",
        entity_type,
        result.predictions,
        result.outcomes,
        "no" if replays is None else replays,
    )
    return result
