//! The store conformance suite on the key-value store over the embedded engine (fjall),
//! each test in its own data directory. The directories are on /dev/shm where there is
//! one: the suite checks the store's rules, and its timed tests (leases of a second)
//! must not depend on how long a disk takes to sync while other tests write hundreds
//! of MiB (seen: a renewal whose sync took 700 ms). Syncs are asserted on a real disk
//! in `engine.rs` and `tests/tests/embedded_store.rs`.
//!
//! The suite runs twice: on the embedded engine as the server uses it, and in
//! FDB-limits mode ([`LimitedEngine::fdb`]: FoundationDB's key, value, transaction-size
//! and 5 s limits enforced, and no trust in what is cached), so the paths FoundationDB
//! needs (staged commits, bounded batches, reloads after another writer) run on every
//! change without a FoundationDB cluster.

use std::sync::Arc;
use std::time::Duration;

use pagewire_server_core::store::conformance::TestTime;
use pagewire_store_kv::{FjallEngine, KvStore, LimitedEngine};

fn data_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temporary data directory")
}

async fn fixture() -> Option<(tempfile::TempDir, KvStore)> {
    let dir = data_dir();
    let (store, _engine) = pagewire_store_kv::open_data_dir(dir.path())
        .await
        .expect("open the store");
    Some((dir, store))
}

async fn fdb_limits() -> Option<(tempfile::TempDir, KvStore)> {
    let dir = data_dir();
    let fjall = Arc::new(FjallEngine::open(dir.path()).expect("open the engine"));
    let store = KvStore::open(Arc::new(LimitedEngine::fdb(fjall)))
        .await
        .expect("open the store");
    Some((dir, store))
}

pagewire_server_core::conformance_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: fixture().await,
    time: TestTime::Real { unit: Duration::from_secs(1) },
}

mod fdb_limits {
    use super::*;

    pagewire_server_core::conformance_tests! {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        fixture: fdb_limits().await,
        time: TestTime::Real { unit: Duration::from_secs(1) },
    }
}
