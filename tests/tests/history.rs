//! History as a feature, end to end, on each store (memory, embedded, PostgreSQL where
//! one can be had): branches, restores and restore points through the VFS's pragmas
//! from Debian's Python and the stock sqlite3 shell, a restore under a running writer
//! and three read-lease holders, restore points past the retention window, and the
//! bounds a hostile tenant meets (roles, labels, counts, quotas, other tenants).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use pagewire_proto::v1 as pb;
use pagewire_tests::admin::{authed, with_admin as admin};
use pagewire_tests::postgres::TempPostgres;
use pagewire_tests::python::{self, Driver};
use pagewire_tests::{Server, shell, wait_for};
use tonic::Code;

/// A server on each store this machine has, with what keeps its store alive.
fn servers(test: &str, extra: &[&str]) -> Vec<(&'static str, Server, Option<TempPostgres>)> {
    let mut all = Vec::new();
    let mut memory = vec!["--store", "memory"];
    memory.extend_from_slice(extra);
    all.push((
        "memory",
        Server::start_with(&memory).expect("memory server"),
        None,
    ));
    all.push((
        "embedded",
        Server::start_with(extra).expect("embedded server"),
        None,
    ));
    if let Some(pg) = TempPostgres::start_or_skip(test) {
        let mut args = vec!["--store", pg.url()];
        args.extend_from_slice(extra);
        let server = Server::start_with(&args).expect("postgres server");
        all.push(("postgres", server, Some(pg)));
    }
    all
}

fn at_version(v: u64) -> Option<pb::HistoryPoint> {
    Some(pb::HistoryPoint {
        at: Some(pb::history_point::At::Version(v)),
    })
}

#[test]
fn sql_level_history_from_python_on_every_store() {
    let Some(py) = python::python() else { return };
    for (store, server, _pg) in servers("sql_level_history_from_python", &[]) {
        let url = server.url.as_str();
        let mut p = Driver::start(py, &[("PAGEWIRE_URL", url)]);
        p.open(1, "file:agent.db?vfs=pagewire").expect("open");
        p.ok(1, "create table notes(id integer primary key, body text)");
        p.ok(1, "insert into notes(body) values ('keep me'), ('me too')");
        let point = p.ok(1, "pragma pagewire_restore_point='before-agent'");
        assert!(
            point.contains("label=before-agent version=2"),
            "{store}: {point}"
        );
        // The agent misbehaves.
        p.ok(1, "delete from notes");
        p.ok(1, "insert into notes(body) values ('garbage')");
        assert_eq!(p.ok(1, "select count(*) from notes"), "[(1,)]", "{store}");
        assert_eq!(
            p.ok(1, "pragma pagewire_restore_points"),
            "[('before-agent=2',)]",
            "{store}"
        );
        // Roll back to the point, by label.
        let restored = p.ok(1, "pragma pagewire_restore='before-agent'");
        assert!(restored.contains("restored_from=2"), "{store}: {restored}");
        assert_eq!(
            p.ok(1, "select body from notes order by id"),
            "[('keep me',), ('me too',)]",
            "{store}"
        );
        assert_eq!(p.ok(1, "pragma integrity_check"), "[('ok',)]", "{store}");
        // The restore is itself a version: undo it by number.
        let undo = p.ok(1, "pragma pagewire_restore='4'");
        assert!(undo.contains("restored_from=4"), "{store}: {undo}");
        assert_eq!(
            p.ok(1, "select body from notes"),
            "[('garbage',)]",
            "{store}: the restore undone"
        );
        // A branch for an experiment: writable at once, isolated both ways.
        let fork = p.ok(1, "pragma pagewire_fork='agent-try@2'");
        assert!(fork.contains("name=agent-try version=1"), "{store}: {fork}");
        p.open(2, "file:agent-try?vfs=pagewire")
            .expect("open the branch");
        assert_eq!(p.ok(2, "select count(*) from notes"), "[(2,)]", "{store}");
        p.ok(2, "insert into notes(body) values ('only on the branch')");
        p.ok(1, "insert into notes(body) values ('only on the source')");
        assert_eq!(p.ok(2, "select count(*) from notes"), "[(3,)]", "{store}");
        assert_eq!(p.ok(1, "select count(*) from notes"), "[(2,)]", "{store}");
        assert_eq!(p.ok(2, "pragma integrity_check"), "[('ok',)]", "{store}");
        // Errors are SQLite errors with the reason, and change nothing.
        let e = p
            .sql(1, "pragma pagewire_restore='nope'")
            .expect_err("no such point");
        assert!(e.contains("no restore point 'nope'"), "{store}: {e}");
        let e = p
            .sql(1, "pragma pagewire_fork='agent-try'")
            .expect_err("exists");
        assert!(e.contains("already exists"), "{store}: {e}");
        let e = p
            .sql(1, "pragma pagewire_restore_point='123'")
            .expect_err("digits");
        assert!(e.contains("all digits"), "{store}: {e}");
        p.ok(1, "begin");
        p.ok(1, "insert into notes(body) values ('in a transaction')");
        let e = p
            .sql(1, "pragma pagewire_restore='2'")
            .expect_err("in a write txn");
        assert!(e.contains("COMMIT or ROLLBACK first"), "{store}: {e}");
        p.ok(1, "rollback");
        p.ok(1, "pragma pagewire_drop_restore_point='before-agent'");
        assert_eq!(
            p.ok(1, "pragma pagewire_restore_points"),
            "[('',)]",
            "{store}"
        );
        assert_eq!(p.ok(1, "select count(*) from notes"), "[(2,)]", "{store}");
    }
}

#[test]
fn sql_level_history_from_the_stock_shell() {
    let Some(sqlite3) = shell::sqlite3() else {
        return;
    };
    let server = Server::start().expect("server");
    let env = [("PAGEWIRE_URL", server.url.as_str())];
    let script = format!(
        "{load}\n.open file:shell.db?vfs=pagewire\n\
         create table t(x);\ninsert into t values (1),(2);\n\
         pragma pagewire_restore_point='clean';\n\
         insert into t values (3);\n\
         pragma pagewire_fork='shell-branch';\n\
         pragma pagewire_restore='clean';\n\
         select 'source', count(*) from t;\n\
         .open file:shell-branch?vfs=pagewire\n\
         select 'branch', count(*) from t;\n\
         pragma integrity_check;\n",
        load = shell::load_vfs()
    );
    let out = shell::run(sqlite3, &env, &script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "label=clean version=2",
        "name=shell-branch version=1",
        "restored_from=2",
        "source|2",
        "branch|3",
        "ok",
    ] {
        assert!(
            stdout.contains(want),
            "{want:?} missing from:\n{stdout}\n{stderr}"
        );
    }
}

/// What every read checks: the counter row agrees with the rows (a page of one state
/// with a page of another would not), and the integrity of the whole file.
const CHECK: &str = "select (select count(*) from t) = (select n from meta), \
                     (select coalesce(sum(v), 0) from t) = (select s from meta), \
                     (select n from meta)";

#[test]
fn restore_under_a_writer_and_three_lease_holding_readers() {
    let Some(py) = python::python() else { return };
    // A 1 s write lease (heartbeat 1/3 s): the writer, idle now and then like any
    // application, lets go of it (lease_idle) and the restore can take it.
    for (store, server, _pg) in servers("restore_under_readers", &["--lease-ttl", "1s"]) {
        let url = server.url.as_str();
        let env = [("PAGEWIRE_URL", url)];
        let mut setup = Driver::start(py, &env);
        setup.open(1, "file:bank.db?vfs=pagewire").expect("open");
        setup.ok(1, "create table t(id integer primary key, v int, pad blob)");
        setup.ok(1, "create table meta(n int, s int)");
        setup.ok(1, "insert into meta values (0, 0)");
        let stop = AtomicBool::new(false);
        let written = AtomicU64::new(0);
        let checks = AtomicU64::new(0);
        thread::scope(|s| {
            // Whatever happens below, the threads end (a failed assertion would
            // otherwise leave the scope waiting for them forever).
            let _stop = StopOnDrop(&stop);
            // The writer: each transaction adds rows and keeps the counter right; a
            // commit fenced by the restore taking the lease is retried.
            s.spawn(|| {
                let mut w = Driver::start(py, &env);
                w.open(1, "file:bank.db?vfs=pagewire&lease_idle=100ms")
                    .expect("writer open");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let txn = [
                        "begin immediate".to_owned(),
                        format!("insert into t(v, pad) values ({i}, randomblob(3000))"),
                        format!("update meta set n = n + 1, s = s + {i}"),
                        "commit".to_owned(),
                    ];
                    let failed = txn.iter().find_map(|sql| w.sql(1, sql).err());
                    if let Some(e) = failed {
                        // As an application would: a fenced commit (the restore took
                        // the lease) fails the transaction; start again on a new
                        // connection.
                        eprintln!("{store} writer: {e}");
                        let _ = w.sql(1, "rollback");
                        let uri = "file:bank.db?vfs=pagewire&lease_idle=100ms";
                        if let Err(e) = w.open(1, uri) {
                            eprintln!("{store} writer reopen: {e}");
                            thread::sleep(Duration::from_millis(200));
                        }
                    } else {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                    // `%` rather than `is_multiple_of` (Rust 1.87): the workspace
                    // supports 1.85.
                    #[allow(clippy::manual_is_multiple_of)]
                    let pause = i % 5 == 0;
                    if pause {
                        thread::sleep(Duration::from_millis(800));
                    }
                }
            });
            // Three readers in their own processes, each on its own read lease.
            for r in 0..3 {
                let (stop, checks, env) = (&stop, &checks, &env);
                s.spawn(move || {
                    let mut rd = Driver::start(py, env);
                    rd.open(1, "file:bank.db?vfs=pagewire")
                        .expect("reader open");
                    let mut held = false;
                    while !stop.load(Ordering::Relaxed) {
                        let row = rd.ok(1, CHECK);
                        assert!(
                            row.starts_with("[(1, 1, "),
                            "{store} reader {r}: a mix: {row}"
                        );
                        held |= rd
                            .ok(1, "pragma pagewire_read_lease")
                            .contains("lease=held");
                        checks.fetch_add(1, Ordering::Relaxed);
                        // Continuous, not spinning: three readers on two cores.
                        thread::sleep(Duration::from_millis(5));
                    }
                    assert_eq!(rd.ok(1, "pragma integrity_check"), "[('ok',)]");
                    let stats = rd.ok(1, "pragma pagewire_stats");
                    assert!(held, "{store} reader {r} never held a read lease: {stats}");
                    assert!(!stats.contains("local_reads=0 "), "{store}: {stats}");
                });
            }
            assert!(
                wait_for(Duration::from_secs(20), || written.load(Ordering::Relaxed)
                    >= 20),
                "{store}: the writer made no progress ({written:?})"
            );
            let point = setup.ok(1, "pragma pagewire_restore_point='midway'");
            // The point is the server's newest version when it was made; the writer
            // may have committed again before this connection reads, so its state
            // is read as of the point's version.
            let point_n = state_at(
                py,
                &env,
                version_in(&point, "version="),
                "select n from meta",
            );
            assert!(
                wait_for(Duration::from_secs(30), || written.load(Ordering::Relaxed)
                    >= 40),
                "{store}: the writer stalled at {written:?}"
            );
            let restored = setup.ok(1, "pragma pagewire_restore='midway'");
            assert!(
                restored.contains("restored_from="),
                "{store}: {point} {restored}"
            );
            // The restored version holds the point's state exactly.
            let version = version_in(&restored, "version=");
            assert_eq!(
                state_at(py, &env, version, "select n from meta"),
                point_n,
                "{store}"
            );
            assert_eq!(
                state_at(py, &env, version, "pragma integrity_check"),
                "[('ok',)]",
                "{store}"
            );
            // The writer goes on after the restore; then the restore is undone.
            let after = written.load(Ordering::Relaxed);
            assert!(
                wait_for(Duration::from_secs(20), || written.load(Ordering::Relaxed)
                    >= after + 20),
                "{store}: the writer did not go on after the restore"
            );
            let undo = setup.ok(1, &format!("pragma pagewire_restore='{}'", version - 1));
            assert!(undo.contains("restored_from="), "{store}: {undo}");
            thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
        });
        assert!(
            checks.load(Ordering::Relaxed) > 30,
            "{store}: too few reads"
        );
        assert_eq!(
            setup.ok(1, "pragma integrity_check"),
            "[('ok',)]",
            "{store}"
        );
        assert!(setup.ok(1, CHECK).starts_with("[(1, 1, "), "{store}");
    }
}

/// The number after `word` in a pragma's answer (`[('label=midway version=42',)]`).
fn version_in(answer: &str, word: &str) -> u64 {
    answer
        .split_whitespace()
        .find_map(|w| w.trim_start_matches("[('").strip_prefix(word))
        .and_then(|v| v.trim_end_matches("',)]").parse().ok())
        .unwrap_or_else(|| panic!("no {word} in {answer}"))
}

/// `sql`'s answer on a new connection reading `bank.db` as of `version`.
fn state_at(py: &str, env: &[(&str, &str)], version: u64, sql: &str) -> String {
    let mut old = Driver::start(py, env);
    old.open(
        1,
        &format!("file:bank.db?vfs=pagewire&as_of_version={version}"),
    )
    .expect("as of a version");
    old.ok(1, sql)
}

/// Sets the flag when dropped (also while unwinding).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn a_restore_point_outlives_the_retention_window() {
    let Some(py) = python::python() else { return };
    let flags = [
        "--history-retention",
        "1s",
        "--gc-interval",
        "200ms",
        "--pin-ttl",
        "1s",
    ];
    for (store, server, _pg) in servers("restore_point_outlives_retention", &flags) {
        let url = server.url.as_str();
        let mut p = Driver::start(py, &[("PAGEWIRE_URL", url)]);
        p.open(1, "file:kept.db?vfs=pagewire").expect("open");
        p.ok(1, "create table t(x)");
        p.ok(1, "insert into t values ('at the point')");
        p.ok(1, "pragma pagewire_restore_point='kept'");
        p.ok(1, "insert into t values ('later')");
        p.ok(1, "insert into t values ('newest')");
        // Past the window (and the pins): version 2 stays, version 3 goes.
        thread::sleep(Duration::from_millis(3500));
        let gone = admin(url, "dev", async |c| {
            c.fork_database(pb::ForkDatabaseRequest {
                source: "kept.db".into(),
                name: "from-3".into(),
                at: at_version(3),
            })
            .await
        });
        assert_eq!(
            gone.map(drop).map_err(|s| s.code()),
            Err(Code::OutOfRange),
            "{store}"
        );
        let mut old = Driver::start(py, &[("PAGEWIRE_URL", url)]);
        old.open(1, "file:kept.db?vfs=pagewire&as_of_version=2")
            .expect("as of the point");
        assert_eq!(
            old.ok(1, "select x from t"),
            "[('at the point',)]",
            "{store}"
        );
        drop(old);
        p.ok(1, "pragma pagewire_drop_restore_point='kept'");
        // (Asked without reading it: a read would pin it again.)
        let oldest = || {
            admin(url, "dev", async |c| {
                let req = pb::GetDatabaseInfoRequest {
                    name: "kept.db".into(),
                };
                c.get_database_info(req)
                    .await
                    .expect("info")
                    .into_inner()
                    .oldest_version
            })
        };
        assert_eq!(oldest(), 2, "{store}: the point holds the oldest version");
        assert!(
            wait_for(Duration::from_secs(10), || oldest() > 2),
            "{store}: version 2 still readable after its point was deleted"
        );
    }
}

const TOKENS: &str = r#"
[[token]]
token = "reader"
tenant = "acme"
role = "read"

[[token]]
token = "writer"
tenant = "acme"
role = "write"

[[token]]
token = "other"
tenant = "other"
role = "admin"

[[tenant]]
name = "acme"
max_databases = 3

[[token]]
token = "tight"
tenant = "tight"
role = "write"

[[tenant]]
name = "tight"
max_pinned_versions = 2
"#;

#[test]
fn history_calls_as_a_hostile_tenant_would_make_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, TOKENS).expect("tokens");
    let tokens = tokens.display().to_string();
    let server = Server::start_with(&["--store", "memory", "--tokens", &tokens]).expect("server");
    let url = server.url.as_str();
    let fork = |source: &str, name: &str| pb::ForkDatabaseRequest {
        source: source.into(),
        name: name.into(),
        at: None,
    };
    admin(url, "writer", async |c| {
        c.create_database(pb::CreateDatabaseRequest { name: "x".into() })
            .await
            .expect_err("CreateDatabase needs admin");
    });
    // A write token (not admin) may branch; a read token may not.
    admin(url, "writer", async |c| {
        let mut pages =
            pb::pages_client::PagesClient::new(authed(url, "writer").await.expect("pages"));
        pages
            .open(pb::OpenRequest {
                name: "src".into(),
                create: true,
                ..Default::default()
            })
            .await
            .expect("create src by open");
        c.fork_database(fork("src", "b1"))
            .await
            .expect("write role forks");
        let code = |r: Result<tonic::Response<pb::DatabaseInfo>, tonic::Status>| {
            r.map(drop).map_err(|s| s.code())
        };
        // The databases quota counts forks: src, b1, b2 = 3.
        c.fork_database(fork("src", "b2"))
            .await
            .expect("third database");
        assert_eq!(
            code(c.fork_database(fork("src", "b3")).await),
            Err(Code::ResourceExhausted)
        );
        // Names: another tenant's, a bad new name, an empty one.
        assert_eq!(
            code(c.fork_database(fork("theirs", "b4")).await),
            Err(Code::NotFound)
        );
        assert_eq!(
            code(c.fork_database(fork("src", "")).await),
            Err(Code::InvalidArgument)
        );
        assert_eq!(
            code(c.fork_database(fork("src", "bad\u{7}name")).await),
            Err(Code::InvalidArgument)
        );
        assert_eq!(
            code(c.fork_database(fork("src", &"n".repeat(4096))).await),
            Err(Code::InvalidArgument)
        );
        // Labels, and the per-database count.
        let point = |label: &str| pb::CreateRestorePointRequest {
            name: "src".into(),
            label: label.into(),
            at: None,
        };
        for bad in ["", "42", "tab\there", &"l".repeat(300)] {
            let r = c.create_restore_point(point(bad)).await;
            assert_eq!(
                r.map(drop).map_err(|s| s.code()),
                Err(Code::InvalidArgument),
                "{bad:?}"
            );
        }
        for i in 0..256 {
            c.create_restore_point(point(&format!("p{i}")))
                .await
                .expect("point");
        }
        let r = c.create_restore_point(point("one-too-many")).await;
        assert_eq!(
            r.map(drop).map_err(|s| s.code()),
            Err(Code::ResourceExhausted)
        );
        let r = c.create_restore_point(point("p7")).await;
        assert_eq!(r.map(drop).map_err(|s| s.code()), Err(Code::AlreadyExists));
        let listed = c
            .list_restore_points(pb::ListRestorePointsRequest { name: "src".into() })
            .await
            .expect("list")
            .into_inner();
        assert_eq!(listed.points.len(), 256);
        // A restore with no target, and with a huge wait (capped, and not needed).
        let r = c
            .restore_database(pb::RestoreDatabaseRequest {
                name: "src".into(),
                to: None,
                wait_ms: u32::MAX,
            })
            .await;
        assert_eq!(
            r.map(drop).map_err(|s| s.code()),
            Err(Code::InvalidArgument)
        );
    });
    // A restore waits for a held lease, then gives up with ABORTED (SQLITE_BUSY).
    admin(url, "writer", async |c| {
        let mut pages =
            pb::pages_client::PagesClient::new(authed(url, "writer").await.expect("pages"));
        pages
            .acquire_lease(pb::AcquireLeaseRequest {
                name: "src".into(),
                client_id: "squatter".into(),
                ..Default::default()
            })
            .await
            .expect("lease");
        let started = Instant::now();
        let r = c
            .restore_database(pb::RestoreDatabaseRequest {
                name: "src".into(),
                to: at_version(0),
                wait_ms: 300,
            })
            .await;
        // Version 0 is refused before any wait.
        assert_eq!(
            r.map(drop).map_err(|s| s.code()),
            Err(Code::InvalidArgument)
        );
        let r = c
            .restore_database(pb::RestoreDatabaseRequest {
                name: "src".into(),
                to: Some(pb::HistoryPoint {
                    at: Some(pb::history_point::At::RestorePoint("p1".into())),
                }),
                wait_ms: 300,
            })
            .await;
        let took = started.elapsed();
        let status = r.map(drop).expect_err("lease held");
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert!(
            status.message().contains("squatter"),
            "{}",
            status.message()
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    });
    // The read token may list points, not make them, fork or restore.
    admin(url, "reader", async |c| {
        c.list_restore_points(pb::ListRestorePointsRequest { name: "src".into() })
            .await
            .expect("a reader lists points");
        let r = c.fork_database(fork("src", "nope")).await;
        assert_eq!(
            r.map(drop).map_err(|s| s.code()),
            Err(Code::PermissionDenied)
        );
        let r = c
            .create_restore_point(pb::CreateRestorePointRequest {
                name: "src".into(),
                label: "mine".into(),
                at: None,
            })
            .await;
        assert_eq!(
            r.map(drop).map_err(|s| s.code()),
            Err(Code::PermissionDenied)
        );
    });
    // Restore points count against the tenant's max_pinned_versions.
    admin(url, "tight", async |c| {
        let mut pages =
            pb::pages_client::PagesClient::new(authed(url, "tight").await.expect("pages"));
        for name in ["one", "two"] {
            pages
                .open(pb::OpenRequest {
                    name: name.into(),
                    create: true,
                    ..Default::default()
                })
                .await
                .expect("create by open");
        }
        let point = |name: &str, label: &str| pb::CreateRestorePointRequest {
            name: name.into(),
            label: label.into(),
            at: None,
        };
        c.create_restore_point(point("one", "a"))
            .await
            .expect("first");
        c.create_restore_point(point("two", "b"))
            .await
            .expect("second");
        let r = c.create_restore_point(point("two", "c")).await;
        let status = r.map(drop).expect_err("third");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("max_pinned_versions"),
            "{}",
            status.message()
        );
    });
    // Another tenant sees none of it.
    admin(url, "other", async |c| {
        let r = c
            .list_restore_points(pb::ListRestorePointsRequest { name: "src".into() })
            .await;
        assert_eq!(r.map(drop).map_err(|s| s.code()), Err(Code::NotFound));
        let r = c.fork_database(fork("src", "stolen")).await;
        assert_eq!(r.map(drop).map_err(|s| s.code()), Err(Code::NotFound));
    });
}

/// A fork copies nothing: the tenant's stored bytes do not move, the branch holds none
/// of its own, and the fork answers in a time that does not grow with the source (one
/// RPC; the 1 GiB figures are in the README: `pagewire-bench --history`). The source
/// is `PAGEWIRE_FORK_TEST_MIB` MiB (default 64; 1024 for the full size).
#[test]
fn a_fork_copies_nothing_whatever_the_size() {
    let Some(py) = python::python() else { return };
    let mib: u64 = std::env::var("PAGEWIRE_FORK_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    for (store, server, _pg) in servers("a_fork_copies_nothing", &[]) {
        let url = server.url.as_str();
        let mut p = Driver::start(py, &[("PAGEWIRE_URL", url)]);
        p.open(1, "file:big.db?vfs=pagewire").expect("open");
        p.ok(1, "create table t(b blob)");
        for _ in 0..mib.div_ceil(16) {
            p.ok(
                1,
                "insert into t select randomblob(1048576) from \
                 (with recursive n(x) as (select 1 union all select x + 1 from n limit 16) \
                  select x from n)",
            );
        }
        let stored = || {
            admin(url, "dev", async |c| {
                c.get_usage(pb::GetUsageRequest {})
                    .await
                    .expect("usage")
                    .into_inner()
                    .stored_bytes
            })
        };
        let before = stored();
        assert!(before >= mib << 20, "{store}: {before} bytes stored");
        let (took, info) = admin(url, "dev", async |c| {
            let started = Instant::now();
            let info = c
                .fork_database(pb::ForkDatabaseRequest {
                    source: "big.db".into(),
                    name: "big-branch".into(),
                    at: None,
                })
                .await
                .expect("fork")
                .into_inner();
            (started.elapsed(), info)
        });
        assert_eq!(info.stored_bytes, 0, "{store}: the branch copied pages");
        assert_eq!(stored(), before, "{store}: stored bytes grew with the fork");
        assert!(
            took < Duration::from_millis(500),
            "{store}: a fork took {took:?}"
        );
        p.open(2, "file:big-branch?vfs=pagewire")
            .expect("open the branch");
        let n = mib.div_ceil(16) * 16;
        assert_eq!(
            p.ok(2, "select count(*) from t"),
            format!("[({n},)]"),
            "{store}"
        );
        eprintln!("{store}: fork of {mib} MiB in {took:?}");
    }
}
