//! Commit, the write path, top to bottom: the header is received and checked, then looked
//! at by the store ([`PageStore::precheck`]) before any page is buffered; the pages and
//! the trailer are received into one checked [`Commit`]; the store applies it all or
//! nothing inside an invalidation round ([`round`]), whose outcome is published to
//! watchers; the writer gets its reply. A stream that is out of order, over the limits,
//! broken, idle or unfinished applies nothing.
//!
//! Admission: every byte of the stream is charged as it arrives ([`CommitCharge`], set
//! up by the admission layer); pages are copied out of the received messages, so a
//! padded message's buffer is freed as soon as it is decoded ([`assembly`]).

mod assembly;
mod round;
mod stream;

use std::sync::Arc;

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};
use tracing::field::Empty;

use super::Context;
use crate::admission::CommitCharge;
use crate::auth;
use crate::quota::{self, Quotas};
use crate::store::{
    Commit, CommitHeader, CommitOutcome, DbKey, PageStore, StoreResult, VersionTag,
};
use crate::validate;
use crate::watch::Hub;
use assembly::{Assembly, invalid};
use round::{News, Round};
use stream::Messages;

#[tracing::instrument(skip_all, fields(db = Empty, base = Empty, pages = Empty, version = Empty))]
pub async fn commit(
    cx: &Context,
    request: Request<Streaming<pb::CommitRequest>>,
) -> Result<Response<pb::CommitResponse>, Status> {
    let tenant = auth::tenant_of(&request, auth::Role::Write, "Commit")?;
    let charge = charge_to(&request, &tenant.name)?;
    let limits = &cx.config.limits;
    let quotas = cx.quotas(&tenant.name);
    let mut messages = Messages::new(request.into_inner(), limits.stream_idle_timeout);
    let max_commit_bytes = quotas.max_commit_bytes.unwrap_or(limits.max_commit_bytes);
    let limit_name = if max_commit_bytes < limits.max_commit_bytes {
        format!("tenant {}'s quota max_commit_bytes", tenant.name)
    } else {
        validate::SERVER_COMMIT_LIMIT.to_owned()
    };
    let mut assembly = Assembly::new(max_commit_bytes, limit_name, charge.clone());

    let (name, header) = receive_header(&mut messages, &mut assembly).await?;
    let key = DbKey::new(tenant.name, name);
    // A commit that cannot apply costs no buffering: a known commit id is answered now
    // (a retry learns its first outcome), a lost lease or a stale base is refused.
    if let Some(done) = cx.store.precheck(&key, header).await? {
        return Ok(reply(done));
    }
    let commit = receive_pages(&mut messages, assembly).await?;
    // The rules on the whole commit that need no stored state (page 1, duplicates).
    validate::commit(&commit)?;
    let bytes = commit_bytes(&commit);
    check_quotas(cx, &key, &quotas, &commit, bytes).await?;
    let tenant = key.tenant.clone();
    let pages = commit.pages.len() as u64;
    let outcome = apply_to_the_end(cx, key, commit, charge).await?;
    if !outcome.already_applied {
        let m = crate::metrics::global();
        let labels = m.labels(&tenant, &[]);
        m.commit_bytes.get_or_create(&labels).inc_by(bytes);
        m.commit_pages.get_or_create(&labels).inc_by(pages);
    }
    tracing::debug!(already_applied = outcome.already_applied, "committed");
    if !outcome.already_applied {
        // Over the commit rate, the reply (not the commit) waits.
        let wait = cx.usage.committed(&tenant, &quotas, bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(reply(outcome))
}

/// The page bytes a commit carries.
fn commit_bytes(commit: &Commit) -> u64 {
    commit
        .pages
        .iter()
        .map(|(_, data)| data.len() as u64)
        .fold(0, u64::saturating_add)
}

/// The tenant's size quotas on a received commit (nothing is applied yet): the
/// database's logical size (a commit that does not grow the file always passes, so a
/// tenant over a lowered quota can still delete and shrink) and the stored bytes.
pub(super) async fn check_quotas(
    cx: &Context,
    key: &DbKey,
    quotas: &Quotas,
    commit: &Commit,
    bytes: u64,
) -> Result<(), Status> {
    if let Some(max) = quotas.max_database_bytes {
        let size = u64::from(commit.page_size) * u64::from(commit.page_count);
        if size > max {
            let before = cx.store.info(key).await?.state.page_count;
            if commit.page_count > before {
                return Err(quota::exceeded(
                    &key.tenant,
                    "max_database_bytes",
                    format!("this commit makes {} {}", key.name, quota::show_bytes(size)),
                    quota::show_bytes(max),
                ));
            }
        }
    }
    cx.usage
        .check_stored(&*cx.store, &key.tenant, quotas, bytes)
        .await
}

/// The first message, which must be the header (checked on its own, before any page):
/// the database name and the header's fields.
async fn receive_header(
    messages: &mut Messages,
    assembly: &mut Assembly,
) -> Result<(String, CommitHeader), Status> {
    let first = messages.next().await?;
    assembly.take(first.ok_or_else(|| invalid("commit stream ended without a header"))?)?;
    let Some((name, header)) = assembly.started() else {
        return Err(invalid("commit stream must start with a header").into());
    };
    tracing::Span::current()
        .record("db", name)
        .record("base", header.base_version.0);
    Ok((name.to_owned(), header))
}

/// The pages and the trailer, each message checked and charged as it arrives; the
/// commit once the stream ended complete.
async fn receive_pages(messages: &mut Messages, mut assembly: Assembly) -> Result<Commit, Status> {
    while let Some(message) = messages.next().await? {
        assembly.take(message)?;
    }
    let (_, commit) = assembly.finish()?;
    tracing::Span::current().record("pages", commit.pages.len());
    Ok(commit)
}

/// [`apply`], spawned: a round must run to its end even if this client goes away (a
/// half-done round would stall readers). The charge goes with it: the pages stay in
/// memory until the store has them.
pub(super) async fn apply_to_the_end(
    cx: &Context,
    key: DbKey,
    commit: Commit,
    charge: Option<Arc<CommitCharge>>,
) -> Result<CommitOutcome, Status> {
    let apply = apply(cx.hub.clone(), cx.store.clone(), key, commit);
    let outcome = tokio::spawn(async move {
        let outcome = apply.await;
        drop(charge);
        outcome
    });
    let outcome = outcome
        .await
        .map_err(|e| Status::internal(format!("commit task failed: {e}")))??;
    tracing::Span::current().record("version", outcome.version.0);
    Ok(outcome)
}

/// The stream's in-flight budget charge (see [`crate::admission`]), now billed to the
/// authenticated tenant (what arrived before it was known is charged now).
fn charge_to<T>(request: &Request<T>, tenant: &str) -> Result<Option<Arc<CommitCharge>>, Status> {
    let charge = request.extensions().get::<Arc<CommitCharge>>().cloned();
    if let Some(charge) = &charge {
        charge.set_tenant(tenant)?;
    }
    Ok(charge)
}

/// Applies `commit` inside its invalidation round: read lease holders stop serving the
/// old state before the store makes the new one visible (to BeginRead too), and every
/// watcher hears the outcome, whichever it is, before the writer does.
async fn apply(
    hub: Arc<Hub>,
    store: Arc<dyn PageStore>,
    key: DbKey,
    commit: Commit,
) -> StoreResult<CommitOutcome> {
    let round = Round::begin(&hub, &key).await;
    round.wait_for_readers(&*store).await;
    let news = News::of(&commit);
    let result = store.commit(&key, commit).await;
    round.end(&*store, &result, news).await;
    result
}

fn reply(outcome: CommitOutcome) -> Response<pb::CommitResponse> {
    Response::new(pb::CommitResponse {
        version: outcome.version.0,
        already_applied: outcome.already_applied,
        tag: outcome.tag.map(VersionTag::to_wire).unwrap_or_default(),
    })
}
