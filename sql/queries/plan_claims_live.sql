-- The live claims (after plan_claims_release): the tasks and UTC days runs were requested for.
SELECT canonical_symbol, timeframe, first_day, last_day
FROM data_agg_plan_claims
