//! Migration 0002 on a database that the 0001 schema made, as the store then wrote it:
//! change lists that enumerate growth become ranges (`grown_from`), pins get their
//! creation time, and the store keeps working on the data that was there (reads, change
//! lists, pins, leases, commits, GC).

use std::time::Duration;

use pagewire_server_core::store::conformance::{self, page};
use pagewire_server_core::store::{
    BeginRead, Changes, Commit, DbKey, DbState, Lease, PageStore, PinTtl, ReadAt, StoreError,
};
use pagewire_store_postgres::PostgresStore;
use pagewire_tests::postgres::TempPostgres;

const PS: u32 = 4096;
/// Commit times of the old history (long before now, so GC may collect them).
const T0: i64 = 1_700_000_000_000;

/// What `schema::migrate` had made of an empty database once migration 1 was applied.
const SCHEMA_AT_0001: &str = "
    CREATE SCHEMA pagewire;
    CREATE TABLE pagewire.migrations (
        version     integer PRIMARY KEY,
        description text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    INSERT INTO pagewire.migrations (version, description) VALUES (1, 'initial schema');";

/// A page of `fill` bytes as an SQL expression.
fn page_sql(fill: u8) -> String {
    format!("decode(repeat('{fill:02x}', {PS}), 'hex')")
}

/// The rows the 0001 store wrote for two databases:
///
/// `old.db`, versions 0..=5 (page counts 0, 3, 3, 6, 2, 4): v1 writes 1, 2, 3; v2 writes
/// 2; v3 writes 1, 4, 5, 6; v4 writes 1 and shrinks to 2 pages; v5 writes 1, 4, grows
/// to 4 and marks page 3 (written by v1, not carried) as a zero page. Lists enumerate
/// growth, as the 0001 store did. A pin on v5 (made before `created_at` existed), and an
/// expired lease of epoch 1.
///
/// `gc.db`, after a GC: its oldest row is v7 (10 pages, with an enumerated list and no
/// predecessor), then v8 (grows to 12, writes 2 and 12).
fn old_rows() -> String {
    let mut sql = String::from(old_database_rows());
    let versions = [
        (0, 0, "{}"),
        (1, 3, "{1,2,3}"),
        (2, 3, "{2}"),
        (3, 6, "{1,4,5,6}"),
        (4, 2, "{1}"),
        (5, 4, "{1,3,4}"),
    ];
    for (v, count, list) in versions {
        let size = if v == 0 { 0 } else { PS };
        sql += &format!(
            "INSERT INTO pagewire.versions \
             (db_id, version, committed_unix_ms, page_size, page_count, changed_pages) \
             VALUES (1, {v}, {}, {size}, {count}, '{list}');\n",
            T0 + v * 1000
        );
    }
    let writes: [(i64, i64, Option<u8>); 10] = [
        (1, 1, Some(11)),
        (2, 1, Some(12)),
        (3, 1, Some(13)),
        (2, 2, Some(22)),
        (1, 3, Some(31)),
        (4, 3, Some(34)),
        (5, 3, Some(35)),
        (6, 3, Some(36)),
        (1, 4, Some(41)),
        (1, 5, Some(51)),
    ];
    let more = [(4, 5, Some(54)), (3, 5, None)];
    for (no, v, fill) in writes.into_iter().chain(more) {
        let data = fill.map_or("NULL".to_owned(), page_sql);
        sql += &format!(
            "INSERT INTO pagewire.pages (db_id, page_no, version, data) \
             VALUES (1, {no}, {v}, {data});\n"
        );
    }
    sql += &format!(
        "INSERT INTO pagewire.versions \
         (db_id, version, committed_unix_ms, page_size, page_count, changed_pages) VALUES \
         (2, 7, {T0}, {PS}, 10, '{{1,2,3,4,5,6,7,8,9,10}}'), \
         (2, 8, {}, {PS}, 12, '{{2,11,12}}');\n",
        T0 + 1000
    );
    sql
}

/// The database rows, lease, commit id and pin of [`old_rows`].
fn old_database_rows() -> &'static str {
    "INSERT INTO pagewire.databases (id, tenant, name, created_unix_ms, version, page_size, \
       page_count, updated_unix_ms, stored_bytes, first_commit_unix_ms, max_epoch) VALUES \
       (1, 't', 'old.db', 1700000000000, 5, 4096, 4, 1700000005000, 45056, 1700000001000, 1), \
       (2, 't', 'gc.db', 1700000000000, 8, 4096, 12, 1700000001000, 0, 1700000000000, 0);
     SELECT setval('pagewire.databases_id_seq', 2);
     INSERT INTO pagewire.leases (db_id, lease_id, epoch, client_id, ttl_ms, expires_at) VALUES
       (1, '\\x00000000000000000000000000000001', 1, 'old', 1000, clock_timestamp() - interval '1 hour');
     INSERT INTO pagewire.commit_ids (db_id, commit_id, version) VALUES
       (1, '\\x000000000000000000000000000000c5', 5);
     INSERT INTO pagewire.pins (db_id, version, expires_at) VALUES
       (1, 5, clock_timestamp() + interval '1 hour');\n"
}

/// A fresh database in the state the 0001 store left it (see [`old_rows`]), or `None`
/// (skipped: no PostgreSQL).
async fn old_database(
    test: &str,
) -> anyhow::Result<Option<(TempPostgres, tokio_postgres::Client)>> {
    let Some(pg) = TempPostgres::start_or_skip(test) else {
        return Ok(None);
    };
    let (client, connection) = tokio_postgres::connect(pg.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute(SCHEMA_AT_0001).await?;
    client
        .batch_execute(include_str!("../src/migrations/0001_initial.sql"))
        .await?;
    client.batch_execute(&old_rows()).await?;
    Ok(Some((pg, client)))
}

/// (version, changed_pages, grown_from) of a database's version rows.
async fn version_rows(
    client: &tokio_postgres::Client,
    db_id: i64,
) -> anyhow::Result<Vec<(i64, Vec<i64>, Option<i64>)>> {
    let rows = client
        .query(
            "SELECT version, changed_pages, grown_from FROM pagewire.versions \
             WHERE db_id = $1 ORDER BY version",
            &[&db_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_turns_growth_lists_into_ranges() -> anyhow::Result<()> {
    let Some((pg, client)) = old_database("migration_turns_growth_lists_into_ranges").await? else {
        return Ok(());
    };
    let _store = PostgresStore::connect(pg.url()).await?;
    let applied: Vec<i32> = client
        .query(
            "SELECT version FROM pagewire.migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied, [1, 2]);
    assert_eq!(
        version_rows(&client, 1).await?,
        [
            (0, vec![], None),
            (1, vec![], Some(1)),
            (2, vec![2], None),
            (3, vec![1], Some(4)),
            (4, vec![1], None),
            (5, vec![1], Some(3)),
        ]
    );
    assert_eq!(
        version_rows(&client, 2).await?,
        [
            (7, (1..=10).collect(), None), // no predecessor row: kept as it was
            (8, vec![2], Some(11)),
        ]
    );
    let pin = client
        .query_one(
            "SELECT created_at <= clock_timestamp(), expires_at > clock_timestamp() \
             FROM pagewire.pins WHERE db_id = 1 AND version = 5",
            &[],
        )
        .await?;
    assert!(
        pin.get::<_, bool>(0) && pin.get::<_, bool>(1),
        "the old pin has an age and still holds"
    );

    // Connecting again applies nothing and changes nothing.
    drop(PostgresStore::connect(pg.url()).await?);
    assert_eq!(version_rows(&client, 1).await?.len(), 6);
    let count: i64 = client
        .query_one("SELECT count(*) FROM pagewire.migrations", &[])
        .await?
        .get(0);
    assert_eq!(count, 2);
    Ok(())
}

fn at(cached_version: u64, at: ReadAt) -> BeginRead {
    BeginRead {
        cached_version,
        at,
        pin: PinTtl {
            ttl: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        },
        max_changes: 1000,
    }
}

fn changes(pages: &[u32], from: Option<u32>) -> Option<Changes> {
    Some(Changes {
        pages: pages.to_vec(),
        from,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_database_keeps_working() -> anyhow::Result<()> {
    let Some((pg, _client)) = old_database("an_existing_database_keeps_working").await? else {
        return Ok(());
    };
    let store = PostgresStore::connect(pg.url()).await?;
    let k = DbKey::new("t", "old.db");
    let newest = DbState {
        version: 5,
        page_size: PS,
        page_count: 4,
    };
    assert_eq!(store.open(&k, false).await?.0, newest);

    // Change lists over migrated rows: as they were, with growth as a range.
    let view = |cached| store.begin_read(&k, at(cached, ReadAt::Newest));
    assert_eq!(view(1).await?.changes, changes(&[1, 2], Some(3)));
    assert_eq!(view(2).await?.changes, changes(&[1], Some(3)));
    assert_eq!(view(4).await?.changes, changes(&[1], Some(3)));
    assert_eq!(view(5).await?.changes, changes(&[], None));
    let limited = BeginRead {
        max_changes: 2,
        ..at(1, ReadAt::Newest)
    };
    assert_eq!(
        store.begin_read(&k, limited).await?.changes,
        None,
        "4 versions > 2"
    );

    // Pages as they were.
    let pin = at(0, ReadAt::Newest).pin;
    let read = store.read_pages(&k, 5, &[1, 2, 3, 4], pin).await?;
    assert_eq!(
        read.pages,
        [page(PS, 51), page(PS, 22), page(PS, 0), page(PS, 54)]
    );
    let read = store.read_pages(&k, 2, &[1, 2, 3], pin).await?;
    assert_eq!(read.pages, [page(PS, 11), page(PS, 22), page(PS, 13)]);

    // The old commit id, lease and epoch still count.
    let old = conformance::commit(&lease_of_epoch(1), 4, PS, 4, &[(1, 51)]);
    let mut commit_id = [0; 16];
    commit_id[15] = 0xc5;
    let retry = Commit { commit_id, ..old };
    let done = store.precheck(&k, retry.header()).await?;
    assert!(
        done.is_some_and(|d| d.already_applied && d.version == 5),
        "{done:?}"
    );
    let lease = store
        .acquire_lease(&k, "new", Duration::from_secs(60))
        .await?;
    assert_eq!(lease.epoch, 2, "epochs go on from the old ones");
    assert_eq!(lease.state, newest);

    // New commits on top: growth is stored as a range.
    let grow = conformance::commit(&lease, 5, PS, 6, &[(1, 61), (6, 66)]);
    assert_eq!(store.precheck(&k, grow.header()).await?, None);
    let stale = conformance::commit(&lease, 4, PS, 6, &[(1, 61), (6, 66)]);
    let conflict = store.precheck(&k, stale.header()).await;
    assert!(
        matches!(
            conflict,
            Err(StoreError::VersionConflict {
                base: 4,
                current: 5
            })
        ),
        "{conflict:?}"
    );
    assert_eq!(store.commit(&k, grow.clone()).await?.version, 6);
    let again = store.precheck(&k, grow.header()).await?;
    assert!(
        again.is_some_and(|d| d.already_applied && d.version == 6),
        "{again:?}"
    );
    assert_eq!(view(5).await?.changes, changes(&[1], Some(5)));
    assert_eq!(view(2).await?.changes, changes(&[1], Some(3)));
    let read = store.read_pages(&k, 6, &[3, 4, 5, 6], pin).await?;
    assert_eq!(
        read.pages,
        [page(PS, 0), page(PS, 54), page(PS, 0), page(PS, 66)]
    );

    // The database whose oldest row kept its enumerated list.
    let g = DbKey::new("t", "gc.db");
    let from_oldest = store.begin_read(&g, at(7, ReadAt::Newest)).await?;
    assert_eq!(from_oldest.changes, changes(&[2], Some(11)));

    // GC: the old pin keeps v5 (and v6 is the newest); the rest goes.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let stats = store.gc(now, Duration::ZERO).await?;
    assert!(stats.versions_collected >= 5, "{stats:?}");
    let at5 = store.begin_read(&k, at(0, ReadAt::Version(5))).await?;
    assert_eq!(at5.state, newest);
    let read = store.read_pages(&k, 5, &[1, 2, 3, 4], pin).await?;
    assert_eq!(
        read.pages,
        [page(PS, 51), page(PS, 22), page(PS, 0), page(PS, 54)]
    );
    let gone = store.begin_read(&k, at(0, ReadAt::Version(3))).await;
    assert!(matches!(gone, Err(StoreError::OutOfRange(_))), "{gone:?}");
    assert_eq!(view(2).await?.changes, None, "v2 is gone: drop the cache");
    assert_eq!(view(5).await?.changes, changes(&[1], Some(5)));
    Ok(())
}

/// A lease record naming the old store's lease of `epoch` (id ...01).
fn lease_of_epoch(epoch: u64) -> Lease {
    let mut lease_id = [0; 16];
    lease_id[15] = 1;
    Lease {
        lease_id,
        epoch,
        ttl: Duration::from_secs(1),
        state: DbState::default(),
    }
}
