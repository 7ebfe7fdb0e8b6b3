#!/bin/bash
# deploy/postgres/Dockerfile's entrypoint: what the official image's does, as far as
# deploy/compose.yaml needs it. On an empty data directory: initdb (superuser POSTGRES_USER,
# password POSTGRES_PASSWORD, never on a command line), password logins over TCP from anywhere,
# then the scripts of /docker-entrypoint-initdb.d/ against a server that listens on the Unix
# socket only, so that no TCP client (a health check, `migrate`) sees the server before they
# are done. Then `postgres` in the foreground as uid 999.
set -euo pipefail
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export POSTGRES_USER="${POSTGRES_USER:-postgres}"

if [ "$(id -u)" = 0 ]; then
  # a new named volume is root's: hand it (and the socket folder) to postgres, then drop root
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is needed to initialise an empty data directory}"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") >/dev/null
  printf '%s\n' "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  printf '%s\n' "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
  for script in /docker-entrypoint-initdb.d/*; do
    case "$script" in
      *.sh) echo "running $script"; bash "$script" ;;
      *.sql) echo "running $script"; psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
               --dbname postgres --no-psqlrc --quiet -f "$script" ;;
      *) ;;
    esac
  done
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
  echo "PostgreSQL initialised in $PGDATA"
fi
exec "$@"
