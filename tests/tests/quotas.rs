//! Every per-tenant quota, exceeded through the VFS from Debian's Python against a real
//! server process: the documented error (`SQLITE_FULL` for sizes, a refused open for
//! databases), nothing changed, and the tenant goes on once under it again. Quotas
//! come from `[[tenant]]` sections of the tokens file; `Admin.GetUsage` shows them.

use std::time::{Duration, Instant};

use pagewire_proto::v1 as pb;
use pagewire_tests::Server;
use pagewire_tests::admin::with_admin as admin;
use pagewire_tests::python::{self, Driver};

const TOKENS: &str = r#"
[[token]]
token = "acme"
tenant = "acme"
role = "admin"

[[tenant]]
name = "acme"
max_databases = 2
max_database_bytes = "256KiB"
max_commit_bytes = "64KiB"
max_commits_per_second = 5
max_watchers = 1

[[token]]
token = "beta"
tenant = "beta"
role = "admin"

[[tenant]]
name = "beta"
max_stored_bytes = STORED

[[token]]
token = "gamma"
tenant = "gamma"
role = "admin"

[[tenant]]
name = "gamma"
max_pinned_versions = 2
max_pin_age = "1h"

[[token]]
token = "delta"
tenant = "delta"
role = "admin"

[[tenant]]
name = "delta"
max_history_retention = "0s"
"#;

fn usage(url: &str, token: &str) -> pb::Usage {
    admin(url, token, async |c| {
        c.get_usage(pb::GetUsageRequest {})
            .await
            .expect("GetUsage")
            .into_inner()
    })
}

fn tokens(stored: &str) -> String {
    TOKENS.replace("STORED", stored)
}

fn start(dir: &std::path::Path) -> (Server, std::path::PathBuf) {
    let path = dir.join("tokens.toml");
    std::fs::write(&path, tokens("\"1MiB\"")).expect("tokens");
    let p = path.display().to_string();
    (
        Server::start_with(&["--tokens", &p, "--pin-ttl", "2s", "--gc-interval", "300ms"])
            .expect("server"),
        path,
    )
}

const FULL: &str = "database or disk is full";

#[test]
fn size_quotas_are_sqlite_full_and_change_nothing() {
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, tokens_file) = start(dir.path());
    let url = server.url.as_str();
    let mut acme = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", "acme")]);
    acme.open(1, "file:a.db").expect("open");
    acme.ok(1, "create table t(x)");

    // max_commit_bytes = 64KiB: one transaction of ~200 KB is refused whole.
    let err = acme
        .sql(
            1,
            "insert into t select randomblob(50000) from (values (1),(2),(3),(4))",
        )
        .expect_err("over max_commit_bytes");
    assert!(err.contains(FULL), "{err}");
    assert_eq!(acme.ok(1, "select count(*) from t"), "[(0,)]");
    acme.ok(1, "insert into t values (randomblob(30000))");

    // max_database_bytes = 256KiB: growth past it is refused; deleting still works.
    let mut rows = 1;
    let err = loop {
        match acme.sql(1, "insert into t values (randomblob(30000))") {
            Ok(_) => rows += 1,
            Err(e) => break e,
        }
        assert!(rows < 20, "the database-size quota never refused");
    };
    assert!(err.contains(FULL), "{err}");
    assert_eq!(acme.ok(1, "select count(*) from t"), format!("[({rows},)]"));
    for rowid in 2..=rows {
        acme.ok(1, &format!("delete from t where rowid = {rowid}"));
    }
    acme.ok(1, "insert into t values (randomblob(30000))");
    assert_eq!(acme.ok(1, "select count(*) from t"), "[(2,)]");
    let log = acme.stderr_text();
    assert!(
        log.contains("quota max_database_bytes") && log.contains("quota max_commit_bytes"),
        "{log}"
    );

    // max_databases = 2: a third is refused at open; after a delete it can be made.
    acme.open(2, "file:b.db").expect("second database");
    let err = acme.open(3, "file:c.db").expect_err("third database");
    assert!(err.contains("unable to open"), "{err}");
    assert!(
        acme.stderr_text().contains("max_databases"),
        "{}",
        acme.stderr_text()
    );
    let u = usage(url, "acme");
    assert_eq!(u.databases, 2);
    assert_eq!(u.quotas.map(|q| q.max_databases), Some(2));
    admin(url, "acme", async |c| {
        c.delete_database(pb::DeleteDatabaseRequest {
            name: "b.db".into(),
        })
        .await
        .expect("delete")
    });
    acme.open(4, "file:c.db").expect("room again");

    // max_stored_bytes = 1MiB (beta): history counts; raising the quota (SIGHUP) lets
    // the tenant go on.
    let mut beta = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", "beta")]);
    beta.open(1, "file:s.db").expect("open");
    beta.ok(1, "create table t(x)");
    let mut refused = None;
    for i in 0..40 {
        match beta.sql(1, "insert into t values (randomblob(60000))") {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (rows, err) = refused.expect("the stored-bytes quota ends the inserts");
    assert!(err.contains(FULL), "{err}");
    assert!(
        beta.stderr_text().contains("max_stored_bytes"),
        "{}",
        beta.stderr_text()
    );
    assert_eq!(beta.ok(1, "select count(*) from t"), format!("[({rows},)]"));
    std::fs::write(&tokens_file, tokens("\"64MiB\"")).expect("tokens");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGHUP) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    beta.ok(1, "insert into t values (randomblob(60000))");
    assert_eq!(
        beta.ok(1, "select count(*) from t"),
        format!("[({},)]", rows + 1)
    );
}

#[test]
fn the_commit_rate_waits_instead_of_failing_and_watchers_are_capped() {
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _tokens) = start(dir.path());
    let url = server.url.as_str();
    let mut acme = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", "acme")]);
    acme.open(1, "file:r.db").expect("open");
    acme.ok(1, "create table t(x)");
    // max_commits_per_second = 5: 20 commits all succeed, at about that rate.
    let started = Instant::now();
    for i in 0..20 {
        acme.ok(1, &format!("insert into t values ({i})"));
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "20 commits at 5/s took {took:?}"
    );
    assert_eq!(acme.ok(1, "select count(*) from t"), "[(20,)]");

    // max_watchers = 1: two readers read on; only one holds a Watch stream.
    let mut r1 = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", "acme")]);
    let mut r2 = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", "acme")]);
    r1.open(1, "file:r.db?mode=ro").expect("reader 1");
    r2.open(1, "file:r.db?mode=ro").expect("reader 2");
    for _ in 0..5 {
        assert_eq!(r1.ok(1, "select count(*) from t"), "[(20,)]");
        assert_eq!(r2.ok(1, "select count(*) from t"), "[(20,)]");
        std::thread::sleep(Duration::from_millis(100));
    }
    let u = usage(url, "acme");
    assert_eq!(
        u.watchers, 1,
        "one reader follows on Watch, the other asks the server: {u:?}"
    );
}

#[test]
fn the_memory_store_refuses_commits_past_max_memory() {
    let Some(py) = python::python() else { return };
    let server =
        Server::start_with(&["--store", "memory", "--max-memory", "2MiB"]).expect("server");
    let mut c = Driver::start(py, &[("PAGEWIRE_URL", server.url.as_str())]);
    c.open(1, "file:m.db").expect("open");
    c.ok(1, "create table t(x)");
    let mut refused = None;
    for i in 0..100 {
        if let Err(e) = c.sql(1, "insert into t values (randomblob(100000))") {
            refused = Some((i, e));
            break;
        }
    }
    let (rows, err) = refused.expect("--max-memory ends the inserts");
    assert!(err.contains(FULL), "{err}");
    assert!(
        c.stderr_text().contains("--max-memory"),
        "{}",
        c.stderr_text()
    );
    assert_eq!(c.ok(1, "select count(*) from t"), format!("[({rows},)]"));
    // A smaller commit still fits.
    c.ok(1, "insert into t values (1)");
}

#[test]
fn time_travel_pins_are_capped_and_free_again_when_they_run_out() {
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _tokens) = start(dir.path());
    let url = server.url.as_str();
    let mut w = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", "gamma")]);
    w.open(1, "file:h.db").expect("open");
    w.ok(1, "create table t(x)");
    for i in 0..4 {
        w.ok(1, &format!("insert into t values ({i})"));
    }
    // max_pinned_versions = 2: two past versions read at once, a third refused.
    let mut r = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", "gamma")]);
    r.open(1, "file:h.db?as_of_version=2").expect("version 2");
    r.open(2, "file:h.db?as_of_version=3").expect("version 3");
    let err = r
        .open(3, "file:h.db?as_of_version=4")
        .expect_err("a third pinned version");
    assert!(!err.is_empty());
    assert!(
        r.stderr_text().contains("max_pinned_versions"),
        "{}",
        r.stderr_text()
    );
    // The newest version is never counted.
    w.ok(1, "select count(*) from t");
    // Once the pins run out (--pin-ttl 2s), the tenant may pin again.
    std::thread::sleep(Duration::from_millis(2500));
    let mut again = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", "gamma")]);
    again
        .open(1, "file:h.db?as_of_version=4")
        .expect("room again");
    assert_eq!(again.ok(1, "select count(*) from t"), "[(3,)]");
    let q = usage(url, "gamma")
        .quotas
        .map(|q| (q.max_pinned_versions, q.max_pin_age_ms));
    assert_eq!(q, Some((2, 3_600_000)));
}

#[test]
fn usage_is_counted_from_the_store_across_a_restart() {
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens_file = dir.path().join("tokens.toml");
    std::fs::write(&tokens_file, tokens("\"1MiB\"")).expect("tokens");
    let data = pagewire_tests::data_dir().expect("data dir");
    let (t, d) = (
        tokens_file.display().to_string(),
        data.path().display().to_string(),
    );
    let flags = ["--tokens", &t, "--store", "embedded", "--data-dir", &d];
    let server = Server::start_with(&flags).expect("server");
    let mut c = Driver::start(
        py,
        &[("PAGEWIRE_URL", &server.url), ("PAGEWIRE_TOKEN", "acme")],
    );
    c.open(1, "file:one.db").expect("one");
    c.ok(1, "create table t(x)");
    c.open(2, "file:two.db").expect("two");
    c.ok(2, "create table t(x)");
    drop(c);
    drop(server);
    let server = Server::start_with(&flags).expect("server again");
    let u = usage(&server.url, "acme");
    assert_eq!(u.databases, 2, "{u:?}");
    assert!(u.stored_bytes > 0 && u.logical_bytes > 0, "{u:?}");
    let mut c = Driver::start(
        py,
        &[("PAGEWIRE_URL", &server.url), ("PAGEWIRE_TOKEN", "acme")],
    );
    let err = c
        .open(1, "file:three.db")
        .expect_err("still at max_databases after a restart");
    assert!(err.contains("unable to open"), "{err}");
}

#[test]
fn a_history_cap_collects_one_tenants_old_versions_only() {
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _tokens) = start(dir.path());
    let url = server.url.as_str();
    // delta keeps no history (max_history_retention = 0s); gamma keeps the server's hour.
    for tenant in ["delta", "gamma"] {
        let mut w = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", tenant)]);
        w.open(1, "file:h.db").expect("open");
        w.ok(1, "create table t(x)");
        w.ok(1, "insert into t values (1)");
        w.ok(1, "insert into t values (2)");
    }
    std::thread::sleep(Duration::from_millis(1500)); // a few GC passes
    let mut delta = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", "delta")]);
    let err = delta
        .open(1, "file:h.db?as_of_version=2")
        .expect_err("collected");
    assert!(!err.is_empty());
    delta.open(2, "file:h.db").expect("the newest stays");
    assert_eq!(delta.ok(2, "select count(*) from t"), "[(2,)]");
    let mut gamma = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", "gamma")]);
    gamma
        .open(1, "file:h.db?as_of_version=2")
        .expect("another tenant's history stays");
    assert_eq!(gamma.ok(1, "select count(*) from t"), "[(1,)]");
}
