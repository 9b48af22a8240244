//! Reads: which version a read transaction starts at (newest, as of a version, as of a
//! time), change lists since a cached version, reader pins, and pages at a version.
//!
//! ReadPages runs in one REPEATABLE READ snapshot, so a GC pass cannot delete writes
//! between the check that the version is retained and the page fetch, and fetches the
//! batch in ONE query (a LATERAL lookup of each page's newest write at or before the
//! version). Pins are written with `synchronous_commit = off`: they live in the database
//! (its clock decides expiry), and one lost by a PostgreSQL crash only lets GC collect a
//! version early, which the reader sees as OUT_OF_RANGE, never as wrong data. A pin
//! remembers when it was made (`created_at`) and is never extended past that plus the
//! maximum pin age.
//!
//! Change lists walk the version rows from the cached version with `ChangeWalk`, under
//! the request's limit: growth is a range (`grown_from`), never a list.

use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use pagewire_server_core::store::clock::{check_after_first_commit, describe_unix_ms};
use pagewire_server_core::store::{
    BeginRead, ChangeWalk, Changes, DbKey, DbState, MAX_FORK_DEPTH, PageRead, PinTtl, ReadAt,
    ReadView, StoreError, StoreResult, Version, VersionTag,
};
use pagewire_server_core::validate;
use tokio_postgres::IsolationLevel;

use crate::db::{self, DbRow, Lock};
use crate::error::{Pg as _, corrupt};
use crate::sql::{self, Client, id16_of, int, ms, opt_id16_of, u32_of};

/// A readable version's metadata.
pub(crate) struct VersionRow {
    /// With the database's incarnation and the version's tag.
    pub state: DbState,
    committed_unix_ms: i64,
    /// The tag of the `seen` version [`readable`] was asked about, while its row is kept.
    seen_tag: Option<VersionTag>,
}

/// `OutOfRange` for a version no longer retained, saying what is.
async fn not_retained<C: GenericClient>(c: &C, row: &DbRow, what: &str) -> StoreError {
    let oldest = sql::query_one(
        c,
        "SELECT coalesce(min(version), 0) FROM pagewire.versions WHERE db_id = $1",
        &[&row.id],
    )
    .await
    .and_then(|r| r.try_get::<_, i64>(0).pg());
    let oldest = match oldest {
        Ok(v) => v,
        Err(e) => return e,
    };
    let retention = row
        .gc_retention_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| {
            let d = Duration::from_millis(ms);
            format!(", retention {}", humantime::format_duration(d))
        })
        .unwrap_or_default();
    StoreError::OutOfRange(format!(
        "{what} is no longer retained (oldest retained: {oldest}{retention})"
    ))
}

/// The state at a readable `version`, or `OutOfRange` saying why not; in the same
/// statement, the tag of version `seen` while its row is kept (`None` when `seen` is past
/// the newest version of `row`, so that a commit landing meanwhile is not seen: versions
/// up to it never change, and the caller's row lock or snapshot keeps GC out).
pub(crate) async fn readable<C: GenericClient>(
    c: &C,
    row: &DbRow,
    version: Version,
    seen: Option<Version>,
) -> StoreResult<VersionRow> {
    if version > row.state.version {
        return Err(StoreError::OutOfRange(format!(
            "version {version} does not exist yet (newest: {})",
            row.state.version
        )));
    }
    let seen = seen.filter(|&s| s <= row.state.version).map(sql::version);
    let meta = sql::query_opt(
        c,
        "SELECT page_size, page_count, committed_unix_ms, tag, \
           (SELECT s.tag FROM pagewire.versions s \
            WHERE s.db_id = $1 AND s.version = $3::bigint) AS seen_tag \
         FROM pagewire.versions WHERE db_id = $1 AND version = $2 AND retained",
        &[&row.id, &sql::version(version), &seen],
    )
    .await?;
    let Some(meta) = meta else {
        return Err(not_retained(c, row, &format!("version {version}")).await);
    };
    Ok(VersionRow {
        state: DbState {
            version,
            page_size: u32_of(&meta, "page_size")?,
            page_count: u32_of(&meta, "page_count")?,
            incarnation: row.state.incarnation,
            tag: id16_of(&meta, "tag")?,
        },
        committed_unix_ms: meta.try_get("committed_unix_ms").pg()?,
        seen_tag: opt_id16_of(&meta, "seen_tag")?,
    })
}

/// The newest version committed at or before `unix_ms`.
async fn version_at_time<C: GenericClient>(
    c: &C,
    row: &DbRow,
    unix_ms: i64,
) -> StoreResult<Version> {
    check_after_first_commit(row.first_commit_unix_ms, unix_ms)?;
    let found = sql::query_opt(
        c,
        "SELECT version FROM pagewire.versions WHERE db_id = $1 AND committed_unix_ms <= $2 \
         ORDER BY version DESC LIMIT 1",
        &[&row.id, &unix_ms],
    )
    .await?;
    match found {
        Some(r) => sql::version_of(&r, "version"),
        None => {
            let what = format!(
                "the version committed at or before {}",
                describe_unix_ms(unix_ms)
            );
            Err(not_retained(c, row, &what).await)
        }
    }
}

pub(crate) async fn resolve<C: GenericClient>(
    c: &C,
    row: &DbRow,
    at: ReadAt,
) -> StoreResult<Version> {
    match at {
        ReadAt::Newest => Ok(row.state.version),
        ReadAt::Version(v) => Ok(v),
        ReadAt::UnixMs(t) => version_at_time(c, row, t).await,
    }
}

/// Pages changed in `(cached, target]`, or `None` when the client must drop its cache
/// (no cache, unknown or too old, newer than `target`, a page-size change, or more than
/// `limit` versions or listed pages). Bounded: the span is judged before any query, and
/// the query fetches at most `limit + 1` version rows (the list of the row it starts at,
/// which the walk never reads, is not fetched).
async fn changes<C: GenericClient>(
    c: &C,
    db_id: i64,
    cached: Version,
    target: Version,
    limit: usize,
) -> StoreResult<Option<Changes>> {
    if cached == Version::ZERO {
        return Ok(None);
    }
    let Some(mut walk) = ChangeWalk::new(cached, target, limit) else {
        return Ok(None);
    };
    let rows = sql::query(
        c,
        "SELECT version, page_size, \
           CASE WHEN version = $2 THEN '{}'::bigint[] ELSE changed_pages END AS pages, \
           grown_from FROM pagewire.versions \
         WHERE db_id = $1 AND version >= $2 AND version <= $3 ORDER BY version LIMIT $4",
        &[
            &db_id,
            &sql::version(cached),
            &sql::version(target),
            &int((limit as u64).saturating_add(1)),
        ],
    )
    .await?;
    // Every version of the span must be there (GC drops rows below the oldest kept one).
    let complete = rows.len() as u64 == target.0 - cached.0 + 1
        && rows.first().and_then(|r| r.try_get::<_, i64>(0).ok()) == Some(sql::version(cached));
    let Some(first) = rows.first().filter(|_| complete) else {
        return Ok(None);
    };
    let page_size: i64 = first.try_get(1).pg()?;
    for r in rows.iter().skip(1) {
        if r.try_get::<_, i64>(1).pg()? != page_size {
            return Ok(None);
        }
        let listed: Vec<i64> = r.try_get(2).pg()?;
        let pages: Vec<u32> = listed
            .into_iter()
            .map(|p| u32::try_from(p).map_err(|_| corrupt("changed page", p)))
            .collect::<StoreResult<_>>()?;
        let from: Option<i64> = r.try_get(3).pg()?;
        let from = from
            .map(|f| u32::try_from(f).map_err(|_| corrupt("grown_from", f)))
            .transpose()?;
        match walk.step(&pages, from) {
            Some(next) => walk = next,
            None => return Ok(None),
        }
    }
    Ok(Some(walk.finish()))
}

/// BeginRead: resolves the version, lists changes, pins the version, and tells the tag of
/// the client's `seen_version` (in the version lookup's statement). The database row is
/// held `FOR KEY SHARE` meanwhile, so GC (which locks it `FOR UPDATE`) sees the pin and
/// cannot drop the seen version's row between the two.
pub(crate) async fn begin_read(
    client: &mut Client,
    key: &DbKey,
    read: BeginRead,
) -> StoreResult<ReadView> {
    let tx = client.transaction().await.pg()?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await
        .pg()?;
    let row = db::get(&tx, key, Lock::KeyShare).await?;
    let version = resolve(&tx, &row, read.at).await?;
    let meta = readable(&tx, &row, version, Some(read.seen_version)).await?;
    let changes = changes(&tx, row.id, read.cached_version, version, read.max_changes).await?;
    pin(&tx, row.id, version, read.pin).await?;
    tx.commit().await.pg()?;
    Ok(ReadView {
        state: meta.state,
        changes,
        committed_unix_ms: if version == Version::ZERO {
            0
        } else {
            meta.committed_unix_ms
        },
        seen_tag: meta.seen_tag,
    })
}

/// Pages at `version` in request order (zeros where never written), then the version's
/// pin (if a BeginRead made one) extended to `pin.ttl` from now, within its age limit.
pub(crate) async fn read_pages(
    client: &mut Client,
    key: &DbKey,
    version: Version,
    page_nos: &[u32],
    pin: PinTtl,
) -> StoreResult<PageRead> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .pg()?;
    let row = db::get(&tx, key, Lock::None).await?;
    let meta = readable(&tx, &row, version, None).await?;
    validate::page_nos_in_range(page_nos, meta.state.page_count)?;
    let pages = fetch(&tx, &row, version, page_nos, meta.state.page_size).await?;
    tx.commit().await.pg()?;
    refresh_pin(client, row.id, version, pin).await?;
    Ok(PageRead {
        state: meta.state,
        page_size: meta.state.page_size,
        pages,
    })
}

/// The newest write at or before `version` of each page, in request order; a branch's
/// pages it never wrote from its ancestors (one query per level, in the caller's
/// snapshot, at most [`MAX_FORK_DEPTH`] levels).
async fn fetch<C: GenericClient>(
    c: &C,
    row: &DbRow,
    version: Version,
    page_nos: &[u32],
    page_size: u32,
) -> StoreResult<Vec<Bytes>> {
    let mut pages = vec![Bytes::new(); page_nos.len()];
    let mut wanted: Vec<usize> = (0..page_nos.len()).collect();
    let (mut id, mut at, mut inherited, mut ancestor) =
        (row.id, version, row.inherited, row.ancestor);
    for _ in 0..=MAX_FORK_DEPTH {
        let nos: Vec<u32> = wanted.iter().map(|&i| page_nos[i]).collect();
        let found = fetch_own(c, id, at, &nos).await?;
        let mut deeper = Vec::new();
        for (&i, (no, write)) in wanted.iter().zip(nos.iter().zip(found)) {
            match write {
                Some(data) => pages[i] = page_of(i64::from(*no), data, at, page_size)?,
                None if *no <= inherited && ancestor.is_some() => deeper.push(i),
                None => pages[i] = page_of(i64::from(*no), None, at, page_size)?,
            }
        }
        let Some((source, source_version)) = ancestor.filter(|_| !deeper.is_empty()) else {
            return Ok(pages);
        };
        let source_row = db::by_id(c, source, Lock::None).await?.ok_or_else(|| {
            StoreError::Internal(format!("a branch's source (row {source}) is missing"))
        })?;
        (id, at, inherited, ancestor) = (
            source_row.id,
            source_version,
            source_row.inherited,
            source_row.ancestor,
        );
        wanted = deeper;
    }
    Err(StoreError::Internal(format!(
        "a chain of branches longer than {MAX_FORK_DEPTH}"
    )))
}

/// Database `db_id`'s own newest write at or before `version` of each page, in request
/// order: `Some(data)` (`None` data: a zero marker), or `None` when it never wrote it.
async fn fetch_own<C: GenericClient>(
    c: &C,
    db_id: i64,
    version: Version,
    page_nos: &[u32],
) -> StoreResult<Vec<Option<Option<Vec<u8>>>>> {
    if page_nos.is_empty() {
        return Ok(Vec::new());
    }
    let nos: Vec<i64> = page_nos.iter().map(|&no| i64::from(no)).collect();
    let rows = sql::query(
        c,
        "SELECT p.found, p.data FROM unnest($2::bigint[]) WITH ORDINALITY AS n(no, ord) \
         LEFT JOIN LATERAL ( \
           SELECT true AS found, data FROM pagewire.pages \
           WHERE db_id = $1 AND page_no = n.no AND version <= $3 \
           ORDER BY version DESC LIMIT 1) AS p ON true \
         ORDER BY n.ord",
        &[&db_id, &nos, &sql::version(version)],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let found: Option<bool> = r.try_get(0).pg()?;
            let data: Option<Vec<u8>> = r.try_get(1).pg()?;
            Ok(found.map(|_| data))
        })
        .collect()
}

/// One page's bytes: stored data of the right size, or zeros.
fn page_of(no: i64, data: Option<Vec<u8>>, version: Version, page_size: u32) -> StoreResult<Bytes> {
    let Some(data) = data else {
        return Ok(Bytes::from(vec![0; page_size as usize]));
    };
    if data.len() != page_size as usize {
        return Err(StoreError::Internal(format!(
            "page {no} at version {version} is {} bytes, expected {page_size}",
            data.len()
        )));
    }
    Ok(Bytes::from(data))
}

/// Pins `version` (BeginRead, in its transaction): a new pin lasts `ttl` but at most
/// `max_age`, counted from `created_at`, which later pins of the version keep; an existing
/// pin is extended to `ttl` from now, never past `created_at + max_age`, and never
/// shortened.
async fn pin<C: GenericClient>(
    c: &C,
    db_id: i64,
    version: Version,
    pin: PinTtl,
) -> StoreResult<()> {
    sql::execute(
        c,
        "INSERT INTO pagewire.pins (db_id, version, expires_at, created_at) \
         SELECT $1, $2, t.now + least($3::bigint, $4::bigint) * interval '1 millisecond', t.now \
         FROM (SELECT clock_timestamp() AS now) AS t \
         ON CONFLICT (db_id, version) DO UPDATE SET expires_at = greatest(pins.expires_at, \
           least(clock_timestamp() + $3::bigint * interval '1 millisecond', \
                 pins.created_at + $4::bigint * interval '1 millisecond'))",
        &[
            &db_id,
            &sql::version(version),
            &pin_ms(pin.ttl),
            &pin_ms(pin.max_age),
        ],
    )
    .await?;
    Ok(())
}

/// Extends the pin on `version` (never creates one) like [`pin`] does, committed without
/// waiting for the WAL flush.
async fn refresh_pin(
    client: &mut Client,
    db_id: i64,
    version: Version,
    pin: PinTtl,
) -> StoreResult<()> {
    let tx = client.transaction().await.pg()?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await
        .pg()?;
    sql::execute(
        &tx,
        "UPDATE pagewire.pins SET expires_at = greatest(expires_at, \
           least(clock_timestamp() + $3::bigint * interval '1 millisecond', \
                 created_at + $4::bigint * interval '1 millisecond')) \
         WHERE db_id = $1 AND version = $2",
        &[
            &db_id,
            &sql::version(version),
            &pin_ms(pin.ttl),
            &pin_ms(pin.max_age),
        ],
    )
    .await?;
    tx.commit().await.pg()
}

/// A pin duration in ms, at most [`PIN_MS_MAX`] (so that adding it to a timestamp stays
/// within PostgreSQL's range, whatever the configuration says).
fn pin_ms(d: Duration) -> i64 {
    ms(d).min(PIN_MS_MAX)
}

/// About 1000 years.
const PIN_MS_MAX: i64 = 1000 * 366 * 86_400_000;
