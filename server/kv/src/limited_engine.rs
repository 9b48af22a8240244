//! The FDB-limits mode: any engine (in practice the embedded one) held to
//! FoundationDB's limits, so the layer above meets them on every test run without a
//! FoundationDB cluster (none can be installed on the CI machines).
//!
//! It enforces what FoundationDB would refuse: keys over 10,000 bytes, values over
//! 100,000, a transaction writing over 10,000,000 bytes (keys and values of its
//! changes, plus the keys it reads to check its expectations), and reads from a
//! snapshot older than 5 s (FoundationDB's `transaction_too_old`). It says it is not
//! the only writer, so the layer above trusts nothing it caches, as with FoundationDB.
//! A refused write changes nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::engine::{Batch, Engine, EngineError, EngineLimits, EngineResult, Op, Pair, Snapshot};

/// FoundationDB's documented limits (API 7.3).
pub const FDB_LIMITS: EngineLimits = EngineLimits {
    max_key_bytes: Some(10_000),
    max_value_bytes: Some(100_000),
    max_batch_bytes: Some(10_000_000),
};

/// How long FoundationDB keeps a read version readable.
pub const FDB_TRANSACTION_TIME: Duration = Duration::from_secs(5);

/// `inner` under `limits` and a snapshot lifetime of `max_age`.
pub struct LimitedEngine {
    inner: Arc<dyn Engine>,
    limits: EngineLimits,
    max_age: Duration,
    stats: Stats,
}

/// What the layer above asked of the engine, for tests to assert on.
#[derive(Debug, Default)]
pub struct Stats {
    /// Batches written.
    pub batches: AtomicUsize,
    /// The most bytes one batch counted (see [`LimitedEngine`]).
    pub largest_batch: AtomicUsize,
    /// Writes that took longer than a transaction may live: FoundationDB would have
    /// failed them (the write here has applied; a test asserts there were none).
    pub overlong: AtomicUsize,
}

impl LimitedEngine {
    /// `inner` under FoundationDB's limits.
    pub fn fdb(inner: Arc<dyn Engine>) -> Self {
        Self::new(inner, FDB_LIMITS, FDB_TRANSACTION_TIME)
    }

    /// Other limits (a test of a path that FoundationDB's do not reach, e.g. pages
    /// over the value limit).
    pub fn new(inner: Arc<dyn Engine>, limits: EngineLimits, max_age: Duration) -> Self {
        Self {
            inner,
            limits,
            max_age,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Checks `batch` against the limits; returns the bytes it counts.
    fn check(&self, batch: &Batch) -> EngineResult<usize> {
        let over = |what: &str, len: usize, max: Option<usize>| match max {
            Some(max) if len > max => Err(EngineError::TooLarge(format!(
                "a {what} of {len} bytes (the limit is {max})"
            ))),
            _ => Ok(()),
        };
        let keys = batch.expect.iter().map(|(k, _)| k.as_slice());
        let op_keys = batch.ops.iter().flat_map(|op| match op {
            Op::Put(k, _) | Op::Delete(k) => vec![k.as_slice()],
            Op::DeleteRange(a, b) => vec![a.as_slice(), b.as_slice()],
        });
        for key in keys.clone().chain(op_keys) {
            over("key", key.len(), self.limits.max_key_bytes)?;
        }
        for op in &batch.ops {
            if let Op::Put(_, v) = op {
                over("value", v.len(), self.limits.max_value_bytes)?;
            }
        }
        let read: usize = keys.map(<[u8]>::len).sum();
        let bytes = batch.bytes() + read;
        over("transaction", bytes, self.limits.max_batch_bytes)?;
        Ok(bytes)
    }
}

struct AgedSnapshot<'a> {
    inner: Box<dyn Snapshot + 'a>,
    taken: Instant,
    max_age: Duration,
}

impl AgedSnapshot<'_> {
    fn fresh(&self) -> EngineResult<()> {
        if self.taken.elapsed() > self.max_age {
            return Err(EngineError::TooOld);
        }
        Ok(())
    }
}

impl Snapshot for AgedSnapshot<'_> {
    fn get(&self, key: &[u8]) -> EngineResult<Option<Vec<u8>>> {
        self.fresh()?;
        self.inner.get(key)
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> EngineResult<Vec<Pair>> {
        self.fresh()?;
        let pairs = self.inner.scan(start, end, reverse, limit)?;
        // A long scan ends past the deadline in FoundationDB too.
        self.fresh()?;
        Ok(pairs)
    }
}

#[async_trait]
impl Engine for LimitedEngine {
    fn describe(&self) -> String {
        format!("{} (FoundationDB limits)", self.inner.describe())
    }

    fn limits(&self) -> EngineLimits {
        self.limits
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn snapshot(&self) -> EngineResult<Box<dyn Snapshot + '_>> {
        Ok(Box::new(AgedSnapshot {
            inner: self.inner.snapshot()?,
            taken: Instant::now(),
            max_age: self.max_age,
        }))
    }

    async fn write(&self, batch: Batch) -> EngineResult<()> {
        let bytes = self.check(&batch)?;
        let started = Instant::now();
        let written = self.inner.write(batch).await;
        if started.elapsed() > self.max_age {
            self.stats.overlong.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.largest_batch.fetch_max(bytes, Ordering::Relaxed);
        written
    }
}
