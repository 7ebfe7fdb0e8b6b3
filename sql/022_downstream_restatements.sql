-- Bars written behind a downstream task's cursor (SPEC contract 10: every source change
-- seen, downstream included).
--
-- A live run reads a timeframe built from derived bars (1h from 5m) incrementally, from its
-- cursor. When the same run (or an earlier one) writes a source bar behind that cursor (a
-- live 5m read that re-reads its whole day consumes a correction or a late minute, restating
-- 5m bars of hours the 1h cursor has passed), a read from the cursor would never see it. The
-- writer records here, in the statement that writes the bars, the earliest such window's
-- start on every task reading its bars; the planner and the engine treat the task as behind
-- from there (its next read starts at its range's start, not its cursor), and the read that
-- covers it clears it, under the task's row lock, so a mark made meanwhile waits and stays.
ALTER TABLE data_agg_state ADD COLUMN IF NOT EXISTS source_restated_from timestamptz;

COMMENT ON COLUMN data_agg_state.source_restated_from IS
    'Earliest source bar written behind this task''s cursor since it last read it (timeframes '
    'read from derived bars); NULL: none. Its next read re-reads from there (migration 022)';
