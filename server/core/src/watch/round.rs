//! A commit's invalidation round (see the module above for the rules).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pagewire_proto::v1 as pb;
use tokio::time::Instant;

use super::{DbWatch, Hub, WatchState};
use crate::store::{
    BeginRead, Changes, Commit, CommitOutcome, DbKey, DbState, NO_TAG, PageStore, ReadAt,
    StoreResult, WireChanges,
};

/// What a round tells watchers at its end.
enum End {
    /// Nothing changed (the commit failed, or was a retry of one already published).
    Unchanged,
    /// The commit applied: the new state, the pages it carried, and the contents of
    /// small commits.
    Applied(DbState, Vec<u32>, Vec<pb::Page>),
    /// The state changed in ways not known page by page: drop caches.
    Reset(DbState),
    /// The outcome could not be learned: end every stream, learn the state anew.
    Unknown,
}

impl Hub {
    /// Applies `commit` through `store` inside an invalidation round. Runs to the end
    /// even if the caller goes away (spawn it): a half-done round would stall readers.
    pub async fn commit(
        self: Arc<Self>,
        store: Arc<dyn PageStore>,
        key: DbKey,
        commit: Commit,
    ) -> StoreResult<CommitOutcome> {
        tokio::time::sleep_until(self.first_commit_at).await;
        let w = self.entry(&key);
        let outcome = self.round(&*store, &key, &w, commit).await;
        self.release(&key, w);
        outcome
    }

    async fn round(
        &self,
        store: &dyn PageStore,
        key: &DbKey,
        w: &DbWatch,
        commit: Commit,
    ) -> StoreResult<CommitOutcome> {
        let _round = w.round_lock.lock().await;
        let (round, pin) = self.begin(&mut w.state.lock());
        let waited = Instant::now();
        // Lease holders read the current version without BeginRead, so nothing pinned
        // it; pin it now, while it is still the newest, so their running transactions
        // keep it readable after this commit (until the pin TTL, extended by reads).
        let pin = async {
            if let Some(version) = pin {
                let at = ReadAt::Version(version);
                let read = BeginRead {
                    cached_version: version,
                    at,
                    pin: self.pin,
                    max_changes: 0,
                    seen_version: 0,
                };
                if let Err(e) = store.begin_read(key, read).await {
                    tracing::debug!(db = %key, version, "pinning for read lease holders failed: {e}");
                }
            }
        };
        tokio::join!(wait_for_acks(w, round), pin);
        let metrics = self.metrics.tenant(&key.tenant);
        metrics.invalidation_wait.record(waited.elapsed());
        metrics.commits.fetch_add(1, Ordering::Relaxed);
        let written: Vec<u32> = commit.pages.iter().map(|(no, _)| *no).collect();
        let contents = small_commit_pages(&commit);
        let (page_size, page_count) = (commit.page_size, commit.page_count);
        let result = store.commit(key, commit).await;
        let end = match &result {
            Ok(o) if o.already_applied => End::Unchanged,
            Ok(o) => {
                let state = DbState {
                    version: o.version,
                    page_size,
                    page_count,
                    incarnation: o.incarnation,
                    tag: o.tag.unwrap_or(NO_TAG),
                };
                End::Applied(state, written, contents)
            }
            Err(e) if e.is_client_error() => End::Unchanged,
            // The store may or may not have applied it: ask.
            Err(_) => match store.open(key, false).await {
                Ok((state, _)) => End::Reset(state),
                Err(_) => End::Unknown,
            },
        };
        finish(
            &mut w.state.lock(),
            round,
            end,
            self.max_change_list,
            self.read_lease_ttl,
        );
        w.acked.notify_waiters();
        result
    }

    /// Starts a round: every lease holder hears it; from now on no one serves the old
    /// state. Returns its number, and the version to pin for lease holders: the one
    /// they may be reading, unless GC keeps it anyway for longer than a pin would
    /// (committed here within `history_retention - pin_ttl`).
    fn begin(&self, s: &mut WatchState) -> (u64, Option<u64>) {
        s.round += 1;
        s.in_round = true;
        let round = s.round;
        let now = Instant::now();
        let mut leased = false;
        for w in s.watchers.values_mut().filter(|w| w.lease_valid(now)) {
            leased = true;
            w.invalidated = round;
            w.send(pb::watch_event::Event::Invalidate(pb::Invalidate { round }));
        }
        let kept_anyway = s
            .published_at
            .is_some_and(|t| t.elapsed() + self.pin.ttl < self.history_retention);
        let pin = s
            .published
            .map(|p| p.version)
            .filter(|v| leased && *v > 0 && !kept_anyway);
        (round, pin)
    }
}

/// Waits until every unexpired read lease holder acknowledged `round`.
async fn wait_for_acks(w: &DbWatch, round: u64) {
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

/// Commits up to this size travel to watchers inside `RoundEnd`: readers then need
/// no ReadPages for what a typical small transaction wrote.
const PUSHED_PAGES: usize = 16;
const PUSHED_BYTES: usize = 256 << 10;

/// The written pages (shared, not copied) when the commit is small enough to push.
fn small_commit_pages(commit: &Commit) -> Vec<pb::Page> {
    let bytes: usize = commit.pages.iter().map(|(_, d)| d.len()).sum();
    if commit.pages.len() > PUSHED_PAGES || bytes > PUSHED_BYTES {
        return Vec::new();
    }
    commit
        .pages
        .iter()
        .map(|(page_no, data)| pb::Page {
            page_no: *page_no,
            data: data.clone(),
        })
        .collect()
}

/// Ends round `n`: publishes its outcome to every watcher, and grants the read leases
/// asked for during it.
fn finish(s: &mut WatchState, round: u64, end: End, limit: usize, ttl: Duration) {
    s.in_round = false;
    let (state, changes, pages) = match (end, s.published) {
        (End::Unknown, _) | (End::Unchanged | End::Applied(..) | End::Reset(_), None) => {
            super::end_all(
                s,
                tonic::Status::unavailable("lost track of the database's state; watch again"),
            );
            return;
        }
        (End::Unchanged, Some(old)) => (old, Some(Changes::default()), Vec::new()),
        (End::Reset(new), Some(old)) => (new, (new == old).then(Changes::default), Vec::new()),
        (End::Applied(new, written, pages), Some(old)) => {
            // Pages past the old end were zeros (or stale) before: a range.
            let usable = old.page_size == new.page_size && new.version == old.version + 1;
            (
                new,
                usable.then(|| Changes::of_commit(written, old.page_count, new.page_count)),
                pages,
            )
        }
    };
    if s.published != Some(state) {
        s.published_at = Some(Instant::now());
    }
    s.published = Some(state);
    // Built once per flavour: clients that take ranges, and older ones.
    let flavour = |ranges: bool| {
        let wire = WireChanges::new(changes.as_ref(), ranges, state.page_count, limit);
        pb::RoundEnd {
            round,
            state: Some(state.into()),
            pages: if wire.invalid {
                Vec::new()
            } else {
                pages.clone()
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
    super::grant_deferred(s, ttl);
}
