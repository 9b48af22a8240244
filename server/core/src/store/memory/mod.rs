//! The memory store: versioned, copy-on-write per page (a commit stores only the pages it
//! carries), every database behind its own lock. The default store, and the reference
//! model the durable stores are checked against.
//!
//! - `db`: one database and the store operations on it, under the database's lock.
//!
//! Its rules are the shared store modules': version metadata and reader pins
//! ([`crate::store::history`]: as-of resolution, change lists, what GC keeps and drops),
//! page writes ([`crate::store::page_writes`]), the write lease
//! ([`crate::store::lease_slot`]) and the commit checks and commit-id log
//! ([`crate::store::commit_check`]).

mod db;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use super::{
    BeginRead, Clock, Commit, CommitHeader, CommitOutcome, DbInfo, DbKey, DbState, GcStats, Lease,
    LeaseId, MAX_FORK_DEPTH, PageRead, PageStore, PinTtl, ReadAt, ReadView, RestorePoint,
    Retention, StoreError, StoreResult, Version, too_deep,
};
use db::MemDb;

/// Databases a GC pass handles before yielding to other tasks.
const GC_BATCH: usize = 256;

/// The in-memory page store. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct MemoryStore {
    dbs: RwLock<HashMap<DbKey, Arc<Mutex<MemDb>>>>,
    clock: Clock,
    /// `--max-memory`: page bytes held (history included) past which commits are
    /// refused, before the process could be killed for its memory.
    max_bytes: Option<u64>,
    /// Page bytes held now (commits add, GC and deletes take away).
    held: AtomicU64,
    /// Deleted databases whose pages branches still read, with their tenants: GC
    /// collects their history but the versions branches hold; the last branch's delete
    /// drops them.
    detached: Mutex<Vec<(String, Arc<Mutex<MemDb>>)>>,
}

impl MemoryStore {
    /// A deleted branch lets go of its source's version; a deleted source that no
    /// branch reads any more goes too, and so on towards the root.
    fn unhold(&self, mut ancestor: Option<db::Ancestor>) {
        while let Some(a) = ancestor.take() {
            let mut source = a.db.lock();
            if let Some(n) = source.branches.get_mut(&a.version) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    source.branches.remove(&a.version);
                }
            }
            if !(source.deleted && source.branches.is_empty()) {
                return;
            }
            self.release_bytes(source.stored_bytes());
            ancestor = source.ancestor.take();
            drop(source);
            self.detached.lock().retain(|(_, d)| !Arc::ptr_eq(d, &a.db));
        }
    }

    pub fn new() -> Self {
        Self::default()
    }

    /// A store taking commit times from `clock` (tests use [`Clock::tokio`]).
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            clock,
            ..Self::default()
        }
    }

    /// A store that refuses commits (`Full`, which clients see as `SQLITE_FULL`) that
    /// would take the page bytes it holds past `max_bytes`.
    pub fn with_max_memory(max_bytes: u64) -> Self {
        Self {
            max_bytes: Some(max_bytes),
            ..Self::default()
        }
    }

    fn release_bytes(&self, bytes: u64) {
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                Some(h.saturating_sub(bytes))
            });
    }

    fn db(&self, key: &DbKey) -> StoreResult<Arc<Mutex<MemDb>>> {
        let dbs = self.dbs.read();
        dbs.get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(key.name.clone()))
    }

    /// Runs `f` on one database under its lock.
    fn with_db<T>(
        &self,
        key: &DbKey,
        f: impl FnOnce(&mut MemDb) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let db = self.db(key)?;
        let mut db = db.lock();
        if db.deleted {
            return Err(StoreError::NotFound(key.name.clone()));
        }
        f(&mut db)
    }
}

#[async_trait]
impl PageStore for MemoryStore {
    async fn open(&self, key: &DbKey, create: bool) -> StoreResult<(DbState, bool)> {
        if let Ok(state) = self.with_db(key, |db| Ok(db.state())) {
            return Ok((state, false));
        }
        if !create {
            return Err(StoreError::NotFound(key.name.clone()));
        }
        let mut dbs = self.dbs.write();
        let created = !dbs.contains_key(key);
        let db = dbs
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Mutex::new(MemDb::new(self.clock.unix_ms()))));
        let state = db.lock().state();
        Ok((state, created))
    }

    async fn create(&self, key: &DbKey) -> StoreResult<DbInfo> {
        let mut dbs = self.dbs.write();
        if dbs.contains_key(key) {
            return Err(StoreError::AlreadyExists(key.name.clone()));
        }
        let db = MemDb::new(self.clock.unix_ms());
        let info = db.info(&key.name, self.clock.unix_ms());
        dbs.insert(key.clone(), Arc::new(Mutex::new(db)));
        Ok(info)
    }

    async fn delete(&self, key: &DbKey) -> StoreResult<()> {
        let db = self.dbs.write().remove(key);
        let db = db.ok_or_else(|| StoreError::NotFound(key.name.clone()))?;
        let mut locked = db.lock();
        locked.deleted = true;
        locked.clear_restore_points();
        if !locked.branches.is_empty() {
            // Branches read its pages: it stays, nameless, until the last one goes.
            drop(locked);
            self.detached.lock().push((key.tenant.clone(), db));
            return Ok(());
        }
        self.release_bytes(locked.stored_bytes());
        let ancestor = locked.ancestor.take();
        drop(locked);
        self.unhold(ancestor);
        Ok(())
    }

    async fn list(&self, tenant: &str) -> StoreResult<Vec<DbInfo>> {
        let dbs: Vec<_> = {
            let map = self.dbs.read();
            map.iter()
                .filter(|(k, _)| k.tenant == tenant)
                .map(|(k, db)| (k.name.clone(), db.clone()))
                .collect()
        };
        let now = self.clock.unix_ms();
        let mut infos: Vec<_> = dbs
            .iter()
            .map(|(name, db)| db.lock().info(name, now))
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }

    async fn info(&self, key: &DbKey) -> StoreResult<DbInfo> {
        self.with_db(key, |db| Ok(db.info(&key.name, self.clock.unix_ms())))
    }

    async fn acquire_lease_as(
        &self,
        key: &DbKey,
        client_id: &str,
        lease_id: LeaseId,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        let now = self.clock.unix_ms();
        self.with_db(key, |db| db.acquire(client_id, lease_id, ttl, now))
    }

    async fn renew_lease(
        &self,
        key: &DbKey,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.with_db(key, |db| {
            db.renew(lease_id, epoch, ttl, self.clock.unix_ms())
        })
    }

    async fn release_lease(&self, key: &DbKey, lease_id: LeaseId, epoch: u64) -> StoreResult<()> {
        let released = self.with_db(key, |db| {
            db.release(lease_id, epoch);
            Ok(())
        });
        match released {
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    async fn begin_read(&self, key: &DbKey, read: BeginRead) -> StoreResult<ReadView> {
        self.with_db(key, |db| db.begin_read(read, Instant::now()))
    }

    async fn read_pages(
        &self,
        key: &DbKey,
        version: Version,
        page_nos: &[u32],
        pin: PinTtl,
    ) -> StoreResult<PageRead> {
        self.with_db(key, |db| db.read(version, page_nos, pin, Instant::now()))
    }

    async fn precheck(
        &self,
        key: &DbKey,
        header: CommitHeader,
    ) -> StoreResult<Option<CommitOutcome>> {
        self.with_db(key, |db| {
            db.precheck(&header, &key.name, self.clock.unix_ms())
        })
    }

    async fn commit(&self, key: &DbKey, commit: Commit) -> StoreResult<CommitOutcome> {
        let now_unix_ms = self.clock.unix_ms();
        let bytes = commit
            .pages
            .iter()
            .map(|(_, d)| d.len() as u64)
            .fold(0, u64::saturating_add);
        let held = self.held.load(Ordering::Relaxed);
        if let Some(max) = self.max_bytes
            && held.saturating_add(bytes) > max
        {
            return Err(StoreError::Full(format!(
                "the memory store holds {} of page data and this commit brings {} \
                 (server limit --max-memory {}); nothing was changed",
                crate::quota::show_bytes(held),
                crate::quota::show_bytes(bytes),
                crate::quota::show_bytes(max)
            )));
        }
        let outcome = self.with_db(key, |db| db.commit(commit, &key.name, now_unix_ms))?;
        if !outcome.already_applied {
            self.held.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(outcome)
    }

    async fn gc(&self, now_unix_ms: i64, retention: Duration) -> StoreResult<GcStats> {
        self.gc_with(now_unix_ms, &Retention::uniform(retention))
            .await
    }

    async fn gc_with(&self, now_unix_ms: i64, retention: &Retention) -> StoreResult<GcStats> {
        let mut stats = GcStats::default();
        let mut all: Vec<_> = {
            let dbs = self.dbs.read();
            dbs.iter()
                .map(|(k, db)| (retention.of(&k.tenant), db.clone()))
                .collect()
        };
        // A detached source keeps only what its branches hold (and its newest version).
        let detached = self.detached.lock().clone();
        all.extend(detached.into_iter().map(|(_, db)| (Duration::ZERO, db)));
        for (i, (window, db)) in all.into_iter().enumerate() {
            if i > 0 && i % GC_BATCH == 0 {
                tokio::task::yield_now().await;
            }
            let mut db = db.lock();
            if !db.deleted || !db.branches.is_empty() {
                stats.add(db.gc(now_unix_ms, window, Instant::now()));
            }
        }
        self.release_bytes(stats.bytes_freed);
        Ok(stats)
    }

    async fn fork(&self, source: &DbKey, at: ReadAt, new: &DbKey) -> StoreResult<DbInfo> {
        let now = self.clock.unix_ms();
        let mut dbs = self.dbs.write();
        if dbs.contains_key(new) {
            return Err(StoreError::AlreadyExists(new.name.clone()));
        }
        let src = dbs
            .get(source)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(source.name.clone()))?;
        let mut locked = src.lock();
        if locked.deleted {
            return Err(StoreError::NotFound(source.name.clone()));
        }
        let state = locked.resolve(at)?;
        let db = if state.version == Version::ZERO {
            MemDb::new(now)
        } else {
            let depth = locked.depth() + 1;
            if depth > MAX_FORK_DEPTH {
                return Err(too_deep(&source.name));
            }
            *locked.branches.entry(state.version).or_default() += 1;
            let ancestor = db::Ancestor {
                db: src.clone(),
                version: state.version,
                depth,
            };
            MemDb::branch(now, state, ancestor)
        };
        drop(locked);
        let info = db.info(&new.name, now);
        dbs.insert(new.clone(), Arc::new(Mutex::new(db)));
        Ok(info)
    }

    async fn add_restore_point(
        &self,
        key: &DbKey,
        label: &str,
        at: ReadAt,
    ) -> StoreResult<RestorePoint> {
        let now = self.clock.unix_ms();
        self.with_db(key, |db| db.add_restore_point(&key.name, label, at, now))
    }

    async fn restore_points(&self, key: &DbKey) -> StoreResult<Vec<RestorePoint>> {
        self.with_db(key, |db| Ok(db.restore_points()))
    }

    async fn remove_restore_point(&self, key: &DbKey, label: &str) -> StoreResult<()> {
        self.with_db(key, |db| db.remove_restore_point(&key.name, label))
    }

    async fn detached_bytes(&self, tenant: &str) -> StoreResult<u64> {
        let detached = self.detached.lock().clone();
        Ok(detached
            .iter()
            .filter(|(t, _)| t == tenant)
            .map(|(_, db)| db.lock().stored_bytes())
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;
    use crate::store::Clock;
    use crate::store::conformance::{self, TestTime};

    // Every conformance test, on a store whose clocks follow tokio's paused clock.
    crate::conformance_tests! {
        #[tokio::test(start_paused = true)]
        fixture: Some(((), MemoryStore::with_clock(Clock::tokio()))),
        time: TestTime::Paused,
    }

    /// The production clock (wall time, real short sleeps): as-of-time still maps right.
    #[tokio::test]
    async fn as_of_time_with_the_system_clock() -> anyhow::Result<()> {
        conformance::as_of_time_picks_the_version_then(&MemoryStore::new()).await
    }
}
