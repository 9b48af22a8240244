//! Migration 0002 on a database that the 0001 schema made, as the store then wrote it:
//! change lists that enumerate growth become ranges (`grown_from`), pins get their
//! creation time, and the store keeps working on the data that was there (reads, change
//! lists, pins, leases, commits, GC).
//!
//! Migration 0003 on a database that the 0002 schema made: every database gets an
//! incarnation, every version row a tag (zeros for version 0), and the store serves and
//! checks them on the data that was there.

use std::time::Duration;

use pagewire_server_core::store::conformance::{self, page};
use pagewire_server_core::store::{
    BeginRead, Changes, Commit, CommitId, DbKey, DbState, Identity, Incarnation, Lease, LeaseId,
    NO_TAG, PageStore, PinTtl, ReadAt, StoreError, Version, VersionTag,
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
    assert_eq!(applied, [1, 2, 3, 4]);
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
    assert_eq!(count, 4);
    Ok(())
}

fn at(cached_version: u64, at: ReadAt) -> BeginRead {
    BeginRead {
        cached_version: Version(cached_version),
        at,
        pin: PinTtl {
            ttl: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        },
        max_changes: 1000,
        seen_version: Version::ZERO,
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
    let newest = store.open(&k, false).await?.0;
    assert_eq!(newest.geometry(), (5, PS, 4));

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
    let read = store.read_pages(&k, Version(5), &[1, 2, 3, 4], pin).await?;
    assert_eq!(
        read.pages,
        [page(PS, 51), page(PS, 22), page(PS, 0), page(PS, 54)]
    );
    let read = store.read_pages(&k, Version(2), &[1, 2, 3], pin).await?;
    assert_eq!(read.pages, [page(PS, 11), page(PS, 22), page(PS, 13)]);

    // The old commit id, lease and epoch still count.
    let old = conformance::commit(&lease_of_epoch(1), 4, PS, 4, &[(1, 51)]);
    let mut commit_id = [0; 16];
    commit_id[15] = 0xc5;
    let retry = Commit {
        commit_id: CommitId(commit_id),
        ..old
    };
    let done = store.precheck(&k, retry.header()).await?;
    assert!(
        done.is_some_and(|d| d.already_applied && d.version == Version(5)),
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
                base: Version(4),
                current: Version(5)
            })
        ),
        "{conflict:?}"
    );
    assert_eq!(store.commit(&k, grow.clone()).await?.version, Version(6));
    let again = store.precheck(&k, grow.header()).await?;
    assert!(
        again.is_some_and(|d| d.already_applied && d.version == Version(6)),
        "{again:?}"
    );
    assert_eq!(view(5).await?.changes, changes(&[1], Some(5)));
    assert_eq!(view(2).await?.changes, changes(&[1], Some(3)));
    let read = store.read_pages(&k, Version(6), &[3, 4, 5, 6], pin).await?;
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
    let at5 = store
        .begin_read(&k, at(0, ReadAt::Version(Version(5))))
        .await?;
    assert_eq!(at5.state, newest);
    let read = store.read_pages(&k, Version(5), &[1, 2, 3, 4], pin).await?;
    assert_eq!(
        read.pages,
        [page(PS, 51), page(PS, 22), page(PS, 0), page(PS, 54)]
    );
    let gone = store
        .begin_read(&k, at(0, ReadAt::Version(Version(3))))
        .await;
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
        lease_id: LeaseId(lease_id),
        epoch,
        ttl: Duration::from_secs(1),
        state: DbState::default(),
    }
}

/// What the 0002 store wrote for a database created under it: `new.db` (id 3), versions
/// 0..=2 (page counts 0, 2, 3): v1 writes 1, 2 (growth from 1); v2 writes 1, 3 (growth
/// from 3); their commit ids ...a1, ...a2.
const ROWS_AT_0002: &str = "
    INSERT INTO pagewire.databases (id, tenant, name, created_unix_ms, version, page_size,
       page_count, updated_unix_ms, stored_bytes, first_commit_unix_ms, max_epoch) VALUES
       (3, 't', 'new.db', 1700000000000, 2, 4096, 3, 1700000002000, 16384, 1700000001000, 1);
    SELECT setval('pagewire.databases_id_seq', 3);
    INSERT INTO pagewire.versions (db_id, version, committed_unix_ms, page_size, page_count,
       changed_pages, grown_from) VALUES
       (3, 0, 1700000000000, 0, 0, '{}', NULL),
       (3, 1, 1700000001000, 4096, 2, '{}', 1),
       (3, 2, 1700000002000, 4096, 3, '{1}', 3);
    INSERT INTO pagewire.commit_ids (db_id, commit_id, version) VALUES
       (3, '\\x000000000000000000000000000000a1', 1),
       (3, '\\x000000000000000000000000000000a2', 2);";

/// A fresh database in the state the 0002 store left it: the rows of [`old_rows`] as
/// migration 0002 converted them, and [`ROWS_AT_0002`]; or `None` (skipped).
async fn database_at_0002(
    test: &str,
) -> anyhow::Result<Option<(TempPostgres, tokio_postgres::Client)>> {
    let Some((pg, client)) = old_database(test).await? else {
        return Ok(None);
    };
    client
        .batch_execute(include_str!(
            "../src/migrations/0002_growth_ranges_pin_age.sql"
        ))
        .await?;
    client
        .batch_execute(
            "INSERT INTO pagewire.migrations (version, description) \
             VALUES (2, 'growth as a range in change lists, pin age limit')",
        )
        .await?;
    client.batch_execute(ROWS_AT_0002).await?;
    for (no, v, fill) in [(1, 1, 11), (2, 1, 12), (1, 2, 21), (3, 2, 23)] {
        client
            .batch_execute(&format!(
                "INSERT INTO pagewire.pages (db_id, page_no, version, data) \
                 VALUES (3, {no}, {v}, {});",
                page_sql(fill)
            ))
            .await?;
    }
    Ok(Some((pg, client)))
}

/// Per database id: (name, incarnation, the tag on the database row).
async fn database_identities(
    client: &tokio_postgres::Client,
) -> anyhow::Result<Vec<(i64, String, Vec<u8>, Vec<u8>)>> {
    let rows = client
        .query(
            "SELECT id, name, incarnation, tag FROM pagewire.databases ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// Every version row's tag, by version, of database `db_id`.
async fn version_tags(
    client: &tokio_postgres::Client,
    db_id: i64,
) -> anyhow::Result<std::collections::BTreeMap<u64, VersionTag>> {
    let rows = client
        .query(
            "SELECT version, tag FROM pagewire.versions WHERE db_id = $1",
            &[&db_id],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let tag: Vec<u8> = r.get(1);
            let tag: [u8; 16] = tag
                .try_into()
                .map_err(|t: Vec<u8>| anyhow::anyhow!("tag of {} bytes", t.len()))?;
            Ok((r.get::<_, i64>(0) as u64, VersionTag(tag)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_0002_gets_incarnations_and_tags() -> anyhow::Result<()> {
    let test = "a_database_of_0002_gets_incarnations_and_tags";
    let Some((pg, client)) = database_at_0002(test).await? else {
        return Ok(());
    };
    let store = PostgresStore::connect(pg.url()).await?;
    let applied: Vec<i32> = client
        .query(
            "SELECT version FROM pagewire.migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied, [1, 2, 3, 4]);

    // Every database: a 16-byte incarnation, each its own; every version row: a 16-byte
    // tag, zeros for version 0, random (so distinct) for every other.
    let dbs = database_identities(&client).await?;
    assert_eq!(dbs.len(), 3);
    let mut incarnations: Vec<&Vec<u8>> = dbs.iter().map(|d| &d.2).collect();
    assert!(
        incarnations
            .iter()
            .all(|i| i.len() == 16 && i[..] != NO_TAG.0)
    );
    incarnations.sort();
    incarnations.dedup();
    assert_eq!(
        incarnations.len(),
        3,
        "distinct databases, distinct incarnations"
    );
    let mut tags = Vec::new();
    for (id, name, incarnation, newest_tag) in &dbs {
        let versions = version_tags(&client, *id).await?;
        let expected: Vec<u64> = match name.as_str() {
            "old.db" => (0..=5).collect(),
            "gc.db" => vec![7, 8],
            _ => (0..=2).collect(),
        };
        assert_eq!(
            versions.keys().copied().collect::<Vec<_>>(),
            expected,
            "{name}"
        );
        for (&v, tag) in &versions {
            assert_eq!(v == 0, *tag == NO_TAG, "{name} v{v}: {tag:?}");
        }
        tags.extend(versions.values().filter(|t| **t != NO_TAG).copied());
        let newest = *versions.keys().last().expect("a version row");
        assert_eq!(
            newest_tag[..],
            versions[&newest].0[..],
            "{name}: the row's tag is its newest version's"
        );

        // The store serves them.
        let k = DbKey::new("t", name.as_str());
        let state = store.open(&k, false).await?.0;
        assert_eq!(
            (state.version.0, &state.incarnation.0[..], state.tag),
            (newest, &incarnation[..], versions[&newest])
        );
        assert_eq!(store.info(&k).await?.state, state);
        for (&v, tag) in &versions {
            let view = store
                .begin_read(
                    &k,
                    BeginRead {
                        seen_version: Version(v),
                        ..at(0, ReadAt::Newest)
                    },
                )
                .await?;
            assert_eq!(view.state, state);
            assert_eq!(view.seen_tag, Some(*tag), "{name}: seen v{v}");
            if v > 0 {
                let read = store
                    .read_pages(&k, Version(v), &[1], at(0, ReadAt::Newest).pin)
                    .await?;
                assert_eq!(
                    (read.state.version.0, read.state.incarnation, read.state.tag),
                    (v, state.incarnation, *tag)
                );
            }
        }
        let past = store
            .begin_read(
                &k,
                BeginRead {
                    seen_version: Version(newest + 1),
                    ..at(0, ReadAt::Newest)
                },
            )
            .await?;
        assert_eq!(past.seen_tag, None, "{name}: past the newest");
    }
    let count = tags.len();
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), count, "every version its own tag");
    let gc = store
        .begin_read(
            &DbKey::new("t", "gc.db"),
            BeginRead {
                seen_version: Version::ZERO,
                ..at(0, ReadAt::Newest)
            },
        )
        .await?;
    assert_eq!(gc.seen_tag, None, "version 0's row is gone: no record");

    // The database written under 0002: its pages, its commit ids (with their versions'
    // tags), and commits that name its identity.
    let k = DbKey::new("t", "new.db");
    let state = store.open(&k, false).await?.0;
    let v = version_tags(&client, 3).await?;
    let pin = at(0, ReadAt::Newest).pin;
    let read = store.read_pages(&k, Version(2), &[1, 2, 3], pin).await?;
    assert_eq!(read.pages, [page(PS, 21), page(PS, 12), page(PS, 23)]);
    assert_eq!(
        store.begin_read(&k, at(1, ReadAt::Newest)).await?.changes,
        changes(&[1], Some(3))
    );
    let lease = store
        .acquire_lease(&k, "new", Duration::from_secs(60))
        .await?;
    assert_eq!((lease.epoch, lease.state), (2, state));
    let mut retry = conformance::commit(&lease, 0, PS, 2, &[(1, 11)]);
    retry.commit_id.0[15] = 0xa1;
    retry.commit_id.0[..15].fill(0);
    let done = store.precheck(&k, retry.header()).await?.expect("applied");
    assert_eq!(
        (
            done.version.0,
            done.already_applied,
            done.incarnation,
            done.tag
        ),
        (1, true, state.incarnation, Some(v[&1]))
    );
    assert_eq!(store.commit(&k, retry).await?, done);

    let ours = Identity {
        incarnation: Some(state.incarnation),
        version: Some((Version(2), v[&2])),
    };
    let others = [
        Identity {
            incarnation: Some(Incarnation([9; 16])),
            ..ours
        },
        Identity {
            version: Some((Version(2), v[&1])),
            ..ours
        },
    ];
    for identity in others {
        let c = Commit {
            identity,
            ..conformance::commit(&lease, 2, PS, 3, &[(1, 31)])
        };
        let early = store.precheck(&k, c.header()).await;
        assert!(
            matches!(early, Err(StoreError::Replaced(_))),
            "{identity:?}: {early:?}"
        );
        let late = store.commit(&k, c).await;
        assert!(
            matches!(late, Err(StoreError::Replaced(_))),
            "{identity:?}: {late:?}"
        );
    }
    let next = Commit {
        identity: ours,
        ..conformance::commit(&lease, 2, PS, 3, &[(1, 31)])
    };
    assert_eq!(store.precheck(&k, next.header()).await?, None);
    let applied = store.commit(&k, next).await?;
    let tag3 = applied.tag.expect("a new version has its tag");
    assert_eq!(
        (applied.version.0, applied.incarnation),
        (3, state.incarnation)
    );
    assert!(!tags.contains(&tag3) && tag3 != NO_TAG);
    assert_eq!(
        version_tags(&client, 3).await?[&3],
        tag3,
        "stored with its version"
    );
    let now = store.open(&k, false).await?.0;
    assert_eq!(
        (now.version.0, now.incarnation, now.tag),
        (3, state.incarnation, tag3)
    );

    // Connecting again applies nothing and changes no identity.
    drop(PostgresStore::connect(pg.url()).await?);
    let again = database_identities(&client).await?;
    assert_eq!(again[..2], dbs[..2]);
    assert_eq!((&again[2].2, &again[2].3[..]), (&dbs[2].2, &tag3.0[..]));
    Ok(())
}
