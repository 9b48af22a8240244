//! Deadlines (`call_timeout`): a server that accepts the connection and then stops
//! answering fails every kind of SQLite call within a bound, with a message that says
//! so, instead of blocking the application; a slow link that keeps moving is not cut,
//! even for a 256 MiB commit that takes many times `call_timeout`.
//!
//! The stuck server is a real server behind a proxy that holds every byte
//! (`DelayProxy::freeze`: connections stay open, nothing moves, new connections are
//! accepted and hang the same way). With `call_timeout=2s` a call gives up at its second
//! timed-out attempt (the retry over a new connection), so about 4 s.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::*;
use pagewire_tests::{
    Server,
    admin::Admin,
    proxy::{DelayProxy, Throttle, ThrottleProxy},
    python::{self, python},
};
use rusqlite::{Connection, ErrorCode, OpenFlags};

/// What every test sets: the deadline of one attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The most any SQLite call may block against a stuck server with that deadline.
const BOUND: Duration = Duration::from_secs(15);

/// A connection with `call_timeout=2s`, no preload (so reads of a fresh connection
/// must ask the server).
fn open_with_deadline(url: &str, name: &str) -> Connection {
    open_with(url, name, "&call_timeout=2s&preload=0&lease_idle=60s")
}

/// Runs `f`, returning how long it took and what it returned.
fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let started = Instant::now();
    let out = f();
    (started.elapsed(), out)
}

/// `result` is an error with SQLite code `code`, returned in `[CALL_TIMEOUT, BOUND)`:
/// the deadline, not something faster, ended it, and it did not block past the bound.
fn assert_deadline_error<T: std::fmt::Debug>(
    what: &str,
    took: Duration,
    result: rusqlite::Result<T>,
    code: ErrorCode,
) {
    let err = result.expect_err(&format!("{what}: a stuck server answered"));
    assert_eq!(err.sqlite_error_code(), Some(code), "{what}: {err}");
    assert!(took < BOUND, "{what}: blocked {took:?} (bound {BOUND:?})");
    assert!(
        took >= CALL_TIMEOUT,
        "{what}: failed after {took:?}, before the deadline: {err}"
    );
}

fn rows(conn: &Connection) -> i64 {
    count(conn, "t")
}

/// `t` with `n` rows of 2000-byte blobs, written straight to the server.
fn populate(url: &str, name: &str, n: i64) {
    let db = open_url(url, name);
    db.execute_batch("create table t(id integer primary key, b blob)")
        .expect("create");
    db.execute(
        &format!("with recursive s(i) as (select 1 union all select i + 1 from s where i < {n}) insert into t(b) select randomblob(2000) from s"),
        [],
    )
    .expect("fill");
}

#[test]
fn a_stuck_server_fails_every_kind_of_sqlite_call_within_the_bound() {
    // A long write lease, so the writer's lease is still valid (no RPC to take it) when
    // its commit meets the stuck server.
    let server = Server::start_with(&["--lease-ttl", "60s"]).expect("server");
    let proxy = DelayProxy::undelayed(&server.addr).expect("proxy");
    let via = proxy.url.as_str();
    for name in ["stuck/lease.db", "stuck/cold.db", "stuck/new.db"] {
        populate(&server.url, name, 200);
    }

    // Before the server gets stuck, through the proxy:
    // a writer holding the write lease, with its pages cached (it wrote them);
    let writer = open_with_deadline(via, "stuck/write.db");
    writer
        .execute_batch(
            "create table t(id integer primary key, b blob); insert into t(b) values (x'01')",
        )
        .expect("write");
    // a writer in the middle of a 16 MiB transaction (its Commit cannot go out whole);
    let big = open_with_deadline(via, "stuck/big.db");
    big.execute_batch(
        "create table t(id integer primary key, b blob); insert into t(b) values (x'01')",
    )
    .expect("write");
    big.execute_batch(
        "begin immediate; with recursive s(i) as (select 1 union all select i + 1 from s where i < 4096) \
         insert into t(b) select randomblob(4000) from s",
    )
    .expect("big transaction");
    // a reader inside a read transaction, about to write (it must take the lease);
    let upgrader = open_with_deadline(via, "stuck/lease.db");
    upgrader.execute_batch("begin").expect("begin");
    assert_eq!(rows(&upgrader), 200);
    // a reader inside a read transaction, about to read pages it never read;
    let cold = open_with_deadline(via, "stuck/cold.db");
    cold.execute_batch("begin").expect("begin");
    let one: i64 = cold
        .query_row("select id from t where id = 1", [], |r| r.get(0))
        .expect("point read");
    assert_eq!(one, 1);
    // a reader between read transactions (its next one asks the server);
    let reader = open_with_deadline(via, "stuck/new.db");
    assert_eq!(rows(&reader), 200);
    // a writer holding the lease, to be closed (it gives the lease back).
    let closing = open_with_deadline(via, "stuck/close.db");
    closing
        .execute_batch("create table t(x); insert into t values (1)")
        .expect("write");

    proxy.freeze();
    let mut report = Vec::new();

    // INSERT by the lease holder: no RPC until its Commit, which goes out whole and gets
    // no answer: outcome unknown, the connection is poisoned.
    let (took, r) = timed(|| writer.execute("insert into t(b) values (x'02')", []));
    assert_deadline_error("INSERT (Commit)", took, r, ErrorCode::SystemIoFailure);
    report.push(format!("INSERT/Commit {took:.1?}"));
    let (fast, r) =
        timed(|| writer.query_row("select count(*) from t", [], |r| r.get::<_, i64>(0)));
    assert!(
        r.is_err() && fast < Duration::from_secs(1),
        "a poisoned connection fails at once: {r:?} after {fast:?}"
    );

    // COMMIT of the 16 MiB transaction: the stream stops being taken mid-way, so it
    // cannot have applied: a definite failure, SQLite rolls back, the connection stays
    // usable.
    let (took, r) = timed(|| big.execute_batch("commit"));
    assert_deadline_error(
        "COMMIT (Commit stream)",
        took,
        r,
        ErrorCode::SystemIoFailure,
    );
    report.push(format!("COMMIT/Commit {took:.1?}"));

    // INSERT in a read transaction: AcquireLease.
    let (took, r) = timed(|| upgrader.execute("insert into t(b) values (x'03')", []));
    assert_deadline_error("INSERT (AcquireLease)", took, r, ErrorCode::SystemIoFailure);
    report.push(format!("INSERT/AcquireLease {took:.1?}"));

    // A read of pages not in the cache: ReadPages.
    let (took, r) =
        timed(|| cold.query_row("select sum(length(b)) from t", [], |r| r.get::<_, i64>(0)));
    assert_deadline_error("SELECT (ReadPages)", took, r, ErrorCode::SystemIoFailure);
    report.push(format!("SELECT/ReadPages {took:.1?}"));

    // A new read transaction: BeginRead.
    let (took, r) =
        timed(|| reader.query_row("select count(*) from t", [], |r| r.get::<_, i64>(0)));
    assert_deadline_error("SELECT (BeginRead)", took, r, ErrorCode::SystemIoFailure);
    report.push(format!("SELECT/BeginRead {took:.1?}"));
    assert!(
        stat(&reader, "timeouts") >= 2,
        "{}",
        pragma_text(&reader, "pagewire_stats")
    );

    // Opening a database: Open (one attempt).
    let (took, r) = timed(|| {
        Connection::open_with_flags(uri(via, "stuck/another.db", "&call_timeout=2s"), rw())
    });
    assert_deadline_error("open (Open)", took, r, ErrorCode::CannotOpen);
    report.push(format!("open/Open {took:.1?}"));

    // Closing a lease holder: ReleaseLease, best effort.
    let (took, r) = timed(|| closing.close().map_err(|(_, e)| e));
    assert!(r.is_ok(), "close: {r:?}");
    assert!(took < BOUND, "close blocked {took:?}");
    report.push(format!("close/ReleaseLease {took:.1?}"));

    proxy.thaw();
    // What the server holds: the unknown commit applied or not (its bytes were held by
    // the proxy and are delivered now), the definite one and the failed lease did not.
    let direct = |name: &str| open_url(&server.url, name);
    let written = rows(&direct("stuck/write.db"));
    assert!(
        written == 1 || written == 2,
        "the unknown commit applied at most once: {written} rows"
    );
    assert_eq!(
        rows(&direct("stuck/big.db")),
        1,
        "a commit that never went out whole applied"
    );
    assert_eq!(rows(&direct("stuck/lease.db")), 200);
    // Healed, the connections that were not poisoned go on.
    assert!(big.is_autocommit(), "the failed COMMIT was rolled back");
    big.execute("insert into t(b) values (x'04')", [])
        .expect("the definite failure left the connection usable");
    assert_eq!(rows(&direct("stuck/big.db")), 2);
    let _ = upgrader.execute_batch("rollback");
    upgrader
        .execute("insert into t(b) values (x'05')", [])
        .expect("write after the server came back");
    assert_eq!(rows(&direct("stuck/lease.db")), 201);
    let _ = cold.execute_batch("rollback");
    let sum: i64 = cold
        .query_row("select sum(length(b)) from t", [], |r| r.get(0))
        .expect("read after");
    assert_eq!(sum, 200 * 2000);
    assert_eq!(rows(&reader), 200);
    assert!(
        writer
            .execute("insert into t(b) values (x'06')", [])
            .is_err(),
        "poisoned until reopened"
    );
    eprintln!("stuck server, call_timeout=2s: {}", report.join(", "));
}

/// An AcquireLease the server granted but whose answer never came back is asked again
/// under the same lease id: once the network heals, the writer gets that lease, not
/// `SQLITE_BUSY` from its own orphan until it runs out (60 s here).
#[test]
fn a_granted_lease_whose_answer_was_lost_is_not_an_orphan() {
    let server = Server::start_with(&["--lease-ttl", "60s"]).expect("server");
    let proxy = DelayProxy::undelayed(&server.addr).expect("proxy");
    populate(&server.url, "lost/answer.db", 10);
    let writer = open_with_deadline(&proxy.url, "lost/answer.db");
    writer.execute_batch("begin").expect("begin");
    assert_eq!(rows(&writer), 10);

    proxy.freeze_answers();
    let (took, r) = timed(|| writer.execute("insert into t(b) values (x'01')", []));
    assert_deadline_error("INSERT (AcquireLease)", took, r, ErrorCode::SystemIoFailure);
    let info = Admin::connect(&server.url).database_info("lost/answer.db");
    assert!(info.lease_held, "the server granted the lease: {info:?}");
    proxy.thaw();

    let _ = writer.execute_batch("rollback");
    let (took, r) = timed(|| writer.execute("insert into t(b) values (x'02')", []));
    r.expect("the lease granted before is this writer's");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(rows(&open_url(&server.url, "lost/answer.db")), 11);
    // Another writer still finds it held: the id is this writer's alone.
    let other = open_url(&server.url, "lost/answer.db");
    other.busy_timeout(Duration::ZERO).expect("busy_timeout");
    let busy = other.execute("insert into t(b) values (x'03')", []);
    assert_eq!(
        busy.err().and_then(|e| e.sqlite_error_code()),
        Some(ErrorCode::DatabaseBusy)
    );
}

/// Python (Debian's `/usr/bin/python3`, the VFS loaded as an extension), configured by
/// `PAGEWIRE_CALL_TIMEOUT`: prints `ready`, waits for a line (the proxy is frozen
/// then), and runs one statement of each kind, printing `case <label> <seconds> <error>`.
/// Run after [`python::LOAD_VFS`].
const PY_CLIENT: &str = r#"
import time
name, other = sys.argv[2], sys.argv[3]
w = sqlite3.connect(name, isolation_level=None)
w.execute("create table t(id integer primary key, body text)")
w.execute("insert into t(body) values ('before')")
r = sqlite3.connect(other, isolation_level=None)
print("ready", r.execute("select count(*) from u").fetchone()[0], flush=True)
sys.stdin.readline()
def case(label, f):
    t = time.monotonic()
    try:
        f()
        print("case", label, "%.2f" % (time.monotonic() - t), "ok", flush=True)
    except sqlite3.Error as e:
        print("case", label, "%.2f" % (time.monotonic() - t), type(e).__name__ + ":", e, flush=True)
case("insert", lambda: w.execute("insert into t(body) values ('during')"))
case("select", lambda: r.execute("select count(*) from u").fetchone())
case("open", lambda: sqlite3.connect("py/never.db").execute("select 1").fetchone())
print("done", flush=True)
"#;

#[test]
fn a_stuck_server_fails_python_calls_within_the_bound_and_says_why() {
    let Some(python) = python() else { return };
    let server = Server::start_with(&["--lease-ttl", "60s"]).expect("server");
    let proxy = DelayProxy::undelayed(&server.addr).expect("proxy");
    {
        let db = open_url(&server.url, "py/other.db");
        db.execute_batch("create table u(x); insert into u values (1), (2)")
            .expect("other");
    }
    let mut child = python::command(python, PY_CLIENT)
        .expect("VFS library")
        .args(["py/main.db", "py/other.db"])
        .env("PAGEWIRE_URL", &proxy.url)
        .env("PAGEWIRE_CALL_TIMEOUT", "2s")
        .env("PAGEWIRE_PRELOAD", "0")
        .env("PAGEWIRE_LEASE_IDLE", "60s")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let errors = thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("python said ready");
    assert_eq!(ready, "ready 2");
    proxy.freeze();
    let started = Instant::now();
    writeln!(stdin, "go").expect("go");
    let mut cases = Vec::new();
    loop {
        let line = lines.recv_timeout(3 * BOUND).expect("python went on");
        if line == "done" {
            break;
        }
        cases.push(line);
    }
    let total = started.elapsed();
    proxy.thaw();
    let status = child.wait().expect("python exit");
    let stderr = errors.join().expect("stderr");
    assert!(status.success(), "python failed: {stderr}");
    assert_eq!(cases.len(), 3, "{cases:?}");
    for line in &cases {
        let mut parts = line.splitn(4, ' ');
        let (_, label, secs, error) = (
            parts.next(),
            parts.next().expect("label"),
            parts.next().expect("secs"),
            parts.next().expect("error"),
        );
        let secs: f64 = secs.parse().expect("seconds");
        assert!(
            secs < BOUND.as_secs_f64() && secs >= CALL_TIMEOUT.as_secs_f64(),
            "{line}"
        );
        let want = if label == "open" {
            "OperationalError: unable to open database file"
        } else {
            "OperationalError: disk I/O error"
        };
        assert_eq!(error, want, "{line}");
    }
    // Each failure's reason, on stderr: the call, the deadline, the setting, the attempts.
    for want in [
        "did not answer a commit within 2s (call_timeout 2s + 0s for its 8.0 KiB) after it was sent whole; gave up after 2 attempts",
        "the outcome of a commit is unknown",
        "did not answer BeginRead within 2s (call_timeout); gave up after 2 attempts",
        "did not answer Open within 2s (call_timeout); gave up after 1 attempt",
    ] {
        assert!(stderr.contains(want), "stderr lacks {want:?}:\n{stderr}");
    }
    eprintln!(
        "python against a stuck server, PAGEWIRE_CALL_TIMEOUT=2s: {cases:?} ({total:.1?} in all)"
    );
}

#[test]
fn a_256_mib_commit_over_a_slow_live_link_is_not_cut() {
    // 256 MiB at 16 MiB/s, silent for 1 s of every 3 (shorter than call_timeout):
    // about 24 s, twelve times call_timeout; server limits at their defaults
    // (--max-commit-bytes 2GiB, --stream-idle-timeout 30s per 1 MiB message,
    // --max-message-bytes 16MiB). The same size in CI: the link's rate, not the
    // machine, sets the time.
    const MIB: i64 = 1 << 20;
    const BLOBS: i64 = 256;
    let server = Server::start().expect("server");
    let throttle = Throttle {
        bytes_per_sec: 16 << 20,
        pauses: Some((Duration::from_secs(3), Duration::from_secs(1))),
    };
    let proxy = ThrottleProxy::start(&server.addr, throttle).expect("proxy");
    let db = open_with_deadline(&proxy.url, "slow/big.db");
    // 64 KiB pages: the transaction spills 4,096 page writes into the VFS's write
    // buffer instead of 65,536 (at 4 KiB pages building the transaction alone takes
    // about 70 s here: `WriteBuffer::write` looks at every extent below the one it
    // writes). The commit is one Commit stream either way.
    db.execute_batch("pragma page_size=65536; create table t(id integer primary key, b blob)")
        .expect("create");
    let (commits, timeouts) = (stat(&db, "commit"), stat(&db, "timeouts"));
    let sent_before = proxy.upstream_bytes();
    let (took, r) = timed(|| {
        db.execute(
            &format!(
                "with recursive s(i) as (select 1 union all select i + 1 from s where i < {BLOBS}) \
                 insert into t(b) select randomblob({MIB}) from s"
            ),
            [],
        )
    });
    assert_eq!(r.expect("the slow commit"), BLOBS as usize);
    let sent = proxy.upstream_bytes() - sent_before;
    assert!(
        sent >= (BLOBS * MIB) as u64,
        "only {sent} bytes went through the slow link"
    );
    assert!(took > 5 * CALL_TIMEOUT, "the link was not slow: {took:?}");
    assert_eq!(
        stat(&db, "commit") - commits,
        1,
        "one Commit, never cut and retried"
    );
    assert_eq!(stat(&db, "timeouts") - timeouts, 0);
    let fresh = open_url(&server.url, "slow/big.db");
    let (n, bytes): (i64, i64) = fresh
        .query_row("select count(*), sum(length(b)) from t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("read back");
    assert_eq!((n, bytes), (BLOBS, BLOBS * MIB));
    assert_eq!(integrity(&fresh), "ok");
    eprintln!(
        "256 MiB commit over a 16 MiB/s link pausing 1 s in 3, call_timeout=2s: {took:.1?} ({:.1} MiB/s)",
        sent as f64 / MIB as f64 / took.as_secs_f64()
    );
}

/// Reads of a replica until the first error, each timed: (time from `since` to the
/// first error, longest single read, reads served).
fn read_until_error(
    conn: &Connection,
    since: Instant,
    give_up: Duration,
) -> (Option<Duration>, Duration, u64) {
    let (mut longest, mut served) = (Duration::ZERO, 0);
    while since.elapsed() < give_up {
        let (took, r) =
            timed(|| conn.query_row("select count(*) from t", [], |r| r.get::<_, i64>(0)));
        longest = longest.max(took);
        match r {
            Ok(_) => served += 1,
            Err(e) => {
                assert_eq!(
                    e.sqlite_error_code(),
                    Some(ErrorCode::SystemIoFailure),
                    "{e}"
                );
                return (Some(since.elapsed()), longest, served);
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    (None, longest, served)
}

#[test]
fn readers_on_a_watch_stream_never_wait_on_a_stuck_server() {
    let server = Server::start_with(&["--read-lease-ttl", "1s"]).expect("server");
    let proxy = DelayProxy::undelayed(&server.addr).expect("proxy");
    for name in ["watch/strong.db", "watch/snapshot.db"] {
        populate(&server.url, name, 10);
    }
    let replica = |name: &str, extra: &str| {
        register();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
        let extra = format!("&mode=ro&call_timeout=2s&preload=0{extra}");
        Connection::open_with_flags(uri(&proxy.url, name, &extra), flags).expect("open replica")
    };
    let strong = replica("watch/strong.db", "");
    let snapshot = replica("watch/snapshot.db", "&consistency=snapshot");
    // Both read on their Watch stream with no RPC (strong: under a read lease).
    for (who, conn) in [("strong", &strong), ("snapshot", &snapshot)] {
        let local = pagewire_tests::wait_for(Duration::from_secs(20), || {
            assert_eq!(rows(conn), 10);
            stat(conn, "local_reads") > 2
        });
        assert!(
            local,
            "{who}: no reads on the Watch stream: {}",
            pragma_text(conn, "pagewire_stats")
        );
    }
    assert!(pragma_text(&strong, "pagewire_read_lease").starts_with("lease=held"));

    proxy.freeze();
    let frozen = Instant::now();
    // The strong reader serves until its read lease ends here (before it ends on the
    // server), then asks the server, which does not answer.
    let (strong_error, strong_longest, strong_served) =
        read_until_error(&strong, frozen, Duration::from_secs(40));
    let strong_error = strong_error.expect("the strong reader kept serving on a stuck server");
    assert!(
        strong_error < Duration::from_secs(1) + BOUND,
        "strong: first error after {strong_error:?}"
    );
    assert!(
        strong_longest < BOUND,
        "strong: a read blocked {strong_longest:?}"
    );
    // The snapshot reader serves what it heard until the connection's keepalive ends the
    // stream; no read waits on the stream.
    let (snapshot_error, snapshot_longest, snapshot_served) =
        read_until_error(&snapshot, frozen, Duration::from_secs(60));
    let snapshot_error =
        snapshot_error.expect("the snapshot reader kept serving on a stuck server");
    assert!(
        snapshot_error < Duration::from_secs(20) + BOUND,
        "snapshot: first error after {snapshot_error:?}"
    );
    assert!(
        snapshot_longest < BOUND,
        "snapshot: a read blocked {snapshot_longest:?}"
    );
    proxy.thaw();
    assert_eq!(rows(&strong), 10);
    assert_eq!(rows(&snapshot), 10);
    eprintln!(
        "Watch readers on a stuck server: strong served {strong_served} reads, first error at {strong_error:.1?}, \
         longest read {strong_longest:.1?}; snapshot served {snapshot_served}, first error at {snapshot_error:.1?}, \
         longest read {snapshot_longest:.1?}"
    );
}
