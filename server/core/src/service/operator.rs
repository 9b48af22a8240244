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

/// Every tenant's counters.
pub async fn server_metrics(
    cx: &Context,
    _request: Request<pb::GetServerMetricsRequest>,
) -> Result<Response<pb::ServerMetrics>, Status> {
    Ok(Response::new(cx.hub.server_metrics_proto()))
}
