-- 0100: views for analysts (owned by service/inferwatch/analysis; documented in docs/analysts.md).
-- Created by inferwatch_owner, so the analyst role reads them through the default
-- privileges of 0001. Outcomes are joined here, at query time, never at write time:
-- a label may arrive before its prediction row is flushed, or days later.

-- Lookups of the join below: outcomes by prediction_id and by entity.
CREATE INDEX IF NOT EXISTS outcomes_prediction_idx ON outcomes (prediction_id, received_at DESC)
    WHERE prediction_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS outcomes_entity_idx ON outcomes (entity_type, entity_id, received_at DESC)
    WHERE entity_id IS NOT NULL;

-- Every prediction with its effective outcome. Correction rule: of all outcomes
-- keyed to the prediction (by prediction_id, or by its entity type + id), the one
-- received last wins; older ones stay in `outcomes` as history. On an exact tie of
-- received_at the prediction_id-keyed outcome wins, then the higher label.
CREATE VIEW prediction_outcomes AS
SELECT p.prediction_id,
       p.ts,
       p.model_name,
       p.model_version,
       p.entity_type,
       p.entity_id,
       p.features,
       p.prediction,
       p.probability,
       p.latency_s,
       p.trace_id,
       p.span_id,
       p.request_id,
       o.label,
       o.received_at AS label_received_at,
       o.observed_at AS label_observed_at,
       o.keyed_by AS label_keyed_by,
       extract(epoch FROM o.received_at - p.ts)::float8 AS label_delay_s,
       o.versions AS label_versions
FROM predictions p
LEFT JOIN LATERAL (
    SELECT c.label, c.received_at, c.observed_at, c.keyed_by,
           count(*) OVER () AS versions
    FROM (
        SELECT label, received_at, observed_at, 'prediction_id' AS keyed_by, 0 AS pref
        FROM outcomes
        WHERE prediction_id = p.prediction_id
        UNION ALL
        SELECT label, received_at, observed_at, 'entity', 1
        FROM outcomes
        WHERE p.entity_id IS NOT NULL
          AND entity_type = p.entity_type AND entity_id = p.entity_id
          AND prediction_id IS NULL
    ) c
    ORDER BY c.received_at DESC, c.pref, c.label DESC
    LIMIT 1
) o ON true;

-- Per hour and model version: volume, class mix, probability quantiles, latency.
CREATE VIEW hourly_predictions AS
SELECT date_trunc('hour', ts) AS hour,
       model_name,
       model_version,
       count(*) AS predictions,
       count(*) FILTER (WHERE prediction = 1) AS predicted_positive,
       avg((prediction = 1)::int)::float8 AS positive_rate,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY probability)
           AS probability_p50_p90_p99,
       avg(probability) AS probability_mean,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_s) AS latency_p99_s
FROM predictions
GROUP BY 1, 2, 3;

-- Per hour, model version and feature: numeric summaries (features whose value is
-- a JSON number) and the missing count. Categorical values: hourly_feature_values.
CREATE VIEW hourly_feature_summary AS
SELECT date_trunc('hour', p.ts) AS hour,
       p.model_version,
       f.key AS feature,
       count(*) AS n,
       count(*) FILTER (WHERE jsonb_typeof(f.value) = 'null') AS missing,
       avg((f.value #>> '{}')::float8) FILTER (WHERE jsonb_typeof(f.value) = 'number') AS mean,
       stddev_samp((f.value #>> '{}')::float8) FILTER (WHERE jsonb_typeof(f.value) = 'number')
           AS stddev,
       min((f.value #>> '{}')::float8) FILTER (WHERE jsonb_typeof(f.value) = 'number') AS min,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY (
           CASE WHEN jsonb_typeof(f.value) = 'number' THEN (f.value #>> '{}')::float8 END))
           AS median,
       max((f.value #>> '{}')::float8) FILTER (WHERE jsonb_typeof(f.value) = 'number') AS max
FROM predictions p
CROSS JOIN LATERAL jsonb_each(p.features) f
WHERE jsonb_typeof(f.value) IN ('number', 'null')
GROUP BY 1, 2, 3;

-- Per hour, model version, categorical/bool feature and value: count and share.
CREATE VIEW hourly_feature_values AS
SELECT hour, model_version, feature, value, n,
       n::float8 / sum(n) OVER (PARTITION BY hour, model_version, feature) AS share
FROM (
    SELECT date_trunc('hour', p.ts) AS hour,
           p.model_version,
           f.key AS feature,
           f.value #>> '{}' AS value,
           count(*) AS n
    FROM predictions p
    CROSS JOIN LATERAL jsonb_each(p.features) f
    WHERE jsonb_typeof(f.value) IN ('string', 'boolean')
    GROUP BY 1, 2, 3, 4
) v;

-- Per hour and model version: label coverage and label delay (received - served).
CREATE VIEW hourly_label_coverage AS
SELECT date_trunc('hour', ts) AS hour,
       model_version,
       count(*) AS predictions,
       count(label) AS labeled,
       count(label)::float8 / count(*) AS coverage,
       count(*) FILTER (WHERE label = 1) AS labeled_positive,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY label_delay_s) AS label_delay_p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY label_delay_s) AS label_delay_p95_s,
       max(label_delay_s) AS label_delay_max_s
FROM prediction_outcomes
GROUP BY 1, 2;

-- Outcomes that match no prediction (yet): labels that arrived before their
-- prediction row was flushed, or that carry an unknown id/entity.
CREATE VIEW unmatched_outcomes AS
SELECT o.*
FROM outcomes o
WHERE NOT EXISTS (
    SELECT 1 FROM predictions p
    WHERE (o.prediction_id IS NOT NULL AND p.prediction_id = o.prediction_id)
       OR (o.prediction_id IS NULL AND p.entity_type = o.entity_type
           AND p.entity_id = o.entity_id)
);
