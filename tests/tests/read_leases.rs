//! Read leases end to end: real server processes, real SQLite through the real VFS,
//! readers in their own processes (each with its own Watch stream and lease).
//!
//! - reads stay linearizable across processes: no reader sees a value older than one
//!   another reader already saw (one of them behind a slow, jittery proxy), and a
//!   value whose COMMIT returned is seen by the next read transaction anywhere;
//! - a reader that vanishes (SIGSTOP, SIGKILL) holds commits back at most about one
//!   lease length, and once resumed serves nothing stale;
//! - a reader cut off by a silent network stops serving from its lease before the
//!   server stops honouring it;
//! - snapshot readers hold nothing back;
//! - the server's metrics count leases, watchers, commits and invalidation waits.
//!
//! Times that must be compared across processes come from CLOCK_MONOTONIC (one clock
//! for the whole machine), never from `Instant` values of different processes.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, Write},
    process::{Child, ChildStdin},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::*;
use pagewire_tests::{Server, admin::Admin, proxy::DelayProxy, value_of, wait_for};
use rand::Rng;
use rusqlite::{Connection, OpenFlags};

/// The read lease length every test's server grants (the default, spelled out).
const TTL: Duration = Duration::from_secs(1);
/// The part of the TTL a client's lease ends before the server's (1/5, see
/// `vfs/src/watch.rs`): a lease the client holds at t is honoured by the server
/// until at least t + this.
const CLIENT_MARGIN: Duration = Duration::from_millis(200);
/// Upper bound for a commit stalled by a vanished lease holder: one TTL plus slack
/// for a loaded machine.
const MAX_STALL: Duration = Duration::from_millis(2500);
/// A commit nobody holds back. Generous: a loaded 2-core CI machine runs other
/// tests' processes alongside.
const FAST: Duration = Duration::from_millis(100);

fn server() -> Server {
    Server::start_with(&["--read-lease-ttl", "1s"]).expect("server")
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes of this machine.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for clock_gettime to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// A `key=value` number from a report line.
fn field(line: &str, key: &str) -> u64 {
    text(line, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {line:?}"))
}

/// A `key=value` word from a report line.
fn text<'a>(line: &'a str, key: &str) -> &'a str {
    value_of(line, key).unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

/// A child process (this test binary running an ignored entry point) whose `@@`
/// report lines arrive on a channel, so the parent can wait for one with a timeout.
/// Killed when dropped, so a failing test leaves no stopped process behind.
struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    out: mpsc::Receiver<String>,
    name: &'static str,
}

impl Kid {
    fn spawn(name: &'static str, env: &[(&str, &str)]) -> Self {
        let mut child = spawn_child(name, env);
        let stdout = child.stdout.take().expect("child stdout");
        let stdin = child.stdin.take();
        let (tx, out) = mpsc::channel();
        thread::spawn(move || {
            for report in reports(stdout) {
                if tx.send(report).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            out,
            name,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("write to child");
    }

    /// The next report line starting with `prefix` (earlier other lines are skipped).
    fn expect(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!(
                    "{}: no {prefix:?} report within {timeout:?} ({e})",
                    self.name
                ),
            }
        }
    }

    /// Closes stdin, waits for a clean exit and returns every report line left.
    fn finish(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let mut lines = Vec::new();
        loop {
            match self.out.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{} hangs (killed): {lines:?}", self.name)
                }
            }
        }
        let status = self.child.wait().expect("wait for child");
        assert!(
            status.success(),
            "{} failed ({status}): {lines:?}",
            self.name
        );
        lines
    }

    /// [`Kid::finish`]; its report line starting with `prefix`.
    fn report(self, prefix: &str) -> String {
        self.finish()
            .into_iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} report"))
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill({sig})");
    }

    /// SIGSTOP, returning once the whole process (every thread) has stopped.
    fn stop(&self) {
        self.signal(libc::SIGSTOP);
        let mut status = 0;
        // SAFETY: waiting for our own child; WUNTRACED reports the stop without
        // reaping anything (the child cannot exit while stopping).
        let rc = unsafe { libc::waitpid(self.pid(), &mut status, libc::WUNTRACED) };
        assert_eq!(rc, self.pid(), "waitpid");
        assert!(
            libc::WIFSTOPPED(status),
            "{} did not stop: status {status:#x}",
            self.name
        );
    }

    fn cont(&self) {
        self.signal(libc::SIGCONT);
    }

    fn kill(mut self) {
        self.signal(libc::SIGKILL);
        let status = self.child.wait().expect("wait for killed child");
        assert!(!status.success(), "{} survived SIGKILL", self.name);
        self.stdin = None;
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn ro_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI
}

/// Opens a reader: read-only, strongly consistent unless `consistency` says otherwise.
fn open_reader(url: &str, name: &str, consistency: Option<&str>) -> Connection {
    let extra = match consistency {
        Some(c) => format!("&mode=ro&consistency={c}"),
        None => "&mode=ro".to_owned(),
    };
    let db = try_open_uri(url, name, &extra, ro_flags());
    db.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    db
}

/// Commits one autocommit statement; its duration and the CLOCK_MONOTONIC times
/// around it.
fn timed_commit(db: &Connection, sql: &str, value: i64) -> (Duration, u64, u64) {
    let (start, started) = (mono_ns(), Instant::now());
    db.execute(sql, [value]).expect("commit");
    (started.elapsed(), start, mono_ns())
}

// ---------------------------------------------------------------------------
// 1. No new-then-old across readers.

/// Per value a reader saw: when the transactions that saw it started and ended.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// Latest start of a transaction that saw this value.
    max_start: u64,
    /// Earliest end of a transaction that saw this value.
    min_end: u64,
    n: u64,
}

#[test]
#[ignore = "child process of readers_never_see_new_then_old"]
fn counter_reader() {
    let (Some(url), Some(secs)) = (child_env("LR_URL"), child_env("LR_SECONDS")) else {
        return;
    };
    let db = open_reader(&url, "counter.db", None);
    let deadline = Instant::now() + Duration::from_secs_f64(secs.parse().expect("seconds"));
    let mut rng = rand::rng();
    let mut seen: BTreeMap<i64, Seen> = BTreeMap::new();
    let (mut reads, mut regressions, mut last) = (0u64, 0u64, i64::MIN);
    while Instant::now() < deadline {
        // One read transaction (autocommit SELECT): it lies within [start, end].
        let start = mono_ns();
        let v: i64 = db
            .query_row("select v from c", [], |r| r.get(0))
            .expect("read");
        let end = mono_ns();
        let s = seen.entry(v).or_insert(Seen {
            max_start: start,
            min_end: end,
            n: 0,
        });
        s.max_start = s.max_start.max(start);
        s.min_end = s.min_end.min(end);
        s.n += 1;
        if v < last {
            regressions += 1;
            eprintln!("@regression: read {v} after {last}");
        }
        last = last.max(v);
        reads += 1;
        // Leave the 2 cores some room for the server and the writer.
        thread::sleep(Duration::from_micros(rng.random_range(0..400)));
    }
    for (v, s) in &seen {
        println!(
            "@@seen v={v} max_start={} min_end={} n={}",
            s.max_start, s.min_end, s.n
        );
    }
    println!(
        "@@reader reads={reads} regressions={regressions} values={} local={} begin_read={} watch={} {}",
        seen.len(),
        stat(&db, "local_reads"),
        stat(&db, "begin_read"),
        stat(&db, "watch"),
        pragma_text(&db, "pagewire_read_lease"),
    );
}

#[test]
#[ignore = "child process of readers_never_see_new_then_old"]
fn counter_writer() {
    let (Some(url), Some(secs)) = (child_env("LR_URL"), child_env("LR_SECONDS")) else {
        return;
    };
    let db = open_url(&url, "counter.db");
    let deadline = Instant::now() + Duration::from_secs_f64(secs.parse().expect("seconds"));
    let mut rng = rand::rng();
    let mut commits = 0u64;
    while Instant::now() < deadline {
        db.execute("update c set v = v + 1", []).expect("commit");
        commits += 1;
        // Pauses between commits: windows in which readers serve from their lease
        // (now and then long enough for the slow reader, whose every round lasts
        // until its acknowledgement crossed the slow link).
        let pause = match rng.random_range(0..10) {
            0 => rng.random_range(50..200),
            1..=6 => rng.random_range(0..15),
            _ => 0,
        };
        thread::sleep(Duration::from_millis(pause));
    }
    let v: i64 = db
        .query_row("select v from c", [], |r| r.get(0))
        .expect("final");
    println!("@@writer commits={commits} value={v}");
}

/// One reader's report: what it saw per value, and its summary line.
struct ReaderRun {
    seen: BTreeMap<i64, Seen>,
    summary: String,
}

fn reader_run(lines: Vec<String>) -> ReaderRun {
    let mut seen = BTreeMap::new();
    for l in lines.iter().filter(|l| l.starts_with("seen ")) {
        let v = text(l, "v").parse::<i64>().expect("value");
        seen.insert(
            v,
            Seen {
                max_start: field(l, "max_start"),
                min_end: field(l, "min_end"),
                n: field(l, "n"),
            },
        );
    }
    let summary = lines
        .into_iter()
        .find(|l| l.starts_with("reader "))
        .expect("reader summary");
    ReaderRun { seen, summary }
}

/// Pairs (v seen by `a` in a transaction that ended at t, u < v seen by `b` in one
/// that started after t): each is a new-then-old violation.
fn new_then_old(a: &ReaderRun, b: &ReaderRun) -> Vec<String> {
    let mut found = Vec::new();
    for (v, sa) in &a.seen {
        for (u, sb) in b.seen.range(..*v) {
            if sb.max_start > sa.min_end {
                found.push(format!(
                    "{v} seen by a transaction that ended at {:.3} ms, then {u} by one that started at {:.3} ms",
                    ms(sa.min_end),
                    ms(sb.max_start)
                ));
            }
        }
    }
    found
}

#[test]
fn readers_never_see_new_then_old() {
    let secs = std::env::var("LR_SECONDS").unwrap_or_else(|_| "8".into());
    let server = server();
    {
        let db = open(&server, "counter.db");
        db.execute_batch("create table c(v int not null); insert into c values (0)")
            .expect("schema");
    }
    // The slow reader's link: server-to-client chunks wait 20-50 ms (jittery, in
    // order), client-to-server ones up to 10 ms.
    let proxy = DelayProxy::start(
        &server.addr,
        Duration::from_millis(20)..Duration::from_millis(50),
        Duration::ZERO..Duration::from_millis(10),
    )
    .expect("proxy");
    let direct = [
        ("LR_URL", server.url.as_str()),
        ("LR_SECONDS", secs.as_str()),
    ];
    let slow = [
        ("LR_URL", proxy.url.as_str()),
        ("LR_SECONDS", secs.as_str()),
    ];
    let readers = [
        Kid::spawn("counter_reader", &direct),
        Kid::spawn("counter_reader", &slow),
    ];
    let writer = Kid::spawn("counter_writer", &direct);
    let writer_report = writer.report("writer ");
    let [fast, slow] = readers.map(|r| reader_run(r.finish()));
    let commits = field(&writer_report, "commits");
    assert!(
        commits > 30,
        "the writer committed only {commits} times: {writer_report}"
    );
    assert!(
        proxy.chunks() > 100,
        "the slow reader's traffic went through the delaying proxy"
    );

    let mut violations = new_then_old(&fast, &slow);
    violations.extend(new_then_old(&slow, &fast));
    violations.extend(new_then_old(&fast, &fast));
    violations.extend(new_then_old(&slow, &slow));
    for (who, r) in [("direct", &fast), ("slow", &slow)] {
        assert_eq!(
            field(&r.summary, "regressions"),
            0,
            "{who} reader: {}",
            r.summary
        );
        // Both saw the counter move, and served read transactions from a read lease.
        assert!(
            r.seen.len() > 10,
            "{who} reader saw only {} values: {}",
            r.seen.len(),
            r.summary
        );
        assert!(
            field(&r.summary, "local") > 0,
            "{who} reader never read under a read lease: {}",
            r.summary
        );
    }
    assert!(
        violations.is_empty(),
        "{} new-then-old violations, e.g. {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    eprintln!(
        "new-then-old: {commits} commits; direct reader: {}; slow reader: {}; 0 violations",
        fast.summary, slow.summary
    );
}

// ---------------------------------------------------------------------------
// 2. A value whose COMMIT returned is seen by the next read transaction of another
//    process.

/// Reads the counter for each value the parent sends (after its COMMIT returned).
#[test]
#[ignore = "child process of a_read_after_an_acknowledged_commit_sees_it"]
fn ack_reader() {
    let Some(url) = child_env("LR_URL") else {
        return;
    };
    let db = open_reader(&url, "ack.db", None);
    // Hold the lease before the rounds start.
    let held = wait_for(Duration::from_secs(15), || {
        let _: i64 = db
            .query_row("select v from c", [], |r| r.get(0))
            .expect("warm-up read");
        pragma_text(&db, "pagewire_read_lease").starts_with("lease=held")
            && stat(&db, "local_reads") > 0
    });
    println!(
        "@@ready held={held} {}",
        pragma_text(&db, "pagewire_read_lease")
    );
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let Ok(k) = line.trim().parse::<i64>() else {
            break;
        };
        let before = stat(&db, "local_reads");
        let v: i64 = db
            .query_row("select v from c", [], |r| r.get(0))
            .expect("read");
        let local = stat(&db, "local_reads") - before;
        println!("@@saw k={k} v={v} local={local}");
    }
    println!(
        "@@done local={} begin_read={} watch={} {}",
        stat(&db, "local_reads"),
        stat(&db, "begin_read"),
        stat(&db, "watch"),
        pragma_text(&db, "pagewire_read_lease")
    );
}

#[test]
fn a_read_after_an_acknowledged_commit_sees_it() {
    let rounds: i64 = std::env::var("LR_ROUNDS").map_or(3000, |v| v.parse().expect("rounds"));
    let server = server();
    let db = open(&server, "ack.db");
    db.execute_batch("create table c(v int not null); insert into c values (0)")
        .expect("schema");
    let mut reader = Kid::spawn("ack_reader", &[("LR_URL", server.url.as_str())]);
    let ready = reader.expect("ready", Duration::from_secs(30));
    assert_eq!(
        text(&ready, "held"),
        "true",
        "the reader holds a read lease before the rounds: {ready}"
    );
    let mut rng = rand::rng();
    let started = Instant::now();
    let (mut stale, mut local, mut overlapped) = (Vec::new(), 0u64, 0u64);
    let mut waiting = std::collections::VecDeque::new();
    let mut check = |reader: &Kid, waiting: &mut std::collections::VecDeque<i64>, newest: i64| {
        let k = waiting.pop_front().expect("a value in flight");
        let line = reader.expect("saw ", Duration::from_secs(20));
        assert_eq!(field(&line, "k") as i64, k, "replies come in order: {line}");
        let v = text(&line, "v").parse::<i64>().expect("value");
        if v < k {
            stale.push(format!("told {k} after its COMMIT returned, then read {v}"));
        }
        assert!(
            v <= newest,
            "read {v}, which was never committed (newest {newest}): {line}"
        );
        local += field(&line, "local");
    };
    for k in 1..=rounds {
        // Only after the COMMIT returned does the reader learn the value.
        db.execute("update c set v = ?1", [k]).expect("commit");
        reader.send(&k.to_string());
        waiting.push_back(k);
        // Mostly lock-step; sometimes commit the next value while the reader reads
        // this one (its read overlaps the next invalidation round).
        if rng.random_bool(0.8) {
            while !waiting.is_empty() {
                check(&reader, &mut waiting, k);
            }
        } else {
            overlapped += 1;
        }
    }
    while !waiting.is_empty() {
        check(&reader, &mut waiting, rounds);
    }
    let elapsed = started.elapsed();
    let done = reader.report("done ");
    assert!(
        stale.is_empty(),
        "{} stale reads of {rounds}, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
    // The reader kept its lease throughout: most rounds' reads needed no RPC (those
    // that raced the round's end on the Watch stream asked the server).
    assert!(
        local * 2 > rounds as u64,
        "only {local} of {rounds} reads were served under the read lease: {done}"
    );
    assert_eq!(version(&db), rounds as u64 + 2, "one version per commit");
    eprintln!(
        "read-after-ack: {rounds} rounds ({overlapped} overlapping the next commit) in {elapsed:.1?}, \
         {local} reads under the lease, 0 stale; reader: {done}"
    );
}

// ---------------------------------------------------------------------------
// 3. and 4. A reader that vanishes (stopped, killed), strong or snapshot.

/// Reads the newest row continuously (logging when each read started and what it
/// saw) and answers commands on stdin:
/// - `ready`: once its reads are served locally (strong: under a held lease), prints
///   `ready t=<CLOCK_MONOTONIC before the lease check> <pagewire_read_lease>`;
/// - `check <t> <n>`: reads once more, then prints the reads that started after t
///   (count, smallest and first value seen) and the latest start of a read that saw
///   less than n;
/// - `until <n>`: reads until it sees n (at most 20 s);
/// - end of input: prints its counters and exits.
#[test]
#[ignore = "child process of the vanishing reader tests"]
fn vanishing_reader() {
    let Some(url) = child_env("LR_URL") else {
        return;
    };
    let consistency = child_env("LR_CONSISTENCY");
    let db = open_reader(&url, "gone.db", consistency.as_deref());
    let strong = consistency.is_none();
    let (tx, commands) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let read = |log: &mut Vec<(u64, i64)>| -> i64 {
        let start = mono_ns();
        let v: i64 = db
            .query_row("select coalesce(max(i), 0) from t", [], |r| r.get(0))
            .expect("read");
        log.push((start, v));
        v
    };
    let mut log = Vec::new();
    loop {
        read(&mut log);
        match commands.try_recv() {
            Ok(cmd) if cmd == "ready" => {
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let before = stat(&db, "local_reads");
                    read(&mut log);
                    let t = mono_ns();
                    let lease = pragma_text(&db, "pagewire_read_lease");
                    let local = stat(&db, "local_reads") > before;
                    if local && (!strong || lease.starts_with("lease=held")) {
                        println!("@@ready t={t} {lease} local={}", stat(&db, "local_reads"));
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no local reads within 20 s: {lease}"
                    );
                    thread::sleep(Duration::from_millis(2));
                }
            }
            Ok(cmd) if cmd.starts_with("check ") => {
                let mut args = cmd
                    .split_whitespace()
                    .skip(1)
                    .map(|a| a.parse::<u64>().expect("number"));
                let (after, n) = (args.next().expect("t"), args.next().expect("n"));
                read(&mut log);
                let later: Vec<i64> = log
                    .iter()
                    .filter(|(t, _)| *t > after)
                    .map(|(_, v)| *v)
                    .collect();
                let min = later.iter().min().copied().unwrap_or(-1);
                let old_start = log
                    .iter()
                    .filter(|(_, v)| *v < n as i64)
                    .map(|(t, _)| *t)
                    .max()
                    .unwrap_or(0);
                println!(
                    "@@check n={n} after={} min={min} first={} old_start={old_start} {} local={} begin_read={} watch={}",
                    later.len(),
                    later.first().copied().unwrap_or(-1),
                    pragma_text(&db, "pagewire_read_lease"),
                    stat(&db, "local_reads"),
                    stat(&db, "begin_read"),
                    stat(&db, "watch"),
                );
            }
            Ok(cmd) if cmd.starts_with("until ") => {
                let n: i64 = cmd[6..].trim().parse().expect("n");
                let started = Instant::now();
                while read(&mut log) < n && started.elapsed() < Duration::from_secs(20) {
                    thread::sleep(Duration::from_millis(2));
                }
                println!(
                    "@@until n={n} v={} waited_ms={}",
                    log.last().expect("read").1,
                    started.elapsed().as_millis()
                );
            }
            Ok(cmd) => panic!("unknown command {cmd:?}"),
            Err(mpsc::TryRecvError::Empty) => thread::sleep(Duration::from_millis(2)),
            Err(mpsc::TryRecvError::Disconnected) => break,
        }
        // Keep the log bounded: only recent reads matter to `check`.
        if log.len() > 100_000 {
            log.drain(..50_000);
        }
    }
    println!(
        "@@bye local={} begin_read={} watch={} {}",
        stat(&db, "local_reads"),
        stat(&db, "begin_read"),
        stat(&db, "watch"),
        pragma_text(&db, "pagewire_read_lease")
    );
}

/// Commits `count` more rows after `next`, each timed; returns the durations.
fn commit_rows(db: &Connection, next: &mut i64, count: usize) -> Vec<Duration> {
    (0..count)
        .map(|_| {
            *next += 1;
            timed_commit(db, "insert into t values (?1)", *next).0
        })
        .collect()
}

/// Commits nobody holds back are fast: every one well under a lease length, and
/// nearly all under [`FAST`] (a loaded machine may delay one or two).
fn assert_fast(what: &str, took: &[Duration]) {
    let slow = took.iter().filter(|d| **d >= FAST).count();
    let worst = took.iter().max().copied().unwrap_or_default();
    assert!(
        slow <= took.len() / 10 && worst < Duration::from_millis(400),
        "{what}: {slow} of {} commits took {FAST:?} or more (worst {worst:?}): {took:?}",
        took.len()
    );
}

/// The commit after a lease holder vanished: it stalls at most about one lease
/// length, and no less than the lease the reader held at `held_at` (CLOCK_MONOTONIC)
/// still had to run on the server.
fn stalled_commit(db: &Connection, next: &mut i64, held_at: u64, what: &str) -> Duration {
    *next += 1;
    let (took, start, end) = timed_commit(db, "insert into t values (?1)", *next);
    assert!(
        took < MAX_STALL,
        "{what}: the commit stalled {took:?} (lease {TTL:?})"
    );
    // The reader held its lease at held_at, so the server honours it until at least
    // held_at + CLIENT_MARGIN: the commit could not be published before.
    let honoured_until = held_at + CLIENT_MARGIN.as_nanos() as u64;
    assert!(
        end >= honoured_until,
        "{what}: the commit returned {:.1} ms before the vanished reader's lease could have run out \
         (lease seen held at {:.1} ms, commit {:.1}..{:.1} ms)",
        ms(honoured_until - end),
        ms(held_at),
        ms(start),
        ms(end)
    );
    eprintln!(
        "{what}: commit stalled {took:?} (began {:.0} ms after the lease was last seen held)",
        ms(start.saturating_sub(held_at))
    );
    took
}

fn setup_rows(server: &Server) -> (Connection, i64) {
    let db = open(server, "gone.db");
    db.execute_batch("create table t(i integer primary key); insert into t values (1)")
        .expect("schema");
    (db, 1)
}

#[test]
fn a_vanished_reader_holds_commits_at_most_one_lease() {
    let server = server();
    let (db, mut next) = setup_rows(&server);
    let mut reader = Kid::spawn("vanishing_reader", &[("LR_URL", server.url.as_str())]);
    reader.send("ready");
    let ready = reader.expect("ready ", Duration::from_secs(30));
    assert!(ready.contains("lease=held"), "{ready}");

    // Phase 1: stopped while holding its lease, at a random point of its renewal
    // cycle.
    let mut rng = rand::rng();
    thread::sleep(Duration::from_millis(rng.random_range(0..400)));
    reader.stop();
    let stop_stall = stalled_commit(&db, &mut next, field(&ready, "t"), "reader stopped");
    let after_stop = commit_rows(&db, &mut next, 20);
    assert_fast("after the stopped reader's lease ran out", &after_stop);
    // Resumed: its lease lapsed while it was stopped; it must notice and read the
    // newest value, never one from before it stopped.
    let committed_at = mono_ns();
    reader.send(&format!("check {committed_at} {next}"));
    reader.cont();
    let check = reader.expect("check ", Duration::from_secs(30));
    assert!(field(&check, "after") >= 1, "{check}");
    assert_eq!(
        text(&check, "min").parse::<i64>().expect("min"),
        next,
        "a stale read after SIGCONT: {check}"
    );
    // And it gets a lease again (the commits now wait for its acknowledgements).
    reader.send("ready");
    let ready = reader.expect("ready ", Duration::from_secs(30));
    assert!(ready.contains("lease=held"), "{ready}");
    let resumed = commit_rows(&db, &mut next, 5);
    reader.send("ready");
    let ready = reader.expect("ready ", Duration::from_secs(30));
    assert!(ready.contains("lease=held"), "{ready}");

    // Phase 2: killed while holding its lease (its stream breaks; the server keeps
    // the lease as a ghost until it runs out).
    thread::sleep(Duration::from_millis(rng.random_range(0..400)));
    reader.kill();
    let kill_stall = stalled_commit(&db, &mut next, field(&ready, "t"), "reader killed");
    let after_kill = commit_rows(&db, &mut next, 20);
    assert_fast("after the killed reader's lease ran out", &after_kill);

    // Every commit is there.
    assert_eq!(count(&db, "t"), next);
    let (lo, hi): (i64, i64) = db
        .query_row("select min(i), max(i) from t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("range");
    assert_eq!((lo, hi), (1, next));
    assert_eq!(integrity(&db), "ok");
    let fresh = open(&server, "gone.db");
    assert_eq!(count(&fresh, "t"), next);
    eprintln!(
        "vanished reader: stall {stop_stall:?} when stopped, {kill_stall:?} when killed (TTL {TTL:?}); \
         then commits of {:?} max / {:?} max; resumed reader: {check}; while it held a lease again: {resumed:?}",
        after_stop.iter().max(),
        after_kill.iter().max()
    );
}

#[test]
fn a_partitioned_reader_stops_serving_before_its_lease_ends_on_the_server() {
    let server = server();
    let (db, mut next) = setup_rows(&server);
    // The reader reaches the server through a proxy that can hold every byte (its
    // connection stays open: neither side notices anything but silence).
    let proxy = DelayProxy::undelayed(&server.addr).expect("proxy");
    let mut reader = Kid::spawn("vanishing_reader", &[("LR_URL", proxy.url.as_str())]);
    reader.send("ready");
    let ready = reader.expect("ready ", Duration::from_secs(30));
    assert!(ready.contains("lease=held"), "{ready}");
    let mut rng = rand::rng();
    thread::sleep(Duration::from_millis(rng.random_range(0..400)));
    proxy.freeze();
    // The reader goes on reading: from its lease until that ends (before it ends on
    // the server), then it asks the server and waits. The commit waits for the
    // lease to run out on the server, since no acknowledgement can come.
    let stall = stalled_commit(&db, &mut next, field(&ready, "t"), "reader partitioned");
    let first = (next, mono_ns());
    let after = commit_rows(&db, &mut next, 10);
    assert_fast("after the partitioned reader's lease ran out", &after);
    let last = (next, mono_ns());
    thread::sleep(Duration::from_millis(300));
    // Answered once its blocked read gets through.
    reader.send(&format!("check {} {}", first.1, first.0));
    reader.send(&format!("check {} {}", last.1, last.0));
    proxy.thaw();
    let mut gaps = Vec::new();
    for (n, t) in [first, last] {
        let check = reader.expect("check ", Duration::from_secs(30));
        assert_eq!(field(&check, "n") as i64, n, "{check}");
        assert!(field(&check, "after") >= 1, "{check}");
        let min = text(&check, "min").parse::<i64>().expect("min");
        assert!(
            (n..=last.0).contains(&min),
            "a stale read after commit {n} returned: {check}"
        );
        let old_start = field(&check, "old_start");
        assert!(old_start < t, "{check}");
        gaps.push(ms(t - old_start));
    }
    // Healed, it holds a lease again and commits wait for it again.
    reader.send("ready");
    let ready = reader.expect("ready ", Duration::from_secs(30));
    assert!(ready.contains("lease=held"), "{ready}");
    let healed = commit_rows(&db, &mut next, 5);
    reader.send(&format!("until {next}"));
    let until = reader.expect("until ", Duration::from_secs(30));
    assert_eq!(
        text(&until, "v").parse::<i64>().expect("v"),
        next,
        "{until}"
    );
    let bye = reader.report("bye ");
    assert_eq!(count(&db, "t"), next);
    eprintln!(
        "partitioned reader: commit stalled {stall:?}; its last read of the old value began {:.0} ms before \
         the commit returned; commits after: {:?} max; healed: {healed:?}; {bye}",
        gaps[0],
        after.iter().max()
    );
}

#[test]
fn a_stopped_snapshot_reader_holds_nothing_back() {
    let server = server();
    let (db, mut next) = setup_rows(&server);
    let env = [
        ("LR_URL", server.url.as_str()),
        ("LR_CONSISTENCY", "snapshot"),
    ];
    let mut reader = Kid::spawn("vanishing_reader", &env);
    reader.send("ready");
    let ready = reader.expect("ready ", Duration::from_secs(30));
    // It serves from its Watch stream, with no lease.
    assert!(
        ready.starts_with("ready t=") && ready.contains("lease=none"),
        "{ready}"
    );
    assert!(field(&ready, "local") > 0, "{ready}");
    // Commits while it is up do not wait for it either.
    let running = commit_rows(&db, &mut next, 10);
    reader.stop();
    let stopped = commit_rows(&db, &mut next, 20);
    assert_fast("snapshot reader stopped", &stopped);
    // Resumed, it catches up.
    reader.cont();
    reader.send(&format!("until {next}"));
    let caught_up = reader.expect("until ", Duration::from_secs(30));
    assert_eq!(
        text(&caught_up, "v").parse::<i64>().expect("v"),
        next,
        "{caught_up}"
    );
    let bye = reader.report("bye ");
    assert!(field(&bye, "watch") >= 1, "{bye}");
    assert_eq!(count(&db, "t"), next);
    eprintln!(
        "snapshot reader: commits took {:?} max while it ran, {:?} max while it was stopped ({stopped:?}); {caught_up}; {bye}",
        running.iter().max(),
        stopped.iter().max()
    );
}

// ---------------------------------------------------------------------------
// 5. Server metrics.

#[test]
fn metrics_count_leases_commits_and_invalidation_waits() {
    let server = server();
    let mut admin = Admin::connect(&server.url);
    let fresh = admin.metrics();
    assert_eq!(
        (fresh.read_leases_held, fresh.watchers, fresh.commits),
        (0, 0, 0),
        "{fresh:?}"
    );

    let (db, mut next) = setup_rows(&server);
    let mut reader = Kid::spawn("vanishing_reader", &[("LR_URL", server.url.as_str())]);
    reader.send("ready");
    let ready = reader.expect("ready ", Duration::from_secs(30));
    assert!(ready.contains("lease=held"), "{ready}");
    commit_rows(&db, &mut next, 20);
    let commits = stat(&db, "commit");
    // The writer's connection goes (and its own Watch stream with it, if it had one).
    drop(db);

    // The reader renews its lease every third of a TTL; on a loaded machine one
    // renewal may come late, so look a few times.
    let mut m = admin.metrics();
    for _ in 0..20 {
        if m.read_leases_held >= 1 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
        m = admin.metrics();
    }
    assert!(m.read_leases_held >= 1, "the reader holds a lease: {m:?}");
    assert!(m.watchers >= 1, "{m:?}");
    assert_eq!(
        m.commits, commits,
        "every commit went through a round: {m:?}"
    );
    let h = m.invalidation_wait.clone().expect("histogram");
    assert_eq!(
        h.count, m.commits,
        "one invalidation wait per commit: {h:?}"
    );
    assert_eq!(h.counts.len(), h.bounds_us.len() + 1, "{h:?}");
    assert_eq!(h.counts.iter().sum::<u64>(), h.count, "{h:?}");
    assert!(h.bounds_us.windows(2).all(|w| w[0] < w[1]), "{h:?}");
    // The reader had to acknowledge every commit after it joined: some waits were not
    // zero.
    assert!(h.sum_us > 0, "{h:?}");

    // A reader that closes gives its lease back and ends its stream at once.
    let bye = reader.report("bye ");
    let mut last = admin.metrics();
    let gone = wait_for(Duration::from_secs(5), || {
        last = admin.metrics();
        last.read_leases_held == 0 && last.watchers == 0
    });
    assert!(
        gone,
        "the closed reader's lease and stream are gone: {last:?}"
    );
    assert_eq!(last.commits, commits, "{last:?}");
    eprintln!("metrics: {m:?}; reader: {bye}");
}

// ---------------------------------------------------------------------------
// 6. A reader that keeps reading keeps its stream and lease.

#[test]
fn a_steady_reader_keeps_its_watch_stream_and_lease() {
    let server = server();
    drop(setup_rows(&server));
    // No commits: every read after the first can be served under the lease. The
    // idle limit (which also ends an unused Watch stream) is short, to show it is
    // not reached while reads go on.
    let reader = try_open_uri(&server.url, "gone.db", "&mode=ro&lease_idle=1s", ro_flags());
    let read = || {
        reader
            .query_row("select count(*) from t", [], |r| r.get::<_, i64>(0))
            .expect("read")
    };
    let held = wait_for(Duration::from_secs(15), || {
        read();
        pragma_text(&reader, "pagewire_read_lease").starts_with("lease=held")
    });
    assert!(held, "{}", pragma_text(&reader, "pagewire_read_lease"));
    let snapshot = || {
        (
            stat(&reader, "watch"),
            stat(&reader, "begin_read"),
            stat(&reader, "local_reads"),
        )
    };
    let (watch, begin_read, local) = snapshot();
    let started = Instant::now();
    let mut reads = 0u64;
    while started.elapsed() < Duration::from_millis(3500) {
        read();
        reads += 1;
        thread::sleep(Duration::from_millis(1));
    }
    let (watch2, begin_read2, local2) = snapshot();
    let lease = pragma_text(&reader, "pagewire_read_lease");
    let summary = format!(
        "{reads} reads in 3.5 s: {} Watch streams opened, {} BeginReads, {} local; {lease}",
        watch2 - watch,
        begin_read2 - begin_read,
        local2 - local
    );
    assert_eq!(
        watch2, watch,
        "the stream was ended and opened again while reads went on: {summary}"
    );
    // A renewal delayed on a loaded machine may cost a BeginRead or two, not more.
    assert!(local2 - local >= reads * 9 / 10, "{summary}");
    assert!(lease.starts_with("lease=held"), "{summary}");
    eprintln!("steady reader: {summary}");
}
