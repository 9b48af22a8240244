//! The memory store: versioned, copy-on-write per page (a commit stores only the pages it
//! carries), every database behind its own lock. The default store, and the reference
//! model the durable stores are checked against.
//!
//! History is kept in full for now; [`MemDb::oldest`] is where GC will trim from.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use super::{
    Commit, CommitOutcome, DbInfo, DbKey, DbState, Id16, Lease, PageRead, PageStore, ReadView,
    StoreError, StoreResult,
};
use crate::validate;

/// How many recent commit ids each database remembers for retries.
const COMMIT_IDS_KEPT: usize = 1024;

/// Zero bytes that zero-filled pages are sliced from (without copying).
static ZEROS: [u8; validate::MAX_PAGE_SIZE as usize] = [0; validate::MAX_PAGE_SIZE as usize];

/// The in-memory page store. Cheap to share behind an `Arc`.
#[derive(Default)]
pub struct MemoryStore {
    dbs: RwLock<HashMap<DbKey, Arc<Mutex<MemDb>>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
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
            .or_insert_with(|| Arc::new(Mutex::new(MemDb::new())));
        let state = db.lock().state();
        Ok((state, created))
    }

    async fn create(&self, key: &DbKey) -> StoreResult<DbInfo> {
        let mut dbs = self.dbs.write();
        if dbs.contains_key(key) {
            return Err(StoreError::AlreadyExists(key.name.clone()));
        }
        let db = MemDb::new();
        let info = db.info(&key.name, Instant::now());
        dbs.insert(key.clone(), Arc::new(Mutex::new(db)));
        Ok(info)
    }

    async fn delete(&self, key: &DbKey) -> StoreResult<()> {
        let db = self.dbs.write().remove(key);
        let db = db.ok_or_else(|| StoreError::NotFound(key.name.clone()))?;
        db.lock().deleted = true;
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
        let now = Instant::now();
        let mut infos: Vec<_> = dbs
            .iter()
            .map(|(name, db)| db.lock().info(name, now))
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }

    async fn info(&self, key: &DbKey) -> StoreResult<DbInfo> {
        self.with_db(key, |db| Ok(db.info(&key.name, Instant::now())))
    }

    async fn acquire_lease(
        &self,
        key: &DbKey,
        client_id: &str,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.with_db(key, |db| db.acquire(client_id, ttl, Instant::now()))
    }

    async fn renew_lease(
        &self,
        key: &DbKey,
        lease_id: Id16,
        epoch: u64,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.with_db(key, |db| db.renew(lease_id, epoch, ttl, Instant::now()))
    }

    async fn release_lease(&self, key: &DbKey, lease_id: Id16, epoch: u64) -> StoreResult<()> {
        let released = self.with_db(key, |db| {
            db.release(lease_id, epoch);
            Ok(())
        });
        match released {
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    async fn begin_read(&self, key: &DbKey, cached_version: u64) -> StoreResult<ReadView> {
        self.with_db(key, |db| Ok(db.begin_read(cached_version)))
    }

    async fn read_pages(
        &self,
        key: &DbKey,
        version: u64,
        page_nos: &[u32],
    ) -> StoreResult<PageRead> {
        self.with_db(key, |db| db.read(version, page_nos))
    }

    async fn commit(&self, key: &DbKey, commit: Commit) -> StoreResult<CommitOutcome> {
        self.with_db(key, |db| db.commit(commit, Instant::now()))
    }
}

/// What one version changed.
#[derive(Debug, Clone)]
struct VersionMeta {
    page_size: u32,
    page_count: u32,
    committed_unix_ms: i64,
    /// Pages written by this version (including grown holes), ascending.
    changed: Vec<u32>,
}

/// The holder of a write lease (kept after expiry until replaced, for error messages).
#[derive(Debug, Clone)]
struct LeaseRecord {
    lease_id: Id16,
    epoch: u64,
    client_id: String,
    ttl: Duration,
    expires: Instant,
}

impl LeaseRecord {
    fn live(&self, now: Instant) -> bool {
        now < self.expires
    }
}

/// Recently applied commit ids, so a retry learns its outcome.
#[derive(Debug, Default)]
struct CommitLog {
    versions: HashMap<Id16, u64>,
    order: VecDeque<Id16>,
}

impl CommitLog {
    fn get(&self, id: &Id16) -> Option<u64> {
        self.versions.get(id).copied()
    }

    fn remember(&mut self, id: Id16, version: u64) {
        self.versions.insert(id, version);
        self.order.push_back(id);
        while self.order.len() > COMMIT_IDS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.versions.remove(&old);
            }
        }
    }
}

/// One database: its page history, version metadata and write lease.
#[derive(Debug)]
struct MemDb {
    /// Set by delete, so a call that raced with it sees NotFound.
    deleted: bool,
    created_unix_ms: i64,
    /// Per page, its writes in ascending version order; `None` is a zero page (a hole
    /// left when the file grew over pages an older version had written).
    pages: BTreeMap<u32, Vec<(u64, Option<Bytes>)>>,
    /// Metadata of versions `oldest..=current`, indexed by `version - oldest`.
    versions: Vec<VersionMeta>,
    /// The oldest version still readable (GC will move it up).
    oldest: u64,
    /// Bytes of page data over all retained writes.
    stored_bytes: u64,
    lease: Option<LeaseRecord>,
    /// Highest epoch ever granted: epochs are never reused.
    max_epoch: u64,
    commit_ids: CommitLog,
}

fn unix_ms_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

fn zero_page(page_size: u32) -> Bytes {
    Bytes::from_static(&ZEROS[..page_size as usize])
}

impl MemDb {
    fn new() -> Self {
        let now = unix_ms_now();
        let empty = VersionMeta {
            page_size: 0,
            page_count: 0,
            committed_unix_ms: now,
            changed: Vec::new(),
        };
        Self {
            deleted: false,
            created_unix_ms: now,
            pages: BTreeMap::new(),
            versions: vec![empty],
            oldest: 0,
            stored_bytes: 0,
            lease: None,
            max_epoch: 0,
            commit_ids: CommitLog::default(),
        }
    }

    fn current(&self) -> u64 {
        self.oldest + self.versions.len() as u64 - 1
    }

    fn meta(&self, version: u64) -> Option<&VersionMeta> {
        let index = version.checked_sub(self.oldest)?;
        self.versions.get(usize::try_from(index).ok()?)
    }

    fn state_at(&self, version: u64) -> Option<DbState> {
        let meta = self.meta(version)?;
        Some(DbState {
            version,
            page_size: meta.page_size,
            page_count: meta.page_count,
        })
    }

    fn state(&self) -> DbState {
        let version = self.current();
        self.state_at(version).unwrap_or(DbState {
            version,
            page_size: 0,
            page_count: 0,
        })
    }

    fn live_lease(&self, now: Instant) -> Option<&LeaseRecord> {
        self.lease.as_ref().filter(|l| l.live(now))
    }

    fn info(&self, name: &str, now: Instant) -> DbInfo {
        let updated = self
            .meta(self.current())
            .map_or(self.created_unix_ms, |m| m.committed_unix_ms);
        DbInfo {
            name: name.to_owned(),
            state: self.state(),
            stored_bytes: self.stored_bytes,
            oldest_version: self.oldest,
            created_unix_ms: self.created_unix_ms,
            updated_unix_ms: updated,
            lease_held: self.live_lease(now).is_some(),
        }
    }

    fn grant(&self, record: &LeaseRecord) -> Lease {
        Lease {
            lease_id: record.lease_id,
            epoch: record.epoch,
            ttl: record.ttl,
            state: self.state(),
        }
    }

    fn acquire(&mut self, client_id: &str, ttl: Duration, now: Instant) -> StoreResult<Lease> {
        if let Some(held) = self.live_lease(now) {
            let remaining = held.expires.saturating_duration_since(now);
            return Err(StoreError::LeaseHeld {
                holder: held.client_id.clone(),
                remaining,
            });
        }
        self.max_epoch += 1;
        let record = LeaseRecord {
            lease_id: rand::random(),
            epoch: self.max_epoch,
            client_id: client_id.to_owned(),
            ttl,
            expires: now + ttl,
        };
        let lease = self.grant(&record);
        self.lease = Some(record);
        Ok(lease)
    }

    /// The current lease if `lease_id`/`epoch` name it and it has not expired.
    fn check_lease(
        &mut self,
        lease_id: Id16,
        epoch: u64,
        now: Instant,
    ) -> StoreResult<&mut LeaseRecord> {
        let Some(lease) = self.lease.as_mut() else {
            return Err(StoreError::LeaseLost(format!(
                "the write lease (epoch {epoch}) is no longer held (released or expired); acquire a new one"
            )));
        };
        if lease.lease_id != lease_id || lease.epoch != epoch {
            return Err(StoreError::LeaseLost(format!(
                "the write lease (epoch {epoch}) was superseded by epoch {}",
                lease.epoch
            )));
        }
        if !lease.live(now) {
            let ago = now.saturating_duration_since(lease.expires).as_millis();
            return Err(StoreError::LeaseLost(format!(
                "the write lease (epoch {epoch}) expired {ago} ms ago; acquire a new one"
            )));
        }
        Ok(lease)
    }

    fn renew(
        &mut self,
        lease_id: Id16,
        epoch: u64,
        ttl: Duration,
        now: Instant,
    ) -> StoreResult<Lease> {
        let lease = self.check_lease(lease_id, epoch, now)?;
        lease.ttl = ttl;
        lease.expires = now + ttl;
        let record = lease.clone();
        Ok(self.grant(&record))
    }

    fn release(&mut self, lease_id: Id16, epoch: u64) {
        let ours = self
            .lease
            .as_ref()
            .is_some_and(|l| l.lease_id == lease_id && l.epoch == epoch);
        if ours {
            self.lease = None;
        }
    }

    fn begin_read(&self, cached_version: u64) -> ReadView {
        let state = self.state();
        let invalid = ReadView {
            state,
            changed_pages: Vec::new(),
            cache_invalid: true,
        };
        if cached_version == 0 || cached_version > state.version {
            return invalid;
        }
        let Some(cached) = self.meta(cached_version) else {
            return invalid;
        };
        let newer: Vec<&VersionMeta> = (cached_version + 1..=state.version)
            .filter_map(|v| self.meta(v))
            .collect();
        if newer.iter().any(|m| m.page_size != cached.page_size) {
            return invalid;
        }
        let mut changed: Vec<u32> = newer
            .iter()
            .flat_map(|m| m.changed.iter().copied())
            .collect();
        changed.sort_unstable();
        changed.dedup();
        ReadView {
            state,
            changed_pages: changed,
            cache_invalid: false,
        }
    }

    /// Page `page_no` as of `version`: the newest write at or before it, zeros if none.
    fn page_at(&self, page_no: u32, version: u64, page_size: u32) -> StoreResult<Bytes> {
        let Some(writes) = self.pages.get(&page_no) else {
            return Ok(zero_page(page_size));
        };
        let visible = writes.partition_point(|(v, _)| *v <= version);
        let Some((_, Some(data))) = visible.checked_sub(1).and_then(|i| writes.get(i)) else {
            return Ok(zero_page(page_size));
        };
        if data.len() != page_size as usize {
            return Err(StoreError::Internal(format!(
                "page {page_no} at version {version} is {} bytes, expected {page_size}",
                data.len()
            )));
        }
        Ok(data.clone())
    }

    fn read(&self, version: u64, page_nos: &[u32]) -> StoreResult<PageRead> {
        let Some(state) = self.state_at(version) else {
            return Err(StoreError::OutOfRange(format!(
                "version {version} does not exist (readable: {}..={})",
                self.oldest,
                self.current()
            )));
        };
        validate::page_nos_in_range(page_nos, state.page_count)?;
        let pages = page_nos
            .iter()
            .map(|&no| self.page_at(no, version, state.page_size));
        Ok(PageRead {
            page_size: state.page_size,
            pages: pages.collect::<StoreResult<_>>()?,
        })
    }

    fn commit(&mut self, commit: Commit, now: Instant) -> StoreResult<CommitOutcome> {
        if let Some(version) = self.commit_ids.get(&commit.commit_id) {
            return Ok(CommitOutcome {
                version,
                already_applied: true,
            });
        }
        self.check_lease(commit.lease_id, commit.epoch, now)?;
        let base = self.state();
        if commit.base_version != base.version {
            return Err(StoreError::VersionConflict {
                base: commit.base_version,
                current: base.version,
            });
        }
        validate::against_base(&commit, &base)?;
        let version = self.apply(commit, base);
        if let Some(lease) = self.lease.as_mut() {
            lease.expires = now + lease.ttl;
        }
        Ok(CommitOutcome {
            version,
            already_applied: false,
        })
    }

    /// Writes a checked commit as version `base.version + 1`; returns that version.
    fn apply(&mut self, commit: Commit, base: DbState) -> u64 {
        let version = base.version + 1;
        let mut changed: Vec<u32> = commit.pages.iter().map(|(no, _)| *no).collect();
        changed.extend(self.mark_holes(&commit, base.page_count, version));
        changed.sort_unstable();
        for (no, data) in commit.pages {
            self.stored_bytes += data.len() as u64;
            self.pages
                .entry(no)
                .or_default()
                .push((version, Some(data)));
        }
        self.versions.push(VersionMeta {
            page_size: commit.page_size,
            page_count: commit.page_count,
            committed_unix_ms: unix_ms_now(),
            changed,
        });
        self.commit_ids.remember(commit.commit_id, version);
        version
    }

    /// When the file grows, pages past the old end that an older version had written (before
    /// a truncate) and this commit does not carry must read as zeros: writes a zero marker
    /// for each and returns their numbers. Never-written pages read as zeros already.
    fn mark_holes(&mut self, commit: &Commit, base_count: u32, version: u64) -> Vec<u32> {
        if commit.page_count <= base_count {
            return Vec::new();
        }
        let carried: std::collections::HashSet<u32> =
            commit.pages.iter().map(|(no, _)| *no).collect();
        let mut holes = Vec::new();
        for (&no, writes) in self.pages.range_mut(base_count + 1..=commit.page_count) {
            let stale = writes.last().is_some_and(|(_, data)| data.is_some());
            if stale && !carried.contains(&no) {
                writes.push((version, None));
                holes.push(no);
            }
        }
        holes
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;
    use crate::store::conformance;

    macro_rules! conformance_tests {
        ($($name:ident),* $(,)?) => {$(
            #[tokio::test(start_paused = true)]
            async fn $name() -> anyhow::Result<()> {
                conformance::$name(&MemoryStore::new()).await
            }
        )*};
    }

    conformance_tests!(
        read_your_writes_at_versions,
        unwritten_pages_are_zeros,
        snapshot_reads_at_old_versions,
        truncate_then_grow_reads_zeros,
        failed_commits_change_nothing,
        epoch_fencing_after_expiry,
        commit_id_retry_after_release,
        lease_exclusivity,
        lease_renew_and_release,
        tenant_isolation,
        create_list_delete,
        begin_read_change_lists,
        page_size_change,
        read_errors,
    );
}
