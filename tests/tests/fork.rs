//! fork() from Python's sqlite3 module (Debian's /usr/bin/python3), with the parent
//! holding a write lease on one database and a read lease on another: the child's
//! inherited connections fail on every path, including the ones that need no RPC;
//! a fresh open in the child works; the parent goes on unharmed.

use std::process::Command;

use pagewire_tests::{
    Server,
    python::{self, python},
    text, vfs_library,
};

/// Run after [`python::LOAD_VFS`].
const SCRIPT: &str = r#"
import os, time

def connect(name, ro=False):
    return sqlite3.connect(f"file:{name}" + ("?mode=ro" if ro else ""), uri=True, isolation_level=None)

setup = connect("fork-r.db")
setup.execute("create table t(x)")
setup.execute("insert into t values (1), (2)")
setup.close()

w = connect("fork-w.db")
w.execute("create table t(x)")
w.execute("insert into t values (1)")        # holds the write lease (sticky)
r = connect("fork-r.db", ro=True)
deadline = time.time() + 10
while "lease=held" not in r.execute("pragma pagewire_read_lease").fetchone()[0]:
    assert r.execute("select count(*) from t").fetchone()[0] == 2
    assert time.time() < deadline, "no read lease"
    time.sleep(0.05)
assert w.execute("select count(*) from t").fetchone()[0] == 1

pid = os.fork()
if pid == 0:
    failures = []
    def refused(what, f):
        try:
            f()
            failures.append(what + ": worked in the child")
        except sqlite3.Error as e:
            pass
    refused("read under the write lease", lambda: w.execute("select count(*) from t").fetchone())
    refused("write under the write lease", lambda: w.execute("insert into t values (2)"))
    refused("read under the read lease", lambda: r.execute("select count(*) from t").fetchone())
    refused("pragma", lambda: r.execute("pragma pagewire_version").fetchone())
    try:
        fresh = connect("fork-r.db", ro=True)
        n = fresh.execute("select count(*) from t").fetchone()[0]
        if n != 2: failures.append(f"fresh read: {n} rows")
        fresh_w = connect("fork-w.db", ro=True)
        n = fresh_w.execute("select count(*) from t").fetchone()[0]
        if n != 1: failures.append(f"fresh read of the written database: {n} rows")
    except sqlite3.Error as e:
        failures.append(f"fresh open in the child failed: {e}")
    for f in failures: print("child:", f)
    sys.stdout.flush()
    os._exit(1 if failures else 0)

_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0, f"child exit {status}"
w.execute("insert into t values (3)")
assert w.execute("select count(*) from t").fetchone()[0] == 2
assert r.execute("select count(*) from t").fetchone()[0] == 2
print("ok")
"#;

/// Runs `program` (a fork test: the VFS library is its first argument) against a fresh
/// server; it must succeed, printing `ok` last.
fn assert_fork_test_passes(program: &mut Command) {
    let server = Server::start().expect("server");
    let out = program
        .env("PAGEWIRE_URL", &server.url)
        .env("PAGEWIRE_LOG", "off")
        .output()
        .expect("run the fork test");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

#[test]
fn a_forked_child_refuses_inherited_connections_on_every_path() {
    let Some(python) = python() else { return };
    assert_fork_test_passes(&mut python::command(python, SCRIPT).expect("VFS library"));
}

/// The same from C (`tests/tests/fork.c`, built here with the system's `cc` against its
/// SQLite): a C program holding both leases forks; the child refuses its inherited
/// connections, opens fresh ones; the parent goes on.
#[test]
fn a_forked_c_child_refuses_inherited_connections_on_every_path() {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fork.c");
    let dir = tempfile::tempdir().expect("temp dir");
    let program = dir.path().join("fork-test");
    let built = Command::new("cc")
        .arg(&source)
        .arg("-o")
        .arg(&program)
        .arg("-lsqlite3")
        .output();
    match built {
        Ok(out) if out.status.success() => {}
        other => {
            assert!(
                !pagewire_tests::in_ci(),
                "cc and libsqlite3-dev are needed under CI: {other:?}"
            );
            eprintln!(
                "SKIPPED: cannot build the C fork test ({other:?}); install gcc and libsqlite3-dev"
            );
            return;
        }
    }
    let lib = vfs_library().expect("VFS library");
    assert_fork_test_passes(Command::new(&program).arg(&lib));
}
