//! A commit's invalidation round: why a client holding a read lease may serve the newest
//! state it heard of with no round trip, and never a state a commit superseded.
//!
//! 1. [`Round::begin`]: under the database's round lock ([`Turn`]), every read lease
//!    holder is sent `Invalidate`;
//! 2. [`Round::wait_for_readers`]: the commit waits until every holder of an unexpired
//!    read lease acknowledged, or its lease ran out (the watchers' rules bound this by
//!    one lease length, see [`crate::watch`]);
//! 3. only then the store applies the commit (`super::apply`): so neither BeginRead nor
//!    anyone else can see the new version before;
//! 4. [`Round::end`]: the outcome, whatever it is, is published to every watcher
//!    (`RoundEnd`), and the writer gets its reply.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pagewire_proto::v1 as pb;
use tokio::time::Instant;

use crate::store::{
    BeginRead, Changes, Commit, CommitOutcome, DbState, NO_TAG, PageStore, ReadAt, StoreResult,
    Version,
};
use crate::watch::{Hub, Publication, Started, Turn};

/// One commit's round, from the Invalidate to its lease holders to the RoundEnd.
pub struct Round {
    turn: Turn,
    started: Started,
    /// The version lease holders may be reading, to pin before the commit supersedes it.
    pin: Option<Version>,
}

/// What watchers are told of a commit if it applies, taken before the store consumes it.
pub struct News {
    written: Vec<u32>,
    /// The pages' contents, when the commit is small enough to push.
    pushed: Vec<pb::Page>,
    page_size: u32,
    page_count: u32,
}

/// What the store's answer means to watchers.
enum End {
    /// Nothing changed (the commit failed, or was a retry of one already published).
    Unchanged,
    /// The commit applied: the new state, and what it carried.
    Applied(DbState, News),
    /// The state changed in ways not known page by page: drop caches.
    Reset(DbState),
    /// The outcome could not be learned: end every stream, learn the state anew.
    Unknown,
}

impl Round {
    /// Waits for the database's turn, then starts the round: from now on no lease holder
    /// serves the published state.
    pub async fn begin(hub: &Arc<Hub>, key: &crate::store::DbKey) -> Round {
        let turn = hub.round_turn(key).await;
        let started = turn.start();
        let pin = version_to_pin(hub, &started);
        Round { turn, started, pin }
    }

    /// Returns once no read lease holder may serve the old state any more: each
    /// acknowledged, or its lease ran out. Meanwhile pins the version they read.
    pub async fn wait_for_readers(&self, store: &dyn PageStore) {
        let waited = Instant::now();
        tokio::join!(self.turn.acknowledged(self.started.round), self.pin(store));
        let hub = self.turn.hub();
        let metrics = hub.metrics.tenant(&self.turn.key().tenant);
        metrics.invalidation_wait.record(waited.elapsed());
        let waited = waited.elapsed().as_secs_f64();
        crate::metrics::global()
            .invalidation_wait_seconds
            .observe(waited);
        metrics.commits.fetch_add(1, Ordering::Relaxed);
    }

    /// Lease holders read the current version without BeginRead, so nothing pinned it;
    /// pin it now, while it is still the newest, so their running transactions keep it
    /// readable after this commit (until the pin TTL, extended by reads).
    async fn pin(&self, store: &dyn PageStore) {
        let Some(version) = self.pin else { return };
        let read = BeginRead {
            cached_version: version,
            at: ReadAt::Version(version),
            pin: self.turn.hub().pin_ttl(),
            max_changes: 0,
            seen_version: Version::ZERO,
        };
        let key = self.turn.key();
        if let Err(e) = store.begin_read(key, read).await {
            tracing::debug!(db = %key, version = version.0, "pinning for read lease holders failed: {e}");
        }
    }

    /// Publishes the store's answer to `commit` (`result`) and ends the round. An answer
    /// that leaves the outcome unknown is asked of the store.
    pub async fn end(self, store: &dyn PageStore, result: &StoreResult<CommitOutcome>, news: News) {
        let end = match result {
            Ok(o) if o.already_applied => End::Unchanged,
            Ok(o) => {
                let state = DbState {
                    version: o.version,
                    page_size: news.page_size,
                    page_count: news.page_count,
                    incarnation: o.incarnation,
                    tag: o.tag.unwrap_or(NO_TAG),
                };
                End::Applied(state, news)
            }
            Err(e) if e.is_client_error() => End::Unchanged,
            // The store may or may not have applied it: ask.
            Err(_) => match store.open(self.turn.key(), false).await {
                Ok((state, _)) => End::Reset(state),
                Err(_) => End::Unknown,
            },
        };
        let round = self.started.round;
        self.turn.end(round, |old| publication(end, old));
    }
}

/// The version to pin for lease holders: the published one they may be reading, unless
/// none holds a lease, it is version 0 (nothing to read), or GC keeps it anyway for
/// longer than a pin would (committed here within `history_retention - pin_ttl`).
fn version_to_pin(hub: &Hub, started: &Started) -> Option<Version> {
    let kept_anyway = started
        .published_at
        .is_some_and(|t| t.elapsed() + hub.pin_ttl().ttl < hub.history_retention());
    started
        .published
        .map(|p| p.version)
        .filter(|v| started.lease_holders && *v > Version::ZERO && !kept_anyway)
}

/// What to publish at the end of a round, given the state published before it (`old`);
/// `None` when the state is lost track of.
fn publication(end: End, old: Option<DbState>) -> Option<Publication> {
    let old = old?;
    let unchanged = |state| Publication {
        state,
        changes: Some(Changes::default()),
        pages: Vec::new(),
    };
    match end {
        End::Unknown => None,
        End::Unchanged => Some(unchanged(old)),
        End::Reset(new) if new == old => Some(unchanged(new)),
        End::Reset(new) => Some(Publication {
            state: new,
            changes: None,
            pages: Vec::new(),
        }),
        End::Applied(new, news) => {
            // Known page by page only as the next version at the same page size; pages
            // past the old end were zeros (or stale) before: a range.
            let usable = old.page_size == new.page_size && old.version.next() == Some(new.version);
            Some(Publication {
                state: new,
                changes: usable
                    .then(|| Changes::of_commit(news.written, old.page_count, new.page_count)),
                pages: news.pushed,
            })
        }
    }
}

/// Commits up to this size travel to watchers inside `RoundEnd`: readers then need
/// no ReadPages for what a typical small transaction wrote.
const PUSHED_PAGES: usize = 16;
const PUSHED_BYTES: usize = 256 << 10;

impl News {
    pub fn of(commit: &Commit) -> News {
        News {
            written: commit.pages.iter().map(|(no, _)| *no).collect(),
            pushed: small_commit_pages(commit),
            page_size: commit.page_size,
            page_count: commit.page_count,
        }
    }
}

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
