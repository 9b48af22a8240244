/* fork() from C, linked with the system SQLite, the VFS loaded as an extension: the
 * parent holds the write lease on one database and a read lease on another; the child's
 * inherited connections must fail on every path (including those that need no RPC),
 * a fresh open in the child works, and the parent goes on unharmed.
 * argv[1]: the VFS library. PAGEWIRE_URL: the server. Prints "ok" on success. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static sqlite3 *open_db(const char *uri, int read_only) {
    sqlite3 *db = NULL;
    int flags = SQLITE_OPEN_URI | (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
    if (sqlite3_open_v2(uri, &db, flags, NULL) != SQLITE_OK) {
        fprintf(stderr, "open %s: %s\n", uri, db ? sqlite3_errmsg(db) : "?");
        exit(2);
    }
    return db;
}

/* The first column of the first row as an integer; *rc is SQLITE_OK or the error. */
static long long scalar(sqlite3 *db, const char *sql, int *rc) {
    sqlite3_stmt *st = NULL;
    long long v = -1;
    *rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (*rc == SQLITE_OK) {
        *rc = sqlite3_step(st);
        if (*rc == SQLITE_ROW) {
            v = sqlite3_column_int64(st, 0);
            *rc = SQLITE_OK;
        }
    }
    sqlite3_finalize(st);
    return v;
}

static int holds_read_lease(sqlite3 *db) {
    sqlite3_stmt *st = NULL;
    int held = 0;
    if (sqlite3_prepare_v2(db, "pragma pagewire_read_lease", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const char *t = (const char *)sqlite3_column_text(st, 0);
        held = t && strstr(t, "lease=held") != NULL;
    }
    sqlite3_finalize(st);
    return held;
}

static void must(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "parent: %s\n", what);
        exit(1);
    }
}

int main(int argc, char **argv) {
    sqlite3 *loader;
    char *err = NULL;
    int rc;
    if (argc < 2) return 2;
    sqlite3_open(":memory:", &loader);
    sqlite3_enable_load_extension(loader, 1);
    if (sqlite3_load_extension(loader, argv[1], NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "load: %s\n", err ? err : "?");
        return 2;
    }
    sqlite3_close(loader);

    sqlite3 *setup = open_db("file:cfork-r.db", 0);
    must(sqlite3_exec(setup, "create table t(x); insert into t values (1), (2)", NULL, NULL, NULL) == SQLITE_OK, "setup");
    sqlite3_close(setup);

    sqlite3 *w = open_db("file:cfork-w.db", 0);
    must(sqlite3_exec(w, "create table t(x); insert into t values (1)", NULL, NULL, NULL) == SQLITE_OK, "write");
    sqlite3 *r = open_db("file:cfork-r.db?mode=ro", 1);
    time_t deadline = time(NULL) + 10;
    while (!holds_read_lease(r)) {
        must(scalar(r, "select count(*) from t", &rc) == 2 && rc == SQLITE_OK, "read");
        must(time(NULL) < deadline, "no read lease within 10 s");
        usleep(50 * 1000);
    }
    must(scalar(w, "select count(*) from t", &rc) == 1 && rc == SQLITE_OK, "read the written database");

    pid_t pid = fork();
    if (pid == 0) {
        int failures = 0;
        scalar(w, "select count(*) from t", &rc);
        if (rc == SQLITE_OK) { puts("child: read under the write lease worked"); failures++; }
        rc = sqlite3_exec(w, "insert into t values (2)", NULL, NULL, NULL);
        if (rc == SQLITE_OK) { puts("child: write under the write lease worked"); failures++; }
        scalar(r, "select count(*) from t", &rc);
        if (rc == SQLITE_OK) { puts("child: read under the read lease worked"); failures++; }
        sqlite3 *fresh = open_db("file:cfork-r.db?mode=ro", 1);
        long long n = scalar(fresh, "select count(*) from t", &rc);
        if (rc != SQLITE_OK || n != 2) { printf("child: fresh read: %lld rows, rc %d\n", n, rc); failures++; }
        sqlite3 *fresh_w = open_db("file:cfork-w.db?mode=ro", 1);
        n = scalar(fresh_w, "select count(*) from t", &rc);
        if (rc != SQLITE_OK || n != 1) { printf("child: fresh read of the written database: %lld rows, rc %d\n", n, rc); failures++; }
        fflush(stdout);
        /* No close of the inherited connections, no atexit handlers: as a forked child should. */
        _exit(failures ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    must(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed");
    must(sqlite3_exec(w, "insert into t values (3)", NULL, NULL, NULL) == SQLITE_OK, "write after the fork");
    must(scalar(w, "select count(*) from t", &rc) == 2 && rc == SQLITE_OK, "read after the fork");
    must(scalar(r, "select count(*) from t", &rc) == 2 && rc == SQLITE_OK, "replica read after the fork");
    puts("ok");
    return 0;
}
