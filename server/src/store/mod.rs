//! The `PageStore` trait: versioned page storage with write leases, behind which every
//! store (memory today; PostgreSQL and FoundationDB later) sits.
//!
//! The service validates client input (see [`crate::validate`]) before calling a store;
//! a store enforces the rules that need its state, each in one atomic step: lease
//! exclusivity and epochs, commit-id deduplication, base-version checks, and the checks of
//! [`crate::validate::against_base`].

pub mod conformance;
pub mod memory;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use memory::MemoryStore;

/// A write lease or commit identifier: 16 random bytes.
pub type Id16 = [u8; 16];

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
    pub version: u64,
    pub page_size: u32,
    pub page_count: u32,
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
    pub oldest_version: u64,
    pub created_unix_ms: i64,
    /// Time of the newest commit (creation time while empty).
    pub updated_unix_ms: i64,
    /// Whether an unexpired write lease is held.
    pub lease_held: bool,
}

/// A granted (or renewed) write lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: Id16,
    /// Grows with every new grant on the database, never reused; commits carry it.
    pub epoch: u64,
    pub ttl: Duration,
    /// The newest committed state when the lease was granted or renewed.
    pub state: DbState,
}

/// The start of a read transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadView {
    /// The newest version, which the reader pins.
    pub state: DbState,
    /// Pages written in `(cached_version, state.version]`, ascending, no duplicates.
    /// Empty when `cache_invalid`.
    pub changed_pages: Vec<u32>,
    /// The change list is unavailable (cached version 0, unknown, too old, or the page
    /// size changed since): the client must drop its whole cache.
    pub cache_invalid: bool,
}

/// Pages read at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRead {
    /// The page size at that version (every page has this length).
    pub page_size: u32,
    /// One entry per requested page, in request order.
    pub pages: Vec<Bytes>,
}

/// One transaction, already checked by [`crate::validate::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub lease_id: Id16,
    pub epoch: u64,
    /// The version this transaction was built on; must be the current version.
    pub base_version: u64,
    /// Chosen by the client; a retry with the same id returns the first outcome.
    pub commit_id: Id16,
    pub page_size: u32,
    /// The page count after this commit (shrinks or grows the file).
    pub page_count: u32,
    /// The pages written, each `page_size` bytes, page numbers unique and in
    /// `1..=page_count`, page 1 always present.
    pub pages: Vec<(u32, Bytes)>,
}

/// The result of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The version the commit created.
    pub version: u64,
    /// The commit id had already been applied: this call was a retry and changed nothing.
    pub already_applied: bool,
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
    #[error("database '{0}' already exists")]
    AlreadyExists(String),
    /// Another client holds an unexpired write lease.
    #[error("write lease is held by client '{holder}' for another {} ms", remaining.as_millis())]
    LeaseHeld { holder: String, remaining: Duration },
    /// The caller's lease lapsed, was released or was superseded (stale epoch).
    #[error("{0}")]
    LeaseLost(String),
    /// The commit's base version is not the current version.
    #[error("base version {base} is not the current version {current}")]
    VersionConflict { base: u64, current: u64 },
    /// A version that does not exist (yet, or any more).
    #[error("{0}")]
    OutOfRange(String),
    /// A request over the server's limits.
    #[error("{0}")]
    TooLarge(String),
    /// The store failed; not the client's fault.
    #[error("internal store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// The caller got something wrong (as opposed to the server failing).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, StoreError::Internal(_))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound(_))
    }

    /// Trying again later may succeed (the lease may be free then).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::LeaseHeld { .. } | StoreError::Internal(_))
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

    /// Grants a new write lease (epoch = highest epoch ever granted + 1) unless another
    /// unexpired lease is held (`LeaseHeld`).
    async fn acquire_lease(
        &self,
        key: &DbKey,
        client_id: &str,
        ttl: Duration,
    ) -> StoreResult<Lease>;

    /// Extends the current lease by `ttl` from now; `LeaseLost` unless `lease_id` and
    /// `epoch` name the current, unexpired lease.
    async fn renew_lease(
        &self,
        key: &DbKey,
        lease_id: Id16,
        epoch: u64,
        ttl: Duration,
    ) -> StoreResult<Lease>;

    /// Releases the lease if it is the current one; releasing a lease no longer held (or
    /// of a database that no longer exists) succeeds and changes nothing.
    async fn release_lease(&self, key: &DbKey, lease_id: Id16, epoch: u64) -> StoreResult<()>;

    /// Starts a read transaction at the newest version (see [`ReadView`]).
    async fn begin_read(&self, key: &DbKey, cached_version: u64) -> StoreResult<ReadView>;

    /// Pages at `version`, in request order; never-written pages read as zeros.
    /// `OutOfRange` for a version that does not exist; `InvalidArgument` for a page
    /// number outside `1..=page_count` at that version.
    async fn read_pages(
        &self,
        key: &DbKey,
        version: u64,
        page_nos: &[u32],
    ) -> StoreResult<PageRead>;

    /// Applies a commit atomically. In order: a known `commit_id` returns its version
    /// (`already_applied`) before any other check; the lease must be the current unexpired
    /// one with that epoch (`LeaseLost`); `base_version` must be current
    /// (`VersionConflict`); [`crate::validate::against_base`] must pass. A successful
    /// commit also renews the lease.
    async fn commit(&self, key: &DbKey, commit: Commit) -> StoreResult<CommitOutcome>;
}
