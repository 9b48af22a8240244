//! One remote database as seen by this process: shared by every connection of
//! the process that opened the same (server, token, name).
//!
//! It holds what connections must agree on: the local lock table, the write
//! lease (sticky: kept across transactions, renewed by a heartbeat task, given
//! back when the last connection closes), the newest committed state known here,
//! and a cache of pages valid at one version.

use std::{
    collections::HashMap,
    ops::RangeInclusive,
    sync::{
        Arc, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use pagewire_proto::v1 as pb;
use parking_lot::{Condvar, Mutex};
use tonic::Code;

use crate::{
    cache::{Changed, PageCache},
    client::{Client, CommitError, CommitPlan},
    config::{AsOf, Consistency},
    error::VfsError,
    locks::LockTable,
    runtime::Rt,
    watch::{self, WatchView},
};

/// A database's incarnation, or a version's tag: 16 bytes the server chose (see
/// "Identity" in `pagewire.proto`). A version number alone never names pages.
pub type Id16 = [u8; 16];

/// A database at one version, with the tag that names that version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DbState {
    pub version: u64,
    pub page_size: u32,
    pub page_count: u32,
    pub tag: Id16,
}

impl DbState {
    pub fn file_size(&self) -> u64 {
        self.page_size as u64 * self.page_count as u64
    }

    /// A state the server sent, checked (it is trusted no further than that) and with
    /// its incarnation: a page size SQLite can have (0 only while empty), a page count
    /// within SQLite's, empty only at version 0 (a commit leaves at least one page),
    /// 16-byte ids (version 0's tag may be empty: it is all zeros in every incarnation).
    pub fn from_wire(s: Option<&pb::DbState>) -> Result<(Self, Id16), VfsError> {
        let s = s.ok_or_else(|| bad_reply("a reply without the database's state"))?;
        let sized = s.page_size == 0
            || (s.page_size.is_power_of_two() && (512..=65536).contains(&s.page_size));
        if !sized || (s.page_size == 0) != (s.page_count == 0) || s.page_count == u32::MAX {
            return Err(bad_reply(&format!(
                "page size {} and count {}",
                s.page_size, s.page_count
            )));
        }
        if (s.version == 0) != (s.page_count == 0) {
            return Err(bad_reply(&format!(
                "version {} with page count {}",
                s.version, s.page_count
            )));
        }
        let id = |what: &str, b: &[u8]| -> Result<Id16, VfsError> {
            b.try_into()
                .map_err(|_| bad_reply(&format!("{what} of {} bytes", b.len())))
        };
        let tag = if s.version == 0 && s.tag.is_empty() {
            Id16::default()
        } else {
            id("a version tag", &s.tag)?
        };
        let state = Self {
            version: s.version,
            page_size: s.page_size,
            page_count: s.page_count,
            tag,
        };
        Ok((state, id("an incarnation", &s.incarnation)?))
    }
}

/// The server sent something this client cannot use.
fn bad_reply(what: &str) -> VfsError {
    VfsError::Internal(format!(
        "the server sent {what}; is it a pagewire server of a compatible version?"
    ))
}

/// What identifies a database to this process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DbKey {
    pub url: String,
    pub token: Option<String>,
    pub name: String,
}

/// Settings the server announced at Open.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub max_pages_per_read: usize,
    pub max_message_bytes: usize,
    pub heartbeat: Duration,
}

impl ServerSettings {
    /// The server's word, within reason (any value, 0 or missing included, gives
    /// settings that work): at least one page per read; messages of at least 1 MiB and
    /// at most what this client accepts; a heartbeat between 100 ms and a day.
    pub fn from_open(r: &pb::OpenResponse, client_max_message: usize) -> Self {
        let limits = r.limits.unwrap_or_default();
        let max_message_bytes = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
        Self {
            max_pages_per_read: (limits.max_pages_per_read as usize).max(1),
            max_message_bytes: max_message_bytes.clamp(1 << 20, client_max_message.max(1 << 20)),
            heartbeat: Duration::from_millis(r.heartbeat_ms.clamp(100, MAX_TTL_MS)),
        }
    }

    /// Most pages one ReadPages asks for at `page_size`: the server's limit, and no
    /// more than fit in one message (with room for its framing), at least one.
    pub fn pages_per_read(&self, page_size: u32) -> usize {
        let fit = (self.max_message_bytes / page_size.max(1) as usize).saturating_sub(1);
        self.max_pages_per_read.min(fit).max(1)
    }
}

/// Longest lease (or heartbeat) a server's word is taken for: a day. Longer would be a
/// bug, and clock arithmetic with it could overflow.
const MAX_TTL_MS: u64 = 24 * 3600 * 1000;

#[derive(Clone, Debug)]
struct Lease {
    id: Bytes,
    epoch: u64,
    ttl: Duration,
    /// Local deadline: the server's expiry minus a margin, measured from when we
    /// asked, so it always ends here first.
    valid_until: Instant,
}

impl Lease {
    fn from_response(r: &pb::LeaseResponse, asked_at: Instant) -> Result<Self, VfsError> {
        if r.lease_id.len() != 16 {
            return Err(bad_reply(&format!(
                "a lease id of {} bytes",
                r.lease_id.len()
            )));
        }
        // A server's word is not trusted to overflow our clock arithmetic.
        let ttl = Duration::from_millis(r.ttl_ms.min(MAX_TTL_MS));
        Ok(Self {
            id: r.lease_id.clone(),
            epoch: r.epoch,
            ttl,
            valid_until: Self::deadline(asked_at, ttl),
        })
    }

    fn deadline(asked_at: Instant, ttl: Duration) -> Instant {
        lease_deadline(asked_at, ttl)
    }

    fn valid(&self) -> bool {
        Instant::now() < self.valid_until
    }
}

/// Where a lease (write or read) asked for at `asked_at` with `ttl` ends here: the
/// server's expiry minus a fifth, so it always ends here first, whatever the clock
/// rates and the time the ask took to arrive.
pub fn lease_deadline(asked_at: Instant, ttl: Duration) -> Instant {
    asked_at + ttl - ttl / 5
}

/// One ReadPages call, its answer checked: one page of `at`'s page size per page asked.
/// The request names the incarnation and `at`'s tag, so the server never answers with
/// another database's pages.
async fn read_chunk(
    client: Client,
    name: String,
    incarnation: Id16,
    at: DbState,
    pages: Vec<u32>,
) -> Result<Vec<Bytes>, VfsError> {
    let asked = pages.len();
    let req = pb::ReadPagesRequest {
        name,
        version: at.version,
        page_nos: pages,
        incarnation: Bytes::copy_from_slice(&incarnation),
        tag: Bytes::copy_from_slice(&at.tag),
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
    lease: Option<Lease>,
    cache: PageCache,
    /// Last time a connection took RESERVED or committed: the lease is given
    /// back once it has been idle for `lease_idle`.
    last_write: Instant,
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
        self.lease = None;
        self.cache.reset();
        self.watch.void();
        VfsError::Replaced(why)
    }
}

pub struct Database {
    pub key: DbKey,
    /// The incarnation opened: every state learned later must be of it.
    incarnation: Id16,
    rt: Arc<Rt>,
    pub client: Client,
    pub settings: ServerSettings,
    lease_idle: Duration,
    client_id: String,
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
        opened: (DbState, Id16),
        cache_bytes: usize,
        lease_idle: Duration,
    ) -> Self {
        let (committed, incarnation) = opened;
        Self {
            client_id: format!("{}:{}", hostname(), std::process::id()),
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
                lease: None,
                cache: PageCache::new(cache_bytes),
                last_write: Instant::now(),
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

    pub fn incarnation(&self) -> Id16 {
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
    pub fn is_incarnation(&self, opened: Id16) -> bool {
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
            VfsError::Status(st) if st.code() == Code::NotFound => self.mark_replaced(st.message()),
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
        newest: Option<u64>,
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
        if status.code() == Code::NotFound {
            self.mark_replaced(status.message());
        }
    }

    /// Runs `f` on the watch state and the cache, under the state lock.
    pub fn with_watch<T>(&self, f: impl FnOnce(&mut WatchView, &mut PageCache) -> T) -> T {
        let s = &mut *self.state.lock();
        f(&mut s.watch, &mut s.cache)
    }

    /// The version a new read transaction pins. With no RPC when it can: the write
    /// lease holder is the only writer, so while its lease is valid and its cache
    /// current, that is the newest version; a read lease holder (see [`watch`]) knows
    /// the newest version from its Watch stream. Otherwise BeginRead asks the server.
    pub fn begin_read(
        self: &Arc<Self>,
        as_of: Option<AsOf>,
        consistency: Consistency,
    ) -> Result<DbState, VfsError> {
        let (cached, seen) = {
            let mut s = self.state.lock();
            s.check()?;
            if as_of.is_none() {
                let sole_writer = s.lease.as_ref().is_some_and(Lease::valid)
                    && s.cache.version() == s.committed.version;
                if sole_writer {
                    return Ok(s.committed);
                }
                if consistency == Consistency::Strong && s.watch.round_pending() {
                    // A commit is being published: its RoundEnd usually follows within
                    // a round trip, so wait for it rather than ask the server.
                    let deadline = Instant::now() + ROUND_WAIT;
                    while s.watch.round_pending()
                        && !self.round_end.wait_until(&mut s, deadline).timed_out()
                    {
                    }
                }
                if let Some(state) = s.watch.serves(consistency, s.cache.version()) {
                    s.watch.touch();
                    self.client
                        .counters
                        .local_reads
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(state);
                }
                if let Some(signals) = s.watch.note_read(consistency) {
                    self.rt.spawn(watch::run(
                        Arc::downgrade(self),
                        self.key.name.clone(),
                        self.lease_idle,
                        signals,
                    ));
                }
            }
            (s.cache.version(), s.committed)
        };
        let (at_version, at_unix_ms) = match as_of {
            Some(AsOf::Version(v)) => (v, 0),
            Some(AsOf::Time(t)) => (0, t),
            None => (0, 0),
        };
        let req = pb::BeginReadRequest {
            name: self.key.name.clone(),
            cached_version: cached,
            at_version,
            at_unix_ms,
            ranges: true,
            incarnation: Bytes::copy_from_slice(&self.incarnation),
            seen_version: seen.version,
            seen_tag: Bytes::copy_from_slice(&seen.tag),
        };
        let resp = self
            .rt
            .block_on(self.client.clone().begin_read(req))?
            .map_err(|e| self.gone(e))?;
        let mut s = self.state.lock();
        let state = self.learn(
            &mut s,
            resp.state.as_ref(),
            as_of.is_none().then_some(seen.version),
        )?;
        if at_version != 0 && state.version != at_version {
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
            if s.cache.version() != 0 {
                return Ok(());
            }
            s.cache.advance(0, at, None);
        }
        let all: Vec<u32> = (1..=at.page_count).collect();
        self.fetch(at, &all).map(drop)
    }

    /// Makes sure this process holds the write lease; returns the newest
    /// committed state (a writer pinned to an older one must not write).
    pub fn ensure_lease(self: &Arc<Self>) -> Result<DbState, VfsError> {
        let (current, seen) = {
            let mut s = self.state.lock();
            s.check()?;
            s.last_write = Instant::now();
            s.watch.wrote();
            match &s.lease {
                Some(l) if l.valid() => return Ok(s.committed),
                other => (other.clone(), s.committed.version),
            }
        };
        let asked_at = Instant::now();
        let renewed = match current {
            Some(l) => {
                let req = pb::RenewLeaseRequest {
                    name: self.key.name.clone(),
                    lease_id: l.id,
                    epoch: l.epoch,
                    incarnation: Bytes::copy_from_slice(&self.incarnation),
                };
                match self
                    .rt
                    .block_on(self.client.clone().renew_lease(req))?
                    .map_err(|e| self.gone(e))
                {
                    Err(VfsError::Status(s)) if s.code() == Code::FailedPrecondition => None,
                    other => Some(other?),
                }
            }
            None => None,
        };
        let resp = match renewed {
            Some(r) => r,
            None => {
                let req = pb::AcquireLeaseRequest {
                    name: self.key.name.clone(),
                    client_id: self.client_id.clone(),
                    incarnation: Bytes::copy_from_slice(&self.incarnation),
                };
                match self
                    .rt
                    .block_on(self.client.clone().acquire_lease(req))?
                    .map_err(|e| self.gone(e))
                {
                    Err(VfsError::Status(s)) if s.code() == Code::Aborted => {
                        return Err(VfsError::Busy(s.message().to_owned()));
                    }
                    other => other?,
                }
            }
        };
        let lease = Lease::from_response(&resp, asked_at)?;
        let (state, new_epoch) = {
            let mut s = self.state.lock();
            let state = self.learn(&mut s, resp.state.as_ref(), Some(seen))?;
            let new_epoch = s.lease.as_ref().is_none_or(|l| l.epoch != lease.epoch);
            s.lease = Some(lease.clone());
            (state, new_epoch)
        };
        if new_epoch {
            self.rt.spawn(heartbeat(Arc::downgrade(self), lease.epoch));
        }
        Ok(state)
    }

    /// Whether this process holds the write lease (so every commit is its own).
    pub fn holds_write_lease(&self) -> bool {
        self.state.lock().lease.is_some()
    }

    /// Forgets the lease (lost, or the outcome of a commit is unknown).
    pub fn drop_lease(&self) {
        self.state.lock().lease = None;
    }

    /// Forgets everything this process believed about the database.
    pub fn drop_all(&self) {
        let mut s = self.state.lock();
        s.lease = None;
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
        if let Some(call) = self.take_lease_for_release() {
            let _ = self.rt.block_on(call);
        }
    }

    /// Forgets the lease and returns the call that gives it back to the server.
    fn take_lease_for_release(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let l = self.state.lock().lease.take()?;
        let req = pb::ReleaseLeaseRequest {
            name: self.key.name.clone(),
            lease_id: l.id,
            epoch: l.epoch,
        };
        let client = self.client.clone();
        Some(async move {
            let name = req.name.clone();
            if let Ok(Err(e)) =
                tokio::time::timeout(Duration::from_secs(2), client.release_lease(req)).await
            {
                tracing::debug!(db = %name, error = %e, "lease release failed; it will expire");
            }
        })
    }

    /// What the heartbeat does with lease `epoch`: keep renewing it, stop (it is
    /// gone), or give it back because no connection of this process is writing
    /// and none has for `lease_idle` (so other clients can write).
    fn idle_check(&self, epoch: u64) -> Idle<impl Future<Output = ()> + Send + 'static> {
        let writing = self.locks.lock().reserved();
        {
            let s = self.state.lock();
            if s.lease.as_ref().is_none_or(|l| l.epoch != epoch) {
                return Idle::Gone;
            }
            if writing || s.last_write.elapsed() < self.lease_idle {
                return Idle::Busy;
            }
        }
        tracing::debug!(db = %self.key.name, "write lease idle: releasing it");
        match self.take_lease_for_release() {
            Some(call) => Idle::Release(call),
            None => Idle::Gone,
        }
    }

    /// Sends a transaction built on `base`. On success the cache and committed
    /// state move to the new version.
    pub fn commit(
        &self,
        base: DbState,
        page_size: u32,
        page_count: u32,
        pages: Vec<(u32, Bytes)>,
    ) -> Result<DbState, CommitError> {
        self.check_replaced().map_err(CommitError::Definite)?;
        let Some(lease) = self.state.lock().lease.clone() else {
            return Err(CommitError::Definite(VfsError::Status(
                tonic::Status::failed_precondition("this connection does not hold the write lease"),
            )));
        };
        let header = pb::CommitHeader {
            name: self.key.name.clone(),
            lease_id: lease.id.clone(),
            epoch: lease.epoch,
            base_version: base.version,
            commit_id: Bytes::copy_from_slice(&rand::random::<[u8; 16]>()),
            page_size,
            page_count,
            incarnation: Bytes::copy_from_slice(&self.incarnation),
            base_tag: Bytes::copy_from_slice(&base.tag),
        };
        let chunk_bytes = (self.settings.max_message_bytes / 2).max(page_size as usize);
        let plan = Arc::new(CommitPlan {
            header,
            pages,
            chunk_bytes,
        });
        let asked_at = Instant::now();
        let resp = self
            .rt
            .block_on(self.client.clone().commit(plan.clone()))
            .map_err(CommitError::Unknown)?
            .map_err(|e| match e {
                CommitError::Definite(e) => CommitError::Definite(self.gone(e)),
                unknown => unknown,
            })?;
        // Only the lease holder commits, on the current version: the new one is the next.
        let tag: Option<Id16> = resp.tag.as_ref().try_into().ok();
        let (Some(tag), true) = (tag, base.version.checked_add(1) == Some(resp.version)) else {
            return Err(CommitError::Unknown(bad_reply(&format!(
                "version {} (tag of {} bytes) for a commit on version {}",
                resp.version,
                resp.tag.len(),
                base.version
            ))));
        };
        let state = DbState {
            version: resp.version,
            page_size,
            page_count,
            tag,
        };
        let mut s = self.state.lock();
        s.last_write = Instant::now();
        // A commit renews the lease on the server.
        if let Some(l) = s.lease.as_mut().filter(|l| l.epoch == lease.epoch) {
            l.valid_until = l.valid_until.max(Lease::deadline(asked_at, l.ttl));
        }
        if state.version > s.committed.version {
            s.committed = state;
        }
        let changed: Vec<u32> = plan.pages.iter().map(|(p, _)| *p).collect();
        // The Watch stream's RoundEnd may have moved the cache there already.
        if s.cache.version() < state.version {
            s.cache.advance(
                base.version,
                state,
                Some(Changed::of_commit(&changed, base.page_count, page_count)),
            );
        }
        for (p, d) in &plan.pages {
            s.cache.insert(state, *p, d.clone());
        }
        Ok(state)
    }
}

enum Idle<F> {
    Busy,
    Gone,
    Release(F),
}

/// Renews the lease every heartbeat while it is the one installed.
async fn heartbeat(db: Weak<Database>, epoch: u64) {
    loop {
        let interval = match db.upgrade() {
            Some(db) => db.settings.heartbeat,
            None => return,
        };
        tokio::time::sleep(interval).await;
        let Some(db) = db.upgrade() else { return };
        match db.idle_check(epoch) {
            Idle::Busy => {}
            Idle::Gone => return,
            Idle::Release(call) => return call.await,
        }
        let (lease, seen) = {
            let s = db.state.lock();
            (
                s.lease.clone().filter(|l| l.epoch == epoch),
                s.committed.version,
            )
        };
        let Some(lease) = lease else { return };
        let asked_at = Instant::now();
        let req = pb::RenewLeaseRequest {
            name: db.key.name.clone(),
            lease_id: lease.id.clone(),
            epoch,
            incarnation: Bytes::copy_from_slice(&db.incarnation),
        };
        match db
            .client
            .clone()
            .renew_lease(req)
            .await
            .map_err(|e| db.gone(e))
        {
            Ok(resp) => {
                let mut s = db.state.lock();
                let renewed = Lease::from_response(&resp, asked_at)
                    .and_then(|l| Ok((l, db.learn(&mut s, resp.state.as_ref(), Some(seen))?)));
                match renewed {
                    Ok((renewed, _)) => {
                        if let Some(l) = s.lease.as_mut().filter(|l| l.epoch == epoch) {
                            l.valid_until = renewed.valid_until;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(db = %db.key.name, error = %e, "write lease renewal answered badly; dropping the lease");
                        s.lease = None;
                        return;
                    }
                }
            }
            Err(e) if !e.is_retryable() => {
                tracing::warn!(db = %db.key.name, error = %e, "write lease lost");
                if db
                    .state
                    .lock()
                    .lease
                    .as_ref()
                    .is_some_and(|l| l.epoch == epoch)
                {
                    db.drop_all();
                }
                return;
            }
            Err(e) => {
                tracing::debug!(db = %db.key.name, error = %e, "lease renewal failed; retrying")
            }
        }
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(version: u64, page_size: u32, page_count: u32, tag: &[u8]) -> pb::DbState {
        pb::DbState {
            version,
            page_size,
            page_count,
            incarnation: Bytes::from_static(&[1; 16]),
            tag: Bytes::copy_from_slice(tag),
        }
    }

    fn refused(s: Option<&pb::DbState>) -> String {
        DbState::from_wire(s).expect_err("refused").to_string()
    }

    #[test]
    fn states_from_the_server_are_checked() {
        let (s, incarnation) =
            DbState::from_wire(Some(&wire(3, 4096, 10, &[2; 16]))).expect("valid");
        assert_eq!(
            (s.version, s.page_size, s.page_count, s.tag, incarnation),
            (3, 4096, 10, [2; 16], [1; 16])
        );
        // Version 0: empty, its tag all zeros or left out.
        assert_eq!(
            DbState::from_wire(Some(&wire(0, 0, 0, &[])))
                .expect("empty tag at 0")
                .0,
            DbState::default()
        );
        assert!(DbState::from_wire(Some(&wire(0, 0, 0, &[0; 16]))).is_ok());
        assert!(refused(Some(&wire(1, 4096, 1, &[]))).contains("a version tag of 0 bytes"));
        assert!(refused(Some(&wire(0, 4096, 1, &[0; 16]))).contains("version 0 with page count 1"));
        assert!(refused(Some(&wire(5, 4096, 0, &[2; 16]))).contains("page size 4096 and count 0"));
        assert!(refused(Some(&wire(5, 0, 3, &[2; 16]))).contains("page size 0 and count 3"));
        for size in [3000, 256, 1 << 17, 1 << 30, u32::MAX] {
            assert!(
                refused(Some(&wire(1, size, 1, &[2; 16]))).contains(&format!("page size {size}"))
            );
        }
        assert!(refused(Some(&wire(1, 4096, u32::MAX, &[2; 16]))).contains("count 4294967295"));
        let mut short = wire(1, 4096, 1, &[2; 16]);
        short.incarnation = Bytes::from_static(&[1; 5]);
        assert!(refused(Some(&short)).contains("an incarnation of 5 bytes"));
        assert!(refused(None).contains("without the database's state"));
    }

    #[test]
    fn server_limits_of_any_value_give_settings_that_work() {
        let open = |limits, heartbeat_ms| pb::OpenResponse {
            limits,
            heartbeat_ms,
            ..Default::default()
        };
        let zero = ServerSettings::from_open(&open(Some(pb::Limits::default()), 0), 256 << 20);
        assert_eq!(
            (
                zero.max_pages_per_read,
                zero.max_message_bytes,
                zero.heartbeat
            ),
            (1, 1 << 20, Duration::from_millis(100))
        );
        assert_eq!(zero.pages_per_read(65536), 1);
        let none = ServerSettings::from_open(&open(None, 1000), 256 << 20);
        assert_eq!(
            (none.max_pages_per_read, none.max_message_bytes),
            (1, 1 << 20)
        );
        let max = pb::Limits {
            max_pages_per_read: u32::MAX,
            max_message_bytes: u64::MAX,
            max_commit_bytes: u64::MAX,
        };
        let max = ServerSettings::from_open(&open(Some(max), u64::MAX), 256 << 20);
        assert_eq!(
            (max.max_message_bytes, max.heartbeat),
            (256 << 20, Duration::from_millis(MAX_TTL_MS))
        );
        // As many pages as fit in a message this client accepts, with room for framing.
        assert_eq!(max.pages_per_read(4096), (256 << 20) / 4096 - 1);
        assert_eq!(max.pages_per_read(65536), 4095);
        assert_eq!(
            max.pages_per_read(0),
            (256 << 20) - 1,
            "an empty state asks for no pages anyway"
        );
        let server = pb::Limits {
            max_pages_per_read: 1024,
            max_message_bytes: 16 << 20,
            max_commit_bytes: 0,
        };
        let server = ServerSettings::from_open(&open(Some(server), 3000), 256 << 20);
        assert_eq!(
            (server.pages_per_read(4096), server.pages_per_read(65536)),
            (1024, 255)
        );
    }

    #[test]
    fn lease_ttls_are_clamped() {
        let at = Instant::now();
        let lease = |ttl_ms| pb::LeaseResponse {
            lease_id: Bytes::from_static(&[1; 16]),
            epoch: 1,
            ttl_ms,
            state: None,
        };
        assert_eq!(
            Lease::from_response(&lease(u64::MAX), at)
                .expect("clamped")
                .ttl,
            Duration::from_millis(MAX_TTL_MS)
        );
        assert!(!Lease::from_response(&lease(0), at).expect("zero").valid());
        let short = pb::LeaseResponse {
            lease_id: Bytes::from_static(&[1; 3]),
            ..lease(1000)
        };
        assert!(
            Lease::from_response(&short, at)
                .expect_err("short id")
                .to_string()
                .contains("a lease id of 3 bytes")
        );
    }
}
