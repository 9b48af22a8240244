//! One remote database as seen by this process: shared by every connection of
//! the process that opened the same (server, token, name).
//!
//! It holds what connections must agree on, under one state lock: the newest
//! committed state known here, whether the database was replaced, the write lease
//! (its rules are `lease.rs`), the page cache (`cache.rs`) and the Watch view
//! (`watch/`); and, apart, the local lock table. The read path (BeginRead, ReadPages)
//! is here; the commit's image and answer are `commit.rs`.

use std::{
    collections::HashMap,
    ops::RangeInclusive,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use pagewire_proto::{
    ids::{Incarnation, PageNo, Version},
    v1 as pb,
};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::{
    cache::{Changed, PageCache},
    client::{Client, CommitError},
    commit::{self, Image},
    config::{AsOf, Consistency},
    error::VfsError,
    lease::{self, ForWrite, Holder, Idle, Lease, LeaseOwner, WriteLease},
    locks::LockTable,
    runtime::Rt,
    state::{DbKey, DbState, ServerSettings, bad_reply},
    status::Class,
    watch::{self, WatchView},
};

/// One ReadPages call, its answer checked: one page of `at`'s page size per page asked.
/// The request names the incarnation and `at`'s tag, so the server never answers with
/// another database's pages.
async fn read_chunk(
    client: Client,
    name: String,
    incarnation: Incarnation,
    at: DbState,
    pages: Vec<u32>,
) -> Result<Vec<Bytes>, VfsError> {
    let asked = pages.len();
    let req = pb::ReadPagesRequest {
        name,
        version: at.version.0,
        page_nos: pages,
        incarnation: incarnation.to_wire(),
        tag: at.tag.to_wire(),
    };
    let resp = client.read_pages(req).await?;
    let size = at.page_size as usize;
    if resp.page_size != at.page_size {
        return Err(bad_reply(&format!(
            "pages of {} bytes for version {} of page size {size}",
            resp.page_size, at.version
        )));
    }
    if resp.pages.len() != asked {
        return Err(bad_reply(&format!(
            "{} pages for {asked} asked",
            resp.pages.len()
        )));
    }
    if let Some(d) = resp.pages.iter().find(|d| d.len() != size) {
        return Err(bad_reply(&format!(
            "a page of {} bytes at page size {size}",
            d.len()
        )));
    }
    Ok(resp.pages)
}

struct Shared {
    /// Newest committed state this process knows of.
    committed: DbState,
    /// Set once the database is known to be replaced (deleted, created again, restored):
    /// every call of every connection fails with it until they reopen.
    replaced: Option<String>,
    lease: WriteLease,
    cache: PageCache,
    /// The Watch stream and read lease.
    watch: WatchView,
}

/// Why a database was replaced, when its incarnation changed.
const ANOTHER_INCARNATION: &str =
    "it was deleted and created again (or restored from a backup) since this connection opened it";

/// The message every call of a replaced database fails with.
fn replaced(name: &str, why: &str) -> String {
    format!("database '{name}' was replaced: {why}; reopen it")
}

impl Shared {
    /// The error every call gets once the database is known to be replaced.
    fn check(&self) -> Result<(), VfsError> {
        match &self.replaced {
            Some(why) => Err(VfsError::Replaced(why.clone())),
            None => Ok(()),
        }
    }

    /// Marks the database replaced (the first reason stays) and forgets everything
    /// believed about it: cached pages, the write lease (not given back: the server
    /// that holds it is another database's), the Watch stream and read lease.
    fn void(&mut self, name: &str, why: &str) -> VfsError {
        let why = self
            .replaced
            .get_or_insert_with(|| {
                tracing::warn!(db = %name, "{why}");
                why.to_owned()
            })
            .clone();
        self.lease.forget();
        self.cache.reset();
        self.watch.void();
        VfsError::Replaced(why)
    }

    /// A commit of this process, under lease `epoch` and sent at `asked_at`, took the
    /// database from `base` to `state`.
    fn applied(
        &mut self,
        epoch: u64,
        asked_at: Instant,
        base: DbState,
        state: DbState,
        pages: &[(PageNo, Bytes)],
    ) {
        self.lease.committed(epoch, asked_at);
        if state.version > self.committed.version {
            self.committed = state;
        }
        commit::cache_applied(&mut self.cache, base, state, pages);
    }
}

pub struct Database {
    pub key: DbKey,
    /// The incarnation opened: every state learned later must be of it.
    incarnation: Incarnation,
    rt: Arc<Rt>,
    pub client: Client,
    pub settings: ServerSettings,
    lease_idle: Duration,
    /// Who asks for the write lease (this database, this process).
    holder: Holder,
    pub locks: Mutex<LockTable>,
    state: Mutex<Shared>,
    /// Open connections; the last one to close gives the lease back.
    connections: AtomicUsize,
    /// Signalled when a Watch round ends (readers waiting for it go on).
    round_end: Condvar,
}

/// Longest a read transaction waits for a commit round to end before asking the
/// server instead.
const ROUND_WAIT: Duration = Duration::from_millis(5);

impl Database {
    /// `open`'s state, already checked (see [`DbState::from_wire`]).
    pub fn new(
        key: DbKey,
        rt: Arc<Rt>,
        client: Client,
        settings: ServerSettings,
        opened: (DbState, Incarnation),
        cache_bytes: usize,
        lease_idle: Duration,
    ) -> Self {
        let (committed, incarnation) = opened;
        Self {
            holder: Holder::new(&key.name, incarnation),
            key,
            incarnation,
            rt,
            client,
            settings,
            lease_idle,
            locks: Mutex::default(),
            state: Mutex::new(Shared {
                committed,
                replaced: None,
                lease: WriteLease::default(),
                cache: PageCache::new(cache_bytes),
                watch: WatchView::default(),
            }),
            connections: AtomicUsize::new(0),
            round_end: Condvar::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.key.name
    }

    pub fn rt(&self) -> &Rt {
        &self.rt
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::SeqCst);
    }

    /// Returns true when this was the last connection.
    pub fn connection_closed(&self) -> bool {
        self.connections.fetch_sub(1, Ordering::SeqCst) == 1
    }

    pub fn committed(&self) -> DbState {
        self.state.lock().committed
    }

    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The error every call gets once the database is known to be replaced.
    pub fn check_replaced(&self) -> Result<(), VfsError> {
        self.state.lock().check()
    }

    pub fn is_replaced(&self) -> bool {
        self.state.lock().replaced.is_some()
    }

    /// The database this process opened is gone (deleted, created again, restored):
    /// drops every cached page, the leases and the Watch stream, and fails every later
    /// call with `why`.
    pub fn mark_replaced(&self, why: &str) -> VfsError {
        self.state.lock().void(&self.key.name, why)
    }

    /// A fresh Open found another incarnation: this one was replaced. Returns whether
    /// `opened` is this database's incarnation (false, too, once it is replaced).
    pub fn is_incarnation(&self, opened: Incarnation) -> bool {
        if self.is_replaced() {
            return false;
        }
        if self.incarnation == opened {
            return true;
        }
        self.mark_replaced(&replaced(&self.key.name, ANOTHER_INCARNATION));
        false
    }

    /// An error from a call that named this incarnation: NOT_FOUND means the database
    /// it named is gone, which marks it replaced.
    fn gone(&self, e: VfsError) -> VfsError {
        match &e {
            VfsError::Status(st) if Class::of(st) == Class::NotFound => {
                self.mark_replaced(st.message())
            }
            _ => e,
        }
    }

    /// Learns of a committed state the server sent. `newest`: the server says nothing
    /// newer exists (BeginRead of the newest version, a lease grant) than this version,
    /// the newest seen here when the call was sent; a version below it means history
    /// went back. (One seen since, from the Watch stream, may be newer: the reply can
    /// have been decided before that commit.) Refuses (and marks the database
    /// replaced) a state of another incarnation, an older newest, or a known version
    /// with another tag.
    fn learn(
        &self,
        s: &mut Shared,
        wire: Option<&pb::DbState>,
        newest: Option<Version>,
    ) -> Result<DbState, VfsError> {
        let (state, incarnation) = DbState::from_wire(wire)?;
        let seen = s.committed;
        let why = if incarnation != self.incarnation {
            Some(ANOTHER_INCARNATION.to_owned())
        } else if state.version == seen.version && state.tag != seen.tag {
            Some(format!(
                "its version {} is not the one this connection saw (restored from a backup?)",
                seen.version
            ))
        } else {
            let went_back = newest.filter(|asked| state.version < *asked);
            went_back.map(|asked| format!("its newest version is {} but this connection saw {asked} (restored from a backup?)", state.version))
        };
        if let Some(why) = why {
            return Err(s.void(&self.key.name, &replaced(&self.key.name, &why)));
        }
        if state.version > seen.version {
            s.committed = state;
        }
        Ok(state)
    }

    /// A read-only transaction of a connection ended (see `WatchView::read_txn_ended`).
    pub fn read_txn_ended(&self) {
        self.state.lock().watch.read_txn_ended();
    }

    /// Wakes read transactions waiting for a round to end.
    pub fn round_ended(&self) {
        self.round_end.notify_all();
    }

    /// A state the Watch stream sent, checked as [`Database::learn`] does (a stream
    /// may lag a commit this process made, so an older version is not "newest").
    pub fn learn_watched(&self, wire: Option<&pb::DbState>) -> Result<DbState, VfsError> {
        let mut s = self.state.lock();
        self.learn(&mut s, wire, None)
    }

    /// The Watch stream ended with `status`: NOT_FOUND means the database is gone.
    pub fn watch_failed(&self, status: &tonic::Status) {
        if Class::of(status) == Class::NotFound {
            self.mark_replaced(status.message());
        }
    }

    /// Runs `f` on the watch state and the cache, under the state lock.
    pub fn with_watch<T>(&self, f: impl FnOnce(&mut WatchView, &mut PageCache) -> T) -> T {
        let s = &mut *self.state.lock();
        f(&mut s.watch, &mut s.cache)
    }

    /// The version a new read transaction pins: with no RPC when it can (see
    /// `read_locally`), otherwise BeginRead asks the server.
    pub fn begin_read(
        self: &Arc<Self>,
        as_of: Option<AsOf>,
        consistency: Consistency,
    ) -> Result<DbState, VfsError> {
        let (cached, seen) = {
            let mut s = self.state.lock();
            s.check()?;
            if as_of.is_none()
                && let Some(state) = self.read_locally(&mut s, consistency)
            {
                return Ok(state);
            }
            (s.cache.version(), s.committed)
        };
        let req = self.begin_read_request(as_of, cached, seen);
        let at_version = req.at_version;
        let resp = self
            .rt
            .block_on(self.client.clone().begin_read(req))?
            .map_err(|e| self.gone(e))?;
        let mut s = self.state.lock();
        let newest = as_of.is_none().then_some(seen.version);
        let state = self.learn(&mut s, resp.state.as_ref(), newest)?;
        if at_version != 0 && state.version != Version(at_version) {
            return Err(bad_reply(&format!(
                "version {} for a read as of version {at_version}",
                state.version
            )));
        }
        if state.version >= s.cache.version() {
            let changed =
                (!resp.cache_invalid).then(|| Changed::new(&resp.changed_pages, resp.changed_from));
            s.cache.advance(cached, state, changed);
        }
        Ok(state)
    }

    /// The newest version when it is known here: the write lease holder is the only
    /// writer, so while its lease is valid and its cache current, that is the newest
    /// version; a read lease holder (see [`watch`]) knows it from its Watch stream.
    /// Otherwise notes the read (which may start the Watch stream) and returns `None`.
    fn read_locally(
        self: &Arc<Self>,
        s: &mut MutexGuard<'_, Shared>,
        consistency: Consistency,
    ) -> Option<DbState> {
        let sole_writer = s.lease.valid() && s.cache.version() == s.committed.version;
        if sole_writer {
            return Some(s.committed);
        }
        if consistency == Consistency::Strong && s.watch.round_pending() {
            // A commit is being published: its RoundEnd usually follows within a round
            // trip, so wait for it rather than ask the server.
            let deadline = Instant::now() + ROUND_WAIT;
            while s.watch.round_pending() && !self.round_end.wait_until(s, deadline).timed_out() {}
        }
        if let Some(state) = s.watch.serves(consistency, s.cache.version()) {
            s.watch.touch();
            let local_reads = &self.client.counters.local_reads;
            local_reads.fetch_add(1, Ordering::Relaxed);
            return Some(state);
        }
        if let Some(signals) = s.watch.note_read(consistency) {
            let name = self.key.name.clone();
            let task = watch::run(Arc::downgrade(self), name, self.lease_idle, signals);
            self.rt.spawn(task);
        }
        None
    }

    /// BeginRead of the newest version (or the time-travel point), naming what this
    /// process caches and the newest state it has seen.
    fn begin_read_request(
        &self,
        as_of: Option<AsOf>,
        cached: Version,
        seen: DbState,
    ) -> pb::BeginReadRequest {
        let (at_version, at_unix_ms) = match as_of {
            Some(AsOf::Version(v)) => (v, 0),
            Some(AsOf::Time(t)) => (0, t),
            None => (0, 0),
        };
        pb::BeginReadRequest {
            name: self.key.name.clone(),
            cached_version: cached.0,
            at_version,
            at_unix_ms,
            ranges: true,
            incarnation: self.incarnation.to_wire(),
            seen_version: seen.version.0,
            seen_tag: seen.tag.to_wire(),
        }
    }

    /// Reads whole pages at `at`, from cache where it holds that version. Pages
    /// in `ahead` that are not cached travel in the same round trip when one is
    /// needed anyway (read-ahead), and go to the cache.
    pub fn read_pages(
        &self,
        at: DbState,
        pages: &[u32],
        ahead: RangeInclusive<u32>,
    ) -> Result<Vec<Bytes>, VfsError> {
        let mut out: Vec<Option<Bytes>> = Vec::with_capacity(pages.len());
        let mut fetch: Vec<u32> = Vec::new();
        {
            let mut s = self.state.lock();
            s.check()?;
            for p in pages {
                let hit = s.cache.get(at, *p);
                if hit.is_none() {
                    fetch.push(*p);
                }
                out.push(hit);
            }
            if !fetch.is_empty() {
                // Fill the last call up with read-ahead, never add a call for it.
                let max = self.settings.pages_per_read(at.page_size);
                let room = (max - fetch.len() % max) % max;
                fetch.extend(ahead.filter(|p| !s.cache.contains(at, *p)).take(room));
            }
        }
        let fetched = self.fetch(at, &fetch)?;
        // Every page is cached or fetched (`read_chunk` checked the answer's count).
        out.into_iter()
            .zip(pages)
            .map(|(o, p)| {
                o.or_else(|| fetched.get(p).cloned())
                    .ok_or_else(|| VfsError::Internal(format!("page {p} was not read")))
            })
            .collect()
    }

    /// Fetches pages from the server (in as few calls as the limits allow) and
    /// caches them.
    fn fetch(&self, at: DbState, pages: &[u32]) -> Result<HashMap<u32, Bytes>, VfsError> {
        let mut fetched = HashMap::with_capacity(pages.len());
        for chunk in pages.chunks(self.settings.pages_per_read(at.page_size)) {
            let read = read_chunk(
                self.client.clone(),
                self.key.name.clone(),
                self.incarnation,
                at,
                chunk.to_vec(),
            );
            let data = self.rt.block_on(read)?.map_err(|e| self.gone(e))?;
            let mut s = self.state.lock();
            for (p, d) in chunk.iter().zip(data) {
                s.cache.insert(at, *p, d.clone());
                fetched.insert(*p, d);
            }
        }
        Ok(fetched)
    }

    /// Fetches `pages` at `at` into the cache in the background (after a commit
    /// changed pages this process had cached). Best effort.
    pub fn refetch(
        self: &Arc<Self>,
        at: DbState,
        pages: Vec<u32>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let db = self.clone();
        async move {
            let read = read_chunk(
                db.client.clone(),
                db.key.name.clone(),
                db.incarnation,
                at,
                pages.clone(),
            );
            let data = match read.await {
                Ok(data) => data,
                Err(e) => return drop(db.gone(e)),
            };
            let mut s = db.state.lock();
            for (p, d) in pages.iter().zip(data) {
                s.cache.insert(at, *p, d);
            }
        }
    }

    /// Loads a small database whole into the cache (at open), so its first
    /// queries need no page reads.
    pub fn preload(&self, at: DbState, max_bytes: u64) -> Result<(), VfsError> {
        if at.page_count == 0 || at.file_size() > max_bytes {
            return Ok(());
        }
        {
            let mut s = self.state.lock();
            if s.cache.version() != Version::ZERO {
                return Ok(());
            }
            s.cache.advance(Version::ZERO, at, None);
        }
        let all: Vec<u32> = (1..=at.page_count).collect();
        self.fetch(at, &all).map(drop)
    }

    /// Makes sure this process holds the write lease (see `lease.rs`); returns the
    /// newest committed state (a writer pinned to an older one must not write).
    pub fn ensure_lease(self: &Arc<Self>) -> Result<DbState, VfsError> {
        let (held, ask_as, seen) = {
            let mut s = self.state.lock();
            s.check()?;
            s.watch.wrote();
            match s.lease.for_write() {
                ForWrite::Valid => return Ok(s.committed),
                ForWrite::Obtain(held, ask_as) => (held, ask_as, s.committed.version),
            }
        };
        let asked_at = Instant::now();
        let obtain = lease::obtain(self.client.clone(), self.holder.clone(), held, ask_as);
        let resp = self.rt.block_on(obtain)?.map_err(|e| self.gone(e))?;
        let granted = Lease::from_response(&resp, asked_at)?;
        let epoch = granted.epoch;
        let (state, new_epoch) = {
            let mut s = self.state.lock();
            let state = self.learn(&mut s, resp.state.as_ref(), Some(seen))?;
            (state, s.lease.install(granted))
        };
        if new_epoch {
            self.rt.spawn(lease::heartbeat(Arc::downgrade(self), epoch));
        }
        Ok(state)
    }

    /// Whether this process holds the write lease (so every commit is its own).
    pub fn holds_write_lease(&self) -> bool {
        self.state.lock().lease.is_held()
    }

    /// Forgets everything this process believed about the database.
    pub fn drop_all(&self) {
        let mut s = self.state.lock();
        s.lease.forget();
        s.cache.reset();
    }

    /// Ends the Watch stream and gives the read lease back (last connection closed),
    /// so commits of other clients need not wait for it to run out. Best effort.
    pub fn stop_watch(&self) {
        let done = self.state.lock().watch.stop();
        if let Some(done) = done {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(2), done).await });
        }
    }

    /// Gives the lease back (last connection closed). Best effort: if the server
    /// is unreachable the lease simply expires.
    pub fn release_lease(&self) {
        let Some(held) = self.state.lock().lease.take() else {
            return;
        };
        let call = lease::release(self.client.clone(), self.key.name.clone(), held);
        let _ = self.rt.block_on(call);
    }

    /// Sends a transaction's image (see `commit.rs`) built on `base`. On success
    /// the cache and committed state move to the new version.
    pub fn commit(&self, base: DbState, image: Image) -> Result<DbState, CommitError> {
        self.check_replaced().map_err(CommitError::Definite)?;
        let held = self.state.lock().lease.held();
        let lease = held.ok_or_else(commit::without_lease)?;
        let max_message = self.settings.max_message_bytes;
        let plan = commit::plan(
            self.name(),
            self.incarnation,
            &lease,
            base,
            image,
            max_message,
        );
        let plan = Arc::new(plan);
        let asked_at = Instant::now();
        let resp = self
            .rt
            .block_on(self.client.clone().commit(plan.clone()))
            .map_err(CommitError::Unknown)?
            .map_err(|e| match e {
                CommitError::Definite(e) => CommitError::Definite(self.gone(e)),
                unknown => unknown,
            })?;
        let state = commit::new_state(&resp, base, &plan)?;
        let mut s = self.state.lock();
        s.applied(lease.epoch, asked_at, base, state, &plan.pages);
        Ok(state)
    }
}

/// What the write lease's heartbeat (`lease.rs`) does to this database.
impl LeaseOwner for Database {
    fn holder(&self) -> &Holder {
        &self.holder
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    fn heartbeat(&self) -> Duration {
        self.settings.heartbeat
    }

    fn idle_check(&self, epoch: u64) -> Idle {
        let writing = self.locks.lock().reserved();
        self.state
            .lock()
            .lease
            .idle(epoch, writing, self.lease_idle)
    }

    fn to_renew(&self, epoch: u64) -> Option<(Lease, Version)> {
        let s = self.state.lock();
        Some((s.lease.current(epoch)?.clone(), s.committed.version))
    }

    fn renewed(
        &self,
        epoch: u64,
        resp: &pb::LeaseResponse,
        asked_at: Instant,
        seen: Version,
    ) -> Result<(), VfsError> {
        let mut s = self.state.lock();
        let renewed = Lease::from_response(resp, asked_at)
            .and_then(|l| Ok((l, self.learn(&mut s, resp.state.as_ref(), Some(seen))?)));
        match renewed {
            Ok((renewed, _)) => {
                s.lease.renewed(epoch, &renewed);
                Ok(())
            }
            Err(e) => {
                s.lease.forget();
                Err(e)
            }
        }
    }

    fn failed(&self, e: VfsError) -> VfsError {
        self.gone(e)
    }

    fn lost(&self, epoch: u64) {
        let mut s = self.state.lock();
        if s.lease.current(epoch).is_some() {
            s.lease.forget();
            s.cache.reset();
        }
    }
}
