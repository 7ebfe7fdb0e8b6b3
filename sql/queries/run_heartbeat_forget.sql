-- Runs no longer in flight: their heartbeats are deleted (migration 020).
DELETE FROM data_agg_run_heartbeats WHERE run_id = ANY (%(run_ids)s::text[])
