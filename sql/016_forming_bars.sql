-- The forming bar (issue 13 item 1), opt-in per symbol: while a window is still open its
-- bar is stored with is_partial = true, refreshed from the source rows so far, and becomes
-- the final bar at confirmation (or is withdrawn when the window does not qualify). Off by
-- default, so readers that do not filter is_partial see nothing new.
ALTER TABLE core_asset_registry_all
    ADD COLUMN IF NOT EXISTS agg_forming_bars boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN core_asset_registry_all.agg_forming_bars IS
    'When true, the window still open has a bar with is_partial = true (source_candles so '
    'far, quality_score NULL: no ladder verdict yet), at most one per timeframe, refreshed '
    'on every run that reaches the present. Readers of final bars filter is_partial = false.';

-- The source frontier the task's forming bar was last refreshed from: the planner refreshes
-- an opted-in symbol whenever its frontier has moved past it.
ALTER TABLE data_agg_state ADD COLUMN IF NOT EXISTS forming_through timestamptz;
