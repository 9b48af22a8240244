//! The engine trait: what the key-value page store needs of a storage engine, and no
//! more. Ordered byte keys; reads at a consistent snapshot; atomic, durable write
//! batches that fail with [`EngineError::Conflict`] when a key the batch read has
//! changed since (optimistic concurrency, as FoundationDB does with read conflict
//! ranges; an engine with one writer never conflicts).
//!
//! Sizes: an engine states its [`EngineLimits`]; the layer above keeps every key, value
//! and batch within them (FoundationDB: 10,000-byte keys, 100,000-byte values,
//! 10,000,000-byte transactions, 5 s). The embedded engine has no such limits.

use async_trait::async_trait;
use bytes::Bytes;

/// Why an engine call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A key the batch expected changed: nothing was written; read again and retry.
    #[error("a concurrent change conflicted with this write")]
    Conflict,
    /// Out of space (a full disk): nothing was written.
    #[error("{0}")]
    Full(String),
    /// The stored data is not what the engine wrote (a checksum failed, a record does
    /// not decode): nothing was written.
    #[error("{0}")]
    Corrupt(String),
    /// The snapshot is older than the engine keeps one readable (FoundationDB: 5 s,
    /// `transaction_too_old`): nothing was read; take a new snapshot.
    #[error("the snapshot is too old to read from")]
    TooOld,
    /// A key, value or batch over the engine's [`EngineLimits`]: a bug of the layer
    /// above, which keeps within them. Nothing was written.
    #[error("over the engine's limits: {0}")]
    TooLarge(String),
    /// Any other failure of the engine or its storage: the write's outcome may be
    /// unknown (the layer above reloads what it caches).
    #[error("{0}")]
    Io(String),
}

pub type EngineResult<T> = Result<T, EngineError>;

/// One key-value pair, owned.
pub type Pair = (Vec<u8>, Vec<u8>);

/// A consistent view of the engine at one point: later writes are not seen.
pub trait Snapshot: Send {
    fn get(&self, key: &[u8]) -> EngineResult<Option<Vec<u8>>>;

    /// The pairs with keys in `[start, end)`, ascending (or descending when `reverse`),
    /// at most `limit` of them.
    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> EngineResult<Vec<Pair>>;
}

/// One change in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Bytes),
    Delete(Vec<u8>),
    /// Deletes every key in `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

/// Changes applied all at once or not at all, and only if every `expect`ed key still
/// holds the value given (`None`: absent) when they apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub expect: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn expect(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.expect.push((key, value));
    }

    pub fn put(&mut self, key: Vec<u8>, value: impl Into<Bytes>) {
        self.ops.push(Op::Put(key, value.into()));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push(Op::Delete(key));
    }

    pub fn delete_range(&mut self, start: Vec<u8>, end: Vec<u8>) {
        self.ops.push(Op::DeleteRange(start, end));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values written (what a transaction-size limit counts).
    pub fn bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => k.len() + v.len(),
                Op::Delete(k) => k.len(),
                Op::DeleteRange(a, b) => a.len() + b.len(),
            })
            .sum()
    }
}

/// The sizes an engine accepts (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineLimits {
    pub max_key_bytes: Option<usize>,
    pub max_value_bytes: Option<usize>,
    pub max_batch_bytes: Option<usize>,
}

/// A transactional ordered key-value engine.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// What the engine is, for logs (e.g. `fjall /var/lib/pagewire/fjall`).
    fn describe(&self) -> String;

    fn limits(&self) -> EngineLimits;

    /// Whether this process is the only writer (a lock says so): the layer above may
    /// then trust what it caches between calls. (It still sends its expectations.)
    fn exclusive(&self) -> bool;

    /// A snapshot of everything committed so far.
    fn snapshot(&self) -> EngineResult<Box<dyn Snapshot + '_>>;

    /// Applies `batch` atomically; durable (synced) before it returns `Ok`. Concurrent
    /// calls may share one sync (group commit).
    async fn write(&self, batch: Batch) -> EngineResult<()>;
}
