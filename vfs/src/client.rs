//! The gRPC client of one database: the bearer token, RPC counters, deadlines and
//! retries.
//!
//! Reads and lease calls are retried on transport errors within the retry budget;
//! a commit is retried with the same commit id until its outcome is definite.
//!
//! Deadlines (`call_timeout`, [`Client::new`]), so that a server that accepted the
//! connection and then went silent cannot block SQLite for long:
//! - A unary call (Open, AcquireLease, RenewLease, ReleaseLease, BeginRead) must be
//!   answered within `call_timeout` per attempt; ReadPages within `call_timeout` plus
//!   the time its largest possible answer takes at [`SLOW_LINK_BYTES_PER_SEC`]. The
//!   deadline also goes to the server as `grpc-timeout`, which drops the work.
//! - A Commit stream has no total deadline, only one for progress: the transport must
//!   take its next message within `call_timeout` (messages carry at most
//!   [`COMMIT_MESSAGE_BYTES`] of pages, so a live link needs 1 MiB per `call_timeout`),
//!   and once it took the last one the answer must come within `call_timeout` plus the
//!   commit's bytes at [`SLOW_LINK_BYTES_PER_SEC`] (the server writes them first).
//! - The Watch stream's opening (its response headers, which the server sends once it
//!   has the `WatchStart`) must come within `call_timeout`; after that it is a
//!   long-lived stream whose liveness the connection's HTTP/2 keepalive checks, and no
//!   SQLite call waits on it (a read lease ends on its own clock).
//!
//! An attempt that missed its deadline is a retryable transport failure, with two
//! extra rules: the connection it used is replaced ([`Conn::reconnect`]), so the retry
//! goes over a new one, and a call fails at its second timed-out attempt
//! ([`TIMED_OUT_ATTEMPTS`]) whatever is left of `retry_timeout`. Against a server
//! that answers nothing, an SQLite call thus fails after about 2 x `call_timeout`
//! (ReadPages: plus at most 2 x 2 s), while a server that refuses connections
//! (restarting) is retried for `retry_timeout` as before. A retry starts only within
//! `retry_timeout` of the call's start, so a call lasts at most `retry_timeout` plus
//! one attempt.
//!
//! A commit none of whose attempts handed its trailer to the transport cannot have
//! applied (the server applies only whole streams): it fails definitely, and SQLite
//! rolls back. Otherwise a commit without an answer has an unknown outcome.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::Stream;
use pagewire_proto::{
    ids::PageNo,
    v1::{self as pb, admin_client::AdminClient, commit_request::Part, pages_client::PagesClient},
};
use parking_lot::Mutex;
use tokio::time::Instant;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

use crate::{
    error::VfsError,
    runtime::Conn,
    status::{Class, Outcome},
};

/// Most page bytes in one Commit stream message. Progress is seen per message, so this
/// is what a live link must move per `call_timeout`; the server's
/// `--stream-idle-timeout` (30 s per message) asks far less.
pub const COMMIT_MESSAGE_BYTES: usize = 1 << 20;

/// The slowest link a call that moves data is given time for, in bytes per second:
/// the part of a deadline that grows with the bytes (a Commit's answer, which comes
/// after the server wrote the data; a ReadPages answer).
pub const SLOW_LINK_BYTES_PER_SEC: u64 = 8 << 20;

/// The largest answer a ReadPages is given time for: SQLite's largest page per page
/// asked, up to the server's default `--max-message-bytes`.
const READ_ANSWER_MAX_BYTES: u64 = 16 << 20;
const MAX_PAGE_BYTES: u64 = 64 << 10;

/// A call fails at its attempt that is the this-many-th to miss its deadline.
pub const TIMED_OUT_ATTEMPTS: u32 = 2;

type Pages = PagesClient<InterceptedService<Channel, Auth>>;
/// The Admin service, for the history calls the VFS's pragmas make (see `history.rs`).
pub type Admin = AdminClient<InterceptedService<Channel, Auth>>;

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
    /// Attempts that missed their deadline (`call_timeout`), of any call.
    pub timeouts: AtomicU64,
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
            ("timeouts", get(&self.timeouts)),
        ]
    }
}

#[derive(Clone)]
pub struct Client {
    conn: Arc<Conn>,
    auth: Auth,
    max_message: usize,
    retry_timeout: Duration,
    call_timeout: Duration,
    pub counters: Arc<Counters>,
}

/// A commit ready to send; kept whole so a retry sends the same bytes.
pub struct CommitPlan {
    pub header: pb::CommitHeader,
    pub pages: Vec<(PageNo, Bytes)>,
    /// Most page bytes per stream message (the client sends at most
    /// [`COMMIT_MESSAGE_BYTES`]).
    pub chunk_bytes: usize,
}

/// How a commit ended.
#[derive(Debug)]
pub enum CommitError {
    /// The server answered: the commit did not apply and never will.
    Definite(VfsError),
    /// Retries ran out without an answer: it may or may not have applied.
    Unknown(VfsError),
}

/// How one attempt failed.
enum Failed {
    /// It missed its deadline; says what did not happen in time ("did not answer
    /// BeginRead within 2s (call_timeout)").
    TimedOut(String),
    Error(VfsError),
}

impl From<Status> for Failed {
    fn from(s: Status) -> Self {
        // A TLS failure (a certificate not trusted, refused, ...) is definite: asking
        // again gets the same.
        if let Some(cause) = pagewire_tls::tls_cause(&s) {
            return Failed::Error(VfsError::Tls(crate::error::explain_tls(cause)));
        }
        // tonic's own enforcement of the grpc-timeout we send (it fires with ours).
        match Class::of(&s) {
            Class::TimedOut => Failed::TimedOut(String::new()),
            _ => Failed::Error(VfsError::Status(s)),
        }
    }
}

/// `msg` with `limit` as its grpc-timeout (the server drops work nobody waits for).
fn request<T>(msg: T, limit: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(limit);
    r
}

/// One attempt of a unary call, bounded by `limit`; `what` names the call in errors.
async fn bounded<T>(
    what: &str,
    limit: Duration,
    shown: &str,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Failed> {
    let timed_out = || Failed::TimedOut(format!("did not answer {what} within {shown}"));
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(s)) => match Failed::from(s) {
            Failed::TimedOut(_) => Err(timed_out()),
            other => Err(other),
        },
        Err(_) => Err(timed_out()),
    }
}

/// Time for `bytes` over the slowest link a call is given time for.
pub fn transfer_time(bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / SLOW_LINK_BYTES_PER_SEC as f64)
}

/// A duration as a person reads it, to the millisecond (`2s`, `2s 500ms`).
fn show(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

fn show_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

impl Client {
    pub fn new(
        conn: Arc<Conn>,
        token: Option<&str>,
        retry_timeout: Duration,
        call_timeout: Duration,
        max_message: usize,
    ) -> Result<Self, VfsError> {
        let header = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| VfsError::Config("token: not a valid header value".into()))
            })
            .transpose()?;
        Ok(Self {
            conn,
            auth: Auth(header),
            max_message,
            retry_timeout,
            call_timeout,
            counters: Arc::default(),
        })
    }

    /// This client with another message size limit (both directions).
    pub fn with_max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message;
        self
    }

    /// The stub for one attempt, on the current connection, and that connection's
    /// generation.
    fn stub(&self) -> (u64, Pages) {
        let (generation, channel) = self.conn.get();
        let pages = PagesClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message);
        (generation, pages)
    }

    /// One Admin call `what` (never retried: a fork or a restore whose answer was lost
    /// is not sent again), answered within `limit`, which also goes to the server as
    /// its grpc-timeout.
    pub async fn admin<M, T, Fut>(
        self,
        what: &str,
        limit: Duration,
        msg: M,
        call: impl FnOnce(Admin, Request<M>) -> Fut,
    ) -> Result<T, VfsError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let (_, channel) = self.conn.get();
        let stub = AdminClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(self.max_message)
            .max_encoding_message_size(self.max_message);
        let shown = show(limit);
        match bounded(what, limit, &shown, call(stub, request(msg, limit))).await {
            Ok(v) => Ok(v),
            Err(Failed::Error(e)) => Err(e),
            Err(Failed::TimedOut(w)) => Err(VfsError::Status(Status::deadline_exceeded(format!(
                "the pagewire server {w}"
            )))),
        }
    }

    /// The deadline of one unary call.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// `call_timeout` as errors show it.
    fn shown_timeout(&self) -> String {
        format!("{} (call_timeout)", show(self.call_timeout))
    }

    /// Open does not retry: an unreachable server should fail the open promptly.
    pub async fn open(self, req: pb::OpenRequest) -> Result<pb::OpenResponse, VfsError> {
        let (limit, shown) = (self.call_timeout, self.shown_timeout());
        self.calling("Open", false, |mut c, counters| {
            let (req, shown) = (req.clone(), shown.clone());
            async move {
                Counters::bump(&counters.open);
                bounded("Open", limit, &shown, c.open(request(req, limit))).await
            }
        })
        .await
    }

    pub async fn acquire_lease(
        self,
        req: pb::AcquireLeaseRequest,
    ) -> Result<pb::LeaseResponse, VfsError> {
        let (limit, shown) = (self.call_timeout, self.shown_timeout());
        self.calling("AcquireLease", true, |mut c, counters| {
            let (req, shown) = (req.clone(), shown.clone());
            async move {
                Counters::bump(&counters.lease);
                bounded(
                    "AcquireLease",
                    limit,
                    &shown,
                    c.acquire_lease(request(req, limit)),
                )
                .await
            }
        })
        .await
    }

    pub async fn renew_lease(
        self,
        req: pb::RenewLeaseRequest,
    ) -> Result<pb::LeaseResponse, VfsError> {
        let (limit, shown) = (self.call_timeout, self.shown_timeout());
        self.calling("RenewLease", true, |mut c, counters| {
            let (req, shown) = (req.clone(), shown.clone());
            async move {
                Counters::bump(&counters.lease);
                bounded(
                    "RenewLease",
                    limit,
                    &shown,
                    c.renew_lease(request(req, limit)),
                )
                .await
            }
        })
        .await
    }

    pub async fn release_lease(self, req: pb::ReleaseLeaseRequest) -> Result<(), VfsError> {
        let (limit, shown) = (self.call_timeout, self.shown_timeout());
        self.calling("ReleaseLease", false, |mut c, counters| {
            let (req, shown) = (req.clone(), shown.clone());
            async move {
                Counters::bump(&counters.lease);
                bounded(
                    "ReleaseLease",
                    limit,
                    &shown,
                    c.release_lease(request(req, limit)),
                )
                .await
            }
        })
        .await
        .map(drop)
    }

    pub async fn begin_read(
        self,
        req: pb::BeginReadRequest,
    ) -> Result<pb::BeginReadResponse, VfsError> {
        let (limit, shown) = (self.call_timeout, self.shown_timeout());
        self.calling("BeginRead", true, |mut c, counters| {
            let (req, shown) = (req.clone(), shown.clone());
            async move {
                Counters::bump(&counters.begin_read);
                bounded(
                    "BeginRead",
                    limit,
                    &shown,
                    c.begin_read(request(req, limit)),
                )
                .await
            }
        })
        .await
    }

    /// ReadPages gets `call_timeout` plus time for its largest possible answer.
    pub async fn read_pages(
        self,
        req: pb::ReadPagesRequest,
    ) -> Result<pb::ReadPagesResponse, VfsError> {
        let n = req.page_nos.len() as u64;
        let answer = (n * MAX_PAGE_BYTES).min(READ_ANSWER_MAX_BYTES);
        let extra = transfer_time(answer);
        let limit = self.call_timeout + extra;
        let shown = format!(
            "{} (call_timeout {} + {} for up to {} of pages)",
            show(limit),
            show(self.call_timeout),
            show(extra),
            show_bytes(answer)
        );
        self.calling("ReadPages", true, |mut c, counters| {
            let (req, shown) = (req.clone(), shown.clone());
            async move {
                Counters::bump(&counters.read_pages);
                counters.pages_read.fetch_add(n, Ordering::Relaxed);
                bounded(
                    "ReadPages",
                    limit,
                    &shown,
                    c.read_pages(request(req, limit)),
                )
                .await
            }
        })
        .await
    }

    /// Opens a Watch stream fed by `requests` (not retried: the caller falls back to
    /// BeginRead and opens another later). The server must answer its opening within
    /// `call_timeout`.
    pub async fn watch(
        self,
        requests: tokio::sync::mpsc::Receiver<pb::WatchRequest>,
    ) -> Result<tonic::Streaming<pb::WatchEvent>, Status> {
        Counters::bump(&self.counters.watch);
        let (generation, mut pages) = self.stub();
        let stream = tokio_stream::wrappers::ReceiverStream::new(requests);
        match tokio::time::timeout(self.call_timeout, pages.watch(stream)).await {
            Ok(opened) => Ok(opened?.into_inner()),
            Err(_) => {
                Counters::bump(&self.counters.timeouts);
                self.conn.reconnect(generation);
                Err(Status::deadline_exceeded(format!(
                    "the pagewire server did not answer Watch within {}",
                    self.shown_timeout()
                )))
            }
        }
    }

    /// Sends one transaction, retrying with the same commit id until the answer
    /// is definite or the retry budget runs out.
    pub async fn commit(self, plan: Arc<CommitPlan>) -> Result<pb::CommitResponse, CommitError> {
        let idle = self.call_timeout;
        // Set once any attempt handed its trailer to the transport: only then can the
        // server have a whole stream, and so have applied it.
        let sent_whole = Arc::new(AtomicBool::new(false));
        let result = self
            .calling("Commit", true, |c, counters| {
                let (plan, sent_whole) = (plan.clone(), sent_whole.clone());
                async move {
                    Counters::bump(&counters.commit);
                    commit_attempt(c, &plan, idle, &sent_whole).await
                }
            })
            .await;
        match result {
            Ok(resp) => {
                self.counters
                    .pages_committed
                    .fetch_add(plan.pages.len() as u64, Ordering::Relaxed);
                Ok(resp)
            }
            Err(e) => Err(commit_failed(e, sent_whole.load(Ordering::SeqCst))),
        }
    }

    /// Runs `call` (one attempt, on the stub it is given) until it succeeds, fails
    /// definitely, or, when `retry`, the budget is spent (see the module comment):
    /// a retry starts only within `retry_timeout` of the start, and the
    /// [`TIMED_OUT_ATTEMPTS`]-th attempt that missed its deadline ends the call.
    async fn calling<T, F, Fut>(&self, what: &str, retry: bool, call: F) -> Result<T, VfsError>
    where
        F: Fn(Pages, Arc<Counters>) -> Fut,
        Fut: Future<Output = Result<T, Failed>>,
    {
        let started = Instant::now();
        let deadline = started + self.retry_timeout;
        let mut backoff = Duration::from_millis(5);
        let (mut attempts, mut timeouts) = (0u32, 0u32);
        // The error the call ends with after `attempts`, given how the last one failed.
        let ended = |last: Failed, attempts: u32| match last {
            Failed::Error(e) => e,
            Failed::TimedOut(what_failed) => VfsError::Status(Status::deadline_exceeded(format!(
                "the pagewire server {what_failed}; gave up after {attempts} attempt{} in {:.1}s",
                if attempts == 1 { "" } else { "s" },
                started.elapsed().as_secs_f64(),
            ))),
        };
        loop {
            let (generation, stub) = self.stub();
            attempts += 1;
            let failed = match call(stub, self.counters.clone()).await {
                Ok(v) => return Ok(v),
                Err(Failed::Error(e)) if !e.is_retryable() => return Err(e),
                Err(failed @ Failed::Error(_)) => failed,
                Err(failed @ Failed::TimedOut(_)) => {
                    Counters::bump(&self.counters.timeouts);
                    timeouts += 1;
                    // The retry goes over a new connection: this one may be dead.
                    self.conn.reconnect(generation);
                    if timeouts >= TIMED_OUT_ATTEMPTS {
                        return Err(ended(failed, attempts));
                    }
                    failed
                }
            };
            if !retry || Instant::now() + backoff >= deadline {
                return Err(ended(failed, attempts));
            }
            match &failed {
                Failed::Error(e) => tracing::debug!(call = what, error = %e, ?backoff, "retrying"),
                Failed::TimedOut(w) => tracing::debug!(
                    call = what,
                    "the server {w}; retrying over a new connection"
                ),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// How a commit whose retries ended with `e` failed (see [`Class::commit_outcome`]).
/// A retryable failure before any attempt sent the whole stream is definite, and
/// says so; the status keeps the original as its source, so it classifies the same.
fn commit_failed(e: VfsError, sent_whole: bool) -> CommitError {
    let class = e.class();
    match class.map_or(Outcome::Definite, |c| c.commit_outcome(sent_whole)) {
        Outcome::Unknown => CommitError::Unknown(e),
        Outcome::Definite => match e {
            VfsError::Status(s) if class.is_some_and(Class::is_retryable) => {
                let mut said = Status::new(
                    s.code(),
                    format!(
                        "{}; no attempt sent the whole commit, so nothing was applied",
                        s.message()
                    ),
                );
                said.set_source(Arc::new(s));
                CommitError::Definite(VfsError::Status(said))
            }
            e => CommitError::Definite(e),
        },
    }
}

/// One attempt of a commit, with its no-progress deadline: the transport must take
/// a message at least every `idle`, and after it took the last one the answer must
/// come within `idle` plus the commit's bytes at [`SLOW_LINK_BYTES_PER_SEC`].
async fn commit_attempt(
    mut stub: Pages,
    plan: &CommitPlan,
    idle: Duration,
    sent_whole: &AtomicBool,
) -> Result<pb::CommitResponse, Failed> {
    let messages = commit_messages(plan);
    let bytes: u64 = plan.pages.iter().map(|(_, d)| d.len() as u64).sum();
    let extra = transfer_time(bytes);
    let progress = Arc::new(Progress::new(messages.len()));
    let stream = Tracked {
        inner: futures::stream::iter(messages),
        progress: progress.clone(),
    };
    let result = tokio::select! {
        reply = stub.commit(stream) => reply.map(tonic::Response::into_inner).map_err(Failed::from),
        () = progress.stalled(idle, idle + extra) => {
            let how = if progress.whole() {
                format!(
                    "did not answer a commit within {} (call_timeout {} + {} for its {}) after it was sent whole",
                    show(idle + extra), show(idle), show(extra), show_bytes(bytes)
                )
            } else {
                format!("took no commit data for {} (call_timeout)", show(idle))
            };
            Err(Failed::TimedOut(how))
        }
    };
    if progress.whole() {
        sent_whole.store(true, Ordering::SeqCst);
    }
    result
}

/// How far the transport got with a Commit stream: when it last took a message, and
/// how many it took.
struct Progress {
    total: usize,
    state: Mutex<(Instant, usize)>,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    fn took_one(&self) {
        let mut s = self.state.lock();
        *s = (Instant::now(), s.1 + 1);
    }

    /// The transport took the last message (the trailer).
    fn whole(&self) -> bool {
        self.state.lock().1 >= self.total
    }

    /// Completes when no message was taken for `idle`, or, once all were, no answer
    /// came for `tail` after the last.
    async fn stalled(&self, idle: Duration, tail: Duration) {
        loop {
            let (at, taken) = *self.state.lock();
            let due = at + if taken >= self.total { tail } else { idle };
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// The Commit request stream, noting each message the transport takes (tonic asks for
/// the next one only when HTTP/2 has room for it, so a stalled link stops the asking).
struct Tracked<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S: Stream + Unpin> Stream for Tracked<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let next = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(_)) = &next {
            self.progress.took_one();
        }
        next
    }
}

/// Header, page batches of at most `chunk_bytes` (and [`COMMIT_MESSAGE_BYTES`]), trailer.
fn commit_messages(plan: &CommitPlan) -> Vec<pb::CommitRequest> {
    let msg = |part| pb::CommitRequest { part: Some(part) };
    let chunk_bytes = plan.chunk_bytes.min(COMMIT_MESSAGE_BYTES);
    let mut out = vec![msg(Part::Header(plan.header.clone()))];
    let mut batch = Vec::new();
    let mut bytes = 0;
    for (no, data) in &plan.pages {
        if bytes + data.len() > chunk_bytes && !batch.is_empty() {
            out.push(msg(Part::Pages(pb::PageBatch {
                pages: std::mem::take(&mut batch),
            })));
            bytes = 0;
        }
        bytes += data.len();
        batch.push(pb::Page {
            page_no: no.0,
            data: data.clone(),
        });
    }
    if !batch.is_empty() {
        out.push(msg(Part::Pages(pb::PageBatch { pages: batch })));
    }
    out.push(msg(Part::Trailer(pb::CommitTrailer {
        pages_sent: plan.pages.len() as u32,
    })));
    out
}

#[cfg(test)]
mod tests {
    use std::{io::Read, net::TcpListener, sync::atomic::AtomicUsize, time::Instant as StdInstant};

    use tonic::Code;

    use super::*;

    /// A server that accepts connections and then never says or reads anything
    /// (held open until the test ends); counts the connections.
    fn silent_server() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(conn);
            }
        });
        (url, accepted)
    }

    /// A server that reads everything it is sent and never answers.
    fn sink_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        url
    }

    /// A server that answers whatever it is sent with `reply`, then reads on until the
    /// client hangs up (so the reply is not lost to a reset); with no reply it hangs up.
    fn garbage_server(reply: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    use std::io::Write;
                    let mut buf = vec![0u8; 1 << 16];
                    let _ = conn.read(&mut buf);
                    if reply.is_empty() {
                        return;
                    }
                    let _ = conn.write_all(reply);
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
        url
    }

    /// One BeginRead attempt on `c`'s channel with `grpc-timeout` `limit` and no
    /// deadline of ours: the status exactly as tonic reports it.
    fn raw_begin_read(rt: &crate::runtime::Rt, c: &Client, limit: Duration) -> Status {
        let (_, mut stub) = c.stub();
        let req = request(pb::BeginReadRequest::default(), limit);
        rt.block_on(async move { stub.begin_read(req).await })
            .expect("runtime")
            .expect_err("no answer")
    }

    #[test]
    fn a_peer_that_breaks_http2_is_transport_trouble_though_tonic_says_internal() {
        // A SETTINGS frame with a bad length, and an HTTP/1 answer: tonic reports both
        // as INTERNAL, with the hyper error as the source (a server's INTERNAL has none).
        let frames: [&[u8]; 2] = [
            b"\x00\x00\x04\x07\x00\x00\x00\x00\x00garbage",
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
        ];
        for reply in frames {
            let url = garbage_server(reply);
            let (rt, c) = client(&url, Duration::from_secs(30), Duration::from_secs(5));
            let status = raw_begin_read(&rt, &c, Duration::from_secs(5));
            // Usually INTERNAL; when hyper sees the hang-up first, CANCELLED ("connection
            // closed"). Made on this side either way: a source, transport trouble.
            assert!(
                matches!(status.code(), Code::Internal | Code::Cancelled),
                "{status:?}"
            );
            assert!(std::error::Error::source(&status).is_some(), "{status:?}");
            assert_eq!(Class::of(&status), Class::Transport, "{status:?}");
        }
        // A peer that hangs up: UNKNOWN, retryable by its code alone.
        let (rt, c) = client(
            &garbage_server(b""),
            Duration::from_secs(30),
            Duration::from_secs(5),
        );
        let status = raw_begin_read(&rt, &c, Duration::from_secs(5));
        assert_eq!(Class::of(&status), Class::Transport, "{status:?}");
    }

    #[test]
    fn tonic_enforcing_our_grpc_timeout_is_told_by_the_source_not_the_message() {
        let (url, _) = silent_server();
        let (rt, c) = client(&url, Duration::from_secs(30), Duration::from_secs(30));
        let status = raw_begin_read(&rt, &c, Duration::from_millis(200));
        assert_eq!(status.code(), Code::Cancelled, "{status:?}");
        assert_eq!(Class::of(&status), Class::TimedOut, "{status:?}");
        assert!(matches!(Failed::from(status), Failed::TimedOut(_)));
        // The server's enforcement of the same deadline (a CANCELLED decoded from its
        // answer, whatever its words) is our deadline too.
        let said = Status::cancelled("Timeout expired");
        assert!(matches!(Failed::from(said), Failed::TimedOut(_)));
    }

    fn client(url: &str, retry: Duration, call: Duration) -> (Arc<crate::runtime::Rt>, Client) {
        let rt = crate::runtime::get().expect("runtime");
        let conn = rt
            .channel(url, Duration::from_secs(1), &Default::default())
            .expect("channel");
        let client = Client::new(conn, None, retry, call, 256 << 20).expect("client");
        (rt, client)
    }

    fn plan(pages: u32, page_size: usize) -> Arc<CommitPlan> {
        let header = pb::CommitHeader {
            name: "t.db".into(),
            page_size: page_size as u32,
            page_count: pages,
            ..Default::default()
        };
        let pages = (1..=pages)
            .map(|p| (PageNo(p), Bytes::from(vec![7u8; page_size])))
            .collect();
        Arc::new(CommitPlan {
            header,
            pages,
            chunk_bytes: 8 << 20,
        })
    }

    #[test]
    fn a_silent_server_fails_a_call_at_its_second_timeout_over_a_new_connection() {
        let (url, accepted) = silent_server();
        let call = Duration::from_millis(300);
        // A long retry budget: the timeouts end the call, not the budget.
        let (rt, c) = client(&url, Duration::from_secs(30), call);
        let started = StdInstant::now();
        let req = pb::BeginReadRequest {
            name: "t.db".into(),
            ..Default::default()
        };
        let err = rt
            .block_on(c.clone().begin_read(req))
            .expect("runtime")
            .expect_err("no answer");
        let took = started.elapsed();
        assert!(
            took >= 2 * call && took < 2 * call + Duration::from_millis(500),
            "{took:?}"
        );
        assert!(err.is_retryable(), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("did not answer BeginRead within 300ms (call_timeout)"),
            "{text}"
        );
        assert!(text.contains("gave up after 2 attempts"), "{text}");
        assert_eq!(c.counters.timeouts.load(Ordering::Relaxed), 2);
        assert_eq!(c.counters.begin_read.load(Ordering::Relaxed), 2);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the retry went over a new connection"
        );

        // Open tries once.
        let started = StdInstant::now();
        let err = rt
            .block_on(c.clone().open(pb::OpenRequest::default()))
            .expect("runtime")
            .expect_err("no answer");
        assert!(
            started.elapsed() < call + Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        assert!(
            err.to_string().contains(
                "did not answer Open within 300ms (call_timeout); gave up after 1 attempt"
            ),
            "{err}"
        );

        // ReadPages gets time for its answer: 64 pages of up to 64 KiB at 8 MiB/s.
        let started = StdInstant::now();
        let req = pb::ReadPagesRequest {
            name: "t.db".into(),
            version: 1,
            page_nos: (1..=64).collect(),
            ..Default::default()
        };
        let err = rt
            .block_on(c.clone().read_pages(req))
            .expect("runtime")
            .expect_err("no answer");
        let took = started.elapsed();
        let attempt = call + Duration::from_millis(500);
        assert!(
            took >= 2 * attempt && took < 2 * attempt + Duration::from_millis(500),
            "{took:?}"
        );
        assert!(
            err.to_string()
                .contains("within 800ms (call_timeout 300ms + 500ms for up to 4.0 MiB of pages)"),
            "{err}"
        );
    }

    #[test]
    fn a_short_retry_budget_still_gives_the_first_attempt_its_call_timeout() {
        let (url, _) = silent_server();
        let call = Duration::from_millis(400);
        let (rt, c) = client(&url, Duration::from_millis(100), call);
        let started = StdInstant::now();
        let req = pb::AcquireLeaseRequest {
            name: "t.db".into(),
            ..Default::default()
        };
        let err = rt
            .block_on(c.clone().acquire_lease(req))
            .expect("runtime")
            .expect_err("no answer");
        let took = started.elapsed();
        assert!(
            took >= call && took < call + Duration::from_millis(300),
            "{took:?}"
        );
        assert!(
            err.to_string().contains("gave up after 1 attempt "),
            "{err}"
        );
    }

    #[test]
    fn a_stalled_commit_is_definite_until_its_trailer_went_out() {
        let url = sink_server();
        let call = Duration::from_millis(300);
        let (rt, c) = client(&url, Duration::from_secs(30), call);
        // 8 MiB: the peer never grants HTTP/2 flow-control window beyond the first
        // 64 KiB, so the stream stops being taken long before its trailer.
        let started = StdInstant::now();
        let big = rt
            .block_on(c.clone().commit(plan(2048, 4096)))
            .expect("runtime");
        let took = started.elapsed();
        match big {
            Err(CommitError::Definite(e)) => {
                let text = e.to_string();
                assert!(
                    text.contains("took no commit data for 300ms (call_timeout)"),
                    "{text}"
                );
                assert!(text.contains("nothing was applied"), "{text}");
            }
            Err(CommitError::Unknown(e)) => panic!("unknown: {e}"),
            Ok(_) => panic!("a silent server answered"),
        }
        assert!(
            took >= 2 * call && took < 2 * call + Duration::from_millis(500),
            "{took:?}"
        );
        // A small one goes out whole: its outcome is unknown.
        let small = rt
            .block_on(c.clone().commit(plan(2, 4096)))
            .expect("runtime");
        match small {
            Err(CommitError::Unknown(e)) => {
                let text = e.to_string();
                assert!(text.contains("did not answer a commit within 300ms (call_timeout 300ms + 0s for its 8.0 KiB) after it was sent whole"), "{text}");
            }
            Err(CommitError::Definite(e)) => panic!("definite: {e}"),
            Ok(_) => panic!("a silent server answered"),
        }
        assert_eq!(c.counters.commit.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn commit_messages_are_at_most_one_mebibyte_of_pages() {
        let p = plan(1000, 4096);
        let messages = commit_messages(&p);
        // header, ceil(4000 KiB / 1 MiB) = 4 batches, trailer
        assert_eq!(messages.len(), 6);
        for m in &messages[1..5] {
            let Some(Part::Pages(batch)) = &m.part else {
                panic!("not pages")
            };
            assert!(
                batch.pages.iter().map(|p| p.data.len()).sum::<usize>() <= COMMIT_MESSAGE_BYTES
            );
        }
        assert!(matches!(
            messages[5].part,
            Some(Part::Trailer(pb::CommitTrailer { pages_sent: 1000 }))
        ));
        // A page bigger than the cap still travels, alone.
        let one = plan(2, 2 << 20);
        assert_eq!(commit_messages(&one).len(), 4);
        assert_eq!(transfer_time(256 << 20), Duration::from_secs(32));
    }
}
