-- The window reduced for the quality estimate (analysis/estimate.py): rows per
-- (calibrated probability, predicted class), over every prediction of the window,
-- labeled or not.
-- Parameters: %(model_name)s, %(model_version)s, %(since)s, %(until)s (ts in [since, until)),
-- %(threshold)s (predicted positive: probability >= threshold, the service's rule),
-- %(xs)s and %(ys)s float8[]: the calibration's breakpoints and calibrated values.
-- Calibration: linear between breakpoints, clipped outside (numpy interp):
-- width_bucket(s, xs) = k means xs[k] <= s < xs[k + 1]; 0 is below xs[1].
WITH win AS (
    SELECT probability AS s, width_bucket(probability, %(xs)s::float8[]) AS k
    FROM predictions
    WHERE model_name = %(model_name)s AND model_version = %(model_version)s
      AND ts >= %(since)s AND ts < %(until)s
),
cal AS (
    SELECT s >= %(threshold)s AS predicted,
           CASE WHEN k = 0 THEN (%(ys)s::float8[])[1]
                WHEN k >= cardinality(%(xs)s::float8[])
                    THEN (%(ys)s::float8[])[cardinality(%(xs)s::float8[])]
                -- numpy's order of operations: slope * (s - x_k) + y_k
                ELSE ((%(ys)s::float8[])[k + 1] - (%(ys)s::float8[])[k])
                       / ((%(xs)s::float8[])[k + 1] - (%(xs)s::float8[])[k])
                       * (s - (%(xs)s::float8[])[k])
                     + (%(ys)s::float8[])[k]
           END AS p
    FROM win
)
SELECT p, predicted, count(*) AS n
FROM cal
GROUP BY p, predicted
