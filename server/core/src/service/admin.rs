//! The control plane: list, create, delete and describe the caller's databases, and the
//! caller's metrics. The Admin interceptor has already refused callers without admin
//! rights.
//!
//! Creating a database is the one place a new name appears, so it is also where the
//! rules for new names ([`validate::new_db_name`]) apply: [`create`] here and
//! [`open_or_create`] for `Open` with `create`.

use pagewire_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::Context;
use crate::auth::{self, Role};
use crate::quota;
use crate::store::{DbKey, DbState, StoreError, StoreResult};
use crate::validate;

#[tracing::instrument(skip_all)]
pub async fn list(
    cx: &Context,
    request: Request<pb::ListDatabasesRequest>,
) -> Result<Response<pb::ListDatabasesResponse>, Status> {
    let tenant = auth::tenant_of(&request, Role::Admin, "ListDatabases")?;
    let infos = cx.store.list(&tenant.name).await?;
    let databases = infos.into_iter().map(Into::into).collect();
    Ok(Response::new(pb::ListDatabasesResponse { databases }))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name))]
pub async fn create(
    cx: &Context,
    request: Request<pb::CreateDatabaseRequest>,
) -> Result<Response<pb::DatabaseInfo>, Status> {
    let key = cx.key(
        &request,
        &request.get_ref().name,
        Role::Admin,
        "CreateDatabase",
    )?;
    validate::new_db_name(&key.name)?;
    let quotas = cx.quotas(&key.tenant);
    let _creating = cx
        .usage
        .check_new_database(&*cx.store, &key.tenant, &quotas)
        .await?;
    let info = cx.store.create(&key).await?;
    tracing::info!(tenant = %key.tenant, "created database");
    Ok(Response::new(info.into()))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name))]
pub async fn delete(
    cx: &Context,
    request: Request<pb::DeleteDatabaseRequest>,
) -> Result<Response<pb::DeleteDatabaseResponse>, Status> {
    let key = cx.key(
        &request,
        &request.get_ref().name,
        Role::Admin,
        "DeleteDatabase",
    )?;
    let writer = cx.store.info(&key).await?.lease_held;
    cx.store.delete(&key).await?;
    let readers = cx.hub.deleted(&key);
    tracing::info!(tenant = %key.tenant, "deleted database");
    // A lease holder may serve the old database from its cache until its lease runs
    // out (the writer learns of the delete at its next renewal, at most a lease TTL
    // away): the delete is done, and the name free for a new database, only then.
    let writer = writer.then(|| tokio::time::Instant::now() + cx.config.lease_ttl);
    if let Some(until) = writer.max(readers) {
        tokio::time::sleep_until(until).await;
    }
    Ok(Response::new(pb::DeleteDatabaseResponse {}))
}

#[tracing::instrument(skip_all, fields(db = %request.get_ref().name))]
pub async fn info(
    cx: &Context,
    request: Request<pb::GetDatabaseInfoRequest>,
) -> Result<Response<pb::DatabaseInfo>, Status> {
    let key = cx.key(
        &request,
        &request.get_ref().name,
        Role::Admin,
        "GetDatabaseInfo",
    )?;
    Ok(Response::new(cx.store.info(&key).await?.into()))
}

/// Opens `key`, creating it when `create` is set and it does not exist yet; returns its
/// state and whether this call created it. A name is checked as a new one
/// ([`validate::new_db_name`]) only when it would be created, so a database whose name
/// predates those rules still opens (with or without `create`).
pub async fn open_or_create(
    cx: &Context,
    key: &DbKey,
    create: bool,
) -> StoreResult<(DbState, bool)> {
    if !create {
        return cx.store.open(key, false).await;
    }
    match cx.store.open(key, false).await {
        Err(StoreError::NotFound(_)) => validate::new_db_name(&key.name)?,
        found => return found,
    }
    let quotas = cx.quotas(&key.tenant);
    let _creating = cx
        .usage
        .check_new_database(&*cx.store, &key.tenant, &quotas)
        .await?;
    // Created meanwhile by someone else: then this opens it (`created` is false).
    cx.store.open(key, true).await
}

/// The caller's tenant's counters (read leases held, watchers, commits, invalidation
/// waits): a tenant never sees another's activity. Without a tokens file every caller
/// is the one tenant `default`, so it sees everything.
pub async fn metrics(
    cx: &Context,
    request: Request<pb::GetMetricsRequest>,
) -> Result<Response<pb::Metrics>, Status> {
    let tenant = auth::tenant_of(&request, Role::Admin, "GetMetrics")?;
    Ok(Response::new(cx.hub.metrics_proto(&tenant.name)))
}

/// The caller's tenant's usage and quotas.
pub async fn usage(
    cx: &Context,
    request: Request<pb::GetUsageRequest>,
) -> Result<Response<pb::Usage>, Status> {
    let tenant = auth::tenant_of(&request, Role::Admin, "GetUsage")?;
    let infos = cx.store.list(&tenant.name).await?;
    let logical = quota::total(&infos, |d| {
        u64::from(d.state.page_size) * u64::from(d.state.page_count)
    });
    Ok(Response::new(pb::Usage {
        databases: infos.len() as u64,
        stored_bytes: quota::total(&infos, |d| d.stored_bytes)
            .saturating_add(cx.store.detached_bytes(&tenant.name).await?),
        logical_bytes: logical,
        watchers: cx.hub.metrics_proto(&tenant.name).watchers,
        quotas: Some(cx.quotas(&tenant.name).to_proto()),
    }))
}
