//! The server in FDB-limits mode (`--store embedded-fdb-limits`: the embedded store
//! held to FoundationDB's limits, trusting no cache), used as users use it: Debian's
//! Python writes a 32 MiB transaction (over FoundationDB's 10 MB, so it is staged and
//! then published) and many small ones; after a restart a new Python process and the
//! stock sqlite3 shell read it all back intact. The data directory then holds the
//! staged version. The server refuses read leases in this mode.

use std::process::Output;

use pagewire_store_kv::{Engine as _, FjallEngine};
use pagewire_tests::{Server, python, shell, text};

const WRITER: &str = r#"
name = sys.argv[2]
db = sqlite3.connect(name)
db.execute("create table blobs(id integer primary key, body blob)")
with db:
    for i in range(32):
        db.execute("insert into blobs(body) values (randomblob(1048576))")
for i in range(200):
    with db:
        db.execute("insert into blobs(body) values (randomblob(100))")
print(db.execute("select count(*), sum(length(body)) from blobs").fetchone())
db.close()
"#;

const READER: &str = r#"
name = sys.argv[2]
db = sqlite3.connect(name)
print(db.execute("select count(*), sum(length(body)) from blobs").fetchone())
print(db.execute("pragma integrity_check").fetchone()[0])
print(db.execute("select sum(unicode(substr(body, 1000, 1))) from blobs").fetchone()[0])
db.close()
"#;

fn run(python: &str, url: &str, script: &str, name: &str) -> Output {
    python::command(python, script)
        .expect("VFS library")
        .arg(name)
        .env("PAGEWIRE_URL", url)
        .output()
        .expect("python")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn a_big_transaction_through_python_is_staged_and_survives_a_restart() {
    let Some(python) = python::python() else {
        return;
    };
    let dir = pagewire_tests::data_dir().expect("data directory");
    let path = dir.path().display().to_string();
    let flags = [
        "--store",
        "embedded-fdb-limits",
        "--data-dir",
        path.as_str(),
    ];
    let server = Server::start_with(&flags).expect("server");
    let name = "big/staged.db";
    let wrote = ok(&run(python, &server.url, WRITER, name), "writer");
    assert_eq!(wrote.trim(), "(232, 33574432)");
    let before = ok(&run(python, &server.url, READER, name), "reader");
    drop(server);

    let server = Server::start_with(&flags).expect("server again");
    let after = ok(
        &run(python, &server.url, READER, name),
        "reader after restart",
    );
    assert_eq!(after, before, "the same data after a restart");
    assert!(after.starts_with("(232, 33574432)\nok\n"), "{after}");
    if let Some(sqlite3) = shell::sqlite3() {
        let script = format!(
            "{}\n.open {name}\nselect count(*) from blobs;\npragma integrity_check;\n",
            shell::load_vfs()
        );
        let out = shell::run(sqlite3, &[("PAGEWIRE_URL", &server.url)], &script);
        assert_eq!(ok(&out, "sqlite3").trim(), "232\nok");
    }
    drop(server);

    // The 32 MiB transaction went through a stage: its version names one.
    let engine = FjallEngine::open(dir.path()).expect("the stopped server's directory");
    let staged = engine
        .snapshot()
        .and_then(|snap| snap.scan(b"g", b"h", false, usize::MAX))
        .expect("scan");
    assert_eq!(staged.len(), 1, "one staged version");
    let markers = engine
        .snapshot()
        .and_then(|snap| snap.scan(b"s", b"t", false, usize::MAX))
        .expect("scan");
    assert!(markers.is_empty(), "no stage left unpublished");
}

#[test]
fn fdb_limits_mode_refuses_read_leases() {
    let dir = pagewire_tests::data_dir().expect("data directory");
    let out = std::process::Command::new(pagewire_tests::server_binary().expect("server"))
        .args(["--listen", "127.0.0.1:0", "--store", "embedded-fdb-limits"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--read-lease-ttl", "1s"])
        .output()
        .expect("run the server");
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(stderr.contains("no read leases"), "{stderr}");
}
