//! The first embedded engine: [redb](https://docs.rs/redb), a copy-on-write B-tree in
//! one file with checksummed commits, in a data directory this process locks. The
//! default is now [`crate::fjall_engine`] (a 10-page commit costs redb about 50 writes
//! and 2 syncs against fjall's one journal append and one sync); a directory written by
//! redb moves to fjall at start-up ([`crate::migrate`]). This engine stays to read such
//! a directory and, in tests, to write one.
//!
//! - **Durability**: every write transaction commits with `Durability::Immediate`: the
//!   data and the new root are synced (`fdatasync`) before `write` returns; with quick
//!   repair (the allocator state saved in each commit: one more sync), so a start after
//!   a crash takes milliseconds, not a walk of the whole file.
//! - **I/O errors**: redb refuses every write after one failed (a full disk) until the
//!   file is opened again; the committer reopens it, which recovers the last commit,
//!   and the batches of the failed transaction fail (`Full` for a full disk). The file
//!   backend is wrapped to count syncs ([`RedbEngine::syncs`]), so tests can assert them.
//! - **Group commit**: one committer thread takes every batch waiting and applies them
//!   in one write transaction with one sync; each batch still checks its own
//!   expectations and applies whole or not at all.
//! - **Space**: pages freed by GC and deletes go back to redb's allocator and are reused
//!   by later commits; the file does not shrink on its own.
//! - **One server per directory**: `LOCK` (holding the pid) is locked for the life of
//!   the process; a second server on the directory refuses to start, naming the pid.

use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use redb::backends::FileBackend;
use redb::{
    Database, Durability, ReadableDatabase as _, ReadableTable as _, StorageBackend,
    TableDefinition,
};

use crate::committer::{Committer, Job};
use crate::data_dir::{self, OpenError, dir_error, is_full};
use crate::engine::{Batch, Engine, EngineError, EngineLimits, EngineResult, Op, Pair, Snapshot};

/// The one table: every key of the layout (see [`crate::keys`]).
pub(crate) const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pagewire");

/// The data file in the data directory.
pub const DATA_FILE: &str = "pagewire.redb";

/// redb's page cache.
const CACHE_BYTES: usize = 256 << 20;

/// The file backend, counting syncs.
#[derive(Debug)]
struct CountingBackend {
    inner: FileBackend,
    syncs: Arc<AtomicU64>,
}

impl StorageBackend for CountingBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.inner.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// The open data file, shared by the committer and snapshots. `None` while it is
/// being reopened: redb refuses every write after one failed with an I/O error (a full
/// disk) until the file is opened again, which also recovers its last commit.
struct Handle {
    db: parking_lot::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    syncs: Arc<AtomicU64>,
}

impl Handle {
    fn current(&self) -> EngineResult<Arc<Database>> {
        self.db.read().clone().ok_or_else(|| {
            EngineError::Io("the data file is being reopened after an I/O error".into())
        })
    }

    /// Closes and opens the data file again (after an I/O error); retried for a while,
    /// as a snapshot may hold the old handle for a moment.
    fn reopen(&self) {
        let mut slot = self.db.write();
        slot.take();
        for attempt in 0..50 {
            match open_database(&self.path, &self.syncs) {
                Ok(db) => {
                    tracing::warn!(path = %self.path.display(), "data file reopened after an I/O error");
                    *slot = Some(Arc::new(db));
                    return;
                }
                Err(e) if attempt == 49 => {
                    tracing::error!(path = %self.path.display(), "cannot reopen the data file: {e}");
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }
}

fn open_database(path: &Path, syncs: &Arc<AtomicU64>) -> Result<Database, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| e.to_string())?;
    let backend = CountingBackend {
        inner: FileBackend::new(file).map_err(|e| e.to_string())?,
        syncs: syncs.clone(),
    };
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_with_backend(backend)
        .map_err(|e| e.to_string())?;
    ensure_table(&db).map_err(|e| e.to_string())?;
    Ok(db)
}

/// The redb engine over one data directory.
pub struct RedbEngine {
    handle: Arc<Handle>,
    path: PathBuf,
    /// Dropped before the lock: waits for the last group, lets go of the file.
    committer: Committer,
    /// Held (locked) for the life of the engine.
    _lock: File,
}

/// An engine error from any redb error, by what it means: an I/O error by its kind.
fn engine_error(context: &str, e: impl Into<redb::Error>) -> EngineError {
    let e: redb::Error = e.into();
    match &e {
        redb::Error::Io(io) if is_full(io) => EngineError::Full(format!("{context}: {io}")),
        redb::Error::Corrupted(_) => EngineError::Corrupt(format!("{context}: {e}")),
        _ => EngineError::Io(format!("{context}: {e}")),
    }
}

impl RedbEngine {
    /// Opens (creating when missing) the engine in data directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let lock = data_dir::lock(dir)?;
        let path = dir.join(DATA_FILE);
        let syncs = Arc::new(AtomicU64::new(0));
        let db = open_database(&path, &syncs).map_err(|message| OpenError::DataFile {
            path: path.clone(),
            message,
        })?;
        let handle = Arc::new(Handle {
            db: parking_lot::RwLock::new(Some(Arc::new(db))),
            path: path.clone(),
            syncs: syncs.clone(),
        });
        let (commits, reopens) = (handle.clone(), handle.clone());
        let committer = Committer::spawn(
            move |group| match commits.current() {
                Ok(db) => commit_group(&db, group),
                Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
            },
            move || reopens.reopen(),
        )
        .map_err(dir_error(dir))?;
        Ok(Self {
            handle,
            path,
            committer,
            _lock: lock,
        })
    }

    /// Syncs of the data file so far.
    pub fn syncs(&self) -> u64 {
        self.handle.syncs.load(Ordering::Relaxed)
    }

    /// The data file's size on disk.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

fn ensure_table(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(TABLE)?;
    txn.commit()?;
    Ok(())
}

/// One transaction for `group`: per batch, its expectations checked and its ops applied
/// (or a conflict, and nothing of it); then one durable commit. A failure of the
/// transaction fails every batch in it.
fn commit_group(db: &Database, group: &[Job]) -> Vec<EngineResult<()>> {
    match try_commit_group(db, group) {
        Ok(outcomes) => outcomes,
        Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
    }
}

fn try_commit_group(db: &Database, group: &[Job]) -> EngineResult<Vec<EngineResult<()>>> {
    let mut txn = db.begin_write().map_err(|e| engine_error("begin", e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| EngineError::Io(format!("durability: {e}")))?;
    // Saves the allocator state with each commit (one more sync, shared by the group),
    // so opening after a crash takes milliseconds instead of a walk of the whole file.
    txn.set_quick_repair(true);
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let mut table = txn
            .open_table(TABLE)
            .map_err(|e| engine_error("open table", e))?;
        for job in group {
            if !expectations_hold(&table, &job.batch)? {
                outcomes.push(Err(EngineError::Conflict));
                continue;
            }
            for op in &job.batch.ops {
                apply(&mut table, op)?;
            }
            outcomes.push(Ok(()));
        }
    }
    txn.commit().map_err(|e| engine_error("commit", e))?;
    Ok(outcomes)
}

fn expectations_hold(table: &redb::Table<&[u8], &[u8]>, batch: &Batch) -> EngineResult<bool> {
    for (key, want) in &batch.expect {
        let have = table
            .get(key.as_slice())
            .map_err(|e| engine_error("read", e))?;
        if have.as_ref().map(|g| g.value()) != want.as_deref() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn apply(table: &mut redb::Table<&[u8], &[u8]>, op: &Op) -> EngineResult<()> {
    match op {
        Op::Put(k, v) => {
            table
                .insert(k.as_slice(), v.as_ref())
                .map_err(|e| engine_error("write", e))?;
        }
        Op::Delete(k) => {
            table
                .remove(k.as_slice())
                .map_err(|e| engine_error("delete", e))?;
        }
        Op::DeleteRange(start, end) => {
            table
                .retain_in(start.as_slice()..end.as_slice(), |_, _| false)
                .map_err(|e| engine_error("delete range", e))?;
        }
    }
    Ok(())
}

/// A key or value read from a table.
type Guard<'a> = redb::AccessGuard<'a, &'static [u8]>;

struct RedbSnapshot {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl Snapshot for RedbSnapshot {
    fn get(&self, key: &[u8]) -> EngineResult<Option<Vec<u8>>> {
        let value = self.table.get(key).map_err(|e| engine_error("read", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> EngineResult<Vec<Pair>> {
        let range = self
            .table
            .range(start..end)
            .map_err(|e| engine_error("scan", e))?;
        let pair = |item: Result<(Guard<'_>, Guard<'_>), redb::StorageError>| {
            item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                .map_err(|e| engine_error("scan", e))
        };
        if reverse {
            range.rev().take(limit).map(pair).collect()
        } else {
            range.take(limit).map(pair).collect()
        }
    }
}

#[async_trait]
impl Engine for RedbEngine {
    fn describe(&self) -> String {
        format!("redb {}", self.path.display())
    }

    fn limits(&self) -> EngineLimits {
        EngineLimits::default()
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn snapshot(&self) -> EngineResult<Box<dyn Snapshot + '_>> {
        let db = self.handle.current()?;
        let txn = db.begin_read().map_err(|e| engine_error("begin read", e))?;
        let table = txn
            .open_table(TABLE)
            .map_err(|e| engine_error("open table", e))?;
        Ok(Box::new(RedbSnapshot { table }))
    }

    async fn write(&self, batch: Batch) -> EngineResult<()> {
        self.committer.write(batch).await
    }
}
