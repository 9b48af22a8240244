//! Debian's Python (`/usr/bin/python3`, whose `sqlite3` module can load extensions)
//! using SQLite through the VFS: a script run once ([`command`]), or a long-lived
//! process driven one statement at a time ([`Driver`]).

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use crate::vfs_library;

/// Debian's Python, whose `sqlite3` module can load extensions.
pub const PYTHON: &str = "/usr/bin/python3";

/// [`PYTHON`], or None (skip) where it is missing outside CI (where it must be there).
pub fn python() -> Option<&'static str> {
    crate::required(PYTHON, "Debian's python3")
}

/// The lines every script starts with: they load the VFS library (`sys.argv[1]`) into
/// the process, which makes pagewire SQLite's default VFS there.
pub const LOAD_VFS: &str = r#"
import sqlite3, sys
loader = sqlite3.connect(":memory:")
loader.enable_load_extension(True)
loader.load_extension(sys.argv[1])
loader.close()
"#;

/// `python -c <LOAD_VFS><script> <VFS library>`: add the script's further arguments,
/// its environment and its stdio.
pub fn command(python: &str, script: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(python);
    command
        .arg("-c")
        .arg(format!("{LOAD_VFS}{script}"))
        .arg(vfs_library()?);
    Ok(command)
}

/// The driver's loop: `open <id> <uri>` opens connection `id` and reads its schema
/// (SQLite opens lazily: a failed open shows here), `connect <id> <uri>` only opens it,
/// `sql <id> <statement>` runs a statement on it; each answers `ok <rows>` or
/// `err <exception> <message>`.
const DRIVER: &str = r#"
conns = {}
for line in sys.stdin:
    op, cid, arg = line.rstrip("\n").split(" ", 2)
    try:
        if op == "open" or op == "connect":
            conn = sqlite3.connect(arg, uri=True, isolation_level=None)
            conns[cid] = conn
            if op == "open":
                conn.execute("select count(*) from sqlite_schema").fetchall()
            out = "opened"
        else:
            out = repr(conns[cid].execute(arg).fetchall())
        print("ok", out, flush=True)
    except Exception as e:
        print("err", type(e).__name__, str(e).replace("\n", " "), flush=True)
"#;

/// A long-lived Python process with pagewire connections (numbered by the test),
/// driven one line at a time; its stderr (the VFS's log) goes to a file. Killed when
/// dropped.
pub struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr: tempfile::NamedTempFile,
    /// Every answer must come within this.
    limit: Option<Duration>,
}

impl Driver {
    /// Starts `python` with the VFS loaded and `env` set.
    pub fn start(python: &str, env: &[(&str, &str)]) -> Self {
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let mut child = command(python, DRIVER)
            .expect("vfs library")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr.reopen().expect("stderr")))
            .spawn()
            .expect("python");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
            stderr,
            limit: None,
        }
    }

    /// Asserts that every answer comes within `limit`.
    pub fn answering_within(mut self, limit: Duration) -> Self {
        self.limit = Some(limit);
        self
    }

    fn send(&mut self, op: &str, id: u32, arg: &str) -> Result<String, String> {
        let line = format!("{op} {id} {arg}");
        let started = Instant::now();
        writeln!(self.stdin, "{line}").expect("write to python");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("read from python");
        if let Some(limit) = self.limit {
            let took = started.elapsed();
            assert!(took < limit, "{line}: {took:?}");
        }
        match answer.trim_end().split_once(' ') {
            Some(("ok", rows)) => Ok(rows.to_owned()),
            Some(("err", message)) => Err(message.to_owned()),
            _ => panic!(
                "python driver said {answer:?} to {line:?}; stderr: {}",
                self.stderr_text()
            ),
        }
    }

    /// Opens connection `id` to `uri` and reads its schema: `Ok("opened")`, or the
    /// exception (`OperationalError unable to open database file`).
    pub fn open(&mut self, id: u32, uri: &str) -> Result<String, String> {
        self.send("open", id, uri)
    }

    /// Opens connection `id` to `uri` without reading anything (SQLite opens lazily).
    pub fn connect(&mut self, id: u32, uri: &str) {
        self.send("connect", id, uri).expect("open");
    }

    /// Runs `sql` on connection `id`: the rows as Python prints them, or the exception.
    pub fn sql(&mut self, id: u32, sql: &str) -> Result<String, String> {
        self.send("sql", id, sql)
    }

    /// [`Driver::sql`], which must succeed.
    pub fn ok(&mut self, id: u32, sql: &str) -> String {
        self.sql(id, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}; stderr: {}", self.stderr_text()))
    }

    /// What the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
