//! The stock sqlite3 shell (Debian's /usr/bin/sqlite3) with `.load`: the README
//! Quick Start, scripted, and the shell surviving a server that is not there.

use std::process::{Command, Output};

use pagewire_tests::{
    Server,
    python::python,
    shell::{load_vfs, sqlite3},
    text, vfs_library,
};

/// Runs `script` in `shell` with `PAGEWIRE_URL=url`.
fn run(shell: &str, url: &str, script: &str) -> Output {
    pagewire_tests::shell::run(shell, &[("PAGEWIRE_URL", url)], script)
}

#[test]
fn quick_start_in_the_stock_shell() {
    let Some(shell) = sqlite3() else { return };
    quick_start(shell, &load_vfs());
}

/// The static shell (scripts/build-static-sqlite.sh): pagewire is its default
/// VFS with nothing to load.
#[test]
fn quick_start_in_the_static_shell() {
    let Some(path) = pagewire_tests::shell::static_shell() else {
        return;
    };
    let shell = path.display().to_string();
    quick_start(&shell, "");
    // It starts, and reports the error, when the server is down.
    let out = run(
        &shell,
        "http://127.0.0.1:1",
        ".open nowhere.db\nselect count(*) from sqlite_schema;\n.print still-alive\n",
    );
    assert!(
        text(&out.stderr).contains("unable to open database"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("still-alive"));
}

/// The README Quick Start: create, insert (also in a multi-statement
/// transaction), quit, reopen in a new process and see the data.
fn quick_start(shell: &str, load: &str) {
    let server = Server::start().expect("server");
    // Terminal 2 of the Quick Start: create, insert, quit.
    let first = run(
        shell,
        &server.url,
        &format!(
            "{load}\
         .open acme/orders.db\n\
         create table orders(id integer primary key, item text, qty int);\n\
         insert into orders(item, qty) values ('apples', 3);\n\
         begin;\n\
         insert into orders(item, qty) values ('pears', 5);\n\
         insert into orders(item, qty) values ('plums', 7);\n\
         commit;\n\
         .quit\n"
        ),
    );
    assert!(
        first.status.success(),
        "first session: {}",
        text(&first.stderr)
    );
    assert_eq!(text(&first.stderr), "", "no errors expected");

    // A new process sees the data.
    let second = run(
        shell,
        &server.url,
        &format!(
            "{load}\
         .open acme/orders.db\n\
         select item, qty from orders order by id;\n\
         pragma integrity_check;\n\
         pragma journal_mode=wal;\n"
        ),
    );
    assert!(
        second.status.success(),
        "second session: {}",
        text(&second.stderr)
    );
    assert_eq!(
        text(&second.stdout),
        "apples|3\npears|5\nplums|7\nok\ndelete\n"
    );
}

#[test]
fn shell_survives_an_unreachable_server() {
    let Some(shell) = sqlite3() else { return };
    // Port 1 on loopback: nothing listens there.
    let out = run(
        shell,
        "http://127.0.0.1:1",
        &format!(
            "{}\
         .open nowhere.db\n\
         select count(*) from sqlite_schema;\n\
         .print still-alive\n\
         .open :memory:\n\
         select 6 * 7;\n",
            load_vfs()
        ),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.code().is_some(), "killed by a signal: {out:?}");
    assert!(
        stderr.contains("unable to open database"),
        "SQLite's error: {stderr}"
    );
    assert!(
        stderr.contains("127.0.0.1:1"),
        "our message names the server: {stderr}"
    );
    assert!(
        stdout.contains("still-alive\n42\n"),
        "shell stayed usable: {stdout}"
    );
}

#[test]
fn bad_configuration_fails_the_load_with_a_message() {
    let Some(shell) = sqlite3() else { return };
    let out = run(
        shell,
        "ftp://nowhere",
        &format!("{}.print still-alive\n", load_vfs()),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stderr.contains("PAGEWIRE_URL"),
        "names the variable: {stderr}"
    );
    assert!(stdout.contains("still-alive"), "{stdout}");
}

fn example(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn read_replica_demo_from_the_readme() {
    let Some(shell) = sqlite3() else { return };
    let server = Server::start().expect("server");
    let load = load_vfs();
    let session = |script: &str| {
        let out = run(shell, &server.url, &format!("{load}{}", example(script)));
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{script}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    assert_eq!(
        session("replica-writer.sql"),
        "2\n",
        "the writer learns its version"
    );
    assert_eq!(
        session("replica-reader.sql"),
        "2\n1|hello from the writer\n2|a second post, same transaction\n2\n",
        "the replica sees the writer's commit"
    );
    assert_eq!(session("replica-writer.sql"), "3\n");
    assert_eq!(session("replica-reader.sql").lines().next(), Some("4"));
    assert_eq!(session("time-travel.sql"), "2\n", "history as of version 2");
}

#[test]
fn python_example_runs_against_a_server() {
    let Some(python) = python() else { return };
    let server = Server::start().expect("server");
    let lib = vfs_library().expect("VFS library");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python_client.py");
    for round in 1..=2 {
        let out = Command::new(python)
            .arg(&script)
            .arg(&lib)
            .env("PAGEWIRE_URL", &server.url)
            .output()
            .expect("python");
        assert!(out.status.success(), "python failed: {}", text(&out.stderr));
        let want = format!("notes={} version={}\n", 2 * round, round + 1);
        assert_eq!(text(&out.stdout), want, "round {round}");
    }
}

#[test]
fn history_examples_from_the_readme() {
    let server = Server::start().expect("server");
    if let Some(shell) = sqlite3() {
        let script = format!("{}{}", load_vfs(), example("agent-rollback.sql"));
        for round in 1..=2 {
            let out = run(shell, &server.url, &script);
            let stdout = text(&out.stdout);
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "{}",
                text(&out.stderr)
            );
            assert!(
                stdout.contains("after the agent:|1\n"),
                "round {round}: {stdout}"
            );
            assert!(
                stdout.contains(
                    "rolled back:|the user prefers metric units\nrolled back:|the deadline is Friday\n"
                ),
                "round {round}: {stdout}"
            );
            assert!(
                stdout.ends_with("dropped=before-run-1\n"),
                "round {round}: {stdout}"
            );
        }
    }
    let Some(python) = python() else { return };
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/branch_per_test.py");
    let out = Command::new(python)
        .arg(&script)
        .env("PAGEWIRE_VFS_LIB", vfs_library().expect("VFS library"))
        .env("PAGEWIRE_URL", &server.url)
        .output()
        .expect("python");
    assert!(out.status.success(), "python failed: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "ok test_delete_a_user\nok test_add_a_user\nseed untouched: [('ada',), ('grace',)]\n"
    );
}

/// A database growing past 1 GiB: SQLite never writes the lock-byte page (the page
/// holding byte offset 1 GiB), so a commit's highest page may sit right past it, and a
/// file may end just before it. The server's growth rule (a commit grows the file at
/// most one page past the highest page it carries) must let every such commit through.
/// 64 KiB pages: the lock-byte page is page 16385; each transaction adds ~256 MiB.
#[test]
fn growing_past_the_lock_byte_page_at_one_gibibyte() {
    let Some(shell) = sqlite3() else { return };
    let server = Server::start().expect("server");
    let grow = "begin; insert into t select randomblob(1000000) from c limit 256; commit;\n";
    let script = format!(
        "{}.open lockbyte.db\npragma page_size=65536;\ncreate table t(b blob);\n\
         create temp view c as with recursive n(x) as (select 1 union all select x+1 from n limit 2000) select x from n;\n\
         {}select count(*), sum(length(b)) from t;\npragma page_count;\npragma integrity_check;\n",
        load_vfs(),
        grow.repeat(5)
    );
    let out = run(shell, &server.url, &script);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some("1280|1280000000"), "{stdout}");
    let pages: u64 = lines.get(1).and_then(|l| l.parse().ok()).unwrap_or(0);
    assert!(
        pages > 16_385,
        "the file grew past the lock-byte page: {pages} pages"
    );
    assert_eq!(lines.get(2).copied(), Some("ok"), "{stdout}");
}
