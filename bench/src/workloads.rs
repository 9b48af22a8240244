//! The workloads, each run against every target; each returns one number.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::Rng;
use rusqlite::Connection;

use crate::{leases, target::Target};

/// How big the runs are (`--quick` shrinks them).
#[derive(Clone, Copy)]
pub struct Sizes {
    pub rows: i64,
    pub point_selects: u32,
    pub seconds: f64,
}

pub struct Workload {
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub run: fn(&Target, &Sizes) -> anyhow::Result<f64>,
}

pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "bulk insert (200 tx x 50 rows)",
        unit: "tx/s",
        higher_is_better: true,
        run: bulk_insert,
    },
    Workload {
        name: "warm point select, writer (own tx)",
        unit: "ops/s",
        higher_is_better: true,
        run: writer_point_selects,
    },
    Workload {
        name: "warm point select, reader (own tx)",
        unit: "ops/s",
        higher_is_better: true,
        run: warm_point_selects,
    },
    Workload {
        name: "cold point select, new process",
        unit: "ops/s",
        higher_is_better: true,
        run: cold_point_selects,
    },
    Workload {
        name: "reopen + first query, new process",
        unit: "ms",
        higher_is_better: false,
        run: reopen_first_query,
    },
    Workload {
        name: "full-table aggregate",
        unit: "ms",
        higher_is_better: false,
        run: aggregate,
    },
    Workload {
        name: "range scan (100 rows)",
        unit: "ops/s",
        higher_is_better: true,
        run: range_scans,
    },
    Workload {
        name: "50/50 read/write, 8 threads",
        unit: "ops/s",
        higher_is_better: true,
        run: mixed,
    },
    Workload {
        name: "replica reads during commits",
        unit: "ops/s",
        higher_is_better: true,
        run: replica_reads,
    },
    // Read leases (bench/src/leases.rs): a replica that is a client of its own.
    Workload {
        name: "replica point select, read lease (own tx)",
        unit: "ops/s",
        higher_is_better: true,
        run: leases::replica_selects_leased,
    },
    Workload {
        name: "replica point select, no read lease (own tx)",
        unit: "ops/s",
        higher_is_better: true,
        run: leases::replica_selects_no_lease,
    },
    Workload {
        name: "replica reads during commits, other client, read lease",
        unit: "ops/s",
        higher_is_better: true,
        run: leases::replica_during_commits_leased,
    },
    Workload {
        name: "replica reads during commits, other client, no read lease",
        unit: "ops/s",
        higher_is_better: true,
        run: leases::replica_during_commits_no_lease,
    },
    Workload {
        name: "commit p50, no read-lease holders",
        unit: "ms",
        higher_is_better: false,
        run: leases::commit_p50_no_holders,
    },
    Workload {
        name: "commit mean, no read-lease holders",
        unit: "ms",
        higher_is_better: false,
        run: leases::commit_mean_no_holders,
    },
    Workload {
        name: "commit p50, 8 read-lease holders (processes)",
        unit: "ms",
        higher_is_better: false,
        run: leases::commit_p50_holders,
    },
    Workload {
        name: "commit mean, 8 read-lease holders (processes)",
        unit: "ms",
        higher_is_better: false,
        run: leases::commit_mean_holders,
    },
];

/// The shared read-mostly table: `rows` rows of 100 bytes.
pub fn prepare_data(t: &Target, sizes: &Sizes) -> anyhow::Result<()> {
    prepare_data_with(t, sizes, "")
}

/// [`prepare_data`], the database opened with the URI parameters `params` (`&k=v...`).
pub fn prepare_data_with(t: &Target, sizes: &Sizes, params: &str) -> anyhow::Result<()> {
    let db = t.open_with("data.db", false, params)?;
    db.execute_batch("drop table if exists kv; create table kv(id integer primary key, v blob)")?;
    db.execute(
        "with recursive s(i) as (select 1 union all select i + 1 from s where i < ?1) \
         insert into kv(v) select randomblob(100) from s",
        [sizes.rows],
    )?;
    Ok(())
}

pub fn point(db: &Connection, id: i64) -> anyhow::Result<()> {
    let n: i64 = db.query_row("select length(v) from kv where id = ?1", [id], |r| r.get(0))?;
    anyhow::ensure!(n == 100, "row {id} has {n} bytes");
    Ok(())
}

fn bulk_insert(t: &Target, _: &Sizes) -> anyhow::Result<f64> {
    let db = t.open("bulk.db")?;
    db.execute_batch("drop table if exists b; create table b(id integer primary key, v blob)")?;
    let started = Instant::now();
    for _ in 0..200 {
        let tx = db.unchecked_transaction()?;
        for _ in 0..50 {
            tx.execute("insert into b(v) values (randomblob(100))", [])?;
        }
        tx.commit()?;
    }
    Ok(200.0 / started.elapsed().as_secs_f64())
}

/// Point selects by a connection that has just written (on pagewire it holds
/// the write lease, so its reads need no round trip).
fn writer_point_selects(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    let db = t.open("data.db")?;
    db.execute_batch("create table if not exists touch(x); insert into touch values (1)")?;
    selects(&db, sizes)
}

/// Point selects by a connection that does not write (on pagewire: one
/// BeginRead round trip per read transaction).
fn warm_point_selects(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    selects(&t.open_ro("data.db")?, sizes)
}

fn selects(db: &Connection, sizes: &Sizes) -> anyhow::Result<f64> {
    db.query_row("select sum(length(v)) from kv", [], |r| r.get::<_, i64>(0))?;
    let mut rng = rand::rng();
    let started = Instant::now();
    for _ in 0..sizes.point_selects {
        point(db, rng.random_range(1..=sizes.rows))?;
    }
    Ok(sizes.point_selects as f64 / started.elapsed().as_secs_f64())
}

/// Runs `pagewire-bench --child cold ...` and returns (reopen + first query
/// seconds, cold selects per second); median of three processes.
fn cold_child(t: &Target, sizes: &Sizes) -> anyhow::Result<(f64, f64)> {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args([
                "--child-cold",
                &crate::child::spec(t),
                &sizes.rows.to_string(),
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(
            out.status.success(),
            "cold child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut it = text.split_whitespace().map(str::parse::<f64>);
        let (Some(Ok(a)), Some(Ok(b))) = (it.next(), it.next()) else {
            anyhow::bail!("cold child said {text:?}")
        };
        runs.push((a, b));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(runs[1])
}

fn cold_point_selects(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    Ok(cold_child(t, sizes)?.1)
}

fn reopen_first_query(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    Ok(cold_child(t, sizes)?.0 * 1000.0)
}

fn aggregate(t: &Target, _: &Sizes) -> anyhow::Result<f64> {
    let db = t.open("data.db")?;
    let scan = || {
        db.query_row("select count(*), sum(length(v)) from kv", [], |r| {
            r.get::<_, i64>(1)
        })
    };
    scan()?;
    let started = Instant::now();
    for _ in 0..10 {
        scan()?;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / 10.0)
}

fn range_scans(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    let db = t.open("data.db")?;
    db.query_row("select sum(length(v)) from kv", [], |r| r.get::<_, i64>(0))?;
    let mut rng = rand::rng();
    let n = sizes.point_selects / 10;
    let started = Instant::now();
    for _ in 0..n {
        let lo = rng.random_range(1..=sizes.rows - 100);
        let s: i64 = db.query_row(
            "select sum(length(v)) from kv where id between ?1 and ?1 + 99",
            [lo],
            |r| r.get(0),
        )?;
        anyhow::ensure!(s == 100 * 100, "range sum {s}");
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Runs `f` on `threads` threads until `seconds` pass; returns total ops/s.
pub fn for_a_while(
    threads: usize,
    seconds: f64,
    f: impl Fn(usize, &AtomicBool) -> anyhow::Result<u64> + Sync,
) -> anyhow::Result<f64> {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let total = thread::scope(|s| {
        let (f, stop) = (&f, &stop);
        let handles: Vec<_> = (0..threads).map(|i| s.spawn(move || f(i, stop))).collect();
        thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("thread panicked"))?)
            .sum::<anyhow::Result<u64>>()
    })?;
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn mixed(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    {
        let db = t.open("mix.db")?;
        db.execute_batch("drop table if exists m; create table m(id integer primary key, n int)")?;
        db.execute("with recursive s(i) as (select 1 union all select i + 1 from s where i < 10000) insert into m(n) select 0 from s", [])?;
    }
    for_a_while(8, sizes.seconds, |_, stop| {
        let db = t.open("mix.db")?;
        let mut rng = rand::rng();
        let mut ops = 0;
        while !stop.load(Ordering::Relaxed) {
            let id = rng.random_range(1..=10000);
            if rng.random_bool(0.5) {
                db.query_row("select n from m where id = ?1", [id], |r| {
                    r.get::<_, i64>(0)
                })?;
            } else {
                db.execute("update m set n = n + 1 where id = ?1", [id])?;
            }
            ops += 1;
        }
        Ok(ops)
    })
}

fn replica_reads(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    {
        let db = t.open("data.db")?;
        db.execute_batch("create table if not exists w(v blob)")?;
    }
    let commits = Arc::new(AtomicU64::new(0));
    let reads = for_a_while(2, sizes.seconds, |i, stop| {
        if i == 0 {
            let db = t.open("data.db").context("writer")?;
            while !stop.load(Ordering::Relaxed) {
                db.execute("insert into w values (randomblob(50))", [])?;
                commits.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(0);
        }
        let db = t.open_ro("data.db").context("replica")?;
        let mut rng = rand::rng();
        let mut ops = 0;
        while !stop.load(Ordering::Relaxed) {
            point(&db, rng.random_range(1..=sizes.rows))?;
            ops += 1;
        }
        Ok(ops)
    })?;
    anyhow::ensure!(
        commits.load(Ordering::Relaxed) > 0,
        "the writer never committed"
    );
    Ok(reads)
}
