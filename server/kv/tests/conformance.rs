//! The store conformance suite on the key-value store over the embedded engine (fjall),
//! each test in its own data directory. The directories are on /dev/shm where there is
//! one: the suite checks the store's rules, and its timed tests (leases of a second)
//! must not depend on how long a disk takes to sync while other tests write hundreds
//! of MiB (seen: a renewal whose sync took 700 ms). Syncs are asserted on a real disk
//! in `engine.rs` and `tests/tests/embedded_store.rs`.

use std::time::Duration;

use pagewire_server_core::store::conformance::TestTime;
use pagewire_store_kv::KvStore;

async fn fixture() -> Option<(tempfile::TempDir, KvStore)> {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temporary data directory");
    let (store, _engine) = pagewire_store_kv::open_data_dir(dir.path())
        .await
        .expect("open the store");
    Some((dir, store))
}

pagewire_server_core::conformance_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: fixture().await,
    time: TestTime::Real { unit: Duration::from_secs(1) },
}
