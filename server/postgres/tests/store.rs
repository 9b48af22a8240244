//! What only the PostgreSQL store has: migrations that re-run harmlessly (several servers
//! starting on one database), two stores (servers) sharing one database with fencing
//! between them, clear errors for bad URLs and unreachable servers; and how its SQL keeps
//! the newer rules: growth stored as a range, bounded change lists, the pin age limit
//! (database clock), precheck in one statement.

use std::time::Duration;

use pagewire_server_core::store::conformance::{commit, newest, page};
use pagewire_server_core::store::{
    BeginRead, Changes, CommitHeader, CommitId, CommitOutcome, DbKey, Identity, LeaseId, PageStore,
    PinTtl, ReadAt, StoreError, Version,
};
use pagewire_store_postgres::PostgresStore;
use pagewire_tests::postgres::TempPostgres;

/// The pin of reads that do not test pins.
const PIN: PinTtl = PinTtl {
    ttl: Duration::from_secs(60),
    max_age: Duration::from_secs(3600),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_database() -> anyhow::Result<()> {
    let Some(pg) = TempPostgres::start_or_skip("two_servers_share_one_database") else {
        return Ok(());
    };
    let (a, b) = tokio::try_join!(
        PostgresStore::connect(pg.url()),
        PostgresStore::connect(pg.url())
    )?;
    let again = PostgresStore::connect(pg.url()).await?; // migrations re-run harmlessly
    let k = DbKey::new("t", "shared.db");
    a.open(&k, true).await?;
    let ttl = Duration::from_millis(400);
    let lease = a.acquire_lease(&k, "on-a", ttl).await?;
    let held = b.acquire_lease(&k, "on-b", ttl).await;
    assert!(
        matches!(held, Err(StoreError::LeaseHeld { .. })),
        "{held:?}"
    );
    a.commit(&k, commit(&lease, 0, 4096, 1, &[(1, 1)])).await?;
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let other = b.acquire_lease(&k, "on-b", ttl).await?;
    assert!(other.epoch > lease.epoch);
    let fenced = a.commit(&k, commit(&lease, 1, 4096, 1, &[(1, 2)])).await;
    assert!(
        matches!(fenced, Err(StoreError::LeaseLost(_))),
        "{fenced:?}"
    );
    b.commit(&k, commit(&other, 1, 4096, 1, &[(1, 3)])).await?;
    assert_eq!(again.info(&k).await?.state.version, Version(2));
    Ok(())
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_are_clear_errors() {
    let bad = PostgresStore::connect("postgres://h/db?nonsense=1").await;
    assert!(
        matches!(bad, Err(StoreError::InvalidArgument(_))),
        "{:?}",
        bad.err()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(1);
    let url = format!("postgres://nobody@127.0.0.1:{port}/nothing?connect_timeout=2");
    let down = PostgresStore::connect(&url).await;
    match down {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("PostgreSQL"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
}

/// A commit that grows the file to four billion pages stores its growth as a range: one
/// version row with the carried pages below the old end, nothing enumerated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_is_stored_as_a_range() -> anyhow::Result<()> {
    let Some(pg) = TempPostgres::start_or_skip("growth_is_stored_as_a_range") else {
        return Ok(());
    };
    let store = PostgresStore::connect(pg.url()).await?;
    let k = DbKey::new("t", "huge.db");
    store.open(&k, true).await?;
    let lease = store
        .acquire_lease(&k, "w", Duration::from_secs(60))
        .await?;
    store
        .commit(&k, commit(&lease, 0, 4096, 3, &[(2, 2), (3, 3)]))
        .await?;
    let last = u32::MAX - 1;
    let started = std::time::Instant::now();
    store
        .commit(&k, commit(&lease, 1, 4096, last, &[(2, 4), (last, 9)]))
        .await?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let view = store.begin_read(&k, newest(1)).await?;
    assert_eq!(view.state.page_count, last);
    assert_eq!(
        view.changes,
        Some(Changes {
            pages: vec![1, 2],
            from: Some(4)
        })
    );
    let read = store
        .read_pages(&k, Version(2), &[last, 3, 1 << 30], PIN)
        .await?;
    assert_eq!(read.pages, [page(4096, 9), page(4096, 3), page(4096, 0)]);

    let (client, connection) = tokio_postgres::connect(pg.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT changed_pages, grown_from FROM pagewire.versions WHERE version = 2",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, Vec<i64>>(0), [1, 2]);
    assert_eq!(row.get::<_, Option<i64>>(1), Some(4));
    Ok(())
}

/// Change lists stop at the limit: more versions, or more listed pages, than
/// `max_changes` drop the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_lists_are_bounded() -> anyhow::Result<()> {
    let Some(pg) = TempPostgres::start_or_skip("change_lists_are_bounded") else {
        return Ok(());
    };
    let store = PostgresStore::connect(pg.url()).await?;
    let k = DbKey::new("t", "many.db");
    store.open(&k, true).await?;
    let lease = store
        .acquire_lease(&k, "w", Duration::from_secs(60))
        .await?;
    store
        .commit(&k, commit(&lease, 0, 4096, 8, &[(8, 1)]))
        .await?;
    for base in 1..6 {
        let fills = [(base as u32 + 1, 1), (base as u32 + 2, 1)];
        store
            .commit(&k, commit(&lease, base, 4096, 8, &fills))
            .await?;
    }
    let read = |cached, max_changes| {
        let read = BeginRead {
            max_changes,
            ..newest(cached)
        };
        let store = &store;
        let k = &k;
        async move { store.begin_read(k, read).await.map(|v| v.changes) }
    };
    let all = Changes {
        pages: (1..=7).collect(),
        from: None,
    };
    assert_eq!(read(1, 7).await?, Some(all));
    assert_eq!(read(1, 6).await?, None, "7 pages listed > 6");
    assert_eq!(read(1, 4).await?, None, "5 versions > 4");
    assert_eq!(read(4, 3).await?, None, "4 pages listed > 3");
    assert_eq!(read(4, 4).await?.map(|c| c.pages), Some(vec![1, 5, 6, 7]));
    assert_eq!(
        read(6, 0).await?,
        Some(Changes::default()),
        "nothing to list"
    );
    Ok(())
}

/// A pin is extended by reads and BeginReads, but never past its maximum age (database
/// clock): then GC may collect its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_stop_at_their_max_age() -> anyhow::Result<()> {
    let Some(pg) = TempPostgres::start_or_skip("pins_stop_at_their_max_age") else {
        return Ok(());
    };
    let store = PostgresStore::connect(pg.url()).await?;
    let k = DbKey::new("t", "pinned.db");
    store.open(&k, true).await?;
    let lease = store
        .acquire_lease(&k, "w", Duration::from_secs(60))
        .await?;
    store
        .commit(&k, commit(&lease, 0, 4096, 1, &[(1, 1)]))
        .await?;
    let ms = Duration::from_millis;
    let pin = PinTtl {
        ttl: ms(600),
        max_age: ms(1500),
    };
    let at_1 = BeginRead {
        at: ReadAt::Version(Version(1)),
        pin,
        ..newest(0)
    };
    let started = std::time::Instant::now();
    store.begin_read(&k, at_1).await?;
    store
        .commit(&k, commit(&lease, 1, 4096, 1, &[(1, 2)]))
        .await?;
    let gc = || store.gc(unix_ms_now() + 60_000, Duration::ZERO);
    assert_eq!(
        gc().await?.versions_collected,
        1,
        "version 0 goes, the pinned one stays"
    );
    // Kept while read: every 200 ms a read (and a BeginRead) extends the pin.
    while started.elapsed() < ms(1100) {
        tokio::time::sleep(ms(200)).await;
        store.read_pages(&k, Version(1), &[1], pin).await?;
        store.begin_read(&k, at_1).await?;
        assert_eq!(
            gc().await?.versions_collected,
            0,
            "at {:?}",
            started.elapsed()
        );
    }
    // Past the age limit, however often it is read.
    while started.elapsed() < ms(1700) {
        tokio::time::sleep(ms(200)).await;
        store.read_pages(&k, Version(1), &[1], pin).await?;
        store.begin_read(&k, at_1).await?;
    }
    assert_eq!(gc().await?.versions_collected, 1);
    let gone = store.read_pages(&k, Version(1), &[1], pin).await;
    assert!(matches!(gone, Err(StoreError::OutOfRange(_))), "{gone:?}");
    Ok(())
}

/// Precheck answers like a commit would, from the header alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_answers_like_commit() -> anyhow::Result<()> {
    let Some(pg) = TempPostgres::start_or_skip("precheck_answers_like_commit") else {
        return Ok(());
    };
    let store = PostgresStore::connect(pg.url()).await?;
    let k = DbKey::new("t", "pre.db");
    let missing = store.precheck(&k, commit_header()).await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    store.open(&k, true).await?;
    let no_lease = store.precheck(&k, commit_header()).await;
    assert!(
        matches!(no_lease, Err(StoreError::LeaseLost(_))),
        "{no_lease:?}"
    );
    let ttl = Duration::from_millis(400);
    let lease = store.acquire_lease(&k, "w", ttl).await?;
    let first = commit(&lease, 0, 4096, 1, &[(1, 1)]);
    assert_eq!(store.precheck(&k, first.header()).await?, None);
    store.commit(&k, first.clone()).await?;
    let stale = store
        .precheck(&k, commit(&lease, 0, 4096, 1, &[]).header())
        .await;
    assert!(
        matches!(
            stale,
            Err(StoreError::VersionConflict {
                base: Version(0),
                current: Version(1)
            })
        ),
        "{stale:?}"
    );
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let lapsed = store
        .precheck(&k, commit(&lease, 1, 4096, 1, &[]).header())
        .await;
    assert!(
        matches!(lapsed, Err(StoreError::LeaseLost(_))),
        "{lapsed:?}"
    );
    // The commit id is judged first: a retry after the lease lapsed learns it applied,
    // with the version's identity.
    let applied = store.commit(&k, first.clone()).await?;
    let retry = store.precheck(&k, first.header()).await?;
    let state = store.open(&k, false).await?.0;
    assert_eq!(
        retry,
        Some(CommitOutcome {
            version: Version(1),
            already_applied: true,
            incarnation: state.incarnation,
            tag: Some(state.tag),
        })
    );
    assert_eq!(retry, Some(applied));
    Ok(())
}

fn commit_header() -> CommitHeader {
    CommitHeader {
        lease_id: LeaseId([1; 16]),
        epoch: 1,
        base_version: Version(0),
        commit_id: CommitId([2; 16]),
        identity: Identity::default(),
    }
}

fn unix_ms_now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as i64)
}
