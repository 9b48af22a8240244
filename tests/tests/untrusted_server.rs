//! Trust nothing from the server, and protocol compatibility (issue 12, items 3 and 8).
//!
//! A fake `Pages` server (tonic, on 127.0.0.1:0, in a runtime of its own) serves one
//! database, built by stock SQLite on a local file, and answers like a pagewire server
//! until the test's script makes it misbehave: an older server, one that needs a newer
//! client, states no SQLite file can have, replies that do not fit the request, another
//! incarnation, odd leases, commits that did not follow, a reply that never comes, a
//! Watch round with a huge change list. Real SQLite drives the real VFS (in-process
//! through rusqlite, and the stock `sqlite3` shell or Debian's Python for the messages on
//! stderr). Each case must end in an SQLite error, never a crash, within a few seconds;
//! the next statement still gets an answer, and the VFS's message says what was wrong.
//!
//! In-process, the VFS's messages are read from SQLite's error log (`sqlite3_log`),
//! which this binary hooks before SQLite initializes.

mod common;

use std::{
    collections::HashMap,
    ffi::{CStr, c_char, c_int, c_void},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::rw;
use futures::stream::BoxStream;
use pagewire_proto::{PROTOCOL_REVISION, capability, v1 as pb};
use pagewire_tests::{
    fake_server,
    python::{Driver, python},
    shell, text,
};
use pb::{commit_request, watch_event::Event, watch_request};
use rusqlite::{Connection, ErrorCode};
use tonic::{Request, Response, Status, Streaming};

const PS: u32 = 4096;
/// What "within a few seconds" means here (calls have `call_timeout=1s`).
const FEW_SECONDS: Duration = Duration::from_secs(5);

// The fake server.

/// How the fake answers one call.
enum Reply<T> {
    Send(T),
    Fail(Status),
    /// Never answers.
    Hang,
}

/// Turns the answer a sane server would give to the `n`-th call (from 0) into the one
/// the fake gives.
type Hook<T> = Box<dyn Fn(usize, T) -> Reply<T> + Send + Sync>;

/// `f` applied to every answer.
fn always<T: 'static>(f: impl Fn(T) -> T + Send + Sync + 'static) -> Option<Hook<T>> {
    Some(Box::new(move |_, t| Reply::Send(f(t))))
}

/// Events a Watch stream sends when the test fires them ([`FakeServer::fire`]), once it
/// granted a read lease; may change the database.
type WatchScript = Arc<dyn Fn(&mut Db) -> Vec<Event> + Send + Sync>;

#[derive(Default)]
struct Script {
    open: Option<Hook<pb::OpenResponse>>,
    begin_read: Option<Hook<pb::BeginReadResponse>>,
    read_pages: Option<Hook<pb::ReadPagesResponse>>,
    /// AcquireLease and RenewLease.
    lease: Option<Hook<pb::LeaseResponse>>,
    commit: Option<Hook<pb::CommitResponse>>,
    /// None: Watch is UNIMPLEMENTED (readers ask BeginRead).
    watch: Option<WatchScript>,
}

/// The one database the fake holds.
struct Db {
    incarnation: [u8; 16],
    version: u64,
    tag: [u8; 16],
    image: Vec<u8>,
}

impl Db {
    fn new(image: Vec<u8>) -> Self {
        let version = u64::from(!image.is_empty());
        let tag = if version == 0 {
            [0; 16]
        } else {
            rand::random()
        };
        Self {
            incarnation: rand::random(),
            version,
            tag,
            image,
        }
    }

    fn page_count(&self) -> u32 {
        (self.image.len() / PS as usize) as u32
    }

    fn state(&self) -> pb::DbState {
        let page_count = self.page_count();
        pb::DbState {
            version: self.version,
            page_size: if page_count == 0 { 0 } else { PS },
            page_count,
            incarnation: Bytes::copy_from_slice(&self.incarnation),
            tag: Bytes::copy_from_slice(&self.tag),
        }
    }

    /// Page `no` (zeros past the end).
    fn page(&self, no: u32) -> Bytes {
        let mut page = vec![0u8; PS as usize];
        let start = (no as usize).saturating_sub(1) * PS as usize;
        if no >= 1 && start < self.image.len() {
            page.copy_from_slice(&self.image[start..start + PS as usize]);
        }
        Bytes::from(page)
    }

    /// A new version, as a commit makes it.
    fn bump(&mut self) {
        self.version += 1;
        self.tag = rand::random();
    }
}

struct Fake {
    db: Arc<Mutex<Db>>,
    script: Script,
    calls: Mutex<HashMap<&'static str, usize>>,
    /// Fires the Watch script.
    fire: Arc<tokio::sync::Notify>,
}

impl Fake {
    fn state(&self) -> pb::DbState {
        self.db.lock().expect("db").state()
    }

    fn calls(&self, rpc: &str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .get(rpc)
            .copied()
            .unwrap_or(0)
    }

    async fn answer<T: Send>(
        &self,
        rpc: &'static str,
        sane: T,
        hook: Option<&Hook<T>>,
    ) -> Result<Response<T>, Status> {
        let n = {
            let mut calls = self.calls.lock().expect("calls");
            let count = calls.entry(rpc).or_default();
            *count += 1;
            *count - 1
        };
        let reply = match hook {
            Some(h) => h(n, sane),
            None => Reply::Send(sane),
        };
        match reply {
            Reply::Send(t) => Ok(Response::new(t)),
            Reply::Fail(status) => Err(status),
            Reply::Hang => futures::future::pending().await,
        }
    }

    fn lease(&self) -> pb::LeaseResponse {
        pb::LeaseResponse {
            lease_id: Bytes::from_static(&[7; 16]),
            epoch: 1,
            ttl_ms: 10_000,
            state: Some(self.state()),
        }
    }
}

fn sane_open(state: pb::DbState) -> pb::OpenResponse {
    pb::OpenResponse {
        state: Some(state),
        created: false,
        limits: Some(pb::Limits {
            max_pages_per_read: 256,
            max_message_bytes: 16 << 20,
            max_commit_bytes: 64 << 20,
        }),
        lease_ttl_ms: 10_000,
        heartbeat_ms: 3_000,
        capabilities: vec![capability::INCARNATIONS.into(), capability::RANGES.into()],
        protocol: PROTOCOL_REVISION,
        min_client_protocol: 0,
    }
}

#[tonic::async_trait]
impl pb::pages_server::Pages for Fake {
    async fn open(
        &self,
        _: Request<pb::OpenRequest>,
    ) -> Result<Response<pb::OpenResponse>, Status> {
        self.answer("Open", sane_open(self.state()), self.script.open.as_ref())
            .await
    }

    async fn acquire_lease(
        &self,
        _: Request<pb::AcquireLeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        self.answer("AcquireLease", self.lease(), self.script.lease.as_ref())
            .await
    }

    async fn renew_lease(
        &self,
        _: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        self.answer("RenewLease", self.lease(), self.script.lease.as_ref())
            .await
    }

    async fn release_lease(
        &self,
        _: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        self.answer("ReleaseLease", pb::ReleaseLeaseResponse {}, None)
            .await
    }

    async fn begin_read(
        &self,
        _: Request<pb::BeginReadRequest>,
    ) -> Result<Response<pb::BeginReadResponse>, Status> {
        let sane = pb::BeginReadResponse {
            state: Some(self.state()),
            cache_invalid: true,
            ..Default::default()
        };
        self.answer("BeginRead", sane, self.script.begin_read.as_ref())
            .await
    }

    async fn read_pages(
        &self,
        request: Request<pb::ReadPagesRequest>,
    ) -> Result<Response<pb::ReadPagesResponse>, Status> {
        let sane = {
            let db = self.db.lock().expect("db");
            let pages = request
                .get_ref()
                .page_nos
                .iter()
                .map(|no| db.page(*no))
                .collect();
            pb::ReadPagesResponse {
                page_size: PS,
                pages,
            }
        };
        self.answer("ReadPages", sane, self.script.read_pages.as_ref())
            .await
    }

    async fn commit(
        &self,
        request: Request<Streaming<pb::CommitRequest>>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let mut stream = request.into_inner();
        let (mut header, mut pages) = (None, Vec::new());
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(commit_request::Part::Header(h)) => header = Some(h),
                Some(commit_request::Part::Pages(batch)) => pages.extend(batch.pages),
                Some(commit_request::Part::Trailer(_)) => break,
                None => {}
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        let sane = {
            let mut db = self.db.lock().expect("db");
            db.image.resize(header.page_count as usize * PS as usize, 0);
            for page in pages {
                let start = (page.page_no as usize - 1) * PS as usize;
                db.image[start..start + PS as usize].copy_from_slice(&page.data);
            }
            db.bump();
            pb::CommitResponse {
                version: db.version,
                already_applied: false,
                tag: Bytes::copy_from_slice(&db.tag),
            }
        };
        self.answer("Commit", sane, self.script.commit.as_ref())
            .await
    }

    type WatchStream = BoxStream<'static, Result<pb::WatchEvent, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.answer("Watch", (), None).await?;
        let Some(script) = self.script.watch.clone() else {
            return Err(Status::unimplemented("no Watch on this fake"));
        };
        let (db, fire, mut incoming) = (self.db.clone(), self.fire.clone(), request.into_inner());
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let event =
            |e: Event| -> Result<pb::WatchEvent, Status> { Ok(pb::WatchEvent { event: Some(e) }) };
        tokio::spawn(async move {
            let state = db.lock().expect("db").state();
            let started = pb::WatchStarted {
                state: Some(state),
                in_round: false,
                read_lease_ttl_ms: 5_000,
            };
            let _ = tx.send(event(Event::Started(started))).await;
            let mut scripted = false;
            while let Ok(Some(message)) = incoming.message().await {
                if let Some(watch_request::Part::Lease(ask)) = message.part {
                    let _ = tx
                        .send(event(Event::Granted(pb::ReadLeaseGrant {
                            seq: ask.seq,
                            ttl_ms: 5_000,
                        })))
                        .await;
                    if !std::mem::replace(&mut scripted, true) {
                        let (db, fire, script, tx) =
                            (db.clone(), fire.clone(), script.clone(), tx.clone());
                        tokio::spawn(async move {
                            fire.notified().await;
                            let events = script(&mut db.lock().expect("db"));
                            for e in events {
                                let _ = tx.send(event(e)).await;
                            }
                        });
                    }
                }
            }
        });
        let events =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
        Ok(Response::new(Box::pin(events)))
    }
}

/// The fake, serving on a free loopback port until dropped.
struct FakeServer {
    fake: Arc<Fake>,
    url: String,
    _rt: tokio::runtime::Runtime,
}

impl FakeServer {
    fn start(image: Vec<u8>, script: Script) -> Self {
        let db = Arc::new(Mutex::new(Db::new(image)));
        let fake = Arc::new(Fake {
            db,
            script,
            calls: Mutex::default(),
            fire: Arc::default(),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let service = pb::pages_server::PagesServer::from_arc(fake.clone())
            .max_decoding_message_size(64 << 20);
        let url = fake_server::serve(
            &rt,
            tonic::transport::Server::builder().add_service(service),
        );
        Self { fake, url, _rt: rt }
    }

    fn calls(&self, rpc: &str) -> usize {
        self.fake.calls(rpc)
    }

    /// Sends the Watch script's events (once a read lease was granted).
    fn fire(&self) {
        self.fake.fire.notify_one();
    }

    /// The rows of `t` in the fake's database, read by stock SQLite from a copy.
    fn rows(&self) -> (i64, i64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("copy.db");
        std::fs::write(&path, &self.fake.db.lock().expect("db").image).expect("copy");
        rows(&Connection::open(&path).expect("copy")).expect("rows of the copy")
    }

    /// Makes the fake's database another one (created again under its name).
    fn replace(&self) {
        self.fake.db.lock().expect("db").incarnation = rand::random();
    }
}

// The database the fake serves: built by stock SQLite on a local file.

/// An SQLite file of 4 KiB pages holding `t(id, body)` with `rows` rows of `body_len`
/// bytes.
fn image(rows: usize, body_len: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("image.db");
    {
        let conn = Connection::open(&path).expect("local database");
        conn.execute_batch(
            "pragma page_size=4096; create table t(id integer primary key, body text)",
        )
        .expect("schema");
        let tx = conn.unchecked_transaction().expect("txn");
        for i in 0..rows {
            tx.execute(
                "insert into t(body) values (?1)",
                rusqlite::params![format!("{i:0>body_len$}")],
            )
            .expect("row");
        }
        tx.commit().expect("commit");
    }
    let bytes = std::fs::read(&path).expect("read image");
    assert_eq!(bytes.len() % PS as usize, 0);
    bytes
}

/// 100 rows over a few pages.
fn small_image() -> Vec<u8> {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| image(100, 200)).clone()
}

// SQLite through the VFS, in this process.

/// The VFS's (and SQLite's) error log lines, in order.
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

extern "C" fn on_log(_: *mut c_void, _code: c_int, msg: *const c_char) {
    // SAFETY: SQLite passes a NUL-terminated message, valid for this call.
    let text = unsafe { CStr::from_ptr(msg) }
        .to_string_lossy()
        .into_owned();
    if let Ok(mut log) = LOG.lock() {
        log.push(text);
    }
}

/// Hooks SQLite's error log (before SQLite initializes: registering the VFS does), then
/// registers the VFS. Every test calls it first.
fn setup() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: called once, before any other SQLite call of this process; the callback
        // makes no SQLite call and is thread-safe.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_LOG,
                on_log as extern "C" fn(*mut c_void, c_int, *const c_char),
                std::ptr::null_mut::<c_void>(),
            )
        };
        assert_eq!(
            rc,
            rusqlite::ffi::SQLITE_OK,
            "hook the error log before SQLite initializes"
        );
        common::register();
    });
}

/// Where the log is now, to read what comes after.
fn log_mark() -> usize {
    LOG.lock().expect("log").len()
}

/// The log since `mark`, one message per line (the VFS's long messages come in pieces,
/// joined again here).
fn log_since(mark: usize) -> String {
    let log = LOG.lock().expect("log");
    let mut out = String::new();
    for line in &log[mark.min(log.len())..] {
        match line.strip_prefix("pagewire: ... ") {
            Some(rest) => out.push_str(rest),
            None => {
                out.push('\n');
                out.push_str(line);
            }
        }
    }
    out
}

fn assert_logged(mark: usize, wants: &[&str]) {
    let log = log_since(mark);
    for want in wants {
        assert!(log.contains(want), "the log says {want:?}:{log}");
    }
}

/// Short deadlines, and `extra` parameters.
fn params(extra: &str) -> String {
    format!("&call_timeout=1s&retry_timeout=2s&connect_timeout=2s&lease_idle=60s{extra}")
}

/// The URI of `name` on `url`, with short deadlines and `extra` parameters.
fn uri_of(url: &str, name: &str, extra: &str) -> String {
    common::uri(url, name, &params(extra))
}

/// Opens `name` on `url` and reads the schema (SQLite opens lazily).
fn try_open(url: &str, name: &str, extra: &str) -> rusqlite::Result<Connection> {
    setup();
    common::try_open_with(url, name, &params(extra), rw())
}

fn open(url: &str, name: &str, extra: &str) -> Connection {
    try_open(url, name, extra).expect("open against a sane answer")
}

/// Runs `f`, asserting it took less than [`FEW_SECONDS`].
fn quick<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    assert!(took < FEW_SECONDS, "{what} took {took:?}");
    out
}

fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    e.sqlite_error_code()
}

fn assert_io_error<T: std::fmt::Debug>(what: &str, r: rusqlite::Result<T>) {
    let e = r.expect_err(what);
    assert_eq!(code(&e), Some(ErrorCode::SystemIoFailure), "{what}: {e}");
}

fn rows(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("select count(*), sum(length(body)) from t", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
}

/// The process is healthy: SQLite still answers.
fn still_answers() {
    let mem = Connection::open_in_memory().expect("memory database");
    assert_eq!(
        mem.query_row("select 6*7", [], |r| r.get::<_, i64>(0))
            .expect("select"),
        42
    );
}

// The stock shell, for the messages on stderr.

/// Runs the stock shell on `script` with the VFS loaded and short deadlines;
/// (stdout, stderr, success), or None (skip) where the shell is missing.
fn run_shell(script: &str) -> Option<(String, String, bool)> {
    let sqlite3 = shell::sqlite3()?;
    let env = [
        ("PAGEWIRE_CALL_TIMEOUT", "1s"),
        ("PAGEWIRE_RETRY_TIMEOUT", "2s"),
    ];
    let out = shell::run(sqlite3, &env, &format!("{}{script}", shell::load_vfs()));
    Some((text(&out.stdout), text(&out.stderr), out.status.success()))
}

// Item 8: protocol compatibility.

#[test]
fn an_older_server_fails_open_saying_to_upgrade_the_server() {
    setup();
    // A server from before capabilities and revisions: it sends neither.
    let older = |mut r: pb::OpenResponse| {
        r.capabilities.clear();
        r.protocol = 0;
        r.min_client_protocol = 0;
        r
    };
    let server = FakeServer::start(
        small_image(),
        Script {
            open: always(older),
            ..Script::default()
        },
    );
    let mark = log_mark();
    let e = quick("open", || try_open(&server.url, "old.db", "")).expect_err("an older server");
    assert_eq!(code(&e), Some(ErrorCode::CannotOpen), "{e}");
    let older = format!(
        "the server is older than this VFS (protocol revision 0, this VFS speaks {PROTOCOL_REVISION})"
    );
    assert_logged(mark, &[&older, "upgrade the server"]);
    // Nothing was asked past Open; asking again gets the same answer.
    assert_eq!(
        (
            server.calls("Open"),
            server.calls("BeginRead"),
            server.calls("ReadPages")
        ),
        (1, 0, 0)
    );
    let again =
        quick("open again", || try_open(&server.url, "old.db", "")).expect_err("still older");
    assert_eq!(code(&again), Some(ErrorCode::CannotOpen));
    still_answers();

    // The stock shell says so on stderr, and goes on.
    let script = format!(
        ".open file:old.db?url={}\nselect count(*) from sqlite_schema;\n.open :memory:\nselect 6*7;\n",
        server.url
    );
    let Some((stdout, stderr, _)) = run_shell(&script) else {
        return;
    };
    assert!(stderr.contains("upgrade the server"), "stderr: {stderr}");
    assert!(stderr.contains("protocol revision 0"), "stderr: {stderr}");
    assert!(
        stdout.ends_with("42\n"),
        "the shell went on: {stdout:?} {stderr}"
    );
}

#[test]
fn a_server_that_needs_a_newer_client_fails_open_saying_to_upgrade_the_vfs() {
    setup();
    let newer = |mut r: pb::OpenResponse| {
        r.protocol = PROTOCOL_REVISION + 1;
        r.min_client_protocol = PROTOCOL_REVISION + 1;
        r
    };
    let server = FakeServer::start(
        small_image(),
        Script {
            open: always(newer),
            ..Script::default()
        },
    );
    let mark = log_mark();
    let e = quick("open", || try_open(&server.url, "new.db", "")).expect_err("a newer server");
    assert_eq!(code(&e), Some(ErrorCode::CannotOpen), "{e}");
    let want = format!(
        "the server needs pagewire protocol revision {} or newer",
        PROTOCOL_REVISION + 1
    );
    assert_logged(mark, &[&want, "upgrade the VFS"]);
    still_answers();

    // Debian's Python: the exception, and the reason on stderr.
    let Some(python) = python() else { return };
    let mut py = Driver::start(python, &[]).answering_within(FEW_SECONDS);
    let failed = py
        .open(1, &uri_of(&server.url, "new.db", ""))
        .expect_err("a newer server");
    assert_eq!(failed, "OperationalError unable to open database file");
    let stderr = py.stderr_text();
    assert!(
        stderr.contains(&want) && stderr.contains("upgrade the VFS"),
        "stderr: {stderr}"
    );
    // The process goes on: a database of its own still works.
    assert_eq!(py.open(1, ":memory:"), Ok("opened".into()));
    assert_eq!(py.sql(1, "select 6*7"), Ok("[(42,)]".into()));
}

#[test]
fn a_revision_older_than_ours_with_the_capabilities_is_served() {
    // Revision numbers alone do not refuse: a server that has what this VFS needs works.
    setup();
    let server = FakeServer::start(
        small_image(),
        Script {
            open: always(|r| pb::OpenResponse { protocol: 2, ..r }),
            ..Script::default()
        },
    );
    let conn = open(&server.url, "rev2.db", "");
    assert_eq!(rows(&conn).expect("rows"), (100, 20_000));
}

// Item 3: states no SQLite file can have.

#[test]
fn an_open_state_no_database_can_have_fails_open() {
    setup();
    let state = |f: fn(&mut pb::DbState)| {
        move |mut r: pb::OpenResponse| {
            if let Some(s) = r.state.as_mut() {
                f(s);
            }
            r
        }
    };
    let cases: Vec<(&str, Option<Hook<pb::OpenResponse>>, &str)> = vec![
        (
            "page size 3000",
            always(state(|s| s.page_size = 3000)),
            "page size 3000 and count",
        ),
        (
            "page size 1 GiB",
            always(state(|s| s.page_size = 1 << 30)),
            "page size 1073741824",
        ),
        (
            "no pages at version 5",
            always(state(|s| (s.version, s.page_count) = (5, 0))),
            "page size 4096 and count 0",
        ),
        (
            "pages at version 0",
            always(state(|s| s.version = 0)),
            "version 0 with",
        ),
        (
            "page count u32::MAX",
            always(state(|s| s.page_count = u32::MAX)),
            "count 4294967295",
        ),
        (
            "no state",
            always(|r| pb::OpenResponse { state: None, ..r }),
            "a reply without the database's state",
        ),
        (
            "5-byte incarnation",
            always(state(|s| s.incarnation = Bytes::from_static(&[1; 5]))),
            "an incarnation of 5 bytes",
        ),
        (
            "3-byte tag",
            always(state(|s| s.tag = Bytes::from_static(&[1; 3]))),
            "a version tag of 3 bytes",
        ),
    ];
    for (what, hook, want) in cases {
        let server = FakeServer::start(
            small_image(),
            Script {
                open: hook,
                ..Script::default()
            },
        );
        let mark = log_mark();
        let e = quick(what, || try_open(&server.url, "bad.db", "")).expect_err(what);
        assert_eq!(code(&e), Some(ErrorCode::CannotOpen), "{what}: {e}");
        assert_logged(
            mark,
            &[
                "Open failed",
                want,
                "is it a pagewire server of a compatible version?",
            ],
        );
        assert_eq!(
            server.calls("BeginRead") + server.calls("ReadPages"),
            0,
            "{what}: nothing asked past Open"
        );
    }
    still_answers();
}

#[test]
fn an_empty_database_at_version_0_opens_and_takes_a_table() {
    // The control for the cases above: page size 0, page count 0, version 0 is a database.
    setup();
    let server = FakeServer::start(Vec::new(), Script::default());
    let conn = open(&server.url, "empty.db", "");
    conn.execute_batch(
        "create table t(id integer primary key, body text); insert into t(body) values ('x')",
    )
    .expect("first write");
    assert_eq!(rows(&conn).expect("rows"), (1, 1));
    assert_eq!(server.fake.state().version, 2, "two commits");
    assert_eq!(server.rows(), (1, 1));
}

// Item 3: ReadPages answers that do not fit the request.

#[test]
fn read_pages_answers_that_do_not_fit_fail_the_query_with_an_io_error() {
    setup();
    type Tamper = fn(pb::ReadPagesResponse) -> pb::ReadPagesResponse;
    let cases: [(&str, Tamper, &str); 6] = [
        (
            "a page short",
            |mut r| {
                r.pages.pop();
                r
            },
            "pages for",
        ),
        (
            "a page extra",
            |mut r| {
                r.pages.push(r.pages[0].clone());
                r
            },
            "pages for",
        ),
        (
            "no pages",
            |r| pb::ReadPagesResponse {
                pages: Vec::new(),
                ..r
            },
            "0 pages for",
        ),
        (
            "pages of the wrong length",
            |mut r| {
                r.pages[0] = r.pages[0].slice(..4095);
                r
            },
            "a page of 4095 bytes",
        ),
        (
            "another page size",
            |r| pb::ReadPagesResponse {
                page_size: 8192,
                pages: r
                    .pages
                    .iter()
                    .map(|_| Bytes::from(vec![0u8; 8192]))
                    .collect(),
            },
            "pages of 8192 bytes",
        ),
        (
            "a 1 GiB page size",
            |r| pb::ReadPagesResponse {
                page_size: 1 << 30,
                ..r
            },
            "pages of 1073741824 bytes",
        ),
    ];
    for (what, tamper, want) in cases {
        // The first ReadPages (SQLite reads the header while it opens) is answered well.
        let hook: Hook<pb::ReadPagesResponse> =
            Box::new(move |n, r| Reply::Send(if n == 0 { r } else { tamper(r) }));
        let server = FakeServer::start(
            small_image(),
            Script {
                read_pages: Some(hook),
                ..Script::default()
            },
        );
        let mark = log_mark();
        // No preload: the query's reads go to the server.
        let conn = Connection::open_with_flags(uri_of(&server.url, "pages.db", "&preload=0"), rw())
            .expect("open");
        assert_io_error(what, quick(what, || rows(&conn)));
        assert_logged(
            mark,
            &[
                "Read failed",
                want,
                "is it a pagewire server of a compatible version?",
            ],
        );
        // The next statement gets an answer too (the same error: nothing was cached).
        assert_io_error(what, quick(what, || rows(&conn)));
        drop(conn);
        // With preload (the default): the preload's bad answer is set aside; the open's
        // header read or the query gets the next one.
        let opened = quick(what, || {
            Connection::open_with_flags(uri_of(&server.url, "pages.db", ""), rw())
                .and_then(|c| rows(&c))
        });
        assert_io_error(what, opened);
    }
    still_answers();
    // The control: the same fake, answering sanely.
    let server = FakeServer::start(small_image(), Script::default());
    let conn = open(&server.url, "pages.db", "&preload=0");
    assert_eq!(rows(&conn).expect("rows"), (100, 20_000));
}

// Item 3: a BeginRead of another incarnation.

#[test]
fn begin_read_of_another_incarnation_fails_every_call_until_reopened() {
    setup();
    // The first BeginRead answers another database's state (the name was created again).
    let other = |n: usize, mut r: pb::BeginReadResponse| {
        if let (0, Some(s)) = (n, r.state.as_mut()) {
            s.incarnation = Bytes::from_static(&[9; 16]);
        }
        Reply::Send(r)
    };
    let server = FakeServer::start(
        small_image(),
        Script {
            begin_read: Some(Box::new(other)),
            ..Script::default()
        },
    );
    let conn = Connection::open_with_flags(uri_of(&server.url, "inc.db", "&preload=0"), rw())
        .expect("open");
    let mark = log_mark();
    assert_io_error("another incarnation", quick("read", || rows(&conn)));
    assert_logged(mark, &["database 'inc.db' was replaced", "reopen it"]);
    // Replaced: every later call fails, without asking the server.
    let asked = (server.calls("BeginRead"), server.calls("ReadPages"));
    for _ in 0..3 {
        assert_io_error("replaced", quick("read again", || rows(&conn)));
    }
    assert_io_error(
        "replaced",
        quick("write", || {
            conn.execute("insert into t(body) values ('x')", [])
        }),
    );
    assert_eq!(
        (server.calls("BeginRead"), server.calls("ReadPages")),
        asked,
        "a replaced database asks nothing"
    );
    // A fresh open against a sane answer works beside it.
    let fresh = open(&server.url, "inc.db", "&preload=0");
    assert_eq!(rows(&fresh).expect("fresh"), (100, 20_000));
    assert_io_error("the old connection stays failed", rows(&conn));
}

#[test]
fn an_open_of_another_incarnation_replaces_the_database_this_process_holds() {
    setup();
    let server = FakeServer::start(small_image(), Script::default());
    let old = open(&server.url, "inc2.db", "");
    assert_eq!(rows(&old).expect("rows"), (100, 20_000));
    server.replace();
    let fresh = open(&server.url, "inc2.db", "");
    assert_eq!(rows(&fresh).expect("fresh"), (100, 20_000));
    assert_io_error(
        "the old connection is replaced",
        quick("read", || rows(&old)),
    );
}

// Item 3: odd write leases.

#[test]
fn odd_lease_answers_never_panic() {
    setup();
    // A 3-byte lease id: the write fails with an I/O error; reads go on.
    let short = always(|r| pb::LeaseResponse {
        lease_id: Bytes::from_static(&[1; 3]),
        ..r
    });
    let server = FakeServer::start(
        small_image(),
        Script {
            lease: short,
            ..Script::default()
        },
    );
    let conn = open(&server.url, "lease.db", "");
    let mark = log_mark();
    assert_io_error(
        "a 3-byte lease id",
        quick("write", || {
            conn.execute("insert into t(body) values ('x')", [])
        }),
    );
    assert_logged(mark, &["a lease id of 3 bytes"]);
    assert_eq!(
        quick("read", || rows(&conn)).expect("reads go on"),
        (100, 20_000)
    );
    assert_eq!(server.calls("Commit"), 0);

    // A lease of u64::MAX ms (clamped: no clock overflow) or 0 ms (renewed at every
    // write), any epoch: writes work.
    for (ttl_ms, epoch) in [(u64::MAX, u64::MAX), (0, 0), (1, 1)] {
        let hook = always(move |r| pb::LeaseResponse { ttl_ms, epoch, ..r });
        let server = FakeServer::start(
            small_image(),
            Script {
                lease: hook,
                ..Script::default()
            },
        );
        let conn = open(&server.url, "lease.db", "");
        for i in 0..3 {
            quick("write", || {
                conn.execute("insert into t(body) values ('x')", [])
            })
            .unwrap_or_else(|e| panic!("ttl {ttl_ms}: {e}"));
            assert_eq!(rows(&conn).expect("rows").0, 101 + i);
        }
        assert_eq!(
            server.fake.state().version,
            4,
            "ttl {ttl_ms}: three commits"
        );
    }
    still_answers();
}

// Item 3: commits whose answer does not follow.

#[test]
fn a_commit_answer_that_does_not_follow_poisons_the_connection() {
    setup();
    type Tamper = fn(pb::CommitResponse) -> pb::CommitResponse;
    let cases: [(&str, Tamper, &str); 4] = [
        (
            "version base+5",
            |r| pb::CommitResponse {
                version: r.version + 4,
                ..r
            },
            "version 6 (tag of 16 bytes) for a commit on version 1",
        ),
        (
            "the base version",
            |r| pb::CommitResponse {
                version: r.version - 1,
                ..r
            },
            "version 1 (tag of 16 bytes) for a commit on version 1",
        ),
        (
            "u64::MAX",
            |r| pb::CommitResponse {
                version: u64::MAX,
                ..r
            },
            "version 18446744073709551615",
        ),
        (
            "a 3-byte tag",
            |r| pb::CommitResponse {
                tag: Bytes::from_static(&[1; 3]),
                ..r
            },
            "version 2 (tag of 3 bytes)",
        ),
    ];
    for (what, tamper, want) in cases {
        let server = FakeServer::start(
            small_image(),
            Script {
                commit: always(tamper),
                ..Script::default()
            },
        );
        let conn = open(&server.url, "commit.db", "");
        let mark = log_mark();
        assert_io_error(
            what,
            quick(what, || {
                conn.execute("insert into t(body) values ('x')", [])
            }),
        );
        assert_logged(
            mark,
            &[
                want,
                "the outcome of a commit is unknown",
                "reopen the database",
            ],
        );
        // Poisoned: the next statements get an error, promptly.
        assert_io_error("poisoned", quick("read", || rows(&conn)));
        assert_io_error(
            "poisoned",
            quick("write", || {
                conn.execute("insert into t(body) values ('y')", [])
            }),
        );
        assert_eq!(
            server.calls("Commit"),
            1,
            "{what}: a poisoned connection commits nothing more"
        );
        // A fresh connection reads what the server has (here: the commit applied).
        let fresh = open(&server.url, "commit.db", "");
        assert_eq!(rows(&fresh).expect("fresh").0, 101, "{what}");
        assert_eq!(server.rows().0, 101);
    }
    still_answers();
}

// Item 3: a reply that never comes.

#[test]
fn a_server_that_never_answers_begin_read_fails_the_query_within_call_timeout() {
    setup();
    let hang: Hook<pb::BeginReadResponse> = Box::new(|_, _| Reply::Hang);
    let server = FakeServer::start(
        small_image(),
        Script {
            begin_read: Some(hang),
            ..Script::default()
        },
    );
    // Open is answered (and preloads); the first read transaction asks BeginRead.
    let conn = Connection::open_with_flags(
        uri_of(
            &server.url,
            "hang.db",
            "&call_timeout=500ms&retry_timeout=30s",
        ),
        rw(),
    )
    .expect("open");
    let mark = log_mark();
    let started = Instant::now();
    assert_io_error("no answer", rows(&conn));
    let took = started.elapsed();
    // Two attempts of 500 ms (the retry over a new connection), not the 30 s retry budget.
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_logged(
        mark,
        &[
            "did not answer BeginRead within 500ms (call_timeout)",
            "gave up after 2 attempts",
        ],
    );
    assert_eq!(server.calls("BeginRead"), 2);
    assert_io_error(
        "the next statement gets an answer too",
        quick("again", || rows(&conn)),
    );
    still_answers();
}

// Item 3: limits.

#[test]
fn limits_of_zero_or_the_maximum_break_neither_reads_nor_writes() {
    setup();
    let limits: [(&str, Option<pb::Limits>, u64); 4] = [
        (
            "zero",
            Some(pb::Limits {
                max_pages_per_read: 0,
                max_message_bytes: 0,
                max_commit_bytes: 0,
            }),
            0,
        ),
        (
            "maximum",
            Some(pb::Limits {
                max_pages_per_read: u32::MAX,
                max_message_bytes: u64::MAX,
                max_commit_bytes: u64::MAX,
            }),
            u64::MAX,
        ),
        (
            "one page per read",
            Some(pb::Limits {
                max_pages_per_read: 1,
                max_message_bytes: 1,
                max_commit_bytes: 1,
            }),
            1,
        ),
        ("none", None, 0),
    ];
    for (what, limits, ms) in limits {
        let hook = always(move |r| pb::OpenResponse {
            limits,
            heartbeat_ms: ms,
            lease_ttl_ms: ms,
            ..r
        });
        // Big enough for read-ahead and more than one read per query.
        let server = FakeServer::start(
            image(2000, 500),
            Script {
                open: hook,
                ..Script::default()
            },
        );
        let conn = open(&server.url, "limits.db", "&preload=0");
        assert_eq!(
            quick(what, || rows(&conn)).expect(what),
            (2000, 1_000_000),
            "{what}"
        );
        quick(what, || {
            conn.execute("update t set body = 'x' where id <= 300", [])
        })
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            rows(&conn).expect(what),
            (2000, 1_000_000 - 300 * 499),
            "{what}"
        );
        assert_eq!(
            server.rows(),
            (2000, 1_000_000 - 300 * 499),
            "{what}: the server holds it"
        );
    }
}

// Item 3: the Watch stream.

#[test]
fn a_watch_round_with_a_huge_odd_change_list_is_harmless() {
    setup();
    // After the first read lease: a round whose change list holds 4 million page numbers
    // (unsorted, repeated, 0, far past the page count), pushed pages of the wrong length,
    // numbered 0 or past the end, and a growth mark past the end. The database does not
    // change (a new version with the same pages).
    let script: WatchScript = Arc::new(|db: &mut Db| {
        db.bump();
        let state = db.state();
        let mut changed: Vec<u32> = (1..=4_000_000u32).rev().collect();
        changed.extend([0, 0, u32::MAX, 3_000_000_000, 5, 5]);
        let page = |page_no, data| pb::Page { page_no, data };
        let pages = vec![
            page(1, Bytes::from_static(b"short")),
            page(0, db.page(1)),
            page(4_000_000_000, db.page(1)),
            page(u32::MAX, Bytes::new()),
            page(1, db.page(1)),
        ];
        vec![
            Event::Invalidate(pb::Invalidate { round: 1 }),
            Event::RoundEnd(pb::RoundEnd {
                round: 1,
                state: Some(state),
                changed_pages: changed,
                cache_invalid: false,
                pages,
                changed_from: 4_000_000_001,
            }),
        ]
    });
    // About 4000 pages, all cached by the time the round comes: checking each against a
    // list of millions by scanning it would hold the database's lock for many seconds.
    let server = FakeServer::start(
        image(16_000, 900),
        Script {
            watch: Some(script),
            ..Script::default()
        },
    );
    let conn = open(&server.url, "watch.db", "&preload=0");
    let want = (16_000, 14_400_000);
    // Read-only transactions start the Watch stream; then the read lease serves them
    // from the cache, which holds every page.
    // (The pragma takes no read transaction; it waits for the state lock.)
    let lease_held = |heard: &str, read: bool| {
        let started = Instant::now();
        loop {
            let lease = common::pragma_text(&conn, "pagewire_read_lease");
            if lease == format!("lease=held heard={heard} round=0") {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < FEW_SECONDS,
                "want heard={heard}: {lease}"
            );
            if read {
                assert_eq!(quick("read", || rows(&conn)).expect("read"), want);
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    lease_held("1", true);
    let asked = (server.calls("BeginRead"), server.calls("ReadPages"));
    assert_eq!(
        quick("read on the lease", || rows(&conn)).expect("read"),
        want
    );
    assert_eq!(
        (server.calls("BeginRead"), server.calls("ReadPages")),
        asked,
        "served from the cache"
    );
    // The round (no read meanwhile: a BeginRead could move the cache on first). The state
    // lock is held while it is applied, so every SQLite call of the process waits for it.
    server.fire();
    let took = lease_held("2", false);
    assert!(
        took < Duration::from_secs(2),
        "applying the round took {took:?}"
    );
    assert_eq!(server.calls("Watch"), 1);
    // The round dropped every cached page (all were listed): read again, at version 2.
    assert_eq!(
        quick("read after the round", || rows(&conn)).expect("read"),
        want
    );
    assert_eq!(common::version(&conn), 2);
    assert_eq!(common::integrity(&conn), "ok");
}

// Item 3: text from the server is text.

#[test]
fn a_server_error_message_with_printf_directives_is_logged_as_text() {
    setup();
    // sqlite3_log takes a format: a server's message must never be one.
    let fail: Hook<pb::BeginReadResponse> =
        Box::new(|_, _| Reply::Fail(Status::failed_precondition("%s%s%s%s%n%n%99999999d")));
    let server = FakeServer::start(
        small_image(),
        Script {
            begin_read: Some(fail),
            ..Script::default()
        },
    );
    let conn =
        Connection::open_with_flags(uri_of(&server.url, "printf.db", ""), rw()).expect("open");
    let mark = log_mark();
    assert_io_error("a failed BeginRead", quick("read", || rows(&conn)));
    assert_logged(mark, &["%s%s%s%s%n%n%99999999d"]);
    assert_io_error("again", quick("read", || rows(&conn)));
    // The same for a pragma's answer (SQLite takes it as a format too).
    let server = FakeServer::start(small_image(), Script::default());
    let conn = open(&server.url, "printf.db", "");
    let e = conn
        .execute_batch("pragma pagewire_min_version='%s%s%n%n'")
        .expect_err("not a version");
    assert!(
        e.to_string()
            .contains("expected a version number, got \"%s%s%n%n\""),
        "{e}"
    );
    assert_eq!(common::pragma_text(&conn, "pagewire_min_version"), "0");
    still_answers();
}

#[test]
fn a_long_message_reaches_the_sqlite_log_whole() {
    // sqlite3_log cuts messages at about 200 bytes: the VFS logs long ones in pieces.
    setup();
    let long = format!("start {} end-of-the-message", "x".repeat(2000));
    let text = long.clone();
    let fail: Hook<pb::BeginReadResponse> =
        Box::new(move |_, _| Reply::Fail(Status::failed_precondition(text.clone())));
    let server = FakeServer::start(
        small_image(),
        Script {
            begin_read: Some(fail),
            ..Script::default()
        },
    );
    let conn = Connection::open_with_flags(uri_of(&server.url, "long.db", ""), rw()).expect("open");
    let mark = log_mark();
    assert_io_error("a failed BeginRead", rows(&conn));
    assert_logged(mark, &[&long]);
}
