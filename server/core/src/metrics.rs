//! Prometheus metrics of the whole server process, served as text on
//! `--metrics-listen` (see [`serve`]). One set per process ([`global`]): calls by
//! method and outcome with their latency, commit bytes and pages, pages read, store
//! errors by kind, quota and limit refusals, GC work, and, sampled at each scrape,
//! read-lease holders and watchers. Per-tenant labels only when the operator turns
//! them on ([`set_tenant_labels`]): tenant names may be customer names.
//!
//! `Admin.GetMetrics` stays: it answers one tenant its own counters over gRPC.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::Status;

/// Label pairs; empty for process-wide series.
type Labels = Vec<(&'static str, String)>;

/// Every series the server exports.
pub struct Metrics {
    registry: Registry,
    tenant_labels: AtomicBool,
    /// Calls by method and gRPC code.
    pub calls: Family<Labels, Counter>,
    /// Latency of a call (to its answer; a stream's setup for Watch) by method.
    pub call_seconds: Family<Labels, Histogram>,
    pub commit_bytes: Family<Labels, Counter>,
    pub commit_pages: Family<Labels, Counter>,
    pub read_pages: Family<Labels, Counter>,
    /// How long commits waited for read-lease holders' acknowledgements.
    pub invalidation_wait_seconds: Histogram,
    pub store_errors: Family<Labels, Counter>,
    pub quota_refusals: Family<Labels, Counter>,
    pub limit_refusals: Family<Labels, Counter>,
    pub gc_passes: Counter,
    pub gc_seconds: Histogram,
    pub gc_versions: Counter,
    pub gc_bytes_freed: Counter,
    read_leases_held: Gauge,
    watchers: Gauge,
    /// Fills the sampled gauges at each scrape (set by the server).
    sampler: Mutex<Option<Arc<dyn Fn() -> Sample + Send + Sync>>>,
}

/// What is read from the server's state at a scrape.
#[derive(Default)]
pub struct Sample {
    pub read_leases_held: u64,
    pub watchers: u64,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// Turns per-tenant labels on (`--metrics-tenant-labels`).
pub fn set_tenant_labels(on: bool) {
    global().tenant_labels.store(on, Ordering::Relaxed);
}

fn latency() -> Histogram {
    // 50 µs .. about 6.7 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 18))
}

impl Metrics {
    fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("pagewire"),
            tenant_labels: AtomicBool::new(false),
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(latency),
            commit_bytes: Family::default(),
            commit_pages: Family::default(),
            read_pages: Family::default(),
            invalidation_wait_seconds: latency(),
            store_errors: Family::default(),
            quota_refusals: Family::default(),
            limit_refusals: Family::default(),
            gc_passes: Counter::default(),
            gc_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            gc_versions: Counter::default(),
            gc_bytes_freed: Counter::default(),
            read_leases_held: Gauge::default(),
            watchers: Gauge::default(),
            sampler: Mutex::new(None),
        };
        let r = &mut m.registry;
        r.register(
            "calls",
            "gRPC calls answered, by method and code",
            m.calls.clone(),
        );
        r.register(
            "call_seconds",
            "gRPC call latency, by method",
            m.call_seconds.clone(),
        );
        r.register(
            "commit_bytes",
            "page bytes committed",
            m.commit_bytes.clone(),
        );
        r.register("commit_pages", "pages committed", m.commit_pages.clone());
        r.register(
            "read_pages",
            "pages answered by ReadPages",
            m.read_pages.clone(),
        );
        r.register(
            "invalidation_wait_seconds",
            "time commits waited for read-lease holders to acknowledge",
            m.invalidation_wait_seconds.clone(),
        );
        r.register(
            "store_errors",
            "store errors, by kind",
            m.store_errors.clone(),
        );
        r.register(
            "quota_refusals",
            "calls refused by a tenant quota",
            m.quota_refusals.clone(),
        );
        r.register(
            "limit_refusals",
            "calls refused by a server limit",
            m.limit_refusals.clone(),
        );
        r.register("gc_passes", "history GC passes", m.gc_passes.clone());
        r.register(
            "gc_seconds",
            "history GC pass duration",
            m.gc_seconds.clone(),
        );
        r.register(
            "gc_versions",
            "versions history GC collected",
            m.gc_versions.clone(),
        );
        r.register(
            "gc_bytes_freed",
            "bytes history GC freed",
            m.gc_bytes_freed.clone(),
        );
        r.register(
            "read_leases_held",
            "unexpired read leases",
            m.read_leases_held.clone(),
        );
        r.register("watchers", "open Watch streams", m.watchers.clone());
        m
    }

    /// `pairs`, plus the tenant when per-tenant labels are on.
    pub fn labels(&self, tenant: &str, pairs: &[(&'static str, &str)]) -> Labels {
        let mut labels: Labels = pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        if self.tenant_labels.load(Ordering::Relaxed) {
            labels.push(("tenant", tenant.to_owned()));
        }
        labels
    }

    /// Counts a call to `method` that answered `result` after `started`.
    pub fn call<T>(&self, method: &'static str, started: Instant, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        let code = format!("{code:?}");
        self.calls
            .get_or_create(&vec![("method", method.to_owned()), ("code", code)])
            .inc();
        self.call_seconds
            .get_or_create(&vec![("method", method.to_owned())])
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn set_sampler(&self, f: Arc<dyn Fn() -> Sample + Send + Sync>) {
        *self.sampler.lock() = Some(f);
    }

    /// The text exposition format, gauges sampled now.
    pub fn render(&self) -> String {
        let sampler = self.sampler.lock().clone();
        if let Some(f) = sampler {
            let s = f();
            self.read_leases_held
                .set(i64::try_from(s.read_leases_held).unwrap_or(i64::MAX));
            self.watchers
                .set(i64::try_from(s.watchers).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Most scrapes served at once; more connections wait in the kernel's backlog.
const MAX_SCRAPES: usize = 8;
/// A scrape connection is closed after this long, answered or not (a client that
/// never sends its request holds nothing for longer).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` (anything else: 404) on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};

    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let (status, body) =
                        if req.uri().path() == "/metrics" && req.method() == hyper::Method::GET {
                            (StatusCode::OK, global().render())
                        } else {
                            (
                                StatusCode::NOT_FOUND,
                                "only GET /metrics is served here\n".to_owned(),
                            )
                        };
                    Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(body)))
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            match tokio::time::timeout(SCRAPE_TIMEOUT, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, "metrics connection: {e}"),
                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}
