//! Tenancy and credentials over real gRPC (in-process server, real socket): for every
//! RPC, tenant A's token on tenant B's names reads nothing, changes nothing and learns
//! nothing (an existing name of B's answers exactly as a name nobody has); roles gate
//! each call; a reload revokes a token between two calls and ends its Watch stream,
//! while other tenants go on.

mod common;

use std::time::Duration;

use common::{Pages, Parts, TestServer, commit};
use pagewire_proto::v1 as pb;
use pagewire_server_core::{Credentials, ServerConfig};
use pb::operator_client::OperatorClient;
use pb::watch_request::Part;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;

const TOKENS: &str = r#"
[[token]]
token = "a-admin"
tenant = "acme"
role = "admin"

[[token]]
token = "b-admin"
tenant = "beta"
admin = true

[[token]]
# printf %s b-reader | sha256sum
token = "sha256:HASH"
tenant = "beta"
role = "read"

[[token]]
token = "b-writer"
tenant = "beta"
"#;

fn tokens_text() -> String {
    let hash: String = sha256(b"b-reader");
    TOKENS.replace("HASH", &hash)
}

fn sha256(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().map(|mut i| i.write_all(data));
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

struct Setup {
    server: TestServer,
    _dir: tempfile::TempDir,
    tokens: std::path::PathBuf,
    config: ServerConfig,
}

async fn setup() -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(&tokens, tokens_text())?;
    let operator = dir.path().join("operator");
    std::fs::write(&operator, "op-secret\n")?;
    let config = ServerConfig {
        credentials: Credentials::from_files(Some(&tokens), Some(&operator))?,
        read_lease_ttl: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let server = TestServer::start(config.clone()).await?;
    Ok(Setup {
        server,
        _dir: dir,
        tokens,
        config,
    })
}

fn open(name: &str, create: bool, read_only: bool) -> pb::OpenRequest {
    pb::OpenRequest {
        name: name.into(),
        create,
        read_only,
        ..Default::default()
    }
}

fn code<T>(r: Result<T, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

async fn lease(c: &mut Pages, name: &str) -> Result<pb::LeaseResponse, tonic::Status> {
    let req = pb::AcquireLeaseRequest {
        name: name.into(),
        client_id: "test".into(),
        ..Default::default()
    };
    Ok(c.acquire_lease(req).await?.into_inner())
}

/// A Watch stream on `name`: its first answer (or the error).
async fn watch(
    c: &mut Pages,
    name: &str,
) -> Result<tonic::Streaming<pb::WatchEvent>, tonic::Status> {
    let start = pb::WatchRequest {
        part: Some(Part::Start(pb::WatchStart {
            name: name.into(),
            ranges: true,
            incarnation: Default::default(),
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(start)
        .await
        .map_err(|_| tonic::Status::internal("send"))?;
    // Keep the request side open for the stream's life.
    tokio::spawn(async move {
        tx.closed().await;
    });
    let mut events = c
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    events.message().await?;
    Ok(events)
}

/// Every Pages and Admin RPC with `c`/`admin` on `name`; the codes, in order.
async fn every_rpc(
    c: &mut Pages,
    admin: &mut common::Admin,
    name: &str,
    foreign_lease: &pb::LeaseResponse,
) -> Vec<(&'static str, Option<Code>)> {
    let begin = pb::BeginReadRequest {
        name: name.into(),
        ..Default::default()
    };
    let read = pb::ReadPagesRequest {
        name: name.into(),
        version: 1,
        page_nos: vec![1],
        ..Default::default()
    };
    let renew = pb::RenewLeaseRequest {
        name: name.into(),
        lease_id: foreign_lease.lease_id.clone(),
        epoch: foreign_lease.epoch,
        ..Default::default()
    };
    let release = pb::ReleaseLeaseRequest {
        name: name.into(),
        lease_id: foreign_lease.lease_id.clone(),
        epoch: foreign_lease.epoch,
    };
    let mut parts = Parts::new(name, foreign_lease, 1, 2, 9);
    parts.header.name = name.into();
    vec![
        ("Open", code(c.open(open(name, false, false)).await)),
        (
            "Open read-only",
            code(c.open(open(name, false, true)).await),
        ),
        ("BeginRead", code(c.begin_read(begin).await)),
        ("ReadPages", code(c.read_pages(read).await)),
        ("RenewLease", code(c.renew_lease(renew).await)),
        ("ReleaseLease", code(c.release_lease(release).await)),
        ("Commit", code(commit(c, parts.stream()).await)),
        ("Watch", code(watch(c, name).await)),
        (
            "GetDatabaseInfo",
            code(
                admin
                    .get_database_info(pb::GetDatabaseInfoRequest { name: name.into() })
                    .await,
            ),
        ),
        (
            "DeleteDatabase",
            code(
                admin
                    .delete_database(pb::DeleteDatabaseRequest { name: name.into() })
                    .await,
            ),
        ),
    ]
}

#[tokio::test]
async fn a_tenant_learns_nothing_of_another_through_any_rpc() -> anyhow::Result<()> {
    let s = setup().await?;
    let mut beta = s.server.pages(Some("b-writer"))?;
    beta.open(open("secret.db", true, false)).await?;
    let beta_lease = lease(&mut beta, "secret.db").await?;
    commit(
        &mut beta,
        Parts::new("secret.db", &beta_lease, 0, 2, 7).stream(),
    )
    .await?;
    let before = s
        .server
        .admin(Some("b-admin"))?
        .get_database_info(pb::GetDatabaseInfoRequest {
            name: "secret.db".into(),
        })
        .await?
        .into_inner();

    let mut acme = s.server.pages(Some("a-admin"))?;
    let mut acme_admin = s.server.admin(Some("a-admin"))?;
    let existing = every_rpc(&mut acme, &mut acme_admin, "secret.db", &beta_lease).await;
    let guessed = every_rpc(&mut acme, &mut acme_admin, "guessed.db", &beta_lease).await;
    assert_eq!(
        existing, guessed,
        "B's existing name must answer as a name nobody has"
    );
    for (rpc, got) in &existing {
        // Releasing a lease one does not hold is a no-op everywhere (idempotent):
        // it succeeds for any name and changes nothing (checked below).
        if *rpc != "ReleaseLease" {
            assert!(got.is_some(), "{rpc} on another tenant's name succeeded");
        }
    }
    // Listing and metrics show A only its own.
    let listed = acme_admin
        .list_databases(pb::ListDatabasesRequest {})
        .await?
        .into_inner();
    assert!(listed.databases.is_empty(), "{listed:?}");
    let metrics = acme_admin
        .get_metrics(pb::GetMetricsRequest {})
        .await?
        .into_inner();
    assert_eq!((metrics.commits, metrics.watchers), (0, 0), "{metrics:?}");
    let usage = acme_admin
        .get_usage(pb::GetUsageRequest {})
        .await?
        .into_inner();
    assert_eq!((usage.databases, usage.stored_bytes), (0, 0), "{usage:?}");
    // A tenant's token is not the operator's.
    let mut op = OperatorClient::new(InterceptedService::new(
        s.server.channel.clone(),
        TestServer::bearer(Some("a-admin"))?,
    ));
    let denied = op.get_server_metrics(pb::GetServerMetricsRequest {}).await;
    assert_eq!(code(denied), Some(Code::Unauthenticated));
    // Creating by Open makes A's own database of that name; B's is unchanged.
    assert!(
        acme.open(open("secret.db", true, false))
            .await?
            .into_inner()
            .created
    );
    let after = s
        .server
        .admin(Some("b-admin"))?
        .get_database_info(pb::GetDatabaseInfoRequest {
            name: "secret.db".into(),
        })
        .await?
        .into_inner();
    assert_eq!(before, after, "tenant B's database changed");
    // The operator sees both tenants.
    let mut op = OperatorClient::new(InterceptedService::new(
        s.server.channel.clone(),
        TestServer::bearer(Some("op-secret"))?,
    ));
    let all = op
        .get_server_metrics(pb::GetServerMetricsRequest {})
        .await?
        .into_inner();
    assert_eq!(
        all.tenants.get("beta").map(|m| m.commits),
        Some(1),
        "{all:?}"
    );
    s.server.stop().await
}

#[tokio::test]
async fn roles_gate_every_call() -> anyhow::Result<()> {
    let s = setup().await?;
    let mut writer = s.server.pages(Some("b-writer"))?;
    writer.open(open("r.db", true, false)).await?;
    let l = lease(&mut writer, "r.db").await?;
    commit(&mut writer, Parts::new("r.db", &l, 0, 2, 7).stream()).await?;
    writer
        .release_lease(pb::ReleaseLeaseRequest {
            name: "r.db".into(),
            lease_id: l.lease_id.clone(),
            epoch: l.epoch,
        })
        .await?;

    // read: reading works; writing, leases and Admin do not.
    let mut reader = s.server.pages(Some("b-reader"))?;
    reader.open(open("r.db", false, true)).await?;
    let view = reader
        .begin_read(pb::BeginReadRequest {
            name: "r.db".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(view.state.map(|s| s.version), Some(1));
    reader
        .read_pages(pb::ReadPagesRequest {
            name: "r.db".into(),
            version: 1,
            page_nos: vec![1, 2],
            ..Default::default()
        })
        .await?;
    watch(&mut reader, "r.db").await?;
    let denied = [
        (
            "Open to write",
            code(reader.open(open("r.db", false, false)).await),
        ),
        (
            "Open to create",
            code(reader.open(open("new.db", true, true)).await),
        ),
        ("AcquireLease", code(lease(&mut reader, "r.db").await)),
        (
            "Commit",
            code(commit(&mut reader, Parts::new("r.db", &l, 1, 2, 8).stream()).await),
        ),
        (
            "ListDatabases",
            code(
                s.server
                    .admin(Some("b-reader"))?
                    .list_databases(pb::ListDatabasesRequest {})
                    .await,
            ),
        ),
        // write: no Admin.
        (
            "ListDatabases (write)",
            code(
                s.server
                    .admin(Some("b-writer"))?
                    .list_databases(pb::ListDatabasesRequest {})
                    .await,
            ),
        ),
        (
            "CreateDatabase (write)",
            code(
                s.server
                    .admin(Some("b-writer"))?
                    .create_database(pb::CreateDatabaseRequest {
                        name: "x.db".into(),
                    })
                    .await,
            ),
        ),
    ];
    for (what, got) in denied {
        assert_eq!(got, Some(Code::PermissionDenied), "{what}");
    }
    // The hash itself is no token.
    let hash = sha256(b"b-reader");
    let mut by_hash = s.server.pages(Some(&format!("sha256:{hash}")))?;
    assert_eq!(
        code(by_hash.open(open("r.db", false, true)).await),
        Some(Code::Unauthenticated)
    );
    // admin: everything.
    let mut admin = s.server.admin(Some("b-admin"))?;
    admin
        .create_database(pb::CreateDatabaseRequest {
            name: "x.db".into(),
        })
        .await?;
    s.server.stop().await
}

#[tokio::test]
async fn a_reload_revokes_a_token_between_two_calls_and_ends_its_watch() -> anyhow::Result<()> {
    let s = setup().await?;
    let mut writer = s.server.pages(Some("b-writer"))?;
    writer.open(open("w.db", true, false)).await?;
    let l = lease(&mut writer, "w.db").await?;
    commit(&mut writer, Parts::new("w.db", &l, 0, 2, 7).stream()).await?;
    let mut events = watch(&mut writer, "w.db").await?;
    let mut acme = s.server.pages(Some("a-admin"))?;
    acme.open(open("a.db", true, false)).await?;

    // Revoke b-writer (the rest of the file stays).
    let text = tokens_text().replace("token = \"b-writer\"", "token = \"b-writer-new\"");
    std::fs::write(&s.tokens, text)?;
    let summary = s.config.reload().map_err(anyhow::Error::msg)?;
    assert!(summary.contains("4 tokens"), "{summary}");

    let renew = pb::RenewLeaseRequest {
        name: "w.db".into(),
        lease_id: l.lease_id.clone(),
        epoch: l.epoch,
        ..Default::default()
    };
    assert_eq!(
        code(writer.renew_lease(renew).await),
        Some(Code::Unauthenticated)
    );
    assert_eq!(
        code(commit(&mut writer, Parts::new("w.db", &l, 1, 2, 8).stream()).await),
        Some(Code::Unauthenticated)
    );
    // The Watch stream ends with UNAUTHENTICATED.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await?;
    assert_eq!(code(ended), Some(Code::Unauthenticated));
    // Nothing was lost; the other tenant goes on; the new token works.
    let mut renewed = s.server.pages(Some("b-writer-new"))?;
    let view = renewed
        .begin_read(pb::BeginReadRequest {
            name: "w.db".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(view.state.map(|s| s.version), Some(1));
    let al = lease(&mut acme, "a.db").await?;
    commit(&mut acme, Parts::new("a.db", &al, 0, 2, 7).stream()).await?;
    // A broken file keeps the credentials in use.
    std::fs::write(&s.tokens, "[[token]\n")?;
    assert!(s.config.reload().is_err());
    acme.begin_read(pb::BeginReadRequest {
        name: "a.db".into(),
        ..Default::default()
    })
    .await?;
    s.server.stop().await
}
