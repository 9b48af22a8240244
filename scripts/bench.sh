#!/usr/bin/env bash
# Builds everything and runs the benchmark: pagewire (memory store, and
# PostgreSQL when its binaries are installed) against local SQLite files, in one
# run over loopback. Arguments go to pagewire-bench (e.g. --quick, --no-load).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace
exec target/release/pagewire-bench "$@"
