#!/usr/bin/env bash
# Starts N Myelin servers that federate with each other on loopback, for the
# load tool's federation scenario and for trying federation by hand.
#
#   scripts/fed-servers.sh start N DIR   start servers 1..N, state under DIR
#   scripts/fed-servers.sh stop DIR      stop them (DIR is kept)
#
# Server i listens on 127.0.0.(FED_IP_BASE+i), FED_IP_BASE 10 by default: the Client-Server API on port 8008
# (plain HTTP) and the federation API on port 8448 (TLS), and is named
# 127.0.0.(FED_IP_BASE+i):8448, so no discovery is needed. A throwaway CA made with
# openssl under DIR signs every server's certificate and every server trusts
# it. Registration is open, with the cheapest bcrypt cost, and rate limits
# are off (load runs create thousands of users). SQLite and the embedded NATS, each under DIR/sI.
#
# DIR/servers.tsv lists each server: server name, client URL, PID.
#
# FED_SERVER=dendrite starts Dendrite servers instead, for comparison, from
# DENDRITE_BIN (a directory holding a dendrite binary you built; this repo
# does not build Dendrite), configured by tests/interop's setup (SQLite, open
# registration, no rate limits) and trusting every server's test CA through
# SSL_CERT_FILE.
#
# Environment: MYELIN_BIN (a built myelin; default: built into DIR/bin),
# FED_PPROF=1 (each server serves pprof on port 6060 of its address),
# FED_DB_URL_PREFIX (a PostgreSQL URL prefix; server i uses database
# myelin_fed_I, which must exist), and any MYELIN_* variable, passed on to
# every server.
set -euo pipefail
usage() { sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//;$d' >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
repo=$(cd "$(dirname "$0")/.." && pwd)

stop() {
  local dir=$1
  [ -f "$dir/servers.tsv" ] || return 0
  while read -r _ _ pid; do
    kill "$pid" 2>/dev/null || true
  done < "$dir/servers.tsv"
  while read -r _ _ pid; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done < "$dir/servers.tsv"
  rm -f "$dir/servers.tsv"
}

case $cmd in
stop)
  stop "$2"
  exit 0
  ;;
start)
  [ $# -eq 3 ] || usage
  n=$2
  dir=$(mkdir -p "$3" && cd "$3" && pwd)
  ;;
*) usage ;;
esac
[[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 40 ] || { echo "fed-servers: N must be 1..40" >&2; exit 2; }
# Another run on the same machine takes another FED_IP_BASE.
base=${FED_IP_BASE:-10}
[[ $base =~ ^[0-9]+$ ]] && [ $((base + n)) -le 254 ] || { echo "fed-servers: FED_IP_BASE + N must be at most 254" >&2; exit 2; }
stop "$dir"

# start_dendrite I IP: starts Dendrite server I, configured by tests/interop's
# setup; every server trusts every CA (DIR/cas.pem, written first).
start_dendrite() {
  local sd=$dir/s$1 ip=$2
  (
    cd "$sd/dendrite"
    SSL_CERT_FILE=$dir/cas.pem exec "$dendrite" -config "$sd/dendrite/dendrite.yaml" \
      -http-bind-address "$ip:8008" -https-bind-address "$ip:8448" \
      -tls-cert "$sd/dendrite.crt" -tls-key "$sd/dendrite.key" \
      -really-enable-open-registration >"$sd/dendrite.log" 2>&1
  ) &
  echo $! > "$sd/pid"
}

# start_myelin I IP: starts Myelin server I with a certificate from DIR/ca.
start_myelin() {
  local sd=$dir/s$1 ip=$2 db="" pprof=""
  if [ ! -f "$sd/tls.pem" ]; then
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$ip" \
      -keyout "$sd/tls.key" -out "$sd/tls.csr" 2>/dev/null
    openssl x509 -req -in "$sd/tls.csr" -CA "$dir/ca/ca.pem" -CAkey "$dir/ca/ca.key" -CAcreateserial \
      -days 30 -extfile <(printf 'subjectAltName=IP:%s\n' "$ip") -out "$sd/tls.pem" 2>/dev/null
  fi
  [ -n "${FED_DB_URL_PREFIX:-}" ] && db="${FED_DB_URL_PREFIX}myelin_fed_$1?sslmode=disable"
  [ "${FED_PPROF:-}" = 1 ] && pprof=$ip:6060
  (
    cd "$sd"
    MYELIN_SERVER_NAME="$ip:8448" MYELIN_DATA_DIR="$sd/data" \
      MYELIN_CLIENT_API_LISTEN="$ip:8008" \
      MYELIN_FEDERATION_API_LISTEN="$ip:8448" \
      MYELIN_FEDERATION_API_TLS_CERT="$sd/tls.pem" MYELIN_FEDERATION_API_TLS_KEY="$sd/tls.key" \
      MYELIN_FEDERATION_API_TRUSTED_CA_FILES="$dir/ca/ca.pem" \
      MYELIN_FEDERATION_API_ALLOW_PRIVATE_ADDRESSES=true \
      MYELIN_REGISTRATION_OPEN=true MYELIN_REGISTRATION_BCRYPT_COST=4 MYELIN_RATE_LIMITS_ENABLED=false \
      MYELIN_DATABASE_URL="$db" MYELIN_DEBUG_PPROF_LISTEN="$pprof" \
      exec "$myelin" --config /dev/null >"$sd/myelin.log" 2>&1
  ) &
  echo $! > "$sd/pid"
}

server=${FED_SERVER:-myelin}
case $server in
dendrite)
  dendrite=${DENDRITE_BIN:?set DENDRITE_BIN to the directory holding the dendrite binary}/dendrite
  [ -x "$dendrite" ] || { echo "fed-servers: $dendrite missing" >&2; exit 1; }
  (cd "$repo" && go build -o "$dir/bin/interop" ./tests/interop)
  : > "$dir/cas.pem"
  for i in $(seq 1 "$n"); do
    ip=127.0.0.$((base + i))
    rm -rf "$dir/s$i" && mkdir -p "$dir/s$i"
    "$dir/bin/interop" setup -dir "$dir/s$i" -myelin-ip 127.0.0.1 -dendrite-ip "$ip" \
      -dendrite-name "$ip:8448" -dendrite-log-level warn >/dev/null
    cat "$dir/s$i/ca.pem" >> "$dir/cas.pem"
  done
  ;;
myelin)
  myelin=${MYELIN_BIN:-}
  if [ -z "$myelin" ]; then
    myelin=$dir/bin/myelin
    (cd "$repo" && go build -o "$myelin" ./cmd/myelin)
  fi
  if [ ! -f "$dir/ca/ca.pem" ]; then
    mkdir -p "$dir/ca"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
      -subj "/CN=myelin fed-servers test CA" -keyout "$dir/ca/ca.key" -out "$dir/ca/ca.pem" 2>/dev/null
  fi
  ;;
*) echo "fed-servers: FED_SERVER must be myelin or dendrite" >&2; exit 2 ;;
esac

: > "$dir/servers.tsv.new"
for i in $(seq 1 "$n"); do
  ip=127.0.0.$((base + i))
  mkdir -p "$dir/s$i"
  "start_$server" "$i" "$ip"
  printf '%s\thttp://%s:8008\t%s\n' "$ip:8448" "$ip" "$(cat "$dir/s$i/pid")" >> "$dir/servers.tsv.new"
done
mv "$dir/servers.tsv.new" "$dir/servers.tsv"

# Wait until each answers.
while read -r name url pid; do
  for t in $(seq 1 900); do
    if curl -sf "$url/_matrix/client/versions" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "fed-servers: $name exited; see its log under $dir" >&2; exit 1
    fi
    [ "$t" -lt 900 ] || { echo "fed-servers: $name did not answer in 90 s" >&2; exit 1; }
    sleep 0.1
  done
done < "$dir/servers.tsv"
cat "$dir/servers.tsv"
