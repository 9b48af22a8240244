//! The store conformance suite on the key-value store over the embedded engine (redb),
//! each test in its own data directory.

use std::time::Duration;

use pagewire_server_core::store::conformance::TestTime;
use pagewire_store_kv::KvStore;

async fn fixture() -> Option<(tempfile::TempDir, KvStore)> {
    let dir = tempfile::tempdir().expect("temporary data directory");
    let (store, _engine) = pagewire_store_kv::open_data_dir(dir.path())
        .await
        .expect("open the store");
    Some((dir, store))
}

pagewire_server_core::conformance_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: fixture().await,
    time: TestTime::Real { unit: Duration::from_millis(500) },
}
