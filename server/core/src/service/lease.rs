//! The write lease: acquire, renew, release.

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Context;
use crate::auth::Role;
use crate::store::{DbKey, Identity, Lease, random_id};
use crate::validate;

/// A lease granted in another incarnation than the client's is given back at once and
/// refused (`Replaced`): it fences nothing the client holds.
async fn check_incarnation(
    cx: &Context,
    key: &DbKey,
    incarnation: &[u8],
    lease: Lease,
) -> Result<Lease, Status> {
    let identity = Identity::from_wire(incarnation, 0, &[])?;
    if let Err(e) = identity.check_incarnation(&key.name, &lease.state.incarnation) {
        cx.store
            .release_lease(key, lease.lease_id, lease.epoch)
            .await?;
        return Err(e.into());
    }
    Ok(lease)
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name, client = %request.get_ref().client_id))]
pub async fn acquire(
    cx: &Context,
    request: Request<pb::AcquireLeaseRequest>,
) -> Result<Response<pb::LeaseResponse>, Status> {
    let key = cx.key(
        &request,
        &request.get_ref().name,
        Role::Write,
        "AcquireLease",
    )?;
    let client_id = &request.get_ref().client_id;
    validate::client_id(client_id)?;
    let lease_id = match &request.get_ref().lease_id[..] {
        [] => random_id(),
        drawn => validate::lease_id(drawn)?,
    };
    // The commit rate is held to when the lease is taken, never at commit time.
    cx.usage.check_rate(&key.tenant, &cx.quotas(&key.tenant))?;
    let lease = cx
        .store
        .acquire_lease_as(&key, client_id, lease_id, cx.config.lease_ttl)
        .await?;
    let lease = check_incarnation(cx, &key, &request.get_ref().incarnation, lease).await?;
    tracing::debug!(epoch = lease.epoch, "lease granted");
    Ok(Response::new(lease.into()))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name, epoch = request.get_ref().epoch))]
pub async fn renew(
    cx: &Context,
    request: Request<pb::RenewLeaseRequest>,
) -> Result<Response<pb::LeaseResponse>, Status> {
    let key = cx.key(&request, &request.get_ref().name, Role::Write, "RenewLease")?;
    let renew = request.get_ref();
    let lease_id = validate::lease_id(&renew.lease_id)?;
    let lease = cx
        .store
        .renew_lease(&key, lease_id, renew.epoch, cx.config.lease_ttl)
        .await?;
    let lease = check_incarnation(cx, &key, &renew.incarnation, lease).await?;
    Ok(Response::new(lease.into()))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name, epoch = request.get_ref().epoch))]
pub async fn release(
    cx: &Context,
    request: Request<pb::ReleaseLeaseRequest>,
) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
    let key = cx.key(
        &request,
        &request.get_ref().name,
        Role::Write,
        "ReleaseLease",
    )?;
    let release = request.get_ref();
    let lease_id = validate::lease_id(&release.lease_id)?;
    cx.store
        .release_lease(&key, lease_id, release.epoch)
        .await?;
    Ok(Response::new(pb::ReleaseLeaseResponse {}))
}
