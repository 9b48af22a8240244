//! Watch streams and read leases, and the watchers' side of a commit's invalidation round.
//!
//! A client that watches a database hears of every commit; one that also holds a read
//! lease may serve the newest state it heard of with no round trip. That is safe
//! because every commit runs a *round* (its rules and order are
//! `service::commit::round`, `server/core/src/service/commit/round.rs`): every read
//! lease holder is sent `Invalidate`, the commit waits for their acknowledgements (or
//! their leases to run out), the store applies it, and the outcome is published to
//! every watcher (`RoundEnd`). This module keeps the watchers and offers a round what
//! it needs of them ([`Turn`]). The rules it keeps: no lease is granted or extended to
//! a watcher that owes an acknowledgement, and one asked for during a round by a
//! watcher that held none when it began is granted at its end, so a commit waits at
//! most one lease length whatever readers do (vanish, or renew and never acknowledge).
//!
//! A watcher that joins during a round is told so and serves nothing until it ends. A
//! watcher whose stream breaks stays as a *ghost* until its lease runs out: its client
//! may not have noticed yet. A fresh server waits one lease length before its first
//! commit, since it does not know who held leases from a previous run.
//!
//! All of this is per server: several servers over one store would not see each
//! other's commits, so such deployments must run with `--read-lease-ttl 0`.

mod metrics;
mod turn;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pagewire_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tonic::Status;

pub use metrics::Metrics;
pub use turn::{Publication, Started, Turn};

use crate::store::{
    DbKey, DbState, Identity, Incarnation, PageStore, PinTtl, StoreError, StoreResult,
};

/// Events queued per watcher before it counts as stuck and is disconnected.
const QUEUE: usize = 256;

pub type EventTx = mpsc::Sender<Result<pb::WatchEvent, Status>>;
pub type EventRx = mpsc::Receiver<Result<pb::WatchEvent, Status>>;

/// Every watched database of one server.
pub struct Hub {
    dbs: Mutex<HashMap<DbKey, Arc<DbWatch>>>,
    /// Watchers (ghosts included) per tenant, for `--max-watchers-per-tenant`.
    tenant_watchers: Mutex<HashMap<String, usize>>,
    max_watchers_per_db: usize,
    max_watchers_per_tenant: usize,
    /// `--max-change-list`: longer RoundEnd change lists for older clients become
    /// `cache_invalid`.
    max_change_list: usize,
    /// Zero: no read leases are granted (Watch still works for snapshot readers).
    read_lease_ttl: Duration,
    /// How the version lease holders read is pinned when a commit supersedes it.
    pin: PinTtl,
    /// GC keeps every version committed within this window (no pin needed there).
    history_retention: Duration,
    /// Until then commits wait: leases a previous run granted may still be held.
    first_commit_at: Instant,
    next_watcher: AtomicU64,
    /// Becomes true at shutdown: stream handlers stop reading.
    closing: tokio::sync::watch::Sender<bool>,
    pub metrics: Metrics,
}

/// One database's watchers and round state.
struct DbWatch {
    /// Held for a whole round ([`Turn`]), so rounds of one database never overlap.
    round_lock: Arc<tokio::sync::Mutex<()>>,
    state: Mutex<WatchState>,
    /// Woken on every acknowledgement.
    acked: Notify,
}

#[derive(Default)]
struct WatchState {
    /// The newest published state; `None` until learned from the store (or after a
    /// commit whose outcome could not be learned).
    published: Option<DbState>,
    /// When this server published it (`None`: learned from the store).
    published_at: Option<Instant>,
    /// The current or last round's number.
    round: u64,
    in_round: bool,
    watchers: HashMap<u64, Watcher>,
}

struct Watcher {
    /// `None` for a ghost: its stream is gone but its lease may still be held.
    tx: Option<EventTx>,
    lease_until: Option<Instant>,
    /// The newest round it acknowledged (or that began before it joined).
    acked: u64,
    /// The newest round it was sent an Invalidate for (only lease holders are).
    invalidated: u64,
    /// A lease ask not answered yet (its seq): asked while it owed an
    /// acknowledgement, or during a round it held no lease at the start of.
    deferred: Option<u64>,
    /// Its client takes `RoundEnd.changed_from` (else growth is listed for it).
    ranges: bool,
}

impl Watcher {
    fn lease_valid(&self, now: Instant) -> bool {
        self.lease_until.is_some_and(|t| t > now)
    }

    /// It was sent an Invalidate it has not acknowledged.
    fn owes_ack(&self) -> bool {
        self.acked < self.invalidated
    }

    /// Answers lease ask `seq` now, or defers it (see [`Watcher::deferred`]): a
    /// commit's round must never wait longer because of a lease granted or extended
    /// after it began.
    fn ask(&mut self, seq: u64, round: Option<u64>, ttl: Duration) {
        let joins_round = round.is_some_and(|r| self.invalidated < r);
        if self.owes_ack() || joins_round {
            self.deferred = Some(seq);
            return;
        }
        self.deferred = None;
        // A watcher whose queue overflowed never hears the grant: do not make commits
        // wait for a lease its client does not know it has.
        if !ttl.is_zero() && self.tx.is_some() {
            self.lease_until = Some(Instant::now() + ttl);
        }
        let ttl_ms = ttl.as_millis() as u64;
        self.send(pb::watch_event::Event::Granted(pb::ReadLeaseGrant {
            seq,
            ttl_ms,
        }));
    }

    /// Queues an event; a watcher too slow to take it becomes a ghost (its client
    /// sees the stream end, which voids its lease).
    fn send(&mut self, event: pb::watch_event::Event) {
        let full = self.tx.as_ref().is_some_and(|tx| {
            tx.try_send(Ok(pb::WatchEvent { event: Some(event) }))
                .is_err()
        });
        if full {
            self.tx = None;
        }
    }
}

/// Answers the lease asks deferred during a round, now that it ended (those whose
/// watcher still owes an acknowledgement wait for it).
fn grant_deferred(s: &mut WatchState, ttl: Duration) {
    for w in s.watchers.values_mut() {
        if let Some(seq) = w.deferred {
            w.ask(seq, None, ttl);
        }
    }
}

/// What a Hub is configured with.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub read_lease_ttl: Duration,
    pub pin: PinTtl,
    pub history_retention: Duration,
    pub max_watchers_per_db: usize,
    pub max_watchers_per_tenant: usize,
    pub max_change_list: usize,
}

impl Hub {
    pub fn new(config: HubConfig) -> Arc<Self> {
        let HubConfig {
            read_lease_ttl,
            pin,
            history_retention,
            ..
        } = config;
        Arc::new(Self {
            dbs: Mutex::default(),
            tenant_watchers: Mutex::default(),
            max_watchers_per_db: config.max_watchers_per_db,
            max_watchers_per_tenant: config.max_watchers_per_tenant,
            max_change_list: config.max_change_list,
            read_lease_ttl,
            pin,
            history_retention,
            first_commit_at: Instant::now() + read_lease_ttl,
            next_watcher: AtomicU64::new(1),
            closing: tokio::sync::watch::Sender::new(false),
            metrics: Metrics::default(),
        })
    }

    fn entry(&self, key: &DbKey) -> Arc<DbWatch> {
        let mut dbs = self.dbs.lock();
        dbs.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(DbWatch {
                    round_lock: Arc::default(),
                    state: Mutex::default(),
                    acked: Notify::new(),
                })
            })
            .clone()
    }

    /// Forgets a database's entry once nothing uses it: no watcher or ghost, no call.
    fn release(&self, key: &DbKey, w: Arc<DbWatch>) {
        let mut dbs = self.dbs.lock();
        // References: the map's and `w`.
        if Arc::strong_count(&w) == 2 && w.state.lock().watchers.is_empty() {
            dbs.remove(key);
        }
    }

    /// Starts watching `key`: the new watcher's id and its event stream, whose first
    /// event (`WatchStarted`) is already queued. `ranges`: its client takes
    /// `RoundEnd.changed_from`. Over a watcher cap: `TooLarge` naming it.
    /// `incarnation`: the client's (`Replaced` when the database has another).
    /// `tenant_cap`: the tenant's watcher quota, when lower than
    /// `--max-watchers-per-tenant`.
    pub async fn watch(
        &self,
        store: &dyn PageStore,
        key: &DbKey,
        ranges: bool,
        incarnation: Option<Incarnation>,
        tenant_cap: Option<u64>,
    ) -> StoreResult<(u64, EventRx)> {
        let w = self.entry(key);
        let started = self.learn_published(store, key, &w).await;
        let result =
            started.and_then(|()| self.add_watcher(key, &w, ranges, incarnation, tenant_cap));
        self.release(key, w);
        result
    }

    /// Makes sure the published state is known, reading it from the store (between
    /// rounds, so no commit is half done) when it is not.
    async fn learn_published(
        &self,
        store: &dyn PageStore,
        key: &DbKey,
        w: &DbWatch,
    ) -> StoreResult<()> {
        if w.state.lock().published.is_some() {
            return Ok(());
        }
        let _round = w.round_lock.lock().await;
        if w.state.lock().published.is_none() {
            let (state, _) = store.open(key, false).await?;
            w.state.lock().published = Some(state);
        }
        Ok(())
    }

    fn add_watcher(
        &self,
        key: &DbKey,
        w: &DbWatch,
        ranges: bool,
        incarnation: Option<Incarnation>,
        tenant_cap: Option<u64>,
    ) -> StoreResult<(u64, EventRx)> {
        let mut s = w.state.lock();
        if let Some(published) = &s.published {
            let identity = Identity {
                incarnation,
                version: None,
            };
            identity.check_incarnation(&key.name, &published.incarnation)?;
        }
        if s.watchers.len() >= self.max_watchers_per_db {
            return Err(over_cap(
                format!("database '{}' has {} watchers", key.name, s.watchers.len()),
                "--max-watchers-per-db",
            ));
        }
        {
            let mut tenants = self.tenant_watchers.lock();
            let count = tenants.entry(key.tenant.clone()).or_default();
            let quota = tenant_cap
                .and_then(|q| usize::try_from(q).ok())
                .filter(|&q| q < self.max_watchers_per_tenant);
            if let Some(quota) = quota
                && *count >= quota
            {
                return Err(StoreError::TooLarge(crate::quota::over(
                    &key.tenant,
                    "max_watchers",
                    format!("{count} watchers"),
                    quota.to_string(),
                )));
            }
            if *count >= self.max_watchers_per_tenant {
                return Err(over_cap(
                    format!("this tenant has {count} watchers"),
                    "--max-watchers-per-tenant",
                ));
            }
            *count += 1;
        }
        let id = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        let started = pb::WatchStarted {
            state: s.published.map(Into::into),
            in_round: s.in_round,
            read_lease_ttl_ms: self.read_lease_ttl.as_millis() as u64,
        };
        let mut watcher = Watcher {
            tx: Some(tx),
            lease_until: None,
            acked: s.round,
            invalidated: s.round,
            deferred: None,
            ranges,
        };
        watcher.send(pb::watch_event::Event::Started(started));
        s.watchers.insert(id, watcher);
        self.metrics
            .tenant(&key.tenant)
            .watchers
            .fetch_add(1, Ordering::Relaxed);
        Ok((id, rx))
    }

    /// Removes watcher `id` (its stream and lease are over).
    fn forget(&self, key: &DbKey, s: &mut WatchState, id: u64) {
        if s.watchers.remove(&id).is_none() {
            return;
        }
        let mut tenants = self.tenant_watchers.lock();
        if let Some(count) = tenants.get_mut(&key.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                tenants.remove(&key.tenant);
            }
        }
    }

    /// Watcher `id` asks for (or to renew) its read lease: granted from now, on its
    /// stream, unless it must wait (see [`Watcher::ask`]).
    pub fn grant(&self, key: &DbKey, id: u64, seq: u64) {
        let Some(db) = self.dbs.lock().get(key).cloned() else {
            return;
        };
        let s = &mut *db.state.lock();
        let round = s.in_round.then_some(s.round);
        if let Some(w) = s.watchers.get_mut(&id) {
            w.ask(seq, round, self.read_lease_ttl);
        }
    }

    /// Watcher `id` gives its lease back; a round waiting for it goes on at once.
    pub fn release_lease(&self, key: &DbKey, id: u64) {
        if let Some(db) = self.with_watcher(key, id, |w| w.lease_until = None) {
            db.acked.notify_waiters();
        }
    }

    /// Watcher `id` acknowledged `round`; an ask it made meanwhile is answered.
    pub fn ack(&self, key: &DbKey, id: u64, round: u64) {
        let Some(db) = self.dbs.lock().get(key).cloned() else {
            return;
        };
        {
            let s = &mut *db.state.lock();
            let current = s.in_round.then_some(s.round);
            if let Some(w) = s.watchers.get_mut(&id) {
                // An ack of a round not begun yet is a lie that would excuse the next one.
                w.acked = w.acked.max(round.min(w.invalidated));
                if let Some(seq) = w.deferred {
                    w.ask(seq, current, self.read_lease_ttl);
                }
            }
        }
        db.acked.notify_waiters();
    }

    /// Runs `f` on watcher `id` of `key`; returns the database's entry if it has one.
    fn with_watcher(
        &self,
        key: &DbKey,
        id: u64,
        f: impl FnOnce(&mut Watcher),
    ) -> Option<Arc<DbWatch>> {
        let db = self.dbs.lock().get(key).cloned()?;
        if let Some(w) = db.state.lock().watchers.get_mut(&id) {
            f(w);
        }
        Some(db)
    }

    /// Watcher `id`'s stream ended. Its lease, if any, is still honoured until it runs
    /// out: the client may not know yet.
    /// Ends watcher `id`'s stream with `status` (its lease stays until it runs out or
    /// [`Hub::disconnect`] forgets it).
    pub fn end_stream(&self, key: &DbKey, id: u64, status: Status) {
        let Some(db) = self.dbs.lock().get(key).cloned() else {
            return;
        };
        let tx = db
            .state
            .lock()
            .watchers
            .get_mut(&id)
            .and_then(|w| w.tx.take());
        if let Some(tx) = tx {
            let _ = tx.try_send(Err(status));
        }
    }

    pub fn disconnect(self: &Arc<Self>, key: &DbKey, id: u64) {
        let Some(db) = self.dbs.lock().get(key).cloned() else {
            return;
        };
        self.metrics
            .tenant(&key.tenant)
            .watchers
            .fetch_sub(1, Ordering::Relaxed);
        let ghost_until = {
            let mut s = db.state.lock();
            let now = Instant::now();
            match s.watchers.get_mut(&id) {
                Some(w) if w.lease_valid(now) => {
                    w.tx = None;
                    w.deferred = None;
                    w.lease_until
                }
                _ => {
                    self.forget(key, &mut s, id);
                    None
                }
            }
        };
        // A round waiting for it looks again (a ghost is still waited for until its
        // lease runs out, but one without a lease no longer).
        db.acked.notify_waiters();
        match ghost_until {
            Some(until) => {
                let hub = self.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(until).await;
                    hub.remove_ghost(&key, id);
                });
            }
            None => self.release(key, db),
        }
    }

    fn remove_ghost(&self, key: &DbKey, id: u64) {
        let Some(db) = self.dbs.lock().get(key).cloned() else {
            return;
        };
        {
            let mut s = db.state.lock();
            let now = Instant::now();
            if s.watchers
                .get(&id)
                .is_some_and(|w| w.tx.is_none() && !w.lease_valid(now))
            {
                self.forget(key, &mut s, id);
            }
        }
        db.acked.notify_waiters();
        self.release(key, db);
    }

    /// The database was deleted: its watchers' streams end with NOT_FOUND, and its state
    /// must be learned again. Returns when the last read lease it had runs out (a holder
    /// may serve the old state until then).
    pub fn deleted(&self, key: &DbKey) -> Option<Instant> {
        let db = self.dbs.lock().get(key).cloned()?;
        let status = Status::not_found(format!("database '{}' was deleted", key.name));
        let mut s = db.state.lock();
        let now = Instant::now();
        let until = s
            .watchers
            .values()
            .filter_map(|w| w.lease_until)
            .filter(|t| *t > now)
            .max();
        end_all(&mut s, status);
        until
    }

    /// Ends every stream (server shutdown), so graceful shutdown does not wait for
    /// watchers that would never leave.
    pub fn shutdown(&self) {
        self.closing.send_replace(true);
        let dbs: Vec<_> = self.dbs.lock().values().cloned().collect();
        for db in dbs {
            end_all(
                &mut db.state.lock(),
                Status::unavailable("the server is shutting down"),
            );
        }
    }

    /// Changes to true when the server shuts down.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Unexpired read leases over all databases (ghosts included).
    pub fn read_leases_held(&self) -> u64 {
        self.read_leases_held_where(|_| true)
    }

    /// Unexpired read leases over the databases of `tenant` (ghosts included).
    pub fn tenant_read_leases_held(&self, tenant: &str) -> u64 {
        self.read_leases_held_where(|key| key.tenant == tenant)
    }

    fn read_leases_held_where(&self, mut select: impl FnMut(&DbKey) -> bool) -> u64 {
        let dbs: Vec<_> = self
            .dbs
            .lock()
            .iter()
            .filter(|(key, _)| select(key))
            .map(|(_, db)| db.clone())
            .collect();
        let now = Instant::now();
        let held = dbs.iter().map(|db| {
            db.state
                .lock()
                .watchers
                .values()
                .filter(|w| w.lease_valid(now))
                .count() as u64
        });
        held.sum()
    }

    /// `tenant`'s metrics, for `Admin.GetMetrics`: only its own databases' activity.
    /// Every tenant's counters (for the operator only).
    pub fn server_metrics_proto(&self) -> pb::ServerMetrics {
        let tenants = self.metrics.tenant_names();
        pb::ServerMetrics {
            tenants: tenants
                .into_iter()
                .map(|t| {
                    let m = self.metrics_proto(&t);
                    (t, m)
                })
                .collect(),
        }
    }

    /// The process-wide gauges of the Prometheus metrics: every tenant's read leases
    /// and Watch streams.
    pub fn metrics_sample(&self) -> crate::metrics::Sample {
        let mut sample = crate::metrics::Sample::default();
        for tenant in self.metrics.tenant_names() {
            let m = self.metrics_proto(&tenant);
            sample.read_leases_held += m.read_leases_held;
            sample.watchers += m.watchers;
        }
        sample
    }

    pub fn metrics_proto(&self, tenant: &str) -> pb::Metrics {
        let m = self.metrics.get(tenant).unwrap_or_default();
        pb::Metrics {
            read_leases_held: self.tenant_read_leases_held(tenant),
            watchers: m.watchers.load(Ordering::Relaxed),
            commits: m.commits.load(Ordering::Relaxed),
            invalidation_wait: Some(m.invalidation_wait.to_proto()),
        }
    }
}

fn over_cap(what: String, flag: &str) -> StoreError {
    StoreError::TooLarge(format!("{what} (server limit {flag}); watch refused"))
}

/// Ends every watcher's stream with `status`; the published state must be learned anew.
fn end_all(s: &mut WatchState, status: Status) {
    s.published = None;
    s.published_at = None;
    for w in s.watchers.values_mut() {
        if let Some(tx) = w.tx.take() {
            let _ = tx.try_send(Err(status.clone()));
        }
    }
}
