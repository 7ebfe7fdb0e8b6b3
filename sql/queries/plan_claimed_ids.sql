-- The plans holding claims, whose runs the planner's caller looks up in Dagster.
SELECT DISTINCT plan_id FROM data_agg_plan_claims
