//! One database of the key-value store in memory while it is hot: its history, page
//! index (where each page write is, not its bytes), lease, commit ids and pins, loaded
//! from the engine on first use; and the store operations on it, each returning the
//! [`Batch`] that makes its change durable. The rules are the shared store modules'
//! (the same as the memory store's), so both stores answer alike.
//!
//! The caller holds the database's lock across an operation and its batch's write; if
//! the write fails, it drops this state (memory may be ahead of the engine) and the next
//! call loads it again.

use std::time::Duration;

use bytes::Bytes;
use pagewire_server_core::store::commit_check::{self, COMMIT_IDS_KEPT, CommitIds};
use pagewire_server_core::store::history::{History, Pins, VersionMeta};
use pagewire_server_core::store::page_writes::{PageHandle, PageWrites, zero_page};
use pagewire_server_core::store::{
    BeginRead, Commit, CommitHeader, CommitId, CommitOutcome, DbInfo, DbState, GcStats,
    Incarnation, Lease, LeaseId, PageRead, PinTtl, ReadView, StoreError, StoreResult, Version,
    random_id,
};
use pagewire_server_core::validate;
use tokio::time::Instant;

use crate::engine::{Batch, EngineError, Snapshot};
use crate::keys::{self, DbId};
use crate::records::{self, Head, MetaRecord};

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
}

fn corrupt(what: String) -> EngineError {
    EngineError::Corrupt(what)
}

impl KvDb {
    /// A new, empty database and the batch that creates it (catalog entry included).
    pub fn create(catalog_key: Vec<u8>, now_unix_ms: i64) -> (Self, Batch) {
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
    pub fn load(snap: &dyn Snapshot, id: DbId, head_bytes: Vec<u8>) -> Result<Self, EngineError> {
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
        let mut pages = PageWrites::default();
        let (start, end) = keys::writes(id);
        for (key, value) in snap.scan(&start, &end, false, usize::MAX)? {
            let (page, version) = keys::write_page_version(&key)
                .ok_or_else(|| corrupt(format!("a page index key of {} bytes", key.len())))?;
            let version = Version(version);
            let len = records::read_write_len(&value)?;
            pages.load(page, version, len.map(|len| PageRef { version, len }));
        }
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
    ) -> StoreResult<(Lease, Batch)> {
        let record = self.head.lease.acquire(client_id, ttl, now_unix_ms)?;
        Ok((record.lease(self.state()), self.head_only()))
    }

    pub fn renew(
        &mut self,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
        now_unix_ms: i64,
    ) -> StoreResult<(Lease, Batch)> {
        let record = self.head.lease.renew(lease_id, epoch, ttl, now_unix_ms)?;
        Ok((record.lease(self.state()), self.head_only()))
    }

    /// The batch of a release, `None` when the lease was not the current one.
    pub fn release(&mut self, lease_id: LeaseId, epoch: u64) -> Option<Batch> {
        self.head
            .lease
            .release(lease_id, epoch)
            .then(|| self.head_only())
    }

    fn head_only(&mut self) -> Batch {
        let mut batch = Batch::default();
        self.finish(&mut batch);
        batch
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
        let key = keys::data(self.id, no, at.version.0);
        let data = snap.get(&key).map_err(crate::store_error)?.ok_or_else(|| {
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

    pub fn precheck(
        &self,
        h: &CommitHeader,
        name: &str,
        now_unix_ms: i64,
    ) -> StoreResult<Option<CommitOutcome>> {
        let (history, ids, lease) = (&self.history, &self.commit_ids, &self.head.lease);
        commit_check::check(h, name, history, ids, lease, now_unix_ms)
    }

    /// A commit: its outcome, and the batch to write unless it was a retry.
    pub fn commit(
        &mut self,
        commit: Commit,
        name: &str,
        now_unix_ms: i64,
    ) -> StoreResult<(CommitOutcome, Option<Batch>)> {
        if let Some(done) = self.precheck(&commit.header(), name, now_unix_ms)? {
            return Ok((done, None));
        }
        let base = self.state();
        validate::against_base(&commit, &base)?;
        // Renewed before the head is written, so a restart keeps the renewal.
        self.head.lease.touch(now_unix_ms);
        let batch = self.apply(commit, base, now_unix_ms);
        let version = self.state().version;
        Ok((
            commit_check::outcome(&self.history, version, false),
            Some(batch),
        ))
    }

    /// Writes a checked commit as version `base.version + 1`, in memory and in a batch.
    fn apply(&mut self, commit: Commit, base: DbState, now_unix_ms: i64) -> Batch {
        let version = Version(base.version.0 + 1);
        let (id, v) = (self.id, version.0);
        let mut batch = Batch::default();
        let refs: Vec<(u32, PageRef)> = commit
            .pages
            .iter()
            .map(|(no, data)| {
                (
                    *no,
                    PageRef {
                        version,
                        len: data.len() as u32,
                    },
                )
            })
            .collect();
        for (no, data) in commit.pages {
            batch.put(
                keys::write(id, no, v),
                records::write_len(Some(data.len() as u32)),
            );
            batch.put(keys::data(id, no, v), data);
        }
        let changed = self
            .pages
            .write(refs, base.page_count, commit.page_count, version);
        for no in self
            .pages
            .holes_written(base.page_count, commit.page_count, version)
        {
            batch.put(keys::write(id, no, v), records::write_len(None));
        }
        self.history.push(VersionMeta {
            page_size: commit.page_size,
            page_count: commit.page_count,
            committed_unix_ms: now_unix_ms,
            tag: random_id(),
            changed,
            retained: true,
        });
        if let Some(meta) = self.history.meta(version) {
            batch.put(keys::meta(id, v), records::encode(&MetaRecord::from(meta)));
        }
        self.commit_ids.remember(commit.commit_id, version);
        batch.put(keys::commit_id(id, v), commit.commit_id.0.to_vec());
        if let Some(old) = v.checked_sub(COMMIT_IDS_KEPT as u64) {
            batch.delete(keys::commit_id(id, old));
        }
        self.finish(&mut batch);
        batch
    }

    /// One GC pass over this database, and its batch when it changed anything.
    pub fn gc(
        &mut self,
        now_unix_ms: i64,
        retention: Duration,
        now: Instant,
    ) -> (GcStats, Option<Batch>) {
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
        let mut batch = Batch::default();
        let pass = self
            .pages
            .gc_with(&mut self.history, &kept, retention, |no, (v, data)| {
                batch.delete(keys::write(id, no, v.0));
                if data.is_some() {
                    batch.delete(keys::data(id, no, v.0));
                }
            });
        let new_oldest = self.history.oldest().0;
        if new_oldest > old_oldest {
            batch.delete_range(keys::meta(id, old_oldest), keys::meta(id, new_oldest));
        }
        for (i, meta) in self.history.versions().iter().enumerate() {
            let v = new_oldest + i as u64;
            let before = was_retained
                .get((v - old_oldest) as usize)
                .copied()
                .unwrap_or(true);
            if before && !meta.retained {
                batch.put(keys::meta(id, v), records::encode(&MetaRecord::from(meta)));
            }
        }
        self.finish(&mut batch);
        (
            GcStats {
                databases: 1,
                ..pass
            },
            Some(batch),
        )
    }
}
