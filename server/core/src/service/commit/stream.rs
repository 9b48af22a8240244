//! Receiving a commit stream's messages: each within the idle timeout, and a stream that
//! breaks reported by what broke it.

use std::time::Duration;

use pagewire_proto::v1 as pb;
use tonic::{Code, Status, Streaming};

/// The stream's messages, each within the idle timeout.
pub struct Messages {
    stream: Streaming<pb::CommitRequest>,
    idle: Duration,
}

impl Messages {
    pub fn new(stream: Streaming<pb::CommitRequest>, idle: Duration) -> Self {
        Self { stream, idle }
    }

    /// The next message, `None` at the stream's end. A client that stops sending must
    /// not hold its buffered pages (and its share of the budgets) forever:
    /// `DEADLINE_EXCEEDED` past `--stream-idle-timeout`.
    pub async fn next(&mut self) -> Result<Option<pb::CommitRequest>, Status> {
        match tokio::time::timeout(self.idle, self.stream.message()).await {
            Ok(message) => message.map_err(broken_stream),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no commit stream message for {} (server limit --stream-idle-timeout); nothing was applied",
                humantime::format_duration(self.idle)
            ))),
        }
    }
}

/// A stream that failed before its end (client gone, garbage bytes, message over the
/// size limit, over a budget).
fn broken_stream(status: Status) -> Status {
    tracing::debug!(code = ?status.code(), "commit stream broke: {}", status.message());
    let nothing = "; nothing was applied";
    match status.code() {
        // Our own limits (the admission layer's metering) say which one.
        Code::ResourceExhausted | Code::DeadlineExceeded => status,
        Code::OutOfRange => Status::resource_exhausted(format!(
            "commit stream message too large (server limit --max-message-bytes): {}{nothing}",
            status.message()
        )),
        // tonic reports undecodable protobuf as INTERNAL; for us it is bad client input.
        Code::Internal => Status::invalid_argument(format!(
            "undecodable commit stream message: {}{nothing}",
            status.message()
        )),
        // UNAVAILABLE, not CANCELLED: a client reads a CANCELLED from the server as the
        // grpc-timeout it sent having run out (tonic's enforcement).
        _ => Status::unavailable(format!(
            "commit stream broke: {}{nothing}",
            status.message()
        )),
    }
}
