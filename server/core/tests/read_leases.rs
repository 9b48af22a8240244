//! Watch streams, read leases and commit invalidation rounds over real gRPC, driven
//! message by message: what a reader is told, when a commit may finish, and what
//! BeginRead may see meanwhile.

mod common;

use std::time::Duration;

use common::*;
use pagewire_proto::v1 as pb;
use pagewire_server_core::ServerConfig;
use pagewire_server_core::store::conformance::page_one;
use pb::watch_event::Event;
use pb::watch_request::Part;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tonic::{Code, Streaming};

const DB: &str = "leases.db";
const TTL: Duration = Duration::from_millis(400);

fn config(read_lease_ttl: Duration) -> ServerConfig {
    ServerConfig {
        read_lease_ttl,
        ..ServerConfig::default()
    }
}

/// A raw Watch stream.
struct Watcher {
    tx: Option<mpsc::Sender<pb::WatchRequest>>,
    events: Streaming<pb::WatchEvent>,
}

impl Watcher {
    async fn start(client: &mut Pages, name: &str) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let start = Part::Start(pb::WatchStart {
            name: name.into(),
            ranges: false,
            ..Default::default()
        });
        tx.send(pb::WatchRequest { part: Some(start) })
            .await
            .expect("queue");
        let events = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Self {
            tx: Some(tx),
            events,
        })
    }

    async fn send(&self, part: Part) {
        let tx = self.tx.as_ref().expect("stream open");
        tx.send(pb::WatchRequest { part: Some(part) })
            .await
            .expect("send");
    }

    async fn next(&mut self) -> anyhow::Result<Event> {
        let event = timeout(Duration::from_secs(5), self.events.message()).await??;
        event
            .and_then(|e| e.event)
            .ok_or_else(|| anyhow::anyhow!("stream ended"))
    }

    /// Starts and takes a read lease; returns the state it started at.
    async fn leased(client: &mut Pages, name: &str) -> anyhow::Result<(Self, pb::DbState)> {
        Self::leased_for(client, name, TTL).await
    }

    /// [`Watcher::leased`] on a server whose read lease TTL is `ttl`.
    async fn leased_for(
        client: &mut Pages,
        name: &str,
        ttl: Duration,
    ) -> anyhow::Result<(Self, pb::DbState)> {
        let mut w = Self::start(client, name).await?;
        let Event::Started(started) = w.next().await? else {
            anyhow::bail!("no WatchStarted")
        };
        w.send(Part::Lease(pb::ReadLeaseAsk { seq: 7 })).await;
        let granted = w.next().await?;
        anyhow::ensure!(
            matches!(granted, Event::Granted(pb::ReadLeaseGrant { seq: 7, ttl_ms }) if ttl_ms == ttl.as_millis() as u64),
            "{granted:?}"
        );
        Ok((w, started.state.unwrap_or_default()))
    }

    /// Expects an Invalidate; returns its round.
    async fn invalidated(&mut self) -> anyhow::Result<u64> {
        match self.next().await? {
            Event::Invalidate(i) => Ok(i.round),
            other => anyhow::bail!("want Invalidate, got {other:?}"),
        }
    }

    async fn ack(&self, round: u64) {
        self.send(Part::Ack(pb::InvalidationAck { round })).await;
    }

    async fn round_end(&mut self) -> anyhow::Result<pb::RoundEnd> {
        match self.next().await? {
            Event::RoundEnd(end) => Ok(end),
            other => anyhow::bail!("want RoundEnd, got {other:?}"),
        }
    }
}

/// A database with one committed version and the writer's lease.
async fn database(server: &TestServer) -> anyhow::Result<(Pages, pb::LeaseResponse)> {
    let mut c = server.pages(None)?;
    c.open(pb::OpenRequest {
        name: DB.into(),
        create: true,
        read_only: false,
        ..Default::default()
    })
    .await?;
    let lease = c
        .acquire_lease(pb::AcquireLeaseRequest {
            name: DB.into(),
            client_id: "writer".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    commit(&mut c, Parts::new(DB, &lease, 0, 2, 1).stream()).await?;
    Ok((c, lease))
}

/// Commits version `base + 1` (3 pages) in the background.
fn commit_next(
    c: &Pages,
    lease: &pb::LeaseResponse,
    base: u64,
) -> tokio::task::JoinHandle<Result<pb::CommitResponse, tonic::Status>> {
    let (mut c, stream) = (
        c.clone(),
        Parts::new(DB, lease, base, 3, base as u8 + 1).stream(),
    );
    tokio::spawn(async move { commit(&mut c, stream).await })
}

async fn newest(c: &mut Pages) -> anyhow::Result<u64> {
    let read = pb::BeginReadRequest {
        name: DB.into(),
        ..Default::default()
    };
    Ok(c.begin_read(read)
        .await?
        .into_inner()
        .state
        .unwrap_or_default()
        .version)
}

#[tokio::test]
async fn a_commit_is_published_only_after_every_holder_acknowledged() -> anyhow::Result<()> {
    let server = TestServer::start(config(TTL)).await?;
    let (writer, lease) = database(&server).await?;
    let mut reader = server.pages(None)?;
    let (mut w, state) = Watcher::leased(&mut reader, DB).await?;
    assert_eq!(state.version, 1);
    let pending = commit_next(&writer, &lease, 1);
    let round = w.invalidated().await?;
    // Not acknowledged yet: no one may see version 2, however long we wait.
    tokio::time::sleep(TTL / 4).await;
    assert!(
        !pending.is_finished(),
        "the commit must wait for the acknowledgement"
    );
    assert_eq!(
        newest(&mut reader).await?,
        1,
        "BeginRead must not see an unpublished version"
    );
    let acked = Instant::now();
    w.ack(round).await;
    let end = w.round_end().await?;
    let reply = timeout(Duration::from_secs(5), pending).await???;
    assert!(
        acked.elapsed() < TTL / 2,
        "the acknowledgement releases the commit: {:?}",
        acked.elapsed()
    );
    assert_eq!(reply.version, 2);
    assert_eq!(end.round, round);
    assert_eq!(end.state.map(|s| (s.version, s.page_count)), Some((2, 3)));
    assert_eq!(end.changed_pages, [1, 2, 3], "written pages and the growth");
    assert!(!end.cache_invalid);
    assert_eq!(newest(&mut reader).await?, 2);
    server.stop().await
}

#[tokio::test]
async fn a_silent_holder_stalls_commits_at_most_one_lease_length() -> anyhow::Result<()> {
    let server = TestServer::start(config(TTL)).await?;
    let (writer, lease) = database(&server).await?;
    let mut reader = server.pages(None)?;
    let (mut w, _) = Watcher::leased(&mut reader, DB).await?;
    let started = Instant::now();
    let pending = commit_next(&writer, &lease, 1);
    w.invalidated().await?; // and never acknowledged
    let reply = timeout(Duration::from_secs(5), pending).await???;
    let stalled = started.elapsed();
    assert_eq!(reply.version, 2);
    assert!(
        stalled >= TTL / 2 && stalled < TTL + Duration::from_millis(300),
        "stalled {stalled:?}"
    );
    // Its lease ran out: the next commit does not wait for it.
    let started = Instant::now();
    timeout(Duration::from_secs(5), commit_next(&writer, &lease, 2)).await???;
    assert!(started.elapsed() < TTL / 2, "{:?}", started.elapsed());
    server.stop().await
}

#[tokio::test]
async fn a_broken_stream_is_honoured_until_its_lease_ends_a_closed_one_is_not() -> anyhow::Result<()>
{
    let server = TestServer::start(config(TTL)).await?;
    let (writer, lease) = database(&server).await?;
    let mut reader = server.pages(None)?;
    // Dropped abruptly: its client might still serve reads until the lease ends.
    let (w, _) = Watcher::leased(&mut reader, DB).await?;
    drop(w);
    let started = Instant::now();
    timeout(Duration::from_secs(5), commit_next(&writer, &lease, 1)).await???;
    assert!(
        started.elapsed() >= TTL / 2,
        "a broken stream's lease is still waited for: {:?}",
        started.elapsed()
    );
    // Released, then closed: nothing to wait for.
    let (mut w, _) = Watcher::leased(&mut reader, DB).await?;
    w.send(Part::Release(pb::ReadLeaseRelease {})).await;
    w.tx = None;
    while timeout(Duration::from_secs(5), w.events.message())
        .await??
        .is_some()
    {}
    let started = Instant::now();
    timeout(Duration::from_secs(5), commit_next(&writer, &lease, 2)).await???;
    assert!(started.elapsed() < TTL / 2, "{:?}", started.elapsed());
    server.stop().await
}

#[tokio::test]
async fn a_watcher_joining_during_a_round_serves_nothing_until_it_ends() -> anyhow::Result<()> {
    let server = TestServer::start(config(TTL)).await?;
    let (writer, lease) = database(&server).await?;
    let mut reader = server.pages(None)?;
    let (mut holder, _) = Watcher::leased(&mut reader, DB).await?;
    // Watching before the round, without a lease: hears no Invalidate.
    let mut early = Watcher::start(&mut reader, DB).await?;
    assert!(matches!(early.next().await?, Event::Started(_)));
    let pending = commit_next(&writer, &lease, 1);
    let round = holder.invalidated().await?;
    let mut late = Watcher::start(&mut reader, DB).await?;
    let Event::Started(started) = late.next().await? else {
        anyhow::bail!("no WatchStarted")
    };
    assert!(started.in_round, "{started:?}");
    assert_eq!(started.state.map(|s| s.version), Some(1));
    // A joiner knows from WatchStarted: its lease is granted plainly and not waited for.
    late.send(Part::Lease(pb::ReadLeaseAsk { seq: 1 })).await;
    assert!(matches!(late.next().await?, Event::Granted(_)));
    // An earlier watcher that held no lease when the round began gets one asked for
    // during the round at its end, so the round never waits for it.
    early.send(Part::Lease(pb::ReadLeaseAsk { seq: 2 })).await;
    tokio::time::sleep(TTL / 4).await;
    assert!(
        !pending.is_finished(),
        "the holder has not acknowledged yet"
    );
    let acked = Instant::now();
    holder.ack(round).await;
    timeout(Duration::from_secs(5), pending).await???;
    assert!(
        acked.elapsed() < TTL / 2,
        "only the holder was waited for: {:?}",
        acked.elapsed()
    );
    assert_eq!(late.round_end().await?.state.map(|s| s.version), Some(2));
    assert_eq!(early.round_end().await?.state.map(|s| s.version), Some(2));
    let granted = early.next().await?;
    assert!(
        matches!(granted, Event::Granted(ref g) if g.seq == 2),
        "{granted:?}"
    );
    server.stop().await
}

#[tokio::test]
async fn a_holder_that_renews_but_never_acknowledges_stalls_commits_one_lease_length_and_loses_its_lease()
-> anyhow::Result<()> {
    let server = TestServer::start(config(TTL)).await?;
    let (writer, lease) = database(&server).await?;
    let mut reader = server.pages(None)?;
    let (mut w, _) = Watcher::leased(&mut reader, DB).await?;
    let started = Instant::now();
    let pending = commit_next(&writer, &lease, 1);
    w.invalidated().await?; // never acknowledged, but renewed all along
    let renewing = async {
        for seq in 100.. {
            w.send(Part::Lease(pb::ReadLeaseAsk { seq })).await;
            tokio::time::sleep(TTL / 10).await;
        }
    };
    tokio::select! {
        reply = timeout(Duration::from_secs(5), pending) => assert_eq!(reply???.version, 2),
        () = renewing => unreachable!(),
    }
    let stalled = started.elapsed();
    assert!(
        stalled < TTL + Duration::from_millis(300),
        "a commit waits at most one lease length: {stalled:?}"
    );
    // It owes an acknowledgement: no grant, and the next commit does not wait for it.
    assert_eq!(w.round_end().await?.state.map(|s| s.version), Some(2));
    let next = timeout(TTL / 2, w.events.message()).await;
    assert!(
        next.is_err(),
        "no grant while an acknowledgement is owed: {next:?}"
    );
    let started = Instant::now();
    timeout(Duration::from_secs(5), commit_next(&writer, &lease, 2)).await???;
    assert!(started.elapsed() < TTL / 2, "{:?}", started.elapsed());
    server.stop().await
}

#[tokio::test]
async fn a_release_mid_round_lets_the_commit_go_at_once() -> anyhow::Result<()> {
    let server = TestServer::start(config(Duration::from_secs(5))).await?;
    let (writer, lease) = database(&server).await?;
    let mut reader = server.pages(None)?;
    let (mut w, _) = Watcher::leased_for(&mut reader, DB, Duration::from_secs(5)).await?;
    let pending = commit_next(&writer, &lease, 1);
    w.invalidated().await?;
    let released = Instant::now();
    w.send(Part::Release(pb::ReadLeaseRelease {})).await;
    timeout(Duration::from_secs(5), pending).await???;
    assert!(
        released.elapsed() < Duration::from_secs(1),
        "{:?}",
        released.elapsed()
    );
    server.stop().await
}

#[tokio::test]
async fn watchers_without_a_lease_hear_only_round_ends() -> anyhow::Result<()> {
    let server = TestServer::start(config(TTL)).await?;
    let (writer, lease) = database(&server).await?;
    let mut reader = server.pages(None)?;
    let mut w = Watcher::start(&mut reader, DB).await?;
    assert!(matches!(w.next().await?, Event::Started(_)));
    let started = Instant::now();
    timeout(Duration::from_secs(5), commit_next(&writer, &lease, 1)).await???;
    assert!(started.elapsed() < TTL / 2, "{:?}", started.elapsed());
    assert_eq!(w.round_end().await?.state.map(|s| s.version), Some(2));
    server.stop().await
}

#[tokio::test]
async fn a_fresh_server_waits_one_lease_length_before_its_first_commit() -> anyhow::Result<()> {
    for ttl in [Duration::ZERO, TTL] {
        let begun = Instant::now();
        let server = TestServer::start(config(ttl)).await?;
        database(&server).await?;
        let took = begun.elapsed();
        assert!(
            took >= ttl && took < ttl + Duration::from_secs(1),
            "ttl {ttl:?}: first commit after {took:?}"
        );
        server.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn failed_commits_end_the_round_unchanged() -> anyhow::Result<()> {
    let server = TestServer::start(config(TTL)).await?;
    let (mut writer, lease) = database(&server).await?;
    let mut reader = server.pages(None)?;
    let (mut w, _) = Watcher::leased(&mut reader, DB).await?;
    // A stale base version is refused when the header arrives: no round at all.
    let stale = commit_next(&writer, &lease, 0);
    let err = timeout(Duration::from_secs(5), stale)
        .await??
        .expect_err("stale base");
    assert_eq!(err.code(), Code::FailedPrecondition);
    // One that fails only when applied (it grows the file past its last page) runs a
    // round and ends it unchanged.
    let mut grows = Parts::new(DB, &lease, 1, 2, 2);
    grows.header.page_count = 100;
    grows.pages.retain(|p| p.page_no == 1);
    grows.pages[0].data = page_one(PS, 0, 2);
    let failing = tokio::spawn(async move { commit(&mut writer, grows.stream()).await });
    let round = w.invalidated().await?;
    w.ack(round).await;
    let err = timeout(Duration::from_secs(5), failing)
        .await??
        .expect_err("grows past its pages");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("highest page"), "{err:?}");
    let end = w.round_end().await?;
    assert_eq!(
        (
            end.state.map(|s| s.version),
            end.changed_pages.len(),
            end.cache_invalid
        ),
        (Some(1), 0, false)
    );
    server.stop().await
}

#[tokio::test]
async fn bad_watch_requests_get_clear_errors() -> anyhow::Result<()> {
    let server = TestServer::start(config(TTL)).await?;
    let (_writer, _) = database(&server).await?;
    let mut c = server.pages(None)?;
    let missing = Watcher::start(&mut c, "missing.db")
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(missing, Some(Code::NotFound));
    let bad_name = Watcher::start(&mut c, "").await.err().map(|s| s.code());
    assert_eq!(bad_name, Some(Code::InvalidArgument));
    // A stream that does not start with WatchStart.
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::WatchRequest {
        part: Some(Part::Ack(pb::InvalidationAck { round: 1 })),
    })
    .await?;
    let got = c
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(got, Some(Code::InvalidArgument));
    let mut w = Watcher::start(&mut c, DB).await?;
    assert!(matches!(w.next().await?, Event::Started(_)));
    // Deleting the database ends its watchers' streams with NOT_FOUND.
    server
        .admin(None)?
        .delete_database(pb::DeleteDatabaseRequest { name: DB.into() })
        .await?;
    let ended = timeout(Duration::from_secs(5), w.events.message())
        .await?
        .err()
        .map(|s| s.code());
    assert_eq!(ended, Some(Code::NotFound));
    server.stop().await
}

#[tokio::test]
async fn metrics_count_leases_commits_and_waits() -> anyhow::Result<()> {
    let server = TestServer::start(config(TTL)).await?;
    let (writer, lease) = database(&server).await?;
    let mut reader = server.pages(None)?;
    let (mut w, _) = Watcher::leased(&mut reader, DB).await?;
    let pending = commit_next(&writer, &lease, 1);
    let round = w.invalidated().await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    w.ack(round).await;
    timeout(Duration::from_secs(5), pending).await???;
    let m = server
        .admin(None)?
        .get_metrics(pb::GetMetricsRequest {})
        .await?
        .into_inner();
    assert_eq!((m.read_leases_held, m.watchers, m.commits), (1, 1, 2));
    let h = m.invalidation_wait.unwrap_or_default();
    assert_eq!(h.count, 2);
    assert!(h.sum_us >= 20_000, "one commit waited 20 ms: {h:?}");
    server.stop().await
}

#[tokio::test]
async fn the_version_lease_holders_read_survives_gc_after_a_commit() -> anyhow::Result<()> {
    let config = ServerConfig {
        history_retention: Duration::ZERO,
        gc_interval: Duration::from_millis(10),
        ..config(TTL)
    };
    let server = TestServer::start(config).await?;
    let (writer, lease) = database(&server).await?;
    let mut reader = server.pages(None)?;
    let (mut w, state) = Watcher::leased(&mut reader, DB).await?;
    // The holder reads version 1 with no BeginRead (so no pin of its own) while
    // version 2 is committed and GC runs.
    let pending = commit_next(&writer, &lease, 1);
    let round = w.invalidated().await?;
    w.ack(round).await;
    timeout(Duration::from_secs(5), pending).await???;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let read = pb::ReadPagesRequest {
        name: DB.into(),
        version: state.version,
        page_nos: vec![1, 2],
        ..Default::default()
    };
    let pages = reader.read_pages(read).await?.into_inner().pages;
    assert_eq!(
        pages.len(),
        2,
        "version {} is still readable",
        state.version
    );
    server.stop().await
}

#[tokio::test]
async fn a_watch_stream_that_never_starts_is_cut_after_the_idle_timeout() -> anyhow::Result<()> {
    let idle = Duration::from_millis(300);
    let limits = pagewire_server_core::Limits {
        stream_idle_timeout: idle,
        ..Default::default()
    };
    let server = TestServer::start(ServerConfig {
        limits,
        ..config(TTL)
    })
    .await?;
    let (_writer, _) = database(&server).await?;
    let mut c = server.pages(None)?;
    let (_tx, rx) = mpsc::channel::<pb::WatchRequest>(1);
    let began = Instant::now();
    let got = timeout(
        Duration::from_secs(5),
        c.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await?;
    let Err(status) = got else {
        panic!("a Watch that never starts must be refused")
    };
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("--stream-idle-timeout"),
        "{status:?}"
    );
    assert!(
        began.elapsed() >= idle && began.elapsed() < idle * 5,
        "{:?}",
        began.elapsed()
    );
    server.stop().await
}
