//! Branches and restore points (see migration 0004): a fork is one transaction that
//! locks the source's row `FOR KEY SHARE` (so GC, which takes `FOR UPDATE`, cannot
//! collect the version between the check and the branch row that holds it) and inserts
//! the branch's row and its two version rows; nothing is copied. Restore points are
//! rows GC keeps versions for.

use deadpool_postgres::GenericClient;
use pagewire_server_core::store::{
    DbInfo, DbKey, MAX_FORK_DEPTH, MAX_RESTORE_POINTS, ReadAt, RestorePoint, StoreError,
    StoreResult, Version, too_deep, too_many_points,
};

use crate::db::{self, Lock};
use crate::error::Pg as _;
use crate::read;
use crate::sql::{self, Client, id16_of};

pub(crate) async fn fork(
    client: &mut Client,
    source: &DbKey,
    at: ReadAt,
    new: &DbKey,
) -> StoreResult<DbInfo> {
    let tx = client.transaction().await.pg()?;
    let row = db::get(&tx, source, Lock::KeyShare).await?;
    let version = read::resolve(&tx, &row, at).await?;
    let state = read::readable(&tx, &row, version, None).await?.state;
    if state.version == Version::ZERO {
        if !db::create(&tx, new).await? {
            return Err(StoreError::AlreadyExists(new.name.clone()));
        }
    } else {
        if row.depth + 1 > MAX_FORK_DEPTH {
            return Err(too_deep(&source.name));
        }
        db::create_branch(&tx, new, &row, state).await?;
    }
    let info = db::info(&tx, new).await?;
    tx.commit().await.pg()?;
    Ok(info)
}

pub(crate) async fn add_point(
    client: &mut Client,
    key: &DbKey,
    label: &str,
    at: ReadAt,
) -> StoreResult<RestorePoint> {
    let tx = client.transaction().await.pg()?;
    // FOR NO KEY UPDATE: points of one database are added one at a time (the count
    // check holds), and GC cannot collect the version before the point holds it.
    let row = db::get(&tx, key, Lock::NoKeyUpdate).await?;
    let count = sql::query_one(
        &tx,
        "SELECT count(*) FROM pagewire.restore_points WHERE db_id = $1",
        &[&row.id],
    )
    .await?;
    if count.try_get::<_, i64>(0).pg()? >= MAX_RESTORE_POINTS as i64 {
        return Err(too_many_points(&key.name));
    }
    let version = read::resolve(&tx, &row, at).await?;
    let state = read::readable(&tx, &row, version, None).await?.state;
    let inserted = sql::query_opt(
        &tx,
        &format!(
            "INSERT INTO pagewire.restore_points (db_id, label, version, tag, created_unix_ms) \
             VALUES ($1, $2, $3, $4, {}) ON CONFLICT (db_id, label) DO NOTHING \
             RETURNING label, version, tag, created_unix_ms",
            sql::NOW_MS
        ),
        &[
            &row.id,
            &label,
            &sql::version(state.version),
            &state.tag.as_bytes().as_slice(),
        ],
    )
    .await?;
    let Some(point) = inserted else {
        return Err(StoreError::PointExists {
            db: key.name.clone(),
            label: label.to_owned(),
        });
    };
    let point = point_of(&point)?;
    tx.commit().await.pg()?;
    Ok(point)
}

pub(crate) async fn points<C: GenericClient>(c: &C, key: &DbKey) -> StoreResult<Vec<RestorePoint>> {
    let row = db::get(c, key, Lock::None).await?;
    let rows = sql::query(
        c,
        "SELECT label, version, tag, created_unix_ms FROM pagewire.restore_points \
         WHERE db_id = $1 ORDER BY version, label COLLATE \"C\"",
        &[&row.id],
    )
    .await?;
    rows.iter().map(point_of).collect()
}

pub(crate) async fn remove_point<C: GenericClient>(
    c: &C,
    key: &DbKey,
    label: &str,
) -> StoreResult<()> {
    let row = db::get(c, key, Lock::None).await?;
    let n = sql::execute(
        c,
        "DELETE FROM pagewire.restore_points WHERE db_id = $1 AND label = $2",
        &[&row.id, &label],
    )
    .await?;
    if n == 0 {
        return Err(StoreError::NoSuchPoint {
            db: key.name.clone(),
            label: label.to_owned(),
        });
    }
    Ok(())
}

fn point_of(row: &tokio_postgres::Row) -> StoreResult<RestorePoint> {
    Ok(RestorePoint {
        label: row.try_get("label").pg()?,
        version: sql::version_of(row, "version")?,
        tag: id16_of(row, "tag")?,
        created_unix_ms: row.try_get("created_unix_ms").pg()?,
    })
}
