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
    LeaseId, MAX_FORK_DEPTH, PageRead, PageStore, PinTtl, ReadAt, ReadView, RestorePoint,
    Retention, StoreError, StoreResult, Version, too_deep,
};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::db::KvDb;
use crate::engine::{Batch, Engine, EngineError, Snapshot};
use crate::keys::{self, DbId, StageId};
use crate::plan::{Budget, Writes};
use crate::records::{self, AncestorRecord, Head, StageRecord};
use crate::store_error;

/// Databases kept in memory by default.
pub const DEFAULT_HOT_DATABASES: usize = 4096;

/// Databases a GC pass handles before yielding to other tasks.
const GC_BATCH: usize = 64;

/// Records of a deleted database removed per batch: a delete of any size is many
/// bounded batches (memory, journal records; FoundationDB's transaction limit), not
/// one.
const SWEEP_KEYS: usize = 1024;

/// Catalog entries read per snapshot while listing (FoundationDB ends a transaction
/// after 5 s; a head read costs a round trip there).
const CATALOG_PAGE: usize = 1024;

/// Times an operation runs again after a conflict (another writer changed the
/// database first: it reloads and decides again) or an expired snapshot.
const RETRIES: usize = 16;

/// How long a stage may wait to publish before GC takes it for abandoned, even when
/// nothing else says so (its base still current, its lease still the newest).
const STAGE_MAX_AGE_MS: i64 = 3_600_000;

/// How long a stage whose lease is no longer live may wait (its writer died, or is
/// still staging while its renewals wait behind the commit: so not at once).
const STAGE_IDLE_MS: i64 = 300_000;

/// What an operation on a database sees besides the database.
pub struct Ctx<'a> {
    /// Whether this call created the database.
    pub created: bool,
    /// A snapshot taken after the database was found current: what it reads pages from.
    pub snap: &'a dyn Snapshot,
}

/// Why one attempt of an operation failed: an engine error (maybe retried) or the
/// operation's own answer.
enum Failed {
    Engine(EngineError),
    Store(StoreError),
}

impl From<EngineError> for Failed {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

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
    budget: Budget,
    hot: Mutex<Hot>,
    hot_limit: usize,
    clock: Clock,
}

impl KvStore {
    /// The store over `engine`: checks (and on an empty engine, writes) the format.
    pub async fn open(engine: Arc<dyn Engine>) -> StoreResult<Self> {
        let budget = Budget::of(engine.limits());
        check_format(engine.as_ref(), &budget).await?;
        Ok(Self {
            budget,
            engine,
            hot: Mutex::default(),
            hot_limit: DEFAULT_HOT_DATABASES,
            clock: Clock::default(),
        })
    }

    /// Removes every key in `[start, end)`, [`SWEEP_KEYS`] per batch.
    async fn clear(&self, start: &[u8], end: &[u8]) -> Result<(), EngineError> {
        loop {
            let doomed = self
                .engine
                .snapshot()
                .and_then(|snap| snap.scan(start, end, false, SWEEP_KEYS))?;
            if doomed.is_empty() {
                return Ok(());
            }
            let mut batch = Batch::default();
            for (key, _) in doomed {
                batch.delete(key);
            }
            self.engine.write(batch).await?;
        }
    }

    /// Removes the records of deleted database `id` in bounded batches, then its
    /// marker. Nothing else writes them: the id is unreachable and never reused.
    async fn sweep(&self, id: DbId) -> StoreResult<()> {
        for tag in keys::PER_DATABASE {
            let (start, end) = keys::range(tag, id);
            self.clear(&start, &end).await.map_err(store_error)?;
        }
        let mut batch = Batch::default();
        batch.delete(keys::deleted(id));
        self.engine.write(batch).await.map_err(store_error)
    }

    /// Removes stage `stage` of database `id` if it is unpublished: its marker becomes
    /// [`doomed`] first (so a writer still staging into it, or its publish, fails),
    /// then its records go, then the marker. A published stage has no marker and is
    /// left alone; a crash midway leaves a doomed marker, which GC finishes.
    async fn drop_stage(&self, id: DbId, stage: &StageId) -> Result<(), EngineError> {
        let marker = keys::stage(id, stage);
        let Some(record) = self.engine.snapshot()?.get(&marker)? else {
            return Ok(());
        };
        let doomed = doomed();
        if record != doomed {
            let mut batch = Batch::default();
            batch.expect(marker.clone(), Some(record));
            batch.put(marker.clone(), doomed.clone());
            self.engine.write(batch).await?;
        }
        for (start, end) in keys::stage_records(id, stage) {
            self.clear(&start, &end).await?;
        }
        let mut batch = Batch::default();
        batch.expect(marker.clone(), Some(doomed));
        batch.delete(marker);
        self.engine.write(batch).await
    }

    /// Collects the stages of commits that can never publish: their database is gone
    /// or past their base version, a newer lease was granted, or they are older than
    /// [`STAGE_MAX_AGE_MS`]. Returns how many it collected.
    async fn collect_stages(&self, now_unix_ms: i64) -> StoreResult<usize> {
        let (start, end) = keys::all_stages();
        let mut doomed = Vec::new();
        {
            let snap = self.engine.snapshot().map_err(store_error)?;
            for (key, value) in snap
                .scan(&start, &end, false, usize::MAX)
                .map_err(store_error)?
            {
                let Some((id, stage)) = keys::stage_of(&key) else {
                    continue;
                };
                let record: StageRecord = records::decode("stage", &value).map_err(store_error)?;
                let head = match snap.get(&keys::head(id)).map_err(store_error)? {
                    Some(bytes) => Some(
                        records::decode::<Head>("database head", &bytes).map_err(store_error)?,
                    ),
                    None => None,
                };
                let age = now_unix_ms.saturating_sub(record.created_unix_ms);
                let dead = head.is_none_or(|h| {
                    let lease_live = h
                        .lease
                        .live(now_unix_ms)
                        .is_some_and(|l| l.epoch == record.epoch);
                    h.version != record.base
                        || h.lease.max_epoch() > record.epoch
                        || (!lease_live && age > STAGE_IDLE_MS)
                        || age > STAGE_MAX_AGE_MS
                });
                if dead {
                    doomed.push((id, stage));
                }
            }
        }
        let mut collected = 0;
        for (id, stage) in &doomed {
            match self.drop_stage(*id, stage).await {
                Ok(()) => collected += 1,
                // It published (or another server collects it) meanwhile.
                Err(EngineError::Conflict) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        Ok(collected)
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

    /// The detached databases (deleted, kept for their branches): (id, tenant).
    fn detached(&self) -> StoreResult<Vec<(DbId, String)>> {
        let (start, end) = keys::all_detached();
        let snap = self.engine.snapshot().map_err(store_error)?;
        let found = snap
            .scan(&start, &end, false, usize::MAX)
            .map_err(store_error)?;
        Ok(found
            .into_iter()
            .filter_map(|(k, v)| Some((keys::detached_id(&k)?, String::from_utf8(v).ok()?)))
            .collect())
    }

    /// Deletes the detached databases no branch reads any more (their last branch was
    /// deleted), then theirs, and so on towards the root: one pass per level.
    async fn collect_detached(&self) -> StoreResult<()> {
        for _ in 0..=MAX_FORK_DEPTH {
            let mut gone = Vec::new();
            for (id, _) in self.detached()? {
                let snap = self.engine.snapshot().map_err(store_error)?;
                let (start, end) = keys::branch_points(id);
                if !snap
                    .scan(&start, &end, false, 1)
                    .map_err(store_error)?
                    .is_empty()
                {
                    continue;
                }
                let ancestor = snap.get(&keys::ancestor(id)).map_err(store_error)?;
                let mut batch = Batch::default();
                batch.expect(start.clone(), None); // no branch point appeared meanwhile
                batch.delete(keys::detached(id));
                batch.delete(keys::head(id));
                batch.put(keys::deleted(id), Vec::new());
                if let Some(bytes) = ancestor {
                    let a: AncestorRecord =
                        records::decode("branch source", &bytes).map_err(store_error)?;
                    batch.delete(keys::branch_point(a.id, a.version, id));
                }
                match self.engine.write(batch).await {
                    Ok(()) => gone.push(id),
                    Err(EngineError::Conflict) => {}
                    Err(e) => return Err(store_error(e)),
                }
            }
            if gone.is_empty() {
                return Ok(());
            }
            for id in gone {
                self.sweep(id).await?;
            }
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
    /// then writes what `f` returns. A failed write drops the database from memory:
    /// the next call loads what the engine holds. When another writer got there first
    /// (a conflict) or a snapshot expired, `f` runs again on what the engine holds now.
    async fn with_db<T>(
        &self,
        key: &DbKey,
        create: bool,
        mut f: impl FnMut(&mut KvDb, &Ctx<'_>) -> StoreResult<(T, Option<Writes>)>,
    ) -> StoreResult<T> {
        let mut retries = 0;
        loop {
            let slot = self.slot(key);
            let mut guard = slot.lock().await;
            if !self.is_current(key, &slot) {
                continue; // dropped while we waited: start over on the new slot
            }
            let attempt = self.attempt(key, create, &slot, &mut guard, &mut f).await;
            drop(guard);
            match attempt {
                Ok(value) => {
                    self.evict_cold();
                    return Ok(value);
                }
                Err(Failed::Engine(EngineError::Conflict | EngineError::TooOld))
                    if retries < RETRIES =>
                {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(rand::random_range(
                        0..=retries as u64,
                    )))
                    .await;
                }
                Err(Failed::Engine(e)) => return Err(store_error(e)),
                Err(Failed::Store(e)) => return Err(e),
            }
        }
    }

    /// One try of [`Self::with_db`], under the database's lock.
    async fn attempt<T>(
        &self,
        key: &DbKey,
        create: bool,
        slot: &Slot,
        guard: &mut tokio::sync::MutexGuard<'_, Option<KvDb>>,
        f: &mut impl FnMut(&mut KvDb, &Ctx<'_>) -> StoreResult<(T, Option<Writes>)>,
    ) -> Result<T, Failed> {
        let mut created = false;
        let mut snap = self.engine.snapshot()?;
        if !self.engine.exclusive()
            && guard.is_some()
            && !self.still_current(key, guard, snap.as_ref())?
        {
            **guard = None; // another server changed it: load it again
        }
        if guard.is_none() {
            match self.load(key, snap.as_ref())? {
                Some(db) => **guard = Some(db),
                None if create => {
                    let catalog = keys::catalog(&key.tenant, &key.name);
                    let (db, batch) = KvDb::create(catalog, self.clock.unix_ms(), self.budget);
                    **guard = Some(db);
                    drop(snap);
                    self.write_or_drop(key, slot, guard, Writes::one(batch))
                        .await?;
                    snap = self.engine.snapshot()?;
                    created = true;
                }
                None => {
                    self.forget(key, slot);
                    return Err(StoreError::NotFound(key.name.clone()).into());
                }
            }
        }
        let Some(db) = guard.as_mut() else {
            return Err(EngineError::Conflict.into());
        };
        let (value, writes) = f(
            db,
            &Ctx {
                created,
                snap: snap.as_ref(),
            },
        )?;
        drop(snap);
        if let Some(writes) = writes {
            self.write_or_drop(key, slot, guard, writes).await?;
        }
        Ok(value)
    }

    /// Whether the database in memory is still the one the engine holds at `snap`
    /// (same id, same head): what another server may have changed.
    fn still_current(
        &self,
        key: &DbKey,
        guard: &tokio::sync::MutexGuard<'_, Option<KvDb>>,
        snap: &dyn Snapshot,
    ) -> Result<bool, EngineError> {
        let Some(db) = guard.as_ref() else {
            return Ok(false);
        };
        let id = snap.get(&keys::catalog(&key.tenant, &key.name))?;
        if id.as_deref() != Some(&db.id.to_be_bytes()[..]) {
            return Ok(false);
        }
        Ok(snap.get(&keys::head(db.id))?.as_deref() == Some(db.head_bytes()))
    }

    /// Writes `writes` in order; when that fails, drops the database from memory (it
    /// may be ahead of the engine now) so the next call loads what the engine holds,
    /// and removes what a failed staged commit staged.
    async fn write_or_drop(
        &self,
        key: &DbKey,
        slot: &Slot,
        guard: &mut tokio::sync::MutexGuard<'_, Option<KvDb>>,
        writes: Writes,
    ) -> Result<(), EngineError> {
        let mut failed = None;
        for batch in writes.batches {
            if let Err(e) = self.engine.write(batch).await {
                failed = Some(e);
                break;
            }
        }
        let Some(e) = failed else {
            if writes.gone {
                **guard = None;
                self.forget(key, slot);
            }
            return Ok(());
        };
        **guard = None;
        self.forget(key, slot);
        if let Some((id, stage)) = writes.stage
            && let Err(cleanup) = self.drop_stage(id, &stage).await
        {
            tracing::warn!(
                db = id,
                "removing a failed commit's staged pages: {cleanup} (GC retries)"
            );
        }
        Err(e)
    }

    /// The database `key` as the engine holds it at `snap`, `None` when it does not
    /// exist.
    fn load(&self, key: &DbKey, snap: &dyn Snapshot) -> Result<Option<KvDb>, Failed> {
        let Some(id) = snap.get(&keys::catalog(&key.tenant, &key.name))? else {
            return Ok(None);
        };
        let id = records::u64_value("database id", &id)?;
        let head = snap.get(&keys::head(id))?.ok_or_else(|| {
            EngineError::Corrupt(format!("database {key}: its head record is missing"))
        })?;
        Ok(Some(KvDb::load(snap, id, head, self.budget)?))
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

    /// The catalog entries under `prefix` with their heads, [`CATALOG_PAGE`] per
    /// snapshot (so no snapshot outlives FoundationDB's 5 s; a database created or
    /// deleted meanwhile may or may not be listed, as with any listing).
    fn catalog_under(&self, prefix: &[u8]) -> StoreResult<Vec<(Vec<u8>, DbId, Head)>> {
        let end = keys::prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut all = Vec::new();
        loop {
            let snap = self.engine.snapshot().map_err(store_error)?;
            let page = snap
                .scan(&from, &end, false, CATALOG_PAGE)
                .map_err(store_error)?;
            let next = match page.last() {
                Some((last, _)) if page.len() == CATALOG_PAGE => Some(piece_after(last)),
                _ => None,
            };
            for (key, id) in page {
                let id = records::u64_value("database id", &id).map_err(store_error)?;
                if let Some(head) = snap.get(&keys::head(id)).map_err(store_error)? {
                    let head: Head =
                        records::decode("database head", &head).map_err(store_error)?;
                    all.push((key, id, head));
                }
            }
            match next {
                Some(next) => from = next,
                None => return Ok(all),
            }
        }
    }

    /// Every database: (key, id, head).
    fn catalog(&self) -> StoreResult<Vec<(DbKey, DbId, Head)>> {
        let (start, _) = keys::all_catalog();
        Ok(self
            .catalog_under(&start)?
            .into_iter()
            .filter_map(|(key, id, head)| {
                let (tenant, name) = keys::catalog_entry(&key)?;
                Some((DbKey::new(tenant, name), id, head))
            })
            .collect())
    }
}

/// The first key after `key`.
fn piece_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The marker of a stage being removed: no stage publishes from it.
fn doomed() -> Vec<u8> {
    records::encode(&StageRecord {
        base: u64::MAX,
        epoch: u64::MAX,
        created_unix_ms: 0,
    })
}

/// Writes the format into an empty engine, and raises format 1 to 2 when this store
/// may stage commits (an engine with limits: see [`keys::FORMAT_STAGED`]); refuses one
/// written by a newer build.
async fn check_format(engine: &dyn Engine, budget: &Budget) -> StoreResult<()> {
    let want = if budget.batch.is_some() || budget.value.is_some() {
        keys::FORMAT_STAGED
    } else {
        keys::FORMAT_WHOLE
    };
    ensure_format(engine, want).await
}

/// Refuses a format newer than this build's; raises an older one to `want`.
async fn ensure_format(engine: &dyn Engine, want: u32) -> StoreResult<()> {
    let found = engine
        .snapshot()
        .map_err(store_error)?
        .get(keys::FORMAT_KEY)
        .map_err(store_error)?;
    let format = match &found {
        None => None,
        Some(bytes) => Some(
            <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| {
                    StoreError::Internal(format!(
                        "{}: the format record is {} bytes",
                        engine.describe(),
                        bytes.len()
                    ))
                })?,
        ),
    };
    if let Some(format) = format
        && format > keys::FORMAT
    {
        return Err(StoreError::Internal(format!(
            "{} was written by a newer pagewire server (data format {format}; this one reads up to {}): upgrade this server",
            engine.describe(),
            keys::FORMAT
        )));
    }
    if format.is_some_and(|f| f >= want) {
        return Ok(());
    }
    let mut batch = Batch::default();
    batch.expect(keys::FORMAT_KEY.to_vec(), found);
    batch.put(keys::FORMAT_KEY.to_vec(), want.to_be_bytes().to_vec());
    match engine.write(batch).await {
        // Another server raised it meanwhile: look again.
        Err(EngineError::Conflict) => Box::pin(raise_format(engine, want)).await,
        other => other.map_err(store_error),
    }
}

/// Raises the stored format to at least `want` (see [`keys::FORMAT_BRANCHES`]).
async fn raise_format(engine: &dyn Engine, want: u32) -> StoreResult<()> {
    ensure_format(engine, want).await
}

#[async_trait]
impl PageStore for KvStore {
    async fn open(&self, key: &DbKey, create: bool) -> StoreResult<(DbState, bool)> {
        self.with_db(key, create, |db, ctx| Ok(((db.state(), ctx.created), None)))
            .await
    }

    async fn create(&self, key: &DbKey) -> StoreResult<DbInfo> {
        let now = self.clock.unix_ms();
        self.with_db(key, true, |db, ctx| {
            if !ctx.created {
                return Err(StoreError::AlreadyExists(key.name.clone()));
            }
            Ok((db.info(&key.name, now), None))
        })
        .await
    }

    async fn delete(&self, key: &DbKey) -> StoreResult<()> {
        let catalog = keys::catalog(&key.tenant, &key.name);
        let swept = self
            .with_db(key, false, |db, _| {
                let mut batch = Batch::default();
                batch.expect(catalog.clone(), Some(db.id.to_be_bytes().to_vec()));
                batch.expect(keys::head(db.id), Some(db.head_bytes().to_vec()));
                batch.delete(catalog.clone());
                if db.branches.is_empty() {
                    // Gone at once (no catalog entry, no head); its other records are
                    // swept after, in bounded batches, and again by GC if this one is
                    // cut short. A branch lets go of its source's version.
                    batch.delete(keys::head(db.id));
                    batch.put(keys::deleted(db.id), Vec::new());
                    if let Some(a) = db.ancestor {
                        batch.delete(keys::branch_point(a.id, a.version, db.id));
                    }
                } else {
                    // Branches read its pages: it stays, nameless, until the last
                    // one goes (GC then deletes it, see `collect_detached`).
                    let (start, end) = keys::restore_points(db.id);
                    batch.delete_range(start, end);
                    batch.put(keys::detached(db.id), key.tenant.as_bytes().to_vec());
                }
                let mut writes = Writes::one(batch);
                writes.gone = true;
                Ok((db.branches.is_empty().then_some(db.id), Some(writes)))
            })
            .await?;
        let Some(id) = swept else { return Ok(()) };
        if let Err(e) = self.sweep(id).await {
            tracing::warn!(
                db = id,
                "removing a deleted database's records: {e} (GC retries)"
            );
        }
        Ok(())
    }

    async fn list(&self, tenant: &str) -> StoreResult<Vec<DbInfo>> {
        let prefix = keys::catalog_prefix(tenant);
        let now = self.clock.unix_ms();
        Ok(self
            .catalog_under(&prefix)?
            .into_iter()
            .filter_map(|(key, _, head)| Some(head.info(&keys::catalog_name(&prefix, &key)?, now)))
            .collect())
    }

    async fn info(&self, key: &DbKey) -> StoreResult<DbInfo> {
        let now = self.clock.unix_ms();
        self.with_db(key, false, |db, _| Ok((db.info(&key.name, now), None)))
            .await
    }

    async fn acquire_lease_as(
        &self,
        key: &DbKey,
        client_id: &str,
        lease_id: LeaseId,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        let now = self.clock.unix_ms();
        self.with_db(key, false, |db, _| {
            let (lease, batch) = db.acquire(client_id, lease_id, ttl, now)?;
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
        self.with_db(key, false, |db, ctx| {
            Ok((
                db.read(ctx.snap, version, page_nos, pin, Instant::now())?,
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
        // Cloned per attempt (the pages are shared, not copied): a conflict decides again.
        self.with_db(key, false, |db, _| {
            db.commit(commit.clone(), &key.name, now)
        })
        .await
    }

    async fn gc(&self, now_unix_ms: i64, retention: Duration) -> StoreResult<GcStats> {
        self.gc_with(now_unix_ms, &Retention::uniform(retention))
            .await
    }

    async fn gc_with(&self, now_unix_ms: i64, retention: &Retention) -> StoreResult<GcStats> {
        self.sweep_deleted().await?;
        let stages = self.collect_stages(now_unix_ms).await?;
        if stages > 0 {
            tracing::info!(
                stages,
                "collected the staged pages of commits that never published"
            );
        }
        self.collect_detached().await?;
        let mut stats = GcStats::default();
        let catalog = self.catalog()?;
        for (i, (key, _, head)) in catalog.into_iter().enumerate() {
            if i > 0 && i % GC_BATCH == 0 {
                tokio::task::yield_now().await;
            }
            let retention = retention.of(&key.tenant);
            let hot = self.hot.lock().slots.contains_key(&key);
            if !hot && !head.gc_may_collect(now_unix_ms, retention) {
                stats.databases += 1;
                continue;
            }
            let pass = self
                .with_db(&key, false, |db, ctx| {
                    db.reload_branches(ctx.snap).map_err(store_error)?;
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

    async fn fork(&self, source: &DbKey, at: ReadAt, new: &DbKey) -> StoreResult<DbInfo> {
        raise_format(self.engine.as_ref(), keys::FORMAT_BRANCHES).await?;
        let catalog = keys::catalog(&new.tenant, &new.name);
        let (now, budget) = (self.clock.unix_ms(), self.budget);
        let empty = self
            .with_db(source, false, |db, ctx| {
                if ctx.snap.get(&catalog).map_err(store_error)?.is_some() {
                    return Err(StoreError::AlreadyExists(new.name.clone()));
                }
                let state = db.resolve(at)?;
                if state.version == Version::ZERO {
                    return Ok((true, None));
                }
                let depth = db.depth() + 1;
                if depth > MAX_FORK_DEPTH {
                    return Err(too_deep(&source.name));
                }
                let child: DbId = rand::random();
                let record = AncestorRecord {
                    id: db.id,
                    version: state.version.0,
                    inherited: state.page_count,
                    depth: depth as u32,
                };
                let mut batch =
                    KvDb::branch(child, catalog.clone(), now, budget, record, state.page_size);
                db.add_branch(state.version, child, &mut batch);
                Ok((false, Some(Writes::one(batch))))
            })
            .await?;
        if empty {
            return self.create(new).await;
        }
        self.info(new).await
    }

    async fn add_restore_point(
        &self,
        key: &DbKey,
        label: &str,
        at: ReadAt,
    ) -> StoreResult<RestorePoint> {
        raise_format(self.engine.as_ref(), keys::FORMAT_BRANCHES).await?;
        let now = self.clock.unix_ms();
        self.with_db(key, false, |db, _| {
            let (point, writes) = db.add_restore_point(&key.name, label, at, now)?;
            Ok((point, Some(writes)))
        })
        .await
    }

    async fn restore_points(&self, key: &DbKey) -> StoreResult<Vec<RestorePoint>> {
        self.with_db(key, false, |db, _| Ok((db.restore_points(), None)))
            .await
    }

    async fn remove_restore_point(&self, key: &DbKey, label: &str) -> StoreResult<()> {
        self.with_db(key, false, |db, _| {
            Ok(((), Some(db.remove_restore_point(&key.name, label)?)))
        })
        .await
    }

    async fn detached_bytes(&self, tenant: &str) -> StoreResult<u64> {
        let snap = self.engine.snapshot().map_err(store_error)?;
        let mut bytes = 0u64;
        for (id, _) in self.detached()?.into_iter().filter(|(_, t)| t == tenant) {
            if let Some(head) = snap.get(&keys::head(id)).map_err(store_error)? {
                let head: Head = records::decode("database head", &head).map_err(store_error)?;
                bytes = bytes.saturating_add(head.stored_bytes);
            }
        }
        Ok(bytes)
    }
}
