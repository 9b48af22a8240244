//! Branches (fork) and restore points: what is shared, what stays apart, and what GC
//! keeps for them.

use std::time::Duration;

use anyhow::ensure;

use super::{PIN, PS, commit, expect_err, key, newest, page_is, writable};
use crate::store::{PageStore, ReadAt, StoreError, Version};

fn out_of_range(e: &StoreError) -> bool {
    matches!(e, StoreError::OutOfRange(_))
}

/// Whether the store keeps branches and restore points: one that does not must say so
/// (`Unsupported`, which clients see as UNIMPLEMENTED), and the tests here stop there.
async fn supported(store: &dyn PageStore, tenant: &str) -> anyhow::Result<bool> {
    let k = key(tenant, "probe");
    store.open(&k, true).await?;
    let fork = store
        .fork(&k, ReadAt::Newest, &key(tenant, "probe-fork"))
        .await;
    let point = store.restore_points(&k).await;
    store.delete(&k).await?;
    match (fork, point) {
        (Err(StoreError::Unsupported(_)), Err(StoreError::Unsupported(_))) => Ok(false),
        (Ok(_), Ok(_)) => {
            store.delete(&key(tenant, "probe-fork")).await?;
            Ok(true)
        }
        (fork, point) => {
            anyhow::bail!("branches {fork:?}, restore points {point:?}: both or neither")
        }
    }
}

/// A source `tenant/src` with three versions: v1 pages 1..=4 fill 1; v2 page 2 fill 2;
/// v3 page 3 fill 3 (page 1's body is 0 from v2 on).
async fn source(store: &dyn PageStore, tenant: &str) -> anyhow::Result<crate::store::DbKey> {
    let k = key(tenant, "src");
    let lease = writable(store, &k).await?;
    let all: Vec<(u32, u8)> = (1..=4).map(|p| (p, 1)).collect();
    store.commit(&k, commit(&lease, 0, PS, 4, &all)).await?;
    store
        .commit(&k, commit(&lease, 1, PS, 4, &[(2, 2)]))
        .await?;
    store
        .commit(&k, commit(&lease, 2, PS, 4, &[(3, 3)]))
        .await?;
    store.release_lease(&k, lease.lease_id, lease.epoch).await?;
    Ok(k)
}

pub async fn fork_shares_pages_and_isolates_both_sides(
    store: &dyn PageStore,
) -> anyhow::Result<()> {
    if !supported(store, "fork-iso").await? {
        return Ok(());
    }
    let src = source(store, "fork-iso").await?;
    let b = key("fork-iso", "branch");
    let info = store.fork(&src, ReadAt::Version(Version(2)), &b).await?;
    ensure!(
        info.state.geometry() == (1, PS, 4),
        "a branch starts at version 1 with the source's geometry: {info:?}"
    );
    let src_info = store.info(&src).await?;
    ensure!(
        info.state.incarnation != src_info.state.incarnation,
        "a branch is its own incarnation"
    );
    ensure!(info.stored_bytes == 0, "nothing copied: {info:?}");
    for (p, fill) in [(1, 0), (2, 2), (3, 1), (4, 1)] {
        ensure!(
            page_is(store, &b, 1, p, fill).await?,
            "branch v1 page {p} is source v2's"
        );
    }
    // Both sides write; neither sees the other.
    let bl = store.acquire_lease(&b, "b", super::TTL).await?;
    store.commit(&b, commit(&bl, 1, PS, 4, &[(4, 40)])).await?;
    let sl = store.acquire_lease(&src, "s", super::TTL).await?;
    store
        .commit(&src, commit(&sl, 3, PS, 4, &[(4, 50)]))
        .await?;
    ensure!(page_is(store, &b, 2, 4, 40).await?, "branch sees its write");
    ensure!(page_is(store, &b, 2, 3, 1).await?, "branch never sees v3");
    ensure!(
        page_is(store, &src, 4, 4, 50).await?,
        "source sees its write"
    );
    ensure!(page_is(store, &src, 4, 3, 3).await?, "source keeps its v3");
    let view = store.begin_read(&b, newest(1)).await?;
    ensure!(
        super::listed(&view) == Some(vec![1, 4]),
        "branch change list from its own v1: {view:?}"
    );
    // Names: an existing one, a missing source, a version not there.
    expect_err(
        store.fork(&src, ReadAt::Newest, &b).await.map(|_| ()),
        |e| matches!(e, StoreError::AlreadyExists(_)),
        "fork onto an existing name",
    )?;
    expect_err(
        store
            .fork(
                &key("fork-iso", "nope"),
                ReadAt::Newest,
                &key("fork-iso", "x"),
            )
            .await,
        StoreError::is_not_found,
        "fork of a missing source",
    )?;
    expect_err(
        store
            .fork(&src, ReadAt::Version(Version(99)), &key("fork-iso", "y"))
            .await,
        out_of_range,
        "fork at a version not there",
    )?;
    ensure!(
        store.info(&key("fork-iso", "y")).await.is_err(),
        "a refused fork creates nothing"
    );
    // Another tenant's source is not found.
    expect_err(
        store
            .fork(&key("other", "src"), ReadAt::Newest, &key("other", "z"))
            .await,
        StoreError::is_not_found,
        "another tenant's name",
    )?;
    // A fork of an empty database is empty.
    let empty = key("fork-iso", "empty");
    store.create(&empty).await?;
    let e = store
        .fork(&empty, ReadAt::Newest, &key("fork-iso", "e2"))
        .await?;
    ensure!(e.state.geometry() == (0, 0, 0), "fork of empty: {e:?}");
    Ok(())
}

pub async fn fork_of_a_fork_and_regrowth_hide_the_source(
    store: &dyn PageStore,
) -> anyhow::Result<()> {
    if !supported(store, "fork-chain").await? {
        return Ok(());
    }
    let src = source(store, "fork-chain").await?;
    let b1 = key("fork-chain", "b1");
    store.fork(&src, ReadAt::Newest, &b1).await?;
    let l1 = store.acquire_lease(&b1, "b1", super::TTL).await?;
    store.commit(&b1, commit(&l1, 1, PS, 4, &[(2, 21)])).await?;
    let b2 = key("fork-chain", "b2");
    store.fork(&b1, ReadAt::Newest, &b2).await?;
    for (p, fill) in [(2, 21), (3, 3), (4, 1)] {
        ensure!(
            page_is(store, &b2, 1, p, fill).await?,
            "b2 page {p} through b1 to the source"
        );
    }
    // b2 truncates to 2 pages and grows back to 4: pages 3 and 4 read zeros, not the
    // source's, at the new version, and the source's at the older ones.
    let l2 = store.acquire_lease(&b2, "b2", super::TTL).await?;
    store.commit(&b2, commit(&l2, 1, PS, 2, &[])).await?;
    store.commit(&b2, commit(&l2, 2, PS, 4, &[(4, 44)])).await?;
    ensure!(
        page_is(store, &b2, 3, 3, 0).await?,
        "regrown page 3 is zeros"
    );
    ensure!(
        page_is(store, &b2, 3, 4, 44).await?,
        "regrown page 4 written"
    );
    ensure!(page_is(store, &b2, 1, 3, 3).await?, "b2 v1 still inherits");
    // GC with no retention keeps what each side reads.
    store.gc(i64::MAX / 2, Duration::ZERO).await?;
    ensure!(page_is(store, &b2, 3, 3, 0).await?, "zeros survive GC");
    ensure!(
        page_is(store, &b2, 3, 2, 21).await?,
        "b1's page survives GC"
    );
    ensure!(page_is(store, &b1, 2, 3, 3).await?, "b1 reads the source");
    Ok(())
}

pub async fn branches_outlive_a_deleted_source(store: &dyn PageStore) -> anyhow::Result<()> {
    if !supported(store, "fork-del").await? {
        return Ok(());
    }
    let src = source(store, "fork-del").await?;
    let b = key("fork-del", "branch");
    store.fork(&src, ReadAt::Version(Version(2)), &b).await?;
    let b2 = key("fork-del", "branch2");
    store.fork(&b, ReadAt::Newest, &b2).await?;
    store.delete(&src).await?;
    expect_err(
        store.info(&src).await.map(|_| ()),
        StoreError::is_not_found,
        "deleted source",
    )?;
    let listed: Vec<String> = store
        .list("fork-del")
        .await?
        .into_iter()
        .map(|d| d.name)
        .collect();
    ensure!(
        listed == ["branch", "branch2"],
        "a detached source is not listed: {listed:?}"
    );
    ensure!(
        store.detached_bytes("fork-del").await? > 0,
        "its pages count for the tenant"
    );
    // Its name is free: a new database there is empty and shares nothing.
    let (fresh, created) = store.open(&src, true).await?;
    ensure!(created && fresh.geometry() == (0, 0, 0), "name reused");
    store.gc(i64::MAX / 2, Duration::ZERO).await?;
    for (p, fill) in [(1, 0), (2, 2), (3, 1), (4, 1)] {
        ensure!(
            page_is(store, &b, 1, p, fill).await?,
            "branch page {p} after the source's delete and GC"
        );
        ensure!(
            page_is(store, &b2, 1, p, fill).await?,
            "branch of branch page {p} too"
        );
    }
    store.delete(&b).await?;
    ensure!(page_is(store, &b2, 1, 2, 2).await?, "b2 keeps b's source");
    store.delete(&b2).await?;
    store.gc(i64::MAX / 2, Duration::ZERO).await?;
    ensure!(
        store.detached_bytes("fork-del").await? == 0,
        "the last branch's delete lets the source go"
    );
    Ok(())
}

pub async fn restore_points_keep_versions_past_retention(
    store: &dyn PageStore,
) -> anyhow::Result<()> {
    if !supported(store, "points").await? {
        return Ok(());
    }
    let k = source(store, "points").await?;
    let p = store
        .add_restore_point(&k, "before", ReadAt::Version(Version(1)))
        .await?;
    ensure!(p.version == Version(1) && p.label == "before", "{p:?}");
    store
        .add_restore_point(&k, "newest", ReadAt::Newest)
        .await?;
    expect_err(
        store.add_restore_point(&k, "before", ReadAt::Newest).await,
        |e| matches!(e, StoreError::PointExists { .. }),
        "a label twice",
    )?;
    expect_err(
        store
            .add_restore_point(&k, "gone", ReadAt::Version(Version(9)))
            .await,
        out_of_range,
        "a point on a version not there",
    )?;
    let labels: Vec<(u64, String)> = store
        .restore_points(&k)
        .await?
        .into_iter()
        .map(|p| (p.version.0, p.label))
        .collect();
    ensure!(
        labels == [(1, "before".to_owned()), (3, "newest".to_owned())],
        "by version: {labels:?}"
    );
    store.gc(i64::MAX / 2, Duration::ZERO).await?;
    ensure!(page_is(store, &k, 1, 2, 1).await?, "v1 kept by its point");
    expect_err(
        store
            .read_pages(&k, Version(2), &[1], PIN)
            .await
            .map(|_| ()),
        out_of_range,
        "v2 (no point) collected",
    )?;
    // A fork at the point works past the window.
    let b = key("points", "from-point");
    store.fork(&k, ReadAt::Version(p.version), &b).await?;
    ensure!(page_is(store, &b, 1, 3, 1).await?, "fork at the point");
    store.remove_restore_point(&k, "before").await?;
    expect_err(
        store.remove_restore_point(&k, "before").await,
        |e| matches!(e, StoreError::NoSuchPoint { .. }),
        "deleting it twice",
    )?;
    store.delete(&b).await?;
    store.gc(i64::MAX / 2, Duration::ZERO).await?;
    expect_err(
        store
            .read_pages(&k, Version(1), &[1], PIN)
            .await
            .map(|_| ()),
        out_of_range,
        "v1 collected once its point is gone",
    )?;
    expect_err(
        store
            .restore_points(&key("points", "missing"))
            .await
            .map(|_| ()),
        StoreError::is_not_found,
        "points of a missing database",
    )?;
    Ok(())
}
