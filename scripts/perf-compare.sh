#!/usr/bin/env bash
# Measures Myelin against Dendrite, on SQLite and on PostgreSQL, and writes
# the side-by-side tables (with Myelin/Dendrite ratios) into
# docs/performance.md between its "perf:results" markers.
#
#   DENDRITE_BIN=/tmp/dendrite-bin scripts/perf-compare.sh OUTDIR [ITEM...]
#
# Every item (see scripts/perf.sh: send, fanout:1000, ...) runs on a fresh
# server with an empty database (and a fresh throwaway PostgreSQL), Myelin
# and Dendrite one after the other so that both see the same machine.
#
#   DENDRITE_BIN  directory with dendrite, generate-config and generate-keys,
#                 built by the operator (docs/performance.md says how); this
#                 script only runs them
#   MYELIN_BIN    a built myelin (default: built from this checkout)
#   MYELIN_REV    the commit MYELIN_BIN was built from, for the report
#   PERF_DBS      databases, default "sqlite postgres"
#   PERF_SERVERS  default "myelin dendrite"
#   PERF_PORT     loopback port for the server under test, default 18008
#   PERF_DOC      the document to update, default docs/performance.md;
#                 "-" leaves it alone (the tables are in OUTDIR/tables.md)
# and PERF_DURATION, PERF_HOLD, PERF_FLAGS as for scripts/perf.sh.
set -euo pipefail
usage() { sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;$d' >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
items=("$@")
[ ${#items[@]} -gt 0 ] || items=(send fanout:1000 fanout:2000 idle:5000 join:1000 initialsync:10000)
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
dbs=${PERF_DBS:-sqlite postgres}
servers=${PERF_SERVERS:-myelin dendrite}
port=${PERF_PORT:-18008}
url=http://127.0.0.1:$port
doc=${PERF_DOC:-docs/performance.md}

mkdir -p "$out/bin"
go build -o "$out/bin/myelin-load" ./cmd/myelin-load
export MYELIN_LOAD=$out/bin/myelin-load
myelin=${MYELIN_BIN:-}
if [ -z "$myelin" ] && [[ " $servers " == *" myelin "* ]]; then
  myelin=$out/bin/myelin
  go build -o "$myelin" ./cmd/myelin
fi
if [[ " $servers " == *" dendrite "* ]]; then
  dbin=${DENDRITE_BIN:?set DENDRITE_BIN to the directory holding the dendrite binaries}
  for b in dendrite generate-config generate-keys; do
    [ -x "$dbin/$b" ] || { echo "perf-compare: $dbin/$b missing" >&2; exit 1; }
  done
fi

server_pid="" pg_dir=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  [ -n "$pg_dir" ] && scripts/pg-throwaway.sh stop "$pg_dir"
  return 0
}
trap cleanup EXIT

# start_myelin DIR [DBURL]: starts Myelin in DIR, sets server_pid.
start_myelin() {
  local dir=$1 db=${2:-}
  (
    cd "$dir" # no config.yaml here: defaults plus the variables below
    export MYELIN_DATA_DIR=$dir/data MYELIN_CLIENT_API_LISTEN=127.0.0.1:$port \
      MYELIN_REGISTRATION_OPEN=true MYELIN_RATE_LIMITS_ENABLED=false MYELIN_REGISTRATION_BCRYPT_COST=4
    [ -n "$db" ] && export MYELIN_DATABASE_URL=$db
    exec "$myelin" >"$dir/server.log" 2>&1
  ) &
  server_pid=$!
}

# start_dendrite DIR [DBURL]: generates a config (open registration, rate
# limits off, bcrypt cost 4, federation off, like Myelin's run) and starts
# Dendrite in DIR, sets server_pid.
start_dendrite() {
  local dir=$1 db=${2:-}
  "$dbin/generate-keys" --private-key "$dir/matrix_key.pem" >/dev/null
  "$dbin/generate-config" -dir "$dir" ${db:+-db "$db"} >"$dir/dendrite.yaml"
  python3 - "$dir" <<'PY'
import sys, yaml
d = sys.argv[1]
p = d + "/dendrite.yaml"
c = yaml.safe_load(open(p))
c["global"]["private_key"] = d + "/matrix_key.pem"
c["global"]["disable_federation"] = True
c["client_api"]["registration_disabled"] = False
c["client_api"]["rate_limiting"]["enabled"] = False
c["user_api"]["bcrypt_cost"] = 4
c["federation_api"]["key_perspectives"] = []
c["logging"] = [{"type": "file", "level": "info", "params": {"path": d + "/log"}}]
yaml.safe_dump(c, open(p, "w"), sort_keys=False)
PY
  (cd "$dir" && exec "$dbin/dendrite" -config "$dir/dendrite.yaml" -http-bind-address "127.0.0.1:$port" \
    -really-enable-open-registration >"$dir/server.log" 2>&1) &
  server_pid=$!
}

wait_ready() {
  for _ in $(seq 120); do
    curl -sf "$url/_matrix/client/versions" >/dev/null && return 0
    kill -0 "$server_pid" 2>/dev/null || return 1
    sleep 0.5
  done
  return 1
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# Kept across invocations that add to the same OUTDIR.
[ -f "$out/started" ] || date -u +"%Y-%m-%d %H:%M UTC" >"$out/started"
echo "${items[*]} (servers: $servers; databases: $dbs)" >>"$out/items"
for db in $dbs; do
  for item in "${items[@]}"; do
    for server in $servers; do
      label=$server-$db
      name=${item/:/-}
      run=$out/run/$label-$name
      rm -rf "$run" && mkdir -p "$run" "$out/$label"
      dburl="" db_pid=""
      if [ "$db" = postgres ]; then
        pg_dir=$run/pg
        dburl=$(scripts/pg-throwaway.sh start "$pg_dir")
        db_pid=$(head -1 "$pg_dir/data/postmaster.pid")
      fi
      "start_$server" "$run" "$dburl"
      if ! wait_ready; then
        echo "perf-compare: $label did not start for $item; its log:" >&2
        tail -20 "$run/server.log" >&2
        echo "$item: server did not start" >>"$out/$label/problems.txt"
        stop_server
      else
        DB_PID=$db_pid scripts/perf.sh "$url" "$server_pid" "$label" "$out/$label" "$item" || true
        if ! kill -0 "$server_pid" 2>/dev/null; then
          rc=0; wait "$server_pid" || rc=$?
          echo "$item: server exited during the run (status $rc); last log lines in $name.server.log" >>"$out/$label/problems.txt"
          server_pid=""
        else
          stop_server
        fi
      fi
      tail -200 "$run/server.log" >"$out/$label/$name.server.log" 2>/dev/null || true
      [ -f "$run/log/dendrite.log" ] && tail -200 "$run/log/dendrite.log" >"$out/$label/$name.dendrite.log"
      # Warnings, errors and panics in the whole log, counted by message.
      cat "$run/server.log" "$run/log/dendrite.log" 2>/dev/null |
        grep -oE 'level=(warning|error|fatal|panic) msg=("[^"]*"|[^ ]*)|^panic: .*|fatal error: .*' |
        sort | uniq -c | sort -rn >"$out/$label/$name.log-summary" || true
      if [ -n "$pg_dir" ]; then scripts/pg-throwaway.sh stop "$pg_dir"; pg_dir=""; fi
      rm -rf "$run"
    done
  done
done

# All four columns, whatever this invocation ran: a later run with fewer
# servers or databases adds to the same OUTDIR.
cols=()
for db in sqlite postgres; do
  for server in myelin dendrite; do mkdir -p "$out/$server-$db"; cols+=("$out/$server-$db"); done
done
"$MYELIN_LOAD" table "${cols[@]}" >"$out/tables.md"

{
  echo "Measured $(cat "$out/started") to $(date -u +"%H:%M UTC") by \`scripts/perf-compare.sh\`, Myelin at"
  echo "\`${MYELIN_REV:-$(git rev-parse --short HEAD)}\`, in these invocations:"
  echo
  sed 's/^/- /' "$out/items"
  echo
  echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'),"
  echo "$(free -m | awk '/^Mem:/ {print $2}') MB RAM, $(uname -sr); load average when done: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Each table's notes give the load average at the start and end of every run."
  echo
  for f in "$out"/*/problems.txt; do
    [ -f "$f" ] || continue
    echo "Problems recorded for $(basename "$(dirname "$f")"):"
    sed 's/^/- /' "$f"
    echo
  done
  cat "$out/tables.md"
} >"$out/results.md"

if [ "$doc" != - ]; then
  [ -f "$doc" ] || printf '# Performance\n\n<!-- perf:results:begin -->\n<!-- perf:results:end -->\n' >"$doc"
  python3 - "$doc" "$out/results.md" <<'PY'
import sys
doc, res = sys.argv[1], open(sys.argv[2]).read()
text = open(doc).read()
b, e = "<!-- perf:results:begin -->", "<!-- perf:results:end -->"
if b not in text or e not in text:
    sys.exit(doc + ": no perf:results markers")
head, rest = text.split(b, 1)
_, tail = rest.split(e, 1)
open(doc, "w").write(head + b + "\n" + res + e + tail)
PY
  echo "perf-compare: results written into $doc" >&2
fi
echo "perf-compare: reports in $out, tables in $out/tables.md" >&2
