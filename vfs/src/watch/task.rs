//! The Watch stream task: opens the stream, answers its events, asks for and gives
//! back the read lease, and ends the stream cleanly. What it learns goes into the
//! database's [`WatchView`] (see `view.rs` and the module comment in `mod.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pagewire_proto::v1 as pb;
use pb::watch_event::Event;
use pb::watch_request::Part;
use tokio::sync::{Notify, mpsc, oneshot};

use super::view::{TaskSignals, WatchView};
use crate::cache::{Changed, PageCache};
use crate::database::Database;
use crate::state::lease_deadline;

/// Most changed pages fetched again after a commit (a bigger commit is read on demand).
const REFETCH_MAX: usize = 64;

/// A read lease TTL from the server, trusted only within reason (a lease of an hour
/// would be a bug).
fn read_lease_ttl(ms: u64) -> Duration {
    Duration::from_millis(ms.min(60_000))
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
        db.with_watch(|w, cache| w.is_current(self.task).then(|| f(w, cache)))
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
    outbox
        .send(Part::Start(pb::WatchStart {
            name,
            ranges: true,
            incarnation: incarnation.to_wire(),
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
    let (idle_now, wants) = own.with(db, |w, _| (w.idle_for(idle), w.renews()))?;
    if idle_now {
        return Err(Superseded);
    }
    if db.holds_write_lease() {
        // The writer's own reads need no read lease, and its commits would wait for
        // its own acknowledgement: give the read lease back.
        let held = own.with(db, |w, _| w.give_back())?;
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
    match event {
        None => Ok(Vec::new()),
        Some(Event::Started(started)) => on_started(own, db, lease, started),
        Some(Event::Granted(grant)) => {
            let Some(asked_at) = lease.asked.remove(&grant.seq) else {
                return Ok(Vec::new());
            };
            let until = lease_deadline(asked_at, read_lease_ttl(grant.ttl_ms));
            own.with(db, |w, _| w.granted(until))?;
            Ok(Vec::new())
        }
        Some(Event::Invalidate(inv)) => {
            // Stop serving the current state first, then say so; a lease no read used
            // goes back with the acknowledgement (the next read asks again).
            let unused = own.with(db, |w, _| w.invalidated())?;
            let ack = Part::Ack(pb::InvalidationAck { round: inv.round });
            Ok(if unused {
                vec![ack, lease.release()]
            } else {
                vec![ack]
            })
        }
        Some(Event::RoundEnd(end)) => on_round_end(own, db, end).map(|()| Vec::new()),
    }
}

/// The stream started: the read lease's TTL is known, and the newest state.
fn on_started(
    own: &Own,
    db: &Database,
    lease: &mut LeaseAsks,
    started: pb::WatchStarted,
) -> Result<Vec<Part>, Superseded> {
    lease.ttl = read_lease_ttl(started.read_lease_ttl_ms);
    if !lease.ttl.is_zero() {
        lease.renew_every = Some(lease.ttl / 3);
    }
    // A state of another database ends the task (the database is marked replaced).
    let state = db
        .learn_watched(started.state.as_ref())
        .map_err(|_| Superseded)?;
    let wants = own.with(db, |w, _| w.started(state, started.in_round))?;
    Ok(if wants {
        lease.ask().into_iter().collect()
    } else {
        Vec::new()
    })
}

/// A round ended: the cache follows it, and waiting readers go on.
fn on_round_end(own: &Own, db: &Arc<Database>, end: pb::RoundEnd) -> Result<(), Superseded> {
    let state = db
        .learn_watched(end.state.as_ref())
        .map_err(|_| Superseded)?;
    let changed = (!end.cache_invalid).then(|| Changed::new(&end.changed_pages, end.changed_from));
    let ended = own.with(db, |w, cache| {
        w.round_ended(cache, state, changed, end.pages)
    })?;
    db.round_ended();
    // Pages this process had cached were in use: fetch their new contents now, off
    // the readers' path, instead of one round trip each on next use. Only while reads
    // keep the lease (an idle reader gave it back), and not in the writer's process:
    // its commit puts them in the cache.
    let most = REFETCH_MAX.min(db.settings.pages_per_read(state.page_size));
    let refetch = ended.refetch;
    if ended.leased && !refetch.is_empty() && refetch.len() <= most && !db.holds_write_lease() {
        tokio::spawn(db.refetch(state, refetch));
    }
    Ok(())
}
