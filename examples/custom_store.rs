//! Bring your own store: a complete [`PageStore`] that keeps every database in a directory
//! of files, served by the pagewire server, and checked by the store conformance suite.
//!
//!     cargo run --release -p pagewire-server-core --example custom_store -- /tmp/pagewire-data 127.0.0.1:7878
//!
//! Then, in `sqlite3`: `.load ./target/release/libpagewire_vfs` and `.open demo.db`. Stop
//! the server, start it again on the same directory: the data is still there.
//!
//!     cargo nextest run --release -p pagewire-server-core --example custom_store
//!
//! runs the conformance suite against it (the `tests` module at the bottom; a store's
//! tests enable the crate feature `conformance` in their dev-dependencies).
//!
//! # Layout
//!
//! ```text
//! <root>/
//!   db-1/            one directory per database (tenant and name are inside meta.toml)
//!     meta.toml      the incarnation, versions (page size, page count, commit time,
//!                    tag, pages changed and where the file grew),
//!                    the write lease, recent commit ids
//!     v1.pages       the pages version 1 wrote
//!     v2.pages       ...
//!   db-2/
//! ```
//!
//! # The rules a store keeps, and how this one keeps them
//!
//! - **History** (which version a read asks for, what changed since the reader's cached
//!   version, which versions are readable, what GC keeps and drops) is
//!   [`pagewire_server_core::store::history`], shared with the memory store: a
//!   [`History`] persisted in `meta.toml`, reader [`Pins`] in memory (a pin lost in a
//!   restart only lets GC collect early; the reader then gets `OutOfRange`, never wrong
//!   data), and [`trim_writes`] to find the page writes GC removes from the `.pages` files.
//! - **Atomic commits.** A commit writes its pages to a new `v<N>.pages` file, which
//!   nothing reads yet, then the new metadata to `meta.toml.tmp`, renamed over
//!   `meta.toml`: that rename is the commit point (a restart deletes an unpublished
//!   `.pages` file). Leases, GC, create and delete commit by a rename too.
//! - **Leases, commit ids, identity** live in `meta.toml`, so fencing, retries (the last
//!   [`COMMIT_IDS_KEPT`] commit ids) and the incarnation and version tags survive a
//!   restart (files written before identity existed get both at the next start). Lease
//!   expiry is Unix ms from the store's [`Clock`]: the system clock in production, one
//!   following tokio's paused clock in tests, so the timed conformance tests take no
//!   real time.
//!
//! # Simplifications (it is an example)
//!
//! One mutex for the whole store, and blocking `std::fs` calls inside the async methods
//! (a real store would lock per database and do its I/O with `spawn_blocking`). All
//! metadata is held in memory, and every change rewrites a database's whole `meta.toml`:
//! fine for thousands of versions, not for millions. One server process per directory
//! (a real store would hold a lock file).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read as _, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use pagewire_server_core::store::clock::Clock;
use pagewire_server_core::store::history::{History, KeptVersion, Pins, VersionMeta, trim_writes};
use pagewire_server_core::store::{
    BeginRead, Changes, Commit, CommitHeader, CommitOutcome, DbInfo, DbKey, DbState, GcStats, Id16,
    Incarnation, Lease, PageRead, PageStore, PinTtl, ReadView, StoreError, StoreResult, VersionTag,
    random_id,
};
use pagewire_server_core::{ServerConfig, serve, validate};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("usage: custom_store <dir> [addr]")?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7878".into());
    let store = DirStore::open(&dir, Clock::System)?;
    let listener = TcpListener::bind(&addr).await?;
    println!(
        "pagewire-server listening on http://{}",
        listener.local_addr()?
    );
    let config = ServerConfig {
        lease_ttl: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, Arc::new(store), config, shutdown).await
}

/// How many recent commit ids each database remembers for retries.
const COMMIT_IDS_KEPT: usize = 1024;

// ---------------------------------------------------------------------------------------
// meta.toml: everything about a database except its pages.
// ---------------------------------------------------------------------------------------

/// A database's metadata: what `meta.toml` holds (written as a [`MetaFile`]).
#[derive(Debug, Clone, Serialize)]
#[serde(into = "MetaFile")]
struct Meta {
    tenant: String,
    name: String,
    created_unix_ms: i64,
    /// The highest epoch ever granted: epochs are never reused.
    max_epoch: u64,
    lease: Option<LeaseRecord>,
    /// Recently applied commits, oldest first.
    commit_ids: Vec<CommitRecord>,
    /// The incarnation and the versions, with the shared history rules.
    history: History,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    #[serde(with = "hex_id")]
    lease_id: Id16,
    epoch: u64,
    client_id: String,
    ttl_ms: u64,
    expires_unix_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CommitRecord {
    #[serde(with = "hex_id")]
    id: Id16,
    version: u64,
}

/// `meta.toml` as written: [`Meta`] with its [`History`] as plain fields.
#[derive(Debug, Serialize, Deserialize)]
struct MetaFile {
    tenant: String,
    name: String,
    /// (Absent, read as [`ABSENT`], in files written before it existed: [`Db::load`] then
    /// chooses one and rewrites the file.)
    #[serde(default = "absent", with = "hex_id")]
    incarnation: Incarnation,
    created_unix_ms: i64,
    first_commit_unix_ms: Option<i64>,
    gc_retention_ms: Option<u64>,
    max_epoch: u64,
    /// The version `versions[0]` describes.
    oldest: u64,
    lease: Option<LeaseRecord>,
    commit_ids: Vec<CommitRecord>,
    versions: Vec<VersionFile>,
}

/// One [`VersionMeta`] in `meta.toml`.
#[derive(Debug, Serialize, Deserialize)]
struct VersionFile {
    page_size: u32,
    page_count: u32,
    committed_unix_ms: i64,
    /// (Absent, read as [`ABSENT`], in files written before it existed.)
    #[serde(default = "absent", with = "hex_id")]
    tag: VersionTag,
    retained: bool,
    /// Pages this version wrote below the old end, ascending.
    changed: Vec<u32>,
    /// When the file grew: the first page past the old end (a range, never a list). (Absent
    /// in files written before it existed, whose `changed` lists the growth.)
    #[serde(default)]
    grown_from: Option<u32>,
}

/// What an id missing from an older `meta.toml` reads as: 16 zero bytes, which
/// [`random_id`] never chooses (but with probability 2^-128).
const ABSENT: Id16 = [0; 16];

fn absent() -> Id16 {
    ABSENT
}

impl From<Meta> for MetaFile {
    fn from(m: Meta) -> Self {
        let h = &m.history;
        let versions = h.versions().iter().map(|v| VersionFile {
            page_size: v.page_size,
            page_count: v.page_count,
            committed_unix_ms: v.committed_unix_ms,
            tag: v.tag,
            retained: v.retained,
            changed: v.changed.pages.clone(),
            grown_from: v.changed.from,
        });
        Self {
            incarnation: h.incarnation(),
            first_commit_unix_ms: h.first_commit_unix_ms(),
            gc_retention_ms: h.gc_retention().map(|r| ms(r) as u64),
            oldest: h.oldest(),
            versions: versions.collect(),
            tenant: m.tenant,
            name: m.name,
            created_unix_ms: m.created_unix_ms,
            max_epoch: m.max_epoch,
            lease: m.lease,
            commit_ids: m.commit_ids,
        }
    }
}

impl MetaFile {
    /// Gives what a file written before identity existed lacks (see [`ABSENT`]): an
    /// incarnation, and a tag for every version but 0. Whether anything changed.
    fn fill_identity(&mut self) -> bool {
        let mut changed = self.incarnation == ABSENT;
        if changed {
            self.incarnation = random_id();
        }
        for (version, meta) in (self.oldest..).zip(&mut self.versions) {
            if version > 0 && meta.tag == ABSENT {
                meta.tag = random_id();
                changed = true;
            }
        }
        changed
    }

    fn into_meta(self) -> StoreResult<Meta> {
        let versions = self.versions.into_iter().map(|v| VersionMeta {
            page_size: v.page_size,
            page_count: v.page_count,
            committed_unix_ms: v.committed_unix_ms,
            tag: v.tag,
            changed: Changes {
                pages: v.changed,
                from: v.grown_from,
            },
            retained: v.retained,
        });
        let retention = self.gc_retention_ms.map(Duration::from_millis);
        let history = History::restore(
            self.incarnation,
            self.oldest,
            versions.collect(),
            self.first_commit_unix_ms,
            retention,
        )?;
        Ok(Meta {
            tenant: self.tenant,
            name: self.name,
            created_unix_ms: self.created_unix_ms,
            max_epoch: self.max_epoch,
            lease: self.lease,
            commit_ids: self.commit_ids,
            history,
        })
    }
}

impl Meta {
    fn new(key: &DbKey, now: i64) -> Self {
        Self {
            tenant: key.tenant.clone(),
            name: key.name.clone(),
            created_unix_ms: now,
            max_epoch: 0,
            lease: None,
            commit_ids: Vec::new(),
            history: History::new(now, random_id()),
        }
    }

    fn live_lease(&self, now: i64) -> Option<&LeaseRecord> {
        self.lease.as_ref().filter(|l| now < l.expires_unix_ms)
    }

    /// Fencing: `lease_id` and `epoch` must name the current, unexpired lease.
    fn check_lease(&self, lease_id: Id16, epoch: u64, now: i64) -> StoreResult<()> {
        let lost = |why: String| Err(StoreError::LeaseLost(why));
        match &self.lease {
            None => lost(format!(
                "the write lease (epoch {epoch}) is no longer held (released or expired); acquire a new one"
            )),
            Some(l) if l.lease_id != lease_id || l.epoch != epoch => lost(format!(
                "the write lease (epoch {epoch}) was superseded by epoch {}",
                l.epoch
            )),
            Some(l) if now >= l.expires_unix_ms => lost(format!(
                "the write lease (epoch {epoch}) expired {} ms ago; acquire a new one",
                now - l.expires_unix_ms
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Ids as 32 hex digits in meta.toml.
mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let hex = String::deserialize(d)?;
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
        bytes
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| D::Error::custom(format!("not 32 hex digits: {hex}")))
    }
}

// ---------------------------------------------------------------------------------------
// v<N>.pages: the pages one version wrote.
// ---------------------------------------------------------------------------------------

/// What a `.pages` file holds. On disk, little-endian u32s: the page size, how many pages
/// have data (n), how many read as zeros (z), the n page numbers, the z page numbers;
/// then the n pages. A zero page is written where the file grew over pages that an older
/// version had written before a truncate: they must not show through.
#[derive(Debug, Clone, Default)]
struct PagesFile {
    page_size: u32,
    /// Ascending; page `data[i]` is the i-th page after the header.
    data: Vec<u32>,
    zeros: Vec<u32>,
}

impl PagesFile {
    fn header(&self) -> Vec<u8> {
        let counts = [
            self.page_size,
            self.data.len() as u32,
            self.zeros.len() as u32,
        ];
        let all = counts.iter().chain(&self.data).chain(&self.zeros);
        all.flat_map(|n| n.to_le_bytes()).collect()
    }

    fn read_header(file: &mut File) -> io::Result<Self> {
        let mut counts = [0; 12];
        file.read_exact(&mut counts)?;
        let [page_size, n, z] = [0, 4, 8].map(|at| le_u32(&counts[at..]));
        let mut nos = vec![0; 4 * (n as usize + z as usize)];
        file.read_exact(&mut nos)?;
        let mut nos: Vec<u32> = nos.chunks_exact(4).map(le_u32).collect();
        let zeros = nos.split_off(n as usize);
        Ok(Self {
            page_size,
            data: nos,
            zeros,
        })
    }

    /// Where page `page_no`'s data starts in the file.
    fn offset(&self, page_no: u32) -> Option<u64> {
        let slot = self.data.binary_search(&page_no).ok()?;
        let header = 4 * (3 + self.data.len() + self.zeros.len());
        Some((header + slot * self.page_size as usize) as u64)
    }

    fn stored_bytes(&self) -> u64 {
        self.data.len() as u64 * u64::from(self.page_size)
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Creates (or truncates) `path`, writes it with `write`, and syncs it to disk.
fn write_synced(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    write(&mut out)?;
    out.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()
}

/// Makes a directory's entries (new files, renames) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn internal(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("{what}: {e}"))
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------
// One database: its directory, its metadata, and an index of its page writes.
// ---------------------------------------------------------------------------------------

/// One stored write of a page: at `version`, from that version's `.pages` file, or zeros.
#[derive(Debug, Clone, Copy)]
struct PageWrite {
    version: u64,
    zeros: bool,
}

struct Db {
    dir: PathBuf,
    /// What `meta.toml` says; replaced only after the new one is on disk.
    meta: Meta,
    /// The `.pages` files, by version (rebuilt from their headers at start-up).
    files: BTreeMap<u64, PagesFile>,
    /// Per page, its writes in ascending version order (derived from `files`).
    writes: BTreeMap<u32, Vec<PageWrite>>,
    /// Reader pins. In memory only.
    pins: Pins,
}

impl Db {
    fn new(dir: PathBuf, meta: Meta) -> Self {
        let (files, writes, pins) = Default::default();
        Db {
            dir,
            meta,
            files,
            writes,
            pins,
        }
    }

    /// A new, empty database in the new directory `dir` (under `root`).
    fn create(root: &Path, dir: PathBuf, key: &DbKey, now: i64) -> StoreResult<Self> {
        fs::create_dir(&dir)
            .and_then(|()| sync_dir(root))
            .map_err(|e| internal(dir.display(), e))?;
        let mut db = Db::new(dir, Meta::new(key, now));
        let created = db.publish(db.meta.clone()); // the create's commit point
        if created.is_err() {
            let _ = fs::remove_dir_all(&db.dir);
        }
        created.map(|()| db)
    }

    /// The database in `dir`, or `None` when it has no `meta.toml` (its create never
    /// reached the commit point). Deletes what a crash left behind: `.pages` files of
    /// versions never published, temporary files.
    fn load(dir: &Path) -> anyhow::Result<Option<Self>> {
        let meta_path = dir.join("meta.toml");
        let text = match fs::read_to_string(&meta_path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            read => read.with_context(|| meta_path.display().to_string())?,
        };
        let mut file: MetaFile =
            toml::from_str(&text).with_context(|| meta_path.display().to_string())?;
        let upgraded = file.fill_identity();
        let mut db = Db::new(dir.to_owned(), file.into_meta()?);
        let mut files = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let version = name
                .strip_prefix('v')
                .and_then(|n| n.strip_suffix(".pages"));
            match version.and_then(|v| v.parse::<u64>().ok()) {
                Some(v) if v <= db.meta.history.current() => {
                    let header = PagesFile::read_header(&mut File::open(&path)?);
                    files.insert(v, header.with_context(|| path.display().to_string())?);
                }
                _ if name == "meta.toml" => {}
                _ => fs::remove_file(&path)?,
            }
        }
        for (version, file) in files {
            db.add_file(version, file);
        }
        if upgraded {
            // Before any client can learn them: the same ids after every later restart.
            db.publish(db.meta.clone())
                .with_context(|| format!("adding identity to {}", meta_path.display()))?;
        }
        Ok(Some(db))
    }

    fn key(&self) -> DbKey {
        DbKey::new(&self.meta.tenant, &self.meta.name)
    }

    fn pages_path(&self, version: u64) -> PathBuf {
        self.dir.join(format!("v{version}.pages"))
    }

    /// Replaces `meta.toml` with `meta`: written to a temporary file, synced, then renamed
    /// over the old one. The rename is atomic: a crash leaves the old file or the new one,
    /// never a mix. **It is the commit point of every change.**
    fn publish(&mut self, meta: Meta) -> StoreResult<()> {
        let text = toml::to_string(&meta).map_err(|e| internal("encoding meta.toml", e))?;
        let (tmp, path) = (self.dir.join("meta.toml.tmp"), self.dir.join("meta.toml"));
        write_synced(&tmp, |out| out.write_all(text.as_bytes()))
            .map_err(|e| internal(tmp.display(), e))?;
        fs::rename(&tmp, &path).map_err(|e| internal(path.display(), e))?;
        // Past the commit point: the change happened. Only its durability is still open,
        // so a failure now is an unknown outcome (a commit's retry learns it applied).
        self.meta = meta;
        sync_dir(&self.dir)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", self.dir.display())))
    }

    /// Indexes the writes of a published `.pages` file (versions added in ascending order).
    fn add_file(&mut self, version: u64, file: PagesFile) {
        let data = file.data.iter().map(|&no| (no, false));
        for (no, zeros) in data.chain(file.zeros.iter().map(|&no| (no, true))) {
            self.writes
                .entry(no)
                .or_default()
                .push(PageWrite { version, zeros });
        }
        self.files.insert(version, file);
    }

    fn info(&self, now: i64) -> DbInfo {
        let h = &self.meta.history;
        DbInfo {
            name: self.meta.name.clone(),
            state: h.state(),
            stored_bytes: self.files.values().map(PagesFile::stored_bytes).sum(),
            oldest_version: h.oldest(),
            created_unix_ms: self.meta.created_unix_ms,
            updated_unix_ms: h.updated_unix_ms().unwrap_or(self.meta.created_unix_ms),
            lease_held: self.meta.live_lease(now).is_some(),
        }
    }

    /// Publishes `meta` with the lease it holds, and returns that lease.
    fn grant(&mut self, meta: Meta) -> StoreResult<Lease> {
        self.publish(meta)?;
        let l = self
            .meta
            .lease
            .as_ref()
            .ok_or_else(|| internal("lease", "missing"))?;
        let state = self.meta.history.state();
        Ok(Lease {
            lease_id: l.lease_id,
            epoch: l.epoch,
            ttl: millis(l.ttl_ms),
            state,
        })
    }

    fn acquire(&mut self, client_id: &str, ttl: Duration, now: i64) -> StoreResult<Lease> {
        if let Some(held) = self.meta.live_lease(now) {
            return Err(StoreError::LeaseHeld {
                holder: held.client_id.clone(),
                remaining: millis((held.expires_unix_ms - now) as u64),
            });
        }
        let mut meta = self.meta.clone();
        meta.max_epoch += 1;
        meta.lease = Some(LeaseRecord {
            lease_id: rand::random(),
            epoch: meta.max_epoch,
            client_id: client_id.to_owned(),
            ttl_ms: ms(ttl) as u64,
            expires_unix_ms: now.saturating_add(ms(ttl)),
        });
        self.grant(meta)
    }

    fn renew(&mut self, lease_id: Id16, epoch: u64, ttl: Duration, now: i64) -> StoreResult<Lease> {
        self.meta.check_lease(lease_id, epoch, now)?;
        let mut meta = self.meta.clone();
        if let Some(lease) = &mut meta.lease {
            lease.ttl_ms = ms(ttl) as u64;
            lease.expires_unix_ms = now.saturating_add(ms(ttl));
        }
        self.grant(meta)
    }

    fn release(&mut self, lease_id: Id16, epoch: u64) -> StoreResult<()> {
        let lease = self.meta.lease.as_ref();
        if !lease.is_some_and(|l| l.lease_id == lease_id && l.epoch == epoch) {
            return Ok(());
        }
        let mut meta = self.meta.clone();
        meta.lease = None;
        self.publish(meta)
    }

    fn begin_read(&mut self, read: BeginRead) -> StoreResult<ReadView> {
        let view = self.meta.history.view(&read)?;
        self.pins.pin(view.state.version, read.pin, Instant::now());
        Ok(view)
    }

    fn read(&mut self, version: u64, page_nos: &[u32], pin: PinTtl) -> StoreResult<PageRead> {
        let (state, _) = self.meta.history.readable(version)?;
        validate::page_nos_in_range(page_nos, state.page_count)?;
        let mut open = HashMap::new();
        let pages = page_nos
            .iter()
            .map(|&no| self.page_at(no, version, state.page_size, &mut open))
            .collect::<StoreResult<_>>()?;
        // A read extends a pin that a BeginRead put on this version, but makes none.
        self.pins.refresh(version, pin, Instant::now());
        Ok(PageRead {
            state,
            page_size: state.page_size,
            pages,
        })
    }

    /// Page `no` as of `version`: its newest write at or before it; zeros if none.
    fn page_at(
        &self,
        no: u32,
        version: u64,
        page_size: u32,
        open: &mut HashMap<u64, File>,
    ) -> StoreResult<Bytes> {
        let writes = self.writes.get(&no).map_or(&[][..], Vec::as_slice);
        let visible = writes.partition_point(|w| w.version <= version);
        let newest = visible.checked_sub(1).map(|i| writes[i]);
        let Some(PageWrite {
            version: written,
            zeros: false,
        }) = newest
        else {
            return Ok(Bytes::from(vec![0; page_size as usize]));
        };
        let path = self.pages_path(written);
        let file = self.files.get(&written);
        let offset = file
            .filter(|f| f.page_size == page_size)
            .and_then(|f| f.offset(no));
        let offset =
            offset.ok_or_else(|| internal(path.display(), format!("page {no} missing")))?;
        let file = match open.entry(written) {
            Entry::Occupied(file) => file.into_mut(),
            Entry::Vacant(slot) => {
                slot.insert(File::open(&path).map_err(|e| internal(path.display(), e))?)
            }
        };
        let mut data = vec![0; page_size as usize];
        file.read_exact_at(&mut data, offset)
            .map_err(|e| internal(path.display(), e))?;
        Ok(Bytes::from(data))
    }

    /// The checks of a commit that need only its header, in the trait's order: the
    /// incarnation; then the commit id (`Some` outcome when it applied), so that a retry
    /// after the lease lapsed still learns that its commit applied; the lease; the base
    /// version and its tag. Also [`PageStore::precheck`].
    fn check(&self, h: &CommitHeader, now: i64) -> StoreResult<Option<CommitOutcome>> {
        let (meta, name) = (&self.meta, &self.meta.name);
        let incarnation = meta.history.incarnation();
        h.identity.check_incarnation(name, &incarnation)?;
        if let Some(done) = meta.commit_ids.iter().find(|c| c.id == h.commit_id) {
            let tag = meta.history.tag_of(done.version);
            let version = done.version;
            return Ok(Some(CommitOutcome {
                version,
                already_applied: true,
                incarnation,
                tag,
            }));
        }
        meta.check_lease(h.lease_id, h.epoch, now)?;
        let current = meta.history.state();
        if h.base_version != current.version {
            let (base, current) = (h.base_version, current.version);
            return Err(StoreError::VersionConflict { base, current });
        }
        h.identity.check_state(name, &current)?;
        Ok(None)
    }

    fn commit(&mut self, mut commit: Commit, now: i64) -> StoreResult<CommitOutcome> {
        if let Some(done) = self.check(&commit.header(), now)? {
            return Ok(done);
        }
        let base = self.meta.history.state();
        validate::against_base(&commit, &base)?;

        // 1. The pages go to a new file, which nothing reads until meta.toml names it.
        let version = base.version + 1;
        commit.pages.sort_unstable_by_key(|(no, _)| *no);
        let carried: Vec<u32> = commit.pages.iter().map(|(no, _)| *no).collect();
        // Pages past the old end that an older version wrote (before a truncate) and this
        // commit does not carry: found among the written pages, never by walking the grown
        // range, which may be billions of pages long.
        let grown = (commit.page_count > base.page_count)
            .then(|| self.writes.range(base.page_count + 1..=commit.page_count));
        let stale = grown.into_iter().flatten().filter(|(no, writes)| {
            writes.last().is_some_and(|w| !w.zeros) && carried.binary_search(no).is_err()
        });
        let file = PagesFile {
            page_size: commit.page_size,
            zeros: stale.map(|(&no, _)| no).collect(),
            data: carried,
        };
        let path = self.pages_path(version);
        write_synced(&path, |out| {
            out.write_all(&file.header())?;
            commit
                .pages
                .iter()
                .try_for_each(|(_, data)| out.write_all(data))
        })
        .and_then(|()| sync_dir(&self.dir)) // its name too, before meta.toml names it
        .map_err(|e| internal(path.display(), e))?;

        // 2. The new metadata: the version, its commit id, the lease renewed.
        let mut meta = self.meta.clone();
        let tag = random_id();
        meta.history.push(VersionMeta {
            page_size: commit.page_size,
            page_count: commit.page_count,
            committed_unix_ms: now,
            tag,
            changed: Changes::of_commit(
                file.data.iter().copied(),
                base.page_count,
                commit.page_count,
            ),
            retained: true,
        });
        meta.commit_ids.push(CommitRecord {
            id: commit.commit_id,
            version,
        });
        let extra = meta.commit_ids.len().saturating_sub(COMMIT_IDS_KEPT);
        meta.commit_ids.drain(..extra);
        if let Some(lease) = &mut meta.lease {
            lease.expires_unix_ms = now.saturating_add(lease.ttl_ms as i64);
        }

        // 3. The commit point.
        let published = self.publish(meta);
        if self.meta.history.current() == version {
            self.add_file(version, file);
        }
        published?;
        let incarnation = self.meta.history.incarnation();
        Ok(CommitOutcome {
            version,
            already_applied: false,
            incarnation,
            tag: Some(tag),
        })
    }

    /// One GC pass over this database (see [`PageStore::gc`]).
    fn gc(&mut self, now_unix_ms: i64, retention: Duration) -> StoreResult<GcStats> {
        let now = Instant::now();
        self.pins.expire(now);
        let kept = self
            .meta
            .history
            .kept(now_unix_ms, retention, |v| self.pins.holds(v, now));
        let mut stats = GcStats {
            databases: 1,
            ..GcStats::default()
        };

        // 1. The versions not kept become unreadable, and the metadata below the oldest
        //    kept one goes. This rename is GC's commit point; the page files follow.
        if self.meta.history.readable_count() > kept.len() {
            let mut meta = self.meta.clone();
            stats.versions_collected = meta.history.collect(&kept, retention);
            self.publish(meta)?;
        }

        // 2. Remove the page writes no kept version reads: rewrite the files that hold
        //    them, oldest first, each durable before the next. A zero page goes only when
        //    no older write of its page is left, so whatever instant a crash (or an I/O
        //    error) stops this loop at, no old write can show through.
        for (version, pages) in self.dead_writes(&kept) {
            let (writes, bytes) = self.shrink_file(version, &pages)?;
            stats.writes_removed += writes;
            stats.bytes_freed += bytes;
        }
        Ok(stats)
    }

    /// The writes no kept version reads, by version, page numbers ascending.
    fn dead_writes(&self, kept: &[KeptVersion]) -> BTreeMap<u64, Vec<u32>> {
        let mut dead: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        for (&no, writes) in &self.writes {
            // On a copy: the index changes only once the files have.
            for write in trim_writes(no, &mut writes.clone(), kept, |w| (w.version, w.zeros)) {
                dead.entry(write.version).or_default().push(no);
            }
        }
        dead
    }

    /// Rewrites (or deletes) version `version`'s file without the `dead` pages (ascending),
    /// then drops them from the index. Returns (writes, bytes) removed.
    fn shrink_file(&mut self, version: u64, dead: &[u32]) -> StoreResult<(u64, u64)> {
        let Some(old) = self.files.get(&version) else {
            return Ok((0, 0));
        };
        let alive = |no: &&u32| dead.binary_search(no).is_err();
        let new = PagesFile {
            page_size: old.page_size,
            data: old.data.iter().filter(alive).copied().collect(),
            zeros: old.zeros.iter().filter(alive).copied().collect(),
        };
        let path = self.pages_path(version);
        let freed = old.stored_bytes() - new.stored_bytes();
        let empty = new.data.is_empty() && new.zeros.is_empty();
        if empty {
            fs::remove_file(&path)
                .and_then(|()| sync_dir(&self.dir))
                .map_err(|e| internal(path.display(), e))?;
        } else {
            // The same trick as meta.toml: a new file, renamed over the old one.
            let src = File::open(&path).map_err(|e| internal(path.display(), e))?;
            let tmp = path.with_extension("tmp");
            let mut page = vec![0; old.page_size as usize];
            write_synced(&tmp, |out| {
                out.write_all(&new.header())?;
                for &no in &new.data {
                    src.read_exact_at(&mut page, old.offset(no).unwrap_or_default())?;
                    out.write_all(&page)?;
                }
                Ok(())
            })
            .and_then(|()| fs::rename(&tmp, &path))
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|e| internal(path.display(), e))?;
        }
        // On disk now: the index follows.
        if empty {
            self.files.remove(&version);
        } else {
            self.files.insert(version, new);
        }
        for no in dead {
            if let Some(writes) = self.writes.get_mut(no) {
                writes.retain(|w| w.version != version);
                if writes.is_empty() {
                    self.writes.remove(no);
                }
            }
        }
        Ok((dead.len() as u64, freed))
    }
}

// ---------------------------------------------------------------------------------------
// The store: databases by key, and the PageStore methods.
// ---------------------------------------------------------------------------------------

/// A [`PageStore`] keeping each database in its own directory under one root.
pub struct DirStore {
    root: PathBuf,
    clock: Clock,
    /// Every call holds this lock from start to end, which makes each call atomic and
    /// serializes them (the simplest correct choice; see the top of the file).
    inner: Mutex<Inner>,
}

struct Inner {
    dbs: BTreeMap<DbKey, Db>,
    /// The number of the next `db-<n>` directory.
    next_dir: u64,
}

impl DirStore {
    /// The store in `root` (created if missing). Lease, pin and commit times come from
    /// `clock`: [`Clock::System`] in production, [`Clock::tokio`] in tests.
    pub fn open(root: impl Into<PathBuf>, clock: Clock) -> anyhow::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).with_context(|| root.display().to_string())?;
        let mut inner = Inner {
            dbs: BTreeMap::new(),
            next_dir: 1,
        };
        for entry in fs::read_dir(&root)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if let Some(n) = name.strip_prefix("db-").and_then(|n| n.parse::<u64>().ok()) {
                inner.next_dir = inner.next_dir.max(n + 1);
                match Db::load(&path)? {
                    Some(db) => {
                        inner.dbs.insert(db.key(), db);
                    }
                    None => fs::remove_dir_all(&path)?, // a create that never finished
                }
            } else if name.starts_with("deleted-") {
                fs::remove_dir_all(&path)?; // a delete that did not finish cleaning up
            }
        }
        Ok(Self {
            root,
            clock,
            inner: Mutex::new(inner),
        })
    }

    /// Runs `f` on one database (with the time now) under the store's lock.
    fn with_db<T>(
        &self,
        key: &DbKey,
        f: impl FnOnce(&mut Db, i64) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut inner = self.inner.lock();
        let db = inner
            .dbs
            .get_mut(key)
            .ok_or_else(|| StoreError::NotFound(key.name.clone()))?;
        f(db, self.clock.unix_ms())
    }

    fn create_db<'a>(&self, inner: &'a mut Inner, key: &DbKey) -> StoreResult<&'a mut Db> {
        let dir = self.root.join(format!("db-{}", inner.next_dir));
        inner.next_dir += 1;
        let db = Db::create(&self.root, dir, key, self.clock.unix_ms())?;
        Ok(inner.dbs.entry(key.clone()).or_insert(db))
    }
}

#[async_trait]
impl PageStore for DirStore {
    async fn open(&self, key: &DbKey, create: bool) -> StoreResult<(DbState, bool)> {
        let mut inner = self.inner.lock();
        if let Some(db) = inner.dbs.get(key) {
            return Ok((db.meta.history.state(), false));
        }
        if !create {
            return Err(StoreError::NotFound(key.name.clone()));
        }
        let db = self.create_db(&mut inner, key)?;
        Ok((db.meta.history.state(), true))
    }

    async fn create(&self, key: &DbKey) -> StoreResult<DbInfo> {
        let mut inner = self.inner.lock();
        if inner.dbs.contains_key(key) {
            return Err(StoreError::AlreadyExists(key.name.clone()));
        }
        let db = self.create_db(&mut inner, key)?;
        Ok(db.info(self.clock.unix_ms()))
    }

    async fn delete(&self, key: &DbKey) -> StoreResult<()> {
        let mut inner = self.inner.lock();
        let db = inner
            .dbs
            .get(key)
            .ok_or_else(|| StoreError::NotFound(key.name.clone()))?;
        // Renaming the directory away is the delete's commit point; then it is removed
        // (or, after a crash, at the next start).
        let name = db.dir.file_name().unwrap_or_default().to_string_lossy();
        let trash = self.root.join(format!("deleted-{name}"));
        fs::rename(&db.dir, &trash).map_err(|e| internal(db.dir.display(), e))?;
        inner.dbs.remove(key);
        let synced = sync_dir(&self.root);
        let _ = fs::remove_dir_all(&trash);
        synced.map_err(|e| StoreError::Unavailable(format!("{}: {e}", self.root.display())))
    }

    async fn list(&self, tenant: &str) -> StoreResult<Vec<DbInfo>> {
        let inner = self.inner.lock();
        let now = self.clock.unix_ms();
        // Sorted by key, so by name within a tenant.
        let dbs = inner.dbs.iter().filter(|(k, _)| k.tenant == tenant);
        Ok(dbs.map(|(_, db)| db.info(now)).collect())
    }

    async fn info(&self, key: &DbKey) -> StoreResult<DbInfo> {
        self.with_db(key, |db, now| Ok(db.info(now)))
    }

    async fn acquire_lease(
        &self,
        key: &DbKey,
        client_id: &str,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.with_db(key, |db, now| db.acquire(client_id, ttl, now))
    }

    async fn renew_lease(
        &self,
        key: &DbKey,
        lease_id: Id16,
        epoch: u64,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.with_db(key, |db, now| db.renew(lease_id, epoch, ttl, now))
    }

    async fn release_lease(&self, key: &DbKey, lease_id: Id16, epoch: u64) -> StoreResult<()> {
        match self.with_db(key, |db, _| db.release(lease_id, epoch)) {
            Err(StoreError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    async fn begin_read(&self, key: &DbKey, read: BeginRead) -> StoreResult<ReadView> {
        self.with_db(key, |db, _| db.begin_read(read))
    }

    async fn read_pages(
        &self,
        key: &DbKey,
        version: u64,
        page_nos: &[u32],
        pin: PinTtl,
    ) -> StoreResult<PageRead> {
        self.with_db(key, |db, _| db.read(version, page_nos, pin))
    }

    async fn precheck(
        &self,
        key: &DbKey,
        header: CommitHeader,
    ) -> StoreResult<Option<CommitOutcome>> {
        self.with_db(key, |db, now| db.check(&header, now))
    }

    async fn commit(&self, key: &DbKey, commit: Commit) -> StoreResult<CommitOutcome> {
        self.with_db(key, |db, now| db.commit(commit, now))
    }

    async fn gc(&self, now_unix_ms: i64, retention: Duration) -> StoreResult<GcStats> {
        let mut inner = self.inner.lock();
        let mut stats = GcStats::default();
        for db in inner.dbs.values_mut() {
            stats.add(db.gc(now_unix_ms, retention)?);
        }
        Ok(stats)
    }
}

// ---------------------------------------------------------------------------------------
// The conformance suite, run against this store: one test per rule, each on a fresh
// directory.
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use pagewire_server_core::store::conformance::{self, TestTime};
    use pagewire_server_core::store::{NO_TAG, ReadAt};

    use super::*;

    /// Reads that pin nothing.
    const NO_PIN: PinTtl = PinTtl {
        ttl: Duration::ZERO,
        max_age: Duration::ZERO,
    };

    /// A store in a new temporary directory (deleted after the test), its clock following
    /// tokio's paused clock so that lease and pin TTLs pass in no real time.
    fn fixture() -> Option<(tempfile::TempDir, DirStore)> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = DirStore::open(dir.path(), Clock::tokio()).expect("store");
        Some((dir, store))
    }

    pagewire_server_core::conformance_tests! {
        #[tokio::test(start_paused = true)]
        fixture: fixture(),
        time: TestTime::Paused,
    }

    /// What the files hold survives a restart: versions, pages, the lease and its epoch,
    /// commit ids; a half-written commit's file is deleted.
    #[tokio::test(start_paused = true)]
    async fn survives_a_restart() -> anyhow::Result<()> {
        let (dir, store) = fixture().expect("fixture");
        let k = DbKey::new("t", "a.db");
        store.open(&k, true).await?;
        let lease = store
            .acquire_lease(&k, "w", Duration::from_secs(60))
            .await?;
        let first = conformance::commit(&lease, 0, 4096, 3, &[(2, 7), (3, 8)]);
        store.commit(&k, first.clone()).await?;
        store
            .commit(&k, conformance::commit(&lease, 1, 4096, 3, &[(3, 9)]))
            .await?;
        let before = store.info(&k).await?;
        drop(store);
        fs::write(
            dir.path().join("db-1/v3.pages"),
            b"a commit that never published",
        )?;

        let store = DirStore::open(dir.path(), Clock::tokio())?;
        assert_eq!(store.info(&k).await?, before);
        assert!(!dir.path().join("db-1/v3.pages").exists());
        let read = store.read_pages(&k, 1, &[2, 3], NO_PIN).await?;
        assert_eq!(
            read.pages,
            [conformance::page(4096, 7), conformance::page(4096, 8)]
        );
        let retry = store.commit(&k, first).await?;
        assert!(retry.already_applied && retry.version == 1);
        let next = conformance::commit(&lease, 2, 4096, 3, &[(2, 1)]);
        assert_eq!(
            store.commit(&k, next).await?.version,
            3,
            "the lease survived too"
        );
        store.release_lease(&k, lease.lease_id, lease.epoch).await?;
        let again = store
            .acquire_lease(&k, "w2", Duration::from_secs(60))
            .await?;
        assert_eq!(again.epoch, lease.epoch + 1);
        Ok(())
    }

    /// A directory written before identity existed (no incarnation, no version tags in
    /// meta.toml) gets them at the next start, written to meta.toml: the same after every
    /// later restart, and commits naming them apply.
    #[tokio::test(start_paused = true)]
    async fn old_meta_files_get_an_identity() -> anyhow::Result<()> {
        let (dir, store) = fixture().expect("fixture");
        let k = DbKey::new("t", "old.db");
        store.open(&k, true).await?;
        let lease = store
            .acquire_lease(&k, "w", Duration::from_secs(60))
            .await?;
        for base in 0..2 {
            let c = conformance::commit(&lease, base, 4096, 1, &[(1, base as u8)]);
            store.commit(&k, c).await?;
        }
        drop(store);
        let path = dir.path().join("db-1/meta.toml");
        let text = fs::read_to_string(&path)?;
        let old: String = text
            .lines()
            .filter(|l| !l.starts_with("incarnation =") && !l.starts_with("tag ="))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(text.lines().count() - old.lines().count(), 4, "{text}");
        fs::write(&path, old)?;

        let store = DirStore::open(dir.path(), Clock::tokio())?;
        let state = store.open(&k, false).await?.0;
        assert!(
            state.incarnation != ABSENT && state.tag != NO_TAG,
            "{state:?}"
        );
        let tags = seen_tags(&store, &k).await?;
        assert_eq!(
            (tags[0], tags[2], tags[3]),
            (Some(NO_TAG), Some(state.tag), None)
        );
        assert!(
            tags[1].is_some_and(|t| t != NO_TAG && Some(t) != tags[2]),
            "{tags:?}"
        );
        assert!(fs::read_to_string(&path)?.contains("incarnation ="));

        drop(store);
        let store = DirStore::open(dir.path(), Clock::tokio())?;
        assert_eq!(store.open(&k, false).await?.0, state);
        assert_eq!(seen_tags(&store, &k).await?, tags);
        let identity = pagewire_server_core::store::Identity {
            incarnation: Some(state.incarnation),
            version: Some((2, state.tag)),
        };
        let next = Commit {
            identity,
            ..conformance::commit(&lease, 2, 4096, 1, &[(1, 9)])
        };
        assert_eq!(store.precheck(&k, next.header()).await?, None);
        let done = store.commit(&k, next).await?;
        assert_eq!((done.version, done.incarnation), (3, state.incarnation));
        Ok(())
    }

    /// The `seen_tag` of BeginReads that saw versions 0 to 3.
    async fn seen_tags(store: &DirStore, k: &DbKey) -> StoreResult<Vec<Option<VersionTag>>> {
        let mut tags = Vec::new();
        for seen_version in 0..=3 {
            let read = BeginRead {
                seen_version,
                ..conformance::newest(0)
            };
            tags.push(store.begin_read(k, read).await?.seen_tag);
        }
        Ok(tags)
    }

    /// A commit that grows the file to four billion pages costs what its pages cost: the
    /// growth is a range in meta.toml, in the change list, and in the zero-page scan.
    #[tokio::test(start_paused = true)]
    async fn growth_is_a_range() -> anyhow::Result<()> {
        let (dir, store) = fixture().expect("fixture");
        let k = DbKey::new("t", "huge.db");
        store.open(&k, true).await?;
        let lease = store
            .acquire_lease(&k, "w", Duration::from_secs(60))
            .await?;
        store
            .commit(&k, conformance::commit(&lease, 0, 4096, 3, &[(3, 3)]))
            .await?;
        let last = u32::MAX - 1;
        let huge = conformance::commit(&lease, 1, 4096, last, &[(2, 2), (last, 9)]);
        store.commit(&k, huge).await?;
        let view = store.begin_read(&k, conformance::newest(1)).await?;
        let expected = Changes {
            pages: vec![1, 2],
            from: Some(4),
        };
        assert_eq!(view.changes, Some(expected));
        let read = store.read_pages(&k, 2, &[last, 3, 4], NO_PIN).await?;
        assert_eq!(
            read.pages,
            [
                conformance::page(4096, 9),
                conformance::page(4096, 3),
                conformance::page(4096, 0)
            ]
        );
        let meta = fs::read_to_string(dir.path().join("db-1/meta.toml"))?;
        assert!(meta.len() < 4096, "{meta}");
        Ok(())
    }

    /// After the randomized run (commits, truncates, page-size changes, GC), a restarted
    /// store, which rebuilds its index from the files, reads every version the same.
    #[tokio::test(start_paused = true)]
    async fn restart_after_random_history_reads_the_same() -> anyhow::Result<()> {
        let (dir, store) = fixture().expect("fixture");
        conformance::matches_reference_model(&store).await?;
        let k = DbKey::new("model", "a.db");
        let before = store.info(&k).await?;
        let images = all_versions(&store, &k, &before).await;
        drop(store);
        let store = DirStore::open(dir.path(), Clock::tokio())?;
        assert_eq!(store.info(&k).await?, before);
        assert!(
            all_versions(&store, &k, &before).await == images,
            "same pages after restart"
        );
        Ok(())
    }

    /// Every page of every version from the oldest kept one (or the error).
    async fn all_versions(
        store: &DirStore,
        k: &DbKey,
        info: &DbInfo,
    ) -> Vec<StoreResult<PageRead>> {
        let mut images = Vec::new();
        for version in info.oldest_version..=info.state.version {
            let at = BeginRead {
                cached_version: 0,
                at: ReadAt::Version(version),
                pin: NO_PIN,
                max_changes: 0,
                seen_version: 0,
            };
            images.push(match store.begin_read(k, at).await {
                Ok(view) => {
                    let nos: Vec<u32> = (1..=view.state.page_count).collect();
                    store.read_pages(k, version, &nos, NO_PIN).await
                }
                Err(e) => Err(e),
            });
        }
        images
    }
}
