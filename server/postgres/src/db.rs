//! Database rows: find (optionally locking the row), create (with its empty version 0),
//! delete (with all its history), and the control plane's info and list.
//!
//! Row locks order the writers of one database: a commit, a lease grant or renewal takes
//! `FOR NO KEY UPDATE`; GC takes `FOR UPDATE`; BeginRead takes `FOR KEY SHARE`, so a
//! pin and GC's choice of kept versions never race, while reads never wait for commits.

use deadpool_postgres::GenericClient;
use pagewire_server_core::store::{
    DbInfo, DbKey, DbState, Incarnation, NO_TAG, StoreError, StoreResult, Version, VersionTag,
    random_id,
};
use tokio_postgres::Row;

use crate::error::Pg as _;
use crate::sql::{self, NOW_MS, id16_of, u32_of, u64_of};

/// How `find` locks the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    None,
    KeyShare,
    NoKeyUpdate,
    Update,
}

impl Lock {
    fn clause(self) -> &'static str {
        match self {
            Lock::None => "",
            Lock::KeyShare => " FOR KEY SHARE",
            Lock::NoKeyUpdate => " FOR NO KEY UPDATE",
            Lock::Update => " FOR UPDATE",
        }
    }
}

/// A database row, with the database clock when it was read.
#[derive(Debug, Clone)]
pub(crate) struct DbRow {
    pub id: i64,
    /// The newest state, with the incarnation and the newest version's tag (both on the
    /// row: see migration 0003).
    pub state: DbState,
    pub updated_unix_ms: i64,
    pub first_commit_unix_ms: Option<i64>,
    pub max_epoch: u64,
    pub gc_retention_ms: Option<i64>,
    /// A branch's source and the version it reads there (see migration 0004).
    pub ancestor: Option<(i64, Version)>,
    /// A branch's pages `1..=inherited` read through to `ancestor` while unwritten.
    pub inherited: u32,
    /// Branches between this database and its root (0: not a branch).
    pub depth: usize,
    /// `clock_timestamp()` in Unix ms when the row was read.
    pub now_unix_ms: i64,
}

const COLUMNS: &str = "id, version, page_size, page_count, incarnation, tag, updated_unix_ms, \
    first_commit_unix_ms, max_epoch, gc_retention_ms, ancestor_id, ancestor_version, \
    inherited_pages, depth";

/// The newest state in a row with `version`, `page_size`, `page_count`, `incarnation` and
/// `tag` (the newest version's, kept on the databases row by every commit).
pub(crate) fn state_of(row: &Row) -> StoreResult<DbState> {
    Ok(DbState {
        version: sql::version_of(row, "version")?,
        page_size: u32_of(row, "page_size")?,
        page_count: u32_of(row, "page_count")?,
        incarnation: id16_of(row, "incarnation")?,
        tag: id16_of(row, "tag")?,
    })
}

/// A row's `ancestor_id` and `ancestor_version`, both or neither.
fn ancestor_of(row: &Row) -> StoreResult<Option<(i64, Version)>> {
    let id: Option<i64> = row.try_get("ancestor_id").pg()?;
    let version: Option<i64> = row.try_get("ancestor_version").pg()?;
    match (id, version) {
        (Some(id), Some(v)) => Ok(Some((id, Version(u64::try_from(v).unwrap_or(0))))),
        (None, None) => Ok(None),
        _ => Err(StoreError::Internal(format!(
            "database row {id:?} has half an ancestor (version {version:?})"
        ))),
    }
}

impl DbRow {
    fn from_row(row: &Row) -> StoreResult<Self> {
        Ok(Self {
            id: row.try_get("id").pg()?,
            state: state_of(row)?,
            updated_unix_ms: row.try_get("updated_unix_ms").pg()?,
            first_commit_unix_ms: row.try_get("first_commit_unix_ms").pg()?,
            max_epoch: u64_of(row, "max_epoch")?,
            gc_retention_ms: row.try_get("gc_retention_ms").pg()?,
            ancestor: ancestor_of(row)?,
            inherited: u32_of(row, "inherited_pages")?,
            depth: usize::try_from(row.try_get::<_, i32>("depth").pg()?).unwrap_or(0),
            now_unix_ms: row.try_get("now_unix_ms").pg()?,
        })
    }
}

/// The row of `key`, locked as asked (within the caller's transaction).
pub(crate) async fn find<C: GenericClient>(
    c: &C,
    key: &DbKey,
    lock: Lock,
) -> StoreResult<Option<DbRow>> {
    let sql = format!(
        "SELECT {COLUMNS}, {NOW_MS} AS now_unix_ms FROM pagewire.databases \
         WHERE tenant = $1 AND name = $2{}",
        lock.clause()
    );
    let row = sql::query_opt(c, &sql, &[&key.tenant, &key.name]).await?;
    row.as_ref().map(DbRow::from_row).transpose()
}

/// Like [`find`], `NotFound` when missing.
pub(crate) async fn get<C: GenericClient>(c: &C, key: &DbKey, lock: Lock) -> StoreResult<DbRow> {
    find(c, key, lock)
        .await?
        .ok_or_else(|| StoreError::NotFound(key.name.clone()))
}

/// The row of database `id`, locked as asked; `None` when it was deleted.
pub(crate) async fn by_id<C: GenericClient>(
    c: &C,
    id: i64,
    lock: Lock,
) -> StoreResult<Option<DbRow>> {
    let sql = format!(
        "SELECT {COLUMNS}, {NOW_MS} AS now_unix_ms FROM pagewire.databases WHERE id = $1{}",
        lock.clause()
    );
    let row = sql::query_opt(c, &sql, &[&id]).await?;
    row.as_ref().map(DbRow::from_row).transpose()
}

/// Creates `key` empty (with its version 0, tag [`NO_TAG`]) and a new random incarnation
/// unless it exists; whether it was created. Call within a transaction.
pub(crate) async fn create<C: GenericClient>(c: &C, key: &DbKey) -> StoreResult<bool> {
    let sql = format!(
        "INSERT INTO pagewire.databases \
         (tenant, name, created_unix_ms, updated_unix_ms, incarnation, tag) \
         SELECT $1, $2, now_ms, now_ms, $3, $4 FROM (SELECT {NOW_MS} AS now_ms) AS t \
         ON CONFLICT (tenant, name) DO NOTHING RETURNING id, created_unix_ms"
    );
    let (incarnation, tag): (Incarnation, _) = (random_id(), NO_TAG);
    let (incarnation, tag) = (incarnation.as_bytes().as_slice(), tag.as_bytes().as_slice());
    let params: sql::Params = &[&key.tenant, &key.name, &incarnation, &tag];
    let Some(row) = sql::query_opt(c, &sql, params).await? else {
        return Ok(false);
    };
    let (id, created): (i64, i64) = (row.try_get(0).pg()?, row.try_get(1).pg()?);
    sql::execute(
        c,
        "INSERT INTO pagewire.versions \
         (db_id, version, committed_unix_ms, page_size, page_count, changed_pages, tag) \
         VALUES ($1, 0, $2, 0, 0, '{}', $3)",
        &[&id, &created, &tag],
    )
    .await?;
    Ok(true)
}

/// Deletes `key` and everything of it; `NotFound` when missing. A database branches
/// still read is detached instead (name NULL, lease, pins and restore points gone, pages
/// kept); deleting the last branch of a detached source deletes it too, and so on
/// towards the root. Call within a transaction.
pub(crate) async fn delete<C: GenericClient>(c: &C, key: &DbKey) -> StoreResult<()> {
    let row = get(c, key, Lock::Update).await?;
    if has_branches(c, row.id).await? {
        sql::execute(
            c,
            "UPDATE pagewire.databases SET name = NULL WHERE id = $1",
            &[&row.id],
        )
        .await?;
        return delete_rows(
            c,
            row.id,
            &["leases", "commit_ids", "pins", "restore_points"],
        )
        .await;
    }
    let mut next = Some(row);
    while let Some(row) = next.take() {
        delete_rows(c, row.id, &ALL_TABLES).await?;
        sql::execute(
            c,
            "DELETE FROM pagewire.databases WHERE id = $1",
            &[&row.id],
        )
        .await?;
        let Some((ancestor, _)) = row.ancestor else {
            break;
        };
        let source = by_id(c, ancestor, Lock::Update).await?;
        next = match source {
            Some(s) if is_detached(c, s.id).await? && !has_branches(c, s.id).await? => Some(s),
            _ => None,
        };
    }
    Ok(())
}

/// Every table with rows per database.
const ALL_TABLES: [&str; 6] = [
    "leases",
    "versions",
    "pages",
    "commit_ids",
    "pins",
    "restore_points",
];

async fn delete_rows<C: GenericClient>(c: &C, id: i64, tables: &[&str]) -> StoreResult<()> {
    for table in tables {
        let sql = format!("DELETE FROM pagewire.{table} WHERE db_id = $1");
        sql::execute(c, &sql, &[&id]).await?;
    }
    Ok(())
}

async fn has_branches<C: GenericClient>(c: &C, id: i64) -> StoreResult<bool> {
    let row = sql::query_one(
        c,
        "SELECT EXISTS (SELECT 1 FROM pagewire.databases WHERE ancestor_id = $1)",
        &[&id],
    )
    .await?;
    row.try_get(0).pg()
}

async fn is_detached<C: GenericClient>(c: &C, id: i64) -> StoreResult<bool> {
    let row = sql::query_one(
        c,
        "SELECT name IS NULL FROM pagewire.databases WHERE id = $1",
        &[&id],
    )
    .await?;
    row.try_get(0).pg()
}

/// Creates `new` as a branch of `source` (its row, already locked) at the readable
/// `at` (with at.version >= 1): version 0 empty, version 1 the source's state there,
/// every page inherited. `AlreadyExists` when `new` exists. Call within a transaction.
pub(crate) async fn create_branch<C: GenericClient>(
    c: &C,
    new: &DbKey,
    source: &DbRow,
    at: DbState,
) -> StoreResult<()> {
    let sql = format!(
        "INSERT INTO pagewire.databases \
         (tenant, name, created_unix_ms, updated_unix_ms, first_commit_unix_ms, incarnation, \
          tag, version, page_size, page_count, ancestor_id, ancestor_version, inherited_pages, \
          depth) \
         SELECT $1, $2, now_ms, now_ms, now_ms, $3, $4, 1, $5, $6, $7, $8, $6, $9 \
         FROM (SELECT {NOW_MS} AS now_ms) AS t \
         ON CONFLICT (tenant, name) DO NOTHING RETURNING id, created_unix_ms"
    );
    let incarnation: Incarnation = random_id();
    let tag: VersionTag = random_id();
    let (page_size, page_count) = (i64::from(at.page_size), i64::from(at.page_count));
    let depth = i32::try_from(source.depth + 1).unwrap_or(i32::MAX);
    let (incarnation, tag) = (incarnation.as_bytes().as_slice(), tag.as_bytes().as_slice());
    let params: sql::Params = &[
        &new.tenant,
        &new.name,
        &incarnation,
        &tag,
        &page_size,
        &page_count,
        &source.id,
        &sql::version(at.version),
        &depth,
    ];
    let Some(row) = sql::query_opt(c, &sql, params).await? else {
        return Err(StoreError::AlreadyExists(new.name.clone()));
    };
    let (id, created): (i64, i64) = (row.try_get(0).pg()?, row.try_get(1).pg()?);
    let empty = NO_TAG;
    let empty = empty.as_bytes().as_slice();
    sql::execute(
        c,
        "INSERT INTO pagewire.versions \
         (db_id, version, committed_unix_ms, page_size, page_count, changed_pages, grown_from, tag) \
         VALUES ($1, 0, $2, 0, 0, '{}', NULL, $3), ($1, 1, $2, $4, $5, '{}', 1, $6)",
        &[&id, &created, &empty, &page_size, &page_count, &tag],
    )
    .await?;
    Ok(())
}

/// Bytes the tenant's detached databases still hold for their branches.
pub(crate) async fn detached_bytes<C: GenericClient>(c: &C, tenant: &str) -> StoreResult<u64> {
    let row = sql::query_one(
        c,
        "SELECT coalesce(sum(stored_bytes), 0)::bigint AS bytes FROM pagewire.databases \
         WHERE tenant = $1 AND name IS NULL",
        &[&tenant],
    )
    .await?;
    u64_of(&row, "bytes")
}

const INFO: &str = "SELECT d.name, d.version, d.page_size, d.page_count, d.incarnation, d.tag, \
    d.stored_bytes, \
    d.created_unix_ms, d.updated_unix_ms, \
    (SELECT min(v.version) FROM pagewire.versions v WHERE v.db_id = d.id) AS oldest_version, \
    EXISTS (SELECT 1 FROM pagewire.leases l \
            WHERE l.db_id = d.id AND l.expires_at > clock_timestamp()) AS lease_held \
    FROM pagewire.databases d";

fn info_of(row: &Row) -> StoreResult<DbInfo> {
    let oldest: Option<i64> = row.try_get("oldest_version").pg()?;
    Ok(DbInfo {
        name: row.try_get("name").pg()?,
        state: state_of(row)?,
        stored_bytes: u64_of(row, "stored_bytes")?,
        oldest_version: Version(oldest.and_then(|v| u64::try_from(v).ok()).unwrap_or(0)),
        created_unix_ms: row.try_get("created_unix_ms").pg()?,
        updated_unix_ms: row.try_get("updated_unix_ms").pg()?,
        lease_held: row.try_get("lease_held").pg()?,
    })
}

pub(crate) async fn info<C: GenericClient>(c: &C, key: &DbKey) -> StoreResult<DbInfo> {
    let sql = format!("{INFO} WHERE d.tenant = $1 AND d.name = $2");
    let row = sql::query_opt(c, &sql, &[&key.tenant, &key.name]).await?;
    info_of(&row.ok_or_else(|| StoreError::NotFound(key.name.clone()))?)
}

/// The tenant's databases, ordered by name bytewise (as Rust orders strings).
pub(crate) async fn list<C: GenericClient>(c: &C, tenant: &str) -> StoreResult<Vec<DbInfo>> {
    let sql =
        format!("{INFO} WHERE d.tenant = $1 AND d.name IS NOT NULL ORDER BY d.name COLLATE \"C\"");
    let rows = sql::query(c, &sql, &[&tenant]).await?;
    rows.iter().map(info_of).collect()
}
