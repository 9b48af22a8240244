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
use foundationdb::{Database, FdbError, KeySelector, RangeOption, Transaction};

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

/// No transaction of this engine waits longer than FoundationDB lets one live.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The network thread, started once per process and never stopped: FoundationDB's
/// network cannot be started again in a process once stopped, and the process's exit
/// ends the thread. (The guard lives in a static, which is never dropped.)
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
        // timeout instead of hanging the start.
        engine
            .snapshot()
            .and_then(|snap| snap.get(b"Mformat").map(drop))
            .map_err(|e| {
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

    fn transaction(&self) -> EngineResult<Transaction> {
        let tr = self.db.create_trx().map_err(fdb_error)?;
        let ms = i32::try_from(TRANSACTION_TIMEOUT.as_millis()).unwrap_or(i32::MAX);
        tr.set_option(TransactionOption::Timeout(ms))
            .map_err(fdb_error)?;
        Ok(tr)
    }

    /// One attempt at `batch` in `tr`: expectations read, changes made, committed.
    async fn attempt(&self, tr: Transaction, batch: &Batch) -> Result<(), (Transaction, Attempt)> {
        for (key, want) in &batch.expect {
            match tr.get(&self.key(key), false).await {
                Ok(found) if found.as_deref() == want.as_deref() => {}
                Ok(_) => return Err((tr, Attempt::Mismatch)),
                Err(e) => return Err((tr, Attempt::Failed(e))),
            }
        }
        for op in &batch.ops {
            match op {
                Op::Put(k, v) => tr.set(&self.key(k), v),
                Op::Delete(k) => tr.clear(&self.key(k)),
                Op::DeleteRange(a, b) => tr.clear_range(&self.key(a), &self.key(b)),
            }
        }
        match tr.commit().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = *e;
                Err((e.reset(), Attempt::Failed(err)))
            }
        }
    }
}

/// Why one write attempt did not commit.
enum Attempt {
    /// An expected key holds something else: the batch conflicts.
    Mismatch,
    Failed(FdbError),
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
        code::TRANSACTION_TIMED_OUT => EngineError::Io(format!(
            "FoundationDB did not answer within 5 s ({message})"
        )),
        _ => EngineError::Io(format!("FoundationDB error {code}: {message}")),
    }
}

fn fdb_error(e: FdbError) -> EngineError {
    from_code(e.code(), &e.to_string())
}

/// Runs FoundationDB future `f` to completion from synchronous code.
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
        let tr = self.transaction()?;
        // Fixes the read version now: every read of the snapshot is at it.
        block_on(tr.get_read_version()).map_err(fdb_error)?;
        Ok(Box::new(FdbSnapshot { engine: self, tr }))
    }

    async fn write(&self, batch: Batch) -> EngineResult<()> {
        let mut tr = self.transaction()?;
        for _ in 0..=WRITE_RETRIES {
            let (failed, why) = match self.attempt(tr, &batch).await {
                Ok(()) => return Ok(()),
                Err((_, Attempt::Mismatch)) => return Err(EngineError::Conflict),
                Err((failed, Attempt::Failed(e))) => (failed, e),
            };
            // A conflict is the layer's to decide on (it reloads and decides again);
            // an unknown outcome is not retried blindly (the layer's expectations and
            // commit ids make its own retry safe).
            let code = why.code();
            if code == code::NOT_COMMITTED
                || code == code::COMMIT_UNKNOWN_RESULT
                || !why.is_retryable()
            {
                return Err(fdb_error(why));
            }
            tr = failed.on_error(why).await.map_err(fdb_error)?;
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
        assert!(matches!(from_code(1031, "slow"), EngineError::Io(m) if m.contains("5 s")));
    }

    #[test]
    fn keys_go_under_the_prefix() {
        assert_eq!(prefixed(b"pagewire/", b"h1"), b"pagewire/h1".to_vec());
        assert_eq!(prefixed(b"", b"x"), b"x".to_vec());
    }
}
