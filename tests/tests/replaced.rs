//! A database replaced under a process that keeps it open (issue 12): the memory server
//! restarted on the same port, an Admin delete and re-create, a PostgreSQL dump restored.
//! Process P (Debian's Python, a long-lived connection, idle past `lease_idle`) built the
//! old database to version 7; process Q builds the new one to version 7 too. P must
//! never return old rows nor change the new database: every call of its connection
//! fails (saying the database was replaced) until it reopens, and a fresh open works at
//! once beside it. A reader pinned at the old version gets an error from ReadPages,
//! never the new database's pages.

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use pagewire_proto::v1 as pb;
use pagewire_tests::{Server, postgres::TempPostgres, python, vfs_library};

/// A long-lived Python process with pagewire connections, driven one line at a time:
/// `open <id> <uri>`, `sql <id> <statement>`; answers `ok <rows>` or `err <message>`.
const DRIVER: &str = r#"
import sqlite3, sys
loader = sqlite3.connect(":memory:")
loader.enable_load_extension(True)
loader.load_extension(sys.argv[1])
loader.close()
conns = {}
for line in sys.stdin:
    op, cid, arg = line.rstrip("\n").split(" ", 2)
    try:
        if op == "open":
            conns[cid] = sqlite3.connect(arg, uri=True, isolation_level=None)
            out = "opened"
        else:
            out = repr(conns[cid].execute(arg).fetchall())
        print("ok", out, flush=True)
    except Exception as e:
        print("err", type(e).__name__, str(e).replace("\n", " "), flush=True)
"#;

struct Py {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: tempfile::NamedTempFile,
}

impl Py {
    fn start(python: &str, url: &str) -> Py {
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let mut child = Command::new(python)
            .args(["-c", DRIVER])
            .arg(vfs_library().expect("vfs library"))
            .env("PAGEWIRE_URL", url)
            .env("PAGEWIRE_RETRY_TIMEOUT", "3s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(File::create(stderr.path()).expect("stderr")))
            .spawn()
            .expect("python");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Py {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn send(&mut self, op: &str, id: u32, arg: &str) -> Result<String, String> {
        writeln!(self.stdin, "{op} {id} {arg}").expect("write to python");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read from python");
        match line.trim_end().split_once(' ') {
            Some(("ok", rows)) => Ok(rows.to_owned()),
            Some(("err", message)) => Err(message.to_owned()),
            _ => panic!(
                "python driver said {line:?}; stderr: {}",
                self.stderr_text()
            ),
        }
    }

    fn open(&mut self, id: u32, name: &str) {
        self.send("open", id, &format!("file:{name}"))
            .expect("open");
    }

    fn sql(&mut self, id: u32, sql: &str) -> Result<String, String> {
        self.send("sql", id, sql)
    }

    fn ok(&mut self, id: u32, sql: &str) -> String {
        self.sql(id, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}; stderr: {}", self.stderr_text()))
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// P's database: table `p`, built to version 7 (one version per statement), then idle.
const OLD: &str = "inc.db?lease_idle=100ms";

fn build_old(p: &mut Py, versions: std::ops::RangeInclusive<u64>) {
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
    let mut q = Py::start(python, url);
    q.open(1, "inc.db");
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
fn assert_replaced(p: &mut Py, python: &str, url: &str, new_rows: usize) {
    assert_old_connection_fails(p);
    let stderr = p.stderr_text();
    assert!(
        stderr.contains("was replaced"),
        "P's log says why: {stderr}"
    );
    p.open(2, "inc.db");
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
    let mut fresh = Py::start(python, url);
    fresh.open(1, "inc.db");
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
fn pinned_reader(python: &str, url: &str) -> Py {
    let mut r = Py::start(python, url);
    r.open(1, "inc.db?mode=ro&cache_size=0&preload=0");
    r.ok(1, "begin");
    assert_eq!(r.ok(1, "pragma pagewire_version"), "[('7',)]");
    r.ok(1, "select count(*) from sqlite_schema");
    r
}

/// Its ReadPages at the old version gets an error, never the new database's pages.
fn assert_pinned_reader_fails(r: &mut Py) {
    let pinned = r.sql(1, "select count(*), sum(length(x)) from p");
    assert!(
        pinned.is_err(),
        "the pinned reader read the new database's pages: {pinned:?}"
    );
}

/// Every call of P's old connection fails: an I/O error (or, for a table only the new
/// database has, SQLite's "no such table" from its cached schema); never rows.
fn assert_old_connection_fails(p: &mut Py) {
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
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let released = rt.block_on(async {
        let mut admin = pb::admin_client::AdminClient::connect(url.to_owned())
            .await
            .expect("connect");
        for _ in 0..200 {
            let info = admin
                .get_database_info(pb::GetDatabaseInfoRequest {
                    name: "inc.db".into(),
                })
                .await;
            if !info.expect("info").into_inner().lease_held {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    assert!(released, "P kept its write lease while idle");
    // And its Watch stream (read lease) goes idle too.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn replaced_by_a_memory_server_restart() {
    let Some(python) = python() else { return };
    let first = Server::start().expect("server");
    let mut p = Py::start(python, &first.url);
    p.open(1, OLD);
    build_old(&mut p, 1..=7);
    let mut r = pinned_reader(python, &first.url);
    idle(&first.url);
    let (url, addr) = (first.url.clone(), first.addr.clone());
    drop(first);
    let _second = Server::start_at(&addr, &[]).expect("server again on the same port");
    build_new(python, &url, 1, 7);
    assert_pinned_reader_fails(&mut r);
    assert_replaced(&mut p, python, &url, 6);
}

#[test]
fn replaced_by_admin_delete_and_create() {
    let Some(python) = python() else { return };
    let server = Server::start().expect("server");
    let mut p = Py::start(python, &server.url);
    p.open(1, OLD);
    build_old(&mut p, 1..=7);
    let mut r = pinned_reader(python, &server.url);
    idle(&server.url);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut admin = pb::admin_client::AdminClient::connect(server.url.clone())
            .await
            .expect("connect");
        admin
            .delete_database(pb::DeleteDatabaseRequest {
                name: "inc.db".into(),
            })
            .await
            .expect("delete");
        admin
            .create_database(pb::CreateDatabaseRequest {
                name: "inc.db".into(),
            })
            .await
            .expect("create");
    });
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
    let mut p = Py::start(python, &url);
    p.open(1, OLD);
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
    // Back at version 3 (table p, two rows); Q writes versions 4-7 of its own.
    let mut q = Py::start(python, &url);
    q.open(1, "inc.db");
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
    assert_pinned_reader_fails(&mut r);
    assert_old_connection_fails(&mut p);
    assert!(
        p.stderr_text().contains("was replaced"),
        "{}",
        p.stderr_text()
    );
    let mut fresh = Py::start(python, &url);
    fresh.open(1, "inc.db");
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
fn build_old_more(p: &mut Py) {
    for v in 4..=7 {
        let rows = "with recursive n(i) as (select 1 union all select i + 1 from n where i < 20)";
        p.ok(
            1,
            &format!("{rows} insert into p select 'old {v} ' || hex(randomblob(2000)) from n"),
        );
        assert_eq!(p.ok(1, "pragma pagewire_version"), format!("[('{v}',)]"));
    }
}
