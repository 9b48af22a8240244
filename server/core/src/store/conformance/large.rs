//! Conformance of a large transaction: 256 MiB in one commit (an import, a VACUUM), read
//! back whole, retried by commit id, and failed without a trace.

use anyhow::{Context as _, ensure};
use bytes::{BufMut, Bytes, BytesMut};

use super::{Outcome, expect_err, key, page_one, writable};
use crate::store::{Commit, DbKey, Identity, Lease, PageStore, StoreError, Version};

/// The largest page size, so 256 MiB is 4096 pages.
const BIG_PS: u32 = 65536;
const BIG_PAGES: u32 = 4096;
/// Pages per read while checking (4 MiB).
const READ_BATCH: u32 = 64;

/// Page `no` of the large image: its number, then a fill that depends on it and `salt`.
fn big_page(no: u32, salt: u8) -> Bytes {
    let mut p = BytesMut::with_capacity(BIG_PS as usize);
    p.put_u32(no);
    p.put_bytes((no as u8) ^ salt, BIG_PS as usize - 4);
    p.freeze()
}

fn big_commit(lease: &Lease, base: u64, salt: u8) -> Commit {
    let mut pages = vec![(1, page_one(BIG_PS, BIG_PAGES, salt))];
    pages.extend((2..=BIG_PAGES).map(|no| (no, big_page(no, salt))));
    Commit {
        lease_id: lease.lease_id,
        epoch: lease.epoch,
        base_version: Version(base),
        commit_id: crate::store::random_id(),
        identity: Identity::default(),
        page_size: BIG_PS,
        page_count: BIG_PAGES,
        pages,
    }
}

/// Reads every page at `version` in batches; compares with `commit`'s pages.
async fn reads_back(
    store: &dyn PageStore,
    k: &DbKey,
    version: u64,
    commit: &Commit,
) -> anyhow::Result<()> {
    for chunk in commit.pages.chunks(READ_BATCH as usize) {
        let nos: Vec<u32> = chunk.iter().map(|(no, _)| *no).collect();
        let read = store
            .read_pages(k, Version(version), &nos, super::PIN)
            .await?;
        ensure!(read.page_size == BIG_PS, "page size {}", read.page_size);
        for ((no, want), got) in chunk.iter().zip(&read.pages) {
            ensure!(got == want, "page {no} at version {version} differs");
        }
    }
    Ok(())
}

/// One commit of 256 MiB applies whole, reads back whole, is found again by its commit
/// id; a second one on a stale base applies nothing.
pub async fn large_streaming_commit(store: &dyn PageStore) -> Outcome {
    let k = key("large", "a.db");
    let lease = writable(store, &k).await?;
    let first = big_commit(&lease, 0, 0x5a);
    let outcome = store.commit(&k, first.clone()).await?;
    ensure!(
        outcome.version == Version(1) && !outcome.already_applied,
        "{outcome:?}"
    );
    let info = store.info(&k).await?;
    let bytes = u64::from(BIG_PS) * u64::from(BIG_PAGES);
    ensure!(
        info.stored_bytes == bytes && info.state.page_count == BIG_PAGES,
        "{info:?}"
    );
    reads_back(store, &k, 1, &first)
        .await
        .context("reading 256 MiB back")?;
    let retry = store.commit(&k, first).await?;
    ensure!(
        retry.version == Version(1) && retry.already_applied,
        "retry: {retry:?}"
    );
    let stale = big_commit(&lease, 0, 0xa5);
    expect_err(
        store.commit(&k, stale).await,
        |e| matches!(e, StoreError::VersionConflict { .. }),
        "stale base",
    )?;
    ensure!(
        store.info(&k).await? == info,
        "the failed commit left no trace"
    );
    Ok(())
}
