//! One fenced writer, snapshot-consistent read replicas, read-your-writes and
//! time travel, each across real processes where that is the point.

mod common;

use std::{
    io::Write,
    process::Child,
    time::{Duration, Instant, SystemTime},
};

use common::*;
use pagewire_tests::{Server, value_of};
use rand::Rng;
use rusqlite::{OpenFlags, params};

const ACCOUNTS: i64 = 100;
const OPENING_BALANCE: i64 = 1000;

/// A child's report lines (see [`reports`]).
fn lines(child: &mut Child) -> impl Iterator<Item = String> + use<> {
    reports(child.stdout.take().expect("child stdout"))
}

/// Waits for a child to finish and returns its report line starting with
/// `prefix` (reading all its output, so it never writes into a closed pipe).
fn report(mut child: Child, prefix: &str) -> String {
    let all: Vec<String> = lines(&mut child).collect();
    let status = child.wait().expect("child");
    assert!(status.success(), "child failed ({status}): {all:?}");
    all.into_iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} report"))
}

/// A `key=value` number from a child's report line.
fn field(line: &str, key: &str) -> u64 {
    value_of(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
#[ignore = "child process of bank_invariant_holds_on_every_replica"]
fn bank_writer() {
    let (Some(url), Some(secs)) = (child_env("BANK_URL"), child_env("BANK_SECONDS")) else {
        return;
    };
    let db = open_url(&url, "bank.db");
    let deadline = Instant::now() + Duration::from_secs(secs.parse().expect("seconds"));
    let mut rng = rand::rng();
    let mut txns = 0u64;
    while Instant::now() < deadline {
        let (a, b) = (
            rng.random_range(1..=ACCOUNTS),
            rng.random_range(1..=ACCOUNTS),
        );
        let amount = rng.random_range(1..50);
        let tx = db.unchecked_transaction().expect("begin");
        tx.execute(
            "update acct set bal = bal - ?1 where id = ?2",
            params![amount, a],
        )
        .expect("debit");
        tx.execute(
            "update acct set bal = bal + ?1 where id = ?2",
            params![amount, b],
        )
        .expect("credit");
        tx.commit().expect("commit");
        txns += 1;
    }
    println!("@@writer txns={txns} version={}", version(&db));
}

#[test]
#[ignore = "child process of bank_invariant_holds_on_every_replica"]
fn bank_reader() {
    let (Some(url), Some(secs)) = (child_env("BANK_URL"), child_env("BANK_SECONDS")) else {
        return;
    };
    let db = open_replica(&url, "bank.db");
    let deadline = Instant::now() + Duration::from_secs(secs.parse().expect("seconds"));
    let (mut reads, mut violations, mut checks) = (0u64, 0u64, 0u64);
    let mut versions = std::collections::BTreeSet::new();
    while Instant::now() < deadline {
        // One read transaction: every statement in it sees the same version.
        db.execute_batch("begin").expect("begin");
        let (total, n): (i64, i64) = db
            .query_row("select sum(bal), count(*) from acct", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("sum");
        let again: i64 = db
            .query_row("select sum(bal) from acct", [], |r| r.get(0))
            .expect("sum again");
        versions.insert(version(&db));
        db.execute_batch("commit").expect("end");
        if total != ACCOUNTS * OPENING_BALANCE || n != ACCOUNTS || again != total {
            violations += 1;
            eprintln!("@violation: total {total} (then {again}) over {n} accounts");
        }
        reads += 1;
        if reads % 200 == 0 {
            checks += 1;
            if integrity(&db) != "ok" {
                violations += 1;
            }
        }
    }
    // Read transactions begun with no RPC, under a read lease.
    let local = stat(&db, "local_reads");
    println!(
        "@@reader reads={reads} violations={violations} checks={checks} versions={} local={local}",
        versions.len()
    );
}

#[test]
fn bank_invariant_holds_on_every_replica() {
    let secs = std::env::var("BANK_SECONDS").unwrap_or_else(|_| "30".into());
    let server = Server::start().expect("server");
    {
        let db = open(&server, "bank.db");
        db.execute_batch("create table acct(id integer primary key, bal int not null)")
            .expect("schema");
        for _ in 0..ACCOUNTS {
            db.execute("insert into acct(bal) values (?1)", [OPENING_BALANCE])
                .expect("account");
        }
    }
    let env = [
        ("BANK_URL", server.url.as_str()),
        ("BANK_SECONDS", secs.as_str()),
    ];
    let writer = spawn_child("bank_writer", &env);
    let readers: Vec<Child> = (0..3).map(|_| spawn_child("bank_reader", &env)).collect();
    let writer_report = report(writer, "writer ");
    let txns = field(&writer_report, "txns");
    let (mut reads, mut checks, mut local) = (0, 0, 0);
    for reader in readers {
        let report = report(reader, "reader ");
        assert_eq!(field(&report, "violations"), 0, "{report}");
        assert!(
            field(&report, "versions") > 10,
            "the replica saw the writer's versions: {report}"
        );
        // Read leases are on (the default): every replica served read transactions
        // with no RPC between the writer's commits.
        assert!(
            field(&report, "local") > 0,
            "the replica never read under its read lease: {report}"
        );
        reads += field(&report, "reads");
        checks += field(&report, "checks");
        local += field(&report, "local");
    }
    assert!(txns > 100, "{writer_report}");
    eprintln!(
        "bank: {txns} transfer transactions, {reads} replica read transactions ({local} under read leases, \
         {checks} integrity checks), 0 violations in {secs}s"
    );
    let db = open(&server, "bank.db");
    let total: i64 = db
        .query_row("select sum(bal) from acct", [], |r| r.get(0))
        .expect("total");
    assert_eq!(total, ACCOUNTS * OPENING_BALANCE);
    assert_eq!(integrity(&db), "ok");
}

#[test]
#[ignore = "child process of a lapsed_writer_is_fenced_off"]
fn fenced_writer() {
    let Some(url) = child_env("FENCE_URL") else {
        return;
    };
    let db = open_url(&url, "fence.db");
    db.execute_batch("begin immediate; insert into t values ('A')")
        .expect("A writes");
    println!("@@ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go");
    match db.execute_batch("commit") {
        Ok(()) => println!("@@commit ok"),
        Err(e) => println!("@@commit failed: {e}"),
    }
    // It re-acquires the lease for its next transaction.
    match db.execute("insert into t values ('A2')", []) {
        Ok(_) => println!("@@retry ok"),
        Err(e) => println!("@@retry failed: {e}"),
    }
}

#[test]
fn a_lapsed_writer_is_fenced_off() {
    let server = Server::start_with(&["--lease-ttl", "1s"]).expect("server");
    open(&server, "fence.db")
        .execute_batch("create table t(who text)")
        .expect("schema");
    let mut a = spawn_child("fenced_writer", &[("FENCE_URL", server.url.as_str())]);
    let mut out = lines(&mut a);
    assert_eq!(out.next().as_deref(), Some("ready"));
    let pid = a.id() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    std::thread::sleep(Duration::from_millis(2500));
    {
        // B takes over once A's lease lapsed, and commits.
        let b = open(&server, "fence.db");
        b.execute("insert into t values ('B')", [])
            .expect("B commits");
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    a.stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("go");
    let commit = out.next().expect("commit outcome");
    assert!(
        commit.starts_with("commit failed"),
        "A must be fenced off: {commit}"
    );
    assert_eq!(out.next().as_deref(), Some("retry ok"));
    assert!(a.wait().expect("A").success());
    let db = open(&server, "fence.db");
    let rows: Vec<String> = all_rows(&db, "select who from t order by rowid", |r| r.get(0));
    assert_eq!(
        rows,
        ["B", "A2"],
        "B's data intact, A's fenced transaction gone"
    );
    assert_eq!(integrity(&db), "ok");
}

#[test]
#[ignore = "child process of writers_queue_with_busy_timeout"]
fn queued_writer() {
    let (Some(url), Some(who)) = (child_env("QUEUE_URL"), child_env("QUEUE_WHO")) else {
        return;
    };
    let db = open_url(&url, "queue.db");
    db.busy_timeout(Duration::from_secs(60))
        .expect("busy timeout");
    for i in 0..1000 {
        db.execute("insert into q(who, i) values (?1, ?2)", params![who, i])
            .expect("insert");
    }
    println!("@@done");
}

#[test]
fn writers_queue_with_busy_timeout() {
    let server = Server::start().expect("server");
    open(&server, "queue.db")
        .execute_batch("create table q(who text, i int)")
        .expect("schema");
    let children: Vec<Child> = ["one", "two"]
        .into_iter()
        .map(|who| {
            spawn_child(
                "queued_writer",
                &[("QUEUE_URL", server.url.as_str()), ("QUEUE_WHO", who)],
            )
        })
        .collect();
    for c in children {
        assert_eq!(report(c, "done"), "done");
    }
    let db = open(&server, "queue.db");
    let per: Vec<(String, i64)> = all_rows(
        &db,
        "select who, count(distinct i) from q group by who order by who",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(per, [("one".to_string(), 1000), ("two".to_string(), 1000)]);
    assert_eq!(count(&db, "q"), 2000);
}

#[test]
#[ignore = "child process of an_idle_writer_gives_the_lease_back"]
fn idle_writer() {
    let Some(url) = child_env("IDLE_URL") else {
        return;
    };
    let db = open_url(&format!("{url}&lease_idle=300ms"), "idle.db");
    db.execute("insert into t values ('idle')", [])
        .expect("write");
    println!("@@wrote");
    std::thread::sleep(Duration::from_secs(10));
    drop(db);
}

#[test]
fn an_idle_writer_gives_the_lease_back() {
    let server = Server::start().expect("server");
    open(&server, "idle.db")
        .execute_batch("create table t(who text)")
        .expect("schema");
    let mut a = spawn_child("idle_writer", &[("IDLE_URL", server.url.as_str())]);
    let mut out = lines(&mut a);
    assert_eq!(out.next().as_deref(), Some("wrote"));
    let started = Instant::now();
    let b = open(&server, "idle.db");
    b.busy_timeout(Duration::from_secs(20)).expect("timeout");
    b.execute("insert into t values ('other')", [])
        .expect("write after A went idle");
    // Without the idle release B would wait for A to close (10 s).
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    let _ = a.kill();
    let _ = a.wait();
    drop(out);
    assert_eq!(count(&b, "t"), 2);
}

#[test]
fn lost_commit_replies_are_retried_and_applied_once() {
    let server = Server::start_with(&["--inject-fault", "commit-reply-lost=3"]).expect("server");
    let db = open(&server, "retry.db");
    db.execute_batch("create table r(i int)").expect("schema");
    for i in 0..30 {
        db.execute("insert into r values (?1)", [i])
            .expect("insert despite lost replies");
    }
    let (n, distinct): (i64, i64) = db
        .query_row("select count(*), count(distinct i) from r", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("count");
    assert_eq!(
        (n, distinct),
        (30, 30),
        "each transaction applied exactly once"
    );
    assert!(
        stat(&db, "commit") >= 31 + 10,
        "replies were lost and retried: {}",
        pragma_text(&db, "pagewire_stats")
    );
    drop(db);
    let db = open(&server, "retry.db");
    assert_eq!(count(&db, "r"), 30);
    assert_eq!(version(&db), 31, "one version per transaction");
    assert_eq!(integrity(&db), "ok");
}

#[test]
fn time_travel_reads_exactly_the_state_after_commit_n() {
    let server = Server::start().expect("server");
    let db = open(&server, "tt.db");
    db.execute_batch("create table h(i int)").expect("schema");
    let mut versions = Vec::new();
    let mut times = Vec::new();
    for i in 0..40 {
        db.execute("insert into h values (?1)", [i])
            .expect("insert");
        versions.push(version(&db));
        std::thread::sleep(Duration::from_millis(15));
        times.push(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
        std::thread::sleep(Duration::from_millis(15));
    }
    let mut rng = rand::rng();
    let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    for _ in 0..12 {
        let n = rng.random_range(0..40usize);
        let past = try_open_uri(
            &server.url,
            "tt.db",
            &format!("&as_of_version={}", versions[n]),
            ro,
        );
        let (rows, max): (i64, i64) = past
            .query_row("select count(*), max(i) from h", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("as of");
        assert_eq!(
            (rows, max),
            (n as i64 + 1, n as i64),
            "as of version {}",
            versions[n]
        );
        assert_eq!(version(&past), versions[n]);
        let err = past
            .execute("insert into h values (99)", [])
            .expect_err("history is read-only");
        assert_eq!(err.sqlite_error_code(), Some(rusqlite::ErrorCode::ReadOnly));
        let past = try_open_uri(
            &server.url,
            "tt.db",
            &format!("&as_of_time={}", times[n]),
            ro,
        );
        assert_eq!(count(&past, "h"), n as i64 + 1, "as of {}", times[n]);
    }
    // The present is untouched.
    assert_eq!(count(&db, "h"), 40);
    // A version that does not exist yet is an error, not wrong data.
    let err = try_open(
        &server.url,
        &format!("tt.db?as_of_version={}", versions[39] + 5),
        ro,
    )
    .expect_err("future");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen),
        "{err}"
    );
}

#[test]
fn history_beyond_retention_is_a_clear_error() {
    let server = Server::start_with(&[
        "--history-retention",
        "0s",
        "--gc-interval",
        "100ms",
        "--pin-ttl",
        "100ms",
    ])
    .expect("server");
    let db = open(&server, "gc.db");
    db.execute_batch("create table g(i int)").expect("schema");
    for i in 0..5 {
        db.execute("insert into g values (?1)", [i])
            .expect("insert");
    }
    std::thread::sleep(Duration::from_millis(600));
    let ro = OpenFlags::SQLITE_OPEN_READ_ONLY;
    let err = try_open(&server.url, "gc.db?as_of_version=2", ro).expect_err("collected");
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::CannotOpen),
        "{err}"
    );
    // The newest version is always kept and complete.
    let fresh = open(&server, "gc.db");
    assert_eq!(count(&fresh, "g"), 5);
    assert_eq!(integrity(&fresh), "ok");
}

#[test]
fn replica_waits_for_the_writers_version() {
    let server = Server::start().expect("server");
    let writer = open(&server, "ryw.db");
    writer
        .execute_batch("create table w(i int); insert into w values (0)")
        .expect("schema");
    let committed = version(&writer);
    let replica = open_replica(&server.url, "ryw.db");
    assert_eq!(count(&replica, "w"), 1);
    // Ask for a version the writer has not committed yet.
    replica
        .execute_batch(&format!("pragma pagewire_min_version={}", committed + 1))
        .expect("pragma");
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        writer
            .execute("insert into w values (1)", [])
            .expect("commit");
        version(&writer)
    });
    assert_eq!(
        count(&replica, "w"),
        2,
        "the read waited for the new version"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(writer.join().expect("writer"), committed + 1);
    // A version that never comes: SQLITE_BUSY after the timeout.
    let impatient = try_open_uri(
        &server.url,
        "ryw.db",
        "&mode=ro&min_version_timeout=200ms",
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    );
    impatient
        .execute_batch("pragma pagewire_min_version=1000000")
        .expect("pragma");
    impatient
        .busy_timeout(Duration::ZERO)
        .expect("no busy handler");
    let waited = Instant::now();
    let err = impatient
        .query_row("select count(*) from w", [], |r| r.get::<_, i64>(0))
        .expect_err("never");
    assert!(
        waited.elapsed() < Duration::from_secs(2),
        "min_version_timeout=200ms: waited {:?}",
        waited.elapsed()
    );
    assert_eq!(
        err.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "{err}"
    );
}
