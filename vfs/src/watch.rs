//! The Watch stream of one database in this process, and its read lease.
//!
//! A background task keeps one stream per database while readers use it. It hears
//! of every commit (`Invalidate` when a round begins, `RoundEnd` with the new state
//! and changed pages when it ends) and, for strongly consistent readers, holds a read
//! lease. [`WatchView::serves`] decides when a read transaction may start with no
//! round trip:
//! - strong (default): the lease is valid (measured here from when we asked, minus a
//!   margin, so it ends here before it ends on the server), no round is under way, and
//!   the cache holds the newest state we heard of. The server publishes no commit
//!   before every lease holder acknowledged its Invalidate, so that state is current.
//! - snapshot: the stream is up and the cache holds the newest state we heard of;
//!   possibly a commit behind, and commits never wait for us.
//!
//! A broken stream voids the lease at once; readers fall back to BeginRead.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pagewire_proto::v1 as pb;
use pb::watch_event::Event;
use pb::watch_request::Part;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::cache::{Changed, PageCache};
use crate::config::Consistency;
use crate::database::{Database, DbState, lease_deadline};

/// Most changed pages fetched again after a commit (a bigger commit is read on demand).
const REFETCH_MAX: usize = 64;

/// A read lease TTL from the server, trusted only within reason (a lease of an hour
/// would be a bug).
fn read_lease_ttl(ms: u64) -> Duration {
    Duration::from_millis(ms.min(60_000))
}

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

impl WatchView {
    /// A strong reader holding a lease while a round is under way: the round's end
    /// is worth a short wait (cheaper than a BeginRead round trip).
    pub fn round_pending(&self) -> bool {
        self.in_round && self.lease_until.is_some_and(|t| Instant::now() < t)
    }

    /// The state a new read transaction may pin with no round trip, if any.
    pub fn serves(&self, consistency: Consistency, cached_version: u64) -> Option<DbState> {
        let known = self.known.filter(|k| k.version == cached_version)?;
        match consistency {
            Consistency::Snapshot => Some(known),
            Consistency::Strong => {
                let leased = self.lease_until.is_some_and(|t| Instant::now() < t);
                (leased && !self.in_round).then_some(known)
            }
        }
    }

    /// For `PRAGMA pagewire_read_lease`: `lease=held|none heard=<version>|none round=0|1`.
    pub fn describe(&self) -> String {
        let held = self.lease_until.is_some_and(|t| Instant::now() < t);
        let heard = self.known.map_or("none".into(), |k| k.version.to_string());
        format!(
            "lease={} heard={heard} round={}",
            if held { "held" } else { "none" },
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

    /// Task `task` ended; changes nothing unless it is the current one.
    fn stopped(&mut self, task: u64, failed: bool) {
        if !self.running || self.task != task {
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
}

/// How a task is told to stop, and tells it has.
pub struct TaskSignals {
    task: u64,
    wake: Arc<Notify>,
    stop: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
}

/// The watch task of `db`: runs until the stream breaks, the database is dropped or
/// closed (`stop` fires), or no one has read for `idle`.
pub async fn run(db: Weak<Database>, name: String, idle: Duration, signals: TaskSignals) {
    let own = Own {
        db,
        task: signals.task,
    };
    let failed = match follow(&own, name, idle, signals.stop, &signals.wake).await {
        Ok(()) => false,
        Err(e) => {
            tracing::debug!(error = %e, "watch stream ended");
            if let Some(db) = own.db.upgrade() {
                db.watch_failed(&e);
            }
            true
        }
    };
    if let Some(db) = own.db.upgrade() {
        db.with_watch(|w, _| w.stopped(own.task, failed));
    }
    let _ = signals.done.send(());
}

/// A task's hold on its database: it changes the shared view only while it is the
/// current task (a new one may have started after it decided to stop).
struct Own {
    db: Weak<Database>,
    task: u64,
}

/// This task was superseded, or its database is gone.
struct Superseded;

impl Own {
    fn db(&self) -> Result<Arc<Database>, Superseded> {
        self.db.upgrade().ok_or(Superseded)
    }

    fn with<T>(
        &self,
        db: &Database,
        f: impl FnOnce(&mut WatchView, &mut PageCache) -> T,
    ) -> Result<T, Superseded> {
        db.with_watch(|w, cache| (w.running && w.task == self.task).then(|| f(w, cache)))
            .ok_or(Superseded)
    }
}

async fn follow(
    own: &Own,
    name: String,
    idle: Duration,
    mut stop: oneshot::Receiver<()>,
    wake: &Notify,
) -> Result<(), tonic::Status> {
    let Ok((client, incarnation)) = own.db().map(|d| (d.client.clone(), d.incarnation())) else {
        return Ok(());
    };
    let (tx, rx) = mpsc::channel(16);
    let outbox = Outbox(tx);
    let incarnation = bytes::Bytes::copy_from_slice(&incarnation);
    outbox
        .send(Part::Start(pb::WatchStart {
            name,
            ranges: true,
            incarnation,
        }))
        .await;
    let mut events = client.watch(rx).await?;
    let mut lease = LeaseAsks::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let reply = tokio::select! {
            event = events.message() => {
                let Some(event) = event? else { return Err(tonic::Status::unavailable("the server ended the stream")) };
                let reply = own.db().and_then(|db| handle(own, &db, &mut lease, event.event));
                if let Some(period) = lease.renew_every.take() {
                    tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                }
                reply
            }
            _ = tick.tick() => own.db().and_then(|db| renew(own, &db, &mut lease, idle)).map(Vec::from_iter),
            () = wake.notified() => own.db().map(|db| lease.ask_soon(&db).into_iter().collect()),
            _ = &mut stop => Err(Superseded),
        };
        match reply {
            Ok(parts) => {
                for part in parts {
                    outbox.send(part).await;
                }
            }
            Err(Superseded) => break,
        }
    }
    if let Some(db) = own.db.upgrade() {
        db.with_watch(|w, _| w.stopped(own.task, false));
    }
    close(outbox, events).await;
    Ok(())
}

/// Every third of a lease: ask for it again, give it back (this process writes), or
/// stop (no reads for `idle`).
fn renew(
    own: &Own,
    db: &Database,
    lease: &mut LeaseAsks,
    idle: Duration,
) -> Result<Option<Part>, Superseded> {
    // Only a held lease is renewed here; reads ask for a new one (`ask_soon`).
    let (idle_now, wants) = own.with(db, |w, _| {
        (
            w.last_read.elapsed() >= idle,
            w.wants_lease && w.lease_until.is_some(),
        )
    })?;
    if idle_now {
        return Err(Superseded);
    }
    if db.holds_write_lease() {
        // The writer's own reads need no read lease, and its commits would wait for
        // its own acknowledgement: give the read lease back.
        let held = own.with(db, |w, _| w.lease_until.take().is_some())?;
        return Ok(held.then(|| lease.release()));
    }
    Ok(if wants { lease.ask() } else { None })
}

/// Ends the stream cleanly: the lease goes back, then the server ends the stream, so
/// it knows this client no longer serves anything (an aborted stream would make
/// commits wait for the lease to run out).
async fn close(outbox: Outbox, mut events: tonic::Streaming<pb::WatchEvent>) {
    outbox.send(Part::Release(pb::ReadLeaseRelease {})).await;
    drop(outbox);
    let drain = async { while let Ok(Some(_)) = events.message().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// The client's half of the stream.
struct Outbox(mpsc::Sender<pb::WatchRequest>);

impl Outbox {
    async fn send(&self, part: Part) {
        let _ = self.0.send(pb::WatchRequest { part: Some(part) }).await;
    }
}

/// Outstanding lease asks, to measure each grant from when it was asked for.
#[derive(Default)]
struct LeaseAsks {
    ttl: Duration,
    seq: u64,
    asked: HashMap<u64, Instant>,
    /// Set when the renewal period becomes known.
    renew_every: Option<Duration>,
}

impl LeaseAsks {
    /// An ask on a reader's demand, unless one is already on its way (or this process
    /// writes: its reads need none).
    fn ask_soon(&mut self, db: &Database) -> Option<Part> {
        let pending = self
            .asked
            .values()
            .any(|at| at.elapsed() < Duration::from_millis(20));
        if pending || db.holds_write_lease() {
            return None;
        }
        self.ask()
    }

    /// Gives the lease back. Grants for asks sent before it are void: the server
    /// takes the release after them (the stream keeps order), so it holds no lease
    /// for us even if such a grant arrives later.
    fn release(&mut self) -> Part {
        self.asked.clear();
        Part::Release(pb::ReadLeaseRelease {})
    }

    fn ask(&mut self) -> Option<Part> {
        if self.ttl.is_zero() {
            return None;
        }
        self.seq += 1;
        self.asked.retain(|_, at| at.elapsed() < self.ttl);
        self.asked.insert(self.seq, Instant::now());
        Some(Part::Lease(pb::ReadLeaseAsk { seq: self.seq }))
    }
}

/// Applies one event; returns what to send back.
fn handle(
    own: &Own,
    db: &Arc<Database>,
    lease: &mut LeaseAsks,
    event: Option<Event>,
) -> Result<Vec<Part>, Superseded> {
    let Some(event) = event else {
        return Ok(Vec::new());
    };
    match event {
        Event::Started(started) => {
            lease.ttl = read_lease_ttl(started.read_lease_ttl_ms);
            if !lease.ttl.is_zero() {
                lease.renew_every = Some(lease.ttl / 3);
            }
            // A state of another database ends the task (the database is marked replaced).
            let state = db
                .learn_watched(started.state.as_ref())
                .map_err(|_| Superseded)?;
            // The cache stays where it is; a BeginRead moves it to `state` (its change
            // list is not known here), after which reads need no RPC.
            let wants = own.with(db, |w, _| {
                w.in_round = started.in_round;
                w.known = Some(state);
                w.wants_lease
            })?;
            Ok(if wants {
                lease.ask().into_iter().collect()
            } else {
                Vec::new()
            })
        }
        Event::Granted(grant) => {
            let Some(asked_at) = lease.asked.remove(&grant.seq) else {
                return Ok(Vec::new());
            };
            let until = lease_deadline(asked_at, read_lease_ttl(grant.ttl_ms));
            own.with(db, |w, _| {
                w.lease_until = Some(w.lease_until.map_or(until, |t| t.max(until)))
            })?;
            Ok(Vec::new())
        }
        Event::Invalidate(inv) => {
            // Stop serving the current state first, then say so. A lease no read used
            // since the last round only makes commits wait: give it back too (the next
            // read asks again).
            let unused = own.with(db, |w, _| {
                w.in_round = true;
                let unused = !std::mem::take(&mut w.read_since_invalidate);
                if unused {
                    w.lease_until = None;
                }
                unused
            })?;
            let ack = Part::Ack(pb::InvalidationAck { round: inv.round });
            Ok(if unused {
                vec![ack, lease.release()]
            } else {
                vec![ack]
            })
        }
        Event::RoundEnd(end) => {
            let state = db
                .learn_watched(end.state.as_ref())
                .map_err(|_| Superseded)?;
            let changed =
                (!end.cache_invalid).then(|| Changed::new(&end.changed_pages, end.changed_from));
            let pushed = end.pages;
            let (refetch, leased) = own.with(db, |w, cache| {
                let mut held: HashSet<u32> = cache
                    .follow(w.known.map(|k| k.version), state, changed)
                    .into_iter()
                    .collect();
                // Small commits come with their pages: keep those this process had
                // cached (and page 1, which every read transaction looks at). Only
                // pages of this state (numbered within it, of its page size); each costs
                // a lookup, however many the server sent.
                for page in pushed {
                    let fits = (1..=state.page_count).contains(&page.page_no)
                        && page.data.len() == state.page_size as usize;
                    if fits && (held.remove(&page.page_no) || page.page_no == 1) {
                        cache.insert(state, page.page_no, page.data);
                    }
                }
                w.known = Some(state);
                w.in_round = false;
                let mut held: Vec<u32> = held.into_iter().collect();
                held.sort_unstable();
                (held, w.lease_until.is_some())
            })?;
            db.round_ended();
            // Pages this process had cached were in use: fetch their new contents now,
            // off the readers' path, instead of one round trip each on next use. Only
            // while reads keep the lease (an idle reader gave it back), and not in the
            // writer's process: its commit puts them in the cache.
            let most = REFETCH_MAX.min(db.settings.pages_per_read(state.page_size));
            if leased && !refetch.is_empty() && refetch.len() <= most && !db.holds_write_lease() {
                tokio::spawn(db.refetch(state, refetch));
            }
            Ok(Vec::new())
        }
    }
}
