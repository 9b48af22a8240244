//! The `pagewire` command against a real server process (memory and embedded stores),
//! with data written through the VFS from Debian's Python: every command as a table
//! and as `--json`, and what a shell user gets wrong (bad arguments: exit code 2; an
//! unknown database, a wrong token, another tenant's database, no server: exit code 1
//! and a message).

use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use pagewire_tests::python::{self, Driver};
use pagewire_tests::{Server, cli_binary, wait_for};
use serde_json::Value;

const TOKENS: &str = r#"
[[token]]
token = "acme-token"
tenant = "acme"
role = "admin"

[[token]]
token = "acme-writer"
tenant = "acme"
role = "write"

[[token]]
token = "beta-token"
tenant = "beta"
role = "admin"
"#;

/// Runs `pagewire args...` against `url` as `token`.
fn pagewire(url: &str, token: &str, args: &[&str]) -> Output {
    std::process::Command::new(cli_binary().expect("pagewire binary"))
        .args(args)
        .env("PAGEWIRE_URL", url)
        .env("PAGEWIRE_TOKEN", token)
        .output()
        .expect("run pagewire")
}

/// Its stdout, which must be a success.
fn ok(url: &str, token: &str, args: &[&str]) -> String {
    let out = pagewire(url, token, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pagewire {args:?}: {stderr}");
    stdout
}

/// Its `--json` answer.
fn json(url: &str, token: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ok(url, token, &all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
}

/// The exit code and stderr of a command that must fail.
fn fails(url: &str, token: &str, args: &[&str]) -> (i32, String) {
    let out = pagewire(url, token, args);
    assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.stdout);
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn start(store: &[&str], dir: &std::path::Path) -> Server {
    let tokens = dir.join("tokens.toml");
    std::fs::write(&tokens, TOKENS).expect("tokens");
    let t = tokens.display().to_string();
    let mut args = vec!["--tokens", t.as_str()];
    args.extend_from_slice(store);
    Server::start_with(&args).expect("server")
}

#[test]
fn every_command_as_a_table_and_as_json() {
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    for store in [&["--store", "memory"][..], &[]] {
        let server = start(store, dir.path());
        let url = server.url.as_str();
        let t = "acme-token";
        let env = [("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", t)];
        let count = |db: &str| {
            let mut d = Driver::start(py, &env);
            d.open(1, &format!("file:{db}?vfs=pagewire")).expect("open");
            d.ok(1, "select count(*) from t")
        };

        let created = json(url, t, &["db", "create", "app"]);
        assert_eq!(created["name"], "app", "{store:?}: {created}");
        assert_eq!(created["version"], 0);
        let mut w = Driver::start(py, &env);
        // It gives the write lease back when idle (and lives on, as a killed process
        // would not), so the restore below need not wait for the lease to run out.
        w.open(1, "file:app?vfs=pagewire&lease_idle=100ms")
            .expect("open");
        w.ok(1, "create table t(x)");
        w.ok(1, "insert into t values (1), (2), (3)");
        let point = json(url, t, &["restore-point", "add", "app", "before"]);
        let before = point["version"].as_u64().expect("point version");
        w.ok(1, "insert into t select x + 3 from t");

        let info = json(url, t, &["db", "info", "app"]);
        assert!(info["version"].as_u64() > Some(before), "{info}");
        assert_eq!(info["page_size"], 4096, "{info}");
        assert!(info["stored_bytes"].as_u64() > Some(0), "{info}");
        assert!(ok(url, t, &["db", "info", "app"]).contains("page_size        4096"));

        let points = json(url, t, &["restore-point", "list", "app"]);
        assert_eq!(points[0]["label"], "before", "{points}");
        assert_eq!(points[0]["version"], before, "{points}");
        let table = ok(url, t, &["restore-point", "list", "app"]);
        assert!(
            table.starts_with("LABEL   VERSION  CREATED\nbefore  "),
            "{table}"
        );

        let fork = json(url, t, &["fork", "app", "trial", "--at", "before"]);
        assert_eq!(fork["name"], "trial", "{fork}");
        assert_eq!(
            count("trial"),
            "[(3,)]",
            "{store:?}: the fork is the point's state"
        );
        let restored = json(url, t, &["restore", "app", "--to", "before"]);
        assert_eq!(restored["restored_from"], before, "{restored}");
        assert_eq!(count("app"), "[(3,)]", "{store:?}: restored");
        // The restore is itself undone by restoring the version before it.
        let undo = (restored["version"].as_u64().expect("version") - 1).to_string();
        json(url, t, &["restore", "app", "--to", &undo]);
        assert_eq!(count("app"), "[(6,)]", "{store:?}: undone");

        let removed = json(url, t, &["restore-point", "rm", "app", "before"]);
        assert_eq!(removed["removed"], "before");
        assert_eq!(
            json(url, t, &["restore-point", "list", "app"]),
            Value::Array(vec![])
        );

        let names = |list: Value| -> Vec<Value> {
            list.as_array()
                .expect("array")
                .iter()
                .map(|d| d["name"].clone())
                .collect()
        };
        assert_eq!(names(json(url, t, &["db", "list"])), ["app", "trial"]);
        let table = ok(url, t, &["db", "list"]);
        let first = |line: &str| line.split_whitespace().next().map(str::to_owned);
        let column: Vec<_> = table.lines().filter_map(first).collect();
        assert_eq!(column, ["NAME", "app", "trial"], "{table}");
        assert!(
            table.starts_with("NAME   VERSION  PAGE_SIZE  PAGES"),
            "{table}"
        );
        assert_eq!(json(url, t, &["db", "delete", "trial"])["deleted"], "trial");
        assert_eq!(names(json(url, t, &["db", "list"])), ["app"]);
        assert_eq!(
            count("app"),
            "[(6,)]",
            "{store:?}: deleting the fork left its source"
        );

        // Another tenant sees none of it.
        let (code, err) = fails(url, "beta-token", &["db", "info", "app"]);
        assert_eq!(
            (code, err.starts_with("pagewire: not found:")),
            (1, true),
            "{err}"
        );
        assert_eq!(
            json(url, "beta-token", &["db", "list"]),
            Value::Array(vec![])
        );
        let (code, err) = fails(url, "beta-token", &["db", "delete", "app"]);
        assert_eq!(code, 1, "{err}");
        assert_eq!(count("app"), "[(6,)]");

        // A restore waits for a writer's lease as long as --wait says, past
        // --timeout, then says the database is busy.
        w.ok(1, "begin immediate");
        let started = std::time::Instant::now();
        let args = [
            "restore",
            "app",
            "--to",
            "2",
            "--wait",
            "3s",
            "--timeout",
            "1s",
        ];
        let (code, err) = fails(url, t, &args);
        assert_eq!(
            (code, err.starts_with("pagewire: busy: ")),
            (1, true),
            "{err}"
        );
        assert!(started.elapsed() > Duration::from_millis(2500), "{err}");
        w.ok(1, "rollback");
    }
}

#[test]
fn mistakes_get_a_message_and_the_exit_code_a_shell_expects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&["--store", "memory"], dir.path());
    let url = server.url.as_str();
    let t = "acme-token";
    ok(url, t, &["db", "create", "x"]);
    // Bad arguments: clap's usage message, exit code 2, nothing sent.
    for args in [
        &["db", "info"][..],
        &["frobnicate"],
        &["restore", "x"],
        &["restore", "x", "--to", "1", "--wait", "soon"],
        &["db", "list", "--timeout", "-1"],
        &["db", "list", "--client-cert", "c.pem"],
    ] {
        let (code, err) = fails(url, t, args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("Usage") || err.contains("error:"),
            "{args:?}: {err}"
        );
    }
    // The server's refusals: exit code 1 and its words.
    let cases: [(&str, &[&str], &str); 7] = [
        (t, &["db", "info", "nosuch"], "pagewire: not found: "),
        (t, &["db", "create", "x"], "pagewire: already exists: "),
        (
            t,
            &["restore-point", "rm", "x", "nope"],
            "pagewire: not found: ",
        ),
        (t, &["fork", "nosuch", "y"], "pagewire: not found: "),
        (t, &["db", "create", "bad\u{1}name"], "pagewire: refused: "),
        (
            "wrong-token",
            &["db", "list"],
            "pagewire: not authenticated",
        ),
        (
            "acme-writer",
            &["db", "delete", "x"],
            "pagewire: permission denied: ",
        ),
    ];
    for (token, args, start) in cases {
        let (code, err) = fails(url, token, args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.starts_with(start), "{args:?}: {err}");
    }
    let (code, err) = fails(url, t, &["restore", "x", "--to", "1", "--wait", "61s"]);
    assert_eq!(
        (code, err.as_str()),
        (1, "pagewire: --wait is at most 60s\n")
    );
    // No server there: said, and the command does not wait forever.
    let (code, err) = fails("http://127.0.0.1:1", t, &["db", "list", "--timeout", "2s"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("pagewire: cannot reach the server at http://127.0.0.1:1"),
        "{err}"
    );
    assert_eq!(
        json(url, t, &["db", "list"]).as_array().map(Vec::len),
        Some(1)
    );
}

#[test]
fn an_export_under_a_continuous_writer_is_one_committed_version_byte_for_byte() {
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&[], dir.path());
    let (url, t) = (server.url.as_str(), "acme-token");
    let env = [("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", t)];
    // The writer sets the database up, then writes until told to stop.
    let mut w = Driver::start(py, &env);
    w.open(1, "file:bank?vfs=pagewire").expect("writer open");
    w.ok(1, "create table t(id integer primary key, v int, pad blob)");
    w.ok(1, "create table meta(n int, s int)");
    w.ok(1, "insert into meta values (0, 0)");
    let check = "select (select count(*) from t) = (select n from meta), \
                 (select coalesce(sum(v), 0) from t) = (select s from meta), \
                 (select n from meta)";
    let stop = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    thread::scope(|s| {
        let (stop, written) = (&stop, &written);
        s.spawn(move || {
            for i in 1u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                w.ok(1, "begin immediate");
                w.ok(
                    1,
                    &format!("insert into t(v, pad) values ({i}, randomblob(5000))"),
                );
                w.ok(1, &format!("update meta set n = n + 1, s = s + {i}"));
                w.ok(1, "commit");
                written.fetch_add(1, Ordering::Relaxed);
            }
        });
        let _stop = StopOnDrop(stop);
        assert!(wait_for(Duration::from_secs(20), || written
            .load(Ordering::Relaxed)
            >= 50));
        let first = dir.path().join("first.db");
        let f = first.display().to_string();
        let exported = json(url, t, &["export", "bank", &f]);
        let version = exported["version"].as_u64().expect("version");
        let at = written.load(Ordering::Relaxed);
        // The file opens in plain SQLite (no pagewire) and holds one transaction's state.
        let mut plain = Driver::start(py, &env);
        plain
            .open(2, &format!("file:{f}?vfs=unix"))
            .expect("open the file");
        assert_eq!(plain.ok(2, "pragma integrity_check"), "[('ok',)]");
        let state = plain.ok(2, check);
        assert!(state.starts_with("[(1, 1, "), "{state}");
        // It is that version byte for byte: as read through the VFS, and as exported
        // again later (writers still going) at that version.
        let mut old = Driver::start(py, &env);
        old.open(
            3,
            &format!("file:bank?vfs=pagewire&as_of_version={version}"),
        )
        .expect("as of the export");
        assert_eq!(old.ok(3, check), state);
        assert!(wait_for(Duration::from_secs(20), || written
            .load(Ordering::Relaxed)
            >= at + 20));
        let second = dir.path().join("second.db");
        let s2 = second.display().to_string();
        let again = json(
            url,
            t,
            &["export", "bank", &s2, "--at", &version.to_string()],
        );
        assert_eq!(again["version"], version);
        let (a, b) = (std::fs::read(&first), std::fs::read(&second));
        assert!(
            a.expect("first") == b.expect("second"),
            "two exports of one version differ"
        );
        let newest = json(url, t, &["db", "info", "bank"]);
        assert!(newest["version"].as_u64() > Some(version), "{newest}");
    });
    // What is refused leaves no file behind.
    let out = dir.path().join("none.db");
    let o = out.display().to_string();
    let (code, err) = fails(url, t, &["export", "nosuch", &o]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("pagewire: not found: "), "{err}");
    let (code, err) = fails(url, t, &["export", "bank", &o, "--at", "999999"]);
    assert_eq!(code, 1, "{err}");
    assert!(!out.exists() && !dir.path().join("none.db.partial").exists());
    let (code, err) = fails(
        url,
        t,
        &[
            "export",
            "bank",
            &dir.path().join("first.db").display().to_string(),
        ],
    );
    assert_eq!((code, err.contains("--force")), (1, true), "{err}");
}

/// Sets the flag when dropped (also while unwinding), so the writer thread ends.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An export streams: the `pagewire` process's peak RSS stays under 200 MiB however
/// big the database (`PAGEWIRE_EXPORT_TEST_MIB` MiB, default 64; 1024 for the full
/// size, which also prints the throughput).
#[test]
fn an_export_of_a_big_database_streams_in_bounded_memory() {
    let Some(py) = python::python() else { return };
    let mib: u64 = std::env::var("PAGEWIRE_EXPORT_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&[], dir.path());
    let (url, t) = (server.url.as_str(), "acme-token");
    let env = [("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", t)];
    let mut p = Driver::start(py, &env);
    p.open(1, "file:big?vfs=pagewire").expect("open");
    p.ok(1, "create table t(b blob)");
    for _ in 0..mib.div_ceil(16) {
        p.ok(
            1,
            "insert into t select randomblob(1048576) from \
             (with recursive n(x) as (select 1 union all select x + 1 from n limit 16) \
              select x from n)",
        );
    }
    let file = dir.path().join("big.db");
    let f = file.display().to_string();
    let (out, peak_kib) = run_measured(url, t, &["--json", "export", "big", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: Value = serde_json::from_slice(&out.stdout).expect("json");
    eprintln!("export of {mib} MiB: {exported}, peak RSS {peak_kib} KiB");
    assert!(exported["bytes"].as_u64() >= Some(mib << 20), "{exported}");
    assert!(peak_kib < 200 << 10, "the export peaked at {peak_kib} KiB");
    let mut plain = Driver::start(py, &env);
    plain
        .open(2, &format!("file:{f}?vfs=unix"))
        .expect("open the file");
    assert_eq!(plain.ok(2, "pragma quick_check"), "[('ok',)]");
    let rows = plain.ok(2, "select count(*) from t");
    assert_eq!(rows, format!("[({},)]", mib.div_ceil(16) * 16));
    drop(plain);

    // The way back: the file imported streams too, and exports again byte for byte.
    let (out, peak_kib) = run_measured(url, t, &["--json", "import", "big-copy", &f]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported: Value = serde_json::from_slice(&out.stdout).expect("json");
    eprintln!("import of {mib} MiB: {imported}, peak RSS {peak_kib} KiB");
    assert!(peak_kib < 200 << 10, "the import peaked at {peak_kib} KiB");
    let again = dir.path().join("again.db");
    let a = again.display().to_string();
    ok(url, t, &["export", "big-copy", &a]);
    let same = files_equal(&file, &again);
    assert!(
        same,
        "the imported database exports as the file it came from"
    );
}

/// Whether two files hold the same bytes, compared a MiB at a time.
fn files_equal(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).expect("open"),
        std::fs::File::open(b).expect("open"),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).expect("read");
        let mut m = 0;
        while m < n {
            let k = fb.read(&mut bb[m..n]).expect("read");
            if k == 0 {
                return false;
            }
            m += k;
        }
        if ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return fb.read(&mut bb).expect("read") == 0;
        }
    }
}

/// Runs `pagewire args...` and waits for it with wait4, for its own peak RSS (KiB).
// The child is reaped by wait4 below, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(url: &str, token: &str, args: &[&str]) -> (Output, i64) {
    use std::io::Read;
    let mut child = std::process::Command::new(cli_binary().expect("pagewire binary"))
        .args(args)
        .env("PAGEWIRE_URL", url)
        .env("PAGEWIRE_TOKEN", token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pagewire");
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    // Small outputs: reading them before waiting cannot fill a pipe and block.
    if let Some(o) = child.stdout.as_mut() {
        o.read_to_end(&mut stdout).expect("stdout");
    }
    if let Some(e) = child.stderr.as_mut() {
        e.read_to_end(&mut stderr).expect("stderr");
    }
    let mut status = 0;
    // SAFETY: wait4 writes only into the two locals; the pid is our own child, not
    // yet reaped (std's Child is not waited on after this).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = i32::try_from(child.id()).expect("pid");
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4");
    let status = std::os::unix::process::ExitStatusExt::from_raw(status);
    (
        Output {
            status,
            stdout,
            stderr,
        },
        usage.ru_maxrss,
    )
}

/// `pagewire import`: a sound file becomes a new database that reads back through the
/// VFS; garbage, a truncated file, a damaged one, a WAL-mode file whose `-wal` holds
/// commits and an existing name are refused, and nothing is created.
#[test]
fn an_import_takes_only_a_sound_file_and_creates_nothing_otherwise() {
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&[], dir.path());
    let (url, t) = (server.url.as_str(), "acme-token");
    let env = [("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", t)];
    let path = |name: &str| dir.path().join(name).display().to_string();
    let mut local = Driver::start(py, &env);
    local
        .open(1, &format!("file:{}?vfs=unix", path("good.db")))
        .expect("open");
    local.ok(1, "create table t(id integer primary key, s text)");
    local.ok(
        1,
        "insert into t(s) select hex(randomblob(100)) from \
         (with recursive n(x) as (select 1 union all select x + 1 from n limit 2000) select x from n)",
    );
    let good = std::fs::read(path("good.db")).expect("read");
    std::fs::write(path("junk.db"), vec![7u8; 8192]).expect("junk");
    std::fs::write(path("short.db"), &good[..good.len() / 2]).expect("short");
    let mut damaged = good.clone();
    damaged[4096 * 3 + 8..4096 * 3 + 400].fill(0xA5); // inside a b-tree page
    std::fs::write(path("damaged.db"), &damaged).expect("damaged");
    // WAL mode with its commits still in the -wal: the connection stays open.
    local
        .open(2, &format!("file:{}?vfs=unix", path("wal.db")))
        .expect("open");
    local.ok(2, "pragma journal_mode=wal");
    local.ok(2, "pragma wal_autocheckpoint=0");
    local.ok(2, "create table w(x)");
    local.ok(2, "insert into w values (1), (2), (3)");

    for (file, says) in [
        ("junk.db", "not an SQLite database"),
        ("short.db", "truncated"),
        ("damaged.db", "damaged"),
        ("wal.db", "WAL mode"),
        ("missing.db", "cannot open"),
    ] {
        let (code, err) = fails(url, t, &["import", "copy", &path(file)]);
        assert_eq!((code, err.contains(says)), (1, true), "{file}: {err}");
    }
    let listed = json(url, t, &["db", "list"]);
    assert_eq!(listed, serde_json::json!([]), "nothing was created");

    let imported = json(url, t, &["import", "copy", &path("good.db")]);
    assert_eq!(imported["version"], 1, "{imported}");
    assert_eq!(imported["bytes"].as_u64(), Some(good.len() as u64));
    let (code, err) = fails(url, t, &["import", "copy", &path("good.db")]);
    assert_eq!((code, err.contains("already exists")), (1, true), "{err}");
    local
        .open(3, "file:copy?vfs=pagewire")
        .expect("open the copy");
    assert_eq!(local.ok(3, "pragma integrity_check"), "[('ok',)]");
    assert_eq!(local.ok(3, "select count(*) from t"), "[(2000,)]");
    local.ok(3, "insert into t(s) values ('written after the import')");
    assert_eq!(local.ok(3, "select count(*) from t"), "[(2001,)]");

    // Closed, the WAL is checkpointed into the file: then it imports, in the
    // rollback-journal format.
    local.ok(2, "pragma wal_checkpoint(truncate)");
    let imported = json(url, t, &["import", "from-wal", &path("wal.db")]);
    assert_eq!(imported["from_wal"], true, "{imported}");
    local.open(4, "file:from-wal?vfs=pagewire").expect("open");
    assert_eq!(local.ok(4, "pragma journal_mode"), "[('delete',)]");
    assert_eq!(local.ok(4, "select sum(x) from w"), "[(6,)]");
}

/// `pagewire watch`: an NDJSON line per commit, in order, on a stream that outlives
/// `--timeout`; `--count` ends it; an unknown database is exit code 1.
#[test]
fn watch_prints_a_line_per_commit_and_outlives_the_call_timeout() {
    use std::io::Read;
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&[], dir.path());
    let (url, t) = (server.url.as_str(), "acme-token");
    let env = [("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", t)];
    let mut w = Driver::start(py, &env);
    w.open(1, "file:watched?vfs=pagewire").expect("open");
    w.ok(1, "create table t(x)");
    let mut watcher = std::process::Command::new(cli_binary().expect("pagewire binary"))
        .args([
            "--json",
            "--timeout",
            "1s",
            "watch",
            "watched",
            "--count",
            "3",
        ])
        .env("PAGEWIRE_URL", url)
        .env("PAGEWIRE_TOKEN", t)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pagewire watch");
    thread::sleep(Duration::from_millis(1500)); // past --timeout before any commit
    let mut done = None;
    for i in 0..100 {
        w.ok(1, &format!("insert into t values ({i})"));
        if let Some(status) = watcher.try_wait().expect("wait") {
            done = Some(status);
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(o) = watcher.stdout.as_mut() {
        o.read_to_string(&mut out).expect("stdout");
    }
    if let Some(e) = watcher.stderr.as_mut() {
        e.read_to_string(&mut err).expect("stderr");
    }
    let status = match done {
        Some(s) => s,
        None => {
            let _ = watcher.kill();
            panic!("the watch did not end after 3 commits: {out} {err}")
        }
    };
    assert!(status.success(), "{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    let versions: Vec<u64> = lines.iter().filter_map(|l| l["version"].as_u64()).collect();
    assert_eq!(versions.len(), 3, "{out}");
    assert!(versions.windows(2).all(|v| v[0] < v[1]), "{versions:?}");
    assert!(versions[0] >= 2, "after the create: {versions:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["name"] == "watched" && l["changed_pages"].as_u64() > Some(0)),
        "{out}"
    );
    let (code, err) = fails(url, t, &["watch", "nope", "--count", "1"]);
    assert_eq!((code, err.contains("not found")), (1, true), "{err}");
}

/// `pagewire gc` with the operator's token runs a history GC pass now and says what
/// it collected; a tenant's token is refused.
#[test]
fn gc_runs_a_pass_now_with_the_operators_token_only() {
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = dir.path().join("operator");
    std::fs::write(&operator, "op-secret\n").expect("operator");
    let o = operator.display().to_string();
    // Retention 1s and no background pass within the test: only `pagewire gc` collects.
    let flags = [
        "--operator-token-file",
        o.as_str(),
        "--history-retention",
        "1s",
        "--gc-interval",
        "1h",
    ];
    let server = start(&flags, dir.path());
    let (url, t) = (server.url.as_str(), "acme-token");
    let mut w = Driver::start(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_TOKEN", t)]);
    w.open(1, "file:churn?vfs=pagewire").expect("open");
    w.ok(1, "create table t(x)");
    for i in 0..5 {
        w.ok(1, &format!("insert into t values (randomblob(3000 + {i}))"));
    }
    drop(w);
    thread::sleep(Duration::from_millis(1500));
    let (code, err) = fails(url, t, &["gc"]);
    assert_eq!(code, 1, "{err}");
    let ran = json(url, "op-secret", &["gc"]);
    assert!(ran["versions_collected"].as_u64() >= Some(5), "{ran}");
    assert!(ran["bytes_freed"].as_u64() > Some(0), "{ran}");
    let again = json(url, "op-secret", &["gc"]);
    assert_eq!(again["versions_collected"], 0, "nothing left: {again}");
}
