//! The key-value store in FDB-limits mode ([`LimitedEngine`] over the embedded engine),
//! on what the conformance suite cannot see from outside: big commits are staged in
//! batches within the transaction limit and published by one small one; pages over the
//! value limit are stored in pieces and collected whole; no snapshot or write lives past
//! the transaction time; two stores over one engine (two servers over one cluster) stay
//! correct because conflicts, not a lock in one process, keep commits serial; stages of
//! commits that never publish are collected.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pagewire_server_core::store::conformance::{commit, page, page_one};
use pagewire_server_core::store::{
    Commit, DbKey, Identity, Lease, PageStore, PinTtl, StoreError, Version, random_id,
};
use pagewire_store_kv::limited_engine::{FDB_LIMITS, FDB_TRANSACTION_TIME};
use pagewire_store_kv::records::{self, StageRecord};
use pagewire_store_kv::{
    Batch, Engine, EngineError, EngineLimits, FjallEngine, KvStore, LimitedEngine, keys,
};

const TTL: Duration = Duration::from_secs(30);
const PIN: PinTtl = PinTtl {
    ttl: Duration::from_secs(60),
    max_age: Duration::from_secs(600),
};

fn data_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temporary data directory")
}

/// A limited engine over a new embedded one, and the directory to keep.
fn engine(limits: EngineLimits, max_age: Duration) -> (tempfile::TempDir, Arc<LimitedEngine>) {
    let dir = data_dir();
    let fjall = Arc::new(FjallEngine::open(dir.path()).expect("open the engine"));
    (dir, Arc::new(LimitedEngine::new(fjall, limits, max_age)))
}

async fn store_over(engine: &Arc<LimitedEngine>) -> anyhow::Result<KvStore> {
    Ok(KvStore::open(engine.clone()).await?)
}

/// A commit of `pages` pages of `ps` bytes, page `no` filled with `no as u8 ^ salt`.
fn big(lease: &Lease, base: u64, ps: u32, pages: u32, salt: u8) -> Commit {
    let mut all = vec![(1, page_one(ps, pages, salt))];
    all.extend((2..=pages).map(|no| (no, page(ps, no as u8 ^ salt))));
    Commit {
        lease_id: lease.lease_id,
        epoch: lease.epoch,
        base_version: Version(base),
        commit_id: random_id(),
        identity: Identity::default(),
        page_size: ps,
        page_count: pages,
        pages: all,
    }
}

async fn reads_back(store: &KvStore, key: &DbKey, version: u64, c: &Commit) -> anyhow::Result<()> {
    for chunk in c.pages.chunks(64) {
        let nos: Vec<u32> = chunk.iter().map(|(no, _)| *no).collect();
        let read = store.read_pages(key, Version(version), &nos, PIN).await?;
        for ((no, want), got) in chunk.iter().zip(&read.pages) {
            anyhow::ensure!(got == want, "page {no} at version {version} differs");
        }
    }
    Ok(())
}

/// Keys of the engine starting with `tag`.
fn count(engine: &dyn Engine, tag: u8) -> anyhow::Result<usize> {
    Ok(engine
        .snapshot()?
        .scan(&[tag], &[tag + 1], false, usize::MAX)?
        .len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_commit_is_staged_within_the_transaction_limit() -> anyhow::Result<()> {
    let (_dir, engine) = engine(FDB_LIMITS, FDB_TRANSACTION_TIME);
    let store = store_over(&engine).await?;
    let key = DbKey::new("t", "big.db");
    store.open(&key, true).await?;
    let lease = store.acquire_lease(&key, "w", TTL).await?;
    // 48 MiB of 4 KiB pages: 12,288 pages, over the 10 MB transaction five times.
    let first = big(&lease, 0, 4096, 12_288, 1);
    let before = engine.stats().batches.load(Ordering::Relaxed);
    store.commit(&key, first.clone()).await?;
    let batches = engine.stats().batches.load(Ordering::Relaxed) - before;
    let largest = engine.stats().largest_batch.load(Ordering::Relaxed);
    assert!(batches >= 10, "{batches} batches for 48 MiB");
    assert!(largest <= 10_000_000, "a batch of {largest} bytes");
    assert_eq!(count(engine.as_ref(), b'g')?, 1, "one staged version");
    assert_eq!(
        count(engine.as_ref(), b's')?,
        0,
        "its marker went with the publish"
    );
    assert_eq!(
        count(engine.as_ref(), b'd')?,
        0,
        "no page under the plain keys"
    );
    reads_back(&store, &key, 1, &first).await?;

    // Another store over the same engine loads the staged version from its index.
    let other = store_over(&engine).await?;
    reads_back(&other, &key, 1, &first).await?;
    // The change list is a range past its budget (16k pages listed at most), and
    // reads still see every page.
    let info = other.info(&key).await?;
    assert_eq!(info.stored_bytes, 4096 * 12_288);

    // Rewritten (staged again), then GC with no retention: the first stage's records
    // go, and its stage id with them.
    let second = big(&lease, 1, 4096, 12_288, 2);
    store.commit(&key, second.clone()).await?;
    store.gc(i64::MAX / 2, Duration::ZERO).await?;
    assert_eq!(
        count(engine.as_ref(), b'g')?,
        1,
        "only the newest stage is kept"
    );
    assert_eq!(count(engine.as_ref(), b'S')?, 12_288, "one version's pages");
    assert_eq!(count(engine.as_ref(), b'T')?, 12_288);
    reads_back(&store, &key, 2, &second).await?;
    assert!(engine.stats().largest_batch.load(Ordering::Relaxed) <= 10_000_000);

    store.delete(&key).await?;
    for tag in [b'g', b'S', b'T', b's', b'v', b'h'] {
        assert_eq!(
            count(engine.as_ref(), tag)?,
            0,
            "{} left after delete",
            tag as char
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_over_the_value_limit_are_stored_in_pieces() -> anyhow::Result<()> {
    // FoundationDB's 100,000 bytes hold a 64 KiB page whole; a 16 KiB limit does not.
    let limits = EngineLimits {
        max_value_bytes: Some(16_384),
        ..FDB_LIMITS
    };
    let (_dir, engine) = engine(limits, FDB_TRANSACTION_TIME);
    let store = store_over(&engine).await?;
    let key = DbKey::new("t", "wide.db");
    store.open(&key, true).await?;
    let lease = store.acquire_lease(&key, "w", TTL).await?;
    let first = big(&lease, 0, 65_536, 8, 3);
    store.commit(&key, first.clone()).await?;
    assert_eq!(count(engine.as_ref(), b'd')?, 8 * 4, "four pieces per page");
    reads_back(&store_over(&engine).await?, &key, 1, &first).await?;
    let second = commit(&lease, 1, 65_536, 8, &[(1, 9), (5, 9)]);
    store.commit(&key, second).await?;
    store.gc(i64::MAX / 2, Duration::ZERO).await?;
    assert_eq!(
        count(engine.as_ref(), b'd')?,
        8 * 4,
        "the two overwritten pages' pieces went"
    );
    let read = store.read_pages(&key, Version(2), &[5, 6], PIN).await?;
    assert_eq!(read.pages[0], page(65_536, 9));
    assert_eq!(read.pages[1], first.pages[5].1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_transaction_outlives_the_time_limit() -> anyhow::Result<()> {
    // FoundationDB's 5 s, scaled down to 100 ms so that a commit, a load and a GC
    // pass each take longer than one transaction may live.
    let limit = Duration::from_millis(100);
    let (_dir, engine) = engine(FDB_LIMITS, limit);
    let stale = engine.snapshot()?;
    tokio::time::sleep(limit * 2).await;
    assert_eq!(
        stale.get(b"x").err(),
        Some(EngineError::TooOld),
        "the limit holds"
    );
    drop(stale);

    let store = store_over(&engine).await?;
    let key = DbKey::new("t", "slow.db");
    store.open(&key, true).await?;
    let lease = store.acquire_lease(&key, "w", TTL).await?;
    // 128 MiB, then bigger until one commit takes longer than the limit (a fast
    // machine writes 128 MiB to tmpfs in under 100 ms).
    let mut version = 0;
    let mut slowest = Duration::ZERO;
    let mut c = big(&lease, 0, 65_536, 2048, 4);
    for pages in [2048, 4096, 8192] {
        c = big(&lease, version, 65_536, pages, 4);
        let started = Instant::now();
        store.commit(&key, c.clone()).await?;
        version += 1;
        slowest = slowest.max(started.elapsed());
        if slowest > limit {
            break;
        }
    }
    assert!(
        slowest > limit,
        "the slowest commit took {slowest:?}: no test of the limit"
    );
    reads_back(&store_over(&engine).await?, &key, version, &c).await?;
    assert_eq!(
        engine.stats().overlong.load(Ordering::Relaxed),
        0,
        "a write outlived the limit"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_over_one_engine_commit_serially_and_stay_fenced() -> anyhow::Result<()> {
    let (_dir, engine) = engine(FDB_LIMITS, FDB_TRANSACTION_TIME);
    let (a, b) = (store_over(&engine).await?, store_over(&engine).await?);
    let key = DbKey::new("t", "shared.db");
    a.open(&key, true).await?;
    let lease = a.acquire_lease(&key, "w", TTL).await?;
    a.commit(&key, commit(&lease, 0, 4096, 2, &[(2, 1)]))
        .await?;
    // Both stores cache the database before the races.
    b.open(&key, false).await?;

    for round in 1..=20u64 {
        let fill = |side: u8| (round as u8).wrapping_mul(2).wrapping_add(side);
        let ca = commit(&lease, round, 4096, 2, &[(2, fill(0))]);
        let cb = commit(&lease, round, 4096, 2, &[(2, fill(1))]);
        let (ra, rb) = tokio::join!(a.commit(&key, ca), b.commit(&key, cb));
        let won: Vec<bool> = [&ra, &rb].iter().map(|r| r.is_ok()).collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {ra:?} {rb:?}"
        );
        let lost = if won[0] { &rb } else { &ra };
        assert!(
            matches!(lost, Err(StoreError::VersionConflict { base, current })
                if *base == Version(round) && *current == Version(round + 1)),
            "round {round}: the loser's error: {lost:?}"
        );
        let winner = if won[0] { fill(0) } else { fill(1) };
        for store in [&a, &b] {
            let read = store
                .read_pages(&key, Version(round + 1), &[2], PIN)
                .await?;
            assert_eq!(read.pages[0], page(4096, winner), "round {round}");
        }
    }
    assert_eq!(
        b.info(&key).await?.state.version,
        Version(21),
        "one version per round"
    );

    // A staged commit racing a small one on the same base: one wins; the loser's
    // stage leaves nothing behind.
    let staged = big(&lease, 21, 4096, 4096, 7);
    let small = commit(&lease, 21, 4096, 2, &[(2, 99)]);
    let (rs, rt) = tokio::join!(a.commit(&key, staged), b.commit(&key, small));
    assert!(rs.is_ok() != rt.is_ok(), "{rs:?} {rt:?}");
    a.gc(0, Duration::from_secs(3600)).await?;
    assert_eq!(count(engine.as_ref(), b's')?, 0, "no stage marker left");
    let staged_pages = count(engine.as_ref(), b'S')?;
    assert_eq!(staged_pages, if rs.is_ok() { 4096 } else { 0 });

    // Fencing across stores: B cannot take a live lease; once A releases, B's new
    // lease fences A's old one, though A cached the database before.
    let held = b.acquire_lease(&key, "other", TTL).await;
    assert!(
        matches!(held, Err(StoreError::LeaseHeld { .. })),
        "{held:?}"
    );
    a.release_lease(&key, lease.lease_id, lease.epoch).await?;
    let newer = b.acquire_lease(&key, "other", TTL).await?;
    assert!(newer.epoch > lease.epoch);
    let current = a.info(&key).await?.state.version.0;
    let fenced = a
        .commit(&key, commit(&lease, current, 4096, 2, &[(2, 5)]))
        .await;
    assert!(
        matches!(fenced, Err(StoreError::LeaseLost(_))),
        "{fenced:?}"
    );
    b.commit(&key, commit(&newer, current, 4096, 2, &[(2, 6)]))
        .await?;
    let read = a.read_pages(&key, Version(current + 1), &[2], PIN).await?;
    assert_eq!(read.pages[0], page(4096, 6), "A reads B's commit");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writers_through_two_stores_lose_nothing() -> anyhow::Result<()> {
    let (_dir, engine) = engine(FDB_LIMITS, FDB_TRANSACTION_TIME);
    let stores = [
        Arc::new(store_over(&engine).await?),
        Arc::new(store_over(&engine).await?),
    ];
    let key = DbKey::new("t", "counter.db");
    stores[0].open(&key, true).await?;
    let lease = stores[0].acquire_lease(&key, "w", TTL).await?;
    // Eight racers, each retrying on a conflict from the version it was told, until
    // it has landed five commits: every landed commit is one version, none is lost.
    let mut racers = tokio::task::JoinSet::new();
    for r in 0..8u8 {
        let store = stores[usize::from(r % 2)].clone();
        let (key, lease) = (key.clone(), lease.clone());
        racers.spawn(async move {
            let mut landed = 0;
            let mut base = 0;
            while landed < 5 {
                match store
                    .commit(&key, commit(&lease, base, 4096, 2, &[(2, r)]))
                    .await
                {
                    Ok(_) => {
                        landed += 1;
                        base += 1;
                    }
                    Err(StoreError::VersionConflict { current, .. }) => base = current.0,
                    Err(e) => return Err(anyhow::anyhow!("racer {r}: {e}")),
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = racers.join_next().await {
        result??;
    }
    for store in &stores {
        assert_eq!(store.info(&key).await?.state.version, Version(40));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_that_can_never_publish_are_collected() -> anyhow::Result<()> {
    let (_dir, engine) = engine(FDB_LIMITS, FDB_TRANSACTION_TIME);
    let store = store_over(&engine).await?;
    let key = DbKey::new("t", "crashed.db");
    store.open(&key, true).await?;
    let lease = store.acquire_lease(&key, "w", TTL).await?;
    store.commit(&key, commit(&lease, 0, 4096, 1, &[])).await?;
    let id = {
        let snap = engine.snapshot()?;
        let found = snap
            .get(&keys::catalog("t", "crashed.db"))?
            .unwrap_or_default();
        records::u64_value("id", &found)?
    };
    // What a server that crashed while staging leaves: a marker and some pages.
    let stage_as = |stage: [u8; 16], base: u64, created_unix_ms: i64| {
        let mut batch = Batch::default();
        let record = StageRecord {
            base,
            epoch: lease.epoch,
            created_unix_ms,
        };
        batch.put(keys::stage(id, &stage), records::encode(&record));
        for no in 1..=3 {
            batch.put(
                keys::stage_data(id, &stage, no),
                Bytes::from(vec![1u8; 4096]),
            );
            batch.put(
                keys::stage_write(id, &stage, no),
                records::write_len(Some(4096)),
            );
        }
        batch
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    engine.write(stage_as([1; 16], 1, now)).await?; // could still publish
    engine.write(stage_as([2; 16], 1, now - 7_200_000)).await?; // two hours old
    engine.write(stage_as([3; 16], 0, now)).await?; // its base is gone
    // Its lease has gone and it is ten minutes old: its writer died.
    let mut expired = stage_as([4; 16], 1, now - 600_000);
    expired.ops.truncate(1);
    engine.write(expired).await?;
    let released = store.release_lease(&key, lease.lease_id, lease.epoch).await;
    released?;
    store.gc(now, Duration::from_secs(3600)).await?;
    assert_eq!(
        count(engine.as_ref(), b's')?,
        1,
        "only the live stage is kept"
    );
    assert_eq!(count(engine.as_ref(), b'S')?, 3);
    // Once a newer lease is granted, the old writer can never publish it.
    let newer = store.acquire_lease(&key, "w2", TTL).await?;
    store.gc(now, Duration::from_secs(3600)).await?;
    assert_eq!(
        count(engine.as_ref(), b's')?,
        0,
        "the old epoch's stage went"
    );
    // And a commit of the new lease stages and publishes as ever.
    let c = big(&newer, 1, 4096, 2048, 8);
    store.commit(&key, c.clone()).await?;
    reads_back(&store, &key, 2, &c).await?;
    store.gc(now, Duration::from_secs(3600)).await?;
    assert_eq!(
        count(engine.as_ref(), b'S')?,
        2048,
        "the published stage is kept"
    );
    assert_eq!(count(engine.as_ref(), b's')?, 0);
    assert_eq!(count(engine.as_ref(), b'T')?, 2048);
    Ok(())
}

/// The stored format of the engine.
fn format(engine: &dyn Engine) -> anyhow::Result<u32> {
    let found = engine
        .snapshot()?
        .get(keys::FORMAT_KEY)?
        .unwrap_or_default();
    Ok(u32::from_be_bytes(found.as_slice().try_into()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_may_stage_is_format_2_so_older_servers_refuse_it() -> anyhow::Result<()> {
    let dir = data_dir();
    let key = DbKey::new("t", "f.db");
    let c = {
        let fjall = Arc::new(FjallEngine::open(dir.path())?);
        let store = KvStore::open(fjall.clone()).await?;
        assert_eq!(
            format(fjall.as_ref())?,
            keys::FORMAT_WHOLE,
            "the plain store"
        );
        store.open(&key, true).await?;
        let limited = Arc::new(LimitedEngine::fdb(fjall.clone()));
        let store = store_over(&limited).await?;
        // Servers of format 1 refuse "a newer format" (`a_newer_format_is_refused`).
        assert_eq!(format(fjall.as_ref())?, keys::FORMAT_STAGED);
        let lease = store.acquire_lease(&key, "w", TTL).await?;
        let c = big(&lease, 0, 4096, 4096, 5); // 16 MiB: staged
        store.commit(&key, c.clone()).await?;
        c
    };
    // The plain store reads a staged version, and keeps the format.
    let fjall = Arc::new(FjallEngine::open(dir.path())?);
    let store = KvStore::open(fjall.clone()).await?;
    reads_back(&store, &key, 1, &c).await?;
    assert_eq!(format(fjall.as_ref())?, keys::FORMAT_STAGED);
    Ok(())
}

/// A branch reads its source's pages through, staged ones included; the first fork
/// raises the format to 3 (so an older server, which would read a branch's pages as
/// zeros, refuses the store), and not before: a store that never branched stays
/// readable by older servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_read_staged_pages_and_raise_the_format_only_when_used() -> anyhow::Result<()> {
    let dir = data_dir();
    let key = DbKey::new("t", "src.db");
    let branch = DbKey::new("t", "branch.db");
    let c = {
        let fjall = Arc::new(FjallEngine::open(dir.path())?);
        let limited = Arc::new(LimitedEngine::fdb(fjall.clone()));
        let store = store_over(&limited).await?;
        store.open(&key, true).await?;
        let lease = store.acquire_lease(&key, "w", TTL).await?;
        let c = big(&lease, 0, 4096, 4096, 7); // 16 MiB: staged
        store.commit(&key, c.clone()).await?;
        store.commit(&key, big(&lease, 1, 4096, 16, 9)).await?; // shrinks to 16 pages
        assert_eq!(
            format(fjall.as_ref())?,
            keys::FORMAT_STAGED,
            "no branch yet"
        );
        store
            .fork(
                &key,
                pagewire_server_core::store::ReadAt::Version(Version(1)),
                &branch,
            )
            .await?;
        assert_eq!(format(fjall.as_ref())?, keys::FORMAT_BRANCHES);
        reads_back(&store, &branch, 1, &c).await?;
        c
    };
    // After a restart, on the plain engine: the branch still reads the staged pages,
    // and GC keeps them for it even with no retention at all.
    let fjall = Arc::new(FjallEngine::open(dir.path())?);
    let store = KvStore::open(fjall.clone()).await?;
    store.gc(i64::MAX / 2, Duration::ZERO).await?;
    reads_back(&store, &branch, 1, &c).await?;
    assert_eq!(format(fjall.as_ref())?, keys::FORMAT_BRANCHES);
    Ok(())
}
