//! Credentials through what users run: a real server process with a tokens file (a
//! hashed token among them) and an operator token file, Debian's Python through the
//! VFS. A read token opens read-only and cannot write; SIGHUP revokes a token while
//! its connection holds the write lease and follows commits on a Watch stream: its
//! next calls fail, nothing committed is lost, other tenants go on, and the server is
//! the same process.

use std::time::Duration;

use pagewire_proto::v1 as pb;
use pagewire_tests::python::{self, Driver};
use pagewire_tests::{Server, wait_for};
use pb::operator_client::OperatorClient;
use tonic::Code;

fn sha256_hex(text: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("printf %s '{text}' | sha256sum")])
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn tokens(writer: &str) -> String {
    format!(
        "[[token]]\ntoken = \"{writer}\"\ntenant = \"acme\"\n\n\
         [[token]]\ntoken = \"sha256:{}\"\ntenant = \"acme\"\nrole = \"read\"\n\n\
         [[token]]\ntoken = \"beta-w\"\ntenant = \"beta\"\nrole = \"write\"\n",
        sha256_hex("acme-reader")
    )
}

/// The operator's view: Operator.GetServerMetrics with `token`.
fn server_metrics(url: &str, token: &str) -> Result<pb::ServerMetrics, Code> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = pagewire_tests::admin::authed(url, token)
            .await
            .map_err(|_| Code::Unavailable)?;
        let mut client = OperatorClient::new(channel);
        client
            .get_server_metrics(pb::GetServerMetricsRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| s.code())
    })
}

fn watchers(url: &str, tenant: &str) -> u64 {
    server_metrics(url, "op-secret")
        .ok()
        .and_then(|m| m.tenants.get(tenant).map(|t| t.watchers))
        .unwrap_or(0)
}

#[test]
fn roles_and_a_revocation_on_sighup_through_python() {
    let Some(py) = python::python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens_file = dir.path().join("tokens.toml");
    std::fs::write(&tokens_file, tokens("acme-w")).expect("tokens");
    let operator = dir.path().join("operator");
    std::fs::write(&operator, "op-secret\n").expect("operator");
    let (t, o) = (
        tokens_file.display().to_string(),
        operator.display().to_string(),
    );
    let mut server =
        Server::start_with(&["--tokens", &t, "--operator-token-file", &o]).expect("server");
    let url = server.url.clone();

    let mut writer = Driver::start(py, &[("PAGEWIRE_URL", &url), ("PAGEWIRE_TOKEN", "acme-w")]);
    writer.open(1, "file:orders.db").expect("open");
    writer.ok(1, "create table t(x)");
    writer.ok(1, "insert into t values (1)");

    // The read token (stored as its hash): read-only works, writing does not.
    let mut reader = Driver::start(
        py,
        &[("PAGEWIRE_URL", &url), ("PAGEWIRE_TOKEN", "acme-reader")],
    );
    let err = reader
        .open(1, "file:orders.db")
        .expect_err("a read token cannot open to write");
    assert!(
        err.contains("unable to open") || err.contains("permission"),
        "{err}"
    );
    reader
        .open(2, "file:orders.db?mode=ro")
        .expect("read-only open");
    assert_eq!(reader.ok(2, "select count(*) from t"), "[(1,)]");
    let err = reader
        .sql(2, "insert into t values (2)")
        .expect_err("read-only");
    assert!(
        err.contains("readonly") || err.contains("read-only"),
        "{err}"
    );

    // The writer holds the write lease (an open transaction) and, reading, a Watch
    // stream with its read lease.
    writer.connect(2, "file:orders.db");
    assert_eq!(writer.ok(2, "select count(*) from t"), "[(1,)]");
    writer.ok(1, "begin immediate");
    writer.ok(1, "insert into t values (2)");
    assert!(
        wait_for(Duration::from_secs(5), || watchers(&url, "acme") >= 1),
        "the writer's Watch stream"
    );
    let mut other = Driver::start(py, &[("PAGEWIRE_URL", &url), ("PAGEWIRE_TOKEN", "beta-w")]);
    other.open(1, "file:b.db").expect("beta");
    other.ok(1, "create table b(x)");

    // Revoke acme-w (a new token for acme instead) and SIGHUP.
    std::fs::write(&tokens_file, tokens("acme-w2")).expect("tokens");
    let pid = server.pid();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    assert!(
        wait_for(Duration::from_secs(5), || watchers(&url, "acme") == 0),
        "the revoked token's Watch stream ends"
    );
    assert!(
        server.try_wait().is_none(),
        "SIGHUP must not stop the server"
    );
    let err = writer
        .sql(1, "commit")
        .expect_err("the revoked token cannot commit");
    assert!(!err.is_empty());
    let err = writer
        .sql(2, "select count(*) from t")
        .expect_err("nor read");
    assert!(!err.is_empty());

    // Nothing committed is lost; the other tenant goes on; the same process.
    let mut again = Driver::start(py, &[("PAGEWIRE_URL", &url), ("PAGEWIRE_TOKEN", "acme-w2")]);
    again.open(1, "file:orders.db").expect("the new token");
    assert_eq!(again.ok(1, "select count(*) from t"), "[(1,)]");
    other.ok(1, "insert into b values (1)");
    assert_eq!(server.pid(), pid);
    assert!(server.try_wait().is_none());

    // The Operator service: the operator's token only.
    assert!(server_metrics(&url, "op-secret").is_ok());
    assert_eq!(
        server_metrics(&url, "acme-w2").err(),
        Some(Code::Unauthenticated)
    );
}
