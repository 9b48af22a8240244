//! Reading: BeginRead (the newest version and what changed since the client's cache)
//! and ReadPages (pages at a version, batched).

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Context;
use crate::validate;

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name, cached = request.get_ref().cached_version))]
pub async fn begin_read(
    cx: &Context,
    request: Request<pb::BeginReadRequest>,
) -> Result<Response<pb::BeginReadResponse>, Status> {
    let key = cx.key(&request, &request.get_ref().name)?;
    let view = cx
        .store
        .begin_read(&key, request.get_ref().cached_version)
        .await?;
    Ok(Response::new(pb::BeginReadResponse {
        state: Some(view.state.into()),
        changed_pages: view.changed_pages,
        cache_invalid: view.cache_invalid,
        // TODO(time travel): filled in by the history work of the replica issue.
        committed_unix_ms: 0,
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
        .read_pages(&key, read.version, &read.page_nos)
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
