//! Running the gRPC server: [`ServerConfig`] and [`serve`], which puts the Pages and Admin
//! services (behind authentication), gRPC health and reflection on a listener until a
//! shutdown future completes, with the history GC task alongside.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use pagewire_proto::v1 as pb;
use pb::admin_server::AdminServer;
use pb::operator_server::OperatorServer;
use pb::pages_server::PagesServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::admission::{Admission, AdmissionLayer, connections, tls_accept};
use crate::auth::{Authenticator, Credentials, OperatorAuthenticator};
use crate::gc::{self, GcTask};
use crate::limits::Limits;
use crate::service::{AdminService, Context, OperatorService, PagesService};
use crate::store::{PageStore, PinTtl};
use crate::validate;

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// How long a write lease lasts without renewal: the longest a crashed writer blocks
    /// others, and the shortest pause that costs a live writer its lease.
    pub lease_ttl: Duration,
    /// How often clients should renew (told to them on Open). Zero, or not below
    /// `lease_ttl`, means `lease_ttl / 3`.
    pub heartbeat: Duration,
    /// Every bound on what clients can make the server do.
    pub limits: Limits,
    /// Bearer tokens, their tenants and roles, and the operator credential; without a
    /// tokens file, development mode (every call is tenant `default`, admin).
    pub credentials: Credentials,
    /// TLS (`None`: plaintext HTTP/2), reloadable.
    pub tls: Option<Arc<pagewire_tls::server::Reloadable>>,
    /// Every version committed within this window stays readable (time travel, replicas
    /// that fall behind); older ones are collected unless a reader pins them. Zero keeps
    /// only the newest version and pinned ones.
    pub history_retention: Duration,
    /// How often history GC runs.
    pub gc_interval: Duration,
    /// How long a reader's pin on a version lasts after its last BeginRead or ReadPages
    /// at that version.
    pub pin_ttl: Duration,
    /// How long a read lease lasts (clients renew it while reading): the longest a
    /// vanished reader stalls commits, and how long a fresh server waits before its first
    /// commit. Zero grants none (required when several servers share one store).
    pub read_lease_ttl: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let lease_ttl = Duration::from_secs(10);
        Self {
            lease_ttl,
            heartbeat: lease_ttl / 3,
            limits: Limits::default(),
            credentials: Credentials::default(),
            tls: None,
            history_retention: Duration::from_secs(3600),
            gc_interval: Duration::from_secs(30),
            pin_ttl: Duration::from_secs(300),
            read_lease_ttl: Duration::from_secs(1),
        }
    }
}

impl ServerConfig {
    /// The heartbeat told to clients (see [`ServerConfig::heartbeat`]).
    pub fn effective_heartbeat(&self) -> Duration {
        if self.heartbeat.is_zero() || self.heartbeat >= self.lease_ttl {
            self.lease_ttl / 3
        } else {
            self.heartbeat
        }
    }

    /// How long reader pins last.
    pub fn pin(&self) -> PinTtl {
        PinTtl {
            ttl: self.pin_ttl,
            max_age: self.limits.max_pin_age,
        }
    }

    /// The ReadPages limit told to clients: one that holds whatever the page size, now or
    /// after a VACUUM to another size.
    pub fn advertised_pages_per_read(&self) -> u32 {
        validate::max_pages_per_read(
            self.limits.max_pages_per_read,
            self.limits.max_message_bytes,
            validate::MAX_PAGE_SIZE,
        )
    }

    /// Reads the credentials and the TLS files again (SIGHUP, `Operator.Reload`). A
    /// file that cannot be used leaves what it configures as it was; the error says
    /// what is wrong. `Ok`: what is in use now.
    pub fn reload(&self) -> Result<String, String> {
        let mut problems = Vec::new();
        let mut summary = Vec::new();
        match self.credentials.reload() {
            Ok(now) => summary.push(now),
            Err(e) => problems.push(format!("{e} (credentials unchanged)")),
        }
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => summary.push("TLS certificate reloaded".to_owned()),
                Err(e) => problems.push(format!("TLS: {e} (certificate unchanged)")),
            }
        }
        if problems.is_empty() {
            Ok(summary.join("; "))
        } else {
            Err(problems.join("; "))
        }
    }

    /// Refuses settings the server cannot work with.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            !self.lease_ttl.is_zero(),
            "the lease TTL must be more than zero"
        );
        self.limits.check()?;
        ensure!(
            !self.gc_interval.is_zero(),
            "the GC interval must be more than zero"
        );
        ensure!(
            !self.pin_ttl.is_zero(),
            "the pin TTL must be more than zero"
        );
        // Clients trust at most a minute; a fresh server also waits this long before
        // its first commit.
        ensure!(
            self.read_lease_ttl <= Duration::from_secs(60),
            "the read lease TTL must be at most 60s (0s: no read leases)"
        );
        Ok(())
    }
}

/// Serves `store` on `listener` until `shutdown` completes, then finishes in-flight calls
/// and returns. History GC runs in the background meanwhile.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn PageStore>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.check()?;
    let gc = GcTask::spawn(store.clone(), config.gc_interval, gc::windows(&config));
    let served = serve_grpc(listener, store, config, shutdown).await;
    gc.stop().await;
    served
}

/// The gRPC part of [`serve`].
async fn serve_grpc(
    listener: TcpListener,
    store: Arc<dyn PageStore>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let limits = config.limits.clone();
    let limit = limits.max_message_bytes;
    let credentials = config.credentials.clone();
    let tls = config.tls.clone();
    let admission = Admission::new(&limits);
    let context = Arc::new(Context::new(store, config));
    let hub = context.hub.clone();
    let sampled = hub.clone();
    crate::metrics::global().set_sampler(Arc::new(move || sampled.metrics_sample()));
    // Watch streams never end by themselves: end them so graceful shutdown can finish.
    let shutdown = async move {
        shutdown.await;
        hub.shutdown();
    };
    let pages = PagesServer::new(PagesService::new(context.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let admin = AdminServer::new(AdminService::new(context.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let operator = OperatorServer::new(OperatorService::new(context))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PagesServer<PagesService>>().await;
    health.set_serving::<AdminServer<AdminService>>().await;
    health
        .set_serving::<OperatorServer<OperatorService>>()
        .await;
    // Reflection in both forms: grpcurl and grpcui before 2023, Postman and many
    // language libraries speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the v1alpha reflection service")?;
    let keepalive = Some(limits.keepalive_interval);
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(keepalive)
        .with_keepalive_interval(keepalive);
    let incoming = connections::limit(incoming, limits.max_connections);
    let incoming = tls_accept::accept(incoming, tls);
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(AdmissionLayer::new(admission))
        .add_service(InterceptedService::new(
            pages,
            Authenticator::new(credentials.clone()),
        ))
        .add_service(InterceptedService::new(
            admin,
            Authenticator::new(credentials.clone()),
        ))
        .add_service(InterceptedService::new(
            operator,
            OperatorAuthenticator::new(credentials),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving gRPC")
}
