-- Undo of a legacy clean-up: bring back the bars run %(run_id)s withdrew (their versions in
-- derived_bar_revisions with reason 'legacy_cleanup'), each only while it is still that
-- withdrawal (deleted_at = the version's valid_to) and no active bar now occupies its slot
-- (the partial unique index allows one). Returns one row per bar: restored or refused.
WITH candidates AS (
    SELECT d.id, d.canonical_symbol, d.timeframe, d.ts_utc,
           EXISTS (SELECT 1 FROM derived_data_bars a
                   WHERE a.canonical_symbol = d.canonical_symbol
                     AND a.timeframe = d.timeframe
                     AND a.ts_utc = d.ts_utc
                     AND a.deleted_at IS NULL) AS occupied
    FROM derived_bar_revisions r
    JOIN derived_data_bars d ON d.id = r.bar_id AND d.deleted_at = r.valid_to
    WHERE r.reason = %(reason)s
      AND r.run_id = %(run_id)s
    FOR UPDATE OF d
),
restored AS (
    UPDATE derived_data_bars d
    SET deleted_at = NULL, updated_at = now()
    FROM candidates c
    WHERE d.id = c.id AND NOT c.occupied
    RETURNING d.id
)
SELECT c.canonical_symbol, c.timeframe, c.ts_utc, NOT c.occupied AS restored
FROM candidates c
ORDER BY c.canonical_symbol, c.timeframe, c.ts_utc
