//! The server as a process: graceful shutdown, bad flags, and the embedded
//! server example.

mod common;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use pagewire_tests::{Server, listening_url, server_binary, target_dir, wait_for};

fn exits_cleanly_on(signal: i32) {
    let mut server = Server::start().expect("server");
    let db = open(&server, "bye.db");
    db.execute_batch("create table t(x); insert into t values (1)")
        .expect("write");
    drop(db);
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(server.pid(), signal) }, 0);
    let started = Instant::now();
    let mut status = None;
    assert!(
        wait_for(Duration::from_secs(10), || {
            status = server.try_wait();
            status.is_some()
        }),
        "server still running {:?} after signal {signal}",
        started.elapsed()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "signal {signal}: {status:?}"
    );
}

#[test]
fn sigterm_and_sigint_stop_the_server_gracefully() {
    exits_cleanly_on(libc::SIGTERM);
    exits_cleanly_on(libc::SIGINT);
}

#[test]
fn bad_flags_fail_with_a_message() {
    let server = server_binary().expect("server binary");
    let run = |args: &[&str]| {
        Command::new(&server)
            .args(args)
            .output()
            .expect("run server")
    };
    let out = run(&["--store", "mongodb://x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("memory"),
        "lists the stores it knows"
    );
    let out = run(&["--lease-ttl", "soon"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    let out = run(&["--listen", "not-an-address"]);
    assert_ne!(out.status.code(), Some(0));
    let out = run(&["--listen", "127.0.0.1:0", "--read-lease-ttl", "1h"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read lease TTL"),
        "names the setting"
    );
}

/// The built example `name`, or None (skip) where it was not built, outside CI.
fn example(name: &str) -> Option<PathBuf> {
    let exe = target_dir().expect("target").join("examples").join(name);
    if !exe.exists() {
        assert!(
            !pagewire_tests::in_ci(),
            "{} missing: scripts/test.sh builds the examples",
            exe.display()
        );
        eprintln!(
            "SKIPPED: {} not built (cargo build --release -p pagewire-server-core --examples)",
            exe.display()
        );
        return None;
    }
    Some(exe)
}

/// Starts an example server; the process and the URL it listens on.
fn start_example(command: &mut Command) -> (Child, String) {
    let mut child = command.stdout(Stdio::piped()).spawn().expect("example");
    let url = listening_url(&mut child).expect("listening line");
    (child, url)
}

#[test]
fn embedded_memory_server_example_serves_sqlite() {
    let Some(exe) = example("memory_server") else {
        return;
    };
    let (mut child, url) = start_example(Command::new(&exe).arg("127.0.0.1:0"));
    let db = open_url(&url, "example.db");
    db.execute_batch("create table t(x); insert into t values (42)")
        .expect("write");
    let x: i64 = db
        .query_row("select x from t", [], |r| r.get(0))
        .expect("read");
    assert_eq!(x, 42);
    drop(db);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn custom_store_example_keeps_data_across_restarts() {
    let Some(exe) = example("custom_store") else {
        return;
    };
    let data = tempfile::tempdir().expect("data directory");
    let start = || start_example(Command::new(&exe).arg(data.path()).arg("127.0.0.1:0"));
    let (mut child, url) = start();
    let db = open_url(&url, "kept.db");
    db.execute_batch("create table t(x); insert into t values (42)")
        .expect("write");
    drop(db);
    // Killed, not stopped: what a commit acknowledged is on disk.
    let _ = child.kill();
    let _ = child.wait();

    let (mut child, url) = start();
    let db = open_url(&url, "kept.db");
    let x: i64 = db
        .query_row("select x from t", [], |r| r.get(0))
        .expect("read after restart");
    assert_eq!(x, 42);
    db.execute_batch("insert into t values (43)")
        .expect("write after restart");
    assert_eq!(count(&db, "t"), 2);
    assert_eq!(integrity(&db), "ok");
    drop(db);
    let _ = child.kill();
    let _ = child.wait();
}
