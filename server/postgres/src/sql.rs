//! Small helpers every module uses: the pooled client type, prepared (cached) queries,
//! and conversions between the store's unsigned numbers and PostgreSQL's bigint.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::{Pg as _, corrupt};
use pagewire_server_core::store::{StoreError, StoreResult, Version};

pub(crate) type Client = deadpool_postgres::Object;
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// The database's clock in Unix ms (`clock_timestamp()`: the time of the statement, not of
/// the transaction's start).
pub(crate) const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// Rows of a cached prepared statement.
pub(crate) async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> StoreResult<Vec<Row>> {
    let statement = c.prepare_cached(sql).await.pg()?;
    c.query(&statement, params).await.pg()
}

/// At most one row of a cached prepared statement.
pub(crate) async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> StoreResult<Option<Row>> {
    let statement = c.prepare_cached(sql).await.pg()?;
    c.query_opt(&statement, params).await.pg()
}

/// Exactly one row of a cached prepared statement.
pub(crate) async fn query_one<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> StoreResult<Row> {
    let statement = c.prepare_cached(sql).await.pg()?;
    c.query_one(&statement, params).await.pg()
}

/// Rows changed by a cached prepared statement.
pub(crate) async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> StoreResult<u64> {
    let statement = c.prepare_cached(sql).await.pg()?;
    c.execute(&statement, params).await.pg()
}

/// A u64 from a client (version, epoch) as bigint; values past `i64::MAX` (which the store
/// never holds) become `i64::MAX`, so they match nothing.
pub(crate) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A version as bigint (see [`int`]).
pub(crate) fn version(version: Version) -> i64 {
    int(version.0)
}

/// A stored version (a bigint that must fit a u64).
pub(crate) fn version_of(row: &Row, column: &str) -> StoreResult<Version> {
    u64_of(row, column).map(Version)
}

/// A stored bigint that must fit a u64.
pub(crate) fn u64_of(row: &Row, column: &str) -> StoreResult<u64> {
    let value: i64 = row.try_get(column).pg()?;
    u64::try_from(value).map_err(|_| corrupt(column, value))
}

/// A stored bigint that must fit a u32.
pub(crate) fn u32_of(row: &Row, column: &str) -> StoreResult<u32> {
    let value: i64 = row.try_get(column).pg()?;
    u32::try_from(value).map_err(|_| corrupt(column, value))
}

/// A stored 16-byte id, as its type (incarnation, version tag, ...): the columns are
/// plain `bytea`.
pub(crate) fn id16_of<T: From<[u8; 16]>>(row: &Row, column: &str) -> StoreResult<T> {
    opt_id16_of(row, column)?
        .ok_or_else(|| StoreError::Internal(format!("corrupt store: {column} is NULL")))
}

/// A stored 16-byte id that may be NULL (the column of an outer join).
pub(crate) fn opt_id16_of<T: From<[u8; 16]>>(row: &Row, column: &str) -> StoreResult<Option<T>> {
    let bytes: Option<&[u8]> = row.try_get(column).pg()?;
    bytes
        .map(|b| {
            <[u8; 16]>::try_from(b).map(T::from).map_err(|_| {
                StoreError::Internal(format!("corrupt store: {column} is {} bytes", b.len()))
            })
        })
        .transpose()
}

/// A duration in whole ms, as bigint.
pub(crate) fn ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
