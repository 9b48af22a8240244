//! TLS end to end: a real server with `--tls-cert`/`--tls-key` (and `--tls-client-ca`),
//! the stock `sqlite3` shell with `.load`, Debian's Python and the static shell over
//! `https://`, certificates generated per run. A wrong CA, a missing client certificate,
//! plaintext against TLS and TLS against plaintext all fail at open, quickly, saying
//! why; a certificate reloaded on SIGHUP is served to the next connection by the same
//! process.

use std::path::Path;
use std::time::{Duration, Instant};

use pagewire_tests::certs::TestCerts;
use pagewire_tests::python::{self, Driver};
use pagewire_tests::{Server, shell, text};

/// A TLS server on the memory store.
fn tls_server(certs: &TestCerts, mutual: bool) -> Server {
    let mut flags = vec!["--store".to_owned(), "memory".to_owned()];
    flags.extend(certs.server_flags(mutual));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start_with(&flags).expect("TLS server")
}

fn s(p: &Path) -> String {
    TestCerts::s(p)
}

#[test]
fn the_shells_and_python_work_over_https() {
    let (Some(sqlite3), Some(py)) = (shell::sqlite3(), python::python()) else {
        return;
    };
    let certs = TestCerts::new().expect("certs");
    let server = tls_server(&certs, false);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let ca = s(&certs.ca);
    let env = [
        ("PAGEWIRE_URL", server.url.as_str()),
        ("PAGEWIRE_CA", ca.as_str()),
    ];
    let script = format!(
        "{}.open tls.db\ncreate table t(x);\ninsert into t values ('over tls');\nselect x from t;\n",
        shell::load_vfs()
    );
    let out = shell::run(sqlite3, &env, &script);
    assert_eq!(
        text(&out.stdout).trim(),
        "over tls",
        "{}",
        text(&out.stderr)
    );

    let mut python = Driver::start(py, &env);
    python.open(1, "file:tls.db").expect("python over https");
    assert_eq!(python.ok(1, "select x from t"), "[('over tls',)]");
    python.ok(1, "insert into t values ('from python')");

    if let Some(static_shell) = shell::static_shell() {
        let out = shell::run(
            &static_shell.display().to_string(),
            &env,
            ".open tls.db\nselect count(*) from t;\n",
        );
        assert_eq!(text(&out.stdout).trim(), "2", "{}", text(&out.stderr));
    }
    // The CA as a URI parameter instead of the environment.
    let mut python = Driver::start(py, &[("PAGEWIRE_URL", server.url.as_str())]);
    let uri = format!("file:tls.db?ca={ca}");
    python.open(1, &uri).expect("ca= in the URI");
    assert_eq!(python.ok(1, "select count(*) from t"), "[(2,)]");
}

/// Opens `file:tls.db` from Python with `env` and returns the error and how long it
/// took; the open must fail.
fn failed_open(py: &str, env: &[(&str, &str)]) -> (String, String, Duration) {
    let mut python = Driver::start(py, env);
    let started = Instant::now();
    let err = python
        .open(1, "file:tls.db")
        .expect_err("the open must fail");
    (err, python.stderr_text(), started.elapsed())
}

#[test]
fn a_wrong_ca_or_a_missing_client_certificate_is_cantopen_with_the_reason() {
    let Some(py) = python::python() else { return };
    let certs = TestCerts::new().expect("certs");
    let server = tls_server(&certs, false);
    let url = server.url.as_str();
    let (wrong, ca) = (s(&certs.wrong_ca), s(&certs.ca));

    // No CA given: the system's roots do not know the test CA.
    for env in [
        vec![("PAGEWIRE_URL", url), ("PAGEWIRE_CA", wrong.as_str())],
        vec![("PAGEWIRE_URL", url)],
    ] {
        let (err, log, took) = failed_open(py, &env);
        assert!(err.contains("unable to open database file"), "{err}");
        assert!(
            log.contains("not signed by a CA this client trusts"),
            "{log}"
        );
        assert!(
            took < Duration::from_secs(10),
            "a TLS failure is not retried: {took:?}"
        );
    }

    // Mutual TLS: no client certificate fails at the handshake; one the client CA
    // signed works.
    let mutual = tls_server(&certs, true);
    let url = mutual.url.as_str();
    let (err, log, took) = failed_open(py, &[("PAGEWIRE_URL", url), ("PAGEWIRE_CA", ca.as_str())]);
    assert!(err.contains("unable to open database file"), "{err}");
    assert!(log.contains("client certificate"), "{log}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (cert, key) = (s(&certs.client_cert), s(&certs.client_key));
    let env = [
        ("PAGEWIRE_URL", url),
        ("PAGEWIRE_CA", ca.as_str()),
        ("PAGEWIRE_CLIENT_CERT", cert.as_str()),
        ("PAGEWIRE_CLIENT_KEY", key.as_str()),
    ];
    let mut python = Driver::start(py, &env);
    python
        .open(1, "file:tls.db")
        .expect("mTLS with a client certificate");
    python.ok(1, "create table t(x)");
    // A certificate the client CA did not sign (the server's own) is refused too.
    let (scert, skey) = (s(&certs.server_cert), s(&certs.server_key));
    let env = [
        ("PAGEWIRE_URL", url),
        ("PAGEWIRE_CA", ca.as_str()),
        ("PAGEWIRE_CLIENT_CERT", scert.as_str()),
        ("PAGEWIRE_CLIENT_KEY", skey.as_str()),
    ];
    let (err, _, _) = failed_open(py, &env);
    assert!(err.contains("unable to open database file"), "{err}");
}

#[test]
fn plaintext_and_tls_do_not_mix() {
    let Some(py) = python::python() else { return };
    let certs = TestCerts::new().expect("certs");
    let tls = tls_server(&certs, false);
    // Plaintext gRPC against the TLS server: no answer ever comes.
    let plain_url = tls.url.replacen("https://", "http://", 1);
    let (err, _, _) = failed_open(
        py,
        &[
            ("PAGEWIRE_URL", plain_url.as_str()),
            ("PAGEWIRE_RETRY_TIMEOUT", "1s"),
        ],
    );
    assert!(err.contains("unable to open database file"), "{err}");
    // TLS against a plaintext server.
    let plain = Server::start_with(&["--store", "memory"]).expect("plain server");
    let tls_url = plain.url.replacen("http://", "https://", 1);
    let ca = s(&certs.ca);
    let (err, log, took) = failed_open(
        py,
        &[
            ("PAGEWIRE_URL", tls_url.as_str()),
            ("PAGEWIRE_CA", ca.as_str()),
        ],
    );
    assert!(err.contains("unable to open database file"), "{err}");
    assert!(log.contains("does not seem to speak TLS"), "{log}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn a_certificate_reloaded_on_sighup_is_served_to_new_connections() {
    let Some(py) = python::python() else { return };
    let certs = TestCerts::new().expect("certs");
    // The server reads its certificate from files this test replaces.
    let cert = certs.dir.join("live.pem");
    let key = certs.dir.join("live.key");
    std::fs::copy(&certs.server_cert, &cert).expect("copy");
    std::fs::copy(&certs.server_key, &key).expect("copy");
    let (cert_s, key_s) = (s(&cert), s(&key));
    let mut server = Server::start_with(&[
        "--store",
        "memory",
        "--tls-cert",
        &cert_s,
        "--tls-key",
        &key_s,
    ])
    .expect("server");
    let url = server.url.clone();
    let (ca, wrong) = (s(&certs.ca), s(&certs.wrong_ca));
    let mut first = Driver::start(
        py,
        &[("PAGEWIRE_URL", url.as_str()), ("PAGEWIRE_CA", ca.as_str())],
    );
    first.open(1, "file:tls.db").expect("open");
    first.ok(1, "create table t(x)");

    // A broken file and SIGHUP: the server goes on, with the old certificate.
    std::fs::write(&cert, "not a certificate").expect("write");
    let hup = |pid: i32| {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        std::thread::sleep(Duration::from_millis(300));
    };
    hup(server.pid());
    assert!(
        server.try_wait().is_none(),
        "SIGHUP must not stop the server"
    );
    let mut again = Driver::start(
        py,
        &[("PAGEWIRE_URL", url.as_str()), ("PAGEWIRE_CA", ca.as_str())],
    );
    again
        .open(1, "file:tls.db")
        .expect("the old certificate still served");

    // Now a certificate from another CA: new connections get it, the same process.
    std::fs::copy(&certs.wrong_server_cert, &cert).expect("copy");
    std::fs::copy(&certs.wrong_server_key, &key).expect("copy");
    let pid = server.pid();
    hup(pid);
    assert!(
        server.try_wait().is_none(),
        "SIGHUP must not stop the server"
    );
    assert_eq!(server.pid(), pid);
    let (err, log, _) = failed_open(
        py,
        &[("PAGEWIRE_URL", url.as_str()), ("PAGEWIRE_CA", ca.as_str())],
    );
    assert!(
        err.contains("unable to open database file") && log.contains("not signed"),
        "{err} {log}"
    );
    let mut other = Driver::start(
        py,
        &[
            ("PAGEWIRE_URL", url.as_str()),
            ("PAGEWIRE_CA", wrong.as_str()),
        ],
    );
    other.open(1, "file:tls.db").expect("the new certificate");
    assert_eq!(other.ok(1, "select count(*) from t"), "[(0,)]");
    // The connection made before the reload goes on.
    first.ok(1, "insert into t values (1)");
}
