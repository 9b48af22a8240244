//! One database of the key-value store in memory while it is hot: its history, page
//! index (where each page write is, not its bytes), lease, commit ids and pins, loaded
//! from the engine on first use; and the store operations on it, each returning the
//! [`Batch`] that makes its change durable. The rules are the shared store modules'
//! (the same as the memory store's), so both stores answer alike.
//!
//! The caller holds the database's lock across an operation and its batch's write; if
//! the write fails, it drops this state (memory may be ahead of the engine) and the next
//! call loads it again.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use pagewire_server_core::store::commit_check::{self, COMMIT_IDS_KEPT, CommitIds};
use pagewire_server_core::store::history::{History, Pins, VersionMeta};
use pagewire_server_core::store::page_writes::{PageHandle, PageWrites, zero_page};
use pagewire_server_core::store::{
    BeginRead, Changes, Commit, CommitHeader, CommitId, CommitOutcome, DbInfo, DbState, GcStats,
    Incarnation, Lease, LeaseId, PageRead, PinTtl, ReadView, StoreError, StoreResult, Version,
    random_id,
};
use pagewire_server_core::validate;
use tokio::time::Instant;

use crate::engine::{Batch, EngineError, Op, Snapshot};
use crate::keys::{self, DbId, StageId};
use crate::plan::{Budget, Writes};
use crate::records::{self, Head, MetaRecord, StageRecord};

/// Where a page write's bytes are: the `d` key of its page and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    pub version: Version,
    pub len: u32,
}

impl PageHandle for PageRef {
    fn stored_len(&self) -> u64 {
        u64::from(self.len)
    }
}

#[derive(Debug)]
pub struct KvDb {
    pub id: DbId,
    /// The head as last written: what the next batch expects to find.
    head_bytes: Vec<u8>,
    head: Head,
    history: History,
    pages: PageWrites<PageRef>,
    pins: Pins,
    commit_ids: CommitIds,
    /// The staged versions and their stages (see [`crate::keys`]), while any of their
    /// page writes is kept.
    staged: BTreeMap<u64, StageId>,
    budget: Budget,
}

fn corrupt(what: String) -> EngineError {
    EngineError::Corrupt(what)
}

/// A database's page index: its `w` entries and its staged versions' `T` entries.
fn load_pages(
    snap: &dyn Snapshot,
    id: DbId,
) -> Result<(PageWrites<PageRef>, BTreeMap<u64, StageId>), EngineError> {
    let mut entries = Vec::new();
    let (start, end) = keys::writes(id);
    for (key, value) in snap.scan(&start, &end, false, usize::MAX)? {
        let (page, version) = keys::write_page_version(&key)
            .ok_or_else(|| corrupt(format!("a page index key of {} bytes", key.len())))?;
        entries.push((page, version, records::read_write_len(&value)?));
    }
    let mut staged = BTreeMap::new();
    let (start, end) = keys::staged_versions(id);
    for (key, value) in snap.scan(&start, &end, false, usize::MAX)? {
        let version = keys::meta_version(&key).ok_or_else(|| corrupt("a stage key".into()))?;
        let stage = StageId::try_from(value.as_slice())
            .map_err(|_| corrupt(format!("a stage id of {} bytes", value.len())))?;
        let [_, (start, end)] = keys::stage_records(id, &stage);
        for (key, value) in snap.scan(&start, &end, false, usize::MAX)? {
            let page = keys::stage_write_page(&key)
                .ok_or_else(|| corrupt(format!("a staged index key of {} bytes", key.len())))?;
            entries.push((page, version, records::read_write_len(&value)?));
        }
        staged.insert(version, stage);
    }
    if !staged.is_empty() {
        // Staged entries came after the `w` ones: writes load in (page, version) order.
        entries.sort_unstable_by_key(|&(page, version, _)| (page, version));
    }
    let mut pages = PageWrites::default();
    for (page, version, len) in entries {
        let version = Version(version);
        pages.load(page, version, len.map(|len| PageRef { version, len }));
    }
    Ok((pages, staged))
}

/// Puts page bytes under `key`, in pieces when they are over the value budget.
fn put_page(ops: &mut Vec<Op>, key: Vec<u8>, data: Bytes, budget: &Budget) {
    match budget.value {
        Some(piece) if data.len() > piece => {
            for (n, start) in (0..data.len()).step_by(piece).enumerate() {
                let end = (start + piece).min(data.len());
                ops.push(Op::Put(keys::piece(&key, n as u8), data.slice(start..end)));
            }
        }
        _ => ops.push(Op::Put(key, data)),
    }
}

/// Deletes page bytes of `len` written by [`put_page`] under `key`.
fn delete_page(ops: &mut Vec<Op>, key: Vec<u8>, len: u32, budget: &Budget) {
    match budget.value {
        Some(piece) if len as usize > piece => {
            let end = keys::prefix_end(&key);
            ops.push(Op::DeleteRange(key, end));
        }
        _ => ops.push(Op::Delete(key)),
    }
}

/// Page bytes under `key`: whole, or in pieces (whatever limit wrote them).
fn get_page(snap: &dyn Snapshot, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
    if let Some(whole) = snap.get(key)? {
        return Ok(Some(whole));
    }
    let pieces = snap.scan(key, &keys::prefix_end(key), false, 256)?;
    Ok((!pieces.is_empty()).then(|| pieces.into_iter().flat_map(|(_, v)| v).collect()))
}

/// `changed` within the listed-pages budget: past it, every page from the lowest
/// changed on (a superset, see [`Budget::listed`]).
fn within_listed(changed: Changes, budget: &Budget) -> Changes {
    match budget.listed {
        Some(max) if changed.pages.len() > max => {
            let lowest = changed.pages.first().copied();
            Changes {
                pages: Vec::new(),
                from: lowest.into_iter().chain(changed.from).min(),
            }
        }
        _ => changed,
    }
}

impl KvDb {
    /// A new, empty database and the batch that creates it (catalog entry included).
    pub fn create(catalog_key: Vec<u8>, now_unix_ms: i64, budget: Budget) -> (Self, Batch) {
        let id: DbId = rand::random();
        let history = History::new(now_unix_ms, random_id());
        let mut db = Self {
            id,
            head_bytes: Vec::new(),
            head: Head {
                incarnation: history.incarnation().0,
                created_unix_ms: now_unix_ms,
                oldest: 0,
                first_commit_unix_ms: None,
                gc_retention: None,
                lease: Default::default(),
                stored_bytes: 0,
                version: 0,
                page_size: 0,
                page_count: 0,
                tag: [0; 16],
                updated_unix_ms: now_unix_ms,
                readable: 1,
                oldest_readable_unix_ms: now_unix_ms,
                change: 0,
            },
            history,
            pages: PageWrites::default(),
            pins: Pins::default(),
            commit_ids: CommitIds::default(),
            staged: BTreeMap::new(),
            budget,
        };
        let mut batch = Batch::default();
        batch.expect(catalog_key.clone(), None);
        batch.put(catalog_key, id.to_be_bytes().to_vec());
        batch.put(
            keys::meta(id, 0),
            records::encode(&MetaRecord::from(&db.history.versions()[0])),
        );
        db.finish(&mut batch); // expects no head: its id is new
        (db, batch)
    }

    /// Loads database `id` (whose head record is `head_bytes`) from `snap`.
    pub fn load(
        snap: &dyn Snapshot,
        id: DbId,
        head_bytes: Vec<u8>,
        budget: Budget,
    ) -> Result<Self, EngineError> {
        let head: Head = records::decode("database head", &head_bytes)?;
        let (start, end) = keys::metas(id);
        let mut versions = Vec::new();
        for (i, (key, value)) in snap
            .scan(&start, &end, false, usize::MAX)?
            .into_iter()
            .enumerate()
        {
            let want = head.oldest + i as u64;
            if keys::meta_version(&key) != Some(want) {
                return Err(corrupt(format!(
                    "database {id:016x}: version {want}'s record is missing"
                )));
            }
            let meta: MetaRecord = records::decode("version", &value)?;
            versions.push(VersionMeta::from(meta));
        }
        let history = History::from_parts(
            Incarnation(head.incarnation),
            Version(head.oldest),
            versions,
            head.first_commit_unix_ms,
            head.gc_retention,
        )
        .ok_or_else(|| {
            corrupt(format!(
                "database {id:016x}: its versions do not start readable at {}",
                head.oldest
            ))
        })?;
        if history.state() != head.state() {
            return Err(corrupt(format!(
                "database {id:016x}: head says {:?}, versions say {:?}",
                head.state(),
                history.state()
            )));
        }
        let (pages, staged) = load_pages(snap, id)?;
        let mut commit_ids = CommitIds::default();
        let (start, end) = keys::commit_ids(id);
        let mut recent = snap.scan(&start, &end, true, COMMIT_IDS_KEPT)?;
        recent.reverse();
        for (key, value) in recent {
            let version =
                keys::meta_version(&key).ok_or_else(|| corrupt("a commit id key".into()))?;
            let commit_id =
                CommitId::from_wire(&value).map_err(|e| corrupt(format!("a commit id: {e}")))?;
            commit_ids.remember(commit_id, Version(version));
        }
        Ok(Self {
            id,
            head_bytes,
            head,
            history,
            pages,
            pins: Pins::default(),
            commit_ids,
            staged,
            budget,
        })
    }

    /// Writes the head as it is now into `batch`, expecting the one last written.
    fn finish(&mut self, batch: &mut Batch) {
        let current = self.history.state();
        let readable: Vec<&VersionMeta> = self
            .history
            .versions()
            .iter()
            .filter(|m| m.retained)
            .collect();
        let head = Head {
            incarnation: self.history.incarnation().0,
            created_unix_ms: self.head.created_unix_ms,
            oldest: self.history.oldest().0,
            first_commit_unix_ms: self.history.first_commit_unix_ms(),
            gc_retention: self.history.gc_retention(),
            lease: self.head.lease.clone(),
            stored_bytes: self.pages.stored_bytes(),
            version: current.version.0,
            page_size: current.page_size,
            page_count: current.page_count,
            tag: current.tag.0,
            updated_unix_ms: self
                .history
                .updated_unix_ms()
                .unwrap_or(self.head.created_unix_ms),
            readable: readable.len() as u64,
            oldest_readable_unix_ms: readable.first().map_or(0, |m| m.committed_unix_ms),
            change: self.head.change.wrapping_add(1),
        };
        let bytes = records::encode(&head);
        // No head written yet (a new database): none may exist.
        let written = Some(std::mem::take(&mut self.head_bytes)).filter(|b| !b.is_empty());
        batch.expect(keys::head(self.id), written);
        batch.put(keys::head(self.id), bytes.clone());
        self.head = head;
        self.head_bytes = bytes;
    }

    /// The head record last written (to tell whether the engine still holds it).
    pub fn head_bytes(&self) -> &[u8] {
        &self.head_bytes
    }

    pub fn state(&self) -> DbState {
        self.history.state()
    }

    pub fn info(&self, name: &str, now_unix_ms: i64) -> DbInfo {
        let lease_held = self.head.lease.live(now_unix_ms).is_some();
        self.history.info(
            name,
            self.head.created_unix_ms,
            self.pages.stored_bytes(),
            lease_held,
        )
    }

    /// Whether no reader pin is live (dropping the database from memory loses none).
    pub fn evictable(&self, now: Instant) -> bool {
        self.pins.none_live(now)
    }

    pub fn acquire(
        &mut self,
        client_id: &str,
        ttl: Duration,
        now_unix_ms: i64,
    ) -> StoreResult<(Lease, Writes)> {
        let record = self.head.lease.acquire(client_id, ttl, now_unix_ms)?;
        Ok((record.lease(self.state()), self.head_only()))
    }

    pub fn renew(
        &mut self,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
        now_unix_ms: i64,
    ) -> StoreResult<(Lease, Writes)> {
        let record = self.head.lease.renew(lease_id, epoch, ttl, now_unix_ms)?;
        Ok((record.lease(self.state()), self.head_only()))
    }

    /// The batch of a release, `None` when the lease was not the current one.
    pub fn release(&mut self, lease_id: LeaseId, epoch: u64) -> Option<Writes> {
        self.head
            .lease
            .release(lease_id, epoch)
            .then(|| self.head_only())
    }

    fn head_only(&mut self) -> Writes {
        let mut batch = Batch::default();
        self.finish(&mut batch);
        Writes::one(batch)
    }

    pub fn begin_read(&mut self, read: BeginRead, now: Instant) -> StoreResult<ReadView> {
        let view = self.history.view(&read)?;
        self.pins.pin(view.state.version, read.pin, now);
        Ok(view)
    }

    /// Pages at `version`, their bytes read from `snap`.
    pub fn read(
        &mut self,
        snap: &dyn Snapshot,
        version: Version,
        page_nos: &[u32],
        pin: PinTtl,
        now: Instant,
    ) -> StoreResult<PageRead> {
        let (state, _) = self.history.readable(version)?;
        validate::page_nos_in_range(page_nos, state.page_count)?;
        let pages = page_nos
            .iter()
            .map(|&no| self.page(snap, no, version, state.page_size))
            .collect::<StoreResult<_>>()?;
        self.pins.refresh(version, pin, now);
        Ok(PageRead {
            state,
            page_size: state.page_size,
            pages,
        })
    }

    fn page(
        &self,
        snap: &dyn Snapshot,
        no: u32,
        version: Version,
        page_size: u32,
    ) -> StoreResult<Bytes> {
        let Some(at) = self.pages.at(no, version) else {
            return Ok(zero_page(page_size));
        };
        let key = self.data_key(no, at.version);
        let data = get_page(snap, &key)
            .map_err(crate::store_error)?
            .ok_or_else(|| {
                StoreError::Internal(format!(
                    "page {no} written at version {} is missing",
                    at.version
                ))
            })?;
        if data.len() != page_size as usize || at.len != page_size {
            return Err(StoreError::Internal(format!(
                "page {no} at version {version} is {} bytes, expected {page_size}",
                data.len()
            )));
        }
        Ok(Bytes::from(data))
    }

    /// Where the bytes of page `no` written by `version` are.
    fn data_key(&self, no: u32, version: Version) -> Vec<u8> {
        match self.staged.get(&version.0) {
            Some(stage) => keys::stage_data(self.id, stage, no),
            None => keys::data(self.id, no, version.0),
        }
    }

    fn index_key(&self, no: u32, version: Version) -> Vec<u8> {
        match self.staged.get(&version.0) {
            Some(stage) => keys::stage_write(self.id, stage, no),
            None => keys::write(self.id, no, version.0),
        }
    }

    pub fn precheck(
        &self,
        h: &CommitHeader,
        name: &str,
        now_unix_ms: i64,
    ) -> StoreResult<Option<CommitOutcome>> {
        let (history, ids, lease) = (&self.history, &self.commit_ids, &self.head.lease);
        commit_check::check(h, name, history, ids, lease, now_unix_ms)
    }

    /// A commit: its outcome, and the writes to make unless it was a retry.
    pub fn commit(
        &mut self,
        commit: Commit,
        name: &str,
        now_unix_ms: i64,
    ) -> StoreResult<(CommitOutcome, Option<Writes>)> {
        if let Some(done) = self.precheck(&commit.header(), name, now_unix_ms)? {
            return Ok((done, None));
        }
        let base = self.state();
        validate::against_base(&commit, &base)?;
        // Renewed before the head is written, so a restart keeps the renewal.
        self.head.lease.touch(now_unix_ms);
        let writes = self.apply(commit, base, now_unix_ms);
        let version = self.state().version;
        Ok((
            commit_check::outcome(&self.history, version, false),
            Some(writes),
        ))
    }

    /// Writes a checked commit as version `base.version + 1`, in memory and as writes:
    /// one batch, or (over the batch budget) staged batches and a publishing one.
    fn apply(&mut self, commit: Commit, base: DbState, now_unix_ms: i64) -> Writes {
        let version = Version(base.version.0 + 1);
        let (id, v) = (self.id, version.0);
        let bytes: usize = commit.pages.iter().map(|(_, d)| d.len() + 64).sum();
        let stage = self.budget.exceeded_by(bytes).then(rand::random::<StageId>);
        if let Some(stage) = stage {
            self.staged.insert(v, stage);
        }
        let refs: Vec<(u32, PageRef)> = commit
            .pages
            .iter()
            .map(|(no, data)| {
                let len = data.len() as u32;
                (*no, PageRef { version, len })
            })
            .collect();
        let mut pages = Vec::with_capacity(commit.pages.len() * 2);
        for (no, data) in commit.pages {
            let len = records::write_len(Some(data.len() as u32));
            pages.push(Op::Put(self.index_key(no, version), len.into()));
            put_page(&mut pages, self.data_key(no, version), data, &self.budget);
        }
        let changed = self
            .pages
            .write(refs, base.page_count, commit.page_count, version);
        for no in self
            .pages
            .holes_written(base.page_count, commit.page_count, version)
        {
            let marker = records::write_len(None);
            pages.push(Op::Put(self.index_key(no, version), marker.into()));
        }
        self.history.push(VersionMeta {
            page_size: commit.page_size,
            page_count: commit.page_count,
            committed_unix_ms: now_unix_ms,
            tag: random_id(),
            changed: within_listed(changed, &self.budget),
            retained: true,
        });
        let mut publish = Batch::default();
        if let Some(meta) = self.history.meta(version) {
            publish.put(keys::meta(id, v), records::encode(&MetaRecord::from(meta)));
        }
        self.commit_ids.remember(commit.commit_id, version);
        publish.put(keys::commit_id(id, v), commit.commit_id.0.to_vec());
        if let Some(old) = v.checked_sub(COMMIT_IDS_KEPT as u64) {
            publish.delete(keys::commit_id(id, old));
        }
        let Some(stage) = stage else {
            publish.ops.extend(pages);
            self.finish(&mut publish);
            return Writes::one(publish);
        };
        let record = records::encode(&StageRecord {
            base: base.version.0,
            epoch: commit.epoch,
            created_unix_ms: now_unix_ms,
        });
        let marker = keys::stage(id, &stage);
        let mut batches = self.budget.split(pages);
        for (i, batch) in batches.iter_mut().enumerate() {
            // Every piece checks the marker: once GC removes it, a writer still
            // staging fails instead of leaving records nothing would collect.
            if i == 0 {
                batch.expect(marker.clone(), None);
                batch.put(marker.clone(), record.clone());
            } else {
                batch.expect(marker.clone(), Some(record.clone()));
            }
        }
        publish.expect(marker.clone(), Some(record));
        publish.delete(marker);
        publish.put(keys::staged_version(id, v), stage.to_vec());
        self.finish(&mut publish);
        batches.push(publish);
        Writes {
            batches,
            stage: Some((id, stage)),
            gone: false,
        }
    }

    /// One GC pass over this database, and its writes when it changed anything: the
    /// versions it makes unreadable, then the head, then the records nothing reads.
    pub fn gc(
        &mut self,
        now_unix_ms: i64,
        retention: Duration,
        now: Instant,
    ) -> (GcStats, Option<Writes>) {
        self.pins.expire(now);
        let kept = self
            .history
            .kept(now_unix_ms, retention, |v| self.pins.holds(v, now));
        let stats = GcStats {
            databases: 1,
            ..GcStats::default()
        };
        if !self.pages.gc_due(&self.history, &kept) {
            return (stats, None);
        }
        let (id, old_oldest) = (self.id, self.history.oldest().0);
        let was_retained: Vec<bool> = self.history.versions().iter().map(|m| m.retained).collect();
        let mut removed = Vec::new();
        let pass = self
            .pages
            .gc_with(&mut self.history, &kept, retention, |no, (v, data)| {
                removed.push((no, *v, data.map(|d| d.len)));
            });
        let mut doomed = Vec::with_capacity(removed.len() * 2);
        for (no, v, len) in removed {
            doomed.push(Op::Delete(self.index_key(no, v)));
            if let Some(len) = len {
                delete_page(&mut doomed, self.data_key(no, v), len, &self.budget);
            }
        }
        let new_oldest = self.history.oldest().0;
        let mut flips = Vec::new();
        for (i, meta) in self.history.versions().iter().enumerate() {
            let v = new_oldest + i as u64;
            let before = was_retained
                .get((v - old_oldest) as usize)
                .copied()
                .unwrap_or(true);
            if before && !meta.retained {
                let record = records::encode(&MetaRecord::from(meta));
                flips.push(Op::Put(keys::meta(id, v), record.into()));
            }
        }
        let mut head = Batch::default();
        if new_oldest > old_oldest {
            head.delete_range(keys::meta(id, old_oldest), keys::meta(id, new_oldest));
        }
        // A staged version's stage id goes once none of its writes is kept.
        let unused: Vec<u64> = self
            .staged
            .keys()
            .copied()
            .filter(|&v| !self.pages.any_written_by(Version(v)))
            .collect();
        for v in unused {
            self.staged.remove(&v);
            head.delete(keys::staged_version(id, v));
        }
        self.finish(&mut head);
        let mut steps = self.budget.split(flips);
        steps.push(head);
        steps.extend(self.budget.split(doomed));
        (
            GcStats {
                databases: 1,
                ..pass
            },
            Some(Writes::steps(steps, &self.budget)),
        )
    }
}
