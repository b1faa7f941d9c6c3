-- 0004: mergeable drift profiles (docs/drift.md, "Profiles").
--
-- A profile is what the drift scan (analysis/sql/drift_histograms.sql) counts, kept per
-- (model, version, time bucket, feature): per feature the counts per (PSI bin, percentile
-- cell) of numeric values, per category of categorical ones, the missing values, and the
-- exact sums of the values beyond the training range (cells 0 and last; numeric, so
-- that summing profiles gives the same sums as one scan). Counts add up, so drift over a
-- window = the sum of the profiles of its whole buckets + a scan of its partial buckets,
-- identical to one scan of the window.
--
-- Profiles are written by inferwatch_rollup_drift_profiles() only (SECURITY DEFINER, run by
-- the analysis job as the analyst role): nobody but the owner writes these tables, and every
-- profile row is what the counting function derived from the audit table.

-- When a row reached the table (the writer's transaction start). The spool replays an
-- outage's rows hours later with their original ts: the roll-up finds the buckets such rows
-- landed in by this column and rolls them again. The default is constant per statement, so
-- adding it rewrites nothing; BRIN because rows are appended in ingest order.
ALTER TABLE predictions ADD COLUMN ingested_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX predictions_ingested_at_brin ON predictions USING brin (ingested_at);

-- The reference a profile was counted against: the features and, for numeric ones, the PSI
-- bin edges and the percentile grid. fingerprint = sha256 of the spec's jsonb text (jsonb
-- text is canonical), so a changed reference has another fingerprint and its profiles are
-- never merged with those of the old one.
CREATE TABLE drift_references (
    fingerprint text        PRIMARY KEY,
    spec        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT drift_references_fingerprint CHECK (
        fingerprint = encode(sha256(convert_to(spec::text, 'UTF8')), 'hex'))
);

-- One row per rolled bucket (also an empty one): what the roll-up saw.
CREATE TABLE drift_profile_buckets (
    model_name      text        NOT NULL,
    model_version   text        NOT NULL,
    bucket_width    interval    NOT NULL,
    fingerprint     text        NOT NULL REFERENCES drift_references,
    bucket_start    timestamptz NOT NULL,
    rows            bigint      NOT NULL,  -- predictions of the model version in the bucket
    max_ingested_at timestamptz NULL,
    rolled_at       timestamptz NOT NULL,  -- the roll-up transaction's start
    PRIMARY KEY (model_name, model_version, bucket_width, fingerprint, bucket_start)
);

-- Per (model, version, width, reference): every row ingested at or before ingested_through
-- that lies in a closed bucket is in its bucket's profile (set by the roll-up after a run).
-- Rows ingested later are the only ones a profile can miss: the roll-up and the reads look
-- at those alone (BRIN on ingested_at), not at the whole window.
CREATE TABLE drift_profile_watermarks (
    model_name       text        NOT NULL,
    model_version    text        NOT NULL,
    bucket_width     interval    NOT NULL,
    fingerprint      text        NOT NULL REFERENCES drift_references,
    ingested_through timestamptz NOT NULL,
    PRIMARY KEY (model_name, model_version, bucket_width, fingerprint)
);

-- The counts (no foreign key to drift_profile_buckets: only the functions below write
-- both, in one transaction, and a per-row key check doubled the roll-up's cost).
-- feature + bin + cell as the scan groups them: numeric bin = PSI bin index
-- (width_bucket on the edges, as text), cell = percentile cell (width_bucket on the grid);
-- categorical bin = the value as text, cell NULL; bin NULL = missing (JSON null or a value
-- of the wrong type). tail_sum: the exact sum of the values of cell 0 and of the last cell.
CREATE TABLE drift_profiles (
    model_name    text        NOT NULL,
    model_version text        NOT NULL,
    bucket_width  interval    NOT NULL,
    fingerprint   text        NOT NULL,
    bucket_start  timestamptz NOT NULL,
    feature       text        NOT NULL,
    bin           text        NULL,
    cell          integer     NULL,
    n             bigint      NOT NULL,
    tail_sum      numeric     NULL
);
-- the key, and the merge's access path (index-only: n and tail_sum included)
CREATE UNIQUE INDEX drift_profiles_key ON drift_profiles
    (model_name, model_version, bucket_width, fingerprint, bucket_start, feature, bin, cell)
    INCLUDE (n, tail_sum) NULLS NOT DISTINCT;

-- The same counting for the roll-up and for the scan of a window's partial buckets (one
-- definition, so they cannot disagree). p_spec: {"features": [{"name", "kind", "edges",
-- "grid"}]} (numeric: float arrays; categorical: kind only). p_width NULL: one group for
-- the whole range (bucket_start = p_from); else date_bin(p_width, ts, 2000-01-01Z).
-- Runs as the caller (the analyst reads, the roll-up's definer writes). The spec becomes a
-- VALUES list of literals, as in drift_histograms.sql, so the scan runs in parallel workers
-- (RETURN QUERY may); sorting is off for the same reason as there.
CREATE FUNCTION inferwatch_drift_counts(
    p_spec jsonb, p_model_name text, p_model_version text,
    p_width interval, p_from timestamptz, p_to timestamptz)
RETURNS TABLE (bucket_start timestamptz, feature text, bin text, cell integer, n bigint,
               tail_sum numeric)
LANGUAGE plpgsql STABLE
SET enable_sort = off SET jit = off SET work_mem = '64MB'
AS $fn$
DECLARE
    vals text;
BEGIN
    SELECT string_agg(format('(%L, %L, %L::float8[], %L::float8[])',
                             f->>'name', f->>'kind',
                             translate((f->'edges')::text, '[]', '{}'),
                             translate((f->'grid')::text, '[]', '{}')), ', ')
    INTO vals
    FROM jsonb_array_elements(p_spec->'features') f;
    IF vals IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format($q$
        SELECT %s AS bucket_start, s.name,
               CASE WHEN s.kind = 'numeric' THEN width_bucket(c.x, s.edges)::text
                    ELSE c.raw END,
               CASE WHEN s.kind = 'numeric' THEN width_bucket(c.x, s.grid) END,
               count(*),
               sum(c.d) FILTER (WHERE s.kind = 'numeric' AND c.x IS NOT NULL
                   AND (c.x < s.grid[1] OR c.x >= s.grid[cardinality(s.grid)]))
        FROM predictions p
        CROSS JOIN LATERAL jsonb_each(p.features) AS f
        JOIN (VALUES %s) AS s (name, kind, edges, grid) ON s.name = f.key
        CROSS JOIN LATERAL (
            SELECT f.value #>> ARRAY[]::text[] AS raw,
                   CASE WHEN jsonb_typeof(f.value) = 'number'
                        THEN (f.value #>> ARRAY[]::text[])::float8 END AS x,
                   CASE WHEN jsonb_typeof(f.value) = 'number'
                        THEN f.value::numeric END AS d
        ) c
        WHERE p.model_name = $1 AND p.model_version = $2 AND p.ts >= $3 AND p.ts < $4
        GROUP BY 1, 2, 3, 4
    $q$,
        CASE WHEN p_width IS NULL THEN '$3::timestamptz'
             ELSE format('date_bin(%L::interval, p.ts, %L::timestamptz)',
                         p_width, '2000-01-01 00:00:00+00') END,
        vals)
    USING p_model_name, p_model_version, p_from, p_to;
END
$fn$;

-- Registers a reference (idempotent) and returns its fingerprint.
CREATE FUNCTION inferwatch_drift_reference(p_spec jsonb)
RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public
AS $fn$
    INSERT INTO drift_references (fingerprint, spec)
    VALUES (encode(sha256(convert_to(p_spec::text, 'UTF8')), 'hex'), p_spec)
    ON CONFLICT (fingerprint) DO NOTHING;
    SELECT encode(sha256(convert_to(p_spec::text, 'UTF8')), 'hex');
$fn$;

-- Deletes the profiles (and bucket rows) of [p_from, p_to): the roll-ups' first step.
CREATE FUNCTION inferwatch_drift_profiles_clear(
    p_model_name text, p_model_version text, p_width interval, p_fingerprint text,
    p_from timestamptz, p_to timestamptz)
RETURNS void
LANGUAGE sql
AS $fn$
    DELETE FROM drift_profiles d
    WHERE d.model_name = p_model_name AND d.model_version = p_model_version
      AND d.bucket_width = p_width AND d.fingerprint = p_fingerprint
      AND d.bucket_start >= p_from AND d.bucket_start < p_to;
    DELETE FROM drift_profile_buckets b
    WHERE b.model_name = p_model_name AND b.model_version = p_model_version
      AND b.bucket_width = p_width AND b.fingerprint = p_fingerprint
      AND b.bucket_start >= p_from AND b.bucket_start < p_to;
$fn$;

-- (Re)builds the profiles of every bucket in [p_from, p_to) of one model version against a
-- registered reference, in the caller's transaction: replaces what was there (idempotent),
-- empty buckets included. Buckets must be aligned, closed, and at most a day wide, dividing
-- a day (so that they align with the daily partitions). Returns the rows counted.
CREATE FUNCTION inferwatch_rollup_drift_profiles(
    p_model_name text, p_model_version text, p_width interval, p_fingerprint text,
    p_from timestamptz, p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $fn$
DECLARE
    origin constant timestamptz := '2000-01-01 00:00:00+00';
    w      bigint := extract(epoch FROM p_width)::bigint;
    ref    jsonb;
    total  bigint;
BEGIN
    IF p_width IS NULL OR w < 60 OR w > 86400 OR 86400 % w <> 0
       OR extract(epoch FROM p_width) <> w THEN
        RAISE EXCEPTION 'bucket width % must be whole seconds >= 1 min dividing a day', p_width;
    END IF;
    IF p_to <= p_from OR date_bin(p_width, p_from, origin) <> p_from
       OR date_bin(p_width, p_to, origin) <> p_to THEN
        RAISE EXCEPTION 'range [%, %) is not a run of whole buckets of %', p_from, p_to, p_width;
    END IF;
    IF p_to > now() THEN
        RAISE EXCEPTION 'bucket ending % is not closed yet', p_to;
    END IF;
    SELECT r.spec INTO ref FROM drift_references r WHERE r.fingerprint = p_fingerprint;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown drift reference %', p_fingerprint;
    END IF;
    PERFORM inferwatch_drift_profiles_clear(p_model_name, p_model_version, p_width,
                                            p_fingerprint, p_from, p_to);
    INSERT INTO drift_profile_buckets
    SELECT p_model_name, p_model_version, p_width, p_fingerprint, g.b,
           coalesce(c.rows, 0), c.max_ingested_at, now()
    FROM generate_series(p_from, p_to - p_width, p_width) AS g (b)
    LEFT JOIN (
        SELECT date_bin(p_width, p.ts, origin) AS b, count(*) AS rows,
               max(p.ingested_at) AS max_ingested_at
        FROM predictions p
        WHERE p.model_name = p_model_name AND p.model_version = p_model_version
          AND p.ts >= p_from AND p.ts < p_to
        GROUP BY 1
    ) c USING (b);
    INSERT INTO drift_profiles
    SELECT p_model_name, p_model_version, p_width, p_fingerprint,
           c.bucket_start, c.feature, c.bin, c.cell, c.n, c.tail_sum
    FROM inferwatch_drift_counts(ref, p_model_name, p_model_version, p_width, p_from, p_to) c;
    SELECT coalesce(sum(b.rows), 0) INTO total FROM drift_profile_buckets b
    WHERE b.model_name = p_model_name AND b.model_version = p_model_version
      AND b.bucket_width = p_width AND b.fingerprint = p_fingerprint
      AND b.bucket_start >= p_from AND b.bucket_start < p_to;
    RETURN total;
END
$fn$;

-- (Re)builds the profiles of the coarse buckets (e.g. days) in [p_from, p_to) by summing
-- the fine ones (e.g. hours), which must all be there: a window's whole days then cost one
-- profile each instead of 24. A coarse bucket's rolled_at is the oldest of its fine ones',
-- so that the outdated-bucket check (rows ingested after it) stays conservative.
CREATE FUNCTION inferwatch_merge_drift_profiles(
    p_model_name text, p_model_version text, p_fine interval, p_coarse interval,
    p_fingerprint text, p_from timestamptz, p_to timestamptz)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
AS $fn$
DECLARE
    origin constant timestamptz := '2000-01-01 00:00:00+00';
    fine   bigint := extract(epoch FROM p_fine)::bigint;
    coarse bigint := extract(epoch FROM p_coarse)::bigint;
    have   bigint;
    total  bigint;
BEGIN
    IF fine < 60 OR coarse <= fine OR coarse % fine <> 0 OR coarse > 86400
       OR extract(epoch FROM p_coarse) <> coarse THEN
        RAISE EXCEPTION 'coarse width % must be a multiple of % up to a day', p_coarse, p_fine;
    END IF;
    IF p_to <= p_from OR date_bin(p_coarse, p_from, origin) <> p_from
       OR date_bin(p_coarse, p_to, origin) <> p_to THEN
        RAISE EXCEPTION 'range [%, %) is not a run of whole buckets of %', p_from, p_to, p_coarse;
    END IF;
    SELECT count(*) INTO have FROM drift_profile_buckets b
    WHERE b.model_name = p_model_name AND b.model_version = p_model_version
      AND b.bucket_width = p_fine AND b.fingerprint = p_fingerprint
      AND b.bucket_start >= p_from AND b.bucket_start < p_to;
    IF have <> extract(epoch FROM p_to - p_from)::bigint / fine THEN
        RAISE EXCEPTION 'buckets of % missing in [%, %)', p_fine, p_from, p_to;
    END IF;
    PERFORM inferwatch_drift_profiles_clear(p_model_name, p_model_version, p_coarse,
                                            p_fingerprint, p_from, p_to);
    INSERT INTO drift_profile_buckets
    SELECT p_model_name, p_model_version, p_coarse, p_fingerprint,
           date_bin(p_coarse, b.bucket_start, origin), sum(b.rows), max(b.max_ingested_at),
           min(b.rolled_at)
    FROM drift_profile_buckets b
    WHERE b.model_name = p_model_name AND b.model_version = p_model_version
      AND b.bucket_width = p_fine AND b.fingerprint = p_fingerprint
      AND b.bucket_start >= p_from AND b.bucket_start < p_to
    GROUP BY 5;
    INSERT INTO drift_profiles
    SELECT p_model_name, p_model_version, p_coarse, p_fingerprint,
           date_bin(p_coarse, d.bucket_start, origin), d.feature, d.bin, d.cell, sum(d.n),
           sum(d.tail_sum)
    FROM drift_profiles d
    WHERE d.model_name = p_model_name AND d.model_version = p_model_version
      AND d.bucket_width = p_fine AND d.fingerprint = p_fingerprint
      AND d.bucket_start >= p_from AND d.bucket_start < p_to
    GROUP BY 5, 6, 7, 8;
    SELECT coalesce(sum(b.rows), 0) INTO total FROM drift_profile_buckets b
    WHERE b.model_name = p_model_name AND b.model_version = p_model_version
      AND b.bucket_width = p_coarse AND b.fingerprint = p_fingerprint
      AND b.bucket_start >= p_from AND b.bucket_start < p_to;
    RETURN total;
END
$fn$;

-- Advances the watermark (never moves it back); at most to now().
CREATE FUNCTION inferwatch_drift_profile_watermark(
    p_model_name text, p_model_version text, p_width interval, p_fingerprint text,
    p_through timestamptz)
RETURNS timestamptz
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public
AS $fn$
    INSERT INTO drift_profile_watermarks AS w
    VALUES (p_model_name, p_model_version, p_width, p_fingerprint, least(p_through, now()))
    ON CONFLICT (model_name, model_version, bucket_width, fingerprint) DO UPDATE
        SET ingested_through = greatest(w.ingested_through, excluded.ingested_through)
    RETURNING ingested_through;
$fn$;

-- The writer: nothing here (its INSERT privilege on predictions covers ingested_at's
-- default). The analyst: SELECT on the tables (0001's default privileges), EXECUTE on the
-- functions; the tables stay unwritable except through the roll-up.
REVOKE ALL ON FUNCTION inferwatch_drift_counts(jsonb, text, text, interval, timestamptz,
                                               timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION inferwatch_drift_reference(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION inferwatch_drift_profiles_clear(text, text, interval, text,
                                                       timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION inferwatch_merge_drift_profiles(text, text, interval, interval, text,
                                                       timestamptz, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION inferwatch_drift_profile_watermark(text, text, interval, text,
                                                          timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION inferwatch_rollup_drift_profiles(text, text, interval, text,
                                                        timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION inferwatch_drift_counts(jsonb, text, text, interval, timestamptz,
                                                  timestamptz) TO inferwatch_analyst;
GRANT EXECUTE ON FUNCTION inferwatch_drift_reference(jsonb) TO inferwatch_analyst;
GRANT EXECUTE ON FUNCTION inferwatch_merge_drift_profiles(text, text, interval, interval, text,
                                                          timestamptz, timestamptz)
    TO inferwatch_analyst;
GRANT EXECUTE ON FUNCTION inferwatch_drift_profile_watermark(text, text, interval, text,
                                                             timestamptz) TO inferwatch_analyst;
GRANT EXECUTE ON FUNCTION inferwatch_rollup_drift_profiles(text, text, interval, text,
                                                           timestamptz, timestamptz)
    TO inferwatch_analyst;
