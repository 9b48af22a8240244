//! How many round trips each kind of access costs, counted by the VFS itself
//! (`PRAGMA pagewire_stats`). Deterministic: these are the performance
//! contract, not timings.
//!
//! Connections of one process to the same database share a cache and the write
//! lease; a different token makes a separate client (the server in development
//! mode ignores tokens), as another process would be.

mod common;

use common::*;
use pagewire_tests::Server;
use rusqlite::Connection;

/// Round trips that serve reads and writes (lease renewals run in the
/// background on their own schedule and are not part of any query).
fn trips(conn: &Connection) -> [u64; 4] {
    ["open", "begin_read", "read_pages", "commit"].map(|k| stat(conn, k))
}

fn diff(after: [u64; 4], before: [u64; 4]) -> [u64; 4] {
    [0, 1, 2, 3].map(|i| after[i] - before[i])
}

fn client(server: &Server, name: &str, who: &str, extra: &str) -> Connection {
    register();
    Connection::open_with_flags(
        uri(&server.url, name, &format!("&token={who}{extra}")),
        rw(),
    )
    .expect("open")
}

fn fill(db: &Connection, rows: i64, size: i64) {
    db.execute_batch("create table t(id integer primary key, data blob)")
        .expect("schema");
    db.execute(
        &format!(
            "with recursive s(i) as (select 1 union all select i + 1 from s where i < {rows}) \
                  insert into t(data) select randomblob({size}) from s"
        ),
        [],
    )
    .expect("fill");
}

#[test]
fn writer_warm_point_selects_cost_no_round_trip() {
    let server = Server::start().expect("server");
    let db = client(&server, "warm.db", "writer", "");
    fill(&db, 2000, 100);
    let point = |id: i64| {
        db.query_row("select length(data) from t where id = ?1", [id], |r| {
            r.get::<_, i64>(0)
        })
    };
    for id in 1..=2000 {
        point(id).expect("warm up");
    }
    let before = trips(&db);
    for id in (1..=2000).step_by(7) {
        assert_eq!(point(id).expect("select"), 100);
    }
    assert_eq!(
        diff(trips(&db), before),
        [0, 0, 0, 0],
        "open, begin_read, read_pages, commit"
    );
}

#[test]
fn a_commit_is_one_commit_call_and_nothing_else() {
    let server = Server::start().expect("server");
    let db = client(&server, "commit.db", "writer", "");
    fill(&db, 100, 100);
    for _ in 0..20 {
        let before = trips(&db);
        db.execute("insert into t(data) values (randomblob(100))", [])
            .expect("insert");
        assert_eq!(diff(trips(&db), before), [0, 0, 0, 1]);
    }
    let before = trips(&db);
    db.execute_batch("begin; update t set data = randomblob(150) where id <= 50; insert into t(data) values (x'00'); commit")
        .expect("multi-statement transaction");
    assert_eq!(diff(trips(&db), before), [0, 0, 0, 1]);
}

/// The replica's read lease and Watch state (`PRAGMA pagewire_read_lease`).
fn read_lease(c: &Connection) -> String {
    c.query_row("pragma pagewire_read_lease", [], |r| r.get(0))
        .expect("pragma")
}

/// Waits (up to 5 s) until `c`'s process holds a read lease and has heard of
/// `version` with its round over.
fn await_lease_at(c: &Connection, version: u64) {
    let want = format!("lease=held heard={version} round=0");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while read_lease(c) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "no read lease at {version}: {}",
            read_lease(c)
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn version(c: &Connection) -> u64 {
    c.query_row("pragma pagewire_version", [], |r| r.get::<_, String>(0))
        .expect("version")
        .parse()
        .expect("a number")
}

#[test]
fn replica_read_transactions_with_a_read_lease_make_no_round_trip() {
    let server = Server::start().expect("server");
    let writer = client(&server, "rep.db", "writer", "");
    fill(&writer, 500, 200);
    let v1 = version(&writer);
    let replica = client(&server, "rep.db", "replica", "&mode=ro");
    let sum = |c: &Connection| {
        c.query_row("select sum(length(data)) from t", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("sum")
    };
    // The third read transaction starts the Watch stream: two read-only transactions
    // since the last write (a writer's open reads the schema, then it writes).
    for _ in 0..3 {
        assert_eq!(sum(&replica), 500 * 200);
    }
    await_lease_at(&replica, v1);
    for _ in 0..10 {
        let before = trips(&replica);
        replica.execute_batch("begin").expect("begin");
        assert_eq!(sum(&replica), 500 * 200);
        replica
            .query_row("select data from t where id = 77", [], |_| Ok(()))
            .expect("point");
        replica.execute_batch("commit").expect("end");
        assert_eq!(
            diff(trips(&replica), before),
            [0, 0, 0, 0],
            "read lease held, every page cached"
        );
    }
    // After a commit, the next read transaction fetches only what changed: the
    // RoundEnd listed the changed pages, so no BeginRead either.
    writer
        .execute("update t set data = randomblob(200) where id = 250", [])
        .expect("commit");
    await_lease_at(&replica, v1 + 1);
    let (before, pages_before) = (trips(&replica), stat(&replica, "pages_read"));
    assert_eq!(sum(&replica), 500 * 200);
    let after = diff(trips(&replica), before);
    let fetched = stat(&replica, "pages_read") - pages_before;
    assert_eq!(after[1], 0, "no BeginRead: {after:?}");
    // The changed pages the replica had cached are fetched again in the background
    // (one call, maybe within this window); anything still missing on demand.
    assert!(after[2] <= 3, "changed pages in few calls: {after:?}");
    // The commit changed page 1 and the row's leaf (maybe an interior page); read-ahead
    // may bring a few neighbours along, never the table.
    let table_pages: u64 = replica
        .query_row("pragma page_count", [], |r| r.get::<_, i64>(0))
        .expect("pages") as u64;
    assert!(
        fetched <= 3 + 16,
        "{fetched} of {table_pages} pages fetched again"
    );
}

#[test]
fn replica_read_transaction_without_a_read_lease_is_one_round_trip() {
    let server = Server::start_with(&["--read-lease-ttl", "0s"]).expect("server");
    let writer = client(&server, "rep.db", "writer", "");
    fill(&writer, 500, 200);
    let replica = client(&server, "rep.db", "replica", "&mode=ro");
    let sum = |c: &Connection| {
        c.query_row("select sum(length(data)) from t", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("sum")
    };
    assert_eq!(sum(&replica), 500 * 200);
    for _ in 0..10 {
        let before = trips(&replica);
        replica.execute_batch("begin").expect("begin");
        assert_eq!(sum(&replica), 500 * 200);
        replica.execute_batch("commit").expect("end");
        assert_eq!(
            diff(trips(&replica), before),
            [0, 1, 0, 0],
            "one BeginRead, every page cached"
        );
    }
    assert!(
        read_lease(&replica).starts_with("lease=none"),
        "{}",
        read_lease(&replica)
    );
}

#[test]
fn cold_scan_reads_ahead() {
    let server = Server::start().expect("server");
    let writer = client(&server, "scan.db", "writer", "");
    fill(&writer, 8000, 900);
    let pages: u64 = writer
        .query_row("pragma page_count", [], |r| r.get::<_, i64>(0))
        .expect("pages") as u64;
    assert!(pages > 2000, "{pages}");
    // A new client with nothing cached and no preload.
    let cold = client(&server, "scan.db", "cold", "&preload=0");
    let before = trips(&cold);
    let total: i64 = cold
        .query_row("select sum(length(data)) from t", [], |r| r.get(0))
        .expect("scan");
    assert_eq!(total, 8000 * 900);
    let calls = diff(trips(&cold), before)[2];
    assert!(
        calls <= pages / 8,
        "{calls} ReadPages calls for a scan of {pages} pages"
    );
    eprintln!("cold scan: {pages} pages in {calls} ReadPages calls");
}

#[test]
fn small_database_is_preloaded_at_open() {
    let server = Server::start().expect("server");
    let writer = client(&server, "small.db", "writer", "");
    fill(&writer, 200, 100);
    let fresh = client(&server, "small.db", "fresh", "");
    let opened = trips(&fresh);
    assert_eq!(
        opened[2], 1,
        "the whole (small) database in one ReadPages at open"
    );
    fresh
        .query_row("select sum(length(data)) from t", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("scan");
    fresh
        .query_row("select data from t where id = 150", [], |_| Ok(()))
        .expect("point");
    let [open, _begin_reads, read_pages, commit] = diff(trips(&fresh), opened);
    // (Each read transaction is one BeginRead; loading the schema is one more.)
    assert_eq!(
        [open, read_pages, commit],
        [0, 0, 0],
        "queries after a preload read no pages"
    );
}
