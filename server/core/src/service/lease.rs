//! The write lease: acquire, renew, release.

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Context;
use crate::validate;

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name, client = %request.get_ref().client_id))]
pub async fn acquire(
    cx: &Context,
    request: Request<pb::AcquireLeaseRequest>,
) -> Result<Response<pb::LeaseResponse>, Status> {
    let key = cx.key(&request, &request.get_ref().name)?;
    let client_id = &request.get_ref().client_id;
    validate::client_id(client_id)?;
    let lease = cx
        .store
        .acquire_lease(&key, client_id, cx.config.lease_ttl)
        .await?;
    tracing::debug!(epoch = lease.epoch, "lease granted");
    Ok(Response::new(lease.into()))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name, epoch = request.get_ref().epoch))]
pub async fn renew(
    cx: &Context,
    request: Request<pb::RenewLeaseRequest>,
) -> Result<Response<pb::LeaseResponse>, Status> {
    let key = cx.key(&request, &request.get_ref().name)?;
    let renew = request.get_ref();
    let lease_id = validate::lease_id(&renew.lease_id)?;
    let lease = cx
        .store
        .renew_lease(&key, lease_id, renew.epoch, cx.config.lease_ttl)
        .await?;
    Ok(Response::new(lease.into()))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name, epoch = request.get_ref().epoch))]
pub async fn release(
    cx: &Context,
    request: Request<pb::ReleaseLeaseRequest>,
) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
    let key = cx.key(&request, &request.get_ref().name)?;
    let release = request.get_ref();
    let lease_id = validate::lease_id(&release.lease_id)?;
    cx.store
        .release_lease(&key, lease_id, release.epoch)
        .await?;
    Ok(Response::new(pb::ReleaseLeaseResponse {}))
}
