//! The `pagewire` command against a real server process (memory and embedded stores),
//! with data written through the VFS from Debian's Python: every command as a table
//! and as `--json`, and what a shell user gets wrong (bad arguments: exit code 2; an
//! unknown database, a wrong token, another tenant's database, no server: exit code 1
//! and a message).

use std::process::Output;

use pagewire_tests::python::{self, Driver};
use pagewire_tests::{Server, cli_binary};
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
