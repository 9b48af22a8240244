//! History GC, by the memory store's rule: per database, keep the newest version, every
//! version committed at or after `now - retention` and every version with an unexpired
//! pin (database clock); the others become unreadable; a page write is deleted when no
//! kept version reads it (it is not the newest write at or before a kept version whose
//! page count covers the page), and so is a zero marker with nothing older; version rows
//! below the oldest kept one go. Commit ids older than the newest 1024 versions go too.
//!
//! Only databases with more than one readable version can have anything to collect.
//! Each runs in its own transaction holding the database row `FOR UPDATE`, so it is
//! atomic against commits and against BeginRead pinning a version.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use pagewire_server_core::store::{GcStats, Retention, StoreResult};

use crate::db::{self, DbRow, Lock};
use crate::error::Pg as _;
use crate::sql::{self, Client, ms};

/// Commit ids kept per database, counted in versions back from the newest.
const COMMIT_IDS_KEPT: i64 = 1024;

pub(crate) async fn gc(
    client: &mut Client,
    now_unix_ms: i64,
    retention: &Retention,
) -> StoreResult<GcStats> {
    forget_expired_pins(client).await?;
    let rows = sql::query(
        &*client,
        "SELECT v.db_id, d.tenant FROM pagewire.versions v \
         JOIN pagewire.databases d ON d.id = v.db_id \
         WHERE v.retained GROUP BY v.db_id, d.tenant HAVING count(*) > 1",
        &[],
    )
    .await?;
    let mut stats = GcStats::default();
    for r in rows {
        let id: i64 = r.try_get(0).pg()?;
        let tenant: String = r.try_get(1).pg()?;
        let window = retention.of(&tenant);
        let cutoff = now_unix_ms.saturating_sub(ms(window));
        stats.add(gc_one(client, id, cutoff, window).await?);
    }
    Ok(stats)
}

async fn forget_expired_pins(client: &mut Client) -> StoreResult<()> {
    let tx = client.transaction().await.pg()?;
    tx.batch_execute(
        "SET LOCAL synchronous_commit = off; \
         DELETE FROM pagewire.pins WHERE expires_at <= clock_timestamp()",
    )
    .await
    .pg()?;
    tx.commit().await.pg()
}

/// One database's pass, in one transaction.
async fn gc_one(
    client: &mut Client,
    id: i64,
    cutoff: i64,
    retention: Duration,
) -> StoreResult<GcStats> {
    let tx = client.transaction().await.pg()?;
    let Some(row) = db::by_id(&tx, id, Lock::Update).await? else {
        return Ok(GcStats::default()); // deleted meanwhile
    };
    let mut stats = GcStats {
        databases: 1,
        ..GcStats::default()
    };
    let (kept, counts) = kept(&tx, &row, cutoff).await?;
    let readable = readable_count(&tx, id).await?;
    if readable <= kept.len() as i64 {
        return Ok(stats);
    }
    let (writes, bytes) = trim_pages(&tx, id, &kept, &counts).await?;
    stats.writes_removed = writes + drop_leading_holes(&tx, &row).await?;
    stats.bytes_freed = bytes;
    stats.versions_collected = collect_versions(&tx, &row, &kept, retention, bytes).await?;
    tx.commit().await.pg()?;
    Ok(stats)
}

/// The kept versions, ascending, and their page counts.
async fn kept<C: GenericClient>(
    c: &C,
    row: &DbRow,
    cutoff: i64,
) -> StoreResult<(Vec<i64>, Vec<i64>)> {
    let rows = sql::query(
        c,
        "SELECT version, page_count FROM pagewire.versions v \
         WHERE db_id = $1 AND retained AND (version = $2 OR committed_unix_ms >= $3 \
           OR EXISTS (SELECT 1 FROM pagewire.pins p WHERE p.db_id = v.db_id \
                      AND p.version = v.version AND p.expires_at > clock_timestamp()) \
           OR EXISTS (SELECT 1 FROM pagewire.restore_points r WHERE r.db_id = v.db_id \
                      AND r.version = v.version) \
           OR EXISTS (SELECT 1 FROM pagewire.databases b WHERE b.ancestor_id = v.db_id \
                      AND b.ancestor_version = v.version)) \
         ORDER BY version",
        &[&row.id, &sql::version(row.state.version), &cutoff],
    )
    .await?;
    let versions = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>();
    let counts = rows.iter().map(|r| r.try_get(1)).collect::<Result<_, _>>();
    Ok((versions.pg()?, counts.pg()?))
}

async fn readable_count<C: GenericClient>(c: &C, id: i64) -> StoreResult<i64> {
    let row = sql::query_one(
        c,
        "SELECT count(*) FROM pagewire.versions WHERE db_id = $1 AND retained",
        &[&id],
    )
    .await?;
    row.try_get(0).pg()
}

/// Deletes every write no kept version reads; returns (writes, bytes) deleted.
async fn trim_pages<C: GenericClient>(
    c: &C,
    id: i64,
    kept: &[i64],
    counts: &[i64],
) -> StoreResult<(u64, u64)> {
    let row = sql::query_one(
        c,
        "WITH kept AS (SELECT * FROM unnest($2::bigint[], $3::bigint[]) AS k(version, page_count)), \
         w AS (SELECT page_no, version, \
                 lead(version) OVER (PARTITION BY page_no ORDER BY version) AS next \
               FROM pagewire.pages WHERE db_id = $1), \
         dead AS (SELECT w.page_no, w.version FROM w WHERE NOT EXISTS ( \
                    SELECT 1 FROM kept k WHERE k.version >= w.version \
                      AND (w.next IS NULL OR k.version < w.next) \
                      AND w.page_no <= k.page_count)), \
         gone AS (DELETE FROM pagewire.pages p USING dead \
                  WHERE p.db_id = $1 AND p.page_no = dead.page_no AND p.version = dead.version \
                  RETURNING coalesce(octet_length(p.data), 0)::bigint AS bytes) \
         SELECT count(*)::bigint, coalesce(sum(bytes), 0)::bigint FROM gone",
        &[&id, &kept, &counts],
    )
    .await?;
    let (writes, bytes): (i64, i64) = (row.try_get(0).pg()?, row.try_get(1).pg()?);
    Ok((writes.max(0) as u64, bytes.max(0) as u64))
}

/// Deletes zero markers with nothing older (they read as zeros without the marker),
/// but a branch's markers on pages it would otherwise read from its source; returns how
/// many.
async fn drop_leading_holes<C: GenericClient>(c: &C, row: &DbRow) -> StoreResult<u64> {
    let mut dropped = 0;
    loop {
        let n = sql::execute(
            c,
            "DELETE FROM pagewire.pages p WHERE p.db_id = $1 AND p.data IS NULL \
             AND p.page_no > $2 \
             AND NOT EXISTS (SELECT 1 FROM pagewire.pages q \
                             WHERE q.db_id = $1 AND q.page_no = p.page_no AND q.version < p.version)",
            &[&row.id, &i64::from(row.inherited)],
        )
        .await?;
        if n == 0 {
            return Ok(dropped);
        }
        dropped += n;
    }
}

/// Makes the versions not kept unreadable, drops version rows below the oldest kept one
/// and old commit ids, and records the bytes freed; returns how many became unreadable.
async fn collect_versions<C: GenericClient>(
    c: &C,
    row: &DbRow,
    kept: &[i64],
    retention: Duration,
    bytes_freed: u64,
) -> StoreResult<u64> {
    let collected = sql::execute(
        c,
        "UPDATE pagewire.versions SET retained = false \
         WHERE db_id = $1 AND retained AND NOT (version = ANY($2::bigint[]))",
        &[&row.id, &kept],
    )
    .await?;
    let oldest = kept
        .first()
        .copied()
        .unwrap_or(sql::version(row.state.version));
    sql::execute(
        c,
        "DELETE FROM pagewire.versions WHERE db_id = $1 AND version < $2",
        &[&row.id, &oldest],
    )
    .await?;
    sql::execute(
        c,
        "DELETE FROM pagewire.commit_ids WHERE db_id = $1 AND version <= $2",
        &[
            &row.id,
            &(sql::version(row.state.version) - COMMIT_IDS_KEPT),
        ],
    )
    .await?;
    sql::execute(
        c,
        "UPDATE pagewire.databases SET stored_bytes = stored_bytes - $2, gc_retention_ms = $3 \
         WHERE id = $1",
        &[
            &row.id,
            &i64::try_from(bytes_freed).unwrap_or(0),
            &ms(retention),
        ],
    )
    .await?;
    Ok(collected)
}
