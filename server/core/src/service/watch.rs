//! Watch: a client's stream of one database's commits, carrying its read lease and
//! its acknowledgements of invalidations (the rules live in [`crate::watch`]).

use std::pin::Pin;

use futures::Stream;
use pagewire_proto::v1 as pb;
use pb::watch_request::Part;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Context;
use crate::store::DbKey;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

pub async fn watch(
    cx: &Context,
    request: Request<Streaming<pb::WatchRequest>>,
) -> Result<Response<WatchStream>, Status> {
    let tenant = crate::auth::tenant_of(&request, crate::auth::Role::Read, "Watch")?;
    let mut requests = request.into_inner();
    // The admission layer cuts a stream whose WatchStart does not come in time.
    let start = match requests.message().await? {
        Some(pb::WatchRequest {
            part: Some(Part::Start(start)),
        }) => start,
        _ => {
            return Err(Status::invalid_argument(
                "a Watch stream must start with WatchStart",
            ));
        }
    };
    crate::validate::db_name(&start.name)?;
    let key = DbKey::new(tenant.name.clone(), start.name);
    let incarnation = crate::store::identity::id_from_wire(
        "incarnation",
        &start.incarnation,
        crate::store::Incarnation::from_wire,
    )?;
    let (id, events) = cx
        .hub
        .watch(
            &*cx.store,
            &key,
            start.ranges,
            incarnation,
            cx.quotas(&key.tenant).max_watchers,
        )
        .await?;
    tracing::debug!(db = %key, watcher = id, "watch started");
    let hub = cx.hub.clone();
    let closing = hub.closing();
    let credentials = cx.config.credentials.clone();
    tokio::spawn(async move {
        // Only a ReadLeaseRelease gives the lease back: after a stream ends or breaks
        // the client may still serve reads until its lease runs out. A stream whose
        // token is revoked ends (its lease is no longer renewed).
        let followed = tokio::select! {
            followed = follow(&hub, &key, id, requests, closing) => followed,
            () = credentials.revoked(&tenant) => {
                let status = Status::unauthenticated("the token of this Watch stream was revoked");
                hub.end_stream(&key, id, status.clone());
                Err(status)
            }
        };
        if let Err(status) = followed {
            tracing::debug!(db = %key, watcher = id, "watch stream broke: {}", status.message());
        }
        hub.disconnect(&key, id);
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(events))))
}

/// Handles a watcher's messages until its stream ends or the server shuts down
/// (dropping `requests` then closes the stream, which graceful shutdown waits for).
async fn follow(
    hub: &crate::watch::Hub,
    key: &DbKey,
    id: u64,
    mut requests: Streaming<pb::WatchRequest>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Status> {
    loop {
        let message = tokio::select! {
            message = requests.message() => message?,
            _ = closing.wait_for(|closing| *closing) => return Err(Status::unavailable("shutting down")),
        };
        let Some(message) = message else {
            return Ok(());
        };
        match message.part {
            Some(Part::Lease(ask)) => hub.grant(key, id, ask.seq),
            Some(Part::Ack(ack)) => hub.ack(key, id, ack.round),
            Some(Part::Release(_)) => hub.release_lease(key, id),
            Some(Part::Start(_)) | None => {
                return Err(Status::invalid_argument(
                    "unexpected message on a started Watch stream",
                ));
            }
        }
    }
}
