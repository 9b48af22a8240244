#!/usr/bin/env bash
# Installs what the build needs and a fresh Debian/Ubuntu machine may lack:
# libclang (sqlite-plugin runs bindgen at build time), the sqlite3 shell (used by
# the Quick Start and its test) and, for the test suite's PostgreSQL store tests,
# PostgreSQL's server binaries (the tests start their own throwaway cluster;
# nothing is configured system-wide), npm (the static shell fetches SQLite
# from the npm registry), and a C compiler with SQLite's header (the C fork test).
# protoc is vendored through a crate.
set -euo pipefail

have_libclang() {
    ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 ||
        ls /usr/lib/x86_64-linux-gnu/libclang*.so >/dev/null 2>&1 ||
        [ -n "${LIBCLANG_PATH:-}" ]
}

missing=()
have_libclang || missing+=(libclang-dev)
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
if [ "${1:-}" = "--for-tests" ] && ! command -v npm >/dev/null 2>&1 && [ -z "${SQLITE_SRC:-}" ]; then
    missing+=(npm)
fi
if [ "${1:-}" = "--for-tests" ]; then
    # The C fork test builds a small program against the system's SQLite.
    command -v cc >/dev/null 2>&1 || missing+=(gcc)
    [ -e /usr/include/sqlite3.h ] || missing+=(libsqlite3-dev)
fi
if [ "${1:-}" = "--for-tests" ] && [ -z "${DATABASE_URL:-}" ]; then
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 ||
        missing+=(postgresql)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: please install ${missing[*]} with your package manager" >&2
    exit 1
fi
echo "setup: installing ${missing[*]}" >&2
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
