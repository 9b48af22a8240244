//! Reading: BeginRead (the newest or an as-of version, and what changed since the
//! client's cache; pins the version) and ReadPages (pages at a version, batched; keeps
//! the pin alive).

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Context;
use crate::store::BeginRead;
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
    let key = cx.key(&request, &request.get_ref().name)?;
    let asked = request.get_ref();
    let read = BeginRead {
        cached_version: asked.cached_version,
        at: validate::read_at(asked.at_version, asked.at_unix_ms)?,
        pin_ttl: cx.config.pin_ttl,
    };
    let view = cx.store.begin_read(&key, read).await?;
    Ok(Response::new(pb::BeginReadResponse {
        state: Some(view.state.into()),
        changed_pages: view.changed_pages,
        cache_invalid: view.cache_invalid,
        committed_unix_ms: view.committed_unix_ms,
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
    let key = cx.key(&request, &request.get_ref().name)?;
    let read = request.get_ref();
    let config = &cx.config;
    validate::read_count(read.page_nos.len(), config.max_pages_per_read)?;
    let pages = cx
        .store
        .read_pages(&key, read.version, &read.page_nos, config.pin_ttl)
        .await?;
    // The reply must also fit in one message at this version's page size.
    let fit = validate::max_pages_per_read(
        config.max_pages_per_read,
        config.max_message_bytes,
        pages.page_size,
    );
    validate::read_count(read.page_nos.len(), fit)?;
    Ok(Response::new(pb::ReadPagesResponse {
        page_size: pages.page_size,
        pages: pages.pages,
    }))
}
