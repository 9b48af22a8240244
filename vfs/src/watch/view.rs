//! What the Watch task has learned, and the rules read transactions and the task
//! follow with it. Kept under the database's state lock; no I/O here (the stream is
//! `task.rs`).

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use pagewire_proto::{ids::Version, v1 as pb};
use tokio::sync::{Notify, oneshot};

use crate::{
    cache::{Changed, PageCache},
    config::Consistency,
    state::DbState,
};

/// How long to wait before another stream after one failed.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What the watch task has learned, kept under the database's state lock.
pub struct WatchView {
    /// A task is running (or starting) for this database.
    running: bool,
    /// The current task's generation: a task that is not current changes nothing.
    task: u64,
    /// The newest state heard on the stream (`None` until it started).
    known: Option<DbState>,
    in_round: bool,
    /// Local end of the read lease.
    lease_until: Option<Instant>,
    /// Last read transaction (the stream and lease are dropped when idle).
    last_read: Instant,
    /// A strongly consistent reader used the database: ask for a lease.
    wants_lease: bool,
    /// A read transaction began since the last Invalidate: without one the lease is
    /// given back with the acknowledgement (it only made commits wait).
    read_since_invalidate: bool,
    /// Wakes the task to ask for a lease now (a strong read found none).
    wake: Arc<Notify>,
    /// Read-only transactions since this process last took RESERVED: the stream
    /// starts once there were two (a writer's transactions begin with a read, and it
    /// opens with a schema read, so counting reads would open one for every writer).
    reads_since_write: u8,
    /// No new stream before this (after one failed).
    retry_at: Instant,
    /// Fired (or dropped with the database) to make the task end its stream.
    stop: Option<oneshot::Sender<()>>,
    /// Completes when the task has ended its stream.
    done: Option<oneshot::Receiver<()>>,
}

impl Default for WatchView {
    fn default() -> Self {
        let now = Instant::now();
        Self {
            running: false,
            task: 0,
            known: None,
            in_round: false,
            lease_until: None,
            last_read: now,
            wants_lease: false,
            read_since_invalidate: false,
            wake: Arc::new(Notify::new()),
            reads_since_write: 0,
            retry_at: now,
            stop: None,
            done: None,
        }
    }
}

/// How a task is told to stop, and tells it has.
pub struct TaskSignals {
    pub(super) task: u64,
    pub(super) wake: Arc<Notify>,
    pub(super) stop: oneshot::Receiver<()>,
    pub(super) done: oneshot::Sender<()>,
}

/// What a RoundEnd leaves to do.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RoundEnded {
    /// Changed pages this process had cached (and was not sent): worth fetching again.
    pub refetch: Vec<u32>,
    /// The read lease is held (an idle reader gave it back).
    pub leased: bool,
}

/// The read lease still runs here.
fn leased(until: Option<Instant>) -> bool {
    until.is_some_and(|t| Instant::now() < t)
}

impl WatchView {
    /// A strong reader holding a lease while a round is under way: the round's end
    /// is worth a short wait (cheaper than a BeginRead round trip).
    pub fn round_pending(&self) -> bool {
        self.in_round && leased(self.lease_until)
    }

    /// The state a new read transaction may pin with no round trip, if any.
    pub fn serves(&self, consistency: Consistency, cached_version: Version) -> Option<DbState> {
        let known = self.known.filter(|k| k.version == cached_version)?;
        match consistency {
            Consistency::Snapshot => Some(known),
            Consistency::Strong => (leased(self.lease_until) && !self.in_round).then_some(known),
        }
    }

    /// For `PRAGMA pagewire_read_lease`: `lease=held|none heard=<version>|none round=0|1`.
    pub fn describe(&self) -> String {
        let heard = self.known.map_or("none".into(), |k| k.version.to_string());
        format!(
            "lease={} heard={heard} round={}",
            if leased(self.lease_until) {
                "held"
            } else {
                "none"
            },
            u8::from(self.in_round)
        )
    }

    /// Notes a read transaction; returns the signals of a task to start for it.
    pub fn note_read(&mut self, consistency: Consistency) -> Option<TaskSignals> {
        let now = Instant::now();
        self.last_read = now;
        self.read_since_invalidate = true;
        self.wants_lease |= consistency == Consistency::Strong;
        if self.running && consistency == Consistency::Strong {
            // Ask for the lease now rather than at the next renewal tick.
            self.wake.notify_one();
        }
        if self.running || now < self.retry_at || self.reads_since_write < 2 {
            return None;
        }
        self.running = true;
        self.task += 1;
        let (stop, stopped) = oneshot::channel();
        let (done, finished) = oneshot::channel();
        self.stop = Some(stop);
        self.done = Some(finished);
        Some(TaskSignals {
            task: self.task,
            stop: stopped,
            done,
            wake: self.wake.clone(),
        })
    }

    /// A transaction of this process took RESERVED: its reads need no stream for now.
    pub fn wrote(&mut self) {
        self.reads_since_write = 0;
    }

    /// A read-only transaction ended.
    pub fn read_txn_ended(&mut self) {
        self.reads_since_write = self.reads_since_write.saturating_add(1);
    }

    /// Notes a read transaction served with no RPC (keeps the lease from going idle).
    pub fn touch(&mut self) {
        self.last_read = Instant::now();
        self.read_since_invalidate = true;
    }

    /// The database was replaced: serve nothing from what the stream said, and end it.
    pub fn void(&mut self) {
        self.known = None;
        self.lease_until = None;
        self.in_round = false;
        let _ = self.stop();
    }

    /// Tells the task to end its stream; returns what completes when it has.
    pub fn stop(&mut self) -> Option<oneshot::Receiver<()>> {
        drop(self.stop.take()?);
        self.done.take()
    }

    /// Task `task` is the one running: only it may change this view.
    pub(super) fn is_current(&self, task: u64) -> bool {
        self.running && self.task == task
    }

    /// Task `task` ended; changes nothing unless it is the current one.
    pub(super) fn stopped(&mut self, task: u64, failed: bool) {
        if !self.is_current(task) {
            return;
        }
        self.running = false;
        self.stop = None;
        self.done = None;
        self.known = None;
        self.in_round = false;
        self.lease_until = None;
        self.wants_lease = false;
        if failed {
            self.retry_at = Instant::now() + RETRY_PAUSE;
        }
    }

    /// The stream started at `state`, a round under way or not; returns whether a
    /// strong reader wants the lease. The cache stays where it is: a BeginRead moves
    /// it to `state` (its change list is not known here), after which reads need no RPC.
    pub(super) fn started(&mut self, state: DbState, in_round: bool) -> bool {
        self.in_round = in_round;
        self.known = Some(state);
        self.wants_lease
    }

    /// A lease ask was granted until `until` (here); never shortens one held.
    pub(super) fn granted(&mut self, until: Instant) {
        self.lease_until = Some(self.lease_until.map_or(until, |t| t.max(until)));
    }

    /// A round began: stop serving the current state before acknowledging. Returns
    /// true when no read used the lease since the last round: it only makes commits
    /// wait, so it is dropped here, to be given back with the acknowledgement.
    pub(super) fn invalidated(&mut self) -> bool {
        self.in_round = true;
        let unused = !std::mem::take(&mut self.read_since_invalidate);
        if unused {
            self.lease_until = None;
        }
        unused
    }

    /// The periodic tick: no read for `idle` (the task then ends its stream).
    pub(super) fn idle_for(&self, idle: Duration) -> bool {
        self.last_read.elapsed() >= idle
    }

    /// The periodic tick renews the lease only when one is held and a strong reader
    /// wants it; reads ask for a new one themselves.
    pub(super) fn renews(&self) -> bool {
        self.wants_lease && self.lease_until.is_some()
    }

    /// Drops the read lease (to give it back); true when one was held.
    pub(super) fn give_back(&mut self) -> bool {
        self.lease_until.take().is_some()
    }

    /// A round ended at `state`: the cache follows it when it was at the state this
    /// stream knew and the changes are listed. Small commits come with their pages
    /// (`pushed`): those this process had cached are kept (and page 1, which every
    /// read transaction looks at). Only pages of this state (numbered within it, of
    /// its page size); each costs a lookup, however many the server sent.
    pub(super) fn round_ended(
        &mut self,
        cache: &mut PageCache,
        state: DbState,
        changed: Option<Changed<'_>>,
        pushed: Vec<pb::Page>,
    ) -> RoundEnded {
        let from = self.known.map(|k| k.version);
        let mut held: HashSet<u32> = cache.follow(from, state, changed).into_iter().collect();
        for page in pushed {
            let fits = (1..=state.page_count).contains(&page.page_no)
                && page.data.len() == state.page_size as usize;
            if fits && (held.remove(&page.page_no) || page.page_no == 1) {
                cache.insert(state, page.page_no, page.data);
            }
        }
        self.known = Some(state);
        self.in_round = false;
        let mut refetch: Vec<u32> = held.into_iter().collect();
        refetch.sort_unstable();
        RoundEnded {
            refetch,
            leased: self.lease_until.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use pagewire_proto::ids::VersionTag;

    use super::*;

    fn at(version: u64) -> DbState {
        DbState {
            version: Version(version),
            page_size: 4,
            page_count: 10,
            tag: VersionTag([version as u8; 16]),
        }
    }

    fn page(no: u32, data: &'static [u8]) -> pb::Page {
        pb::Page {
            page_no: no,
            data: Bytes::from_static(data),
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    /// A view whose task runs (as after two read transactions).
    fn running() -> (WatchView, TaskSignals) {
        let mut w = WatchView::default();
        w.read_txn_ended();
        w.read_txn_ended();
        let signals = w.note_read(Consistency::Strong).expect("a task starts");
        (w, signals)
    }

    #[test]
    fn a_task_starts_after_two_read_transactions_since_a_write() {
        let mut w = WatchView::default();
        w.read_txn_ended();
        assert!(w.note_read(Consistency::Snapshot).is_none(), "one read");
        w.wrote();
        w.read_txn_ended();
        assert!(
            w.note_read(Consistency::Snapshot).is_none(),
            "a write reset it"
        );
        w.read_txn_ended();
        let signals = w.note_read(Consistency::Snapshot).expect("two reads");
        assert!(w.is_current(signals.task));
        assert!(
            w.note_read(Consistency::Snapshot).is_none(),
            "one at a time"
        );
        // A failed task: the next waits a pause; a stale task's end changes nothing.
        w.stopped(signals.task + 1, true);
        assert!(w.is_current(signals.task));
        w.stopped(signals.task, true);
        assert!(!w.is_current(signals.task));
        assert!(w.note_read(Consistency::Snapshot).is_none(), "retry pause");
    }

    #[test]
    fn strong_reads_need_a_lease_and_no_round_snapshot_reads_only_the_stream() {
        let (mut w, _signals) = running();
        let cached = Version(3);
        assert_eq!(
            w.serves(Consistency::Snapshot, cached),
            None,
            "nothing heard"
        );
        assert!(w.started(at(3), false), "a strong reader wants the lease");
        assert_eq!(w.serves(Consistency::Snapshot, cached), Some(at(3)));
        assert_eq!(
            w.serves(Consistency::Snapshot, Version(2)),
            None,
            "cache behind"
        );
        assert_eq!(w.serves(Consistency::Strong, cached), None, "no lease");
        w.granted(later());
        assert_eq!(w.serves(Consistency::Strong, cached), Some(at(3)));
        w.touch();
        assert!(!w.invalidated(), "a read used the lease");
        assert!(w.round_pending());
        assert_eq!(w.serves(Consistency::Strong, cached), None, "in a round");
        assert_eq!(w.serves(Consistency::Snapshot, cached), Some(at(3)));
        assert_eq!(w.describe(), "lease=held heard=3 round=1");
        // A grant never shortens the lease; an expired one serves no strong read.
        w.granted(Instant::now());
        assert!(w.round_pending());
        w.void();
        assert_eq!(w.describe(), "lease=none heard=none round=0");
    }

    #[test]
    fn a_lease_no_read_used_is_dropped_at_the_next_round() {
        let (mut w, _signals) = running();
        w.started(at(1), false);
        w.granted(later());
        assert!(w.renews());
        w.touch();
        assert!(!w.invalidated(), "used since the last round");
        assert!(w.invalidated(), "unused since");
        assert!(!w.renews() && !w.give_back(), "dropped already");
        assert!(!w.idle_for(Duration::from_secs(10)));
        assert!(w.idle_for(Duration::ZERO));
    }

    #[test]
    fn a_round_end_follows_the_cache_and_keeps_pushed_pages_it_held() {
        let (mut w, _signals) = running();
        let mut cache = PageCache::new(1 << 20);
        cache.advance(Version(0), at(1), None);
        for p in [1, 2, 3] {
            cache.insert(at(1), p, Bytes::from_static(b"old!"));
        }
        w.started(at(1), false);
        w.granted(later());
        // 2 and 3 changed; 2 and 5 are pushed (5 was not cached), plus junk: a page
        // past the end and one of the wrong size.
        let pushed = vec![
            page(2, b"new2"),
            page(5, b"new5"),
            page(11, b"past"),
            page(3, b"too long"),
        ];
        let end = w.round_ended(&mut cache, at(2), Some(Changed::new(&[2, 3, 5], 0)), pushed);
        assert_eq!(
            end,
            RoundEnded {
                refetch: vec![3],
                leased: true
            }
        );
        assert_eq!(cache.version(), Version(2));
        assert_eq!(cache.get(at(2), 2).as_deref(), Some(&b"new2"[..]));
        assert!(cache.get(at(2), 5).is_none(), "not held before: not kept");
        assert!(cache.get(at(2), 3).is_none());
        assert_eq!(cache.get(at(2), 1).as_deref(), Some(&b"old!"[..]));
        assert_eq!(w.serves(Consistency::Strong, Version(2)), Some(at(2)));
        // Changes unknown (cache_invalid): the cache stays at 2 for a BeginRead to
        // move, and takes no page of 3.
        let end = w.round_ended(&mut cache, at(3), None, vec![page(1, b"p1v3")]);
        assert!(end.refetch.is_empty());
        assert_eq!(cache.version(), Version(2));
        assert!(cache.get(at(3), 1).is_none());
        assert_eq!(w.serves(Consistency::Snapshot, Version(3)), Some(at(3)));
    }
}
