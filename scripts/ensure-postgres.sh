#!/usr/bin/env bash
# Make PostgreSQL available on 127.0.0.1:5432 with a login role that may create databases.
# Idempotent: installs the server if missing, creates and starts the cluster if stopped, and
# creates the role and database if absent. Needs root (apt) when PostgreSQL is not installed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
DB_NAME=${DB_NAME:-afhost}
DB_USER=${DB_USER:-afhost}
DB_PASSWORD=${DB_PASSWORD:-afhost}

if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "PostgreSQL is already running."
else
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  PGVER=$(ls /usr/lib/postgresql | sort -V | tail -1)
  pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$PGVER main" || pg_createcluster "$PGVER" main >/dev/null
  pg_ctlcluster --skip-systemctl-redirect "$PGVER" main status >/dev/null 2>&1 \
    || pg_ctlcluster --skip-systemctl-redirect "$PGVER" main start
fi
for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
pg_isready -h 127.0.0.1 -p 5432

psql_admin() { runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtA "$@"; }
[ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='$DB_USER'")" = "1" ] \
  || psql_admin -c "CREATE ROLE \"$DB_USER\" LOGIN CREATEDB PASSWORD '$DB_PASSWORD'"
[ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" = "1" ] \
  || runuser -u postgres -- createdb -O "$DB_USER" "$DB_NAME"
echo "PostgreSQL ready: postgres://$DB_USER:***@127.0.0.1:5432/$DB_NAME"
