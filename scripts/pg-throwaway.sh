#!/usr/bin/env bash
# Start a throwaway PostgreSQL for tests and print its URL; `stop DIR` stops it.
#
#   url=$(scripts/pg-throwaway.sh start /tmp/pgdir)   # prints postgres://...
#   scripts/pg-throwaway.sh restart /tmp/pgdir fast   # or immediate (a crash)
#   scripts/pg-throwaway.sh stop /tmp/pgdir
#
# initdb/pg_ctl refuse to run as root, so as root they run as the postgres
# user. The server listens on loopback and a socket inside DIR only. It
# trades durability for speed (fsync and synchronous_commit off);
# PG_EXTRA_OPTS adds server options after those, e.g.
# "-c synchronous_commit=on" for a test that crashes the server and counts
# on what it committed.
set -euo pipefail
cmd=${1:?usage: pg-throwaway.sh start|restart|stop DIR [fast|immediate]}
dir=${2:?usage: pg-throwaway.sh start|restart|stop DIR [fast|immediate]}
bin=${PG_BIN:-}
if [ -z "$bin" ]; then
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bin=$d; done
fi
[ -n "$bin" ] && [ -x "$bin/initdb" ] || { echo "pg-throwaway: initdb not found (set PG_BIN)" >&2; exit 1; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
start)
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    # the postgres user must be able to reach DIR (mktemp -d makes 0700 parents)
    p=$(dirname "$dir"); while [ "$p" != / ]; do chmod o+x "$p"; p=$(dirname "$p"); done
  fi
  port=${PG_PORT:-$(( 20000 + RANDOM % 20000 ))}
  as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=500 -c shared_buffers=256MB ${PG_EXTRA_OPTS:-}" \
    start >/dev/null
  echo "postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
  ;;
restart)
  # pg_ctl restart keeps the options the server was started with.
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -m "${3:-fast}" restart >/dev/null
  ;;
stop)
  [ -d "$dir/data" ] && as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
  ;;
*) echo "usage: pg-throwaway.sh start|restart|stop DIR [fast|immediate]" >&2; exit 2 ;;
esac
