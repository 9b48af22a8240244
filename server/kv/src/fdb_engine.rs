//! The FoundationDB engine (cargo feature `foundationdb`, API 7.3): the key-value page
//! store over a FoundationDB cluster, every key under one prefix.
//!
//! - A [`Snapshot`] is one read-only transaction at one read version (fetched when
//!   the snapshot is taken), read with snapshot reads: no conflicts. FoundationDB ends
//!   it after 5 s (`transaction_too_old`, [`EngineError::TooOld`]); the layer above
//!   takes a new one.
//! - A [`Batch`] is one transaction: its expectations are plain reads (so they are
//!   read conflicts: a concurrent change to an expected key fails the commit with
//!   `not_committed`, [`EngineError::Conflict`]), then its changes, then the commit.
//! - Several pagewire servers may share the cluster: [`Engine::exclusive`] is false,
//!   so the layer above checks what it caches against the engine at every operation.
//!
//! The `Snapshot` trait is synchronous (the embedded engine is); FoundationDB's futures
//! are completed by its own network thread, so a snapshot read blocks on them, inside
//! `block_in_place` on a multi-thread tokio runtime so other tasks keep running.
//!
//! Not run on the machines this was written on: no FoundationDB client library can
//! be installed there. It is compiled and linted in CI; its conformance tests
//! (`tests/fdb.rs`) run when `FDB_CLUSTER_FILE` names a cluster.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use foundationdb::options::{StreamingMode, TransactionOption};
use foundationdb::{
    Database, FdbError, KeySelector, RangeOption, Transaction, TransactionCommitError,
};

use crate::engine::{Batch, Engine, EngineError, EngineLimits, EngineResult, Op, Pair, Snapshot};
use crate::limited_engine::FDB_LIMITS;

/// FoundationDB's error codes this engine tells apart.
mod code {
    pub const TRANSACTION_TOO_OLD: i32 = 1007;
    pub const NOT_COMMITTED: i32 = 1020;
    pub const COMMIT_UNKNOWN_RESULT: i32 = 1021;
    pub const TRANSACTION_TIMED_OUT: i32 = 1031;
    pub const TRANSACTION_TOO_LARGE: i32 = 2101;
    pub const KEY_TOO_LARGE: i32 = 2102;
    pub const VALUE_TOO_LARGE: i32 = 2103;
}

/// Times a write is retried after a transient error (FoundationDB's `on_error`
/// backs off between them).
const WRITE_RETRIES: usize = 5;

/// No write (retries included: the timeout persists across `on_error` from API 610
/// on) and no start-up check waits longer than FoundationDB lets a transaction live.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// A snapshot's reads are bounded too, but later than the 5 s after which the cluster
/// answers `transaction_too_old`: that answer is [`EngineError::TooOld`], which the
/// layer above reruns on, where a timeout (1031) would be a plain I/O error.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);

/// The network thread, started once per process and never stopped: FoundationDB's
/// network cannot be started again in a process once stopped. The guard lives in a
/// static, which Rust never drops, so at exit `fdb_stop_network` is not called: the
/// exit ends the thread, abandoning only what is still in flight (a write not yet
/// acknowledged, whose outcome the caller never learnt). The API version (7.3, the
/// headers' `FDB_API_VERSION`) can be selected once per process, hence here too.
static NETWORK: OnceLock<Result<foundationdb::api::NetworkAutoStop, String>> = OnceLock::new();

fn network() -> EngineResult<()> {
    let booted = NETWORK.get_or_init(|| {
        let builder = foundationdb::api::FdbApiBuilder::default()
            .build()
            .map_err(|e| format!("cannot select FoundationDB API 7.3: {e}"))?;
        // SAFETY: called once per process (the OnceLock), and the guard is never
        // dropped while the process uses the API.
        unsafe { builder.boot() }.map_err(|e| format!("cannot start FoundationDB's network: {e}"))
    });
    match booted {
        Ok(_) => Ok(()),
        Err(e) => Err(EngineError::Io(e.clone())),
    }
}

/// The engine over one cluster, keys under `prefix`.
pub struct FdbEngine {
    db: Database,
    cluster_file: Option<PathBuf>,
    prefix: Vec<u8>,
}

impl FdbEngine {
    /// Connects to the cluster of `cluster_file` (`None`: the default cluster file)
    /// and checks it answers within 5 s; keys go under `prefix`.
    pub fn open(cluster_file: Option<&Path>, prefix: Vec<u8>) -> anyhow::Result<Self> {
        network().map_err(|e| anyhow::anyhow!("{e}"))?;
        let path = cluster_file.map(|p| p.display().to_string());
        let db = Database::new(path.as_deref()).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the FoundationDB cluster file {}: {e}",
                show(cluster_file)
            )
        })?;
        let engine = Self {
            db,
            cluster_file: cluster_file.map(Path::to_path_buf),
            prefix,
        };
        // A read at a fresh read version: an unreachable cluster fails it by the
        // timeout (5 s, error 1031) instead of hanging the start.
        let check = engine.transaction(TRANSACTION_TIMEOUT).and_then(|tr| {
            block_on(tr.get(&engine.prefix, true))
                .map(drop)
                .map_err(fdb_error)
        });
        check.map_err(|e| {
            anyhow::anyhow!(
                "the FoundationDB cluster of {} does not answer: {e}",
                show(cluster_file)
            )
        })?;
        Ok(engine)
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        prefixed(&self.prefix, key)
    }

    fn transaction(&self, timeout: Duration) -> EngineResult<Transaction> {
        let tr = self.db.create_trx().map_err(fdb_error)?;
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        tr.set_option(TransactionOption::Timeout(ms))
            .map_err(fdb_error)?;
        Ok(tr)
    }

    /// One attempt at `batch` in `tr`: expectations read, changes made, committed.
    async fn attempt(&self, tr: Transaction, batch: &Batch) -> Result<Attempt, Failed> {
        for (key, want) in &batch.expect {
            // Not a snapshot read: the key joins the read conflict ranges, so a change
            // committed after this read version fails the commit with 1020.
            match tr.get(&self.key(key), false).await {
                Ok(found) if found.as_deref() == want.as_deref() => {}
                Ok(_) => return Ok(Attempt::Mismatch),
                Err(e) => return Err(Failed::Read(tr, e)),
            }
        }
        for op in &batch.ops {
            match op {
                Op::Put(k, v) => tr.set(&self.key(k), v),
                Op::Delete(k) => tr.clear(&self.key(k)),
                // An empty or inverted range deletes nothing; FoundationDB would
                // refuse an inverted one (inverted_range) instead.
                Op::DeleteRange(a, b) if a >= b => {}
                Op::DeleteRange(a, b) => tr.clear_range(&self.key(a), &self.key(b)),
            }
        }
        match tr.commit().await {
            Ok(_) => Ok(Attempt::Committed),
            Err(e) => Err(Failed::Commit(e)),
        }
    }

    /// `batch` within [`Engine::limits`], checked here so that an oversized batch is a
    /// clear error before anything is sent. Counted as FoundationDB counts a
    /// transaction: every key with the prefix, the keys read for expectations (read
    /// conflict ranges) too.
    fn check(&self, batch: &Batch) -> EngineResult<()> {
        check_batch(self.limits(), self.prefix.len(), batch)
    }
}

/// How one write attempt ended, short of an error.
enum Attempt {
    Committed,
    /// An expected key holds something else: the batch conflicts (nothing committed).
    Mismatch,
}

/// A write attempt that FoundationDB failed.
enum Failed {
    /// An expectation's read failed (nothing was committed).
    Read(Transaction, FdbError),
    Commit(TransactionCommitError),
}

impl Failed {
    fn error(&self) -> FdbError {
        match self {
            Failed::Read(_, e) => *e,
            Failed::Commit(e) => **e,
        }
    }

    /// The transaction again after `on_error`'s backoff. Through the commit error,
    /// not a reset transaction: `on_error` keeps the options (the timeout) and grows
    /// the backoff; a reset would drop both.
    async fn retry(self) -> Result<Transaction, FdbError> {
        match self {
            Failed::Read(tr, e) => tr.on_error(e).await,
            Failed::Commit(e) => e.on_error().await,
        }
    }
}

fn check_batch(limits: EngineLimits, prefix: usize, batch: &Batch) -> EngineResult<()> {
    let over = |what: &str, len: usize, max: Option<usize>| match max {
        Some(max) if len > max => Err(EngineError::TooLarge(format!(
            "a {what} of {len} bytes for FoundationDB, whose limit is {max}: \
             the layer above should have kept within it (a bug)"
        ))),
        _ => Ok(()),
    };
    let read = batch.expect.iter().map(|(k, _)| k.as_slice());
    let written = batch.ops.iter().flat_map(|op| match op {
        Op::Put(k, _) | Op::Delete(k) => [Some(k.as_slice()), None],
        Op::DeleteRange(a, b) => [Some(a.as_slice()), Some(b.as_slice())],
    });
    let mut keys = 0;
    for key in read.clone().chain(written.flatten()) {
        over("key", key.len(), limits.max_key_bytes)?;
        keys += 1;
    }
    for op in &batch.ops {
        if let Op::Put(_, v) = op {
            over("value", v.len(), limits.max_value_bytes)?;
        }
    }
    let bytes = batch.bytes() + read.map(<[u8]>::len).sum::<usize>() + keys * prefix;
    over("transaction", bytes, limits.max_batch_bytes)
}

fn show(cluster_file: Option<&Path>) -> String {
    cluster_file.map_or_else(
        || format!("{} (the default)", foundationdb::default_config_path()),
        |p| p.display().to_string(),
    )
}

fn prefixed(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(key);
    k
}

/// The engine error for a FoundationDB error code and message.
fn from_code(code: i32, message: &str) -> EngineError {
    match code {
        code::TRANSACTION_TOO_OLD => EngineError::TooOld,
        code::NOT_COMMITTED => EngineError::Conflict,
        code::COMMIT_UNKNOWN_RESULT => EngineError::Io(format!(
            "FoundationDB: the outcome of the commit is unknown ({message})"
        )),
        code::TRANSACTION_TOO_LARGE | code::KEY_TOO_LARGE | code::VALUE_TOO_LARGE => {
            EngineError::TooLarge(format!("FoundationDB refused a transaction: {message}"))
        }
        code::TRANSACTION_TIMED_OUT => {
            EngineError::Io(format!("FoundationDB did not answer in time ({message})"))
        }
        _ => EngineError::Io(format!("FoundationDB error {code}: {message}")),
    }
}

fn fdb_error(e: FdbError) -> EngineError {
    from_code(e.code(), &e.to_string())
}

/// What a failed write attempt ends in, or `None` to retry it. A conflict is the
/// layer's to decide on (it reloads and decides again); an outcome that may have
/// committed is never retried blindly (the layer's expectations and commit ids make
/// its own retry safe); only an error that certainly committed nothing is retried.
fn retry_or_fail(e: FdbError) -> Option<EngineError> {
    retry_decision(
        e.code(),
        e.is_retryable_not_committed(),
        e.is_maybe_committed(),
        &e.to_string(),
    )
}

fn retry_decision(
    code: i32,
    retryable_not_committed: bool,
    maybe_committed: bool,
    message: &str,
) -> Option<EngineError> {
    match code {
        code::NOT_COMMITTED => Some(EngineError::Conflict),
        _ if retryable_not_committed => None,
        _ if maybe_committed => Some(from_code(code::COMMIT_UNKNOWN_RESULT, message)),
        _ => Some(from_code(code, message)),
    }
}

/// Runs FoundationDB future `f` to completion from synchronous code. FoundationDB's
/// network thread completes it, never a tokio worker, so blocking cannot deadlock
/// even on a current-thread runtime (where `block_in_place` would panic); on a
/// multi-thread one `block_in_place` lets the worker's other tasks move elsewhere.
fn block_on<F: Future>(f: F) -> F::Output {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| futures::executor::block_on(f))
        }
        _ => futures::executor::block_on(f),
    }
}

struct FdbSnapshot<'a> {
    engine: &'a FdbEngine,
    tr: Transaction,
}

impl Snapshot for FdbSnapshot<'_> {
    fn get(&self, key: &[u8]) -> EngineResult<Option<Vec<u8>>> {
        let found = block_on(self.tr.get(&self.engine.key(key), true)).map_err(fdb_error)?;
        Ok(found.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> EngineResult<Vec<Pair>> {
        if limit == 0 || start >= end {
            return Ok(Vec::new());
        }
        let prefix = &self.engine.prefix;
        let mut opt = Some(RangeOption {
            begin: KeySelector::first_greater_or_equal(prefixed(prefix, start)),
            end: KeySelector::first_greater_or_equal(prefixed(prefix, end)),
            limit: Some(limit).filter(|&l| l < usize::MAX),
            mode: StreamingMode::WantAll,
            reverse,
            ..RangeOption::default()
        });
        let mut pairs = Vec::new();
        let mut iteration = 1;
        while let Some(range) = opt.take() {
            let values = block_on(self.tr.get_range(&range, iteration, true)).map_err(fdb_error)?;
            for kv in values.iter() {
                let key = kv.key().strip_prefix(prefix.as_slice()).unwrap_or(kv.key());
                pairs.push((key.to_vec(), kv.value().to_vec()));
            }
            if pairs.len() >= limit {
                pairs.truncate(limit);
                break;
            }
            opt = range.next_range(&values);
            iteration += 1;
        }
        Ok(pairs)
    }
}

#[async_trait]
impl Engine for FdbEngine {
    fn describe(&self) -> String {
        format!(
            "foundationdb {} prefix {}",
            show(self.cluster_file.as_deref()),
            self.prefix.escape_ascii()
        )
    }

    fn limits(&self) -> EngineLimits {
        // FoundationDB counts the prefix as part of every key.
        EngineLimits {
            max_key_bytes: FDB_LIMITS
                .max_key_bytes
                .map(|k| k.saturating_sub(self.prefix.len())),
            ..FDB_LIMITS
        }
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn snapshot(&self) -> EngineResult<Box<dyn Snapshot + '_>> {
        let tr = self.transaction(SNAPSHOT_TIMEOUT)?;
        // Fixes the read version now: every read of the snapshot is at it.
        block_on(tr.get_read_version()).map_err(fdb_error)?;
        Ok(Box::new(FdbSnapshot { engine: self, tr }))
    }

    async fn write(&self, batch: Batch) -> EngineResult<()> {
        self.check(&batch)?;
        if batch.is_empty() && batch.expect.is_empty() {
            return Ok(());
        }
        let mut tr = self.transaction(TRANSACTION_TIMEOUT)?;
        for _ in 0..=WRITE_RETRIES {
            let failed = match self.attempt(tr, &batch).await {
                Ok(Attempt::Committed) => return Ok(()),
                Ok(Attempt::Mismatch) => return Err(EngineError::Conflict),
                Err(failed) => failed,
            };
            if let Some(error) = retry_or_fail(failed.error()) {
                return Err(error);
            }
            tr = failed.retry().await.map_err(fdb_error)?;
        }
        Err(EngineError::Io(format!(
            "FoundationDB: the write failed {WRITE_RETRIES} times with transient errors"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_what_the_layer_does_with_them() {
        assert_eq!(from_code(1007, "too old"), EngineError::TooOld);
        assert_eq!(from_code(1020, "conflict"), EngineError::Conflict);
        assert!(matches!(from_code(1021, "unknown"), EngineError::Io(m) if m.contains("unknown")));
        assert!(matches!(from_code(2101, "big"), EngineError::TooLarge(_)));
        assert!(matches!(from_code(1031, "slow"), EngineError::Io(m) if m.contains("in time")));
    }

    #[test]
    fn keys_go_under_the_prefix() {
        assert_eq!(prefixed(b"pagewire/", b"h1"), b"pagewire/h1".to_vec());
        assert_eq!(prefixed(b"", b"x"), b"x".to_vec());
    }

    #[test]
    fn only_what_certainly_did_not_commit_is_retried() {
        // 1020 is retryable-not-committed for FoundationDB, a conflict for the layer.
        assert_eq!(
            retry_decision(1020, true, false, "not committed"),
            Some(EngineError::Conflict)
        );
        assert_eq!(retry_decision(1007, true, false, "too old"), None);
        assert!(matches!(
            retry_decision(1021, false, true, "unknown"),
            Some(EngineError::Io(m)) if m.contains("unknown")
        ));
        // Another maybe-committed error (e.g. 1039 cluster_version_changed) too.
        assert!(matches!(
            retry_decision(1039, false, true, "changed"),
            Some(EngineError::Io(m)) if m.contains("unknown")
        ));
        assert!(matches!(
            retry_decision(2103, false, false, "big"),
            Some(EngineError::TooLarge(_))
        ));
    }

    #[test]
    fn batches_are_checked_as_foundationdb_counts_them() {
        let prefix = b"pagewire/".len();
        let limits = EngineLimits {
            max_key_bytes: Some(10_000 - prefix),
            ..FDB_LIMITS
        };
        let mut ok = Batch::default();
        ok.expect(vec![b'k'; 10_000 - prefix], None);
        ok.put(vec![b'k'; 10_000 - prefix], vec![0; 100_000]);
        ok.delete_range(b"a".to_vec(), b"b".to_vec());
        assert_eq!(check_batch(limits, prefix, &ok), Ok(()));

        let mut key = Batch::default();
        key.delete(vec![b'k'; 10_001 - prefix]);
        assert!(
            matches!(check_batch(limits, prefix, &key), Err(EngineError::TooLarge(m)) if m.contains("key"))
        );

        let mut value = Batch::default();
        value.put(b"k".to_vec(), vec![0; 100_001]);
        assert!(
            matches!(check_batch(limits, prefix, &value), Err(EngineError::TooLarge(m)) if m.contains("value"))
        );

        // 100 one-byte keys with values of 99,995 bytes: 9,999,600 bytes, within
        // the limit, but with the prefixes (9 bytes each) over it; and over it without
        // prefixes once the expected keys read are counted.
        let mut big = Batch::default();
        for i in 0..100u8 {
            big.put(vec![i], vec![0; 99_995]);
        }
        let bytes = big.bytes();
        assert_eq!(bytes, 9_999_600);
        assert_eq!(check_batch(limits, 0, &big), Ok(()));
        assert!(check_batch(limits, prefix, &big).is_err());
        big.expect(vec![b'e'; 10_000_000 - bytes + 1], None);
        assert!(
            matches!(check_batch(limits, 0, &big), Err(EngineError::TooLarge(m)) if m.contains("transaction"))
        );
    }
}
