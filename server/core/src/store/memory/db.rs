//! One database of the memory store: its pages, version history, reader pins, write
//! lease and commit-id log, and the store operations on them (each called under the
//! database's lock, so each is atomic).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::lease::{LeaseRecord, LeaseSlot};
use super::pages::Pages;
use crate::store::history::{History, Pins, VersionMeta};
use crate::store::{
    BeginRead, Commit, CommitHeader, CommitId, CommitOutcome, DbInfo, DbState, GcStats, Lease,
    LeaseId, PageRead, PinTtl, ReadView, StoreError, StoreResult, Version, random_id,
};
use crate::validate;

/// How many recent commit ids each database remembers for retries.
const COMMIT_IDS_KEPT: usize = 1024;

/// Recently applied commit ids, so a retry learns its outcome. Separate from the page
/// history: GC never trims it.
#[derive(Debug, Default)]
struct CommitLog {
    versions: HashMap<CommitId, Version>,
    order: VecDeque<CommitId>,
}

impl CommitLog {
    fn get(&self, id: &CommitId) -> Option<Version> {
        self.versions.get(id).copied()
    }

    fn remember(&mut self, id: CommitId, version: Version) {
        self.versions.insert(id, version);
        self.order.push_back(id);
        while self.order.len() > COMMIT_IDS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.versions.remove(&old);
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct MemDb {
    /// Set by delete, so a call that raced with it sees NotFound.
    pub deleted: bool,
    created_unix_ms: i64,
    pages: Pages,
    history: History,
    pins: Pins,
    lease: LeaseSlot,
    commit_ids: CommitLog,
}

impl MemDb {
    pub(super) fn new(now_unix_ms: i64) -> Self {
        Self {
            deleted: false,
            created_unix_ms: now_unix_ms,
            pages: Pages::default(),
            history: History::new(now_unix_ms, random_id()),
            pins: Pins::default(),
            lease: LeaseSlot::default(),
            commit_ids: CommitLog::default(),
        }
    }

    pub(super) fn state(&self) -> DbState {
        self.history.state()
    }

    pub(super) fn info(&self, name: &str, now: Instant) -> DbInfo {
        DbInfo {
            name: name.to_owned(),
            state: self.state(),
            stored_bytes: self.pages.stored_bytes(),
            oldest_version: self.history.oldest(),
            created_unix_ms: self.created_unix_ms,
            updated_unix_ms: self
                .history
                .updated_unix_ms()
                .unwrap_or(self.created_unix_ms),
            lease_held: self.lease.live(now).is_some(),
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

    pub(super) fn acquire(
        &mut self,
        client_id: &str,
        ttl: Duration,
        now: Instant,
    ) -> StoreResult<Lease> {
        let record = self.lease.acquire(client_id, ttl, now)?;
        Ok(self.grant(&record))
    }

    pub(super) fn renew(
        &mut self,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
        now: Instant,
    ) -> StoreResult<Lease> {
        let record = self.lease.renew(lease_id, epoch, ttl, now)?;
        Ok(self.grant(&record))
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
        let pages = page_nos
            .iter()
            .map(|&no| self.pages.at(no, version, state.page_size))
            .collect::<StoreResult<_>>()?;
        self.pins.refresh(version, pin, now);
        Ok(PageRead {
            state,
            page_size: state.page_size,
            pages,
        })
    }

    /// The checks of [`MemDb::commit`] that need only the header: `Some` outcome when
    /// the commit id is known, else the lease and base version.
    pub(super) fn precheck(
        &mut self,
        h: &CommitHeader,
        name: &str,
        now: Instant,
    ) -> StoreResult<Option<CommitOutcome>> {
        h.identity
            .check_incarnation(name, &self.history.incarnation())?;
        if let Some(version) = self.commit_ids.get(&h.commit_id) {
            return Ok(Some(CommitOutcome {
                version,
                already_applied: true,
                incarnation: self.history.incarnation(),
                tag: self.history.tag_of(version),
            }));
        }
        self.lease.check(h.lease_id, h.epoch, now)?;
        let current = self.state();
        if h.base_version != current.version {
            return Err(StoreError::VersionConflict {
                base: h.base_version,
                current: current.version,
            });
        }
        h.identity.check_state(name, &current)?;
        Ok(None)
    }

    pub(super) fn commit(
        &mut self,
        commit: Commit,
        name: &str,
        now: Instant,
        now_unix_ms: i64,
    ) -> StoreResult<CommitOutcome> {
        if let Some(done) = self.precheck(&commit.header(), name, now)? {
            return Ok(done);
        }
        let base = self.state();
        validate::against_base(&commit, &base)?;
        let created = self.apply(commit, base, now_unix_ms);
        self.lease.touch(now);
        Ok(CommitOutcome {
            version: created.version,
            already_applied: false,
            incarnation: created.incarnation,
            tag: Some(created.tag),
        })
    }

    /// Writes a checked commit as version `base.version + 1`; returns that state.
    fn apply(&mut self, commit: Commit, base: DbState, now_unix_ms: i64) -> DbState {
        let version = Version(base.version.0 + 1);
        let (commit_id, page_size, page_count) =
            (commit.commit_id, commit.page_size, commit.page_count);
        let changed = self.pages.write(commit, base.page_count, version);
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
        let kept = self
            .history
            .kept(now_unix_ms, retention, |v| self.pins.holds(v, now));
        let collecting = self.history.readable_count() > kept.len();
        let mut stats = GcStats {
            databases: 1,
            ..GcStats::default()
        };
        if !collecting && !self.pages.has_pages_past(&kept) {
            return stats;
        }
        (stats.writes_removed, stats.bytes_freed) = self.pages.trim(&kept);
        if collecting {
            stats.versions_collected = self.history.collect(&kept, retention);
        }
        stats
    }
}
