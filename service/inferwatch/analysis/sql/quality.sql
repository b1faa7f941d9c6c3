-- Quality counts of one window: confusion at the decision threshold, Brier sum and
-- the rank sum of the positives (for ROC AUC), over the rows with an outcome.
-- The effective outcome of a prediction is the one in prediction_outcomes (latest
-- received_at wins; see docs/analysts.md).
-- Parameters: %(model_name)s, %(model_version)s, %(since)s, %(until)s, %(threshold)s.
-- The prediction counted is probability >= threshold (the service's rule), not the
-- stored class, so that a report can be re-run at another threshold.
WITH win AS (
    SELECT probability, label
    FROM prediction_outcomes
    WHERE model_name = %(model_name)s AND model_version = %(model_version)s
      AND ts >= %(since)s AND ts < %(until)s
),
labeled AS (
    SELECT probability, label,
           -- average rank of tied probabilities: rank() + (ties - 1) / 2
           rank() OVER (ORDER BY probability)
             + (count(*) OVER (PARTITION BY probability) - 1) / 2.0 AS avg_rank
    FROM win
    WHERE label IS NOT NULL
)
SELECT (SELECT count(*) FROM win) AS rows,
       count(*) AS labeled,
       count(*) FILTER (WHERE probability >= %(threshold)s AND label = 1) AS tp,
       count(*) FILTER (WHERE probability >= %(threshold)s AND label = 0) AS fp,
       count(*) FILTER (WHERE probability < %(threshold)s AND label = 0) AS tn,
       count(*) FILTER (WHERE probability < %(threshold)s AND label = 1) AS fn,
       coalesce(sum((probability - label) ^ 2), 0) AS brier_sum,
       coalesce(sum(avg_rank) FILTER (WHERE label = 1), 0) AS positive_rank_sum
FROM labeled
