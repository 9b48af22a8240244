//! The embedded store, the server's durable default, as users run it: a real
//! `pagewire-server --data-dir DIR` process, SQLite through the real VFS, the stock
//! shell.
//!
//! - the Quick Start's promise: data written in the shell survives a server restart;
//! - crash safety: the server SIGKILLed at random moments while several clients commit
//!   and GC runs (history retention 0 s, GC every 50 ms), then started again on the
//!   same directory: every acknowledged commit is there, `integrity_check` is ok, and
//!   epochs never go backwards (the dead server's lease holder is fenced once a new
//!   lease is granted). `PAGEWIRE_CRASH_TRIALS` trials (CI: 12; the full run:
//!   `PAGEWIRE_CRASH_TRIALS=200 cargo nextest run --release -p pagewire-tests --test
//!   embedded_store crash`). That each commit is synced before its reply is asserted in
//!   `server/kv/tests/engine.rs` (a kill cannot see a missing sync);
//! - bad data directories: in use by another server, a file, unwritable, a corrupt
//!   data file: a clear error, nothing overwritten;
//! - a full disk (a small tmpfs): commits fail with `SQLITE_FULL`, nothing committed
//!   is lost, and the server comes back whole on the same directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pagewire_proto::v1 as pb;
use pagewire_tests::shell::{load_vfs, sqlite3};
use pagewire_tests::{Server, in_ci, server_binary, text};
use pb::pages_client::PagesClient;
use rand::Rng;
use rusqlite::Connection;

fn data_dir_flags(dir: &Path) -> Vec<String> {
    vec!["--data-dir".into(), dir.display().to_string()]
}

fn start_on(dir: &Path, extra: &[&str]) -> Server {
    let mut args: Vec<String> = data_dir_flags(dir);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with(&refs).expect("start pagewire-server on the data directory")
}

fn kill_9(server: Server) {
    // SAFETY: kill(2) on the pid of our own child process.
    assert_eq!(
        unsafe { libc::kill(server.pid(), libc::SIGKILL) },
        0,
        "SIGKILL"
    );
    drop(server); // reaps it
}

/// The server's exit code and stderr when it refuses to start with `args`.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(server_binary().expect("server binary"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run pagewire-server");
    (out.status.code(), text(&out.stderr))
}

#[test]
fn shell_data_survives_a_server_restart() {
    let Some(shell) = sqlite3() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start_on(dir.path(), &[]);
    let script = format!(
        "{}.open shop.db\ncreate table fruit(name, n);\ninsert into fruit values ('apples', 3);\n",
        load_vfs()
    );
    let out = pagewire_tests::shell::run(shell, &[("PAGEWIRE_URL", &server.url)], &script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let addr = server.addr.clone();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGTERM) }, 0);
    drop(server);
    let mut args = data_dir_flags(dir.path());
    args.extend(["--read-lease-ttl".into(), "0s".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_at(&addr, &refs).expect("restart on the same port and directory");
    let script = format!("{}.open shop.db\nselect * from fruit;\n", load_vfs());
    let out = pagewire_tests::shell::run(shell, &[("PAGEWIRE_URL", &server.url)], &script);
    assert_eq!(
        text(&out.stdout).trim(),
        "apples|3",
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// Crash safety

/// Trials from `var`, else `default`.
fn trials(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The store the crash trials run on, and every how many transactions one also writes
/// a 6 MiB blob (in FDB-limits mode such a commit is staged: killed mid-stage, it
/// must leave nothing visible and publish nothing half).
#[derive(Clone, Copy)]
struct CrashStore {
    store: &'static str,
    big_every: Option<i64>,
}

const WRITERS: usize = 3;

fn transaction(conn: &Connection, i: i64, big: bool) -> rusqlite::Result<()> {
    let n = 1 + (i * 37) % 60;
    let blob = if big {
        format!("insert into t(v, pad) values ({i}, randomblob(6291456));")
    } else {
        String::new()
    };
    conn.execute_batch(&format!(
        "begin;
         insert into log values ({i});
         {blob}
         with recursive s(k) as (select 1 union all select k + 1 from s where k < {n})
           insert into t(v, pad) select {i}, randomblob(300) from s;
         update t set v = v + 1 where id % 7 = {i} % 7;
         {}
         commit",
        if i % 5 == 0 {
            format!("delete from t where id % 11 = {i} % 11;")
        } else {
            String::new()
        }
    ))
}

fn ledger(conn: &Connection) -> Vec<i64> {
    all_rows(conn, "select i from log order by i", |r| r.get(0))
}

/// Commits `transaction`s to `name` until one fails; returns those acknowledged.
fn writer(
    url: String,
    name: String,
    big_every: Option<i64>,
) -> (thread::JoinHandle<()>, Arc<Mutex<Vec<i64>>>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let record = acked.clone();
    let handle = thread::spawn(move || {
        let conn = open_with(&url, &name, "&retry_timeout=1s");
        conn.execute_batch(
            "create table if not exists t(id integer primary key, v int, pad blob);
             create table if not exists log(i integer primary key)",
        )
        .ok();
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 1.. {
            let big = big_every.is_some_and(|every| i % every == 0);
            if Instant::now() > deadline || transaction(&conn, i, big).is_err() {
                break;
            }
            record.lock().expect("ledger").push(i);
        }
    });
    (handle, acked)
}

/// A raw Pages client for the lease probe.
struct Probe {
    rt: tokio::runtime::Runtime,
}

impl Probe {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Self { rt }
    }

    fn client(&self, url: &str) -> PagesClient<tonic::transport::Channel> {
        self.rt
            .block_on(PagesClient::connect(url.to_owned()))
            .expect("connect")
    }

    fn acquire(&self, url: &str) -> Result<(Vec<u8>, u64), tonic::Status> {
        let mut c = self.client(url);
        self.rt.block_on(async {
            c.open(pb::OpenRequest {
                name: "probe.db".into(),
                create: true,
                protocol: pagewire_proto::PROTOCOL_REVISION,
                ..Default::default()
            })
            .await?;
            let lease = c
                .acquire_lease(pb::AcquireLeaseRequest {
                    name: "probe.db".into(),
                    client_id: "probe".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((lease.lease_id.to_vec(), lease.epoch))
        })
    }

    fn renew(&self, url: &str, lease: &(Vec<u8>, u64)) -> Result<u64, tonic::Status> {
        let mut c = self.client(url);
        self.rt.block_on(async {
            let r = c
                .renew_lease(pb::RenewLeaseRequest {
                    name: "probe.db".into(),
                    lease_id: lease.0.clone().into(),
                    epoch: lease.1,
                    ..Default::default()
                })
                .await?;
            Ok(r.into_inner().epoch)
        })
    }

    fn release(&self, url: &str, lease: &(Vec<u8>, u64)) {
        let mut c = self.client(url);
        self.rt
            .block_on(c.release_lease(pb::ReleaseLeaseRequest {
                name: "probe.db".into(),
                lease_id: lease.0.clone().into(),
                epoch: lease.1,
            }))
            .expect("release");
    }
}

#[test]
fn crash_acknowledged_commits_and_epochs_survive_sigkill() {
    let store = CrashStore {
        store: "embedded",
        big_every: None,
    };
    crash_trials(store, trials("PAGEWIRE_CRASH_TRIALS", 12));
}

/// The same in FDB-limits mode, where every sixth transaction is staged. The full run:
/// `PAGEWIRE_CRASH_TRIALS_FDB=100 scripts/test.sh --test embedded_store crash`.
#[test]
fn crash_in_fdb_limits_mode_staged_commits_survive_sigkill() {
    let store = CrashStore {
        store: "embedded-fdb-limits",
        big_every: Some(6),
    };
    crash_trials(store, trials("PAGEWIRE_CRASH_TRIALS_FDB", 4));
}

fn crash_trials(crash: CrashStore, trials: usize) {
    let dir = pagewire_tests::data_dir().expect("data dir");
    let flags = [
        "--store",
        crash.store,
        // Long enough for the probe's lease to outlive a trial (two starts, each
        // replaying up to ~80 MB of journal).
        "--lease-ttl",
        "10s",
        "--history-retention",
        "0s",
        "--gc-interval",
        "50ms",
        "--pin-ttl",
        "1s",
    ];
    let mut rng = rand::rng();
    let probe = Probe::new();
    let mut held: Option<(Vec<u8>, u64)> = None;
    let mut found_before: Vec<(String, Vec<i64>)> = Vec::new();
    let started = Instant::now();
    let mut total_acked = 0;
    let mut longest = 0;
    for trial in 0..trials {
        let server = start_on(dir.path(), &flags);
        // The lease the probe held when the last server died: still held (its TTL
        // survived), and fenced once the probe takes a new one.
        if let Some(old) = held.take() {
            assert_eq!(
                probe
                    .renew(&server.url, &old)
                    .expect("the lease survived the crash"),
                old.1
            );
            probe.release(&server.url, &old);
            let new = probe.acquire(&server.url).expect("a new lease");
            assert!(
                new.1 > old.1,
                "trial {trial}: epoch {} after {}",
                new.1,
                old.1
            );
            let fenced = probe
                .renew(&server.url, &old)
                .expect_err("the old lease is fenced");
            assert_eq!(fenced.code(), tonic::Code::FailedPrecondition, "{fenced:?}");
            held = Some(new);
        } else {
            held = Some(probe.acquire(&server.url).expect("lease"));
        }
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let name = format!("crash/{trial}-{w}.db");
                let (h, acked) = writer(server.url.clone(), name.clone(), crash.big_every);
                (name, h, acked)
            })
            .collect();
        // Once every writer is committing (a new server holds its first commit back
        // for one read-lease TTL), at a random moment.
        let committing = pagewire_tests::wait_for(Duration::from_secs(10), || {
            writers
                .iter()
                .all(|(_, _, acked)| !acked.lock().expect("ledger").is_empty())
        });
        assert!(committing, "trial {trial}: the writers never committed");
        thread::sleep(Duration::from_millis(rng.random_range(0..700)));
        kill_9(server);
        let mut acknowledged = Vec::new();
        for (name, handle, acked) in writers {
            handle.join().expect("writer thread");
            acknowledged.push((name, acked.lock().expect("ledger").clone()));
        }
        let server = start_on(dir.path(), &flags);
        let counts: Vec<usize> = acknowledged.iter().map(|(_, a)| a.len()).collect();
        eprintln!("trial {trial}: acknowledged {counts:?}");
        total_acked += counts.iter().sum::<usize>();
        longest = longest.max(counts.iter().copied().max().unwrap_or(0));
        for (name, acked) in acknowledged {
            let conn = open_url(&server.url, &name);
            let found = if acked.is_empty() && try_ledger(&conn).is_none() {
                Vec::new() // killed before its tables were committed
            } else {
                assert_eq!(integrity(&conn), "ok", "trial {trial}: {name}");
                ledger(&conn)
            };
            let last = acked.len() as i64;
            assert!(
                found == acked || found == (1..=last + 1).collect::<Vec<_>>(),
                "trial {trial}: {name}: acknowledged 1..={last}, found {} ({:?}..{:?})",
                found.len(),
                found.first(),
                found.last()
            );
            found_before.push((name, found));
        }
        kill_9(server);
    }
    // Everything every trial left is still there, byte for byte as it was found.
    let server = start_on(dir.path(), &flags);
    for (name, found) in &found_before {
        let conn = open_url(&server.url, name);
        if found.is_empty() {
            continue;
        }
        assert_eq!(&ledger(&conn), found, "{name} changed after later crashes");
    }
    assert!(
        total_acked > trials * WRITERS,
        "too few commits to mean anything: {total_acked}"
    );
    if let Some(every) = crash.big_every {
        assert!(
            longest as i64 >= every,
            "no big transaction was acknowledged (at most {longest} per writer)"
        );
    }
    eprintln!(
        "{trials} SIGKILL trials on {}, {total_acked} acknowledged commits, in {:?}",
        crash.store,
        started.elapsed()
    );
}

fn try_ledger(conn: &Connection) -> Option<Vec<i64>> {
    let mut stmt = conn.prepare("select i from log order by i").ok()?;
    let rows = stmt.query_map([], |r| r.get(0)).ok()?;
    rows.collect::<Result<Vec<i64>, _>>().ok()
}

// ---------------------------------------------------------------------------------------
// Bad data directories

#[test]
fn a_data_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = start_on(dir.path(), &[]);
    let (code, stderr) = refused(&["--data-dir", &dir.path().display().to_string()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another pagewire server")
            && stderr.contains(&format!("pid {}", first.pid())),
        "{stderr}"
    );
}

#[test]
fn a_file_as_data_directory_and_a_corrupt_data_file_are_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"precious").expect("file");
    let (code, stderr) = refused(&["--data-dir", &file.display().to_string()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is a file, not a directory"), "{stderr}");
    assert_eq!(std::fs::read(&file).expect("file"), b"precious");

    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("dir");
    let garbage: Vec<u8> = (0..1u32 << 16)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let data_file = data.join("pagewire.redb");
    std::fs::write(&data_file, &garbage).expect("garbage");
    let (code, stderr) = refused(&["--data-dir", &data.display().to_string()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot open the data file"), "{stderr}");
    assert_eq!(
        std::fs::read(&data_file).expect("file"),
        garbage,
        "the corrupt file was changed"
    );
}

/// A tmpfs of `size` mounted on a new directory (unmounted on drop); `None` where this
/// process may not mount (not root), which fails the test under CI.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str, read_only: bool) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let options = format!("size={size}{}", if read_only { ",ro" } else { "" });
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "pagewire-test"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                !in_ci(),
                "cannot mount a tmpfs (the test needs root): the full-disk test must run in CI"
            );
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn an_unwritable_data_directory_is_refused() {
    let Some(ro) = Tmpfs::mount("1m", true) else {
        return;
    };
    let data = ro.path().join("data");
    let (code, stderr) = refused(&["--data-dir", &data.display().to_string()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot use the data directory") && stderr.contains("Read-only"),
        "{stderr}"
    );
}

#[test]
fn a_full_disk_fails_commits_with_sqlite_full_and_loses_nothing() {
    let Some(disk) = Tmpfs::mount("24m", false) else {
        return;
    };
    let data = disk.path().join("data");
    let server = start_on(&data, &[]);
    let conn = open_url(&server.url, "full.db");
    conn.execute_batch("create table b(id integer primary key, x blob)")
        .expect("create");
    let mut committed = 0;
    let error = loop {
        match conn.execute("insert into b(x) values (randomblob(256 * 1024))", []) {
            Ok(_) => committed += 1,
            Err(e) => break e,
        }
        assert!(committed < 200, "24 MiB never filled");
    };
    assert!(
        matches!(
            error.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DiskFull)
        ),
        "a full disk is SQLITE_FULL, got {error:?}"
    );
    assert!(committed > 10, "only {committed} commits fit");
    eprintln!("{committed} commits of 256 KiB fit; then: {error}");
    // The connection goes on: what was committed reads back.
    assert_eq!(count(&conn, "b"), committed);
    assert_eq!(integrity(&conn), "ok");
    drop(conn);
    let addr = server.addr.clone();
    kill_9(server);
    let mut args = data_dir_flags(&data);
    args.extend(["--read-lease-ttl".into(), "0s".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_at(&addr, &refs).expect("restart on the full disk");
    let conn = open_url(&server.url, "full.db");
    assert_eq!(count(&conn, "b"), committed, "every acknowledged commit");
    assert_eq!(integrity(&conn), "ok");
}
