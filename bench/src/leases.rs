//! Read leases (issue 7): replica read transactions with and without a read lease,
//! and what read-lease holders cost the writer's commits.
//!
//! - Replica point selects: a read-only client of its own (`token=`, so it shares
//!   nothing with any writer in this process), warm cache, one read transaction per
//!   select; with a read lease (held before timing starts) and against a second
//!   server started with `--read-lease-ttl 0s`. `PRAGMA pagewire_stats` deltas
//!   (`begin_read`, `local_reads`) show which path ran.
//! - Commit latency: single-row autocommit updates by one writer, with no read-lease
//!   holders and with 8, each a separate process (`--child-holder`) that runs a read
//!   transaction every 20 ms and has shown `lease=held` before timing starts. On a
//!   local file the "holders" are 8 reader processes doing the same. The writer's
//!   own read lease (its first read transaction, before it held the write lease,
//!   started a Watch stream) is waited out first, so "none" means none.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use pagewire_proto::v1::{GetMetricsRequest, Metrics, admin_client::AdminClient};
use rand::Rng;
use rusqlite::Connection;

use crate::{report::note, target::Target, workloads::Sizes};

/// Read-lease holder processes in the commit-latency rows.
pub const HOLDERS: usize = 8;
/// How often a holder runs a read transaction (`PAGEWIRE_BENCH_HOLDER_PERIOD_MS`
/// overrides it: a holder that reads less often than commits happen gives its lease
/// back with its next acknowledgement, so the period decides how many stay holders).
fn holder_period() -> Duration {
    let ms = std::env::var("PAGEWIRE_BENCH_HOLDER_PERIOD_MS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok());
    Duration::from_secs_f64(ms.unwrap_or(20.0) / 1000.0)
}
/// The commit-latency database and its rows.
const COMMITS_DB: &str = "commits.db";
const COMMIT_ROWS: i64 = 1000;

// ---------------------------------------------------------------------------------
// Replica point selects

pub fn replica_selects_leased(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    replica_selects(t, sizes, "replica-leased")
}

pub fn replica_selects_no_lease(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    replica_selects(&t.without_read_leases()?, sizes, "replica-unleased")
}

fn replica_selects(t: &Target, sizes: &Sizes, token: &str) -> anyhow::Result<f64> {
    let db = open_replica(t, "data.db", token)?;
    db.query_row("select sum(length(v)) from kv", [], |r| r.get::<_, i64>(0))?;
    let mut rng = rand::rng();
    let mut point = || crate::workloads::point(&db, rng.random_range(1..=sizes.rows));
    if leased(t) {
        await_local_reads(&db, &mut point, true, Duration::from_secs(10))?;
    } else {
        point()?;
    }
    let before = Probe::take(&db, t)?;
    // point_selects, or as many as fit in `seconds` where each is a round trip.
    let started = Instant::now();
    let mut n = 0;
    while n < sizes.point_selects && (n < 200 || started.elapsed().as_secs_f64() < sizes.seconds) {
        point()?;
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let after = Probe::take(&db, t)?;
    if !t.is_local() {
        note(format!(
            "{}: {n} replica point selects ({token}): {}; lease before: {}, after: {}",
            t.label(),
            after.delta(&before),
            before.lease,
            after.lease
        ));
    }
    Ok(rate)
}

fn leased(t: &Target) -> bool {
    matches!(
        t,
        Target::Pagewire {
            no_lease_url: Some(_),
            ..
        }
    )
}

/// A read-only connection; on pagewire a client of its own (its own token).
fn open_replica(t: &Target, name: &str, token: &str) -> anyhow::Result<Connection> {
    t.open_with(name, true, &format!("&token={token}"))
}

/// Runs `read` until the connection holds a read lease and a read transaction has
/// started with no RPC (`local_reads` grew), so timing starts on the fast path.
fn await_local_reads(
    db: &Connection,
    read: &mut impl FnMut() -> anyhow::Result<()>,
    lease: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let before = stat(db, "local_reads")?;
        read()?;
        if stat(db, "local_reads")? > before
            && (!lease || pragma(db, "pagewire_read_lease")?.starts_with("lease=held"))
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no read lease after {timeout:?}: {}",
            pragma(db, "pagewire_read_lease")?
        );
        thread::sleep(Duration::from_millis(2));
    }
}

// ---------------------------------------------------------------------------------
// Replica reads while a writer (another client) commits

pub fn replica_during_commits_leased(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    replica_during_commits(t, sizes, "replica-busy-leased")
}

pub fn replica_during_commits_no_lease(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    replica_during_commits(&t.without_read_leases()?, sizes, "replica-busy-unleased")
}

fn replica_during_commits(t: &Target, sizes: &Sizes, token: &str) -> anyhow::Result<f64> {
    t.open("data.db")?
        .execute_batch("create table if not exists w(v blob)")?;
    let replica = open_replica(t, "data.db", token)?;
    replica.query_row("select sum(length(v)) from kv", [], |r| r.get::<_, i64>(0))?;
    let mut rng = rand::rng();
    if leased(t) {
        await_local_reads(
            &replica,
            &mut || crate::workloads::point(&replica, rng.random_range(1..=sizes.rows)),
            true,
            Duration::from_secs(10),
        )?;
    }
    let before = Probe::take(&replica, t)?;
    let replica = Mutex::new(replica);
    let commits = AtomicU64::new(0);
    let reads = crate::workloads::for_a_while(2, sizes.seconds, |i, stop| {
        if i == 0 {
            let db = t.open("data.db").context("writer")?;
            while !stop.load(Ordering::Relaxed) {
                db.execute("insert into w values (randomblob(50))", [])?;
                commits.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(0);
        }
        let db = replica.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut rng = rand::rng();
        let mut ops = 0;
        while !stop.load(Ordering::Relaxed) {
            crate::workloads::point(&db, rng.random_range(1..=sizes.rows))?;
            ops += 1;
        }
        Ok(ops)
    })?;
    let commits = commits.load(Ordering::Relaxed);
    anyhow::ensure!(commits > 0, "the writer never committed");
    if !t.is_local() {
        let replica = replica
            .into_inner()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        let after = Probe::take(&replica, t)?;
        note(format!(
            "{}: replica reads during commits ({token}): {:.0} reads/s while the writer made {commits} commits ({:.0}/s): {}",
            t.label(),
            reads,
            commits as f64 / sizes.seconds,
            after.delta(&before)
        ));
    }
    Ok(reads)
}

// ---------------------------------------------------------------------------------
// Commit latency with read-lease holders

#[derive(Clone, Copy)]
struct Latency {
    p50_ms: f64,
    mean_ms: f64,
}

/// Measured once per (target, holders) for the p50 row; the mean row reuses it.
static LATENCIES: Mutex<Option<HashMap<(String, usize), Latency>>> = Mutex::new(None);

fn latency(t: &Target, sizes: &Sizes, holders: usize) -> anyhow::Result<Latency> {
    let key = (t.label(), holders);
    let cached = LATENCIES
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .as_ref()
        .and_then(|m| m.get(&key).copied());
    if let Some(l) = cached {
        return Ok(l);
    }
    let l = commit_latency(t, sizes, holders)?;
    LATENCIES
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .get_or_insert_default()
        .insert(key, l);
    Ok(l)
}

pub fn commit_p50_no_holders(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    Ok(latency(t, sizes, 0)?.p50_ms)
}

pub fn commit_mean_no_holders(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    Ok(latency(t, sizes, 0)?.mean_ms)
}

pub fn commit_p50_holders(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    Ok(latency(t, sizes, HOLDERS)?.p50_ms)
}

pub fn commit_mean_holders(t: &Target, sizes: &Sizes) -> anyhow::Result<f64> {
    Ok(latency(t, sizes, HOLDERS)?.mean_ms)
}

fn commit_latency(t: &Target, sizes: &Sizes, holders: usize) -> anyhow::Result<Latency> {
    let (l, text) = measure_commits(t, sizes, holders, HolderKind::default())?;
    note(text);
    Ok(l)
}

/// Commit latency on the memory store against the number of holder processes
/// (`--lease-scan`).
pub fn scan(t: &Target, sizes: &Sizes, counts: &[usize], kind: HolderKind) -> anyhow::Result<()> {
    println!("commit latency against read-lease holders ({}):", t.label());
    for &n in counts {
        let (_, text) = measure_commits(t, sizes, n, kind)?;
        println!("- {text}");
    }
    let (_, text) = measure_commits(&t.without_read_leases()?, sizes, 0, kind)?;
    println!("- {text}");
    Ok(())
}

fn measure_commits(
    t: &Target,
    sizes: &Sizes,
    holders: usize,
    kind: HolderKind,
) -> anyhow::Result<(Latency, String)> {
    // The writer's first read transaction (before it held the write lease) may have
    // taken a read lease, which its own commits would wait for: lease_idle=1s ends
    // that Watch stream soon after it only writes, and timing waits until the writer
    // holds no read lease, so "no holders" means none and "8" means 8.
    let db = t.open_with(COMMITS_DB, false, "&lease_idle=1s")?;
    db.execute_batch("create table if not exists c(id integer primary key, n int)")?;
    let have: i64 = db.query_row("select count(*) from c", [], |r| r.get(0))?;
    if have < COMMIT_ROWS {
        db.execute(
            "with recursive s(i) as (select 1 union all select i + 1 from s where i < ?1) insert into c(n) select 0 from s",
            [COMMIT_ROWS - have],
        )?;
    }
    let mut rng = rand::rng();
    let mut commit = || {
        db.execute(
            "update c set n = n + 1 where id = ?1",
            [rng.random_range(1..=COMMIT_ROWS)],
        )
    };
    for _ in 0..20 {
        commit()?;
    }
    let mut children = (0..holders)
        .map(|i| Holder::spawn(t, i, kind))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ready = children
        .iter_mut()
        .map(Holder::ready)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !t.is_local() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pragma(&db, "pagewire_read_lease")?.starts_with("lease=none") {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the writer keeps a read lease: {}",
                pragma(&db, "pagewire_read_lease")?
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
    for _ in 0..5 {
        commit()?;
    }
    let metrics_before = server_metrics(t)?;
    let pids: Vec<(&str, u32)> = [
        ("bench", Some(std::process::id())),
        ("server", t.server_url().and_then(crate::target::server_pid)),
    ]
    .into_iter()
    .filter_map(|(g, p)| Some((g, p?)))
    .chain(
        children
            .iter()
            .filter_map(Holder::pid)
            .map(|p| ("holders", p)),
    )
    .collect();
    let cpu_before: Vec<u64> = pids.iter().map(|(_, p)| cpu_ns(*p).unwrap_or(0)).collect();
    let machine_before = machine_jiffies();
    let mut lat = Vec::new();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < sizes.seconds || lat.len() < 50 {
        let t0 = Instant::now();
        commit()?;
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after: Vec<u64> = pids.iter().map(|(_, p)| cpu_ns(*p).unwrap_or(0)).collect();
    let machine = machine_jiffies()
        .zip(machine_before)
        .map(|((busy, all), (busy0, all0))| {
            (busy - busy0) as f64 / (all - all0).max(1) as f64 * 100.0
        });
    let metrics_after = server_metrics(t)?;
    let writer_lease = if t.is_local() {
        String::new()
    } else {
        pragma(&db, "pagewire_read_lease")?
    };
    let done = children
        .iter_mut()
        .map(Holder::finish)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let n = lat.len();
    let mean_ms = lat.iter().sum::<f64>() / n as f64;
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((n as f64 - 1.0) * p) as usize];
    let l = Latency {
        p50_ms: pct(0.5),
        mean_ms,
    };
    let mut text = format!(
        "{}: {n} commits with {holders} {}: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, mean {:.3} ms",
        t.label(),
        if t.is_local() {
            "reader processes".to_owned()
        } else {
            kind.describe()
        },
        l.p50_ms,
        pct(0.9),
        pct(0.99),
        l.mean_ms
    );
    // CPU time per commit by process group (all threads; /proc/<pid>/task/*/schedstat).
    let mut groups: Vec<(&str, u64)> = Vec::new();
    for ((name, _), (b, a)) in pids.iter().zip(cpu_before.iter().zip(&cpu_after)) {
        match groups.iter_mut().find(|(g, _)| g == name) {
            Some((_, v)) => *v += a.saturating_sub(*b),
            None => groups.push((name, a.saturating_sub(*b))),
        }
    }
    let total: u64 = groups.iter().map(|(_, v)| v).sum();
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    text += &format!(
        "; CPU per commit: {} = {:.0} us total ({:.0}% of {cpus} CPUs; whole machine {:.0}% busy{})",
        groups
            .iter()
            .map(|(g, v)| format!("{g} {:.0} us", *v as f64 / 1000.0 / n as f64))
            .collect::<Vec<_>>()
            .join(", "),
        total as f64 / 1000.0 / n as f64,
        total as f64 / 1e9 / elapsed / cpus * 100.0,
        machine.unwrap_or(0.0),
        if t.label().contains("postgres") {
            ", PostgreSQL included"
        } else {
            ""
        }
    );
    if let (Some(b), Some(a)) = (metrics_before, metrics_after) {
        let (wait_b, wait_a) = (
            b.invalidation_wait.unwrap_or_default(),
            a.invalidation_wait.unwrap_or_default(),
        );
        let commits = wait_a.count.saturating_sub(wait_b.count).max(1);
        text += &format!(
            "; server: read leases held (all databases) {} before / {} after, mean invalidation wait {:.3} ms over {commits} commits",
            b.read_leases_held,
            a.read_leases_held,
            wait_a.sum_us.saturating_sub(wait_b.sum_us) as f64 / commits as f64 / 1000.0
        );
    }
    if !t.is_local() {
        text += &format!("; writer's own read lease: {writer_lease}");
    }
    if holders > 0 {
        text += &format!("\n  holders at start: {}", summarize(&ready));
        text += &format!(
            "\n  holders during the run (per holder, min-max): {}",
            ranges(&done)
        );
        if !t.is_local() && !kind.snapshot {
            let always = done.iter().all(|d| {
                let get = |k: &str| {
                    d.split_whitespace()
                        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                };
                get("reads").is_some() && get("reads") == get("lease_held_after")
            });
            text += &format!(
                "; every holder said lease=held after each of its reads: {}",
                if always { "yes" } else { "NO" }
            );
        }
    }
    Ok((l, text))
}

/// Busy and total jiffies of all CPUs (/proc/stat), for how busy the machine was.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let all: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3)? + cpu.get(4)?;
    Some((all - idle, all))
}

/// CPU time of every thread of process `pid`, in ns.
fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut sum = 0;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        sum += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(sum)
}

/// Identical lines once with a count, others as they are.
/// `name=n` reports of several holders as `name min-max` per name.
fn ranges(reports: &[String]) -> String {
    let mut keys: Vec<(String, u64, u64)> = Vec::new();
    for r in reports {
        for (k, v) in r
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse::<u64>().ok()?)))
        {
            match keys.iter_mut().find(|(x, _, _)| x == k) {
                Some((_, lo, hi)) => (*lo, *hi) = ((*lo).min(v), (*hi).max(v)),
                None => keys.push((k.to_owned(), v, v)),
            }
        }
    }
    keys.iter()
        .map(|(k, lo, hi)| {
            if lo == hi {
                format!("{k} {lo}")
            } else {
                format!("{k} {lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn summarize(lines: &[String]) -> String {
    let mut out: Vec<(String, usize)> = Vec::new();
    for l in lines {
        match out.iter_mut().find(|(x, _)| x == l) {
            Some((_, n)) => *n += 1,
            None => out.push((l.clone(), 1)),
        }
    }
    out.iter()
        .map(|(l, n)| {
            if *n > 1 {
                format!("{n} x [{l}]")
            } else {
                format!("[{l}]")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The server's read-lease metrics (None for a local file).
fn server_metrics(t: &Target) -> anyhow::Result<Option<Metrics>> {
    let Some(url) = t.server_url() else {
        return Ok(None);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut admin = AdminClient::connect(url.to_owned()).await?;
        Ok(Some(
            admin.get_metrics(GetMetricsRequest {}).await?.into_inner(),
        ))
    })
}

/// How holders run. `threads`: threads of this process, each a client of its own
/// (`token=`), sharing this process's runtime, instead of separate processes
/// (`--child-holder`). `snapshot`: `consistency=snapshot` readers (a Watch stream,
/// no read lease: commits never wait for them), to tell the cost of the events
/// from the cost of waiting for acknowledgements.
#[derive(Clone, Copy, Default)]
pub struct HolderKind {
    pub threads: bool,
    pub snapshot: bool,
}

impl HolderKind {
    fn describe(&self) -> String {
        let what = if self.snapshot {
            "snapshot watchers (no lease)"
        } else {
            "read-lease holders"
        };
        let how = if self.threads {
            "threads (in this process, own tokens)"
        } else {
            "processes"
        };
        format!("{what}, {how}")
    }
}

/// A read-lease holder: says it is ready once it holds its lease, and what it saw
/// when told to finish.
enum Holder {
    Process {
        child: Child,
        stdin: Option<ChildStdin>,
        stdout: BufReader<ChildStdout>,
    },
    Thread {
        stop: Arc<AtomicBool>,
        ready: std::sync::mpsc::Receiver<String>,
        handle: Option<thread::JoinHandle<anyhow::Result<String>>>,
    },
}

impl Holder {
    fn spawn(t: &Target, i: usize, kind: HolderKind) -> anyhow::Result<Self> {
        let token = format!("holder-{i}");
        if kind.threads {
            let (t, stop) = (t.clone(), Arc::new(AtomicBool::new(false)));
            let (tx, ready) = std::sync::mpsc::channel();
            let stopped = stop.clone();
            let handle = thread::spawn(move || {
                hold(
                    &t,
                    COMMITS_DB,
                    &token,
                    kind.snapshot,
                    |l| drop(tx.send(l)),
                    &stopped,
                )
            });
            return Ok(Self::Thread {
                stop,
                ready,
                handle: Some(handle),
            });
        }
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--child-holder",
                &crate::child::spec(t),
                COMMITS_DB,
                &token,
                if kind.snapshot { "snapshot" } else { "strong" },
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        Ok(Self::Process {
            child,
            stdin,
            stdout,
        })
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Holder::Process { child, .. } => Some(child.id()),
            Holder::Thread { .. } => None,
        }
    }

    fn ready(&mut self) -> anyhow::Result<String> {
        match self {
            Holder::Process { stdout, .. } => line(stdout, "ready"),
            Holder::Thread { ready, handle, .. } => match ready.recv() {
                Ok(l) => Ok(l),
                Err(_) => match handle.take().map(thread::JoinHandle::join) {
                    Some(Ok(Err(e))) => Err(e),
                    _ => anyhow::bail!("holder thread ended"),
                },
            },
        }
    }

    fn finish(&mut self) -> anyhow::Result<String> {
        match self {
            Holder::Process {
                child,
                stdin,
                stdout,
            } => {
                drop(stdin.take());
                let done = line(stdout, "done");
                let status = child.wait()?;
                anyhow::ensure!(status.success(), "holder exited with {status}");
                done
            }
            Holder::Thread { stop, handle, .. } => {
                stop.store(true, Ordering::Relaxed);
                handle
                    .take()
                    .context("finished twice")?
                    .join()
                    .map_err(|_| anyhow::anyhow!("holder thread panicked"))?
            }
        }
    }
}

fn line(stdout: &mut BufReader<ChildStdout>, want: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    match line.trim().strip_prefix(want) {
        Some(rest) => Ok(rest.trim().to_owned()),
        None => anyhow::bail!("holder said {line:?}, expected {want}"),
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        match self {
            Holder::Process { child, stdin, .. } => {
                drop(stdin.take());
                if child.try_wait().ok().flatten().is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Holder::Thread { stop, handle, .. } => {
                stop.store(true, Ordering::Relaxed);
                if let Some(h) = handle.take() {
                    let _ = h.join();
                }
            }
        }
    }
}

/// The holder child (`--child-holder SPEC NAME TOKEN strong|snapshot`): a read
/// transaction every 20 ms until stdin closes.
pub fn holder(spec: &str, name: &str, token: &str, consistency: &str) -> anyhow::Result<()> {
    let t = crate::child::parse(spec)?;
    if !t.is_local() {
        crate::load_vfs()?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            stop.store(true, Ordering::Relaxed);
        });
    }
    let say = |l: String| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{l}");
        let _ = out.flush();
    };
    let done = hold(
        &t,
        name,
        token,
        consistency == "snapshot",
        |l| say(format!("ready {l}")),
        &stop,
    )?;
    say(format!("done {done}"));
    Ok(())
}

/// A holder's work: once it holds its read lease (pagewire), `ready(lease state)`;
/// then a read transaction every 20 ms until `stop`; returns what it saw.
fn hold(
    t: &Target,
    name: &str,
    token: &str,
    snapshot: bool,
    ready: impl FnOnce(String),
    stop: &AtomicBool,
) -> anyhow::Result<String> {
    let params = if snapshot {
        format!("&token={token}&consistency=snapshot")
    } else {
        format!("&token={token}")
    };
    let db = t.open_with(name, true, &params)?;
    let mut rng = rand::rng();
    let mut read = || -> anyhow::Result<()> {
        db.query_row(
            "select n from c where id = ?1",
            [rng.random_range(1..=COMMIT_ROWS)],
            |r| r.get::<_, i64>(0),
        )?;
        Ok(())
    };
    read()?;
    if !t.is_local() {
        await_local_reads(&db, &mut read, !snapshot, Duration::from_secs(10))?;
    }
    let before = Probe::take(&db, t)?;
    ready(if t.is_local() {
        "local".into()
    } else {
        before.lease.clone()
    });
    let (mut reads, mut held) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        read()?;
        reads += 1;
        if !t.is_local()
            && !snapshot
            && pragma(&db, "pagewire_read_lease")?.starts_with("lease=held")
        {
            held += 1;
        }
        thread::sleep(holder_period());
    }
    if t.is_local() {
        return Ok(format!("reads={reads}"));
    }
    let after = Probe::take(&db, t)?;
    Ok(format!(
        "reads={reads} lease_held_after={held} {}",
        after.delta_kv(&before)
    ))
}

// ---------------------------------------------------------------------------------
// Counters

fn pragma(db: &Connection, name: &str) -> anyhow::Result<String> {
    Ok(db.query_row(&format!("pragma {name}"), [], |r| r.get(0))?)
}

fn stat(db: &Connection, key: &str) -> anyhow::Result<u64> {
    let stats = pragma(db, "pagewire_stats")?;
    stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .with_context(|| format!("no {key} in {stats}"))
}

/// The VFS counters and lease state of a pagewire connection (empty for a local file).
struct Probe {
    stats: Vec<(String, u64)>,
    lease: String,
}

impl Probe {
    fn take(db: &Connection, t: &Target) -> anyhow::Result<Self> {
        if t.is_local() {
            return Ok(Self {
                stats: Vec::new(),
                lease: String::new(),
            });
        }
        let stats = pragma(db, "pagewire_stats")?
            .split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect();
        Ok(Self {
            stats,
            lease: pragma(db, "pagewire_read_lease")?,
        })
    }

    /// How much each counter grew since `before`.
    fn deltas(&self, before: &Probe) -> Vec<(&'static str, u64)> {
        [
            "begin_read",
            "local_reads",
            "read_pages",
            "pages_read",
            "watch",
            "lease",
            "commit",
        ]
        .into_iter()
        .map(|k| {
            let get = |p: &Probe| p.stats.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
            (k, get(self).saturating_sub(get(before)))
        })
        .collect()
    }

    /// The counters that moved, as `name +n`.
    fn delta(&self, before: &Probe) -> String {
        self.deltas(before)
            .iter()
            .map(|(k, v)| format!("{k} +{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The same as `name=n` words (what a holder reports).
    fn delta_kv(&self, before: &Probe) -> String {
        self.deltas(before)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
