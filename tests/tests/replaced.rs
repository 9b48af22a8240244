//! A database replaced under a process that keeps it open (issue 12): the memory server
//! restarted on the same port, an Admin delete and re-create, a PostgreSQL dump restored.
//! Process P (Debian's Python, a long-lived connection, idle past `lease_idle`) built the
//! old database to version 7; process Q builds the new one to version 7 too. P must
//! never return old rows nor change the new database: every call of its connection
//! fails (saying the database was replaced) until it reopens, and a fresh open works at
//! once beside it. A reader pinned at the old version gets an error from ReadPages,
//! never the new database's pages.

use std::{process::Command, time::Duration};

use pagewire_tests::{
    Server,
    admin::Admin,
    postgres::TempPostgres,
    python::{Driver, python},
    wait_for,
};

/// A long-lived Python process (the VFS loaded, `url` its server), its connections
/// driven one statement at a time.
fn start(python: &str, url: &str) -> Driver {
    Driver::start(
        python,
        &[("PAGEWIRE_URL", url), ("PAGEWIRE_RETRY_TIMEOUT", "3s")],
    )
}

/// P's database: table `p`, built to version 7 (one version per statement), then idle.
const OLD: &str = "file:inc.db?lease_idle=100ms";

fn build_old(p: &mut Driver, versions: std::ops::RangeInclusive<u64>) {
    for v in versions {
        let sql = if v == 1 {
            "create table p(x)".to_owned()
        } else {
            format!("insert into p values ('old {v}')")
        };
        p.ok(1, &sql);
        assert_eq!(
            p.ok(1, "pragma pagewire_version"),
            format!("[('{v}',)]"),
            "P at version {v}"
        );
    }
}

/// Q (another process) makes the new database: table `q`, to version `to`.
fn build_new(python: &str, url: &str, from: u64, to: u64) {
    let mut q = start(python, url);
    q.connect(1, "file:inc.db");
    for v in from..=to {
        let sql = if v == 1 {
            "create table q(y)".to_owned()
        } else {
            format!("insert into q values ('new {v}')")
        };
        q.ok(1, &sql);
    }
    assert_eq!(
        q.ok(1, "pragma pagewire_version"),
        format!("[('{to}',)]"),
        "Q at version {to}"
    );
}

/// P's old connection fails on every call, saying why, and never shows old rows;
/// a fresh open in P's process reads the new database; so does a fresh process.
fn assert_replaced(p: &mut Driver, python: &str, url: &str, new_rows: usize) {
    assert_old_connection_fails(p);
    let stderr = p.stderr_text();
    assert!(
        stderr.contains("was replaced"),
        "P's log says why: {stderr}"
    );
    p.connect(2, "file:inc.db");
    assert_eq!(
        p.ok(2, "select count(*) from q"),
        format!("[({new_rows},)]"),
        "a fresh open in P's process"
    );
    assert_eq!(p.ok(2, "pragma integrity_check"), "[('ok',)]");
    assert!(
        p.sql(2, "select count(*) from p").is_err(),
        "the new database has no table p"
    );
    assert!(
        p.sql(1, "select count(*) from q").is_err(),
        "the old connection still fails"
    );
    let mut fresh = start(python, url);
    fresh.connect(1, "file:inc.db");
    assert_eq!(
        fresh.ok(1, "select count(*) from q"),
        format!("[({new_rows},)]"),
        "a fresh process"
    );
    assert_eq!(fresh.ok(1, "pragma integrity_check"), "[('ok',)]");
    let tables = fresh.ok(1, "select group_concat(name) from sqlite_schema");
    assert_eq!(tables, "[('q',)]", "P changed nothing");
}

/// A reader (another process, no page cache) in a read transaction pinned at P's
/// version 7, which has read only page 1 so far: table p's pages are still to fetch.
fn pinned_reader(python: &str, url: &str) -> Driver {
    let mut r = start(python, url);
    r.connect(1, "file:inc.db?mode=ro&cache_size=0&preload=0");
    r.ok(1, "begin");
    assert_eq!(r.ok(1, "pragma pagewire_version"), "[('7',)]");
    r.ok(1, "select count(*) from sqlite_schema");
    r
}

/// Its ReadPages at the old version gets an error, never the new database's pages.
fn assert_pinned_reader_fails(r: &mut Driver) {
    let pinned = r.sql(1, "select count(*), sum(length(x)) from p");
    assert!(
        pinned.is_err(),
        "the pinned reader read the new database's pages: {pinned:?}"
    );
}

/// Every call of P's old connection fails: an I/O error (or, for a table only the new
/// database has, SQLite's "no such table" from its cached schema); never rows.
fn assert_old_connection_fails(p: &mut Driver) {
    for sql in [
        "select count(*) from p",
        "select count(*) from q",
        "insert into p values ('lost')",
        "select * from p",
    ] {
        let err = p
            .sql(1, sql)
            .expect_err(&format!("P's old connection answered {sql}"));
        let fine = err.contains("disk I/O error")
            || sql.contains(" q") && err.contains("no such table: q");
        assert!(fine, "{sql}: {err}");
    }
}

/// Waits until P, idle, has given its write lease back (`lease_idle` is 100 ms; the
/// heartbeat notices within a third of the lease TTL).
fn idle(url: &str) {
    let mut admin = Admin::connect(url);
    let released = wait_for(Duration::from_secs(10), || {
        !admin.database_info("inc.db").lease_held
    });
    assert!(released, "P kept its write lease while idle");
    // And its Watch stream (read lease) goes idle too.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn replaced_by_a_memory_server_restart() {
    let Some(python) = python() else { return };
    let first = Server::start_with(&["--store", "memory"]).expect("server");
    let mut p = start(python, &first.url);
    p.connect(1, OLD);
    build_old(&mut p, 1..=7);
    let mut r = pinned_reader(python, &first.url);
    idle(&first.url);
    let (url, addr) = (first.url.clone(), first.addr.clone());
    drop(first);
    let _second =
        Server::start_at(&addr, &["--store", "memory"]).expect("server again on the same port");
    build_new(python, &url, 1, 7);
    assert_pinned_reader_fails(&mut r);
    assert_replaced(&mut p, python, &url, 6);
}

#[test]
fn replaced_by_admin_delete_and_create() {
    let Some(python) = python() else { return };
    let server = Server::start().expect("server");
    let mut p = start(python, &server.url);
    p.connect(1, OLD);
    build_old(&mut p, 1..=7);
    let mut r = pinned_reader(python, &server.url);
    idle(&server.url);
    let mut admin = Admin::connect(&server.url);
    admin.delete_database("inc.db");
    admin.create_database("inc.db");
    build_new(python, &server.url, 1, 7);
    assert_pinned_reader_fails(&mut r);
    assert_replaced(&mut p, python, &server.url, 6);
}

/// The store's database restored from a dump taken at version 3, with the servers
/// stopped (the documented way: a running server keeps state about the databases it
/// serves). The incarnation is the restored one, so only the version tags tell P's
/// versions 4-7 from Q's.
#[test]
fn replaced_by_a_postgres_restore() {
    let Some(python) = python() else { return };
    let Some(pg) = TempPostgres::start_or_skip("replaced_by_a_postgres_restore") else {
        return;
    };
    let bin = pagewire_tests::postgres::find_bin_dir().expect("PostgreSQL binaries");
    let first = Server::start_with(&["--store", pg.url()]).expect("server");
    let (url, addr) = (first.url.clone(), first.addr.clone());
    let mut p = start(python, &url);
    p.connect(1, OLD);
    build_old(&mut p, 1..=3);
    // A dump taken while P held the write lease would hold it too (live until it runs
    // out); this one is taken with P idle.
    idle(&url);
    let dump = tempfile::NamedTempFile::new().expect("dump file");
    let dumped = Command::new(bin.join("pg_dump"))
        .args(["-Fc", "-n", "pagewire", "-f"])
        .arg(dump.path())
        .arg(pg.url())
        .status()
        .expect("pg_dump");
    assert!(dumped.success(), "pg_dump");
    build_old_more(&mut p);
    let mut r = pinned_reader(python, &url);
    idle(&url);
    drop(first);
    let restored = Command::new(bin.join("pg_restore"))
        .args(["--clean", "--if-exists", "--single-transaction", "-d"])
        .arg(pg.url())
        .arg(dump.path())
        .status()
        .expect("pg_restore");
    assert!(restored.success(), "pg_restore");
    let _second = Server::start_at(&addr, &["--store", pg.url()]).expect("server again");
    assert_restored_to_3(python, &url, &mut p, &mut r);
}

/// After a restore to version 3 of P's history: Q writes versions 4-7 of its own; P's
/// connection and its pinned reader fail saying the database was replaced; a fresh
/// open sees the restored rows and Q's.
fn assert_restored_to_3(python: &str, url: &str, p: &mut Driver, r: &mut Driver) {
    // Back at version 3 (table p, two rows); Q writes versions 4-7 of its own.
    let mut q = start(python, url);
    q.connect(1, "file:inc.db");
    assert_eq!(
        q.ok(1, "pragma pagewire_version"),
        "[('3',)]",
        "restored to version 3"
    );
    q.ok(1, "create table q(y)");
    for v in 5..=7 {
        q.ok(1, &format!("insert into q values ('new {v}')"));
    }
    assert_eq!(q.ok(1, "pragma pagewire_version"), "[('7',)]");
    drop(q);
    assert_pinned_reader_fails(r);
    assert_old_connection_fails(p);
    assert!(
        p.stderr_text().contains("was replaced"),
        "{}",
        p.stderr_text()
    );
    let mut fresh = start(python, url);
    fresh.connect(1, "file:inc.db");
    assert_eq!(
        fresh.ok(1, "select count(*) from p"),
        "[(2,)]",
        "the restored rows"
    );
    assert_eq!(fresh.ok(1, "select count(*) from q"), "[(3,)]", "Q's rows");
    assert_eq!(fresh.ok(1, "pragma integrity_check"), "[('ok',)]");
    assert_eq!(
        fresh.ok(1, "select count(*) from p where x = 'lost'"),
        "[(0,)]",
        "P changed nothing"
    );
}

/// P's versions 4-7, with rows big enough that table p spans many pages (so the pinned
/// reader has pages left to fetch).
fn build_old_more(p: &mut Driver) {
    for v in 4..=7 {
        let rows = "with recursive n(i) as (select 1 union all select i + 1 from n where i < 20)";
        p.ok(
            1,
            &format!("{rows} insert into p select 'old {v} ' || hex(randomblob(2000)) from n"),
        );
        assert_eq!(p.ok(1, "pragma pagewire_version"), format!("[('{v}',)]"));
    }
}

/// The embedded store's data directory copied with the server stopped (the documented
/// backup) at version 3, and copied back after P went on to version 7: as with a
/// PostgreSQL restore, the incarnation is the restored one and the version tags tell.
#[test]
fn replaced_by_an_embedded_store_backup_restore() {
    let Some(python) = python() else { return };
    let root = tempfile::tempdir().expect("temp dir");
    let (data, backup) = (root.path().join("data"), root.path().join("backup"));
    let data_flag = data.display().to_string();
    let flags = ["--data-dir", data_flag.as_str()];
    let first = Server::start_with(&flags).expect("server");
    let (url, addr) = (first.url.clone(), first.addr.clone());
    let mut p = start(python, &url);
    p.connect(1, OLD);
    build_old(&mut p, 1..=3);
    idle(&url);
    drop(first);
    copy_dir(&data, &backup);
    let again = Server::start_at(&addr, &flags).expect("server again");
    build_old_more(&mut p);
    let mut r = pinned_reader(python, &url);
    idle(&url);
    drop(again);
    std::fs::remove_dir_all(&data).expect("remove the data directory");
    copy_dir(&backup, &data);
    let _restored = Server::start_at(&addr, &flags).expect("server on the restored copy");
    assert_restored_to_3(python, &url, &mut p, &mut r);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let copied = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        copied.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}
