//! Operator: what spans tenants (the operator credential only; see
//! [`crate::auth::OperatorAuthenticator`]).

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Context;

/// Reads the credentials and TLS files again, as SIGHUP does.
pub async fn reload(
    cx: &Context,
    _request: Request<pb::ReloadRequest>,
) -> Result<Response<pb::ReloadResponse>, Status> {
    match cx.config.reload() {
        Ok(summary) => {
            tracing::info!("reloaded on an Operator.Reload call: {summary}");
            Ok(Response::new(pb::ReloadResponse { summary }))
        }
        Err(problem) => {
            tracing::error!("Operator.Reload: {problem}");
            Err(Status::failed_precondition(problem))
        }
    }
}

/// One history GC pass now (after any pass under way).
pub async fn run_gc(
    cx: &Context,
    _request: Request<pb::RunGcRequest>,
) -> Result<Response<pb::RunGcResponse>, Status> {
    let retention = crate::gc::windows(&cx.config)();
    let stats = crate::gc::pass(cx.store.as_ref(), &retention).await?;
    Ok(Response::new(pb::RunGcResponse {
        databases: stats.databases,
        versions_collected: stats.versions_collected,
        writes_removed: stats.writes_removed,
        bytes_freed: stats.bytes_freed,
    }))
}

/// Every tenant's counters.
pub async fn server_metrics(
    cx: &Context,
    _request: Request<pb::GetServerMetricsRequest>,
) -> Result<Response<pb::ServerMetrics>, Status> {
    Ok(Response::new(cx.hub.server_metrics_proto()))
}
