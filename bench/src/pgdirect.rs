//! Commit cost through the whole stack (SQLite -> VFS -> server -> PostgreSQL)
//! beside the same page writes done directly with tokio-postgres, in one run.

use std::time::Instant;

use rand::RngCore;

use crate::target::Target;

/// Pages a commit of `rows` updated rows writes: one row fills a 4 KiB leaf, so
/// a commit carries the leaves, page 1 and the interior pages above them.
const ROW_BYTES: i64 = 3000;

/// One row of the commit-size table (see `compare`).
pub type CostRow = (usize, f64, f64, f64, f64, f64);

/// Per size: (pages, stack ms per commit, stack commits/s, direct ms, direct
/// commits/s, ms SQLite itself spends on the same transaction on a local file
/// with no syncs: the part of the stack's time that is not pagewire's).
pub fn compare(
    pagewire: &Target,
    pg_url: &str,
    sizes: &[(usize, usize)],
) -> anyhow::Result<Vec<CostRow>> {
    let db = pagewire.open("pages.db")?;
    fill(&db)?;
    let dir = tempfile::tempdir()?;
    let local = rusqlite::Connection::open_with_flags_and_vfs(
        dir.path().join("pages.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
        "unix",
    )?;
    local.execute_batch("pragma journal_mode=memory; pragma synchronous=off")?;
    fill(&local)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (client, conn) = rt.block_on(tokio_postgres::connect(pg_url, tokio_postgres::NoTls))?;
    rt.spawn(conn);
    rt.block_on(client.batch_execute(
        "create table if not exists direct_pages(db bigint, page_no bigint, version bigint, data bytea, \
         primary key (db, page_no, version))",
    ))?;
    let mut out = Vec::new();
    for &(rows, iterations) in sizes {
        let (stack_ms, pages) = stack(&db, rows, iterations)?;
        let direct_ms = rt.block_on(direct(&client, pages, iterations))?;
        let sqlite_ms = updates(&local, rows, iterations)?;
        out.push((
            pages,
            stack_ms,
            1000.0 / stack_ms,
            direct_ms,
            1000.0 / direct_ms,
            sqlite_ms,
        ));
    }
    Ok(out)
}

fn fill(db: &rusqlite::Connection) -> anyhow::Result<()> {
    db.execute_batch("drop table if exists p; create table p(id integer primary key, v blob)")?;
    db.execute(
        &format!(
            "with recursive s(i) as (select 1 union all select i + 1 from s where i < 1000) \
                  insert into p(v) select randomblob({ROW_BYTES}) from s"
        ),
        [],
    )?;
    Ok(())
}

/// Mean ms per transaction updating `rows` rows.
fn updates(db: &rusqlite::Connection, rows: usize, iterations: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    for i in 0..iterations {
        let first = (i * rows) % 1000;
        db.execute(
            &format!("update p set v = randomblob({ROW_BYTES}) where id > ?1 and id <= ?1 + ?2"),
            [first as i64, rows as i64],
        )?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / iterations as f64)
}

/// Mean ms per commit updating `rows` rows, and the pages each commit carried.
fn stack(
    db: &rusqlite::Connection,
    rows: usize,
    iterations: usize,
) -> anyhow::Result<(f64, usize)> {
    let pages_before: u64 = pages_committed(db)?;
    let ms = updates(db, rows, iterations)?;
    let pages = (pages_committed(db)? - pages_before) as usize / iterations;
    Ok((ms, pages.max(1)))
}

/// Pages this process has sent in commits (from the VFS counters).
fn pages_committed(db: &rusqlite::Connection) -> anyhow::Result<u64> {
    let stats: String = db.query_row("pragma pagewire_stats", [], |r| r.get(0))?;
    stats
        .split_whitespace()
        .find_map(|kv| {
            kv.strip_prefix("pages_committed=")
                .and_then(|v| v.parse().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no pages_committed in {stats}"))
}

/// Mean ms per transaction inserting `pages` 4 KiB page versions in one statement.
async fn direct(
    client: &tokio_postgres::Client,
    pages: usize,
    iterations: usize,
) -> anyhow::Result<f64> {
    let mut rng = rand::rng();
    let mut data = vec![vec![0u8; 4096]; pages];
    let page_nos: Vec<i64> = (1..=pages as i64).collect();
    let started = Instant::now();
    for version in 1..=iterations as i64 {
        for d in &mut data {
            rng.fill_bytes(d);
        }
        client.batch_execute("begin").await?;
        client
            .execute(
                "insert into direct_pages(db, page_no, version, data) \
                 select $4, p, $2, d from unnest($1::bigint[], $3::bytea[]) as t(p, d)",
                &[&page_nos, &version, &data, &(pages as i64)],
            )
            .await?;
        client.batch_execute("commit").await?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / iterations as f64)
}
