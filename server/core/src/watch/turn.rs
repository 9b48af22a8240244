//! The watchers' side of a commit's invalidation round: what the round
//! (`service::commit::round`) needs to do to them, without knowing how they are kept.

use std::sync::Arc;

use pagewire_proto::v1 as pb;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use super::{DbWatch, Hub, end_all, grant_deferred};
use crate::store::{Changes, DbKey, DbState, PinTtl, WireChanges};

/// One database held for a commit's round: no other round of it runs, and its published
/// state is not learned anew, until [`Turn::end`].
pub struct Turn {
    hub: Arc<Hub>,
    key: DbKey,
    db: Arc<DbWatch>,
    _round_lock: OwnedMutexGuard<()>,
}

/// What a round found when it started.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// The round's number (what `Invalidate`, the acknowledgements and `RoundEnd` carry).
    pub round: u64,
    /// Some watcher held an unexpired read lease (and was sent `Invalidate`).
    pub lease_holders: bool,
    /// The newest published state, and when this server published it (`None`: learned
    /// from the store).
    pub published: Option<DbState>,
    pub published_at: Option<Instant>,
}

/// What a round's end tells every watcher.
#[derive(Debug, Clone)]
pub struct Publication {
    pub state: DbState,
    /// The pages changed since the state published before, `None` when not known page
    /// by page (clients drop their caches).
    pub changes: Option<Changes>,
    /// The contents of the changed pages, when small enough to push (shared, not copied).
    pub pages: Vec<pb::Page>,
}

impl Hub {
    /// Waits for `key`'s turn to run a round: after the round running now, if any, and
    /// not before one read lease length after this server started (leases a previous
    /// run granted may still be held).
    pub async fn round_turn(self: &Arc<Self>, key: &DbKey) -> Turn {
        tokio::time::sleep_until(self.first_commit_at).await;
        let db = self.entry(key);
        let round_lock = db.round_lock.clone().lock_owned().await;
        Turn {
            hub: self.clone(),
            key: key.clone(),
            db,
            _round_lock: round_lock,
        }
    }

    /// How the version lease holders read is pinned when a commit supersedes it.
    pub fn pin_ttl(&self) -> PinTtl {
        self.pin
    }

    /// GC keeps every version committed within this window (no pin needed there).
    pub fn history_retention(&self) -> std::time::Duration {
        self.history_retention
    }
}

impl Turn {
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn key(&self) -> &DbKey {
        &self.key
    }

    /// Starts a round: every unexpired read lease holder is sent `Invalidate`; from now
    /// on no lease holder serves the published state.
    pub fn start(&self) -> Started {
        let s = &mut *self.db.state.lock();
        s.round += 1;
        s.in_round = true;
        let round = s.round;
        let now = Instant::now();
        let mut lease_holders = false;
        for w in s.watchers.values_mut().filter(|w| w.lease_valid(now)) {
            lease_holders = true;
            w.invalidated = round;
            w.send(pb::watch_event::Event::Invalidate(pb::Invalidate { round }));
        }
        Started {
            round,
            lease_holders,
            published: s.published,
            published_at: s.published_at,
        }
    }

    /// Waits until every holder of an unexpired read lease acknowledged `round` (a lease
    /// that runs out meanwhile is not waited for any longer).
    pub async fn acknowledged(&self, round: u64) {
        let w = &*self.db;
        loop {
            let acked = w.acked.notified();
            tokio::pin!(acked);
            // Registered before looking, so an acknowledgement in between is not missed.
            acked.as_mut().enable();
            let now = Instant::now();
            let next_expiry = {
                let s = w.state.lock();
                let pending = s
                    .watchers
                    .values()
                    .filter(|x| x.acked < round && x.lease_valid(now));
                pending.filter_map(|x| x.lease_until).min()
            };
            let Some(expiry) = next_expiry else { return };
            tokio::select! {
                () = acked => {}
                () = tokio::time::sleep_until(expiry) => {}
            }
        }
    }

    /// Ends `round`: `outcome` turns the state published before (read under the same
    /// lock as the publishing, since a delete may forget it meanwhile) into what to
    /// publish, `None` when the database's state is lost track of (every stream ends,
    /// its client watches again). Then grants the read leases asked for during the
    /// round and gives the turn up.
    pub fn end(self, round: u64, outcome: impl FnOnce(Option<DbState>) -> Option<Publication>) {
        self.publish(round, outcome);
        self.give_up();
    }

    fn publish(&self, round: u64, outcome: impl FnOnce(Option<DbState>) -> Option<Publication>) {
        let s = &mut *self.db.state.lock();
        s.in_round = false;
        let Some(p) = outcome(s.published) else {
            end_all(
                s,
                tonic::Status::unavailable("lost track of the database's state; watch again"),
            );
            return;
        };
        if s.published != Some(p.state) {
            s.published_at = Some(Instant::now());
        }
        s.published = Some(p.state);
        let limit = self.hub.max_change_list;
        // Built once per flavour: clients that take ranges, and older ones.
        let flavour = |ranges: bool| {
            let wire = WireChanges::new(p.changes.as_ref(), ranges, p.state.page_count, limit);
            pb::RoundEnd {
                round,
                state: Some(p.state.into()),
                pages: if wire.invalid {
                    Vec::new()
                } else {
                    p.pages.clone()
                },
                changed_pages: wire.pages,
                cache_invalid: wire.invalid,
                changed_from: wire.from,
            }
        };
        let (newer, older) = (flavour(true), flavour(false));
        for w in s.watchers.values_mut() {
            let end = if w.ranges { &newer } else { &older };
            w.send(pb::watch_event::Event::RoundEnd(end.clone()));
        }
        grant_deferred(s, self.hub.read_lease_ttl);
    }

    /// Wakes whoever waits on an acknowledgement (a lease ask deferred, a watcher
    /// leaving), lets the next round run, and forgets the database's entry if nothing
    /// else uses it.
    fn give_up(self) {
        self.db.acked.notify_waiters();
        let Turn {
            hub,
            key,
            db,
            _round_lock,
        } = self;
        drop(_round_lock);
        hub.release(&key, db);
    }
}
