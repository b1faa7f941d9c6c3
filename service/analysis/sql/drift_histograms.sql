-- Drift histograms and PSI of one window of the audit table, in one scan.
--
-- Parameters: %(spec)s jsonb (service.analysis.drift.sql_spec: per feature its kind,
-- PSI edges + reference proportions, or reference frequencies, and the percentile
-- grid), %(model_version)s, %(since)s, %(until)s (ts in [since, until)).
--
-- Output: one row per (feature, PSI bucket, grid cell) with its count and sum, plus
-- the feature's PSI computed here, in Postgres. Bin i of a numeric value v is
-- width_bucket(v, edges) = number of edges <= v (numpy searchsorted side="right").
-- Missing values (key absent, JSON null, or a non-number where a number is expected,
-- e.g. a feature hashed by the privacy policy) come back as rows with bucket NULL.
-- PSI: sum over the union of reference and window buckets of
--   (w - r) * ln(w / r), with w and r clipped below at 1e-4 (drift.PSI_EPSILON).
WITH spec AS (
    SELECT s.name,
           s.kind,
           CASE WHEN s.kind = 'numeric' THEN
               ARRAY(SELECT e::float8 FROM jsonb_array_elements_text(s.edges) e) END AS edges,
           CASE WHEN s.kind = 'numeric' THEN
               ARRAY(SELECT g::float8 FROM jsonb_array_elements_text(s.grid) g) END AS grid,
           s.proportions,
           s.frequencies
    FROM jsonb_to_recordset(%(spec)s::jsonb)
         AS s(name text, kind text, edges jsonb, grid jsonb, proportions jsonb, frequencies jsonb)
),
win AS (
    SELECT p.features
    FROM predictions p
    WHERE p.model_version = %(model_version)s
      AND p.ts >= %(since)s AND p.ts < %(until)s
),
cell AS (
    SELECT s.name,
           s.kind,
           v.j #>> '{}' AS raw,
           CASE WHEN s.kind = 'numeric' AND jsonb_typeof(v.j) = 'number'
                THEN (v.j #>> '{}')::float8 END AS x,
           s.edges,
           s.grid
    FROM win
    CROSS JOIN spec s
    CROSS JOIN LATERAL (SELECT win.features -> s.name AS j) v
),
hist AS (
    SELECT name,
           CASE WHEN kind = 'numeric' THEN width_bucket(x, edges)::text ELSE raw END AS bucket,
           CASE WHEN kind = 'numeric' THEN width_bucket(x, grid) END AS gcell,
           count(*) AS n,
           sum(x) AS total
    FROM cell
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
    SELECT s.name, (o.ord - 1)::text AS bucket, o.p::float8 AS p
    FROM spec s, jsonb_array_elements_text(s.proportions) WITH ORDINALITY AS o(p, ord)
    WHERE s.kind = 'numeric'
    UNION ALL
    SELECT s.name, f.key, f.value::float8
    FROM spec s, jsonb_each_text(s.frequencies) AS f
    WHERE s.kind = 'categorical'
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
