//! Safe defaults (issue 12, item 6), through the real binaries:
//!
//! - a non-loopback `--listen` without `--tokens` refuses to start, unless
//!   `--insecure-no-auth`;
//! - `PAGEWIRE_TOKEN` goes only to `PAGEWIRE_URL`'s server: a filename whose `url=`
//!   names another server (an `ATTACH` in a query) gets its own `token=` or none. A
//!   fake gRPC server records the `authorization` header of every call it receives;
//!   the stock sqlite3 shell drives the real VFS;
//! - tokens never appear in the server's or the VFS's messages (a bad tokens file, a
//!   URL or token the VFS refuses, a URI filename opened without URI processing).
//!
//! Name and metrics rules are tested over gRPC in server/core/tests/safe_defaults.rs.

use std::{
    convert::Infallible,
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use pagewire_tests::{
    Server,
    admin::Admin,
    child_test, fake_server,
    hostile::write_tokens,
    listening_url, server_binary,
    shell::{self, sqlite3},
    text,
};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

// 1. A public --listen needs --tokens.

/// Runs the server with `args`: `Ok(url)` once it printed its listening line (then it
/// is killed), `Err((exit code, stderr))` when it exited instead.
fn try_start(args: &[&str]) -> Result<String, (Option<i32>, String)> {
    let mut child = Command::new(server_binary().expect("server binary"))
        .args(["--store", "memory"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pagewire-server");
    if let Ok(url) = listening_url(&mut child) {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(url);
    }
    let out = child.wait_with_output().expect("server exit");
    Err((out.status.code(), text(&out.stderr)))
}

#[test]
fn a_public_listen_address_without_tokens_refuses_to_start() {
    for public in ["0.0.0.0:0", "[::]:0"] {
        let (code, stderr) = try_start(&["--listen", public]).expect_err("must refuse");
        assert_eq!(code, Some(1), "{stderr}");
        for needle in [
            "refusing to listen on",
            "not loopback",
            "--tokens",
            "--insecure-no-auth",
            "127.0.0.1",
        ] {
            assert!(
                stderr.contains(needle),
                "the message says {needle:?}: {stderr}"
            );
        }
    }
    // The way out: a tokens file, or saying so.
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write_tokens(dir.path(), &[("t0ken", "acme")]).expect("tokens");
    let tokens = tokens.to_str().expect("utf-8 path");
    let url = try_start(&["--listen", "0.0.0.0:0", "--tokens", tokens]).expect("with --tokens");
    assert!(url.starts_with("http://0.0.0.0:"), "{url}");
    try_start(&["--listen", "0.0.0.0:0", "--insecure-no-auth"]).expect("with --insecure-no-auth");
    // Loopback needs nothing: the default address, any 127/8 address.
    try_start(&["--listen", "127.0.0.1:0"]).expect("127.0.0.1");
    try_start(&["--listen", "127.0.0.2:0"]).expect("127.0.0.2 is loopback too");
    // Both at once contradict each other: a usage error.
    let (code, stderr) = try_start(&[
        "--listen",
        "0.0.0.0:0",
        "--tokens",
        tokens,
        "--insecure-no-auth",
    ])
    .expect_err("contradictory flags");
    assert_eq!(code, Some(2), "{stderr}");
}

// 2. The environment's token stays with the environment's server.

/// A fake gRPC server for the Pages service: records the `authorization` header (None
/// when absent) of every call, and answers each with UNAUTHENTICATED.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Call>>>,
}

/// A call's path and its `authorization` header.
type Call = (String, Option<String>);

impl NamedService for Recorder {
    const NAME: &'static str = "pagewire.v1.Pages";
}

impl Service<http::Request<Body>> for Recorder {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let auth = request
            .headers()
            .get("authorization")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        self.seen
            .lock()
            .expect("lock")
            .push((request.uri().path().to_owned(), auth));
        std::future::ready(Ok(
            tonic::Status::unauthenticated("recording fake server").into_http()
        ))
    }
}

impl Recorder {
    /// Serves on a free loopback port until `rt` is dropped; returns its URL.
    fn start(&self, rt: &tokio::runtime::Runtime) -> String {
        let router = tonic::transport::Server::builder().add_service(self.clone());
        fake_server::serve(rt, router)
    }

    /// The authorization headers of every Open call so far.
    fn opens(&self) -> Vec<Option<String>> {
        let seen = self.seen.lock().expect("lock");
        seen.iter()
            .filter(|(path, _)| path.ends_with("/Open"))
            .map(|(_, a)| a.clone())
            .collect()
    }

    fn all(&self) -> Vec<Option<String>> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, a)| a.clone())
            .collect()
    }

    fn clear(&self) {
        self.seen.lock().expect("lock").clear();
    }
}

/// Runs the stock shell on `script` with the VFS loaded, `env` set and short deadlines.
fn run_shell(sqlite3: &str, env: &[(&str, &str)], script: &str) -> Output {
    let deadlines = [
        ("PAGEWIRE_CONNECT_TIMEOUT", "2s"),
        ("PAGEWIRE_RETRY_TIMEOUT", "2s"),
    ];
    let env: Vec<_> = env.iter().chain(&deadlines).copied().collect();
    shell::run(sqlite3, &env, &format!("{}{script}", shell::load_vfs()))
}

/// The VFS's own lines on stderr (its log lines start `pagewire:` after the level).
fn vfs_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("pagewire:")).collect()
}

const ENV_TOKEN: &str = "env-secret-7f3a";
const OWN_TOKEN: &str = "own-secret-91c2";

#[test]
fn the_environment_token_never_follows_a_filename_to_another_server() {
    let Some(sqlite3) = sqlite3() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let recorder = Recorder::default();
    let fake = recorder.start(&rt);
    // The environment's server knows the environment's token only.
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = write_tokens(dir.path(), &[(ENV_TOKEN, "acme")]).expect("tokens");
    let home = Server::start_with(&["--tokens", tokens.to_str().expect("utf-8")]).expect("server");
    let env = [
        ("PAGEWIRE_URL", home.url.as_str()),
        ("PAGEWIRE_TOKEN", ENV_TOKEN),
    ];

    let out = run_shell(
        sqlite3,
        &env,
        &format!(
            ".open file:home.db\n\
         create table t(a); insert into t values (1);\n\
         ATTACH 'file:x.db?url={fake}' AS x;\n\
         ATTACH 'file:y.db?url={fake}&token={OWN_TOKEN}' AS y;\n\
         ATTACH 'file:w.db?url={home}/' AS w;\n\
         create table w.u(b);\n\
         select count(*) from t;\n\
         select count(*) from w.sqlite_schema;\n",
            home = home.url
        ),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        stdout, "1\n1\n",
        "home.db and w.db (the same server, spelt with a slash) work: {stderr}"
    );
    assert_eq!(
        recorder.opens(),
        vec![None, Some(format!("Bearer {OWN_TOKEN}"))],
        "x.db got no token, y.db its own; stderr: {stderr}"
    );
    assert!(
        recorder
            .all()
            .iter()
            .flatten()
            .all(|a| !a.contains(ENV_TOKEN)),
        "{:?}",
        recorder.all()
    );
    for line in vfs_lines(&stderr) {
        assert!(
            !line.contains(ENV_TOKEN) && !line.contains(OWN_TOKEN),
            "a token in the VFS's message: {line}"
        );
    }

    // Control: the recorder does see the environment's token when it is the
    // environment's server.
    recorder.clear();
    let env = [
        ("PAGEWIRE_URL", fake.as_str()),
        ("PAGEWIRE_TOKEN", ENV_TOKEN),
    ];
    let out = run_shell(
        sqlite3,
        &env,
        ".open file:z.db\nselect count(*) from sqlite_schema;\n",
    );
    assert_eq!(
        recorder.opens(),
        vec![Some(format!("Bearer {ENV_TOKEN}"))],
        "{}",
        text(&out.stderr)
    );
    for line in vfs_lines(&text(&out.stderr)) {
        assert!(
            !line.contains(ENV_TOKEN),
            "a token in the VFS's message: {line}"
        );
    }
}

// 3. Tokens never appear in messages.

#[test]
fn a_bad_tokens_file_is_reported_without_its_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (i, body) in [
        "[[token]]\ntoken = \"file-secret-1\" tenant = \"acme\"\n",
        "[[token]]\ntoken = \"file-secret-2\"\ntenant = \"acme\"\nadmin = \"file-secret-2\"\n",
        "[[token]]\ntoken = \"file-secret-3\ntenant = \"acme\"\n",
    ]
    .iter()
    .enumerate()
    {
        let path = dir.path().join(format!("tokens{i}.toml"));
        std::fs::write(&path, body).expect("write");
        let (code, stderr) = try_start(&[
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            path.to_str().expect("utf-8"),
        ])
        .expect_err("bad file");
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("bad TOML: line"), "says where: {stderr}");
        assert!(!stderr.contains("file-secret"), "quotes a token: {stderr}");
    }
}

#[test]
fn the_vfs_never_prints_a_token() {
    let Some(sqlite3) = sqlite3() else { return };
    let server = Server::start().expect("server");
    let env = [
        ("PAGEWIRE_URL", server.url.as_str()),
        ("PAGEWIRE_TOKEN", ENV_TOKEN),
    ];
    // A URL carrying a token in its query (%3F is '?', %3D '='), a token= SQLite
    // decodes to one with a space, a URL with a password: each refused, the values
    // left out of the VFS's message.
    let out = run_shell(
        sqlite3,
        &env,
        &format!(
            ".open file:a.db?url=http://127.0.0.1:1/%3Ftoken%3D{OWN_TOKEN}\n\
         select 1;\n\
         .open file:b.db?token={OWN_TOKEN}%20x\n\
         select 2;\n\
         .open file:c.db?url=http://user:{OWN_TOKEN}@127.0.0.1:1\n\
         select 3;\n\
         .open file:d.db?url=http://127.0.0.1:1\n\
         select 4;\n"
        ),
    );
    let stderr = text(&out.stderr);
    let lines = vfs_lines(&stderr);
    assert!(lines.len() >= 4, "one message per refused open: {stderr}");
    assert!(
        lines.iter().any(|l| l.contains("takes no query")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("token=") && l.contains("printable ASCII")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.contains("user or password")),
        "{stderr}"
    );
    for line in lines {
        assert!(
            !line.contains(OWN_TOKEN) && !line.contains(ENV_TOKEN),
            "a token in the VFS's message: {line}"
        );
    }
}

/// Without URI processing (SQLite built without `SQLITE_USE_URI`, or configured off,
/// and no `SQLITE_OPEN_URI`) a `file:...?token=...` name would reach the server, token
/// and all, as a database name. Debian's SQLite and rusqlite's bundled one enable URIs
/// by default, so the child turns them off (`SQLITE_CONFIG_URI` 0) before SQLite starts.
#[test]
fn a_uri_filename_opened_without_uri_processing_is_refused() {
    let server = Server::start().expect("server");
    let out = child_test("child_opens_without_uri_processing")
        .env("PAGEWIRE_URL", &server.url)
        .env("SAFE_DEFAULTS_CHILD", "1")
        .output()
        .expect("child");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "child: {stdout} {stderr}");
    assert!(
        stdout.contains("child: refused\nchild: plain ok\n"),
        "{stdout} {stderr}"
    );
    assert!(
        stderr.contains("SQLITE_OPEN_URI"),
        "says how to fix it: {stderr}"
    );
    assert!(
        !stderr.contains(OWN_TOKEN) && !stdout.contains(OWN_TOKEN),
        "{stderr}"
    );
    // Only the plain database exists on the server: the name never reached it.
    let names = Admin::connect(&server.url).database_names();
    assert_eq!(names, vec!["plain.db".to_owned()]);
}

#[test]
#[ignore = "run by a_uri_filename_opened_without_uri_processing_is_refused as a child process"]
fn child_opens_without_uri_processing() {
    use rusqlite::{Connection, OpenFlags};
    if std::env::var_os("SAFE_DEFAULTS_CHILD").is_none() {
        return;
    }
    // SAFETY: before SQLite is initialized, on the only thread using it.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_URI, 0 as std::ffi::c_int)
    };
    assert_eq!(rc, rusqlite::ffi::SQLITE_OK, "SQLITE_CONFIG_URI");
    // A Rust program that links the VFS sees its messages through its own subscriber.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    pagewire_vfs::register(false).expect("register the VFS");
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    let first_read = |c: Connection| {
        c.query_row("select count(*) from sqlite_schema", [], |r| {
            r.get::<_, i64>(0)
        })
    };
    let leak = Connection::open_with_flags_and_vfs(
        format!("file:leak.db?token={OWN_TOKEN}"),
        flags,
        "pagewire",
    )
    .and_then(first_read);
    println!(
        "child: {}",
        if leak.is_err() { "refused" } else { "opened" }
    );
    let plain =
        Connection::open_with_flags_and_vfs("plain.db", flags, "pagewire").expect("open plain.db");
    plain.execute_batch("create table t(a)").expect("create");
    println!("child: plain ok");
}
