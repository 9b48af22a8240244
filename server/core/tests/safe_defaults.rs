//! Safe defaults over real gRPC (issue 12, item 6): new database names with control
//! characters are refused where a database is created, while existing ones stay
//! usable; `Admin.GetMetrics` shows a tenant only its own numbers.
// Requests are built with `..Default::default()` so new fields do not break them.
#![allow(clippy::needless_update)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pagewire_proto::v1 as pb;
use pagewire_server_core::store::DbKey;
use pagewire_server_core::{Credentials, MemoryStore, PageStore, Role, ServerConfig, TokenMap};
use pb::watch_event::Event;
use pb::watch_request::Part;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tonic::{Code, Streaming};

const BAD_NAMES: [&str; 5] = [
    "forged\n2026-01-01T00:00:00Z  INFO created database tenant=acme",
    "cr\rreturn",
    "esc\u{1b}[31mred",
    "del\u{7f}",
    "c1\u{85}next-line",
];

fn open(name: &str, create: bool) -> pb::OpenRequest {
    pb::OpenRequest {
        name: name.into(),
        create,
        read_only: false,
        ..Default::default()
    }
}

fn code<T>(r: Result<T, tonic::Status>) -> Option<Code> {
    r.err().map(|s| s.code())
}

async fn names(admin: &mut Admin) -> anyhow::Result<Vec<String>> {
    let list = admin
        .list_databases(pb::ListDatabasesRequest::default())
        .await?
        .into_inner();
    Ok(list.databases.into_iter().map(|d| d.name).collect())
}

#[tokio::test]
async fn new_names_with_control_characters_are_refused() -> anyhow::Result<()> {
    let server = TestServer::start(ServerConfig::default()).await?;
    let (mut pages, mut admin) = (server.pages(None)?, server.admin(None)?);
    for name in BAD_NAMES {
        let created = admin
            .create_database(pb::CreateDatabaseRequest {
                name: name.into(),
                ..Default::default()
            })
            .await;
        let status = created.expect_err("CreateDatabase refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}: {status:?}");
        assert!(status.message().contains("control character"), "{status:?}");
        let opened = pages.open(open(name, true)).await;
        assert_eq!(
            code(opened),
            Some(Code::InvalidArgument),
            "Open with create {name:?}"
        );
        // Without create it simply does not exist.
        assert_eq!(
            code(pages.open(open(name, false)).await),
            Some(Code::NotFound),
            "{name:?}"
        );
    }
    assert!(names(&mut admin).await?.is_empty(), "nothing was created");
    // A good name is still created by Open, once.
    let first = pages.open(open("plain/name.db", true)).await?.into_inner();
    let again = pages.open(open("plain/name.db", true)).await?.into_inner();
    assert!(first.created && !again.created);
    server.stop().await
}

#[tokio::test]
async fn existing_names_with_control_characters_stay_usable() -> anyhow::Result<()> {
    // Databases created before the rule existed: straight through the store.
    let store = Arc::new(MemoryStore::new());
    for name in BAD_NAMES {
        store.create(&DbKey::new("default", name)).await?;
    }
    let server = TestServer::start_with(ServerConfig::default(), store).await?;
    let (mut pages, mut admin) = (server.pages(None)?, server.admin(None)?);
    let mut listed = names(&mut admin).await?;
    listed.sort();
    let mut want: Vec<String> = BAD_NAMES.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(listed, want, "listable");
    for name in BAD_NAMES {
        let opened = pages.open(open(name, true)).await?.into_inner();
        assert!(
            !opened.created,
            "Open with create opens the existing {name:?}"
        );
        pages.open(open(name, false)).await?;
        let lease = pages
            .acquire_lease(pb::AcquireLeaseRequest {
                name: name.into(),
                client_id: "w".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        commit(&mut pages, Parts::new(name, &lease, 0, 2, 7).stream()).await?;
        let read = pb::ReadPagesRequest {
            name: name.into(),
            version: 1,
            page_nos: vec![1, 2],
            ..Default::default()
        };
        assert_eq!(
            pages.read_pages(read).await?.into_inner().pages.len(),
            2,
            "readable: {name:?}"
        );
        let info = admin
            .get_database_info(pb::GetDatabaseInfoRequest {
                name: name.into(),
                ..Default::default()
            })
            .await?;
        assert_eq!(info.into_inner().name, name);
        // CreateDatabase of it is refused either way (it exists; and the name is bad).
        let again = admin
            .create_database(pb::CreateDatabaseRequest {
                name: name.into(),
                ..Default::default()
            })
            .await;
        assert!(again.is_err());
        admin
            .delete_database(pb::DeleteDatabaseRequest {
                name: name.into(),
                ..Default::default()
            })
            .await?;
    }
    assert!(names(&mut admin).await?.is_empty(), "deletable");
    server.stop().await
}

/// A raw Watch stream.
struct Watcher {
    tx: mpsc::Sender<pb::WatchRequest>,
    events: Streaming<pb::WatchEvent>,
}

impl Watcher {
    async fn start(client: &mut Pages, name: &str) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        let start = Part::Start(pb::WatchStart {
            name: name.into(),
            ..Default::default()
        });
        tx.send(pb::WatchRequest { part: Some(start) }).await?;
        let events = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut w = Self { tx, events };
        anyhow::ensure!(
            matches!(w.next().await?, Event::Started(_)),
            "no WatchStarted"
        );
        Ok(w)
    }

    async fn next(&mut self) -> anyhow::Result<Event> {
        let event = timeout(Duration::from_secs(5), self.events.message()).await??;
        event
            .and_then(|e| e.event)
            .ok_or_else(|| anyhow::anyhow!("stream ended"))
    }

    async fn take_lease(&mut self) -> anyhow::Result<()> {
        self.tx
            .send(pb::WatchRequest {
                part: Some(Part::Lease(pb::ReadLeaseAsk { seq: 1 })),
            })
            .await?;
        match self.next().await? {
            Event::Granted(g) if g.ttl_ms > 0 => Ok(()),
            other => anyhow::bail!("want a read lease, got {other:?}"),
        }
    }
}

/// Creates `name` for the client's tenant and commits `commits` versions.
async fn committed(pages: &mut Pages, name: &str, commits: u64) -> anyhow::Result<()> {
    pages.open(open(name, true)).await?;
    let ask = pb::AcquireLeaseRequest {
        name: name.into(),
        client_id: "w".into(),
        ..Default::default()
    };
    let lease = pages.acquire_lease(ask).await?.into_inner();
    for base in 0..commits {
        commit(
            pages,
            Parts::new(name, &lease, base, 2, base as u8).stream(),
        )
        .await?;
    }
    Ok(())
}

async fn metrics(server: &TestServer, token: &str) -> anyhow::Result<(u64, u64, u64, u64)> {
    let m = server
        .admin(Some(token))?
        .get_metrics(pb::GetMetricsRequest::default())
        .await?
        .into_inner();
    let waits = m.invalidation_wait.map_or(0, |h| h.count);
    Ok((m.read_leases_held, m.watchers, m.commits, waits))
}

#[tokio::test]
async fn get_metrics_shows_a_tenant_only_its_own_numbers() -> anyhow::Result<()> {
    let mut tokens = TokenMap::default();
    for (token, tenant) in [
        ("tok-acme", "acme"),
        ("tok-beta", "beta"),
        ("tok-idle", "idle"),
    ] {
        tokens
            .insert(token, tenant, Role::Admin)
            .map_err(anyhow::Error::msg)?;
    }
    let config = ServerConfig {
        credentials: Credentials::fixed(Some(tokens)),
        read_lease_ttl: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let server = TestServer::start(config).await?;
    // acme: 3 commits, then a watcher holding a read lease.
    let mut acme = server.pages(Some("tok-acme"))?;
    committed(&mut acme, "same.db", 3).await?;
    let mut watcher = Watcher::start(&mut acme, "same.db").await?;
    watcher.take_lease().await?;
    // beta: a database of the same name, 1 commit, two watchers without a lease.
    let mut beta = server.pages(Some("tok-beta"))?;
    committed(&mut beta, "same.db", 1).await?;
    let _b1 = Watcher::start(&mut beta, "same.db").await?;
    let _b2 = Watcher::start(&mut beta, "same.db").await?;

    assert_eq!(
        metrics(&server, "tok-acme").await?,
        (1, 1, 3, 3),
        "acme: leases, watchers, commits, waits"
    );
    assert_eq!(
        metrics(&server, "tok-beta").await?,
        (0, 2, 1, 1),
        "beta sees only beta"
    );
    assert_eq!(
        metrics(&server, "tok-idle").await?,
        (0, 0, 0, 0),
        "a tenant with no activity sees zeros"
    );
    // A watcher that leaves is counted off its own tenant only.
    drop(_b2);
    let mut beta_watchers = 2;
    for _ in 0..100 {
        beta_watchers = metrics(&server, "tok-beta").await?.1;
        if beta_watchers == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(beta_watchers, 1);
    assert_eq!(metrics(&server, "tok-acme").await?.1, 1);
    drop(watcher);
    server.stop().await
}
