-- 0003: every received label is kept, so a label that flips back (0 -> 1 -> 0) is not lost.
-- 0001 made an outcome unique per key + label: the third receipt above collided with the
-- first and was dropped (ON CONFLICT DO NOTHING), and the view kept showing 1. An outcome
-- is now one RECEIPT: unique per key + label + received_at. received_at is stamped once by
-- the service when the label arrives and travels with the record through the writer's
-- retries and the disk spool, so a retried or replayed write is still stored once, while a
-- later receipt of any label is a new row; the view's "received last wins" rule picks it.
DROP INDEX outcomes_prediction_label_uq;
DROP INDEX outcomes_entity_label_uq;
CREATE UNIQUE INDEX outcomes_prediction_receipt_uq
    ON outcomes (prediction_id, received_at, label) WHERE prediction_id IS NOT NULL;
CREATE UNIQUE INDEX outcomes_entity_receipt_uq
    ON outcomes (entity_type, entity_id, received_at, label) WHERE prediction_id IS NULL;
