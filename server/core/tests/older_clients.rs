//! An older VFS against this server (issue 12, item 8): a client from before protocol
//! revisions, incarnations and version tags sends none of them (every such field at its
//! default: `protocol` 0, empty `incarnation`, `tag`, `base_tag`, `seen_tag`, `ranges`
//! false). It can still Open, take, renew and release the write lease, Commit, BeginRead,
//! ReadPages and Watch, and gets the answers a current client gets (growth listed instead
//! of sent as a range, as before ranges). What it does not send is not checked: it is not
//! told that a database was replaced (a current client is).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use pagewire_proto::v1 as pb;
use pagewire_proto::{MIN_CLIENT_PROTOCOL, PROTOCOL_REVISION, capability};
use pagewire_server_core::{Limits, ServerConfig};
use pb::watch_event::Event;
use pb::watch_request::Part;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tonic::Code;

const DB: &str = "older/clients.db";

fn config() -> ServerConfig {
    ServerConfig {
        read_lease_ttl: Duration::from_millis(500),
        ..ServerConfig::default()
    }
}

/// An Open as an older client sends it: no protocol revision.
fn open(create: bool) -> pb::OpenRequest {
    pb::OpenRequest {
        name: DB.into(),
        create,
        read_only: false,
        ..Default::default()
    }
}

fn acquire() -> pb::AcquireLeaseRequest {
    pb::AcquireLeaseRequest {
        name: DB.into(),
        client_id: "older:1".into(),
        ..Default::default()
    }
}

/// A BeginRead as an older client sends it: no ranges, no incarnation, no seen version.
fn begin_read(cached_version: u64) -> pb::BeginReadRequest {
    pb::BeginReadRequest {
        name: DB.into(),
        cached_version,
        ..Default::default()
    }
}

fn read_pages(version: u64, page_nos: Vec<u32>) -> pb::ReadPagesRequest {
    pb::ReadPagesRequest {
        name: DB.into(),
        version,
        page_nos,
        ..Default::default()
    }
}

/// The same calls as a current client sends them: with its revision, the incarnation it
/// opened, the tags it knows, ranges.
struct Current {
    incarnation: Bytes,
}

impl Current {
    fn begin_read(&self, cached_version: u64, seen: &pb::DbState) -> pb::BeginReadRequest {
        pb::BeginReadRequest {
            ranges: true,
            incarnation: self.incarnation.clone(),
            seen_version: seen.version,
            seen_tag: seen.tag.clone(),
            ..begin_read(cached_version)
        }
    }

    fn read_pages(&self, at: &pb::DbState, page_nos: Vec<u32>) -> pb::ReadPagesRequest {
        pb::ReadPagesRequest {
            incarnation: self.incarnation.clone(),
            tag: at.tag.clone(),
            ..read_pages(at.version, page_nos)
        }
    }
}

/// A Watch stream as an older client opens it (no ranges, no incarnation).
struct Watcher {
    tx: mpsc::Sender<pb::WatchRequest>,
    events: tonic::Streaming<pb::WatchEvent>,
}

impl Watcher {
    async fn start(client: &mut Pages) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(16);
        let start = pb::WatchStart {
            name: DB.into(),
            ..Default::default()
        };
        tx.send(pb::WatchRequest {
            part: Some(Part::Start(start)),
        })
        .await?;
        let events = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self { tx, events })
    }

    async fn send(&self, part: Part) -> anyhow::Result<()> {
        Ok(self.tx.send(pb::WatchRequest { part: Some(part) }).await?)
    }

    async fn next(&mut self) -> anyhow::Result<Event> {
        let event = timeout(Duration::from_secs(5), self.events.message()).await??;
        event
            .and_then(|e| e.event)
            .ok_or_else(|| anyhow::anyhow!("stream ended"))
    }
}

fn state(s: Option<pb::DbState>) -> anyhow::Result<pb::DbState> {
    s.ok_or_else(|| anyhow::anyhow!("a reply without a state"))
}

#[tokio::test]
async fn an_older_client_uses_every_call_with_no_revision_incarnation_or_tag() -> anyhow::Result<()>
{
    let server = TestServer::start(config()).await?;
    let mut old = server.pages(None)?;

    // Open: served (its revision 0 is not below the oldest served), told what the server
    // speaks, which it ignores.
    let opened = old.open(open(true)).await?.into_inner();
    assert!(opened.created);
    assert_eq!(
        (opened.protocol, opened.min_client_protocol),
        (PROTOCOL_REVISION, MIN_CLIENT_PROTOCOL)
    );
    assert_eq!(
        MIN_CLIENT_PROTOCOL, 0,
        "clients that send no revision are served"
    );
    for c in [capability::INCARNATIONS, capability::RANGES] {
        assert!(
            opened.capabilities.iter().any(|have| have == c),
            "{c}: {:?}",
            opened.capabilities
        );
    }
    let empty = state(opened.state)?;
    assert_eq!(
        (empty.version, empty.page_size, empty.page_count),
        (0, 0, 0)
    );
    let current = Current {
        incarnation: empty.incarnation.clone(),
    };

    // The write lease and two commits, with no incarnation and no base tag.
    let lease = old.acquire_lease(acquire()).await?.into_inner();
    assert_eq!(lease.lease_id.len(), 16);
    assert_eq!(state(lease.state.clone())?.version, 0);
    let first = commit(&mut old, Parts::new(DB, &lease, 0, 3, 1).stream()).await?;
    assert_eq!(
        (first.version, first.already_applied, first.tag.len()),
        (1, false, 16)
    );
    // Version 2 grows the file from 3 pages to 6.
    let second = commit(&mut old, Parts::new(DB, &lease, 1, 6, 2).stream()).await?;
    assert_eq!((second.version, second.already_applied), (2, false));
    let renew = pb::RenewLeaseRequest {
        name: DB.into(),
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
        ..Default::default()
    };
    let renewed = old.renew_lease(renew).await?.into_inner();
    assert_eq!(
        (renewed.epoch, state(renewed.state)?.version),
        (lease.epoch, 2)
    );

    // BeginRead from its cache at version 1: the growth is listed (it did not ask for
    // ranges), where a current client gets a range.
    let read = old.begin_read(begin_read(1)).await?.into_inner();
    let v2 = state(read.state.clone())?;
    assert_eq!((v2.version, v2.page_size, v2.page_count), (2, PS, 6));
    assert_eq!(
        v2.tag, second.tag,
        "the same state a current client sees, tag included"
    );
    assert_eq!(
        (
            read.changed_pages.as_slice(),
            read.changed_from,
            read.cache_invalid
        ),
        (&[1, 2, 3, 4, 5, 6][..], 0, false)
    );
    let seen = pb::DbState {
        version: 1,
        tag: first.tag.clone(),
        ..v2.clone()
    };
    let now = old
        .begin_read(current.begin_read(1, &seen))
        .await?
        .into_inner();
    assert_eq!(now.state, read.state);
    assert_eq!(
        (
            now.changed_pages.as_slice(),
            now.changed_from,
            now.cache_invalid
        ),
        (&[1, 2, 3][..], 4, false)
    );
    // A cache it never had, or none: drop it all, as before.
    assert!(
        old.begin_read(begin_read(0))
            .await?
            .into_inner()
            .cache_invalid
    );

    // ReadPages with no incarnation and no tag: the pages a current client gets, at the
    // newest version and an older one.
    for (at, count) in [
        (&v2, 6),
        (
            &pb::DbState {
                version: 1,
                tag: first.tag.clone(),
                ..v2.clone()
            },
            3,
        ),
    ] {
        let nos: Vec<u32> = (1..=count).collect();
        let pages = old
            .read_pages(read_pages(at.version, nos.clone()))
            .await?
            .into_inner();
        let want = old
            .read_pages(current.read_pages(at, nos))
            .await?
            .into_inner();
        assert_eq!((pages.page_size, pages.pages.len()), (PS, count as usize));
        assert_eq!(pages.pages, want.pages, "version {}", at.version);
    }

    // Watch: started, a read lease, and a commit's round (its Invalidate acknowledged),
    // the growth listed.
    let mut w = Watcher::start(&mut old).await?;
    let Event::Started(started) = w.next().await? else {
        anyhow::bail!("no WatchStarted")
    };
    assert_eq!(started.state, read.state);
    w.send(Part::Lease(pb::ReadLeaseAsk { seq: 1 })).await?;
    assert!(matches!(
        w.next().await?,
        Event::Granted(pb::ReadLeaseGrant { seq: 1, .. })
    ));
    let (mut writer, stream) = (old.clone(), Parts::new(DB, &lease, 2, 8, 3).stream());
    let pending = tokio::spawn(async move { commit(&mut writer, stream).await });
    let Event::Invalidate(invalidate) = w.next().await? else {
        anyhow::bail!("no Invalidate")
    };
    w.send(Part::Ack(pb::InvalidationAck {
        round: invalidate.round,
    }))
    .await?;
    let Event::RoundEnd(end) = w.next().await? else {
        anyhow::bail!("no RoundEnd")
    };
    let third = timeout(Duration::from_secs(5), pending).await???;
    assert_eq!(third.version, 3);
    assert_eq!(end.round, invalidate.round);
    assert_eq!(
        end.state.map(|s| (s.version, s.page_count, s.tag)),
        Some((3, 8, third.tag))
    );
    assert_eq!(
        (end.changed_pages, end.changed_from, end.cache_invalid),
        ((1..=8).collect::<Vec<u32>>(), 0, false)
    );
    w.send(Part::Release(pb::ReadLeaseRelease {})).await?;

    let release = pb::ReleaseLeaseRequest {
        name: DB.into(),
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
    };
    old.release_lease(release).await?;
    // Reopened: the newest state.
    let reopened = state(old.open(open(false)).await?.into_inner().state)?;
    assert_eq!((reopened.version, reopened.page_count), (3, 8));
    server.stop().await
}

#[tokio::test]
async fn past_the_change_list_limit_an_older_client_drops_its_cache() -> anyhow::Result<()> {
    // A growth of 30 pages enumerated is over a change-list limit of 8; as a range it is not.
    let limits = Limits {
        max_change_list: 8,
        ..Limits::default()
    };
    let server = TestServer::start(ServerConfig { limits, ..config() }).await?;
    let mut old = server.pages(None)?;
    let incarnation = state(old.open(open(true)).await?.into_inner().state)?.incarnation;
    let lease = old.acquire_lease(acquire()).await?.into_inner();
    let first = commit(&mut old, Parts::new(DB, &lease, 0, 2, 1).stream()).await?;
    let mut grow = Parts::new(DB, &lease, 1, 32, 2);
    grow.pages.retain(|p| p.page_no == 1 || p.page_no > 2);
    commit(&mut old, grow.stream()).await?;
    let read = old.begin_read(begin_read(1)).await?.into_inner();
    assert!(
        read.cache_invalid && read.changed_pages.is_empty() && read.changed_from == 0,
        "{read:?}"
    );
    let current = Current { incarnation };
    let v1 = pb::DbState {
        version: 1,
        tag: first.tag,
        ..Default::default()
    };
    let now = old
        .begin_read(current.begin_read(1, &v1))
        .await?
        .into_inner();
    assert_eq!(
        (
            now.changed_pages.as_slice(),
            now.changed_from,
            now.cache_invalid
        ),
        (&[1][..], 3, false)
    );
    server.stop().await
}

#[tokio::test]
async fn an_older_client_is_not_told_the_database_was_replaced() -> anyhow::Result<()> {
    let server = TestServer::start(config()).await?;
    let mut old = server.pages(None)?;
    let before = state(old.open(open(true)).await?.into_inner().state)?;
    let lease = old.acquire_lease(acquire()).await?.into_inner();
    let first = commit(&mut old, Parts::new(DB, &lease, 0, 3, 1).stream()).await?;
    // Deleted (once the lease is given back: a delete waits for a held one) and created
    // again: another database under the name.
    let release = pb::ReleaseLeaseRequest {
        name: DB.into(),
        lease_id: lease.lease_id.clone(),
        epoch: lease.epoch,
    };
    old.release_lease(release).await?;
    let mut admin = server.admin(None)?;
    admin
        .delete_database(pb::DeleteDatabaseRequest { name: DB.into() })
        .await?;
    admin
        .create_database(pb::CreateDatabaseRequest { name: DB.into() })
        .await?;

    // A current client that names what it held is refused, saying why.
    let current = Current {
        incarnation: before.incarnation.clone(),
    };
    let seen = pb::DbState {
        version: 1,
        tag: first.tag.clone(),
        ..Default::default()
    };
    let refused = old
        .begin_read(current.begin_read(1, &seen))
        .await
        .expect_err("replaced");
    assert_eq!(refused.code(), Code::NotFound);
    assert!(
        refused.message().contains("was replaced"),
        "{}",
        refused.message()
    );

    // An older client names nothing, so nothing is checked: it is answered with the new
    // database (version 0 of another incarnation), as before incarnations.
    let read = old.begin_read(begin_read(1)).await?.into_inner();
    let after = state(read.state)?;
    assert_eq!(
        (after.version, after.page_count, read.cache_invalid),
        (0, 0, true)
    );
    assert_ne!(after.incarnation, before.incarnation);
    let lease = old.acquire_lease(acquire()).await?.into_inner();
    let again = commit(&mut old, Parts::new(DB, &lease, 0, 2, 7).stream()).await?;
    assert_eq!(again.version, 1);
    let pages = old
        .read_pages(read_pages(1, vec![1, 2]))
        .await?
        .into_inner();
    assert_eq!(pages.pages.len(), 2);
    server.stop().await
}
