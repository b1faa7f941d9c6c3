-- 0005: the replays table: a candidate model's predictions on logged or live traffic.
-- Written by `inferwatch replay` (role inferwatch_replay) and by the service's shadow
-- scorer (role inferwatch_writer, through the audit writer). One row per (replay run,
-- served prediction); the served prediction stays in `predictions`, joined by id.

CREATE TABLE replays (
    replay_id     text             NOT NULL,  -- names the run: replay-..., shadow-<version>
    prediction_id uuid             NOT NULL,  -- the served prediction this row re-scores
    ts            timestamptz      NOT NULL,  -- that prediction's ts (joins prune partitions)
    mode          text             NOT NULL CHECK (mode IN ('replay', 'shadow')),
    model_name    text             NOT NULL,  -- the candidate's
    model_version text             NOT NULL,
    prediction    smallint         NOT NULL,
    probability   double precision NOT NULL,  -- as predictions.probability, by the candidate
    scored_at     timestamptz      NOT NULL,
    CONSTRAINT replays_pkey PRIMARY KEY (replay_id, prediction_id)
);
CREATE INDEX replays_ts_brin ON replays USING brin (ts);

-- Least privilege: the service's writer appends shadow rows and nothing else; the
-- replay role reads the audit log and appends replay rows (SELECT on replays: the
-- report it prints and the check that a replay id is new). The analyst reads it
-- through 0001's default privileges.
REVOKE ALL ON replays FROM PUBLIC;
GRANT INSERT ON replays TO inferwatch_writer;
GRANT SELECT ON predictions, outcomes TO inferwatch_replay;
GRANT SELECT, INSERT ON replays TO inferwatch_replay;
