//! The embedded engine and the key-value store over it, in this process: commits are
//! synced before they return and concurrent ones share syncs; data, leases and epochs
//! survive a reopen; only hot databases stay in memory; a directory in use, a file
//! where the directory should be, a corrupt data file and a newer format are refused
//! with a clear error and left as they were.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pagewire_server_core::store::{
    BeginRead, Commit, DbKey, Identity, Lease, PageStore, PinTtl, ReadAt, StoreResult, Version,
    random_id,
};
use pagewire_store_kv::{
    Batch, Engine as _, FjallEngine, KvStore, OpenError, RedbEngine, open_data_dir,
};

const PS: u32 = 4096;
const TTL: Duration = Duration::from_secs(30);
const PIN: PinTtl = PinTtl {
    ttl: Duration::from_secs(60),
    max_age: Duration::from_secs(600),
};

fn page(fill: u8) -> Bytes {
    Bytes::from(vec![fill; PS as usize])
}

/// A commit on `lease` at `base` writing `pages` (page 1 always among them).
fn commit(lease: &Lease, base: u64, store_state: (Identity, u32), pages: &[(u32, u8)]) -> Commit {
    let (identity, page_count) = store_state;
    Commit {
        lease_id: lease.lease_id,
        epoch: lease.epoch,
        base_version: Version(base),
        commit_id: random_id(),
        identity,
        page_size: PS,
        page_count,
        pages: pages.iter().map(|&(no, fill)| (no, page(fill))).collect(),
    }
}

async fn identity(store: &KvStore, key: &DbKey) -> StoreResult<Identity> {
    let (state, _) = store.open(key, false).await?;
    Ok(Identity {
        incarnation: Some(state.incarnation),
        version: Some((state.version, state.tag)),
    })
}

/// Writes `n` commits of `pages` pages to `key` (created), each page filled with the
/// commit's number.
async fn write_commits(store: &KvStore, key: &DbKey, n: u8, pages: u32) -> anyhow::Result<Lease> {
    store.open(key, true).await?;
    let lease = store.acquire_lease(key, "writer", TTL).await?;
    for i in 0..n {
        let base = store.open(key, false).await?.0.version.0;
        let list: Vec<(u32, u8)> = (1..=pages).map(|no| (no, i + 1)).collect();
        let id = identity(store, key).await?;
        store
            .commit(key, commit(&lease, base, (id, pages), &list))
            .await?;
    }
    Ok(lease)
}

async fn read_page(store: &KvStore, key: &DbKey, no: u32) -> anyhow::Result<Bytes> {
    let view = store
        .begin_read(
            key,
            BeginRead {
                cached_version: Version::ZERO,
                at: ReadAt::Newest,
                pin: PIN,
                max_changes: 1000,
                seen_version: Version::ZERO,
            },
        )
        .await?;
    let read = store
        .read_pages(key, view.state.version, &[no], PIN)
        .await?;
    Ok(read.pages[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_is_synced_before_it_returns() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, engine) = open_data_dir(dir.path()).await?;
    let key = DbKey::new("t", "a.db");
    store.open(&key, true).await?;
    let lease = store.acquire_lease(&key, "w", TTL).await?;
    for i in 0..20u8 {
        let before = engine.syncs();
        let id = identity(&store, &key).await?;
        store
            .commit(
                &key,
                commit(&lease, u64::from(i), (id, 10), &[(1, i), (2, i), (10, i)]),
            )
            .await?;
        assert!(engine.syncs() > before, "commit {i} returned before a sync");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_to_different_databases_share_syncs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, engine) = open_data_dir(dir.path()).await?;
    let store = Arc::new(store);
    let (writers, rounds) = (64, 5u8);
    let before = engine.syncs();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            write_commits(&store, &DbKey::new("t", format!("{w}.db")), rounds, 10).await
        }));
    }
    for task in tasks {
        task.await??;
    }
    // Each writer: a create, a lease and `rounds` commits, every one synced.
    let writes = writers * (2 + u64::from(rounds));
    let syncs = engine.syncs() - before;
    assert!(
        syncs > 0 && syncs < writes / 2,
        "{syncs} syncs for {writes} durable writes: no group commit"
    );
    for w in 0..writers {
        assert_eq!(
            read_page(&store, &DbKey::new("t", format!("{w}.db")), 10).await?,
            page(rounds)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_leases_and_epochs_survive_a_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = DbKey::new("t", "a.db");
    let (old_lease, incarnation) = {
        let (store, _engine) = open_data_dir(dir.path()).await?;
        let lease = write_commits(&store, &key, 3, 4).await?;
        (lease, store.open(&key, false).await?.0.incarnation)
    };
    let (store, _engine) = open_data_dir(dir.path()).await?;
    let (state, created) = store.open(&key, false).await?;
    assert!(!created);
    assert_eq!(
        (state.version, state.page_count, state.incarnation),
        (Version(3), 4, incarnation)
    );
    assert_eq!(read_page(&store, &key, 4).await?, page(3));
    // The lease is still held (30 s TTL), and renewable by its holder.
    assert!(
        store.acquire_lease(&key, "other", TTL).await.is_err(),
        "the lease survived"
    );
    store
        .renew_lease(&key, old_lease.lease_id, old_lease.epoch, TTL)
        .await?;
    store
        .release_lease(&key, old_lease.lease_id, old_lease.epoch)
        .await?;
    let next = store.acquire_lease(&key, "other", TTL).await?;
    assert!(next.epoch > old_lease.epoch, "epochs never go backwards");
    // The old holder stays fenced.
    let id = identity(&store, &key).await?;
    let fenced = store
        .commit(&key, commit(&old_lease, 3, (id, 4), &[(1, 9)]))
        .await;
    assert!(
        matches!(fenced, Err(e) if e.is_fenced()),
        "the superseded writer is fenced"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_hot_databases_stay_in_memory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let engine = Arc::new(FjallEngine::open(dir.path())?);
    let store = KvStore::open(engine).await?.with_hot_limit(8);
    for i in 0..40u8 {
        write_commits(&store, &DbKey::new("t", format!("{i}.db")), 1, 2).await?;
    }
    // Readers pin what they read, so those stay; the writers' databases went cold.
    assert!(store.hot_databases() <= 8, "{} hot", store.hot_databases());
    for i in 0..40u8 {
        assert_eq!(
            store
                .info(&DbKey::new("t", format!("{i}.db")))
                .await?
                .state
                .version,
            Version(1)
        );
    }
    assert_eq!(store.list("t").await?.len(), 40);
    Ok(())
}

fn open_error(dir: &Path) -> String {
    match FjallEngine::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_in_use_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let _first = FjallEngine::open(dir.path())?;
    let e = open_error(dir.path());
    assert!(
        e.contains("in use by another pagewire server")
            && e.contains(&format!("pid {}", std::process::id())),
        "{e}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_instead_of_a_directory_is_refused() -> anyhow::Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), b"keep me")?;
    assert!(matches!(
        FjallEngine::open(file.path()),
        Err(OpenError::NotADirectory(_))
    ));
    assert_eq!(std::fs::read(file.path())?, b"keep me");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_data_file_is_refused_and_left_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let garbage: Vec<u8> = (0..1 << 16)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let path = dir.path().join(pagewire_store_kv::redb_engine::DATA_FILE);
    std::fs::write(&path, &garbage)?;
    let e = open_error(dir.path());
    assert!(
        e.contains("cannot open the data file") && e.contains("was not changed"),
        "{e}"
    );
    assert_eq!(std::fs::read(&path)?, garbage, "the file was changed");
    Ok(())
}

/// The journal files of the fjall engine in data directory `dir`.
fn journals(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir.join(pagewire_store_kv::fjall_engine::ENGINE_DIR))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jnl") {
            found.push(path);
        }
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_journal_is_refused_and_left_alone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let (store, _engine) = open_data_dir(dir.path()).await?;
        write_commits(&store, &DbKey::new("t", "a.db"), 4, 3).await?;
    }
    let journal = journals(dir.path())?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no journal"))?;
    let mut bytes = std::fs::read(&journal)?;
    // A byte in the middle of what was written (the file is preallocated with zeros):
    // inside a complete batch, several follow it.
    let written = bytes
        .iter()
        .rposition(|&b| b != 0)
        .ok_or_else(|| anyhow::anyhow!("an empty journal"))?;
    bytes[written / 2] ^= 0x5a;
    std::fs::write(&journal, &bytes)?;
    let e = open_error(dir.path());
    assert!(
        e.contains("cannot open the data file") && e.contains("was not changed"),
        "{e}"
    );
    assert_eq!(std::fs::read(&journal)?, bytes, "the journal was changed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_written_by_redb_moves_to_fjall() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = DbKey::new("t", "a.db");
    let (lease, incarnation) = {
        let engine = Arc::new(RedbEngine::open(dir.path())?);
        let store = KvStore::open(engine).await?;
        let lease = write_commits(&store, &key, 3, 4).await?;
        (lease, store.open(&key, false).await?.0.incarnation)
    };
    let redb = dir.path().join(pagewire_store_kv::redb_engine::DATA_FILE);
    assert!(redb.exists());
    for _ in 0..2 {
        // The second start finds the directory already moved.
        let (store, _engine) = open_data_dir(dir.path()).await?;
        let (state, _) = store.open(&key, false).await?;
        assert_eq!(
            (state.version, state.page_count, state.incarnation),
            (Version(3), 4, incarnation)
        );
        assert_eq!(read_page(&store, &key, 4).await?, page(3));
        assert!(
            store.acquire_lease(&key, "other", TTL).await.is_err(),
            "the lease moved too"
        );
        assert_eq!(
            std::fs::read(&redb)?,
            pagewire_store_kv::migrate::placeholder(),
            "pagewire.redb is renamed, a placeholder in its place"
        );
        assert!(
            dir.path()
                .join(pagewire_store_kv::migrate::MIGRATED_FILE)
                .exists()
        );
    }
    let (store, _engine) = open_data_dir(dir.path()).await?;
    let id = identity(&store, &key).await?;
    store
        .commit(&key, commit(&lease, 3, (id, 4), &[(1, 9)]))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_server_refuses_a_directory_kept_by_fjall() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let (store, _engine) = open_data_dir(dir.path()).await?;
        write_commits(&store, &DbKey::new("t", "a.db"), 1, 2).await?;
    }
    let redb = dir.path().join(pagewire_store_kv::redb_engine::DATA_FILE);
    let placeholder = std::fs::read(&redb)?;
    assert_eq!(placeholder, pagewire_store_kv::migrate::placeholder());
    // The redb engine is the older servers' code, unchanged but for the lock.
    match RedbEngine::open(dir.path()) {
        Ok(_) => panic!("the redb engine opened a fjall directory"),
        Err(e) => assert!(e.to_string().contains("cannot open the data file"), "{e}"),
    }
    assert_eq!(
        std::fs::read(&redb)?,
        placeholder,
        "the placeholder was changed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_format_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let engine = Arc::new(FjallEngine::open(dir.path())?);
        KvStore::open(engine.clone()).await?;
        let mut batch = Batch::default();
        batch.put(
            pagewire_store_kv::keys::FORMAT_KEY.to_vec(),
            99u32.to_be_bytes().to_vec(),
        );
        engine.write(batch).await?;
    }
    let engine = Arc::new(FjallEngine::open(dir.path())?);
    let e = KvStore::open(engine)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("newer pagewire server") && e.contains("format 99"),
        "{e}"
    );
    Ok(())
}

/// Every key in the engine.
fn all_keys(engine: &FjallEngine) -> anyhow::Result<Vec<Vec<u8>>> {
    let snap = engine.snapshot()?;
    Ok(snap
        .scan(&[], &[u8::MAX; 16], false, usize::MAX)?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_removes_every_record_in_bounded_batches() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, engine) = open_data_dir(dir.path()).await?;
    let format = vec![pagewire_store_kv::keys::FORMAT_KEY.to_vec()];
    // 3 commits of 700 pages: 4,200+ records, several sweep batches.
    let key = DbKey::new("t", "big.db");
    write_commits(&store, &key, 3, 700).await?;
    let syncs = engine.syncs();
    store.delete(&key).await?;
    assert!(engine.syncs() - syncs > 4, "one batch for the whole delete");
    assert_eq!(all_keys(&engine)?, format, "records left after the delete");
    assert!(store.info(&key).await.is_err());

    // A delete cut short (a crash after its first batch): GC finishes it.
    let key = DbKey::new("t", "cut.db");
    write_commits(&store, &key, 2, 50).await?;
    let catalog = pagewire_store_kv::keys::catalog("t", "cut.db");
    let id = engine
        .snapshot()?
        .get(&catalog)?
        .ok_or_else(|| anyhow::anyhow!("no catalog entry"))?;
    let id = u64::from_be_bytes(id.as_slice().try_into()?);
    let mut cut = Batch::default();
    cut.delete(catalog);
    cut.delete(pagewire_store_kv::keys::head(id));
    cut.put(pagewire_store_kv::keys::deleted(id), Vec::new());
    engine.write(cut).await?;
    assert!(all_keys(&engine)?.len() > 100);
    store.gc(i64::MAX / 2, Duration::from_secs(3600)).await?;
    assert_eq!(
        all_keys(&engine)?,
        format,
        "GC left records of the cut delete"
    );
    Ok(())
}
