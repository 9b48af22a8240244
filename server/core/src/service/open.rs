//! Open: a database's newest state, created on request, plus the server's limits.

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Context;
use super::convert::millis;
use crate::auth::Role;
use pagewire_proto::capability;

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name, create = request.get_ref().create))]
pub async fn open(
    cx: &Context,
    request: Request<pb::OpenRequest>,
) -> Result<Response<pb::OpenResponse>, Status> {
    // Read-only opens need the read role; opening to write, or creating by opening (as
    // SQLite's open does), the write role.
    let need = if request.get_ref().read_only && !request.get_ref().create {
        Role::Read
    } else {
        Role::Write
    };
    let key = cx.key(
        &request,
        &request.get_ref().name,
        need,
        "Open to write or create",
    )?;
    let open = request.into_inner();
    // MIN_CLIENT_PROTOCOL is 0 today (every client is served); the check is for later.
    #[allow(clippy::absurd_extreme_comparisons)]
    if open.protocol < pagewire_proto::MIN_CLIENT_PROTOCOL {
        return Err(Status::failed_precondition(format!(
            "this client speaks pagewire protocol revision {}; this server needs at least {}: upgrade the client",
            open.protocol,
            pagewire_proto::MIN_CLIENT_PROTOCOL
        )));
    }
    // A read-only open (a replica) never creates.
    let create = open.create && !open.read_only;
    let (state, created) = super::admin::open_or_create(cx, &key, create).await?;
    if created {
        tracing::info!(tenant = %key.tenant, "created database");
    }
    Ok(Response::new(pb::OpenResponse {
        state: Some(state.into()),
        created,
        limits: Some(cx.limits(&key.tenant)),
        lease_ttl_ms: millis(cx.config.lease_ttl),
        heartbeat_ms: millis(cx.config.effective_heartbeat()),
        capabilities: [capability::INCARNATIONS, capability::RANGES]
            .map(String::from)
            .to_vec(),
        protocol: pagewire_proto::PROTOCOL_REVISION,
        min_client_protocol: pagewire_proto::MIN_CLIENT_PROTOCOL,
    }))
}
