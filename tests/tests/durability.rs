//! Durability on the PostgreSQL store: a commit that returned survives the server's
//! death. The server runs as a real process (`pagewire-server --store postgres://...`),
//! SQLite runs through the real VFS, the server is killed with SIGKILL and started again
//! on the same PostgreSQL database, and every acknowledged commit must be there, with
//! `PRAGMA integrity_check` ok. Skipped loudly where no PostgreSQL can be had (failed
//! under `CI=true`).

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pagewire_tests::Server;
use pagewire_tests::postgres::TempPostgres;
use rand::Rng;
use rusqlite::Connection;

/// The server on `pg`'s database, with a short lease so a killed writer's lease lapses
/// soon.
fn server_on(pg: &TempPostgres) -> Server {
    Server::start_with(&["--store", pg.url(), "--lease-ttl", "2s"]).expect("start pagewire-server")
}

fn kill_9(server: Server) {
    // SAFETY: kill(2) on the pid of our own child process.
    let killed = unsafe { libc::kill(server.pid(), libc::SIGKILL) };
    assert_eq!(killed, 0, "SIGKILL the server");
    drop(server); // reaps it
}

/// A writer that gives up on a dead server after a second instead of thirty.
fn open_writer(url: &str, name: &str) -> Connection {
    open_with(url, name, "&retry_timeout=1s")
}

/// Every row of `t`, as text.
fn rows(conn: &Connection) -> Vec<(i64, i64, String)> {
    all_rows(conn, "select id, v, hex(pad) from t order by id", |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

fn ledger(conn: &Connection) -> Vec<i64> {
    all_rows(conn, "select i from log order by i", |r| r.get(0))
}

fn create_tables(conn: &Connection) {
    conn.execute_batch(
        "create table t(id integer primary key, v int, pad blob); create table log(i integer primary key)",
    )
    .expect("create tables");
}

/// Transaction `i`: a ledger row, some new rows, an update over old ones; sometimes a
/// delete, once a VACUUM to a new page size (a whole rewrite).
fn transaction(conn: &Connection, i: i64) -> rusqlite::Result<()> {
    let n = 1 + (i * 37) % 120;
    conn.execute_batch(&format!(
        "begin;
         insert into log values ({i});
         with recursive s(k) as (select 1 union all select k + 1 from s where k < {n})
           insert into t(v, pad) select {i}, randomblob(300) from s;
         update t set v = v + 1 where id % 7 = {i} % 7;
         {}
         commit",
        if i % 5 == 0 {
            format!("delete from t where id % 11 = {i} % 11;")
        } else {
            String::new()
        }
    ))
}

#[test]
fn acknowledged_commits_survive_kill_9() {
    let Some(pg) = TempPostgres::start_or_skip("acknowledged_commits_survive_kill_9") else {
        return;
    };
    let server = server_on(&pg);
    let name = "durable/acked.db";
    let conn = open_writer(&server.url, name);
    create_tables(&conn);
    for i in 1..=40 {
        transaction(&conn, i).expect("commit");
        if i == 20 {
            conn.execute_batch("pragma page_size = 8192; vacuum")
                .expect("vacuum to 8 KiB pages");
        }
    }
    let before = rows(&conn);
    kill_9(server);
    drop(conn);
    let server = server_on(&pg);
    let conn = open_writer(&server.url, name);
    assert_eq!(integrity(&conn), "ok");
    assert_eq!(
        ledger(&conn),
        (1..=40).collect::<Vec<_>>(),
        "every acknowledged transaction"
    );
    assert_eq!(rows(&conn), before, "the same rows, byte for byte");
    assert_eq!(pragma_text(&conn, "page_size"), "8192");
    transaction(&conn, 41).expect("the restarted server takes commits");
    assert_eq!(integrity(&conn), "ok");
}

/// Commits in a loop on another thread; returns the transactions that returned OK.
fn commit_until_it_fails(
    url: String,
    name: String,
) -> (thread::JoinHandle<()>, Arc<Mutex<Vec<i64>>>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let record = acked.clone();
    let writer = thread::spawn(move || {
        let conn = open_writer(&url, &name);
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 1.. {
            if Instant::now() > deadline || transaction(&conn, i).is_err() {
                break;
            }
            record.lock().expect("ledger lock").push(i);
        }
    });
    (writer, acked)
}

#[test]
fn kill_9_while_a_client_commits() {
    let Some(pg) = TempPostgres::start_or_skip("kill_9_while_a_client_commits") else {
        return;
    };
    let mut rng = rand::rng();
    for round in 0..3 {
        let server = server_on(&pg);
        let name = format!("durable/loop-{round}.db");
        create_tables(&open_writer(&server.url, &name));
        let (writer, acked) = commit_until_it_fails(server.url.clone(), name.clone());
        thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        kill_9(server);
        writer.join().expect("writer thread");
        let acked = acked.lock().expect("ledger lock").clone();
        assert!(
            !acked.is_empty(),
            "round {round}: nothing committed before the kill"
        );
        let server = server_on(&pg);
        let conn = open_writer(&server.url, &name);
        assert_eq!(integrity(&conn), "ok", "round {round}");
        let found = ledger(&conn);
        let last = acked.len() as i64;
        assert!(
            found == acked || found == (1..=last + 1).collect::<Vec<_>>(),
            "round {round}: acknowledged 1..={last}, found {:?}..{:?} ({} rows)",
            found.first(),
            found.last(),
            found.len()
        );
        eprintln!("round {round}: {last} acknowledged, {} found", found.len());
        transaction(&conn, last + 2).expect("the restarted server takes commits");
    }
}
