//! Shared by the rusqlite tests: the VFS registered in-process, connections to
//! a test server through URI parameters.
#![allow(dead_code)]

use std::time::Duration;

use pagewire_tests::{Server, value_of};
use rusqlite::{Connection, OpenFlags};

pub fn register() {
    pagewire_vfs::register(false).expect("register the pagewire VFS");
}

pub fn uri(url: &str, name: &str, extra: &str) -> String {
    format!("file:{name}?vfs=pagewire&url={url}{extra}")
}

/// Read-write, created if missing, the name a URI.
pub fn rw() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_URI
}

/// A read-write connection to `name` on `server`.
pub fn open(server: &Server, name: &str) -> Connection {
    open_url(&server.url, name)
}

pub fn open_url(url: &str, name: &str) -> Connection {
    open_with(url, name, "")
}

/// A read-write connection with extra URI parameters (`&retry_timeout=1s`) and a busy
/// timeout of 10 s.
pub fn open_with(url: &str, name: &str, extra: &str) -> Connection {
    register();
    let conn = Connection::open_with_flags(uri(url, name, extra), rw()).expect("open");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

pub fn try_open(url: &str, name: &str, flags: OpenFlags) -> rusqlite::Result<Connection> {
    try_open_with(url, name, "", flags)
}

/// Opens with extra URI parameters and reads the schema (SQLite opens lazily: an open
/// that fails shows here).
pub fn try_open_with(
    url: &str,
    name: &str,
    extra: &str,
    flags: OpenFlags,
) -> rusqlite::Result<Connection> {
    register();
    let conn =
        Connection::open_with_flags(uri(url, name, extra), flags | OpenFlags::SQLITE_OPEN_URI)?;
    conn.query_row("select count(*) from sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })?;
    Ok(conn)
}

/// Every row `sql` returns, each turned into a value by `row`.
pub fn all_rows<T>(
    conn: &Connection,
    sql: &str,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    let mut stmt = conn.prepare(sql).expect("prepare");
    let rows = stmt.query_map([], row).expect("query");
    rows.map(|r| r.expect("row")).collect()
}

pub fn integrity(conn: &Connection) -> String {
    conn.query_row("pragma integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

pub fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("select count(*) from {table}"), [], |r| r.get(0))
        .expect("count")
}

pub fn pragma_text(conn: &Connection, pragma: &str) -> String {
    conn.query_row(&format!("pragma {pragma}"), [], |r| {
        r.get::<_, rusqlite::types::Value>(0)
    })
    .map(|v| match v {
        rusqlite::types::Value::Text(s) => s,
        rusqlite::types::Value::Integer(i) => i.to_string(),
        other => format!("{other:?}"),
    })
    .expect("pragma")
}

/// Spawns this test binary again to run the (ignored) test `name` as a child
/// process, with `env` telling it what to do.
pub fn spawn_child(name: &str, env: &[(&str, &str)]) -> std::process::Child {
    pagewire_tests::child_test(name)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn child test process")
}

/// A child's report lines from its stdout: what it printed after `@@` (the test
/// harness may have printed "test name ... " on the same line).
pub fn reports(stdout: std::process::ChildStdout) -> impl Iterator<Item = String> {
    use std::io::BufRead as _;
    std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.split_once("@@").map(|(_, report)| report.to_owned()))
}

/// An environment variable a child was given, or None when run as a normal test.
pub fn child_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Opens read-only (a replica: no write lease, pinned read transactions).
pub fn open_replica(url: &str, name: &str) -> Connection {
    register();
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let conn =
        Connection::open_with_flags(uri(url, name, "&mode=ro"), flags).expect("open replica");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

pub fn version(conn: &Connection) -> u64 {
    pragma_text(conn, "pagewire_version")
        .parse()
        .expect("version number")
}

/// The value of one counter in `PRAGMA pagewire_stats`.
pub fn stat(conn: &Connection, key: &str) -> u64 {
    let stats = pragma_text(conn, "pagewire_stats");
    value_of(&stats, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {stats}"))
}

/// Opens with extra URI parameters (`&as_of_version=3`) and touches the file.
pub fn try_open_uri(url: &str, name: &str, extra: &str, flags: OpenFlags) -> Connection {
    try_open_with(url, name, extra, flags).expect("open")
}
