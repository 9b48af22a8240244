#!/usr/bin/env bash
# Builds `sqlite3-pagewire`: SQLite's own shell with the pagewire VFS compiled in
# and registered as the default VFS when SQLite initializes (nothing to .load).
#
# SQLite source, first found of:
#   SQLITE_SRC=<dir with sqlite3.c and shell.c, or an sqlite-autoconf-*.tar.gz>
#   the npm registry's `sqlite3` package (ships deps/sqlite-autoconf-*.tar.gz),
#     fetched with `npm pack` (works where only package registries are reachable)
# Output: target/static/sqlite3-pagewire (override with OUT=...).
#
# What is static: SQLite, the shell and the VFS (with its Rust dependencies) are
# linked in; glibc, libm and libdl stay dynamic (a fully static glibc binary
# warns about NSS and dlopen, which .load needs), so the binary runs on any
# glibc-based Linux of the same or a newer glibc.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${OUT:-$root/target/static/sqlite3-pagewire}
work=$root/target/static/work
mkdir -p "$work" "$(dirname "$out")"

# 1. SQLite's amalgamation and shell.
src=${SQLITE_SRC:-}
if [ -z "$src" ]; then
    tarball=$(ls "$work"/sqlite-autoconf-*.tar.gz 2>/dev/null | head -n 1 || true)
    if [ -z "$tarball" ]; then
        echo "static: fetching SQLite from the npm registry (npm pack sqlite3@6.0.1)" >&2
        (cd "$work" && npm pack --silent sqlite3@6.0.1 >/dev/null && tar xzf sqlite3-6.0.1.tgz \
            && cp package/deps/sqlite-autoconf-*.tar.gz . && rm -rf package sqlite3-6.0.1.tgz)
        tarball=$(ls "$work"/sqlite-autoconf-*.tar.gz | head -n 1)
    fi
    src=$tarball
fi
if [ -f "$src" ]; then
    rm -rf "$work/src" && mkdir -p "$work/src"
    tar xzf "$src" -C "$work/src" --strip-components=1
    src=$work/src
fi
[ -f "$src/sqlite3.c" ] && [ -f "$src/shell.c" ] || { echo "static: no sqlite3.c/shell.c in $src" >&2; exit 1; }

# 2. The VFS as a static library: the libpagewire_vfs.a the workspace build makes next to
#    the .so (same code, same features, so nothing is compiled twice; the whole workspace,
#    because `-p` alone would unify features differently and rebuild the extension).
cargo build --release --workspace
lib=$root/target/release/libpagewire_vfs.a

# 3. SQLITE_EXTRA_INIT runs at the end of sqlite3_initialize(), after the shell's
#    sqlite3_config() calls: register pagewire there, through the extension's own entry
#    point, handed the routines table SQLite gives `.load`ed extensions (sqlite3Apis is
#    static in the amalgamation, hence the #include). Registration contacts no server,
#    so the shell starts even when the server is down.
cat > "$work/pagewire_sqlite3.c" <<'C'
#include "sqlite3.c"
#include <stdio.h>
int sqlite3_pagewirevfs_init(sqlite3 *db, char **err, const sqlite3_api_routines *api);
int pagewire_extra_init(const char *unused) {
    char *err = 0;
    int rc = sqlite3_pagewirevfs_init(0, &err, &sqlite3Apis);
    (void)unused;
    if (rc != SQLITE_OK && rc != SQLITE_OK_LOAD_PERMANENTLY) {
        fprintf(stderr, "pagewire: the VFS is not registered (%s); databases stay local\n",
                err ? err : "no reason given");
        sqlite3_free(err);
    }
    return 0;
}
C

if [ -z "${SQLITE_SRC:-}" ] && [ "$out" -nt "$lib" ] && [ "$out" -nt "$0" ]; then
    echo "static: $out is up to date" >&2
    exit 0
fi
echo "static: compiling SQLite and its shell (a minute or two)" >&2
${CC:-gcc} -O2 -o "$out" \
    -DSQLITE_EXTRA_INIT=pagewire_extra_init \
    -DSQLITE_ENABLE_FTS5 -DSQLITE_ENABLE_RTREE -DSQLITE_ENABLE_MATH_FUNCTIONS \
    -DSQLITE_ENABLE_DBSTAT_VTAB -DSQLITE_THREADSAFE=1 \
    -I"$src" "$src/shell.c" "$work/pagewire_sqlite3.c" "$lib" \
    -lpthread -ldl -lm
echo "static: built $out" >&2
