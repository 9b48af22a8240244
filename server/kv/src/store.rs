//! [`KvStore`]: the [`PageStore`] over any [`Engine`]. Databases are loaded into memory
//! on first use ([`KvDb`]) and dropped again, least recently used first, past
//! [`KvStore::with_hot_limit`]'s bound (never while a reader pin on them is live). Each
//! operation runs under its database's lock, and its batch is durable before it answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pagewire_server_core::store::{
    BeginRead, Clock, Commit, CommitHeader, CommitOutcome, DbInfo, DbKey, DbState, GcStats, Lease,
    LeaseId, PageRead, PageStore, PinTtl, ReadView, StoreError, StoreResult, Version,
};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::db::KvDb;
use crate::engine::{Batch, Engine, EngineError};
use crate::keys::{self, DbId};
use crate::records::{self, Head};
use crate::store_error;

/// Databases kept in memory by default.
pub const DEFAULT_HOT_DATABASES: usize = 4096;

/// Databases a GC pass handles before yielding to other tasks.
const GC_BATCH: usize = 64;

/// Records of a deleted database removed per batch: a delete of any size is many
/// bounded batches (memory, journal records; FoundationDB's transaction limit), not
/// one.
const SWEEP_KEYS: usize = 1024;

/// A database's place in memory: `None` until loaded, and after it is dropped (a
/// caller that finds its slot no longer in the map starts over).
type Slot = Arc<tokio::sync::Mutex<Option<KvDb>>>;

#[derive(Default)]
struct Hot {
    slots: HashMap<DbKey, (Slot, u64)>,
    /// Bumped at every use: the order databases are dropped in.
    tick: u64,
}

/// The key-value page store.
pub struct KvStore {
    engine: Arc<dyn Engine>,
    hot: Mutex<Hot>,
    hot_limit: usize,
    clock: Clock,
}

impl KvStore {
    /// The store over `engine`: checks (and on an empty engine, writes) the format.
    pub async fn open(engine: Arc<dyn Engine>) -> StoreResult<Self> {
        check_format(engine.as_ref()).await?;
        Ok(Self {
            engine,
            hot: Mutex::default(),
            hot_limit: DEFAULT_HOT_DATABASES,
            clock: Clock::default(),
        })
    }

    /// Removes the records of deleted database `id`, [`SWEEP_KEYS`] per batch, then
    /// its marker. Nothing else writes them: the id is unreachable and never reused.
    async fn sweep(&self, id: DbId) -> StoreResult<()> {
        for tag in keys::PER_DATABASE {
            let (start, end) = keys::range(tag, id);
            loop {
                let doomed = self
                    .engine
                    .snapshot()
                    .and_then(|snap| snap.scan(&start, &end, false, SWEEP_KEYS))
                    .map_err(store_error)?;
                if doomed.is_empty() {
                    break;
                }
                let mut batch = Batch::default();
                for (key, _) in doomed {
                    batch.delete(key);
                }
                self.engine.write(batch).await.map_err(store_error)?;
            }
        }
        let mut batch = Batch::default();
        batch.delete(keys::deleted(id));
        self.engine.write(batch).await.map_err(store_error)
    }

    /// Finishes every delete a crash or an error cut short.
    async fn sweep_deleted(&self) -> StoreResult<()> {
        let (start, end) = keys::all_deleted();
        let markers = self
            .engine
            .snapshot()
            .and_then(|snap| snap.scan(&start, &end, false, usize::MAX))
            .map_err(store_error)?;
        for id in markers.iter().filter_map(|(k, _)| keys::deleted_id(k)) {
            self.sweep(id).await?;
        }
        Ok(())
    }

    /// Keeps at most about `limit` databases in memory (at least 1).
    pub fn with_hot_limit(mut self, limit: usize) -> Self {
        self.hot_limit = limit.max(1);
        self
    }

    /// Databases in memory now.
    pub fn hot_databases(&self) -> usize {
        self.hot.lock().slots.len()
    }

    fn slot(&self, key: &DbKey) -> Slot {
        let mut hot = self.hot.lock();
        hot.tick += 1;
        let tick = hot.tick;
        let entry = hot
            .slots
            .entry(key.clone())
            .or_insert_with(|| (Slot::default(), tick));
        entry.1 = tick;
        entry.0.clone()
    }

    fn is_current(&self, key: &DbKey, slot: &Slot) -> bool {
        self.hot
            .lock()
            .slots
            .get(key)
            .is_some_and(|(s, _)| Arc::ptr_eq(s, slot))
    }

    fn forget(&self, key: &DbKey, slot: &Slot) {
        let mut hot = self.hot.lock();
        if hot
            .slots
            .get(key)
            .is_some_and(|(s, _)| Arc::ptr_eq(s, slot))
        {
            hot.slots.remove(key);
        }
    }

    /// Runs `f` on the database `key` (loaded when cold; `create` makes a missing one),
    /// then writes the batch `f` returns. A failed write drops the database from
    /// memory: the next call loads what the engine holds.
    async fn with_db<T>(
        &self,
        key: &DbKey,
        create: bool,
        f: impl FnOnce(&mut KvDb, bool) -> StoreResult<(T, Option<Batch>)>,
    ) -> StoreResult<T> {
        loop {
            let slot = self.slot(key);
            let mut guard = slot.lock().await;
            if !self.is_current(key, &slot) {
                continue; // dropped while we waited: start over on the new slot
            }
            let mut created = false;
            if guard.is_none() {
                match self.load(key)? {
                    Some(db) => *guard = Some(db),
                    None if create => {
                        let catalog = keys::catalog(&key.tenant, &key.name);
                        let (db, batch) = KvDb::create(catalog, self.clock.unix_ms());
                        *guard = Some(db);
                        self.write_or_drop(key, &slot, &mut guard, batch).await?;
                        created = true;
                    }
                    None => {
                        drop(guard);
                        self.forget(key, &slot);
                        return Err(StoreError::NotFound(key.name.clone()));
                    }
                }
            }
            let Some(db) = guard.as_mut() else {
                continue;
            };
            let (value, batch) = f(db, created)?;
            if let Some(batch) = batch {
                self.write_or_drop(key, &slot, &mut guard, batch).await?;
            }
            drop(guard);
            self.evict_cold();
            return Ok(value);
        }
    }

    /// Writes `batch`; when that fails, drops the database from memory (it may be
    /// ahead of the engine now) so the next call loads what the engine holds.
    async fn write_or_drop(
        &self,
        key: &DbKey,
        slot: &Slot,
        guard: &mut tokio::sync::MutexGuard<'_, Option<KvDb>>,
        batch: Batch,
    ) -> StoreResult<()> {
        let Err(e) = self.engine.write(batch).await else {
            return Ok(());
        };
        **guard = None;
        self.forget(key, slot);
        Err(store_error(e))
    }

    /// The database `key` as the engine holds it, `None` when it does not exist.
    fn load(&self, key: &DbKey) -> StoreResult<Option<KvDb>> {
        let snap = self.engine.snapshot().map_err(store_error)?;
        let Some(id) = snap
            .get(&keys::catalog(&key.tenant, &key.name))
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let id = records::u64_value("database id", &id).map_err(store_error)?;
        let head = snap
            .get(&keys::head(id))
            .map_err(store_error)?
            .ok_or_else(|| {
                store_error(EngineError::Corrupt(format!(
                    "database {key}: its head record is missing"
                )))
            })?;
        KvDb::load(snap.as_ref(), id, head)
            .map(Some)
            .map_err(store_error)
    }

    /// Drops least recently used databases past the bound, skipping busy ones and ones
    /// with live reader pins.
    fn evict_cold(&self) {
        let mut hot = self.hot.lock();
        if hot.slots.len() <= self.hot_limit {
            return;
        }
        // Down to 7/8 of the bound: the sort below then runs once per hot_limit/8
        // new databases, not at every call (measured: at the bound, a sort of 4,096
        // keys per operation made filling 100,000 databases 20 times slower).
        let excess = hot.slots.len() - (self.hot_limit - self.hot_limit / 8);
        let mut by_age: Vec<(u64, &DbKey)> = hot.slots.iter().map(|(k, (_, t))| (*t, k)).collect();
        by_age.sort_unstable_by_key(|(t, _)| *t);
        let now = Instant::now();
        let mut doomed = Vec::with_capacity(excess);
        for (_, key) in by_age {
            if doomed.len() == excess {
                break;
            }
            let Some((slot, _)) = hot.slots.get(key) else {
                continue;
            };
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            if guard.as_ref().is_some_and(|db| !db.evictable(now)) {
                continue;
            }
            *guard = None;
            doomed.push(key.clone());
        }
        for key in doomed {
            hot.slots.remove(&key);
        }
    }

    /// Every database: (key, id, head) from one snapshot.
    fn catalog(&self) -> StoreResult<Vec<(DbKey, DbId, Head)>> {
        let snap = self.engine.snapshot().map_err(store_error)?;
        let (start, end) = keys::all_catalog();
        let mut all = Vec::new();
        for (key, id) in snap
            .scan(&start, &end, false, usize::MAX)
            .map_err(store_error)?
        {
            let Some((tenant, name)) = keys::catalog_entry(&key) else {
                continue;
            };
            let id = records::u64_value("database id", &id).map_err(store_error)?;
            let Some(head) = snap.get(&keys::head(id)).map_err(store_error)? else {
                continue;
            };
            let head: Head = records::decode("database head", &head).map_err(store_error)?;
            all.push((DbKey::new(tenant, name), id, head));
        }
        Ok(all)
    }
}

/// Writes the format version into an empty engine; refuses one written by a newer
/// build. (Format 1 is the first: there is nothing older to migrate yet. A migration
/// goes here, run before the store serves.)
async fn check_format(engine: &dyn Engine) -> StoreResult<()> {
    let found = engine
        .snapshot()
        .map_err(store_error)?
        .get(keys::FORMAT_KEY)
        .map_err(store_error)?;
    match found {
        None => {
            let mut batch = Batch::default();
            batch.expect(keys::FORMAT_KEY.to_vec(), None);
            batch.put(
                keys::FORMAT_KEY.to_vec(),
                keys::FORMAT.to_be_bytes().to_vec(),
            );
            engine.write(batch).await.map_err(store_error)
        }
        Some(bytes) => {
            let format = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| {
                    StoreError::Internal(format!(
                        "{}: the format record is {} bytes",
                        engine.describe(),
                        bytes.len()
                    ))
                })?;
            if format > keys::FORMAT {
                return Err(StoreError::Internal(format!(
                    "{} was written by a newer pagewire server (data format {format}; this one reads up to {}): upgrade this server",
                    engine.describe(),
                    keys::FORMAT
                )));
            }
            Ok(())
        }
    }
}

#[async_trait]
impl PageStore for KvStore {
    async fn open(&self, key: &DbKey, create: bool) -> StoreResult<(DbState, bool)> {
        self.with_db(key, create, |db, created| Ok(((db.state(), created), None)))
            .await
    }

    async fn create(&self, key: &DbKey) -> StoreResult<DbInfo> {
        let now = self.clock.unix_ms();
        self.with_db(key, true, |db, created| {
            if !created {
                return Err(StoreError::AlreadyExists(key.name.clone()));
            }
            Ok((db.info(&key.name, now), None))
        })
        .await
    }

    async fn delete(&self, key: &DbKey) -> StoreResult<()> {
        loop {
            let slot = self.slot(key);
            let mut guard = slot.lock().await;
            if !self.is_current(key, &slot) {
                continue;
            }
            if guard.is_none() {
                *guard = self.load(key)?;
            }
            let Some(db) = guard.take() else {
                drop(guard);
                self.forget(key, &slot);
                return Err(StoreError::NotFound(key.name.clone()));
            };
            let catalog = keys::catalog(&key.tenant, &key.name);
            let mut batch = Batch::default();
            batch.expect(catalog.clone(), Some(db.id.to_be_bytes().to_vec()));
            batch.expect(keys::head(db.id), Some(db.head_bytes().to_vec()));
            // Gone at once (no catalog entry, no head); its other records are swept
            // after, in bounded batches, and again by GC if this one is cut short.
            batch.delete(catalog);
            batch.delete(keys::head(db.id));
            batch.put(keys::deleted(db.id), Vec::new());
            let written = self.engine.write(batch).await;
            drop(guard);
            self.forget(key, &slot);
            written.map_err(store_error)?;
            if let Err(e) = self.sweep(db.id).await {
                tracing::warn!(
                    db = db.id,
                    "removing a deleted database's records: {e} (GC retries)"
                );
            }
            return Ok(());
        }
    }

    async fn list(&self, tenant: &str) -> StoreResult<Vec<DbInfo>> {
        let snap = self.engine.snapshot().map_err(store_error)?;
        let prefix = keys::catalog_prefix(tenant);
        let now = self.clock.unix_ms();
        let mut infos = Vec::new();
        let entries = snap
            .scan(&prefix, &keys::prefix_end(&prefix), false, usize::MAX)
            .map_err(store_error)?;
        for (key, id) in entries {
            let Some(name) = keys::catalog_name(&prefix, &key) else {
                continue;
            };
            let id = records::u64_value("database id", &id).map_err(store_error)?;
            let Some(head) = snap.get(&keys::head(id)).map_err(store_error)? else {
                continue;
            };
            let head: Head = records::decode("database head", &head).map_err(store_error)?;
            infos.push(head.info(&name, now));
        }
        Ok(infos)
    }

    async fn info(&self, key: &DbKey) -> StoreResult<DbInfo> {
        let now = self.clock.unix_ms();
        self.with_db(key, false, |db, _| Ok((db.info(&key.name, now), None)))
            .await
    }

    async fn acquire_lease(
        &self,
        key: &DbKey,
        client_id: &str,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        let now = self.clock.unix_ms();
        self.with_db(key, false, |db, _| {
            let (lease, batch) = db.acquire(client_id, ttl, now)?;
            Ok((lease, Some(batch)))
        })
        .await
    }

    async fn renew_lease(
        &self,
        key: &DbKey,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        let now = self.clock.unix_ms();
        self.with_db(key, false, |db, _| {
            let (lease, batch) = db.renew(lease_id, epoch, ttl, now)?;
            Ok((lease, Some(batch)))
        })
        .await
    }

    async fn release_lease(&self, key: &DbKey, lease_id: LeaseId, epoch: u64) -> StoreResult<()> {
        let released = self
            .with_db(key, false, |db, _| Ok(((), db.release(lease_id, epoch))))
            .await;
        match released {
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    async fn begin_read(&self, key: &DbKey, read: BeginRead) -> StoreResult<ReadView> {
        self.with_db(key, false, |db, _| {
            Ok((db.begin_read(read, Instant::now())?, None))
        })
        .await
    }

    async fn read_pages(
        &self,
        key: &DbKey,
        version: Version,
        page_nos: &[u32],
        pin: PinTtl,
    ) -> StoreResult<PageRead> {
        let engine = self.engine.clone();
        self.with_db(key, false, |db, _| {
            let snap = engine.snapshot().map_err(store_error)?;
            Ok((
                db.read(snap.as_ref(), version, page_nos, pin, Instant::now())?,
                None,
            ))
        })
        .await
    }

    async fn precheck(
        &self,
        key: &DbKey,
        header: CommitHeader,
    ) -> StoreResult<Option<CommitOutcome>> {
        let now = self.clock.unix_ms();
        self.with_db(key, false, |db, _| {
            Ok((db.precheck(&header, &key.name, now)?, None))
        })
        .await
    }

    async fn commit(&self, key: &DbKey, commit: Commit) -> StoreResult<CommitOutcome> {
        let now = self.clock.unix_ms();
        self.with_db(key, false, |db, _| db.commit(commit, &key.name, now))
            .await
    }

    async fn gc(&self, now_unix_ms: i64, retention: Duration) -> StoreResult<GcStats> {
        self.sweep_deleted().await?;
        let mut stats = GcStats::default();
        let catalog = self.catalog()?;
        for (i, (key, _, head)) in catalog.into_iter().enumerate() {
            if i > 0 && i % GC_BATCH == 0 {
                tokio::task::yield_now().await;
            }
            let hot = self.hot.lock().slots.contains_key(&key);
            if !hot && !head.gc_may_collect(now_unix_ms, retention) {
                stats.databases += 1;
                continue;
            }
            let pass = self
                .with_db(&key, false, |db, _| {
                    Ok(db.gc(now_unix_ms, retention, Instant::now()))
                })
                .await;
            match pass {
                Ok(pass) => stats.add(pass),
                Err(StoreError::NotFound(_)) => {} // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(stats)
    }
}
