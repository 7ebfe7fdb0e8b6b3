-- Claim the work of the runs a planner requests: one row per (run, symbol, timeframe).
INSERT INTO data_agg_plan_claims (plan_id, canonical_symbol, timeframe, first_day, last_day,
                                  reason, claimed_at)
SELECT c.plan_id, c.symbol, c.timeframe, c.first_day, c.last_day, c.reason, now()
FROM unnest(%(plan_ids)s::text[], %(symbols)s::text[], %(timeframes)s::text[],
            %(first_days)s::date[], %(last_days)s::date[], %(reasons)s::text[])
     AS c(plan_id, symbol, timeframe, first_day, last_day, reason)
