#!/usr/bin/env bash
# Builds everything and runs the whole test suite: unit tests, the server's
# gRPC tests, and the end-to-end tests (real server process, real SQLite through
# the real VFS, the stock sqlite3 shell). Release profile throughout, so one
# compilation serves the binaries and the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --workspace --no-fail-fast "$@"
else
    cargo test --release --workspace --no-fail-fast "$@"
fi
