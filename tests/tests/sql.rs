//! SQL through the real VFS against a real server process: the everyday
//! features users rely on.

mod common;

use common::*;
use pagewire_tests::Server;
use rusqlite::{OpenFlags, params};

#[test]
fn create_insert_select_update_delete_and_reopen() {
    let server = Server::start().expect("server");
    let db = open(&server, "crud.db");
    db.execute_batch("create table t(id integer primary key, name text, n int)")
        .expect("create");
    for i in 0..200 {
        db.execute(
            "insert into t(name, n) values (?1, ?2)",
            params![format!("row{i}"), i],
        )
        .expect("insert");
    }
    db.execute("update t set n = n * 2 where id % 2 = 0", [])
        .expect("update");
    db.execute("delete from t where id > 150", [])
        .expect("delete");
    let sum: i64 = db
        .query_row("select sum(n) from t", [], |r| r.get(0))
        .expect("sum");
    let want: i64 = (0..150)
        .map(|i| if (i + 1) % 2 == 0 { i * 2 } else { i })
        .sum();
    assert_eq!(sum, want);
    assert_eq!(integrity(&db), "ok");
    drop(db);

    let db = open(&server, "crud.db");
    assert_eq!(count(&db, "t"), 150);
    let name: String = db
        .query_row("select name from t where id = 42", [], |r| r.get(0))
        .expect("row");
    assert_eq!(name, "row41");
}

#[test]
fn fifty_megabyte_table() {
    let server = Server::start().expect("server");
    let db = open(&server, "big.db");
    db.execute_batch("create table blobs(id integer primary key, data blob)")
        .expect("create");
    for _ in 0..10 {
        let tx = db.unchecked_transaction().expect("begin");
        for _ in 0..1280 {
            tx.execute("insert into blobs(data) values (randomblob(4000))", [])
                .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let bytes: i64 = db
        .query_row("select sum(length(data)) from blobs", [], |r| r.get(0))
        .expect("sum");
    assert_eq!(bytes, 12_800 * 4000);
    drop(db);
    let db = open(&server, "big.db");
    let pages: i64 = db
        .query_row("pragma page_count", [], |r| r.get(0))
        .expect("page_count");
    assert!(pages * 4096 >= 50_000_000, "{pages} pages");
    assert_eq!(integrity(&db), "ok");
    assert_eq!(count(&db, "blobs"), 12_800);
}

#[test]
fn indexes_and_vacuum() {
    let server = Server::start().expect("server");
    let db = open(&server, "idx.db");
    db.execute_batch(
        "create table p(id integer primary key, email text, score int);
         create unique index p_email on p(email);
         create index p_score on p(score);",
    )
    .expect("schema");
    let tx = db.unchecked_transaction().expect("begin");
    for i in 0..5000 {
        tx.execute(
            "insert into p(email, score) values (?1, ?2)",
            params![format!("u{i}@x"), i % 97],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
    let plan: String = db
        .query_row(
            "explain query plan select id from p where email = 'u7@x'",
            [],
            |r| r.get(3),
        )
        .expect("plan");
    assert!(plan.contains("p_email"), "{plan}");
    let dup = db.execute("insert into p(email, score) values ('u7@x', 1)", []);
    assert!(dup.is_err(), "unique index enforced");
    db.execute("delete from p where id % 3 != 0", [])
        .expect("delete");
    let before: i64 = db
        .query_row("pragma page_count", [], |r| r.get(0))
        .expect("pages");
    db.execute_batch("vacuum").expect("vacuum");
    let after: i64 = db
        .query_row("pragma page_count", [], |r| r.get(0))
        .expect("pages");
    assert!(after < before, "vacuum shrank {before} -> {after}");
    assert_eq!(integrity(&db), "ok");
    drop(db);
    let db = open(&server, "idx.db");
    assert_eq!(count(&db, "p"), 5000 / 3, "ids divisible by 3 remain");
    assert_eq!(integrity(&db), "ok");
    let n: i64 = db
        .query_row("select count(*) from p where score = 3", [], |r| r.get(0))
        .expect("by index");
    assert!(n > 0);
}

#[test]
fn two_databases_in_one_process() {
    let server = Server::start().expect("server");
    let a = open(&server, "tenant/a.db");
    let b = open(&server, "tenant/b.db");
    a.execute_batch("create table t(v text); insert into t values ('from a')")
        .expect("a");
    b.execute_batch(
        "create table t(v text); insert into t values ('from b'); insert into t values ('b2')",
    )
    .expect("b");
    a.execute("insert into t values ('a2')", []).expect("a2");
    let av: Vec<String> = all_rows(&a, "select v from t order by rowid", |r| r.get(0));
    let bv: Vec<String> = all_rows(&b, "select v from t order by rowid", |r| r.get(0));
    assert_eq!(av, ["from a", "a2"]);
    assert_eq!(bv, ["from b", "b2"]);
    // A second connection to the same database in this process sees the commits.
    let a2 = open(&server, "tenant/a.db");
    assert_eq!(count(&a2, "t"), 2);
    assert_eq!(integrity(&a), "ok");
    assert_eq!(integrity(&b), "ok");
}

#[test]
fn page_sizes_512_and_65536_and_changing_them_with_vacuum() {
    let server = Server::start().expect("server");
    for size in [512i64, 65536] {
        let name = format!("ps{size}.db");
        let db = open(&server, &name);
        db.execute_batch(&format!("pragma page_size={size}; create table t(x)"))
            .expect("create");
        let tx = db.unchecked_transaction().expect("begin");
        for i in 0..2000 {
            tx.execute("insert into t values (?1)", params![format!("{i:0>300}")])
                .expect("insert");
        }
        tx.commit().expect("commit");
        drop(db);
        // Opened again: at `page_size`, every row there, the file sound.
        let reopen = |page_size: i64| {
            let db = open(&server, &name);
            assert_eq!(
                db.query_row("pragma page_size", [], |r| r.get::<_, i64>(0))
                    .expect("ps"),
                page_size
            );
            assert_eq!(count(&db, "t"), 2000);
            assert_eq!(integrity(&db), "ok");
            db
        };
        let db = reopen(size);
        // Rewrite the whole file at another page size.
        let other = if size == 512 { 65536 } else { 1024 };
        db.execute_batch(&format!("pragma page_size={other}; vacuum"))
            .expect("vacuum");
        drop(db);
        reopen(other);
    }
}

#[test]
fn journal_modes_commit_and_roll_back() {
    let server = Server::start().expect("server");
    for (mode, answer) in [
        ("delete", "delete"),
        ("truncate", "truncate"),
        ("persist", "persist"),
        ("memory", "memory"),
        // OFF would make ROLLBACK impossible: refused, answering the mode in force.
        ("off", "delete"),
    ] {
        let name = format!("jm-{mode}.db");
        let db = open(&server, &name);
        let got = pragma_text(&db, &format!("journal_mode={mode}"));
        assert_eq!(got, answer, "journal_mode={mode}");
        db.execute_batch("create table t(x); insert into t values (1)")
            .expect("create");
        db.execute_batch("begin; insert into t values (2); insert into t values (3); commit")
            .expect("commit");
        db.execute_batch("begin; insert into t values (4); rollback")
            .expect("rollback");
        assert_eq!(count(&db, "t"), 3, "{mode}");
        drop(db);
        let db = open(&server, &name);
        assert_eq!(count(&db, "t"), 3, "{mode} after reopen");
        assert_eq!(integrity(&db), "ok");
    }
}

#[test]
fn wal_and_synchronous_off_are_refused() {
    let server = Server::start().expect("server");
    let db = open(&server, "wal.db");
    assert_eq!(pragma_text(&db, "journal_mode=WAL"), "delete");
    assert_eq!(
        pragma_text(&db, "journal_mode=w"),
        "delete",
        "prefixes match as in SQLite"
    );
    assert_eq!(pragma_text(&db, "journal_mode"), "delete");
    for off in ["off", "0", "no", "FALSE"] {
        db.execute_batch(&format!("pragma synchronous={off}"))
            .expect("accepted");
        let level: i64 = db
            .query_row("pragma synchronous", [], |r| r.get(0))
            .expect("level");
        assert_eq!(level, 2, "synchronous={off} must stay FULL");
    }
    db.execute_batch("create table t(x); insert into t values (1)")
        .expect("write");
    assert_eq!(pragma_text(&db, "journal_mode"), "delete");
    drop(db);
    let db = open(&server, "wal.db");
    assert_eq!(count(&db, "t"), 1);
}

#[test]
fn cache_spill_reads_back_from_the_transaction() {
    let server = Server::start().expect("server");
    let db = open(&server, "spill.db");
    db.execute_batch("pragma cache_size=10; create table t(id integer primary key, data blob); create index t_data on t(data)")
        .expect("create");
    let tx = db.unchecked_transaction().expect("begin");
    for _ in 0..4000 {
        tx.execute("insert into t(data) values (randomblob(900))", [])
            .expect("insert");
    }
    // Reads inside the transaction see the spilled pages.
    let n: i64 = tx
        .query_row("select count(*) from t where length(data) = 900", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(n, 4000);
    tx.commit().expect("commit");
    assert_eq!(integrity(&db), "ok");

    // A spilled transaction rolled back leaves the database as it was.
    let version = pragma_text(&db, "pagewire_version");
    let tx = db.unchecked_transaction().expect("begin");
    tx.execute("update t set data = randomblob(950)", [])
        .expect("update");
    tx.execute("delete from t where id % 2 = 0", [])
        .expect("delete");
    tx.rollback().expect("rollback");
    assert_eq!(count(&db, "t"), 4000);
    assert_eq!(integrity(&db), "ok");
    drop(db);
    let db = open(&server, "spill.db");
    assert_eq!(
        pragma_text(&db, "pagewire_version"),
        version,
        "a rollback creates no version"
    );
    let n: i64 = db
        .query_row("select count(*) from t where length(data) = 900", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(n, 4000);
    assert_eq!(integrity(&db), "ok");
}

#[test]
fn open_errors_are_sqlite_errors_not_crashes() {
    let server = Server::start().expect("server");
    let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    // Nothing listens on port 1.
    let started = std::time::Instant::now();
    let err = try_open("http://127.0.0.1:1", "x.db", rw).expect_err("no server");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 10, "fails promptly");
    // A name longer than SQLite's path limit for this VFS.
    let long = "n".repeat(600);
    let err = try_open(&server.url, &long, rw).expect_err("long name");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen),
        "{err}"
    );
    // A bad URI parameter.
    let err = try_open("ftp://127.0.0.1:1", "x.db", rw).expect_err("bad url");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen),
        "{err}"
    );
    // Read-only open of a database that does not exist.
    let err =
        try_open(&server.url, "missing.db", OpenFlags::SQLITE_OPEN_READ_ONLY).expect_err("missing");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen),
        "{err}"
    );
    // The process is fine and the server still serves.
    let db = open(&server, "after.db");
    db.execute_batch("create table t(x); insert into t values (1)")
        .expect("works");
    assert_eq!(count(&db, "t"), 1);
}

#[test]
fn read_only_connection_reads_and_refuses_writes() {
    let server = Server::start().expect("server");
    let db = open(&server, "ro.db");
    db.execute_batch("create table t(x); insert into t values (1), (2)")
        .expect("create");
    let ro = try_open(&server.url, "ro.db", OpenFlags::SQLITE_OPEN_READ_ONLY).expect("ro open");
    assert_eq!(count(&ro, "t"), 2);
    let err = ro
        .execute("insert into t values (3)", [])
        .expect_err("read-only");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ReadOnly),
        "{err}"
    );
    db.execute("insert into t values (3)", []).expect("writer");
    assert_eq!(
        count(&ro, "t"),
        3,
        "a new read transaction sees the new version"
    );
}

#[test]
fn second_writer_in_the_process_waits_its_turn() {
    let server = Server::start().expect("server");
    let a = open(&server, "busy.db");
    a.execute_batch("create table t(x)").expect("create");
    let b = open(&server, "busy.db");
    b.busy_timeout(std::time::Duration::from_millis(100))
        .expect("timeout");
    a.execute_batch("begin immediate; insert into t values (1)")
        .expect("a writes");
    let err = b
        .execute("insert into t values (2)", [])
        .expect_err("b must wait");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "{err}"
    );
    a.execute_batch("commit").expect("a commits");
    b.execute("insert into t values (2)", []).expect("b's turn");
    assert_eq!(count(&a, "t"), 2);
    assert_eq!(integrity(&b), "ok");
}
