//! What only the PostgreSQL store has: migrations that re-run harmlessly (several servers
//! starting on one database), two stores (servers) sharing one database with fencing
//! between them, clear errors for bad URLs and unreachable servers.

use std::time::Duration;

use pagewire_server_core::store::conformance::commit;
use pagewire_server_core::store::{DbKey, PageStore, StoreError};
use pagewire_store_postgres::PostgresStore;
use pagewire_tests::postgres::TempPostgres;

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
    assert_eq!(again.info(&k).await?.state.version, 2);
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
