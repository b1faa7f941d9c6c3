-- 0103: the analysts' view of replays (documented in docs/analysts.md, "Replay and shadow").
-- Each replayed or shadow-scored row beside the served prediction and its effective
-- outcome (prediction_outcomes: latest received label wins).

CREATE VIEW replay_comparison AS
SELECT r.replay_id,
       r.mode,
       r.prediction_id,
       r.ts,
       p.model_name,
       p.model_version        AS served_version,
       p.prediction           AS served_prediction,
       p.probability          AS served_probability,
       r.model_name           AS candidate_name,
       r.model_version        AS candidate_version,
       r.prediction           AS candidate_prediction,
       r.probability          AS candidate_probability,
       r.prediction = p.prediction AS agree,
       r.probability - p.probability AS probability_delta,
       p.label,
       r.scored_at
FROM replays r
JOIN prediction_outcomes p ON p.prediction_id = r.prediction_id AND p.ts = r.ts;

-- The replay role reads its own report through this view.
GRANT SELECT ON prediction_outcomes, replay_comparison TO inferwatch_replay;
