#!/usr/bin/env bash
# A throwaway PostgreSQL server for the run store's tests.
#
#   .ci/postgres.sh start DIR   initialise a cluster in DIR (a fresh folder; created if missing), start it on
#                               127.0.0.1 (port $IMGCLASS_PG_PORT, default 54329, or the next free one) with trust
#                               auth, wait until it accepts connections, print its SQLAlchemy URL on stdout
#   .ci/postgres.sh stop DIR    stop that server and remove DIR
#
# Installs Debian's postgresql with apt-get when no initdb is found. As root the server runs as user postgres.
set -euo pipefail

log() { echo "postgres.sh: $*" >&2; }

find_bin() {
  if command -v initdb >/dev/null 2>&1; then dirname "$(readlink -f "$(command -v initdb)")"; return; fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; fi
}

as_owner() {  # run a server command as the cluster's owner (postgres when we are root)
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local dir="$1" bin port
  bin=$(find_bin)
  if [ -z "$bin" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    log "installing postgresql (apt-get)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
    bin=$(find_bin)
    [ -n "$bin" ] || { log "no initdb after installing postgresql"; exit 1; }
  fi
  port="${IMGCLASS_PG_PORT:-54329}"
  for _ in $(seq 1 50); do
    port_in_use "$port" || break
    port=$((port + 1))
  done
  port_in_use "$port" && { log "no free port from ${IMGCLASS_PG_PORT:-54329}"; exit 1; }

  mkdir -p "$dir"
  [ -z "$(ls -A "$dir")" ] || { log "$dir is not empty"; exit 1; }
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
  chmod 700 "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  for _ in $(seq 1 60); do
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; then
      log "server on 127.0.0.1:$port (data in $dir)"
      echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
      return 0
    fi
    sleep 1
  done
  log "server on port $port did not accept connections"; cat "$dir/server.log" >&2; exit 1
}

stop() {
  local dir="$1" bin
  bin=$(find_bin)
  if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || log "could not stop the server in $dir"
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) [ -n "${2:-}" ] || { log "usage: $0 start DIR"; exit 2; }; start "$2" ;;
  stop) [ -n "${2:-}" ] || { log "usage: $0 stop DIR"; exit 2; }; stop "$2" ;;
  *) log "usage: $0 start DIR | stop DIR"; exit 2 ;;
esac
