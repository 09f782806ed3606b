#!/usr/bin/env bash
# A throwaway PostgreSQL server for the multi-worker tuning test (Debian, as root).
#
#   scripts/ci-postgres.sh          install (apt-get), start on 127.0.0.1 only, print the URL
#   scripts/ci-postgres.sh stop     stop it
#
# Only the URL goes to stdout (everything else to stderr), so CI can do
#   export KDLAB_PG_URL="$(scripts/ci-postgres.sh)"
# Settings: KDLAB_PG_PORT (55432), KDLAB_PG_DATA (/tmp/kdlab-pg), KDLAB_PG_PASSWORD (kdlab).
set -euo pipefail

PORT="${KDLAB_PG_PORT:-55432}"
DATA="${KDLAB_PG_DATA:-/tmp/kdlab-pg}"
PASSWORD="${KDLAB_PG_PASSWORD:-kdlab}"
ROLE=kdlab
DB=kdlab

log() { echo "ci-postgres: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "run as root (it installs a package and starts the server as user postgres)"
  exit 1
fi

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
as_postgres() { runuser -u postgres -- "$@"; }

if [ "${1:-start}" = "stop" ]; then
  BIN="$(pg_bin)"
  [ -n "$BIN" ] && [ -f "$DATA/PG_VERSION" ] && as_postgres "$BIN/pg_ctl" -D "$DATA" -m fast stop >&2 || true
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Try without refreshing the package lists first (fast when they are fresh or it is installed).
if ! apt-get install -y -q --no-install-recommends postgresql >&2; then
  log "apt-get install failed; refreshing package lists and retrying"
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends postgresql >&2
fi
BIN="$(pg_bin)"
if [ -z "$BIN" ]; then
  log "no PostgreSQL binaries under /usr/lib/postgresql after installing"
  exit 1
fi
log "using $BIN"

if as_postgres "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  log "server in $DATA is already running; reusing it"
else
  rm -rf "$DATA"
  mkdir -p "$DATA"
  chown postgres:postgres "$DATA"
  chmod 700 "$DATA"
  # Peer auth over the socket for setup; passwords (SCRAM) over TCP.
  as_postgres "$BIN/initdb" -D "$DATA" --auth-local=peer --auth-host=scram-sha-256 \
    -E UTF8 --no-instructions >&2
  # Loopback only; the socket lives in the data folder (no /run/postgresql needed).
  as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA" start >&2
fi

psql_admin() { as_postgres "$BIN/psql" -h "$DATA" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != "1" ]; then
  psql_admin -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
  psql_admin -c "CREATE DATABASE $DB OWNER $ROLE" >&2
fi
log "ready on 127.0.0.1:$PORT (database $DB, user $ROLE)"
echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
