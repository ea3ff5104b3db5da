#!/usr/bin/env bash
# Runs myelin-load's scenarios against one running homeserver and writes a
# JSON report and a text table per scenario into OUTDIR.
#
#   scripts/perf.sh URL PID LABEL OUTDIR [ITEM...]
#
#   URL     the server's Client-Server API base URL (loopback only)
#   PID     the server's process ID (its CPU and RSS are sampled), or 0
#   LABEL   names the server in the reports, e.g. myelin-sqlite
#   ITEM    scenario:size, default: the whole list below
#
#   send            16 senders over 4 rooms for 60 s
#   fanout:M        M /sync clients in rooms of 100, 5 events/s for 60 s
#   storm:M         M /sync clients in rooms of 100 restarted in step, 1 event/s into
#                   one room for PERF_STORM_DURATION (default 300s: ten timeout windows)
#   idle:C          C idle /sync long-polls (in rooms of 100) held for 60 s
#   join:U          U users joining one room
#   initialsync:N   initial /sync in an N-member room; /messages over 1,000 events
#
# Environment: DB_PID (PostgreSQL postmaster: its tree's CPU is sampled),
# MYELIN_LOAD (a built myelin-load; default: built into OUTDIR),
# PERF_DURATION (send and fanout, default 60s), PERF_STORM_DURATION (storm, default
# 300s), PERF_HOLD (idle, default 60s),
# PERF_IDLE_ROOM_SIZE (idle clients' room size, default 100; 0: no rooms),
# PERF_DEADLINE (per run, default 60m),
# PERF_FLAGS (extra flags for every run, e.g. "-reg shared-secret").
#
# Every item runs against the same server, one after another; to give each
# its own fresh server use scripts/perf-compare.sh.
set -euo pipefail
usage() { sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;$d' >&2; exit 2; }
[ $# -ge 4 ] || usage
url=$1 pid=$2 label=$3 out=$4
shift 4
items=("$@")
[ ${#items[@]} -gt 0 ] || items=(send fanout:1000 fanout:2000 idle:5000 join:1000 initialsync:10000)
cd "$(dirname "$0")/.."
mkdir -p "$out"

load=${MYELIN_LOAD:-}
if [ -z "$load" ]; then
  load=$out/myelin-load
  go build -o "$load" ./cmd/myelin-load
fi
dur=${PERF_DURATION:-60s}
hold=${PERF_HOLD:-60s}
idle_rooms=${PERF_IDLE_ROOM_SIZE:-100}
common=(-url "$url" -label "$label" -deadline "${PERF_DEADLINE:-60m}")
[ "$pid" != 0 ] && common+=(-pid "$pid")
[ -n "${DB_PID:-}" ] && common+=(-db-pid "$DB_PID")
# shellcheck disable=SC2206 # PERF_FLAGS is a list of flags
[ -n "${PERF_FLAGS:-}" ] && common+=(${PERF_FLAGS})

status=0
for item in "${items[@]}"; do
  scen=${item%%:*}
  size=${item#*:}
  [ "$size" = "$item" ] && size=""
  case $scen in
  send)        args=(-senders 16 -rooms 4 -duration "$dur") ;;
  fanout)      args=(-users "${size:-1000}" -room-size 100 -rate 5 -duration "$dur" -grace 10s) ;;
  storm)       args=(-users "${size:-2000}" -room-size 100 -rate 1 -duration "${PERF_STORM_DURATION:-300s}") ;;
  idle)        args=(-conns "${size:-5000}" -room-size "$idle_rooms" -hold "$hold") ;;
  join)        args=(-users "${size:-1000}" -concurrency 8 -slice 500) ;;
  initialsync) args=(-members "${size:-10000}" -reps 3 -messages 1000 -page 50) ;;
  *) echo "perf.sh: unknown scenario $scen" >&2; exit 2 ;;
  esac
  name=$scen${size:+-$size}
  echo "== $label: $name" >&2
  echo "+ myelin-load $scen ${common[*]} ${args[*]}" >"$out/$name.txt"
  if ! "$load" "$scen" "${common[@]}" "${args[@]}" -json "$out/$name.json" >>"$out/$name.txt" 2>"$out/$name.log"; then
    echo "perf.sh: $label $name failed (see $out/$name.log)" >&2
    status=1
  fi
  cat "$out/$name.txt"
done
exit $status
