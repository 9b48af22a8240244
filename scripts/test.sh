#!/usr/bin/env bash
# Builds everything and runs the whole test suite: unit tests, the server's
# gRPC tests, the store conformance suite (memory, and PostgreSQL), and the
# end-to-end tests (real server process, real SQLite through the real VFS, the
# stock sqlite3 shell and the static one, which this script builds). Release
# profile throughout, so one compilation serves the binaries and the tests.
#
# PostgreSQL: unless DATABASE_URL is already set, one throwaway cluster is started
# for the whole run (pagewire-test-postgres: initdb in a temporary directory,
# 127.0.0.1 on a free port) and DATABASE_URL points at it; each test creates its own
# database there. It is stopped and deleted when the run ends. If it cannot start,
# the PostgreSQL tests try on their own, and skip (fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --for-tests
cargo build --release --workspace
cargo build --release -p pagewire-server-core --examples
# The static shell (sqlite3-pagewire); its SQLite download is cached in target/static.
scripts/build-static-sqlite.sh

pg_pid=""
pg_out=""
stop_postgres() {
    if [ -n "$pg_pid" ]; then
        kill "$pg_pid" 2>/dev/null || true
        wait "$pg_pid" 2>/dev/null || true
    fi
    [ -z "$pg_out" ] || rm -f "$pg_out"
}

start_postgres() {
    [ -z "${DATABASE_URL:-}" ] || return 0
    pg_out=$(mktemp)
    target/release/pagewire-test-postgres >"$pg_out" &
    pg_pid=$!
    trap stop_postgres EXIT
    local url=""
    for _ in $(seq 1 600); do
        url=$(head -n 1 "$pg_out")
        [ -z "$url" ] || break
        kill -0 "$pg_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -n "$url" ]; then
        export DATABASE_URL="$url"
        echo "test: PostgreSQL for this run at $url" >&2
    else
        echo "test: could not start a shared PostgreSQL; its tests start their own or skip" >&2
    fi
}

start_postgres
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --workspace --no-fail-fast "$@"
else
    cargo test --release --workspace --no-fail-fast "$@"
fi
