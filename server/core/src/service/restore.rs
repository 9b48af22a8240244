//! RestoreDatabase: the state at an earlier version becomes the newest again, as one
//! more commit of the same database, through the normal commit path.
//!
//! 1. The write lease is taken like any writer's, retried while another client holds it
//!    for up to `wait_ms` (then ABORTED, which is SQLITE_BUSY's meaning), and released
//!    at the end whatever happened: a writer that had it reacquires it as after any
//!    lapse, and its next commit, built on the old base, is refused (fenced).
//! 2. The target is pinned (BeginRead at it) and the pages that changed since it are
//!    listed (a change list from the target to the current version): a restore writes
//!    those, the pages past the current end, and page 1, read at the target; with no
//!    usable change list (too long, a page-size change, metadata gone) every page.
//! 3. Page 1's change counter moves past the current one (as SQLite's own commits do),
//!    so no SQLite connection takes the restored file for one whose pages it cached.
//! 4. The commit goes through [`super::commit::apply_to_the_end`]: quotas, the read-lease
//!    round (holders stop serving the old state first), watchers told, all or nothing.
//!
//! Bounds: the commit is at most the tenant's commit-bytes limit (RESOURCE_EXHAUSTED
//! past it, nothing changed); its pages are read in batches of the server's pages per
//! read; the wait is at most [`MAX_WAIT`].

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pagewire_proto::{sqlite_header, v1 as pb};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::Context;
use super::commit::{apply_to_the_end, check_quotas};
use super::history::resolve;
use crate::auth::Role;
use crate::store::{
    BeginRead, Commit, DbKey, DbState, Identity, Lease, ReadAt, StoreError, Version, random_id,
};
use crate::{quota, validate};

/// How long a restore waits for another writer's lease when the request says 0.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// The longest it waits.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Who the store sees holding the lease while a restore runs.
const CLIENT_ID: &str = "pagewire-restore";

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name))]
pub async fn restore(
    cx: &Context,
    request: Request<pb::RestoreDatabaseRequest>,
) -> Result<Response<pb::RestoreDatabaseResponse>, Status> {
    let r = request.get_ref();
    let key = cx.key(&request, &r.name, Role::Write, "RestoreDatabase")?;
    if r.to.as_ref().and_then(|p| p.at.as_ref()).is_none() {
        return Err(StoreError::InvalidArgument(
            "say which version to restore (`to`): a version, a time or a restore point".into(),
        )
        .into());
    }
    let to = resolve(cx, &key, r.to.as_ref()).await?;
    let wait = match r.wait_ms {
        0 => DEFAULT_WAIT,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_WAIT),
    };
    cx.usage.check_rate(&key.tenant, &cx.quotas(&key.tenant))?;
    let lease = take_lease(cx, &key, wait).await?;
    let renewing = keep_renewed(cx, &key, &lease);
    let restored = restore_under(cx, &key, &lease, to).await;
    renewing.abort();
    if let Err(e) = cx
        .store
        .release_lease(&key, lease.lease_id, lease.epoch)
        .await
    {
        tracing::warn!(db = %key, "releasing the restore's lease failed (it runs out): {e}");
    }
    let reply = restored?;
    tracing::info!(tenant = %key.tenant, from = reply.restored_from, version = reply.version, pages = reply.pages_written, "restored database");
    Ok(Response::new(reply))
}

/// The write lease, retried while another client holds it, for up to `wait`.
async fn take_lease(cx: &Context, key: &DbKey, wait: Duration) -> Result<Lease, Status> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(5);
    loop {
        match cx
            .store
            .acquire_lease(key, CLIENT_ID, cx.config.lease_ttl)
            .await
        {
            Ok(lease) => return Ok(lease),
            Err(e @ StoreError::LeaseHeld { .. }) => {
                if Instant::now() + pause > deadline {
                    let waited = humantime::format_duration(wait);
                    return Err(Status::aborted(format!(
                        "restore waited {waited} for the write lease: {e}"
                    )));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Renews `lease` every third of its TTL until aborted: a restore that reads and writes
/// for longer than one lease TTL (a big one, a slow store) keeps it, as a VFS writer's
/// heartbeat does.
fn keep_renewed(cx: &Context, key: &DbKey, lease: &Lease) -> tokio::task::JoinHandle<()> {
    let (store, key, ttl) = (cx.store.clone(), key.clone(), cx.config.lease_ttl);
    let (lease_id, epoch) = (lease.lease_id, lease.epoch);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(ttl / 3).await;
            if let Err(e) = store.renew_lease(&key, lease_id, epoch, ttl).await {
                tracing::warn!(db = %key, "renewing the restore's lease: {e}");
                return;
            }
        }
    })
}

/// Steps 2 to 4 of the module docs, under `lease`.
async fn restore_under(
    cx: &Context,
    key: &DbKey,
    lease: &Lease,
    to: ReadAt,
) -> Result<pb::RestoreDatabaseResponse, Status> {
    let current = lease.state;
    let pin = cx.pin(&key.tenant);
    let begin = |cached_version, at, max_changes| BeginRead {
        cached_version,
        at,
        pin,
        max_changes,
        seen_version: Version::ZERO,
    };
    let target = cx
        .store
        .begin_read(key, begin(Version::ZERO, to, 0))
        .await?;
    let target = target.state;
    if target.version == current.version {
        return Ok(pb::RestoreDatabaseResponse {
            version: current.version.0,
            tag: current.tag.to_wire(),
            restored_from: target.version.0,
            pages_written: 0,
        });
    }
    if target.version == Version::ZERO {
        return Err(StoreError::InvalidArgument(
            "version 0 is the empty database; restore a version from 1".into(),
        )
        .into());
    }
    let limit = target.page_count as usize;
    let at_current = ReadAt::Version(current.version);
    let since = cx
        .store
        .begin_read(key, begin(target.version, at_current, limit))
        .await?;
    let pages = pages_to_write(&target, &current, since.changes.as_ref());
    check_size(cx, key, &target, pages.len())?;
    let mut written = read_at(cx, key, &target, &pages).await?;
    stamp_page_one(cx, key, &current, &target, &mut written).await?;
    let commit = Commit {
        lease_id: lease.lease_id,
        epoch: lease.epoch,
        base_version: current.version,
        commit_id: random_id(),
        identity: Identity {
            incarnation: Some(current.incarnation),
            version: Some((current.version, current.tag)),
        },
        page_size: target.page_size,
        page_count: target.page_count,
        pages: written,
    };
    validate::commit(&commit)?;
    let bytes = commit.pages.iter().map(|(_, d)| d.len() as u64).sum();
    check_quotas(cx, key, &cx.quotas(&key.tenant), &commit, bytes).await?;
    let pages_written = commit.pages.len() as u64;
    let outcome = apply_to_the_end(cx, key.clone(), commit, None).await?;
    Ok(pb::RestoreDatabaseResponse {
        version: outcome.version.0,
        tag: outcome.tag.map(|t| t.to_wire()).unwrap_or_default(),
        restored_from: target.version.0,
        pages_written,
    })
}

/// The pages a restore to `target` carries: those changed since it (`since`; `None`:
/// every page), every page past the current end (a truncate dropped them; the commit
/// would otherwise mark them zeros) and page 1; only pages the target has.
fn pages_to_write(
    target: &DbState,
    current: &DbState,
    since: Option<&crate::store::Changes>,
) -> Vec<u32> {
    let count = target.page_count;
    let Some(since) = since.filter(|_| target.page_size == current.page_size) else {
        return (1..=count).collect();
    };
    let grown_from = since.from.unwrap_or(u32::MAX).min(current.page_count + 1);
    let mut pages: Vec<u32> = std::iter::once(1)
        .chain(since.pages.iter().copied().filter(|&p| p < grown_from))
        .chain(grown_from..=count)
        .filter(|&p| p <= count)
        .collect();
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// Refuses a restore over the tenant's commit-bytes limit before reading anything.
fn check_size(cx: &Context, key: &DbKey, target: &DbState, pages: usize) -> Result<(), Status> {
    let limits = &cx.config.limits;
    let max = cx
        .quotas(&key.tenant)
        .max_commit_bytes
        .unwrap_or(limits.max_commit_bytes);
    let bytes = pages as u64 * u64::from(target.page_size);
    if bytes > max {
        return Err(StoreError::TooLarge(format!(
            "restoring {} to version {} would write {pages} pages ({}), over the commit \
             limit of {}: restore a nearer version, or fork the old one instead \
             (a fork copies nothing)",
            key.name,
            target.version,
            quota::show_bytes(bytes),
            quota::show_bytes(max)
        ))
        .into());
    }
    Ok(())
}

/// `pages` at `target`, in batches of the server's pages per read.
async fn read_at(
    cx: &Context,
    key: &DbKey,
    target: &DbState,
    pages: &[u32],
) -> Result<Vec<(u32, Bytes)>, Status> {
    let batch = validate::max_pages_per_read(
        cx.config.limits.max_pages_per_read,
        cx.config.limits.max_message_bytes,
        target.page_size,
    )
    .max(1) as usize;
    let pin = cx.pin(&key.tenant);
    let mut out = Vec::with_capacity(pages.len());
    for chunk in pages.chunks(batch) {
        let read = cx.store.read_pages(key, target.version, chunk, pin).await?;
        out.extend(chunk.iter().copied().zip(read.pages));
    }
    Ok(out)
}

/// Page 1 (first in `written`) gets a change counter past the current version's.
async fn stamp_page_one(
    cx: &Context,
    key: &DbKey,
    current: &DbState,
    target: &DbState,
    written: &mut [(u32, Bytes)],
) -> Result<(), Status> {
    let Some((1, page)) = written.first_mut() else {
        return Err(StoreError::Internal("a restore without page 1".into()).into());
    };
    let base_counter = if current.page_count == 0 {
        0
    } else {
        let pin = cx.pin(&key.tenant);
        let now = cx.store.read_pages(key, current.version, &[1], pin).await?;
        now.pages
            .first()
            .map_or(0, |p| sqlite_header::change_counter(p))
    };
    if !page.starts_with(sqlite_header::MAGIC) {
        return Ok(()); // not an SQLite file: nothing to stamp
    }
    let mut stamped = BytesMut::from(&page[..]);
    sqlite_header::stamp(&mut stamped, base_counter, target.page_count);
    *page = stamped.freeze();
    Ok(())
}
