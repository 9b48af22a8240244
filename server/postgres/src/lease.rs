//! The write lease: grant, check (fencing, inside the commit's transaction), renew,
//! touch, release. Expiry is measured with the database's clock (`clock_timestamp()`),
//! never a server's, so fencing holds when several servers share the store.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use pagewire_server_core::store::{DbKey, Lease, LeaseId, StoreError, StoreResult};
use tokio_postgres::Row;

use crate::db::{self, DbRow, Lock};
use crate::error::Pg as _;
use crate::sql::{self, Client, int, ms};

/// The current lease row, as the database clock sees it now.
struct Held {
    lease_id: Vec<u8>,
    epoch: i64,
    client_id: String,
    ttl_ms: i64,
    live: bool,
    /// Until expiry (live) or since expiry (not), in ms.
    remaining_ms: i64,
    ago_ms: i64,
}

/// The lease columns [`Held`] is read from, for a query that joins `pagewire.leases` as
/// `l` (all NULL when there is no lease row).
pub(crate) const HELD_COLUMNS: &str = "l.lease_id, l.epoch, l.client_id, l.ttl_ms, \
    l.expires_at > clock_timestamp() AS live, \
    greatest(1, ceil(extract(epoch FROM l.expires_at - clock_timestamp()) * 1000))::bigint \
      AS remaining_ms, \
    greatest(0, floor(extract(epoch FROM clock_timestamp() - l.expires_at) * 1000))::bigint \
      AS ago_ms";

impl Held {
    /// The lease in a row with [`HELD_COLUMNS`]; `None` when they are NULL (no lease).
    fn from_row(r: &Row) -> StoreResult<Option<Self>> {
        let Some(lease_id) = r.try_get("lease_id").pg()? else {
            return Ok(None);
        };
        Ok(Some(Held {
            lease_id,
            epoch: r.try_get("epoch").pg()?,
            client_id: r.try_get("client_id").pg()?,
            ttl_ms: r.try_get("ttl_ms").pg()?,
            live: r.try_get("live").pg()?,
            remaining_ms: r.try_get("remaining_ms").pg()?,
            ago_ms: r.try_get("ago_ms").pg()?,
        }))
    }
}

async fn held<C: GenericClient>(c: &C, db_id: i64) -> StoreResult<Option<Held>> {
    let sql = format!("SELECT {HELD_COLUMNS} FROM pagewire.leases l WHERE l.db_id = $1");
    let row = sql::query_opt(c, &sql, &[&db_id]).await?;
    match row {
        Some(r) => Held::from_row(&r),
        None => Ok(None),
    }
}

fn lease_of(row: &DbRow, lease_id: LeaseId, epoch: u64, ttl: Duration) -> Lease {
    Lease {
        lease_id,
        epoch,
        ttl,
        state: row.state,
    }
}

/// Grants lease `lease_id` (next epoch) unless a live one is held; renews the live one
/// when it is `lease_id` already (a retried acquire).
pub(crate) async fn acquire(
    client: &mut Client,
    key: &DbKey,
    client_id: &str,
    lease_id: LeaseId,
    ttl: Duration,
) -> StoreResult<Lease> {
    let tx = client.transaction().await.pg()?;
    let row = db::get(&tx, key, Lock::NoKeyUpdate).await?;
    if let Some(h) = held(&tx, row.id).await?.filter(|h| h.live) {
        if h.lease_id[..] == lease_id.as_bytes()[..] {
            let epoch = u64::try_from(h.epoch).unwrap_or(0);
            extend(&tx, row.id, ttl).await?;
            tx.commit().await.pg()?;
            return Ok(lease_of(&row, lease_id, epoch, ttl));
        }
        let remaining = Duration::from_millis(u64::try_from(h.remaining_ms).unwrap_or(1));
        return Err(StoreError::LeaseHeld {
            holder: h.client_id,
            remaining,
        });
    }
    let epoch = row.max_epoch + 1;
    sql::execute(
        &tx,
        "INSERT INTO pagewire.leases (db_id, lease_id, epoch, client_id, ttl_ms, expires_at) \
         VALUES ($1, $2, $3, $4, $5::bigint, clock_timestamp() + $5::bigint * interval '1 millisecond') \
         ON CONFLICT (db_id) DO UPDATE SET lease_id = EXCLUDED.lease_id, \
           epoch = EXCLUDED.epoch, client_id = EXCLUDED.client_id, \
           ttl_ms = EXCLUDED.ttl_ms, expires_at = EXCLUDED.expires_at",
        &[
            &row.id,
            &lease_id.as_bytes().as_slice(),
            &int(epoch),
            &client_id,
            &ms(ttl),
        ],
    )
    .await?;
    sql::execute(
        &tx,
        "UPDATE pagewire.databases SET max_epoch = $2 WHERE id = $1",
        &[&row.id, &int(epoch)],
    )
    .await?;
    tx.commit().await.pg()?;
    Ok(lease_of(&row, lease_id, epoch, ttl))
}

/// `LeaseLost` unless `lease_id`/`epoch` name the current, unexpired lease of `db_id`.
/// Returns its TTL in ms.
pub(crate) async fn check<C: GenericClient>(
    c: &C,
    db_id: i64,
    lease_id: LeaseId,
    epoch: u64,
) -> StoreResult<i64> {
    judge(held(c, db_id).await?, lease_id, epoch)
}

/// [`check`] on a row already read with [`HELD_COLUMNS`] (NULL when no lease).
pub(crate) fn check_row(row: &Row, lease_id: LeaseId, epoch: u64) -> StoreResult<i64> {
    judge(Held::from_row(row)?, lease_id, epoch)
}

fn judge(held: Option<Held>, lease_id: LeaseId, epoch: u64) -> StoreResult<i64> {
    let Some(h) = held else {
        return Err(StoreError::LeaseLost(format!(
            "the write lease (epoch {epoch}) is no longer held (released or expired); acquire a new one"
        )));
    };
    if h.lease_id[..] != lease_id.as_bytes()[..] || h.epoch != int(epoch) {
        return Err(StoreError::LeaseLost(format!(
            "the write lease (epoch {epoch}) was superseded by epoch {}",
            h.epoch
        )));
    }
    if !h.live {
        return Err(StoreError::LeaseLost(format!(
            "the write lease (epoch {epoch}) expired {} ms ago; acquire a new one",
            h.ago_ms
        )));
    }
    Ok(h.ttl_ms)
}

/// Extends the current lease by `ttl` from now.
pub(crate) async fn renew(
    client: &mut Client,
    key: &DbKey,
    lease_id: LeaseId,
    epoch: u64,
    ttl: Duration,
) -> StoreResult<Lease> {
    let tx = client.transaction().await.pg()?;
    let row = db::get(&tx, key, Lock::NoKeyUpdate).await?;
    check(&tx, row.id, lease_id, epoch).await?;
    extend(&tx, row.id, ttl).await?;
    tx.commit().await.pg()?;
    Ok(lease_of(&row, lease_id, epoch, ttl))
}

/// Sets the current lease's TTL to `ttl` and its expiry to `ttl` from now.
async fn extend<C: GenericClient>(c: &C, db_id: i64, ttl: Duration) -> StoreResult<()> {
    sql::execute(
        c,
        "UPDATE pagewire.leases SET ttl_ms = $2::bigint, \
         expires_at = clock_timestamp() + $2::bigint * interval '1 millisecond' WHERE db_id = $1",
        &[&db_id, &ms(ttl)],
    )
    .await?;
    Ok(())
}

/// Extends the current lease by its own TTL (a commit renews it).
pub(crate) async fn touch<C: GenericClient>(c: &C, db_id: i64) -> StoreResult<()> {
    sql::execute(
        c,
        "UPDATE pagewire.leases \
         SET expires_at = clock_timestamp() + ttl_ms * interval '1 millisecond' WHERE db_id = $1",
        &[&db_id],
    )
    .await?;
    Ok(())
}

/// Releases the lease if it is the current one (a no-op otherwise, or when the database
/// is gone). One statement, so atomic without a row lock.
pub(crate) async fn release(
    client: &Client,
    key: &DbKey,
    lease_id: LeaseId,
    epoch: u64,
) -> StoreResult<()> {
    sql::execute(
        client,
        "DELETE FROM pagewire.leases l USING pagewire.databases d \
         WHERE d.id = l.db_id AND d.tenant = $1 AND d.name = $2 \
           AND l.lease_id = $3 AND l.epoch = $4",
        &[
            &key.tenant,
            &key.name,
            &lease_id.as_bytes().as_slice(),
            &int(epoch),
        ],
    )
    .await?;
    Ok(())
}
