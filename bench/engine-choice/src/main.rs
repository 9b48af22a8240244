//! pagewire engine choice: redb 4.6 vs fjall 3.1, durable commits only.
//!
//! `cargo run --release` (no arguments) runs every measurement for both engines and
//! prints a markdown table. The other modes (`writer`, `open`, `lockprobe`) are used
//! internally: the binary re-spawns itself as a child process for the SIGKILL test,
//! the reopen timings and the cross-process lock probe.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use fjall::{KeyspaceCreateOptions, PersistMode, Readable};
use redb::{ReadableDatabase, StorageBackend, TableDefinition};

const PAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pages");
const VAL: usize = 4096;

type R<T> = Result<T, String>;
type Batch = Vec<(Vec<u8>, Vec<u8>)>;

fn e<E: std::fmt::Debug>(x: E) -> String {
    format!("{x:?}")
}

// ---------------------------------------------------------------- data

/// db-id / page-no / version, all big-endian: 8 + 4 + 8 = 20 bytes.
fn key(db: u64, page: u32, ver: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(20);
    k.extend_from_slice(&db.to_be_bytes());
    k.extend_from_slice(&page.to_be_bytes());
    k.extend_from_slice(&ver.to_be_bytes());
    k
}

/// Deterministic, incompressible value derived from the key (so it can be verified).
fn value(k: &[u8], len: usize) -> Vec<u8> {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in k {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let mut x = h | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn batch(db: u64, first_page: u32, n: u32, ver: u64, len: usize) -> Batch {
    (0..n)
        .map(|i| {
            let k = key(db, first_page + i, ver);
            let v = value(&k, len);
            (k, v)
        })
        .collect()
}

// ---------------------------------------------------------------- engines

trait Kv: Send + Sync {
    /// Apply all batches atomically in ONE durable commit.
    fn commit(&self, batches: &[&Batch]) -> R<()>;
    fn get(&self, k: &[u8]) -> R<Option<Vec<u8>>>;
}

/// FileBackend wrapper: counts sync_data calls and can inject I/O errors.
#[derive(Debug)]
struct CountingBackend {
    inner: redb::backends::FileBackend,
    syncs: Arc<AtomicU64>,
    fail_writes: Arc<AtomicBool>,
    fail_syncs: Arc<AtomicBool>,
}

fn enospc() -> std::io::Error {
    std::io::Error::from_raw_os_error(28)
}

impl StorageBackend for CountingBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.fail_syncs.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO, like a failed fsync
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, t: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(s, t)
    }
    fn try_lock_shared_range(
        &self,
        s: Bound<u64>,
        t: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(s, t)
    }
    fn lock_range(&self, s: Bound<u64>, t: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(s, t)
    }
    fn lock_shared_range(&self, s: Bound<u64>, t: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(s, t)
    }
    fn unlock_range(&self, s: Bound<u64>, t: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(s, t)
    }
    fn query_lock_range(&self, s: Bound<u64>, t: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(s, t)
    }
}

struct Redb {
    db: redb::Database,
    syncs: Arc<AtomicU64>,
    fail_writes: Arc<AtomicBool>,
    fail_syncs: Arc<AtomicBool>,
    quick_repair: bool,
}

impl Redb {
    fn open(path: &Path, quick_repair: bool) -> R<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(e)?;
        let syncs = Arc::new(AtomicU64::new(0));
        let fail_writes = Arc::new(AtomicBool::new(false));
        let fail_syncs = Arc::new(AtomicBool::new(false));
        let backend = CountingBackend {
            inner: redb::backends::FileBackend::new(file).map_err(e)?,
            syncs: syncs.clone(),
            fail_writes: fail_writes.clone(),
            fail_syncs: fail_syncs.clone(),
        };
        let db = redb::Builder::new()
            .set_cache_size(256 << 20)
            .create_with_backend(backend)
            .map_err(e)?;
        Ok(Self {
            db,
            syncs,
            fail_writes,
            fail_syncs,
            quick_repair,
        })
    }
}

impl Kv for Redb {
    fn commit(&self, batches: &[&Batch]) -> R<()> {
        let mut txn = self.db.begin_write().map_err(e)?;
        txn.set_durability(redb::Durability::Immediate).map_err(e)?; // the default, explicit
        if self.quick_repair {
            txn.set_quick_repair(true);
        }
        {
            let mut t = txn.open_table(PAGES).map_err(e)?;
            for b in batches {
                for (k, v) in b.iter() {
                    t.insert(k.as_slice(), v.as_slice()).map_err(e)?;
                }
            }
        }
        txn.commit().map_err(e)
    }
    fn get(&self, k: &[u8]) -> R<Option<Vec<u8>>> {
        let r = self.db.begin_read().map_err(e)?;
        let t = match r.open_table(PAGES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(x) => return Err(e(x)),
        };
        Ok(t.get(k).map_err(e)?.map(|g| g.value().to_vec()))
    }
}

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
    mode: PersistMode,
}

impl Fjall {
    fn open(path: &Path, mode: PersistMode) -> R<Self> {
        let db = fjall::Database::builder(path).open().map_err(e)?;
        let ks = db.keyspace("pages", KeyspaceCreateOptions::default).map_err(e)?;
        Ok(Self { db, ks, mode })
    }
}

impl Kv for Fjall {
    fn commit(&self, batches: &[&Batch]) -> R<()> {
        // db.batch() = durability Buffer (write to OS) unless manual_journal_persist;
        // then an explicit fsync of the journal.
        let mut wb = self.db.batch();
        for b in batches {
            for (k, v) in b.iter() {
                wb.insert(&self.ks, k.as_slice(), v.as_slice());
            }
        }
        wb.commit().map_err(e)?;
        self.db.persist(self.mode).map_err(e)
    }
    fn get(&self, k: &[u8]) -> R<Option<Vec<u8>>> {
        Ok(self.ks.get(k).map_err(e)?.map(|v| v.to_vec()))
    }
}

fn open_engine(engine: &str, dir: &Path) -> R<Box<dyn Kv>> {
    Ok(match engine {
        "redb" => Box::new(Redb::open(&dir.join("db.redb"), false)?),
        "redb-qr" => Box::new(Redb::open(&dir.join("db.redb"), true)?),
        "fjall" => Box::new(Fjall::open(&dir.join("fjall"), PersistMode::SyncAll)?),
        "fjall-syncdata" => Box::new(Fjall::open(&dir.join("fjall"), PersistMode::SyncData)?),
        other => return Err(format!("unknown engine {other}")),
    })
}

// ---------------------------------------------------------------- helpers

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (apparent bytes, allocated bytes) of a file or a directory tree.
fn disk_usage(p: &Path) -> (u64, u64) {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return (0, 0);
    };
    if m.is_dir() {
        let mut tot = (0, 0);
        if let Ok(rd) = std::fs::read_dir(p) {
            for ent in rd.flatten() {
                let (a, b) = disk_usage(&ent.path());
                tot.0 += a;
                tot.1 += b;
            }
        }
        tot
    } else {
        (m.len(), m.blocks() * 512)
    }
}

fn mb(b: u64) -> String {
    if b < 1_000_000 {
        format!("{:.0} KB", b as f64 / 1e3)
    } else {
        format!("{:.1} MB", b as f64 / 1e6)
    }
}

fn list_dir(p: &Path) {
    let mut v = vec![];
    fn walk(p: &Path, v: &mut Vec<(String, u64)>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for ent in rd.flatten() {
                let path = ent.path();
                if path.is_dir() {
                    walk(&path, v);
                } else {
                    v.push((path.display().to_string(), ent.metadata().map(|m| m.len()).unwrap_or(0)));
                }
            }
        }
    }
    walk(p, &mut v);
    v.sort_by(|a, b| b.1.cmp(&a.1));
    for (n, s) in v.iter().take(12) {
        println!("      {s:>12} {n}");
    }
    println!("      ({} files)", v.len());
}

fn try_drop_caches() -> bool {
    unsafe_sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn unsafe_sync() {
    let _ = Command::new("sync").status();
}

struct Report {
    rows: Vec<(String, String, String, String)>, // section, metric, redb, fjall
    notes: Vec<String>,
}

impl Report {
    fn set(&mut self, section: &str, metric: &str, engine: &str, val: String) {
        println!("  [{engine}] {section} / {metric}: {val}");
        let idx = self
            .rows
            .iter()
            .position(|r| r.0 == section && r.1 == metric)
            .unwrap_or_else(|| {
                self.rows
                    .push((section.into(), metric.into(), "-".into(), "-".into()));
                self.rows.len() - 1
            });
        let row = &mut self.rows[idx];
        let cell = if engine.starts_with("redb") { &mut row.2 } else { &mut row.3 };
        if cell == "-" {
            *cell = val;
        } else {
            *cell = format!("{cell} // {val}");
        }
    }
    fn note(&mut self, s: String) {
        println!("  NOTE: {s}");
        self.notes.push(s);
    }
}

// ---------------------------------------------------------------- 1 + 2: single writer latency

fn single_writer(kv: &dyn Kv, commits: usize, per_commit: u32, db_base: u64) -> R<(f64, f64, f64)> {
    let mut lat = Vec::with_capacity(commits);
    let t0 = Instant::now();
    for i in 0..commits {
        let b = batch(db_base + i as u64, 0, per_commit, 1, VAL);
        let t = Instant::now();
        kv.commit(&[&b])?;
        lat.push(ms(t.elapsed()));
    }
    let rate = commits as f64 / t0.elapsed().as_secs_f64();
    Ok((pct(&mut lat, 0.5), pct(&mut lat, 0.99), rate))
}

// ---------------------------------------------------------------- 3: 64 writers

fn concurrent_direct(kv: Arc<dyn Kv>, threads: usize, dur: Duration) -> R<(f64, f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let lats = Arc::new(Mutex::new(Vec::new()));
    let mut hs = Vec::new();
    let t0 = Instant::now();
    for t in 0..threads {
        let (kv, stop, count, lats) = (kv.clone(), stop.clone(), count.clone(), lats.clone());
        hs.push(std::thread::spawn(move || -> R<()> {
            let mut i = 0u32;
            let mut my = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let b = batch(10_000_000 + t as u64, i * 10, 10, 1, VAL);
                let s = Instant::now();
                kv.commit(&[&b])?;
                my.push(ms(s.elapsed()));
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            lats.lock().unwrap().extend(my);
            Ok(())
        }));
    }
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap()?;
    }
    let el = t0.elapsed().as_secs_f64();
    let mut l = lats.lock().unwrap().clone();
    Ok((
        count.load(Ordering::Relaxed) as f64 / el,
        pct(&mut l, 0.5),
        pct(&mut l, 0.99),
    ))
}

struct Req {
    batch: Batch,
    done: mpsc::SyncSender<R<()>>,
}

/// One committer thread drains all pending batches into one durable commit.
fn concurrent_group(
    kv: Arc<dyn Kv>,
    threads: usize,
    dur: Duration,
) -> R<(f64, f64, f64, f64)> {
    let (tx, rx) = mpsc::channel::<Req>();
    let txns = Arc::new(AtomicU64::new(0));
    let committer = {
        let (kv, txns) = (kv.clone(), txns.clone());
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut reqs = vec![first];
                while reqs.len() < 1024 {
                    match rx.try_recv() {
                        Ok(r) => reqs.push(r),
                        Err(_) => break,
                    }
                }
                let bs: Vec<&Batch> = reqs.iter().map(|r| &r.batch).collect();
                let res = kv.commit(&bs);
                txns.fetch_add(1, Ordering::Relaxed);
                for r in reqs {
                    let _ = r.done.send(res.clone());
                }
            }
        })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let lats = Arc::new(Mutex::new(Vec::new()));
    let mut hs = Vec::new();
    let t0 = Instant::now();
    for t in 0..threads {
        let (tx, stop, count, lats) = (tx.clone(), stop.clone(), count.clone(), lats.clone());
        hs.push(std::thread::spawn(move || -> R<()> {
            let (dtx, drx) = mpsc::sync_channel(1);
            let mut i = 0u32;
            let mut my = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let b = batch(20_000_000 + t as u64, i * 10, 10, 1, VAL);
                let s = Instant::now();
                tx.send(Req {
                    batch: b,
                    done: dtx.clone(),
                })
                .map_err(e)?;
                drx.recv().map_err(e)??;
                my.push(ms(s.elapsed()));
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            lats.lock().unwrap().extend(my);
            Ok(())
        }));
    }
    drop(tx);
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap()?;
    }
    let el = t0.elapsed().as_secs_f64();
    committer.join().unwrap();
    let c = count.load(Ordering::Relaxed) as f64;
    let mut l = lats.lock().unwrap().clone();
    Ok((
        c / el,
        c / txns.load(Ordering::Relaxed).max(1) as f64,
        pct(&mut l, 0.5),
        pct(&mut l, 0.99),
    ))
}

// ---------------------------------------------------------------- 4: open time / SIGKILL

const FILL_DBS: u64 = 100_000;

fn fill(kv: &dyn Kv, dbs: u64, per_txn: u64) -> R<Duration> {
    let t0 = Instant::now();
    let mut d = 0;
    while d < dbs {
        let bs: Vec<Batch> = (d..(d + per_txn).min(dbs)).map(|x| batch(x, 0, 2, 1, VAL)).collect();
        let refs: Vec<&Batch> = bs.iter().collect();
        kv.commit(&refs)?;
        d += per_txn;
    }
    Ok(t0.elapsed())
}

fn self_exe() -> PathBuf {
    std::env::current_exe().unwrap()
}

/// Child mode `open`: time the open of an existing store, then verify.
fn child_open(engine: &str, dir: &Path, ackfile: &str) -> R<()> {
    let t0 = Instant::now();
    let kv = open_engine(engine, dir)?;
    let open_ms = ms(t0.elapsed());
    let t1 = Instant::now();
    let k0 = key(0, 0, 1);
    let first = kv.get(&k0)?;
    let first_get_ms = ms(t1.elapsed());
    let mut bad = 0u64;
    if first.as_deref() != Some(&value(&k0, VAL)[..]) {
        bad += 1;
    }
    // sample of the 200k pre-filled keys
    let mut sampled = 0u64;
    for d in (0..FILL_DBS).step_by(97) {
        for p in 0..2 {
            let k = key(d, p, 1);
            sampled += 1;
            if kv.get(&k)?.as_deref() != Some(&value(&k, VAL)[..]) {
                bad += 1;
            }
        }
    }
    // every acknowledged commit of the killed writer
    let mut acked = 0u64;
    let mut lost = 0u64;
    if ackfile != "-" {
        let txt = std::fs::read_to_string(ackfile).map_err(e)?;
        for line in txt.lines() {
            let Some(id) = line.strip_prefix("ACK ") else { continue };
            let id: u64 = id.trim().parse().map_err(e)?;
            acked += 1;
            for p in 0..10 {
                let k = key(id, p, 1);
                if kv.get(&k)?.as_deref() != Some(&value(&k, VAL)[..]) {
                    lost += 1;
                }
            }
        }
    }
    let total_ms = ms(t0.elapsed());
    println!(
        "RESULT open_ms={open_ms:.1} first_get_ms={first_get_ms:.2} sampled={sampled} bad_sampled={bad} acked_commits={acked} lost_values={lost} total_ms={total_ms:.0}"
    );
    Ok(())
}

/// Child mode `writer`: durable 10x4KiB commits forever, "ACK <db-id>" after each.
fn child_writer(engine: &str, dir: &Path, start: u64) -> R<()> {
    let kv = open_engine(engine, dir)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "READY").map_err(e)?;
    out.flush().map_err(e)?;
    let mut id = start;
    loop {
        let b = batch(id, 0, 10, 1, VAL);
        kv.commit(&[&b])?;
        writeln!(out, "ACK {id}").map_err(e)?;
        out.flush().map_err(e)?;
        id += 1;
    }
}

fn child_lockprobe(engine: &str, dir: &Path) -> R<()> {
    match open_engine(engine, dir) {
        Ok(_) => println!("RESULT opened-ok (NOT exclusive)"),
        Err(x) => println!("RESULT refused: {x}"),
    }
    Ok(())
}

fn spawn_open(engine: &str, dir: &Path, ackfile: &str) -> R<BTreeMap<String, String>> {
    let out = Command::new(self_exe())
        .args(["open", engine, dir.to_str().unwrap(), ackfile])
        .output()
        .map_err(e)?;
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let line = s
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .ok_or_else(|| format!("child open failed: {s} {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok(line
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('=').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect())
}

/// Spawn a writer child, let it ack for `run`, SIGKILL it, return path of the ack file.
fn kill_writer(engine: &str, dir: &Path, start: u64, run: Duration) -> R<(PathBuf, usize)> {
    let mut child = Command::new(self_exe())
        .args(["writer", engine, dir.to_str().unwrap(), &start.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(e)?;
    let stdout = child.stdout.take().unwrap();
    let (ltx, lrx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            match l {
                Ok(l) => {
                    if ltx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let mut lines = Vec::new();
    // wait for the first ACK (open may take a while), then let it run
    loop {
        let l = lrx.recv_timeout(Duration::from_secs(60)).map_err(e)?;
        let is_ack = l.starts_with("ACK");
        lines.push(l);
        if is_ack {
            break;
        }
    }
    std::thread::sleep(run);
    child.kill().map_err(e)?; // SIGKILL on unix
    let _ = child.wait();
    reader.join().unwrap();
    lines.extend(lrx.try_iter());
    let acks = lines.iter().filter(|l| l.starts_with("ACK")).count();
    let path = dir.with_extension(format!("{engine}.acks"));
    std::fs::write(&path, lines.join("\n")).map_err(e)?;
    Ok((path, acks))
}

// ---------------------------------------------------------------- 5: space reuse

const SPACE_VALUES: u32 = 50_000; // 50,000 x 4096 B = 205 MB

fn space_write(kv: &dyn Kv, ver: u64) -> R<()> {
    let per_txn = 500u32;
    let mut p = 0;
    while p < SPACE_VALUES {
        let b = batch(7, p, per_txn, ver, VAL);
        kv.commit(&[&b])?;
        p += per_txn;
    }
    Ok(())
}

fn space_redb(base: &Path, rep: &mut Report) -> R<()> {
    let path = base.join("space.redb");
    let r = Redb::open(&path, false)?;
    let size = |rep: &mut Report, step: &str| {
        let (a, b) = disk_usage(&path);
        rep.set("5 space (200 MB)", step, "redb", format!("{} (alloc {})", mb(a), mb(b)));
    };
    space_write(&r, 1)?;
    size(rep, "a. after write 205 MB");
    {
        let txn = r.db.begin_write().map_err(e)?;
        let st = txn.stats().map_err(e)?;
        rep.set(
            "5 space (200 MB)",
            "redb DatabaseStats after write",
            "redb",
            format!(
                "allocated_pages {} x {} B = {}, stored {} , metadata {}, fragmented {}",
                st.allocated_pages(),
                st.page_size(),
                mb(st.allocated_pages() * st.page_size() as u64),
                mb(st.stored_bytes()),
                mb(st.metadata_bytes()),
                mb(st.fragmented_bytes())
            ),
        );
        txn.abort().map_err(e)?;
    }
    let del = |r: &Redb| -> R<()> {
        let txn = r.db.begin_write().map_err(e)?;
        txn.open_table(PAGES).map_err(e)?.retain(|_, _| false).map_err(e)?;
        txn.commit().map_err(e)
    };
    del(&r)?;
    size(rep, "b. after delete all");
    space_write(&r, 2)?;
    size(rep, "c. after 2nd write 205 MB");
    del(&r)?;
    size(rep, "d. after 2nd delete all");
    let mut r = r;
    let t = Instant::now();
    let mut rounds = 0;
    while r.db.compact().map_err(e)? {
        rounds += 1;
        if rounds > 20 {
            break;
        }
    }
    let c = ms(t.elapsed());
    size(rep, "e. after compact()");
    space_write(&r, 3)?;
    size(rep, "g. 3rd write 205 MB");
    rep.set("5 space (200 MB)", "compaction call", "redb", format!("Database::compact() x{rounds}, {c:.0} ms"));
    drop(r);
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn space_fjall(base: &Path, rep: &mut Report) -> R<()> {
    let path = base.join("space-fjall");
    let f = Fjall::open(&path, PersistMode::SyncAll)?;
    let size = |rep: &mut Report, step: &str| {
        let (a, b) = disk_usage(&path);
        rep.set("5 space (200 MB)", step, "fjall", format!("{} (alloc {})", mb(a), mb(b)));
    };
    space_write(&f, 1)?;
    size(rep, "a. after write 205 MB");
    let del = |f: &Fjall| -> R<()> {
        let keys: Vec<Vec<u8>> = f
            .ks
            .iter()
            .map(|g| g.key().map(|k| k.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(e)?;
        for chunk in keys.chunks(5000) {
            let mut wb = f.db.batch();
            for k in chunk {
                wb.remove(&f.ks, k.as_slice());
            }
            wb.commit().map_err(e)?;
        }
        f.db.persist(PersistMode::SyncAll).map_err(e)
    };
    del(&f)?;
    size(rep, "b. after delete all");
    space_write(&f, 2)?;
    size(rep, "c. after 2nd write 205 MB");
    del(&f)?;
    size(rep, "d. after 2nd delete all");
    let t = Instant::now();
    f.ks.rotate_memtable_and_wait().map_err(e)?;
    f.ks.major_compact().map_err(e)?;
    let c = ms(t.elapsed());
    std::thread::sleep(Duration::from_millis(2000));
    size(rep, "e. after compact() (+2 s)");
    list_dir(&path);
    // old tables are unlinked lazily, at the next version change past the GC watermark
    f.commit(&[&batch(8, 0, 1, 1, VAL)])?;
    f.ks.rotate_memtable_and_wait().map_err(e)?;
    std::thread::sleep(Duration::from_millis(500));
    size(rep, "e2. + 1 small write + memtable flush");
    list_dir(&path);
    rep.set(
        "5 space (200 MB)",
        "compaction call",
        "fjall",
        format!("rotate_memtable_and_wait + major_compact, {c:.0} ms"),
    );
    drop(f);
    std::thread::sleep(Duration::from_millis(300));
    size(rep, "f. after close");
    list_dir(&path);
    let f = Fjall::open(&path, PersistMode::SyncAll)?;
    space_write(&f, 3)?;
    size(rep, "g. 3rd write 205 MB");
    drop(f);
    let _ = std::fs::remove_dir_all(&path);
    Ok(())
}

// ---------------------------------------------------------------- semantics probes

fn probe_snapshots(base: &Path, rep: &mut Report) -> R<()> {
    // redb
    let r = Redb::open(&base.join("snap.redb"), false)?;
    let k = b"k".to_vec();
    r.commit(&[&vec![(k.clone(), b"v1".to_vec())]])?;
    let rtx = r.db.begin_read().map_err(e)?;
    let wtx = r.db.begin_write().map_err(e)?;
    {
        let mut t = wtx.open_table(PAGES).map_err(e)?;
        t.insert(k.as_slice(), b"v2".as_slice()).map_err(e)?;
    }
    // a read txn can be started and used while the write txn is open
    let rtx2 = r.db.begin_read().map_err(e)?;
    let during = rtx2.open_table(PAGES).map_err(e)?.get(k.as_slice()).map_err(e)?.map(|g| g.value().to_vec());
    wtx.commit().map_err(e)?;
    let old = rtx.open_table(PAGES).map_err(e)?.get(k.as_slice()).map_err(e)?.map(|g| g.value().to_vec());
    let new = r.get(&k)?;
    rep.set(
        "semantics",
        "read txn = snapshot, concurrent with writer",
        "redb",
        format!(
            "read during open write: {:?}; old read txn after commit: {:?}; new read: {:?}",
            during.map(|v| String::from_utf8_lossy(&v).to_string()),
            old.map(|v| String::from_utf8_lossy(&v).to_string()),
            new.map(|v| String::from_utf8_lossy(&v).to_string())
        ),
    );
    drop((rtx, rtx2));
    // in-process second open of the same file
    let second = redb::Database::create(base.join("snap.redb"));
    rep.set(
        "semantics",
        "2nd open, same process",
        "redb",
        match second {
            Ok(_) => "opened (not exclusive!)".into(),
            Err(x) => format!("Err({x:?})"),
        },
    );
    // cross-process: lockprobe opens base/db.redb; point it at snap.redb via a symlink
    let _ = std::fs::remove_file(base.join("db.redb"));
    std::os::unix::fs::symlink(base.join("snap.redb"), base.join("db.redb")).map_err(e)?;
    let out = Command::new(self_exe())
        .args(["lockprobe", "redb", base.to_str().unwrap()])
        .output()
        .map_err(e)?;
    rep.set(
        "semantics",
        "2nd open, other process",
        "redb",
        String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("RESULT ").to_string(),
    );
    drop(r);
    let _ = std::fs::remove_file(base.join("db.redb"));

    // fjall
    let f = Fjall::open(&base.join("fjall"), PersistMode::SyncAll)?;
    f.commit(&[&vec![(k.clone(), b"v1".to_vec())]])?;
    let snap = f.db.snapshot();
    f.commit(&[&vec![(k.clone(), b"v2".to_vec())]])?;
    let old = snap.get(&f.ks, &k).map_err(e)?.map(|v| v.to_vec());
    rep.set(
        "semantics",
        "read txn = snapshot, concurrent with writer",
        "fjall",
        format!(
            "db.snapshot() after later commit sees {:?}, ks.get sees {:?}",
            old.map(|v| String::from_utf8_lossy(&v).to_string()),
            f.get(&k)?.map(|v| String::from_utf8_lossy(&v).to_string())
        ),
    );
    let second = fjall::Database::builder(base.join("fjall")).open();
    rep.set(
        "semantics",
        "2nd open, same process",
        "fjall",
        match second {
            Ok(_) => "opened (not exclusive!)".into(),
            Err(x) => format!("Err({x:?})"),
        },
    );
    let out = Command::new(self_exe())
        .args(["lockprobe", "fjall", base.to_str().unwrap()])
        .output()
        .map_err(e)?;
    rep.set(
        "semantics",
        "2nd open, other process",
        "fjall",
        String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("RESULT ").to_string(),
    );
    drop(f);
    let _ = std::fs::remove_dir_all(base.join("fjall"));
    let _ = std::fs::remove_file(base.join("snap.redb"));
    Ok(())
}

/// redb: inject ENOSPC on write / EIO on fsync through the custom backend.
fn probe_redb_injected(base: &Path, rep: &mut Report) -> R<()> {
    let path = base.join("inject.redb");
    for (what, writes) in [("ENOSPC on write()", true), ("EIO on sync_data()", false)] {
        let _ = std::fs::remove_file(&path);
        let r = Redb::open(&path, false)?;
        r.commit(&[&batch(1, 0, 10, 1, VAL)])?;
        if writes {
            r.fail_writes.store(true, Ordering::SeqCst);
        } else {
            r.fail_syncs.store(true, Ordering::SeqCst);
        }
        let mut first: R<()> = Err("no error".to_string());
        for i in 0..200 {
            if let Err(x) = r.commit(&[&batch(100 + i, 0, 10, 1, VAL)]) {
                first = Err(x);
                break;
            }
        }
        r.fail_writes.store(false, Ordering::SeqCst);
        r.fail_syncs.store(false, Ordering::SeqCst);
        let after = r.commit(&[&batch(2, 0, 10, 1, VAL)]);
        let read = r.get(&key(1, 0, 1)).map(|v| v.is_some());
        drop(r);
        let t = Instant::now();
        let r2 = Redb::open(&path, false);
        let reopen = match r2 {
            Ok(r2) => {
                let ok = r2.get(&key(1, 0, 1))?.is_some();
                let w = r2.commit(&[&batch(3, 0, 10, 1, VAL)]);
                format!("reopen Ok in {:.0} ms, old data present={ok}, write after reopen={w:?}", ms(t.elapsed()))
            }
            Err(x) => format!("reopen Err({x})"),
        };
        rep.set(
            "I/O errors (injected via StorageBackend)",
            what,
            "redb",
            format!(
                "failing commit: {}; after fault cleared, next commit: {:?}; read: {:?}; {reopen}",
                first.err().unwrap_or_default(),
                after,
                read
            ),
        );
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Real ENOSPC on a small tmpfs (if we may mount one): fill until the engine errors,
/// free space, check whether the handle recovers, then reopen.
fn probe_enospc(base: &Path, rep: &mut Report) -> R<()> {
    let mnt = base.join("small-fs");
    std::fs::create_dir_all(&mnt).map_err(e)?;
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs", mnt.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        rep.note("could not mount a small tmpfs: real-ENOSPC test skipped".into());
        return Ok(());
    }
    let res = (|| -> R<()> {
        for engine in ["redb", "fjall"] {
            let dir = mnt.join(engine);
            std::fs::create_dir_all(&dir).map_err(e)?;
            let ballast = mnt.join("ballast");
            std::fs::write(&ballast, vec![1u8; 8 << 20]).map_err(e)?;
            let kv = open_engine(engine, &dir)?;
            let mut acked = 0u64;
            let mut err = String::new();
            for id in 0..100_000u64 {
                match kv.commit(&[&batch(id, 0, 10, 1, VAL)]) {
                    Ok(()) => acked += 1,
                    Err(x) => {
                        err = x;
                        break;
                    }
                }
            }
            std::fs::remove_file(&ballast).map_err(e)?;
            let after = kv.commit(&[&batch(999_999, 0, 1, 1, VAL)]);
            let after2 = kv.commit(&[&batch(999_998, 0, 1, 1, VAL)]);
            let read = kv.get(&key(0, 0, 1)).map(|v| v.is_some());
            drop(kv);
            std::thread::sleep(Duration::from_millis(200));
            let t = Instant::now();
            let reopen = match open_engine(engine, &dir) {
                Ok(kv2) => {
                    let mut lost = 0;
                    for id in 0..acked {
                        for p in 0..10 {
                            let k = key(id, p, 1);
                            if kv2.get(&k)?.as_deref() != Some(&value(&k, VAL)[..]) {
                                lost += 1;
                            }
                        }
                    }
                    let w = kv2.commit(&[&batch(999_997, 0, 1, 1, VAL)]);
                    format!(
                        "reopen Ok ({:.0} ms), acked commits {acked}, lost values {lost}, write after reopen {w:?}",
                        ms(t.elapsed())
                    )
                }
                Err(x) => format!("reopen Err({x})"),
            };
            let _ = std::fs::remove_dir_all(&dir);
            rep.set(
                "I/O errors (real ENOSPC, 40 MB tmpfs)",
                "disk full mid-commit",
                engine,
                format!(
                    "error: {err}; after freeing 8 MB: next commit {after:?}, again {after2:?}; read {read:?}; {reopen}"
                ),
            );
        }
        Ok(())
    })();
    let _ = Command::new("umount").arg(&mnt).status();
    res
}

fn latency_tests(engine: &str, dir: &Path, commits: usize, rep: &mut Report) -> R<()> {
    {
        let kv: Box<dyn Kv> = open_engine(engine, dir)?;
        let (p50, p99, rate) = single_writer(kv.as_ref(), commits, 10, 0)?;
        rep.set("1 single writer, 10x4KiB/commit", "p50 / p99 ms (commits/s)", engine, format!("{p50:.2} / {p99:.2} ({rate:.0}/s)"));
        unsafe_sync();
        let (p50, p99, rate) = single_writer(kv.as_ref(), commits, 1, 1_000_000)?;
        rep.set("2 single writer, 1x4KiB/commit", "p50 / p99 ms (commits/s)", engine, format!("{p50:.2} / {p99:.2} ({rate:.0}/s)"));
    }
    unsafe_sync();
    if engine == "redb" {
        // sync_data calls per commit, counted by the wrapping StorageBackend
        let r = Redb::open(&dir.join("db.redb"), false)?;
        let s0 = r.syncs.load(Ordering::Relaxed);
        for i in 0..50 {
            r.commit(&[&batch(3_000_000 + i, 0, 10, 1, VAL)])?;
        }
        let s1 = r.syncs.load(Ordering::Relaxed);
        rep.set("1b variants", "redb: sync_data calls per commit (counted by wrapping StorageBackend)", engine, format!("{:.2}", (s1 - s0) as f64 / 50.0));
        drop(r);
        let r = Redb::open(&dir.join("db.redb"), true)?;
        let s0 = r.syncs.load(Ordering::Relaxed);
        let (p50, p99, rate) = single_writer(&r, commits / 4, 10, 4_000_000)?;
        let s1 = r.syncs.load(Ordering::Relaxed);
        rep.set("1b variants", "redb set_quick_repair(true), 10x4KiB: p50 / p99 ms (commits/s), syncs/commit", engine, format!("{p50:.2} / {p99:.2} ({rate:.0}/s), {:.2}", (s1 - s0) as f64 / (commits / 4) as f64));
    } else {
        let f = Fjall::open(&dir.join("fjall"), PersistMode::SyncData)?;
        let (p50, p99, rate) = single_writer(&f, commits / 4, 10, 4_000_000)?;
        rep.set("1b variants", "fjall PersistMode::SyncData, 10x4KiB: p50 / p99 ms (commits/s)", engine, format!("{p50:.2} / {p99:.2} ({rate:.0}/s)"));
        // batch.durability(Some(SyncAll)): the fsync happens inside commit, under the journal lock
        let mut lat = vec![];
        let t0 = Instant::now();
        for i in 0..commits / 4 {
            let b = batch(5_000_000 + i as u64, 0, 10, 1, VAL);
            let t = Instant::now();
            let mut wb = f.db.batch().durability(Some(PersistMode::SyncAll));
            for (k, v) in &b {
                wb.insert(&f.ks, k.as_slice(), v.as_slice());
            }
            wb.commit().map_err(e)?;
            lat.push(ms(t.elapsed()));
        }
        let rate = (commits / 4) as f64 / t0.elapsed().as_secs_f64();
        let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
        rep.set("1b variants", "fjall batch.durability(Some(SyncAll)), 10x4KiB: p50 / p99 ms (commits/s)", engine, format!("{p50:.2} / {p99:.2} ({rate:.0}/s)"));
    }
    Ok(())
}

// ---------------------------------------------------------------- driver

fn run_all() -> R<()> {
    let base = std::env::var("ENGINE_CHOICE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(format!("/tmp/engine-choice-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).map_err(e)?;
    println!("work dir: {}", base.display());
    let quick = std::env::var("ENGINE_CHOICE_QUICK").is_ok();
    let commits = if quick { 200 } else { 2000 };
    let conc_dur = Duration::from_secs(if quick { 1 } else { 5 });
    let t_all = Instant::now();
    let mut rep = Report {
        rows: vec![],
        notes: vec![],
    };

    // Latency and concurrency: two rounds in alternating engine order (redb, fjall, fjall,
    // redb) with a `sync` before each test, so neither engine always runs while the other's
    // dirty pages are still being written back. Cells show "round 1 // round 2".
    for round in 0..2 {
        let order: [&str; 2] = if round == 0 { ["redb", "fjall"] } else { ["fjall", "redb"] };
        for engine in order {
            println!("== round {round}: {engine}: latency");
            let dir = base.join(format!("lat-{engine}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(e)?;
            unsafe_sync();
            latency_tests(engine, &dir, commits, &mut rep)?;
            let _ = std::fs::remove_dir_all(&dir);

            println!("== round {round}: {engine}: 64 concurrent writers");
            let dir = base.join(format!("conc-{engine}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(e)?;
            {
                let kv: Arc<dyn Kv> = Arc::from(open_engine(engine, &dir)?);
                unsafe_sync();
                let (rate, p50, p99) = concurrent_direct(kv.clone(), 64, conc_dur)?;
                rep.set("3 64 writers, 10x4KiB/commit", "each thread commits itself: commits/s (p50/p99 ms)", engine, format!("{rate:.0}/s ({p50:.1} / {p99:.1})"));
                unsafe_sync();
                let (rate, per, p50, p99) = concurrent_group(kv.clone(), 64, conc_dur)?;
                rep.set("3 64 writers, 10x4KiB/commit", "group commit thread: commits/s (p50/p99 ms), batches per txn", engine, format!("{rate:.0}/s ({p50:.1} / {p99:.1}), {per:.1}"));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    for engine in ["redb", "fjall"] {
        unsafe_sync();
        println!("== {engine}: open time, 200k keys");
        let dir = base.join(format!("open-{engine}"));
        std::fs::create_dir_all(&dir).map_err(e)?;
        {
            let kv = open_engine(engine, &dir)?;
            let took = fill(kv.as_ref(), FILL_DBS, 1000)?;
            rep.set("4 open, 200k keys x 4096 B", "fill time (100 txns of 2000 values)", engine, format!("{:.1} s", took.as_secs_f64()));
        }
        std::thread::sleep(Duration::from_millis(300));
        let (a, b) = disk_usage(&dir);
        rep.set("4 open, 200k keys x 4096 B", "size on disk (820 MB of user data)", engine, format!("{} (alloc {})", mb(a), mb(b)));
        let cold = try_drop_caches();
        let r = spawn_open(engine, &dir, "-")?;
        rep.set(
            "4 open, 200k keys x 4096 B",
            "reopen after clean close: open ms / first get ms",
            engine,
            format!("{} / {}{}", r["open_ms"], r["first_get_ms"], if cold { " (page cache dropped)" } else { " (warm cache)" }),
        );
        let variants: &[&str] = if engine == "redb" { &["redb", "redb-qr"] } else { &["fjall"] };
        for (vi, v) in variants.iter().enumerate() {
            let (ackf, acks) = kill_writer(v, &dir, 50_000_000 + vi as u64 * 1_000_000, Duration::from_millis(1500))?;
            let cold = try_drop_caches();
            let r = spawn_open(engine, &dir, ackf.to_str().unwrap())?;
            rep.set(
                "4 open, 200k keys x 4096 B",
                &format!("reopen after SIGKILL mid-write{}: open ms; acked/lost", if *v == "redb-qr" { " (writer used quick_repair)" } else { "" }),
                engine,
                format!(
                    "{} ms{}; child acked {acks} commits, verified {} acked, lost values {}, bad sampled {}/{}",
                    r["open_ms"],
                    if cold { " (cold)" } else { " (warm)" },
                    r["acked_commits"],
                    r["lost_values"],
                    r["bad_sampled"],
                    r["sampled"]
                ),
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    println!("== space reuse");
    space_redb(&base, &mut rep)?;
    space_fjall(&base, &mut rep)?;

    println!("== semantics / error probes");
    probe_snapshots(&base, &mut rep)?;
    probe_redb_injected(&base, &mut rep)?;
    probe_enospc(&base, &mut rep)?;

    let _ = std::fs::remove_dir_all(&base);
    println!("\ntotal run time: {:.0} s\n", t_all.elapsed().as_secs_f64());
    println!("| section | metric | redb 4.6.0 | fjall 3.1.13 |");
    println!("|---|---|---|---|");
    rep.rows.sort_by(|a, b| a.0.cmp(&b.0)); // stable: keeps metric order within a section
    for (s, m, r, f) in &rep.rows {
        println!("| {s} | {m} | {r} | {f} |");
    }
    for n in &rep.notes {
        println!("\nNOTE: {n}");
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let res = match args.get(1).map(String::as_str) {
        None | Some("all") => run_all(),
        Some("writer") => child_writer(&args[2], Path::new(&args[3]), args[4].parse().unwrap()),
        Some("open") => child_open(&args[2], Path::new(&args[3]), &args[4]),
        Some("lockprobe") => child_lockprobe(&args[2], Path::new(&args[3])),
        Some(x) => Err(format!("unknown mode {x}")),
    };
    if let Err(x) = res {
        eprintln!("error: {x}");
        std::process::exit(1);
    }
}
