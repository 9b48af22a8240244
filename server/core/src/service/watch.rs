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
    let tenant = crate::auth::tenant_of(&request)?;
    let mut requests = request.into_inner();
    let name = match requests.message().await? {
        Some(pb::WatchRequest { part: Some(Part::Start(start)) }) => start.name,
        _ => return Err(Status::invalid_argument("a Watch stream must start with WatchStart")),
    };
    crate::validate::db_name(&name)?;
    let key = DbKey::new(tenant.name, name);
    let (id, events) = cx.hub.watch(&*cx.store, &key).await?;
    tracing::debug!(db = %key, watcher = id, "watch started");
    let hub = cx.hub.clone();
    tokio::spawn(async move {
        match follow(&hub, &key, id, &mut requests).await {
            // The client closed its half: it serves nothing any more.
            Ok(()) => hub.release_lease(&key, id),
            // Broken: the client may not know yet, so its lease stays until it runs out.
            Err(status) => {
                tracing::debug!(db = %key, watcher = id, "watch stream broke: {}", status.message());
            }
        }
        hub.disconnect(&key, id);
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(events))))
}

/// Handles a watcher's messages until its stream ends.
async fn follow(
    hub: &crate::watch::Hub,
    key: &DbKey,
    id: u64,
    requests: &mut Streaming<pb::WatchRequest>,
) -> Result<(), Status> {
    while let Some(message) = requests.message().await? {
        match message.part {
            Some(Part::Lease(ask)) => hub.grant(key, id, ask.seq),
            Some(Part::Ack(ack)) => hub.ack(key, id, ack.round),
            Some(Part::Release(_)) => hub.release_lease(key, id),
            Some(Part::Start(_)) | None => {
                return Err(Status::invalid_argument("unexpected message on a started Watch stream"));
            }
        }
    }
    Ok(())
}
