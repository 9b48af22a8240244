//! One database of the key-value store in memory while it is hot: its history, page
//! index (where each page write is, not its bytes), lease, commit ids and pins, loaded
//! from the engine on first use; and the store operations on it, each returning the
//! [`Batch`] that makes its change durable. The rules are the shared store modules'
//! (the same as the memory store's), so both stores answer alike.
//!
//! The caller holds the database's lock across an operation and its batch's write; if
//! the write fails, it drops this state (memory may be ahead of the engine) and the next
//! call loads it again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use pagewire_server_core::store::commit_check::{self, COMMIT_IDS_KEPT, CommitIds};
use pagewire_server_core::store::history::{History, Pins, RestorePoints, VersionMeta};
use pagewire_server_core::store::page_writes::{Lookup, PageHandle, PageWrites, zero_page};
use pagewire_server_core::store::{
    BeginRead, Changes, Commit, CommitHeader, CommitId, CommitOutcome, DbInfo, DbState, GcStats,
    Incarnation, Lease, LeaseId, MAX_FORK_DEPTH, PageRead, PinTtl, ReadAt, ReadView, RestorePoint,
    StoreError, StoreResult, Version, VersionTag, random_id,
};
use pagewire_server_core::validate;
use tokio::time::Instant;

use crate::engine::{Batch, EngineError, Op, Snapshot};
use crate::keys::{self, DbId, StageId};
use crate::plan::{Budget, Writes};
use crate::records::{self, AncestorRecord, Head, MetaRecord, PointRecord, StageRecord};

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
    /// A branch's source (its `a` record).
    pub ancestor: Option<AncestorRecord>,
    /// Where a branch's unwritten pages come from: its source, its source's source, ...
    sources: Vec<Source>,
    /// Versions branches were forked at (the `B` keys), with how many branches each.
    pub branches: BTreeMap<Version, usize>,
    points: RestorePoints,
}

/// One database a branch reads through to, at the version the branch (or the branch
/// before it in the chain) was forked at: those versions are held, so what they read
/// never changes.
#[derive(Debug, Clone)]
struct Source {
    id: DbId,
    at: Version,
    /// This source's own inherited pages (0: it is no branch, the chain ends here).
    inherited: u32,
    /// Its staged versions up to `at`, whose pages are under stage ids.
    staged: BTreeMap<u64, StageId>,
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
    let staged = load_staged(snap, id)?;
    for (&version, stage) in &staged {
        let [_, (start, end)] = keys::stage_records(id, stage);
        for (key, value) in snap.scan(&start, &end, false, usize::MAX)? {
            let page = keys::stage_write_page(&key)
                .ok_or_else(|| corrupt(format!("a staged index key of {} bytes", key.len())))?;
            entries.push((page, version, records::read_write_len(&value)?));
        }
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

/// A database's staged versions (its `g` keys).
fn load_staged(snap: &dyn Snapshot, id: DbId) -> Result<BTreeMap<u64, StageId>, EngineError> {
    let mut staged = BTreeMap::new();
    let (start, end) = keys::staged_versions(id);
    for (key, value) in snap.scan(&start, &end, false, usize::MAX)? {
        let version = keys::meta_version(&key).ok_or_else(|| corrupt("a stage key".into()))?;
        let stage = StageId::try_from(value.as_slice())
            .map_err(|_| corrupt(format!("a stage id of {} bytes", value.len())))?;
        staged.insert(version, stage);
    }
    Ok(staged)
}

/// Database `id`'s `a` record, if it is a branch.
fn load_ancestor(snap: &dyn Snapshot, id: DbId) -> Result<Option<AncestorRecord>, EngineError> {
    snap.get(&keys::ancestor(id))?
        .map(|bytes| records::decode("branch source", &bytes))
        .transpose()
}

/// The chain a branch with source `first` reads through, nearest first.
fn load_sources(
    snap: &dyn Snapshot,
    first: Option<AncestorRecord>,
) -> Result<Vec<Source>, EngineError> {
    let mut sources = Vec::new();
    let mut next = first;
    while let Some(a) = next {
        if sources.len() >= MAX_FORK_DEPTH {
            return Err(corrupt(format!(
                "a chain of branches longer than {MAX_FORK_DEPTH}"
            )));
        }
        let own = load_ancestor(snap, a.id)?;
        let mut staged = load_staged(snap, a.id)?;
        staged.retain(|&v, _| v <= a.version);
        sources.push(Source {
            id: a.id,
            at: Version(a.version),
            inherited: own.map_or(0, |o| o.inherited),
            staged,
        });
        next = own;
    }
    Ok(sources)
}

/// Database `id`'s branch points and restore points.
fn load_holds(
    snap: &dyn Snapshot,
    id: DbId,
) -> Result<(BTreeMap<Version, usize>, RestorePoints), EngineError> {
    let mut branches = BTreeMap::new();
    let (start, end) = keys::branch_points(id);
    for (key, _) in snap.scan(&start, &end, false, usize::MAX)? {
        let v = keys::branch_point_version(&key).ok_or_else(|| corrupt("a branch key".into()))?;
        *branches.entry(Version(v)).or_default() += 1;
    }
    let mut points = RestorePoints::default();
    let (start, end) = keys::restore_points(id);
    for (key, value) in snap.scan(&start, &end, false, usize::MAX)? {
        let label =
            keys::restore_point_label(&key).ok_or_else(|| corrupt("a restore point key".into()))?;
        let record: PointRecord = records::decode("restore point", &value)?;
        points.insert(RestorePoint {
            label,
            version: Version(record.version),
            tag: VersionTag(record.tag),
            created_unix_ms: record.created_unix_ms,
        });
    }
    Ok((branches, points))
}

/// A source's write of one page: its length (`None`: a zero marker) and data key.
type FoundWrite = (Option<u32>, Vec<u8>);

/// The newest write of page `no` at or before `at` in `source` (from the engine, not an
/// index), or `None` when it never wrote it.
fn write_in(
    snap: &dyn Snapshot,
    source: &Source,
    no: u32,
) -> Result<Option<FoundWrite>, EngineError> {
    let (start, end) = (
        keys::write(source.id, no, 0),
        keys::write(source.id, no, source.at.0.saturating_add(1)),
    );
    let plain = snap.scan(&start, &end, true, 1)?.into_iter().next();
    let plain = match plain {
        Some((key, value)) => {
            let (_, v) = keys::write_page_version(&key)
                .ok_or_else(|| corrupt(format!("a page index key of {} bytes", key.len())))?;
            Some((v, records::read_write_len(&value)?))
        }
        None => None,
    };
    let newer_than = plain.map_or(0, |(v, _)| v + 1);
    for stage in source.staged.range(newer_than..).rev().map(|(_, s)| s) {
        if let Some(value) = snap.get(&keys::stage_write(source.id, stage, no))? {
            let len = records::read_write_len(&value)?;
            return Ok(Some((len, keys::stage_data(source.id, stage, no))));
        }
    }
    Ok(plain.map(|(v, len)| (len, keys::data(source.id, no, v))))
}

impl KvDb {
    /// A new, empty database and the batch that creates it (catalog entry included).
    pub fn create(catalog_key: Vec<u8>, now_unix_ms: i64, budget: Budget) -> (Self, Batch) {
        let id: DbId = rand::random();
        Self::new_with(
            id,
            catalog_key,
            History::new(now_unix_ms, random_id()),
            now_unix_ms,
            budget,
        )
    }

    /// The batch that creates branch `id` under `catalog_key` of `source` at `at` (a
    /// non-empty readable state of it; `depth` counts the branch): version 1 is that
    /// state, every page read through. Nothing is copied.
    pub fn branch(
        id: DbId,
        catalog_key: Vec<u8>,
        now_unix_ms: i64,
        budget: Budget,
        source: AncestorRecord,
        page_size: u32,
    ) -> Batch {
        let mut history = History::new(now_unix_ms, random_id());
        history.push(VersionMeta {
            page_size,
            page_count: source.inherited,
            committed_unix_ms: now_unix_ms,
            tag: random_id(),
            changed: Changes::of_commit([], 0, source.inherited),
            retained: true,
        });
        let (_, mut batch) = Self::new_with(id, catalog_key, history, now_unix_ms, budget);
        batch.put(keys::ancestor(id), records::encode(&source));
        batch
    }

    fn new_with(
        id: DbId,
        catalog_key: Vec<u8>,
        history: History,
        now_unix_ms: i64,
        budget: Budget,
    ) -> (Self, Batch) {
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
            ancestor: None,
            sources: Vec::new(),
            branches: BTreeMap::new(),
            points: RestorePoints::default(),
        };
        let mut batch = Batch::default();
        batch.expect(catalog_key.clone(), None);
        batch.put(catalog_key, id.to_be_bytes().to_vec());
        for (v, meta) in db.history.versions().iter().enumerate() {
            batch.put(
                keys::meta(id, v as u64),
                records::encode(&MetaRecord::from(meta)),
            );
        }
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
        let (mut pages, staged) = load_pages(snap, id)?;
        let ancestor = load_ancestor(snap, id)?;
        pages.set_inherited(ancestor.map_or(0, |a| a.inherited));
        let sources = load_sources(snap, ancestor)?;
        let (branches, points) = load_holds(snap, id)?;
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
            ancestor,
            sources,
            branches,
            points,
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
        lease_id: LeaseId,
        ttl: Duration,
        now_unix_ms: i64,
    ) -> StoreResult<(Lease, Writes)> {
        let record = (self.head.lease).acquire(client_id, lease_id, ttl, now_unix_ms)?;
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
        let at = match self.pages.lookup(no, version) {
            Lookup::Data(at) => *at,
            Lookup::Unwritten if no <= self.pages.inherited() => {
                return self.inherited_page(snap, no, page_size);
            }
            Lookup::Zeros | Lookup::Unwritten => return Ok(zero_page(page_size)),
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

    /// A branch's page it never wrote, from the first source in its chain that did
    /// (zeros when none did, or when a source's inherited range ends before it).
    fn inherited_page(&self, snap: &dyn Snapshot, no: u32, page_size: u32) -> StoreResult<Bytes> {
        for source in &self.sources {
            let found = write_in(snap, source, no).map_err(crate::store_error)?;
            match found {
                Some((None, _)) => return Ok(zero_page(page_size)),
                Some((Some(len), key)) => {
                    let data = get_page(snap, &key).map_err(crate::store_error)?;
                    let data = data.filter(|d| d.len() == page_size as usize && len == page_size);
                    return data.map(Bytes::from).ok_or_else(|| {
                        StoreError::Internal(format!(
                            "page {no} of branch source {:016x} at version {} is missing or \
                             not {page_size} bytes",
                            source.id, source.at
                        ))
                    });
                }
                None if no <= source.inherited => continue,
                None => break,
            }
        }
        Ok(zero_page(page_size))
    }

    /// How many branches deep this database is (0: not a branch).
    pub fn depth(&self) -> usize {
        self.ancestor.map_or(0, |a| a.depth as usize)
    }

    /// The readable state `at` resolves to.
    pub fn resolve(&self, at: ReadAt) -> StoreResult<DbState> {
        let version = self.history.resolve(at)?;
        Ok(self.history.readable(version)?.0)
    }

    /// Records a branch point at `version` for branch `child` into `batch`, with the
    /// head (so another server holding this database in memory loads it again).
    pub fn add_branch(&mut self, version: Version, child: DbId, batch: &mut Batch) {
        *self.branches.entry(version).or_default() += 1;
        batch.put(keys::branch_point(self.id, version.0, child), Vec::new());
        self.finish(batch);
    }

    pub fn add_restore_point(
        &mut self,
        name: &str,
        label: &str,
        at: ReadAt,
        now_unix_ms: i64,
    ) -> StoreResult<(RestorePoint, Writes)> {
        self.points.check_room(name, label)?;
        let state = self.resolve(at)?;
        let point = self.points.add(name, label, state, now_unix_ms)?;
        let record = PointRecord {
            version: point.version.0,
            tag: point.tag.0,
            created_unix_ms: point.created_unix_ms,
        };
        let mut batch = Batch::default();
        batch.put(
            keys::restore_point(self.id, label),
            records::encode(&record),
        );
        self.finish(&mut batch);
        Ok((point, Writes::one(batch)))
    }

    pub fn remove_restore_point(&mut self, name: &str, label: &str) -> StoreResult<Writes> {
        self.points.remove(name, label)?;
        let mut batch = Batch::default();
        batch.delete(keys::restore_point(self.id, label));
        self.finish(&mut batch);
        Ok(Writes::one(batch))
    }

    pub fn restore_points(&self) -> Vec<RestorePoint> {
        self.points.list()
    }

    /// Reads the branch points again from `snap`: a branch deleted (its `B` key gone)
    /// lets GC collect the version it held without this database being reloaded.
    pub fn reload_branches(&mut self, snap: &dyn Snapshot) -> Result<(), EngineError> {
        self.branches = load_holds(snap, self.id)?.0;
        Ok(())
    }

    /// The versions kept whatever their age: branch points and restore points.
    fn held(&self) -> BTreeSet<Version> {
        let mut held = self.points.versions();
        held.extend(self.branches.keys().copied());
        held
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
        let held = self.held();
        let kept = self.history.kept(now_unix_ms, retention, |v| {
            self.pins.holds(v, now) || held.contains(&v)
        });
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
