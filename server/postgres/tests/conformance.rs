//! The store conformance suite on PostgreSQL: every test gets a fresh database (see
//! `pagewire_tests::postgres`), skipped loudly where no PostgreSQL can be had, failed
//! under `CI=true`. Lease and pin TTLs are short and really waited out: the database's
//! clock decides expiry.

use std::time::Duration;

use pagewire_server_core::store::conformance::TestTime;
use pagewire_store_postgres::PostgresStore;
use pagewire_tests::postgres::TempPostgres;

/// A fresh database and the store on it, or `None` (skipped).
async fn fixture() -> Option<(TempPostgres, PostgresStore)> {
    let pg = TempPostgres::start_or_skip("PostgreSQL store conformance")?;
    match PostgresStore::connect(pg.url()).await {
        Ok(store) => Some((pg, store)),
        Err(e) => panic!("connecting the store to {}: {e}", pg.url()),
    }
}

pagewire_server_core::conformance_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: fixture().await,
    time: TestTime::Real { unit: Duration::from_millis(500) },
}
