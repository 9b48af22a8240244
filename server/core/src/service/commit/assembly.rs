//! Assembling a commit from its stream: every message checked (order, sizes, the
//! running byte total) and charged as it arrives, so a stream that is out of order, over
//! the limits or unfinished is refused before it costs more.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use pagewire_proto::v1 as pb;
use pb::commit_request::Part;
use tonic::Status;

use crate::admission::CommitCharge;
use crate::store::{Commit, CommitHeader, Identity, StoreError, Version};
use crate::validate;

pub fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(msg.into())
}

/// A commit being received: checks order, sizes and the running byte total as messages
/// arrive.
pub struct Assembly {
    /// The database name and the commit so far, once the header arrived.
    started: Option<(String, Commit)>,
    seen: HashSet<u32>,
    bytes: u64,
    max_bytes: u64,
    limit_name: String,
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
    /// `max_bytes` is `limit_name` (the server's flag or the tenant's quota).
    pub fn new(max_bytes: u64, limit_name: String, charge: Option<Arc<CommitCharge>>) -> Self {
        Self {
            started: None,
            seen: HashSet::new(),
            bytes: 0,
            max_bytes,
            limit_name,
            trailer_seen: false,
            charge,
        }
    }

    pub fn take(&mut self, message: pb::CommitRequest) -> Result<(), Status> {
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

    /// The database name and the header's fields, once the header arrived.
    pub fn started(&self) -> Option<(&str, CommitHeader)> {
        let (name, commit) = self.started.as_ref()?;
        Some((name, commit.header()))
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
            base_version: Version(h.base_version),
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
            let no = validate::page_no(page.page_no, commit.page_count)?;
            validate::page_len(no, page.data.len(), commit.page_size)?;
            if !self.seen.insert(page.page_no) {
                return Err(invalid(format!(
                    "page {} appears twice in one commit",
                    page.page_no
                )));
            }
            self.bytes += page.data.len() as u64;
            validate::commit_bytes(self.bytes, self.max_bytes, &self.limit_name)?;
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
    pub fn finish(self) -> Result<(String, Commit), StoreError> {
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
        let mut a = Assembly::new(max_bytes, validate::SERVER_COMMIT_LIMIT.into(), None);
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
