//! The control plane: list, create, delete and describe the caller's databases. The
//! Admin interceptor has already refused callers without admin rights.

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Context;
use crate::auth;

#[tracing::instrument(skip_all)]
pub async fn list(
    cx: &Context,
    request: Request<pb::ListDatabasesRequest>,
) -> Result<Response<pb::ListDatabasesResponse>, Status> {
    let tenant = auth::tenant_of(&request)?;
    let infos = cx.store.list(&tenant.name).await?;
    let databases = infos.into_iter().map(Into::into).collect();
    Ok(Response::new(pb::ListDatabasesResponse { databases }))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name))]
pub async fn create(
    cx: &Context,
    request: Request<pb::CreateDatabaseRequest>,
) -> Result<Response<pb::DatabaseInfo>, Status> {
    let key = cx.key(&request, &request.get_ref().name)?;
    let info = cx.store.create(&key).await?;
    tracing::info!(tenant = %key.tenant, "created database");
    Ok(Response::new(info.into()))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name))]
pub async fn delete(
    cx: &Context,
    request: Request<pb::DeleteDatabaseRequest>,
) -> Result<Response<pb::DeleteDatabaseResponse>, Status> {
    let key = cx.key(&request, &request.get_ref().name)?;
    cx.store.delete(&key).await?;
    cx.hub.deleted(&key);
    tracing::info!(tenant = %key.tenant, "deleted database");
    Ok(Response::new(pb::DeleteDatabaseResponse {}))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name))]
pub async fn info(
    cx: &Context,
    request: Request<pb::GetDatabaseInfoRequest>,
) -> Result<Response<pb::DatabaseInfo>, Status> {
    let key = cx.key(&request, &request.get_ref().name)?;
    Ok(Response::new(cx.store.info(&key).await?.into()))
}
