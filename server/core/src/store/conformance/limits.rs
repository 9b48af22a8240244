//! Bounded work for any input: growth is a range however far a commit claims to grow,
//! a commit cannot grow the file past its last page, change lists stop at their limit,
//! pins stop at their maximum age, and the header precheck answers as commit would.

use std::time::Duration;

use anyhow::ensure;

use super::{Outcome, PS, TestTime, commit, expect_err, key, newest, page_is, writable};
use crate::store::{BeginRead, Changes, PageStore, PinTtl, ReadAt, StoreError, Version};
use crate::validate::MAX_PAGE_COUNT;

/// A commit claiming SQLite's largest page count costs no more than its two pages.
pub async fn huge_growth_is_a_range(store: &dyn PageStore) -> Outcome {
    let k = key("huge-growth", "a.db");
    let lease = writable(store, &k).await?;
    store
        .commit(&k, commit(&lease, 0, PS, 3, &[(1, 1), (3, 1)]))
        .await?;
    let one_page = commit(&lease, 1, PS, 100_000_000, &[(1, 2)]);
    let e = expect_err(
        store.commit(&k, one_page).await,
        |e| matches!(e, StoreError::InvalidArgument(_)),
        "1e8 pages",
    )?;
    ensure!(e.to_string().contains("highest page"), "message: {e}");
    let far = commit(
        &lease,
        1,
        PS,
        MAX_PAGE_COUNT,
        &[(1, 2), (MAX_PAGE_COUNT, 2)],
    );
    ensure!(
        store.commit(&k, far).await?.version == Version(2),
        "two pages, four billion claimed"
    );
    let view = store.begin_read(&k, newest(1)).await?;
    ensure!(view.state.page_count == MAX_PAGE_COUNT, "{view:?}");
    ensure!(
        view.changes
            == Some(Changes {
                pages: vec![1],
                from: Some(4)
            }),
        "growth is a range: {view:?}"
    );
    ensure!(
        page_is(store, &k, 2, MAX_PAGE_COUNT, 2).await?,
        "the last page"
    );
    ensure!(
        page_is(store, &k, 2, 1_000_000, 0).await?,
        "a page never written"
    );
    ensure!(
        page_is(store, &k, 2, 3, 1).await?,
        "a page the commit did not carry"
    );
    // Shrinking back needs no last page.
    ensure!(
        store
            .commit(&k, commit(&lease, 2, PS, 3, &[(1, 3)]))
            .await?
            .version
            == Version(3),
        "shrink"
    );
    Ok(())
}

/// Change lists span at most `max_changes` versions and list at most as many pages.
pub async fn change_lists_stop_at_their_limit(store: &dyn PageStore) -> Outcome {
    let k = key("change-limit", "a.db");
    let lease = writable(store, &k).await?;
    let all: Vec<(u32, u8)> = (1..=8).map(|p| (p, 1)).collect();
    store.commit(&k, commit(&lease, 0, PS, 8, &all)).await?;
    for v in 1..=4u64 {
        store
            .commit(&k, commit(&lease, v, PS, 8, &[(1, 2)]))
            .await?;
    }
    let read = |cached, max_changes| BeginRead {
        max_changes,
        ..newest(cached)
    };
    ensure!(
        store.begin_read(&k, read(1, 4)).await?.changes.is_some(),
        "4 versions within 4"
    );
    ensure!(
        store.begin_read(&k, read(1, 3)).await?.changes.is_none(),
        "4 versions past 3"
    );
    store.commit(&k, commit(&lease, 5, PS, 8, &all)).await?;
    ensure!(
        store.begin_read(&k, read(5, 8)).await?.changes.is_some(),
        "8 pages within 8"
    );
    ensure!(
        store.begin_read(&k, read(5, 7)).await?.changes.is_none(),
        "8 pages past 7"
    );
    Ok(())
}

/// Reads keep extending a pin, but never past its maximum age: then GC collects the
/// version (outside the retention window).
pub async fn pins_stop_at_their_max_age(store: &dyn PageStore, time: &TestTime) -> Outcome {
    let k = key("pin-age", "a.db");
    let lease = writable(store, &k).await?;
    store
        .commit(&k, commit(&lease, 0, PS, 1, &[(1, 1)]))
        .await?;
    let unit = time.unit();
    let pin = PinTtl {
        ttl: unit,
        max_age: unit * 2,
    };
    store
        .begin_read(
            &k,
            BeginRead {
                at: ReadAt::Version(Version(1)),
                pin,
                ..newest(0)
            },
        )
        .await?;
    store
        .commit(&k, commit(&lease, 1, PS, 1, &[(1, 2)]))
        .await?;
    let step = unit * 4 / 10;
    // Renewed every 0.4 units for 3 units: alive until 2, gone after.
    for i in 1..=8u32 {
        time.sleep(step).await;
        let alive = step * i < pin.max_age - step / 2;
        let read = store.read_pages(&k, Version(1), &[1], pin).await;
        let now = i64::MAX;
        store.gc(now, Duration::ZERO).await?;
        if alive {
            ensure!(read.is_ok(), "pinned at {i}: {read:?}");
        } else if read.is_err() {
            return Ok(());
        }
    }
    expect_err(
        store.read_pages(&k, Version(1), &[1], pin).await,
        |e| matches!(e, StoreError::OutOfRange(_)),
        "past its max age",
    )?;
    Ok(())
}

/// The header precheck answers as the commit would: the first outcome of a known commit
/// id, a lost lease, a stale base; nothing for a commit that may apply. (A store may
/// skip the look and answer `None`.)
pub async fn precheck_answers_as_commit_would(store: &dyn PageStore) -> Outcome {
    let k = key("precheck", "a.db");
    let lease = writable(store, &k).await?;
    let first = commit(&lease, 0, PS, 1, &[(1, 1)]);
    ensure!(
        store.precheck(&k, first.header()).await?.is_none(),
        "a commit that may apply"
    );
    let done = store.commit(&k, first.clone()).await?;
    let cases = [
        ("known commit id", first.clone()),
        ("stale base", commit(&lease, 0, PS, 1, &[(1, 2)])),
        ("stale epoch", {
            let mut c = commit(&lease, 1, PS, 1, &[(1, 2)]);
            c.epoch += 1;
            c
        }),
    ];
    for (what, c) in cases {
        let early = store.precheck(&k, c.header()).await;
        if matches!(early, Ok(None)) {
            continue; // the store skips the look
        }
        let late = store.commit(&k, c).await;
        let same = match (&early, &late) {
            (Ok(Some(a)), Ok(b)) => a == b && b.version == done.version,
            (Err(a), Err(b)) => std::mem::discriminant(a) == std::mem::discriminant(b),
            _ => false,
        };
        ensure!(same, "{what}: precheck {early:?}, commit {late:?}");
    }
    Ok(())
}
