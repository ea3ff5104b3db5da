#!/usr/bin/env bash
# Runs Myelin and Dendrite side by side on loopback addresses, federating
# over TLS from a throwaway CA, and drives tests/interop's scenario against
# both. See tests/interop/README.md.
#
#   DENDRITE_BIN=DIR tests/interop/run.sh
#
# DIR holds a Dendrite binary named dendrite; this script does not build
# Dendrite. Exit status: 0 when every step passed, 1 when one failed, 2 when
# the servers could not be built or started.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${INTEROP_WORK:-/tmp/myelin-interop}
# DENDRITE_BIN is a directory holding the dendrite binary, as for
# scripts/perf-compare.sh.
dendrite_bin=${DENDRITE_BIN:-$work/bin}/dendrite
myelin_ip=${INTEROP_MYELIN_IP:-127.0.0.41}
dendrite_ip=${INTEROP_DENDRITE_IP:-127.0.0.42}
fed_port=${INTEROP_FED_PORT:-8448}
client_port=${INTEROP_CLIENT_PORT:-8008}
myelin_name=$myelin_ip:$fed_port
dendrite_name=$dendrite_ip:$fed_port
myelin_url=http://$myelin_ip:$client_port
dendrite_url=http://$dendrite_ip:$client_port

say() { echo "interop: $*" >&2; }
die() { say "$*"; exit 2; }

mkdir -p "$work/bin"
[[ -x $dendrite_bin ]] || die "no Dendrite binary at $dendrite_bin: set DENDRITE_BIN (see README.md)"
say "building Myelin and the scenario"
(cd "$repo" && go build -o "$work/bin/myelin" ./cmd/myelin && go build -tags goolm -o "$work/bin/interop" ./tests/interop) ||
	die "Myelin did not build"

run=$work/run
rm -rf "$run"
mkdir -p "$run/myelin"
"$work/bin/interop" setup -dir "$run" -myelin-ip "$myelin_ip" -dendrite-ip "$dendrite_ip" \
	-dendrite-name "$dendrite_name" -dendrite-log-level "${INTEROP_DENDRITE_LOG_LEVEL:-info}" >&2 ||
	die "setup failed"

pids=()
cleanup() {
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
}
trap cleanup EXIT
# A signal ends the script through exit, so the EXIT trap stops the servers.
trap 'exit 130' INT TERM

# Both run in their own directory so that neither reads a config.yaml or
# data left in the current one.
(
	cd "$run/myelin"
	export MYELIN_SERVER_NAME=$myelin_name \
		MYELIN_DATA_DIR=$run/myelin \
		MYELIN_CLIENT_API_LISTEN=$myelin_ip:$client_port \
		MYELIN_FEDERATION_API_LISTEN=$myelin_ip:$fed_port \
		MYELIN_FEDERATION_API_TLS_CERT=$run/myelin.crt \
		MYELIN_FEDERATION_API_TLS_KEY=$run/myelin.key \
		MYELIN_FEDERATION_API_TRUSTED_CA_FILES=$run/ca.pem \
		MYELIN_FEDERATION_API_ALLOW_PRIVATE_ADDRESSES=true \
		MYELIN_REGISTRATION_OPEN=true \
		MYELIN_REGISTRATION_BCRYPT_COST=4 \
		MYELIN_RATE_LIMITS_ENABLED=false \
		MYELIN_LOGGING_LEVEL=${INTEROP_MYELIN_LOG_LEVEL:-debug}
	exec "$work/bin/myelin" >"$run/myelin.log" 2>&1
) &
pids+=($!)
myelin_pid=$!
# Dendrite trusts the test CA through Go's SSL_CERT_FILE: its federation
# client keeps verifying certificates, against that CA only.
(
	cd "$run/dendrite"
	export SSL_CERT_FILE=$run/ca.pem
	exec "$dendrite_bin" -config "$run/dendrite/dendrite.yaml" \
		-http-bind-address "$dendrite_ip:$client_port" \
		-https-bind-address "$dendrite_ip:$fed_port" \
		-tls-cert "$run/dendrite.crt" -tls-key "$run/dendrite.key" \
		-really-enable-open-registration >"$run/dendrite.log" 2>&1
) &
pids+=($!)
dendrite_pid=$!

# up NAME URL PID waits for a server we started to answer.
up() {
	"$work/bin/interop" wait -url "$2" -timeout 90s || die "$1 did not start; see $run/$1.log"
	# Something else answering on the address would pass the wait: the
	# server we started must still be running.
	kill -0 "$3" 2>/dev/null || die "$1 exited (address in use?); see $run/$1.log"
}
up myelin "$myelin_url" "$myelin_pid"
up dendrite "$dendrite_url" "$dendrite_pid"
say "myelin $myelin_name ($myelin_url), dendrite $dendrite_name ($dendrite_url); logs in $run"

status=0
"$work/bin/interop" run -myelin "$myelin_url" -dendrite "$dendrite_url" \
	-myelin-name "$myelin_name" -dendrite-name "$dendrite_name" \
	-room-version "${INTEROP_ROOM_VERSION:-}" -wait "${INTEROP_WAIT:-30s}" || status=$?
say "logs: $run/myelin.log $run/dendrite.log"
if [[ ${INTEROP_KEEP:-0} == 1 ]]; then
	say "INTEROP_KEEP=1: servers left running until this script is interrupted (pid $$)"
	wait "${pids[@]}" || true
fi
exit $status
