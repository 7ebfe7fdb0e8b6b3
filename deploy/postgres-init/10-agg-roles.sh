#!/bin/bash
# First start of deploy/compose.yaml's PostgreSQL (empty data volume): the databases and roles.
#   markets  market data, owned by agg_migrator (runs `agg-pipeline migrate`; CREATEROLE is
#            not needed: agg_pipeline_runtime is created here, migration 008 finds it)
#   agg_pipeline_user  the pipeline's login, a member of agg_pipeline_runtime and nothing else
#   dagster  Dagster's run/event/schedule storage, owned by the dagster login
# Passwords arrive as environment variables and travel as psql variables (:'name' quotes
# them), never pasted into SQL.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v migrator_pw="$AGG_MIGRATOR_PASSWORD" -v runtime_pw="$AGG_RUNTIME_PASSWORD" \
  -v dagster_pw="$DAGSTER_PG_PASSWORD" <<'SQL'
CREATE ROLE agg_migrator LOGIN PASSWORD :'migrator_pw';
CREATE ROLE agg_pipeline_runtime NOLOGIN;
CREATE ROLE agg_pipeline_user LOGIN PASSWORD :'runtime_pw' IN ROLE agg_pipeline_runtime;
CREATE ROLE dagster LOGIN PASSWORD :'dagster_pw';
CREATE DATABASE markets OWNER agg_migrator;
CREATE DATABASE dagster OWNER dagster;
REVOKE ALL ON DATABASE markets FROM PUBLIC;
GRANT CONNECT ON DATABASE markets TO agg_pipeline_user;
REVOKE ALL ON DATABASE dagster FROM PUBLIC;
SQL
