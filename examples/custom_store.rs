//! Bring your own store: a complete [`PageStore`] keeping its databases in files, served by
//! the pagewire server and checked by the store conformance suite. Start yours from it.
//!
//!     cargo run --release -p pagewire-server-core --example custom_store -- /tmp/pw 127.0.0.1:7878
//!     PAGEWIRE_URL=http://127.0.0.1:7878 sqlite3   # .load target/release/libpagewire_vfs
//!     cargo nextest run --release -p pagewire-server-core --example custom_store
//!
//! The last runs the conformance suite on it (`tests` below): a store's tests enable the
//! crate feature `conformance` in their dev-dependencies and call `conformance_tests!`.
//!
//! **Design.** Each database lives in memory ([`Db`]) and in a log file, `<incarnation>.log`:
//! one record per [`Change`], a commit's pages included. A call checks and decides its change
//! on the state in memory (a refusal changes nothing), appends the record and syncs it: **that
//! is the commit point** (when the write or sync fails the outcome is unknown, `Unavailable`,
//! and a commit may be retried with its commit id). Then [`Db::apply`] applies it, the same
//! function the start-up replays the log with: a restart rebuilds the state it left (but the
//! pins), and cuts off a record a crash tore. A create's commit point is the rename of its
//! first record's file, a delete's the unlink of the log.
//!
//! **The rules a store keeps** are written once, in modules of
//! [`pagewire_server_core::store`] that the memory store uses too; this store keeps their
//! state in each [`Db`] and logs what changes it:
//! - [`history`]: a [`History`] answers as-of reads, change lists, which versions are
//!   readable and which GC keeps. [`Pins`] are reader pins, only in memory: a pin lost in a
//!   restart lets GC collect early, and the reader then gets `OutOfRange`, never wrong data
//!   (so GC logs the pins it honoured);
//! - [`page_writes`]: per page its writes; a read takes the newest at or before the version,
//!   a zero marker hides what an older version wrote past a truncate, GC drops the writes no
//!   kept version reads;
//! - [`lease_slot`]: a new epoch per grant, never reused; fencing; a commit renews the
//!   lease. Expiry is Unix ms from the store's [`Clock`], so a restart neither frees a held
//!   lease nor reuses an epoch;
//! - [`commit_check`]: the header checks in order (incarnation; commit id, among the last
//!   [`COMMIT_IDS_KEPT`], before the lease so a retry after the lease lapsed still learns
//!   its commit applied; lease; base version and tag).
//!
//! Ids drawn at random (incarnation, version tags, lease ids) are logged, never drawn again
//! on replay.
//!
//! **Simplifications** (it is an example): all pages are in memory; logs only grow (a real
//! store compacts them), every lease renewal adds a record and the start-up replays them all:
//! fine for small databases and short lives. One mutex for the whole store, blocking I/O in
//! async methods (a real store locks per database, uses `spawn_blocking`). One server per
//! directory (a real store holds a lock file). A torn record is told by its length only (a
//! real store checksums records).
//!
//! [`history`]: pagewire_server_core::store::history
//! [`page_writes`]: pagewire_server_core::store::page_writes
//! [`lease_slot`]: pagewire_server_core::store::lease_slot
//! [`commit_check`]: pagewire_server_core::store::commit_check
//! [`COMMIT_IDS_KEPT`]: pagewire_server_core::store::commit_check::COMMIT_IDS_KEPT

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use pagewire_server_core::store::commit_check::{self, CommitIds, outcome};
use pagewire_server_core::store::history::{History, Pins, VersionMeta};
use pagewire_server_core::store::lease_slot::LeaseSlot;
use pagewire_server_core::store::page_writes::PageWrites;
use pagewire_server_core::store::{
    BeginRead, Clock, Commit, CommitHeader, CommitId, CommitOutcome, DbInfo, DbKey, DbState,
    GcStats, Incarnation, Lease, LeaseId, PageRead, PageStore, PinTtl, ReadView, Retention,
    StoreError, StoreResult, Version, VersionTag, random_id,
};
use pagewire_server_core::{ServerConfig, serve, validate};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("usage: custom_store <dir> [addr]")?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7878".into());
    let store = std::sync::Arc::new(FileStore::open(dir, Clock::System)?);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    // The bound address: with port 0 the system chose one.
    println!(
        "pagewire-server listening on http://{}",
        listener.local_addr()?
    );
    let stop = async { drop(tokio::signal::ctrl_c().await) };
    serve(listener, store, ServerConfig::default(), stop).await
}

/// A change to a database: one log record. On disk, a little-endian u32 length, that many
/// bytes of this in TOML, then a commit's pages. Ids are their 16 bytes (the id types have no serde).
#[derive(Serialize, Deserialize)]
enum Change {
    Created(Created),
    /// The lease slot after a grant, a renewal or a release.
    Lease(LeaseSlot),
    Committed(CommitRecord),
    /// A GC pass at `unix_ms`, with the versions it found pinned.
    Collected {
        unix_ms: i64,
        retention_ms: u64,
        pinned: Vec<u64>,
    },
}

#[derive(Serialize, Deserialize)]
struct Created {
    tenant: String,
    name: String,
    incarnation: [u8; 16],
    unix_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct CommitRecord {
    commit_id: [u8; 16],
    tag: [u8; 16],
    unix_ms: i64,
    page_size: u32,
    page_count: u32,
    /// The pages carried, in the order of their bytes after the record.
    pages: Vec<u32>,
}

fn encode(change: &Change, pages: &[Bytes]) -> StoreResult<Vec<u8>> {
    let text = toml::to_string(change).map_err(|e| StoreError::Internal(e.to_string()))?;
    let mut record = (text.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(text.as_bytes());
    pages.iter().for_each(|page| record.extend_from_slice(page));
    Ok(record)
}

/// The record at the start of `log` and its length; `None` at the end, or at a record a
/// crash cut short.
fn decode(log: &[u8]) -> Option<(Change, Vec<Bytes>, usize)> {
    let len = 4 + u32::from_le_bytes(log.get(..4)?.try_into().ok()?) as usize;
    let change = toml::from_str(std::str::from_utf8(log.get(4..len)?).ok()?).ok()?;
    let (size, count) = match &change {
        Change::Committed(c) => (c.page_size as usize, c.pages.len()),
        _ => (1, 0),
    };
    let end = len.checked_add(size.checked_mul(count)?)?;
    let pages = log.get(len..end)?.chunks(size.max(1));
    Some((change, pages.map(Bytes::copy_from_slice).collect(), end))
}

fn not_found(key: &DbKey) -> StoreError {
    StoreError::NotFound(key.name.clone())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Internal(format!("{}: {e}", path.display()))
}

/// Makes the rename or the unlink of `path` durable: a failure is an unknown outcome.
fn sync_dir(path: &Path) -> StoreResult<()> {
    let dir = File::open(path.parent().unwrap_or(Path::new("."))).and_then(|d| d.sync_all());
    dir.map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))
}

/// One database: what its log adds up to, and its reader pins.
struct Db {
    path: PathBuf,
    log: File,
    /// Where the log's last whole record ends.
    log_len: u64,
    created: Created,
    history: History,
    pages: PageWrites<Bytes>,
    lease: LeaseSlot,
    commit_ids: CommitIds,
    pins: Pins,
}

impl Db {
    /// The database whose log is at `path`, replayed.
    fn load(path: PathBuf) -> anyhow::Result<Self> {
        let bytes = fs::read(&path).with_context(|| path.display().to_string())?;
        let Some((Change::Created(created), _, mut at)) = decode(&bytes) else {
            anyhow::bail!("{}: not a database log", path.display());
        };
        let log = OpenOptions::new().write(true).open(&path)?;
        let history = History::new(created.unix_ms, Incarnation(created.incarnation));
        let (pages, lease, commit_ids, pins) = Default::default();
        let mut db = Db {
            path,
            log,
            log_len: 0,
            created,
            history,
            pages,
            lease,
            commit_ids,
            pins,
        };
        while let Some((change, pages, len)) = decode(&bytes[at..]) {
            db.apply(change, pages);
            at += len;
        }
        db.log_len = at as u64;
        db.log.set_len(db.log_len)?; // cuts off a record that never got to its commit point
        Ok(db)
    }

    /// Appends `change` (with a commit's `pages`) to the log and syncs it: **the commit
    /// point**. Then applies it.
    fn record(&mut self, change: Change, pages: Vec<Bytes>) -> StoreResult<GcStats> {
        let record = encode(&change, &pages)?;
        let written = self.log.write_all_at(&record, self.log_len);
        // After a failed write or sync the record may still be there after a restart.
        let synced = written.and_then(|()| self.log.sync_data());
        synced.map_err(|e| StoreError::Unavailable(format!("{}: {e}", self.path.display())))?;
        self.log_len += record.len() as u64;
        Ok(self.apply(change, pages))
    }

    /// Applies a change whose record is in the log: live, and when the start-up replays it.
    fn apply(&mut self, change: Change, data: Vec<Bytes>) -> GcStats {
        match change {
            Change::Created(_) => {}
            Change::Lease(slot) => self.lease = slot,
            Change::Committed(c) => {
                let (base, version) = (self.history.state(), Version(self.history.current().0 + 1));
                let pages = c.pages.iter().copied().zip(data);
                let changed = self
                    .pages
                    .write(pages, base.page_count, c.page_count, version);
                self.history.push(VersionMeta {
                    page_size: c.page_size,
                    page_count: c.page_count,
                    committed_unix_ms: c.unix_ms,
                    tag: VersionTag(c.tag),
                    changed,
                    retained: true,
                });
                self.commit_ids.remember(CommitId(c.commit_id), version);
                self.lease.touch(c.unix_ms);
            }
            Change::Collected {
                unix_ms,
                retention_ms,
                pinned,
            } => {
                let retention = Duration::from_millis(retention_ms);
                let kept = self
                    .history
                    .kept(unix_ms, retention, |v| pinned.contains(&v.0));
                return self.pages.gc(&mut self.history, &kept, retention);
            }
        }
        GcStats::default()
    }

    fn info(&self, now: i64) -> DbInfo {
        let (bytes, lease_held) = (self.pages.stored_bytes(), self.lease.live(now).is_some());
        (self.history).info(&self.created.name, self.created.unix_ms, bytes, lease_held)
    }

    /// Runs `f` on a copy of the lease slot and logs the copy if `f` changed it.
    fn lease<T>(&mut self, f: impl FnOnce(&mut LeaseSlot) -> StoreResult<T>) -> StoreResult<T> {
        let mut slot = self.lease.clone();
        let done = f(&mut slot)?;
        if slot != self.lease {
            self.record(Change::Lease(slot), Vec::new())?;
        }
        Ok(done)
    }

    fn read(&mut self, version: Version, nos: &[u32], pin: PinTtl) -> StoreResult<PageRead> {
        let read = self.pages.read(&self.history, version, nos)?;
        // A read extends a pin that a BeginRead put on this version, but makes none.
        self.pins.refresh(version, pin, Instant::now());
        Ok(read)
    }

    /// The checks of a commit that need only its header, in the trait's order.
    fn check(&self, h: &CommitHeader, now: i64) -> StoreResult<Option<CommitOutcome>> {
        let (name, ids) = (&self.created.name, &self.commit_ids);
        commit_check::check(h, name, &self.history, ids, &self.lease, now)
    }

    fn commit(&mut self, c: Commit, now: i64) -> StoreResult<CommitOutcome> {
        if let Some(done) = self.check(&c.header(), now)? {
            return Ok(done);
        }
        validate::against_base(&c, &self.history.state())?;
        let (commit_id, tag, unix_ms) = (c.commit_id.0, random_id::<VersionTag>().0, now);
        let (page_size, page_count) = (c.page_size, c.page_count);
        let (pages, data) = c.pages.into_iter().unzip();
        let record = CommitRecord {
            commit_id,
            tag,
            unix_ms,
            page_size,
            page_count,
            pages,
        };
        self.record(Change::Committed(record), data)?;
        Ok(outcome(&self.history, self.history.current(), false))
    }

    /// One GC pass over this database (see [`PageStore::gc`]).
    fn gc(&mut self, unix_ms: i64, retention: Duration) -> StoreResult<GcStats> {
        let (now, h) = (Instant::now(), &self.history);
        self.pins.expire(now);
        let held = |v: &u64| self.pins.holds(Version(*v), now);
        let pinned: Vec<u64> = (h.oldest().0..=h.current().0).filter(held).collect();
        let kept = h.kept(unix_ms, retention, |v| pinned.contains(&v.0));
        if !self.pages.gc_due(h, &kept) {
            return Ok(GcStats::default()); // nothing to log
        }
        let retention_ms = retention.as_millis() as u64;
        self.record(
            Change::Collected {
                unix_ms,
                retention_ms,
                pinned,
            },
            Vec::new(),
        )
    }
}

/// A [`PageStore`] keeping each database in a log file in one directory.
pub struct FileStore {
    root: PathBuf,
    clock: Clock,
    /// Every call holds this lock from start to end: each is atomic.
    dbs: Mutex<BTreeMap<DbKey, Db>>,
}

impl FileStore {
    /// The store in `root` (created if missing), with times from `clock`.
    pub fn open(root: impl Into<PathBuf>, clock: Clock) -> anyhow::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).with_context(|| root.display().to_string())?;
        let mut dbs = BTreeMap::new();
        for entry in fs::read_dir(&root)? {
            let path = entry?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("log") => {
                    let db = Db::load(path)?;
                    dbs.insert(DbKey::new(&db.created.tenant, &db.created.name), db);
                }
                Some("tmp") => fs::remove_file(&path)?, // a create that did not get to its rename
                _ => {}
            }
        }
        let dbs = Mutex::new(dbs);
        Ok(Self { root, clock, dbs })
    }

    /// Runs `f` on one database, with the time now, under the store's lock.
    fn with<T>(&self, k: &DbKey, f: impl FnOnce(&mut Db, i64) -> StoreResult<T>) -> StoreResult<T> {
        let mut dbs = self.dbs.lock();
        let db = dbs.get_mut(k).ok_or_else(|| not_found(k))?;
        f(db, self.clock.unix_ms())
    }

    /// Creates the database `key`, which is not in the locked `dbs`.
    fn create_in<'a>(&self, dbs: &'a mut BTreeMap<DbKey, Db>, key: &DbKey) -> StoreResult<&'a Db> {
        let (tenant, name) = (key.tenant.clone(), key.name.clone());
        let (incarnation, unix_ms) = (random_id::<Incarnation>().0, self.clock.unix_ms());
        let created = Created {
            tenant,
            name,
            incarnation,
            unix_ms,
        };
        let record = encode(&Change::Created(created), &[])?;
        let hex: String = incarnation.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.root.join(hex + ".log");
        let tmp = path.with_extension("tmp");
        // Written to a temporary file, synced, renamed: the rename is the create's commit
        // point, and a log always starts with its `Created` record.
        let mut file = File::create_new(&tmp).map_err(io_error(&tmp))?;
        let written = file.write_all(&record).and_then(|()| file.sync_all());
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path)) {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(&path)(e));
        }
        let db = Db::load(path.clone()).map_err(|e| StoreError::Internal(format!("{e:#}")))?;
        let db = dbs.entry(key.clone()).or_insert(db);
        sync_dir(&path).map(|()| &*db)
    }
}

#[async_trait]
impl PageStore for FileStore {
    async fn open(&self, key: &DbKey, create: bool) -> StoreResult<(DbState, bool)> {
        let mut dbs = self.dbs.lock();
        if let Some(db) = dbs.get(key) {
            return Ok((db.history.state(), false));
        } else if !create {
            return Err(not_found(key));
        }
        Ok((self.create_in(&mut dbs, key)?.history.state(), true))
    }

    async fn create(&self, key: &DbKey) -> StoreResult<DbInfo> {
        let mut dbs = self.dbs.lock();
        if dbs.contains_key(key) {
            return Err(StoreError::AlreadyExists(key.name.clone()));
        }
        Ok(self.create_in(&mut dbs, key)?.info(self.clock.unix_ms()))
    }

    async fn delete(&self, key: &DbKey) -> StoreResult<()> {
        let mut dbs = self.dbs.lock();
        let path = dbs.get(key).ok_or_else(|| not_found(key))?.path.clone();
        fs::remove_file(&path).map_err(io_error(&path))?;
        dbs.remove(key);
        sync_dir(&path)
    }

    async fn list(&self, tenant: &str) -> StoreResult<Vec<DbInfo>> {
        let (dbs, now) = (self.dbs.lock(), self.clock.unix_ms());
        let mine = dbs.iter().filter(|(k, _)| k.tenant == tenant); // sorted by name
        Ok(mine.map(|(_, db)| db.info(now)).collect())
    }

    async fn info(&self, key: &DbKey) -> StoreResult<DbInfo> {
        self.with(key, |db, now| Ok(db.info(now)))
    }

    async fn acquire_lease_as(
        &self,
        key: &DbKey,
        client: &str,
        id: LeaseId,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.with(key, |db, now| {
            let granted = db.lease(|slot| slot.acquire(client, id, ttl, now))?;
            Ok(granted.lease(db.history.state()))
        })
    }

    async fn renew_lease(
        &self,
        key: &DbKey,
        id: LeaseId,
        epoch: u64,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.with(key, |db, now| {
            let renewed = db.lease(|slot| slot.renew(id, epoch, ttl, now))?;
            Ok(renewed.lease(db.history.state()))
        })
    }

    async fn release_lease(&self, key: &DbKey, id: LeaseId, epoch: u64) -> StoreResult<()> {
        let released = self.with(key, |db, _| db.lease(|slot| Ok(slot.release(id, epoch))));
        match released {
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn begin_read(&self, key: &DbKey, read: BeginRead) -> StoreResult<ReadView> {
        self.with(key, |db, _| {
            let view = db.history.view(&read)?;
            db.pins.pin(view.state.version, read.pin, Instant::now());
            Ok(view)
        })
    }

    async fn read_pages(
        &self,
        key: &DbKey,
        v: Version,
        nos: &[u32],
        pin: PinTtl,
    ) -> StoreResult<PageRead> {
        self.with(key, |db, _| db.read(v, nos, pin))
    }

    async fn precheck(&self, key: &DbKey, h: CommitHeader) -> StoreResult<Option<CommitOutcome>> {
        self.with(key, |db, now| db.check(&h, now))
    }

    async fn commit(&self, key: &DbKey, commit: Commit) -> StoreResult<CommitOutcome> {
        self.with(key, |db, now| db.commit(commit, now))
    }

    async fn gc(&self, unix_ms: i64, retention: Duration) -> StoreResult<GcStats> {
        self.gc_with(unix_ms, &Retention::uniform(retention)).await
    }

    /// Each tenant's own window (a tenant's history-retention quota may shorten it).
    async fn gc_with(&self, unix_ms: i64, retention: &Retention) -> StoreResult<GcStats> {
        let mut stats = GcStats::default();
        for (key, db) in self.dbs.lock().iter_mut() {
            stats.add(db.gc(unix_ms, retention.of(&key.tenant))?);
            stats.databases += 1;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use pagewire_server_core::store::conformance::{self, TestTime, pin};

    use super::*;

    /// A store in a new temporary directory, its clock following tokio's paused clock so
    /// that lease and pin TTLs pass in no real time.
    fn fixture() -> Option<(tempfile::TempDir, FileStore)> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = FileStore::open(dir.path(), Clock::tokio()).expect("store");
        Some((dir, store))
    }

    // The whole suite: one test per rule, each on a fresh store.
    pagewire_server_core::conformance_tests! {
        #[tokio::test(start_paused = true)]
        fixture: fixture(),
        time: TestTime::Paused,
    }

    /// A restart keeps every version's pages and identity (after the randomized run's
    /// commits, truncates, page-size changes and GC), the lease and its epoch, commit ids;
    /// it cuts off a record that never got to its commit point.
    #[tokio::test(start_paused = true)]
    async fn survives_a_restart() -> anyhow::Result<()> {
        let (dir, store) = fixture().expect("fixture");
        conformance::matches_reference_model(&store).await?;
        let (m, k) = (DbKey::new("model", "a.db"), DbKey::new("t", "a.db"));
        let ttl = Duration::from_secs(60);
        store.open(&k, true).await?;
        let lease = store.acquire_lease(&k, "w", ttl).await?;
        let first = conformance::commit(&lease, 0, 4096, 2, &[(2, 7)]);
        store.commit(&k, first.clone()).await?;
        let before = (images(&store, &k).await?, images(&store, &m).await?);
        let (log, len) = store.with(&k, |db, _| Ok((db.path.clone(), db.log_len)))?;
        let clock = store.clock;
        drop(store);
        let mut file = OpenOptions::new().append(true).open(&log)?;
        file.write_all(b"\x40\0\0\0[Lease]")?; // a record cut short

        let store = FileStore::open(dir.path(), clock)?; // restarted at the same instant
        assert!((images(&store, &k).await?, images(&store, &m).await?) == before);
        assert_eq!(fs::metadata(&log)?.len(), len, "the torn record is cut off");
        assert!(store.commit(&k, first).await?.already_applied);
        let next = conformance::commit(&lease, 1, 4096, 2, &[(2, 8)]);
        let version = store.commit(&k, next).await?.version;
        assert_eq!(version, Version(2), "the lease held");
        store.release_lease(&k, lease.lease_id, lease.epoch).await?;
        let again = store.acquire_lease(&k, "w2", ttl).await?;
        assert_eq!(again.epoch, lease.epoch + 1);
        Ok(())
    }

    type Image = StoreResult<PageRead>;

    /// The info of `k` and every page of every version (or the error).
    async fn images(store: &FileStore, k: &DbKey) -> StoreResult<(DbInfo, Vec<Image>)> {
        let (info, mut images, no_pin) = (store.info(k).await?, Vec::new(), pin(Duration::ZERO));
        for v in (0..=info.state.version.0).map(Version) {
            let at = store.read_pages(k, v, &[], no_pin).await;
            let nos: Vec<u32> = (1..=at.map_or(0, |r| r.state.page_count)).collect();
            images.push(store.read_pages(k, v, &nos, no_pin).await);
        }
        Ok((info, images))
    }
}
