//! The conformance suite: the rules every [`PageStore`] must keep, as public async
//! functions taking the store under test (object_store style). Each store's tests run
//! them all with [`crate::conformance_tests!`] (one `#[tokio::test]` per function); each
//! function uses its own tenant, so they can also share one store.
//!
//! Time: functions that wait out leases or pins take a [`TestTime`]. With
//! [`TestTime::Paused`] (the memory store under `#[tokio::test(start_paused = true)]`, its
//! clocks following tokio's) TTLs are seconds and sleeps take no real time; with
//! [`TestTime::Real`] (a store with its own clock, e.g. PostgreSQL's `clock_timestamp()`)
//! TTLs are a short unit and sleeps are real. History tests (`history`) take commit times
//! from what the store reports, and space commits with short sleeps.
//!
//! Besides the rules one by one: concurrency (`concurrency`), a commit of 256 MiB
//! (`large`), and a randomized run against the memory store as the reference model
//! (`model`).

mod branches;
mod concurrency;
mod history;
mod identity;
mod large;
mod limits;
mod macros;
mod model;
mod time;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::{BufMut, Bytes, BytesMut};

pub use branches::*;
pub use concurrency::*;
pub use history::*;
pub use identity::*;
pub use large::*;
pub use limits::*;
pub use model::*;
pub use time::TestTime;

/// What every suite function returns.
pub type Outcome = anyhow::Result<()>;

use super::{
    BeginRead, Commit, DbKey, Identity, Lease, PageStore, PinTtl, ReadAt, ReadView, StoreError,
    StoreResult, Version,
};

const PS: u32 = 4096;
const TTL: Duration = Duration::from_secs(10);
/// The pin TTL of reads that do not test pins.
const PIN: PinTtl = pin(Duration::from_secs(60));
/// The change-list limit of reads that do not test it.
const MAX_CHANGES: usize = 65_536;

/// Pins of `ttl`, with an age limit no test reaches unless it tests that.
pub const fn pin(ttl: Duration) -> PinTtl {
    PinTtl {
        ttl,
        max_age: Duration::from_secs(86_400),
    }
}

/// A BeginRead of the newest version with `cached_version`.
pub fn newest(cached_version: u64) -> BeginRead {
    BeginRead {
        cached_version: Version(cached_version),
        at: ReadAt::Newest,
        pin: PIN,
        max_changes: MAX_CHANGES,
        seen_version: Version::ZERO,
    }
}

/// A view's changes as a plain list (growth listed up to its page count); `None` when
/// the client must drop its cache.
pub fn listed(view: &ReadView) -> Option<Vec<u32>> {
    view.changes
        .as_ref()
        .and_then(|c| c.enumerated(view.state.page_count, usize::MAX))
}

/// A valid page 1 (rollback-journal format, valid in-header page count) whose body past
/// the 100-byte header is `fill`.
pub fn page_one(page_size: u32, page_count: u32, fill: u8) -> Bytes {
    let mut p = BytesMut::with_capacity(page_size as usize);
    p.put_slice(b"SQLite format 3\0");
    p.put_u16(if page_size == 65536 {
        1
    } else {
        page_size as u16
    });
    p.put_slice(&[1, 1, 0, 64, 32, 32]); // formats, reserved, payload fractions
    p.put_u32(1); // change counter (bytes 24..28)
    p.put_u32(page_count); // bytes 28..32
    p.put_bytes(0, 92 - 32);
    p.put_u32(1); // version-valid-for (bytes 92..96) == change counter
    p.put_bytes(0, 100 - 96);
    p.put_bytes(fill, page_size as usize - 100);
    p.freeze()
}

/// A page of `page_size` bytes, all `fill`.
pub fn page(page_size: u32, fill: u8) -> Bytes {
    Bytes::from(vec![fill; page_size as usize])
}

/// A commit on `lease` over `base` writing page 1 (filled with `fills`' entry for 1, or 0)
/// and every other `(page_no, fill)`; a fresh random commit id.
pub fn commit(
    lease: &Lease,
    base: u64,
    page_size: u32,
    page_count: u32,
    fills: &[(u32, u8)],
) -> Commit {
    let fill1 = fills.iter().find(|(no, _)| *no == 1).map_or(0, |(_, f)| *f);
    let mut pages = vec![(1, page_one(page_size, page_count, fill1))];
    pages.extend(
        fills
            .iter()
            .filter(|(no, _)| *no != 1)
            .map(|&(no, f)| (no, page(page_size, f))),
    );
    Commit {
        lease_id: lease.lease_id,
        epoch: lease.epoch,
        base_version: Version(base),
        commit_id: crate::store::random_id(),
        identity: Identity::default(),
        page_size,
        page_count,
        pages,
    }
}

fn key(tenant: &str, name: &str) -> DbKey {
    DbKey::new(tenant, name)
}

/// Creates `key` and takes its write lease.
async fn writable(store: &dyn PageStore, key: &DbKey) -> anyhow::Result<Lease> {
    store.open(key, true).await?;
    Ok(store.acquire_lease(key, "writer", TTL).await?)
}

/// The one page `page_no` at `version`.
async fn read1(
    store: &dyn PageStore,
    key: &DbKey,
    version: u64,
    page_no: u32,
) -> anyhow::Result<Bytes> {
    let read = store
        .read_pages(key, Version(version), &[page_no], PIN)
        .await?;
    read.pages
        .into_iter()
        .next()
        .context("read_pages returned no page")
}

/// Whether page `page_no` at `version` is `fill` past the header (page 1) or whole.
async fn page_is(
    store: &dyn PageStore,
    key: &DbKey,
    version: u64,
    page_no: u32,
    fill: u8,
) -> anyhow::Result<bool> {
    let data = read1(store, key, version, page_no).await?;
    let body = if page_no == 1 {
        data.get(100..).unwrap_or_default()
    } else {
        &data[..]
    };
    Ok(data.len() == PS as usize && body.iter().all(|&b| b == fill))
}

/// The error of `result`, which must match `want`.
fn expect_err<T: std::fmt::Debug>(
    result: StoreResult<T>,
    want: impl Fn(&StoreError) -> bool,
    what: &str,
) -> anyhow::Result<StoreError> {
    match result {
        Err(e) if want(&e) => Ok(e),
        other => bail!("{what}: unexpected result {other:?}"),
    }
}

pub async fn read_your_writes_at_versions(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("ryw", "a.db");
    let lease = writable(store, &k).await?;
    let v1 = store
        .commit(&k, commit(&lease, 0, PS, 3, &[(1, 1), (2, 1), (3, 1)]))
        .await?;
    ensure!(
        v1.version == Version(1) && !v1.already_applied,
        "first commit: {v1:?}"
    );
    let v2 = store
        .commit(&k, commit(&lease, 1, PS, 3, &[(2, 2)]))
        .await?;
    ensure!(v2.version == Version(2), "second commit: {v2:?}");
    ensure!(page_is(store, &k, 2, 2, 2).await?, "v2 sees its own write");
    ensure!(
        page_is(store, &k, 2, 3, 1).await?,
        "v2 sees v1's untouched page"
    );
    ensure!(page_is(store, &k, 1, 2, 1).await?, "v1 still sees its page");
    let state = store.open(&k, false).await?.0;
    ensure!(state.geometry() == (2, PS, 3), "state {state:?}");
    Ok(())
}

pub async fn unwritten_pages_are_zeros(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("zeros", "a.db");
    let lease = writable(store, &k).await?;
    store
        .commit(&k, commit(&lease, 0, PS, 4, &[(3, 7)]))
        .await?;
    let read = store.read_pages(&k, Version(1), &[4, 2, 3], PIN).await?;
    ensure!(read.page_size == PS && read.pages.len() == 3, "read shape");
    for (i, data) in read.pages.iter().enumerate() {
        let fill = if i == 2 { 7 } else { 0 };
        ensure!(
            data.len() == PS as usize && data.iter().all(|&b| b == fill),
            "page #{i} in request order"
        );
    }
    Ok(())
}

pub async fn snapshot_reads_at_old_versions(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("snap", "a.db");
    let lease = writable(store, &k).await?;
    for v in 1..=5u8 {
        // Version v writes page v (fill v) and page 1; version 1 also page 5, as
        // zeros (a grown file's last page is written).
        let fills = [(1, v), (u32::from(v), v), (5, 0)];
        let fills = if v == 1 { &fills[..] } else { &fills[..2] };
        store
            .commit(&k, commit(&lease, u64::from(v) - 1, PS, 5, fills))
            .await?;
    }
    for v in 1..=5u8 {
        ensure!(
            page_is(store, &k, v.into(), 1, v).await?,
            "page 1 at version {v}"
        );
        for p in 2..=5u8 {
            let want = if p <= v { p } else { 0 };
            ensure!(
                page_is(store, &k, v.into(), p.into(), want).await?,
                "page {p} at version {v}"
            );
        }
    }
    Ok(())
}

pub async fn truncate_then_grow_reads_zeros(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("regrow", "a.db");
    let lease = writable(store, &k).await?;
    store
        .commit(
            &k,
            commit(&lease, 0, PS, 4, &[(1, 1), (2, 1), (3, 1), (4, 1)]),
        )
        .await?;
    store.commit(&k, commit(&lease, 1, PS, 2, &[])).await?;
    expect_err(
        store.read_pages(&k, Version(2), &[3], PIN).await,
        |e| matches!(e, StoreError::InvalidArgument(_)),
        "page past the truncated end",
    )?;
    store
        .commit(&k, commit(&lease, 2, PS, 4, &[(4, 9)]))
        .await?;
    ensure!(
        page_is(store, &k, 3, 3, 0).await?,
        "grown page 3 reads zeros"
    );
    ensure!(
        page_is(store, &k, 3, 4, 9).await?,
        "grown page 4 has the new write"
    );
    ensure!(
        page_is(store, &k, 3, 2, 1).await?,
        "page 2 kept through the truncate"
    );
    ensure!(
        page_is(store, &k, 1, 3, 1).await?,
        "version 1 still has page 3"
    );
    let view = store.begin_read(&k, newest(2)).await?;
    ensure!(
        listed(&view) == Some(vec![1, 3, 4]),
        "changes since 2: {view:?}"
    );
    Ok(())
}

pub async fn failed_commits_change_nothing(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("failed", "a.db");
    let lease = writable(store, &k).await?;
    store
        .commit(&k, commit(&lease, 0, PS, 2, &[(1, 1), (2, 1)]))
        .await?;
    let before = store.info(&k).await?;
    let lost = |e: &StoreError| matches!(e, StoreError::LeaseLost(_));
    let mut bad = commit(&lease, 1, PS, 2, &[(2, 9)]);
    bad.lease_id = crate::store::random_id();
    expect_err(
        store.commit(&k, bad.clone()).await,
        lost,
        "unknown lease id",
    )?;
    let mut stale = commit(&lease, 1, PS, 2, &[(2, 9)]);
    stale.epoch = lease.epoch + 1;
    expect_err(store.commit(&k, stale).await, lost, "wrong epoch")?;
    let conflict = commit(&lease, 0, PS, 2, &[(2, 9)]);
    let e = expect_err(
        store.commit(&k, conflict).await,
        |e| matches!(e, StoreError::VersionConflict { .. }),
        "stale base",
    )?;
    ensure!(
        e == StoreError::VersionConflict {
            base: Version(0),
            current: Version(1)
        },
        "conflict names the versions: {e:?}"
    );
    let resize = commit(&lease, 1, 8192, 2, &[]);
    expect_err(
        store.commit(&k, resize).await,
        |e| matches!(e, StoreError::InvalidArgument(_)),
        "partial resize",
    )?;
    let after = store.info(&k).await?;
    ensure!(before == after, "nothing changed: {before:?} vs {after:?}");
    ensure!(page_is(store, &k, 1, 2, 1).await?, "page 2 unchanged");
    // The failed attempt's commit id was not recorded: fixed, it applies.
    bad.lease_id = lease.lease_id;
    let ok = store.commit(&k, bad).await?;
    ensure!(
        ok.version == Version(2) && !ok.already_applied,
        "corrected commit applies: {ok:?}"
    );
    Ok(())
}

pub async fn epoch_fencing_after_expiry(store: &dyn PageStore, time: &TestTime) -> Outcome {
    let k = key("fence", "a.db");
    store.open(&k, true).await?;
    let ttl = time.unit();
    let a = store.acquire_lease(&k, "a", ttl).await?;
    store.commit(&k, commit(&a, 0, PS, 1, &[(1, 1)])).await?;
    time.sleep(ttl * 3 / 2).await;
    let b = store.acquire_lease(&k, "b", ttl).await?;
    ensure!(
        b.epoch > a.epoch && b.lease_id != a.lease_id,
        "new grant, new epoch"
    );
    let lost = |e: &StoreError| matches!(e, StoreError::LeaseLost(_));
    expect_err(
        store.commit(&k, commit(&a, 1, PS, 1, &[(1, 2)])).await,
        lost,
        "A commits after expiry",
    )?;
    expect_err(
        store.renew_lease(&k, a.lease_id, a.epoch, ttl).await,
        lost,
        "A renews after expiry",
    )?;
    store.release_lease(&k, a.lease_id, a.epoch).await?;
    let done = store.commit(&k, commit(&b, 1, PS, 1, &[(1, 3)])).await?;
    ensure!(
        done.version == Version(2),
        "B commits after A's release attempt: {done:?}"
    );
    ensure!(page_is(store, &k, 2, 1, 3).await?, "B's data");
    expect_err(
        store.commit(&k, commit(&a, 2, PS, 1, &[(1, 2)])).await,
        lost,
        "A with the right base",
    )?;
    ensure!(
        store.info(&k).await?.state.version == Version(2),
        "A changed nothing"
    );
    Ok(())
}

pub async fn commit_id_retry_after_release(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("retry", "a.db");
    let lease = writable(store, &k).await?;
    let c = commit(&lease, 0, PS, 1, &[(1, 1)]);
    let first = store.commit(&k, c.clone()).await?;
    store.release_lease(&k, lease.lease_id, lease.epoch).await?;
    let retry = store.commit(&k, c.clone()).await?;
    ensure!(
        retry.version == first.version && retry.already_applied,
        "retry: {retry:?}"
    );
    let other = store.acquire_lease(&k, "other", TTL).await?;
    store
        .commit(&k, commit(&other, 1, PS, 1, &[(1, 2)]))
        .await?;
    let late = store.commit(&k, c).await?;
    ensure!(
        late.version == Version(1) && late.already_applied,
        "late retry: {late:?}"
    );
    ensure!(
        store.info(&k).await?.state.version == Version(2),
        "retries applied nothing"
    );
    ensure!(page_is(store, &k, 2, 1, 2).await?, "newest data kept");
    Ok(())
}

pub async fn lease_exclusivity(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("excl", "a.db");
    store.open(&k, true).await?;
    let a = store.acquire_lease(&k, "client-a", TTL).await?;
    let held = |e: &StoreError| matches!(e, StoreError::LeaseHeld { .. });
    let e = expect_err(
        store.acquire_lease(&k, "client-b", TTL).await,
        held,
        "second writer",
    )?;
    let StoreError::LeaseHeld { holder, remaining } = e else {
        bail!("not LeaseHeld")
    };
    ensure!(
        holder == "client-a" && remaining <= TTL && !remaining.is_zero(),
        "holder {holder}, {remaining:?}"
    );
    expect_err(
        store.acquire_lease(&k, "client-a", TTL).await,
        held,
        "same client id, new grant",
    )?;
    ensure!(store.info(&k).await?.lease_held, "info shows the lease");
    store.release_lease(&k, a.lease_id, a.epoch).await?;
    ensure!(!store.info(&k).await?.lease_held, "released");
    let b = store.acquire_lease(&k, "client-b", TTL).await?;
    ensure!(
        b.epoch == a.epoch + 1,
        "epochs grow by one: {} then {}",
        a.epoch,
        b.epoch
    );
    store.release_lease(&k, b.lease_id, b.epoch).await?;
    let c = store.acquire_lease(&k, "client-c", TTL).await?;
    ensure!(c.epoch == b.epoch + 1, "epochs never reused after release");
    Ok(())
}

pub async fn lease_renew_and_release(store: &dyn PageStore, time: &TestTime) -> Outcome {
    let k = key("renew", "a.db");
    store.open(&k, true).await?;
    let ttl = time.unit();
    let step = ttl * 6 / 10;
    let a = store.acquire_lease(&k, "a", ttl).await?;
    time.sleep(step).await;
    let renewed = store.renew_lease(&k, a.lease_id, a.epoch, ttl).await?;
    ensure!(
        renewed.lease_id == a.lease_id && renewed.epoch == a.epoch,
        "renewal keeps the lease"
    );
    time.sleep(step).await;
    store.commit(&k, commit(&a, 0, PS, 1, &[])).await?; // 1.2 TTLs after the grant
    time.sleep(step).await;
    store.commit(&k, commit(&a, 1, PS, 1, &[])).await?; // a commit renewed it too
    let lost = |e: &StoreError| matches!(e, StoreError::LeaseLost(_));
    expect_err(
        store.renew_lease(&k, a.lease_id, a.epoch + 1, ttl).await,
        lost,
        "renew with a wrong epoch",
    )?;
    store.release_lease(&k, a.lease_id, a.epoch).await?;
    store.release_lease(&k, a.lease_id, a.epoch).await?; // idempotent
    expect_err(
        store.renew_lease(&k, a.lease_id, a.epoch, ttl).await,
        lost,
        "renew after release",
    )?;
    Ok(())
}

/// An acquire whose answer was lost is asked again under the same id: it gets the lease
/// it was granted, renewed from the retry; any other id still finds the lease held.
pub async fn a_retried_acquire_gets_the_lease_it_was_granted(
    store: &dyn PageStore,
    time: &TestTime,
) -> Outcome {
    let k = key("retried", "a.db");
    store.open(&k, true).await?;
    let (ttl, id) = (time.unit(), super::random_id());
    let step = ttl * 6 / 10;
    let a = store.acquire_lease_as(&k, "a", id, ttl).await?;
    ensure!(a.lease_id == id, "granted under the id asked for");
    time.sleep(step).await;
    let again = store.acquire_lease_as(&k, "a", id, ttl).await?;
    ensure!(
        (again.lease_id, again.epoch) == (id, a.epoch),
        "the same lease, not a new epoch: {again:?}"
    );
    let held = |e: &StoreError| matches!(e, StoreError::LeaseHeld { .. });
    let other = store
        .acquire_lease_as(&k, "b", super::random_id(), ttl)
        .await;
    expect_err(other, held, "another id")?;
    time.sleep(step).await; // 1.2 TTLs after the grant, 0.6 after the retry
    store.commit(&k, commit(&a, 0, PS, 1, &[])).await?;
    store.release_lease(&k, id, a.epoch).await?;
    let later = store.acquire_lease_as(&k, "a", id, ttl).await?;
    ensure!(
        later.epoch == a.epoch + 1,
        "once released, the same id is a new grant with a new epoch"
    );
    Ok(())
}

pub async fn tenant_isolation(store: &dyn PageStore) -> anyhow::Result<()> {
    let (ka, kb) = (key("iso-a", "same.db"), key("iso-b", "same.db"));
    let la = writable(store, &ka).await?;
    store
        .commit(&ka, commit(&la, 0, PS, 2, &[(1, 1), (2, 1)]))
        .await?;
    expect_err(
        store.open(&kb, false).await,
        StoreError::is_not_found,
        "other tenant's name",
    )?;
    let lb = writable(store, &kb).await?; // its own lease: A's does not cover it
    ensure!(
        store.info(&kb).await?.state.version == Version(0),
        "B starts empty"
    );
    store.commit(&kb, commit(&lb, 0, PS, 1, &[(1, 2)])).await?;
    ensure!(
        page_is(store, &ka, 1, 1, 1).await? && page_is(store, &kb, 1, 1, 2).await?,
        "separate pages"
    );
    let names = |v: Vec<super::DbInfo>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
    ensure!(
        names(store.list("iso-a").await?) == ["same.db"],
        "A lists its own"
    );
    store.delete(&kb).await?;
    ensure!(
        store.info(&ka).await?.state.page_count == 2,
        "deleting B's left A's"
    );
    ensure!(store.list("iso-b").await?.is_empty(), "B's list empty");
    Ok(())
}

pub async fn create_list_delete(store: &dyn PageStore) -> anyhow::Result<()> {
    let t = "admin-t";
    let info = store.create(&key(t, "b/two.db")).await?;
    ensure!(
        info.name == "b/two.db" && info.state.version == Version(0) && !info.lease_held,
        "{info:?}"
    );
    expect_err(
        store.create(&key(t, "b/two.db")).await,
        |e| matches!(e, StoreError::AlreadyExists(_)),
        "create twice",
    )?;
    let (state, created) = store.open(&key(t, "a.db"), true).await?;
    ensure!(
        created && state.geometry() == (0, 0, 0) && state.tag == crate::store::NO_TAG,
        "open creates"
    );
    ensure!(
        !store.open(&key(t, "a.db"), true).await?.1,
        "second open does not create"
    );
    let names: Vec<_> = store.list(t).await?.into_iter().map(|i| i.name).collect();
    ensure!(names == ["a.db", "b/two.db"], "list sorted: {names:?}");
    store.delete(&key(t, "a.db")).await?;
    expect_err(
        store.delete(&key(t, "a.db")).await,
        StoreError::is_not_found,
        "delete twice",
    )?;
    expect_err(
        store.info(&key(t, "a.db")).await,
        StoreError::is_not_found,
        "info after delete",
    )?;
    expect_err(
        store.open(&key(t, "a.db"), false).await,
        StoreError::is_not_found,
        "open after delete",
    )?;
    expect_err(
        store.acquire_lease(&key(t, "a.db"), "x", TTL).await,
        StoreError::is_not_found,
        "lease after delete",
    )?;
    ensure!(store.list(t).await?.len() == 1, "one left");
    Ok(())
}

pub async fn begin_read_change_lists(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("changes", "a.db");
    let lease = writable(store, &k).await?;
    store
        .commit(&k, commit(&lease, 0, PS, 6, &[(1, 1), (5, 1)]))
        .await?;
    store
        .commit(&k, commit(&lease, 1, PS, 6, &[(4, 2), (2, 2)]))
        .await?;
    store
        .commit(&k, commit(&lease, 2, PS, 6, &[(4, 3)]))
        .await?;
    let v = store.begin_read(&k, newest(1)).await?;
    ensure!(listed(&v) == Some(vec![1, 2, 4]), "since 1: {v:?}");
    ensure!(v.state.geometry() == (3, PS, 6), "state {v:?}");
    let v = store.begin_read(&k, newest(3)).await?;
    ensure!(listed(&v) == Some(vec![]), "current: {v:?}");
    ensure!(
        store.begin_read(&k, newest(0)).await?.changes.is_none(),
        "no cache"
    );
    ensure!(
        store.begin_read(&k, newest(4)).await?.changes.is_none(),
        "future cache"
    );
    Ok(())
}

pub async fn page_size_change(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("resize", "a.db");
    let lease = writable(store, &k).await?;
    store
        .commit(&k, commit(&lease, 0, PS, 3, &[(1, 1), (2, 1), (3, 1)]))
        .await?;
    let whole = commit(&lease, 1, 8192, 2, &[(1, 5), (2, 5)]);
    store.commit(&k, whole).await?;
    let read = store.read_pages(&k, Version(2), &[2], PIN).await?;
    ensure!(
        read.page_size == 8192 && read.pages.iter().all(|p| p.len() == 8192),
        "new size"
    );
    ensure!(
        page_is(store, &k, 1, 3, 1).await?,
        "old version keeps its size"
    );
    ensure!(
        store.begin_read(&k, newest(1)).await?.changes.is_none(),
        "page size change drops caches"
    );
    Ok(())
}

pub async fn read_errors(store: &dyn PageStore) -> anyhow::Result<()> {
    let k = key("readerr", "a.db");
    let lease = writable(store, &k).await?;
    store.commit(&k, commit(&lease, 0, PS, 2, &[])).await?;
    let oor = |e: &StoreError| matches!(e, StoreError::OutOfRange(_));
    let inv = |e: &StoreError| matches!(e, StoreError::InvalidArgument(_));
    expect_err(
        store.read_pages(&k, Version(2), &[1], PIN).await,
        oor,
        "future version",
    )?;
    expect_err(
        store.read_pages(&k, Version(1), &[0], PIN).await,
        inv,
        "page 0",
    )?;
    expect_err(
        store.read_pages(&k, Version(1), &[1, 3], PIN).await,
        inv,
        "page past the end",
    )?;
    expect_err(
        store.read_pages(&k, Version(0), &[1], PIN).await,
        inv,
        "any page at version 0",
    )?;
    ensure!(
        store
            .read_pages(&k, Version(0), &[], PIN)
            .await?
            .pages
            .is_empty(),
        "empty read at version 0"
    );
    expect_err(
        store
            .read_pages(&key("readerr", "nope"), Version(1), &[1], PIN)
            .await,
        StoreError::is_not_found,
        "missing db",
    )?;
    Ok(())
}
