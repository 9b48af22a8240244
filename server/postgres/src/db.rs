//! Database rows: find (optionally locking the row), create (with its empty version 0),
//! delete (with all its history), and the control plane's info and list.
//!
//! Row locks order the writers of one database: a commit, a lease grant or renewal takes
//! `FOR NO KEY UPDATE`; GC takes `FOR UPDATE`; BeginRead takes `FOR KEY SHARE`, so a
//! pin and GC's choice of kept versions never race, while reads never wait for commits.

use deadpool_postgres::GenericClient;
use pagewire_server_core::store::{
    DbInfo, DbKey, DbState, Incarnation, NO_TAG, StoreError, StoreResult, Version, random_id,
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
    /// `clock_timestamp()` in Unix ms when the row was read.
    pub now_unix_ms: i64,
}

const COLUMNS: &str = "id, version, page_size, page_count, incarnation, tag, updated_unix_ms, \
    first_commit_unix_ms, max_epoch, gc_retention_ms";

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

impl DbRow {
    fn from_row(row: &Row) -> StoreResult<Self> {
        Ok(Self {
            id: row.try_get("id").pg()?,
            state: state_of(row)?,
            updated_unix_ms: row.try_get("updated_unix_ms").pg()?,
            first_commit_unix_ms: row.try_get("first_commit_unix_ms").pg()?,
            max_epoch: u64_of(row, "max_epoch")?,
            gc_retention_ms: row.try_get("gc_retention_ms").pg()?,
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

/// Deletes `key` and everything of it; `NotFound` when missing. Call within a transaction.
pub(crate) async fn delete<C: GenericClient>(c: &C, key: &DbKey) -> StoreResult<()> {
    let row = sql::query_opt(
        c,
        "DELETE FROM pagewire.databases WHERE tenant = $1 AND name = $2 RETURNING id",
        &[&key.tenant, &key.name],
    )
    .await?;
    let id: i64 = row
        .ok_or_else(|| StoreError::NotFound(key.name.clone()))?
        .try_get(0)
        .pg()?;
    for table in ["leases", "versions", "pages", "commit_ids", "pins"] {
        let sql = format!("DELETE FROM pagewire.{table} WHERE db_id = $1");
        sql::execute(c, &sql, &[&id]).await?;
    }
    Ok(())
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
    let sql = format!("{INFO} WHERE d.tenant = $1 ORDER BY d.name COLLATE \"C\"");
    let rows = sql::query(c, &sql, &[&tenant]).await?;
    rows.iter().map(info_of).collect()
}
