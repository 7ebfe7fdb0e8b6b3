-- Make data_agg_state hold exactly the wanted tasks: create missing ones (cursor at
-- agg_start_utc), rewrite the structural config the timeframe ladder and the calendars own
-- (source, interval, mandatory, window_calendar; derivation_version raised to at least the
-- timeframe's configured version), bring retired tasks back, and retire tasks no longer
-- wanted. Operator settings (enabled, priority, delay, agg_start_utc, cursor) of existing
-- tasks are left as they are.
WITH wanted AS (
    SELECT *
    FROM unnest(%(symbols)s::text[], %(timeframes)s::text[], %(sources)s::text[],
                %(minutes)s::integer[], %(mandatory)s::boolean[], %(calendars)s::text[],
                %(versions)s::integer[])
         AS w(canonical_symbol, timeframe, source_timeframe, run_interval_minutes, is_mandatory,
              window_calendar, derivation_version)
),
upserted AS (
    INSERT INTO data_agg_state AS s (
        canonical_symbol, timeframe, source_timeframe, run_interval_minutes, is_mandatory,
        aggregation_delay_seconds, agg_start_utc, last_agg_bar_ts_utc, window_calendar,
        derivation_version)
    SELECT w.canonical_symbol, w.timeframe, w.source_timeframe, w.run_interval_minutes,
           w.is_mandatory, %(delay_seconds)s, %(agg_start)s, %(agg_start)s, w.window_calendar,
           w.derivation_version
    FROM wanted w
    ON CONFLICT (canonical_symbol, timeframe) DO UPDATE
    SET source_timeframe     = excluded.source_timeframe,
        run_interval_minutes = excluded.run_interval_minutes,
        is_mandatory         = excluded.is_mandatory,
        window_calendar      = excluded.window_calendar,
        derivation_version   = greatest(s.derivation_version, excluded.derivation_version),
        status               = CASE WHEN s.status = 'retired' THEN 'idle' ELSE s.status END
    WHERE (s.source_timeframe, s.run_interval_minutes, s.is_mandatory, s.window_calendar,
           s.derivation_version >= excluded.derivation_version, s.status = 'retired')
          IS DISTINCT FROM (excluded.source_timeframe, excluded.run_interval_minutes,
                            excluded.is_mandatory, excluded.window_calendar, true, false)
    RETURNING (xmax = 0) AS created
),
retired AS (
    UPDATE data_agg_state s
    SET status = 'retired'
    WHERE s.status <> 'retired'
      AND NOT EXISTS (SELECT 1 FROM wanted w
                      WHERE w.canonical_symbol = s.canonical_symbol
                        AND w.timeframe = s.timeframe)
    RETURNING 1
)
SELECT (SELECT count(*) FROM upserted WHERE created)     AS created,
       (SELECT count(*) FROM upserted WHERE NOT created) AS updated,
       (SELECT count(*) FROM retired)                    AS retired
