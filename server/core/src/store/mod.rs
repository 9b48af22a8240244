//! The `PageStore` trait: versioned page storage with write leases, behind which every
//! store sits: the memory store here, PostgreSQL in crate `pagewire-store-postgres`
//! (`server/postgres`). Every store passes the same conformance suite (`conformance`,
//! behind the crate feature `conformance`, which store tests enable). Stores that keep
//! version metadata in memory share the history rules of [`history`].
//!
//! The service validates client input (see [`crate::validate`]) before calling a store;
//! a store enforces the rules that need its state, each in one atomic step: lease
//! exclusivity and epochs, commit-id deduplication, base-version checks, and the checks of
//! [`crate::validate::against_base`].

pub mod changes;
pub mod clock;
pub mod commit_check;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod faults;
pub mod history;
pub mod identity;
pub mod lease_slot;
pub mod memory;
pub mod page_writes;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use changes::{ChangeWalk, Changes, WireChanges};
pub use clock::Clock;
pub use faults::{Fault, FaultyStore};
pub use identity::Identity;
pub use memory::MemoryStore;

/// The typed values of the protocol: a lease id and a commit id (and an incarnation and a
/// version tag) are different types, so one cannot be passed where another goes; a
/// [`Version`] is not an epoch (both were `u64`), and a [`PageNo`] (from
/// [`crate::validate::page_no`]) is not a page count or size.
///
/// [`Incarnation`]: which database, among every one ever created under a name, chosen at
/// create and never reused (not after a delete, a restart of the memory store, or the
/// restore of a durable store's backup). [`VersionTag`]: which version, among every one
/// ever committed under a number, chosen when the version is committed ([`NO_TAG`] for
/// version 0, empty in every incarnation). A restored backup keeps the tags of the
/// versions it holds; versions committed after the restore get new ones, so a client
/// that saw the lost versions can tell.
pub use pagewire_proto::ids::{BadId, CommitId, Incarnation, LeaseId, PageNo, Version, VersionTag};

/// The tag of version 0.
pub const NO_TAG: VersionTag = VersionTag::ZERO;

/// A new random id (a lease id, an incarnation, a version tag: whichever is wanted).
pub fn random_id<T: From<[u8; 16]>>() -> T {
    T::from(rand::random::<[u8; 16]>())
}

/// A database, scoped by its tenant: the same name in two tenants is two databases.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DbKey {
    /// Who owns the database (from the caller's bearer token, never from a request field).
    pub tenant: String,
    /// The database name as the client gave it (opaque to stores).
    pub name: String,
}

impl DbKey {
    pub fn new(tenant: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for DbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)
    }
}

/// A database at one version. `page_size` is 0 while the database is empty (version 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DbState {
    pub version: Version,
    pub page_size: u32,
    pub page_count: u32,
    /// The database's incarnation and this version's tag: with `version`, what names
    /// these pages (a version number alone never does).
    pub incarnation: Incarnation,
    pub tag: VersionTag,
}

impl DbState {
    /// The version and its geometry, without identity (for comparisons in tests).
    pub fn geometry(&self) -> (u64, u32, u32) {
        (self.version.0, self.page_size, self.page_count)
    }
}

/// What the control plane shows about a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbInfo {
    pub name: String,
    /// The newest version.
    pub state: DbState,
    /// Bytes of page data retained over all versions.
    pub stored_bytes: u64,
    /// Oldest version still readable.
    pub oldest_version: Version,
    pub created_unix_ms: i64,
    /// Time of the newest commit (creation time while empty).
    pub updated_unix_ms: i64,
    /// Whether an unexpired write lease is held.
    pub lease_held: bool,
}

/// A granted (or renewed) write lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: LeaseId,
    /// Grows with every new grant on the database, never reused; commits carry it.
    pub epoch: u64,
    pub ttl: Duration,
    /// The newest committed state when the lease was granted or renewed.
    pub state: DbState,
}

/// Which version a read transaction starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadAt {
    /// The newest version.
    #[default]
    Newest,
    /// Exactly this version (at least 1). `OutOfRange` when it does not exist yet or is
    /// no longer retained.
    Version(Version),
    /// The newest version committed at or before this time (Unix ms). `OutOfRange` when
    /// that is before the first commit, or the version is no longer retained.
    UnixMs(i64),
}

/// How long reader pins last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinTtl {
    /// A pin lasts this long after the BeginRead that made it, or the last ReadPages at
    /// its version.
    pub ttl: Duration,
    /// ...but never longer than this after it was made: a reader cannot keep history
    /// forever (`--max-pin-age`); one that needs longer begins a new read transaction.
    pub max_age: Duration,
}

/// A BeginRead, already checked by [`crate::validate::read_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginRead {
    /// The version whose pages the client holds in cache (0: none).
    pub cached_version: Version,
    pub at: ReadAt,
    /// How long the returned version stays pinned (safe from GC).
    pub pin: PinTtl,
    /// The change list spans at most this many versions and lists at most this many
    /// pages (growth is a range and does not count); past it, `changes` is `None`.
    pub max_changes: usize,
    /// The newest version the client knows of: its tag is returned as
    /// [`ReadView::seen_tag`], so the service can tell whether the client's history is
    /// this database's (0: none).
    pub seen_version: Version,
}

/// The start of a read transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadView {
    /// The version asked for (the newest, or the as-of one), which the reader pins.
    pub state: DbState,
    /// Pages written in `(cached_version, state.version]`, or `None` when the client
    /// must drop its whole cache: no cache, unknown, too old, newer than
    /// `state.version`, a page-size change in between, or over `max_changes`.
    pub changes: Option<Changes>,
    /// When `state.version` was committed (Unix ms; 0 for version 0).
    pub committed_unix_ms: i64,
    /// The tag of [`BeginRead::seen_version`], when that version exists and its record
    /// is still kept ([`NO_TAG`] for version 0); `None` otherwise.
    pub seen_tag: Option<VersionTag>,
}

/// A commit's header, looked at before its pages arrive (see [`PageStore::precheck`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitHeader {
    pub lease_id: LeaseId,
    pub epoch: u64,
    pub base_version: Version,
    pub commit_id: CommitId,
    /// What the client holds: its incarnation and `base_version`'s tag.
    pub identity: Identity,
}

/// What one history GC pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcStats {
    /// Databases looked at.
    pub databases: u64,
    /// Versions that became unreadable.
    pub versions_collected: u64,
    /// Page writes deleted.
    pub writes_removed: u64,
    /// Bytes of page data freed.
    pub bytes_freed: u64,
}

impl GcStats {
    /// Adds another pass's (or database's) numbers to these.
    pub fn add(&mut self, other: GcStats) {
        self.databases += other.databases;
        self.versions_collected += other.versions_collected;
        self.writes_removed += other.writes_removed;
        self.bytes_freed += other.bytes_freed;
    }
}

/// Pages read at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRead {
    /// The version read, with its identity (the service checks it against the
    /// client's: the same atomic step as the read).
    pub state: DbState,
    /// The page size at that version (every page has this length).
    pub page_size: u32,
    /// One entry per requested page, in request order.
    pub pages: Vec<Bytes>,
}

/// One transaction, already checked by [`crate::validate::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub lease_id: LeaseId,
    pub epoch: u64,
    /// The version this transaction was built on; must be the current version.
    pub base_version: Version,
    /// Chosen by the client; a retry with the same id returns the first outcome.
    pub commit_id: CommitId,
    /// The incarnation and `base_version`'s tag the client holds; checked first
    /// (`Replaced`), before the commit id.
    pub identity: Identity,
    pub page_size: u32,
    /// The page count after this commit (shrinks or grows the file).
    pub page_count: u32,
    /// The pages written, each `page_size` bytes, page numbers unique and in
    /// `1..=page_count`, page 1 always present. Owned copies (not slices of received
    /// messages), so a store may keep them as they are.
    pub pages: Vec<(u32, Bytes)>,
}

impl Commit {
    /// The fields [`PageStore::precheck`] looks at.
    pub fn header(&self) -> CommitHeader {
        CommitHeader {
            lease_id: self.lease_id,
            epoch: self.epoch,
            base_version: self.base_version,
            commit_id: self.commit_id,
            identity: self.identity,
        }
    }
}

/// The result of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The version the commit created.
    pub version: Version,
    /// The commit id had already been applied: this call was a retry and changed nothing.
    pub already_applied: bool,
    /// The database's incarnation, and the version's tag (`None` when a retry's version
    /// is no longer on record).
    pub incarnation: Incarnation,
    pub tag: Option<VersionTag>,
}

/// Why a store call failed. Mapped to a gRPC status in exactly one place
/// (`impl From<StoreError> for tonic::Status` in [`crate::error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The request is malformed; the message says what.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("database '{0}' does not exist")]
    NotFound(String),
    #[error("database '{db}' has no restore point '{label}'")]
    NoSuchPoint { db: String, label: String },
    /// The call names an incarnation or a version tag the database does not have: it
    /// was deleted, created again or restored since the client learned them.
    #[error("{0}")]
    Replaced(String),
    #[error("database '{0}' already exists")]
    AlreadyExists(String),
    #[error("database '{db}' already has a restore point '{label}'")]
    PointExists { db: String, label: String },
    /// Another client holds an unexpired write lease.
    #[error("write lease is held by client '{holder}' for another {} ms", remaining.as_millis())]
    LeaseHeld { holder: String, remaining: Duration },
    /// The caller's lease lapsed, was released or was superseded (stale epoch).
    #[error("{0}")]
    LeaseLost(String),
    /// The commit's base version is not the current version.
    #[error("base version {base} is not the current version {current}")]
    VersionConflict { base: Version, current: Version },
    /// A version that does not exist (yet, or any more).
    #[error("{0}")]
    OutOfRange(String),
    /// A request over the server's limits.
    #[error("{0}")]
    TooLarge(String),
    /// The store is out of space (a full disk): nothing was changed, and nothing
    /// already committed is lost. `RESOURCE_EXHAUSTED`; a commit refused so is
    /// `SQLITE_FULL` at the client.
    #[error("the store is out of space: {0}")]
    Full(String),
    /// The store cannot do this (an older or simpler store: branches or restore points
    /// it does not keep). `UNIMPLEMENTED`, saying which store.
    #[error("{0}")]
    Unsupported(String),
    /// The store failed; not the client's fault.
    #[error("internal store error: {0}")]
    Internal(String),
    /// The store cannot be reached or did not answer (or a fault was injected): the
    /// outcome is unknown, and the caller may retry (a commit with the same commit id).
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// The variant's name in snake case (the `kind` label of the store-error metric).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::InvalidArgument(_) => "invalid_argument",
            StoreError::NotFound(_) => "not_found",
            StoreError::NoSuchPoint { .. } => "no_such_point",
            StoreError::Replaced(_) => "replaced",
            StoreError::AlreadyExists(_) => "already_exists",
            StoreError::PointExists { .. } => "point_exists",
            StoreError::LeaseHeld { .. } => "lease_held",
            StoreError::LeaseLost(_) => "lease_lost",
            StoreError::VersionConflict { .. } => "version_conflict",
            StoreError::OutOfRange(_) => "out_of_range",
            StoreError::TooLarge(_) => "too_large",
            StoreError::Full(_) => "full",
            StoreError::Unsupported(_) => "unsupported",
            StoreError::Internal(_) => "internal",
            StoreError::Unavailable(_) => "unavailable",
        }
    }

    /// The caller got something wrong (as opposed to the server failing).
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            StoreError::Internal(_) | StoreError::Unavailable(_) | StoreError::Full(_)
        )
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound(_))
    }

    /// Trying again later may succeed (the lease may be free then).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::LeaseHeld { .. } | StoreError::Internal(_) | StoreError::Unavailable(_)
        )
    }

    /// The commit can never apply as sent (lease lost or stale base version).
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            StoreError::LeaseLost(_) | StoreError::VersionConflict { .. }
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A named pin on one version of a database (`Admin.CreateRestorePoint`): it keeps the
/// version readable past the retention window, until it is deleted or the database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePoint {
    /// Unique within its database (checked by [`crate::validate::restore_point_label`]).
    pub label: String,
    pub version: Version,
    /// The version's tag: what the point names, with the database's incarnation.
    pub tag: VersionTag,
    pub created_unix_ms: i64,
}

/// Most restore points one database keeps (a tenant cannot pin history without bound
/// by creating them; the tenant's stored-bytes quota counts what they keep, too).
pub const MAX_RESTORE_POINTS: usize = 256;

/// Longest chain of branches (a fork of a fork of ...): a page read that falls
/// through to ancestors looks at most this many databases.
pub const MAX_FORK_DEPTH: usize = 16;

/// The `Unsupported` answer of a store that does not keep `what`.
pub fn unsupported(what: &str) -> StoreError {
    StoreError::Unsupported(format!("this server's page store does not support {what}"))
}

/// The refusal of a fork past [`MAX_FORK_DEPTH`].
pub fn too_deep(source: &str) -> StoreError {
    StoreError::InvalidArgument(format!(
        "'{source}' is already a branch {MAX_FORK_DEPTH} levels deep: fork a database \
         nearer the root instead"
    ))
}

/// The refusal of a restore point past [`MAX_RESTORE_POINTS`].
pub fn too_many_points(db: &str) -> StoreError {
    StoreError::TooLarge(format!(
        "database '{db}' already has {MAX_RESTORE_POINTS} restore points (the most one \
         database keeps): delete some first"
    ))
}

/// Versioned page storage with write leases. Object-safe: the service holds an
/// `Arc<dyn PageStore>`. Every method is atomic; on error nothing changed.
#[async_trait]
pub trait PageStore: Send + Sync + 'static {
    /// The newest state of a database; creates it (empty, version 0) when missing and
    /// `create`. Returns whether it was created. `NotFound` when missing and not `create`.
    async fn open(&self, key: &DbKey, create: bool) -> StoreResult<(DbState, bool)>;

    /// Creates an empty database. `AlreadyExists` when it exists.
    async fn create(&self, key: &DbKey) -> StoreResult<DbInfo>;

    /// Deletes a database with all its history and its lease. `NotFound` when missing.
    async fn delete(&self, key: &DbKey) -> StoreResult<()>;

    /// The tenant's databases, ordered by name.
    async fn list(&self, tenant: &str) -> StoreResult<Vec<DbInfo>>;

    async fn info(&self, key: &DbKey) -> StoreResult<DbInfo>;

    /// Grants write lease `lease_id` (epoch = highest epoch ever granted + 1) unless
    /// another unexpired lease is held (`LeaseHeld`). When the unexpired lease already is
    /// `lease_id`, renews it by `ttl` and returns it: an acquire retried after its answer
    /// was lost gets the lease it was granted (see [`lease_slot::LeaseSlot::grant`]).
    async fn acquire_lease_as(
        &self,
        key: &DbKey,
        client_id: &str,
        lease_id: LeaseId,
        ttl: Duration,
    ) -> StoreResult<Lease>;

    /// [`Self::acquire_lease_as`] a new random id.
    async fn acquire_lease(
        &self,
        key: &DbKey,
        client_id: &str,
        ttl: Duration,
    ) -> StoreResult<Lease> {
        self.acquire_lease_as(key, client_id, random_id(), ttl)
            .await
    }

    /// Extends the current lease by `ttl` from now; `LeaseLost` unless `lease_id` and
    /// `epoch` name the current, unexpired lease.
    async fn renew_lease(
        &self,
        key: &DbKey,
        lease_id: LeaseId,
        epoch: u64,
        ttl: Duration,
    ) -> StoreResult<Lease>;

    /// Releases the lease if it is the current one; releasing a lease no longer held (or
    /// of a database that no longer exists) succeeds and changes nothing.
    async fn release_lease(&self, key: &DbKey, lease_id: LeaseId, epoch: u64) -> StoreResult<()>;

    /// Starts a read transaction at the newest version or an as-of one (see [`ReadAt`],
    /// [`ReadView`]) and pins that version (see [`PinTtl`]).
    async fn begin_read(&self, key: &DbKey, read: BeginRead) -> StoreResult<ReadView>;

    /// Pages at `version`, in request order; never-written pages read as zeros. A pin a
    /// BeginRead put on `version` is extended to `pin.ttl` from now (a reader's pin lasts
    /// while it keeps reading, up to `pin.max_age` after it was made); a read creates no
    /// pin.
    /// `OutOfRange` for a version that does not exist (yet, or any more);
    /// `InvalidArgument` for a page number outside `1..=page_count` at that version.
    async fn read_pages(
        &self,
        key: &DbKey,
        version: Version,
        page_nos: &[u32],
        pin: PinTtl,
    ) -> StoreResult<PageRead>;

    /// An early look at a commit before its pages arrive, so one that cannot apply costs
    /// no buffering: `Replaced`, `Some` outcome when `commit_id` was already applied,
    /// `LeaseLost` or `VersionConflict`, as [`PageStore::commit`] would answer now. `commit` stays
    /// authoritative (the lease may lapse meanwhile). A store may skip the look
    /// (the default): the commit is then refused only once received.
    async fn precheck(
        &self,
        key: &DbKey,
        header: CommitHeader,
    ) -> StoreResult<Option<CommitOutcome>> {
        let _ = (key, header);
        Ok(None)
    }

    /// Applies a commit atomically. In order: the identity's incarnation must be the
    /// database's (`Replaced`); a known `commit_id` returns its version
    /// (`already_applied`); the lease must be the current unexpired one with that epoch
    /// (`LeaseLost`); `base_version` must be current (`VersionConflict`) with the
    /// identity's base tag (`Replaced`); [`crate::validate::against_base`] must pass. A successful
    /// commit also renews the lease.
    async fn commit(&self, key: &DbKey, commit: Commit) -> StoreResult<CommitOutcome>;

    /// History GC over every database. Per database it keeps the newest version, every
    /// version committed at or after `now_unix_ms - retention`, and every version with an
    /// unexpired pin; the other versions become unreadable (`OutOfRange`). A page write
    /// is deleted when no kept version can read it (it is not the newest write at or
    /// before any kept version whose page count covers the page). Version metadata below
    /// the oldest kept version goes too (change lists from older cached versions then
    /// answer `cache_invalid`); commit-id records are kept.
    async fn gc(&self, now_unix_ms: i64, retention: Duration) -> StoreResult<GcStats>;

    /// [`PageStore::gc`] with a window per tenant ([`Retention::of`]: shorter for a
    /// tenant whose history-retention quota caps it). The default runs `gc` with the
    /// default window, so a store that does not override it keeps every tenant's
    /// history that long (the caps are not applied there).
    async fn gc_with(&self, now_unix_ms: i64, retention: &Retention) -> StoreResult<GcStats> {
        self.gc(now_unix_ms, retention.default).await
    }

    /// A branch: creates `new` (in the same tenant as `source`), a new incarnation whose
    /// version 1 is `source` at `at`, without copying pages: reads of a page the branch
    /// never wrote fall through to `source` at that version, which is held (kept from GC)
    /// while the branch exists, even after `source` is deleted (its name is then free;
    /// its pages stay until no branch reads them). Later commits to either side never
    /// show on the other. A fork of an empty source is an empty database.
    /// `AlreadyExists` for `new`; `OutOfRange` for a version not readable; refused past
    /// [`MAX_FORK_DEPTH`]. The default: [`unsupported`].
    async fn fork(&self, source: &DbKey, at: ReadAt, new: &DbKey) -> StoreResult<DbInfo> {
        let _ = (source, at, new);
        Err(unsupported("branches (ForkDatabase)"))
    }

    /// Creates a restore point `label` on the readable version `at` resolves to.
    /// `AlreadyExists` for a label the database has; refused past
    /// [`MAX_RESTORE_POINTS`]. The default: [`unsupported`].
    async fn add_restore_point(
        &self,
        key: &DbKey,
        label: &str,
        at: ReadAt,
    ) -> StoreResult<RestorePoint> {
        let _ = (key, label, at);
        Err(unsupported("restore points"))
    }

    /// The database's restore points, by version then label.
    async fn restore_points(&self, key: &DbKey) -> StoreResult<Vec<RestorePoint>> {
        let _ = key;
        Err(unsupported("restore points"))
    }

    /// Deletes a restore point (GC may then collect its version). `NotFound` when the
    /// database has no point `label`.
    async fn remove_restore_point(&self, key: &DbKey, label: &str) -> StoreResult<()> {
        let _ = (key, label);
        Err(unsupported("restore points"))
    }

    /// Bytes of page data a tenant's deleted databases still hold because branches read
    /// them (not in [`PageStore::list`]; counted against the tenant's stored bytes).
    async fn detached_bytes(&self, tenant: &str) -> StoreResult<u64> {
        let _ = tenant;
        Ok(0)
    }
}

/// How long history GC keeps each tenant's versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// For every tenant not in `capped`.
    pub default: Duration,
    /// Tenants with a window of their own (never longer than the server's).
    pub capped: HashMap<String, Duration>,
}

impl Retention {
    /// The same window for every tenant.
    pub fn uniform(window: Duration) -> Self {
        Retention {
            default: window,
            capped: HashMap::new(),
        }
    }

    /// `tenant`'s window.
    pub fn of(&self, tenant: &str) -> Duration {
        self.capped.get(tenant).copied().unwrap_or(self.default)
    }
}
