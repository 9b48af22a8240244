//! What branches and restores cost on a big database: one built through the VFS (4 KiB
//! pages, 1 MiB rows, 16 MiB per transaction) on each store, then
//!
//! - ForkDatabase of it (one RPC; nothing is copied, so the time does not grow with
//!   the size: shown next to a fork of a 1 MiB database), and a first query on the
//!   branch (read through to the source);
//! - RestoreDatabase undoing a small change (one row updated) and a bigger one (64
//!   rows, 64 MiB, replaced): one RPC each, writing only the pages changed since.
//!
//! Run: `target/release/pagewire-bench --history [--history-mib 1024]`. (The bench's
//! databases are named `bench/<name>`, as `Target::open` names them.)

use std::time::Instant;

use pagewire_proto::v1 as pb;
use pagewire_tests::Server;
use pagewire_tests::admin::authed;
use pb::admin_client::AdminClient;

use crate::target::Target;

/// Rows (1 MiB each) per transaction while building.
const ROWS_PER_TXN: usize = 16;

fn build(t: &Target, name: &str, mib: usize) -> anyhow::Result<f64> {
    let db = t.open(name)?;
    db.execute_batch("create table t(id integer primary key, b blob)")?;
    let started = Instant::now();
    for chunk in (0..mib).collect::<Vec<_>>().chunks(ROWS_PER_TXN) {
        db.execute_batch("begin")?;
        for _ in chunk {
            db.execute("insert into t(b) values (randomblob(1048576))", [])?;
        }
        db.execute_batch("commit")?;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn version(t: &Target, name: &str) -> anyhow::Result<u64> {
    let db = t.open(name)?;
    db.query_row("select count(*) from t", [], |_| Ok(()))?;
    let v: String = db.query_row("pragma pagewire_version", [], |r| r.get(0))?;
    Ok(v.parse()?)
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// One store's rows of the table.
fn measure(label: &str, server: &Server, mib: usize) -> anyhow::Result<()> {
    let t = Target::Pagewire {
        url: server.url.clone(),
        label: label.into(),
        no_lease_url: None,
    };
    let built = build(&t, "big.db", mib)?;
    build(&t, "small.db", 1)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut admin = AdminClient::new(rt.block_on(authed(&server.url, "bench"))?);
    let fork = |admin: &mut AdminClient<_>, source: &str, name: &str| -> anyhow::Result<f64> {
        let started = Instant::now();
        rt.block_on(admin.fork_database(pb::ForkDatabaseRequest {
            source: format!("bench/{source}"),
            name: format!("bench/{name}"),
            at: None,
        }))?;
        Ok(ms(started))
    };
    let small = (0..5)
        .map(|i| fork(&mut admin, "small.db", &format!("small-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let big = (0..5)
        .map(|i| fork(&mut admin, "big.db", &format!("big-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let branch = t.open("big-0")?;
    let rows: i64 = branch.query_row("select count(*) from t", [], |r| r.get(0))?;
    let first_query = ms(started);
    anyhow::ensure!(rows == mib as i64, "the branch has {rows} rows");

    let mut restore_after = |change: &str| -> anyhow::Result<(f64, u64)> {
        let before = version(&t, "big.db")?;
        t.open("big.db")?.execute_batch(change)?;
        let started = Instant::now();
        let done = rt.block_on(admin.restore_database(pb::RestoreDatabaseRequest {
            name: "bench/big.db".into(),
            to: Some(pb::HistoryPoint {
                at: Some(pb::history_point::At::Version(before)),
            }),
            wait_ms: 0,
        }))?;
        Ok((ms(started), done.into_inner().pages_written))
    };
    let one = restore_after("update t set b = randomblob(1048576) where id = 7")?;
    let many = restore_after("begin; update t set b = randomblob(1048576) where id <= 64; commit")?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "| {label} | {mib} MiB (built in {built:.1} s) | {:.2} ms | {:.2} ms | {first_query:.1} ms \
         | {:.1} ms ({} pages) | {:.1} ms ({} pages) |",
        median(small),
        median(big),
        one.0,
        one.1,
        many.0,
        many.1,
    );
    Ok(())
}

pub fn run(mib: usize, postgres: bool) -> anyhow::Result<()> {
    crate::load_vfs()?;
    println!(
        "| store | database | fork 1 MiB (median of 5, 1 RPC) | fork of it (median of 5, 1 RPC) \
         | first count(*) on the branch | restore undoing 1 row (1 RPC) | restore undoing 64 rows (1 RPC) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let memory = crate::memory_server(&[])?;
    measure("memory", &memory, mib)?;
    drop(memory);
    let (embedded, _dir) = crate::embedded_server(&[])?;
    measure("embedded", &embedded, mib)?;
    drop(embedded);
    if postgres {
        match pagewire_tests::postgres::TempPostgres::start() {
            Ok(pg) => {
                let server = Server::start_with(&["--store", pg.url()])?;
                measure("postgres", &server, mib)?;
            }
            Err(e) => println!("(PostgreSQL left out: {e})"),
        }
    }
    Ok(())
}
