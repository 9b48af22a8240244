#!/usr/bin/env bash
# Builds everything (server, VFS library) and runs the server in the foreground,
# keeping pages durably in ./pagewire-data (the embedded store; --data-dir DIR for another).
# Extra arguments go to pagewire-server, e.g. scripts/run.sh --listen 0.0.0.0:7878
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p pagewire-server -p pagewire-vfs-ext
echo "VFS library: $(pwd)/target/release/libpagewire_vfs.so (in sqlite3: .load $(pwd)/target/release/libpagewire_vfs)" >&2
exec target/release/pagewire-server "$@"
