//! Commit: reads the stream (a header, page batches, a trailer) into one checked
//! [`Commit`], and only then hands it to the store, which applies it all or nothing.
//! A stream that is out of order, over the limits, broken, idle or unfinished applies
//! nothing.
//!
//! Admission: the header is checked against the store ([`PageStore::precheck`]: a known
//! commit id answers at once; a lost lease or stale base version is refused) before any
//! page is buffered; every byte of the stream is charged as it arrives
//! ([`CommitCharge`], set up by the admission layer); pages are copied out of the
//! received messages, so a padded message's buffer is freed as soon as it is decoded.
//!
//! [`PageStore::precheck`]: crate::store::PageStore::precheck

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pagewire_proto::v1 as pb;
use pb::commit_request::Part;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::field::Empty;

use super::Context;
use crate::admission::CommitCharge;
use crate::auth;
use crate::store::{Commit, CommitOutcome, DbKey, Identity, StoreError};
use crate::validate;

#[tracing::instrument(skip_all, fields(db = Empty, base = Empty, pages = Empty, version = Empty))]
pub async fn commit(
    cx: &Context,
    request: Request<Streaming<pb::CommitRequest>>,
) -> Result<Response<pb::CommitResponse>, Status> {
    let tenant = auth::tenant_of(&request)?;
    let charge = request.extensions().get::<Arc<CommitCharge>>().cloned();
    if let Some(charge) = &charge {
        charge.set_tenant(&tenant.name)?;
    }
    let limits = &cx.config.limits;
    let mut stream = Messages {
        stream: request.into_inner(),
        idle: limits.stream_idle_timeout,
    };
    let mut assembly = Assembly::new(limits.max_commit_bytes, charge.clone());
    let first = stream.next().await?;
    assembly.take(first.ok_or_else(|| invalid("commit stream ended without a header"))?)?;
    let span = tracing::Span::current();
    let key = match &assembly.started {
        Some((name, c)) => {
            span.record("db", name.as_str())
                .record("base", c.base_version);
            let key = DbKey::new(tenant.name, name.clone());
            if let Some(done) = cx.store.precheck(&key, c.header()).await? {
                return Ok(reply(done));
            }
            key
        }
        None => return Err(invalid("commit stream must start with a header").into()),
    };
    while let Some(message) = stream.next().await? {
        assembly.take(message)?;
    }
    let (_, commit) = assembly.finish()?;
    span.record("pages", commit.pages.len());
    validate::commit(&commit)?;
    // Spawned: a round must run to its end even if this client goes away. The charge
    // goes with it: the pages stay in memory until the store has them.
    let round = cx.hub.clone().commit(cx.store.clone(), key, commit);
    let outcome = tokio::spawn(async move {
        let outcome = round.await;
        drop(charge);
        outcome
    });
    let outcome = outcome
        .await
        .map_err(|e| Status::internal(format!("commit task failed: {e}")))??;
    span.record("version", outcome.version);
    tracing::debug!(already_applied = outcome.already_applied, "committed");
    Ok(reply(outcome))
}

fn reply(outcome: CommitOutcome) -> Response<pb::CommitResponse> {
    Response::new(pb::CommitResponse {
        version: outcome.version,
        already_applied: outcome.already_applied,
        tag: outcome
            .tag
            .map(|t| Bytes::copy_from_slice(&t))
            .unwrap_or_default(),
    })
}

/// The stream's messages, each within the idle timeout.
struct Messages {
    stream: Streaming<pb::CommitRequest>,
    idle: Duration,
}

impl Messages {
    async fn next(&mut self) -> Result<Option<pb::CommitRequest>, Status> {
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
        _ => Status::cancelled(format!(
            "commit stream broke: {}{nothing}",
            status.message()
        )),
    }
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(msg.into())
}

/// A commit being received: checks order, sizes and the running byte total as messages
/// arrive.
struct Assembly {
    /// The database name and the commit so far, once the header arrived.
    started: Option<(String, Commit)>,
    seen: HashSet<u32>,
    bytes: u64,
    max_bytes: u64,
    trailer_seen: bool,
    /// Charged for what each page costs beyond its bytes (the wire bytes are charged
    /// as they arrive).
    charge: Option<Arc<CommitCharge>>,
}

/// Memory a received page costs beyond its data: its entry in the page list and the
/// duplicate check, and its allocation's header. With 512-byte pages that is an eighth
/// more than the wire bytes, so it is budgeted too.
const PAGE_OVERHEAD: u64 = 64;

impl Assembly {
    fn new(max_bytes: u64, charge: Option<Arc<CommitCharge>>) -> Self {
        Self {
            started: None,
            seen: HashSet::new(),
            bytes: 0,
            max_bytes,
            trailer_seen: false,
            charge,
        }
    }

    fn take(&mut self, message: pb::CommitRequest) -> Result<(), Status> {
        if self.trailer_seen {
            return Err(invalid("commit stream continues after its trailer").into());
        }
        if let (Some(Part::Pages(batch)), Some(charge)) = (&message.part, &self.charge) {
            charge.take_overhead(PAGE_OVERHEAD * batch.pages.len() as u64)?;
        }
        let taken = match message.part {
            None => Err(invalid("empty CommitRequest (no header, pages or trailer)")),
            Some(Part::Header(header)) => self.header(header),
            Some(Part::Pages(batch)) => self.pages(batch),
            Some(Part::Trailer(trailer)) => self.trailer(trailer),
        };
        Ok(taken?)
    }

    fn header(&mut self, h: pb::CommitHeader) -> Result<(), StoreError> {
        if self.started.is_some() {
            return Err(invalid("commit stream has a second header"));
        }
        validate::db_name(&h.name)?;
        validate::page_size(h.page_size)?;
        validate::page_count(h.page_count)?;
        let commit = Commit {
            lease_id: validate::lease_id(&h.lease_id)?,
            epoch: h.epoch,
            base_version: h.base_version,
            commit_id: validate::commit_id(&h.commit_id)?,
            identity: Identity::from_wire(&h.incarnation, h.base_version, &h.base_tag)?,
            page_size: h.page_size,
            page_count: h.page_count,
            pages: Vec::new(),
        };
        self.started = Some((h.name, commit));
        Ok(())
    }

    fn pages(&mut self, batch: pb::PageBatch) -> Result<(), StoreError> {
        let Some((_, commit)) = self.started.as_mut() else {
            return Err(invalid("commit stream must start with a header"));
        };
        for page in batch.pages {
            validate::page_no(page.page_no, commit.page_count)?;
            validate::page_len(page.page_no, page.data.len(), commit.page_size)?;
            if !self.seen.insert(page.page_no) {
                return Err(invalid(format!(
                    "page {} appears twice in one commit",
                    page.page_no
                )));
            }
            self.bytes += page.data.len() as u64;
            validate::commit_bytes(self.bytes, self.max_bytes)?;
            // A copy: the decoded bytes are a slice of the whole received message
            // (padding included), which they would otherwise keep alive.
            commit
                .pages
                .push((page.page_no, Bytes::copy_from_slice(&page.data)));
        }
        Ok(())
    }

    fn trailer(&mut self, t: pb::CommitTrailer) -> Result<(), StoreError> {
        let Some((_, commit)) = self.started.as_ref() else {
            return Err(invalid("commit stream must start with a header"));
        };
        if t.pages_sent as usize != commit.pages.len() {
            return Err(invalid(format!(
                "trailer says {} pages were sent but {} arrived",
                t.pages_sent,
                commit.pages.len()
            )));
        }
        self.trailer_seen = true;
        Ok(())
    }

    /// The database name and the commit, if the stream was complete.
    fn finish(self) -> Result<(String, Commit), StoreError> {
        match self.started {
            None => Err(invalid("commit stream ended without a header")),
            Some(_) if !self.trailer_seen => Err(invalid(
                "commit stream ended without a trailer; nothing was applied",
            )),
            Some(started) => Ok(started),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn header(page_count: u32) -> pb::CommitRequest {
        let h = pb::CommitHeader {
            name: "a.db".into(),
            lease_id: Bytes::from(vec![1; 16]),
            epoch: 1,
            base_version: 0,
            commit_id: Bytes::from(vec![2; 16]),
            page_size: 512,
            page_count,
            ..Default::default()
        };
        pb::CommitRequest {
            part: Some(Part::Header(h)),
        }
    }

    fn pages(nos: &[u32]) -> pb::CommitRequest {
        let pages = nos
            .iter()
            .map(|&page_no| pb::Page {
                page_no,
                data: Bytes::from(vec![0; 512]),
            })
            .collect();
        pb::CommitRequest {
            part: Some(Part::Pages(pb::PageBatch { pages })),
        }
    }

    fn trailer(pages_sent: u32) -> pb::CommitRequest {
        pb::CommitRequest {
            part: Some(Part::Trailer(pb::CommitTrailer { pages_sent })),
        }
    }

    fn run(
        messages: Vec<pb::CommitRequest>,
        max_bytes: u64,
    ) -> Result<(String, Commit), StoreError> {
        let mut a = Assembly::new(max_bytes, None);
        for m in messages {
            if let Err(status) = a.take(m) {
                return Err(StoreError::InvalidArgument(status.message().to_owned()));
            }
        }
        a.finish()
    }

    #[test]
    fn well_formed_stream_assembles() {
        let got = run(
            vec![header(3), pages(&[1, 2]), pages(&[3]), trailer(3)],
            1 << 20,
        );
        let (name, commit) = got.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(name, "a.db");
        assert_eq!(
            commit.pages.iter().map(|p| p.0).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    #[test]
    fn malformed_streams_are_refused() {
        let cases: Vec<(Vec<pb::CommitRequest>, &str)> = vec![
            (vec![], "without a header"),
            (vec![pages(&[1]), trailer(1)], "start with a header"),
            (vec![trailer(0)], "start with a header"),
            (vec![header(1), header(1)], "second header"),
            (vec![header(1), pages(&[1])], "without a trailer"),
            (vec![header(1), pages(&[1]), trailer(2)], "trailer says 2"),
            (
                vec![header(1), pages(&[1]), trailer(1), pages(&[1])],
                "after its trailer",
            ),
            (vec![header(2), pages(&[1, 1])], "twice"),
            (vec![header(2), pages(&[3])], "beyond the page count"),
            (vec![header(2), pages(&[0])], "page number 0"),
            (
                vec![pb::CommitRequest { part: None }],
                "empty CommitRequest",
            ),
        ];
        for (messages, want) in cases {
            let err = run(messages, 1 << 20)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want), "want {want:?}, got {err:?}");
        }
    }

    #[test]
    fn running_total_is_bounded() {
        let err = run(vec![header(3), pages(&[1, 2, 3]), trailer(3)], 1024).err();
        let err = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("--max-commit-bytes"), "{err:?}");
    }
}
