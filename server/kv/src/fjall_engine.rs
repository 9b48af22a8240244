//! The embedded engine: [fjall](https://docs.rs/fjall), a log-structured merge tree
//! (a write-ahead journal, memtables, sorted tables compacted in the background), in a
//! data directory this process locks.
//!
//! - **Durability**: a group of batches is one fjall write batch committed with
//!   `PersistMode::SyncData`: one sequential journal append and one `fdatasync` before
//!   `write` returns. fjall syncs before the batch reaches the memtables, so no reader
//!   sees a write that is not durable yet. After a crash fjall replays the journal and
//!   drops a torn last batch; a damaged complete batch is an open error.
//! - **Group commit**: one committer thread takes every batch waiting and commits them
//!   as one write batch, one sync. Each batch still checks its own expectations
//!   (against what is committed plus the earlier batches of its group) and applies
//!   whole or not at all.
//! - **I/O errors**: fjall refuses every write after one failed (it is "poisoned", e.g.
//!   by a full disk) until it is opened again; the committer reopens it, which replays
//!   the journal, and the batches of the failed group fail (`Full` for a full disk).
//! - **Space**: a delete writes a tombstone; compaction drops the deleted values and
//!   the tombstones and deletes the old table files, so freed space goes back to the
//!   file system: the directory shrinks as compaction catches up.
//! - **One server per directory**: see [`crate::data_dir`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use fjall::{KeyspaceCreateOptions, PersistMode, Readable as _};

use crate::committer::{Committer, Job};
use crate::data_dir::{self, OpenError, dir_error, is_full};
use crate::engine::{Batch, Engine, EngineError, EngineLimits, EngineResult, Op, Pair, Snapshot};

/// fjall's directory inside the data directory.
pub const ENGINE_DIR: &str = "fjall";
/// The one keyspace: every key of the layout (see [`crate::keys`]).
const KEYSPACE: &str = "pagewire";

/// fjall's block cache.
const CACHE_BYTES: u64 = 256 << 20;

/// A memtable is flushed to a table file at this size. A start after a crash replays
/// the journal written since the last flush, and fjall starts a new journal file at a
/// flush once the current one passed 64 MB: so a start replays at most about 64 MB +
/// this (measured: 0.6 s for 100 MB), and memtables hold at most a few of these.
const MEMTABLE_BYTES: u64 = 16 << 20;

/// The open engine: handles are cheap clones of fjall's shared state.
#[derive(Clone)]
struct Open {
    db: fjall::Database,
    keyspace: fjall::Keyspace,
}

fn open_fjall(path: &Path) -> Result<Open, fjall::Error> {
    let db = fjall::Database::builder(path)
        .cache_size(CACHE_BYTES)
        .open()?;
    let keyspace = db.keyspace(KEYSPACE, || {
        KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
    })?;
    Ok(Open { db, keyspace })
}

/// The open engine, shared by the committer and snapshots. `None` while it is being
/// reopened after an I/O error.
struct Handle {
    open: parking_lot::RwLock<Option<Open>>,
    path: PathBuf,
    syncs: AtomicU64,
}

impl Handle {
    fn current(&self) -> EngineResult<Open> {
        self.open.read().clone().ok_or_else(|| {
            EngineError::Io("the data directory is being reopened after an I/O error".into())
        })
    }

    /// Closes and opens fjall again (after an I/O error); retried for a while, as a
    /// snapshot or a background thread may hold the old one for a moment.
    fn reopen(&self) {
        let mut slot = self.open.write();
        slot.take();
        for attempt in 0..100 {
            match open_fjall(&self.path) {
                Ok(open) => {
                    tracing::warn!(path = %self.path.display(), "engine reopened after an I/O error");
                    *slot = Some(open);
                    return;
                }
                Err(e) if attempt == 99 => {
                    tracing::error!(path = %self.path.display(), "cannot reopen the engine: {e:?}");
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }
}

/// The fjall engine over one data directory.
pub struct FjallEngine {
    handle: Arc<Handle>,
    dir: PathBuf,
    /// Dropped before the lock: waits for the last group, lets go of fjall.
    committer: Committer,
    /// Held (locked) for the life of the engine.
    _lock: File,
}

/// An engine error from a fjall error, by what it means.
fn engine_error(context: &str, e: fjall::Error) -> EngineError {
    use fjall::Error as F;
    use fjall::LsmError as L;
    let message = format!("{context}: {e:?}");
    match &e {
        F::Io(io) | F::Storage(L::Io(io)) if is_full(io) => EngineError::Full(message),
        F::JournalRecovery(_)
        | F::InvalidTrailer
        | F::InvalidTag(_)
        | F::Decompress(_)
        | F::Unrecoverable
        | F::Storage(
            L::ChecksumMismatch { .. }
            | L::InvalidTrailer
            | L::InvalidTag(_)
            | L::InvalidHeader(_)
            | L::Decompress(_)
            | L::Unrecoverable,
        ) => EngineError::Corrupt(message),
        _ => EngineError::Io(message),
    }
}

impl FjallEngine {
    /// Opens (creating when missing) the engine in data directory `dir`, which it locks.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let lock = data_dir::lock(dir)?;
        let path = dir.join(ENGINE_DIR);
        let open = open_fjall(&path).map_err(|e| OpenError::DataFile {
            path: path.clone(),
            message: format!("{e:?}"),
        })?;
        crate::migrate::from_redb(dir, &open.db, &open.keyspace)?;
        let handle = Arc::new(Handle {
            open: parking_lot::RwLock::new(Some(open)),
            path,
            syncs: AtomicU64::new(0),
        });
        let (commits, reopens) = (handle.clone(), handle.clone());
        let committer = Committer::spawn(
            move |group| match commits.current() {
                Ok(open) => commit_group(&commits, &open, group),
                Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
            },
            move || reopens.reopen(),
        )
        .map_err(dir_error(dir))?;
        Ok(Self {
            handle,
            dir: dir.to_owned(),
            committer,
            _lock: lock,
        })
    }

    /// Journal syncs so far: one per committed group (each fjall commit made with
    /// `PersistMode::SyncData`, counted once it returned).
    pub fn syncs(&self) -> u64 {
        self.handle.syncs.load(Ordering::Relaxed)
    }

    /// The bytes fjall keeps on disk (tables and journals).
    pub fn file_bytes(&self) -> u64 {
        self.handle
            .current()
            .ok()
            .and_then(|open| open.db.disk_space().ok())
            .unwrap_or(0)
    }
}

/// The group's writes, key by key: `None` deletes. Later batches of the group read
/// through it, and it becomes one fjall write batch (one entry per key).
type Pending = BTreeMap<Vec<u8>, Option<Bytes>>;

/// One write batch for `group`: per batch, its expectations checked and its ops
/// gathered (or a conflict, and nothing of it); then one durable commit. A failure of
/// the commit fails every batch in it.
fn commit_group(handle: &Handle, open: &Open, group: &[Job]) -> Vec<EngineResult<()>> {
    match try_commit_group(handle, open, group) {
        Ok(outcomes) => outcomes,
        Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
    }
}

fn try_commit_group(
    handle: &Handle,
    open: &Open,
    group: &[Job],
) -> EngineResult<Vec<EngineResult<()>>> {
    let mut pending = Pending::new();
    let mut outcomes = Vec::with_capacity(group.len());
    for job in group {
        if !expectations_hold(open, &pending, &job.batch)? {
            outcomes.push(Err(EngineError::Conflict));
            continue;
        }
        for op in &job.batch.ops {
            gather(open, &mut pending, op)?;
        }
        outcomes.push(Ok(()));
    }
    if pending.is_empty() {
        return Ok(outcomes);
    }
    let mut batch = open.db.batch().durability(Some(PersistMode::SyncData));
    for (key, value) in pending {
        match value {
            Some(value) => batch.insert(&open.keyspace, key, value.as_ref()),
            None => batch.remove(&open.keyspace, key),
        }
    }
    batch.commit().map_err(|e| engine_error("commit", e))?;
    handle.syncs.fetch_add(1, Ordering::Relaxed);
    Ok(outcomes)
}

/// The value of `key` as the group so far leaves it. The committer is fjall's only
/// writer, so its latest state is everything committed.
fn latest(open: &Open, pending: &Pending, key: &[u8]) -> EngineResult<Option<Vec<u8>>> {
    if let Some(value) = pending.get(key) {
        return Ok(value.as_ref().map(|v| v.to_vec()));
    }
    let value = open
        .keyspace
        .get(key)
        .map_err(|e| engine_error("read", e))?;
    Ok(value.map(|v| v.to_vec()))
}

fn expectations_hold(open: &Open, pending: &Pending, batch: &Batch) -> EngineResult<bool> {
    for (key, want) in &batch.expect {
        if latest(open, pending, key)?.as_deref() != want.as_deref() {
            return Ok(false);
        }
    }
    Ok(true)
}

fn gather(open: &Open, pending: &mut Pending, op: &Op) -> EngineResult<()> {
    match op {
        Op::Put(k, v) => {
            pending.insert(k.clone(), Some(v.clone()));
        }
        Op::Delete(k) => {
            pending.insert(k.clone(), None);
        }
        Op::DeleteRange(start, end) => {
            if start >= end {
                return Ok(());
            }
            // fjall has no range tombstone: every key in the range gets its own.
            let mut doomed = Vec::new();
            for item in open.keyspace.range(start.as_slice()..end.as_slice()) {
                doomed.push(item.key().map_err(|e| engine_error("scan", e))?.to_vec());
            }
            doomed.extend(
                pending
                    .range(start.clone()..end.clone())
                    .map(|(k, _)| k.clone()),
            );
            for key in doomed {
                pending.insert(key, None);
            }
        }
    }
    Ok(())
}

struct FjallSnapshot {
    snapshot: fjall::Snapshot,
    keyspace: fjall::Keyspace,
}

impl Snapshot for FjallSnapshot {
    fn get(&self, key: &[u8]) -> EngineResult<Option<Vec<u8>>> {
        let value = self
            .snapshot
            .get(&self.keyspace, key)
            .map_err(|e| engine_error("read", e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> EngineResult<Vec<Pair>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let range = self.snapshot.range(&self.keyspace, start..end);
        let pair = |item: fjall::Guard| {
            item.into_inner()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
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
impl Engine for FjallEngine {
    fn describe(&self) -> String {
        format!("fjall {}", self.dir.join(ENGINE_DIR).display())
    }

    fn limits(&self) -> EngineLimits {
        EngineLimits::default()
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn snapshot(&self) -> EngineResult<Box<dyn Snapshot + '_>> {
        let open = self.handle.current()?;
        Ok(Box::new(FjallSnapshot {
            snapshot: open.db.snapshot(),
            keyspace: open.keyspace,
        }))
    }

    async fn write(&self, batch: Batch) -> EngineResult<()> {
        self.committer.write(batch).await
    }
}
