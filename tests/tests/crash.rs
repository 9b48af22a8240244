//! Crash atomicity: a transaction's pages all appear at one version or none do,
//! whether the client process dies at any instant or its connection to the
//! server is cut in the middle of a commit.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use common::*;
use pagewire_tests::{Server, child_test, proxy::Proxy};
use rand::Rng;

const ROWS: i64 = 2000;

/// Every row of `t` has the same `v` in every committed version: a mixed state
/// means a torn transaction.
fn setup(url: &str, name: &str) {
    let db = open_url(url, name);
    db.execute_batch("create table t(id integer primary key, v int, pad blob)")
        .expect("create");
    db.execute(
        &format!("insert into t(v, pad) select 0, randomblob(400) from generate_series(1, {ROWS})"),
        [],
    )
    .or_else(|_| {
        // generate_series is an extension in some builds: fall back to a CTE.
        db.execute(
            &format!(
                "with recursive s(i) as (select 1 union all select i + 1 from s where i < {ROWS}) \
             insert into t(v, pad) select 0, randomblob(400) from s"
            ),
            [],
        )
    })
    .expect("fill");
}

/// (min v, max v, rows, integrity) as a fresh client sees them.
fn observe(url: &str, name: &str) -> (i64, i64, i64, String) {
    let db = open_url(url, name);
    let (lo, hi, n) = db
        .query_row("select min(v), max(v), count(*) from t", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("observe");
    (lo, hi, n, integrity(&db))
}

/// Run by the crash test as a separate process: commit big transactions in a
/// loop, printing each committed value, until killed.
#[test]
#[ignore = "child process of kill_client_at_random_points"]
fn crash_child() {
    let (Ok(url), Ok(name), Ok(setting)) = (
        std::env::var("CHILD_URL"),
        std::env::var("CHILD_DB"),
        std::env::var("CHILD_SETTING"),
    ) else {
        return;
    };
    let db = open_url(&url, &name);
    db.execute_batch(&format!("pragma {setting}"))
        .expect("setting");
    for v in 1.. {
        db.execute_batch("begin; update t set v = v + 1, pad = randomblob(400); commit")
            .expect("commit");
        println!("committed {v}");
    }
}

#[test]
fn kill_client_at_random_points() {
    let server = Server::start().expect("server");
    let mut rng = rand::rng();
    let settings = [
        "journal_mode=delete",
        "journal_mode=truncate",
        "journal_mode=persist",
        "journal_mode=memory",
        "journal_mode=off",
        "synchronous=off",
    ];
    let mut trials = 0;
    let mut mid_commit_kills = 0;
    for setting in settings {
        for trial in 0..6 {
            let name = format!("crash/{}-{trial}.db", setting.replace('=', "-"));
            setup(&server.url, &name);
            let mut child = child_test("crash_child")
                .env("CHILD_URL", &server.url)
                .env("CHILD_DB", &name)
                .env("CHILD_SETTING", setting)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn child");
            let stdout = child.stdout.take().expect("stdout");
            let lines = std::thread::spawn(move || {
                BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    // The first report shares its line with libtest's
                    // "test crash_child ... ".
                    .filter_map(|l| {
                        l.rsplit_once("committed ")
                            .and_then(|(_, v)| v.parse::<i64>().ok())
                    })
                    .last()
            });
            // Let it commit a few times, then kill it at a random instant.
            std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
            child.kill().expect("SIGKILL");
            child.wait().expect("wait");
            let acknowledged = lines.join().expect("reader").unwrap_or(0);
            let (lo, hi, n, ok) = observe(&server.url, &name);
            assert_eq!(ok, "ok", "{name}");
            assert_eq!(n, ROWS, "{name}");
            assert_eq!(lo, hi, "{name}: torn transaction (v from {lo} to {hi})");
            assert!(
                lo >= acknowledged,
                "{name}: acknowledged commit {acknowledged} lost (see {lo})"
            );
            assert!(
                lo <= acknowledged + 1,
                "{name}: {lo} is more than one past {acknowledged}"
            );
            if lo == acknowledged + 1 {
                // Died after the server applied the commit, before it printed.
                mid_commit_kills += 1;
            }
            trials += 1;
        }
    }
    eprintln!("{trials} kills, {mid_commit_kills} between apply and acknowledgement");
}

#[test]
fn connection_cut_mid_commit() {
    let server = Server::start().expect("server");
    let proxy = Proxy::start(&server.addr).expect("proxy");
    let name = "cut.db";
    setup(&proxy.url, name);
    let db = open_url(&proxy.url, name);
    let mut rng = rand::rng();
    let mut expected = 0;
    let (mut cut, mut applied) = (0, 0);
    for _ in 0..25 {
        // A commit of this transaction is ~1 MB on the wire; cut somewhere in it.
        proxy.cut_after(rng.random_range(0..1_200_000));
        let started = Instant::now();
        let result =
            db.execute_batch("begin; update t set v = v + 1, pad = randomblob(400); commit");
        if proxy.has_cut() {
            cut += 1;
        }
        proxy.disarm();
        match result {
            Ok(()) => {
                expected += 1;
                applied += 1;
            }
            Err(e) => panic!(
                "commit failed after a cut (retries should resolve it): {e} after {:?}",
                started.elapsed()
            ),
        }
        let (lo, hi, n, ok) = observe(&server.url, name);
        assert_eq!((ok.as_str(), n), ("ok", ROWS));
        assert_eq!(lo, hi, "torn transaction");
        assert_eq!(lo, expected, "applied exactly once");
    }
    assert!(cut >= 10, "the proxy cut only {cut} of 25 commits");
    eprintln!("{applied} commits, {cut} cut mid-stream and retried");
}
