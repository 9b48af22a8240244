//! One database of the memory store: its pages, version history, reader pins, write
//! lease and commit-id log, and the store operations on them (each called under the
//! database's lock, so each is atomic).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::store::commit_check::{self, CommitIds};
use crate::store::history::{History, Pins, RestorePoints, VersionMeta};
use crate::store::lease_slot::LeaseSlot;
use crate::store::page_writes::{Lookup, PageWrites, zero_page};
use crate::store::{
    BeginRead, Changes, Commit, CommitHeader, CommitOutcome, DbInfo, DbState, GcStats, Lease,
    LeaseId, PageRead, PinTtl, ReadAt, ReadView, RestorePoint, StoreError, StoreResult, Version,
    random_id,
};
use crate::validate;

/// Where a branch's unwritten pages come from: its source at the fork's version (held
/// there in `branches` while this branch exists).
#[derive(Debug, Clone)]
pub(super) struct Ancestor {
    pub db: Arc<Mutex<MemDb>>,
    pub version: Version,
    /// Branches between this database and the root, itself included.
    pub depth: usize,
}

#[derive(Debug)]
pub(super) struct MemDb {
    /// Set by delete, so a call that raced with it sees NotFound.
    pub deleted: bool,
    created_unix_ms: i64,
    pages: PageWrites<Bytes>,
    history: History,
    pins: Pins,
    lease: LeaseSlot,
    commit_ids: CommitIds,
    pub ancestor: Option<Ancestor>,
    /// Versions branches were forked at, with how many live branches read each.
    pub branches: BTreeMap<Version, usize>,
    restore_points: RestorePoints,
}

impl MemDb {
    pub(super) fn new(now_unix_ms: i64) -> Self {
        Self {
            deleted: false,
            created_unix_ms: now_unix_ms,
            pages: PageWrites::default(),
            history: History::new(now_unix_ms, random_id()),
            pins: Pins::default(),
            lease: LeaseSlot::default(),
            commit_ids: CommitIds::default(),
            ancestor: None,
            branches: BTreeMap::new(),
            restore_points: RestorePoints::default(),
        }
    }

    /// A branch of `ancestor` at `at` (a non-empty state of it): version 1 is that state,
    /// every page read through to it.
    pub(super) fn branch(now_unix_ms: i64, at: DbState, ancestor: Ancestor) -> Self {
        let mut db = Self::new(now_unix_ms);
        db.pages = PageWrites::inheriting(at.page_count);
        db.history.push(VersionMeta {
            page_size: at.page_size,
            page_count: at.page_count,
            committed_unix_ms: now_unix_ms,
            tag: random_id(),
            changed: Changes::of_commit([], 0, at.page_count),
            retained: true,
        });
        db.ancestor = Some(ancestor);
        db
    }

    /// How many branches deep this database is (0: not a branch).
    pub(super) fn depth(&self) -> usize {
        self.ancestor.as_ref().map_or(0, |a| a.depth)
    }

    /// The readable state `at` resolves to.
    pub(super) fn resolve(&self, at: ReadAt) -> StoreResult<DbState> {
        let version = self.history.resolve(at)?;
        Ok(self.history.readable(version)?.0)
    }

    /// Bytes of page data this database holds itself (not its ancestors').
    pub(super) fn stored_bytes(&self) -> u64 {
        self.pages.stored_bytes()
    }

    pub(super) fn add_restore_point(
        &mut self,
        name: &str,
        label: &str,
        at: ReadAt,
        now_unix_ms: i64,
    ) -> StoreResult<RestorePoint> {
        self.restore_points.check_room(name, label)?;
        let state = self.resolve(at)?;
        self.restore_points.add(name, label, state, now_unix_ms)
    }

    pub(super) fn restore_points(&self) -> Vec<RestorePoint> {
        self.restore_points.list()
    }

    pub(super) fn remove_restore_point(&mut self, name: &str, label: &str) -> StoreResult<()> {
        self.restore_points.remove(name, label).map(|_| ())
    }

    /// Forgets restore points (a deleted database that stays for its branches).
    pub(super) fn clear_restore_points(&mut self) {
        self.restore_points.clear();
    }

    /// The versions kept whatever their age: branch points and restore points.
    fn held(&self) -> BTreeSet<Version> {
        let mut held = self.restore_points.versions();
        held.extend(self.branches.keys().copied());
        held
    }

    pub(super) fn state(&self) -> DbState {
        self.history.state()
    }

    pub(super) fn info(&self, name: &str, now_unix_ms: i64) -> DbInfo {
        let (bytes, lease_held) = (
            self.pages.stored_bytes(),
            self.lease.live(now_unix_ms).is_some(),
        );
        self.history
            .info(name, self.created_unix_ms, bytes, lease_held)
    }

    pub(super) fn acquire(
        &mut self,
        client_id: &str,
        lease_id: LeaseId,
        ttl: Duration,
        now_unix_ms: i64,
    ) -> StoreResult<Lease> {
        let record = self.lease.acquire(client_id, lease_id, ttl, now_unix_ms)?;
        Ok(record.lease(self.state()))
    }

    pub(super) fn renew(
        &mut self,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
        now_unix_ms: i64,
    ) -> StoreResult<Lease> {
        let record = self.lease.renew(lease_id, epoch, ttl, now_unix_ms)?;
        Ok(record.lease(self.state()))
    }

    pub(super) fn release(&mut self, lease_id: LeaseId, epoch: u64) {
        self.lease.release(lease_id, epoch);
    }

    pub(super) fn begin_read(&mut self, read: BeginRead, now: Instant) -> StoreResult<ReadView> {
        let view = self.history.view(&read)?;
        self.pins.pin(view.state.version, read.pin, now);
        Ok(view)
    }

    pub(super) fn read(
        &mut self,
        version: Version,
        page_nos: &[u32],
        pin: PinTtl,
        now: Instant,
    ) -> StoreResult<PageRead> {
        let (state, _) = self.history.readable(version)?;
        validate::page_nos_in_range(page_nos, state.page_count)?;
        let pages = self.pages_at(version, page_nos, state.page_size)?;
        self.pins.refresh(version, pin, now);
        Ok(PageRead {
            state,
            page_size: state.page_size,
            pages,
        })
    }

    /// Pages at a readable `version` of `page_size` bytes: a branch's unwritten pages
    /// from its ancestors (locked one after another, each a descendant's source: locks
    /// are only ever taken from a branch towards its root, never back).
    pub(super) fn pages_at(
        &self,
        version: Version,
        page_nos: &[u32],
        page_size: u32,
    ) -> StoreResult<Vec<Bytes>> {
        let mut pages = Vec::with_capacity(page_nos.len());
        let mut inherited = Vec::new();
        for (i, &no) in page_nos.iter().enumerate() {
            let page = match self.pages.lookup(no, version) {
                Lookup::Data(data) => check_len(data, no, version, page_size)?,
                Lookup::Unwritten if no <= self.pages.inherited() => {
                    inherited.push(i);
                    Bytes::new()
                }
                Lookup::Zeros | Lookup::Unwritten => zero_page(page_size),
            };
            pages.push(page);
        }
        if let (Some(ancestor), false) = (&self.ancestor, inherited.is_empty()) {
            let nos: Vec<u32> = inherited.iter().map(|&i| page_nos[i]).collect();
            let from = ancestor
                .db
                .lock()
                .pages_at(ancestor.version, &nos, page_size)?;
            for (i, page) in inherited.into_iter().zip(from) {
                pages[i] = page;
            }
        }
        Ok(pages)
    }

    /// The checks of [`MemDb::commit`] that need only the header (see
    /// [`commit_check`]): `Some` outcome when the commit id is known.
    pub(super) fn precheck(
        &self,
        h: &CommitHeader,
        name: &str,
        now_unix_ms: i64,
    ) -> StoreResult<Option<CommitOutcome>> {
        let (history, ids, lease) = (&self.history, &self.commit_ids, &self.lease);
        commit_check::check(h, name, history, ids, lease, now_unix_ms)
    }

    pub(super) fn commit(
        &mut self,
        commit: Commit,
        name: &str,
        now_unix_ms: i64,
    ) -> StoreResult<CommitOutcome> {
        if let Some(done) = self.precheck(&commit.header(), name, now_unix_ms)? {
            return Ok(done);
        }
        let base = self.state();
        validate::against_base(&commit, &base)?;
        let created = self.apply(commit, base, now_unix_ms);
        self.lease.touch(now_unix_ms);
        Ok(commit_check::outcome(&self.history, created.version, false))
    }

    /// Writes a checked commit as version `base.version + 1`; returns that state.
    fn apply(&mut self, commit: Commit, base: DbState, now_unix_ms: i64) -> DbState {
        let version = Version(base.version.0 + 1);
        let (commit_id, page_size, page_count) =
            (commit.commit_id, commit.page_size, commit.page_count);
        // Kept as they are: the service copied them out of the received message.
        let changed = self
            .pages
            .write(commit.pages, base.page_count, page_count, version);
        self.history.push(VersionMeta {
            page_size,
            page_count,
            committed_unix_ms: now_unix_ms,
            tag: random_id(),
            changed,
            retained: true,
        });
        self.commit_ids.remember(commit_id, version);
        self.state()
    }

    /// One GC pass over this database (see [`crate::store::PageStore::gc`]).
    pub(super) fn gc(&mut self, now_unix_ms: i64, retention: Duration, now: Instant) -> GcStats {
        self.pins.expire(now);
        let held = self.held();
        let kept = self.history.kept(now_unix_ms, retention, |v| {
            self.pins.holds(v, now) || held.contains(&v)
        });
        GcStats {
            databases: 1,
            ..self.pages.gc(&mut self.history, &kept, retention)
        }
    }
}

/// A stored page, checked to be `page_size` bytes.
fn check_len(data: &Bytes, no: u32, version: Version, page_size: u32) -> StoreResult<Bytes> {
    if data.len() != page_size as usize {
        return Err(StoreError::Internal(format!(
            "page {no} at version {version} is {} bytes, expected {page_size}",
            data.len()
        )));
    }
    Ok(data.clone())
}
