//! Conformance under concurrency and across a database's lifetimes: racing commits and
//! racing lease grants each have exactly one winner; a deleted and re-created database
//! keeps nothing of its first life.

use anyhow::ensure;
use futures::future::join_all;

use super::{Outcome, PS, TTL, commit, expect_err, key, page_is, writable};
use crate::store::{PageStore, StoreError, Version};

/// Racers in each race.
const RACERS: usize = 8;

/// Eight commits on the same base at once: one applies, the others conflict.
pub async fn concurrent_commits_one_wins(store: &dyn PageStore) -> Outcome {
    let k = key("race-commit", "a.db");
    let lease = writable(store, &k).await?;
    store
        .commit(&k, commit(&lease, 0, PS, 2, &[(2, 1)]))
        .await?;
    let racers = (0..RACERS).map(|i| {
        let c = commit(&lease, 1, PS, 2, &[(1, i as u8 + 10), (2, i as u8 + 10)]);
        let k = &k;
        async move { store.commit(k, c).await }
    });
    let results = join_all(racers).await;
    let winners: Vec<usize> = (0..RACERS).filter(|&i| results[i].is_ok()).collect();
    ensure!(winners.len() == 1, "one winner: {results:?}");
    let losers_conflict = results.iter().filter(|r| r.is_err()).all(|r| {
        matches!(
            r,
            Err(StoreError::VersionConflict {
                base: Version(1),
                current: Version(2)
            })
        )
    });
    ensure!(losers_conflict, "the others conflict: {results:?}");
    let fill = winners[0] as u8 + 10;
    ensure!(
        page_is(store, &k, 2, 1, fill).await? && page_is(store, &k, 2, 2, fill).await?,
        "the winner's pages, all of them"
    );
    ensure!(
        store.info(&k).await?.state.version == Version(2),
        "one new version"
    );
    Ok(())
}

/// Eight clients asking for a free lease at once: one gets it, the others see it held.
pub async fn concurrent_acquires_one_wins(store: &dyn PageStore) -> Outcome {
    let k = key("race-lease", "a.db");
    store.open(&k, true).await?;
    let clients: Vec<String> = (0..RACERS).map(|i| format!("client-{i}")).collect();
    let racers = clients.iter().map(|c| store.acquire_lease(&k, c, TTL));
    let results = join_all(racers).await;
    let granted: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    ensure!(granted.len() == 1, "one grant: {results:?}");
    let held = results
        .iter()
        .filter(|r| r.is_err())
        .all(|r| matches!(r, Err(StoreError::LeaseHeld { .. })));
    ensure!(held, "the others see it held: {results:?}");
    let next = store.acquire_lease(&k, "late", TTL).await;
    expect_err(
        next,
        |e| matches!(e, StoreError::LeaseHeld { .. }),
        "still held",
    )?;
    Ok(())
}

/// A database deleted and created again starts empty; the old writer cannot commit.
pub async fn recreated_database_starts_empty(store: &dyn PageStore) -> Outcome {
    let k = key("recreate", "a.db");
    let old = writable(store, &k).await?;
    store
        .commit(&k, commit(&old, 0, PS, 3, &[(1, 1), (2, 1), (3, 1)]))
        .await?;
    store.delete(&k).await?;
    let (state, created) = store.open(&k, true).await?;
    ensure!(
        created && state.version == Version(0) && state.page_count == 0,
        "{state:?}"
    );
    let info = store.info(&k).await?;
    ensure!(
        info.stored_bytes == 0 && !info.lease_held,
        "nothing kept: {info:?}"
    );
    expect_err(
        store.commit(&k, commit(&old, 0, PS, 1, &[(1, 9)])).await,
        |e| matches!(e, StoreError::LeaseLost(_)),
        "the old incarnation's lease",
    )?;
    expect_err(
        store.read_pages(&k, Version(1), &[1], super::PIN).await,
        |e| matches!(e, StoreError::OutOfRange(_)),
        "old versions are gone",
    )?;
    let new = store.acquire_lease(&k, "new", TTL).await?;
    store.commit(&k, commit(&new, 0, PS, 2, &[(2, 5)])).await?;
    ensure!(page_is(store, &k, 1, 2, 5).await?, "the new life's data");
    Ok(())
}
