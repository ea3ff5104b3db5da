#!/usr/bin/env bash
# Runs Myelin's whole test suite: formatting, vet, and every Go test on both
# SQLite and PostgreSQL (with the race detector).
#
# PostgreSQL: set MYELIN_TEST_POSTGRES_URL to a server where the user may
# create databases, or leave it unset and a throwaway one is started with
# initdb/pg_ctl (scripts/pg-throwaway.sh) and removed afterwards.
#
# Extra arguments go to `go test`, e.g. scripts/test.sh -run TestChat ./setup/
#
# The build tag goolm selects mautrix's pure Go Olm, so that the end-to-end
# encryption tests drive the server with a real crypto client and no C
# library.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "not gofmt-formatted:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet -tags goolm ./...

pgdir=""
# Returns 0 when there is nothing to clean up, so that the script's status
# stays that of the tests.
cleanup() {
  if [ -n "$pgdir" ]; then scripts/pg-throwaway.sh stop "$pgdir/pg"; rm -rf "$pgdir"; fi
}
trap cleanup EXIT
if [ -z "${MYELIN_TEST_POSTGRES_URL:-}" ] && [ "${MYELIN_TEST_SQLITE_ONLY:-}" != 1 ]; then
  pgdir=$(mktemp -d)
  MYELIN_TEST_POSTGRES_URL=$(scripts/pg-throwaway.sh start "$pgdir/pg")
  export MYELIN_TEST_POSTGRES_URL
  echo "== throwaway PostgreSQL at $MYELIN_TEST_POSTGRES_URL"
fi

echo "== go test (SQLite and PostgreSQL)"
if [ $# -eq 0 ]; then set -- ./...; fi
go test -tags goolm -race -count=1 -timeout 30m "$@"
echo "== all tests passed"
