//! Pragmas the VFS answers itself, from Debian's Python (`/usr/bin/python3`, module
//! `sqlite3`, the VFS loaded with `load_extension`): every one returns a row with a
//! column name (answered without a text, SQLite names the column NULL and Python raises
//! `MemoryError`), and the refusals hold: `synchronous` never reaches OFF (the sync is
//! pagewire's commit point), the journal stays a rollback journal, and a transaction
//! after them is committed on the server, read back by other processes.

use std::process::Output;

use pagewire_tests::{
    Server,
    python::{self, python},
    shell, text,
};

/// What the scripts start with, after [`python::LOAD_VFS`] (argv[1]: the library,
/// argv[2]: the database).
const ARGS: &str = r#"
import subprocess
lib, name = sys.argv[1], sys.argv[2]
"#;

/// Sets the pragmas a bulk load sets, each of which must answer one row with a column
/// name; then one transaction; then, while this connection is still open, another
/// process reads it back (the commit reached the server at COMMIT, not later).
const WRITER: &str = r#"
db = sqlite3.connect(name)
for pragma in ["synchronous=OFF", "synchronous=0", "synchronous=false", "synchronous=no",
               "main.synchronous=OFF", "journal_mode=WAL", "journal_mode=OFF",
               "pagewire_min_version=0"]:
    cur = db.execute("PRAGMA " + pragma)
    rows = cur.fetchall()
    assert len(rows) == 1 and len(rows[0]) == 1, (pragma, rows)
    assert cur.description[0][0] is not None, (pragma, cur.description)
    print(pragma, "->", rows[0][0])
db.execute("PRAGMA synchronous=NORMAL")
print("after NORMAL, synchronous=OFF ->", db.execute("PRAGMA synchronous=OFF").fetchone()[0])
sync = db.execute("PRAGMA synchronous").fetchone()[0]
assert sync != 0, sync
print("synchronous", sync)
print("journal_mode", db.execute("PRAGMA journal_mode").fetchone()[0])
db.execute("create table t(id integer primary key, body text)")
with db:
    db.executemany("insert into t(body) values (?)",
                   [("row %d" % i,) for i in range(2000)])
assert db.execute("PRAGMA synchronous").fetchone()[0] != 0
subprocess.run([sys.executable, "-c", sys.argv[3], lib, name], check=True)
db.close()
"#;

/// A fresh process reads the data back.
const READER: &str = r#"
db = sqlite3.connect(name)
print("rows", db.execute("select count(*), sum(length(body)) from t").fetchone())
print("integrity", db.execute("PRAGMA integrity_check").fetchone()[0])
db.close()
"#;

/// Runs `script` (after [`python::LOAD_VFS`]; the library is argv[1], `args` follow).
fn run_python(python: &str, url: &str, script: &str, args: &[&str]) -> Output {
    python::command(python, script)
        .expect("VFS library")
        .args(args)
        .env("PAGEWIRE_URL", url)
        .output()
        .expect("python")
}

#[test]
fn refused_pragmas_answer_a_row_from_python_and_commits_stay_durable() {
    let Some(python) = python() else { return };
    let server = Server::start().expect("server");
    let name = "bulk/pragmas.db";
    // The writer runs the reader as `python -c <reader> <lib> <name>`.
    let reader = format!("{}{ARGS}{READER}", python::LOAD_VFS);
    let writer = run_python(
        python,
        &server.url,
        &format!("{ARGS}{WRITER}"),
        &[name, &reader],
    );
    let stdout = text(&writer.stdout);
    assert!(
        writer.status.success(),
        "writer failed: {}\n{stdout}",
        text(&writer.stderr)
    );
    let want = "synchronous=OFF -> 2\n\
                synchronous=0 -> 2\n\
                synchronous=false -> 2\n\
                synchronous=no -> 2\n\
                main.synchronous=OFF -> 2\n\
                journal_mode=WAL -> delete\n\
                journal_mode=OFF -> delete\n\
                pagewire_min_version=0 -> 0\n\
                after NORMAL, synchronous=OFF -> 1\n\
                synchronous 1\n\
                journal_mode delete\n";
    let read_back = "rows (2000, 14890)\nintegrity ok\n";
    assert_eq!(stdout, format!("{want}{read_back}"));

    // After the writer closed: a new Python process, and the stock shell.
    let again = run_python(python, &server.url, &format!("{ARGS}{READER}"), &[name]);
    assert!(
        again.status.success(),
        "reader failed: {}",
        text(&again.stderr)
    );
    assert_eq!(text(&again.stdout), read_back);
    if let Some(sqlite3) = shell::sqlite3() {
        let script = format!(
            "{}.open {name}\nselect count(*) from t;\npragma integrity_check;\n\
             pragma synchronous=off;\npragma synchronous;\n",
            shell::load_vfs()
        );
        let shell = shell::run(sqlite3, &[("PAGEWIRE_URL", &server.url)], &script);
        assert!(
            shell.status.success(),
            "shell failed: {}",
            text(&shell.stderr)
        );
        assert_eq!(text(&shell.stdout), "2000\nok\n2\n2\n");
    }
}
