//! The gRPC client of one database: the bearer token, RPC counters, and retries.
//!
//! Reads and lease calls are retried on transport errors within the retry budget;
//! a commit is retried with the same commit id until its outcome is definite.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use pagewire_proto::v1::{
    self as pb, commit_request::Part, pages_client::PagesClient,
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::error::VfsError;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// RPCs sent, by kind; readable through `PRAGMA pagewire_stats`.
#[derive(Default, Debug)]
pub struct Counters {
    pub open: AtomicU64,
    pub lease: AtomicU64,
    pub begin_read: AtomicU64,
    pub read_pages: AtomicU64,
    pub pages_read: AtomicU64,
    pub commit: AtomicU64,
    /// Pages carried by commits that applied.
    pub pages_committed: AtomicU64,
    /// Watch streams opened.
    pub watch: AtomicU64,
    /// Read transactions begun with no RPC, on a read lease or snapshot Watch state
    /// (not an RPC; counted to show how many BeginReads were saved).
    pub local_reads: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("open", get(&self.open)),
            ("lease", get(&self.lease)),
            ("begin_read", get(&self.begin_read)),
            ("read_pages", get(&self.read_pages)),
            ("pages_read", get(&self.pages_read)),
            ("commit", get(&self.commit)),
            ("pages_committed", get(&self.pages_committed)),
            ("watch", get(&self.watch)),
            ("local_reads", get(&self.local_reads)),
        ]
    }
}

#[derive(Clone)]
pub struct Client {
    inner: PagesClient<InterceptedService<Channel, Auth>>,
    retry_timeout: Duration,
    pub counters: Arc<Counters>,
}

/// A commit ready to send; kept whole so a retry sends the same bytes.
pub struct CommitPlan {
    pub header: pb::CommitHeader,
    pub pages: Vec<(u32, Bytes)>,
    /// Most page bytes per stream message.
    pub chunk_bytes: usize,
}

/// How a commit ended.
pub enum CommitError {
    /// The server answered: the commit did not apply and never will.
    Definite(VfsError),
    /// Retries ran out without an answer: it may or may not have applied.
    Unknown(VfsError),
}

impl Client {
    pub fn new(channel: Channel, token: Option<&str>, retry_timeout: Duration, max_message: usize) -> Result<Self, VfsError> {
        let header = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| VfsError::Config("token: not a valid header value".into()))
            })
            .transpose()?;
        let inner = PagesClient::with_interceptor(channel, Auth(header))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        Ok(Self { inner, retry_timeout, counters: Arc::default() })
    }

    /// Open does not retry: an unreachable server should fail the open promptly.
    pub async fn open(mut self, req: pb::OpenRequest) -> Result<pb::OpenResponse, VfsError> {
        Counters::bump(&self.counters.open);
        Ok(self.inner.open(req).await?.into_inner())
    }

    pub async fn acquire_lease(self, req: pb::AcquireLeaseRequest) -> Result<pb::LeaseResponse, VfsError> {
        self.retrying(|mut c| {
            let req = req.clone();
            async move {
                Counters::bump(&c.counters.lease);
                Ok(c.inner.acquire_lease(req).await?.into_inner())
            }
        })
        .await
    }

    pub async fn renew_lease(self, req: pb::RenewLeaseRequest) -> Result<pb::LeaseResponse, VfsError> {
        self.retrying(|mut c| {
            let req = req.clone();
            async move {
                Counters::bump(&c.counters.lease);
                Ok(c.inner.renew_lease(req).await?.into_inner())
            }
        })
        .await
    }

    pub async fn release_lease(mut self, req: pb::ReleaseLeaseRequest) -> Result<(), VfsError> {
        Counters::bump(&self.counters.lease);
        self.inner.release_lease(req).await?;
        Ok(())
    }

    pub async fn begin_read(self, req: pb::BeginReadRequest) -> Result<pb::BeginReadResponse, VfsError> {
        self.retrying(|mut c| {
            let req = req.clone();
            async move {
                Counters::bump(&c.counters.begin_read);
                Ok(c.inner.begin_read(req).await?.into_inner())
            }
        })
        .await
    }

    pub async fn read_pages(self, req: pb::ReadPagesRequest) -> Result<pb::ReadPagesResponse, VfsError> {
        let n = req.page_nos.len() as u64;
        self.retrying(|mut c| {
            let req = req.clone();
            async move {
                Counters::bump(&c.counters.read_pages);
                c.counters.pages_read.fetch_add(n, Ordering::Relaxed);
                Ok(c.inner.read_pages(req).await?.into_inner())
            }
        })
        .await
    }

    /// Opens a Watch stream fed by `requests` (not retried: the caller falls back to
    /// BeginRead and opens another later).
    pub async fn watch(
        mut self,
        requests: tokio::sync::mpsc::Receiver<pb::WatchRequest>,
    ) -> Result<tonic::Streaming<pb::WatchEvent>, Status> {
        Counters::bump(&self.counters.watch);
        let stream = tokio_stream::wrappers::ReceiverStream::new(requests);
        Ok(self.inner.watch(stream).await?.into_inner())
    }

    /// Sends one transaction, retrying with the same commit id until the answer
    /// is definite or the retry budget runs out.
    pub async fn commit(self, plan: Arc<CommitPlan>) -> Result<pb::CommitResponse, CommitError> {
        let result = self
            .retrying(|mut c| {
                let plan = plan.clone();
                async move {
                    Counters::bump(&c.counters.commit);
                    let stream = futures::stream::iter(commit_messages(&plan));
                    Ok(c.inner.commit(stream).await?.into_inner())
                }
            })
            .await;
        if result.is_ok() {
            self.counters.pages_committed.fetch_add(plan.pages.len() as u64, Ordering::Relaxed);
        }
        result.map_err(|e| if e.is_retryable() { CommitError::Unknown(e) } else { CommitError::Definite(e) })
    }

    /// Runs `call` until it succeeds, fails definitely, or the budget is spent.
    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, VfsError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, VfsError>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry_timeout;
        let mut backoff = Duration::from_millis(5);
        loop {
            match call(self.clone()).await {
                Err(e) if e.is_retryable() && tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(error = %e, ?backoff, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }
}

/// Header, page batches of at most `chunk_bytes`, trailer.
fn commit_messages(plan: &CommitPlan) -> Vec<pb::CommitRequest> {
    let msg = |part| pb::CommitRequest { part: Some(part) };
    let mut out = vec![msg(Part::Header(plan.header.clone()))];
    let mut batch = Vec::new();
    let mut bytes = 0;
    for (no, data) in &plan.pages {
        if bytes + data.len() > plan.chunk_bytes && !batch.is_empty() {
            out.push(msg(Part::Pages(pb::PageBatch { pages: std::mem::take(&mut batch) })));
            bytes = 0;
        }
        bytes += data.len();
        batch.push(pb::Page { page_no: *no, data: data.clone() });
    }
    if !batch.is_empty() {
        out.push(msg(Part::Pages(pb::PageBatch { pages: batch })));
    }
    out.push(msg(Part::Trailer(pb::CommitTrailer { pages_sent: plan.pages.len() as u32 })));
    out
}
