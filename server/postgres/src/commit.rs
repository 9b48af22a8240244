//! A commit: ONE PostgreSQL transaction. It locks the database row (serialising the
//! database's commits), then checks in order: the client's incarnation (`Replaced`); a
//! known commit id returns its version (and its tag, while its version row is kept); the
//! lease and epoch (database clock); the base version; the base version's tag
//! (`Replaced`); the rules of `validate::against_base`. Then it writes the pages in bulk
//! (`UNNEST` of arrays, in chunks of a few MiB within the same transaction), hole markers
//! when the file grew, the version row (its new random tag, its change list: the carried
//! pages below the old end, and growth as `grown_from`, never enumerated), the commit id
//! and the new newest state (with that tag), and renews the lease. Durable once COMMIT
//! returns: the transaction runs with `synchronous_commit` at least `on` (see
//! [`DURABLE`]), whatever the role, database or server configure; a COMMIT without an
//! answer is `Unavailable`, and a retry with the same commit id learns what happened.
//!
//! `precheck` makes the same checks (but `against_base`) in one statement when the
//! commit's header arrives, so a commit that cannot apply is refused before its pages
//! are buffered.
//!
//! Identity costs no round trip: the incarnation and the newest tag are columns of the
//! database row both already read, the retried version's tag is joined to the commit-id
//! lookup, and the new tag is chosen here and written by statements already sent.

use deadpool_postgres::GenericClient;
use pagewire_server_core::store::{
    Changes, Commit, CommitHeader, CommitId, CommitOutcome, DbKey, DbState, StoreError,
    StoreResult, Version, VersionTag, random_id,
};
use pagewire_server_core::validate;

use crate::db::{self, DbRow, Lock};
use crate::error::{Pg as _, corrupt};
use crate::lease;
use crate::sql::{self, Client};

/// Page bytes per INSERT statement of a commit.
const CHUNK_BYTES: usize = 8 << 20;

/// Makes the commit transaction durable: `synchronous_commit = off` (set for the role,
/// the database, the server or the session) becomes `on` for this transaction only, the
/// equivalent of `SET LOCAL`. Every other value already waits for the local WAL flush
/// (`local`, `remote_write`, `on`, `remote_apply`), and an operator who chose one of the
/// stronger ones keeps it. Judged by the server in the transaction itself (no cached
/// guess of the session's setting), and sent pipelined with the row lock, so it costs no
/// round trip; the setting is read at COMMIT, so any point in the transaction will do.
const DURABLE: &str = "SELECT CASE WHEN current_setting('synchronous_commit') = 'off' \
     THEN set_config('synchronous_commit', 'on', true) END";

pub(crate) async fn commit(
    client: &mut Client,
    key: &DbKey,
    commit: Commit,
) -> StoreResult<CommitOutcome> {
    let tx = client.transaction().await.pg()?;
    // One round trip: a simple query needs no prepare, and tokio-postgres pipelines it
    // with the row lock's statement.
    let ((), row) = futures::try_join!(
        async { tx.batch_execute(DURABLE).await.pg() },
        db::get(&tx, key, Lock::NoKeyUpdate)
    )?;
    // Both reads in one round trip (tokio-postgres pipelines concurrent queries); the
    // incarnation (on the locked row) is judged first, then the commit id.
    let (done, lease) = futures::join!(
        applied(&tx, row.id, &commit.commit_id),
        lease::check(&tx, row.id, commit.lease_id, commit.epoch)
    );
    commit
        .identity
        .check_incarnation(&key.name, &row.state.incarnation)?;
    if let Some((version, tag)) = done? {
        return Ok(retried(&row.state, version, tag));
    }
    lease?;
    check_base(&key.name, &commit.header(), &row.state)?;
    validate::against_base(&commit, &row.state)?;
    let tag = random_id();
    let (version, ()) =
        futures::try_join!(apply(&tx, &row, &commit, &tag), lease::touch(&tx, row.id))?;
    tx.commit().await.pg()?;
    Ok(CommitOutcome {
        version,
        already_applied: false,
        incarnation: row.state.incarnation,
        tag: Some(tag),
    })
}

/// The outcome of a retry whose commit id created `version` (`tag`: that version's,
/// `None` when its row is no longer kept).
fn retried(current: &DbState, version: Version, tag: Option<VersionTag>) -> CommitOutcome {
    CommitOutcome {
        version,
        already_applied: true,
        incarnation: current.incarnation,
        tag,
    }
}

/// The base-version checks, after the lease's: `VersionConflict` unless the base is the
/// newest version, then `Replaced` unless the client's tag for it is the newest tag.
fn check_base(name: &str, header: &CommitHeader, current: &DbState) -> StoreResult<()> {
    if header.base_version != current.version {
        return Err(StoreError::VersionConflict {
            base: header.base_version,
            current: current.version,
        });
    }
    header.identity.check_state(name, current)
}

/// A commit's early look ([`PageStore::precheck`]): ONE statement, no row lock, reading
/// in one snapshot the database's newest state (with its incarnation and tag), the commit
/// id's version and tag (if applied) and the lease as the database clock sees it now;
/// then judges in [`commit`]'s order. The
/// commit stays authoritative (the lease may lapse, or another commit land, meanwhile).
///
/// [`PageStore::precheck`]: pagewire_server_core::store::PageStore::precheck
pub(crate) async fn precheck(
    client: &Client,
    key: &DbKey,
    header: CommitHeader,
) -> StoreResult<Option<CommitOutcome>> {
    let sql = format!(
        "SELECT d.version, d.page_size, d.page_count, d.incarnation, d.tag, \
           a.version AS applied, a.tag AS applied_tag, {} \
         FROM pagewire.databases d LEFT JOIN pagewire.leases l ON l.db_id = d.id \
         LEFT JOIN LATERAL ({APPLIED} WHERE c.db_id = d.id AND c.commit_id = $3) a ON true \
         WHERE d.tenant = $1 AND d.name = $2",
        lease::HELD_COLUMNS
    );
    let row = sql::query_opt(
        client,
        &sql,
        &[
            &key.tenant,
            &key.name,
            &header.commit_id.as_bytes().as_slice(),
        ],
    )
    .await?
    .ok_or_else(|| StoreError::NotFound(key.name.clone()))?;
    let current = db::state_of(&row)?;
    header
        .identity
        .check_incarnation(&key.name, &current.incarnation)?;
    let applied: Option<i64> = row.try_get("applied").pg()?;
    if let Some(version) = applied {
        let version = u64::try_from(version).map_err(|_| corrupt("version", version))?;
        let version = Version(version);
        let tag = sql::opt_id16_of(&row, "applied_tag")?;
        return Ok(Some(retried(&current, version, tag)));
    }
    lease::check_row(&row, header.lease_id, header.epoch)?;
    check_base(&key.name, &header, &current)?;
    Ok(None)
}

/// A commit id's version and that version's tag (NULL once GC dropped its row), from
/// `pagewire.commit_ids c`: the caller adds the WHERE clause.
const APPLIED: &str = "SELECT c.version, v.tag FROM pagewire.commit_ids c \
    LEFT JOIN pagewire.versions v ON v.db_id = c.db_id AND v.version = c.version";

/// The version a commit id created, if it was applied, with its tag while its row is kept.
async fn applied<C: GenericClient>(
    c: &C,
    db_id: i64,
    id: &CommitId,
) -> StoreResult<Option<(Version, Option<VersionTag>)>> {
    let sql = format!("{APPLIED} WHERE c.db_id = $1 AND c.commit_id = $2");
    let row = sql::query_opt(c, &sql, &[&db_id, &id.as_bytes().as_slice()]).await?;
    row.map(|r| {
        Ok((
            sql::version_of(&r, "version")?,
            sql::opt_id16_of(&r, "tag")?,
        ))
    })
    .transpose()
}

/// Writes a checked commit as the next version, tagged `tag`; returns it.
async fn apply<C: GenericClient>(
    c: &C,
    row: &DbRow,
    commit: &Commit,
    tag: &VersionTag,
) -> StoreResult<Version> {
    let version = Version(row.state.version.0 + 1);
    let v = sql::version(version);
    mark_holes(c, row, commit, v).await?;
    let bytes: i64 = commit.pages.iter().map(|(_, d)| d.len() as i64).sum();
    let committed = row.now_unix_ms.max(row.updated_unix_ms);
    let changed = Changes::of_commit(
        commit.pages.iter().map(|(no, _)| *no),
        row.state.page_count,
        commit.page_count,
    );
    let listed: Vec<i64> = changed.pages.iter().map(|&no| i64::from(no)).collect();
    let grown_from = changed.from.map(i64::from);
    // The writes are independent: sent together, they cost one round trip.
    let pages = futures::future::try_join_all(
        chunks(&commit.pages)
            .into_iter()
            .map(|chunk| insert_pages(c, row.id, v, chunk)),
    );
    let (page_size, page_count) = (i64::from(commit.page_size), i64::from(commit.page_count));
    let tag = tag.as_bytes().as_slice();
    let version_row: sql::Params = &[
        &row.id,
        &v,
        &committed,
        &page_size,
        &page_count,
        &listed,
        &grown_from,
        &tag,
    ];
    let commit_id = commit.commit_id.as_bytes().as_slice();
    let commit_id: sql::Params = &[&row.id, &commit_id, &v];
    let newest: sql::Params = &[
        &row.id,
        &v,
        &page_size,
        &page_count,
        &committed,
        &bytes,
        &tag,
    ];
    futures::try_join!(
        pages,
        sql::execute(
            c,
            "INSERT INTO pagewire.versions \
             (db_id, version, committed_unix_ms, page_size, page_count, changed_pages, \
              grown_from, tag) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            version_row,
        ),
        sql::execute(
            c,
            "INSERT INTO pagewire.commit_ids (db_id, commit_id, version) VALUES ($1, $2, $3)",
            commit_id,
        ),
        sql::execute(
            c,
            "UPDATE pagewire.databases SET version = $2, page_size = $3, page_count = $4, \
             tag = $7, updated_unix_ms = $5, stored_bytes = stored_bytes + $6, \
             first_commit_unix_ms = coalesce(first_commit_unix_ms, $5) WHERE id = $1",
            newest,
        ),
    )?;
    Ok(version)
}

/// The commit's pages in runs of about [`CHUNK_BYTES`].
fn chunks(pages: &[(u32, bytes::Bytes)]) -> Vec<&[(u32, bytes::Bytes)]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, (_, data)) in pages.iter().enumerate() {
        if size > 0 && size + data.len() > CHUNK_BYTES {
            out.push(&pages[start..i]);
            (start, size) = (i, 0);
        }
        size += data.len();
    }
    if start < pages.len() {
        out.push(&pages[start..]);
    }
    out
}

/// Inserts one run of pages in one statement.
async fn insert_pages<C: GenericClient>(
    c: &C,
    db_id: i64,
    version: i64,
    pages: &[(u32, bytes::Bytes)],
) -> StoreResult<()> {
    let nos: Vec<i64> = pages.iter().map(|(no, _)| i64::from(*no)).collect();
    let data: Vec<&[u8]> = pages.iter().map(|(_, d)| &d[..]).collect();
    sql::execute(
        c,
        "INSERT INTO pagewire.pages (db_id, page_no, version, data) \
         SELECT $1, t.no, $2, t.data FROM unnest($3::bigint[], $4::bytea[]) AS t(no, data)",
        &[&db_id, &version, &nos, &data],
    )
    .await?;
    Ok(())
}

/// When the file grows, pages past the old end whose newest write (before a truncate) has
/// data, and that this commit does not carry, get a zero marker at `version`.
async fn mark_holes<C: GenericClient>(
    c: &C,
    row: &DbRow,
    commit: &Commit,
    version: i64,
) -> StoreResult<()> {
    let old = row.state.page_count;
    if commit.page_count <= old {
        return Ok(());
    }
    let carried: Vec<i64> = commit
        .pages
        .iter()
        .map(|(no, _)| i64::from(*no))
        .filter(|&no| no > i64::from(old))
        .collect();
    sql::execute(
        c,
        "INSERT INTO pagewire.pages (db_id, page_no, version, data) \
         SELECT $1, w.page_no, $2, NULL FROM ( \
           SELECT DISTINCT ON (page_no) page_no, data IS NOT NULL AS has_data \
           FROM pagewire.pages WHERE db_id = $1 AND page_no > $3 AND page_no <= $4 \
           ORDER BY page_no, version DESC) AS w \
         WHERE w.has_data AND NOT (w.page_no = ANY($5::bigint[]))",
        &[
            &row.id,
            &version,
            &i64::from(old),
            &i64::from(commit.page_count),
            &carried,
        ],
    )
    .await?;
    // A branch's pages it never wrote would read through to its source's: markers too
    // (a series bounded by the source's page count).
    let inherited_end = commit.page_count.min(row.inherited);
    if inherited_end > old {
        sql::execute(
            c,
            "INSERT INTO pagewire.pages (db_id, page_no, version, data) \
             SELECT $1, g.no, $2, NULL FROM generate_series($3::bigint + 1, $4::bigint) AS g(no) \
             WHERE NOT (g.no = ANY($5::bigint[])) AND NOT EXISTS ( \
               SELECT 1 FROM pagewire.pages p WHERE p.db_id = $1 AND p.page_no = g.no)",
            &[
                &row.id,
                &version,
                &i64::from(old),
                &i64::from(inherited_end),
                &carried,
            ],
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn chunks_split_by_bytes_and_keep_every_page() {
        let page = Bytes::from(vec![0u8; 3 << 20]);
        let pages: Vec<(u32, Bytes)> = (1..=7).map(|no| (no, page.clone())).collect();
        let runs = chunks(&pages);
        assert_eq!(
            runs.iter().map(|r| r.len()).collect::<Vec<_>>(),
            [2, 2, 2, 1]
        );
        assert!(chunks(&[]).is_empty());
    }
}
