-- 0002: partition maintenance, as functions so that a scheduler (cron calling
-- `inferwatch db partitions`, or pg_cron) and the migration runner share them.
-- Days are UTC days: partition predictions_pYYYYMMDD holds [day 00:00Z, day+1 00:00Z).

CREATE FUNCTION inferwatch_ensure_partitions(days_ahead integer, days_back integer DEFAULT 1)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    today  date := (now() AT TIME ZONE 'UTC')::date;
    d      date;
    lo     timestamptz;
    hi     timestamptz;
    part   text;
    made   integer := 0;
BEGIN
    FOR d IN SELECT generate_series(today - days_back, today + days_ahead, interval '1 day')::date
    LOOP
        part := 'predictions_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(quote_ident(part)) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        IF EXISTS (SELECT 1 FROM predictions_default WHERE ts >= lo AND ts < hi) THEN
            -- rows already landed in DEFAULT for this day: move them, then attach
            EXECUTE format('CREATE TABLE %I (LIKE predictions INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
            EXECUTE format(
                'WITH moved AS (DELETE FROM predictions_default WHERE ts >= $1 AND ts < $2 RETURNING *) '
                'INSERT INTO %I SELECT * FROM moved', part) USING lo, hi;
            EXECUTE format('ALTER TABLE predictions ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           part, lo, hi);
        ELSE
            EXECUTE format('CREATE TABLE %I PARTITION OF predictions FOR VALUES FROM (%L) TO (%L)',
                           part, lo, hi);
        END IF;
        made := made + 1;
    END LOOP;
    RETURN made;
END $$;

-- Drops the daily partitions older than retention_days (and expired rows of the
-- DEFAULT partition). retention_days <= 0 keeps everything.
CREATE FUNCTION inferwatch_drop_partitions(retention_days integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cutoff date := (now() AT TIME ZONE 'UTC')::date - retention_days;
    part   text;
    dropped integer := 0;
BEGIN
    IF retention_days <= 0 THEN
        RETURN 0;
    END IF;
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'predictions'::regclass
          AND c.relname ~ '^predictions_p[0-9]{8}$'
          AND to_date(substr(c.relname, 14), 'YYYYMMDD') < cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part);
        dropped := dropped + 1;
    END LOOP;
    DELETE FROM predictions_default WHERE ts < cutoff::timestamp AT TIME ZONE 'UTC';
    RETURN dropped;
END $$;

REVOKE ALL ON FUNCTION inferwatch_ensure_partitions(integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION inferwatch_drop_partitions(integer) FROM PUBLIC;
