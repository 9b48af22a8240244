//! One SQLite connection's main database file: its lock level, the version it
//! reads (pinned from SHARED until unlock), and its transaction's write buffer.
//!
//! The commit point is xSync: SQLite syncs the main file exactly once per
//! committing transaction, after its last page write, in every rollback journal
//! mode (synchronous=OFF is refused by the pragma hook so the sync always
//! comes). Until then writes stay in the buffer, so a client killed at any
//! instant leaves the server at the old version or the new one.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use pagewire_proto::ids::Version;
use sqlite_plugin::flags::LockLevel;

use crate::{
    buffer::WriteBuffer,
    client::CommitError,
    commit,
    config::{AsOf, Config, Consistency},
    database::Database,
    error::VfsError,
    readahead::ReadAhead,
    state::DbState,
    status::Class,
};

pub struct MainFile {
    pub db: Arc<Database>,
    /// Identity in the process-wide lock table.
    id: u64,
    readahead: ReadAhead,
    read_only: bool,
    lock: LockLevel,
    /// The version this connection reads; pinned while it holds SHARED or more.
    view: DbState,
    txn: Option<WriteBuffer>,
    /// The journal mode SQLite was last told to use, answered when WAL or OFF is refused.
    pub journal_mode: &'static str,
    /// The `synchronous` level last set (as `PRAGMA synchronous` prints it; SQLite's
    /// default FULL), answered when OFF is refused.
    pub synchronous: u8,
    /// Set when a commit's outcome stayed unknown: the connection can no longer
    /// vouch for what the server holds.
    poisoned: Option<String>,
    /// Time travel: every read transaction reads this point in history.
    as_of: Option<AsOf>,
    /// Read transactions wait for at least this version (read-your-writes).
    pub min_version: u64,
    min_version_timeout: Duration,
    consistency: Consistency,
    /// This transaction took RESERVED (it wrote, or tried to).
    reserved_in_txn: bool,
}

impl MainFile {
    pub fn new(
        db: Arc<Database>,
        id: u64,
        read_only: bool,
        view: DbState,
        config: &Config,
    ) -> Self {
        Self {
            db,
            id,
            readahead: ReadAhead::default(),
            read_only: read_only || config.as_of.is_some(),
            lock: LockLevel::Unlocked,
            view,
            txn: None,
            journal_mode: "delete",
            synchronous: 2,
            poisoned: None,
            as_of: config.as_of,
            min_version: config.min_version,
            min_version_timeout: config.min_version_timeout,
            consistency: config.consistency,
            reserved_in_txn: false,
        }
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether this connection is in a write transaction (RESERVED or more).
    pub fn writing(&self) -> bool {
        self.lock >= LockLevel::Reserved
    }

    pub fn view(&self) -> DbState {
        self.view
    }

    /// Poisoned connections, and every connection of a replaced database, answer
    /// errors to every call until reopened.
    fn check_poison(&self) -> Result<(), VfsError> {
        match &self.poisoned {
            Some(why) => Err(VfsError::Poisoned(why.clone())),
            None => self.db.check_replaced(),
        }
    }

    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, VfsError> {
        self.check_poison()?;
        let (db, view, ra) = (&self.db, self.view, &mut self.readahead);
        match &self.txn {
            Some(txn) => txn.read(offset, buf, &mut |o, b| {
                read_committed(db, view, o, b, Some(&mut *ra))
            }),
            None => read_committed(db, view, offset, buf, Some(ra)),
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), VfsError> {
        self.check_poison()?;
        if self.read_only {
            return Err(VfsError::ReadOnly);
        }
        let base = self.view.file_size();
        self.txn
            .get_or_insert_with(|| WriteBuffer::new(base))
            .write(offset, data);
        Ok(())
    }

    pub fn truncate(&mut self, size: u64) -> Result<(), VfsError> {
        self.check_poison()?;
        // VACUUM and auto_vacuum truncate after the commit: the page count in
        // page 1 already said so, and a truncate to the committed size is a no-op.
        if self.txn.is_none() && size == self.view.file_size() {
            return Ok(());
        }
        if self.read_only {
            return Err(VfsError::ReadOnly);
        }
        let base = self.view.file_size();
        self.txn
            .get_or_insert_with(|| WriteBuffer::new(base))
            .truncate(size);
        Ok(())
    }

    pub fn file_size(&self) -> Result<u64, VfsError> {
        self.check_poison()?;
        Ok(self
            .txn
            .as_ref()
            .map_or(self.view.file_size(), WriteBuffer::size))
    }

    pub fn lock(&mut self, to: LockLevel) -> Result<(), VfsError> {
        self.check_poison()?;
        let from = self.lock;
        tracing::trace!(db = %self.db.name(), ?from, ?to, "lock");
        if to <= from {
            return Ok(());
        }
        if from == LockLevel::Unlocked {
            // Before taking the local lock: a local writer must be able to
            // commit the version we wait for.
            self.await_min_version()?;
        }
        self.db.locks.lock().lock(self.id, from, to)?;
        let remote = if from == LockLevel::Unlocked {
            self.pin()
        } else if from < LockLevel::Reserved && to >= LockLevel::Reserved {
            self.reserve()
        } else {
            Ok(())
        };
        if let Err(e) = remote {
            self.db.locks.lock().unlock(self.id, to, from);
            return Err(e);
        }
        self.lock = to;
        Ok(())
    }

    /// SHARED: pin the version this read transaction sees (the newest, or the
    /// time-travel point).
    pub fn pin(&mut self) -> Result<(), VfsError> {
        self.view = self.db.begin_read(self.as_of, self.consistency)?;
        Ok(())
    }

    /// Waits (polling, up to `min_version_timeout`) until the database reaches
    /// `min_version`, for read-your-writes on a replica.
    fn await_min_version(&self) -> Result<(), VfsError> {
        let wanted = Version(self.min_version);
        if wanted <= self.view.version || self.as_of.is_some() {
            return Ok(());
        }
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let state = self.db.begin_read(None, self.consistency)?;
            if state.version >= wanted {
                return Ok(());
            }
            if started.elapsed() >= self.min_version_timeout {
                return Err(VfsError::Busy(format!(
                    "version {} not reached within {:?} (newest is {})",
                    self.min_version, self.min_version_timeout, state.version
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// RESERVED: hold the write lease, and refuse to write on a stale snapshot.
    fn reserve(&mut self) -> Result<(), VfsError> {
        if self.read_only {
            return Err(VfsError::ReadOnly);
        }
        self.reserved_in_txn = true;
        let latest = self.db.ensure_lease()?;
        if latest.version != self.view.version {
            return Err(VfsError::Busy(format!(
                "database changed (version {} -> {}) since this transaction began; retry it",
                self.view.version, latest.version
            )));
        }
        Ok(())
    }

    pub fn unlock(&mut self, to: LockLevel) -> Result<(), VfsError> {
        let from = self.lock;
        tracing::trace!(db = %self.db.name(), ?from, ?to, "unlock");
        if to >= from {
            return Ok(());
        }
        let mut result = Ok(());
        if from >= LockLevel::Reserved && self.txn.is_some() && self.poisoned.is_none() {
            // Only reached when SQLite skipped the sync (synchronous=OFF on a
            // database the pragma hook never saw): commit now rather than lose it.
            result = self.commit();
            if let Err(e) = &result {
                tracing::error!(db = %self.db.name(), error = %e, "commit at unlock failed");
            }
        }
        self.txn = None;
        self.db.locks.lock().unlock(self.id, from, to);
        self.lock = to;
        if to == LockLevel::Unlocked && !std::mem::take(&mut self.reserved_in_txn) {
            self.db.read_txn_ended();
        }
        result
    }

    pub fn check_reserved_lock(&self) -> bool {
        self.db.locks.lock().reserved()
    }

    /// The commit point (xSync). Sends the transaction as one Commit; fails only
    /// when the commit is known not to have applied, or poisons the connection
    /// when its outcome stays unknown.
    pub fn sync(&mut self) -> Result<(), VfsError> {
        self.check_poison()?;
        self.commit()
    }

    fn commit(&mut self) -> Result<(), VfsError> {
        // Taken out first: whatever happens below, the buffer is gone (SQLite
        // replays its journal after a failed sync).
        let Some(txn) = self.txn.take() else {
            return Ok(());
        };
        let (db, view) = (self.db.clone(), self.view);
        let mut base = |o, b: &mut [u8]| read_committed(&db, view, o, b, None);
        let Some(image) = commit::image(&txn, view, &mut base)? else {
            return Ok(());
        };
        match self.db.commit(view, image) {
            Ok(state) => {
                self.view = state;
                Ok(())
            }
            Err(CommitError::Definite(e)) => {
                if e.class() == Some(Class::Fenced) {
                    // Lease lapsed or superseded: another writer may have committed.
                    // Forget the lease and the cache; the next write re-acquires.
                    self.db.drop_all();
                }
                Err(e)
            }
            Err(CommitError::Unknown(e)) => {
                let why = format!("the outcome of a commit is unknown ({e}); reopen the database");
                self.poisoned = Some(why.clone());
                self.db.drop_all();
                Err(VfsError::Poisoned(why))
            }
        }
    }

    /// Releases this connection's locks (xClose).
    pub fn close(&mut self) {
        self.txn = None;
        self.db
            .locks
            .lock()
            .unlock(self.id, self.lock, LockLevel::Unlocked);
        self.lock = LockLevel::Unlocked;
    }
}

/// Reads bytes of the committed image at `view`; returns how many exist.
/// With `ra`, sequential reads fetch the next pages in the same round trip.
fn read_committed(
    db: &Database,
    view: DbState,
    offset: u64,
    buf: &mut [u8],
    ra: Option<&mut ReadAhead>,
) -> Result<usize, VfsError> {
    let size = view.file_size();
    let n = size.saturating_sub(offset).min(buf.len() as u64) as usize;
    buf[n..].fill(0);
    if n == 0 {
        return Ok(0);
    }
    let ps = view.page_size as u64;
    let first = offset / ps;
    let last = (offset + n as u64 - 1) / ps;
    let page_nos: Vec<u32> = (first..=last).map(|p| p as u32 + 1).collect();
    let (lo, hi) = (first as u32 + 1, last as u32 + 1);
    #[allow(clippy::reversed_empty_ranges)]
    let ahead = ra.map_or(1..=0, |ra| ra.on_read(lo, hi, view.page_count));
    let pages = db.read_pages(view, &page_nos, ahead)?;
    for (i, page) in pages.iter().enumerate() {
        let page_start = (first + i as u64) * ps;
        let lo = offset.max(page_start);
        let hi = (offset + n as u64).min(page_start + ps);
        buf[(lo - offset) as usize..(hi - offset) as usize]
            .copy_from_slice(&page[(lo - page_start) as usize..(hi - page_start) as usize]);
    }
    Ok(n)
}
