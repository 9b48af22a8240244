//! The gRPC services over a [`PageStore`](crate::store::PageStore): this file only
//! dispatches each RPC to its handler (one file per RPC family).

mod admin;
mod commit;
mod context;
mod convert;
mod history;
mod lease;
mod open;
mod operator;
mod read;
mod restore;
mod watch;

use std::sync::Arc;

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

pub use context::Context;

/// The data plane (`pagewire.v1.Pages`).
#[derive(Clone)]
pub struct PagesService {
    context: Arc<Context>,
}

impl PagesService {
    pub fn new(context: Arc<Context>) -> Self {
        Self { context }
    }
}

/// The control plane (`pagewire.v1.Admin`).
#[derive(Clone)]
pub struct AdminService {
    context: Arc<Context>,
}

impl AdminService {
    pub fn new(context: Arc<Context>) -> Self {
        Self { context }
    }
}

/// What spans tenants (`pagewire.v1.Operator`).
#[derive(Clone)]
pub struct OperatorService {
    context: Arc<Context>,
}

impl OperatorService {
    pub fn new(context: Arc<Context>) -> Self {
        Self { context }
    }
}

#[tonic::async_trait]
impl pb::operator_server::Operator for OperatorService {
    async fn reload(&self, request: Request<pb::ReloadRequest>) -> Reply<pb::ReloadResponse> {
        observed("Reload", operator::reload(&self.context, request)).await
    }

    async fn run_gc(&self, request: Request<pb::RunGcRequest>) -> Reply<pb::RunGcResponse> {
        observed("RunGc", operator::run_gc(&self.context, request)).await
    }

    async fn get_server_metrics(
        &self,
        request: Request<pb::GetServerMetricsRequest>,
    ) -> Reply<pb::ServerMetrics> {
        observed(
            "GetServerMetrics",
            operator::server_metrics(&self.context, request),
        )
        .await
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// Runs one RPC's handler and counts it (method, outcome, latency) in the metrics.
async fn observed<T>(method: &'static str, handler: impl Future<Output = Reply<T>>) -> Reply<T> {
    let started = std::time::Instant::now();
    let reply = handler.await;
    crate::metrics::global().call(method, started, &reply);
    reply
}

#[tonic::async_trait]
impl pb::pages_server::Pages for PagesService {
    async fn open(&self, request: Request<pb::OpenRequest>) -> Reply<pb::OpenResponse> {
        observed("Open", open::open(&self.context, request)).await
    }

    async fn acquire_lease(
        &self,
        request: Request<pb::AcquireLeaseRequest>,
    ) -> Reply<pb::LeaseResponse> {
        observed("AcquireLease", lease::acquire(&self.context, request)).await
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Reply<pb::LeaseResponse> {
        observed("RenewLease", lease::renew(&self.context, request)).await
    }

    async fn release_lease(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Reply<pb::ReleaseLeaseResponse> {
        observed("ReleaseLease", lease::release(&self.context, request)).await
    }

    async fn begin_read(
        &self,
        request: Request<pb::BeginReadRequest>,
    ) -> Reply<pb::BeginReadResponse> {
        observed("BeginRead", read::begin_read(&self.context, request)).await
    }

    async fn read_pages(
        &self,
        request: Request<pb::ReadPagesRequest>,
    ) -> Reply<pb::ReadPagesResponse> {
        observed("ReadPages", read::read_pages(&self.context, request)).await
    }

    async fn commit(
        &self,
        request: Request<Streaming<pb::CommitRequest>>,
    ) -> Reply<pb::CommitResponse> {
        observed("Commit", commit::commit(&self.context, request)).await
    }

    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Reply<Self::WatchStream> {
        observed("Watch", watch::watch(&self.context, request)).await
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_databases(
        &self,
        request: Request<pb::ListDatabasesRequest>,
    ) -> Reply<pb::ListDatabasesResponse> {
        observed("ListDatabases", admin::list(&self.context, request)).await
    }

    async fn create_database(
        &self,
        request: Request<pb::CreateDatabaseRequest>,
    ) -> Reply<pb::DatabaseInfo> {
        observed("CreateDatabase", admin::create(&self.context, request)).await
    }

    async fn delete_database(
        &self,
        request: Request<pb::DeleteDatabaseRequest>,
    ) -> Reply<pb::DeleteDatabaseResponse> {
        observed("DeleteDatabase", admin::delete(&self.context, request)).await
    }

    async fn get_database_info(
        &self,
        request: Request<pb::GetDatabaseInfoRequest>,
    ) -> Reply<pb::DatabaseInfo> {
        observed("GetDatabaseInfo", admin::info(&self.context, request)).await
    }

    async fn get_metrics(&self, request: Request<pb::GetMetricsRequest>) -> Reply<pb::Metrics> {
        observed("GetMetrics", admin::metrics(&self.context, request)).await
    }

    async fn get_usage(&self, request: Request<pb::GetUsageRequest>) -> Reply<pb::Usage> {
        observed("GetUsage", admin::usage(&self.context, request)).await
    }

    async fn fork_database(
        &self,
        request: Request<pb::ForkDatabaseRequest>,
    ) -> Reply<pb::DatabaseInfo> {
        observed("ForkDatabase", history::fork(&self.context, request)).await
    }

    async fn restore_database(
        &self,
        request: Request<pb::RestoreDatabaseRequest>,
    ) -> Reply<pb::RestoreDatabaseResponse> {
        observed("RestoreDatabase", restore::restore(&self.context, request)).await
    }

    async fn create_restore_point(
        &self,
        request: Request<pb::CreateRestorePointRequest>,
    ) -> Reply<pb::RestorePoint> {
        observed(
            "CreateRestorePoint",
            history::create_point(&self.context, request),
        )
        .await
    }

    async fn list_restore_points(
        &self,
        request: Request<pb::ListRestorePointsRequest>,
    ) -> Reply<pb::ListRestorePointsResponse> {
        observed(
            "ListRestorePoints",
            history::list_points(&self.context, request),
        )
        .await
    }

    async fn delete_restore_point(
        &self,
        request: Request<pb::DeleteRestorePointRequest>,
    ) -> Reply<pb::DeleteRestorePointResponse> {
        observed(
            "DeleteRestorePoint",
            history::delete_point(&self.context, request),
        )
        .await
    }
}
