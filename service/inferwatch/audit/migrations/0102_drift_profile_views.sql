-- 0102: analyst views over the drift profiles of 0004 (docs/analysts.md, docs/drift.md).

-- Per bucket (hour, or day), model version, reference and feature: the values counted, the
-- missing ones, and (numeric features) the values below the training minimum and at or
-- above its maximum. A profile row carries tail_sum exactly when its cell lies beyond the
-- training range (cell 0: below; the last cell: at or above), so no reference is needed.
CREATE VIEW drift_profile_summary AS
SELECT d.bucket_start,
       d.bucket_width,
       d.model_name,
       d.model_version,
       d.fingerprint,
       d.feature,
       coalesce(sum(d.n) FILTER (WHERE d.bin IS NOT NULL), 0) AS n,
       coalesce(sum(d.n) FILTER (WHERE d.bin IS NULL), 0) AS missing,
       coalesce(sum(d.n) FILTER (WHERE d.cell = 0 AND d.tail_sum IS NOT NULL), 0)
           AS below_training_min,
       coalesce(sum(d.n) FILTER (WHERE d.cell > 0 AND d.tail_sum IS NOT NULL), 0)
           AS above_training_max
FROM drift_profiles d
GROUP BY 1, 2, 3, 4, 5, 6;
