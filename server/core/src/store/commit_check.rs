//! The checks of a commit that need only its header, in the order every store runs them
//! (see [`PageStore::precheck`](crate::store::PageStore::precheck)): the incarnation; the
//! commit id (a retry of an applied commit learns its outcome, even after its lease
//! lapsed); the lease (fencing); the base version; the base version's tag. And the bounded
//! log of recent commit ids the second check looks in.

use std::collections::{HashMap, VecDeque};

use crate::store::history::History;
use crate::store::lease_slot::LeaseSlot;
use crate::store::{
    CommitHeader, CommitId, CommitOutcome, DbState, StoreError, StoreResult, Version,
};

/// How many recent commit ids each database remembers for retries.
pub const COMMIT_IDS_KEPT: usize = 1024;

/// Recently applied commit ids (the last [`COMMIT_IDS_KEPT`]), so a retry learns its
/// outcome. Separate from the page history: GC never trims it.
#[derive(Debug, Clone, Default)]
pub struct CommitIds {
    versions: HashMap<CommitId, Version>,
    order: VecDeque<CommitId>,
}

impl CommitIds {
    pub fn get(&self, id: &CommitId) -> Option<Version> {
        self.versions.get(id).copied()
    }

    pub fn remember(&mut self, id: CommitId, version: Version) {
        self.versions.insert(id, version);
        self.order.push_back(id);
        while self.order.len() > COMMIT_IDS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.versions.remove(&old);
            }
        }
    }
}

/// The outcome of the commit that created `version`.
pub fn outcome(history: &History, version: Version, already_applied: bool) -> CommitOutcome {
    CommitOutcome {
        version,
        already_applied,
        incarnation: history.incarnation(),
        tag: history.tag_of(version),
    }
}

/// The header checks in order, each step asking the store: `applied` looks the commit id
/// up (the outcome when it applied), `lease` checks the lease, `current` is the state the
/// commit must be based on. `Some` outcome for a known commit id, `None` when the commit
/// may go on to [`validate::against_base`](crate::validate::against_base) and be applied.
pub fn check_with(
    h: &CommitHeader,
    name: &str,
    incarnation: &crate::store::Incarnation,
    applied: impl FnOnce(&CommitId) -> Option<CommitOutcome>,
    lease: impl FnOnce() -> StoreResult<()>,
    current: impl FnOnce() -> DbState,
) -> StoreResult<Option<CommitOutcome>> {
    h.identity.check_incarnation(name, incarnation)?;
    if let Some(done) = applied(&h.commit_id) {
        return Ok(Some(done));
    }
    lease()?;
    let current = current();
    if h.base_version != current.version {
        return Err(StoreError::VersionConflict {
            base: h.base_version,
            current: current.version,
        });
    }
    h.identity.check_state(name, &current)?;
    Ok(None)
}

/// [`check_with`] for a store that keeps a database's [`History`], [`CommitIds`] and
/// [`LeaseSlot`] at hand (in memory).
pub fn check(
    h: &CommitHeader,
    name: &str,
    history: &History,
    commit_ids: &CommitIds,
    lease: &LeaseSlot,
    now_unix_ms: i64,
) -> StoreResult<Option<CommitOutcome>> {
    check_with(
        h,
        name,
        &history.incarnation(),
        |id| commit_ids.get(id).map(|v| outcome(history, v, true)),
        || lease.check(h.lease_id, h.epoch, now_unix_ms).map(drop),
        || history.state(),
    )
}
