-- Drift histograms and PSI of one window of the audit table, in one parallel scan.
--
-- {spec} is a VALUES list composed by store.drift_histograms from the reference
-- profile, one row per feature: (name, kind, PSI edges float8[], percentile grid
-- float8[]), as literals so that the plan can run in parallel workers (a CTE or
-- a parameter-built array would be parallel-restricted or recomputed per row).
-- Parameters: %(reference)s jsonb [{{"name", "bucket", "p"}}] (reference proportions per
-- PSI bucket), %(model_name)s, %(model_version)s, %(since)s, %(until)s (ts in [since, until)).
--
-- Output: one row per (feature, PSI bucket, grid cell) with its count and sum, plus
-- the feature's PSI computed here, in Postgres. Bin i of a numeric value v is
-- width_bucket(v, edges) = number of edges <= v (numpy searchsorted side="right").
-- Missing values (JSON null, or a non-number where a number is expected, e.g. a
-- feature hashed by the privacy policy) come back as rows with bucket NULL; a key
-- absent from a payload (dropped by the privacy policy) is simply not counted.
-- PSI: sum over the union of reference and window buckets of
--   (w - r) * ln(w / r), with w and r clipped below at 1e-4 (drift.PSI_EPSILON).
-- The caller runs this with enable_sort off: Postgres cannot estimate the few
-- hundred groups and would otherwise sort every (row, feature) cell.
WITH hist AS (
    SELECT s.name,
           CASE WHEN s.kind = 'numeric' THEN width_bucket(c.x, s.edges)::text
                ELSE c.raw END AS bucket,
           CASE WHEN s.kind = 'numeric' THEN width_bucket(c.x, s.grid) END AS gcell,
           count(*) AS n,
           sum(c.x) AS total
    FROM predictions p
    CROSS JOIN LATERAL jsonb_each(p.features) AS f
    JOIN (VALUES {spec}) AS s (name, kind, edges, grid) ON s.name = f.key
    CROSS JOIN LATERAL (
        SELECT f.value #>> ARRAY[]::text[] AS raw,
               CASE WHEN jsonb_typeof(f.value) = 'number'
                    THEN (f.value #>> ARRAY[]::text[])::float8 END AS x
    ) c
    WHERE p.model_name = %(model_name)s AND p.model_version = %(model_version)s
      AND p.ts >= %(since)s AND p.ts < %(until)s
    GROUP BY 1, 2, 3
),
psi_window AS (
    SELECT name, bucket, sum(n) AS n
    FROM hist
    WHERE bucket IS NOT NULL
    GROUP BY 1, 2
),
psi_total AS (
    SELECT name, sum(n) AS total FROM psi_window GROUP BY 1
),
reference AS (
    SELECT r.name, r.bucket, r.p
    FROM jsonb_to_recordset(%(reference)s::jsonb) AS r (name text, bucket text, p float8)
),
joined AS (
    SELECT coalesce(r.name, w.name) AS name,
           greatest(coalesce(r.p, 0.0), 1e-4) AS r,
           greatest(coalesce(w.n, 0)::float8 / t.total, 1e-4) AS w
    FROM reference r
    FULL JOIN psi_window w ON w.name = r.name AND w.bucket = r.bucket
    JOIN psi_total t ON t.name = coalesce(r.name, w.name)
),
psi AS (
    SELECT name, sum((w - r) * ln(w / r)) AS psi FROM joined GROUP BY 1
)
SELECT h.name, h.bucket, h.gcell, h.n, h.total, p.psi
FROM hist h
LEFT JOIN psi p USING (name)
ORDER BY h.name, h.gcell NULLS FIRST, h.bucket
