//! Malformed and unauthorised requests over real gRPC: each gets its exact status code,
//! the server stays up, and no database state changes (checked by version numbers and
//! page contents).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use pagewire_proto::v1 as pb;
use pagewire_server_core::store::conformance::{page, page_one};
use pagewire_server_core::store::{Fault, FaultyStore};
use pagewire_server_core::{Credentials, Limits, MemoryStore, Role, ServerConfig, TokenMap};
use tonic::{Code, Status};

const DB: &str = "acme/orders.db";

fn tokens() -> anyhow::Result<TokenMap> {
    let mut map = TokenMap::default();
    map.insert("writer", "acme", Role::Write)
        .map_err(anyhow::Error::msg)?;
    map.insert("root", "acme", Role::Admin)
        .map_err(anyhow::Error::msg)?;
    map.insert("beta", "beta", Role::Write)
        .map_err(anyhow::Error::msg)?;
    Ok(map)
}

fn config() -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig {
        limits: Limits {
            max_commit_bytes: 16 * u64::from(PS),
            ..Limits::default()
        },
        credentials: Credentials::fixed(Some(tokens()?)),
        ..ServerConfig::default()
    })
}

fn open(name: &str, create: bool) -> pb::OpenRequest {
    pb::OpenRequest {
        name: name.into(),
        create,
        read_only: false,
        ..Default::default()
    }
}

fn read(version: u64, page_nos: Vec<u32>) -> pb::ReadPagesRequest {
    pb::ReadPagesRequest {
        name: DB.into(),
        version,
        page_nos,
        ..Default::default()
    }
}

/// The whole database at `version` as (state, pages).
async fn snapshot(client: &mut Pages) -> anyhow::Result<(pb::DbState, Vec<Bytes>)> {
    let state = client
        .open(open(DB, false))
        .await?
        .into_inner()
        .state
        .unwrap_or_default();
    let nos = (1..=state.page_count).collect();
    let pages = client
        .read_pages(read(state.version, nos))
        .await?
        .into_inner()
        .pages;
    Ok((state, pages))
}

/// A unary reply, shown for a failure message.
fn ok<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>) -> Result<String, Status> {
    r.map(|r| format!("{:?}", r.into_inner()))
}

/// A commit reply, shown for a failure message.
fn okc(r: Result<pb::CommitResponse, Status>) -> Result<String, Status> {
    r.map(|r| format!("{r:?}"))
}

fn check(what: &str, got: Result<impl std::fmt::Debug, Status>, want: Code) -> Option<String> {
    match got {
        Err(s) if s.code() == want => None,
        other => Some(format!("{what}: want {want:?}, got {other:?}")),
    }
}

#[tokio::test]
async fn bad_requests_get_exact_codes_and_change_nothing() -> anyhow::Result<()> {
    let server = TestServer::start(config()?).await?;
    let mut c = server.pages(Some("writer"))?;
    let mut other = server.pages(Some("root"))?; // same tenant, another client
    let opened = c.open(open(DB, true)).await?.into_inner();
    assert!(opened.created);
    let limits = opened.limits.unwrap_or_default();
    assert_eq!(limits.max_pages_per_read, 255);
    assert_eq!((opened.lease_ttl_ms, opened.heartbeat_ms), (10_000, 3_333));
    let lease = c
        .acquire_lease(pb::AcquireLeaseRequest {
            name: DB.into(),
            client_id: "writer:1".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let first = commit(&mut c, Parts::new(DB, &lease, 0, 3, 1).stream()).await?;
    assert_eq!((first.version, first.already_applied), (1, false));
    let before = snapshot(&mut c).await?;
    let geometry = |s: &pb::DbState| (s.version, s.page_size, s.page_count);
    assert_eq!(geometry(&before.0), (1, PS, 3));
    assert_eq!(
        (before.0.incarnation.len(), before.0.tag.len()),
        (16, 16),
        "identity"
    );

    let mut failures = Vec::new();
    let mut expect = |what: &str, got: Result<String, Status>, want: Code| {
        failures.extend(check(what, got, want))
    };

    // Names and opens.
    expect(
        "empty name",
        ok(c.open(open("", true)).await),
        Code::InvalidArgument,
    );
    expect(
        "512-byte name",
        ok(c.open(open(&"n".repeat(512), true)).await),
        Code::InvalidArgument,
    );
    expect(
        "name with NUL",
        ok(c.open(open("a\0b", true)).await),
        Code::InvalidArgument,
    );
    expect(
        "unknown db without create",
        ok(c.open(open("nope.db", false)).await),
        Code::NotFound,
    );
    let ro = pb::OpenRequest {
        name: "nope.db".into(),
        create: true,
        read_only: true,
        ..Default::default()
    };
    expect(
        "read-only open never creates",
        ok(c.open(ro).await),
        Code::NotFound,
    );

    // Time travel.
    let at = |at_version: u64, at_unix_ms: i64| pb::BeginReadRequest {
        name: DB.into(),
        cached_version: 0,
        at_version,
        at_unix_ms,
        ranges: false,
        ..Default::default()
    };
    expect(
        "as of a version and a time at once",
        ok(c.begin_read(at(1, 1)).await),
        Code::InvalidArgument,
    );
    expect(
        "as of a version not committed yet",
        ok(c.begin_read(at(2, 0)).await),
        Code::OutOfRange,
    );
    expect(
        "as of a time before the first commit",
        ok(c.begin_read(at(0, 1)).await),
        Code::OutOfRange,
    );

    // Reads.
    expect(
        "read page 0",
        ok(c.read_pages(read(1, vec![1, 0])).await),
        Code::InvalidArgument,
    );
    expect(
        "read beyond count",
        ok(c.read_pages(read(1, vec![4])).await),
        Code::InvalidArgument,
    );
    expect(
        "read too many pages",
        ok(c.read_pages(read(1, vec![1; 1025])).await),
        Code::ResourceExhausted,
    );
    expect(
        "read a future version",
        ok(c.read_pages(read(2, vec![1])).await),
        Code::OutOfRange,
    );
    let unknown = pb::ReadPagesRequest {
        name: "nope.db".into(),
        version: 1,
        page_nos: vec![1],
        ..Default::default()
    };
    expect(
        "read unknown db",
        ok(c.read_pages(unknown).await),
        Code::NotFound,
    );

    // Leases.
    let acquire = pb::AcquireLeaseRequest {
        name: DB.into(),
        client_id: "intruder".into(),
        ..Default::default()
    };
    let held = other.acquire_lease(acquire).await;
    if let Err(s) = &held {
        assert!(
            s.message().contains("writer:1") && s.message().contains(" ms"),
            "{}",
            s.message()
        );
    }
    expect("lease held by another", ok(held), Code::Aborted);
    for (what, id) in [("short", vec![1; 15]), ("padded", vec![1; 17])] {
        let ask = pb::AcquireLeaseRequest {
            name: DB.into(),
            client_id: "intruder".into(),
            lease_id: id.into(),
            ..Default::default()
        };
        expect(
            &format!("acquire under a {what} lease id"),
            ok(other.acquire_lease(ask).await),
            Code::InvalidArgument,
        );
    }
    let renew = |lease_id: Bytes, epoch| pb::RenewLeaseRequest {
        name: DB.into(),
        lease_id,
        epoch,
        ..Default::default()
    };
    expect(
        "renew with a short lease id",
        ok(
            c.renew_lease(renew(Bytes::from_static(b"short"), lease.epoch))
                .await,
        ),
        Code::InvalidArgument,
    );
    expect(
        "renew with a stale epoch",
        ok(
            c.renew_lease(renew(lease.lease_id.clone(), lease.epoch + 1))
                .await,
        ),
        Code::FailedPrecondition,
    );
    let release = pb::ReleaseLeaseRequest {
        name: DB.into(),
        lease_id: Bytes::from_static(b"x"),
        epoch: 1,
    };
    expect(
        "release with a bad lease id",
        ok(c.release_lease(release).await),
        Code::InvalidArgument,
    );

    // Commits: each breaks one thing of an otherwise valid commit on version 1.
    let good = Parts::new(DB, &lease, 1, 3, 2);
    for bad_size in [1000, 256, 131072] {
        let mut p = good.clone();
        p.header.page_size = bad_size;
        expect(
            &format!("page size {bad_size}"),
            okc(commit(&mut c, p.stream()).await),
            Code::InvalidArgument,
        );
    }
    type Breaker = Box<dyn Fn(&mut Parts)>;
    let broken: Vec<(&str, Breaker)> = vec![
        ("page_no 0", Box::new(|p| p.pages[1].page_no = 0)),
        ("page beyond count", Box::new(|p| p.pages[2].page_no = 4)),
        (
            "wrong page length",
            Box::new(|p| p.pages[1].data = Bytes::from(vec![0; 4095])),
        ),
        ("duplicate page", Box::new(|p| p.pages[2].page_no = 2)),
        (
            "missing page 1",
            Box::new(|p| {
                p.pages.remove(0);
            }),
        ),
        (
            "WAL-format page 1",
            Box::new(|p| {
                let mut d = p.pages[0].data.to_vec();
                d[18] = 2;
                d[19] = 2;
                p.pages[0].data = d.into();
            }),
        ),
        (
            "page 1 header page size",
            Box::new(|p| {
                let mut d = p.pages[0].data.to_vec();
                d[16] = 0x20; // 8192
                p.pages[0].data = d.into();
            }),
        ),
        (
            "header page count disagrees with page 1",
            Box::new(|p| {
                p.header.page_count = 4;
                p.pages.push(pb::Page {
                    page_no: 4,
                    data: page(PS, 0),
                });
            }),
        ),
        (
            "commit_id of 5 bytes",
            Box::new(|p| p.header.commit_id = Bytes::from_static(b"12345")),
        ),
        (
            "lease_id of 0 bytes",
            Box::new(|p| p.header.lease_id = Bytes::new()),
        ),
        ("page count 0", Box::new(|p| p.header.page_count = 0)),
        ("empty name", Box::new(|p| p.header.name = String::new())),
    ];
    for (what, breaks) in &broken {
        let mut p = good.clone();
        breaks(&mut p);
        expect(
            what,
            okc(commit(&mut c, p.stream()).await),
            Code::InvalidArgument,
        );
    }
    let s = good.stream();
    let streams: Vec<(&str, Vec<pb::CommitRequest>)> = vec![
        ("no header", vec![s[1].clone(), s[2].clone()]),
        (
            "two headers",
            vec![s[0].clone(), s[0].clone(), s[1].clone(), s[2].clone()],
        ),
        ("no trailer", vec![s[0].clone(), s[1].clone()]),
        (
            "trailer count mismatch",
            vec![s[0].clone(), s[1].clone(), trailer(2)],
        ),
        (
            "pages after the trailer",
            vec![s[0].clone(), s[1].clone(), s[2].clone(), batch(vec![])],
        ),
        ("empty stream", vec![]),
        (
            "empty message",
            vec![
                s[0].clone(),
                pb::CommitRequest { part: None },
                s[1].clone(),
                s[2].clone(),
            ],
        ),
    ];
    for (what, stream) in streams {
        expect(
            what,
            okc(commit(&mut c, stream).await),
            Code::InvalidArgument,
        );
    }
    let mut resize = Parts::new(DB, &lease, 1, 2, 2);
    resize.header.page_size = 8192;
    resize.pages = vec![pb::Page {
        page_no: 1,
        data: page_one(8192, 2, 2),
    }];
    expect(
        "page size change without every page",
        okc(commit(&mut c, resize.stream()).await),
        Code::InvalidArgument,
    );
    let mut big = Parts::new(DB, &lease, 1, 17, 2);
    big.header.page_count = 17;
    expect(
        "over max_commit_bytes",
        okc(commit(&mut c, big.stream()).await),
        Code::ResourceExhausted,
    );
    let mut stale = good.clone();
    stale.header.epoch += 1;
    expect(
        "stale epoch",
        okc(commit(&mut c, stale.stream()).await),
        Code::FailedPrecondition,
    );
    let mut foreign = good.clone();
    foreign.header.lease_id = Bytes::from(vec![9; 16]);
    expect(
        "someone else's lease id",
        okc(commit(&mut c, foreign.stream()).await),
        Code::FailedPrecondition,
    );
    let mut behind = good.clone();
    behind.header.base_version = 0;
    expect(
        "base version behind",
        okc(commit(&mut c, behind.stream()).await),
        Code::FailedPrecondition,
    );
    let mut ahead = good.clone();
    ahead.header.base_version = 5;
    expect(
        "base version ahead",
        okc(commit(&mut c, ahead.stream()).await),
        Code::FailedPrecondition,
    );
    let mut missing = good.clone();
    missing.header.name = "nope.db".into();
    expect(
        "commit to an unknown db",
        okc(commit(&mut c, missing.stream()).await),
        Code::NotFound,
    );

    assert!(failures.is_empty(), "wrong codes:\n{}", failures.join("\n"));

    // Nothing changed, and valid calls still work.
    let after = snapshot(&mut c).await?;
    assert_eq!(
        before, after,
        "state and pages unchanged by the bad requests"
    );
    let view = c
        .begin_read(pb::BeginReadRequest {
            name: DB.into(),
            cached_version: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        (
            view.state.map(|s| s.version),
            view.cache_invalid,
            view.changed_pages.len()
        ),
        (Some(1), false, 0)
    );
    let stream = good.stream();
    let second = commit(&mut c, stream.clone()).await?;
    assert_eq!((second.version, second.already_applied), (2, false));
    let retry = commit(&mut c, stream).await?;
    assert_eq!((retry.version, retry.already_applied), (2, true));
    let (state, pages) = snapshot(&mut c).await?;
    assert_eq!(
        (state.version, state.page_size, state.page_count),
        (2, PS, 3)
    );
    assert_eq!(state.incarnation, before.0.incarnation, "the same database");
    assert!(
        pages[1..].iter().all(|p| p.iter().all(|&b| b == 2))
            && pages[0][100..].iter().all(|&b| b == 2)
    );
    let old = c.read_pages(read(1, vec![2])).await?.into_inner().pages;
    assert_eq!(old, vec![page(PS, 1)], "version 1 still readable as it was");
    let view = c
        .begin_read(pb::BeginReadRequest {
            name: DB.into(),
            cached_version: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(view.changed_pages, [1, 2, 3]);
    server.stop().await
}

#[tokio::test]
async fn tokens_decide_tenant_and_admin_rights() -> anyhow::Result<()> {
    let server = TestServer::start(config()?).await?;
    let mut failures = Vec::new();
    let mut expect = |what: &str, got: Result<String, Status>, want: Code| {
        failures.extend(check(what, got, want))
    };
    expect(
        "no token",
        ok(server.pages(None)?.open(open(DB, true)).await),
        Code::Unauthenticated,
    );
    expect(
        "unknown token",
        ok(server.pages(Some("guess"))?.open(open(DB, true)).await),
        Code::Unauthenticated,
    );
    let list = || pb::ListDatabasesRequest {};
    expect(
        "admin without a token",
        ok(server.admin(None)?.list_databases(list()).await),
        Code::Unauthenticated,
    );
    expect(
        "admin without admin rights",
        ok(server.admin(Some("writer"))?.list_databases(list()).await),
        Code::PermissionDenied,
    );
    let create = pb::CreateDatabaseRequest {
        name: "x.db".into(),
    };
    expect(
        "create without admin rights",
        ok(server.admin(Some("beta"))?.create_database(create).await),
        Code::PermissionDenied,
    );
    assert!(failures.is_empty(), "wrong codes:\n{}", failures.join("\n"));

    // acme's database is invisible to beta, and the same name in beta is another database.
    let mut acme = server.pages(Some("writer"))?;
    let mut beta = server.pages(Some("beta"))?;
    acme.open(open(DB, true)).await?;
    let code = beta.open(open(DB, false)).await.err().map(|s| s.code());
    assert_eq!(code, Some(Code::NotFound));
    let lease = acme
        .acquire_lease(pb::AcquireLeaseRequest {
            name: DB.into(),
            client_id: "a".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    commit(&mut acme, Parts::new(DB, &lease, 0, 2, 7).stream()).await?;
    assert!(beta.open(open(DB, true)).await?.into_inner().created);
    let beta_lease = beta
        .acquire_lease(pb::AcquireLeaseRequest {
            name: DB.into(),
            client_id: "b".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(beta_lease.into_inner().state.map(|s| s.version), Some(0));
    let mut root = server.admin(Some("root"))?;
    let names: Vec<_> = root
        .list_databases(pb::ListDatabasesRequest {})
        .await?
        .into_inner()
        .databases;
    let names: Vec<_> = names
        .into_iter()
        .map(|d| (d.name, d.state.map(|s| s.version), d.lease_held))
        .collect();
    assert_eq!(names, [(DB.to_owned(), Some(1), true)]);
    let dup = root
        .create_database(pb::CreateDatabaseRequest { name: DB.into() })
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(dup, Some(Code::AlreadyExists));
    let gone = root
        .delete_database(pb::DeleteDatabaseRequest {
            name: "nope.db".into(),
        })
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(gone, Some(Code::NotFound));

    // Health answers without a token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let check = tonic_health::pb::HealthCheckRequest {
        service: "pagewire.v1.Pages".into(),
    };
    let status = health.check(check).await?.into_inner().status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await
}

#[tokio::test]
async fn dev_mode_needs_no_token() -> anyhow::Result<()> {
    let server = TestServer::start(ServerConfig::default()).await?;
    let opened = server
        .pages(None)?
        .open(open("dev.db", true))
        .await?
        .into_inner();
    assert!(opened.created);
    let dbs = server
        .admin(Some("anything"))?
        .list_databases(pb::ListDatabasesRequest {})
        .await?
        .into_inner();
    assert_eq!(dbs.databases.len(), 1);
    server.stop().await
}

/// The sorted service names reflection `$v` (`v1` or `v1alpha`) lists.
macro_rules! reflected_services {
    ($v:ident, $channel:expr) => {{
        use tonic_reflection::pb::$v::ServerReflectionRequest;
        use tonic_reflection::pb::$v::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$v::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$v::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new($channel);
        let ask = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::iter(vec![ask]))
            .await?
            .into_inner();
        let reply = replies.message().await?.and_then(|r| r.message_response);
        let Some(MessageResponse::ListServicesResponse(list)) = reply else {
            anyhow::bail!("no service list: {reply:?}")
        };
        let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    }};
}

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() -> anyhow::Result<()> {
    let server = TestServer::start(config()?).await?;
    // Each form names itself as the reflection service; that v1alpha answers at all
    // is what older clients need.
    let expected = |reflection: &str| {
        let mut names = vec![
            "grpc.health.v1.Health".to_owned(),
            "pagewire.v1.Admin".to_owned(),
            "pagewire.v1.Operator".to_owned(),
            "pagewire.v1.Pages".to_owned(),
            format!("grpc.reflection.{reflection}.ServerReflection"),
        ];
        names.sort();
        names
    };
    assert_eq!(
        reflected_services!(v1, server.channel.clone()),
        expected("v1")
    );
    assert_eq!(
        reflected_services!(v1alpha, server.channel.clone()),
        expected("v1alpha")
    );
    server.stop().await
}

fn begin_at(at_version: u64, at_unix_ms: i64) -> pb::BeginReadRequest {
    pb::BeginReadRequest {
        name: DB.into(),
        cached_version: 0,
        at_version,
        at_unix_ms,
        ranges: false,
        ..Default::default()
    }
}

#[tokio::test]
async fn time_travel_and_background_gc() -> anyhow::Result<()> {
    let config = ServerConfig {
        history_retention: Duration::ZERO,
        gc_interval: Duration::from_millis(20),
        pin_ttl: Duration::from_secs(1),
        ..config()?
    };
    let server = TestServer::start(config).await?;
    let mut c = server.pages(Some("writer"))?;
    c.open(open(DB, true)).await?;
    let lease = c
        .acquire_lease(pb::AcquireLeaseRequest {
            name: DB.into(),
            client_id: "w".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    for v in 0..2 {
        commit(&mut c, Parts::new(DB, &lease, v, 2, v as u8 + 1).stream()).await?;
    }
    // Version 2, pinned by this BeginRead while it is the newest (so no GC pass can
    // have taken it first), outlives GC while the pin lasts.
    let two = c.begin_read(begin_at(2, 0)).await?.into_inner();
    commit(&mut c, Parts::new(DB, &lease, 2, 2, 3).stream()).await?;
    assert_eq!(two.state.as_ref().map(|s| s.version), Some(2));
    assert!(two.committed_unix_ms > 0, "{two:?}");
    let then = c
        .begin_read(begin_at(0, two.committed_unix_ms))
        .await?
        .into_inner();
    let version = then.state.as_ref().map_or(0, |s| s.version);
    assert!(
        version >= 2 && then.committed_unix_ms == two.committed_unix_ms,
        "{then:?}"
    );
    tokio::time::sleep(Duration::from_millis(150)).await; // several GC passes
    let one = c.begin_read(begin_at(1, 0)).await;
    let status = one.err().map(|s| (s.code(), s.message().to_owned()));
    assert!(
        matches!(&status, Some((Code::OutOfRange, m)) if m.contains("no longer retained")),
        "{status:?}"
    );
    assert_eq!(
        c.read_pages(read(2, vec![2])).await?.into_inner().pages,
        vec![page(PS, 2)]
    );
    tokio::time::sleep(Duration::from_millis(1500)).await; // the pin expires
    let gone = c.read_pages(read(2, vec![2])).await.err().map(|s| s.code());
    assert_eq!(gone, Some(Code::OutOfRange));
    let newest = snapshot(&mut c).await?;
    assert_eq!(newest.0.version, 3);
    assert_eq!(newest.1[1], page(PS, 3), "newest intact after GC");
    server.stop().await
}

#[tokio::test]
async fn injected_lost_reply_then_retry_learns_the_outcome() -> anyhow::Result<()> {
    let fault: Fault = "commit-reply-lost=2".parse().map_err(anyhow::Error::msg)?;
    let store = FaultyStore::wrap(Arc::new(MemoryStore::new()), Some(fault));
    let server = TestServer::start_with(config()?, store).await?;
    let mut c = server.pages(Some("writer"))?;
    c.open(open(DB, true)).await?;
    let lease = c
        .acquire_lease(pb::AcquireLeaseRequest {
            name: DB.into(),
            client_id: "w".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    commit(&mut c, Parts::new(DB, &lease, 0, 1, 1).stream()).await?;
    let second = Parts::new(DB, &lease, 1, 1, 2).stream();
    let lost = commit(&mut c, second.clone()).await.err().map(|s| s.code());
    assert_eq!(lost, Some(Code::Unavailable));
    let retry = commit(&mut c, second).await?;
    assert_eq!((retry.version, retry.already_applied), (2, true));
    server.stop().await
}
