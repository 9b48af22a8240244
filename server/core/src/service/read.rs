//! Reading: BeginRead (the newest or an as-of version, and what changed since the
//! client's cache; pins the version) and ReadPages (pages at a version, batched; keeps
//! the pin alive).

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Context;
use crate::auth::Role;
use crate::store::{BeginRead, Identity, ReadAt, Version, WireChanges};
use crate::validate;

#[tracing::instrument(
    skip_all,
    fields(
        db = %request.get_ref().name,
        cached = request.get_ref().cached_version,
        at_version = request.get_ref().at_version,
        at_unix_ms = request.get_ref().at_unix_ms,
    )
)]
pub async fn begin_read(
    cx: &Context,
    request: Request<pb::BeginReadRequest>,
) -> Result<Response<pb::BeginReadResponse>, Status> {
    let key = cx.key(&request, &request.get_ref().name, Role::Read, "BeginRead")?;
    let asked = request.get_ref();
    let limit = cx.config.limits.max_change_list;
    let identity = Identity::from_wire(&asked.incarnation, asked.seen_version, &asked.seen_tag)?;
    let read = BeginRead {
        cached_version: Version(asked.cached_version),
        at: validate::read_at(asked.at_version, asked.at_unix_ms)?,
        pin: cx.pin(&key.tenant),
        max_changes: limit,
        seen_version: Version(asked.seen_version),
    };
    let ranges = asked.ranges;
    let view = cx.store.begin_read(&key, read).await?;
    identity.check_incarnation(&key.name, &view.state.incarnation)?;
    if read.at != ReadAt::Newest {
        let quotas = cx.quotas(&key.tenant);
        cx.usage.pin_past(
            &key.tenant,
            &key.name,
            view.state.version.0,
            &quotas,
            cx.config.pin_ttl,
        )?;
    }
    // Only a read of the newest version knows how far the history goes.
    let newest = if read.at == ReadAt::Newest {
        view.state.version
    } else {
        Version(u64::MAX)
    };
    identity.check_version(&key.name, newest, view.seen_tag)?;
    let changes = WireChanges::new(view.changes.as_ref(), ranges, view.state.page_count, limit);
    Ok(Response::new(pb::BeginReadResponse {
        state: Some(view.state.into()),
        changed_pages: changes.pages,
        cache_invalid: changes.invalid,
        committed_unix_ms: view.committed_unix_ms,
        changed_from: changes.from,
    }))
}

#[tracing::instrument(
    skip_all,
    fields(db = %request.get_ref().name, version = request.get_ref().version, pages = request.get_ref().page_nos.len())
)]
pub async fn read_pages(
    cx: &Context,
    request: Request<pb::ReadPagesRequest>,
) -> Result<Response<pb::ReadPagesResponse>, Status> {
    let key = cx.key(&request, &request.get_ref().name, Role::Read, "ReadPages")?;
    let read = request.get_ref();
    let limits = &cx.config.limits;
    validate::read_count(read.page_nos.len(), limits.max_pages_per_read)?;
    let identity = Identity::from_wire(&read.incarnation, read.version, &read.tag)?;
    let pages = cx
        .store
        .read_pages(
            &key,
            Version(read.version),
            &read.page_nos,
            cx.pin(&key.tenant),
        )
        .await?;
    // The pages are sent only if they are the client's database's, at its version.
    identity.check_state(&key.name, &pages.state)?;
    // The reply must also fit in one message at this version's page size.
    let fit = validate::max_pages_per_read(
        limits.max_pages_per_read,
        limits.max_message_bytes,
        pages.page_size,
    );
    validate::read_count(read.page_nos.len(), fit)?;
    let m = crate::metrics::global();
    let labels = m.labels(&key.tenant, &[]);
    m.read_pages
        .get_or_create(&labels)
        .inc_by(read.page_nos.len() as u64);
    Ok(Response::new(pb::ReadPagesResponse {
        page_size: pages.page_size,
        pages: pages.pages,
    }))
}
