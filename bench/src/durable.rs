//! Issue 14: the durable store. Commit latency and throughput of real SQLite through
//! the real VFS on the embedded store (and PostgreSQL) against local SQLite files, and
//! a server with many small databases: start time and resident memory.
//!
//! - An N-page commit is one autocommit `update` of N rows, each row (3000 bytes) on a
//!   leaf page of its own; SQLite also rewrites page 1 (the change counter) under a
//!   rollback journal and on pagewire, so a pagewire N-page commit sends N + 1 pages
//!   (measured: `pages_committed` of `PRAGMA pagewire_stats`). Latency is the whole
//!   statement. Writers: one thread and connection per database, for `seconds`.
//! - Many databases: a data directory filled in this process through `KvStore` (one
//!   real 2-page SQLite image committed to each database, many tasks at once so group
//!   commit batches them), then a server started on it: spawn to "listening on",
//!   VmRSS, `touch` databases opened through the VFS and read, VmRSS again.

use std::{
    path::Path,
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use pagewire_server_core::store::{Commit, DbKey, Identity, PageStore, random_id};
use pagewire_tests::Server;
use rusqlite::Connection;

use crate::{load::rss_bytes, target::Target};

/// How big the section's runs are.
pub struct Opts {
    /// Each timed run (latency, writers).
    pub seconds: f64,
    /// Concurrent writers.
    pub writers: usize,
    /// Databases of the many-databases test.
    pub databases: usize,
    /// Of which this many are opened through the VFS and read.
    pub touch: usize,
}

/// Rows of the commit table, each on a page of its own.
const ROWS: u32 = 10;
/// Tasks filling the data directory at once.
const FILL_TASKS: usize = 512;
/// Threads touching databases through the VFS.
const TOUCH_THREADS: usize = 8;
const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

/// One target's commit numbers.
#[derive(Default, Clone)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    commits_per_s: f64,
    /// Pages sent per commit (pagewire only).
    pages: Option<f64>,
}

struct Column {
    label: String,
    one: Latency,
    ten: Latency,
    many_per_s: f64,
}

/// Runs the section against `targets` (local WAL, local FULL, then pagewire stores)
/// and prints it.
pub fn run(targets: &[Target], opts: &Opts) -> anyhow::Result<()> {
    println!("\n## issue 14: durable store\n");
    println!("machine: {}", machine());
    let scratch = tempfile::Builder::new()
        .prefix("pagewire-bench-sync")
        .tempdir()?;
    let (sync_p50, sync_p99, syncs) = fdatasync_latency(scratch.path(), 200)?;
    println!(
        "raw fdatasync of a 4 KiB overwrite, same file system ({}): p50 {sync_p50:.3} ms, p99 {sync_p99:.3} ms ({syncs} syncs)",
        scratch.path().display()
    );
    let seconds = Duration::from_secs_f64(opts.seconds);
    let mut columns = Vec::new();
    for t in targets {
        eprintln!("durable: commits on {}", t.label());
        let one = latency(t, "durable-one.db", 1, seconds).context(t.label())?;
        let ten = latency(t, "durable-one.db", ROWS, seconds).context(t.label())?;
        let many_per_s = writers(t, opts.writers, ROWS, seconds).context(t.label())?;
        columns.push(Column {
            label: t.label(),
            one,
            ten,
            many_per_s,
        });
    }
    print_commits(&columns, opts);
    let many = many_databases(opts)?;
    many.print(opts);
    Ok(())
}

fn print_commits(columns: &[Column], opts: &Opts) {
    let label = |l: &str| match l {
        "local WAL" => "local WAL + NORMAL".to_owned(),
        "local FULL" => "local DELETE + FULL".to_owned(),
        "pagewire memory" => "pagewire memory (not durable)".to_owned(),
        other => other.to_owned(),
    };
    let mut head = "\n| commits (real SQLite; pagewire through the VFS) |".to_owned();
    for c in columns {
        head += &format!(" {} |", label(&c.label));
    }
    println!("{head}");
    println!("|---|{}", "---|".repeat(columns.len()));
    let row = |name: &str, f: &dyn Fn(&Column) -> String| {
        let mut line = format!("| {name} |");
        for c in columns {
            line += &format!(" {} |", f(c));
        }
        println!("{line}");
    };
    row("1-page commit p50 (ms)", &|c| {
        format!("{:.3}", c.one.p50_ms)
    });
    row("1-page commit p99 (ms)", &|c| {
        format!("{:.3}", c.one.p99_ms)
    });
    row("10-page commit p50 (ms)", &|c| {
        format!("{:.3}", c.ten.p50_ms)
    });
    row("10-page commit p99 (ms)", &|c| {
        format!("{:.3}", c.ten.p99_ms)
    });
    row("10-page commits/s, 1 writer", &|c| {
        format!("{:.0}", c.ten.commits_per_s)
    });
    row(
        &format!(
            "10-page commits/s, {} writers (own databases)",
            opts.writers
        ),
        &|c| format!("{:.0}", c.many_per_s),
    );
    row(&format!("{} writers / 1 writer", opts.writers), &|c| {
        format!("{:.1}x", c.many_per_s / c.ten.commits_per_s)
    });
    row(
        "10-page commit p50 / local DELETE + FULL",
        &|c| match columns.iter().find(|c| c.label == "local FULL") {
            Some(full) => format!("{:.2}x", c.ten.p50_ms / full.ten.p50_ms),
            None => "-".into(),
        },
    );
    row(
        "pages sent per commit (1-page / 10-page)",
        &|c| match (c.one.pages, c.ten.pages) {
            (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
            _ => "-".into(),
        },
    );
    let full = columns.iter().find(|c| c.label == "local FULL");
    if let (Some(e), Some(full)) = (
        columns.iter().find(|c| c.label == "pagewire embedded"),
        full,
    ) {
        let ratio = e.ten.p50_ms / full.ten.p50_ms;
        println!(
            "\ntargets (same run):\n- single-writer 10-page commit p50: embedded {:.3} ms = {ratio:.2}x local DELETE + FULL ({:.3} ms) (target <= 1.5x): {}",
            e.ten.p50_ms,
            full.ten.p50_ms,
            verdict(ratio <= 1.5)
        );
        let scale = e.many_per_s / e.ten.commits_per_s;
        println!(
            "- {} writers: embedded {:.0} commits/s = {scale:.1}x its single writer ({:.0} commits/s) (target >= 5x): {}",
            opts.writers,
            e.many_per_s,
            e.ten.commits_per_s,
            verdict(scale >= 5.0)
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT MET" }
}

/// "N cores (model), M GiB RAM, kernel K".
fn machine() -> String {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or("?".into(), |kb| format!("{:.0}", kb * 1024.0 / GIB));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("?".into(), |s| s.trim().to_owned());
    format!("{cores} cores ({model}), {mem} GiB RAM, Linux {kernel}")
}

/// p50 and p99 (ms) of `n` fdatasyncs, each after overwriting one 4 KiB block.
fn fdatasync_latency(dir: &Path, n: usize) -> anyhow::Result<(f64, f64, usize)> {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::File::create(dir.join("sync-probe"))?;
    let block = vec![7u8; 4096];
    file.write_all(&block)?;
    file.sync_all()?;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        file.seek(SeekFrom::Start(0))?;
        let mut b = block.clone();
        b[0] = i as u8;
        file.write_all(&b)?;
        let t0 = Instant::now();
        file.sync_data()?;
        lat.push(t0.elapsed().as_secs_f64());
    }
    Ok((pct(&mut lat, 0.50), pct(&mut lat, 0.99), n))
}

/// The `p` quantile of `lat` (seconds) in ms.
fn pct(lat: &mut [f64], p: f64) -> f64 {
    lat.sort_by(f64::total_cmp);
    lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
        * 1000.0
}

/// Database `name` with a table of `ROWS` rows of 3000 bytes: a leaf page each.
fn prepare(t: &Target, name: &str) -> anyhow::Result<Connection> {
    let db = t.open(name)?;
    db.execute_batch(
        "drop table if exists r; create table r(id integer primary key, n int, v blob)",
    )?;
    db.execute(
        "with recursive s(i) as (select 1 union all select i + 1 from s where i < ?1) \
         insert into r(n, v) select 0, randomblob(3000) from s",
        [ROWS],
    )?;
    Ok(db)
}

/// One commit of `pages` pages (plus page 1).
fn commit(db: &Connection, pages: u32) -> anyhow::Result<()> {
    let changed = db.execute("update r set n = n + 1 where id <= ?1", [pages])?;
    anyhow::ensure!(changed == pages as usize, "{changed} rows updated");
    Ok(())
}

fn stat(db: &Connection, key: &str) -> anyhow::Result<u64> {
    let stats: String = db.query_row("pragma pagewire_stats", [], |r| r.get(0))?;
    stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .with_context(|| format!("no {key} in {stats}"))
}

/// One writer's `pages`-page commits for `seconds`.
fn latency(t: &Target, name: &str, pages: u32, seconds: Duration) -> anyhow::Result<Latency> {
    let db = prepare(t, name)?;
    // Warm up: the write lease, the connection, a fresh server's first-commit hold.
    for _ in 0..20 {
        commit(&db, pages)?;
    }
    let counters = |db: &Connection| -> anyhow::Result<Option<(u64, u64)>> {
        if t.is_local() {
            return Ok(None);
        }
        Ok(Some((stat(db, "commit")?, stat(db, "pages_committed")?)))
    };
    let before = counters(&db)?;
    let mut lat = Vec::new();
    let started = Instant::now();
    while started.elapsed() < seconds || lat.len() < 10 {
        let t0 = Instant::now();
        commit(&db, pages)?;
        lat.push(t0.elapsed().as_secs_f64());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = counters(&db)?;
    let pages = match (before, after) {
        (Some((c0, p0)), Some((c1, p1))) if c1 > c0 => Some((p1 - p0) as f64 / (c1 - c0) as f64),
        _ => None,
    };
    Ok(Latency {
        commits_per_s: lat.len() as f64 / elapsed,
        p50_ms: pct(&mut lat, 0.50),
        p99_ms: pct(&mut lat, 0.99),
        pages,
    })
}

/// `n` writers, each on a database and connection of its own, committing `pages`
/// pages at a time for `seconds`: commits per second, all writers together.
fn writers(t: &Target, n: usize, pages: u32, seconds: Duration) -> anyhow::Result<f64> {
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let ready = Barrier::new(n + 1);
    thread::scope(|s| -> anyhow::Result<f64> {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (stop, commits, ready) = (&stop, &commits, &ready);
                s.spawn(move || -> anyhow::Result<()> {
                    let setup = prepare(t, &format!("durable-w{i}.db")).and_then(|db| {
                        commit(&db, pages)?;
                        Ok(db)
                    });
                    ready.wait();
                    let db = setup?;
                    while !stop.load(Ordering::Relaxed) {
                        commit(&db, pages)?;
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        ready.wait();
        let started = Instant::now();
        thread::sleep(seconds);
        stop.store(true, Ordering::Relaxed);
        let mut result = Ok(());
        for h in handles {
            let r = h
                .join()
                .map_err(|_| anyhow::anyhow!("writer thread panicked"))
                .and_then(|r| r);
            if result.is_ok() {
                result = r;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        result?;
        Ok(commits.load(Ordering::Relaxed) as f64 / elapsed)
    })
}

// ---------------------------------------------------------------------------------
// Many databases

struct Many {
    databases: usize,
    fill_s: f64,
    file_bytes: u64,
    start_s: f64,
    rss_start: Option<u64>,
    touched: usize,
    touch_s: f64,
    rss_touched: Option<u64>,
    hwm: Option<u64>,
}

impl Many {
    fn print(&self, opts: &Opts) {
        let mib = |b: Option<u64>| b.map_or("?".into(), |b| format!("{:.0} MiB", b as f64 / MIB));
        let under = |b: Option<u64>| verdict(b.is_some_and(|b| (b as f64) < GIB));
        println!(
            "\n| {} databases of 2 pages, embedded store | value | target |",
            self.databases
        );
        println!("|---|---|---|");
        println!(
            "| fill the data directory in-process (KvStore, {FILL_TASKS} tasks: create, lease, commit, release) | {:.1} s ({:.0} databases/s) | |",
            self.fill_s,
            self.databases as f64 / self.fill_s
        );
        println!("| data file | {:.0} MiB | |", self.file_bytes as f64 / MIB);
        println!(
            "| server start (spawn to \"listening on\") | {:.2} s | < 10 s: {} |",
            self.start_s,
            verdict(self.start_s < 10.0)
        );
        println!(
            "| server VmRSS after start | {} | < 1 GiB: {} |",
            mib(self.rss_start),
            under(self.rss_start)
        );
        println!(
            "| touch {} databases through the VFS ({TOUCH_THREADS} threads: open, read a row) | {:.2} s ({:.0} databases/s) | |",
            self.touched,
            self.touch_s,
            self.touched as f64 / self.touch_s
        );
        println!(
            "| server VmRSS after touching | {} | < 1 GiB: {} |",
            mib(self.rss_touched),
            under(self.rss_touched)
        );
        println!("| server peak VmRSS (VmHWM) | {} | |", mib(self.hwm));
        let _ = opts;
    }
}

/// The two pages of a real SQLite database (page size 4096, one table of one row).
fn template_pages() -> anyhow::Result<(Bytes, Bytes)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("template.db");
    // A local file: the bench made the pagewire VFS the default.
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE;
    let db = Connection::open_with_flags_and_vfs(&path, flags, c"unix")?;
    db.execute_batch(
        "pragma page_size = 4096; pragma journal_mode = delete; \
         create table t(x); insert into t values (1);",
    )?;
    drop(db);
    let bytes = std::fs::read(&path)?;
    anyhow::ensure!(
        bytes.len() == 8192,
        "the template database is {} bytes, not 2 pages",
        bytes.len()
    );
    Ok((
        Bytes::copy_from_slice(&bytes[..4096]),
        Bytes::copy_from_slice(&bytes[4096..]),
    ))
}

fn many_key(i: usize) -> DbKey {
    // The VFS's `file:bench/<name>` (Target::open), in the tokenless server's tenant.
    DbKey::new(
        pagewire_server_core::auth::DEV_TENANT,
        format!("bench/many/{i}.db"),
    )
}

/// Fills data directory `dir` with `n` databases holding `pages`.
async fn fill(dir: &Path, n: usize, pages: (Bytes, Bytes)) -> anyhow::Result<u64> {
    let (store, engine) = pagewire_store_kv::open_data_dir(dir).await?;
    let store = Arc::new(store);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..FILL_TASKS {
        let (store, next, pages) = (store.clone(), next.clone(), pages.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let key = many_key(i);
                store.open(&key, true).await?;
                let lease = store
                    .acquire_lease(&key, "pagewire-bench", Duration::from_secs(60))
                    .await?;
                let (state, _) = store.open(&key, false).await?;
                store
                    .commit(
                        &key,
                        Commit {
                            lease_id: lease.lease_id,
                            epoch: lease.epoch,
                            base_version: state.version,
                            commit_id: random_id(),
                            identity: Identity::default(),
                            page_size: 4096,
                            page_count: 2,
                            pages: vec![(1, pages.0.clone()), (2, pages.1.clone())],
                        },
                    )
                    .await
                    .with_context(|| format!("committing {key}"))?;
                store
                    .release_lease(&key, lease.lease_id, lease.epoch)
                    .await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let bytes = engine.file_bytes();
    drop(store);
    drop(engine); // the last reference: waits for the committer, closes the file
    Ok(bytes)
}

/// Waits until no one holds the data directory's lock (the filling engine is gone).
fn wait_unlocked(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(pagewire_store_kv::data_dir::LOCK_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        if file.try_lock().is_ok() {
            return Ok(()); // unlocked when `file` is dropped
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} is still locked after 30 s",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// VmHWM (peak resident memory) of a process.
fn hwm_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn many_databases(opts: &Opts) -> anyhow::Result<Many> {
    let n = opts.databases;
    let dir = tempfile::Builder::new()
        .prefix("pagewire-bench-many")
        .tempdir()?;
    let data = dir.path().join("data");
    eprintln!("durable: filling {} with {n} databases", data.display());
    let pages = template_pages()?;
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let file_bytes = runtime.block_on(fill(&data, n, pages))?;
    drop(runtime);
    wait_unlocked(&data)?;
    let fill_s = started.elapsed().as_secs_f64();

    let data_arg = data.display().to_string();
    let started = Instant::now();
    let server = Server::start_with(&["--store", "embedded", "--data-dir", &data_arg])?;
    let start_s = started.elapsed().as_secs_f64();
    let pid = server.pid() as u32;
    let rss_start = rss_bytes(pid);

    let touched = opts.touch.min(n);
    let t = Target::Pagewire {
        url: server.url.clone(),
        label: "embedded, many databases".into(),
        no_lease_url: None,
    };
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..TOUCH_THREADS)
            .map(|_| {
                let (t, next) = (&t, &next);
                s.spawn(move || -> anyhow::Result<()> {
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= touched {
                            return Ok(());
                        }
                        // Spread over the whole catalog.
                        let i = k * n / touched;
                        let db = t.open_ro(&format!("many/{i}.db"))?;
                        let x: i64 = db
                            .query_row("select x from t", [], |r| r.get(0))
                            .with_context(|| format!("reading many/{i}.db"))?;
                        anyhow::ensure!(x == 1, "many/{i}.db holds {x}");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("touch thread panicked"))??;
        }
        Ok(())
    })?;
    let touch_s = started.elapsed().as_secs_f64();
    let rss_touched = rss_bytes(pid);
    let hwm = hwm_bytes(pid);
    drop(server);
    Ok(Many {
        databases: n,
        fill_s,
        file_bytes,
        start_s,
        rss_start,
        touched,
        touch_s,
        rss_touched,
        hwm,
    })
}
