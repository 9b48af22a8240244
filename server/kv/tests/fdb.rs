//! The store conformance suite on a real FoundationDB cluster, when `FDB_CLUSTER_FILE`
//! names one: each test under a new random key prefix. Without the variable every test
//! returns at once and says why on stderr (no cluster can be installed on the machines
//! CI runs on); with it, an unreachable cluster fails every test. Build and run with
//! `FDB_CLUSTER_FILE=/etc/foundationdb/fdb.cluster cargo test --release -p
//! pagewire-store-kv --features foundationdb --test fdb` (needs libfdb_c 7.3).
#![cfg(feature = "foundationdb")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pagewire_server_core::store::conformance::TestTime;
use pagewire_store_kv::KvStore;
use pagewire_store_kv::fdb_engine::FdbEngine;

async fn fixture() -> Option<((), KvStore)> {
    let Some(cluster) = std::env::var_os("FDB_CLUSTER_FILE").map(PathBuf::from) else {
        eprintln!("FDB_CLUSTER_FILE is not set: not run against FoundationDB");
        return None;
    };
    let prefix = format!("pagewire-test/{:016x}/", rand::random::<u64>()).into_bytes();
    let engine = FdbEngine::open(Some(&cluster), prefix)
        .unwrap_or_else(|e| panic!("FDB_CLUSTER_FILE={}: {e:#}", cluster.display()));
    let store = KvStore::open(Arc::new(engine))
        .await
        .unwrap_or_else(|e| panic!("the store over FoundationDB: {e}"));
    Some(((), store))
}

pagewire_server_core::conformance_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    fixture: fixture().await,
    time: TestTime::Real { unit: Duration::from_secs(1) },
}
