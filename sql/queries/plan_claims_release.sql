-- Release the claims that are over (migration 013): their run finished (or failed, or was
-- canceled), or Dagster does not know their run and the grace period since the claim has
-- passed (a tick whose runs were never created). Claims of runs queued or running stay.
DELETE FROM data_agg_plan_claims
WHERE plan_id <> ALL (%(live)s::text[])
  AND (plan_id = ANY (%(finished)s::text[]) OR claimed_at < now() - %(grace)s::interval)
