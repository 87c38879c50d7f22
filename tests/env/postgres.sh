#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback for the ledger's tests, idempotently: initdb once,
# start it if it is not running, and write the URL the tests use to .cache/env/postgres/url.
# Needs Debian's postgresql package (tests/env/up.sh installs it). initdb and postgres refuse to
# run as root, so as root the cluster belongs to the postgres user; its data stay under
# .cache/env/postgres unless that user cannot enter the checkout (a clone under /root), and then
# go to /var/tmp, one directory per checkout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
state="$root/.cache/env/postgres"
port=${BUILDER_TEST_POSTGRES_PORT:-55432}
log() { printf 'env: %s\n' "$*" >&2; }
cd /  # every path here is absolute; the postgres user may not be able to enter the current directory

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { log "PostgreSQL is not installed (apt-get install postgresql, or make env)"; exit 3; }

mkdir -p "$state"
dir=$state
as_owner=()
if [ "$(id -u)" = 0 ]; then
  as_owner=(runuser -u postgres --)
  chown postgres: "$state"
  if ! runuser -u postgres -- test -w "$state"; then
    dir="/var/tmp/builder-postgres-$(printf %s "$root" | sha256sum | cut -c1-12)"
    mkdir -p "$dir" && chown postgres: "$dir" && chmod 700 "$dir"
  fi
fi

init_cluster() {
  log "creating a throwaway PostgreSQL cluster in $dir/data"
  rm -rf "$dir/data"
  # A fresh random password per cluster: scram over TCP, as a fleet's server would ask.
  (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$dir/password")
  [ "$(id -u)" = 0 ] && chown postgres: "$dir/password"
  "${as_owner[@]}" "$bin/initdb" -D "$dir/data" -U builder --pwfile="$dir/password" --auth=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >"$state/initdb.log" 2>&1 || { cat "$state/initdb.log" >&2; exit 1; }
}
start_cluster() {
  # No Unix socket: the tests reach it over loopback TCP only, like another host would.
  "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='' -c max_connections=200" start >/dev/null
}
[ -f "$dir/data/PG_VERSION" ] || init_cluster
if ! "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    log "127.0.0.1:$port is taken by another server: set BUILDER_TEST_POSTGRES_PORT to a free port"; exit 1
  fi
  log "starting PostgreSQL on 127.0.0.1:$port (log: $dir/server.log)"
  if ! start_cluster; then
    # A throwaway cluster that will not start (a crash, a half-written data directory): make it anew, once.
    log "the cluster in $dir/data did not start; creating it anew"
    init_cluster
    start_cluster || { tail -20 "$dir/server.log" >&2; log "PostgreSQL did not start"; exit 1; }
  fi
fi
# The port it runs on (its 4th line), which is the one asked for unless it was started earlier with another.
running=$(sed -n 4p "$dir/data/postmaster.pid")
[ "$running" = "$port" ] || log "note: this checkout's PostgreSQL was started earlier on port $running; using that"
(umask 077 && printf 'postgresql://builder:%s@127.0.0.1:%s/postgres\n' "$(cat "$dir/password")" "$running" >"$state/url")
