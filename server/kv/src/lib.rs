//! The key-value page store of pagewire: the [`PageStore`](pagewire_server_core::PageStore)
//! written once over a small transactional ordered key-value [`Engine`], and the
//! embedded engine under it by default ([`FjallEngine`]: a fjall tree in a data
//! directory). The next engine (FoundationDB) goes under the same layer.
//!
//! - [`engine`]: the engine trait: snapshots, ordered scans, atomic durable batches
//!   with expectations (a conflicting concurrent change fails the batch);
//! - [`keys`]: the key layout and its format version; [`records`]: the values;
//! - [`db`]: one database in memory while hot, and the store operations on it, each
//!   giving the batch that makes it durable (the rules are the shared store modules',
//!   as in the memory store);
//! - [`store`]: [`KvStore`]: loading databases on first use, dropping cold ones, GC;
//! - [`fjall_engine`]: the embedded engine: a journal and sorted tables, group commit,
//!   one sync per group; [`data_dir`]: the locked data directory;
//! - [`redb_engine`]: the first embedded engine, and [`migrate`]: moving a directory it
//!   wrote to fjall at start-up.
//!
//! Reader pins are kept in memory, as in the memory store: a restart loses them, which
//! lets GC collect a version a reader had begun (it then gets `OutOfRange`, never wrong
//! data). A database with live pins is never dropped from memory.

mod committer;
pub mod data_dir;
pub mod db;
pub mod engine;
#[cfg(feature = "foundationdb")]
pub mod fdb_engine;
pub mod fjall_engine;
pub mod keys;
pub mod limited_engine;
pub mod migrate;
pub mod plan;
pub mod records;
pub mod redb_engine;
pub mod store;

use pagewire_server_core::store::StoreError;

pub use data_dir::OpenError;
pub use engine::{Batch, Engine, EngineError, EngineLimits, EngineResult, Op, Snapshot};
pub use fjall_engine::FjallEngine;
pub use limited_engine::LimitedEngine;
pub use redb_engine::RedbEngine;
pub use store::KvStore;

/// The store error for an engine error: a conflict or an I/O failure may be retried
/// (the outcome of a write may be unknown: the layer reloads what it cached); a full
/// disk is `Full`; corrupt data is internal.
pub fn store_error(e: EngineError) -> StoreError {
    match e {
        EngineError::Conflict => {
            StoreError::Unavailable("a concurrent change to the database; try again".into())
        }
        EngineError::Full(m) => StoreError::Full(m),
        EngineError::Corrupt(m) => StoreError::Internal(format!("stored data is corrupt: {m}")),
        EngineError::Io(m) => StoreError::Unavailable(format!("the store failed: {m}")),
        EngineError::TooOld => {
            StoreError::Unavailable("the store's snapshot expired; try again".into())
        }
        EngineError::TooLarge(m) => StoreError::Internal(m),
    }
}

/// Opens the default durable store: the embedded engine in data directory `dir`.
pub async fn open_data_dir(
    dir: &std::path::Path,
) -> anyhow::Result<(KvStore, std::sync::Arc<FjallEngine>)> {
    let engine = std::sync::Arc::new(FjallEngine::open(dir)?);
    let store = KvStore::open(engine.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", dir.display()))?;
    Ok((store, engine))
}
