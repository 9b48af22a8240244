//! Admission: what the server takes in before any handler runs, bounded.
//!
//! - [`connections`]: at most `--max-connections` open client connections.
//! - [`AdmissionLayer`] (a tower layer over every service, health and reflection
//!   included): at most `--max-calls` calls in progress, each holding a permit until its
//!   response ends (so a stream counts for as long as it lives); and every request body
//!   metered (`body.rs`): each message judged by the size it declares before tonic
//!   reserves room for it (a Commit's charged, with padding and framing, to a
//!   [`CommitCharge`] against `--max-commit-bytes` per stream and the in-flight
//!   budgets, server-wide and per tenant; any other call's at most
//!   `--max-request-message-bytes`), and each message due whole within
//!   `--stream-idle-timeout`. The commit handler names the tenant once it is
//!   authenticated.

mod body;
mod budget;
pub mod connections;
pub mod tls_accept;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tonic::body::Body;
use tower::{Layer, Service};

pub use budget::{Budgets, CommitCharge};

use crate::limits::{self, Limits};

/// The path of the one RPC whose request bytes are budgeted.
const COMMIT_PATH: &str = "/pagewire.v1.Pages/Commit";

/// Shared by every connection of one server.
pub struct Admission {
    calls: Arc<Semaphore>,
    max_calls: usize,
    budgets: Arc<Budgets>,
    max_request_message_bytes: u64,
    idle: Duration,
}

impl Admission {
    pub fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            calls: Arc::new(Semaphore::new(limits.max_calls)),
            max_calls: limits.max_calls,
            budgets: Arc::new(Budgets::new(limits)),
            max_request_message_bytes: limits.max_request_message_bytes,
            idle: limits.stream_idle_timeout,
        })
    }

    /// The in-flight commit budgets.
    pub fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }
}

/// Puts [`Admission`] in front of a service.
#[derive(Clone)]
pub struct AdmissionLayer {
    admission: Arc<Admission>,
}

impl AdmissionLayer {
    pub fn new(admission: Arc<Admission>) -> Self {
        Self { admission }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            admission: self.admission.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Arc<Admission>,
}

type HttpRequest = http::Request<Body>;
type HttpResponse = http::Response<Body>;

impl<S> Service<HttpRequest> for AdmissionService<S>
where
    S: Service<HttpRequest, Response = HttpResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<HttpResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let Ok(permit) = self.admission.calls.clone().try_acquire_owned() else {
            let what = format!(
                "the server has {} calls in progress",
                self.admission.max_calls
            );
            let refused = limits::exhausted(what, "--max-calls").into_http();
            return Box::pin(async move { Ok(refused) });
        };
        let meter = if request.uri().path() == COMMIT_PATH {
            let charge = Arc::new(CommitCharge::new(self.admission.budgets.clone()));
            request.extensions_mut().insert(charge.clone());
            body::Meter::Commit(charge)
        } else {
            body::Meter::Small(self.admission.max_request_message_bytes)
        };
        let idle = self.admission.idle;
        request = request.map(|b| Body::new(body::Metered::new(b, meter, idle)));
        // The clone is the one polled ready (tower's rule for services moved into futures).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let response = inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|b| Body::new(body::Holding::new(b, permit))))
        })
    }
}
