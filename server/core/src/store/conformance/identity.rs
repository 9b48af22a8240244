//! Identity: every create makes a new incarnation, every version a new tag, and a commit
//! naming an incarnation or base tag the database does not have changes nothing
//! (`Replaced`). See "Identity" in `pagewire.proto`.

use anyhow::ensure;

use super::{Outcome, PIN, PS, TTL, commit, expect_err, key, newest, writable};
use crate::store::{
    BeginRead, Identity, Incarnation, NO_TAG, PageStore, StoreError, Version, VersionTag,
};

fn replaced(e: &StoreError) -> bool {
    matches!(e, StoreError::Replaced(_))
}

/// A create (by Admin or by Open) always makes a new incarnation: not the one of a
/// deleted database of the same name, nor any other database's.
pub async fn every_create_is_a_new_incarnation(store: &dyn PageStore) -> Outcome {
    let k = key("incarnations", "a.db");
    let (first, created) = store.open(&k, true).await?;
    ensure!(
        created && first.incarnation != Incarnation([0; 16]),
        "{first:?}"
    );
    ensure!(
        store.open(&k, false).await?.0.incarnation == first.incarnation,
        "open keeps it"
    );
    let other = store.open(&key("incarnations", "b.db"), true).await?.0;
    ensure!(
        other.incarnation != first.incarnation,
        "two databases, one incarnation"
    );
    store.delete(&k).await?;
    store.create(&k).await?;
    let second = store.open(&k, false).await?.0;
    ensure!(
        second.incarnation != first.incarnation,
        "re-created with the deleted one's incarnation"
    );
    let lease = store.acquire_lease(&k, "writer", TTL).await?;
    ensure!(
        lease.state.incarnation == second.incarnation,
        "lease state {:?}",
        lease.state
    );
    Ok(())
}

/// Version 0 has [`NO_TAG`]; every commit gets a new tag, which every state of that
/// version carries (commit outcome, open, BeginRead, ReadPages, lease grants), and
/// BeginRead tells the tag of the client's newest known version.
pub async fn every_version_has_its_tag(store: &dyn PageStore) -> Outcome {
    let k = key("tags", "a.db");
    let lease = writable(store, &k).await?;
    ensure!(store.open(&k, false).await?.0.tag == NO_TAG, "version 0");
    let mut tags: Vec<VersionTag> = vec![NO_TAG];
    for v in 0..3u64 {
        let done = store
            .commit(&k, commit(&lease, v, PS, 2, &[(1, 1), (2, v as u8)]))
            .await?;
        let tag = done
            .tag
            .ok_or_else(|| anyhow::anyhow!("commit {v} has no tag"))?;
        ensure!(!tags.contains(&tag), "tag {tag:?} reused");
        tags.push(tag);
    }
    let state = store.open(&k, false).await?.0;
    ensure!(
        state.version == Version(3) && state.tag == tags[3],
        "open: {state:?}"
    );
    let renewed = store
        .renew_lease(&k, lease.lease_id, lease.epoch, TTL)
        .await?;
    ensure!(renewed.state.tag == tags[3], "lease: {:?}", renewed.state);
    for seen in 0..=3u64 {
        let view = store
            .begin_read(
                &k,
                BeginRead {
                    seen_version: Version(seen),
                    ..newest(0)
                },
            )
            .await?;
        ensure!(view.state.tag == tags[3], "newest: {view:?}");
        ensure!(
            view.seen_tag == Some(tags[seen as usize]),
            "seen {seen}: {view:?}"
        );
        let read = store
            .read_pages(&k, Version(seen.max(1)), &[1], PIN)
            .await?;
        ensure!(
            read.state.version == Version(seen.max(1))
                && read.state.tag == tags[seen.max(1) as usize],
            "read: {:?}",
            read.state
        );
        ensure!(
            read.state.incarnation == state.incarnation,
            "read incarnation"
        );
    }
    let past = store
        .begin_read(
            &k,
            BeginRead {
                seen_version: Version(9),
                ..newest(0)
            },
        )
        .await?;
    ensure!(
        past.seen_tag.is_none(),
        "a version past the newest has no tag: {past:?}"
    );
    Ok(())
}

/// A commit naming another incarnation, or a base whose tag is not the current
/// version's, is refused before anything else (`Replaced`, also by precheck) and
/// changes nothing; the right ones apply, and a retry still learns its outcome.
pub async fn commits_for_another_database_are_refused(store: &dyn PageStore) -> Outcome {
    let k = key("identity-commits", "a.db");
    let lease = writable(store, &k).await?;
    let v1 = store
        .commit(&k, commit(&lease, 0, PS, 1, &[(1, 1)]))
        .await?;
    let state = store.open(&k, false).await?.0;
    let tag1 = v1.tag.ok_or_else(|| anyhow::anyhow!("no tag"))?;
    let ours = |base: u64, tag| Identity {
        incarnation: Some(state.incarnation),
        version: Some((Version(base), tag)),
    };
    let cases = [
        (
            "another incarnation",
            Identity {
                incarnation: Some(Incarnation([7; 16])),
                version: None,
            },
        ),
        ("another base tag", ours(1, VersionTag([7; 16]))),
    ];
    for (what, identity) in cases {
        let c = super::Commit {
            identity,
            ..commit(&lease, 1, PS, 1, &[(1, 2)])
        };
        // A store may skip the precheck (`Ok(None)`); one that looks must refuse.
        let early = store.precheck(&k, c.header()).await;
        if !matches!(early, Ok(None)) {
            expect_err(early, replaced, what)?;
        }
        let e = expect_err(store.commit(&k, c).await, replaced, what)?;
        ensure!(e.to_string().contains("replaced"), "{what}: {e}");
        ensure!(
            store.open(&k, false).await?.0.version == Version(1),
            "{what} changed the database"
        );
    }
    let good = super::Commit {
        identity: ours(1, tag1),
        ..commit(&lease, 1, PS, 1, &[(1, 2)])
    };
    let applied = store.commit(&k, good.clone()).await?;
    ensure!(
        applied.version == Version(2)
            && !applied.already_applied
            && applied.incarnation == state.incarnation,
        "{applied:?}"
    );
    let retry = store.commit(&k, good).await?;
    ensure!(
        retry.already_applied && retry.version == Version(2) && retry.tag == applied.tag,
        "retry: {retry:?}"
    );
    Ok(())
}
