-- 0001: the audit tables, their indexes and the privileges of the service roles.
-- Applied by `inferwatch db migrate` as inferwatch_owner (see docs/audit.md).
-- The roles are created beforehand by `inferwatch db roles` (needs CREATEROLE).

-- One row per served prediction. Range-partitioned by day on ts; the primary key
-- must contain the partition key, so it is (prediction_id, ts): prediction_id is a
-- UUIDv7 whose ts comes from the same clock, and a record always carries the same
-- ts, so a replayed record conflicts with its first copy and is skipped.
CREATE TABLE predictions (
    prediction_id uuid             NOT NULL,
    ts            timestamptz      NOT NULL,
    model_name    text             NOT NULL,
    model_version text             NOT NULL,
    entity_type   text             NULL,
    entity_id     text             NULL,
    features      jsonb            NOT NULL,
    prediction    smallint         NOT NULL,
    probability   double precision NOT NULL,
    latency_s     double precision NOT NULL,
    trace_id      text             NOT NULL,
    span_id       text             NOT NULL,
    request_id    text             NULL,
    CONSTRAINT predictions_pkey PRIMARY KEY (prediction_id, ts)
) PARTITION BY RANGE (ts);

-- Catches rows outside the pre-created daily partitions (clock skew, a missed
-- maintenance run): no row is ever refused for want of a partition.
CREATE TABLE predictions_default PARTITION OF predictions DEFAULT;

-- The primary key's btree leads with prediction_id: it is the by-id index
-- (UUIDv7 ids are time-ordered, so its inserts append). Entity and trace lookups
-- are equality only and their keys are random: hash indexes, measured at ~1.7x the
-- COPY throughput of btrees on the same keys (docs/audit.md). Lookups by entity
-- filter entity_type on the rows the entity_id hash finds.
CREATE INDEX predictions_ts_brin ON predictions USING brin (ts);
CREATE INDEX predictions_entity_id_hash ON predictions USING hash (entity_id);
CREATE INDEX predictions_trace_id_hash ON predictions USING hash (trace_id);

-- Ground truth arriving later, keyed by prediction_id or by the caller's entity.
-- Unique per key AND label: the same label twice is one outcome (the writer's
-- INSERT ... ON CONFLICT DO NOTHING), a different label is a second row that the
-- feedback API / analyst views resolve (409, or latest received_at wins).
CREATE TABLE outcomes (
    prediction_id uuid        NULL,
    entity_type   text        NULL,
    entity_id     text        NULL,
    label         smallint    NOT NULL,
    received_at   timestamptz NOT NULL,
    observed_at   timestamptz NULL,
    CONSTRAINT outcomes_key_present CHECK (
        prediction_id IS NOT NULL OR (entity_type IS NOT NULL AND entity_id IS NOT NULL)
    )
);
CREATE UNIQUE INDEX outcomes_prediction_label_uq ON outcomes (prediction_id, label)
    WHERE prediction_id IS NOT NULL;
CREATE UNIQUE INDEX outcomes_entity_label_uq ON outcomes (entity_type, entity_id, label)
    WHERE prediction_id IS NULL;
CREATE INDEX outcomes_received_at_idx ON outcomes (received_at);

-- The writer appends and nothing else: INSERT only (COPY FROM needs just that;
-- the staging tables it copies into are its own TEMP tables).
REVOKE ALL ON predictions, outcomes FROM PUBLIC;
GRANT INSERT ON predictions, outcomes TO inferwatch_writer;

-- The analyst reads everything, now and later (tables, partitions, views the
-- owner creates in future migrations), and writes nothing.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO inferwatch_analyst;
ALTER DEFAULT PRIVILEGES FOR ROLE inferwatch_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO inferwatch_analyst;
