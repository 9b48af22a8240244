//! One database of the memory store: its pages, version history, reader pins, write
//! lease and commit-id log, and the store operations on them (each called under the
//! database's lock, so each is atomic).

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::store::commit_check::{self, CommitIds};
use crate::store::history::{History, Pins, VersionMeta};
use crate::store::lease_slot::LeaseSlot;
use crate::store::page_writes::PageWrites;
use crate::store::{
    BeginRead, Commit, CommitHeader, CommitOutcome, DbInfo, DbState, GcStats, Lease, LeaseId,
    PageRead, PinTtl, ReadView, StoreResult, Version, random_id,
};
use crate::validate;

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
        }
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
        ttl: Duration,
        now_unix_ms: i64,
    ) -> StoreResult<Lease> {
        let record = self.lease.acquire(client_id, ttl, now_unix_ms)?;
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
        let read = self.pages.read(&self.history, version, page_nos)?;
        self.pins.refresh(version, pin, now);
        Ok(read)
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
        let kept = self
            .history
            .kept(now_unix_ms, retention, |v| self.pins.holds(v, now));
        GcStats {
            databases: 1,
            ..self.pages.gc(&mut self.history, &kept, retention)
        }
    }
}
